#!/usr/bin/env bash
# An MLflow tracking server for many concurrent jobs (instead of each job opening the sqlite file).
#
#   scripts/mlflow_server.sh [results_dir]                serve in the foreground (Ctrl-C or SIGTERM stops it)
#   scripts/mlflow_server.sh stop|status                  the server of PORT, from its pid file in STATE_DIR
#   scripts/mlflow_server.sh postgres start|stop|status   the local PostgreSQL that STORE=postgres uses
#
# then: python -m harness sweep ... tracking.uri=http://<host>:5000
#
# One machine:  scripts/mlflow_server.sh                    (sqlite under results/, loopback, no auth)
# A cluster:    STORE=postgres HOST=0.0.0.0 ARTIFACTS=/shared/mlruns MLFLOW_ADMIN_PASSWORD=... \
#                 scripts/mlflow_server.sh                  (PostgreSQL, shared artifacts, basic-auth)
#               jobs: export MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=... (docs/sweeps.md)
#
# Settings (environment):
#   HOST=127.0.0.1 PORT=5000 WORKERS=4
#   STORE=sqlite|postgres   sqlite: <results_dir>/mlflow.db; postgres: a local PostgreSQL, started when needed
#   BACKEND_URI=...         an existing database instead (postgresql://user@host:port/db; its password
#                           from PGPASSWORD or ~/.pgpass, never on the command line)
#   ARTIFACTS=<dir|URI>     where artifacts go (default <results_dir>/mlruns); on a cluster, a shared directory
#   AUTH=1                  MLflow's basic-auth on loopback too; it is always on for any other HOST (1|true
#                           or 0|false; anything else is refused)
#   MLFLOW_ADMIN_PASSWORD   the admin's password (required with auth; MLFLOW_ADMIN_USER, default admin)
#   AUTH_CACHE_TTL=60       seconds a worker trusts a checked password (0: hash every request, ~3x slower;
#                           a changed or deleted password still works for up to this long on other workers)
#   ALLOW_INSECURE=1        serve a non-loopback HOST with AUTH=0 (warned; anyone who can reach it can delete runs)
#   ALLOWED_HOSTS=...       Host headers the server accepts (MLflow's --allowed-hosts), e.g. node1:5000
#   STATE_DIR               owner-only folder for the auth config, the database password and the Flask
#                           secret (default ~/.config/pruning-harness; never under results/)
#   PGDATA PGPORT=5433      the local PostgreSQL's data folder and port (it listens on 127.0.0.1 only)
#   DRY_RUN=1               check the settings, print the server command (no secrets) and exit
set -euo pipefail
PYTHON="${PYTHON:-python}"
STATE_DIR="${STATE_DIR:-${HOME:-/root}/.config/pruning-harness}"
PGPORT="${PGPORT:-5433}"
if [ "$(id -u)" = 0 ]; then  # initdb refuses root: the cluster belongs to the postgres user
    PGDATA="${PGDATA:-/var/lib/postgresql/pruning-harness}"
else
    PGDATA="${PGDATA:-$STATE_DIR/pgdata}"
fi
PG_PASSWORD_FILE="$STATE_DIR/pg_password"

die() { echo "mlflow_server.sh: $*" >&2; exit 2; }

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }; done
    command -v pg_ctl >/dev/null && { dirname "$(command -v pg_ctl)"; return; }
    die "PostgreSQL is not installed (apt-get install postgresql), or give BACKEND_URI=postgresql://..."
}

secret_file() {  # an owner-only file holding a random secret, created once
    local file="$1"
    umask 077
    mkdir -p "$STATE_DIR"
    chmod 700 "$STATE_DIR"
    [ -s "$file" ] || "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$file"
    chmod 600 "$file"
}

postgres_start() {
    local bin
    bin="$(pg_bin)"
    secret_file "$PG_PASSWORD_FILE"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        mkdir -p "$PGDATA"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDATA"
        chmod 700 "$PGDATA"
        # Local (socket) connections only for the owner: the socket lives in the 0700 data folder.
        as_postgres "$bin/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    fi
    if ! as_postgres "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        as_postgres "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$PGDATA -c max_connections=400" >/dev/null
    fi
    # The role and the two databases (runs; MLflow's users and permissions), created once.
    # The password goes in on stdin, never in argv (which `ps` shows); it is URL-safe base64, no quotes.
    as_postgres "$bin/psql" -h "$PGDATA" -p "$PGPORT" -U postgres -d postgres -qtA -v ON_ERROR_STOP=1 >/dev/null <<SQL
SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mlflow') \\gexec
ALTER ROLE mlflow PASSWORD '$(cat "$PG_PASSWORD_FILE")';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'mlflow') \\gexec
SELECT 'CREATE DATABASE mlflow_auth OWNER mlflow' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'mlflow_auth') \\gexec
SQL
    echo "PostgreSQL up on 127.0.0.1:$PGPORT (data $PGDATA)" >&2
}

postgres_stop() {
    local bin
    bin="$(pg_bin)"
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
}

PID_FILE="$STATE_DIR/mlflow_server-${PORT:-5000}.pid"  # the supervisor's (scripts/supervise.py), per port
alive() {  # a process that exists and has not ended (a zombie waiting for its parent has)
    kill -0 "$1" 2>/dev/null && ! ps -o stat= -p "$1" 2>/dev/null | grep -q '^Z'
}
if [ "${1:-}" = stop ] || [ "${1:-}" = status ]; then
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [ -z "$pid" ] || ! alive "$pid"; then
        echo "mlflow server on port ${PORT:-5000}: not running" >&2
        [ "$1" = stop ] && exit 0 || exit 3
    fi
    if [ "$1" = status ]; then
        echo "mlflow server on port ${PORT:-5000}: running (supervisor pid $pid)" >&2
        exit 0
    fi
    kill -TERM "$pid"  # the supervisor stops the server's whole process group, then exits
    for _ in $(seq 150); do alive "$pid" || exit 0; sleep 0.1; done
    die "the supervisor (pid $pid) did not stop within 15 s"
fi

if [ "${1:-}" = postgres ]; then
    case "${2:-}" in
        start) postgres_start ;;
        stop) postgres_stop ;;
        status) as_postgres "$(pg_bin)/pg_ctl" -D "$PGDATA" status ;;
        *) die "usage: scripts/mlflow_server.sh postgres start|stop|status" ;;
    esac
    exit 0
fi

RESULTS="${1:-results}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
STORE="${STORE:-sqlite}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
ARTIFACTS="${ARTIFACTS:-$RESULTS/mlruns}"

case "${AUTH-}" in  # only the documented words: AUTH=true used to switch auth OFF on loopback, silently
    "" | 0 | 1) ;;
    true) AUTH=1 ;;
    false) AUTH=0 ;;
    *) die "AUTH must be 1 (or true) for basic-auth, or 0 (or false) without it; got AUTH=$AUTH" ;;
esac
case "$HOST" in
    127.0.0.1 | localhost | ::1) LOOPBACK=1 ;;
    *) LOOPBACK=0 ;;
esac
if [ "$LOOPBACK" = 0 ]; then
    if [ "${AUTH:-1}" = 0 ]; then
        [ "${ALLOW_INSECURE:-0}" = 1 ] || die "HOST=$HOST without auth lets anyone on the network read, write and delete runs; set MLFLOW_ADMIN_PASSWORD (auth), or ALLOW_INSECURE=1 on a network you trust"
        echo "warning: serving $HOST:$PORT WITHOUT authentication (ALLOW_INSECURE=1)" >&2
        AUTH=0
    else
        AUTH=1
    fi
fi
AUTH="${AUTH:-0}"

if [ -n "${BACKEND_URI:-}" ]; then
    case "$BACKEND_URI" in  # in the user part or the query (?password=): it would show in the banner and in ps
        *://*:*@* | *[?\&]password=*) die "BACKEND_URI carries a password; drop it from the URI and export PGPASSWORD (or use ~/.pgpass)" ;;
    esac
    STORE_URI="$BACKEND_URI"
    AUTH_DB="${AUTH_DB_URI:-$BACKEND_URI}"
elif [ "$STORE" = postgres ]; then
    [ "${DRY_RUN:-0}" = 1 ] || postgres_start
    STORE_URI="postgresql+psycopg2://mlflow@127.0.0.1:$PGPORT/mlflow"
    AUTH_DB="postgresql+psycopg2://mlflow@127.0.0.1:$PGPORT/mlflow_auth"
    [ "${DRY_RUN:-0}" = 1 ] || PGPASSWORD="$(cat "$PG_PASSWORD_FILE")"
    export PGPASSWORD  # libpq reads it: the password never appears on a command line or in a URI
elif [ "$STORE" = sqlite ]; then
    STORE_URI="sqlite:///$RESULTS/mlflow.db"
    AUTH_DB="sqlite:///$STATE_DIR/basic_auth.db"
else
    die "STORE=$STORE: use STORE=sqlite or STORE=postgres (or BACKEND_URI=postgresql://...)"
fi

ARGS=(--backend-store-uri "$STORE_URI" --artifacts-destination "$ARTIFACTS" --host "$HOST" --port "$PORT"
    --workers "${WORKERS:-4}")
[ -n "${ALLOWED_HOSTS:-}" ] && ARGS+=(--allowed-hosts "$ALLOWED_HOSTS")
if [ "$AUTH" = 1 ]; then
    [ -n "${MLFLOW_ADMIN_PASSWORD:-}" ] || die "auth is on (HOST=$HOST${AUTH:+, AUTH=$AUTH}): set MLFLOW_ADMIN_PASSWORD (the admin's password), e.g. read -rs MLFLOW_ADMIN_PASSWORD; export MLFLOW_ADMIN_PASSWORD"
    [ "${#MLFLOW_ADMIN_PASSWORD}" -ge 12 ] || die "MLFLOW_ADMIN_PASSWORD must have at least 12 characters (MLflow's rule for every user)"
    "$PYTHON" -c "import flask_wtf" 2>/dev/null || die "auth needs mlflow[auth]: pip install -e '.[server]'"
    ARGS+=(--app-name harness-auth)  # MLflow's basic-auth behind harness/server_auth.py
    if [ "${DRY_RUN:-0}" != 1 ]; then
        secret_file "$STATE_DIR/flask_secret"
        export MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$STATE_DIR/flask_secret")"
        export MLFLOW_AUTH_CONFIG_PATH="$STATE_DIR/basic_auth.ini"
        export HARNESS_LOGIN_FAILURES="$STATE_DIR/login_failures.db"  # refused logins, shared by the workers
        umask 077
        cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = $AUTH_DB
admin_username = ${MLFLOW_ADMIN_USER:-admin}
admin_password = $MLFLOW_ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${AUTH_CACHE_TTL:-60}
INI
        chmod 600 "$MLFLOW_AUTH_CONFIG_PATH"
        # MLflow creates the admin only once: a changed MLFLOW_ADMIN_PASSWORD is written to the auth database
        "$PYTHON" "$(dirname "$0")/rotate_admin.py" "$AUTH_DB" "${MLFLOW_ADMIN_USER:-admin}" ||
            die "could not set the admin's password in the auth database $AUTH_DB"
    fi
fi
unset MLFLOW_ADMIN_PASSWORD

echo "mlflow server: store $STORE_URI, artifacts $ARTIFACTS, http://$HOST:$PORT, auth $([ "$AUTH" = 1 ] && echo on || echo off)" >&2
if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "$PYTHON -m mlflow server ${ARGS[*]}"
    exit 0
fi
# Supervised: the server's uvicorn workers and job runner are stopped with it, whichever way it is stopped
# (SIGTERM, SIGINT, even SIGKILL of this pid), and a taken port is refused at once (scripts/supervise.py).
(umask 077 && mkdir -p "$STATE_DIR")
exec "$PYTHON" "$(dirname "$0")/supervise.py" --pid-file "$PID_FILE" -- "$PYTHON" -m mlflow server "${ARGS[@]}"
