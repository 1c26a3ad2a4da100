#!/usr/bin/env bash
# scripts/run.sh — run the maas-authz service locally (THE run command).
#
# 1. PostgreSQL: scripts/ensure-postgres.sh finds or starts a server.
# 2. Database: creates database maas_authz there if missing (with psql) and
#    exports DATABASE_URL pointing at it. If you exported DATABASE_URL
#    yourself, it is used exactly as given (nothing is created).
# 3. A local developer identity: user `developer` in group `premium-users` (the
#    example policy's premium subscription: both models), with a random static
#    token generated once into .local/run/developer-token (mode 0600, reused by
#    later runs; delete the file for a new one) and listed in
#    .local/run/static-tokens.yaml, which MAAS_AUTHZ_STATIC_TOKENS_FILE names.
# 4. cargo build --release, then a banner with the four listeners (all on
#    127.0.0.1 unless you set their variables) and commands to paste into
#    another terminal, then exec cargo run --release --bin maas-authz -- serve
#    [ARGS...] with MAAS_AUTHZ_POLICY_PATH defaulting to examples/policy.
# All arguments are passed to `maas-authz serve` (so `scripts/run.sh --help`
# shows the service's options).
#
# Environment:
#   DATABASE_URL                  database to use as-is (default: <local server>/maas_authz)
#   MAAS_AUTHZ_DB_NAME            database name to create/use (default maas_authz)
#   MAAS_AUTHZ_POLICY_PATH        policy directory (default: <repo>/examples/policy)
#   MAAS_AUTHZ_GRPC_ADDR          gRPC listener (default here 127.0.0.1:50051)
#   MAAS_AUTHZ_HTTP_ADDR          public REST listener (default here 127.0.0.1:8080)
#   MAAS_AUTHZ_INTERNAL_ADDR      internal REST listener (default 127.0.0.1:8081)
#   MAAS_AUTHZ_METRICS_ADDR       metrics listener (default here 127.0.0.1:9090)
#   MAAS_AUTHZ_STATIC_TOKENS_FILE your own static tokens (then no developer token is set up)
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
    # Local runs listen on loopback only; the service's own defaults (0.0.0.0) suit a pod.
    export MAAS_AUTHZ_GRPC_ADDR="${MAAS_AUTHZ_GRPC_ADDR:-127.0.0.1:50051}"
    export MAAS_AUTHZ_HTTP_ADDR="${MAAS_AUTHZ_HTTP_ADDR:-127.0.0.1:8080}"
    export MAAS_AUTHZ_INTERNAL_ADDR="${MAAS_AUTHZ_INTERNAL_ADDR:-127.0.0.1:8081}"
    export MAAS_AUTHZ_METRICS_ADDR="${MAAS_AUTHZ_METRICS_ADDR:-127.0.0.1:9090}"
    local token_file=""
    if [[ -z "${MAAS_AUTHZ_STATIC_TOKENS_FILE:-}" ]]; then
        token_file="$(ensure_developer_identity)"
        export MAAS_AUTHZ_STATIC_TOKENS_FILE="$STATE_DIR/static-tokens.yaml"
    fi

    log "==> building maas-authz (cargo build --release; the first build takes about 12 minutes on 2 cores)"
    cargo build --release --bin maas-authz
    banner "$token_file" "$@"
    exec cargo run --release --bin maas-authz -- serve "$@"
}

# Where run.sh keeps what it generates (ignored by git, like all of .local/).
STATE_DIR="$REPO_ROOT/.local/run"

# ensure_developer_identity: the developer's static token (generated once, then reused) and
# the static-tokens file naming it; prints the token file's path.
ensure_developer_identity() {
    local token_file="$STATE_DIR/developer-token" token=""
    mkdir -p -- "$STATE_DIR"
    if [[ -s "$token_file" ]]; then
        token="$(<"$token_file")"
    fi
    # Any token of 16+ safe characters is kept (yours too); an sk-oai- one would read as a key.
    if [[ ! "$token" =~ ^[A-Za-z0-9._~+/=-]{16,}$ || "$token" == sk-oai-* ]]; then
        token="dev-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
        (umask 077 && printf '%s\n' "$token" >"$token_file")
        log "generated a developer token in $token_file"
    fi
    chmod 600 -- "$token_file"
    (
        umask 077
        printf '%s\n' \
            '# Written by scripts/run.sh on every run from .local/run/developer-token: the local' \
            '# developer identity (MAAS_AUTHZ_STATIC_TOKENS_FILE). Delete the token file for a new token.' \
            "- token: '$token'" \
            '  username: developer' \
            '  groups: [premium-users]' >"$STATE_DIR/static-tokens.yaml"
    )
    chmod 600 -- "$STATE_DIR/static-tokens.yaml"
    printf '%s\n' "$token_file"
}

# local_url ADDR: how a client on this machine reaches listener ADDR (host:port).
local_url() {
    local host="${1%:*}" port="${1##*:}"
    case "$host" in
        0.0.0.0 | 127.0.0.1 | "[::]" | "[::1]" | localhost) host=localhost ;;
    esac
    printf '%s:%s' "$host" "$port"
}

# banner TOKEN_FILE [SERVE_ARGS...]: the listeners and commands to paste into another terminal.
banner() {
    local token_file="$1"
    shift
    local rest grpc
    rest="$(local_url "$MAAS_AUTHZ_HTTP_ADDR")"
    grpc="$(local_url "$MAAS_AUTHZ_GRPC_ADDR")"
    local server_flag=""
    [[ "$grpc" == "localhost:50051" ]] || server_flag=" --server $grpc"
    local db_line="export DATABASE_URL='$DATABASE_URL'"
    if [[ "$(redact_url "$DATABASE_URL")" != "$DATABASE_URL" ]]; then
        db_line="export DATABASE_URL=...   # the URL you gave run.sh (it has a password: not shown)"
    fi
    {
        echo
        echo "==> maas-authz is starting; its log follows. Listeners:"
        echo "  gRPC      $MAAS_AUTHZ_GRPC_ADDR   Envoy ext_authz Check, token meter, Validate, health, reflection"
        echo "  REST      http://$MAAS_AUTHZ_HTTP_ADDR   public key API (/v1/..., also under /maas-api)"
        echo "  internal  http://$MAAS_AUTHZ_INTERNAL_ADDR   validate and cleanup callbacks (no authentication)"
        echo "  metrics   http://$MAAS_AUTHZ_METRICS_ADDR/metrics"
        echo "  database  $(redact_url "$DATABASE_URL")"
        echo "  policy    $MAAS_AUTHZ_POLICY_PATH"
        if [[ $# -gt 0 ]]; then
            echo "  serve args: $* (may override the above)"
        fi
        if [[ -z "$token_file" ]]; then
            echo "  identity  your MAAS_AUTHZ_STATIC_TOKENS_FILE=$MAAS_AUTHZ_STATIC_TOKENS_FILE"
            echo
            return 0
        fi
        echo "  identity  user developer (group premium-users), static token in $token_file"
        echo
        echo "Try it from another terminal (in $REPO_ROOT):"
        echo "  export TOKEN=\$(cat $token_file)"
        echo "  curl -s $rest/v1/models -H \"Authorization: Bearer \$TOKEN\""
        echo "  curl -s -X POST $rest/maas-api/v1/api-keys -H \"Authorization: Bearer \$TOKEN\" \\"
        echo "    -H 'Content-Type: application/json' -d '{\"name\": \"my-api-key\", \"expiresIn\": \"90d\"}'"
        echo "  # a key from the operator CLI (straight to the database), then Check asked as Envoy would:"
        echo "  $db_line"
        echo "  KEY=\$(cargo run -q --release -- keys create --user developer --group premium-users \\"
        echo "          --policy-path examples/policy --expires-in 1d)"
        echo "  cargo run -q --release -- check /qwen3/v1/chat/completions --key \"\$KEY\"$server_flag"
        echo "  cargo run -q --release -- check /qwen3/v1/chat/completions$server_flag   # no key: denied"
        echo
    } >&2
}

main "$@"
