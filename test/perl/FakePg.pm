# A small fake PostgreSQL server for dbpool's TAP tests: a target that misbehaves on purpose.
#
#   my $fake = FakePg->start(port => 25652, seconds => 120, hold_cancels => 1,
#                            log => "$dir/fake.log");
#   ... point a pool at "host=127.0.0.1 port=25652 dbname=x user=x sslmode=disable" ...
#   my $n = $fake->count('cancel');     # CancelRequests received so far
#   $fake->stop;
#
# It runs as a child process that listens on 127.0.0.1:<port> (the socket is bound before
# start returns, so a client may connect at once) and exits by itself after <seconds>
# seconds whatever happens (default 120), or at stop.  Core Perl modules only.
#
# Protocol (v3, enough for libpq):
#   - SSLRequest and GSSENCRequest are answered 'N' (no encryption);
#   - a startup packet gets AuthenticationOk (no password asked), ParameterStatus
#     (server_version 15.0, server_encoding UTF8, client_encoding UTF8, DateStyle "ISO, MDY",
#     integer_datetimes on, standard_conforming_strings on, IntervalStyle postgres),
#     BackendKeyData (a per-connection pid, key 4242) and ReadyForQuery;
#   - a simple Query whose text contains "hang" is never answered, nor is anything after it
#     on that connection; other queries get CommandComplete ("SELECT 0", or the first word
#     of the text in capitals for SET, BEGIN, ...) and ReadyForQuery;
#   - the extended protocol (Parse/Bind/Describe/Execute/Close up to Sync) is answered at
#     Sync: ParseComplete, BindComplete, NoData (ParameterDescription first for a statement
#     Describe), CommandComplete "SELECT 0", CloseComplete, ReadyForQuery, unless the batch
#     parses, or binds a statement whose text contains, "hang": then nothing, ever;
#   - a CancelRequest is read, then the connection is closed (as a real server does), or,
#     with hold_cancels => 1, held open without a byte of answer until the server exits;
#   - Terminate, or the client closing, ends the connection.
#
# Options: port (required), seconds, hold_cancels, log (a file: one line per event,
# "startup", "cancel", "query <text>", "parse <text>", appended as they happen; count()
# reads it).  To add a behaviour, add an option and test it where a message is handled
# (handle_startup, handle_query, handle_sync).
#
# For a test whose fake server speaks its own dialect, the plain functions below do the rest:
#   use FakePg qw(fork_sessions read_exact msg);
#   my $pid = fork_sessions($port, \&my_session);   # my_session($socket) per connection
#   ... kill 'TERM', $pid; waitpid($pid, 0);
# read_exact($socket, $n) reads n bytes (undef at EOF), msg($type, $body) builds a message.

package FakePg;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IO::Select;
use IO::Socket::INET;
use POSIX ();

our @EXPORT_OK = qw(fork_sessions read_exact msg);

# Start the server in a child process; returns the handle for count() and stop().
sub start
{
	my ($class, %opt) = @_;
	die "FakePg: port required" unless $opt{port};
	my $listen = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => $opt{port},
		Proto => 'tcp',
		Listen => 64,
		ReuseAddr => 1) or die "FakePg: cannot listen on 127.0.0.1:$opt{port}: $!";
	if (defined $opt{log})
	{
		open(my $fh, '>', $opt{log}) or die "FakePg: cannot create $opt{log}: $!";
		close $fh;
	}
	my $pid = fork();
	die "FakePg: fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		my $ok = eval { serve($listen, \%opt); 1 };
		print STDERR "FakePg: $@" unless $ok;
		POSIX::_exit($ok ? 0 : 1);
	}
	close $listen;
	return bless { pid => $pid, %opt }, $class;
}

# How many events of this kind ("startup", "cancel", "query", "parse") the log holds.
sub count
{
	my ($self, $kind) = @_;
	die "FakePg: count needs the log option" unless defined $self->{log};
	open(my $fh, '<', $self->{log}) or return 0;
	my $n = grep { /^\Q$kind\E\b/ } <$fh>;
	close $fh;
	return $n;
}

# Stop the server (and with it every connection it holds); waits for the child.
sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	kill 'TERM', $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
	return;
}

sub DESTROY
{
	my ($self) = @_;
	local $?;
	$self->stop if $self->{pid};
	return;
}

# ---------- the child ----------

my %clients;    # fileno => { sock, buf, phase: startup|ready|hung|cancel, stmts, batch }
my $next_pid = 10000;
my $logfh;

sub event
{
	my ($line) = @_;
	return unless $logfh;
	$line =~ s/[\r\n]/ /g;
	print $logfh "$line\n";
	return;
}

# A backend message: type byte, length, body.
sub msg
{
	my ($type, $body) = @_;
	$body //= '';
	return $type . pack('N', length($body) + 4) . $body;
}

sub send_all
{
	my ($c, $data) = @_;
	my $sock = $c->{sock};
	while (length $data)
	{
		my $n = syswrite($sock, $data);
		return unless defined $n && $n > 0;
		substr($data, 0, $n) = '';
	}
	return;
}

sub serve
{
	my ($listen, $opt) = @_;
	my $end = time() + ($opt->{seconds} // 120);
	$SIG{TERM} = sub { POSIX::_exit(0) };
	if (defined $opt->{log})
	{
		open($logfh, '>>', $opt->{log}) or die "open $opt->{log}: $!";
		$logfh->autoflush(1);
	}
	my $sel = IO::Select->new($listen);
	while ((my $left = $end - time()) > 0)
	{
		for my $s ($sel->can_read($left > 1 ? 1 : $left))
		{
			if ($s == $listen)
			{
				my $sock = $listen->accept or next;
				$clients{ fileno $sock } = { sock => $sock, buf => '', phase => 'startup',
					stmts => {}, batch => [] };
				$sel->add($sock);
				next;
			}
			my $c = $clients{ fileno $s };
			my $n = sysread($s, my $data, 65536);
			if (!$n || !handle_input($c, $data, $opt))
			{
				$sel->remove($s);
				delete $clients{ fileno $s };
				close $s;
			}
		}
	}
	return;
}

# New bytes from a client; false when the connection is to be closed.
sub handle_input
{
	my ($c, $data, $opt) = @_;
	return 1 if $c->{phase} eq 'hung' || $c->{phase} eq 'cancel';    # read and ignore
	$c->{buf} .= $data;
	for (;;)
	{
		if ($c->{phase} eq 'startup')
		{
			return 1 if length $c->{buf} < 4;
			my $len = unpack('N', $c->{buf});
			return 0 if $len < 8 || $len > 10000;
			return 1 if length $c->{buf} < $len;
			my $pkt = substr($c->{buf}, 0, $len, '');
			return 0 unless handle_startup($c, $pkt, $opt);
			return 1 if $c->{phase} eq 'cancel';
			next;
		}
		return 1 if $c->{phase} ne 'ready';
		return 1 if length $c->{buf} < 5;
		my ($type, $len) = unpack('a N', $c->{buf});
		return 0 if $len < 4 || $len > 100_000_000;
		return 1 if length $c->{buf} < $len + 1;
		my $body = substr($c->{buf}, 0, $len + 1, '');
		$body = substr($body, 5);
		return 0 if $type eq 'X';
		if ($type eq 'Q')
		{
			handle_query($c, unpack('Z*', $body), $opt);
		}
		elsif ($type eq 'S')
		{
			handle_sync($c, $opt);
		}
		elsif ($type eq 'H')
		{
			# Flush: everything is answered at Sync
		}
		else
		{
			push @{ $c->{batch} }, [ $type, $body ];
		}
	}
}

# A startup-phase packet: SSL/GSS negotiation, a CancelRequest, or the startup itself.
sub handle_startup
{
	my ($c, $pkt, $opt) = @_;
	my $code = unpack('N', substr($pkt, 4, 4));
	if ($code == 80877103 || $code == 80877104)    # SSLRequest, GSSENCRequest
	{
		send_all($c, 'N');
		return 1;
	}
	if ($code == 80877102)                          # CancelRequest
	{
		event('cancel');
		return 0 unless $opt->{hold_cancels};
		$c->{phase} = 'cancel';
		return 1;
	}
	return 0 unless $code == 196608;                # protocol 3.0
	event('startup');
	my $out = msg('R', pack('N', 0));
	for my $p ([ 'server_version', '15.0' ], [ 'server_encoding', 'UTF8' ],
		[ 'client_encoding', 'UTF8' ], [ 'DateStyle', 'ISO, MDY' ],
		[ 'integer_datetimes', 'on' ], [ 'standard_conforming_strings', 'on' ],
		[ 'IntervalStyle', 'postgres' ])
	{
		$out .= msg('S', "$p->[0]\0$p->[1]\0");
	}
	$out .= msg('K', pack('N N', $next_pid++, 4242));
	$out .= msg('Z', 'I');
	send_all($c, $out);
	$c->{phase} = 'ready';
	return 1;
}

# The command tag for a query text.
sub tag_for
{
	my ($sql) = @_;
	my ($word) = $sql =~ /^\s*([A-Za-z]+)/;
	return 'SELECT 0' if !defined $word || uc($word) eq 'SELECT';
	return uc $word;
}

sub handle_query
{
	my ($c, $sql, $opt) = @_;
	event("query $sql");
	if ($sql =~ /hang/)
	{
		$c->{phase} = 'hung';
		return;
	}
	my $out = $sql =~ /^\s*;?\s*$/ ? msg('I') : msg('C', tag_for($sql) . "\0");
	send_all($c, $out . msg('Z', 'I'));
	return;
}

# Sync: answer the batch, or hang if it touches a "hang" statement.
sub handle_sync
{
	my ($c, $opt) = @_;
	my @batch = @{ $c->{batch} };
	$c->{batch} = [];
	my $out = '';
	for my $m (@batch)
	{
		my ($type, $body) = @$m;
		if ($type eq 'P')
		{
			my ($name, $sql) = unpack('Z* Z*', $body);
			event("parse $sql");
			$c->{stmts}{$name} = $sql;
			$out .= msg('1');
		}
		elsif ($type eq 'B')
		{
			my (undef, $stmt) = unpack('Z* Z*', $body);
			$out .= msg('2');
		}
		elsif ($type eq 'D')
		{
			my ($kind) = unpack('a', $body);
			$out .= msg('t', pack('n', 0)) if $kind eq 'S';
			$out .= msg('n');
		}
		elsif ($type eq 'E')
		{
			$out .= msg('C', "SELECT 0\0");
		}
		elsif ($type eq 'C')
		{
			$out .= msg('3');
		}
	}
	for my $m (@batch)
	{
		my ($type, $body) = @$m;
		my $sql;
		$sql = (unpack('Z* Z*', $body))[1] if $type eq 'P';
		$sql = $c->{stmts}{ (unpack('Z* Z*', $body))[1] } if $type eq 'B';
		if (defined $sql && $sql =~ /hang/)
		{
			$c->{phase} = 'hung';
			return;
		}
	}
	send_all($c, $out . msg('Z', 'I'));
	return;
}

# Listen on 127.0.0.1:port in a child process that forks one child per connection to run
# session($socket).  Every process exits after seconds (default 120) whatever happens, with
# POSIX::_exit: a plain exit would run the test's END blocks.  Returns the listener's pid.
sub fork_sessions
{
	my ($port, $session, $seconds) = @_;
	$seconds //= 120;
	my $listen = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => $port,
		Proto => 'tcp',
		Listen => 16,
		ReuseAddr => 1) or die "fake server: cannot listen on $port: $!";
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid)
	{
		close $listen;
		return $pid;
	}
	alarm($seconds);
	while (my $c = $listen->accept)
	{
		my $child = fork();
		next if !defined $child;
		if ($child)
		{
			close $c;
			next;
		}
		alarm($seconds);
		close $listen;
		$session->($c);
		POSIX::_exit(0);
	}
	POSIX::_exit(0);
}

# Read exactly n bytes from a blocking socket; undef at EOF or error.
sub read_exact
{
	my ($c, $n) = @_;
	my $buf = '';
	while (length($buf) < $n)
	{
		my $got = sysread($c, $buf, $n - length($buf), length($buf));
		return undef if !$got;
	}
	return $buf;
}

1;
