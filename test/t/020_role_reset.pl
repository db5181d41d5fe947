# One local role's session state never reaches another local role (issue 11, item 4).
#
# Pool p has one connection, shared by the local roles alice and bob.  Whatever session state
# alice leaves on it (a forged prepared statement under dbpool's own name, search_path with a
# temporary view in front of a table, standard_conforming_strings, extra_float_digits,
# statement_timeout) is gone when bob's request runs; what alice leaves for herself stays (as
# documented).  F logs every statement, so the test also counts the role resets: a workload of
# one role pays none, and with two connections alternating roles settle on their own
# connections instead of resetting at every call.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25701, "log_statement = 'all'\n");
my $l = local_node('L', 25700);
my $ci = quote_literal(pool_conninfo($f));

$f->safe_psql('postgres', q{
	CREATE TABLE kv(id int PRIMARY KEY, v text);
	INSERT INTO kv VALUES (1, 'real');
});
$l->safe_psql('postgres', qq{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	GRANT EXECUTE ON FUNCTION dbpool_query, dbpool_exec TO alice, bob;
	SELECT dbpool_create_pool('p', $ci, max_size => 1);
	SELECT dbpool_grant_usage('p', 'alice');
	SELECT dbpool_grant_usage('p', 'bob');
});

# How many role resets F has run so far (each runs RESET ALL exactly once).
sub resets
{
	my $log = slurp_file($f->logfile);
	my $n = () = $log =~ /statement: CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL;/g;
	return $n;
}

my $bob_q = q{SELECT x FROM dbpool_query('p', $$SELECT 'real-' || $1$$, ARRAY['41']) AS t(x text)};

# --- a forged prepared statement under dbpool's own name ---------------------------------------
query_ok($l, $bob_q, 'real-41', 'bob: first use', user => 'bob');
query_ok($l, $bob_q, 'real-41', 'bob: second use (now prepared)', user => 'bob');
my $name = query_ok($l, q{SELECT s FROM dbpool_query('p',
	$$SELECT name FROM pg_prepared_statements WHERE statement LIKE '%real-%'$$) AS t(s text)},
	'dbpool_s1', 'bob\'s statement is prepared as dbpool_s1', user => 'bob');

my $before = resets();
is($before, 0, 'one role so far: no role reset');

query_ok($l, qq{SELECT dbpool_exec('p', \$\$DEALLOCATE ALL; PREPARE $name(text) AS SELECT 'FORGED-' || \$1\$\$)},
	'PREPARE', 'alice re-prepares dbpool\'s statement name', user => 'alice');
is(resets(), 1, 'alice\'s first call on bob\'s connection reset it once');
query_ok($l, qq{SELECT x FROM dbpool_query('p', \$\$EXECUTE $name('x')\$\$) AS t(x text)},
	'FORGED-x', 'alice still sees what she left (same role: state stays)', user => 'alice');
is(resets(), 1, 'alice again: no reset');
query_ok($l, $bob_q, 'real-41', 'bob gets his own statement, not alice\'s forgery', user => 'bob');
is(resets(), 2, 'the switch back to bob reset the connection');
query_ok($l, $bob_q, 'real-41', 'bob again (prepared again on the reset connection)', user => 'bob');
query_ok($l, $bob_q, 'real-41', 'bob once more', user => 'bob');

# --- search_path with a temporary view in front of a table ------------------------------------
query_ok($l, q{SELECT dbpool_exec('p', $$SET search_path = pg_temp, public;
	CREATE TEMP VIEW kv AS SELECT 1 AS id, 'forged'::text AS v$$)},
	'CREATE VIEW', 'alice shadows kv with a temporary view', user => 'alice');
query_ok($l, q{SELECT v FROM dbpool_query('p', 'SELECT v FROM kv') AS t(v text)},
	'forged', 'alice sees her own view', user => 'alice');
query_ok($l, q{SELECT v FROM dbpool_query('p', 'SELECT v FROM kv') AS t(v text)},
	'real', 'bob reads the real table', user => 'bob');

# --- settings that change the meaning of SQL and results ---------------------------------------
query_ok($l, q{SELECT dbpool_exec('p', $$SET standard_conforming_strings = off;
	SET extra_float_digits = -15; SET statement_timeout = '1ms'$$)},
	'SET', 'alice changes literals, float output and the statement timeout', user => 'alice');
query_ok($l, q{SELECT a, b FROM dbpool_query('p',
	$$SELECT 'a\nb' AS a, (0.1::float8 + 0.2::float8)::text AS b, pg_sleep(0.05)$$)
	AS t(a text, b text, c text)},
	'a\nb|0.30000000000000004', 'bob: literal, float and no timeout as the foreign defaults say',
	user => 'bob');

# --- roles keep to their own connections when there are enough ---------------------------------
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('p', '{"max_size": 2, "min_size": 2}')});
ok(poll_until($l, q{SELECT count(*) FROM dbpool_connections WHERE pool = 'p' AND state = 'idle'}, '2'),
	'min_size 2: two idle connections');
# A free connection of the caller's role is preferred, then one that served nobody yet.
for my $i (1 .. 2)
{
	query_ok($l, $bob_q, 'real-41', "alternating, round $i: bob", user => 'bob');
	query_ok($l, q{SELECT count(*) FROM dbpool_query('p', 'SELECT 1') AS t(x int)}, '1',
		"alternating, round $i: alice", user => 'alice');
}
my $settled = resets();
for my $i (1 .. 5)
{
	query_ok($l, $bob_q, 'real-41', "settled, round $i: bob", user => 'bob');
	query_ok($l, q{SELECT count(*) FROM dbpool_query('p', 'SELECT 1') AS t(x int)}, '1',
		"settled, round $i: alice", user => 'alice');
}
is(resets(), $settled, 'alternating roles with two connections: no more resets');
query_ok($l, q{SELECT count(*) FROM dbpool_connections WHERE pool = 'p'}, '2',
	'the pool has two connections');

# --- the pool keeps working for both -----------------------------------------------------------
query_ok($l, q{SELECT v FROM dbpool_query('p', 'SELECT v FROM kv') AS t(v text)}, 'real',
	'alice: the temporary view is gone after the resets', user => 'alice');

done_testing();
