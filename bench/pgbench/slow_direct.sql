-- direct: a 10 ms query run on F itself.
SELECT pg_sleep(0.01);
