# Helpers shared by dbpool's TAP tests (test/t/*.pl).
#
# A test has a local node L (dbpool preloaded, dbpool.database = 'postgres', the extension
# created) and one or more foreign nodes F (plain PostgreSQL).  Every node listens on a
# fixed port below 32768 and on the Unix socket directory PostgreSQL::Test::Cluster picks;
# pools reach F through that socket.
#
# Waits are polls with generous deadlines, never sleeps; nothing asserts on durations.

package DbpoolTest;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IO::Select;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(
  local_node foreign_node pool_conninfo quote_literal
  run_sql sqlstate_of query_ok query_fails
  poll_until start_bg finish_bg wait_bg_stderr
  remote_count dbpool_worker_pids require_password
  http_request http_get metrics_pids
);

# Long enough for a loaded shared machine, short enough that a hang fails the run.
our $WAIT = $PostgreSQL::Test::Utils::timeout_default;

sub local_node
{
	my ($name, $port, $extra_conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name, port => $port);
	$node->init;
	$node->append_conf('postgresql.conf',
		    "shared_preload_libraries = 'dbpool'\n"
		  . "dbpool.database = 'postgres'\n"
		  . "log_connections = on\n"
		  . ($extra_conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION dbpool');
	return $node;
}

sub foreign_node
{
	my ($name, $port, $extra_conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name, port => $port);
	$node->init;
	$node->append_conf('postgresql.conf', $extra_conf) if defined $extra_conf;
	$node->start;
	return $node;
}

# "host=<socket dir> port=<port> dbname=postgres[ key=value ...]"
sub pool_conninfo
{
	my ($f, @extra) = @_;
	return join(' ',
		'host=' . $f->host, 'port=' . $f->port, 'dbname=postgres', @extra);
}

sub quote_literal
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# Run SQL through psql (ON_ERROR_STOP, VERBOSITY verbose so errors carry their SQLSTATE).
# Options: db (default postgres), user, timeout (seconds, default $WAIT).
# Returns a hash ref: ret (psql exit code, undef on timeout), out, err, timed_out, sqlstate.
sub run_sql
{
	my ($node, $sql, %opt) = @_;
	my $db = $opt{db} // 'postgres';
	my ($out, $err, $timed_out) = ('', '', 0);
	my %params = (
		stdout => \$out,
		stderr => \$err,
		timeout => $opt{timeout} // $WAIT,
		timed_out => \$timed_out,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	$params{connstr} = $node->connstr($db) . " user=$opt{user}"
	  if defined $opt{user};
	my $ret = $node->psql($db, $sql, %params);
	return {
		ret => $timed_out ? undef : $ret,
		out => $out,
		err => $err,
		timed_out => $timed_out,
		sqlstate => sqlstate_of($err)
	};
}

# The SQLSTATE of the first ERROR/FATAL in verbose psql output.
sub sqlstate_of
{
	my ($err) = @_;
	return undef unless defined $err;
	return $err =~ /(?:ERROR|FATAL):\s+([0-9A-Z]{5}):/ ? $1 : undef;
}

# Assert that SQL succeeds and prints exactly $expected.  Returns the output.
sub query_ok
{
	my ($node, $sql, $expected, $name, %opt) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $r = run_sql($node, $sql, %opt);
	if ($r->{timed_out})
	{
		fail("$name (psql timed out)");
	}
	elsif ($r->{ret} != 0)
	{
		fail("$name (failed: $r->{err})");
	}
	else
	{
		is($r->{out}, $expected, $name);
	}
	return $r->{out};
}

# Assert that SQL fails with SQLSTATE $sqlstate (a string or a qr//) and, when given, a
# message matching $msg_re; all within the psql timeout.  Returns the run_sql hash.
sub query_fails
{
	my ($node, $sql, $sqlstate, $msg_re, $name, %opt) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $r = run_sql($node, $sql, %opt);
	if ($r->{timed_out})
	{
		fail("$name: returned within the timeout");
		return $r;
	}
	if ($r->{ret} == 0)
	{
		fail("$name: fails (it succeeded, output '$r->{out}')");
		return $r;
	}
	if (ref $sqlstate eq 'Regexp')
	{
		like($r->{sqlstate} // 'none', $sqlstate, "$name: SQLSTATE")
		  or diag("stderr: $r->{err}");
	}
	elsif (defined $sqlstate)
	{
		is($r->{sqlstate} // 'none', $sqlstate, "$name: SQLSTATE")
		  or diag("stderr: $r->{err}");
	}
	like($r->{err}, $msg_re, "$name: message") if defined $msg_re;
	return $r;
}

# Run $sql until it prints $expected (default 't') or $deadline seconds pass.
# Returns 1 on success; on timeout prints the last output and returns 0.
sub poll_until
{
	my ($node, $sql, $expected, $deadline, %opt) = @_;
	$expected //= 't';
	$deadline //= $WAIT;
	my $end = time() + $deadline;
	my $r;
	while (1)
	{
		$r = run_sql($node, $sql, %opt, timeout => $deadline);
		return 1
		  if !$r->{timed_out} && $r->{ret} == 0 && $r->{out} eq $expected;
		last if time() > $end;
		usleep(100_000);
	}
	diag("poll_until gave up after ${deadline}s on:\n$sql\nexpected: $expected\n"
		  . "last output: $r->{out}\nlast stderr: $r->{err}");
	return 0;
}

# Start psql in the background on $sql.  Options: db, user, timeout (default $WAIT).
sub start_bg
{
	my ($node, $sql, %opt) = @_;
	my $db = $opt{db} // 'postgres';
	my $bg = { out => '', err => '', sql => $sql };
	my @cmd = (
		'psql', '-XAtq', '-h', $node->host, '-p', $node->port,
		'-d', $db, '-v', 'ON_ERROR_STOP=1', '-v', 'VERBOSITY=verbose',
		'-c', $sql);
	push @cmd, '-U', $opt{user} if defined $opt{user};
	$bg->{timer} = IPC::Run::timeout($opt{timeout} // $WAIT);
	$bg->{h} = IPC::Run::start(\@cmd, '<', \undef, '>', \$bg->{out}, '2>',
		\$bg->{err}, $bg->{timer});
	return $bg;
}

# Wait for a background psql to exit.  Returns (exit code or undef on timeout, out, err).
sub finish_bg
{
	my ($bg) = @_;
	my $ret;
	eval {
		$bg->{h}->finish;
		$ret = $bg->{h}->result(0);
		1;
	} or do {
		diag("background psql did not finish: $@ (sql: $bg->{sql})");
		eval { $bg->{h}->kill_kill; };
		$ret = undef;
	};
	chomp(my $out = $bg->{out});
	chomp(my $err = $bg->{err});
	return ($ret, $out, $err);
}

# Pump a background psql until its stderr matches $re; 1 if it did before the timeout.
sub wait_bg_stderr
{
	my ($bg, $re) = @_;
	my $ok = eval {
		$bg->{h}->pump until $bg->{err} =~ $re || !$bg->{h}->pumpable;
		1;
	};
	return $ok && $bg->{err} =~ $re ? 1 : 0;
}

# Number of sessions on node $f matching a WHERE clause (own session excluded).
sub remote_count
{
	my ($f, $where) = @_;
	return $f->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND ($where)"
	);
}

sub dbpool_worker_pids
{
	my ($l) = @_;
	my $out = $l->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'dbpool worker' ORDER BY pid"
	);
	return grep { /^\d+$/ } split /\n/, $out;
}

# Make node $f ask $role for a SCRAM password (on its Unix socket, and on 127.0.0.1 if
# $tcp), ahead of the trust lines PostgreSQL::Test::Cluster writes; reload.
sub require_password
{
	my ($f, $role, $tcp) = @_;
	my $hba = $f->data_dir . '/pg_hba.conf';
	my $old = slurp_file($hba);
	open(my $fh, '>', $hba) or die "open $hba: $!";
	print $fh "local all $role scram-sha-256\n";
	print $fh "host all $role 127.0.0.1/32 scram-sha-256\n" if $tcp;
	print $fh $old;
	close $fh;
	$f->reload;
	return;
}

# The pids of node $node's "dbpool metrics" processes (it has no pg_stat_activity row: it
# has no database): the postmaster's children whose title names it.
sub metrics_pids
{
	my ($node) = @_;
	my $pm = $node->{_pid} // return ();
	my @pids;
	for my $dir (glob '/proc/[0-9]*')
	{
		open(my $fh, '<', "$dir/stat") or next;
		my $stat = <$fh> // '';
		close $fh;
		next unless $stat =~ /\) \S+ (\d+) / && $1 == $pm;
		open($fh, '<', "$dir/cmdline") or next;
		my $cmd = <$fh> // '';
		close $fh;
		push @pids, $1 if $cmd =~ /dbpool metrics/ && $dir =~ m{(\d+)$};
	}
	return @pids;
}

# Send a raw HTTP request to 127.0.0.1:$port and read until the server closes, at most
# $timeout seconds (default $WAIT).  Returns a hash ref: status (0 when nothing came back),
# headers (lower-cased names), body, raw, err.
sub http_request
{
	my ($port, $raw, $timeout) = @_;
	$timeout //= $WAIT;
	local $SIG{PIPE} = 'IGNORE';
	my $s = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $port,
		Proto => 'tcp',
		Timeout => $timeout);
	return { status => 0, headers => {}, body => '', raw => '', err => "connect: $!" }
	  unless $s;
	syswrite($s, $raw) if length $raw;
	my ($buf, $end, $sel) = ('', time() + $timeout, IO::Select->new($s));
	while ((my $left = $end - time()) > 0)
	{
		last unless $sel->can_read($left);
		my $n = sysread($s, my $chunk, 65536);
		last unless $n;
		$buf .= $chunk;
	}
	close $s;
	my %r = (status => 0, headers => {}, body => '', raw => $buf, err => '');
	if ($buf =~ m{\AHTTP/1\.[01] (\d{3})[^\r\n]*\r\n(.*?)\r\n\r\n(.*)\z}s)
	{
		$r{status} = $1;
		$r{body} = $3;
		for my $line (split /\r\n/, $2)
		{
			$r{headers}{ lc $1 } = $2 if $line =~ /^([^:]+):\s*(.*)$/;
		}
	}
	return \%r;
}

# GET $path from 127.0.0.1:$port; options: headers (array ref of "Name: value"), timeout.
sub http_get
{
	my ($port, $path, %opt) = @_;
	my $h = join('', map { "$_\r\n" } @{ $opt{headers} // [] });
	return http_request($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n$h\r\n",
		$opt{timeout});
}

1;
