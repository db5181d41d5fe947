-- postgres_fdw: foreign table slow_f on F's view slow (SELECT pg_sleep(0.01)::text AS v).
SELECT v FROM slow_f;
