# Autoscaling on a hot standby (issue 14): the standby's worker resizes its own pool under
# load, keeps the new max_size in memory (nothing is written, the replicated table keeps its
# value) and logs it; a configuration re-read caused by another change replicated from the
# primary does not undo it; a change of that pool's max_size on the primary wins.  An alert
# that fires on the standby is logged, and no NOTIFY is attempted there.
#
# P is the primary, S its streaming standby, F the foreign server.  Autoscaling is made quick
# on S only (its own postgresql.auto.conf), and can only grow there.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25850);
my $ci = quote_literal(pool_conninfo($f));

my $p = PostgreSQL::Test::Cluster->new('P', port => 25847);
$p->init(allows_streaming => 1);
$p->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dbpool'\ndbpool.database = 'postgres'\n");
$p->start;
$p->safe_psql('postgres', 'CREATE EXTENSION dbpool');
$p->safe_psql('postgres', q{UPDATE dbpool_alert_rules SET enabled = false});
# On P the pool cannot shrink (its floor is its size) and gets no load.
$p->safe_psql('postgres', "SELECT dbpool_create_pool('sa', $ci, min_size => 0, max_size => 2,"
	  . " max_size_floor => 2, max_size_limit => 4, autoscale => true, acquire_timeout_ms => 30000)");
$p->safe_psql('postgres', "SELECT dbpool_create_pool('other', $ci, min_size => 0, max_size => 2)");
$p->backup('b');

my $s = PostgreSQL::Test::Cluster->new('S', port => 25848);
$s->init_from_backup($p, 'b', has_streaming => 1);
$s->append_conf('postgresql.conf',
	    "dbpool.autoscale_window_s = 2\n"
	  . "dbpool.autoscale_cooldown_s = 1\n"
	  . "dbpool.autoscale_up_utilization = 0.5\n"
	  . "dbpool.autoscale_up_qps = 0\n"
	  . "dbpool.autoscale_down_qps = 0\n");
$s->start;
is($s->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'S is a standby');
ok(poll_until($s, q{SELECT max_size FROM dbpool_pools WHERE name = 'sa'}, '2'),
	'S serves the pool');

# --- under load on S, S grows its pool in memory ------------------------------------------------
my $load = q{SELECT count(*) FROM generate_series(1, 30) g,
	LATERAL dbpool_query('sa', 'SELECT pg_sleep(0.2)::text || ' || g) AS t(x text)};
my @bgs = map { start_bg($s, $load) } 1 .. 4;
ok(poll_until($s, q{SELECT max_size FROM dbpool_pools WHERE name = 'sa'}, '4'),
	'under load the standby grows max_size to max_size_limit');
is((finish_bg($_))[0], 0, 'a load session ended normally') for @bgs;
query_ok($s, q{SELECT max_size FROM dbpool_config WHERE name = 'sa'}, '2',
	'nothing was written: the table still says 2');
like(slurp_file($s->logfile),
	qr/LOG:  dbpool: pool "sa": max_size 2 -> 3: autoscale: .*\n.*DETAIL:  This server is a hot standby: the new size is kept in memory only/,
	'the change is logged, kept in memory only');

# --- a re-read for another change keeps it --------------------------------------------------------
$p->safe_psql('postgres', q{SELECT dbpool_alter_pool('other', '{"max_size": 3}')});
$p->wait_for_catchup($s);
ok(poll_until($s, q{SELECT max_size FROM dbpool_pools WHERE name = 'other'}, '3'),
	'S read the configuration again (another pool changed on P)');
query_ok($s, q{SELECT max_size FROM dbpool_pools WHERE name = 'sa'}, '4',
	'and kept its own size of sa');

# --- a change of that pool's max_size on the primary wins ----------------------------------------
$p->safe_psql('postgres', q{SELECT dbpool_alter_pool('sa', '{"max_size": 3}')});
$p->wait_for_catchup($s);
ok(poll_until($s, q{SELECT max_size FROM dbpool_pools WHERE name = 'sa'}, '3'),
	'a new max_size from the primary replaces the standby\'s own');
like(slurp_file($s->logfile),
	qr/dbpool: pool "sa": max_size 3 from the configuration replaces the size 4 this standby chose/,
	'and that is logged');
query_ok($p, q{SELECT max_size FROM dbpool_pools WHERE name = 'sa'}, '3', 'P was never resized');

# --- alerts on the standby are logged, nothing is sent --------------------------------------------
my $dead = quote_literal('host=' . $f->host . ' port=25849 dbname=postgres');
$p->safe_psql('postgres', qq{
	UPDATE dbpool_alert_rules SET enabled = true, pool = 'dead' WHERE name = 'PoolDown';
	SELECT dbpool_create_pool('dead', $dead, min_size => 1, retry_attempts => 1);
});
$p->wait_for_catchup($s);
ok(poll_until($s, q{SELECT state FROM dbpool_alerts WHERE rule = 'PoolDown' AND pool = 'dead'},
	'firing'), 'PoolDown fires on the standby');
my $slog = slurp_file($s->logfile);
like($slog, qr/LOG:  dbpool: alert "PoolDown" is firing for pool "dead"/, 'and is logged there');
unlike($slog, qr/could not send NOTIFY/, 'no NOTIFY is attempted in recovery');

done_testing();
