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

# Issued while the worker is down or restarting: an answer or a clear error, not a hang.
my $r = run_sql($l, $q, timeout => 20);
ok(!$r->{timed_out}, 'a query while the worker restarts returns');
ok(!$r->{timed_out}
	  && (($r->{ret} == 0 && $r->{out} eq '1') || ($r->{ret} != 0 && $r->{err} =~ /ERROR:/)),
	'it either succeeds or fails with an ERROR')
  or diag("ret " . ($r->{ret} // 'timeout') . " out '$r->{out}' err '$r->{err}'");

ok(poll_until($l,
	"SELECT count(*) = 1 AND bool_and(pid <> $old) FROM pg_stat_activity WHERE backend_type = 'dbpool worker'"),
	'the worker restarts with a new pid');
ok(poll_until($l, $q, '1'), 'queries work again after the worker restart');
query_ok($l, q{SELECT count(*) FROM dbpool_pools WHERE name = 'fpool'}, '1',
	'the pool survived the worker restart');
is($session->query_safe('SELECT 2'), '2', 'the local session survived the worker restart');
$session->quit;
ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'no crash of L (the worker exits, it does not crash)');

# --- F dies under a running query ---------------------------------------------------------
my $bg = start_bg($l, q{SELECT * FROM dbpool_query('fpool', 'SELECT pg_sleep(60)') AS t(x text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()}, '1'),
	'remote query running');
$f->stop('immediate');
my ($ret, $out, $err) = finish_bg($bg);
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

done_testing();
