#!/usr/bin/env bash
# dbpool demo.  Run as root (sudo ./scripts/demo.sh), from any directory.
#
# Builds and installs dbpool, then starts two throwaway PostgreSQL servers as the postgres
# user, reachable only through a Unix socket in a temporary directory:
#   L (port 25440)  the local server, with dbpool preloaded
#   F (port 25441)  a foreign server holding a table kv
# and shows a pool on L serving queries on F.  Both servers are stopped and removed at exit.
set -euo pipefail

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

L_PORT=25440
F_PORT=25441

dbpool_require_root
dbpool_install_packages
build=$(dbpool_make_build_dir dbpool-demo-build)
dbpool_build "$build" >"$build/build.log" 2>&1 || { cat "$build/build.log"; dbpool_die "build failed"; }
dbpool_install "$build" >>"$build/build.log" 2>&1 || { cat "$build/build.log"; dbpool_die "install failed"; }
rm -rf "$build"

BIN=$("$PG_CONFIG" --bindir)
demo=$(mktemp -d /tmp/dbpool-demo.XXXXXX)
chown postgres:postgres "$demo"

as_pg() { runuser -u postgres -- "$@"; }

cleanup() {
    local s
    for s in L F; do
        [ -f "$demo/$s/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$demo/$s" -m fast -w stop >/dev/null 2>&1
    done
    rm -rf "$demo"
}
trap cleanup EXIT

start_server() {   # name port extra-conf
    local name=$1 port=$2 conf=$3
    as_pg "$BIN/initdb" -D "$demo/$name" -A trust -U postgres --no-sync >"$demo/$name.initdb.log" 2>&1 ||
        { cat "$demo/$name.initdb.log"; dbpool_die "initdb of $name failed"; }
    cat >>"$demo/$name/postgresql.conf" <<EOF
listen_addresses = ''
port = $port
unix_socket_directories = '$demo'
fsync = off
$conf
EOF
    as_pg "$BIN/pg_ctl" -D "$demo/$name" -l "$demo/$name.log" -w start >/dev/null ||
        { cat "$demo/$name.log"; dbpool_die "server $name did not start"; }
}

# Show, then run, one SQL statement on L or F.
sql() {
    local server=$1 text=$2 port opts=()
    shift 2
    [ "$server" = L ] && port=$L_PORT || port=$F_PORT
    printf '\n%s=# %s\n' "$server" "$text"
    as_pg "$BIN/psql" -X -q -h "$demo" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        "$@" -c "$text" </dev/null
}

echo
dbpool_log "starting local server L (port $L_PORT, dbpool preloaded) and foreign server F (port $F_PORT)"
start_server F "$F_PORT" ""
start_server L "$L_PORT" "shared_preload_libraries = 'dbpool'
dbpool.database = 'postgres'"
echo "   both listen only on the Unix socket in $demo"

echo
dbpool_log "on F: a table to read"
sql F "CREATE TABLE kv(id int PRIMARY KEY, v text)"
sql F "INSERT INTO kv SELECT g, 'value ' || g FROM generate_series(1, 5) g"

echo
dbpool_log "on L: the extension and a pool of at most 4 connections to F"
sql L "CREATE EXTENSION dbpool"
sql L "SELECT dbpool_create_pool('demo', 'host=$demo port=$F_PORT dbname=postgres', min_size => 1, max_size => 4, slow_query_ms => 150)"

echo
dbpool_log "queries on F, run from L through the pool"
sql L "SELECT * FROM dbpool_query('demo', 'SELECT id, v FROM kv ORDER BY id') AS t(id int, v text)"
sql L "SELECT * FROM dbpool_query('demo', 'SELECT id, v FROM kv WHERE id = \$1', ARRAY['3']) AS t(id int, v text)"
sql L "SELECT dbpool_exec('demo', 'INSERT INTO kv VALUES (\$1, \$2)', ARRAY['6', 'six'])"
sql L "SELECT count(*) AS rows_on_f, max(id) FROM dbpool_query('demo', 'SELECT id FROM kv') AS t(id int)"
sql L "SELECT l.n, r.v FROM generate_series(5, 7) AS l(n)
       LEFT JOIN dbpool_query('demo', 'SELECT id, v FROM kv') AS r(id int, v text) ON r.id = l.n
       ORDER BY l.n"

echo
dbpool_log "an error on F comes back with its SQLSTATE"
sql L "SELECT dbpool_exec('demo', 'INSERT INTO kv VALUES (1, ''duplicate'')')" -v VERBOSITY=verbose || true

echo
dbpool_log "eight sessions at once share the pool"
for i in 1 2 3 4 5 6 7 8; do
    as_pg "$BIN/psql" -X -q -At -h "$demo" -p "$L_PORT" -U postgres -d postgres \
        -c "SELECT count(*) FROM dbpool_query('demo', 'SELECT pg_sleep(0.2), g FROM generate_series(1, 3) g') AS t(s text, g int)" \
        </dev/null >/dev/null &
done
wait
echo "   8 concurrent queries done"

echo
dbpool_log "the pool, as L sees it"
sql L "SELECT * FROM dbpool_pools" -x

echo
dbpool_log "what the pool is doing: dbpool_metrics (percentiles and rates over the last 60 s)"
sql L "SELECT pool, state, total_connections, active_connections, max_size, waiting_queue_length, acquire_latency_p50_ms, acquire_latency_p99_ms, queries_total, errors_total, latency_p50_ms, latency_p99_ms, error_rate, slow_queries_count FROM dbpool_metrics" -x

echo
dbpool_log "its connections (remote_pid is the backend on F)"
sql L "SELECT conn_id, state, remote_pid, queries_served, round(active_seconds::numeric, 3) AS active_seconds, last_query FROM dbpool_connections ORDER BY conn_id"

echo
dbpool_log "the slowest queries (slow_query_ms = 150 for this pool)"
sql L "SELECT pool, duration_ms, rows, sqlstate, query FROM dbpool_slow_queries('demo', 3)"

echo
dbpool_log "health: every pool checked at once (its health query on an idle connection)"
sql L "SELECT jsonb_pretty(dbpool_health())"

echo
dbpool_log "the deep check of one pool, and its diagnosis"
sql L "SELECT jsonb_pretty(dbpool_health('demo') - 'metrics')"
sql L "SELECT jsonb_pretty(dbpool_diagnose('demo') - 'slow_queries')"

echo
dbpool_log "alerts (rules in dbpool_alert_rules, evaluated every second by the worker)"
sql L "SELECT name, metric, comparison, threshold, for_seconds, severity, action FROM dbpool_alert_rules ORDER BY name"
sql L "SELECT rule, pool, state, value, threshold, severity FROM dbpool_alerts"

echo
dbpool_log "dbpool's connections, as F sees them (never more than max_size = 4)"
sql F "SELECT count(*) AS dbpool_connections FROM pg_stat_activity WHERE application_name = 'dbpool'"

echo
dbpool_log "done; stopping L and F"
