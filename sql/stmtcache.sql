-- The prepared-statement cache of each foreign connection (dbpool.statement_cache_size).
-- A pool of one connection makes every call land on the same foreign session, whose
-- pg_prepared_statements shows what dbpool prepared there.
SHOW dbpool.statement_cache_size;
SELECT dbpool_create_pool('one', (SELECT conninfo FROM fconn), min_size => 1, max_size => 1);

CREATE VIEW one_prepared AS
SELECT * FROM dbpool_query('one',
    'SELECT name, statement FROM pg_prepared_statements ORDER BY prepare_time, name')
    AS t(name text, statement text);

-- first use: unnamed, nothing prepared (queries without a params array never are)
SELECT * FROM dbpool_query('one', 'SELECT v FROM kv WHERE id = $1', ARRAY['1']) AS t(v text);
SELECT * FROM one_prepared;
-- second use: prepared, then bound by name on every later use
SELECT * FROM dbpool_query('one', 'SELECT v FROM kv WHERE id = $1', ARRAY['2']) AS t(v text);
SELECT * FROM dbpool_query('one', 'SELECT v FROM kv WHERE id = $1', ARRAY['3']) AS t(v text);
SELECT * FROM dbpool_query('one', 'SELECT v FROM kv WHERE id = $1', ARRAY[NULL]) AS t(v text);
SELECT * FROM one_prepared;
-- the same text with another number of parameters is another statement
SELECT * FROM dbpool_query('one', 'SELECT $1::int + coalesce($2::int, 0)', ARRAY['1', NULL]) AS t(s int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + coalesce($2::int, 0)', ARRAY['1', '2']) AS t(s int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + coalesce($2::int, 0)', ARRAY['5', '2']) AS t(s int);
SELECT err($$SELECT * FROM dbpool_query('one', 'SELECT $1::int + coalesce($2::int, 0)', ARRAY['1']) AS t(s int)$$);
SELECT name, statement FROM one_prepared WHERE statement LIKE '%coalesce%';

-- a caller's DISCARD ALL drops them on the server: the next call still answers (it runs
-- again unnamed), and the one after prepares the text anew
SELECT dbpool_exec('one', 'DISCARD ALL');
SELECT * FROM dbpool_query('one', 'SELECT v FROM kv WHERE id = $1', ARRAY['4']) AS t(v text);
SELECT * FROM dbpool_query('one', 'SELECT v FROM kv WHERE id = $1', ARRAY['5']) AS t(v text);
SELECT count(*) FROM one_prepared WHERE statement = 'SELECT v FROM kv WHERE id = $1';

-- a changed result type (ALTER TABLE under SELECT *) is seen at once, not as an error
SELECT dbpool_exec('one', 'CREATE TABLE grows (a int)');
SELECT dbpool_exec('one', 'INSERT INTO grows VALUES (1)');
SELECT * FROM dbpool_query('one', 'SELECT * FROM grows WHERE a = $1', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT * FROM grows WHERE a = $1', ARRAY['1']) AS t(a int);
SELECT dbpool_exec('one', 'ALTER TABLE grows ADD COLUMN b text DEFAULT ''new''');
SELECT * FROM dbpool_query('one', 'SELECT * FROM grows WHERE a = $1', ARRAY['1']) AS t(a int, b text);
SELECT * FROM dbpool_query('one', 'SELECT * FROM grows WHERE a = $1', ARRAY['1']) AS t(a int, b text);
SELECT err($$SELECT * FROM dbpool_query('one', 'SELECT * FROM grows WHERE a = $1', ARRAY['1']) AS t(a int)$$);
-- and a dropped and re-created table is planned afresh
SELECT dbpool_exec('one', 'DROP TABLE grows');
SELECT err($$SELECT * FROM dbpool_query('one', 'SELECT * FROM grows WHERE a = $1', ARRAY['1']) AS t(a int, b text)$$);
SELECT dbpool_exec('one', 'CREATE TABLE grows (a int, b text); INSERT INTO grows VALUES (1, ''again'')');
SELECT * FROM dbpool_query('one', 'SELECT * FROM grows WHERE a = $1', ARRAY['1']) AS t(a int, b text);

-- a text whose PREPARE fails gives its own error every time, and the pool goes on
SELECT err($$SELECT * FROM dbpool_query('one', 'SELEC $1', ARRAY['1']) AS t(a int)$$);
SELECT err($$SELECT * FROM dbpool_query('one', 'SELEC $1', ARRAY['1']) AS t(a int)$$);
SELECT err($$SELECT * FROM dbpool_query('one', 'SELEC $1', ARRAY['1']) AS t(a int)$$);
SELECT err($$SELECT * FROM dbpool_query('one', 'SELECT 1/$1::int', ARRAY['0']) AS t(a int)$$);
SELECT err($$SELECT * FROM dbpool_query('one', 'SELECT 1/$1::int', ARRAY['0']) AS t(a int)$$);
SELECT * FROM dbpool_query('one', 'SELECT 1/$1::int', ARRAY['1']) AS t(a int);

-- writes run once, prepared or not
SELECT dbpool_exec('one', 'CREATE TABLE hits (n int)');
SELECT dbpool_exec('one', 'INSERT INTO hits VALUES ($1::int)', ARRAY[g::text]) FROM generate_series(1, 5) g;
SELECT * FROM dbpool_query('one', 'SELECT count(*), sum(n) FROM hits') AS t(c bigint, s bigint);
-- also when the statement was lost and the request runs again
SELECT dbpool_exec('one', 'DISCARD ALL');
SELECT dbpool_exec('one', 'INSERT INTO hits VALUES ($1::int)', ARRAY['100']);
SELECT * FROM dbpool_query('one', 'SELECT count(*), sum(n) FROM hits') AS t(c bigint, s bigint);

-- the cache is bounded: with room for 2 texts, the least recently used is DEALLOCATEd
-- (a lowered size applies at once to what each connection has cached)
\set reload 'SELECT pg_reload_conf(), pg_sleep(0.3)'
ALTER SYSTEM SET dbpool.statement_cache_size = 2;
:reload;
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 0', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 0', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 1', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 1', ARRAY['1']) AS t(a int);
SELECT statement FROM one_prepared;
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 2', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 2', ARRAY['1']) AS t(a int);
SELECT statement FROM one_prepared;
-- 0 turns it off and deallocates what was prepared
ALTER SYSTEM SET dbpool.statement_cache_size = 0;
:reload;
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 3', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 3', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 3', ARRAY['1']) AS t(a int);
SELECT count(*) FROM one_prepared;
ALTER SYSTEM RESET dbpool.statement_cache_size;
:reload;

-- a reset_query that may drop statements (it names DISCARD or DEALLOCATE) turns the cache
-- off for its pool; DISCARD TEMP keeps them, so a text prepared anyway would show here
SELECT dbpool_alter_pool('one', '{"reset_query": "DISCARD TEMP"}');
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 4', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 4', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 4', ARRAY['1']) AS t(a int);
SELECT count(*) FROM one_prepared;
-- without it, the same text is prepared
SELECT dbpool_alter_pool('one', '{"reset_query": null}');
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 4', ARRAY['1']) AS t(a int);
SELECT * FROM dbpool_query('one', 'SELECT $1::int + 4', ARRAY['1']) AS t(a int);
SELECT count(*) FROM one_prepared;

DROP VIEW one_prepared;
SELECT dbpool_drop_pool('one');
