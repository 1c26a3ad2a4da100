#!/usr/bin/env bash
# scripts/ensure-redis.sh — find or start a Redis for maas-authz's shared rate-limit counters.
#
# Prints exactly ONE line on stdout: a Redis URL, e.g. redis://127.0.0.1:6379.
# Everything else (progress, errors) goes to stderr. Safe to run repeatedly.
#
# Where the server comes from, first match wins:
#   a. $MAAS_AUTHZ_TEST_REDIS_URL, if set: must answer PING, otherwise exit 1.
#   b. a server on 127.0.0.1:6379 that answers PING.
#   c. a project-local server from the machine's `redis-server` on 127.0.0.1:56379
#      (data in .local/redis/, no persistence), started if not running. If
#      redis-server is missing and we are root with apt-get, `apt-get install
#      redis-server` is run first (which may start a server on 6379: b is re-checked).
#
# Usage:
#   scripts/ensure-redis.sh               print a Redis URL (starting things as needed)
#   scripts/ensure-redis.sh --stop-local  stop the project-local server (c), if running
#   scripts/ensure-redis.sh --server-binary
#                                         print the path of redis-server (installed as in c
#                                         where missing); for tests that start their own
#
# Environment:
#   MAAS_AUTHZ_TEST_REDIS_URL     use this server (step a)
#   MAAS_AUTHZ_LOCAL_REDIS_PORT   port of the project-local server (default 56379)
#   MAAS_AUTHZ_NO_INSTALL=1       never apt-get install anything; fail with a hint instead

set -euo pipefail

SCRIPT_NAME="ensure-redis.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly SYSTEM_HOST=127.0.0.1
readonly SYSTEM_PORT=6379
readonly LOCAL_PORT="${MAAS_AUTHZ_LOCAL_REDIS_PORT:-56379}"
readonly LOCAL_DIR="$REPO_ROOT/.local/redis"

# redis_answers HOST PORT: true if a PING gets PONG (redis-cli if present, else bash's /dev/tcp).
redis_answers() {
    local host="$1" port="$2" reply
    if have redis-cli; then
        reply="$(redis-cli -h "$host" -p "$port" ping 2>/dev/null || true)"
        [[ "$reply" == "PONG" ]]
        return
    fi
    exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || true
    exec 3>&- 3<&-
    [[ "$reply" == +PONG* ]]
}

# host_and_port URL: "HOST PORT" of a redis:// URL (default port 6379).
host_and_port() {
    local rest="${1#redis://}"
    rest="${rest#*@}"
    rest="${rest%%/*}"
    local host="${rest%%:*}" port=6379
    [[ "$rest" == *:* ]] && port="${rest##*:}"
    printf '%s %s\n' "${host:-127.0.0.1}" "$port"
}

install_redis() {
    if is_root && have apt-get && ! is_true "${MAAS_AUTHZ_NO_INSTALL:-}"; then
        log "installing redis-server (apt-get)"
        DEBIAN_FRONTEND=noninteractive run_quiet apt-get update -qq
        DEBIAN_FRONTEND=noninteractive run_quiet apt-get install -y -qq redis-server
    else
        die "no Redis found and redis-server is not installed: install it (apt-get install redis-server) or set MAAS_AUTHZ_TEST_REDIS_URL"
    fi
}

start_local() {
    mkdir -p -- "$LOCAL_DIR"
    log "starting a project-local redis-server on $SYSTEM_HOST:$LOCAL_PORT (dir $LOCAL_DIR)"
    run_quiet redis-server --bind "$SYSTEM_HOST" --port "$LOCAL_PORT" --dir "$LOCAL_DIR" \
        --daemonize yes --save '' --appendonly no \
        --pidfile "$LOCAL_DIR/redis.pid" --logfile "$LOCAL_DIR/redis.log"
    wait_until 10 redis_answers "$SYSTEM_HOST" "$LOCAL_PORT" ||
        die "redis-server did not answer on $SYSTEM_HOST:$LOCAL_PORT (see $LOCAL_DIR/redis.log)"
}

stop_local() {
    if [[ -f "$LOCAL_DIR/redis.pid" ]]; then
        kill "$(cat -- "$LOCAL_DIR/redis.pid")" 2>/dev/null || true
        rm -f -- "$LOCAL_DIR/redis.pid"
        log "stopped the project-local redis-server"
    fi
}

main() {
    case "${1:-}" in
        -h | --help)
            sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
            exit 0
            ;;
        --stop-local)
            stop_local
            exit 0
            ;;
        --server-binary)
            have redis-server || install_redis
            command -v redis-server
            exit 0
            ;;
    esac

    if [[ -n "${MAAS_AUTHZ_TEST_REDIS_URL:-}" ]]; then
        local host port
        read -r host port <<<"$(host_and_port "$MAAS_AUTHZ_TEST_REDIS_URL")"
        redis_answers "$host" "$port" || die "MAAS_AUTHZ_TEST_REDIS_URL does not answer PING"
        printf '%s\n' "$MAAS_AUTHZ_TEST_REDIS_URL"
        return
    fi
    if redis_answers "$SYSTEM_HOST" "$SYSTEM_PORT"; then
        printf 'redis://%s:%s\n' "$SYSTEM_HOST" "$SYSTEM_PORT"
        return
    fi
    if ! redis_answers "$SYSTEM_HOST" "$LOCAL_PORT"; then
        if ! have redis-server; then
            install_redis
            if redis_answers "$SYSTEM_HOST" "$SYSTEM_PORT"; then
                printf 'redis://%s:%s\n' "$SYSTEM_HOST" "$SYSTEM_PORT"
                return
            fi
        fi
        start_local
    fi
    printf 'redis://%s:%s\n' "$SYSTEM_HOST" "$LOCAL_PORT"
}

main "$@"
