# Basics across two servers: create a pool, query it with parameters and NULLs, dbpool_exec
# statuses, errors keep their SQLSTATE; the pool survives a restart of the local server;
# text is converted to the encoding of the calling database (LATIN1 here, UTF8 on F).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25501);
my $l = local_node('L', 25500);
my $ci = quote_literal(pool_conninfo($f));

$f->safe_psql('postgres', q{
	CREATE TABLE kv(id int PRIMARY KEY, v text);
	INSERT INTO kv VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, NULL);
	-- é (U+00E9) is in LATIN1; € (U+20AC) is not.
	INSERT INTO kv VALUES (10, 'caf' || chr(233)), (11, 'price ' || chr(8364));
});

# Created and used in consecutive statements: usable by the very next statement.
query_ok($l, qq{
	SELECT dbpool_create_pool('p', $ci);
	SELECT id, v FROM dbpool_query('p', 'SELECT id, v FROM kv WHERE id = \$1', ARRAY['2']) AS t(id int, v text);
}, "\n2|two", 'pool usable by the statement after its creation');

query_ok($l, q{SELECT string_agg(id || ':' || coalesce(v, '<null>'), ',' ORDER BY id)
	FROM dbpool_query('p', 'SELECT id, v FROM kv WHERE id < 10') AS t(id int, v text)},
	'1:one,2:two,3:three,4:<null>', 'all rows, NULL column value arrives as NULL');

query_ok($l, q{SELECT a IS NULL, b, c FROM dbpool_query('p',
	'SELECT $1::text, $2::int + 1, $3', ARRAY[NULL, '41', 'x''y']) AS t(a text, b int, c text)},
	"t|42|x'y", 'NULL parameter, typed parameter, quote in a parameter');

query_ok($l, q{SELECT * FROM dbpool_query('p',
	$$SELECT 1.50::numeric, DATE '2024-02-29', true, 'it''s', NULL::int, '{1,2}'::int[]$$)
	AS t(a numeric, b date, c boolean, d text, e int, g int[])},
	"1.50|2024-02-29|t|it's||{1,2}", 'values of several types through their text form');

query_ok($l, q{SELECT count(*) FROM dbpool_query('p', 'SELECT 1 WHERE false') AS t(x int)},
	'0', 'empty result');

query_ok($l, q{SELECT dbpool_exec('p', 'INSERT INTO kv VALUES ($1, $2), (6, ''six'')', ARRAY['5', 'five'])},
	'INSERT 0 2', 'dbpool_exec returns the INSERT status');
query_ok($l, q{SELECT dbpool_exec('p', 'UPDATE kv SET v = upper(v) WHERE id IN (5, 6)')},
	'UPDATE 2', 'dbpool_exec returns the UPDATE status');
query_ok($l, q{SELECT dbpool_exec('p', 'DELETE FROM kv WHERE id = 6')},
	'DELETE 1', 'dbpool_exec returns the DELETE status');
query_ok($l, q{SELECT dbpool_exec('p', 'CREATE TABLE made_by_dbpool(x int)')},
	'CREATE TABLE', 'dbpool_exec returns the utility status');
is($f->safe_psql('postgres', q{SELECT string_agg(id || v, ',' ORDER BY id) FROM kv WHERE id IN (5, 6)}),
	'5FIVE', 'the writes happened on F');

query_fails($l, q{SELECT dbpool_exec('p', 'INSERT INTO kv VALUES (1, ''dup'')')},
	'23505', qr/duplicate key value violates unique constraint "kv_pkey"/,
	'remote error keeps its SQLSTATE and message');
query_fails($l, q{SELECT * FROM dbpool_query('p', 'SELECT 1/0') AS t(x int)},
	'22012', qr/division by zero/, 'remote division by zero');
query_fails($l, q{SELECT * FROM dbpool_query('p', 'SELEKT 1') AS t(x int)},
	'42601', qr/syntax error/, 'remote syntax error');
query_fails($l, q{SELECT * FROM dbpool_query('nosuchpool', 'SELECT 1') AS t(x int)},
	'42704', qr/nosuchpool/, 'unknown pool');
my $r = run_sql($l, q{SELECT * FROM dbpool_query('p', 'SELECT 1, 2') AS t(x int)});
isnt($r->{ret}, 0, 'a column list that does not match the result is an error');
query_ok($l, q{SELECT count(*) FROM dbpool_query('p', 'SELECT id FROM kv') AS t(id int)},
	'7', 'pool works after the errors');

query_ok($l, q{SELECT dbpool_exec('p', 'SELECT id FROM kv WHERE id < 4')}, 'SELECT 3',
	'dbpool_exec of a SELECT returns its status');
query_ok($l, q{SELECT * FROM dbpool_query('p', 'INSERT INTO kv VALUES (20, ''twenty'') RETURNING id, v') AS t(id int, v text)},
	'20|twenty', 'dbpool_query of INSERT ... RETURNING returns the rows');
query_ok($l, q{SELECT dbpool_exec('p', 'DELETE FROM kv WHERE id = 20')}, 'DELETE 1', 'and it was inserted');

# Requests and values larger than any queue: a 1 MB parameter, a 300 kB statement text,
# a 5 MB value.
query_ok($l, q{SELECT * FROM dbpool_query('p', 'SELECT length($1), md5($1)', ARRAY[repeat('ab', 500000)]) AS t(n int, h text)},
	'1000000|' . $l->safe_psql('postgres', q{SELECT md5(repeat('ab', 500000))}),
	'a 1 MB parameter arrives whole');
query_ok($l, q{SELECT * FROM dbpool_query('p', 'SELECT length(''' || repeat('x', 300000) || ''')') AS t(n int)},
	'300000', 'a 300 kB statement text arrives whole');
query_ok($l, q{SELECT length(v), md5(v) = md5(repeat('yz', 2500000)) FROM dbpool_query('p', 'SELECT repeat(''yz'', 2500000)') AS t(v text)},
	'5000000|t', 'a 5 MB value comes back whole');

query_ok($l, q{SELECT name, min_size, max_size, acquire_timeout_ms, query_timeout_ms,
	idle_timeout_ms, max_lifetime_ms, reset_query IS NULL, owner::text = current_user
	FROM dbpool_pools},
	'p|1|10|5000|0|600000|3600000|t|t', 'dbpool_pools shows the defaults');

# --- restart of the local server ------------------------------------------------------
$l->restart;
query_ok($l, q{SELECT v FROM dbpool_query('p', 'SELECT v FROM kv WHERE id = 3') AS t(v text)},
	'three', 'after a restart of L the pool exists and works');
query_ok($l, q{SELECT count(*) FROM dbpool_pools WHERE name = 'p'}, '1',
	'after a restart of L dbpool_pools lists the pool');

# --- encodings ------------------------------------------------------------------------
# One connection only, so the connection that served one database serves the other next.
query_ok($l, "SELECT dbpool_create_pool('enc', $ci, min_size => 1, max_size => 1)", '',
	'single-connection pool created');
$l->safe_psql('postgres', q{CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
$l->safe_psql('latin', 'CREATE EXTENSION dbpool');

my $cafe_sql = q{SELECT v = 'caf' || chr(233), length(v), encode(convert_to(v, 'LATIN1'), 'hex')
	FROM dbpool_query('enc', 'SELECT v FROM kv WHERE id = 10') AS t(v text)};
query_ok($l, $cafe_sql, 't|4|636166e9', 'LATIN1 database reads café from a UTF8 server',
	db => 'latin');
query_ok($l, q{SELECT * FROM dbpool_query('enc', 'SELECT $1::text = ''caf'' || chr(233), length($1::text)',
	ARRAY['caf' || chr(233)]) AS t(same bool, len int)},
	't|4', 'LATIN1 parameter arrives on F as the same text', db => 'latin');
query_ok($l, q{SELECT * FROM dbpool_query('enc', 'SELECT count(*) FROM kv WHERE v = ''caf' || chr(233) || '''') AS t(n int)},
	'1', 'LATIN1 query text arrives on F as the same text', db => 'latin');
query_fails($l, q{SELECT v FROM dbpool_query('enc', 'SELECT v FROM kv WHERE id = 11') AS t(v text)},
	'22P05', qr/has no equivalent in encoding "LATIN1"/,
	'a character LATIN1 cannot hold is an error, not garbage', db => 'latin');
query_ok($l, q{SELECT v = 'caf' || chr(233), length(v), encode(convert_to(v, 'UTF8'), 'hex')
	FROM dbpool_query('enc', 'SELECT v FROM kv WHERE id = 10') AS t(v text)},
	't|4|636166c3a9', 'UTF8 database reads café right on the connection LATIN1 used');
query_ok($l, q{SELECT v = 'price ' || chr(8364) FROM dbpool_query('enc', 'SELECT v FROM kv WHERE id = 11') AS t(v text)},
	't', 'UTF8 database reads €');
query_ok($l, $cafe_sql, 't|4|636166e9', 'and LATIN1 again', db => 'latin');

# A call leaves no remote transaction open: on the one connection of 'enc', a BEGIN is
# followed by a CREATE TABLE that F's other sessions must see.
$r = run_sql($l, q{SELECT dbpool_exec('enc', 'BEGIN')});
note("BEGIN through the pool: ret=" . ($r->{ret} // "timeout") . " out=$r->{out} err=$r->{err}");
query_ok($l, q{SELECT dbpool_exec('enc', 'CREATE TABLE after_begin(x int)')}, 'CREATE TABLE',
	'a statement after BEGIN');
is($f->safe_psql('postgres', q{SELECT to_regclass('after_begin') IS NOT NULL}), 't',
	'it was committed: no call runs inside the transaction a previous call opened');
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'}, '0'),
	'no remote session stays idle in transaction');

# --- values are read the way F printed them, whatever F's or the caller's settings ------
$f->safe_psql('postgres', q{
	CREATE DATABASE styledb;
	ALTER DATABASE styledb SET DateStyle = 'SQL, DMY';
	ALTER DATABASE styledb SET IntervalStyle = 'sql_standard';
});
query_ok($l, 'SELECT dbpool_create_pool(' . quote_literal('styles') . ', '
	  . quote_literal(pool_conninfo($f) =~ s/dbname=postgres/dbname=styledb/r)
	  . ', min_size => 1, max_size => 1)', '', 'pool to a database with unusual styles');
my $styles_sql = q{SELECT d = DATE '2024-02-03', i = interval '-1 day -2 hours',
	ts = timestamp '2024-02-03 04:05:06.789', f = 0.1::float8 + 0.2::float8
	FROM dbpool_query('styles', $$SELECT DATE '2024-02-03', interval '-1 day -2 hours',
		timestamp '2024-02-03 04:05:06.789', 0.1::float8 + 0.2::float8$$)
	AS t(d date, i interval, ts timestamp, f float8)};
query_ok($l, $styles_sql, 't|t|t|t', "dates, intervals, floats survive F's DateStyle/IntervalStyle");
query_ok($l, "SET DateStyle = 'German, DMY'; SET IntervalStyle = 'sql_standard'; SET extra_float_digits = -3; $styles_sql",
	't|t|t|t', "and the caller's DateStyle/IntervalStyle/extra_float_digits");

# A call must not leave session state behind that changes what the next call reads.
query_ok($l, q{SELECT dbpool_exec('enc', 'SET DateStyle = ''SQL, DMY''')}, 'SET',
	'a caller changes DateStyle on the remote session');
query_ok($l, q{SELECT d FROM dbpool_query('enc', $$SELECT DATE '2024-02-03'$$) AS t(d date)},
	'2024-02-03', 'the next call still reads dates right');
query_ok($l, q{SELECT dbpool_exec('enc', 'SET IntervalStyle = ''sql_standard''')}, 'SET',
	'a caller changes IntervalStyle on the remote session');
query_ok($l, q{SELECT i = interval '-1 day -2 hours' FROM dbpool_query('enc', $$SELECT interval '-1 day -2 hours'$$) AS t(i interval)},
	't', 'the next call still reads intervals right');
query_fails($l, q{SELECT dbpool_exec('enc', 'SET client_encoding = ''LATIN1''')}, '0A000',
	qr/changed client_encoding/, 'a caller that changes client_encoding on the remote session fails');
query_ok($l, q{SELECT v = 'caf' || chr(233), length(v) FROM dbpool_query('enc', 'SELECT v FROM kv WHERE id = 10') AS t(v text)},
	't|4', 'the next call still reads text right');

# reset_query runs after each call.
query_ok($l, "SELECT dbpool_create_pool('rq', $ci, min_size => 1, max_size => 1, reset_query => 'RESET ALL')",
	'', 'pool with reset_query');
query_ok($l, q{SELECT dbpool_exec('rq', 'SET search_path = nowhere')}, 'SET', 'change search_path');
query_ok($l, q{SELECT p FROM dbpool_query('rq', 'SELECT current_setting(''search_path'')') AS t(p text)},
	'"$user", public', 'reset_query undid it before the next call');
query_ok($l, $cafe_sql =~ s/'enc'/'rq'/r, 't|4|636166e9', 'LATIN1 caller on a reset_query pool',
	db => 'latin');

# Administration belongs to dbpool.database only.
$r = run_sql($l, "SELECT dbpool_create_pool('elsewhere', $ci)", db => 'latin');
isnt($r->{ret}, 0, 'dbpool_create_pool outside dbpool.database fails');
query_ok($l, q{SELECT count(*) FROM dbpool_pools WHERE name = 'elsewhere'}, '0',
	'and creates nothing');

# --- drop -----------------------------------------------------------------------------
query_ok($l, q{SELECT dbpool_drop_pool('enc')}, '', 'drop a pool');
query_fails($l, q{SELECT * FROM dbpool_query('enc', 'SELECT 1') AS t(x int)},
	'42704', qr/enc/, 'a dropped pool is unknown to the next statement');
query_ok($l, q{SELECT string_agg(name, ',' ORDER BY name) FROM dbpool_pools}, 'p,rq,styles', 'enc is gone');

done_testing();
