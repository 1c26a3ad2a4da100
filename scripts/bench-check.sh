#!/usr/bin/env bash
# scripts/bench-check.sh — Check measured from outside: maas-authz and a do-nothing ext_authz,
# each in its own process, driven by the same external gRPC client (maas-authz-loadgen --target).
#
# Starts, on 127.0.0.1: maas-authz (release build, example policy, database maas_authz_bench,
# limits off unless BENCH_LIMITS=true) and maas-authz-do-nothing (the plain generated envoy-types
# tonic server with default settings: no custom sockets, codecs or tuning). For each concurrency
# in BENCH_STREAMS and each of BENCH_ROUNDS rounds, it runs the identical load at both servers,
# alternating which goes first, and reads each server's CPU (utime+stime of /proc/<pid>/stat)
# before and after its run. It prints, per concurrency, the medians over rounds of throughput
# and server CPU per Check for each server and their ratios (maas-authz ÷ do-nothing), then one
# JSON line per concurrency. Keys: BENCH_KEYS minted keys of the free tier, cached after the
# warm-up, round-robin. Everything it started is stopped on exit.
#
# Usage:
#   scripts/bench-check.sh
#
# Environment:
#   BENCH_STREAMS="1 64"      concurrent in-flight Checks (one run per value and round)
#   BENCH_CONNECTIONS=4       HTTP/2 connections of the client (1 when streams is 1)
#   BENCH_ROUNDS=3            alternations (medians are quoted)
#   BENCH_DURATION=10s        per measured run, after BENCH_WARMUP (2s)
#   BENCH_KEYS=50             keys used round-robin
#   BENCH_LIMITS=false        MAAS_AUTHZ_LIMITS_ENABLED for maas-authz
#   BENCH_DYNAMIC_METADATA=   MAAS_AUTHZ_DYNAMIC_METADATA for maas-authz (unset: its default)
#   BENCH_AUTHZ_BIN=          a maas-authz binary to measure instead of this checkout's build
#   BENCH_REFERENCE_BIN=      a second maas-authz binary (e.g. the build before a change:
#                             `git worktree add --detach /tmp/ref <commit>`, release build there),
#                             measured in the same rounds as a third server ("reference"), so
#                             before and after come from one run; the order of the three rotates
#                             round by round. Ports BASE+5..BASE+8 must then be free too
#   BENCH_PORT_BASE=19100     ports BASE..BASE+4 on 127.0.0.1 must be free
#   plus everything ensure-postgres.sh reads.
#
# The client shares the 2 cores with the server under test: absolute figures are lower bounds;
# the CPU per Check of each server process and the ratios are the figures that carry over.

set -euo pipefail

SCRIPT_NAME="bench-check.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly STREAMS_LIST="${BENCH_STREAMS:-1 64}"
readonly CONNECTIONS="${BENCH_CONNECTIONS:-4}"
readonly ROUNDS="${BENCH_ROUNDS:-3}"
readonly DURATION="${BENCH_DURATION:-10s}"
readonly WARMUP="${BENCH_WARMUP:-2s}"
readonly KEYS="${BENCH_KEYS:-50}"
readonly LIMITS="${BENCH_LIMITS:-false}"
readonly BASE="${BENCH_PORT_BASE:-19100}"
readonly GRPC_PORT=$((BASE + 0))
readonly NOOP_PORT=$((BASE + 1))
readonly HTTP_PORT=$((BASE + 2))
readonly INTERNAL_PORT=$((BASE + 3))
readonly METRICS_PORT=$((BASE + 4))
readonly REF_GRPC_PORT=$((BASE + 5))
readonly REF_HTTP_PORT=$((BASE + 6))
readonly REF_INTERNAL_PORT=$((BASE + 7))
readonly REF_METRICS_PORT=$((BASE + 8))
readonly REFERENCE_BIN="${BENCH_REFERENCE_BIN:-}"
readonly DB_NAME="maas_authz_bench"
STATE_DIR=""
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -z "$STATE_DIR" ]] || rm -rf -- "$STATE_DIR"
}

# measure NAME PORT PID STREAMS: one run; prints "NAME STREAMS rps requests cpu_us_per_check errors".
measure() {
    local name="$1" port="$2" pid="$3" streams="$4" connections="$CONNECTIONS" before after out
    ((streams < connections)) && connections="$streams"
    # Warm-up in its own client run, so that the CPU read around the measured run is that run's
    # only; the measured run's keys are fresh (BENCH_KEYS misses out of tens of thousands).
    "$LOADGEN" --target "127.0.0.1:$port" --database-url "$DB_URL" --keys "$KEYS" \
        --streams "$streams" --connections "$connections" --duration "$WARMUP" \
        --warmup 0s --json >/dev/null 2>>"$STATE_DIR/loadgen.log"
    before="$(cpu_ticks "$pid")"
    out="$("$LOADGEN" --target "127.0.0.1:$port" --database-url "$DB_URL" --keys "$KEYS" \
        --streams "$streams" --connections "$connections" --duration "$DURATION" \
        --warmup 0s --json 2>>"$STATE_DIR/loadgen.log")"
    after="$(cpu_ticks "$pid")"
    printf '%s\n' "$out" >>"$STATE_DIR/loadgen.json"
    python3 - "$name" "$streams" "$((after - before))" "$(getconf CLK_TCK)" "$out" <<'EOF'
import json, sys
name, streams, ticks, hz, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
summary = json.loads(out)["maas_authz"]
requests = summary["requests"]
print(name, streams, summary["rps"], requests, f'{ticks * 1e6 / hz / requests:.2f}' if requests else "nan", summary["errors"])
EOF
}

main() {
    bench_arguments "${BASH_SOURCE[0]}" "$@"
    cd -- "$REPO_ROOT"
    ensure_cargo
    local last_port=$((BASE + 4))
    [[ -z "$REFERENCE_BIN" ]] || last_port=$((BASE + 8))
    require_free_ports "$BASE" "$last_port"
    local admin_url psql target_dir authz_bin
    admin_url="$(bash "$REPO_ROOT/scripts/ensure-postgres.sh")"
    psql="$(pg_tool psql)" || die "psql not found"
    if [[ "$(env -u PGPASSWORD "$psql" -w -X -q -A -t -d "$admin_url" -c "select 1 from pg_database where datname = '$DB_NAME'" </dev/null)" != 1 ]]; then
        env -u PGPASSWORD "$psql" -w -X -q -d "$admin_url" -c "create database $DB_NAME" </dev/null >/dev/null
    fi
    DB_URL="$(url_with_db "$admin_url" "$DB_NAME")"

    log "release build (maas-authz, maas-authz-loadgen, maas-authz-do-nothing)"
    cargo build --release -p maas-authz --bin maas-authz >&2
    cargo build --release -p maas-authz-loadgen --bins >&2
    target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    authz_bin="${BENCH_AUTHZ_BIN:-$target_dir/release/maas-authz}"
    [[ -x "$authz_bin" ]] || die "BENCH_AUTHZ_BIN=$authz_bin is not an executable"
    [[ -z "$REFERENCE_BIN" || -x "$REFERENCE_BIN" ]] || die "BENCH_REFERENCE_BIN=$REFERENCE_BIN is not an executable"
    LOADGEN="$target_dir/release/maas-authz-loadgen"

    STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/maas-bench-check.XXXXXX")"
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    DATABASE_URL="$DB_URL" "$authz_bin" migrate >&2
    local metadata=()
    [[ -z "${BENCH_DYNAMIC_METADATA:-}" ]] || metadata=("MAAS_AUTHZ_DYNAMIC_METADATA=$BENCH_DYNAMIC_METADATA")
    # serve_authz BIN GRPC HTTP INTERNAL METRICS LOG: one maas-authz, limits and metadata as set.
    serve_authz() {
        env RUST_LOG=warn DATABASE_URL="$DB_URL" MAAS_AUTHZ_POLICY_PATH="$REPO_ROOT/examples/policy" \
            MAAS_AUTHZ_LIMITS_ENABLED="$LIMITS" "${metadata[@]}" \
            MAAS_AUTHZ_GRPC_ADDR="127.0.0.1:$2" MAAS_AUTHZ_HTTP_ADDR="127.0.0.1:$3" \
            MAAS_AUTHZ_INTERNAL_ADDR="127.0.0.1:$4" MAAS_AUTHZ_METRICS_ADDR="127.0.0.1:$5" \
            MAAS_AUTHZ_SKIP_MIGRATIONS=true "$1" serve >"$STATE_DIR/$6" 2>&1 </dev/null &
        PIDS+=("$!")
    }
    serve_authz "$authz_bin" "$GRPC_PORT" "$HTTP_PORT" "$INTERNAL_PORT" "$METRICS_PORT" maas-authz.log
    local authz_pid="$!" ref_pid=""
    if [[ -n "$REFERENCE_BIN" ]]; then
        serve_authz "$REFERENCE_BIN" "$REF_GRPC_PORT" "$REF_HTTP_PORT" "$REF_INTERNAL_PORT" \
            "$REF_METRICS_PORT" reference.log
        ref_pid="$!"
    fi
    "$target_dir/release/maas-authz-do-nothing" "127.0.0.1:$NOOP_PORT" >"$STATE_DIR/do-nothing.log" 2>&1 </dev/null &
    PIDS+=("$!")
    local noop_pid="$!"
    wait_port "$GRPC_PORT"
    wait_port "$NOOP_PORT"
    [[ -z "$REFERENCE_BIN" ]] || wait_port "$REF_GRPC_PORT"

    local streams round results="$STATE_DIR/results"
    : >"$results"
    for streams in $STREAMS_LIST; do
        for ((round = 1; round <= ROUNDS; round++)); do
            log "c=$streams round $round/$ROUNDS"
            # The order rotates round by round, so that no server always inherits the machine
            # as another left it.
            local servers=("do-nothing $NOOP_PORT $noop_pid" "maas-authz $GRPC_PORT $authz_pid")
            [[ -z "$REFERENCE_BIN" ]] || servers+=("reference $REF_GRPC_PORT $ref_pid")
            local i n=${#servers[@]}
            for ((i = 0; i < n; i++)); do
                # shellcheck disable=SC2086 # name, port and pid split on purpose
                measure ${servers[$(((i + round - 1) % n))]} "$streams" >>"$results"
            done
        done
    done
    python3 - "$results" "$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import json, statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
commit = sys.argv[2]
print(f"commit {commit}; medians over rounds; CPU = utime+stime of the server process / Checks")
print(f"{'streams':>7} {'server':<11} {'Checks/s':>9} {'µs CPU/Check':>13} {'errors':>6}  rounds (Checks/s)")
for streams in dict.fromkeys(r[1] for r in rows):
    figures = {}
    for server in ("do-nothing", "maas-authz", "reference"):
        mine = [r for r in rows if r[0] == server and r[1] == streams]
        if not mine:
            continue
        rps = statistics.median(float(r[2]) for r in mine)
        cpu = statistics.median(float(r[4]) for r in mine)
        errors = sum(int(r[5]) for r in mine)
        figures[server] = (rps, cpu)
        print(f"{streams:>7} {server:<11} {rps:>9.0f} {cpu:>13.1f} {errors:>6}  {' '.join(r[2] for r in mine)}")
    (base_rps, base_cpu), (rps, cpu) = figures["do-nothing"], figures["maas-authz"]
    print(f"{streams:>7} {'ratio':<11} {rps / base_rps:>9.3f} {cpu / base_cpu:>13.3f}  (maas-authz / do-nothing)")
    line = {"commit": commit, "streams": int(streams), "do_nothing": {"rps": base_rps, "cpu_us": base_cpu},
            "maas_authz": {"rps": rps, "cpu_us": cpu},
            "ratio_rps": round(rps / base_rps, 3), "ratio_cpu": round(cpu / base_cpu, 3)}
    if "reference" in figures:
        ref_rps, ref_cpu = figures["reference"]
        print(f"{streams:>7} {'ratio':<11} {ref_rps / base_rps:>9.3f} {ref_cpu / base_cpu:>13.3f}  (reference / do-nothing)")
        print(f"{streams:>7} {'ratio':<11} {rps / ref_rps:>9.3f} {cpu / ref_cpu:>13.3f}  (maas-authz / reference)")
        line["reference"] = {"rps": ref_rps, "cpu_us": ref_cpu}
    print(json.dumps(line))
EOF
}

main "$@"
