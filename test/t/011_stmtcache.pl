# The prepared-statement cache (dbpool.statement_cache_size) on a second server: the same
# answers as unnamed statements after DDL, lowering the size, a caller's DEALLOCATE, failed
# DEALLOCATE batches, query_timeout_ms and abandoned clients during the PREPARE step, and
# concurrent callers of one connection.
# (Parameter types inferred at PREPARE stay fixed, as for any prepared statement; that is
# documented in reference.md, not tested here.)
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25601);
my $l = local_node('L', 25600);
my $ci = pool_conninfo($f);

$l->safe_psql('postgres', sprintf(q{
	SELECT dbpool_create_pool('one', %s, min_size => 1, max_size => 1);
	SELECT dbpool_create_pool('qt', %s, min_size => 1, max_size => 1, query_timeout_ms => 500);
	SELECT dbpool_create_pool('ab', %s, min_size => 1, max_size => 1);
}, (quote_literal($ci)) x 3));
$f->safe_psql('postgres', q{
	CREATE TABLE tt (a int, b text); INSERT INTO tt VALUES (7, 'seven');
	CREATE TABLE lk (id int, v text); INSERT INTO lk VALUES (1, 'one');
});

sub q1 { my ($pool, $sql, @p) = @_;
	my $arr = 'ARRAY[' . join(',', map { quote_literal($_) } @p) . ']::text[]';
	return "SELECT * FROM dbpool_query('$pool', " . quote_literal($sql) . ", $arr) AS t(x text)"; }
sub x1 { my ($pool, $sql, @p) = @_;
	my $arr = 'ARRAY[' . join(',', map { quote_literal($_) } @p) . ']::text[]';
	return "SELECT dbpool_exec('$pool', " . quote_literal($sql) . ", $arr)"; }
sub prepared { my ($pool, $like) = @_;
	return "SELECT count(*) FROM dbpool_query('$pool', "
	  . quote_literal("SELECT statement FROM pg_prepared_statements WHERE statement LIKE "
		  . quote_literal($like)) . ") AS t(s text)"; }

# --- 1. parameter types are frozen at PREPARE -------------------------------------------
my $sel = 'SELECT b FROM tt WHERE a = $1';
query_ok($l, q1('one', $sel, '7'), 'seven', 'first use (unnamed)');
query_ok($l, q1('one', $sel, '7'), 'seven', 'second use (prepared: $1 is int)');
$f->safe_psql('postgres', 'ALTER TABLE tt ALTER COLUMN a TYPE text');
# without the cache, $1 is now inferred as text and the query answers 'seven'
query_ok($l, q1('ab', $sel, '7'), 'seven', 'control: a connection without the entry answers');
query_ok($l, q1('one', $sel, '7'), 'seven', 'after ALTER COLUMN TYPE, the cached text answers as unnamed');

# --- 2. lowering dbpool.statement_cache_size ---------------------------------------------
my @texts = map { "SELECT \$1::int + $_ AS shrink" } 1 .. 3;
for my $t (@texts) { $l->safe_psql('postgres', q1('one', $t, '1')) for 1 .. 2; }
query_ok($l, prepared('one', '%AS shrink'), '3', 'three texts prepared');
$l->safe_psql('postgres', 'ALTER SYSTEM SET dbpool.statement_cache_size = 1; SELECT pg_reload_conf()');
sleep 1;
# the application keeps using its hot texts (all cache hits)
for my $t (@texts) { $l->safe_psql('postgres', q1('one', $t, '1')); }
query_ok($l, 'SELECT (' . prepared('one', '%AS shrink') . ') <= 1', 't', 'size lowered to 1: at most 1 stays prepared');
$l->safe_psql('postgres', 'ALTER SYSTEM SET dbpool.statement_cache_size = 0; SELECT pg_reload_conf()');
sleep 1;
for my $t (@texts) { $l->safe_psql('postgres', q1('one', $t, '1')); }
query_ok($l, prepared('one', '%AS shrink'), '0', 'size 0: nothing stays prepared');
$l->safe_psql('postgres', 'ALTER SYSTEM RESET dbpool.statement_cache_size; SELECT pg_reload_conf()');
sleep 1;

# --- 3. a caller's DEALLOCATE of one statement ------------------------------------------
my @lt = map { "SELECT \$1::int + $_ AS leak" } 1 .. 3;
for my $t (@lt) { $l->safe_psql('postgres', q1('one', $t, '1')) for 1 .. 2; }
my $victim = $l->safe_psql('postgres', q{SELECT s FROM dbpool_query('one',
	'SELECT name FROM pg_prepared_statements WHERE statement LIKE ''%AS leak'' ORDER BY name LIMIT 1') AS t(s text)});
$l->safe_psql('postgres', "SELECT dbpool_exec('one', 'DEALLOCATE $victim')");
for my $t (@lt) { $l->safe_psql('postgres', q1('one', $t, '1')) for 1 .. 3; }
query_ok($l, prepared('one', '%AS leak'), '3', 'after one DEALLOCATE: still one statement per text');

# --- 3b. one failed DEALLOCATE in a batch loses the others -------------------------------
my @bt = map { "SELECT \$1::int + $_ AS batch" } 1 .. 3;
for my $t (@bt) { $l->safe_psql('postgres', q1('one', $t, '1')) for 1 .. 2; }
# the least recently used one (the first text) is gone on the server already
my $oldest = $l->safe_psql('postgres', q{SELECT s FROM dbpool_query('one',
	'SELECT name FROM pg_prepared_statements WHERE statement LIKE ''%AS batch'' ORDER BY prepare_time LIMIT 1') AS t(s text)});
$l->safe_psql('postgres', "SELECT dbpool_exec('one', 'DEALLOCATE $oldest')");
$l->safe_psql('postgres', 'ALTER SYSTEM SET dbpool.statement_cache_size = 1; SELECT pg_reload_conf()');
sleep 1;
# a miss evicts every entry (the batch "DEALLOCATE a;DEALLOCATE b;..." stops at the first error)
$l->safe_psql('postgres', q1('one', 'SELECT $1::int AS fresh', '1'));
query_ok($l, prepared('one', '%AS batch'), '0', 'all evicted statements are DEALLOCATEd');
$l->safe_psql('postgres', 'ALTER SYSTEM RESET dbpool.statement_cache_size; SELECT pg_reload_conf()');
sleep 1;

# --- 4. query_timeout_ms while the PREPARE waits for a lock -------------------------------
my $lsql = 'SELECT v FROM lk WHERE id = $1';
query_ok($l, q1('qt', $lsql, '1'), 'one', 'qt: first use');
my $lock = start_bg($f, 'BEGIN; LOCK TABLE lk; SELECT pg_sleep(3); COMMIT;');
ok(poll_until($f, q{SELECT count(*) FROM pg_locks WHERE relation = 'lk'::regclass AND mode = 'AccessExclusiveLock' AND granted}, '1'), 'lock held');
query_fails($l, q1('qt', $lsql, '1'), '57014', qr/query_timeout_ms/, 'PREPARE step hits query_timeout_ms', timeout => 30);
finish_bg($lock);
query_ok($l, q1('qt', $lsql, '1'), 'one', 'qt works after the timed-out PREPARE', timeout => 30);
query_ok($l, q1('qt', $lsql, '1'), 'one', 'and again', timeout => 30);
query_ok($l, prepared('qt', 'SELECT v FROM lk%'), '1', 'qt: the text got prepared afterwards');

# --- 5. the client abandons during the PREPARE --------------------------------------------
query_ok($l, q1('ab', $lsql, '1'), 'one', 'ab: first use');
$lock = start_bg($f, 'BEGIN; LOCK TABLE lk; SELECT pg_sleep(3); COMMIT;');
ok(poll_until($f, q{SELECT count(*) FROM pg_locks WHERE relation = 'lk'::regclass AND mode = 'AccessExclusiveLock' AND granted}, '1'), 'lock held (2)');
query_fails($l, "SET statement_timeout = '500ms'; " . q1('ab', $lsql, '1'), '57014', undef,
	'client statement_timeout during the PREPARE', timeout => 30);
finish_bg($lock);
query_ok($l, q1('ab', $lsql, '1'), 'one', 'ab works after the abandoned PREPARE', timeout => 30);
query_ok($l, q1('ab', $lsql, '2'), '', 'ab: next answer is its own', timeout => 30);

# --- 6. many clients on one connection: each gets its own answer ------------------------
$l->safe_psql('postgres', q{SELECT dbpool_create_pool('c1', } . quote_literal($ci) . q{, min_size => 1, max_size => 1)});
my $loop = q{DO $$ DECLARE r int; BEGIN FOR i IN 1..150 LOOP
	SELECT x INTO r FROM dbpool_query('c1', CASE WHEN i % 3 = 0 THEN 'SELECT $1::int * 2' ELSE 'SELECT $1::int * 2 + 0' END, ARRAY[(i + BASE)::text]) AS t(x int);
	IF r IS DISTINCT FROM 2 * (i + BASE) THEN RAISE EXCEPTION 'wrong answer % for %', r, i + BASE; END IF;
	END LOOP; END $$};
my @bg = map { (my $s = $loop) =~ s/BASE/$_ * 1000/ge; start_bg($l, $s) } 1 .. 4;
for my $b (@bg) { my ($ret, $out, $err) = finish_bg($b); is($ret, 0, 'concurrent client got its own answers') or diag($err); }

ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/), 'L never crashed');
done_testing();
