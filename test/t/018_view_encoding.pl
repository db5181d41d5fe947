# Texts that a foreign server sent or another database wrote render in every view and
# function, read from every database (issue 11, item 3):
#  - a foreign SQL_ASCII database sends an error message with bytes that are not UTF-8
#    (\xff\xfe): the caller gets that error with the bytes escaped as \xff\xfe, and
#    dbpool_connections.last_error and dbpool_detailed_metrics() show it the same way;
#  - a query text with a euro sign, run from a UTF8 database, is read from a LATIN1 database
#    (which has no euro sign) in dbpool_connections, dbpool_slow_queries and
#    dbpool_detailed_metrics: shown as \u20ac, and the e-acute LATIN1 has stays itself; a
#    foreign error with a euro sign reaches a LATIN1 caller as that error, escaped;
#  - a conninfo longer than the 1023 bytes dbpool_pools shows is cut between two characters
#    and ends with "...": CREATE TABLE AS of the view stores valid text, which pg_dump and a
#    restore carry.
# Every view and function is then read from a UTF8, a LATIN1 and a SQL_ASCII database.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25670);

# L as local_node makes it, but with a UTF8 cluster whatever the environment's locale:
# dbpool.database (postgres) is UTF8.
my $l = PostgreSQL::Test::Cluster->new('L', port => 25671);
$l->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$l->append_conf('postgresql.conf',
	    "shared_preload_libraries = 'dbpool'\n"
	  . "dbpool.database = 'postgres'\n"
	  . "track_activity_query_size = 1024\n");
$l->start;
$l->safe_psql('postgres', 'CREATE EXTENSION dbpool');
is($l->safe_psql('postgres', 'SHOW server_encoding'), 'UTF8', 'dbpool.database is UTF8');

for my $db ([ 'latin', 'LATIN1' ], [ 'rawdb', 'SQL_ASCII' ])
{
	$l->safe_psql('postgres',
		"CREATE DATABASE $db->[0] ENCODING '$db->[1]' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
	$l->safe_psql($db->[0], 'CREATE EXTENSION dbpool');
}
$f->safe_psql('postgres',
	q{CREATE DATABASE sqlascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});

# --- a foreign error message that is not UTF-8 -----------------------------------------
# A foreign server validates what it sends against client_encoding (UTF8, which dbpool
# asks for), except in two cases that a real server shows here:
#  - in a SQL_ASCII database, a query that sets client_encoding to SQL_ASCII and fails in the
#    same simple-protocol call: the error goes out raw, then the rollback sets client_encoding
#    back to UTF8 (so the server never reports the change);
#  - errors at connection start-up, before client_encoding applies: a database whose
#    datcollate holds the bytes (a superuser of F wrote them) fails every connection with a
#    FATAL whose detail carries them.
$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_create_pool('raw', %s, min_size => 1, max_size => 1)},
		quote_literal(join(' ', 'host=' . $f->host, 'port=' . $f->port, 'dbname=sqlascii'))));
my $raise_ff = quote_literal(
	q{SET client_encoding = 'SQL_ASCII'; DO $$BEGIN RAISE EXCEPTION '%', 'bad ' || convert_from('\xfffe'::bytea, 'SQL_ASCII') || ' end'; END$$});
query_fails($l, "SELECT dbpool_exec('raw', $raise_ff)",
	'P0001', qr/ERROR:  P0001: bad \\xff\\xfe end/,
	'the caller gets the foreign error, its invalid bytes escaped');
query_ok($l, q{SELECT last_error FROM dbpool_connections WHERE pool = 'raw'},
	q{bad \xff\xfe end}, 'dbpool_connections shows the stored error escaped');
query_ok($l, q{SELECT dbpool_detailed_metrics('raw')->'connections'->0->>'last_error'},
	q{bad \xff\xfe end}, 'dbpool_detailed_metrics(pool) shows it too');
query_ok($l, q{SELECT dbpool_detailed_metrics()->'raw'->'connections'->0->>'last_error'},
	q{bad \xff\xfe end}, 'and dbpool_detailed_metrics()');
query_ok($l, q{SELECT count(*) FROM dbpool_query('raw', 'SHOW client_encoding') AS t(e text) WHERE e = 'UTF8'},
	'1', 'the connection is back in UTF8 for the next call');

$f->safe_psql('postgres',
	q{CREATE DATABASE broken ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
$f->safe_psql('sqlascii',
	q{UPDATE pg_database SET datcollate = 'C' || convert_from('\xfffe'::bytea, 'SQL_ASCII') WHERE datname = 'broken'});
$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_create_pool('broken', %s, min_size => 0, max_size => 1)},
		quote_literal(join(' ', 'host=' . $f->host, 'port=' . $f->port, 'dbname=broken'))));
query_fails($l, q{SELECT dbpool_exec('broken', 'SELECT 1')},
	'08001', qr/LC_COLLATE "C\\xff\\xfe"/,
	'a start-up error with invalid bytes reaches the caller escaped');

# A long error is cut between two characters and says so.
query_fails($l,
	q{SELECT dbpool_exec('raw', 'DO $$BEGIN RAISE EXCEPTION ''%'', repeat(''y'', 1000); END$$')},
	'P0001', undef, 'a long foreign error');
query_ok($l, q{SELECT octet_length(last_error), right(last_error, 4) FROM dbpool_connections WHERE pool = 'raw'},
	'255|y...', 'a long last_error is cut to 255 bytes and ends with "..."');
# ... and never inside an escape: 'a' and 62 escaped bytes are the most that fit.
my $raise_100ff = quote_literal(
	q{SET client_encoding = 'SQL_ASCII'; DO $$BEGIN RAISE EXCEPTION '%', 'a' || convert_from(decode(repeat('ff', 100), 'hex'), 'SQL_ASCII'); END$$});
query_fails($l, "SELECT dbpool_exec('raw', $raise_100ff)",
	'P0001', qr/ERROR:  P0001: a(\\xff){100}\n/, 'an error of 100 invalid bytes reaches the caller whole');
query_ok($l, q{SELECT octet_length(last_error), right(last_error, 7) FROM dbpool_connections WHERE pool = 'raw'},
	'252|\xff...', 'its last_error is cut between two escapes');

# --- a euro sign read from LATIN1 -------------------------------------------------------
$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_create_pool('euro', %s, min_size => 1, max_size => 1, slow_query_ms => 1)},
		quote_literal(pool_conninfo($f))));
# The query text is made in the UTF8 database: SELECT 'café €'::text, pg_sleep(0.05)
query_ok($l, q{SELECT v FROM dbpool_query('euro',
	'SELECT ''caf' || chr(233) || ' ' || chr(8364) || '''::text, pg_sleep(0.05)') AS t(v text, s text)},
	'caf' . "\xc3\xa9" . ' ' . "\xe2\x82\xac", 'a query with a euro sign from a UTF8 database');
ok(poll_until($l, q{SELECT count(*) FROM dbpool_slow_queries WHERE pool = 'euro'}, '1'),
	'it is in the slow-query log');

# In LATIN1, e-acute is itself, the euro sign \u20ac.
my $shown = q{position('caf' || chr(233) || ' \u20ac''::text, pg_sleep(0.05)' in %s) > 0};
query_ok($l, sprintf("SELECT $shown FROM dbpool_connections WHERE pool = 'euro'", 'last_query'),
	't', 'LATIN1 reads dbpool_connections.last_query, the euro sign escaped', db => 'latin');
query_ok($l, sprintf("SELECT $shown FROM dbpool_slow_queries WHERE pool = 'euro'", 'query'),
	't', 'LATIN1 reads dbpool_slow_queries', db => 'latin');
query_ok($l, sprintf("SELECT $shown FROM dbpool_slow_queries('euro', NULL)", 'query'),
	't', 'LATIN1 reads dbpool_slow_queries(pool, lim)', db => 'latin');
query_ok($l, sprintf("SELECT $shown", q{dbpool_detailed_metrics('euro')->'connections'->0->>'last_query'}),
	't', 'LATIN1 reads dbpool_detailed_metrics(pool)', db => 'latin');
query_ok($l, sprintf("SELECT $shown", q{dbpool_detailed_metrics()->'euro'->'connections'->0->>'last_query'}),
	't', 'LATIN1 reads dbpool_detailed_metrics()', db => 'latin');
query_ok($l, q{SELECT last_query = 'SELECT ''caf' || chr(233) || ' ' || chr(8364) || '''::text, pg_sleep(0.05)'
	FROM dbpool_connections WHERE pool = 'euro'},
	't', 'UTF8 still reads the text as it was');
# Above U+FFFF: \U and eight digits.
query_ok($l, q{SELECT v FROM dbpool_query('euro', 'SELECT ''grin ' || chr(128512) || '''::text') AS t(v text)},
	"grin \xf0\x9f\x98\x80", 'a query with an emoji');
query_ok($l, q{SELECT last_query FROM dbpool_connections WHERE pool = 'euro'},
	q{SELECT 'grin \U0001f600'::text}, 'LATIN1 reads it as \U0001f600', db => 'latin');

# A foreign error with a euro sign reaches a LATIN1 caller as that error.
query_fails($l,
	q{SELECT dbpool_exec('euro', 'DO $$BEGIN RAISE EXCEPTION ''price %'', chr(8364); END$$')},
	'P0001', qr/ERROR:  P0001: price \\u20ac/,
	'a LATIN1 caller gets the foreign error, the euro sign escaped', db => 'latin');
query_ok($l, q{SELECT last_error FROM dbpool_connections WHERE pool = 'euro'},
	q{price \u20ac}, 'LATIN1 reads that last_error', db => 'latin');
query_ok($l, q{SELECT last_error = 'price ' || chr(8364) FROM dbpool_connections WHERE pool = 'euro'},
	't', 'UTF8 reads it as it was');

# --- a conninfo longer than dbpool_pools shows ------------------------------------------
# Its application_name is 600 e-acutes (two bytes each), after an 'x' or not: in one of
# the two pools, byte 1023 is the middle of a character.
$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_create_pool('long' || n, %s || ' application_name=' || pad || repeat(chr(233), 600),
	                                  min_size => 0)
	          FROM (VALUES (1, ''), (2, 'x')) AS v(n, pad)},
		quote_literal(pool_conninfo($f))));
$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_create_pool('euroapp', %s || ' application_name=' || chr(8364), min_size => 0)},
		quote_literal(pool_conninfo($f))));
$l->safe_psql('postgres', 'CREATE TABLE pools_copy AS SELECT * FROM dbpool_pools');
query_ok($l, q{SELECT name, convert_from(convert_to(conninfo, 'UTF8'), 'UTF8') = conninfo,
	octet_length(conninfo) <= 1023, right(conninfo, 4) = chr(233) || '...'
	FROM pools_copy WHERE name LIKE 'long%' ORDER BY name},
	"long1|t|t|t\nlong2|t|t|t",
	'a stored copy of dbpool_pools holds valid text, cut between characters, ending in "..."');

my $dump = $l->basedir . '/pools_copy.sql';
$l->safe_psql('postgres', 'CREATE DATABASE restored');
$l->command_ok([ 'pg_dump', '-h', $l->host, '-p', $l->port, '-t', 'pools_copy', '-f', $dump, 'postgres' ],
	'pg_dump of the copy');
$l->command_ok(
	[ 'psql', '-X', '-h', $l->host, '-p', $l->port, '-v', 'ON_ERROR_STOP=1', '-q', '-f', $dump, 'restored' ],
	'restore of the copy');
query_ok($l, q{SELECT count(*) FROM pools_copy WHERE name LIKE 'long%'}, '2',
	'the restored copy has both rows', db => 'restored');

query_ok($l, q{SELECT right(conninfo, 6) = '\u20ac' FROM dbpool_pools WHERE name = 'euroapp'},
	't', 'LATIN1 reads dbpool_pools.conninfo, the euro sign escaped', db => 'latin');
query_ok($l, q{SELECT right(conninfo, 1) = chr(8364) FROM dbpool_pools WHERE name = 'euroapp'},
	't', 'UTF8 reads it as it was');
query_ok($l, q{SELECT position('\u20ac' in dbpool_detailed_metrics('euroapp')->'settings'->>'conninfo') > 0},
	't', 'LATIN1 reads it in dbpool_detailed_metrics', db => 'latin');

# --- every view and function, from every database ---------------------------------------
for my $db (qw(postgres latin rawdb))
{
	for my $q (
		'SELECT count(*) >= 0 FROM (SELECT * FROM dbpool_pools) s',
		'SELECT count(*) >= 0 FROM (SELECT * FROM dbpool_metrics) s',
		'SELECT count(*) >= 0 FROM (SELECT * FROM dbpool_connections) s',
		'SELECT count(*) >= 0 FROM (SELECT * FROM dbpool_slow_queries) s',
		'SELECT count(*) >= 0 FROM (SELECT * FROM dbpool_slow_queries(NULL, NULL)) s',
		'SELECT length(dbpool_detailed_metrics()::text) > 0')
	{
		query_ok($l, $q, 't', "$db: $q", db => $db);
	}
}

ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'L never crashed');

done_testing();
