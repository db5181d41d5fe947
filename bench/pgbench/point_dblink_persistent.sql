-- dblink_persistent / dblink_persistent_via_pgbouncer: one named dblink connection per
-- pgbench session, opened by the session's first transaction and reused afterwards.
-- run.sh defines :connname, :conninfo (F or PgBouncer) and :connected (0) with -D;
-- pgbench variables are per client and persist across its transactions.
\set id random(1, 100000)
\if :connected = 0
SELECT dblink_connect(:connname, :conninfo);
\set connected 1
\endif
SELECT v FROM dblink(:connname, format('SELECT v FROM kv WHERE id = %s', :id::int)) AS t(v text);
