# A max_size change that cannot be written to dbpool_config (issue 14's scale_up, hardened in
# issue 16's round): the attempt counts like a change, so it is retried after the action's
# interval (a minute) instead of every second, with one WARNING and one LOG line per attempt.
# The pool keeps its size and serves.  (Autoscaling's attempts follow the same rule, waiting for
# dbpool.autoscale_cooldown_s, in autoscale.c's decide(); this file drives only scale_up.)
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25864);
my $l = local_node('L', 25865);
my $ci = quote_literal(pool_conninfo($f));

$l->safe_psql('postgres', qq{
	SELECT dbpool_create_pool('wf', $ci, min_size => 1, max_size => 2, max_size_limit => 10);
	CREATE FUNCTION no_resize() RETURNS trigger LANGUAGE plpgsql AS \$\$
	BEGIN
		IF NEW.max_size <> OLD.max_size THEN
			RAISE EXCEPTION 'max_size is frozen here';
		END IF;
		RETURN NEW;
	END \$\$;
	CREATE TRIGGER no_resize BEFORE UPDATE ON dbpool_config FOR EACH ROW EXECUTE FUNCTION no_resize();
	DELETE FROM dbpool_alert_rules;
});
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'wf'}, '1'),
	'the pool is ready');

my $offset = -s $l->logfile;
# always true: it fires at once and asks for scale_up
$l->safe_psql('postgres', q{INSERT INTO dbpool_alert_rules (name, metric, comparison, threshold,
	for_seconds, severity, pool, action) VALUES ('Always', 'utilization', '>=', 0, 0, 'warning', 'wf', 'scale_up')});
ok($l->wait_for_log(qr/could not write a pool's max_size to dbpool_config: max_size is frozen here/, $offset),
	'the write fails, with the trigger\'s message');

# the rule is evaluated every second: four more evaluations while the alert fires
ok(poll_until($l, q{SELECT state FROM dbpool_alerts WHERE rule = 'Always' AND pool = 'wf'}, 'firing'),
	'the alert fires');
my $t0 = time;
sleep 1 while time - $t0 < 5;
my $log = slurp_file($l->logfile, $offset);
my $warnings = () = $log =~ /could not write a pool's max_size/g;
my $notes = () = $log =~ /max_size not changed from 2 to 3/g;
is($warnings, 1, 'one failed write in 5 s of firing, not one a second');
is($notes, 1, 'and one LOG line saying the size did not change');
query_ok($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'wf'}, '2', 'max_size stays 2');
query_ok($l, q{SELECT x FROM dbpool_query('wf', 'SELECT 7') AS t(x int)}, '7', 'the pool serves');
done_testing();
