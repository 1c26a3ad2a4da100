#!/usr/bin/env bash
# scripts/ensure-chromium.sh — find or install headless Chromium and its WebDriver for the portal's
# browser tests (tests/it/portal.rs).
#
# Prints exactly ONE line on stdout: "CHROMIUM CHROMEDRIVER" (two absolute paths).
# Everything else (progress, errors) goes to stderr. Safe to run repeatedly.
#
# Where they come from, first match wins:
#   a. $MAAS_AUTHZ_CHROMIUM_BIN and $MAAS_AUTHZ_CHROMEDRIVER_BIN, if both set (must be executable);
#   b. chromium and chromedriver on PATH (Debian puts them in /usr/bin);
#   c. as root with apt-get: `apt-get install chromium chromium-driver` (Debian's packages).
#
# Environment:
#   MAAS_AUTHZ_CHROMIUM_BIN, MAAS_AUTHZ_CHROMEDRIVER_BIN   use these (step a)
#   MAAS_AUTHZ_NO_INSTALL=1   never apt-get install anything; fail with a hint instead

set -euo pipefail

SCRIPT_NAME="ensure-chromium.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

find_pair() {
    local chromium driver
    chromium="$(command -v chromium || command -v chromium-browser || true)"
    driver="$(command -v chromedriver || true)"
    [[ -n "$chromium" && -n "$driver" ]] || return 1
    printf '%s %s\n' "$chromium" "$driver"
}

install_chromium() {
    if is_root && have apt-get && ! is_true "${MAAS_AUTHZ_NO_INSTALL:-}"; then
        log "installing chromium and chromium-driver (apt-get)"
        DEBIAN_FRONTEND=noninteractive run_quiet apt-get update -qq
        DEBIAN_FRONTEND=noninteractive run_quiet apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver
    else
        die "Chromium is not installed: install it (apt-get install chromium chromium-driver) or set MAAS_AUTHZ_CHROMIUM_BIN and MAAS_AUTHZ_CHROMEDRIVER_BIN"
    fi
}

main() {
    case "${1:-}" in
        -h | --help)
            sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
            exit 0
            ;;
    esac
    if [[ -n "${MAAS_AUTHZ_CHROMIUM_BIN:-}" || -n "${MAAS_AUTHZ_CHROMEDRIVER_BIN:-}" ]]; then
        [[ -x "${MAAS_AUTHZ_CHROMIUM_BIN:-}" ]] || die "MAAS_AUTHZ_CHROMIUM_BIN=${MAAS_AUTHZ_CHROMIUM_BIN:-} is not an executable file"
        [[ -x "${MAAS_AUTHZ_CHROMEDRIVER_BIN:-}" ]] || die "MAAS_AUTHZ_CHROMEDRIVER_BIN=${MAAS_AUTHZ_CHROMEDRIVER_BIN:-} is not an executable file"
        printf '%s %s\n' "$MAAS_AUTHZ_CHROMIUM_BIN" "$MAAS_AUTHZ_CHROMEDRIVER_BIN"
        return
    fi
    if ! find_pair >/dev/null; then
        install_chromium
    fi
    find_pair || die "chromium or chromedriver still missing after installation"
}

main "$@"
