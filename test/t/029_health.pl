# Health checks (issue 13): dbpool_health() checks every pool at once (the time of the slowest,
# not the sum), reports degraded and unhealthy pools, answers a down pool from its state and a
# saturated one from its latest probe without going beyond max_size; dbpool_health(pool) is the
# deep check (connectivity, performance, resource usage, error rate); a health query past its
# deadline is a failed check; background probes show in dbpool_metrics; calls in a loop share
# their checks; error texts follow the views' privilege rule.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $fconf = "log_statement = 'all'\nlog_connections = on\n";
my $f1 = foreign_node('F1', 25801, $fconf);
my $f2 = foreign_node('F2', 25802, $fconf);
my $f3 = foreign_node('F3', 25803, $fconf);
my $l = local_node('L', 25800);

# fast reconnects, so that a target that returns is seen again within a second or so
my $retry = 'retry_base_ms => 100, retry_max_ms => 300, down_probe_interval_ms => 300';

sub ci
{
	my ($f, $app, @extra) = @_;
	return quote_literal(pool_conninfo($f, "application_name=$app", @extra));
}

# The number of matches of $re in $f's log after byte $from.
sub log_count
{
	my ($f, $re, $from) = @_;
	my $log = slurp_file($f->logfile);
	my $tail = length($log) > $from ? substr($log, $from) : '';
	my $n = () = $tail =~ /$re/g;
	return $n;
}

sub log_size
{
	my ($f) = @_;
	return -s $f->logfile;
}

$l->safe_psql('postgres', q{CREATE ROLE bob LOGIN});

# --- no pools: healthy, empty lists -------------------------------------------------------------
query_ok($l, q{SELECT dbpool_health() @> '{"status": "healthy", "healthy_pools": [],
	"unhealthy_pools": [], "pools": {}}'}, 't', 'no pools: healthy with empty lists');
query_ok($l, q{SELECT (dbpool_health()->>'timestamp') ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$'},
	't', 'the timestamp is ISO 8601 in UTC');

# --- bad input ----------------------------------------------------------------------------------
query_fails($l, q{SELECT dbpool_health('nope')}, '42704', qr/pool "nope" does not exist/,
	'deep check: unknown pool');
query_fails($l, q{SELECT dbpool_health(NULL::text)}, '22004', qr/must not be null/,
	'deep check: NULL name');

# --- calls in a tight loop share their checks ---------------------------------------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('loop', " . ci($f1, 'pool_loop')
	  . ", min_size => 1, health_check_interval_ms => 0, $retry,"
	  . " health_query => 'SELECT 1 /* loop_marker */')");
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'loop'}, '1'),
	'pool loop has its idle connection');
my $from = log_size($f1);
$l->safe_psql('postgres', q{DO $$BEGIN FOR i IN 1..30 LOOP
	IF dbpool_health()->>'status' <> 'healthy' THEN RAISE 'not healthy'; END IF;
	IF NOT (dbpool_health('loop')->>'overall_healthy')::bool THEN RAISE 'not healthy'; END IF;
	END LOOP; END$$});
my $runs = log_count($f1, qr/loop_marker/, $from);
ok($runs >= 1 && $runs <= 5, "60 calls in a loop ran the health query $runs times (1 to 5)");
query_ok($l, q{SELECT last_health_check_ok, last_health_check_latency_ms >= 0,
	last_health_check_at > now() - interval '1 minute', last_health_check_error IS NULL
	FROM dbpool_metrics WHERE pool = 'loop'}, 't|t|t|t', 'the check is in dbpool_metrics');

# --- all pools at once: about the slowest one's time, not the sum -------------------------------
for my $p ([ 's1', $f1 ], [ 's2', $f2 ])
{
	$l->safe_psql('postgres', "SELECT dbpool_create_pool('$p->[0]', " . ci($p->[1], "pool_$p->[0]")
		  . ", min_size => 1, health_check_interval_ms => 0, health_timeout_ms => 5000, $retry,"
		  . " health_query => 'SELECT pg_sleep(2)')");
}
ok(poll_until($l, q{SELECT sum(idle_connections) FROM dbpool_metrics WHERE pool IN ('s1', 's2')}, '2'),
	's1 and s2 have their idle connections');
my $t0 = time();
my $doc = $l->safe_psql('postgres', q{SELECT dbpool_health()});
my $elapsed = time() - $t0;
ok($elapsed < 3.5, sprintf('two pools with a 2 s health query: one call took %.2f s (< 3.5 s)', $elapsed));
query_ok($l, qq{SELECT (d->'pools'->'s1'->>'latency_ms')::float8 >= 2000,
	(d->'pools'->'s2'->>'latency_ms')::float8 >= 2000, d->'pools'->'s1'->>'kind',
	d->'pools'->'s1'->>'saturated', d->>'status', jsonb_array_length(d->'healthy_pools')
	FROM (SELECT '$doc'::jsonb AS d) x}, 't|t|on_demand|false|healthy|3',
	'both ran their health query, on demand; all three pools healthy');
$l->safe_psql('postgres', q{
	SELECT dbpool_alter_pool('s1', '{"health_query": "SELECT 1"}');
	SELECT dbpool_alter_pool('s2', '{"health_query": "SELECT 1"}')});

# --- degraded, unhealthy, healthy again ---------------------------------------------------------
$f2->stop;
ok(poll_until($l, q{SELECT d->>'status', d->'unhealthy_pools'->0->>'pool',
	d->'unhealthy_pools'->0->>'error' <> '', d->'pools'->'s2'->>'ok'
	FROM (SELECT dbpool_health() AS d) x}, 'degraded|s2|t|false'),
	'one of two targets stopped: degraded, s2 unhealthy with its error');
$f1->stop;
ok(poll_until($l, q{SELECT d->>'status', jsonb_array_length(d->'healthy_pools'),
	jsonb_array_length(d->'unhealthy_pools') FROM (SELECT dbpool_health() AS d) x}, 'unhealthy|0|3'),
	'both targets stopped: unhealthy');
$f1->start;
$f2->start;
ok(poll_until($l, q{SELECT d->>'status', jsonb_array_length(d->'healthy_pools')
	FROM (SELECT dbpool_health() AS d) x}, 'healthy|3'),
	'both targets back: healthy again');

# --- a down pool is answered from its state -----------------------------------------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('d', "
	  . quote_literal(pool_conninfo($f3, 'dbname=nodb', 'application_name=pool_d'))
	  . ", min_size => 1, retry_attempts => 1, down_probe_interval_ms => 600000,"
	  . " health_check_interval_ms => 0)");
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'd'}, 'down'), 'pool d is down');
$from = log_size($f3);
query_ok($l, q{SELECT d->>'status', d->'pools'->'d'->>'state', d->'pools'->'d'->>'ok',
	d->'pools'->'d'->>'latency_ms' IS NULL,
	(SELECT e->>'error' FROM jsonb_array_elements(d->'unhealthy_pools') e WHERE e->>'pool' = 'd')
	  ~ 'database "nodb" does not exist'
	FROM (SELECT dbpool_health() AS d) x}, 'degraded|down|false|t|t',
	'the down pool is unhealthy with the failure that made it down');
query_ok($l, q{SELECT dbpool_health('d')->'checks'->'connectivity'->>'ok'}, 'false',
	'the deep check says so too');
ok(log_count($f3, qr/connection received/, 0) >= 1, 'F3 logs connection attempts (the earlier ones)');
is(log_count($f3, qr/connection received/, $from), 0, 'F3 saw no connection attempt for the check');

# --- privileges: error texts follow the views' rule ---------------------------------------------
query_ok($l, q{SELECT e->>'error' FROM jsonb_array_elements(dbpool_health()->'unhealthy_pools') e
	WHERE e->>'pool' = 'd'}, '<insufficient privilege>', 'a role that is not the owner sees no error text',
	user => 'bob');
query_ok($l, q{SELECT last_health_check_error, last_health_check_ok FROM dbpool_metrics WHERE pool = 'd'},
	'<insufficient privilege>|f', '... nor in dbpool_metrics', user => 'bob');
query_ok($l, q{SELECT dbpool_health('d')->'checks'->'connectivity'->>'error'},
	'<insufficient privilege>', '... nor in the deep check', user => 'bob');
query_ok($l, q{SELECT last_health_check_error ~ 'nodb' FROM dbpool_metrics WHERE pool = 'd'},
	't', 'a superuser sees it');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('d')});

# --- a saturated pool: answered from its latest probe, never beyond max_size --------------------
$from = log_size($f1);
$l->safe_psql('postgres', "SELECT dbpool_create_pool('sat', " . ci($f1, 'pool_sat')
	  . ", min_size => 2, max_size => 2, health_check_interval_ms => 200)");
ok(poll_until($l, q{SELECT last_health_check_ok FROM dbpool_metrics WHERE pool = 'sat'}),
	'pool sat was probed in the background');
my @bg = map { start_bg($l, q{SELECT * FROM dbpool_query('sat', 'SELECT pg_sleep(6)::text') AS t(x text)}) } 1 .. 2;
ok(poll_until($f1, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool_sat'
	AND query LIKE '%pg_sleep(6)%' AND state = 'active'}, '2'), 'both connections of sat are busy');
ok(poll_until($l, q{SELECT d->'checks'->'connectivity'->>'saturated',
	d->'checks'->'connectivity'->>'ok', d->'checks'->'connectivity'->>'kind',
	d->'checks'->'resource_usage'->>'ok', d->'checks'->'resource_usage'->>'utilization',
	d->'checks'->'resource_usage'->>'threshold', d->>'overall_healthy'
	FROM (SELECT dbpool_health('sat') AS d) x}, 'true|true|on_demand|false|1|0.9|false'),
	'the deep check: saturated (the latest probe answers), resource_usage fails');
query_ok($l, q{SELECT d->'pools'->'sat'->>'saturated', d->'pools'->'sat'->>'ok'
	FROM (SELECT dbpool_health() AS d) x}, 'true|true', 'dbpool_health() says saturated');
is(remote_count($f1, q{application_name = 'pool_sat'}), '2', 'F1 has max_size connections of sat');
for my $b (@bg)
{
	my ($ret) = finish_bg($b);
	is($ret, 0, 'a busy query of sat finished');
}
is(log_count($f1, qr/connection authorized: .*application_name=pool_sat/, $from), 2,
	'F1 never saw more than max_size connections of sat');

# --- the deep check: performance ----------------------------------------------------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('slow', " . ci($f2, 'pool_slow')
	  . ", min_size => 1, health_check_interval_ms => 0, health_max_latency_ms => 50,"
	  . " health_query => 'SELECT pg_sleep(0.3)')");
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'slow'}, '1'),
	'pool slow has its idle connection');
query_ok($l, q{SELECT c->'connectivity'->>'ok', c->'performance'->>'ok',
	(c->'performance'->>'latency_ms')::float8 >= 300, c->'performance'->>'threshold_ms',
	c->'resource_usage'->>'ok', c->'error_rate'->>'ok', d->>'overall_healthy', d->>'pool',
	d->'metrics'->>'max_size', (d->'metrics'->>'last_health_check_latency_ms')::float8 >= 300
	FROM (SELECT d, d->'checks' AS c FROM (SELECT dbpool_health('slow') AS d) y) x},
	'true|false|t|50|true|true|false|slow|10|t',
	'a slow health query fails the performance check, with its latency and threshold');

# --- the deep check: error rate -----------------------------------------------------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('err', " . ci($f2, 'pool_err')
	  . ", min_size => 1, health_check_interval_ms => 0)");
for (1 .. 3)
{
	run_sql($l, q{SELECT dbpool_exec('err', 'SELECT 1/0')});
}
ok(poll_until($l, q{SELECT c->'error_rate'->>'ok', (c->'error_rate'->>'error_rate')::float8 > 0.01,
	c->'error_rate'->>'threshold', c->'connectivity'->>'ok'
	FROM (SELECT dbpool_health('err')->'checks' AS c) x}, 'false|t|0.01|true'),
	'failing queries fail the error_rate check');

# --- a health query past its deadline -----------------------------------------------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('to', " . ci($f2, 'pool_to')
	  . ", min_size => 1, health_check_interval_ms => 0, health_timeout_ms => 300,"
	  . " health_query => 'SELECT pg_sleep(10)')");
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'to'}, '1'),
	'pool to has its idle connection');
query_ok($l, q{SELECT c->>'ok', c->>'error' FROM (SELECT dbpool_health('to')->'checks'->'connectivity' AS c) x},
	'false|the health query of pool "to" did not finish within health_timeout_ms (300 ms)',
	'a health query past health_timeout_ms is a failed check');
query_ok($l, q{SELECT * FROM dbpool_query('to', 'SELECT 42') AS t(x int)}, '42',
	'the pool still serves');

# --- a health query that fails: its message and its detail ---------------------------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('fd', " . ci($f2, 'pool_fd')
	  . ", min_size => 1, health_check_interval_ms => 0, health_query =>"
	  . " 'DO \$\$BEGIN RAISE EXCEPTION ''probe says no'' USING DETAIL = ''the detail''; END\$\$')");
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'fd'}, '1'),
	'pool fd has its idle connection');
query_ok($l, q{SELECT c->>'ok', c->>'error' FROM (SELECT dbpool_health('fd')->'checks'->'connectivity' AS c) x},
	'false|probe says no: the detail', 'a failed health query: its message and detail');

# --- background probes --------------------------------------------------------------------------
$from = log_size($f2);
$l->safe_psql('postgres', "SELECT dbpool_create_pool('bg', " . ci($f2, 'pool_bg')
	  . ", min_size => 1, health_check_interval_ms => 200,"
	  . " health_query => 'SELECT 1 /* bg_marker */')");
ok(poll_until($l, q{SELECT last_health_check_ok, last_health_check_latency_ms >= 0
	FROM dbpool_metrics WHERE pool = 'bg'}, 't|t'), 'a background probe shows in dbpool_metrics');
ok(wait_for_log_count($f2, qr/bg_marker/, $from, 3),
	'probes keep running without any call');
query_ok($l, q{SELECT last_health_check_at IS NULL, last_health_check_ok IS NULL,
	last_health_check_latency_ms IS NULL, last_health_check_error IS NULL
	FROM dbpool_metrics WHERE pool = 'slow'}, 'f|f|f|t', 'a pool checked once keeps its result');

sub wait_for_log_count
{
	my ($f, $re, $from, $n) = @_;
	my $end = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $end)
	{
		return 1 if log_count($f, $re, $from) >= $n;
		Time::HiRes::usleep(100_000);
	}
	return 0;
}

done_testing();
