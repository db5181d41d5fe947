# The configuration is data that pg_dump keeps: a dump of dbpool.database restored on a
# new server brings back every pool, its settings, owner, usage grants and password, with
# roles matched by name (their OIDs differ there).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pw = 'Dump_pw_7QxA2';

my $f = foreign_node('F', 25571, "password_encryption = 'scram-sha-256'\n");
$f->safe_psql('postgres', "CREATE ROLE app LOGIN PASSWORD '$pw'");
require_password($f, 'app');

my $l = local_node('L', 25570);
$l->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	GRANT EXECUTE ON FUNCTION dbpool_create_pool TO alice;
});
query_ok($l, "SELECT dbpool_create_pool('ap', "
	  . quote_literal(pool_conninfo($f, 'user=app', "password=$pw")) . ')',
	'', 'alice creates ap', user => 'alice');
query_ok($l, q{SELECT dbpool_grant_usage('ap', 'bob')}, '', 'alice grants usage to bob',
	user => 'alice');
query_ok($l, "SELECT dbpool_create_pool('sp', " . quote_literal(pool_conninfo($f))
	  . ", min_size => 0, max_size => 3, acquire_timeout_ms => 1111, query_timeout_ms => 2222,"
	  . " idle_timeout_ms => 3333, max_lifetime_ms => 4444, reset_query => 'RESET ALL')",
	'', 'the superuser creates sp');

my $pools_sql = q{SELECT name, owner, min_size, max_size, acquire_timeout_ms, query_timeout_ms,
	idle_timeout_ms, max_lifetime_ms, coalesce(reset_query, '<null>'), conninfo
	FROM dbpool_pools ORDER BY name};
my $before = $l->safe_psql('postgres', $pools_sql);

my $dump = $l->basedir . '/postgres.sql';
command_ok([ 'pg_dump', '-h', $l->host, '-p', $l->port, '-f', $dump, 'postgres' ],
	'pg_dump of dbpool.database');
my $dump_text = slurp_file($dump);
like($dump_text, qr/^ap\t.*\n^sp\t/m, 'the dump holds the configuration rows');

# A new server, its roles created in another order so that their OIDs differ.
my $l2 = PostgreSQL::Test::Cluster->new('L2', port => 25572);
$l2->init;
$l2->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dbpool'\ndbpool.database = 'postgres'\n");
$l2->start;
$l2->safe_psql('postgres', q{
	CREATE ROLE filler1; CREATE ROLE filler2;
	CREATE ROLE bob LOGIN;
	CREATE ROLE alice LOGIN;
});
isnt($l2->safe_psql('postgres', q{SELECT 'alice'::regrole::oid}),
	$l->safe_psql('postgres', q{SELECT 'alice'::regrole::oid}), 'alice has another OID on L2');
command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $l2->host, '-p', $l2->port,
	'-f', $dump, 'postgres' ], 'restore on L2');

is($l2->safe_psql('postgres', $pools_sql), $before, 'dbpool_pools on L2 is the same as on L');
query_ok($l2, q{SELECT x FROM dbpool_query('sp', 'SELECT 6') AS t(x int)}, '6',
	'a restored pool answers at once');
query_ok($l2, q{SELECT u FROM dbpool_query('ap', 'SELECT current_user::text') AS t(u text)},
	'app', "alice's restored pool authenticates with its password", user => 'alice');
query_ok($l2, q{SELECT u FROM dbpool_query('ap', 'SELECT current_user::text') AS t(u text)},
	'app', "bob's usage grant was restored", user => 'bob');
$l2->safe_psql('postgres', 'CREATE ROLE carol LOGIN');
query_fails($l2, q{SELECT u FROM dbpool_query('ap', 'SELECT current_user::text') AS t(u text)},
	'42501', undef, 'carol has no grant', user => 'carol');
query_ok($l2, q{SELECT dbpool_alter_pool('ap', '{"max_size": 4}')}, '',
	'alice still owns ap on L2', user => 'alice');

done_testing();
