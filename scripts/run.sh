#!/usr/bin/env bash
# scripts/run.sh — run the maas-authz service locally (THE run command).
#
# 1. PostgreSQL: scripts/ensure-postgres.sh finds or starts a server.
# 2. Database: creates database maas_authz there if missing (with psql) and
#    exports DATABASE_URL pointing at it. If you exported DATABASE_URL
#    yourself, it is used exactly as given (nothing is created).
# 3. exec cargo run --release --bin maas-authz -- serve [ARGS...]
#    with MAAS_AUTHZ_POLICY_PATH defaulting to examples/policy.
# All arguments are passed to `maas-authz serve` (so `scripts/run.sh --help`
# shows the service's options).
#
# Environment:
#   DATABASE_URL              database to use as-is (default: <local server>/maas_authz)
#   MAAS_AUTHZ_DB_NAME        database name to create/use (default maas_authz)
#   MAAS_AUTHZ_POLICY_PATH    policy directory (default: <repo>/examples/policy)
#   MAAS_AUTHZ_GRPC_ADDR      shown in the banner, read by the service (default 0.0.0.0:50051)
#   MAAS_AUTHZ_METRICS_ADDR   shown in the banner, read by the service (default 0.0.0.0:9090)
#   plus everything ensure-postgres.sh reads.

set -euo pipefail

SCRIPT_NAME="run.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# psql_admin URL SQL: run one SQL statement, print unaligned tuples.
psql_admin() {
    env -u PGPASSWORD PGCONNECT_TIMEOUT=10 "$PSQL" -w -X -q -A -t -v ON_ERROR_STOP=1 \
        -d "$1" -c "$2" </dev/null
}

db_exists() {
    [[ "$(psql_admin "$1" "select 1 from pg_database where datname = '$2'")" == 1 ]]
}

ensure_database() {
    local admin_url="$1" db="$2"
    if [[ -n "${MAAS_AUTHZ_PG_BINDIR:-}" ]]; then
        PATH="$PATH:$MAAS_AUTHZ_PG_BINDIR"
    fi
    PSQL="$(pg_tool psql)" ||
        die "psql not found; install the PostgreSQL client (Debian/Ubuntu: apt-get install postgresql-client) or set DATABASE_URL to an existing database"
    if db_exists "$admin_url" "$db"; then
        log "database $db exists"
        return 0
    fi
    log "creating database $db"
    if ! psql_admin "$admin_url" "create database \"$db\"" >/dev/null; then
        # Lost a race with a concurrent run.sh? Then it exists now.
        db_exists "$admin_url" "$db" || die "could not create database $db on $(redact_url "$admin_url")"
    fi
}

main() {
    cd -- "$REPO_ROOT"
    ensure_cargo

    local user_db_url="${DATABASE_URL:-}" admin_url db_url
    local db="${MAAS_AUTHZ_DB_NAME:-maas_authz}"
    [[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] ||
        die "MAAS_AUTHZ_DB_NAME must be a lower-case SQL identifier ([a-z_][a-z0-9_]*), got '$db'"

    admin_url="$(bash "$REPO_ROOT/scripts/ensure-postgres.sh")"
    [[ -n "$admin_url" ]] || die "ensure-postgres.sh printed no URL"
    if [[ -n "$user_db_url" ]]; then
        log "using DATABASE_URL as given"
        db_url="$user_db_url"
    else
        ensure_database "$admin_url" "$db"
        db_url="$(url_with_db "$admin_url" "$db")"
    fi
    export DATABASE_URL="$db_url"
    export MAAS_AUTHZ_POLICY_PATH="${MAAS_AUTHZ_POLICY_PATH:-$REPO_ROOT/examples/policy}"

    log "==> starting maas-authz (cargo run --release; the first build takes a while)"
    log "  database:   $(redact_url "$DATABASE_URL")"
    log "  policy:     $MAAS_AUTHZ_POLICY_PATH"
    log "  gRPC:       ${MAAS_AUTHZ_GRPC_ADDR:-0.0.0.0:50051} (ext_authz + key API)"
    log "  metrics:    ${MAAS_AUTHZ_METRICS_ADDR:-0.0.0.0:9090}"
    if [[ $# -gt 0 ]]; then
        log "  serve args: $* (may override the addresses above)"
    fi
    exec cargo run --release --bin maas-authz -- serve "$@"
}

main "$@"
