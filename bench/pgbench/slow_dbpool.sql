-- dbpool: a 10 ms query through pool "bench".
SELECT v FROM dbpool_query('bench', 'SELECT pg_sleep(0.01)') AS t(v text);
