#!/usr/bin/env bash
# scripts/bench-scale.sh — maas-authz at scale, measured from outside: memory per cached key,
# the last_used_at write-behind at a million keys, warm start under a rolling deploy, and a cold
# replica under a miss storm.
#
# Seeds N active keys straight into PostgreSQL with one INSERT … SELECT (database
# maas_authz_bench_scale, dropped on exit): key i is `sk-oai-bs<i, 10 digits>_benchScaleSecret<i,
# 10 digits>`, stored as lowercase-hex SHA-256(key id ‖ 0x00 ‖ secret) exactly as src/key.rs
# hashes (so `maas-authz-loadgen --seeded-keys N` can use them), user `scale-user-<i / 10>`
# (ten keys per user), groups {system:authenticated}, subscription `free`, last used an hour
# ago (so the warm-start preload reads them). Then, per step in BENCH_SCALE_STEPS:
#
#   memory   for each N in BENCH_SCALE_KEYS: starts the release `maas-authz serve` (cache
#            capacity max(N, 100000), preload on), waits for the preload's log line, lets it
#            settle, reads VmRSS and VmHWM from /proc/<pid>/status; bytes/key = (RSS(N) −
#            RSS(0)) / N. Prints a table and one JSON line per N.
#   flush    with BENCH_SCALE_FLUSH_KEYS keys preloaded, the loadgen sends one Check for every
#            key (--sweep, BENCH_SCALE_STREAMS streams); then polls PostgreSQL until every row's
#            last_used_at is at or after the sweep's start, and reads the write-behind's batch
#            and flush histograms, its per-flush log lines and the server's VmRSS/VmHWM after
#            the sweep (cache, use tracker and all). Prints one JSON line.
#   rolling  replica A (preload on) serves BENCH_SCALE_STREAMS streams over
#            BENCH_SCALE_ROLLING_KEYS keys for 8 s; replica B starts 5 s in; as soon as B's /ready
#            answers 200 a loadgen sends the same load to B (for BENCH_SCALE_ROLLING_DURATION),
#            whether or not B's preload has finished; A ends its run and is stopped. Prints B's
#            errors and the cache misses / key queries B made while serving. One JSON line.
#   storm    a cold replica (no preload: MAAS_AUTHZ_CACHE_PRELOAD=off; every other setting at
#            its default, cache capacity included) gets BENCH_SCALE_STREAMS streams of Checks over
#            BENCH_SCALE_STORM_KEYS distinct keys from the moment its /ready answers, for
#            BENCH_SCALE_STORM_DURATION: nearly every Check is a miss. Run twice, with the
#            known-key set (MAAS_AUTHZ_KNOWN_KEY_FILTER) on, its default, and off. Prints errors,
#            denials (429 unknown_key_rate_limited among them), misses and key queries.
#
# Usage:
#   scripts/bench-scale.sh
#
# Environment:
#   BENCH_SCALE_STEPS="memory flush rolling storm"
#   BENCH_SCALE_KEYS="0 100000 300000 1000000"   key counts of the memory step (0 first)
#   BENCH_SCALE_FLUSH_KEYS=1000000               keys of the flush step
#   BENCH_SCALE_ROLLING_KEYS=100000              keys of the rolling step
#   BENCH_SCALE_STREAMS=64                       concurrent Checks of the loadgen
#   BENCH_SCALE_STORM_KEYS=1000000               keys of the storm step
#   BENCH_SCALE_STORM_DURATION=30s               load on each cold replica in the storm step
#   BENCH_SCALE_ROLLING_DURATION=20s             load on B in the rolling step
#   BENCH_SCALE_SETTLE=3                         seconds between preload end and the RSS read
#   BENCH_AUTHZ_BIN=                             a maas-authz binary instead of this checkout's
#   BENCH_PORT_BASE=19200                        ports BASE..BASE+7 on 127.0.0.1 must be free
#   BENCH_SCALE_SERVER_ENV=                      extra VAR=value words for both servers (e.g.
#                                                MALLOC_ARENA_MAX=2), to compare settings
#   plus everything ensure-postgres.sh reads.
#
# Limits are off (the counters' memory is not the cache's). The loadgen shares the 2 cores with
# the server: the sweep's rate is a lower bound.

set -euo pipefail

SCRIPT_NAME="bench-scale.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly STEPS="${BENCH_SCALE_STEPS:-memory flush rolling storm}"
readonly STORM_KEYS="${BENCH_SCALE_STORM_KEYS:-1000000}"
readonly STORM_DURATION="${BENCH_SCALE_STORM_DURATION:-30s}"
SERVER_ENV_EXTRA=()
readonly KEY_COUNTS="${BENCH_SCALE_KEYS:-0 100000 300000 1000000}"
readonly FLUSH_KEYS="${BENCH_SCALE_FLUSH_KEYS:-1000000}"
readonly ROLLING_KEYS="${BENCH_SCALE_ROLLING_KEYS:-100000}"
readonly STREAMS="${BENCH_SCALE_STREAMS:-64}"
readonly ROLLING_DURATION="${BENCH_SCALE_ROLLING_DURATION:-20s}"
readonly SETTLE="${BENCH_SCALE_SETTLE:-3}"
readonly BASE="${BENCH_PORT_BASE:-19200}"
readonly DB_NAME="maas_authz_bench_scale"
readonly FLUSH_INTERVAL_S=5
read -r -a SERVER_ENV <<<"${BENCH_SCALE_SERVER_ENV:-}"
STATE_DIR=""
PIDS=()
SEEDED=-1
ADMIN_URL=""

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$ADMIN_URL" ]]; then
        env -u PGPASSWORD "$PSQL" -w -X -q -d "$ADMIN_URL" \
            -c "drop database if exists $DB_NAME with (force)" </dev/null >/dev/null 2>&1 || true
    fi
    [[ -z "$STATE_DIR" ]] || rm -rf -- "$STATE_DIR"
}

sql() {
    env -u PGPASSWORD "$PSQL" -w -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB_URL" -c "$1" </dev/null
}

# seed N: exactly N active keys (0..N-1), nothing else. The notify trigger is off while seeding
# (no listener runs yet; a million NOTIFYs would only fill the queue).
seed() {
    local n="$1" started=$SECONDS
    [[ "$SEEDED" == "$n" ]] && return 0
    log "seeding $n keys"
    sql "begin;
alter table api_keys disable trigger maas_authz_key_change_notify;
truncate api_keys;
insert into api_keys (id, username, name, description, key_hash, status, user_groups,
                      subscription, created_at, expires_at, last_used_at, ephemeral, labels, tenant)
select gen_random_uuid()::text, 'scale-user-' || (i / 10), 'bench-scale-' || i,
       'seeded by bench-scale.sh',
       encode(sha256(convert_to('bs' || lpad(i::text, 10, '0'), 'UTF8') || '\\x00'::bytea
                     || convert_to('benchScaleSecret' || lpad(i::text, 10, '0'), 'UTF8')), 'hex'),
       'active', array['system:authenticated'], 'free', now(), now() + interval '1 day',
       now() - interval '1 hour', false, null, 'models-as-a-service'
from generate_series(0, $n - 1) as i;
alter table api_keys enable trigger maas_authz_key_change_notify;
commit;" >/dev/null
    sql "vacuum analyze api_keys" >/dev/null
    SEEDED="$n"
    log "seeded $n keys in $((SECONDS - started)) s"
}

# start_server NAME OFFSET CAPACITY: starts maas-authz on ports BASE+OFFSET..+3, sets SERVER_PID
# (CAPACITY empty: the default; SERVER_ENV_EXTRA: more VAR=value words for this server).
start_server() {
    local name="$1" offset="$2" base=$((BASE + $2)) capacity=()
    [[ -z "$3" ]] || capacity=("MAAS_AUTHZ_CACHE_CAPACITY=$3")
    env RUST_LOG="warn,maas_authz::app::background=debug" MAAS_AUTHZ_LOG_FORMAT=text NO_COLOR=1 \
        DATABASE_URL="$DB_URL" MAAS_AUTHZ_POLICY_PATH="$REPO_ROOT/examples/policy" \
        MAAS_AUTHZ_LIMITS_ENABLED=false "${capacity[@]}" "${SERVER_ENV_EXTRA[@]}" \
        MAAS_AUTHZ_GRPC_ADDR="127.0.0.1:$base" MAAS_AUTHZ_HTTP_ADDR="127.0.0.1:$((base + 1))" \
        MAAS_AUTHZ_INTERNAL_ADDR="127.0.0.1:$((base + 2))" MAAS_AUTHZ_METRICS_ADDR="127.0.0.1:$((base + 3))" \
        MAAS_AUTHZ_SKIP_MIGRATIONS=true "${SERVER_ENV[@]}" \
        "$AUTHZ_BIN" serve >"$STATE_DIR/$name.log" 2>&1 </dev/null &
    SERVER_PID="$!"
    PIDS+=("$SERVER_PID")
    wait_port "$base"
}

stop_server() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_preloaded NAME: until the server's log says the preload ended; prints its key count.
wait_preloaded() {
    local log_file="$STATE_DIR/$1.log" i line
    for ((i = 0; i < 1800; i++)); do
        line="$(plain "$log_file" | grep -a "key cache preload" || true)"
        if [[ -n "$line" ]]; then
            [[ "$line" == *"stopped early"* ]] && die "the preload stopped early: $line"
            sed -n 's/.*keys=\([0-9]*\).*elapsed_ms=\([0-9]*\).*/\1 \2/p' <<<"$line" | tail -n 1
            return 0
        fi
        sleep 0.2
    done
    die "no preload log line after 6 min in $log_file"
}

# plain FILE: a server log without colour escapes.
plain() {
    sed 's/\x1b\[[0-9;]*m//g' "$1"
}

status_kb() {
    awk -v field="$2:" '$1 == field { print $2 }' "/proc/$1/status"
}

metric() {
    # metric PORT NAME_WITH_LABELS: the value of one sample, 0 if absent.
    curl -fsS "http://127.0.0.1:$1/metrics" | awk -v name="$2" '$1 == name { v = $2 } END { print v + 0 }'
}

step_memory() {
    local n out rss0="" results="$STATE_DIR/memory"
    : >"$results"
    for n in $KEY_COUNTS; do
        seed "$n"
        start_server "memory-$n" 0 "$((n > 100000 ? n : 100000))"
        read -r loaded elapsed_ms < <(wait_preloaded "memory-$n")
        sleep "$SETTLE"
        local rss hwm entries
        rss="$(status_kb "$SERVER_PID" VmRSS)"
        hwm="$(status_kb "$SERVER_PID" VmHWM)"
        entries="$(metric $((BASE + 3)) 'maas_authz_cache_entries{cache="known"}')"
        stop_server "$SERVER_PID"
        [[ -n "$rss0" ]] || rss0="$rss"
        log "keys=$n preloaded=$loaded in ${elapsed_ms} ms: VmRSS ${rss} kB, VmHWM ${hwm} kB, cache entries $entries"
        printf '%s %s %s %s %s %s\n' "$n" "$loaded" "$elapsed_ms" "$rss" "$hwm" "$entries" >>"$results"
    done
    python3 - "$results" "$COMMIT" "${BENCH_SCALE_SERVER_ENV:-}" <<'EOF'
import json, sys
rows = [list(map(int, line.split())) for line in open(sys.argv[1])]
commit, server_env = sys.argv[2], sys.argv[3]
base = next((r[3] for r in rows if r[0] == 0), rows[0][3])
print(f"commit {commit}; server env: {server_env or '(none)'}; RSS after the preload settled")
print(f"{'keys':>9} {'preloaded':>9} {'preload s':>9} {'RSS MB':>8} {'HWM MB':>8} {'bytes/key':>9}")
for n, loaded, ms, rss, hwm, entries in rows:
    per_key = (rss - base) * 1024 / n if n else None
    print(f"{n:>9} {loaded:>9} {ms / 1000:>9.1f} {rss / 1024:>8.1f} {hwm / 1024:>8.1f} {'-' if per_key is None else str(round(per_key)):>9}")
for n, loaded, ms, rss, hwm, entries in rows:
    print(json.dumps({"step": "memory", "commit": commit, "server_env": server_env, "keys": n,
                      "preloaded": loaded, "cache_entries": entries, "preload_s": ms / 1000,
                      "rss_mb": round(rss / 1024, 1), "hwm_mb": round(hwm / 1024, 1),
                      "bytes_per_key": round((rss - base) * 1024 / n) if n else None}))
EOF
}

step_flush() {
    local n="$FLUSH_KEYS" port=$((BASE + 3))
    seed "$n"
    start_server flush 0 "$((n > 100000 ? n : 100000))"
    wait_preloaded flush >/dev/null
    local since sweep_end written=0 waited=0 deadline out
    since="$(sql "select now()")"
    log "flush: one Check for each of $n keys, $STREAMS streams"
    out="$("$LOADGEN" --target "127.0.0.1:$BASE" --seeded-keys "$n" --sweep --streams "$STREAMS" \
        --duration 600s --json 2>>"$STATE_DIR/loadgen.log")"
    sweep_end=$SECONDS
    deadline=$((2 * FLUSH_INTERVAL_S + 1))
    while :; do
        written="$(sql "select count(*) from api_keys where last_used_at >= '$since'")"
        waited=$((SECONDS - sweep_end))
        ((written >= n || waited > 120)) && break
        sleep 0.5
    done
    local batches batch_sum flush_count flush_sum failures slowest
    batches="$(metric "$port" maas_authz_last_used_batch_seconds_count)"
    batch_sum="$(metric "$port" maas_authz_last_used_batch_seconds_sum)"
    flush_count="$(metric "$port" maas_authz_last_used_flush_seconds_count)"
    flush_sum="$(metric "$port" maas_authz_last_used_flush_seconds_sum)"
    failures="$(metric "$port" maas_authz_last_used_write_failures_total)"
    slowest="$(plain "$STATE_DIR/flush.log" | sed -n 's/.*slowest_batch_ms=\([0-9]*\).*/\1/p' | sort -n | tail -n 1)"
    plain "$STATE_DIR/flush.log" | grep -a "last_used_at flushed" | sed 's/^/  /' >&2 || true
    local rss hwm
    rss="$(status_kb "$SERVER_PID" VmRSS)"
    hwm="$(status_kb "$SERVER_PID" VmHWM)"
    stop_server "$SERVER_PID"
    python3 - "$out" "$n" "$written" "$waited" "$deadline" "$batches" "$batch_sum" "$flush_count" \
        "$flush_sum" "$failures" "${slowest:-0}" "$COMMIT" "$rss" "$hwm" <<'EOF'
import json, sys
out, n, written, waited, deadline = json.loads(sys.argv[1])["maas_authz"], *map(int, sys.argv[2:6])
batches, batch_sum, flushes, flush_sum, failures, slowest = (float(x) for x in sys.argv[6:12])
print(f"flush: {out['requests']} Checks over {n} keys in {out['seconds']} s ({out['rps']}/s, "
      f"{out['errors']} errors, {out['denied']} denied); {written} of {n} rows written "
      f"{waited} s after the sweep (two flush intervals: {deadline - 1} s); "
      f"{int(batches)} batches, mean {batch_sum / max(batches, 1) * 1000:.1f} ms, slowest {slowest:.0f} ms; "
      f"{int(flushes)} flushes, mean {flush_sum / max(flushes, 1) * 1000:.0f} ms; {int(failures)} failed batches; "
      f"after: VmRSS {int(sys.argv[13]) / 1024:.1f} MB, VmHWM {int(sys.argv[14]) / 1024:.1f} MB")
print(json.dumps({"step": "flush", "commit": sys.argv[12], "keys": n, "checks": out["requests"],
                  "sweep_s": out["seconds"], "rps": out["rps"], "errors": out["errors"],
                  "denied": out["denied"], "rows_written": written, "written_after_sweep_s": waited,
                  "all_within_two_flushes": written >= n and waited <= deadline,
                  "batches": int(batches), "batch_mean_ms": round(batch_sum / max(batches, 1) * 1000, 1),
                  "slowest_batch_ms": slowest, "flushes": int(flushes),
                  "flush_mean_ms": round(flush_sum / max(flushes, 1) * 1000, 1),
                  "failed_batches": int(failures), "rss_after_mb": round(int(sys.argv[13]) / 1024, 1),
                  "hwm_mb": round(int(sys.argv[14]) / 1024, 1)}))
EOF
}

step_rolling() {
    local n="$ROLLING_KEYS" a_pid b_pid loadgen_pid b_http=$((BASE + 5)) b_metrics=$((BASE + 7))
    seed "$n"
    start_server rolling-a 0 100000
    a_pid="$SERVER_PID"
    wait_preloaded rolling-a >/dev/null
    log "rolling: $STREAMS streams over $n keys at A; B starts meanwhile"
    "$LOADGEN" --target "127.0.0.1:$BASE" --seeded-keys "$n" --streams "$STREAMS" \
        --duration 8s --warmup 0s --json >"$STATE_DIR/rolling-a.json" 2>>"$STATE_DIR/loadgen.log" &
    loadgen_pid="$!"
    sleep 5
    local b_started=$SECONDS ready_after misses_before queries_before misses_after queries_after
    start_server rolling-b 4 100000
    b_pid="$SERVER_PID"
    until curl -fsS -o /dev/null "http://127.0.0.1:$b_http/ready" 2>/dev/null; do sleep 0.1; done
    ready_after=$((SECONDS - b_started))
    local preloaded_at_ready
    preloaded_at_ready="$(plain "$STATE_DIR/rolling-b.log" | grep -ac "key cache preloaded" || true)"
    misses_before="$(metric "$b_metrics" 'maas_authz_cache_lookups_total{result="miss"}')"
    queries_before="$(metric "$b_metrics" 'maas_authz_db_query_duration_seconds_count{statement="select_key_by_hash"}')"
    # B is ready: the load moves to it at once (its preload may still be running), while A
    # finishes what it was sent and goes away (SIGTERM, as Kubernetes does).
    local b_loadgen_pid
    "$LOADGEN" --target "127.0.0.1:$((BASE + 4))" --seeded-keys "$n" --streams "$STREAMS" \
        --duration "$ROLLING_DURATION" --warmup 0s --json >"$STATE_DIR/rolling-b.json" 2>>"$STATE_DIR/loadgen.log" &
    b_loadgen_pid="$!"
    wait "$loadgen_pid"
    stop_server "$a_pid"
    wait "$b_loadgen_pid"
    misses_after="$(metric "$b_metrics" 'maas_authz_cache_lookups_total{result="miss"}')"
    queries_after="$(metric "$b_metrics" 'maas_authz_db_query_duration_seconds_count{statement="select_key_by_hash"}')"
    local preload_line
    preload_line="$(wait_preloaded rolling-b)"
    stop_server "$b_pid"
    python3 - "$STATE_DIR/rolling-a.json" "$STATE_DIR/rolling-b.json" "$ready_after" "$preloaded_at_ready" \
        "$misses_before" "$misses_after" "$queries_before" "$queries_after" "$preload_line" "$n" "$COMMIT" <<'EOF'
import json, sys
a, b = (json.load(open(p))["maas_authz"] for p in sys.argv[1:3])
ready_after, preloaded_at_ready = int(sys.argv[3]), int(sys.argv[4]) > 0
m0, m1, q0, q1 = (int(float(x)) for x in sys.argv[5:9])
keys, preload_ms = (int(x) for x in sys.argv[9].split())
n, commit = int(sys.argv[10]), sys.argv[11]
print(f"rolling: A {a['requests']} Checks, {a['errors']} errors; B ready {ready_after} s after start "
      f"(preload of {keys} keys took {preload_ms} ms, {'done' if preloaded_at_ready else 'not done'} at ready); "
      f"B {b['requests']} Checks at {b['rps']}/s, {b['errors']} errors (first: {b['first_error']}), "
      f"{b['denied']} denied; B's cache misses: {m1 - m0} while serving ({m1} since start), "
      f"key queries {q1 - q0} while serving ({q1} since start)")
print(json.dumps({"step": "rolling", "commit": commit, "keys": n,
                  "a": {"checks": a["requests"], "errors": a["errors"], "denied": a["denied"]},
                  "b": {"checks": b["requests"], "rps": b["rps"], "errors": b["errors"], "denied": b["denied"],
                        "first_error": b["first_error"], "p99_us": b["latency_us"]["p99"]},
                  "b_ready_after_s": ready_after, "b_preloaded_keys": keys, "b_preload_ms": preload_ms,
                  "b_preload_done_at_ready": preloaded_at_ready,
                  "b_misses_while_serving": m1 - m0, "b_misses_since_start": m1,
                  "b_key_queries_while_serving": q1 - q0, "b_key_queries_since_start": q1}))
EOF
}

# storm_run NAME FILTER: one cold replica (no preload, defaults otherwise, MAAS_AUTHZ_KNOWN_KEY_FILTER
# as FILTER) under STREAMS streams of Checks over STORM_KEYS distinct keys from the moment its
# /ready answers; prints one JSON line.
storm_run() {
    local name="$1" filter="$2" port=$((BASE + 3)) out
    SERVER_ENV_EXTRA=(MAAS_AUTHZ_CACHE_PRELOAD=off "MAAS_AUTHZ_KNOWN_KEY_FILTER=$filter")
    start_server "$name" 0 ""
    SERVER_ENV_EXTRA=()
    until curl -fsS -o /dev/null "http://127.0.0.1:$((BASE + 1))/ready" 2>/dev/null; do sleep 0.1; done
    out="$("$LOADGEN" --target "127.0.0.1:$BASE" --seeded-keys "$STORM_KEYS" --streams "$STREAMS" \
        --duration "$STORM_DURATION" --warmup 0s --json 2>>"$STATE_DIR/loadgen.log")"
    local throttled misses queries loaded_ms
    throttled="$(metric "$port" 'maas_authz_check_decisions_total{outcome="deny",reason="unknown_key_rate_limited"}')"
    misses="$(metric "$port" 'maas_authz_cache_lookups_total{result="miss"}')"
    queries="$(metric "$port" 'maas_authz_db_query_duration_seconds_count{statement="select_key_by_hash"}')"
    loaded_ms="$(plain "$STATE_DIR/$name.log" | sed -n 's/.*known keys loaded.*elapsed_ms=\([0-9]*\).*/\1/p' | tail -n 1)"
    stop_server "$SERVER_PID"
    python3 - "$name" "$out" "$throttled" "$misses" "$queries" "${loaded_ms:--1}" "$STORM_KEYS" "$STREAMS" "$COMMIT" <<'PY'
import json, sys
name, out = sys.argv[1], json.loads(sys.argv[2])["maas_authz"]
throttled, misses, queries, loaded_ms, keys, streams = (int(float(x)) for x in sys.argv[3:9])
print(json.dumps({"step": "storm", "commit": sys.argv[9], "run": name, "keys": keys, "streams": streams,
                  "checks": out["requests"], "rps": out["rps"], "errors": out["errors"],
                  "first_error": out["first_error"], "denied": out["denied"], "throttled": throttled,
                  "misses": misses, "key_queries": queries, "known_keys_loaded_ms": loaded_ms,
                  "p99_us": out["latency_us"]["p99"]}))
PY
}

step_storm() {
    seed "$STORM_KEYS"
    local results="$STATE_DIR/storm"
    : >"$results"
    log "storm: a cold replica (no preload) under $STREAMS streams over $STORM_KEYS distinct keys, known-key set on, then off"
    storm_run storm-filter-on true >>"$results"
    storm_run storm-filter-off false >>"$results"
    python3 - "$results" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    loaded = f"in {r['known_keys_loaded_ms']} ms" if r["known_keys_loaded_ms"] >= 0 else "never (off)"
    print(f"{r['run']}: {r['checks']} Checks at {r['rps']}/s over {r['keys']} keys, {r['streams']} streams: "
          f"{r['errors']} errors (first: {r['first_error']}), {r['denied']} denied ({r['throttled']} "
          f"unknown_key_rate_limited); {r['misses']} cache misses, {r['key_queries']} key queries; "
          f"known keys loaded {loaded}; p99 {r['p99_us']} µs")
    print(line.strip())
PY
}

main() {
    bench_arguments "${BASH_SOURCE[0]}" "$@"
    cd -- "$REPO_ROOT"
    ensure_cargo
    require_free_ports "$BASE" $((BASE + 7))
    local admin_url target_dir
    admin_url="$(bash "$REPO_ROOT/scripts/ensure-postgres.sh")"
    PSQL="$(pg_tool psql)" || die "psql not found"
    DB_URL="$(url_with_db "$admin_url" "$DB_NAME")"

    log "release build (maas-authz, maas-authz-loadgen)"
    cargo build --release -p maas-authz --bin maas-authz >&2
    cargo build --release -p maas-authz-loadgen --bins >&2
    target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    AUTHZ_BIN="${BENCH_AUTHZ_BIN:-$target_dir/release/maas-authz}"
    [[ -x "$AUTHZ_BIN" ]] || die "BENCH_AUTHZ_BIN=$AUTHZ_BIN is not an executable"
    LOADGEN="$target_dir/release/maas-authz-loadgen"
    COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"

    STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/maas-bench-scale.XXXXXX")"
    ADMIN_URL="$admin_url"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    env -u PGPASSWORD "$PSQL" -w -X -q -d "$admin_url" -c "drop database if exists $DB_NAME with (force)" </dev/null >/dev/null
    env -u PGPASSWORD "$PSQL" -w -X -q -d "$admin_url" -c "create database $DB_NAME" </dev/null >/dev/null
    DATABASE_URL="$DB_URL" "$AUTHZ_BIN" migrate >&2

    local step
    for step in $STEPS; do
        case "$step" in
            memory) step_memory ;;
            flush) step_flush ;;
            rolling) step_rolling ;;
            storm) step_storm ;;
            *) die "unknown step in BENCH_SCALE_STEPS: $step (memory, flush, rolling, storm)" ;;
        esac
    done
}

main "$@"
