# Alerts (issue 14): the rules table dbpool_alert_rules (seeded with the guide's rules, checked
# at write time, kept by pg_dump), the worker's evaluation every second (pending, firing,
# resolved) shown in dbpool_alerts, NOTIFY dbpool_alerts received by the example listener
# (examples/alert_listener.c), and the scale_up action.
#
# Each seeded rule is made short (for_seconds 1) and limited to a pool of its own, then a
# workload makes it fire and a change of the workload makes it resolve.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25841);
my $l = local_node('L', 25840);
my $ci = quote_literal(pool_conninfo($f));

# --- the seeded rules ---------------------------------------------------------------------------
query_ok($l, q{SELECT string_agg(format('%s %s %s %s %s %s %s %s', name, metric, comparison,
	threshold, for_seconds, severity, action, seeded), E'\n' ORDER BY name) FROM dbpool_alert_rules},
	join("\n",
		'ConnectionExhaustion waiting > 0 30 critical scale_up t',
		'HighConnectionUtilization utilization > 0.8 300 warning none t',
		'HighErrorRate error_rate > 0.05 180 critical none t',
		'HighQueryLatency latency_p99_ms > 1000 120 critical scale_up t',
		'PoolDown down = 1 0 critical none t'),
	'the guide\'s rules are seeded');
query_ok($l, q{SELECT has_table_privilege('public', 'dbpool_alert_rules', 'SELECT'),
	has_table_privilege('public', 'dbpool_alerts', 'SELECT')}, 'f|t',
	'the rules are for superusers, the alerts for everyone');

# --- a bad rule is refused, naming the column ---------------------------------------------------
my @bad = (
	[ q{name, metric, comparison, threshold}, q{'bad name', 'qps', '>', 1}, 'name' ],
	[ q{name, metric, comparison, threshold}, q{'r', 'latency', '>', 1}, 'metric' ],
	[ q{name, metric, comparison, threshold}, q{'r', 'qps', '=>', 1}, 'comparison' ],
	[ q{name, metric, comparison, threshold}, q{'r', 'qps', '>', 'Infinity'}, 'threshold' ],
	[ q{name, metric, comparison, threshold}, q{'r', 'qps', '>', 'NaN'}, 'threshold' ],
	[ q{name, metric, comparison, threshold, for_seconds}, q{'r', 'qps', '>', 1, -1}, 'for_seconds' ],
	[ q{name, metric, comparison, threshold, severity}, q{'r', 'qps', '>', 1, 'page'}, 'severity' ],
	[ q{name, metric, comparison, threshold, pool}, q{'r', 'qps', '>', 1, 'no pool'}, 'pool' ],
	[ q{name, metric, comparison, threshold, action}, q{'r', 'qps', '>', 1, 'scale_down'}, 'action' ]);
for my $b (@bad)
{
	query_fails($l, "INSERT INTO dbpool_alert_rules ($b->[0]) VALUES ($b->[1])", '22023',
		qr/invalid value for $b->[2]\b/, "a bad $b->[2] is refused");
}
query_fails($l, q{UPDATE dbpool_alert_rules SET action = 'reboot' WHERE name = 'PoolDown'}, '22023',
	qr/invalid value for action: "reboot"/, 'an UPDATE is checked too');

# --- the rules in pg_dump -----------------------------------------------------------------------
# An edited seeded rule, a disabled one, a user rule, a user rule that replaced a seeded one,
# and a pristine seeded rule all come back as they were.
$l->safe_psql('postgres', q{
	UPDATE dbpool_alert_rules SET threshold = 0.25 WHERE name = 'HighErrorRate';
	UPDATE dbpool_alert_rules SET enabled = false WHERE name = 'HighConnectionUtilization';
	INSERT INTO dbpool_alert_rules (name, metric, comparison, threshold, for_seconds, pool)
		VALUES ('MyRule', 'acquire_p99_ms', '>=', 50, 10, 'somepool');
	INSERT INTO dbpool_alert_rules (name, metric, comparison, threshold, severity)
		VALUES ('ConnectionExhaustion', 'waiting', '>', 5, 'info');
});
my $rules_sql = q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', name, metric, comparison,
	threshold, for_seconds, severity, pool, action, enabled, seeded), E'\n' ORDER BY name)
	FROM dbpool_alert_rules};
my $rules_before = $l->safe_psql('postgres', $rules_sql);
like($rules_before, qr/^ConnectionExhaustion\|waiting\|>\|5\|0\|info\|\|none\|t\|f$/m,
	'a user rule replaced the pristine seeded rule of its name');
like($rules_before, qr/^PoolDown\|.*\|t\|t$/m, 'PoolDown is still pristine');
my $dump = $l->basedir . '/postgres.sql';
command_ok([ 'pg_dump', '-h', $l->host, '-p', $l->port, '-f', $dump, 'postgres' ],
	'pg_dump of dbpool.database');
my $l2 = PostgreSQL::Test::Cluster->new('L2', port => 25842);
$l2->init;
$l2->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dbpool'\ndbpool.database = 'postgres'\n");
$l2->start;
command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $l2->host, '-p', $l2->port,
	'-f', $dump, 'postgres' ], 'the dump restores without error');
is($l2->safe_psql('postgres', $rules_sql), $rules_before, 'the rules are restored as they were');
$l2->stop;

# Back to the seeded rules for the rest, each limited to a pool of its own and made short.
$l->safe_psql('postgres', q{
	DELETE FROM dbpool_alert_rules;
	INSERT INTO dbpool_alert_rules (name, metric, comparison, threshold, for_seconds, severity,
		pool, action) VALUES
	('HighConnectionUtilization', 'utilization', '>', 0.8, 1, 'warning', 'util', 'none'),
	('HighQueryLatency', 'latency_p99_ms', '>', 200, 1, 'critical', 'lat', 'scale_up'),
	('HighErrorRate', 'error_rate', '>', 0.5, 1, 'critical', 'err', 'none'),
	('ConnectionExhaustion', 'waiting', '>', 0, 1, 'critical', 'exh', 'scale_up'),
	('PoolDown', 'down', '=', 1, 0, 'critical', 'down', 'none');
});

# --- the listener -------------------------------------------------------------------------------
my $bin = $l->basedir . '/alert_listener';
my $incdir = `pg_config --includedir`;
chomp $incdir;
command_ok([ 'cc', '-o', $bin, "$FindBin::RealBin/../../examples/alert_listener.c",
	"-I$incdir", '-lpq' ], 'the example listener builds');
my $out = $l->basedir . '/payloads.txt';
my ($lout, $lerr) = ('', '');
my $listener = IPC::Run::start(
	[ $bin, $l->connstr('postgres'), "cat >> '$out'" ],
	'<', \undef, '>', \$lout, '2>', \$lerr);
ok(poll_until($l, q{SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN dbpool_alerts'},
	'1'), 'the listener is listening');

# The alert of a rule on a pool in dbpool_alerts: "state|value" of the latest one, or ''.
sub alert_state
{
	my ($rule, $pool) = @_;
	return qq{SELECT coalesce((SELECT state FROM dbpool_alerts WHERE rule = '$rule'
		AND pool = '$pool' ORDER BY resolved_at DESC NULLS FIRST LIMIT 1), 'none')};
}

# --- HighConnectionUtilization: a long query on a pool of one connection ----------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('util', $ci, min_size => 0, max_size => 1)");
my $bg = start_bg($l, q{SELECT * FROM dbpool_query('util', 'SELECT pg_sleep(6)::text') AS t(x text)});
ok(poll_until($l, alert_state('HighConnectionUtilization', 'util'), 'firing'),
	'HighConnectionUtilization fires while the only connection is busy');
query_ok($l, q{SELECT value, threshold, severity, metric, comparison, fired_at >= since
	FROM dbpool_alerts WHERE rule = 'HighConnectionUtilization' AND state = 'firing'},
	'1|0.8|warning|utilization|>|t', 'the firing alert in dbpool_alerts');
finish_bg($bg);
ok(poll_until($l, alert_state('HighConnectionUtilization', 'util'), 'resolved'),
	'and resolves when the query ended');

# --- HighQueryLatency: slow queries, scale_up; then fast ones ----------------------------------
$l->safe_psql('postgres',
	"SELECT dbpool_create_pool('lat', $ci, min_size => 0, max_size => 2, max_size_limit => 10)");
$l->safe_psql('postgres', q{SELECT * FROM dbpool_query('lat', 'SELECT pg_sleep(0.3)::text') AS t(x text)})
  for 1 .. 2;
ok(poll_until($l, alert_state('HighQueryLatency', 'lat'), 'firing'),
	'HighQueryLatency fires after slow queries');
ok(poll_until($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'lat'}, '3'),
	'its scale_up raised max_size by half (2 -> 3)');
query_ok($l, q{SELECT max_size FROM dbpool_config WHERE name = 'lat'}, '3',
	'written to the configuration');
query_ok($l, q{SELECT last_action_at IS NOT NULL FROM dbpool_alerts
	WHERE rule = 'HighQueryLatency' AND state = 'firing'}, 't', 'the action is shown');
$l->safe_psql('postgres', q{SELECT count(*) FROM generate_series(1, 300) g,
	LATERAL dbpool_query('lat', 'SELECT ' || g) AS t(x int)});
ok(poll_until($l, alert_state('HighQueryLatency', 'lat'), 'resolved'),
	'and resolves when fast queries bring p99 down');

# --- HighErrorRate: errors, then successes -----------------------------------------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('err', $ci, min_size => 0)");
run_sql($l, q{SELECT * FROM dbpool_query('err', 'SELECT 1/0') AS t(x int)}) for 1 .. 3;
ok(poll_until($l, alert_state('HighErrorRate', 'err'), 'firing'), 'HighErrorRate fires after errors');
$l->safe_psql('postgres', q{SELECT count(*) FROM generate_series(1, 20) g,
	LATERAL dbpool_query('err', 'SELECT ' || g) AS t(x int)});
ok(poll_until($l, alert_state('HighErrorRate', 'err'), 'resolved'),
	'and resolves when successes bring the rate down');

# --- ConnectionExhaustion: requests wait; scale_up within max_size_limit -----------------------
$l->safe_psql('postgres', "SELECT dbpool_create_pool('exh', $ci, min_size => 0, max_size => 4,"
	  . " max_size_limit => 5, acquire_timeout_ms => 30000)");
my @bgs = map {
	start_bg($l, q{SELECT * FROM dbpool_query('exh', 'SELECT pg_sleep(5)::text') AS t(x text)})
} 1 .. 5;
ok(poll_until($l, alert_state('ConnectionExhaustion', 'exh'), 'firing'),
	'ConnectionExhaustion fires while a request waits');
ok(poll_until($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'exh'}, '5'),
	'its scale_up raised max_size to max_size_limit (4 + 2 capped at 5)');
is((finish_bg($_))[0], 0, 'a waiting query was served') for @bgs;
ok(poll_until($l, alert_state('ConnectionExhaustion', 'exh'), 'resolved'),
	'and resolves when nothing waits');
query_ok($l, q{SELECT max_size FROM dbpool_config WHERE name = 'exh'}, '5',
	'never past the limit');

# --- PoolDown; disabling the rule resolves its alert; the pool back resolves it -----------------
my $dead = quote_literal('host=' . $f->host . ' port=25849 dbname=postgres');
$l->safe_psql('postgres',
	"SELECT dbpool_create_pool('down', $dead, min_size => 1, retry_attempts => 1)");
ok(poll_until($l, alert_state('PoolDown', 'down'), 'firing'), 'PoolDown fires at once');
$l->safe_psql('postgres', q{UPDATE dbpool_alert_rules SET enabled = false WHERE name = 'PoolDown'});
ok(poll_until($l, alert_state('PoolDown', 'down'), 'resolved', 10),
	'disabling the rule resolves its alert within seconds');
$l->safe_psql('postgres', q{UPDATE dbpool_alert_rules SET enabled = true WHERE name = 'PoolDown'});
ok(poll_until($l, q{SELECT count(*) FROM dbpool_alerts WHERE rule = 'PoolDown' AND state = 'firing'},
	'1', 10), 'enabling it again makes it fire again');
$l->safe_psql('postgres', "SELECT dbpool_alter_pool('down', jsonb_build_object('conninfo', ${ci}::text))");
ok(poll_until($l, q{SELECT count(*) FROM dbpool_alerts WHERE rule = 'PoolDown'
	AND state = 'resolved'}, '2'), 'and resolves when the pool is reachable again');

# --- what the listener received -----------------------------------------------------------------
my %want = (
	HighConnectionUtilization => 'util',
	HighQueryLatency => 'lat',
	HighErrorRate => 'err',
	ConnectionExhaustion => 'exh',
	PoolDown => 'down');
my $got = '';
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (time() < $deadline)
{
	$got = -e $out ? slurp_file($out) : '';
	last if ($got =~ tr/\n//) >= 12;
	sleep 1;
}
for my $rule (sort keys %want)
{
	for my $state ('firing', 'resolved')
	{
		like($got, qr/^\{"rule": "$rule", "pool": "$want{$rule}", "state": "$state", "value": [-0-9.e+]+, "threshold": [-0-9.e+]+, "severity": "(critical|warning)".*"since": "\d{4}-\d\d-\d\dT[^"]+"/m,
			"the listener forwarded $rule $state");
	}
}
$listener->signal('TERM');
$listener->finish;

# A LOG line for each.
my $log = slurp_file($l->logfile);
like($log, qr/LOG:  dbpool: alert "PoolDown" is firing for pool "down": down 1 = 1 for 0 s \(critical\)/,
	'firing is logged');
like($log, qr/LOG:  dbpool: alert "HighErrorRate" resolved for pool "err"/, 'resolving is logged');
like($log, qr/LOG:  dbpool: pool "exh": max_size 4 -> 5: scale_up by alert "ConnectionExhaustion"/,
	'scale_up is logged with its reason');

done_testing();
