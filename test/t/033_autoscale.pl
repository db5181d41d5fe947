# Autoscaling (issue 14): a pool with autoscale on grows under load (mean utilization and QPS
# over the window above the thresholds: max_size x 1.5, at most max_size_limit) and shrinks
# when idle (below them: max_size x 0.8, not below max_size_floor); every change is written to
# the configuration and logged with its figures.  A pool with autoscale off is left alone.
# The window, cooldown and thresholds are made small with ALTER SYSTEM and a reload.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25846);
my $l = local_node('L', 25845);
my $ci = quote_literal(pool_conninfo($f));

query_ok($l, q{SELECT current_setting('dbpool.autoscale_window_s'),
	current_setting('dbpool.autoscale_cooldown_s'), current_setting('dbpool.autoscale_up_utilization'),
	current_setting('dbpool.autoscale_up_qps'), current_setting('dbpool.autoscale_down_utilization'),
	current_setting('dbpool.autoscale_down_qps')}, '1min|1min|0.8|1000|0.3|100', 'the defaults');

# The alerts' scale_up must not take part here.
$l->safe_psql('postgres', q{UPDATE dbpool_alert_rules SET enabled = false});
$l->safe_psql('postgres', q{
	ALTER SYSTEM SET dbpool.autoscale_window_s = 2;
	ALTER SYSTEM SET dbpool.autoscale_cooldown_s = 1;
	ALTER SYSTEM SET dbpool.autoscale_up_utilization = 0.5;
	ALTER SYSTEM SET dbpool.autoscale_up_qps = 0;
	ALTER SYSTEM SET dbpool.autoscale_down_utilization = 0.3;
	ALTER SYSTEM SET dbpool.autoscale_down_qps = 1000;
	SELECT pg_reload_conf();
});
ok(poll_until($l, q{SHOW dbpool.autoscale_window_s}, '2s'), 'the settings are reloaded');

$l->safe_psql('postgres', "SELECT dbpool_create_pool('a', $ci, min_size => 0, max_size => 2,"
	  . " max_size_limit => 4, max_size_floor => 1, autoscale => true, acquire_timeout_ms => 30000)");
$l->safe_psql('postgres', "SELECT dbpool_create_pool('fixed', $ci, min_size => 0, max_size => 3)");

# --- under load it grows, up to max_size_limit ---------------------------------------------------
# Four sessions each keep one connection busy with short queries (so QPS > 0).
my $load = q{SELECT count(*) FROM generate_series(1, 40) g,
	LATERAL dbpool_query('a', 'SELECT pg_sleep(0.2)::text || ' || g) AS t(x text)};
my @bgs = map { start_bg($l, $load) } 1 .. 4;
ok(poll_until($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'a'}, '3'),
	'under load max_size grows by half (2 -> 3)');
ok(poll_until($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'a'}, '4'),
	'then to max_size_limit (3 -> 5 capped at 4)');
query_ok($l, q{SELECT max_size FROM dbpool_config WHERE name = 'a'}, '4', 'written to the configuration');
is((finish_bg($_))[0], 0, 'a load session ended normally') for @bgs;
query_ok($l, q{SELECT max(max_size) FROM dbpool_pools WHERE name = 'a'}, '4', 'never past the limit');

# --- idle, it shrinks, down to max_size_floor -----------------------------------------------------
ok(poll_until($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'a'}, '1'),
	'idle, max_size shrinks to max_size_floor');
query_ok($l, q{SELECT max_size FROM dbpool_config WHERE name = 'a'}, '1', 'written too');
# It stays there: more than a window and a cooldown later it has not gone below.
my $t0 = $l->safe_psql('postgres', q{SELECT now()});
ok(poll_until($l, qq{SELECT clock_timestamp() > '$t0'::timestamptz + interval '5 s'}),
	'five seconds pass');
query_ok($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'a'}, '1', 'max_size stays at the floor');
query_ok($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'fixed'}, '3',
	'a pool with autoscale off keeps its size');

my $log = slurp_file($l->logfile);
like($log, qr/LOG:  dbpool: pool "a": max_size 2 -> 3: autoscale: mean utilization [0-9.]+ > 0.5 and [0-9.]+ queries\/s > 0 over 2 s/,
	'growing is logged with its figures');
like($log, qr/LOG:  dbpool: pool "a": max_size 4 -> 3: autoscale: mean utilization [0-9.]+ < 0.3 and [0-9.]+ queries\/s < 1000 over 2 s/,
	'shrinking too');
unlike($log, qr/max_size \d+ -> [05]\b/, 'it never went past the limit or below the floor');

# --- turned off, it stays ----------------------------------------------------------------------
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('a', '{"autoscale": false, "max_size": 2}')});
@bgs = map { start_bg($l, $load) } 1 .. 2;
is((finish_bg($_))[0], 0, 'a load session ended normally') for @bgs;
query_ok($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'a'}, '2',
	'with autoscale off, load changes nothing');

done_testing();
