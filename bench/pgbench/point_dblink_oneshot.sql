-- dblink_oneshot / dblink_via_pgbouncer: a new connection for every call.
-- run.sh defines :conninfo (F or PgBouncer) with -D.
\set id random(1, 100000)
SELECT v FROM dblink(:conninfo, format('SELECT v FROM kv WHERE id = %s', :id::int)) AS t(v text);
