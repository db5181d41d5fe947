-- dblink_oneshot / dblink_via_pgbouncer: a new connection for every call.
SELECT v FROM dblink(:conninfo, 'SELECT pg_sleep(0.01)') AS t(v text);
