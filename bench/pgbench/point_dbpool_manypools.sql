-- dbpool_manypools: pool "mp001", one of MANYPOOLS pools (min_size = max_size = MANYPOOLS_SIZE)
-- to F, all of them open; the same statement as point_dbpool.sql on another pool.
\set id random(1, 100000)
SELECT v FROM dbpool_query('mp001', 'SELECT v FROM kv WHERE id = $1', ARRAY[:id::text]) AS t(v text);
