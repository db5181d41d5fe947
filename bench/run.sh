#!/usr/bin/env bash
# dbpool benchmark.  Run as root (sudo ./bench/run.sh), from any directory.  See bench/README.md.
#
# Builds and installs dbpool from this tree, then starts, as the postgres user, in a temporary
# directory under /tmp:
#   L  (port 25460)  local server, dbpool preloaded; dblink, postgres_fdw
#   F  (port 25461)  foreign server: table kv (100 000 rows), views slow and big
#   PgBouncer (port 25462)  transaction pooling to F, pool size 8
# Every foreign link (dbpool's pool, dblink, postgres_fdw, PgBouncer -> F) is TCP on 127.0.0.1;
# pgbench and psql reach L and F through the Unix socket in the temporary directory.
# Then it measures each method (pgbench for point/slow, psql for large), prints a table and
# writes bench/results/<timestamp>.csv and, for point, the plot <timestamp>.point.svg.  Everything
# is stopped and removed at exit.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$BENCH_DIR/../scripts/lib.sh"

L_PORT=25460
F_PORT=25461
B_PORT=25462
M_PORT=25463   # dbpool's metrics endpoint, with SCRAPE_MS
POOL_SIZE=8

ALL_METHODS="direct dblink_persistent dblink_oneshot dblink_via_pgbouncer dblink_persistent_via_pgbouncer postgres_fdw dbpool"
ALL_WORKLOADS="point manypools slow large soak"
METHODS=${METHODS:-$ALL_METHODS}
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CLIENTS_POINT=${CLIENTS_POINT:-"1 8 64"}
CLIENTS_SLOW=${CLIENTS_SLOW:-64}
LARGE_ROWS=${LARGE_ROWS:-5000000}
SOAK_QUERIES=${SOAK_QUERIES:-1000000}
SOAK_CLIENTS=8
REPEATS=${REPEATS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
SCRAPE_MS=${SCRAPE_MS:-0}
# manypools: MANYPOOLS pools (mp001 ...) of MANYPOOLS_SIZE connections each, all open and idle,
# while pgbench runs the point query through mp001 alone (the method "dbpool_manypools").
MANYPOOLS=${MANYPOOLS:-100}
MANYPOOLS_SIZE=${MANYPOOLS_SIZE:-10}

# Every foreign link goes over TCP.  The application_name tells the sampler on F whose
# connection it sees (dbpool's connections say "dbpool", postgres_fdw's "postgres_fdw",
# pgbench's and psql's straight at F "bench_direct").
F_TCP="host=127.0.0.1 port=$F_PORT dbname=postgres user=postgres"
F_DBLINK="$F_TCP application_name=bench_dblink"
B_DBLINK="host=127.0.0.1 port=$B_PORT dbname=postgres user=postgres application_name=bench_pgbouncer"

# --- knobs -------------------------------------------------------------------------------

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for m in $METHODS; do
    [[ " $ALL_METHODS " == *" $m "* ]] || dbpool_die "unknown method '$m' (known: $ALL_METHODS)"
done
for w in $WORKLOADS; do
    [[ " $ALL_WORKLOADS " == *" $w "* ]] || dbpool_die "unknown workload '$w' (known: $ALL_WORKLOADS)"
done
for v in DURATION WARMUP LARGE_ROWS REPEATS SOAK_QUERIES SCRAPE_MS MANYPOOLS MANYPOOLS_SIZE; do
    is_uint "${!v}" || dbpool_die "$v must be a non-negative integer, not '${!v}'"
done
[ "$DURATION" -ge 1 ] || dbpool_die "DURATION must be at least 1"
[ "$REPEATS" -ge 1 ] || dbpool_die "REPEATS must be at least 1"
[ "$LARGE_ROWS" -ge 1 ] || dbpool_die "LARGE_ROWS must be at least 1"
[ "$MANYPOOLS" -ge 1 ] && [ "$MANYPOOLS" -le 999 ] || dbpool_die "MANYPOOLS must be between 1 and 999"
[ "$MANYPOOLS_SIZE" -ge 1 ] || dbpool_die "MANYPOOLS_SIZE must be at least 1"
for c in $CLIENTS_POINT $CLIENTS_SLOW; do
    is_uint "$c" && [ "$c" -ge 1 ] && [ "$c" -le 150 ] ||
        dbpool_die "client counts must be between 1 and 150, not '$c'"
done
[ -n "$METHODS" ] || dbpool_die "METHODS is empty"
[ -n "$WORKLOADS" ] || dbpool_die "WORKLOADS is empty"
# SCRAPE_MS > 0: dbpool's metrics endpoint is on, and each dbpool run is followed by the same
# run while the endpoint is scraped every SCRAPE_MS ms (the method "dbpool_scraped").
if [ "$SCRAPE_MS" -gt 0 ]; then
    [[ " $METHODS " == *" dbpool "* ]] || dbpool_die "SCRAPE_MS needs the method dbpool"
    METHODS=$(for m in $METHODS; do echo "$m"; [ "$m" = dbpool ] && echo dbpool_scraped; done | xargs)
fi
# manypools is measured with dbpool only: without the method dbpool it is skipped.
MANYPOOLS_ON=0
if [[ " $WORKLOADS " == *" manypools "* ]]; then
    if [[ " $METHODS " == *" dbpool "* ]]; then
        MANYPOOLS_ON=1
    else
        dbpool_log "WORKLOADS has manypools but METHODS has no dbpool: manypools is skipped"
    fi
fi
MP_CONNS=$((MANYPOOLS * MANYPOOLS_SIZE))
# The limits manypools needs, raised only when it runs: dbpool's pool slots and connection cap
# on L, connection slots on F (the pools' connections, plus up to 150 clients of the other
# methods, the bench pool, PgBouncer's and the sampler), and open files: the worker's sockets
# count against PostgreSQL's external-FD budget, a third of max_files_per_process (see
# doc/operations.md), and max_files_per_process against the open-files limit.
F_MAX_CONNS=200
MP_MAX_POOLS=32
MP_MAX_CONNS=256
L_MAX_FILES=1000
if [ "$MANYPOOLS_ON" = 1 ]; then
    MP_MAX_POOLS=$((MANYPOOLS + 28))
    MP_MAX_CONNS=$((MP_CONNS + POOL_SIZE + 92))
    F_MAX_CONNS=$((MP_CONNS + 300))
    L_MAX_FILES=$((3 * MP_MAX_CONNS + 300))
fi

# --- installation --------------------------------------------------------------------------

dbpool_require_root

# lib.sh's package list, plus pgbouncer and python3 (bench.py).  One apt-get update and one
# apt-get install, only when something is missing.
DBPOOL_PACKAGES+=(pgbouncer python3)
dbpool_install_packages || dbpool_die "package installation failed"

BIN=$("$PG_CONFIG" --bindir)
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
# As the postgres user.  Background jobs use "${AS_PG[@]}" directly (not the function), so that
# $! is runuser itself, which passes a SIGTERM on to its child.
AS_PG=(runuser -u postgres --)
as_pg() { "${AS_PG[@]}" "$@"; }

for p in $L_PORT $F_PORT $B_PORT $M_PORT; do
    if (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
        dbpool_die "port $p is in use (a leftover run? look for /tmp/dbpool-bench.* and its servers)"
    fi
done

TS=$(date +%Y%m%d-%H%M%S)
T=""
BUILD=""
BG_PIDS=()
STATUS_FILE=""

machine_header() {
    local rev dirty=""
    rev=$(git -c safe.directory="$DBPOOL_ROOT" -C "$DBPOOL_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -c safe.directory="$DBPOOL_ROOT" -C "$DBPOOL_ROOT" status --porcelain -- . ':!bench' 2>/dev/null)" ] &&
        dirty=" (with uncommitted changes)"
    echo "date:       $(date -Is)"
    echo "host:       $(hostname)"
    echo "nproc:      $(nproc)"
    echo "cpu:        $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "ram:        $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel:     $(uname -srm)"
    echo "postgresql: $("$BIN/postgres" --version)"
    echo "pgbouncer:  $("$PGBOUNCER" --version 2>/dev/null | head -1)"
    if [ "$SKIP_BUILD" = 1 ]; then
        echo "dbpool:     $rev$dirty; SKIP_BUILD=1: measured with the dbpool.so installed at $(date -r "$("$PG_CONFIG" --pkglibdir)/dbpool.so" -Is 2>/dev/null || echo '?')"
    else
        echo "dbpool:     $rev$dirty"
    fi
    echo "loadavg:    $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
    echo "settings:   METHODS=\"$METHODS\" WORKLOADS=\"$WORKLOADS\" DURATION=$DURATION WARMUP=$WARMUP"
    echo "            CLIENTS_POINT=\"$CLIENTS_POINT\" CLIENTS_SLOW=\"$CLIENTS_SLOW\" LARGE_ROWS=$LARGE_ROWS REPEATS=$REPEATS SOAK_QUERIES=$SOAK_QUERIES"
    echo "            pgbench -M prepared, -j min(clients, 4); pools of $POOL_SIZE (dbpool, PgBouncer)"
    [ "$SCRAPE_MS" -gt 0 ] &&
        echo "            SCRAPE_MS=$SCRAPE_MS: dbpool_scraped = dbpool while GET /metrics runs every $SCRAPE_MS ms"
    [ "$MANYPOOLS_ON" = 1 ] &&
        echo "            MANYPOOLS=$MANYPOOLS MANYPOOLS_SIZE=$MANYPOOLS_SIZE: dbpool_manypools = dbpool's point on mp001 while $MP_CONNS connections are open," &&
        echo "            dbpool_manypools_bench = dbpool's point on its pool of $POOL_SIZE meanwhile;" &&
        echo "            L: dbpool.max_pools = $MP_MAX_POOLS, dbpool.max_connections = $MP_MAX_CONNS, max_files_per_process = $L_MAX_FILES;" &&
        echo "            F: max_connections = $F_MAX_CONNS"
    return 0
}

mkdir -p "$RESULTS_DIR"
HEADER_FILE="$RESULTS_DIR/$TS.txt"
machine_header | tee "$HEADER_FILE"
echo

if [ "$SKIP_BUILD" = 1 ]; then
    dbpool_log "SKIP_BUILD=1: using the dbpool already installed"
else
    BUILD=$(dbpool_make_build_dir dbpool-bench-build)
    dbpool_build "$BUILD" >"$BUILD/build.log" 2>&1 || { cat "$BUILD/build.log"; dbpool_die "build failed"; }
    dbpool_install "$BUILD" >>"$BUILD/build.log" 2>&1 || { cat "$BUILD/build.log"; dbpool_die "install failed"; }
    rm -rf "$BUILD"
    BUILD=""
fi

# --- servers and cleanup ---------------------------------------------------------------

T=$(mktemp -d /tmp/dbpool-bench.XXXXXX)
chown postgres:postgres "$T"
chmod 700 "$T"

stop_pgbouncer() {
    local pid i
    [ -n "$T" ] && [ -f "$T/pgbouncer.pid" ] || return 0
    pid=$(cat "$T/pgbouncer.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Stop a background runuser job: SIGTERM to its child (runuser itself would answer a SIGTERM
# with a 2 s grace period and a "Session terminated" message), then to runuser if need be.
stop_bg() {
    local pid=$1
    pkill -TERM -P "$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid s i alive
    set +e
    trap - INT TERM
    if [ -n "$T" ] && [ -d "$T" ]; then
        for pid in "${BG_PIDS[@]}"; do stop_bg "$pid"; done
        stop_pgbouncer
        for s in L F; do
            [ -f "$T/$s/postmaster.pid" ] &&
                as_pg "$BIN/pg_ctl" -D "$T/$s" -m immediate -w stop >/dev/null 2>&1
        done
        dbpool_stop_servers_under "$T"
        # Background helpers end once their servers are gone; make sure of it.
        for i in $(seq 1 50); do
            alive=0
            for pid in "${BG_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ "$alive" = 0 ] && break
            sleep 0.1
        done
        for pid in "${BG_PIDS[@]}"; do
            pkill -KILL -P "$pid" 2>/dev/null
            kill -KILL "$pid" 2>/dev/null
        done
        if [ "$rc" -ne 0 ] || { [ -n "$STATUS_FILE" ] && grep -q '"status": "error"' "$STATUS_FILE" 2>/dev/null; }; then
            mkdir -p "$RESULTS_DIR/$TS.logs"
            cp "$T"/L.log "$T"/F.log "$T"/pgbouncer.log "$RESULTS_DIR/$TS.logs/" 2>/dev/null
            [ -d "$T/out" ] && cp -r "$T/out" "$RESULTS_DIR/$TS.logs/" 2>/dev/null
            echo "server logs and client output kept in $RESULTS_DIR/$TS.logs/" >&2
        fi
        rm -rf "$T"
    fi
    [ -n "$BUILD" ] && rm -rf "$BUILD"
    if [ -n "${SUDO_UID:-}" ] && [ -d "$RESULTS_DIR" ]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$RESULTS_DIR" 2>/dev/null
    fi
    [ "$rc" -ne 0 ] && echo "bench: stopped (exit status $rc); servers stopped, $T removed" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$T/logs" "$T/out" "$T/large" "$T/pgbench"
cp "$BENCH_DIR"/pgbench/*.sql "$T/pgbench/"
cp "$BENCH_DIR/bench.py" "$T/bench.py"
chown -R postgres:postgres "$T"
BENCHPY="$T/bench.py"
STATUS_FILE="$T/runs.jsonl"
SAMPLES="$T/samples.txt"

start_server() {   # name port extra-conf
    local name=$1 port=$2 conf=$3
    as_pg "$BIN/initdb" -D "$T/$name" -A trust -U postgres --no-sync -E UTF8 --locale=C \
        >"$T/$name.initdb.log" 2>&1 ||
        { cat "$T/$name.initdb.log"; dbpool_die "initdb of $name failed"; }
    cat >>"$T/$name/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$T'
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_line_prefix = '%m [%p] %b '
$conf
EOF
    # runuser's PAM session (pam_limits) sets the soft open-files limit back to its default
    # (1024 here): raise it again, as the postgres user, within the hard limit.
    as_pg sh -c '[ -z "$1" ] || ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; shift; exec "$@"' \
        sh "$SERVER_NOFILE" "$BIN/pg_ctl" -D "$T/$name" -l "$T/$name.log" -w start >/dev/null ||
        { cat "$T/$name.log"; dbpool_die "server $name did not start"; }
}

# psql on L or F through the Unix socket; extra arguments follow.
psql_on() {
    local port=$1
    shift
    as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$T" -p "$port" -U postgres -d postgres "$@" </dev/null
}

F_CONF=""
L_CONF=""
SERVER_NOFILE=""
if [ "$MANYPOOLS_ON" = 1 ]; then
    # The worker holds a socket per foreign connection.  The servers start with a soft
    # open-files limit of SERVER_NOFILE, or the hard limit if that is lower (see start_server).
    h=$(ulimit -Hn)
    if [ "$h" != unlimited ] && [ "$h" -lt 65536 ]; then ulimit -Hn 65536 2>/dev/null || true; fi
    SERVER_NOFILE=65536
    F_CONF="max_connections = $F_MAX_CONNS"
    L_CONF="dbpool.max_pools = $MP_MAX_POOLS
dbpool.max_connections = $MP_MAX_CONNS
max_files_per_process = $L_MAX_FILES"
fi

dbpool_log "starting F (port $F_PORT) and L (port $L_PORT, dbpool preloaded) in $T"
start_server F "$F_PORT" "$F_CONF"
start_server L "$L_PORT" "shared_preload_libraries = 'dbpool'
dbpool.database = 'postgres'
dbpool.metrics_port = $([ "$SCRAPE_MS" -gt 0 ] && echo "$M_PORT" || echo 0)
$L_CONF"

dbpool_log "F: kv (100000 rows), views slow and big ($LARGE_ROWS rows)"
psql_on "$F_PORT" >/dev/null -c "
CREATE TABLE kv(id int PRIMARY KEY, v text);
INSERT INTO kv SELECT g, md5(g::text) FROM generate_series(1, 100000) g;
CREATE VIEW slow AS SELECT pg_sleep(0.01)::text AS v;
CREATE VIEW big AS SELECT g, repeat('x', 20) AS x FROM generate_series(1, $LARGE_ROWS) g;" -c "VACUUM ANALYZE kv" ||
    dbpool_die "setup of F failed"

dbpool_log "PgBouncer (port $B_PORT, transaction pooling, pool size $POOL_SIZE) -> F over TCP"
cat >"$T/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$F_PORT dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $B_PORT
unix_socket_dir = $T
auth_type = trust
auth_file = $T/pgbouncer.users
admin_users = postgres
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 500
logfile = $T/pgbouncer.log
pidfile = $T/pgbouncer.pid
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
EOF
echo '"postgres" ""' >"$T/pgbouncer.users"
chown postgres:postgres "$T/pgbouncer.ini" "$T/pgbouncer.users"
as_pg "$PGBOUNCER" -d -q "$T/pgbouncer.ini" || { cat "$T/pgbouncer.log" 2>/dev/null; dbpool_die "pgbouncer did not start"; }
for i in $(seq 1 50); do
    as_pg "$BIN/psql" -X -q -At -h "$T" -p "$B_PORT" -U postgres -d pgbouncer -c "SHOW VERSION" \
        </dev/null >/dev/null 2>&1 && break
    [ "$i" = 50 ] && { cat "$T/pgbouncer.log" 2>/dev/null; dbpool_die "pgbouncer does not answer"; }
    sleep 0.1
done

dbpool_log "L: extensions dbpool, dblink, postgres_fdw; pool bench ($POOL_SIZE connections); foreign tables"
psql_on "$L_PORT" >/dev/null -c "
CREATE EXTENSION dbpool;
CREATE EXTENSION dblink;
CREATE EXTENSION postgres_fdw;
CREATE SERVER f FOREIGN DATA WRAPPER postgres_fdw
    OPTIONS (host '127.0.0.1', port '$F_PORT', dbname 'postgres', use_remote_estimate 'false');
CREATE USER MAPPING FOR postgres SERVER f OPTIONS (user 'postgres');
CREATE FOREIGN TABLE kv_f (id int, v text) SERVER f OPTIONS (table_name 'kv');
CREATE FOREIGN TABLE slow_f (v text) SERVER f OPTIONS (table_name 'slow');
CREATE FOREIGN TABLE big_f (g int, x text) SERVER f OPTIONS (table_name 'big');" ||
    dbpool_die "setup of L failed"
psql_on "$L_PORT" >/dev/null -c "SELECT dbpool_create_pool('bench', '$F_TCP', min_size => $POOL_SIZE, max_size => $POOL_SIZE)" ||
    dbpool_die "dbpool_create_pool failed"

# The pool opens min_size connections by itself; wait until all of them are up.
for i in $(seq 1 150); do
    n=$(psql_on "$F_PORT" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool'")
    [ "$n" = "$POOL_SIZE" ] && break
    [ "$i" = 150 ] && { psql_on "$L_PORT" -c "SELECT name, state FROM dbpool_pools"; dbpool_die "pool bench has $n of $POOL_SIZE connections after 15 s"; }
    sleep 0.1
done
WORKER_PID=$(psql_on "$L_PORT" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'dbpool worker'")
[ -n "$WORKER_PID" ] || dbpool_die "no dbpool worker in pg_stat_activity"
echo "   pool bench: $(psql_on "$L_PORT" -F ' ' -c "SELECT 'state', state, 'min', min_size, 'max', max_size FROM dbpool_pools WHERE name = 'bench'"); dbpool worker pid $WORKER_PID"
if [ "$MANYPOOLS_ON" = 1 ]; then
    wk_nofile=$(awk '/^Max open files/ {print $4}' "/proc/$WORKER_PID/limits")
    echo "   dbpool worker: open files limit $wk_nofile (soft)"
    [ "$wk_nofile" = unlimited ] || [ "$wk_nofile" -ge "$L_MAX_FILES" ] ||
        dbpool_die "manypools: the dbpool worker's open files limit ($wk_nofile, from /proc/$WORKER_PID/limits) is below max_files_per_process ($L_MAX_FILES); the hard limit of this shell is $(ulimit -Hn)"
fi

# The large query of each method (count(*) over the rows it brought to L).  postgres_fdw would
# push a plain count(*) down to F, and would fetch only NULLs for columns nobody uses, so the
# foreign table is read in a subquery that cannot be flattened (OFFSET 0; outer quals are not
# pushed into it) and both columns are used.  The remote SQL is printed below as a check.
large_query() {
    case $1 in
        direct)                          echo "SELECT count(*) FROM big" ;;
        dblink_persistent)               echo "SELECT count(*) FROM dblink('bench_f', 'SELECT g, x FROM big') AS t(g int, x text)" ;;
        dblink_oneshot)                  echo "SELECT count(*) FROM dblink('$F_DBLINK', 'SELECT g, x FROM big') AS t(g int, x text)" ;;
        dblink_via_pgbouncer)            echo "SELECT count(*) FROM dblink('$B_DBLINK', 'SELECT g, x FROM big') AS t(g int, x text)" ;;
        dblink_persistent_via_pgbouncer) echo "SELECT count(*) FROM dblink('bench_b', 'SELECT g, x FROM big') AS t(g int, x text)" ;;
        postgres_fdw)                    echo "SELECT count(*) FROM (SELECT g, x FROM big_f OFFSET 0) s WHERE g IS NOT NULL AND x IS NOT NULL" ;;
        dbpool|dbpool_scraped)           echo "SELECT count(*) FROM dbpool_query('bench', 'SELECT g, x FROM big') AS t(g int, x text)" ;;
    esac
}
large_setup() {   # not timed: the persistent connection of the session
    case $1 in
        dblink_persistent)               echo "SELECT dblink_connect('bench_f', '$F_DBLINK');" ;;
        dblink_persistent_via_pgbouncer) echo "SELECT dblink_connect('bench_b', '$B_DBLINK');" ;;
    esac
}

if [[ " $WORKLOADS " == *" large "* ]] && [[ " $METHODS " == *" postgres_fdw "* ]]; then
    echo "   postgres_fdw large: $(psql_on "$L_PORT" -c "EXPLAIN (VERBOSE, COSTS OFF) $(large_query postgres_fdw)" | grep -m1 'Remote SQL' | sed 's/^ *//')"
fi

# Smoke test: every selected method answers once before anything is measured.
dbpool_log "smoke test of each method"
for m in $METHODS; do
    case $m in
        direct)                          out=$(psql_on "$F_PORT" -c "SELECT v FROM kv WHERE id = 42") ;;
        dblink_persistent)               out=$(psql_on "$L_PORT" -c "SELECT dblink_connect('bench_f', '$F_DBLINK')" -c "SELECT v FROM dblink('bench_f', 'SELECT v FROM kv WHERE id = 42') AS t(v text)" | tail -1) ;;
        dblink_oneshot)                  out=$(psql_on "$L_PORT" -c "SELECT v FROM dblink('$F_DBLINK', 'SELECT v FROM kv WHERE id = 42') AS t(v text)") ;;
        dblink_via_pgbouncer)            out=$(psql_on "$L_PORT" -c "SELECT v FROM dblink('$B_DBLINK', 'SELECT v FROM kv WHERE id = 42') AS t(v text)") ;;
        dblink_persistent_via_pgbouncer) out=$(psql_on "$L_PORT" -c "SELECT dblink_connect('bench_b', '$B_DBLINK')" -c "SELECT v FROM dblink('bench_b', 'SELECT v FROM kv WHERE id = 42') AS t(v text)" | tail -1) ;;
        postgres_fdw)                    out=$(psql_on "$L_PORT" -c "SELECT v FROM kv_f WHERE id = 42") ;;
        dbpool|dbpool_scraped)           out=$(psql_on "$L_PORT" -c "SELECT v FROM dbpool_query('bench', 'SELECT v FROM kv WHERE id = \$1', ARRAY['42']) AS t(v text)") ;;
    esac
    [ "$out" = "$(printf '%s' 42 | md5sum | cut -d' ' -f1)" ] || dbpool_die "smoke test of $m returned '$out'"
done

# One sampler for the whole run: CPU (/proc/stat), the dbpool worker's CPU time and the client
# backends on F, every 200 ms.
"${AS_PG[@]}" python3 "$BENCHPY" sample --out "$SAMPLES" --psql "$BIN/psql" --host "$T" --port "$F_PORT" \
    --worker "$WORKER_PID" </dev/null &
BG_PIDS+=($!)
SAMPLER_PID=$!
sleep 0.5
kill -0 "$SAMPLER_PID" 2>/dev/null || dbpool_die "the sampler did not start"

# --- measurements ------------------------------------------------------------------------

# Run a background command as the current foreground task: a signal to this script
# interrupts the wait at once (the EXIT trap then stops everything).
# (No redirection on the call itself: a signal's traps would run with it in effect.)
run_bg() {   # out-var output-file command... (a command, not a shell function)
    local __var=$1 __out=$2 __pid __rc=0
    shift 2
    "$@" </dev/null >"$__out" 2>&1 &
    __pid=$!
    BG_PIDS+=("$__pid")
    wait "$__pid" || __rc=$?
    unset_bg "$__pid"
    printf -v "$__var" '%s' "$__rc"
}
unset_bg() {
    local p keep=()
    for p in "${BG_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    BG_PIDS=("${keep[@]}")
}

# SCRAPE_MS: GET /metrics every SCRAPE_MS ms during a run of dbpool_scraped.
start_scraper() {   # tag
    "${AS_PG[@]}" python3 "$BENCHPY" scrape --url "http://127.0.0.1:$M_PORT/metrics" \
        --interval-ms "$SCRAPE_MS" --out "$T/out/$1.scrape.json" </dev/null &
    SCRAPER_PID=$!
    BG_PIDS+=("$SCRAPER_PID")
}
stop_scraper() {   # tag
    stop_bg "$SCRAPER_PID"
    wait "$SCRAPER_PID" 2>/dev/null || true
    unset_bg "$SCRAPER_PID"
    echo "   scrapes during $1: $(cat "$T/out/$1.scrape.json" 2>/dev/null || echo '(none recorded)')"
}

run_pgbench() {   # round method workload clients
    local round=$1 method=$2 workload=$3 clients=$4
    local threads=$((clients < 4 ? clients : 4)) tag="r$1-$3-c$4-$2" port=$L_PORT script defs=() rc
    local appname=pgbench
    case $method in
        direct)                          port=$F_PORT; script=${workload}_direct.sql; appname=bench_direct ;;
        dblink_persistent)               script=${workload}_dblink_persistent.sql
                                         defs=(-D connname=bench_f -D "conninfo=$F_DBLINK" -D connected=0) ;;
        dblink_persistent_via_pgbouncer) script=${workload}_dblink_persistent.sql
                                         defs=(-D connname=bench_b -D "conninfo=$B_DBLINK" -D connected=0) ;;
        dblink_oneshot)                  script=${workload}_dblink_oneshot.sql; defs=(-D "conninfo=$F_DBLINK") ;;
        dblink_via_pgbouncer)            script=${workload}_dblink_oneshot.sql; defs=(-D "conninfo=$B_DBLINK") ;;
        postgres_fdw)                    script=${workload}_postgres_fdw.sql ;;
        dbpool|dbpool_scraped|dbpool_manypools_bench) script=${workload}_dbpool.sql ;;
        dbpool_manypools)                script=${workload}_dbpool_manypools.sql ;;
    esac
    [ "$method" = dbpool_scraped ] && start_scraper "$tag"
    run_bg rc "$T/out/$tag.txt" "${AS_PG[@]}" env PGAPPNAME="$appname" "$BIN/pgbench" -n -M prepared -c "$clients" -j "$threads" \
        -T "$((WARMUP + DURATION))" -l --log-prefix="$T/logs/$tag" \
        -f "$T/pgbench/$script" "${defs[@]}" -h "$T" -p "$port" -U postgres postgres
    [ "$method" = dbpool_scraped ] && stop_scraper "$tag"
    python3 "$BENCHPY" pgbench-row --raw "$STATUS_FILE" --round "$round" --method "$method" \
        --workload "$workload" --clients "$clients" --rc "$rc" --pgbench-out "$T/out/$tag.txt" \
        --log-prefix "$T/logs/$tag" --samples "$SAMPLES" --warmup "$WARMUP" --duration "$DURATION"
    rm -f "$T/logs/$tag".*
}

run_large() {   # round method
    local round=$1 method=$2 tag="r$1-large-$2" port=$L_PORT worker=0 rc i bpid="" spid
    local d="$T/large/$tag" appname=psql
    [ "$method" = direct ] && { port=$F_PORT; appname=bench_direct; }
    if [ "$method" != direct ]; then
        worker=$(psql_on "$L_PORT" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'dbpool worker'") || worker=0
        [ -n "$worker" ] || worker=0
    fi
    mkdir -p "$d"
    cat >"$d/script.sql" <<EOF
\set ON_ERROR_STOP on
SET statement_timeout = '10min';
$(large_setup "$method")
\o $d/pid
SELECT pg_backend_pid();
\o
\! i=0; while [ ! -e $d/go ] && [ \$i -lt 1000 ]; do sleep 0.01; i=\$((i+1)); done
\timing on
$(large_query "$method");
\timing off
\! touch $d/qdone; i=0; while [ ! -e $d/release ] && [ \$i -lt 500 ]; do sleep 0.01; i=\$((i+1)); done
EOF
    chown -R postgres:postgres "$d"
    "${AS_PG[@]}" env PGAPPNAME="$appname" "$BIN/psql" -X -q -At -h "$T" -p "$port" -U postgres -d postgres -f "$d/script.sql" \
        </dev/null >"$d/out" 2>"$d/err" &
    local ppid=$!
    BG_PIDS+=("$ppid")
    for i in $(seq 1 300); do
        if [ -s "$d/pid" ] && grep -qx '[0-9]\+' "$d/pid"; then bpid=$(cat "$d/pid"); break; fi
        kill -0 "$ppid" 2>/dev/null || break
        sleep 0.05
    done
    if [ -n "$bpid" ]; then
        "${AS_PG[@]}" python3 "$BENCHPY" rss --backend "$bpid" --worker "$worker" --go "$d/go" \
            --qdone "$d/qdone" --release "$d/release" --out "$d/rss.json" </dev/null &
        spid=$!
        BG_PIDS+=("$spid")
    fi
    rc=0
    wait "$ppid" || rc=$?
    unset_bg "$ppid"
    if [ -n "$bpid" ]; then
        [ -e "$d/qdone" ] || as_pg touch "$d/qdone"   # psql failed: stop the sampler
        wait "$spid" || true
        unset_bg "$spid"
    fi
    python3 "$BENCHPY" large-row --raw "$STATUS_FILE" --round "$round" --method "$method" \
        --rc "$rc" --psql-out "$d/out" --psql-err "$d/err" --rss "$d/rss.json" \
        --samples "$SAMPLES" --expect "$LARGE_ROWS"
}

# manypools: create the pools mp001 ... (min_size = max_size = MANYPOOLS_SIZE) and wait until
# all their connections are open and idle; drop them after the round's manypools runs, and wait
# until F has only the bench pool's connections of dbpool again, so that the other workloads
# run as without them.
mp_create() {
    local i n t0=$SECONDS deadline=$((SECONDS + 180))
    dbpool_log "manypools: creating $MANYPOOLS pools of $MANYPOOLS_SIZE connections ($MP_CONNS foreign connections)"
    psql_on "$L_PORT" >/dev/null -c "SELECT dbpool_create_pool(format('mp%s', lpad(g::text, 3, '0')), '$F_TCP',
            min_size => $MANYPOOLS_SIZE, max_size => $MANYPOOLS_SIZE)
        FROM generate_series(1, $MANYPOOLS) g" || dbpool_die "manypools: dbpool_create_pool failed"
    while :; do
        n=$(psql_on "$L_PORT" -c "SELECT coalesce(sum(idle_connections), 0) FROM dbpool_metrics WHERE pool LIKE 'mp%'")
        [ "$n" = "$MP_CONNS" ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            psql_on "$L_PORT" -F ' ' -c "SELECT state, count(*), sum(total_connections), sum(idle_connections), sum(connecting_connections)
                FROM dbpool_metrics WHERE pool LIKE 'mp%' GROUP BY state"
            dbpool_die "manypools: $n of $MP_CONNS connections idle after 180 s (see the state counts above and $T/L.log)"
        fi
        sleep 0.2
    done
    n=$(psql_on "$F_PORT" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool'")
    echo "   manypools: $MP_CONNS connections idle after $((SECONDS - t0)) s; F has $n connections of dbpool"
    i=$(psql_on "$L_PORT" -c "SELECT v FROM dbpool_query('mp001', 'SELECT v FROM kv WHERE id = \$1', ARRAY['42']) AS t(v text)")
    [ "$i" = "$(printf '%s' 42 | md5sum | cut -d' ' -f1)" ] || dbpool_die "smoke test of mp001 returned '$i'"
}
mp_drop() {
    local n deadline=$((SECONDS + 120))
    psql_on "$L_PORT" >/dev/null -c "SELECT dbpool_drop_pool(name) FROM dbpool_pools WHERE name LIKE 'mp%'" ||
        dbpool_die "manypools: dbpool_drop_pool failed"
    while :; do
        n=$(psql_on "$F_PORT" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool'")
        [ "$n" = "$POOL_SIZE" ] && break
        [ "$SECONDS" -ge "$deadline" ] && dbpool_die "manypools: F still has $n connections of dbpool 120 s after the drop"
        sleep 0.2
    done
}

# Rounds are interleaved: round 1 measures every method, then round 2 ...
total=0
for w in $WORKLOADS; do
    case $w in
        point) for c in $CLIENTS_POINT; do for m in $METHODS; do total=$((total + 1)); done; done ;;
        manypools) if [ "$MANYPOOLS_ON" = 1 ]; then for c in $CLIENTS_POINT; do total=$((total + 2)); done; fi ;;
        slow)  for c in $CLIENTS_SLOW; do for m in $METHODS; do total=$((total + 1)); done; done ;;
        large) for m in $METHODS; do total=$((total + 1)); done ;;
        soak)  ;;   # once, after the rounds
    esac
done
total=$((total * REPEATS))
n=0
for round in $(seq 1 "$REPEATS"); do
    for w in point manypools slow large; do
        [[ " $WORKLOADS " == *" $w "* ]] || continue
        if [ "$w" = manypools ]; then
            [ "$MANYPOOLS_ON" = 1 ] || continue
            mp_create
            for c in $CLIENTS_POINT; do
                n=$((n + 1))
                dbpool_log "[$n/$total] round $round/$REPEATS: manypools (point on the pool of 8, $MP_CONNS connections open), $c clients, ${WARMUP} s warm-up + ${DURATION} s"
                run_pgbench "$round" dbpool_manypools_bench point "$c"
                n=$((n + 1))
                dbpool_log "[$n/$total] round $round/$REPEATS: manypools (point on mp001, $MP_CONNS connections open), $c clients, ${WARMUP} s warm-up + ${DURATION} s"
                run_pgbench "$round" dbpool_manypools point "$c"
            done
            mp_drop
            continue
        fi
        case $w in
            point) clist=$CLIENTS_POINT ;;
            slow)  clist=$CLIENTS_SLOW ;;
            large) clist=1 ;;
        esac
        for c in $clist; do
            if [ "$w" = large ]; then
                dbpool_log "[$((n + 1))/$total] round $round/$REPEATS: large ($LARGE_ROWS rows)"
            else
                dbpool_log "[$((n + 1))/$total] round $round/$REPEATS: $w, $c clients, ${WARMUP} s warm-up + ${DURATION} s"
            fi
            for m in $METHODS; do
                n=$((n + 1))
                if [ "$w" = large ]; then run_large "$round" "$m"; else run_pgbench "$round" "$m" "$w" "$c"; fi
            done
        done
    done
done

# --- soak: the worker's memory and open files over a long run ------------------------------

# SOAK_QUERIES point queries through dbpool (SOAK_CLIENTS clients, pgbench -t), sampling the
# worker's RssAnon and open file descriptors every second.  Flat means: no leak per query.
worker_mem() { awk '/^RssAnon/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
worker_fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
run_soak() {
    local w per rc a0 f0 a1 f1 amax fmax a f tps out="$T/out/soak.txt" spid
    w=$(psql_on "$L_PORT" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'dbpool worker'")
    per=$(( (SOAK_QUERIES + SOAK_CLIENTS - 1) / SOAK_CLIENTS ))
    dbpool_log "soak: $((per * SOAK_CLIENTS)) point queries through dbpool, $SOAK_CLIENTS clients (worker pid $w)"
    a0=$(worker_mem "$w"); f0=$(worker_fds "$w")
    ( while :; do echo "$(worker_mem "$w") $(worker_fds "$w")"; sleep 1; done ) >"$T/soak.samples" &
    spid=$!
    BG_PIDS+=("$spid")
    # -t has no time bound of its own: at most 30 minutes
    run_bg rc "$out" timeout 1800 "${AS_PG[@]}" "$BIN/pgbench" -n -M prepared -c "$SOAK_CLIENTS" -j 4 -t "$per" \
        -f "$T/pgbench/point_dbpool.sql" -h "$T" -p "$L_PORT" -U postgres postgres
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
    unset_bg "$spid"
    a1=$(worker_mem "$w"); f1=$(worker_fds "$w")
    amax=$(awk -v m="$a1" '$1 > m {m = $1} END {print m}' "$T/soak.samples")
    fmax=$(awk -v m="$f1" '$2 > m {m = $2} END {print m}' "$T/soak.samples")
    tps=$(grep -oP 'tps = \K[0-9.]+' "$out" | head -1)
    if [ "$rc" != 0 ] || grep -qE 'number of failed transactions: [1-9]' "$out"; then
        echo "soak: FAILED (pgbench exit status $rc): $(grep -m1 -E 'ERROR|aborted' "$out")" | tee -a "$HEADER_FILE"
        return
    fi
    {
        echo
        echo "soak: $((per * SOAK_CLIENTS)) queries through dbpool at ${tps:-?} TPS; the worker's"
        echo "      RssAnon: ${a0} kB before, ${amax} kB at most, ${a1} kB after (growth $((a1 - a0)) kB)"
        echo "      open files: ${f0} before, ${fmax} at most, ${f1} after"
    } | tee -a "$HEADER_FILE"
    printf 'queries,tps,rssanon_before_kb,rssanon_max_kb,rssanon_after_kb,fds_before,fds_max,fds_after\n%s,%s,%s,%s,%s,%s,%s,%s\n' \
        "$((per * SOAK_CLIENTS))" "$tps" "$a0" "$amax" "$a1" "$f0" "$fmax" "$f1" >"$RESULTS_DIR/$TS.soak.csv"
}
if [[ " $WORKLOADS " == *" soak "* ]] && [[ " $METHODS " == *" dbpool "* ]]; then
    run_soak
fi

# --- report --------------------------------------------------------------------------------

stop_bg "$SAMPLER_PID"
wait "$SAMPLER_PID" 2>/dev/null || true
unset_bg "$SAMPLER_PID"

# Errors and warnings the servers logged during the measurements (pgbench reports its own).
log_summary() {
    local name f lines
    for name in L F pgbouncer; do
        f="$T/$name.log"
        [ -f "$f" ] || continue
        if [ "$name" = pgbouncer ]; then
            lines=$(grep -E ' (WARNING|ERROR|FATAL) ' "$f" | sed -E 's/^[^]]*\] //' || true)
        else
            lines=$(grep -E '(WARNING|ERROR|FATAL|PANIC):' "$f" | sed -E 's/^[^]]*\] //' || true)
        fi
        [ -n "$lines" ] || continue
        echo "$name log: $(printf '%s\n' "$lines" | wc -l) warning/error lines; most frequent:"
        printf '%s\n' "$lines" | cut -c1-200 | sort | uniq -c | sort -rn | head -5
    done
}
summary=$(log_summary) || true
if [ -n "$summary" ]; then
    { echo; echo "$summary"; } | tee -a "$HEADER_FILE"
fi

if [ ! -s "$STATUS_FILE" ]; then   # only the soak ran
    echo
    [ -f "$RESULTS_DIR/$TS.soak.csv" ] && echo "soak:     $RESULTS_DIR/$TS.soak.csv"
    exit 0
fi
CSV="$RESULTS_DIR/$TS.csv"
echo
{ echo; echo "results ($n measurements; median of $REPEATS by TPS, large: by elapsed time)"; echo; } | tee -a "$HEADER_FILE"
python3 "$BENCHPY" report --raw "$STATUS_FILE" --csv "$CSV" --runs-csv "$RESULTS_DIR/$TS.runs.csv" \
    --table "$HEADER_FILE"
if grep -q '"status": "error"' "$STATUS_FILE"; then
    echo
    echo "some measurements failed; see the note column and $RESULTS_DIR/$TS.logs/"
fi
# The plot of the point workload (manypools is a line of it): TPS by clients, one line a method.
PLOT=""
if grep -q '"workload": "point"' "$STATUS_FILE"; then
    PLOT="$RESULTS_DIR/$TS.point.svg"
    python3 "$BENCHPY" plot "$CSV" "$PLOT" --workload point \
        --subtitle "$(sed -n 's/^date: *//p' "$HEADER_FILE" | head -1) · dbpool $(sed -n 's/^dbpool: *//p' "$HEADER_FILE" | head -1 | cut -d';' -f1) · $(nproc) CPUs · REPEATS=$REPEATS" ||
        { echo "bench: the plot failed" >&2; PLOT=""; }
fi
echo
echo "CSV:      $CSV"
[ -n "$PLOT" ] && echo "plot:     $PLOT"
echo "all runs: $RESULTS_DIR/$TS.runs.csv"
echo "header and table: $HEADER_FILE"
[ -f "$RESULTS_DIR/$TS.soak.csv" ] && echo "soak:     $RESULTS_DIR/$TS.soak.csv"
exit 0
