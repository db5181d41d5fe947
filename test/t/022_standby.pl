# The local server as a hot standby (issue 12): the worker runs there and serves the pools of
# the configuration replicated from the primary, and follows changes made on the primary by
# itself; the administration functions refuse with 25006; nothing writes.  After promotion
# everything works as on a primary, without a worker restart.
#
# L is the primary (dbpool preloaded, streaming allowed), S a streaming hot standby from L's
# backup (the backup brings shared_preload_libraries and dbpool.database), F the foreign
# server with two databases.  Changes made on L are checked on S through dbpool_pools and
# through calls on a pool S already knows (no lookup miss, which would make the worker
# re-read by itself), within a deadline well under the worker's 60 s periodic refresh: only
# the standby's own watch can meet it.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# Well below the periodic refresh (60 s), generous for a loaded machine.
my $FOLLOW = 20;

my $f = foreign_node('F', 25712);
$f->safe_psql('postgres', 'CREATE DATABASE other');

# The primary: local_node's settings, with streaming allowed.
my $l = PostgreSQL::Test::Cluster->new('L', port => 25710);
$l->init(allows_streaming => 1);
$l->append_conf('postgresql.conf',
	    "shared_preload_libraries = 'dbpool'\n"
	  . "dbpool.database = 'postgres'\n"
	  . "log_connections = on\n");
$l->start;
$l->safe_psql('postgres', 'CREATE EXTENSION dbpool');
$l->safe_psql('postgres', 'CREATE ROLE alice LOGIN');
$l->backup('b');

my $s = PostgreSQL::Test::Cluster->new('S', port => 25711);
$s->init_from_backup($l, 'b', has_streaming => 1);
$s->start;
is($s->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'S is a standby');

ok( poll_until(
		$s,
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dbpool worker'}, '1'),
	'the worker runs on the standby');

my $ci_pg = quote_literal(pool_conninfo($f));
(my $ci_other = pool_conninfo($f)) =~ s/dbname=postgres/dbname=other/;
$ci_other = quote_literal($ci_other);
my $db_q = q{SELECT d FROM dbpool_query('p', 'SELECT current_database()') AS t(d name)};

# --- a pool created on the primary is served by the standby -----------------------------------
$l->safe_psql('postgres',
	"SELECT dbpool_create_pool('p', $ci_pg, min_size => 0, max_size => 2)");
$l->wait_for_catchup($s);
query_ok($s, $db_q, 'postgres', 'the standby serves the pool created on the primary');
query_ok($s, q{SELECT name, max_size FROM dbpool_pools},
	'p|2', 'dbpool_pools on the standby shows it');

# --- changes on the primary reach the standby by themselves -----------------------------------
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('p', '{"max_size": 7}')});
ok(poll_until($s, q{SELECT max_size FROM dbpool_pools WHERE name = 'p'}, '7', $FOLLOW),
	'an altered max_size reaches the standby');

$l->safe_psql('postgres', "SELECT dbpool_alter_pool('p', jsonb_build_object('conninfo', $ci_other))");
ok(poll_until($s, $db_q, 'other', $FOLLOW),
	'an altered conninfo reaches the standby: its calls go to the other database');

$l->safe_psql('postgres',
	"SELECT dbpool_create_pool('q', $ci_pg, min_size => 1, max_size => 1)");
ok( poll_until(
		$s, q{SELECT total_connections FROM dbpool_metrics WHERE pool = 'q'}, '1', $FOLLOW),
	'a pool created on the primary is loaded on the standby without a call (min_size filled)');

$l->safe_psql('postgres', q{SELECT dbpool_grant_usage('q', 'alice')});
$l->safe_psql('postgres', q{GRANT EXECUTE ON FUNCTION dbpool_query TO alice});
$l->wait_for_catchup($s);
ok( poll_until(
		$s, q{SELECT x FROM dbpool_query('q', 'SELECT 1') AS t(x int)}, '1', $FOLLOW,
		user => 'alice'),
	'a usage grant made on the primary holds on the standby');

$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('q')});
ok(poll_until($s, q{SELECT count(*) FROM dbpool_pools WHERE name = 'q' AND state <> 'dropping'}, '0', $FOLLOW),
	'a pool dropped on the primary is dropped on the standby');
query_fails($s, q{SELECT * FROM dbpool_query('q', 'SELECT 1') AS t(x int)},
	'42704', qr/pool "q" does not exist/, 'a call on the dropped pool');

# A direct edit of the table (not through the functions) is found too.
$l->safe_psql('postgres', q{UPDATE dbpool_config SET min_size = 1 WHERE name = 'p'});
ok(poll_until($s, q{SELECT min_size FROM dbpool_pools WHERE name = 'p'}, '1', $FOLLOW),
	'a direct UPDATE of dbpool_config on the primary reaches the standby');

# --- administration refuses on the standby ----------------------------------------------------
my %admin = (
	'create' => "SELECT dbpool_create_pool('z', $ci_pg)",
	'alter' => q{SELECT dbpool_alter_pool('p', '{"max_size": 3}')},
	'drop' => q{SELECT dbpool_drop_pool('p')},
	'grant' => q{SELECT dbpool_grant_usage('p', 'alice')},
	'revoke' => q{SELECT dbpool_revoke_usage('p', 'alice')});
for my $fn (sort keys %admin)
{
	my $r = query_fails($s, $admin{$fn}, '25006',
		qr/cannot change dbpool pools during recovery/, "$fn on the standby");
	like($r->{err}, qr/HINT:\s+Change them on the primary server\./,
		"$fn on the standby: the hint");
}
query_ok($s, q{SELECT dbpool_reset_stats('p')}, '',
	'dbpool_reset_stats works on the standby (its statistics are its own)');
query_ok($s, $db_q, 'other', 'the pool still serves after the refused changes');

# Nothing the worker or a backend did tried to write.
my $slog = slurp_file($s->logfile);
unlike($slog, qr/cannot assign TransactionIds during recovery|in a read-only transaction/,
	'nothing on the standby tried to write');
unlike($slog, qr/could not read the pool configuration/,
	'the standby\'s worker read the configuration without errors');

# --- promotion: the standby becomes a primary, the same worker goes on --------------------------
my ($worker) = dbpool_worker_pids($s);
$s->promote;
ok(poll_until($s, 'SELECT pg_is_in_recovery()', 'f'), 'S is promoted');
$s->safe_psql('postgres', "SELECT dbpool_create_pool('r', $ci_pg, max_size => 1)");
query_ok($s, q{SELECT x FROM dbpool_query('r', 'SELECT 42') AS t(x int)}, '42',
	'a pool created on the promoted server serves at once');
$s->safe_psql('postgres', "SELECT dbpool_alter_pool('p', jsonb_build_object('conninfo', $ci_pg))");
query_ok($s, $db_q, 'postgres', 'an alter on the promoted server applies at once');
is(join(',', dbpool_worker_pids($s)), $worker, 'the same worker serves after promotion');

$s->stop;
$l->stop;
$f->stop;
done_testing();
