#!/usr/bin/env bash
# dbpool's test command.  Run as root (sudo ./scripts/test.sh), from any directory.
#
#  1. installs the packages it needs (PostgreSQL 15, its server headers, IPC::Run, a compiler)
#     when some are missing, and tries to install the optional ones (prometheus, for
#     test/t/041_prometheus.pl, which skips without it);
#  2. copies the source tree to a fresh build directory owned by postgres, builds there as
#     postgres with warnings as errors, installs as root;
#  3. runs, as postgres, `make installcheck`: the pg_regress suite (sql/, expected/; its own
#     temporary instance on port 25431), then the TAP suite (test/t/*.pl, servers on fixed
#     ports 25500-25709 and Unix sockets).  The two suites run as two `make installcheck`
#     invocations (the other suite switched off) so that one failing does not hide the other;
#  4. on failure prints regression.diffs and the tails of the logs of the failing TAP files;
#  5. ends with one line "N passed, M failed": N and M count pg_regress tests plus TAP
#     assertions; a failure that is not an assertion (build, install, a suite that cannot
#     start, a TAP file that dies or exits non-zero) counts as one failure.
#
# Exit status 0 only when everything passed.
#
# Environment: PG_CONFIG (default /usr/lib/postgresql/15/bin/pg_config),
#   DBPOOL_KEEP_BUILD=1 keeps the build directory even on success,
#   DBPOOL_REGRESS_TIMEOUT / DBPOOL_TAP_TIMEOUT (seconds, defaults 300 / 900) bound each suite,
#   PG_TEST_TIMEOUT_DEFAULT (default 60) bounds each wait inside a TAP test,
#   PROVE_TESTS (e.g. "test/t/003_cancel.pl") runs a subset of the TAP files.
set -uo pipefail

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

passed=0
failed=0
build=""

finish() {
    local status=0
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ] || status=1
    if [ -n "$build" ] && [ -d "$build" ]; then
        dbpool_stop_servers_under "$build"
        if [ "$status" -eq 0 ] && [ "${DBPOOL_KEEP_BUILD:-0}" != 1 ]; then
            rm -rf "$build"
        else
            echo "build directory kept: $build"
        fi
    fi
    echo "$passed passed, $failed failed"
    exit "$status"
}

# A step that is not a test (build, install) failed: count it and stop.
abort() {
    echo "FAILED: $*"
    failed=$((failed + 1))
    finish
}

dbpool_require_root
dbpool_install_packages || abort "package installation"
dbpool_install_optional_packages
[ -x "$PG_CONFIG" ] || abort "no pg_config at $PG_CONFIG"

# Don't let the caller's libpq environment steer the test servers and clients.
for v in $(compgen -e); do
    case "$v" in PG[A-Z]*) [[ "$v" == *_* ]] || unset "$v" ;; esac
done
export PG_TEST_TIMEOUT_DEFAULT=${PG_TEST_TIMEOUT_DEFAULT:-60}

build=$(dbpool_make_build_dir dbpool-test) || abort "could not prepare a build directory"
trap 'dbpool_stop_servers_under "$build"; echo "interrupted"; exit 130' INT TERM

dbpool_build "$build" || abort "build (see the compiler output above)"
dbpool_install "$build" || abort "make install"

cd "$build" || abort "cd $build"

# Run one suite as postgres, bounded in time, output kept in $build/<name>.out.
run_suite() {
    local name=$1 limit=$2
    shift 2
    dbpool_log "$name"
    timeout -k 30 "$limit" runuser -u postgres -- \
        make installcheck PG_CONFIG="$PG_CONFIG" "$@" </dev/null 2>&1 | tee "$build/$name.out"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "FAILED: $name did not finish within ${limit}s"
    return "$rc"
}

# --- pg_regress -----------------------------------------------------------------------
run_suite pg_regress "${DBPOOL_REGRESS_TIMEOUT:-300}" TAP_TESTS=
regress_rc=$?
r_pass=0 r_fail=0
if line=$(grep -E '^ *All [0-9]+ tests passed' "$build/pg_regress.out"); then
    r_pass=$(sed -E 's/^ *All ([0-9]+) tests.*/\1/' <<<"$line")
elif line=$(grep -E '^ *[0-9]+ of [0-9]+ tests (failed|passed)' "$build/pg_regress.out"); then
    read -r a b < <(sed -E 's/^ *([0-9]+) of ([0-9]+) tests (failed|passed).*/\1 \2 \3/' <<<"$line" |
                    awk '{ if ($3 == "failed") print $2 - $1, $1; else print $1, 0 }')
    r_pass=$a r_fail=$b
fi
[ "$regress_rc" -ne 0 ] && [ "$r_fail" -eq 0 ] && r_fail=1   # could not run at all
passed=$((passed + r_pass))
failed=$((failed + r_fail))
if [ "$regress_rc" -ne 0 ]; then
    if [ -s "$build/regression.diffs" ]; then
        echo "---- regression.diffs (first 400 lines) ----"
        head -n 400 "$build/regression.diffs"
    fi
    for f in "$build"/tmp_regress/log/*.log; do
        [ -f "$f" ] || continue
        echo "---- tail of $f ----"
        tail -n 60 "$f"
    done
fi

# --- TAP ------------------------------------------------------------------------------
tap_args=(REGRESS= PROVE_FLAGS=--timer)
[ -n "${PROVE_TESTS:-}" ] && tap_args+=(PROVE_TESTS="$PROVE_TESTS")
run_suite tap "${DBPOOL_TAP_TIMEOUT:-900}" "${tap_args[@]}"
tap_rc=$?
t_total=0 t_fail=0
if line=$(grep -E '^Files=[0-9]+, Tests=[0-9]+' "$build/tap.out"); then
    t_total=$(sed -E 's/^Files=[0-9]+, Tests=([0-9]+).*/\1/' <<<"$line")
fi
# prove's "Test Summary Report" names each failing file:
#   test/t/003_cancel.pl (Wstat: 256 Tests: 12 Failed: 2)
# A file that failed without a failed assertion (died, bad plan) counts as one failure.
failing_files=()
while read -r file nfail; do
    failing_files+=("$file")
    if [ "$nfail" -gt 0 ]; then
        t_fail=$((t_fail + nfail))
    else
        t_fail=$((t_fail + 1))
        t_total=$((t_total + 1))
    fi
done < <(sed -nE 's/^(\S+\.pl) +\(Wstat: .*Tests: [0-9]+ +Failed: ([0-9]+)\).*/\1 \2/p' "$build/tap.out")
if [ "$tap_rc" -ne 0 ] && [ "$t_fail" -eq 0 ]; then   # prove did not run, or timed out
    t_fail=1
    t_total=$((t_total + 1))
fi
passed=$((passed + t_total - t_fail))
failed=$((failed + t_fail))
if [ "$tap_rc" -ne 0 ]; then
    if [ ${#failing_files[@]} -eq 0 ]; then   # don't know which: show them all
        for f in "$build"/test/t/*.pl; do failing_files+=("test/t/$(basename "$f")"); done
    fi
    for file in "${failing_files[@]}"; do
        t=$(basename "$file" .pl)
        for log in "$build"/tmp_check/log/regress_log_"$t" "$build"/tmp_check/log/"$t"_*.log; do
            [ -f "$log" ] || continue
            echo "---- tail of $log ----"
            tail -n 80 "$log"
        done
    done
fi

echo "pg_regress: $r_pass passed, $r_fail failed; TAP: $((t_total - t_fail)) passed, $t_fail failed"
finish
