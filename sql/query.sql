-- dbpool_query and dbpool_exec on the 'regress' pool (setup.sql).

-- parameters travel separately, NULLs stay NULL
SELECT * FROM dbpool_query('regress', 'SELECT id, v FROM kv WHERE id = $1', ARRAY['42']) AS t(id int, v text);
SELECT * FROM dbpool_query('regress', 'SELECT $1::text AS a, $2::int AS b', ARRAY[NULL, '7']) AS t(a text, b int);
SELECT * FROM dbpool_query('regress', 'SELECT $1', ARRAY['x''); DROP TABLE kv; --']) AS t(a text);
SELECT count(*) FROM dbpool_query('regress', 'SELECT id FROM kv') AS t(id int);
SELECT * FROM dbpool_query('regress', 'SELECT id FROM kv WHERE false') AS t(id int);

-- values go through the input functions of the declared types
SELECT * FROM dbpool_query('regress', $$
    SELECT 1::int, 12345678901::bigint, 3.14159::numeric, 0.1::float8, true, NULL::text,
           'ü∑é'::text, '2024-02-29'::date, '2024-02-29 13:14:15+00'::timestamptz,
           '-1 day +02:03:04'::interval, '{"a": [1, 2]}'::jsonb, '\x00ff'::bytea,
           ARRAY[1, 2, NULL]::int[], '(1,2)'::point
$$) AS t(i int, b bigint, n numeric, f float8, bo bool, nu text, u text, d date,
         ts timestamptz, iv interval, j jsonb, by bytea, a int[], p point);

-- whatever this session's DateStyle and IntervalStyle, values keep their meaning
SET datestyle = 'SQL, DMY';
SET intervalstyle = 'sql_standard';
SET timezone = 'UTC';
SELECT d, extract(month FROM d) AS month, i, extract(day FROM i) AS days, extract(hour FROM i) AS hours, ts
  FROM dbpool_query('regress', $$SELECT '2024-02-01'::date, '-1 day +02:00:00'::interval, '2024-02-01 10:00:00+00'::timestamptz$$)
  AS t(d date, i interval, ts timestamptz);
SHOW datestyle;
SHOW intervalstyle;
RESET datestyle;
RESET intervalstyle;
RESET timezone;

-- the column definition list must match
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 1, 2') AS t(x int)$$);
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT ''abc''') AS t(x int)$$);
SELECT err($$SELECT dbpool_query('regress', 'SELECT 1')$$);

-- remote errors keep SQLSTATE, message, detail, hint and context
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 1/0') AS t(x int)$$);
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT * FROM missing_table') AS t(x int)$$);
\set SHOW_CONTEXT always
SELECT dbpool_exec('regress', $q$DO $d$ BEGIN RAISE EXCEPTION 'boom' USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = 'P0042'; END $d$$q$);
\set SHOW_CONTEXT errors

-- bad input
SELECT err($$SELECT * FROM dbpool_query(NULL, 'SELECT 1') AS t(x int)$$);
SELECT err($$SELECT * FROM dbpool_query('regress', NULL) AS t(x int)$$);
SELECT err($$SELECT * FROM dbpool_query('nope', 'SELECT 1') AS t(x int)$$);
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT $1', ARRAY[ARRAY['a']]) AS t(x text)$$);
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 1; SELECT 2', ARRAY[]::text[]) AS t(x int)$$);
SELECT err($$SELECT dbpool_exec('regress', 'COPY kv TO STDOUT')$$);
SELECT err($$SELECT dbpool_exec('regress', 'COPY kv FROM STDIN')$$);

-- after all those errors the pool still serves
SELECT * FROM dbpool_query('regress', 'SELECT count(*) FROM kv') AS t(n bigint);

-- command status
SELECT dbpool_exec('regress', 'CREATE TABLE t1 (a int)');
SELECT dbpool_exec('regress', 'INSERT INTO t1 VALUES ($1), ($2), (3)', ARRAY['1', '2']);
SELECT dbpool_exec('regress', 'UPDATE t1 SET a = a + 10 WHERE a = 1');
SELECT dbpool_exec('regress', 'DELETE FROM t1 WHERE a > 2');
SELECT dbpool_exec('regress', 'SELECT 1');
SELECT dbpool_exec('regress', '');

-- several statements in one call run on one connection (simple protocol)
SELECT * FROM dbpool_query('regress', 'BEGIN; INSERT INTO t1 VALUES (100); SELECT count(*) FROM t1; COMMIT')
  AS t(n bigint);
SELECT * FROM dbpool_query('regress', 'SELECT 1; SELECT 2') AS t(x int);
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 1; SELECT 1, 2') AS t(x int)$$);

-- a call that leaves a transaction open is rolled back and reported
SELECT err($$SELECT dbpool_exec('regress', 'BEGIN; INSERT INTO t1 VALUES (200)')$$);
SELECT * FROM dbpool_query('regress', 'SELECT count(*) FROM t1 WHERE a = 200') AS t(n bigint);
SELECT * FROM dbpool_query('regress', 'SELECT pg_catalog.txid_current_if_assigned() IS NULL') AS t(clean bool);
-- a failed transaction block too
SELECT err($$SELECT dbpool_exec('regress', 'BEGIN; SELECT 1/0; COMMIT')$$);
SELECT * FROM dbpool_query('regress', 'SELECT 1') AS t(x int);

-- remote work commits independently of the local transaction
BEGIN;
SELECT dbpool_exec('regress', 'INSERT INTO t1 VALUES (300)');
ROLLBACK;
SELECT * FROM dbpool_query('regress', 'SELECT count(*) FROM t1 WHERE a = 300') AS t(n bigint);

-- remote sessions: the foreign database's own settings (ISO output), application_name dbpool
SELECT * FROM dbpool_query('regress', $$SELECT current_setting('datestyle'), current_setting('intervalstyle'),
    current_setting('extra_float_digits'), current_setting('client_encoding'), current_setting('application_name')$$)
  AS t(datestyle text, intervalstyle text, extra_float_digits text, client_encoding text, application_name text);

-- reset_query runs before a connection is reused
SELECT dbpool_create_pool('reset', (SELECT conninfo FROM fconn), min_size => 0, max_size => 1,
                          reset_query => 'RESET ALL');
SELECT dbpool_exec('reset', 'SET work_mem = ''7MB''');
SELECT * FROM dbpool_query('reset', 'SHOW work_mem') AS t(w text);
SELECT dbpool_create_pool('noreset', (SELECT conninfo FROM fconn), min_size => 0, max_size => 1);
SELECT dbpool_exec('noreset', 'SET work_mem = ''7MB''');
SELECT * FROM dbpool_query('noreset', 'SHOW work_mem') AS t(w text);

-- query_timeout_ms cancels the remote query; the connection comes back clean
-- (57014 is not caught by WHEN OTHERS: these run directly)
\set SHOW_CONTEXT never
SELECT dbpool_alter_pool('noreset', '{"query_timeout_ms": 200}');
SELECT dbpool_exec('noreset', 'SELECT pg_sleep(30)');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT * FROM dbpool_query('noreset', 'SELECT 42') AS t(x int);

-- statement_timeout cancels a waiting client and its remote query
SELECT dbpool_alter_pool('noreset', '{"query_timeout_ms": 0}');
SET statement_timeout = '300ms';
SELECT dbpool_exec('noreset', 'SELECT pg_sleep(30)');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
RESET statement_timeout;
\set SHOW_CONTEXT errors
SELECT * FROM dbpool_query('noreset', 'SELECT 43') AS t(x int);
SELECT * FROM dbpool_query('regress', $$SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'$$)
  AS t(n bigint);

-- a caller that changes how values print does not poison the connection for the next one
SELECT dbpool_exec('noreset', 'SET datestyle = ''SQL, DMY''; SET intervalstyle = sql_standard');
-- changing client_encoding fails the call (its results would not be UTF8); it is set back too
SELECT dbpool_exec('noreset', 'SET client_encoding = LATIN1');
SELECT d, extract(month FROM d) AS month, extract(day FROM i) AS days, u
  FROM dbpool_query('noreset', $$SELECT '2024-02-03'::date, '-1 day +02:00:00'::interval, 'é'::text$$)
  AS t(d date, i interval, u text);

SELECT dbpool_drop_pool('reset');
SELECT dbpool_drop_pool('noreset');

-- a connection that must retire the moment it opens (max_lifetime_ms = 1)
SELECT dbpool_create_pool('shortlived', (SELECT conninfo FROM fconn), min_size => 0, max_lifetime_ms => 1);
SELECT * FROM dbpool_query('shortlived', 'SELECT 1') AS t(x int);
SELECT * FROM dbpool_query('shortlived', 'SELECT 2') AS t(x int);
SELECT dbpool_drop_pool('shortlived');

-- several hosts: libpq replaces the socket after the first one fails
SELECT dbpool_create_pool('multihost',
    format('host=/nonexistent_dbpool_dir,%s port=%s dbname=dbpool_regress_foreign',
           current_setting('unix_socket_directories'), current_setting('port')), min_size => 0);
SELECT * FROM dbpool_query('multihost', 'SELECT 3') AS t(x int);
SELECT dbpool_drop_pool('multihost');

-- a dbpool call made while another one's result is being read is refused
CREATE FUNCTION nested_check(int) RETURNS bool LANGUAGE sql
    AS $$ SELECT x > 0 FROM dbpool_query('regress', 'SELECT 1') AS t(x int) $$;
CREATE DOMAIN nested_int AS int CHECK (nested_check(VALUE));
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 5') AS t(x nested_int)$$);
SELECT * FROM dbpool_query('regress', 'SELECT 6') AS t(x int);
DROP DOMAIN nested_int;
DROP FUNCTION nested_check(int);
