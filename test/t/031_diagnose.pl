# dbpool_diagnose(pool) (issue 13): each issue is produced by a workload made for it, with the
# dbpool.diagnose_* thresholds set low in the session: high_latency (with slow_queries),
# high_error_rate, saturation and long_waits (whose shared recommendation appears once in the
# union), pool_down, pool_degraded, frequent_reconnects; a healthy pool has none.  The
# connection_leak issue is tested with the leaks, in 030_leaks.pl.  Anyone may call it; an
# unknown pool is 42704, NULL 22004.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25823);
my $l = local_node('L', 25822);
my $ci = quote_literal(pool_conninfo($f));
# nothing listens on 25824: a target that refuses every connection
my $dead = quote_literal('host=' . $f->host . ' port=25824 dbname=postgres');

$l->safe_psql('postgres', qq{
	CREATE ROLE bob LOGIN;
	SELECT dbpool_create_pool('hp', $ci, min_size => 1, max_size => 4);
	SELECT dbpool_create_pool('lat', $ci, max_size => 2, slow_query_ms => 100);
	SELECT dbpool_create_pool('err', $ci, max_size => 2);
	SELECT dbpool_create_pool('sat', $ci, max_size => 1, acquire_timeout_ms => 60000);
	SELECT dbpool_create_pool('down', $dead, min_size => 1, retry_attempts => 1);
	SELECT dbpool_create_pool('deg', $dead, min_size => 1, retry_attempts => 1000);
});

# A pool's first request waits for its connection to be made, which a loaded machine can
# stretch beyond the acquire threshold: checks that expect an exact list of issues leave
# long_waits out with this.
my $no_waits = 'SET dbpool.diagnose_acquire_p99_ms = 1e6;';

# "type:severity" of a pool's issues, in order; $set: SET statements to run first
sub issues
{
	my ($pool, $set) = @_;
	return ($set // '')
	  . qq{SELECT coalesce(string_agg((i->>'type') || ':' || (i->>'severity'), ','), '')
		FROM jsonb_array_elements(dbpool_diagnose('$pool')->'issues') i};
}
# the description of one issue
sub description
{
	my ($pool, $type, $set) = @_;
	return ($set // '')
	  . qq{SELECT i->>'description' FROM jsonb_array_elements(dbpool_diagnose('$pool')->'issues') i
		WHERE i->>'type' = '$type'};
}

# --- errors and who may call --------------------------------------------------------------------
query_fails($l, q{SELECT dbpool_diagnose('nope')}, '42704', qr/pool "nope" does not exist/,
	'unknown pool');
query_fails($l, q{SELECT dbpool_diagnose(NULL)}, '22004', qr/must not be null/, 'NULL pool');

# --- a healthy pool ---------------------------------------------------------------------------------
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'hp'}, '1'),
	'hp: its min_size connection is ready');
for my $i (1 .. 3)
{
	$l->safe_psql('postgres', q{SELECT * FROM dbpool_query('hp', 'SELECT 1') AS t(x int)});
}
query_ok($l, q{SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(dbpool_diagnose('hp')) k},
	'issues,overall_health,pool,recommendations,slow_queries,suspicious_connections',
	'the document\'s keys');
query_ok($l, q{SELECT d->>'pool', d->>'overall_health', d->'issues', d->'suspicious_connections',
	d->'slow_queries', d->'recommendations' FROM dbpool_diagnose('hp') d},
	'hp|healthy|[]|[]|[]|[]', 'a healthy pool: no issues', user => 'bob');

# --- high_latency, and the slow queries ---------------------------------------------------------
$l->safe_psql('postgres',
	q{SELECT * FROM dbpool_query('lat', 'SELECT pg_sleep(0.3)::text') AS t(x text)});
query_ok($l, issues('lat', $no_waits), '', 'lat: under the default threshold (1000 ms)');
my $low_latency = $no_waits . 'SET dbpool.diagnose_latency_p99_ms = 100;';
query_ok($l, issues('lat', $low_latency), 'high_latency:high', 'high_latency over 100 ms');
like($l->safe_psql('postgres', description('lat', 'high_latency', $low_latency)),
	qr/p99 of the last 60 s is [\d.]+ ms \(1 queries\), above dbpool.diagnose_latency_p99_ms \(100 ms\)/,
	'the description gives the figure and the threshold');
query_ok($l, $low_latency . q{SELECT d->>'overall_health',
	position('dbpool_slow_queries(''lat'', 10)' in d->>'recommendations') > 0
	FROM dbpool_diagnose('lat') d}, 'degraded|t', 'degraded; it recommends the slow queries');
query_ok($l, q{SELECT s->>'query', (s->>'duration_ms')::float8 >= 300, s->>'role'
	FROM jsonb_array_elements(dbpool_diagnose('lat')->'slow_queries') s},
	'SELECT pg_sleep(0.3)::text|t|' . $l->safe_psql('postgres', 'SELECT current_user'),
	'slow_queries: the slow execution');
query_ok($l, q{SELECT s->>'query' FROM jsonb_array_elements(dbpool_diagnose('lat')->'slow_queries') s},
	'<insufficient privilege>', 'slow_queries: texts under the text rules', user => 'bob');

# --- high_error_rate ------------------------------------------------------------------------------
for my $i (1 .. 3)
{
	run_sql($l, q{SELECT * FROM dbpool_query('err', 'SELECT 1/0') AS t(x int)});
}
$l->safe_psql('postgres', q{SELECT * FROM dbpool_query('err', 'SELECT 1') AS t(x int)});
my $low_errors = $no_waits . 'SET dbpool.diagnose_error_rate = 0.5;';
# the rates count complete seconds: wait until all four queries' seconds are complete (the
# success may fall in a later second than the errors, and the rate read 1.0 until then)
ok(poll_until($l, q{SELECT round((dbpool_detailed_metrics('err')->'rates'->'60s'->>'queries_per_second')::numeric * 60)},
	'4'), 'err: its four queries are counted');
ok(poll_until($l, issues('err', $low_errors), 'high_error_rate:critical'),
	'high_error_rate over 0.5 (3 errors of 4 queries)');
like($l->safe_psql('postgres', description('err', 'high_error_rate', $low_errors)),
	qr/error rate of the last 60 s is 0\.7500 .* above dbpool.diagnose_error_rate \(0\.5\)/,
	'its description');
query_ok($l, issues('err', $no_waits . 'SET dbpool.diagnose_error_rate = 0.8;'), '',
	'not over 0.8');

# --- saturation, then long_waits ----------------------------------------------------------------
my $holder = start_bg($f, q{SELECT pg_advisory_lock(7), pg_sleep(600)});
ok(poll_until($f, q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted}, '1'),
	'F: the lock is held');
my $first = start_bg($l,
	q{SELECT * FROM dbpool_query('sat', 'SELECT pg_advisory_xact_lock(7)::text || ''first''') AS t(x text)});
ok(poll_until($l, q{SELECT active_connections FROM dbpool_metrics WHERE pool = 'sat'}, '1'),
	'sat: its one connection is busy');
my $second = start_bg($l,
	q{SELECT * FROM dbpool_query('sat', 'SELECT ''second''') AS t(x text)});
ok(poll_until($l, q{SELECT waiting_queue_length FROM dbpool_metrics WHERE pool = 'sat'}, '1'),
	'sat: a request waits');
my $low_sat = $no_waits . 'SET dbpool.diagnose_utilization = 0.5;';
query_ok($l, issues('sat', $low_sat), 'saturation:high', 'saturation over 0.5');
like($l->safe_psql('postgres', description('sat', 'saturation', $low_sat)),
	qr/utilization \(connections busy with a request \/ max_size\) is 1\.00: 1 of max_size 1 connections are busy and 1 requests wait; above dbpool.diagnose_utilization \(0\.5\)/,
	'its description says what utilization means');
$f->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()});
finish_bg($holder);
my (undef, $out1) = finish_bg($first);
my (undef, $out2) = finish_bg($second);
is("$out1 $out2", 'first second', 'both requests answered');
my $low_wait = 'SET dbpool.diagnose_acquire_p99_ms = 10; SET dbpool.diagnose_utilization = 0;';
like($l->safe_psql('postgres', issues('sat', $low_wait)), qr/(^|,)long_waits:medium(,|$)/,
	'long_waits over 10 ms');
like($l->safe_psql('postgres', description('sat', 'long_waits', $low_wait)),
	qr/acquire latency p99 of the last 60 s \(the wait for a connection\) is [\d.]+ ms, above dbpool.diagnose_acquire_p99_ms \(10 ms\)/,
	'its description');

# the union of recommendations: each issue's, once
$holder = start_bg($f, q{SELECT pg_advisory_lock(7), pg_sleep(600)});
ok(poll_until($f, q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted}, '1'),
	'F: the lock is held again');
$first = start_bg($l,
	q{SELECT * FROM dbpool_query('sat', 'SELECT pg_advisory_xact_lock(7)::text || ''again''') AS t(x text)});
ok(poll_until($l, q{SELECT active_connections FROM dbpool_metrics WHERE pool = 'sat'}, '1'),
	'sat: busy again');
query_ok($l, 'SET dbpool.diagnose_acquire_p99_ms = 10; SET dbpool.diagnose_utilization = 0.5;'
	  . q{WITH d AS (SELECT dbpool_diagnose('sat') AS d),
		issue_recs AS (SELECT DISTINCT r FROM d, jsonb_array_elements(d->'issues') i,
			jsonb_array_elements_text(i->'recommendations') r),
		union_recs AS (SELECT r FROM d, jsonb_array_elements_text(d->'recommendations') r)
	SELECT (SELECT string_agg(i->>'type', ',') FROM d, jsonb_array_elements(d->'issues') i
			WHERE i->>'type' IN ('saturation', 'long_waits')),
		(SELECT count(*) FROM union_recs) = (SELECT count(*) FROM issue_recs),
		(SELECT count(*) FROM union_recs) = (SELECT count(DISTINCT r) FROM union_recs),
		NOT EXISTS (SELECT r FROM issue_recs EXCEPT SELECT r FROM union_recs),
		(SELECT count(*) FROM union_recs WHERE r LIKE 'Raise max_size (SELECT dbpool_alter_pool(''sat'', ''{"max_size": 2}''))%')},
	'saturation,long_waits|t|t|t|1',
	'recommendations: the union of the issues\', without duplicates');
$f->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()});
finish_bg($holder);
finish_bg($first);

# --- pool_down and pool_degraded ------------------------------------------------------------------
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'down'}, 'down'), 'down is down');
query_ok($l, issues('down'), 'pool_down:critical', 'pool_down, critical');
like($l->safe_psql('postgres', description('down', 'pool_down')),
	qr/Pool "down" is down: its last 1 connection attempts in a row failed \(retry_attempts 1\)/,
	'its description');
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'deg'}, 'degraded'),
	'deg is degraded');
query_ok($l, issues('deg'), 'pool_degraded:medium', 'pool_degraded, medium');

# --- frequent_reconnects --------------------------------------------------------------------------
# (created now: all its connections are made within the minute the diagnosis looks at)
$l->safe_psql('postgres',
	qq{SELECT dbpool_create_pool('churn', $ci, min_size => 1, max_size => 2)});
my $created = q{SELECT dbpool_detailed_metrics('churn')->'counters'->>'connections_created'};
ok(poll_until($l, $created, '1'), 'churn: min_size connection');
for my $n (2 .. 5)
{
	$l->safe_psql('postgres', q{SELECT dbpool_restart_pool('churn')});
	ok(poll_until($l, $created, "$n"), "churn: restart $n, a new connection");
}
query_ok($l, issues('churn'), '', 'churn: 4 beyond min_size is under the default 10');
my $low_churn = 'SET dbpool.diagnose_reconnects_per_minute = 2;';
ok(poll_until($l, issues('churn', $low_churn), 'frequent_reconnects:medium'),
	'frequent_reconnects over 2 a minute');
like($l->safe_psql('postgres', description('churn', 'frequent_reconnects', $low_churn)),
	qr/5 connections were established in the last 60 s, 4 beyond min_size \(1\), above dbpool.diagnose_reconnects_per_minute \(2\)/,
	'its description');

ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'L never crashed');
done_testing();
