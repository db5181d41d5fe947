# Reconnecting with backoff, the down state and coming back by itself (issue 12).
#
# 1. A pool whose target does not exist yet: the first call waits for retry_attempts attempts
#    and gets 08001; the pool is then down and calls fail at once with the last error; when a
#    server appears on that address the pool is ok again within a probe interval or two.
# 2. A foreign server stopped with -m immediate under a 16-session load, then started again:
#    no call waits longer than acquire_timeout_ms + 1 s, every failure is class 08 or 57, and
#    calls succeed again soon after the server is back, with no manual step.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $l = local_node('L', 25730);
my $f = foreign_node('F', 25731);

# --- 1. down and back ---------------------------------------------------------------------------
my $later = PostgreSQL::Test::Cluster->new('LATER', port => 25732);
$later->init;
my $later_ci = quote_literal(pool_conninfo($later));
$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('later', $later_ci, min_size => 0,
	retry_base_ms => 100, retry_max_ms => 400, retry_attempts => 3, down_probe_interval_ms => 300)});

query_ok($l, q{SELECT state FROM dbpool_pools WHERE name = 'later'}, 'connecting',
	'min_size 0: no attempt yet');
my $t0 = time();
query_fails($l, q{SELECT * FROM dbpool_query('later', 'SELECT 1') AS t(x int)}, '08001',
	qr/could not connect to pool "later"/, 'the first call gets 08001 after the retries');
my $first = time() - $t0;
cmp_ok($first, '<', 4.5, 'sooner than acquire_timeout_ms (5 s): the pool went down');
query_ok($l, q{SELECT state FROM dbpool_pools WHERE name = 'later'}, 'down', 'the pool is down');
query_ok($l, q{SELECT state FROM dbpool_metrics WHERE pool = 'later'}, 'down',
	'dbpool_metrics shows the same state');

# Failing fast: ten calls in one session, each answered at once with the last error.
my $r = run_sql($l, q{
DO $$
DECLARE
	t0 timestamptz := clock_timestamp();
	n int := 0;
BEGIN
	FOR i IN 1 .. 10 LOOP
		BEGIN
			PERFORM * FROM dbpool_query('later', 'SELECT 1') AS t(x int);
		EXCEPTION WHEN sqlclient_unable_to_establish_sqlconnection THEN
			n := n + 1;
		END;
	END LOOP;
	RAISE NOTICE 'failed=% ms=%', n, round(extract(epoch FROM clock_timestamp() - t0) * 1000);
END $$});
my ($nfail, $ms) = $r->{err} =~ /failed=(\d+) ms=(\d+)/;
is($nfail, 10, 'ten calls to a down pool: ten 08001');
cmp_ok($ms, '<', 1000, "ten calls took ${ms} ms: under 100 ms a call");
like(run_sql($l, q{SELECT * FROM dbpool_query('later', 'SELECT 1') AS t(x int)})->{err},
	qr/HINT:.*is down after \d+ failed connection attempts/, 'the hint says the pool is down');

$later->start;
my $up = time();
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'later'}, 'ok', 10),
	'the pool is ok again by itself');
my $back = time() - $up;
cmp_ok($back, '<', 2, sprintf('ok %.2f s after the server appeared (probes every 300 ms)', $back));
query_ok($l, q{SELECT * FROM dbpool_query('later', 'SELECT 42') AS t(x int)}, '42',
	'and serves');

# Settings: validated, shown, alterable.
query_fails($l, q{SELECT dbpool_alter_pool('later', '{"retry_base_ms": 500, "retry_max_ms": 100}')},
	'22023', qr/retry_max_ms/, 'retry_max_ms below retry_base_ms is refused');
query_fails($l, q{SELECT dbpool_alter_pool('later', '{"retry_attempts": 0}')},
	'22023', qr/retry_attempts/, 'retry_attempts 0 is refused');
query_ok($l, q{SELECT retry_base_ms, retry_max_ms, retry_attempts, down_probe_interval_ms
	FROM dbpool_pools WHERE name = 'later'}, '100|400|3|300', 'the settings are shown');

# --- 2. a server stopped under load -------------------------------------------------------------
my $ci = quote_literal(pool_conninfo($f));
$l->safe_psql('postgres', qq{
	SELECT dbpool_create_pool('p', $ci, min_size => 4, max_size => 4, acquire_timeout_ms => 2000,
		retry_base_ms => 100, retry_max_ms => 1000, down_probe_interval_ms => 250);
	CREATE TABLE calls(s int, started timestamptz, ms float8, state text);
});
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'p'}, 'ok'), 'pool p is ok');

my $load = q{
DO $$
DECLARE
	t0 timestamptz;
	st text;
	stop timestamptz := clock_timestamp() + interval '9 s';
BEGIN
	WHILE clock_timestamp() < stop LOOP
		t0 := clock_timestamp();
		BEGIN
			PERFORM * FROM dbpool_query('p', 'SELECT pg_sleep(0.005)') AS t(x text);
			st := 'ok';
		EXCEPTION WHEN others THEN
			st := SQLSTATE;
		END;
		INSERT INTO calls VALUES (pg_backend_pid(), t0,
			extract(epoch FROM clock_timestamp() - t0) * 1000, st);
	END LOOP;
END $$};
my @bg = map { start_bg($l, $load, timeout => 60) } 1 .. 16;
sleep 2;
$f->stop('immediate');
my $stopped = $l->safe_psql('postgres', 'SELECT clock_timestamp()');
sleep 2;
$f->start;
my $restarted = $l->safe_psql('postgres', 'SELECT clock_timestamp()');
finish_bg($_) for @bg;

my $summary = $l->safe_psql('postgres', qq{
	SELECT count(*), count(*) FILTER (WHERE state <> 'ok'), round(max(ms)),
		count(*) FILTER (WHERE state <> 'ok' AND left(state, 2) NOT IN ('08', '57')),
		string_agg(DISTINCT state, ',' ORDER BY state)
	FROM calls});
diag("calls, failed, max ms, failed outside class 08/57, states: $summary");
my ($n, $nbad, $maxms, $other) = split /\|/, $summary;
cmp_ok($n, '>', 100, 'the load ran');
cmp_ok($nbad, '>', 0, 'the stop made calls fail');
cmp_ok($maxms, '<=', 2000 + 1000, 'no call waited longer than acquire_timeout_ms + 1 s');
is($other, 0, 'every failure is class 08 or 57');
query_ok($l, qq{SELECT count(*) > 0, count(*) FILTER (WHERE state <> 'ok')
	FROM calls WHERE started > '$restarted'::timestamptz + interval '2 s'}, 't|0',
	'calls made 2 s after the restart all succeed');
query_ok($l, q{SELECT state FROM dbpool_pools WHERE name = 'p'}, 'ok', 'pool p is ok again');

done_testing();
