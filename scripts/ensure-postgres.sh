#!/usr/bin/env bash
# scripts/ensure-postgres.sh — find or start a PostgreSQL >= 15 for maas-authz.
#
# Prints exactly ONE line on stdout: an admin connection URL whose role can
# CREATE DATABASE, e.g. postgres://postgres@127.0.0.1:5432/postgres.
# Everything else (progress, errors) goes to stderr. Safe to run repeatedly.
#
# Where the server comes from, first match wins:
#   a. $DATABASE_URL, if set: must answer (pg_isready, else psql, else a TCP
#      probe), otherwise exit 1. Printed unchanged.
#   b. a server on 127.0.0.1:5432 that lets user `postgres` in without a password.
#   c. an installed Debian cluster (pg_lsclusters) of version >= 15: started with
#      pg_ctlcluster --skip-systemctl-redirect if down, used if it then answers as in b.
#   d. a throwaway project-local cluster in .local/postgres/ (trust auth, user
#      postgres, 127.0.0.1:55432), created/started with initdb/pg_ctl and reused
#      on later runs. As root, the server runs as system user `postgres` (or a
#      dedicated `maas-authz-pg` user, created if needed). If the server binaries
#      are missing and we are root with apt-get, `apt-get install postgresql` is
#      run first (that may create a cluster on 5432, so b/c are re-checked).
#
# Usage:
#   scripts/ensure-postgres.sh               print an admin URL (starting things as needed)
#   scripts/ensure-postgres.sh --stop-local  stop the project-local cluster (d), if running
#   scripts/ensure-postgres.sh --server-binaries
#                                            print "BINDIR USER": where initdb/pg_ctl/postgres
#                                            are (installed as in d where missing) and, as root,
#                                            the system user to run them as (empty otherwise);
#                                            for tests that start a cluster of their own
#   scripts/ensure-postgres.sh --help
#
# Environment:
#   DATABASE_URL               use this server (step a) instead of looking for one
#   MAAS_AUTHZ_LOCAL_PG_PORT   port of the project-local cluster (default 55432)
#   MAAS_AUTHZ_PG_BINDIR       directory with initdb/pg_ctl/postgres to use for (d)
#                              (default: newest /usr/lib/postgresql/<ver>/bin, else PATH)
#   MAAS_AUTHZ_NO_INSTALL=1    never apt-get install anything; fail with a hint instead
#   MAAS_AUTHZ_PG_SKIP_SYSTEM=1  testing aid: ignore the system server (skip b and c)
#                              and go straight to the project-local cluster (d)
#
# To throw the local cluster away: scripts/ensure-postgres.sh --stop-local && rm -rf .local/postgres

set -euo pipefail

SCRIPT_NAME="ensure-postgres.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly MIN_MAJOR=15
readonly SYSTEM_URL="postgres://postgres@127.0.0.1:5432/postgres"
readonly LOCAL_PG_PORT="${MAAS_AUTHZ_LOCAL_PG_PORT:-55432}"
readonly READY_TIMEOUT=30
readonly LOCAL_LINK="$REPO_ROOT/.local/postgres"
readonly LOCK_FILE="$REPO_ROOT/.local/postgres.lock"
readonly DEDICATED_USER="maas-authz-pg"

# Set by resolve_local_dir / pick_pg_user / find_server_bindir.
LOCAL_DIR=""
DATA_DIR=""
SOCK_DIR=""
LOG_FILE=""
PG_USER=""
BINDIR=""
# Why the last pg_accepts call said no.
PROBE_REASON=""

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

# --------------------------------------------------------------------------
# Probing servers
# --------------------------------------------------------------------------

# parse_url URL: set URL_HOST and URL_PORT from a postgres:// URL (or a
# "host=... port=..." conninfo string). A host starting with "/" is a socket dir.
parse_url() {
    local url="$1" rest hostport query
    URL_HOST=""
    URL_PORT="5432"
    if [[ "$url" == *://* ]]; then
        rest="${url#*://}"
        query=""
        if [[ "$rest" == *\?* ]]; then
            query="${rest#*\?}"
        fi
        rest="${rest%%\?*}"
        rest="${rest%%/*}"
        hostport="${rest##*@}"
        hostport="${hostport%%,*}" # multi-host URL: probe the first host
        if [[ "$hostport" == \[* ]]; then
            URL_HOST="${hostport#\[}"
            URL_HOST="${URL_HOST%%\]*}"
            hostport="${hostport#*\]}"
            [[ "$hostport" == :* ]] && URL_PORT="${hostport#:}"
        else
            URL_HOST="${hostport%%:*}"
            [[ "$hostport" == *:* ]] && URL_PORT="${hostport#*:}"
        fi
        # ?host=/path&port=N override the authority part.
        if [[ "$query" =~ (^|&)host=([^&]*) ]]; then
            URL_HOST="${BASH_REMATCH[2]}"
        fi
        if [[ "$query" =~ (^|&)port=([0-9]+) ]]; then
            URL_PORT="${BASH_REMATCH[2]}"
        fi
    else
        if [[ "$url" =~ (^|[[:space:]])host=([^[:space:]]*) ]]; then
            URL_HOST="${BASH_REMATCH[2]}"
        fi
        if [[ "$url" =~ (^|[[:space:]])port=([0-9]+) ]]; then
            URL_PORT="${BASH_REMATCH[2]}"
        fi
    fi
    URL_HOST="${URL_HOST//%2[Ff]//}"
    [[ -n "$URL_PORT" ]] || URL_PORT="5432"
}

# tcp_probe HOST PORT: true if something accepts TCP connections there.
tcp_probe() {
    local host="$1" port="$2"
    if have timeout; then
        # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
    fi
}

# url_answers URL: true if the server named by URL answers (not an auth check).
# Uses pg_isready if available, else psql, else a raw TCP / unix-socket probe.
url_answers() {
    local url="$1" tool rc=0 out
    if tool="$(pg_tool pg_isready)"; then
        "$tool" -q -t 5 -d "$url" </dev/null >/dev/null 2>&1 || rc=$?
        # 0 = accepting, 1 = rejecting (starting up / shutting down), 2 = no answer,
        # 3 = bad parameters (e.g. an unparsable URL).
        return "$rc"
    fi
    if tool="$(pg_tool psql)"; then
        out="$(PGCONNECT_TIMEOUT=5 "$tool" -w -X -q -A -t -d "$url" -c 'select 1' </dev/null 2>&1)" || rc=$?
        if ((rc == 0)); then
            return 0
        fi
        # A server that rejects our credentials still answers.
        [[ "$out" == *"authentication failed"* || "$out" == *"password"* || "$out" == *"does not exist"* ]]
        return
    fi
    parse_url "$url"
    if [[ -z "$URL_HOST" ]]; then
        [[ -S "/var/run/postgresql/.s.PGSQL.$URL_PORT" || -S "/tmp/.s.PGSQL.$URL_PORT" ]]
    elif [[ "$URL_HOST" == /* ]]; then
        [[ -S "$URL_HOST/.s.PGSQL.$URL_PORT" ]]
    else
        tcp_probe "$URL_HOST" "$URL_PORT"
    fi
}

# pg_accepts URL: true if URL lets us in WITHOUT a password, the server is
# PostgreSQL >= 15 and the role may CREATE DATABASE. On failure PROBE_REASON
# says why. Without any psql we cannot check, so we accept a server that answers.
pg_accepts() {
    local url="$1" psql out line ver="" can=""
    PROBE_REASON=""
    if ! psql="$(pg_tool psql)"; then
        if url_answers "$url"; then
            warn "psql not found: cannot verify that $url accepts user postgres without a password; assuming it does"
            return 0
        fi
        PROBE_REASON="no answer"
        return 1
    fi
    # No PGPASSWORD / ~/.pgpass: the service and tests get only the URL.
    if ! out="$(env -u PGPASSWORD PGPASSFILE=/nonexistent/.pgpass PGCONNECT_TIMEOUT=5 \
        "$psql" -w -X -q -A -t -F '|' -d "$url" \
        -c "select current_setting('server_version_num'), (select rolcreatedb or rolsuper from pg_roles where rolname = current_user)" \
        </dev/null 2>&1)"; then
        out="${out//$'\n'/ }"
        PROBE_REASON="${out:-psql failed}"
        return 1
    fi
    while IFS= read -r line; do
        if [[ "$line" =~ ^([0-9]+)\|([tf])$ ]]; then
            ver="${BASH_REMATCH[1]}"
            can="${BASH_REMATCH[2]}"
        fi
    done <<<"$out"
    if [[ -z "$ver" ]]; then
        PROBE_REASON="unexpected answer from psql: ${out//$'\n'/ }"
        return 1
    fi
    if ((ver < MIN_MAJOR * 10000)); then
        PROBE_REASON="server is PostgreSQL $((ver / 10000)), need >= $MIN_MAJOR"
        return 1
    fi
    if [[ "$can" != "t" ]]; then
        PROBE_REASON="role may not CREATE DATABASE"
        return 1
    fi
    return 0
}

# listening HOST PORT: true once a server answers on HOST:PORT (any answer).
listening() {
    local tool
    if tool="$(pg_tool pg_isready)"; then
        "$tool" -q -t 2 -h "$1" -p "$2" </dev/null >/dev/null 2>&1
    else
        tcp_probe "$1" "$2"
    fi
}

# detached CMD...: run CMD that may leave a daemon behind (pg_ctl start, apt-get
# postinst), without handing it our stdout (fd 3), stdin or lock fd: a daemon
# holding the stdout pipe would make `$(ensure-postgres.sh)` hang forever.
detached() {
    (
        exec 3>&- </dev/null
        no_lock_fd "$@"
    )
}

# --------------------------------------------------------------------------
# a. DATABASE_URL
# --------------------------------------------------------------------------

use_database_url() {
    local url="$DATABASE_URL"
    if ! url_answers "$url"; then
        parse_url "$url"
        die "DATABASE_URL is set but no PostgreSQL answers there (host '${URL_HOST:-<socket>}', port $URL_PORT); start it, fix DATABASE_URL, or unset DATABASE_URL to let this script find or start one"
    fi
    if pg_tool psql >/dev/null && ! pg_accepts "$url"; then
        warn "DATABASE_URL answers but may not be usable as an admin URL: $PROBE_REASON"
    fi
    log "using DATABASE_URL"
    printf '%s\n' "$url" >&3
    exit 0
}

# --------------------------------------------------------------------------
# b. system server on 127.0.0.1:5432
# --------------------------------------------------------------------------

try_system_default() {
    if ! listening 127.0.0.1 5432; then
        log "no PostgreSQL listening on 127.0.0.1:5432"
        return 1
    fi
    if pg_accepts "$SYSTEM_URL"; then
        log "using the PostgreSQL server on 127.0.0.1:5432"
        return 0
    fi
    log "PostgreSQL on 127.0.0.1:5432 is not usable without a password ($PROBE_REASON)"
    return 1
}

# --------------------------------------------------------------------------
# c. installed Debian clusters
# --------------------------------------------------------------------------

# try_debian_clusters: start a stopped Debian cluster (>= 15) and use it, or use
# a running one on a port other than 5432 (5432 was already tried in b).
# On success prints nothing but sets FOUND_URL.
FOUND_URL=""
try_debian_clusters() {
    local ver name port status rest url
    have pg_lsclusters || return 1
    # Port-5432 clusters first.
    while read -r ver name port status rest; do
        [[ "$ver" =~ ^[0-9]+$ && "$port" =~ ^[0-9]+$ ]] || continue
        ((ver >= MIN_MAJOR)) || continue
        url="postgres://postgres@127.0.0.1:$port/postgres"
        case "$status" in
            online*)
                [[ "$port" != 5432 ]] || continue
                ;;
            down*)
                if ! is_root && [[ "$(id -un)" != "${rest%% *}" ]]; then
                    log "Debian cluster $ver/$name is down, but only root or ${rest%% *} can start it"
                    continue
                fi
                log "starting Debian cluster $ver/$name (port $port)"
                if ! detached pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >&2; then
                    warn "could not start Debian cluster $ver/$name; see its log under /var/log/postgresql/"
                    continue
                fi
                if ! wait_until "$READY_TIMEOUT" listening 127.0.0.1 "$port"; then
                    warn "Debian cluster $ver/$name did not answer on 127.0.0.1:$port within ${READY_TIMEOUT}s"
                    continue
                fi
                ;;
            *) continue ;;
        esac
        if pg_accepts "$url"; then
            log "using Debian cluster $ver/$name on 127.0.0.1:$port"
            FOUND_URL="$url"
            return 0
        fi
        log "Debian cluster $ver/$name on 127.0.0.1:$port is not usable without a password ($PROBE_REASON)"
    done < <(pg_lsclusters -h 2>/dev/null | awk '{ print ($3 == 5432 ? 0 : 1), $0 }' | sort -s -k1,1n | cut -d' ' -f2-)
    return 1
}

# try_system: b, then c. Sets FOUND_URL on success.
try_system() {
    if is_true "${MAAS_AUTHZ_PG_SKIP_SYSTEM:-}"; then
        log "MAAS_AUTHZ_PG_SKIP_SYSTEM is set: ignoring any system PostgreSQL"
        return 1
    fi
    if try_system_default; then
        FOUND_URL="$SYSTEM_URL"
        return 0
    fi
    try_debian_clusters
}

# --------------------------------------------------------------------------
# d. project-local cluster
# --------------------------------------------------------------------------

# server_bindir_candidates: directories that may hold initdb+pg_ctl+postgres.
server_bindir_candidates() {
    local p
    if [[ -n "${MAAS_AUTHZ_PG_BINDIR:-}" ]]; then
        printf '%s\n' "$MAAS_AUTHZ_PG_BINDIR"
        return 0
    fi
    pg_debian_bindirs
    if p="$(command -v initdb 2>/dev/null)"; then
        p="$(readlink -f -- "$p")"
        printf '%s\n' "${p%/*}"
    fi
}

# find_server_bindir [MAJOR]: set BINDIR to a directory with initdb, pg_ctl and
# postgres of version >= 15 (or exactly MAJOR if given). Returns 1 if none.
find_server_bindir() {
    local want="${1:-}" dir major
    BINDIR=""
    while IFS= read -r dir; do
        [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]] || continue
        major="$(pg_major_of "$dir/postgres")" || continue
        if [[ -n "$want" ]]; then
            [[ "$major" == "$want" ]] || continue
        else
            ((major >= MIN_MAJOR)) || continue
        fi
        BINDIR="$dir"
        return 0
    done < <(server_bindir_candidates)
    if [[ -n "${MAAS_AUTHZ_PG_BINDIR:-}" ]]; then
        die "MAAS_AUTHZ_PG_BINDIR=$MAAS_AUTHZ_PG_BINDIR does not contain initdb, pg_ctl and postgres of PostgreSQL ${want:->= $MIN_MAJOR}"
    fi
    return 1
}

# install_postgres: apt-get install postgresql, if we are allowed to.
install_postgres() {
    if is_true "${MAAS_AUTHZ_NO_INSTALL:-}"; then
        log "MAAS_AUTHZ_NO_INSTALL is set: not installing PostgreSQL"
        return 1
    fi
    if ! is_root || ! have apt-get; then
        return 1
    fi
    log "PostgreSQL server binaries not found: installing the Debian package 'postgresql' (set MAAS_AUTHZ_NO_INSTALL=1 to prevent this)"
    detached env DEBIAN_FRONTEND=noninteractive apt-get update >&2 ||
        die "apt-get update failed"
    detached env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2 ||
        die "apt-get install postgresql failed"
}

# pick_pg_user: decide which OS user runs initdb/postgres. Empty = ourselves.
# initdb and postgres refuse to run as root.
pick_pg_user() {
    PG_USER=""
    is_root || return 0
    if [[ -f "$DATA_DIR/PG_VERSION" ]]; then
        PG_USER="$(stat -c %U -- "$DATA_DIR")"
        [[ "$PG_USER" != root ]] || die "$DATA_DIR is owned by root; remove it (rm -rf $LOCAL_DIR) and re-run"
        return 0
    fi
    if id -u postgres >/dev/null 2>&1; then
        PG_USER="postgres"
        return 0
    fi
    PG_USER="$DEDICATED_USER"
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
        have useradd || die "running as root and no 'postgres' user exists; need useradd to create user $PG_USER"
        local shell=/usr/sbin/nologin
        [[ -x "$shell" ]] || shell=/bin/false
        log "creating system user $PG_USER to run the local PostgreSQL (it refuses to run as root)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "$shell" "$PG_USER" ||
            die "useradd $PG_USER failed"
    fi
}

# as_pg_user CMD...: run CMD as PG_USER (or directly when PG_USER is empty).
as_pg_user() {
    if [[ -z "$PG_USER" ]]; then
        "$@"
    elif have runuser; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    elif have su; then
        # shellcheck disable=SC2016 # "$@" is expanded by the inner sh
        (cd / && su -s /bin/sh "$PG_USER" -c 'exec "$@"' sh "$@")
    else
        die "need runuser or su to run PostgreSQL as user $PG_USER"
    fi
}

set_local_paths() {
    LOCAL_DIR="$1"
    DATA_DIR="$LOCAL_DIR/data"
    SOCK_DIR="$LOCAL_DIR/run"
    LOG_FILE="$LOCAL_DIR/postgres.log"
}

# resolve_local_dir: set LOCAL_DIR & co. Normally .local/postgres in the repo.
# When root runs us from a repo the postgres user cannot reach (e.g. under
# /root), the cluster lives in /var/tmp and .local/postgres is a symlink to it.
resolve_local_dir() {
    mkdir -p -- "$REPO_ROOT/.local"
    if [[ -L "$LOCAL_LINK" ]]; then
        set_local_paths "$(readlink -f -- "$LOCAL_LINK")"
        mkdir -p -- "$LOCAL_DIR"
        return 0
    fi
    set_local_paths "$LOCAL_LINK"
    pick_pg_user
    [[ -n "$PG_USER" ]] || return 0
    if as_pg_user test -x "$REPO_ROOT/.local"; then
        return 0
    fi
    local alt owner
    alt="/var/tmp/maas-authz-postgres-$(printf '%s' "$REPO_ROOT" | cksum | cut -d' ' -f1)"
    log "user $PG_USER cannot reach $REPO_ROOT; keeping the local cluster in $alt (linked from .local/postgres)"
    if [[ -e "$alt" ]]; then
        owner="$(stat -c %U -- "$alt")"
        [[ "$owner" == root || "$owner" == "$PG_USER" ]] || die "$alt exists and belongs to $owner; remove it and re-run"
    fi
    mkdir -p -- "$alt"
    chmod 0700 -- "$alt"
    if [[ -e "$LOCAL_LINK" ]]; then
        # Left over from an attempt that could not be used; it holds only our files.
        rm -rf -- "$LOCAL_LINK"
    fi
    ln -s -- "$alt" "$LOCAL_LINK"
    set_local_paths "$alt"
    pick_pg_user
}

# local_running_port: print the port of the running local postmaster; fail if
# it is not running.
local_running_port() {
    [[ -f "$DATA_DIR/postmaster.pid" ]] || return 1
    as_pg_user "$BINDIR/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1 || return 1
    sed -n '4p' "$DATA_DIR/postmaster.pid"
}

# write_local_conf: (re)write our settings file, included from postgresql.conf.
write_local_conf() {
    local conf="$DATA_DIR/maas-authz.conf" sock_line
    sock_line="unix_socket_directories = '${SOCK_DIR//\'/\'\'}'"
    # Unix socket paths are limited to ~107 bytes; we only need TCP anyway.
    if ((${#SOCK_DIR} + 20 > 100)); then
        sock_line="unix_socket_directories = ''"
    fi
    cat >"$conf" <<EOF
# Written by scripts/ensure-postgres.sh on every start; edits are overwritten.
# Throwaway test/dev cluster: durability traded for speed.
listen_addresses = '127.0.0.1'
port = $LOCAL_PG_PORT
$sock_line
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if ! grep -q "^include_if_exists = 'maas-authz.conf'" "$DATA_DIR/postgresql.conf"; then
        printf "\ninclude_if_exists = 'maas-authz.conf'\n" >>"$DATA_DIR/postgresql.conf"
    fi
    if [[ -n "$PG_USER" ]]; then
        chown "$PG_USER:" "$conf" "$DATA_DIR/postgresql.conf"
    fi
    chmod 0600 "$conf"
}

start_local_cluster() {
    local url="postgres://postgres@127.0.0.1:$LOCAL_PG_PORT/postgres" major running_port

    resolve_local_dir
    if [[ -f "$DATA_DIR/PG_VERSION" ]]; then
        major="$(<"$DATA_DIR/PG_VERSION")"
        find_server_bindir "$major" ||
            die "the local cluster in $DATA_DIR was made by PostgreSQL $major, whose server binaries are gone; remove it (rm -rf $LOCAL_LINK) and re-run"
    else
        find_server_bindir || die "PostgreSQL server binaries disappeared"
    fi
    pick_pg_user
    # Use the psql/pg_isready that belong to these binaries if none is on PATH.
    PATH="$PATH:$BINDIR"

    mkdir -p -- "$LOCAL_DIR" "$SOCK_DIR"
    if [[ -n "$PG_USER" ]]; then
        chown "$PG_USER:" "$LOCAL_DIR" "$SOCK_DIR"
        touch -- "$LOG_FILE"
        chown "$PG_USER:" "$LOG_FILE"
    fi

    if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
        log "creating a project-local PostgreSQL $(pg_major_of "$BINDIR/postgres") cluster in $DATA_DIR${PG_USER:+ (owned by $PG_USER)}"
        rm -rf -- "$DATA_DIR"
        local out
        if ! out="$(as_pg_user "$BINDIR/initdb" -D "$DATA_DIR" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C --no-sync --no-instructions </dev/null 2>&1)"; then
            printf '%s\n' "$out" >&2
            die "initdb failed for $DATA_DIR"
        fi
    fi

    if running_port="$(local_running_port)"; then
        if [[ "$running_port" == "$LOCAL_PG_PORT" ]]; then
            log "project-local PostgreSQL already running on 127.0.0.1:$LOCAL_PG_PORT"
        else
            log "project-local PostgreSQL runs on port $running_port, restarting it on $LOCAL_PG_PORT"
            as_pg_user "$BINDIR/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$READY_TIMEOUT" -s </dev/null >&2 ||
                die "could not stop the local cluster in $DATA_DIR"
            running_port=""
        fi
    fi

    if [[ -z "${running_port:-}" ]]; then
        if listening 127.0.0.1 "$LOCAL_PG_PORT"; then
            die "port $LOCAL_PG_PORT on 127.0.0.1 is taken by another process; set MAAS_AUTHZ_LOCAL_PG_PORT to a free port"
        fi
        write_local_conf
        log "starting project-local PostgreSQL on 127.0.0.1:$LOCAL_PG_PORT (log: $LOG_FILE)"
        if ! detached as_pg_user "$BINDIR/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" \
            -w -t "$READY_TIMEOUT" -s >&2; then
            tail -n 20 -- "$LOG_FILE" >&2 || true
            die "could not start the local PostgreSQL in $DATA_DIR within ${READY_TIMEOUT}s (log: $LOG_FILE)"
        fi
    fi

    if ! wait_until "$READY_TIMEOUT" pg_accepts "$url"; then
        die "project-local PostgreSQL on 127.0.0.1:$LOCAL_PG_PORT does not accept connections: $PROBE_REASON (log: $LOG_FILE)"
    fi
    FOUND_URL="$url"
}

stop_local_cluster() {
    if [[ -L "$LOCAL_LINK" ]]; then
        set_local_paths "$(readlink -f -- "$LOCAL_LINK")"
    else
        set_local_paths "$LOCAL_LINK"
    fi
    if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
        log "no project-local PostgreSQL cluster in $DATA_DIR; nothing to stop"
        return 0
    fi
    local major
    major="$(<"$DATA_DIR/PG_VERSION")"
    find_server_bindir "$major" || die "PostgreSQL $major server binaries (pg_ctl) not found; cannot stop $DATA_DIR"
    pick_pg_user
    if ! local_running_port >/dev/null; then
        log "project-local PostgreSQL in $DATA_DIR is not running"
        return 0
    fi
    as_pg_user "$BINDIR/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$READY_TIMEOUT" -s </dev/null >&2 ||
        die "could not stop the project-local PostgreSQL in $DATA_DIR"
    log "stopped the project-local PostgreSQL in $DATA_DIR"
}

# server_binaries: initdb, pg_ctl and postgres (installed where allowed) and, as
# root, a system user to run them; prints "BINDIR USER" on fd 3.
server_binaries() {
    if ! find_server_bindir; then
        install_postgres || true
        find_server_bindir ||
            die "no PostgreSQL >= $MIN_MAJOR server binaries (initdb, pg_ctl, postgres) found; install PostgreSQL $MIN_MAJOR+ (Debian/Ubuntu: apt-get install postgresql) or set MAAS_AUTHZ_PG_BINDIR"
    fi
    # No cluster of ours is involved: pick_pg_user must not look at one.
    DATA_DIR=""
    pick_pg_user
    printf '%s %s\n' "$BINDIR" "$PG_USER" >&3
}

# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

find_or_start() {
    if try_system; then
        return 0
    fi
    if ! find_server_bindir; then
        if install_postgres; then
            # The package may have created and started a cluster on 5432.
            if try_system; then
                return 0
            fi
        fi
        find_server_bindir ||
            die "no PostgreSQL >= $MIN_MAJOR server found; install PostgreSQL $MIN_MAJOR+ (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL=postgres://USER@HOST:PORT/postgres"
    fi
    start_local_cluster
}

main() {
    case "${1:-}" in
        -h | --help)
            usage
            exit 0
            ;;
        --stop-local)
            with_lock "$LOCK_FILE" stop_local_cluster
            exit 0
            ;;
        --server-binaries)
            mkdir -p -- "$REPO_ROOT/.local"
            with_lock "$LOCK_FILE" server_binaries
            exit 0
            ;;
        "") ;;
        *)
            usage
            die "unknown argument: $1"
            ;;
    esac
    if [[ ! "$LOCAL_PG_PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$LOCAL_PG_PORT < 1 || 10#$LOCAL_PG_PORT > 65535)); then
        die "MAAS_AUTHZ_LOCAL_PG_PORT must be a TCP port number (1-65535), got '$LOCAL_PG_PORT'"
    fi

    if [[ -n "${DATABASE_URL:-}" ]]; then
        use_database_url
    fi
    mkdir -p -- "$REPO_ROOT/.local"
    with_lock "$LOCK_FILE" find_or_start
    printf '%s\n' "$FOUND_URL" >&3
}

# From here on stdout is stderr; the one result line goes to fd 3.
exec 3>&1 1>&2
main "$@"
