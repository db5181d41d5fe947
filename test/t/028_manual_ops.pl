# The operator's manual operations (issue 12): dbpool_restart_pool closes every connection (a
# query in flight finishes within the grace period, or is cancelled after it) and reconnects;
# dbpool_cleanup_pool closes idle and broken connections and clears the down state.  Both are
# for the owner or a superuser.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25771);
my $l = local_node('L', 25770);
my $ci = quote_literal(pool_conninfo($f, 'application_name=pool_p'));

$l->safe_psql('postgres', qq{
	CREATE ROLE bob LOGIN;
	SELECT dbpool_create_pool('p', $ci, min_size => 2, max_size => 4);
});
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'p'}, '2'),
	'two idle connections');

sub remote_pids
{
	return $f->safe_psql('postgres', q{SELECT string_agg(pid::text, ',' ORDER BY pid)
		FROM pg_stat_activity WHERE application_name = 'pool_p' AND state = 'idle'});
}

# --- bad input and privileges -------------------------------------------------------------------
query_fails($l, q{SELECT dbpool_restart_pool('nope')}, '42704', qr/pool "nope" does not exist/,
	'restart: unknown pool');
query_fails($l, q{SELECT dbpool_cleanup_pool(NULL)}, '22004', qr/must not be null/,
	'cleanup: NULL name');
query_fails($l, q{SELECT dbpool_restart_pool('p')}, '42501', qr/must be owner of pool "p"/,
	'restart: not the owner', user => 'bob');
query_fails($l, q{SELECT dbpool_cleanup_pool('p')}, '42501', qr/must be owner of pool "p"/,
	'cleanup: not the owner', user => 'bob');

# --- restart ------------------------------------------------------------------------------------
my $old = remote_pids();
my $short = start_bg($l, q{SELECT * FROM dbpool_query('p', 'SELECT pg_sleep(1.5)::text') AS t(x text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity
	WHERE application_name = 'pool_p' AND query LIKE '%pg_sleep(1.5)%' AND state = 'active'}, '1'),
	'a query runs through p');
query_ok($l, q{SELECT dbpool_restart_pool('p')}, '', 'dbpool_restart_pool');
my ($ret) = finish_bg($short);
is($ret, 0, 'the query in flight finished normally');
ok(poll_until($f, qq{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool_p'
	AND pid = ANY ('{$old}'::int[])}, '0'), 'every old connection is gone from F');
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'p'}, '2'),
	'min_size reconnected');
isnt(remote_pids(), $old, 'with new connections');
query_ok($l, q{SELECT * FROM dbpool_query('p', 'SELECT 7') AS t(x int)}, '7', 'p serves');

# a query longer than the grace period is cancelled after it
my $long = start_bg($l, q{SELECT * FROM dbpool_query('p', 'SELECT pg_sleep(60)::text') AS t(x text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity
	WHERE application_name = 'pool_p' AND query LIKE '%pg_sleep(60)%' AND state = 'active'}, '1'),
	'a long query runs through p');
$l->safe_psql('postgres', q{SELECT dbpool_restart_pool('p')});
my ($lret, $lout, $lerr) = finish_bg($long);
like($lerr, qr/57P01.*pool "p" was restarted while the query ran/s,
	'after the grace period the long query gets 57P01');
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity
	WHERE application_name = 'pool_p' AND query LIKE '%pg_sleep(60)%' AND state = 'active'}, '0'),
	'and is gone from F');

# --- cleanup ------------------------------------------------------------------------------------
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'p'}, '2'),
	'two idle connections again');
my $idle_before = $l->safe_psql('postgres',
	q{SELECT dbpool_detailed_metrics('p')->'counters'->>'closed_idle'});
query_ok($l, q{SELECT dbpool_cleanup_pool('p')}, '', 'dbpool_cleanup_pool');
query_ok($l, q{SELECT (dbpool_detailed_metrics('p')->'counters'->>'closed_idle')::int - } . $idle_before,
	'2', 'it closed the two idle connections');
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'p'}, '2'),
	'min_size reconnected after the cleanup');

# a down pool: cleanup clears the down state, so the next call tries to connect at once
my $later = PostgreSQL::Test::Cluster->new('LATER', port => 25772);
$later->init;
my $later_ci = quote_literal(pool_conninfo($later));
$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('later', $later_ci, min_size => 0,
	down_probe_interval_ms => 600000)});
query_fails($l, q{SELECT * FROM dbpool_query('later', 'SELECT 1') AS t(x int)}, '08001', undef,
	'a pool without a server');
query_ok($l, q{SELECT state FROM dbpool_pools WHERE name = 'later'}, 'down', 'is down');
$later->start;
query_fails($l, q{SELECT * FROM dbpool_query('later', 'SELECT 1') AS t(x int)}, '08001',
	undef, 'still down: the next probe is ten minutes away');
query_ok($l, q{SELECT dbpool_cleanup_pool('later')}, '', 'cleanup');
query_ok($l, q{SELECT state <> 'down' FROM dbpool_pools WHERE name = 'later'}, 't',
	'the down state is cleared');
query_ok($l, q{SELECT * FROM dbpool_query('later', 'SELECT 5') AS t(x int)}, '5',
	'the next call connects at once');

done_testing();
