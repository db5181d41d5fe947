# Issue 11, item 5, the smaller ones:
#
#  1. A call that changes client_encoding on its connection gets 0A000, not text read in the
#     wrong encoding; the connection is set back to UTF8 for the next caller, and a SET to
#     UTF8 (no change) stays allowed.
#  2. libpq errors that carry no SQLSTATE become class 08 codes (08006; a server that sends a
#     malformed SQLSTATE 08P01), as postgres_fdw and dblink report them, never XX000.  A fake
#     server (standard library only, on 127.0.0.1, bounded in time) sends an error without a
#     SQLSTATE, one with a malformed SQLSTATE, and a message that breaks the protocol.  Real
#     servers check that a refused connection gives 08001 and a foreign backend terminated or
#     a foreign server stopped mid-query gives 08006.
#  3. dbpool.max_pools holds under concurrent creates, in READ COMMITTED and REPEATABLE READ.
#  4. A failing dbpool_create_pool or dbpool_alter_pool leaves its statement (and the
#     password in it) out of the server log.
#
# Nothing here measures time; waits are polls with deadlines.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use FakePg qw(fork_sessions read_exact msg);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $max_pools = 8;
my $fake_port = 25682;
my $refused_port = 25683;    # nothing listens there

my $f = foreign_node('F', 25681);
my $l = local_node('L', 25680, "dbpool.max_pools = $max_pools\n");

sub create_pool
{
	my ($name, $conninfo, $extra) = @_;
	$l->safe_psql('postgres',
		sprintf(q{SELECT dbpool_create_pool('%s', %s%s)},
			$name, quote_literal($conninfo), $extra ? ", $extra" : ''));
	return;
}

# ---------------------------------------------------------------------------------------
# 1. client_encoding changed inside a call
# ---------------------------------------------------------------------------------------
create_pool('enc', pool_conninfo($f, 'application_name=enc'), 'min_size => 1, max_size => 1');

my $enc_msg = qr/the query changed client_encoding on pool "enc"/;
query_fails($l,
	q{SELECT * FROM dbpool_query('enc', $$SET client_encoding = 'LATIN1'; SELECT 'Ã©'$$) AS t(x text)},
	'0A000', $enc_msg, 'SET client_encoding = LATIN1 then a SELECT (valid UTF8 after conversion)');
query_fails($l,
	q{SELECT * FROM dbpool_query('enc', $$SET client_encoding = 'LATIN1'; SELECT 'é'$$) AS t(x text)},
	'0A000', $enc_msg, 'SET client_encoding = LATIN1 then a SELECT (invalid UTF8 after conversion)');
query_fails($l,
	q{SELECT * FROM dbpool_query('enc', $$SELECT set_config('client_encoding', 'LATIN1', false), 'Ã©'::text$$, '{}') AS t(a text, x text)},
	'0A000', $enc_msg, 'set_config in a parameterized query');
query_fails($l, q{SELECT dbpool_exec('enc', $$SET client_encoding = 'LATIN1'$$)},
	'0A000', $enc_msg, 'dbpool_exec SET client_encoding');
query_fails($l, q{SELECT dbpool_exec('enc', $$SET client_encoding = 'WIN1252'$$, '{}')},
	'0A000', qr/now sends text in WIN1252/, 'dbpool_exec with params; the detail names it');
query_ok($l,
	q{SELECT * FROM dbpool_query('enc', $$SET client_encoding = 'UTF8'; SELECT 'é'$$) AS t(x text)},
	'é', 'SET client_encoding = UTF8 (no change) is allowed');
query_ok($l,
	q{SELECT * FROM dbpool_query('enc', $$SELECT current_setting('client_encoding') || ' ' || 'é'$$) AS t(x text)},
	'UTF8 é', 'the next caller finds the connection in UTF8');
query_ok($l, q{SELECT total_connections FROM dbpool_metrics WHERE pool = 'enc'},
	'1', 'the pool still has its one connection');

# ---------------------------------------------------------------------------------------
# 2. class 08 for errors without a SQLSTATE
# ---------------------------------------------------------------------------------------

# A fake PostgreSQL server: trust authentication, then for each simple Query:
#   'nostate'  an ErrorResponse without a SQLSTATE
#   'badstate' an ErrorResponse whose SQLSTATE is not five characters of [0-9A-Z]
#   'desync'   a ReadyForQuery with a broken length (libpq loses synchronization)
#   else       an empty command completion
# It runs under FakePg's fork_sessions (a child per connection, all gone within 120 s).
sub fake_session
{
	my ($c) = @_;
	binmode $c;
	# SSLRequest / GSSENCRequest until the startup packet
	while (1)
	{
		my $hdr = read_exact($c, 8) // return;
		my ($len, $code) = unpack('NN', $hdr);
		if ($code == 80877103 || $code == 80877104)
		{
			syswrite($c, 'N');
			next;
		}
		read_exact($c, $len - 8) // return;
		last;
	}
	my $out = msg('R', pack('N', 0));
	$out .= msg('S', "$_->[0]\0$_->[1]\0")
	  for ([ 'client_encoding', 'UTF8' ], [ 'server_encoding', 'UTF8' ],
		[ 'server_version', '15.0' ], [ 'DateStyle', 'ISO, MDY' ],
		[ 'integer_datetimes', 'on' ], [ 'standard_conforming_strings', 'on' ]);
	$out .= msg('K', pack('NN', 4242, 1234));
	$out .= msg('Z', 'I');
	syswrite($c, $out);
	while (1)
	{
		my $type = read_exact($c, 1) // return;
		my $len = unpack('N', read_exact($c, 4) // return);
		my $body = $len > 4 ? (read_exact($c, $len - 4) // return) : '';
		return if $type eq 'X';
		next if $type ne 'Q';
		if ($body =~ /nostate/)
		{
			syswrite($c,
				msg('E', "SERROR\0VERROR\0Man error without a SQLSTATE\0\0") . msg('Z', 'I'));
		}
		elsif ($body =~ /badstate/)
		{
			syswrite($c,
				msg('E', "SERROR\0VERROR\0C4x\0Man error with a malformed SQLSTATE\0\0")
				  . msg('Z', 'I'));
		}
		elsif ($body =~ /desync/)
		{
			syswrite($c, 'Z' . pack('N', 2));
		}
		else
		{
			syswrite($c, msg('I', '') . msg('Z', 'I'));
		}
	}
}

my $fake_pid = fork_sessions($fake_port, \&fake_session);
create_pool('fake', "host=127.0.0.1 port=$fake_port dbname=postgres user=fake",
	'min_size => 0, max_size => 2');
query_ok($l, q{SELECT dbpool_exec('fake', 'SELECT 1')}, '', 'the fake server answers');

my $r = query_fails($l, q{SELECT dbpool_exec('fake', 'nostate')},
	'08006', qr/an error without a SQLSTATE/, 'an error without a SQLSTATE');
unlike($r->{err}, qr/XX000/, 'no XX000');
query_fails($l, q{SELECT dbpool_exec('fake', 'badstate')},
	'08P01', qr/an error with a malformed SQLSTATE/, 'an error with a malformed SQLSTATE');
query_fails($l, q{SELECT dbpool_exec('fake', 'desync')},
	'08006', qr/lost synchronization with server/, 'a message that breaks the protocol');
query_ok($l, q{SELECT dbpool_exec('fake', 'SELECT 1')}, '', 'the fake pool works afterwards');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('fake')});
kill 'TERM', $fake_pid;
waitpid($fake_pid, 0);

# a target that refuses connections
create_pool('refused', "host=127.0.0.1 port=$refused_port dbname=postgres",
	'min_size => 0, max_size => 1');
query_fails($l, q{SELECT * FROM dbpool_query('refused', 'SELECT 1') AS t(x int)},
	'08001', qr/could not connect to pool "refused"/, 'a refused connection');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('refused')});

# the foreign backend terminated mid-query
create_pool('lost', pool_conninfo($f, 'application_name=lost'), 'min_size => 0, max_size => 1');
my $sleeping = q{application_name = 'lost' AND query LIKE '%pg_sleep(120)%'};
my $bg = start_bg($l, q{SELECT * FROM dbpool_query('lost', 'SELECT pg_sleep(120)') AS t(x text)});
ok(poll_until($f, "SELECT count(*) FROM pg_stat_activity WHERE $sleeping", '1'),
	'the remote query runs');
$f->safe_psql('postgres',
	"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE $sleeping");
my ($ret, $out, $err) = finish_bg($bg);
is(sqlstate_of($err), '08006', 'a terminated foreign backend: 08006') or diag($err);

# the foreign server stopped (immediate) mid-query
$bg = start_bg($l, q{SELECT * FROM dbpool_query('lost', 'SELECT pg_sleep(120)') AS t(x text)});
ok(poll_until($f, "SELECT count(*) FROM pg_stat_activity WHERE $sleeping", '1'),
	'the remote query runs again');
$f->stop('immediate');
($ret, $out, $err) = finish_bg($bg);
is(sqlstate_of($err), '08006', 'a foreign server stopped mid-query: 08006') or diag($err);
$f->start;
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('lost')});

# ---------------------------------------------------------------------------------------
# 3. dbpool.max_pools under concurrent creates
# ---------------------------------------------------------------------------------------
my $count_sql = q{SELECT count(*) FROM dbpool_config};
my $dummy = 'host=127.0.0.1 port=' . $refused_port . ' dbname=postgres';

# fill up to max_pools - 1
my $n = $l->safe_psql('postgres', $count_sql);
for my $i ($n + 1 .. $max_pools - 1)
{
	create_pool("fill$i", $dummy, 'min_size => 0');
}
is($l->safe_psql('postgres', $count_sql), $max_pools - 1, 'one pool slot left');

# READ COMMITTED: A creates in an open transaction, B creates meanwhile.
my $a = $l->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
$a->query_safe('BEGIN');
$a->query_safe(qq{SELECT dbpool_create_pool('race_a', '$dummy', min_size => 0)});
$bg = start_bg($l, qq{SELECT dbpool_create_pool('race_b', '$dummy', min_size => 0)});
# B waits for A's lock, or (without the lock) has committed its pool already
ok( poll_until(
		$l,
		q{SELECT (SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%race_b%'
		            AND pid <> pg_backend_pid() AND wait_event_type = 'Lock')
		       + (SELECT count(*) FROM dbpool_config WHERE name = 'race_b')},
		'1'),
	'the concurrent create waits for the first, or is done');
$a->query_safe('COMMIT');
($ret, $out, $err) = finish_bg($bg);
is(sqlstate_of($err), '53400', 'READ COMMITTED: the concurrent create is refused') or diag($err);
is($l->safe_psql('postgres', $count_sql), $max_pools, 'READ COMMITTED: max_pools pools, no more');
$l->safe_psql('postgres',
	q{SELECT dbpool_drop_pool(name) FROM dbpool_config WHERE name LIKE 'race%'});

# REPEATABLE READ: A's snapshot predates a create committed elsewhere; A's create sees it.
is($l->safe_psql('postgres', $count_sql), $max_pools - 1, 'one pool slot left again');
$a->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
is($a->query_safe($count_sql), $max_pools - 1, 'A took its snapshot');
$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('rr_other', '$dummy', min_size => 0)});
$a->query(qq{SELECT dbpool_create_pool('rr_a', '$dummy', min_size => 0)});
is(sqlstate_of($a->{stderr}), '53400', 'REPEATABLE READ: the create that would exceed is refused')
  or diag($a->{stderr});
$a->query('COMMIT');
is($l->safe_psql('postgres', $count_sql), $max_pools, 'REPEATABLE READ: max_pools pools, no more');
$a->quit;

# ---------------------------------------------------------------------------------------
# 4. a failing admin call does not log its statement (nor the password in it)
# ---------------------------------------------------------------------------------------
# from here on independent of what happened above: only the pool 'enc' is left
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool(name) FROM dbpool_config WHERE name <> 'enc'});
# PostgreSQL::Test::Cluster logs every statement; what is tested here is the STATEMENT line
# of a failing call (log_min_error_statement, default error)
$l->append_conf('postgresql.conf', "log_statement = none\n");
$l->reload;
ok(poll_until($l, q{SHOW log_statement}, 'none'), 'log_statement is none');
is($l->safe_psql('postgres', q{SHOW log_min_error_statement}), 'error',
	'log_min_error_statement is error');
my $offset = -s $l->logfile;
my $secret = 'SECRET' . int(rand(1e9));
my $ci = "host=127.0.0.1 port=$refused_port dbname=postgres password=$secret";
my @calls = (
	[ "dbpool_create_pool('bad1', '$ci', max_size => 0)", qr/invalid value for max_size/ ],
	[ "dbpool_create_pool('bad name!', '$ci')", qr/invalid pool name/ ],
	[ "dbpool_create_pool('enc', '$ci')", qr/already exists/ ],
	[ "dbpool_create_pool('bad2', '$ci nokey')", qr/invalid value for conninfo/ ],
	[ "dbpool_alter_pool('enc', '{\"conninfo\": \"$ci\", \"max_size\": 0}')", qr/invalid value for max_size/ ],
	[ "dbpool_alter_pool('enc', '{\"conninfo\": \"$ci\", \"no_such\": 1}')", qr/unknown pool setting/ ],
	[ "dbpool_alter_pool('nosuchpool', '{\"conninfo\": \"$ci\"}')", qr/does not exist/ ]);
for my $call (@calls)
{
	$r = run_sql($l, "SELECT $call->[0]");
	ok($r->{ret}, "fails: $call->[0]");
	like($r->{err}, $call->[1], "its error: $call->[0]");
}
# one pool too many: the max_pools error
for my $i (2 .. $max_pools)
{
	create_pool("full$i", $dummy, 'min_size => 0');
}
$r = run_sql($l, "SELECT dbpool_create_pool('toomany', '$ci')");
is($r->{sqlstate}, '53400', 'the max_pools error');
my $log = slurp_file($l->logfile, $offset);
like($log, qr/invalid value for max_size/, 'the errors are in the server log');
like($log, qr/dbpool.max_pools \($max_pools\) pools exist/, 'the max_pools error is in the log');
unlike($log, qr/\Q$secret\E/, 'the password is not in the server log');
unlike($log, qr/STATEMENT:.*dbpool_(create|alter)_pool/, 'no STATEMENT line for those calls');

done_testing();
