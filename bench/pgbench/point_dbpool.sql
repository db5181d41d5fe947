-- dbpool: pool "bench" (min_size = max_size = 8) to F.
\set id random(1, 100000)
SELECT v FROM dbpool_query('bench', 'SELECT v FROM kv WHERE id = $1', ARRAY[:id::text]) AS t(v text);
