/* dbpool--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION dbpool" to load this file. \quit

-- The configuration: the truth the worker reconciles to.  Only the database
-- named by dbpool.database is read.  Superusers only; kept by pg_dump.
-- Settings columns follow DbpoolSettingDescs[] in src/settings.c.
CREATE TABLE dbpool_config (
    name               text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    conninfo           text NOT NULL,
    backup_conninfo    text,
    owner              regrole NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    min_size           int NOT NULL,
    max_size           int NOT NULL,
    acquire_timeout_ms int NOT NULL,
    query_timeout_ms   int NOT NULL,
    idle_timeout_ms    int NOT NULL,
    max_lifetime_ms    int NOT NULL,
    reset_query        text,
    slow_query_ms      int NOT NULL DEFAULT 1000,
    retry_base_ms      int NOT NULL DEFAULT 100,
    retry_max_ms       int NOT NULL DEFAULT 10000,
    retry_attempts     int NOT NULL DEFAULT 3,
    down_probe_interval_ms int NOT NULL DEFAULT 500,
    validation_interval_ms int NOT NULL DEFAULT 30000,
    failback_after_ms  int NOT NULL DEFAULT 30000,
    health_query       text NOT NULL DEFAULT 'SELECT 1',
    health_timeout_ms  int NOT NULL DEFAULT 1000,
    health_check_interval_ms int NOT NULL DEFAULT 30000,
    health_max_latency_ms int NOT NULL DEFAULT 100,
    health_max_utilization float8 NOT NULL DEFAULT 0.9,
    health_max_error_rate float8 NOT NULL DEFAULT 0.01,
    leak_threshold_ms  int NOT NULL DEFAULT 300000,
    autoscale          boolean NOT NULL DEFAULT false,
    max_size_limit     int NOT NULL DEFAULT 200,
    max_size_floor     int NOT NULL DEFAULT 0
);

CREATE TABLE dbpool_grant (
    pool text NOT NULL REFERENCES dbpool_config (name) ON DELETE CASCADE ON UPDATE CASCADE,
    role regrole NOT NULL,
    PRIMARY KEY (pool, role)
);

REVOKE ALL ON dbpool_config, dbpool_grant FROM PUBLIC;

-- Whatever writes the configuration (the functions below, a restore, a direct edit), the
-- worker re-reads it when the transaction commits.
CREATE FUNCTION dbpool_config_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'dbpool_config_trigger'
LANGUAGE C;

CREATE TRIGGER dbpool_config_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dbpool_config
    FOR EACH STATEMENT EXECUTE FUNCTION dbpool_config_trigger();

CREATE TRIGGER dbpool_grant_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dbpool_grant
    FOR EACH STATEMENT EXECUTE FUNCTION dbpool_config_trigger();
SELECT pg_catalog.pg_extension_config_dump('dbpool_config', '');
SELECT pg_catalog.pg_extension_config_dump('dbpool_grant', '');

-- Administration (only in dbpool.database).  Not STRICT: NULLs get a clear error.
CREATE FUNCTION dbpool_create_pool(
    name text,
    conninfo text,
    min_size int DEFAULT 1,
    max_size int DEFAULT 10,
    acquire_timeout_ms int DEFAULT 5000,
    query_timeout_ms int DEFAULT 0,
    idle_timeout_ms int DEFAULT 600000,
    max_lifetime_ms int DEFAULT 3600000,
    reset_query text DEFAULT NULL,
    slow_query_ms int DEFAULT 1000,
    retry_base_ms int DEFAULT 100,
    retry_max_ms int DEFAULT 10000,
    retry_attempts int DEFAULT 3,
    down_probe_interval_ms int DEFAULT 500,
    validation_interval_ms int DEFAULT 30000,
    failback_after_ms int DEFAULT 30000,
    health_query text DEFAULT 'SELECT 1',
    health_timeout_ms int DEFAULT 1000,
    health_check_interval_ms int DEFAULT 30000,
    health_max_latency_ms int DEFAULT 100,
    health_max_utilization float8 DEFAULT 0.9,
    health_max_error_rate float8 DEFAULT 0.01,
    leak_threshold_ms int DEFAULT 300000,
    autoscale boolean DEFAULT false,
    max_size_limit int DEFAULT 200,
    max_size_floor int DEFAULT 0,
    backup_conninfo text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_create_pool'
LANGUAGE C VOLATILE;

REVOKE EXECUTE ON FUNCTION dbpool_create_pool(text, text, int, int, int, int, int, int, text, int, int, int, int, int, int, int, text, int, int, int, float8, float8, int, boolean, int, int, text) FROM PUBLIC;

CREATE FUNCTION dbpool_alter_pool(name text, options jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_alter_pool'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_drop_pool(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_drop_pool'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_grant_usage(pool text, role regrole)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_grant_usage'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_revoke_usage(pool text, role regrole)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_revoke_usage'
LANGUAGE C VOLATILE;

-- Queries (from any database with the extension).
CREATE FUNCTION dbpool_query(pool text, sql text, params text[] DEFAULT NULL)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'dbpool_query'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_exec(pool text, sql text, params text[] DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'dbpool_exec'
LANGUAGE C VOLATILE;

-- Views.
CREATE FUNCTION dbpool_pools(
    OUT name text,
    OUT conninfo text,
    OUT backup_conninfo text,
    OUT min_size int,
    OUT max_size int,
    OUT acquire_timeout_ms int,
    OUT query_timeout_ms int,
    OUT idle_timeout_ms int,
    OUT max_lifetime_ms int,
    OUT reset_query text,
    OUT slow_query_ms int,
    OUT retry_base_ms int,
    OUT retry_max_ms int,
    OUT retry_attempts int,
    OUT down_probe_interval_ms int,
    OUT validation_interval_ms int,
    OUT failback_after_ms int,
    OUT health_query text,
    OUT health_timeout_ms int,
    OUT health_check_interval_ms int,
    OUT health_max_latency_ms int,
    OUT health_max_utilization float8,
    OUT health_max_error_rate float8,
    OUT leak_threshold_ms int,
    OUT autoscale boolean,
    OUT max_size_limit int,
    OUT max_size_floor int,
    OUT owner name,
    OUT state text,
    OUT target text,
    OUT created_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'dbpool_pools'
LANGUAGE C VOLATILE;

CREATE VIEW dbpool_pools AS SELECT * FROM dbpool_pools();
GRANT SELECT ON dbpool_pools TO PUBLIC;

-- Statistics: figures measured by the worker (src/stats.c), readable by everyone; query
-- texts and error messages only by superusers, pg_read_all_stats and the role that ran them.
CREATE FUNCTION dbpool_metrics(
    OUT pool text,
    OUT state text,
    OUT total_connections int,
    OUT active_connections int,
    OUT idle_connections int,
    OUT max_size int,
    OUT connection_utilization float8,
    OUT waiting_queue_length int,
    OUT acquire_latency_p50_ms float8,
    OUT acquire_latency_p99_ms float8,
    OUT queries_total bigint,
    OUT errors_total bigint,
    OUT queries_per_second float8,
    OUT latency_p50_ms float8,
    OUT latency_p95_ms float8,
    OUT latency_p99_ms float8,
    OUT error_rate float8,
    OUT slow_queries_count bigint,
    OUT timeouts_total bigint,
    OUT stats_reset timestamptz,
    OUT connecting_connections int,
    OUT oldest_wait_ms float8,
    OUT cancels_total bigint,
    OUT last_health_check_at timestamptz,
    OUT last_health_check_ok bool,
    OUT last_health_check_latency_ms float8,
    OUT last_health_check_error text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'dbpool_metrics'
LANGUAGE C VOLATILE;

CREATE VIEW dbpool_metrics AS SELECT * FROM dbpool_metrics();
GRANT SELECT ON dbpool_metrics TO PUBLIC;

CREATE FUNCTION dbpool_connections(
    OUT pool text,
    OUT conn_id bigint,
    OUT state text,
    OUT client_pid int,
    OUT remote_pid int,
    OUT created_at timestamptz,
    OUT state_since timestamptz,
    OUT active_seconds float8,
    OUT queries_served bigint,
    OUT last_query text,
    OUT last_error text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'dbpool_connections'
LANGUAGE C VOLATILE;

CREATE VIEW dbpool_connections AS SELECT * FROM dbpool_connections();
GRANT SELECT ON dbpool_connections TO PUBLIC;

CREATE FUNCTION dbpool_slow_queries(
    OUT pool text,
    OUT query text,
    OUT duration_ms float8,
    OUT started_at timestamptz,
    OUT client_pid int,
    OUT role name,
    OUT rows bigint,
    OUT sqlstate text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'dbpool_slow_queries'
LANGUAGE C VOLATILE;

CREATE VIEW dbpool_slow_queries AS SELECT * FROM dbpool_slow_queries();
GRANT SELECT ON dbpool_slow_queries TO PUBLIC;

-- The slowest executions of one pool (NULL: of every pool), at most lim (NULL: all).
CREATE FUNCTION dbpool_slow_queries(pool text, lim int DEFAULT 10)
RETURNS SETOF dbpool_slow_queries
AS 'MODULE_PATHNAME', 'dbpool_slow_queries'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_detailed_metrics(pool text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'dbpool_detailed_metrics'
LANGUAGE C VOLATILE;

-- Health checks: every pool at once, or the deep check of one (anyone; texts as in the views).
CREATE FUNCTION dbpool_health()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'dbpool_health'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_health(pool text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'dbpool_health_pool'
LANGUAGE C VOLATILE;

-- Owners reset their pools, superusers any (checked in C).
-- The operator's manual operations (owner or superuser; checked in C).
CREATE FUNCTION dbpool_restart_pool(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_restart_pool'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_cleanup_pool(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_cleanup_pool'
LANGUAGE C VOLATILE;

CREATE FUNCTION dbpool_reset_stats(pool text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'dbpool_reset_stats'
LANGUAGE C VOLATILE;

-- The operations guide's timeout rule on the pool's measured latency; writes it only with
-- apply (owner or superuser, checked by dbpool_alter_pool).
CREATE FUNCTION dbpool_tune_timeouts(pool text, apply boolean DEFAULT false)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'dbpool_tune_timeouts'
LANGUAGE C VOLATILE;
