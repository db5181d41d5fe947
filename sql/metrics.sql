-- Metrics, slow queries and connection details: a known workload gives known numbers.
-- Durations vary from run to run, so they are shown as checks, not values.

SELECT dbpool_create_pool('m', (SELECT conninfo FROM fconn), min_size => 2, max_size => 2,
                          slow_query_ms => 400);
SELECT name, slow_query_ms FROM dbpool_pools WHERE name = 'm';
SELECT slow_query_ms FROM dbpool_pools WHERE name = 'regress';
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', slow_query_ms => -1)$$);
SELECT err($$SELECT dbpool_create_pool('x', 'dbname=x', slow_query_ms => NULL)$$);
SELECT err($$SELECT dbpool_alter_pool('m', '{"slow_query_ms": -1}')$$);
SHOW dbpool.slow_query_log_size;

-- a fresh pool: counters at zero, no latency yet
SELECT pool, max_size, queries_total, errors_total,
       slow_queries_count, timeouts_total, cancels_total, waiting_queue_length,
       latency_p50_ms IS NULL AS no_latency, acquire_latency_p50_ms IS NULL AS no_acquire,
       error_rate, queries_per_second, oldest_wait_ms, stats_reset IS NOT NULL AS has_reset
  FROM dbpool_metrics WHERE pool = 'm';
SELECT count(*) FROM dbpool_slow_queries WHERE pool = 'm';

-- N = 20 requests: 16 return rows (2 of them slow), 1 is slow and fails, 3 fail fast
SELECT count(*) FROM generate_series(1, 14) g,
       LATERAL dbpool_query('m', 'SELECT $1::int', ARRAY[g::text]) AS t(v int);
SELECT * FROM dbpool_query('m', 'SELECT pg_sleep(0.5)::text') AS t(v text);
SELECT * FROM dbpool_query('m', 'SELECT pg_sleep(0.6)::text') AS t(v text);
SELECT err($$SELECT dbpool_exec('m', 'SELECT 1 / (count(*) - 1) FROM pg_sleep(0.5)')$$);
SELECT err($$SELECT dbpool_exec('m', 'SELECT no_such_column')$$) FROM generate_series(1, 3);

SELECT queries_total, errors_total, slow_queries_count, timeouts_total, cancels_total,
       total_connections, active_connections, idle_connections, connection_utilization,
       latency_p50_ms < 400 AS p50_fast, latency_p95_ms >= 450 AS p95_slow,
       latency_p99_ms >= latency_p95_ms AS p99_ge_p95,
       acquire_latency_p99_ms < 400 AS acquire_fast
  FROM dbpool_metrics WHERE pool = 'm';
-- rows: 14 + 2 (the failing ones return none)
SELECT dbpool_detailed_metrics('m')->'counters' AS counters;

-- the slow ones, each with its text, role, session and outcome
SELECT pool, query, duration_ms >= 450 AS over_threshold, rows, sqlstate, role,
       client_pid = pg_backend_pid() AS this_session,
       started_at BETWEEN now() - interval '1 minute' AND clock_timestamp() AS started_recently
  FROM dbpool_slow_queries WHERE pool = 'm' ORDER BY started_at;
-- the slowest first, at most lim
SELECT count(*) FROM dbpool_slow_queries('m', 2);
SELECT bool_and(d1 >= d2) AS slowest_first
  FROM (SELECT duration_ms AS d1, lead(duration_ms) OVER () AS d2
          FROM dbpool_slow_queries('m')) s WHERE d2 IS NOT NULL;
SELECT count(*) FROM dbpool_slow_queries('m', NULL);
SELECT count(*) FROM dbpool_slow_queries(NULL) WHERE pool = 'm';
SELECT count(*) FROM dbpool_slow_queries('m', 0);
SELECT err($$SELECT * FROM dbpool_slow_queries('m', -1)$$);
SELECT err($$SELECT * FROM dbpool_slow_queries('no_such_pool')$$);

-- rates over complete seconds: wait for the current one to end
SELECT pg_sleep(1.1);
SELECT round(queries_per_second * 60) AS queries_last_60s, round(error_rate::numeric, 2) AS error_rate
  FROM dbpool_metrics WHERE pool = 'm';
SELECT (r->'60s'->>'error_rate')::float8 = 0.2 AS rate_60s,
       (r->'10s'->>'queries_per_second')::float8 * 10 AS queries_last_10s
  FROM (SELECT dbpool_detailed_metrics('m')->'rates' AS r) s;

-- query_timeout_ms and a local statement_timeout (a cancel, once the worker has seen it)
SELECT dbpool_alter_pool('m', '{"query_timeout_ms": 100}');
SELECT dbpool_exec('m', 'SELECT pg_sleep(2)');
SELECT dbpool_alter_pool('m', '{"query_timeout_ms": 0}');
SET statement_timeout = 100;
SELECT dbpool_exec('m', 'SELECT pg_sleep(2)');
RESET statement_timeout;
SELECT * FROM dbpool_query('m', 'SELECT 1') AS t(v int);
SELECT queries_total, errors_total, timeouts_total, cancels_total FROM dbpool_metrics WHERE pool = 'm';

-- connections: one row each, matching the foreign server's pg_stat_activity (once the
-- cancelled ones are back)
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN (SELECT bool_and(state = 'idle') FROM dbpool_connections WHERE pool = 'm');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT count(*) = (SELECT total_connections FROM dbpool_metrics WHERE pool = 'm') AS one_row_each
  FROM dbpool_connections WHERE pool = 'm';
SELECT c.state, a.state AS remote_state, a.datname, a.application_name, c.client_pid,
       a.backend_type, c.created_at <= c.state_since AS ordered_times, count(*)
  FROM dbpool_connections c LEFT JOIN pg_stat_activity a ON a.pid = c.remote_pid
 WHERE c.pool = 'm'
 GROUP BY 1, 2, 3, 4, 5, 6, 7;
SELECT sum(queries_served) AS served, bool_or(active_seconds >= 0.5) AS active_time,
       count(*) FILTER (WHERE last_error IS NOT NULL) >= 1 AS has_last_error,
       count(*) FILTER (WHERE last_query IS NOT NULL) >= 1 AS has_last_query
  FROM dbpool_connections WHERE pool = 'm';

-- the document: settings (password masked), figures, buckets, connections
SELECT dbpool_create_pool('mpw', 'host=127.0.0.1 port=1 user=u password=s3cret dbname=x',
                          min_size => 0);
SELECT dbpool_detailed_metrics('mpw')->'settings'->>'conninfo' AS conninfo;
SELECT position('s3cret' IN dbpool_detailed_metrics()::text) = 0 AS password_hidden;
SELECT jsonb_object_keys(dbpool_detailed_metrics('m')) AS key ORDER BY 1;
SELECT jsonb_object_keys(dbpool_detailed_metrics('m')->'query_latency') AS key ORDER BY 1;
SELECT dbpool_detailed_metrics() ? 'm' AS has_m, dbpool_detailed_metrics() ? 'mpw' AS has_mpw;
SELECT err($$SELECT dbpool_detailed_metrics('no_such_pool')$$);
-- every bucket at most 10% wide; the counts add up to the requests that ran
SELECT bool_and((b->>'upper_ms')::numeric - (b->>'lower_ms')::numeric
                <= 0.1 * (b->>'lower_ms')::numeric OR (b->>'lower_ms')::numeric = 0) AS narrow,
       sum((b->>'count')::int) AS counted,
       (SELECT (dbpool_detailed_metrics('m')->'query_latency'->'cumulative'->>'count')::int) AS count
  FROM jsonb_array_elements(dbpool_detailed_metrics('m')->'query_latency'->'cumulative'->'buckets') b;
SELECT jsonb_array_length(dbpool_detailed_metrics('m')->'connections') AS connections;

-- query texts: superusers, pg_read_all_stats and the role that ran them
CREATE ROLE regress_stat_user;
CREATE ROLE regress_stat_reader IN ROLE pg_read_all_stats;
CREATE ROLE regress_stat_other;
GRANT EXECUTE ON FUNCTION err(text) TO PUBLIC;
SELECT dbpool_grant_usage('m', 'regress_stat_user');
SET ROLE regress_stat_user;
SELECT * FROM dbpool_query('m', 'SELECT pg_sleep(0.5)::text AS mine') AS t(v text);
SELECT role, query FROM dbpool_slow_queries WHERE pool = 'm' ORDER BY started_at;
SELECT bool_or(last_query = 'SELECT pg_sleep(0.5)::text AS mine') AS sees_own,
       bool_and(last_query IN ('SELECT pg_sleep(0.5)::text AS mine', '<insufficient privilege>'))
         AS others_hidden
  FROM dbpool_connections WHERE pool = 'm' AND last_query IS NOT NULL;
-- an error message goes with the role whose request failed, not with the connection's last user
SELECT DISTINCT last_error FROM dbpool_connections WHERE pool = 'm' AND last_error IS NOT NULL;
SELECT err($$SELECT dbpool_reset_stats('m')$$);
RESET ROLE;
SET ROLE regress_stat_reader;
SELECT role, query FROM dbpool_slow_queries WHERE pool = 'm' ORDER BY started_at;
RESET ROLE;
SET ROLE regress_stat_other;
SELECT role, query FROM dbpool_slow_queries WHERE pool = 'm' ORDER BY started_at;
SELECT DISTINCT last_query FROM dbpool_connections WHERE pool = 'm' AND last_query IS NOT NULL;
SELECT DISTINCT last_error FROM dbpool_connections WHERE pool = 'm' AND last_error IS NOT NULL;
SELECT DISTINCT c->>'last_query' AS last_query
  FROM jsonb_array_elements(dbpool_detailed_metrics('m')->'connections') c
 WHERE c->>'last_query' IS NOT NULL;
-- the figures themselves are for everyone
SELECT queries_total FROM dbpool_metrics WHERE pool = 'm';
RESET ROLE;

-- reset: counters, latencies and slow queries start afresh; gauges stay
SELECT stats_reset AS reset_before FROM dbpool_metrics WHERE pool = 'm' \gset
SELECT dbpool_reset_stats('m');
SELECT queries_total, errors_total, slow_queries_count, timeouts_total, cancels_total,
       latency_p50_ms, acquire_latency_p99_ms, total_connections,
       stats_reset > :'reset_before' AS reset_moved
  FROM dbpool_metrics WHERE pool = 'm';
SELECT count(*) FROM dbpool_slow_queries WHERE pool = 'm';
SELECT (dbpool_detailed_metrics('m')->'query_latency'->'cumulative'->>'count')::int AS count;
SELECT * FROM dbpool_query('m', 'SELECT 2') AS t(v int);
SELECT queries_total FROM dbpool_metrics WHERE pool = 'm';
SELECT err($$SELECT dbpool_reset_stats('no_such_pool')$$);
SELECT dbpool_reset_stats();
SELECT dbpool_reset_stats(NULL);
SELECT sum(queries_total) FROM dbpool_metrics;

-- timeout tuning: the guide's rule, query_timeout_ms = max(3 x p95, 1000), acquire half of it
SELECT dbpool_reset_stats('m');
-- no traffic in the last 60 s: ten runs of the health query
SELECT t->>'source' AS source, t->'samples' AS samples, t->'recommended' AS recommended,
       t->'current' AS current, t->'applied' AS applied
  FROM dbpool_tune_timeouts('m') t;
SELECT queries_total FROM dbpool_metrics WHERE pool = 'm';
SELECT query_timeout_ms, acquire_timeout_ms FROM dbpool_pools WHERE name = 'm';
-- traffic of about 400 ms per query: 3 x p95 is above the floor
SELECT dbpool_exec('m', 'SELECT pg_sleep(0.4)') FROM generate_series(1, 3);
SELECT t->>'source' AS source, t->'samples' AS samples,
       (t->>'p95_ms')::float8 BETWEEN 400 AND 2000 AS p95_plausible,
       (t->'recommended'->>'query_timeout_ms')::int = ceil(3 * (t->>'p95_ms')::float8) AS rule,
       (t->'recommended'->>'acquire_timeout_ms')::int * 2 - (t->'recommended'->>'query_timeout_ms')::int IN (0, 1) AS half
  FROM dbpool_tune_timeouts('m', false) t;
SELECT query_timeout_ms, acquire_timeout_ms FROM dbpool_pools WHERE name = 'm';
-- applied when asked: the recommendation is written
SELECT t->'recommended'->>'query_timeout_ms' AS rq, t->'recommended'->>'acquire_timeout_ms' AS ra,
       t->'applied' AS applied
  FROM dbpool_tune_timeouts('m', apply => true) t \gset
SELECT :'applied' AS applied, query_timeout_ms = :rq AND acquire_timeout_ms = :ra AS written
  FROM dbpool_pools WHERE name = 'm';
SELECT dbpool_alter_pool('m', '{"query_timeout_ms": 0, "acquire_timeout_ms": 5000}');
SELECT err($$SELECT dbpool_tune_timeouts(NULL)$$);
SELECT err($$SELECT dbpool_tune_timeouts('m', NULL)$$);
SELECT err($$SELECT dbpool_tune_timeouts('no_such_pool')$$);
-- someone else may see the recommendation, but not apply it
SET ROLE regress_stat_user;
SELECT t->>'source' AS source FROM dbpool_tune_timeouts('m') t;
SELECT err($$SELECT dbpool_tune_timeouts('m', true)$$);
RESET ROLE;
SELECT query_timeout_ms, acquire_timeout_ms FROM dbpool_pools WHERE name = 'm';

-- health checks: bad input
SELECT err($$SELECT dbpool_health('no_such_pool')$$);
SELECT err($$SELECT dbpool_health(NULL::text)$$);

SELECT dbpool_revoke_usage('m', 'regress_stat_user');
DROP ROLE regress_stat_user, regress_stat_reader, regress_stat_other;
SELECT dbpool_drop_pool('m');
SELECT dbpool_drop_pool('mpw');
