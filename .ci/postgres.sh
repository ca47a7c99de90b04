#!/usr/bin/env bash
# A throwaway PostgreSQL for the deploy tests (garden_assets_tests/test_deploy.py) and for trying
# deploy/dagster.yaml on one machine. Idempotent: run it as often as you like.
#
#   source .ci/postgres.sh           # from .ci/run or a shell: starts/reuses the server, exports the vars
#   eval "$(bash .ci/postgres.sh)"   # same, for callers that prefer eval
#   bash .ci/postgres.sh stop        # stop the server this script started (data dir is kept)
#   bash .ci/postgres.sh env         # print the export lines only (no install, no start)
#
# What it does (as root in a fresh Debian container/VM, or as a normal user when PostgreSQL is installed):
#   1. installs Debian's `postgresql` with apt-get if no initdb/pg_ctl is found (root or sudo needed);
#   2. if something already answers on 127.0.0.1:$GARDEN_PG_PORT, reuses it (our own data dir, a Debian
#      cluster via the postgres user, or any server where garden/garden can log in);
#      otherwise initialises $GARDEN_PG_DIR/data (first time only) and starts it with pg_ctl, as the
#      `postgres` OS user when run as root. GARDEN_PG_MODE=cluster uses `pg_ctlcluster <ver> main` instead;
#   3. creates role `garden` (password `garden`) and database `garden` owned by it, if missing;
#   4. prints the environment to stdout as `export NAME=value` lines (all progress goes to stderr):
#        DAGSTER_PG_HOST DAGSTER_PG_PORT DAGSTER_PG_USER DAGSTER_PG_PASSWORD DAGSTER_PG_DB GARDEN_TEST_PG_DSN
#
# Knobs (environment): GARDEN_PG_PORT (5432), GARDEN_PG_DIR (${TMPDIR:-/tmp}/garden-postgres-$PORT),
# GARDEN_PG_USER / GARDEN_PG_PASSWORD / GARDEN_PG_DB (garden), GARDEN_PG_MODE (temp | cluster).
# The temp server runs with fsync off: it is for tests, never for data you want to keep.

# Sourced: run this file in a child bash (so `set -e`/`exit` never touch the caller's shell), then
# export what it printed. Returns non-zero, exporting nothing, when the server could not be prepared.
# Always "start": a sourced file sees the caller's positional arguments, which are not meant for us.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    if _garden_pg_exports="$(bash "${BASH_SOURCE[0]}" start)"; then
        eval "$_garden_pg_exports"
        unset _garden_pg_exports
        return 0
    else
        unset _garden_pg_exports
        echo "postgres.sh: PostgreSQL is not available (see the messages above)" >&2
        return 1
    fi
fi

set -euo pipefail

PORT="${GARDEN_PG_PORT:-5432}"
HOST=127.0.0.1
DB_USER="${GARDEN_PG_USER:-garden}"
DB_PASSWORD="${GARDEN_PG_PASSWORD:-garden}"
DB_NAME="${GARDEN_PG_DB:-garden}"
MODE="${GARDEN_PG_MODE:-temp}"
DIR="${GARDEN_PG_DIR:-${TMPDIR:-/tmp}/garden-postgres-$PORT}"
DATA="$DIR/data"
ACTION="${1:-start}"

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_env() {
    cat <<EOF
export DAGSTER_PG_HOST=$HOST
export DAGSTER_PG_PORT=$PORT
export DAGSTER_PG_USER=$DB_USER
export DAGSTER_PG_PASSWORD=$DB_PASSWORD
export DAGSTER_PG_DB=$DB_NAME
export GARDEN_TEST_PG_DSN=postgresql://$DB_USER:$DB_PASSWORD@$HOST:$PORT/$DB_NAME
EOF
}

is_root() { [[ "$(id -u)" == 0 ]]; }

# Run a command as root: directly, or through sudo when available.
as_root() {
    if is_root; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

# Run a command as the OS user that owns the server: `postgres` when we are root (the server refuses
# to run as root), else ourselves. cd / first: postgres may not be allowed into root's cwd.
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && { echo "$d"; return 0; }
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    return 1
}

install_postgres() {
    log "PostgreSQL not found: installing Debian's postgresql with apt-get"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install PostgreSQL (server + client) yourself"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql postgresql-client >&2
}

ready() {  # something accepts connections on 127.0.0.1:$PORT
    "$BIN/pg_isready" -q -h "$HOST" -p "$PORT" -t 3 >/dev/null 2>&1
}

garden_can_login() {
    PGPASSWORD="$DB_PASSWORD" PGCONNECT_TIMEOUT=5 "$BIN/psql" -X -q -h "$HOST" -p "$PORT" -U "$DB_USER" \
        -d "$DB_NAME" -tAc 'select 1' >/dev/null 2>&1
}

# The SQL that makes role + database exist (idempotent; the password is (re)set every time).
bootstrap_sql() {
    cat <<SQL
SELECT format('CREATE ROLE %I LOGIN', :'u') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u')
\\gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'u', :'p')
\\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'d')
\\gexec
SQL
}

# bootstrap SOCKET_DIR: connect as the postgres superuser over a unix socket and create role/db.
bootstrap() {
    local sock="$1"
    bootstrap_sql | as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$PORT" -U postgres -d postgres \
        -v u="$DB_USER" -v p="$DB_PASSWORD" -v d="$DB_NAME" >&2
}

our_server_running() {
    [[ -f "$DATA/postmaster.pid" ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start_temp_server() {
    mkdir -p "$DIR"
    if is_root; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" --shell /bin/sh postgres
        chown postgres: "$DIR"
        chmod 700 "$DIR"
    fi
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        log "initialising $DATA"
        as_pg "$BIN/initdb" -D "$DATA" -U postgres --encoding=UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        cat >>"$DATA/postgresql.conf" <<CONF

# --- garden test server (.ci/postgres.sh): local TCP + a private socket dir; durability off (tests only)
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = '$DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
CONF
    fi
    log "starting PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on $HOST:$PORT (data: $DATA)"
    # 9>&-: the server must not inherit the lock descriptor (it would hold the lock for its lifetime).
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start >/dev/null 9>&- \
        || { tail -n 20 "$DIR/server.log" >&2 || true; die "pg_ctl start failed (log: $DIR/server.log)"; }
}

# The Debian cluster listening on $PORT, as "VERSION NAME", if any (pg_lsclusters comes with the package).
debian_cluster_on_port() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters --no-header 2>/dev/null | awk -v p="$PORT" '$3 == p {print $1, $2; exit}' | grep .
}

case "$ACTION" in
    env)
        print_env
        exit 0
        ;;
    stop)
        BIN="$(pg_bindir)" || die "PostgreSQL is not installed"
        if our_server_running; then
            as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
        else
            log "no server of ours running in $DATA"
        fi
        exit 0
        ;;
    start) ;;
    *) die "unknown action '$ACTION' (start | stop | env)" ;;
esac

BIN="$(pg_bindir)" || { install_postgres; BIN="$(pg_bindir)" || die "PostgreSQL still not found after apt-get"; }

# One caller at a time (two CI steps sourcing this together must not both run initdb).
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock -w 120 9 || die "could not lock $DIR.lock (another postgres.sh still running?)"

if ready; then
    if our_server_running; then
        log "reusing the server in $DATA"
        bootstrap "$DIR"
    elif is_root && cluster="$(debian_cluster_on_port)"; then
        log "reusing Debian cluster $cluster on port $PORT"
        bootstrap /var/run/postgresql
    elif garden_can_login; then
        log "reusing the server on $HOST:$PORT (user $DB_USER can log in)"
    else
        die "a server answers on $HOST:$PORT but $DB_USER cannot log in and it is not ours: set GARDEN_PG_PORT"
    fi
elif [[ "$MODE" == cluster ]]; then
    cluster="$(debian_cluster_on_port)" || die "GARDEN_PG_MODE=cluster but no Debian cluster is configured on port $PORT"
    log "starting Debian cluster $cluster with pg_ctlcluster"
    as_root pg_ctlcluster ${cluster} start >&2 9>&-
    bootstrap /var/run/postgresql
else
    start_temp_server
    bootstrap "$DIR"
fi

for _ in $(seq 1 30); do
    garden_can_login && break
    sleep 1
done
garden_can_login || die "$DB_USER still cannot log in to $HOST:$PORT/$DB_NAME"
log "ready: postgresql://$DB_USER:***@$HOST:$PORT/$DB_NAME"
print_env
