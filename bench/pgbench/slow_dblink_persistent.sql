-- dblink_persistent / dblink_persistent_via_pgbouncer: see point_dblink_persistent.sql.
\if :connected = 0
SELECT dblink_connect(:connname, :conninfo);
\set connected 1
\endif
SELECT v FROM dblink(:connname, 'SELECT pg_sleep(0.01)') AS t(v text);
