-- direct: the point select run on F itself (pgbench connects to F).
\set id random(1, 100000)
SELECT v FROM kv WHERE id = :id::int;
