# Metrics held to the truth with two servers: percentiles against client-side timings, a
# contended pool (waiting queue, acquire latency, acquire timeouts), connection details
# against the foreign server's pg_stat_activity, connections created, failed and closed by
# reason, the slow-query ring wrapping, cancels, a worker restart, and the 60 s window
# forgetting a latency spike that the cumulative histogram keeps.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $f = foreign_node('F', 25611);
my $l = local_node('L', 25610, "dbpool.slow_query_log_size = 5\n");

sub create_pool
{
	my ($name, $opts, @extra) = @_;
	my $ci = pool_conninfo($f, "application_name=m_$name", @extra);
	$l->safe_psql('postgres', "SELECT dbpool_create_pool('$name', '$ci', $opts)");
}

# One column of dbpool_metrics for a pool.
sub metric
{
	my ($pool, $col) = @_;
	return $l->safe_psql('postgres', "SELECT $col FROM dbpool_metrics WHERE pool = '$pool'");
}

# One counter of dbpool_detailed_metrics.
sub counter
{
	my ($pool, $name) = @_;
	return $l->safe_psql('postgres',
		"SELECT dbpool_detailed_metrics('$pool')->'counters'->>'$name'");
}

# --- a latency spike, checked again at the end once the window has passed -------------
create_pool('win', 'min_size => 1, max_size => 1, slow_query_ms => 0');
$l->safe_psql('postgres',
	q{SELECT count(*) FROM generate_series(1, 10) g,
	         LATERAL dbpool_query('win', 'SELECT pg_sleep(0.3)::text, $1::int', ARRAY[g::text]) AS t(v text, n int)});
my $spike_end = time();
ok(metric('win', 'latency_p50_ms') >= 270, 'the spike shows in the 60 s percentiles');
is(metric('win', 'queries_total'), '10', 'ten spike queries');
is(metric('win', 'slow_queries_count'), '0', 'slow_query_ms 0 logs nothing');

# --- percentiles agree with client-side timings ---------------------------------------
create_pool('pct', 'min_size => 1, max_size => 1');
$l->safe_psql(
	'postgres', q{
CREATE TABLE client_ms (ms float8);
DO $$
DECLARE
    t timestamptz;
    d float8;
BEGIN
    FOR i IN 1..100 LOOP
        d := CASE WHEN i % 20 = 0 THEN 0.15 WHEN i % 20 > 16 THEN 0.06 ELSE 0.01 END;
        t := clock_timestamp();
        PERFORM * FROM dbpool_query('pct', format('SELECT pg_sleep(%s)::text', d)) AS x(v text);
        INSERT INTO client_ms VALUES (extract(epoch FROM clock_timestamp() - t) * 1000);
    END LOOP;
END $$});
my @client = split /\|/, $l->safe_psql('postgres',
	q{SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY ms),
	         percentile_disc(0.99) WITHIN GROUP (ORDER BY ms) FROM client_ms});
my @worker = split /\|/, metric('pct', 'latency_p50_ms, latency_p95_ms, latency_p99_ms');
my @names = ('p50', 'p95', 'p99');
for my $i (0 .. 2)
{
	# a bucket is 10% wide; the client's own timing adds the local round trip
	my $ok = $worker[$i] <= $client[$i] * 1.1 + 1 && $worker[$i] >= $client[$i] * 0.9 - 5;
	ok($ok, "$names[$i]: worker $worker[$i] ms, client $client[$i] ms");
}
ok($client[0] < 40 && $client[1] > 50 && $client[2] > 140,
	"the workload has the intended shape (@client)");
is(metric('pct', 'queries_total'), '100', 'every query counted');

# --- contention on a pool of one -------------------------------------------------------
create_pool('busy', 'min_size => 1, max_size => 1, acquire_timeout_ms => 20000');
ok(poll_until($l, q{SELECT total_connections FROM dbpool_metrics WHERE pool = 'busy'}, '1'),
	'busy has its connection');
# the holder's query waits on F for an advisory lock that a session on F holds
sub lock_on_f
{
	my $locker = start_bg($f, q{SELECT pg_advisory_lock(4242); SELECT pg_sleep(600)});
	ok(poll_until($f, q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted}, '1'),
		'F holds the lock');
	return $locker;
}

sub unlock_on_f
{
	my ($locker) = @_;
	$f->safe_psql('postgres',
		q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()});
	finish_bg($locker);
}

my $locker = lock_on_f();
my $holder = start_bg($l, q{SELECT * FROM dbpool_query('busy', 'SELECT pg_advisory_xact_lock(4242)::text') AS t(v text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'm_busy' AND wait_event = 'advisory'}, '1'),
	'the holder runs on F');
my @waiters = map { start_bg($l, q{SELECT * FROM dbpool_query('busy', 'SELECT 1') AS t(v int)}) } 1 .. 2;
ok(poll_until($l, q{SELECT waiting_queue_length FROM dbpool_metrics WHERE pool = 'busy'}, '2'),
	'two requests wait in the queue');
is(metric('busy', 'concat_ws(\' \', active_connections, connection_utilization, oldest_wait_ms > 0)'),
	'1 1 t', 'while they wait: one active connection, utilization 1, an oldest wait');
# the active connection: its client is the holder's session, its remote pid F's backend
my $conn = $l->safe_psql('postgres',
	q{SELECT c.state, c.remote_pid, a.query FROM dbpool_connections c JOIN pg_stat_activity a ON a.pid = c.client_pid WHERE c.pool = 'busy'});
my ($cstate, $rpid, $cquery) = split /\|/, $conn;
is($cstate, 'active', 'dbpool_connections shows it active');
like($cquery, qr/pg_advisory_xact_lock/, "client_pid is the holder's session");
is($f->safe_psql('postgres', "SELECT state || ' ' || query || ' ' || application_name FROM pg_stat_activity WHERE pid = $rpid"),
	'active SELECT pg_advisory_xact_lock(4242)::text m_busy', 'remote_pid is the backend on F running it');
# the waiters wait at least this long
sleep(1);
unlock_on_f($locker);
is((finish_bg($_))[0], 0, 'request finished') for ($holder, @waiters);
is(metric('busy', 'concat_ws(\' \', waiting_queue_length, active_connections, idle_connections)'), '0 0 1',
	'the queue is empty again');
ok(metric('busy', 'acquire_latency_p50_ms') >= 1000,
	'acquire latency reflects the wait: p50 ' . metric('busy', 'acquire_latency_p50_ms') . ' ms');
is($f->safe_psql('postgres', "SELECT state FROM pg_stat_activity WHERE pid = $rpid"), 'idle',
	'idle on F once done');
is($l->safe_psql('postgres', q{SELECT state || ' ' || (client_pid IS NULL) FROM dbpool_connections WHERE pool = 'busy'}),
	'idle true', 'idle in dbpool_connections, no client');

# acquire timeouts
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('busy', '{"acquire_timeout_ms": 300}')});
$locker = lock_on_f();
$holder = start_bg($l, q{SELECT * FROM dbpool_query('busy', 'SELECT pg_advisory_xact_lock(4242)::text') AS t(v text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'm_busy' AND wait_event = 'advisory'}, '1'),
	'the holder runs again');
query_fails($l, q{SELECT * FROM dbpool_query('busy', 'SELECT 1') AS t(v int)}, '53300', qr/within 300 ms/,
	'a request that cannot get a connection');
unlock_on_f($locker);
is((finish_bg($holder))[0], 0, 'holder done');
is(metric('busy', 'concat_ws(\' \', timeouts_total, errors_total, queries_total)'), '1 1 5',
	'one timeout, one error, five requests');
is(counter('busy', 'acquire_timeouts'), '1', 'counted as an acquire timeout');

# --- connections created, failed and closed by reason ----------------------------------
create_pool('rs', 'min_size => 3, max_size => 3');
ok(poll_until($l, q{SELECT total_connections FROM dbpool_metrics WHERE pool = 'rs'}, '3'), 'rs has 3');
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('rs', '{"min_size": 1, "max_size": 1}')});
ok(poll_until($l, q{SELECT dbpool_detailed_metrics('rs')->'counters'->>'closed_resize'}, '2'),
	'max_size lowered: 2 closed for resize');
$l->safe_psql('postgres',
	"SELECT dbpool_alter_pool('rs', jsonb_build_object('conninfo', '" . pool_conninfo($f, 'application_name=m_rs2') . "'))");
ok(poll_until($l, q{SELECT dbpool_detailed_metrics('rs')->'counters'->>'closed_config'}, '1'),
	'conninfo changed: 1 closed for config');
ok(poll_until($l, q{SELECT count(*) FROM dbpool_connections WHERE pool = 'rs' AND state = 'idle' AND remote_pid IS NOT NULL}, '1'),
	'a new connection took its place');
my $victim = $l->safe_psql('postgres', q{SELECT remote_pid FROM dbpool_connections WHERE pool = 'rs'});
is($f->safe_psql('postgres', "SELECT application_name FROM pg_stat_activity WHERE pid = $victim"), 'm_rs2',
	'with the new conninfo');
$f->safe_psql('postgres', "SELECT pg_terminate_backend($victim)");
ok(poll_until($l, q{SELECT dbpool_detailed_metrics('rs')->'counters'->>'closed_broken'}, '1'),
	'terminated on F while idle: 1 closed as broken');
ok(poll_until($l, qq{SELECT count(*) FROM dbpool_connections WHERE pool = 'rs' AND state = 'idle' AND remote_pid <> $victim}, '1'),
	'min_size brings one back');
is($l->safe_psql('postgres', q{
	SELECT (c->>'connections_created')::int - (c->>'closed_resize')::int - (c->>'closed_config')::int
	       - (c->>'closed_error')::int - (c->>'closed_idle')::int - (c->>'closed_lifetime')::int
	       - (c->>'closed_broken')::int - (c->>'closed_large')::int
	  FROM (SELECT dbpool_detailed_metrics('rs')->'counters' AS c) s}), '1',
	'created minus closed is the connections open');
is($l->safe_psql('postgres', q{SELECT remote_pid <> } . $victim . q{ FROM dbpool_connections WHERE pool = 'rs'}), 't',
	'dbpool_connections shows the new connection');

create_pool('idle', 'min_size => 0, max_size => 1, idle_timeout_ms => 200');
$l->safe_psql('postgres', q{SELECT * FROM dbpool_query('idle', 'SELECT 1') AS t(v int)});
ok(poll_until($l, q{SELECT dbpool_detailed_metrics('idle')->'counters'->>'closed_idle'}, '1'),
	'idle_timeout_ms: 1 closed for idle');
create_pool('life', 'min_size => 0, max_size => 1, max_lifetime_ms => 200');
$l->safe_psql('postgres', q{SELECT * FROM dbpool_query('life', 'SELECT 1') AS t(v int)});
ok(poll_until($l, q{SELECT dbpool_detailed_metrics('life')->'counters'->>'closed_lifetime'}, '1'),
	'max_lifetime_ms: 1 closed for lifetime');

$l->safe_psql('postgres',
	q{SELECT dbpool_create_pool('down', 'host=127.0.0.1 port=1 dbname=x connect_timeout=2', min_size => 0)});
query_fails($l, q{SELECT * FROM dbpool_query('down', 'SELECT 1') AS t(v int)}, '08001', undef,
	'a server that is down');
is(counter('down', 'connection_failures') . ' ' . counter('down', 'connections_created'), '3 0',
	'retry_attempts (3) connection failures, none created');
is(metric('down', 'concat_ws(\' \', errors_total, state)'), '1 down', 'the request is an error');

create_pool('dr', 'min_size => 2, max_size => 2');
ok(poll_until($l, q{SELECT total_connections FROM dbpool_metrics WHERE pool = 'dr'}, '2'), 'dr has 2');
$locker = lock_on_f();
my $long = start_bg($l, q{SELECT * FROM dbpool_query('dr', 'SELECT pg_advisory_xact_lock(4242)::text') AS t(v text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'm_dr' AND wait_event = 'advisory'}, '1'),
	'dr runs a query');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('dr')});
is($l->safe_psql('postgres', q{SELECT state FROM dbpool_metrics WHERE pool = 'dr'}), 'dropping',
	'a dropped pool with a query in flight is still shown, as dropping');
is(counter('dr', 'closed_drop'), '1', 'its idle connection closed for drop');
unlock_on_f($locker);
is((finish_bg($long))[0], 0, 'the query in flight finishes');
ok(poll_until($l, q{SELECT count(*) FROM dbpool_metrics WHERE pool = 'dr'}, '0'), 'then the pool is gone');

# --- the slow-query ring keeps the newest dbpool.slow_query_log_size ------------------
create_pool('slow', 'min_size => 1, max_size => 1, slow_query_ms => 50');
$l->safe_psql('postgres',
	q{SELECT count(*) FROM generate_series(1, 7) g, LATERAL dbpool_query('slow', format('SELECT pg_sleep(0.07), %s', g)) AS t(s text, n int)});
is(metric('slow', 'slow_queries_count'), '7', 'seven slow executions counted');
is($l->safe_psql('postgres', q{SELECT string_agg(right(query, 1), ',' ORDER BY started_at) FROM dbpool_slow_queries WHERE pool = 'slow'}),
	'3,4,5,6,7', 'the ring keeps the newest five');

# a cancelled slow query is logged with 57014 and counted as a cancel
my $victim_q = start_bg($l, q{SELECT * FROM dbpool_query('slow', 'SELECT pg_sleep(5)::text AS cancel_me') AS t(v text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%cancel_me%' AND state = 'active' AND pid <> pg_backend_pid()}, '1'),
	'the query to cancel runs');
ok(poll_until($l, q{SELECT count(*) FROM dbpool_connections WHERE pool = 'slow' AND state = 'active' AND clock_timestamp() - state_since > interval '100 ms'}, '1'),
	'past slow_query_ms');
is($l->safe_psql('postgres', q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%cancel_me%' AND pid <> pg_backend_pid()}),
	't', 'its session is cancelled');
my ($cret, undef, $cerr) = finish_bg($victim_q);
isnt($cret, 0, 'the cancelled call fails');
like($cerr, qr/57014/, 'with 57014');
ok(poll_until($l, q{SELECT cancels_total || ' ' || errors_total FROM dbpool_metrics WHERE pool = 'slow'}, '1 0'),
	'counted as a cancel, not an error');
is($l->safe_psql('postgres', q{SELECT sqlstate FROM dbpool_slow_queries WHERE query LIKE '%cancel_me%'}), '57014',
	'logged as slow with 57014');
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%cancel_me%' AND state = 'active' AND pid <> pg_backend_pid()}, '0'),
	'and cancelled on F');

# --- the window forgets the spike; the cumulative histogram keeps it -------------------
# Here the wait is the point: the window is 60 s of the server's clock.
my $left = $spike_end + 62 - time();
sleep(int($left) + 1) if $left > 0;
$l->safe_psql('postgres',
	q{SELECT count(*) FROM generate_series(1, 10) g, LATERAL dbpool_query('win', 'SELECT $1::int', ARRAY[g::text]) AS t(v int)});
ok(metric('win', 'latency_p99_ms') < 100, 'a minute later the spike has left the window: p99 '
	  . metric('win', 'latency_p99_ms') . ' ms');
is($l->safe_psql('postgres',
	q{SELECT (d->'last_60s'->>'count') || ' ' || (d->'cumulative'->>'count') || ' ' || ((d->'cumulative'->>'sum_ms')::float8 >= 3000)
	    FROM (SELECT dbpool_detailed_metrics('win')->'query_latency' AS d) s}),
	'10 20 true', 'the cumulative histogram still holds it');


# --- a new worker starts every pool's figures afresh -----------------------------------
my $reset_before = metric('pct', 'stats_reset');
my ($wpid) = dbpool_worker_pids($l);
$l->safe_psql('postgres', "SELECT pg_terminate_backend($wpid)");
ok(poll_until($l, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dbpool worker' AND pid <> $wpid", '1'),
	'the worker is back');
ok(poll_until($l, q{SELECT queries_total = 0 AND stats_reset > '} . $reset_before . q{' FROM dbpool_metrics WHERE pool = 'pct'}),
	'figures start afresh with a new stats_reset');
ok(poll_until($l, q{SELECT count(*) FROM dbpool_connections WHERE pool = 'pct'}, '1'),
	'the new worker lists its own connections');

done_testing();
