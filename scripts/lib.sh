# shellcheck shell=bash
# scripts/lib.sh — shared helpers for the maas-authz developer/CI scripts.
#
# Source it from a script in scripts/ (or .ci/):
#     # shellcheck source=scripts/lib.sh
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Provides:
#   SCRIPT_NAME         basename of the calling script, used as log prefix
#   REPO_ROOT           absolute path of the repository root (exported)
#   log/warn/die        messages to stderr, prefixed with "SCRIPT_NAME:"
#   have CMD            true if CMD is an executable on PATH
#   is_root             true if running as uid 0
#   is_true VALUE       true for 1/true/yes/on (case-insensitive)
#   run_quiet CMD...    run CMD with its stdout sent to stderr (keeps stdout clean)
#   pg_tool NAME        absolute path of a PostgreSQL tool (psql, pg_isready, ...)
#   pg_major_of BINARY  major version of a PostgreSQL binary (e.g. 15)
#   wait_until SECS CMD poll CMD once a second until it succeeds; fail after SECS seconds
#   ensure_cargo        make sure `cargo` is on PATH (rustup's ~/.cargo/bin), or die
#   redact_url URL      URL with its password replaced by ***
#   url_with_db URL DB  the same postgres:// URL, pointing at database DB
#   with_lock FILE CMD  run CMD while holding an exclusive flock on FILE (if flock exists)
#   no_lock_fd CMD...   run CMD without inheriting that lock (for daemons)
#
# Reads no environment variables except HOME (for ensure_cargo).

# Guard against double sourcing.
if [[ -n "${__MAAS_AUTHZ_LIB_SH:-}" ]]; then
    return 0
fi
__MAAS_AUTHZ_LIB_SH=1

SCRIPT_NAME="${SCRIPT_NAME:-$(basename -- "$0")}"

log() {
    printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
}

warn() {
    printf '%s: warning: %s\n' "$SCRIPT_NAME" "$*" >&2
}

die() {
    printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
    exit 1
}

have() {
    command -v "$1" >/dev/null 2>&1
}

is_root() {
    [[ "$(id -u)" -eq 0 ]]
}

is_true() {
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

# Run a command but send its stdout to stderr, so that scripts whose stdout is
# a machine-readable result (ensure-postgres.sh) stay clean.
run_quiet() {
    "$@" >&2
}

# Repository root: the parent directory of scripts/.
REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
export REPO_ROOT

# pg_tool NAME: print the absolute path of PostgreSQL client/server tool NAME.
# Looks on PATH first, then in the newest /usr/lib/postgresql/<ver>/bin (the
# Debian layout, where e.g. initdb is never on PATH). A candidate must answer
# `NAME --version` (Debian's /usr/bin/psql wrapper exists without any client
# installed). Returns 1 if not found.
pg_tool() {
    local name="$1" cand
    while IFS= read -r cand; do
        if [[ -x "$cand" ]] && "$cand" --version </dev/null >/dev/null 2>&1; then
            printf '%s\n' "$cand"
            return 0
        fi
    done < <(
        command -v "$name" 2>/dev/null || true
        pg_debian_bindirs | sed "s|\$|/$name|"
    )
    return 1
}

# pg_debian_bindirs: list /usr/lib/postgresql/<ver>/bin directories, newest first.
pg_debian_bindirs() {
    local d
    [[ -d /usr/lib/postgresql ]] || return 0
    for d in /usr/lib/postgresql/*/bin; do
        [[ -d "$d" ]] && printf '%s\n' "$d"
    done | sort -t/ -k5,5nr
}

# pg_major_of BINARY: print the major version of a PostgreSQL binary, e.g.
# "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" -> 15.
pg_major_of() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    if [[ "$out" =~ \(PostgreSQL\)\ ([0-9]+) ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
        return 0
    fi
    return 1
}

# wait_until SECS CMD...: run CMD every second until it succeeds (return 0) or
# SECS seconds have passed (return 1). Never waits forever.
wait_until() {
    local secs="$1" deadline
    shift
    deadline=$((SECONDS + secs))
    while true; do
        if "$@"; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
}

# ensure_cargo: make `cargo` available (rustup installs it in ~/.cargo/bin,
# which non-login shells may not have on PATH).
ensure_cargo() {
    if have cargo; then
        return 0
    fi
    if [[ -x "${HOME:-/nonexistent}/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
        return 0
    fi
    die "cargo not found; install the Rust toolchain with rustup (https://rustup.rs), then re-run"
}

# with_lock LOCKFILE CMD...: run CMD holding an exclusive lock on LOCKFILE, so
# that two scripts running at once do not race (e.g. two initdb's). Without
# flock(1) the command simply runs unlocked. If CMD fails under `set -e` the
# script exits and the kernel releases the lock.
# Long-running children (database servers) must be started through
# no_lock_fd, or they would inherit the lock fd and hold the lock forever.
__MAAS_LOCK_FD=""
with_lock() {
    local lockfile="$1"
    shift
    if ! have flock; then
        "$@"
        return
    fi
    mkdir -p -- "$(dirname -- "$lockfile")"
    exec {__MAAS_LOCK_FD}>>"$lockfile"
    if ! flock -w 300 "$__MAAS_LOCK_FD"; then
        die "timed out after 300 s waiting for lock $lockfile (is another script still running?)"
    fi
    "$@"
    exec {__MAAS_LOCK_FD}>&-
    __MAAS_LOCK_FD=""
}

# no_lock_fd CMD...: run CMD (a command or a function) with the with_lock fd
# (if any) closed.
no_lock_fd() {
    (
        if [[ -n "$__MAAS_LOCK_FD" ]]; then
            exec {__MAAS_LOCK_FD}>&-
        fi
        "$@"
    )
}

# redact_url URL: URL with any password replaced by "***", for printing.
redact_url() {
    local url="$1"
    if [[ "$url" =~ ^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@(.*)$ ]]; then
        printf '%s:***@%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
        printf '%s\n' "$url"
    fi
}

# url_with_db URL DBNAME: the same postgres:// URL pointing at database DBNAME
# (query parameters kept). For "key=value" conninfo strings, dbname= is appended.
url_with_db() {
    local url="$1" db="$2" base query="" rest
    if [[ "$url" != *://* ]]; then
        printf '%s dbname=%s\n' "$url" "$db"
        return 0
    fi
    base="${url%%\?*}"
    if [[ "$url" == *\?* ]]; then
        query="?${url#*\?}"
    fi
    rest="${base#*://}"
    printf '%s://%s/%s%s\n' "${base%%://*}" "${rest%%/*}" "$db" "$query"
}

# cpu_ticks PID: the user+system CPU time the process has spent, in clock ticks (the benchmarks'
# CPU per request).
cpu_ticks() {
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name's closing parenthesis.
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# wait_port PORT: waits up to 60 s until something listens on 127.0.0.1:PORT; else shows the tail
# of the logs in $STATE_DIR (the benchmark servers' logs) and dies.
wait_port() {
    local port="$1" i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.2
    done
    [[ -z "${STATE_DIR:-}" ]] || tail -n 20 "$STATE_DIR"/*.log >&2 || true
    die "nothing listens on 127.0.0.1:$port after 60 s (the servers' logs are above)"
}

# bench_arguments SCRIPT ARGS...: a benchmark script takes no argument but --help, which prints
# SCRIPT's header comment.
bench_arguments() {
    local script="$1"
    shift
    case "${1:-}" in
        -h | --help)
            sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$script" >&2
            exit 0
            ;;
        "") ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
}

# require_free_ports FIRST LAST: dies naming the first port of 127.0.0.1:FIRST..LAST in use.
require_free_ports() {
    local port
    for port in $(seq "$1" "$2"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port on 127.0.0.1 is in use; set BENCH_PORT_BASE"
        fi
    done
}
