# Faults: the dbpool worker is killed (it restarts, sessions survive, nothing hangs); the
# foreign server dies mid-query, stays down (quick, clear errors naming the pool) and comes
# back (the pool recovers by itself).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $f = foreign_node('F', 25551);
my $l = local_node('L', 25550);
$l->safe_psql('postgres',
	"SELECT dbpool_create_pool('fpool', " . quote_literal(pool_conninfo($f)) . ", max_size => 2)");
my $q = q{SELECT x FROM dbpool_query('fpool', 'SELECT 1') AS t(x int)};
query_ok($l, $q, '1', 'pool answers');

# --- the worker is terminated -----------------------------------------------------------
my $session = $l->background_psql('postgres', on_error_stop => 0);
$session->set_query_timer_restart();
is($session->query_safe('SELECT 1'), '1', 'a long-lived local session');

my @workers = dbpool_worker_pids($l);
is(scalar @workers, 1, 'one dbpool worker');
my $old = $workers[0] // 0;
is($l->safe_psql('postgres', "SELECT pg_terminate_backend($old)"), 't',
	'pg_terminate_backend(worker)');

# Issued while the worker is down or restarting: each query answers or fails with a clear
# error, never hangs, and never claims that the (existing) pool does not exist.  Queries
# are repeated until one succeeds, to cover the whole restart window.
my (@bad, $hung, $answered);
my $until = time() + 30;
while (time() < $until)
{
	my $r = run_sql($l, $q, timeout => 20);
	if ($r->{timed_out}) { $hung = 1; last; }
	if ($r->{ret} == 0 && $r->{out} eq '1') { $answered = 1; last; }
	push @bad, $r->{err} if $r->{err} !~ /ERROR:/ || ($r->{sqlstate} // '') eq '42704';
}
ok(!$hung, 'no query hangs while the worker restarts');
ok($answered, 'a query succeeds once the worker is back');
is(scalar @bad, 0, 'no query during the restart gets "pool does not exist" or a non-ERROR')
  or diag(join("\n", @bad));

ok(poll_until($l,
	"SELECT count(*) = 1 AND bool_and(pid <> $old) FROM pg_stat_activity WHERE backend_type = 'dbpool worker'"),
	'the worker restarts with a new pid');
ok(poll_until($l, $q, '1'), 'queries work again after the worker restart');
query_ok($l, q{SELECT count(*) FROM dbpool_pools WHERE name = 'fpool'}, '1',
	'the pool survived the worker restart');
is($session->query_safe('SELECT 2'), '2', 'the local session survived the worker restart');
$session->quit;
my ($ret, $out, $err);
my $bg;
ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'no crash of L (the worker exits, it does not crash)');

# --- the worker dies while a client waits for its remote query -------------------------
my $sleep59 = q{SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(59)%' AND pid <> pg_backend_pid()};
$bg = start_bg($l, q{SELECT * FROM dbpool_query('fpool', 'SELECT pg_sleep(59)') AS t(x text)}, timeout => 40);
ok(poll_until($f, $sleep59, '1'), 'worker death: remote query running');
@workers = dbpool_worker_pids($l);
is($l->safe_psql('postgres', "SELECT pg_terminate_backend($workers[0])"), 't',
	'terminate the worker under a running query');
($ret, $out, $err) = finish_bg($bg);
ok(defined $ret, 'the waiting client does not hang on the dead worker');
ok(defined $ret && $ret != 0 && $err =~ /ERROR:/, 'it gets an ERROR')
  or diag("ret " . ($ret // 'timeout') . " out '$out' err '$err'");
ok(poll_until($l, $q, '1'), 'queries work again after this worker restart');
ok(poll_until($f, $sleep59, '0', 10), 'the exiting worker cancelled its remote query');

# --- F dies under a running query ---------------------------------------------------------
$bg = start_bg($l, q{SELECT * FROM dbpool_query('fpool', 'SELECT pg_sleep(60)') AS t(x text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()}, '1'),
	'remote query running');
$f->stop('immediate');
($ret, $out, $err) = finish_bg($bg);
ok(defined $ret && $ret != 0, 'the query gets an error when F dies under it')
  or diag("ret " . ($ret // 'timeout') . " out '$out' err '$err'");
like($err, qr/ERROR:/, 'an ERROR, not a lost local connection');

# --- F stays down -----------------------------------------------------------------------
for my $i (1 .. 2)
{
	query_fails($l, $q, qr/^08(001|006)$/, qr/fpool/,
		"F down, query $i: connection error naming the pool", timeout => 30);
}
query_ok($l, q{SELECT 1}, '1', 'L itself is fine');

# --- F comes back -------------------------------------------------------------------------
$f->start;
ok(poll_until($l, $q, '1', 90), 'F back: the pool recovers without being touched');
query_ok($l, q{SELECT count(*) FROM dbpool_query('fpool', 'SELECT generate_series(1, 1000)') AS t(x int)},
	'1000', 'and returns full results');

# --- dbpool.database does not exist yet when the server starts --------------------------
my $l2 = PostgreSQL::Test::Cluster->new('L2', port => 25552);
$l2->init;
$l2->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dbpool'\ndbpool.database = 'pooldb'\n");
$l2->start;
query_ok($l2, 'SELECT 1', '1', 'L2 starts although dbpool.database does not exist');
$l2->safe_psql('postgres', 'CREATE DATABASE pooldb');
$l2->safe_psql('pooldb', 'CREATE EXTENSION dbpool');
$l2->safe_psql('pooldb',
	"SELECT dbpool_create_pool('p2', " . quote_literal(pool_conninfo($f)) . ')');
ok(poll_until($l2, q{SELECT x FROM dbpool_query('p2', 'SELECT 8') AS t(x int)}, '8', 60, db => 'pooldb'),
	'once the database and the extension exist, pools work');
ok(!$l2->log_contains(qr/FATAL:\s+database "pooldb" does not exist/),
	'the worker never tried to connect to the missing database');
$l2->stop;

done_testing();
