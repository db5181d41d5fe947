-- postgres_fdw: foreign table kv_f on F's kv.
\set id random(1, 100000)
SELECT v FROM kv_f WHERE id = :id::int;
