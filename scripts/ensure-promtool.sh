#!/usr/bin/env bash
# scripts/ensure-promtool.sh — find or install promtool, which checks the chart's alerting rules.
#
# Prints exactly ONE line on stdout: the path of a promtool binary. Everything else (progress,
# errors) goes to stderr. Safe to run repeatedly.
#
# Where it comes from, first match wins:
#   a. $MAAS_AUTHZ_PROMTOOL_BIN, if set: must be executable, otherwise exit 1.
#   b. `promtool` on PATH.
#   c. Debian's `prometheus` package (which ships promtool), installed with apt-get when we are
#      root with apt-get. It is a Prometheus server too: its service is stopped and disabled
#      right away where systemd runs one, since only the tool is needed.
#
# Environment:
#   MAAS_AUTHZ_PROMTOOL_BIN   use this promtool (step a)
#   MAAS_AUTHZ_NO_INSTALL=1   never apt-get install anything; fail with a hint instead

set -euo pipefail

SCRIPT_NAME="ensure-promtool.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

main() {
    if [[ -n "${MAAS_AUTHZ_PROMTOOL_BIN:-}" ]]; then
        [[ -x "$MAAS_AUTHZ_PROMTOOL_BIN" ]] || die "MAAS_AUTHZ_PROMTOOL_BIN=$MAAS_AUTHZ_PROMTOOL_BIN is not executable"
        printf '%s\n' "$MAAS_AUTHZ_PROMTOOL_BIN"
        return 0
    fi
    if ! have promtool; then
        if is_root && have apt-get && ! is_true "${MAAS_AUTHZ_NO_INSTALL:-}"; then
            log "installing promtool (apt-get install prometheus)"
            DEBIAN_FRONTEND=noninteractive run_quiet apt-get update -qq
            # The package's server is not wanted: do not let its install start it.
            DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 run_quiet apt-get install -y -qq --no-install-recommends prometheus
            if have systemctl && systemctl is-active --quiet prometheus 2>/dev/null; then
                systemctl disable --now prometheus >/dev/null 2>&1 || true
            fi
        else
            die "promtool not found: install Debian's prometheus package (apt-get install prometheus) or set MAAS_AUTHZ_PROMTOOL_BIN"
        fi
    fi
    have promtool || die "promtool still not on PATH after installing the prometheus package"
    command -v promtool
}

main "$@"
