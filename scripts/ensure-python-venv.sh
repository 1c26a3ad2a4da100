#!/usr/bin/env bash
# scripts/ensure-python-venv.sh — create/update the project's Python virtualenv.
#
# Idempotently creates .venv/ (python3 -m venv) and installs the packages listed
# in scripts/requirements-test.txt (or the requirements file given as the only
# argument). pip runs only when the requirements file or the interpreter changed
# since the last successful install (a hash is kept in .venv/). Prints the
# virtualenv directory on stdout; progress goes to stderr.
#
# Usage:
#   scripts/ensure-python-venv.sh [REQUIREMENTS_FILE]
#
# Environment:
#   MAAS_AUTHZ_PYTHON        interpreter used to create the venv (default: python3)
#   MAAS_AUTHZ_NO_INSTALL=1  never apt-get install python3-venv; fail with a hint instead
#   PIP_*                    honoured by pip as usual (e.g. PIP_INDEX_URL)

set -euo pipefail

SCRIPT_NAME="ensure-python-venv.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly VENV_DIR="$REPO_ROOT/.venv"
readonly STAMP="$VENV_DIR/.maas-authz-requirements.sha256"
readonly PYTHON="${MAAS_AUTHZ_PYTHON:-python3}"

venv_works() {
    [[ -x "$VENV_DIR/bin/python" ]] &&
        "$VENV_DIR/bin/python" -m pip --version >/dev/null 2>&1
}

# apt_install PKG...: install Debian packages if we are root, allowed, and on apt.
apt_install() {
    if is_true "${MAAS_AUTHZ_NO_INSTALL:-}" || ! is_root || ! have apt-get; then
        return 1
    fi
    log "installing Debian package(s): $* (set MAAS_AUTHZ_NO_INSTALL=1 to prevent this)"
    DEBIAN_FRONTEND=noninteractive apt-get update </dev/null >&2 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" </dev/null >&2
}

create_venv() {
    local out
    rm -rf -- "$VENV_DIR"
    log "creating virtualenv $VENV_DIR with $PYTHON ($("$PYTHON" --version 2>&1))"
    if out="$("$PYTHON" -m venv "$VENV_DIR" 2>&1)" && venv_works; then
        return 0
    fi
    rm -rf -- "$VENV_DIR"
    # Debian/Ubuntu ship venv/ensurepip separately from python3.
    if [[ "$(command -v "$PYTHON")" == /usr/bin/* ]] && apt_install python3-venv; then
        if out="$("$PYTHON" -m venv "$VENV_DIR" 2>&1)" && venv_works; then
            return 0
        fi
        rm -rf -- "$VENV_DIR"
    fi
    printf '%s\n' "$out" >&2
    die "could not create $VENV_DIR with '$PYTHON -m venv'; on Debian/Ubuntu: apt-get install python3-venv"
}

ensure_venv() {
    local req="$1" want
    if ! have "$PYTHON"; then
        if [[ "$PYTHON" == python3 ]] && apt_install python3 python3-venv && have python3; then
            :
        else
            die "$PYTHON not found; install Python 3 (Debian/Ubuntu: apt-get install python3 python3-venv) or set MAAS_AUTHZ_PYTHON"
        fi
    fi
    if ! venv_works; then
        create_venv
    fi
    want="$({
        "$VENV_DIR/bin/python" --version 2>&1
        cat -- "$req"
    } | sha256sum | cut -d' ' -f1)"
    if [[ -f "$STAMP" && "$(<"$STAMP")" == "$want" ]]; then
        log "$VENV_DIR is up to date with ${req#"$REPO_ROOT"/}"
        return 0
    fi
    log "installing ${req#"$REPO_ROOT"/} into $VENV_DIR"
    rm -f -- "$STAMP"
    "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input \
        --requirement "$req" </dev/null >&2 ||
        die "pip install -r ${req#"$REPO_ROOT"/} failed (see the pip output above)"
    printf '%s\n' "$want" >"$STAMP"
}

main() {
    local req="${1:-$REPO_ROOT/scripts/requirements-test.txt}"
    if [[ $# -gt 1 || "$req" == -* ]]; then
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
        [[ "$req" == -h || "$req" == --help ]] && exit 0
        die "expected at most one argument, a requirements file"
    fi
    [[ -f "$req" ]] || die "requirements file not found: $req"
    req="$(cd -- "$(dirname -- "$req")" && pwd -P)/$(basename -- "$req")"
    with_lock "$REPO_ROOT/.local/venv.lock" ensure_venv "$req"
    printf '%s\n' "$VENV_DIR"
}

main "$@"
