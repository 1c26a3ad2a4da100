#!/usr/bin/env bash
# scripts/bench-envoy.sh — requests/s and latency through Envoy: ext_authz -> maas-authz vs. a do-nothing ext_authz,
# and what the token meter (ext_proc) adds.
#
# Starts, on 127.0.0.1: maas-authz (release build, example policy, a database
# maas_authz_bench), the simulator with its do-nothing ext_authz server
# (maas-simulator --noop-ext-authz), and two Envoys rendered from
# deploy/envoy/envoy.yaml that differ only in their ext_authz cluster, both with the
# token meter (ext_proc) turned off on the model routes, so they compare Check alone. Mints one
# premium key (never printed), checks both gateways answer 200 (and that the
# maas-authz one refuses a missing key), then drives both with the same wrk
# client, the same request (POST /simulator/v1/chat/completions, 8-token reply),
# alternating baseline and maas-authz ROUNDS times, and prints one table. A third
# Envoy with ext_authz disabled on the model routes shows what Envoy alone costs, and a
# fourth, deploy/envoy/envoy.yaml unchanged (Check and the token meter), what metering adds.
# The request is not streamed, so the meter reads one JSON body per request.
# With BENCH_REFERENCE_BIN, a second maas-authz (another build, e.g. the last release) serves a
# fifth Envoy, measured in the same rounds, so a change is compared with its reference in one
# run; it goes first in odd rounds and second in even ones. Besides throughput, each row gives the CPU the ext_authz server process spent per request
# (utime+stime from /proc/<pid>/stat over the run, divided by the requests wrk completed).
# Everything it started is stopped on exit.
#
# Usage:
#   scripts/bench-envoy.sh
#
# Environment:
#   BENCH_DURATION=10s        per measured run (after a 3 s warm-up per gateway)
#   BENCH_CONNECTIONS=32      wrk connections
#   BENCH_THREADS=1           wrk threads
#   BENCH_ROUNDS=2            alternations of baseline / maas-authz (even, with a reference)
#   BENCH_ENVOY_CONCURRENCY=1 worker threads per Envoy (two Envoys share the box)
#   BENCH_PORT_BASE=19000     ports BASE..BASE+13 on 127.0.0.1 must be free
#   BENCH_LIMITS=false        MAAS_AUTHZ_LIMITS_ENABLED for maas-authz: off by default, since the
#                             example policy's premium tier allows 20 requests a minute and the
#                             run would measure 429s (BENCHMARKS.md section 4 measures limits)
#   BENCH_DYNAMIC_METADATA=true  MAAS_AUTHZ_DYNAMIC_METADATA for maas-authz: `false` leaves the
#                             identity metadata out of allow answers (only with BENCH_LIMITS=false),
#                             which shows what Envoy spends ingesting it (BENCHMARKS.md section 0)
#   BENCH_REFERENCE_BIN=      a maas-authz binary to compare with in the same run (a reference
#                             build, e.g. `git worktree add /tmp/ref v0.1.0 && cargo build
#                             --release` there); ports BASE+14..BASE+19 must then be free too
#   MAAS_AUTHZ_NO_INSTALL=1   never apt-get install wrk
#   plus everything ensure-postgres.sh and ensure-python-venv.sh read.
#
# Client, servers and both Envoys share the machine: on a small box the absolute
# figures are capped by CPU contention; the ratio between the two gateways is the
# figure that carries over.

set -euo pipefail

SCRIPT_NAME="bench-envoy.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly DURATION="${BENCH_DURATION:-10s}"
readonly CONNECTIONS="${BENCH_CONNECTIONS:-32}"
readonly THREADS="${BENCH_THREADS:-1}"
readonly ROUNDS="${BENCH_ROUNDS:-2}"
readonly LIMITS="${BENCH_LIMITS:-false}"
readonly DYNAMIC_METADATA="${BENCH_DYNAMIC_METADATA:-true}"
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
readonly REF_GRPC_PORT=$((BASE + 14))
readonly REF_HTTP_PORT=$((BASE + 15))
readonly REF_INTERNAL_PORT=$((BASE + 16))
readonly REF_METRICS_PORT=$((BASE + 17))
readonly REF_ENVOY_PORT=$((BASE + 18))
readonly REF_ADMIN_PORT=$((BASE + 19))
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

status_of() { # status_of URL [KEY]
    local auth=()
    [[ -n "${2:-}" ]] && auth=(-H "Authorization: Bearer $2")
    curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" -H 'Content-Type: application/json' \
        -d "$BODY" "$1/simulator/v1/chat/completions"
}

# pid_of NAME: the PID of a process start() started.
pid_of() {
    local i
    for i in "${!NAMES[@]}"; do
        [[ "${NAMES[$i]}" == "$1" ]] && { printf '%s\n' "${PIDS[$i]}"; return 0; }
    done
    die "no process named $1"
}

# run_wrk LABEL URL DURATION [PID]: prints "LABEL rps p50 p90 p99 non2xx cpu" (latencies in ms;
# cpu: µs of PID's CPU per completed request, `-` without a PID).
run_wrk() {
    local label="$1" url="$2" duration="$3" pid="${4:-}" out before=0 after=0
    [[ -n "$pid" ]] && before="$(cpu_ticks "$pid")"
    out="$(BENCH_KEY="$KEY" BENCH_BODY="$BODY" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency \
        -s "$STATE_DIR/request.lua" "$url/simulator/v1/chat/completions")"
    [[ -n "$pid" ]] && after="$(cpu_ticks "$pid")"
    printf '%s\n' "$out" >>"$STATE_DIR/wrk.log"
    awk -v label="$label" -v ticks="$((after - before))" -v hz="$(getconf CLK_TCK)" -v has_pid="${pid:+1}" '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +90%/ { p90 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Requests\/sec:/ { rps = $2 }
        / requests in / { requests = $1 }
        /Non-2xx or 3xx responses:/ { bad = $5 }
        /Socket errors:/ { bad = bad "+sock" }
        END {
            cpu = (has_pid && requests > 0) ? sprintf("%.1f", ticks * 1e6 / hz / requests) : "-"
            printf "%s %s %.3f %.3f %.3f %s %s\n", label, rps, p50, p90, p99, (bad == "" ? 0 : bad), cpu
        }
    ' <<<"$out"
}

main() {
    case "${1:-}" in
        -h | --help)
            sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
            exit 0
            ;;
        "") ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    cd -- "$REPO_ROOT"
    ensure_cargo
    have curl || die "curl not found"
    ensure_wrk
    local port
    local last_port=$((BASE + 13))
    if [[ -n "$REFERENCE_BIN" ]]; then
        [[ -x "$REFERENCE_BIN" ]] || die "BENCH_REFERENCE_BIN=$REFERENCE_BIN is not an executable"
        last_port=$((BASE + 19))
    fi
    for port in $(seq "$BASE" "$last_port"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port on 127.0.0.1 is in use; set BENCH_PORT_BASE"
        fi
    done

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

    log "release build (maas-authz, maas-simulator)"
    cargo build --release --bin maas-authz --bin maas-simulator >&2
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
    cat >"$STATE_DIR/request.lua" <<'EOF'
-- wrk request: POST a chat completion with the bench key from the environment.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
EOF

    start maas-authz env RUST_LOG=warn \
        MAAS_AUTHZ_GRPC_ADDR="127.0.0.1:$GRPC_PORT" MAAS_AUTHZ_METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
        MAAS_AUTHZ_HTTP_ADDR="127.0.0.1:$HTTP_PORT" MAAS_AUTHZ_INTERNAL_ADDR="127.0.0.1:$INTERNAL_PORT" \
        MAAS_AUTHZ_SKIP_MIGRATIONS=true MAAS_AUTHZ_LIMITS_ENABLED="$LIMITS" \
        MAAS_AUTHZ_DYNAMIC_METADATA="$DYNAMIC_METADATA" "$target_dir/release/maas-authz" serve
    start simulator env RUST_LOG=warn "$target_dir/release/maas-simulator" \
        --addr "127.0.0.1:$SIM_PORT" --noop-ext-authz "127.0.0.1:$NOOP_PORT"
    render "$STATE_DIR/envoy-authz.yaml" "$AUTHZ_ENVOY_PORT" "$AUTHZ_ADMIN_PORT" "$GRPC_PORT"
    render "$STATE_DIR/envoy-noop.yaml" "$NOOP_ENVOY_PORT" "$NOOP_ADMIN_PORT" "$NOOP_PORT"
    render "$STATE_DIR/envoy-meter.yaml" "$METER_ENVOY_PORT" "$METER_ADMIN_PORT" "$GRPC_PORT"
    # Check alone: the token meter's per-route "off" added to the model routes' per-route
    # filter settings (each names its model for ext_authz in a `check_settings` line).
    local variant
    for variant in authz noop; do
        sed -i -E 's/^( *)  (check_settings: \{ context_extensions: .*)$/\1  \2\n\1envoy.filters.http.ext_proc: *ext_proc_off/' \
            "$STATE_DIR/envoy-$variant.yaml"
    done
    # No ext_authz and no meter on the model routes: both switched off in those settings.
    render "$STATE_DIR/envoy-bare.yaml" "$BARE_ENVOY_PORT" "$BARE_ADMIN_PORT" "$NOOP_PORT"
    sed -i -E 's/^( *)  check_settings: \{ context_extensions: .*$/\1  disabled: true\n\1envoy.filters.http.ext_proc: *ext_proc_off/' \
        "$STATE_DIR/envoy-bare.yaml"
    for variant in authz noop bare; do
        "$envoy" --mode validate -c "$STATE_DIR/envoy-$variant.yaml" >/dev/null 2>&1 ||
            die "could not derive the $variant Envoy configuration from deploy/envoy/envoy.yaml"
    done
    if [[ -n "$REFERENCE_BIN" ]]; then
        start reference env RUST_LOG=warn \
            MAAS_AUTHZ_GRPC_ADDR="127.0.0.1:$REF_GRPC_PORT" MAAS_AUTHZ_METRICS_ADDR="127.0.0.1:$REF_METRICS_PORT" \
            MAAS_AUTHZ_HTTP_ADDR="127.0.0.1:$REF_HTTP_PORT" MAAS_AUTHZ_INTERNAL_ADDR="127.0.0.1:$REF_INTERNAL_PORT" \
            MAAS_AUTHZ_SKIP_MIGRATIONS=true MAAS_AUTHZ_LIMITS_ENABLED="$LIMITS" \
            MAAS_AUTHZ_DYNAMIC_METADATA="$DYNAMIC_METADATA" "$REFERENCE_BIN" serve
        render "$STATE_DIR/envoy-reference.yaml" "$REF_ENVOY_PORT" "$REF_ADMIN_PORT" "$REF_GRPC_PORT"
        sed -i -E 's/^( *)  (check_settings: \{ context_extensions: .*)$/\1  \2\n\1envoy.filters.http.ext_proc: *ext_proc_off/' \
            "$STATE_DIR/envoy-reference.yaml"
        "$envoy" --mode validate -c "$STATE_DIR/envoy-reference.yaml" >/dev/null 2>&1 ||
            die "could not derive the reference Envoy configuration"
        wait_ready reference "http://127.0.0.1:$REF_METRICS_PORT/metrics"
        start envoy-reference "$envoy" -c "$STATE_DIR/envoy-reference.yaml" --use-dynamic-base-id \
            --concurrency "$ENVOY_CONCURRENCY" --log-level warn
        wait_ready envoy-reference "http://127.0.0.1:$REF_ADMIN_PORT/ready" LIVE
    fi
    wait_ready maas-authz "http://127.0.0.1:$METRICS_PORT/metrics"
    wait_ready simulator "http://127.0.0.1:$SIM_PORT/health"
    start envoy-authz "$envoy" -c "$STATE_DIR/envoy-authz.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    start envoy-noop "$envoy" -c "$STATE_DIR/envoy-noop.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    wait_ready envoy-authz "http://127.0.0.1:$AUTHZ_ADMIN_PORT/ready" LIVE
    start envoy-bare "$envoy" -c "$STATE_DIR/envoy-bare.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    start envoy-meter "$envoy" -c "$STATE_DIR/envoy-meter.yaml" --use-dynamic-base-id \
        --concurrency "$ENVOY_CONCURRENCY" --log-level warn
    wait_ready envoy-noop "http://127.0.0.1:$NOOP_ADMIN_PORT/ready" LIVE
    wait_ready envoy-bare "http://127.0.0.1:$BARE_ADMIN_PORT/ready" LIVE
    wait_ready envoy-meter "http://127.0.0.1:$METER_ADMIN_PORT/ready" LIVE

    local authz_url="http://127.0.0.1:$AUTHZ_ENVOY_PORT" noop_url="http://127.0.0.1:$NOOP_ENVOY_PORT" s
    local bare_url="http://127.0.0.1:$BARE_ENVOY_PORT" meter_url="http://127.0.0.1:$METER_ENVOY_PORT"
    local ref_url="http://127.0.0.1:$REF_ENVOY_PORT"
    if [[ -n "$REFERENCE_BIN" ]]; then
        s="$(status_of "$ref_url" "$KEY")"
        [[ "$s" == 200 ]] || die "Envoy+reference answered $s to the bench request (wanted 200)"
        s="$(status_of "$ref_url")"
        [[ "$s" == 401 ]] || die "Envoy+reference answered $s without a key (wanted 401)"
    fi
    s="$(status_of "$authz_url" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+maas-authz answered $s to the bench request (wanted 200)"
    s="$(status_of "$authz_url")"
    [[ "$s" == 401 ]] || die "Envoy+maas-authz answered $s without a key (wanted 401): not really checking"
    s="$(status_of "$noop_url" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+do-nothing answered $s (wanted 200)"
    s="$(status_of "$bare_url")"
    [[ "$s" == 200 ]] || die "Envoy without ext_authz answered $s without a key (wanted 200)"
    s="$(status_of "$meter_url" "$KEY")"
    [[ "$s" == 200 ]] || die "Envoy+maas-authz+meter answered $s to the bench request (wanted 200)"
    if is_true "$DYNAMIC_METADATA"; then
        curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^maas_authz_tokens_charged_total [1-9]' ||
            die "the token meter charged nothing for the bench request: is ext_proc reaching maas-authz?"
    else
        log "BENCH_DYNAMIC_METADATA=false: the meter finds no identity and charges nothing (+meter rows)"
    fi

    log "warm-up (3 s each)"
    run_wrk warmup "$noop_url" 3s >/dev/null
    run_wrk warmup "$authz_url" 3s >/dev/null
    run_wrk warmup "$bare_url" 3s >/dev/null
    run_wrk warmup "$meter_url" 3s >/dev/null
    [[ -z "$REFERENCE_BIN" ]] || run_wrk warmup "$ref_url" 3s >/dev/null
    # The do-nothing ext_authz shares the simulator's process, so its CPU is not shown.
    local authz_pid ref_pid=""
    authz_pid="$(pid_of maas-authz)"
    [[ -z "$REFERENCE_BIN" ]] || ref_pid="$(pid_of reference)"
    log "measuring: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, Envoy --concurrency $ENVOY_CONCURRENCY, $ROUNDS round(s)"
    local results=() round
    for ((round = 1; round <= ROUNDS; round++)); do
        results+=("$(run_wrk "do-nothing#$round" "$noop_url" "$DURATION")")
        # The reference goes first in odd rounds and second in even ones, so that neither build
        # always inherits the machine as the other left it (use an even BENCH_ROUNDS).
        if [[ -n "$REFERENCE_BIN" ]] && ((round % 2 == 1)); then
            results+=("$(run_wrk "reference#$round" "$ref_url" "$DURATION" "$ref_pid")")
        fi
        results+=("$(run_wrk "maas-authz#$round" "$authz_url" "$DURATION" "$authz_pid")")
        if [[ -n "$REFERENCE_BIN" ]] && ((round % 2 == 0)); then
            results+=("$(run_wrk "reference#$round" "$ref_url" "$DURATION" "$ref_pid")")
        fi
        results+=("$(run_wrk "+meter#$round" "$meter_url" "$DURATION" "$authz_pid")")
    done
    results+=("$(run_wrk "none" "$bare_url" "$DURATION")")

    printf '\nEnvoy 1.40 -> ext_authz -> simulator, POST /simulator/v1/chat/completions, wrk -t%s -c%s -d%s, %s cores\n' \
        "$THREADS" "$CONNECTIONS" "$DURATION" "$(nproc)"
    printf '%-14s %10s %9s %9s %9s %8s %12s\n' "ext_authz" "req/s" "p50 ms" "p90 ms" "p99 ms" "non-2xx" "µs CPU/req"
    local line
    for line in "${results[@]}"; do
        # shellcheck disable=SC2086 # fields are split on purpose
        printf '%-14s %10s %9s %9s %9s %8s %12s\n' $line
    done
    printf '%s\n' "${results[@]}" | awk '
        $1 ~ /^do-nothing/ { n++; base += $2 }
        $1 ~ /^maas-authz/ { m++; authz += $2 }
        $1 ~ /^\+meter/ { k++; meter += $2 }
        $1 ~ /^reference/ { r++; ref += $2; ref_cpu += $7 }
        $1 ~ /^maas-authz/ { authz_cpu += $7 }
        END {
            if (r && m && ref > 0) printf "\nmaas-authz / reference throughput: %.1f%%, CPU per request: %.1f%%\n", 100 * (authz / m) / (ref / r), (ref_cpu > 0 ? 100 * (authz_cpu / m) / (ref_cpu / r) : 0)
            if (n && m && base > 0) printf "\nmaas-authz / do-nothing throughput: %.1f%%\n", 100 * (authz / m) / (base / n)
            if (m && k && authz > 0) printf "maas-authz+meter / maas-authz throughput: %.1f%%\n", 100 * (meter / k) / (authz / m)
        }'
}

main "$@"
