# Pool behaviour the issue names that the other files do not hold: the global cap
# (dbpool.max_connections) with idle slots taken from another pool, FIFO order of waiters,
# waiters of a dropped pool, a lock on the configuration table, a live conninfo swap, the
# connect deadline against a server that never answers, and the worker waiting for its
# database (57P03 to callers, one log line).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25581);
my $l = local_node('L', 25580, "dbpool.max_connections = 3\n");
$f->safe_psql('postgres', q{CREATE TABLE fifo_log (id serial, label text)});

sub create_pool
{
	my ($name, $app, $opts) = @_;
	my $ci = pool_conninfo($f, "application_name=$app");
	$l->safe_psql('postgres', "SELECT dbpool_create_pool('$name', '$ci', $opts)");
}

sub apps { return remote_count($f, "application_name = '$_[0]'"); }

# The number of $pattern queries in L that wait for the worker (wait event Extension).
sub waiting_sql
{
	my ($pattern) = @_;
	return "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
	  . "AND query LIKE '%$pattern%' AND wait_event_type = 'Extension'";
}

# --- the global cap: 3 connections for all pools together ------------------------------
create_pool('cap_a', 'cap_a', 'min_size => 0, max_size => 3');
create_pool('cap_b', 'cap_b', 'min_size => 0, max_size => 3');
my $seen = q{SELECT n FROM dbpool_query('%s', $$SELECT pg_sleep(%s), count(*)::int FROM pg_stat_activity WHERE application_name LIKE 'cap_%%'$$) AS t(s text, n int)};
my @bg = (
	start_bg($l, sprintf($seen, 'cap_a', 2)),
	start_bg($l, sprintf($seen, 'cap_a', 2)),
	start_bg($l, sprintf($seen, 'cap_b', 2)));
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'cap_%' AND state = 'active'}, '3'),
	'three queries hold the three connections of the global cap');
push @bg, start_bg($l, sprintf($seen, 'cap_b', 0));
ok(poll_until($l, waiting_sql('pg_sleep(0)'), '1'), 'a fourth request waits for the global cap');
for my $i (0 .. 3)
{
	my ($ret, $out, $err) = finish_bg($bg[$i]);
	is($ret, 0, "capped request $i succeeds") or diag($err);
	ok($out =~ /^\d+$/ && $out <= 3, "capped request $i saw at most 3 pool connections on F ($out)");
}
# cap_a holds idle connections; cap_b needs all three slots at once: it takes them over
@bg = map { start_bg($l, sprintf($seen, 'cap_b', 1)) } 1 .. 3;
for my $b (@bg)
{
	my ($ret, $out, $err) = finish_bg($b);
	is($ret, 0, 'cap_b gets a slot an idle cap_a connection gave up') or diag($err);
	ok($out =~ /^\d+$/ && $out <= 3, "still at most 3 on F ($out)");
}
is(apps('cap_a'), '0', "cap_a's idle connections were closed to make room");
# cap_a holds all three slots busy; a cap_b request waits, and gets a slot when they go idle
@bg = map { start_bg($l, sprintf($seen, 'cap_a', 2)) } 1 .. 3;
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cap_a' AND state = 'active'}, '3'),
	'cap_a holds every slot');
my $late = start_bg($l, sprintf($seen, 'cap_b', 0));
ok(poll_until($l, waiting_sql('pg_sleep(0)'), '1'), 'a cap_b request waits for a slot');
is((finish_bg($_))[0], 0, 'cap_a query finishes') for @bg;
my ($late_ret, $late_out, $late_err) = finish_bg($late);
is($late_ret, 0, 'the waiting cap_b request gets a slot once cap_a goes idle') or diag($late_err);


# --- FIFO: waiters are served in the order they came -----------------------------------
create_pool('fifo', 'fifo', 'min_size => 0, max_size => 1');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('cap_a'); SELECT dbpool_drop_pool('cap_b')});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'cap_%'}, '0'),
	'the cap pools are gone');
my $holder = start_bg($l, q{SELECT * FROM dbpool_query('fifo', 'SELECT pg_sleep(2)') AS t(s text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fifo' AND state = 'active'}, '1'),
	'fifo: the only connection is busy');
my @waiters;
for my $w (qw(w1 w2 w3))
{
	push @waiters, start_bg($l, qq{SELECT dbpool_exec('fifo', 'INSERT INTO fifo_log (label) VALUES (''fifo_$w'')')});
	ok(poll_until($l, waiting_sql("fifo_$w"), '1'), "fifo: $w waits");
}
is((finish_bg($holder))[0], 0, 'fifo: the holder finishes');
is((finish_bg($_))[0], 0, 'fifo: a waiter finishes') for @waiters;
is($f->safe_psql('postgres', q{SELECT string_agg(label, ',' ORDER BY id) FROM fifo_log}),
	'fifo_w1,fifo_w2,fifo_w3', 'waiters ran in the order they arrived');

# --- dropping a pool answers its waiters at once ---------------------------------------
$holder = start_bg($l, q{SELECT x FROM dbpool_query('fifo', 'SELECT pg_sleep(2), 1') AS t(s text, x int)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fifo' AND state = 'active'}, '1'),
	'drop: the connection is busy');
my $waiter = start_bg($l, q{SELECT x FROM dbpool_query('fifo', 'SELECT 2 AS drop_waiter') AS t(x int)});
ok(poll_until($l, waiting_sql('drop_waiter'), '1'), 'drop: a request waits');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('fifo')});
my ($ret, $out, $err) = finish_bg($waiter);
ok(defined $ret && $ret != 0 && sqlstate_of($err) eq '42704' && $err =~ /was dropped/,
	'the waiter gets 42704 "was dropped"') or diag($err);
($ret, $out) = finish_bg($holder);
is($out, '1', 'the query in flight still finishes');

# --- a lock on the configuration table does not stall the pools -----------------------
create_pool('locked', 'locked', 'min_size => 1, max_size => 2');
query_ok($l, q{SELECT x FROM dbpool_query('locked', 'SELECT 1') AS t(x int)}, '1', 'pool works');
my $locker = $l->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE dbpool_config IN ACCESS EXCLUSIVE MODE');
# a lookup that misses asks the worker to re-read, which cannot while the lock is held
my $miss = start_bg($l, q{SELECT * FROM dbpool_query('no_such_pool', 'SELECT 1') AS t(x int)});
ok(poll_until($l, waiting_sql('no_such_pool'), '1', 10), 'a lookup miss is waiting for a re-read');
for my $i (1 .. 5)
{
	my $r = run_sql($l, q{SELECT x FROM dbpool_query('locked', 'SELECT 7') AS t(x int)}, timeout => 3);
	ok(!$r->{timed_out} && $r->{out} eq '7', "query $i on a live pool answers while the table is locked");
}
($ret, $out, $err) = finish_bg($miss);
is(sqlstate_of($err), '42704', 'the miss still ends with 42704');
$locker->query_safe('COMMIT');
$locker->quit;

# --- a new conninfo replaces connections, busy ones when they come free ----------------
create_pool('swap', 'swap_old', 'min_size => 2, max_size => 2');
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'swap_old'}, '2'),
	'swap: min_size connections with the old conninfo');
my $busy = start_bg($l, q{SELECT x FROM dbpool_query('swap', 'SELECT pg_sleep(2), 3') AS t(s text, x int)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'swap_old' AND state = 'active'}, '1'),
	'swap: one of them is busy');
my $new_ci = pool_conninfo($f, 'application_name=swap_new');
$l->safe_psql('postgres', "SELECT dbpool_alter_pool('swap', json_build_object('conninfo', '$new_ci')::jsonb)");
($ret, $out) = finish_bg($busy);
is($out, '3', 'swap: the busy query finishes on its old connection');
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'swap_old'}, '0'),
	'swap: every old connection is gone');
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'swap_new'}, '2'),
	'swap: min_size connections with the new conninfo');

# --- a server that accepts TCP but never answers: connect_timeout is enforced ----------
my $silent = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 25589,
	Listen => 16, ReuseAddr => 1, Proto => 'tcp') or die "listen: $!";
$l->safe_psql('postgres',
	q{SELECT dbpool_create_pool('silent', 'host=127.0.0.1 port=25589 dbname=x connect_timeout=2', min_size => 0, max_size => 1, acquire_timeout_ms => 0)});
my $r = run_sql($l, q{SELECT * FROM dbpool_query('silent', 'SELECT 1') AS t(x int)}, timeout => 30);
ok(!$r->{timed_out}, 'a silent server does not hang the caller');
is($r->{sqlstate}, '08001', 'it gets 08001');
like($r->{err}, qr/timeout expired/, 'saying the connection timed out');
query_ok($l, q{SELECT x FROM dbpool_query('locked', 'SELECT 8') AS t(x int)}, '8',
	'other pools are unaffected');
close($silent);

# --- the worker does not hold up DROP DATABASE (it serves ProcSignalBarriers) ---------
$l->safe_psql('postgres', 'CREATE DATABASE scratch');
$r = run_sql($l, 'DROP DATABASE scratch', timeout => 15);
ok(!$r->{timed_out} && $r->{ret} == 0, 'DROP DATABASE completes without waiting for the worker')
  or diag($r->{err});

# --- before dbpool.database exists: 57P03 for callers, one log line --------------------
my $l3 = PostgreSQL::Test::Cluster->new('L3', port => 25582);
$l3->init;
$l3->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dbpool'\ndbpool.database = 'not_yet'\n");
$l3->start;
$l3->safe_psql('postgres', 'CREATE EXTENSION dbpool');
query_fails($l3, q{SELECT * FROM dbpool_query('p', 'SELECT 1') AS t(x int)}, '57P03',
	qr/dbpool worker is not running/, 'no worker yet: 57P03, not a hang', timeout => 15);
$l3->wait_for_log(qr/waiting for database "not_yet"/);
sleep 5;    # the worker checks every 2 s: several checks, still one line
my $lines = () = slurp_file($l3->logfile) =~ /waiting for database "not_yet"/g;
is($lines, 1, 'the worker logs its wait once, not at every check');
$l3->stop;

done_testing();
