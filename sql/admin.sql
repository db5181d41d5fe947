-- Pool administration: validation, live changes, drop, transactions.

-- names
SELECT err($$SELECT dbpool_create_pool('', 'dbname=x')$$);
SELECT err($$SELECT dbpool_create_pool('a b', 'dbname=x')$$);
SELECT err($$SELECT dbpool_create_pool(repeat('n', 64), 'dbname=x')$$);
SELECT err($$SELECT dbpool_create_pool(NULL, 'dbname=x')$$);
SELECT err($$SELECT dbpool_create_pool('x', NULL)$$);
-- conninfo is parsed by libpq
SELECT err($$SELECT dbpool_create_pool('x', 'nonsense')$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x bogus=1 password=s3cret')$$);
SELECT err($$SELECT dbpool_create_pool('x', 'postgresql://u:s3cret@[::1')$$);
-- sizes and timeouts
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', min_size => 5, max_size => 2)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', max_size => 0)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', max_size => 21)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', min_size => -1)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', acquire_timeout_ms => -1)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', query_timeout_ms => -5)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', idle_timeout_ms => NULL)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', reset_query => repeat('x', 2000))$$);
-- health settings: ratios between 0 and 1, a health query that is not empty
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', health_max_utilization => 1.5)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', health_max_error_rate => -0.1)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', health_max_error_rate => 'NaN')$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', health_max_utilization => NULL)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', health_query => '')$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', health_timeout_ms => 0)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', leak_threshold_ms => -1)$$);
-- autoscaling bounds: min_size <= max_size_floor <= max_size <= max_size_limit
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', max_size => 8, max_size_limit => 5)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', max_size => 8, max_size_floor => 9)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', min_size => 3, max_size_floor => 2)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', autoscale => NULL)$$);
-- duplicates
SELECT err($$SELECT dbpool_create_pool('regress', 'dbname=x')$$);
-- none of that left a pool behind
SELECT name FROM dbpool_pools ORDER BY name;

-- the password never shows
SELECT dbpool_create_pool('masked', 'host=127.0.0.1 port=1 user=u password=s3cret dbname=x',
                          min_size => 0, max_size => 1, reset_query => 'DISCARD ALL');
SELECT name, conninfo, reset_query, state FROM dbpool_pools WHERE name = 'masked';
SELECT count(*) AS password_visible FROM dbpool_pools WHERE conninfo LIKE '%s3cret%';
-- every secret option is masked, not only password
SELECT dbpool_create_pool('sslpw', 'dbname=x sslpassword=k3ysecret', min_size => 0);
SELECT conninfo FROM dbpool_pools WHERE name = 'sslpw';
SELECT dbpool_drop_pool('sslpw');

-- alter: any subset of settings, validated like create
SELECT dbpool_alter_pool('masked', '{"max_size": 3, "acquire_timeout_ms": 100, "reset_query": null}');
SELECT name, max_size, acquire_timeout_ms, reset_query FROM dbpool_pools WHERE name = 'masked';
SELECT dbpool_alter_pool('masked', '{"conninfo": "host=127.0.0.2 port=2 dbname=y password=n3w"}');
SELECT conninfo FROM dbpool_pools WHERE name = 'masked';
SELECT err($$SELECT dbpool_alter_pool('masked', '{"max_sise": 3}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"max_size": "3"}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"max_size": 2.5}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"max_size": 99999999999}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"min_size": 4}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"conninfo": "bogus=1"}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"conninfo": 5}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '[1]')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', NULL)$$);
SELECT err($$SELECT dbpool_alter_pool('nope', '{}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"health_max_utilization": "0.5"}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"health_max_utilization": 2}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"health_max_error_rate": 1e400}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"health_query": null}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"autoscale": "yes"}')$$);
SELECT err($$SELECT dbpool_alter_pool('masked', '{"max_size_limit": 2}')$$);
SELECT dbpool_alter_pool('masked', '{"autoscale": true, "max_size_limit": 6, "max_size_floor": 2}');
SELECT autoscale, max_size, max_size_limit, max_size_floor FROM dbpool_pools WHERE name = 'masked';
SELECT dbpool_detailed_metrics('masked') -> 'settings' -> 'autoscale' AS detail;
SELECT dbpool_alter_pool('masked', '{"autoscale": false, "max_size_floor": 0}');
-- the health settings: defaults, then changed
SELECT health_query, health_timeout_ms, health_check_interval_ms, health_max_latency_ms,
       health_max_utilization, health_max_error_rate, leak_threshold_ms
  FROM dbpool_pools WHERE name = 'masked';
SELECT dbpool_alter_pool('masked', '{"health_max_utilization": 0.75, "health_max_error_rate": 0,
                                     "health_query": "SELECT now()", "leak_threshold_ms": 0}');
SELECT health_query, health_max_utilization, health_max_error_rate, leak_threshold_ms
  FROM dbpool_pools WHERE name = 'masked';
SELECT dbpool_detailed_metrics('masked') -> 'settings' ->> 'health_max_utilization' AS detail;
-- a failed alter changed nothing
SELECT name, min_size, max_size FROM dbpool_pools WHERE name = 'masked';

-- a foreign server that is down: a clear error at once, and the pool is marked
SELECT err($$SELECT * FROM dbpool_query('masked', 'SELECT 1') AS t(x int)$$);
-- (degraded, or already down: a degraded pool's probe may fail in between)
SELECT state IN ('degraded', 'down') AS marked FROM dbpool_pools WHERE name = 'masked';

-- a rolled-back create leaves no pool; a committed one is usable at once
BEGIN;
SELECT dbpool_create_pool('temp', (SELECT conninfo FROM fconn), min_size => 0);
ROLLBACK;
SELECT err($$SELECT * FROM dbpool_query('temp', 'SELECT 1') AS t(x int)$$);
SELECT dbpool_create_pool('temp', (SELECT conninfo FROM fconn), min_size => 0);
SELECT * FROM dbpool_query('temp', 'SELECT 1') AS t(x int);

-- drop
SELECT dbpool_drop_pool('temp');
SELECT err($$SELECT * FROM dbpool_query('temp', 'SELECT 1') AS t(x int)$$);
SELECT err($$SELECT dbpool_drop_pool('temp')$$);
SELECT err($$SELECT dbpool_drop_pool(NULL)$$);
SELECT dbpool_drop_pool('masked');
SELECT name FROM dbpool_pools ORDER BY name;

-- dbpool.max_pools (6 in this test instance)
SELECT dbpool_create_pool('m' || g, 'dbname=x', min_size => 0) FROM generate_series(1, 5) g;
SELECT err($$SELECT dbpool_create_pool('m6', 'dbname=x', min_size => 0)$$);
SELECT dbpool_drop_pool('m' || g) FROM generate_series(1, 5) g;
SELECT name FROM dbpool_pools ORDER BY name;

-- a row written straight into the table (a restore) with a conninfo libpq rejects:
-- requests fail clearly, the worker survives, and fixing the row heals the pool
INSERT INTO dbpool_config (name, conninfo, owner, min_size, max_size, acquire_timeout_ms,
                           query_timeout_ms, idle_timeout_ms, max_lifetime_ms)
VALUES ('bad', 'dbname=x bogus_option=1', current_user::regrole, 1, 1, 1000, 0, 60000, 60000);
SELECT err($$SELECT * FROM dbpool_query('bad', 'SELECT 1') AS t(x int)$$);
SELECT name, conninfo, state FROM dbpool_pools WHERE name = 'bad';
UPDATE dbpool_config SET conninfo = (SELECT conninfo FROM fconn) WHERE name = 'bad';
SELECT * FROM dbpool_query('bad', 'SELECT 1') AS t(x int);
SELECT dbpool_drop_pool('bad');

-- the configuration table is superusers' only and dumped
SELECT c.relname, pg_catalog.has_table_privilege('public', c.oid, 'SELECT') AS public_can_read,
       c.oid = ANY (e.extconfig) AS dumped
  FROM pg_class c, pg_extension e
 WHERE e.extname = 'dbpool' AND c.relname IN ('dbpool_config', 'dbpool_grant')
 ORDER BY 1;
