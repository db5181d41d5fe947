# Shared by scripts/test.sh and scripts/demo.sh: package installation, a throwaway build
# directory owned by postgres, build and install.  Source it; it defines functions only
# (plus DBPOOL_ROOT, PG_CONFIG and DBPOOL_COPT).
#
# PostgreSQL refuses to run as root, so everything that starts a server runs as the
# `postgres` OS user, from a copy of the source tree that user owns.

DBPOOL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
DBPOOL_COPT=${DBPOOL_COPT:--Wall -Wextra -Werror -Wno-unused-parameter}
DBPOOL_PACKAGES=(postgresql-15 postgresql-server-dev-15 libpq-dev postgresql-contrib
                 libipc-run-perl make gcc)

dbpool_log() { printf '==> %s\n' "$*"; }
dbpool_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

dbpool_require_root() {
    [ "$(id -u)" -eq 0 ] ||
        dbpool_die "run me as root (sudo $0): I install packages and the extension, then run PostgreSQL as the postgres user"
}

# The packages among the arguments that are not installed, one a line.
dbpool_missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            echo "$p"
    done
}

# One apt-get update and one apt-get install, only when something is missing.
dbpool_install_packages() {
    local missing
    mapfile -t missing < <(dbpool_missing_packages "${DBPOOL_PACKAGES[@]}")
    if [ ${#missing[@]} -eq 0 ]; then
        dbpool_log "packages: all present"
        return 0
    fi
    dbpool_log "packages: installing (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update </dev/null || return 1
    apt-get install -y "${DBPOOL_PACKAGES[@]}" </dev/null
}

# Packages some tests use when they can (test/t/041_prometheus.pl: Debian's prometheus, which
# brings prometheus and promtool).  Installed when missing; a failure is logged, not fatal:
# those tests then skip, saying so.
DBPOOL_OPTIONAL_PACKAGES=(prometheus)

dbpool_install_optional_packages() {
    local missing
    mapfile -t missing < <(dbpool_missing_packages "${DBPOOL_OPTIONAL_PACKAGES[@]}")
    [ ${#missing[@]} -eq 0 ] && return 0
    dbpool_log "optional packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" </dev/null; then
        apt-get update </dev/null &&
            apt-get install -y --no-install-recommends "${missing[@]}" </dev/null ||
            dbpool_log "optional packages: could not install ${missing[*]}; the tests that need them skip"
    fi
    return 0
}

# Copy the source tree (tracked and untracked-but-not-ignored files; no build or test
# leftovers) into DEST.
dbpool_copy_tree() {
    local dest=$1
    if command -v git >/dev/null 2>&1 &&
       git -c safe.directory="$DBPOOL_ROOT" -C "$DBPOOL_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$DBPOOL_ROOT" &&
         git -c safe.directory="$DBPOOL_ROOT" ls-files -z --cached --others --exclude-standard |
         while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
         tar --null -T - -cf -) | tar -xf - -C "$dest"
    else
        (cd "$DBPOOL_ROOT" &&
         tar --exclude=./.git --exclude=./tmp_check --exclude=./tmp_regress \
             --exclude=./results --exclude=./log --exclude='*.o' --exclude='*.so' \
             --exclude='*.bc' --exclude=./regression.diffs --exclude=./regression.out \
             -cf - .) | tar -xf - -C "$dest"
    fi
}

# Make a fresh build directory owned by postgres holding a copy of the tree; print its path.
dbpool_make_build_dir() {
    local prefix=$1 dir
    dir=$(mktemp -d "/tmp/$prefix.XXXXXX") || return 1
    dbpool_copy_tree "$dir" || return 1
    chown -R postgres:postgres "$dir" || return 1
    chmod 755 "$dir"
    printf '%s\n' "$dir"
}

# Build as postgres (warnings are errors), install as root.
dbpool_build() {
    local dir=$1
    dbpool_log "build in $dir (as postgres)"
    (cd "$dir" && runuser -u postgres -- make -j"$(nproc)" PG_CONFIG="$PG_CONFIG" COPT="$DBPOOL_COPT" </dev/null)
}

dbpool_install() {
    local dir=$1
    dbpool_log "install (as root)"
    make -C "$dir" install PG_CONFIG="$PG_CONFIG" </dev/null
}

# Stop, immediately, every server whose data directory lies under DIR (left behind by a
# killed or failed test run).
dbpool_stop_servers_under() {
    local dir=$1 pidfile bindir
    bindir=$("$PG_CONFIG" --bindir 2>/dev/null) || return 0
    [ -d "$dir" ] || return 0
    find "$dir" -name postmaster.pid -type f 2>/dev/null | while read -r pidfile; do
        runuser -u postgres -- "$bindir/pg_ctl" -D "$(dirname "$pidfile")" -m immediate -w stop \
            >/dev/null 2>&1 || true
    done
}
