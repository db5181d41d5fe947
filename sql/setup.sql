-- Setup: settings, the foreign database, a pool to it, and a helper that
-- shows an error's SQLSTATE and message as a value.
SHOW dbpool.database;
SHOW dbpool.max_pools;
SHOW dbpool.max_connections;
SHOW dbpool.queue_size;

SELECT extname, extversion FROM pg_extension WHERE extname = 'dbpool';

-- the error helper: 'ok' or 'SQLSTATE: message (detail)'
CREATE FUNCTION err(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d text;
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || SQLERRM || CASE WHEN d <> '' THEN ' (' || d || ')' ELSE '' END;
END $$;

CREATE DATABASE dbpool_regress_foreign ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;

-- the conninfo of the foreign database, kept for the other tests
CREATE TABLE fconn AS
SELECT format('host=%s port=%s dbname=dbpool_regress_foreign',
              current_setting('unix_socket_directories'), current_setting('port')) AS conninfo;

SELECT dbpool_create_pool('regress', (SELECT conninfo FROM fconn), min_size => 1, max_size => 4);
-- usable by the very next statement
SELECT dbpool_exec('regress', 'CREATE TABLE kv (id int PRIMARY KEY, v text)');
SELECT dbpool_exec('regress', 'INSERT INTO kv SELECT g, ''v'' || g FROM generate_series(1, 100) g');
SELECT name, min_size, max_size, acquire_timeout_ms, query_timeout_ms, idle_timeout_ms,
       max_lifetime_ms, reset_query, owner, state
  FROM dbpool_pools;
