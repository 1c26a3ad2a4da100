#!/usr/bin/env bash
# scripts/bench-envoy.sh — requests/s, latency and CPU per request through Envoy: ext_authz -> maas-authz vs. a
# do-nothing ext_authz in its own process, and what the token meter (ext_proc) adds, for JSON and SSE responses.
#
# Starts, on 127.0.0.1: maas-authz (release build, example policy, a database maas_authz_bench),
# maas-authz-do-nothing (tools/loadgen: the plain generated envoy-types tonic ext_authz server with
# default settings, in its own process, as scripts/bench-check.sh uses it, and beside it a do-nothing
# ext_proc processor), maas-authz-pass-through, the simulator, and Envoys rendered from
# deploy/envoy/envoy.yaml:
#   do-nothing   Check -> maas-authz-do-nothing, the token meter (ext_proc) off on the model routes
#   maas-authz   Check -> maas-authz, the meter off (Check alone)
#   +meter       deploy/envoy/envoy.yaml unchanged: Check, then the token meter
#   none         ext_authz and the meter off (what Envoy and the model server alone cost)
#   floor        Check -> maas-authz as in the Check-alone row, and ext_proc -> the do-nothing
#                processor (maas-authz-do-nothing's ExternalProcessor, which answers "continue" and
#                does no work) for ONE message per request: request headers skipped, the response
#                body BUFFERED. No token meter on ext_proc can cost less: its ratio to Check alone
#                is the ceiling of goal 4 for any meter built on ext_proc.
#   pass-through Check alone, with maas-authz-pass-through (tools/loadgen: a plain hyper reverse
#                proxy that does nothing else) between Envoy and the model server: the floor
#                under a meter that would be a proxy hop on the model route instead of ext_proc.
# Mints one premium key (never printed), checks every gateway answers as it should (200 with the key,
# 401 without it where Check runs, tokens charged by the meter), then drives them with the same wrk
# client, alternating the order of the rows round by round (odd rounds in the order above, even
# rounds reversed). Two requests: POST /simulator/v1/chat/completions with an 8-token JSON reply
# (rows do-nothing, maas-authz, +meter, floor, pass-through) and the same with "stream": true, an
# SSE reply of one event per token between a role and a finish event, then [DONE] (rows
# maas-authz/sse, +meter/sse, floor/sse, pass-through/sse; the meter adds include_usage, so the
# model also sends a usage event, which the meter strips again, as for any client that does not
# ask for usage).
# For each row it reads utime+stime (/proc/<pid>/stat) of that row's Envoy and ext_authz process
# around the run and prints CPU per request of each and of both together (requests: what wrk
# completed; the floor rows count the do-nothing processor's CPU with maas-authz's, the
# pass-through rows the proxy's). At the end: medians over rounds per row, and the ratios of
# goal 3 (maas-authz ÷ do-nothing: throughput, CPU per request of Envoy + ext_authz together, and
# of each), goal 4 (+meter ÷ maas-authz for JSON and for SSE: throughput and CPU per request),
# and floor ÷ maas-authz and pass-through ÷ maas-authz (JSON and SSE).
# With BENCH_REFERENCE_BIN, a second maas-authz (another build, e.g. the last release) serves a
# Check-only Envoy and an Envoy with Check and its meter, measured in the same rounds (rows reference,
# reference+meter and, with SSE, reference+meter/sse), compared with maas-authz and +meter.
# Everything it started is stopped on exit.
#
# Usage:
#   scripts/bench-envoy.sh
#
# Environment:
#   BENCH_DURATION=10s        per measured run (after a 3 s warm-up per gateway)
#   BENCH_CONNECTIONS=32      wrk connections
#   BENCH_THREADS=1           wrk threads
#   BENCH_ROUNDS=2            rounds (each measures every row once; medians are quoted)
#   BENCH_SSE=true            also measure the SSE rows (false: JSON rows only)
#   BENCH_ENVOY_CONCURRENCY=1 worker threads per Envoy (several Envoys share the box)
#   BENCH_PORT_BASE=19000     ports BASE..BASE+18 on 127.0.0.1 must be free
#   BENCH_LIMITS=false        MAAS_AUTHZ_LIMITS_ENABLED for maas-authz: off by default, since the
#                             example policy's premium tier allows 20 requests a minute and the
#                             run would measure 429s (BENCHMARKS.md section 4 measures limits)
#   BENCH_DYNAMIC_METADATA=   MAAS_AUTHZ_DYNAMIC_METADATA for maas-authz (unset: its default, off);
#                             `true` shows what Envoy spends ingesting the identity metadata
#   BENCH_REFERENCE_BIN=      a maas-authz binary to compare with in the same run (a reference
#                             build, e.g. `git worktree add /tmp/ref v0.1.0 && cargo build
#                             --release` there); ports BASE+19..BASE+26 must then be free too
#   BENCH_REFERENCE_DYNAMIC_METADATA=  MAAS_AUTHZ_DYNAMIC_METADATA for the reference (unset: as for
#                             maas-authz); with the same binary as reference, an A/B of the setting
#   BENCH_REFERENCE_METER_SED=  a sed script applied to the reference+meter Envoy's configuration
#                             (an experiment with the meter's Envoy settings, measured beside the
#                             shipped ones in the same rounds)
#   MAAS_AUTHZ_NO_INSTALL=1   never apt-get install wrk
#   plus everything ensure-postgres.sh and ensure-python-venv.sh read.
#
# Client, servers and the Envoys share the machine: on a small box the absolute figures are capped
# by CPU contention; the ratios between rows of the same run, and the CPU per request of each
# process, are the figures that carry over.

set -euo pipefail

SCRIPT_NAME="bench-envoy.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly DURATION="${BENCH_DURATION:-10s}"
readonly CONNECTIONS="${BENCH_CONNECTIONS:-32}"
readonly THREADS="${BENCH_THREADS:-1}"
readonly ROUNDS="${BENCH_ROUNDS:-2}"
readonly LIMITS="${BENCH_LIMITS:-false}"
readonly DYNAMIC_METADATA="${BENCH_DYNAMIC_METADATA:-}"
readonly SSE="${BENCH_SSE:-true}"
readonly ENVOY_CONCURRENCY="${BENCH_ENVOY_CONCURRENCY:-1}"
readonly BASE="${BENCH_PORT_BASE:-19000}"
readonly SIM_PORT=$((BASE + 0))
readonly GRPC_PORT=$((BASE + 1))
readonly NOOP_PORT=$((BASE + 2))
readonly HTTP_PORT=$((BASE + 3))
readonly INTERNAL_PORT=$((BASE + 4))
readonly METRICS_PORT=$((BASE + 5))
readonly AUTHZ_ENVOY_PORT=$((BASE + 6))
readonly AUTHZ_ADMIN_PORT=$((BASE + 7))
readonly NOOP_ENVOY_PORT=$((BASE + 8))
readonly NOOP_ADMIN_PORT=$((BASE + 9))
readonly BARE_ENVOY_PORT=$((BASE + 10))
readonly BARE_ADMIN_PORT=$((BASE + 11))
readonly METER_ENVOY_PORT=$((BASE + 12))
readonly METER_ADMIN_PORT=$((BASE + 13))
readonly FLOOR_ENVOY_PORT=$((BASE + 14))
readonly FLOOR_ADMIN_PORT=$((BASE + 15))
readonly PASS_PORT=$((BASE + 16))
readonly PASS_ENVOY_PORT=$((BASE + 17))
readonly PASS_ADMIN_PORT=$((BASE + 18))
readonly REF_GRPC_PORT=$((BASE + 19))
readonly REF_HTTP_PORT=$((BASE + 20))
readonly REF_INTERNAL_PORT=$((BASE + 21))
readonly REF_METRICS_PORT=$((BASE + 22))
readonly REF_ENVOY_PORT=$((BASE + 23))
readonly REF_ADMIN_PORT=$((BASE + 24))
readonly REF_METER_ENVOY_PORT=$((BASE + 25))
readonly REF_METER_ADMIN_PORT=$((BASE + 26))
readonly REFERENCE_BIN="${BENCH_REFERENCE_BIN:-}"
readonly DB_NAME="maas_authz_bench"
STATE_DIR=""

PIDS=()
NAMES=()

cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    for i in "${!PIDS[@]}"; do
        wait "${PIDS[$i]}" 2>/dev/null || true
    done
    if [[ -n "$STATE_DIR" ]]; then
        rm -rf -- "$STATE_DIR"
    fi
}

start() {
    local name="$1"
    shift
    "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
}

wait_ready() {
    local name="$1" url="$2" expect="${3:-}" i body j
    for ((i = 0; i < 300; i++)); do
        if body="$(curl -fsS --max-time 2 "$url" 2>/dev/null)" && [[ -z "$expect" || "$body" == *"$expect"* ]]; then
            return 0
        fi
        for j in "${!PIDS[@]}"; do
            if ! kill -0 "${PIDS[$j]}" 2>/dev/null; then
                tail -n 30 "$STATE_DIR/${NAMES[$j]}.log" >&2 || true
                die "${NAMES[$j]} exited; its log is above"
            fi
        done
        sleep 0.2
    done
    die "$name not ready at $url within 60 s"
}

ensure_wrk() {
    have wrk && return 0
    if ! is_true "${MAAS_AUTHZ_NO_INSTALL:-}" && is_root && have apt-get; then
        log "installing wrk with apt-get (set MAAS_AUTHZ_NO_INSTALL=1 to prevent this)"
        DEBIAN_FRONTEND=noninteractive apt-get update </dev/null >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk </dev/null >&2
    fi
    have wrk || die "wrk not found; install it (Debian/Ubuntu: apt-get install wrk)"
}

render() { # render OUT LISTEN ADMIN EXT_AUTHZ_PORT
    sed -e "s/{{[A-Z_]*ADDRESS}}/127.0.0.1/g" \
        -e "s/{{LISTEN_PORT}}/$2/g" -e "s/{{ADMIN_PORT}}/$3/g" \
        -e "s/{{EXT_AUTHZ_PORT}}/$4/g" -e "s/{{REST_API_PORT}}/$HTTP_PORT/g" \
        -e "s/{{SIMULATOR_PORT}}/$SIM_PORT/g" \
        "$REPO_ROOT/deploy/envoy/envoy.yaml" >"$1"
    ! grep -q '{{' "$1" || die "unfilled placeholder in $1"
}

status_of() { # status_of URL [KEY [BODY]]
    local auth=()
    [[ -n "${2:-}" ]] && auth=(-H "Authorization: Bearer $2")
    curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" -H 'Content-Type: application/json' \
        -d "${3:-$BODY}" "$1/simulator/v1/chat/completions"
}

# pid_of NAME: the PID of a process start() started.
pid_of() {
    local i
    for i in "${!NAMES[@]}"; do
        [[ "${NAMES[$i]}" == "$1" ]] && { printf '%s\n' "${PIDS[$i]}"; return 0; }
    done
    die "no process named $1"
}

# run_wrk LABEL URL DURATION BODY [ENVOY_PID [AUTHZ_PID [PROCESSOR_PID]]]: prints
# "LABEL rps p50 p90 p99 non2xx envoy_cpu authz_cpu both_cpu" (latencies in ms; cpu: µs of that
# process's utime+stime per completed request, `-` without a PID; a PROCESSOR_PID's CPU is added
# to the ext_authz column; both: the sum).
run_wrk() {
    local label="$1" url="$2" duration="$3" body="$4" envoy_pid="${5:-}" authz_pid="${6:-}" out
    local processor_pid="${7:-}" processor_before=0 processor_after=0
    local envoy_before=0 envoy_after=0 authz_before=0 authz_after=0
    [[ -n "$envoy_pid" ]] && envoy_before="$(cpu_ticks "$envoy_pid")"
    [[ -n "$authz_pid" ]] && authz_before="$(cpu_ticks "$authz_pid")"
    [[ -n "$processor_pid" ]] && processor_before="$(cpu_ticks "$processor_pid")"
    out="$(BENCH_KEY="$KEY" BENCH_BODY="$body" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency \
        -s "$STATE_DIR/request.lua" "$url/simulator/v1/chat/completions")"
    [[ -n "$envoy_pid" ]] && envoy_after="$(cpu_ticks "$envoy_pid")"
    [[ -n "$authz_pid" ]] && authz_after="$(cpu_ticks "$authz_pid")"
    [[ -n "$processor_pid" ]] && processor_after="$(cpu_ticks "$processor_pid")"
    authz_after=$((authz_after + processor_after - processor_before))
    printf '== %s\n%s\n' "$label" "$out" >>"$STATE_DIR/wrk.log"
    awk -v label="$label" -v hz="$(getconf CLK_TCK)" \
        -v envoy_ticks="$((envoy_after - envoy_before))" -v has_envoy="${envoy_pid:+1}" \
        -v authz_ticks="$((authz_after - authz_before))" -v has_authz="${authz_pid:+1}" '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v
        }
        function per_request(ticks) { return ticks * 1e6 / hz / requests }
        /^ +50%/ { p50 = ms($2) }
        /^ +90%/ { p90 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Requests\/sec:/ { rps = $2 }
        / requests in / { requests = $1 }
        /Non-2xx or 3xx responses:/ { bad = $5 }
        /Socket errors:/ { bad = bad "+sock" }
        END {
            ok = requests > 0
            envoy = (has_envoy && ok) ? sprintf("%.1f", per_request(envoy_ticks)) : "-"
            authz = (has_authz && ok) ? sprintf("%.1f", per_request(authz_ticks)) : "-"
            both = (has_envoy && has_authz && ok) ? sprintf("%.1f", per_request(envoy_ticks + authz_ticks)) : "-"
            printf "%s %s %.3f %.3f %.3f %s %s %s %s\n", label, rps, p50, p90, p99, (bad == "" ? 0 : bad), envoy, authz, both
        }
    ' <<<"$out"
}

# measure_row ROW ROUND: one run of a row (see the header), labelled ROW#ROUND.
measure_row() {
    local row="$1" round="$2"
    case "$row" in
        do-nothing) run_wrk "$row#$round" "$NOOP_URL" "$DURATION" "$BODY" "$(pid_of envoy-noop)" "$(pid_of do-nothing)" ;;
        maas-authz) run_wrk "$row#$round" "$AUTHZ_URL" "$DURATION" "$BODY" "$(pid_of envoy-authz)" "$(pid_of maas-authz)" ;;
        +meter) run_wrk "$row#$round" "$METER_URL" "$DURATION" "$BODY" "$(pid_of envoy-meter)" "$(pid_of maas-authz)" ;;
        maas-authz/sse) run_wrk "$row#$round" "$AUTHZ_URL" "$DURATION" "$SSE_BODY" "$(pid_of envoy-authz)" "$(pid_of maas-authz)" ;;
        +meter/sse) run_wrk "$row#$round" "$METER_URL" "$DURATION" "$SSE_BODY" "$(pid_of envoy-meter)" "$(pid_of maas-authz)" ;;
        floor) run_wrk "$row#$round" "$FLOOR_URL" "$DURATION" "$BODY" "$(pid_of envoy-floor)" "$(pid_of maas-authz)" "$(pid_of do-nothing)" ;;
        floor/sse) run_wrk "$row#$round" "$FLOOR_URL" "$DURATION" "$SSE_BODY" "$(pid_of envoy-floor)" "$(pid_of maas-authz)" "$(pid_of do-nothing)" ;;
        pass-through) run_wrk "$row#$round" "$PASS_URL" "$DURATION" "$BODY" "$(pid_of envoy-pass)" "$(pid_of maas-authz)" "$(pid_of pass-through)" ;;
        pass-through/sse) run_wrk "$row#$round" "$PASS_URL" "$DURATION" "$SSE_BODY" "$(pid_of envoy-pass)" "$(pid_of maas-authz)" "$(pid_of pass-through)" ;;
        reference) run_wrk "$row#$round" "$REF_URL" "$DURATION" "$BODY" "$(pid_of envoy-reference)" "$(pid_of reference)" ;;
        reference+meter) run_wrk "$row#$round" "$REF_METER_URL" "$DURATION" "$BODY" "$(pid_of envoy-reference-meter)" "$(pid_of reference)" ;;
        reference+meter/sse) run_wrk "$row#$round" "$REF_METER_URL" "$DURATION" "$SSE_BODY" "$(pid_of envoy-reference-meter)" "$(pid_of reference)" ;;
        *) die "unknown row $row" ;;
    esac
}

main() {
    bench_arguments "${BASH_SOURCE[0]}" "$@"
    cd -- "$REPO_ROOT"
    ensure_cargo
    have curl || die "curl not found"
    ensure_wrk
    local last_port=$((BASE + 18))
    if [[ -n "$REFERENCE_BIN" ]]; then
        [[ -x "$REFERENCE_BIN" ]] || die "BENCH_REFERENCE_BIN=$REFERENCE_BIN is not an executable"
        last_port=$((BASE + 26))
    fi
    require_free_ports "$BASE" "$last_port"

    local admin_url db_url envoy target_dir psql
    admin_url="$(bash "$REPO_ROOT/scripts/ensure-postgres.sh")"
    psql="$(pg_tool psql)" || die "psql not found"
    if [[ "$(env -u PGPASSWORD "$psql" -w -X -q -A -t -d "$admin_url" -c "select 1 from pg_database where datname = '$DB_NAME'" </dev/null)" != 1 ]]; then
        env -u PGPASSWORD "$psql" -w -X -q -d "$admin_url" -c "create database $DB_NAME" </dev/null >/dev/null
    fi
    db_url="$(url_with_db "$admin_url" "$DB_NAME")"
    bash "$REPO_ROOT/scripts/ensure-python-venv.sh" "$REPO_ROOT/scripts/requirements-test.txt" >/dev/null
    envoy=""
    for envoy in "${MAAS_AUTHZ_ENVOY_BIN:-}" "$REPO_ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
        [[ -n "$envoy" && -x "$envoy" ]] && break
    done
    [[ -x "$envoy" ]] || die "no Envoy binary (set MAAS_AUTHZ_ENVOY_BIN or let ensure-python-venv.sh install it)"

    log "release build (maas-authz, maas-simulator, maas-authz-do-nothing, maas-authz-pass-through)"
    cargo build --release --bin maas-authz --bin maas-simulator --bin maas-authz-do-nothing \
        --bin maas-authz-pass-through >&2
    target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"

    STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/maas-bench-envoy.XXXXXX")"
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    export DATABASE_URL="$db_url" MAAS_AUTHZ_POLICY_PATH="$REPO_ROOT/examples/policy"
    "$target_dir/release/maas-authz" migrate >&2
    # The key lives only in this shell and wrk's environment; it expires in an hour.
    KEY="$("$target_dir/release/maas-authz" keys create --user bench-user --group premium-users \
        --expires-in 1h --name bench-envoy)"
    BODY='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":8}'
    SSE_BODY='{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":8,"stream":true}'
    cat >"$STATE_DIR/request.lua" <<'EOF'
-- wrk request: POST a chat completion with the bench key from the environment.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
EOF

    local metadata=()
    [[ -z "$DYNAMIC_METADATA" ]] || metadata=("MAAS_AUTHZ_DYNAMIC_METADATA=$DYNAMIC_METADATA")
    start maas-authz env RUST_LOG=warn \
        MAAS_AUTHZ_GRPC_ADDR="127.0.0.1:$GRPC_PORT" MAAS_AUTHZ_METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
        MAAS_AUTHZ_HTTP_ADDR="127.0.0.1:$HTTP_PORT" MAAS_AUTHZ_INTERNAL_ADDR="127.0.0.1:$INTERNAL_PORT" \
        MAAS_AUTHZ_SKIP_MIGRATIONS=true MAAS_AUTHZ_LIMITS_ENABLED="$LIMITS" \
        "${metadata[@]}" "$target_dir/release/maas-authz" serve
    start simulator env RUST_LOG=warn "$target_dir/release/maas-simulator" --addr "127.0.0.1:$SIM_PORT"
    # The comparison's ext_authz: its own process, default tonic (what bench-check.sh compares with).
    start do-nothing "$target_dir/release/maas-authz-do-nothing" "127.0.0.1:$NOOP_PORT"
    start pass-through "$target_dir/release/maas-authz-pass-through" "127.0.0.1:$PASS_PORT" "127.0.0.1:$SIM_PORT"
    render "$STATE_DIR/envoy-authz.yaml" "$AUTHZ_ENVOY_PORT" "$AUTHZ_ADMIN_PORT" "$GRPC_PORT"
    render "$STATE_DIR/envoy-noop.yaml" "$NOOP_ENVOY_PORT" "$NOOP_ADMIN_PORT" "$NOOP_PORT"
    render "$STATE_DIR/envoy-meter.yaml" "$METER_ENVOY_PORT" "$METER_ADMIN_PORT" "$GRPC_PORT"
    # Check alone: the token meter's per-route "off" added to the model routes' per-route
    # filter settings (each names its model for ext_authz in a `check_settings` line).
    local variant
    # The pass-through rows: Check alone, the model server reached through the proxy.
    render "$STATE_DIR/envoy-pass.yaml" "$PASS_ENVOY_PORT" "$PASS_ADMIN_PORT" "$GRPC_PORT"
    sed -i -E "/^    - name: model_simulator\$/,/port_value:/ s/port_value: $SIM_PORT/port_value: $PASS_PORT/" \
        "$STATE_DIR/envoy-pass.yaml"
    grep -q "port_value: $PASS_PORT" "$STATE_DIR/envoy-pass.yaml" ||
        die "could not point the pass-through Envoy's model cluster at the proxy"
    # The model routes also say `meter: "off"` to ext_authz, as an operator's Check-only routes
    # do (no identity assertion is signed for a meter that is not there).
    for variant in authz noop pass; do
        sed -i -E 's/^( *)  (check_settings: \{ context_extensions: .*)$/\1  \2\n\1envoy.filters.http.ext_proc: *ext_proc_off/' \
            "$STATE_DIR/envoy-$variant.yaml"
        sed -i -E 's/(check_settings: \{ context_extensions: \{ )(model: )/\1meter: "off", \2/' \
            "$STATE_DIR/envoy-$variant.yaml"
    done
    # No ext_authz and no meter on the model routes: both switched off in those settings.
    render "$STATE_DIR/envoy-bare.yaml" "$BARE_ENVOY_PORT" "$BARE_ADMIN_PORT" "$NOOP_PORT"
    sed -i -E 's/^( *)  check_settings: \{ context_extensions: .*$/\1  disabled: true\n\1envoy.filters.http.ext_proc: *ext_proc_off/' \
        "$STATE_DIR/envoy-bare.yaml"
    # The floor: Check as for Check alone, ext_proc to the do-nothing processor for one message.
    render "$STATE_DIR/envoy-floor.yaml" "$FLOOR_ENVOY_PORT" "$FLOOR_ADMIN_PORT" "$GRPC_PORT"
    sed -i -E 's/(check_settings: \{ context_extensions: \{ )(model: )/\1meter: "off", \2/' \
        "$STATE_DIR/envoy-floor.yaml"
    sed -i -E -e '/ext_proc\.v3\.ExternalProcessor$/,/envoy_grpc:/ s/cluster_name: maas_authz/cluster_name: ext_proc_floor/' \
        -e 's/request_header_mode: SEND/request_header_mode: SKIP/' \
        -e 's/response_body_mode: NONE/response_body_mode: BUFFERED/' \
        -e 's/allow_mode_override: true/allow_mode_override: false/' \
        -e "s/^  clusters:\$/  clusters:\n    - name: ext_proc_floor\n      type: STATIC\n      connect_timeout: 0.25s\n      typed_extension_protocol_options:\n        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n          \"@type\": type.googleapis.com\/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n          explicit_http_config: { http2_protocol_options: {} }\n      load_assignment:\n        cluster_name: ext_proc_floor\n        endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $NOOP_PORT } } } }] }]/" \
        "$STATE_DIR/envoy-floor.yaml"
    grep -q 'cluster_name: ext_proc_floor' "$STATE_DIR/envoy-floor.yaml" ||
        die "could not point the floor Envoy's ext_proc at the do-nothing processor"
    for variant in authz noop bare floor pass; do
        "$envoy" --mode validate -c "$STATE_DIR/envoy-$variant.yaml" >/dev/null 2>&1 ||
            die "could not derive the $variant Envoy configuration from deploy/envoy/envoy.yaml"
    done
    if [[ -n "$REFERENCE_BIN" ]]; then
        local ref_metadata=("${metadata[@]}")
        [[ -z "${BENCH_REFERENCE_DYNAMIC_METADATA:-}" ]] ||
            ref_metadata=("MAAS_AUTHZ_DYNAMIC_METADATA=$BENCH_REFERENCE_DYNAMIC_METADATA")
        start reference env RUST_LOG=warn \
            MAAS_AUTHZ_GRPC_ADDR="127.0.0.1:$REF_GRPC_PORT" MAAS_AUTHZ_METRICS_ADDR="127.0.0.1:$REF_METRICS_PORT" \
            MAAS_AUTHZ_HTTP_ADDR="127.0.0.1:$REF_HTTP_PORT" MAAS_AUTHZ_INTERNAL_ADDR="127.0.0.1:$REF_INTERNAL_PORT" \
            MAAS_AUTHZ_SKIP_MIGRATIONS=true MAAS_AUTHZ_LIMITS_ENABLED="$LIMITS" \
            "${ref_metadata[@]}" "$REFERENCE_BIN" serve
        render "$STATE_DIR/envoy-reference.yaml" "$REF_ENVOY_PORT" "$REF_ADMIN_PORT" "$REF_GRPC_PORT"
        sed -i -E 's/^( *)  (check_settings: \{ context_extensions: .*)$/\1  \2\n\1envoy.filters.http.ext_proc: *ext_proc_off/' \
            "$STATE_DIR/envoy-reference.yaml"
        sed -i -E 's/(check_settings: \{ context_extensions: \{ )(model: )/\1meter: "off", \2/' \
            "$STATE_DIR/envoy-reference.yaml"
        "$envoy" --mode validate -c "$STATE_DIR/envoy-reference.yaml" >/dev/null 2>&1 ||
            die "could not derive the reference Envoy configuration"
        render "$STATE_DIR/envoy-reference-meter.yaml" "$REF_METER_ENVOY_PORT" "$REF_METER_ADMIN_PORT" "$REF_GRPC_PORT"
        if [[ -n "${BENCH_REFERENCE_METER_SED:-}" ]]; then
            sed -i -E "$BENCH_REFERENCE_METER_SED" "$STATE_DIR/envoy-reference-meter.yaml"
        fi
        "$envoy" --mode validate -c "$STATE_DIR/envoy-reference-meter.yaml" >/dev/null 2>&1 ||
            die "could not derive the reference+meter Envoy configuration"
        wait_ready reference "http://127.0.0.1:$REF_METRICS_PORT/metrics"
        start envoy-reference "$envoy" -c "$STATE_DIR/envoy-reference.yaml" --use-dynamic-base-id \
            --concurrency "$ENVOY_CONCURRENCY" --log-level warn
        start envoy-reference-meter "$envoy" -c "$STATE_DIR/envoy-reference-meter.yaml" --use-dynamic-base-id \
            --concurrency "$ENVOY_CONCURRENCY" --log-level warn
        wait_ready envoy-reference "http://127.0.0.1:$REF_ADMIN_PORT/ready" LIVE
        wait_ready envoy-reference-meter "http://127.0.0.1:$REF_METER_ADMIN_PORT/ready" LIVE
    fi
    wait_ready maas-authz "http://127.0.0.1:$METRICS_PORT/metrics"
    wait_ready simulator "http://127.0.0.1:$SIM_PORT/health"
    local i
    wait_port "$NOOP_PORT"
    wait_port "$PASS_PORT"
    start envoy-authz "$envoy" -c "$STATE_DIR/envoy-authz.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    start envoy-noop "$envoy" -c "$STATE_DIR/envoy-noop.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    wait_ready envoy-authz "http://127.0.0.1:$AUTHZ_ADMIN_PORT/ready" LIVE
    start envoy-bare "$envoy" -c "$STATE_DIR/envoy-bare.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    start envoy-meter "$envoy" -c "$STATE_DIR/envoy-meter.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    start envoy-floor "$envoy" -c "$STATE_DIR/envoy-floor.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    start envoy-pass "$envoy" -c "$STATE_DIR/envoy-pass.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    wait_ready envoy-noop "http://127.0.0.1:$NOOP_ADMIN_PORT/ready" LIVE
    wait_ready envoy-bare "http://127.0.0.1:$BARE_ADMIN_PORT/ready" LIVE
    wait_ready envoy-meter "http://127.0.0.1:$METER_ADMIN_PORT/ready" LIVE
    wait_ready envoy-floor "http://127.0.0.1:$FLOOR_ADMIN_PORT/ready" LIVE
    wait_ready envoy-pass "http://127.0.0.1:$PASS_ADMIN_PORT/ready" LIVE

    AUTHZ_URL="http://127.0.0.1:$AUTHZ_ENVOY_PORT" NOOP_URL="http://127.0.0.1:$NOOP_ENVOY_PORT"
    BARE_URL="http://127.0.0.1:$BARE_ENVOY_PORT" METER_URL="http://127.0.0.1:$METER_ENVOY_PORT"
    FLOOR_URL="http://127.0.0.1:$FLOOR_ENVOY_PORT" PASS_URL="http://127.0.0.1:$PASS_ENVOY_PORT"
    REF_URL="http://127.0.0.1:$REF_ENVOY_PORT" REF_METER_URL="http://127.0.0.1:$REF_METER_ENVOY_PORT"
    local s
    if [[ -n "$REFERENCE_BIN" ]]; then
        s="$(status_of "$REF_URL" "$KEY")"
        [[ "$s" == 200 ]] || die "Envoy+reference answered $s to the bench request (wanted 200)"
        s="$(status_of "$REF_URL")"
        [[ "$s" == 401 ]] || die "Envoy+reference answered $s without a key (wanted 401)"
        s="$(status_of "$REF_METER_URL" "$KEY")"
        [[ "$s" == 200 ]] || die "Envoy+reference+meter answered $s to the bench request (wanted 200)"
    fi
    s="$(status_of "$AUTHZ_URL" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+maas-authz answered $s to the bench request (wanted 200)"
    s="$(status_of "$AUTHZ_URL")"
    [[ "$s" == 401 ]] || die "Envoy+maas-authz answered $s without a key (wanted 401): not really checking"
    s="$(status_of "$NOOP_URL" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+do-nothing answered $s (wanted 200)"
    s="$(status_of "$BARE_URL")"
    [[ "$s" == 200 ]] || die "Envoy without ext_authz answered $s without a key (wanted 200)"
    s="$(status_of "$METER_URL" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+maas-authz+meter answered $s to the bench request (wanted 200)"
    s="$(status_of "$FLOOR_URL" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+maas-authz+do-nothing processor answered $s (wanted 200)"
    local floor_messages
    floor_messages="$(curl -s "http://127.0.0.1:$FLOOR_ADMIN_PORT/stats" | sed -n 's/^http\.public\.ext_proc\.stream_msgs_sent: //p')"
    [[ "${floor_messages:-0}" -ge 1 ]] || die "the floor Envoy sent no message to the do-nothing processor"
    s="$(status_of "$PASS_URL" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+maas-authz+pass-through proxy answered $s (wanted 200)"
    s="$(status_of "$PASS_URL")"
    [[ "$s" == 401 ]] || die "Envoy+maas-authz+pass-through proxy answered $s without a key (wanted 401)"
    s="$(status_of "$METER_URL")"
    [[ "$s" == 401 ]] || die "Envoy+maas-authz+meter answered $s without a key (wanted 401)"
    if is_true "$SSE"; then
        s="$(status_of "$METER_URL" "$KEY" "$SSE_BODY")"
        [[ "$s" == 200 ]] || die "Envoy+maas-authz+meter answered $s to the SSE request (wanted 200)"
        curl -s -N -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$SSE_BODY" \
            "$METER_URL/simulator/v1/chat/completions" | grep -q '^data: \[DONE\]' ||
            die "the SSE request did not stream through the meter"
    fi
    # The meter charges after the response went out: give it a moment.
    for ((i = 0; i < 20; i++)); do
        curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^maas_authz_tokens_charged_total [1-9]' && break
        sleep 0.1
    done
    ((i < 20)) || die "the token meter charged nothing for the bench request: is ext_proc reaching maas-authz?"

    local rows=(do-nothing maas-authz +meter floor pass-through) row
    is_true "$SSE" && rows+=(maas-authz/sse +meter/sse floor/sse pass-through/sse)
    if [[ -n "$REFERENCE_BIN" ]]; then
        rows+=(reference reference+meter)
        is_true "$SSE" && rows+=(reference+meter/sse)
    fi
    log "warm-up (3 s each)"
    run_wrk warmup "$NOOP_URL" 3s "$BODY" >/dev/null
    run_wrk warmup "$AUTHZ_URL" 3s "$BODY" >/dev/null
    run_wrk warmup "$BARE_URL" 3s "$BODY" >/dev/null
    run_wrk warmup "$METER_URL" 3s "$BODY" >/dev/null
    run_wrk warmup "$FLOOR_URL" 3s "$BODY" >/dev/null
    run_wrk warmup "$PASS_URL" 3s "$BODY" >/dev/null
    is_true "$SSE" && run_wrk warmup "$METER_URL" 3s "$SSE_BODY" >/dev/null
    [[ -z "$REFERENCE_BIN" ]] || run_wrk warmup "$REF_URL" 3s "$BODY" >/dev/null
    [[ -z "$REFERENCE_BIN" ]] || run_wrk warmup "$REF_METER_URL" 3s "$BODY" >/dev/null
    log "measuring: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, Envoy --concurrency $ENVOY_CONCURRENCY, $ROUNDS round(s) of: ${rows[*]}"
    local results="$STATE_DIR/results" round
    : >"$results"
    for ((round = 1; round <= ROUNDS; round++)); do
        # Odd rounds in the listed order, even rounds reversed: no row always inherits the
        # machine as the same other row left it.
        for ((i = 0; i < ${#rows[@]}; i++)); do
            if ((round % 2 == 1)); then row="${rows[$i]}"; else row="${rows[$((${#rows[@]} - 1 - i))]}"; fi
            measure_row "$row" "$round" >>"$results"
        done
    done
    run_wrk "none" "$BARE_URL" "$DURATION" "$BODY" "$(pid_of envoy-bare)" >>"$results"

    printf '\nEnvoy 1.40 (--concurrency %s) -> ext_authz -> simulator, POST /simulator/v1/chat/completions, wrk -t%s -c%s -d%s, %s cores, commit %s\n' \
        "$ENVOY_CONCURRENCY" "$THREADS" "$CONNECTIONS" "$DURATION" "$(nproc)" \
        "$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python3 - "$results" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
print(f"{'row':<18} {'req/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'non-2xx':>7} "
      f"{'µs CPU/req: Envoy':>17} {'ext_authz':>9} {'both':>7}")
for r in rows:
    print(f"{r[0]:<18} {float(r[1]):>9.0f} {r[2]:>7} {r[3]:>7} {r[4]:>7} {r[5]:>7} {r[6]:>17} {r[7]:>9} {r[8]:>7}")
def num(v):
    return float(v) if v != "-" else float("nan")
medians = {}
for name in dict.fromkeys(r[0].split("#")[0] for r in rows):
    mine = [r for r in rows if r[0].split("#")[0] == name]
    medians[name] = [statistics.median(num(r[k]) for r in mine) for k in (1, 6, 7, 8)]
print(f"\nmedians over rounds\n{'row':<18} {'req/s':>9} {'µs CPU/req: Envoy':>17} {'ext_authz':>9} {'both':>7}")
for name, (rps, envoy, authz, both) in medians.items():
    print(f"{name:<18} {rps:>9.0f} {envoy:>17.1f} {authz:>9.1f} {both:>7.1f}")
def ratio(label, a, b, goal=""):
    if a not in medians or b not in medians:
        return
    (ra, ea, aa, ba), (rb, eb, ab, bb) = medians[a], medians[b]
    print(f"{label:<34} throughput {ra / rb:.3f}   CPU/req Envoy+ext_authz {ba / bb:.3f} "
          f"(Envoy {ea / eb:.3f}, ext_authz {aa / ab:.3f})  {goal}")
print()
ratio("maas-authz / do-nothing", "maas-authz", "do-nothing", "[goal 3: throughput >= 0.95, CPU <= 1.05]")
ratio("+meter / maas-authz (JSON)", "+meter", "maas-authz", "[goal 4: throughput >= 0.85]")
ratio("+meter/sse / maas-authz/sse (SSE)", "+meter/sse", "maas-authz/sse", "[goal 4: throughput >= 0.80]")
ratio("floor / maas-authz (JSON)", "floor", "maas-authz", "[the most any ext_proc meter can reach]")
ratio("floor/sse / maas-authz/sse (SSE)", "floor/sse", "maas-authz/sse", "[the same, SSE]")
ratio("pass-through / maas-authz (JSON)", "pass-through", "maas-authz", "[the floor under a metering proxy hop]")
ratio("pass-through/sse / maas-authz/sse", "pass-through/sse", "maas-authz/sse", "[the same, SSE]")
ratio("maas-authz / reference", "maas-authz", "reference")
ratio("+meter / reference+meter", "+meter", "reference+meter")
ratio("+meter/sse / reference+meter/sse", "+meter/sse", "reference+meter/sse")
ratio("reference+meter / maas-authz (JSON)", "reference+meter", "maas-authz")
ratio("reference+meter/sse / maas-authz/sse", "reference+meter/sse", "maas-authz/sse")
EOF
}

main "$@"
