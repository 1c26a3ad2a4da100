//! Tests of loading, validating and querying policies through the public API.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const MODELS: &str = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: simulator
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: qwen3
spec:
  modelRef: {kind: LLMInferenceService, name: qwen3, namespace: llm}
";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy")
}

fn example_policy() -> Policy {
    Policy::load(&example_dir()).unwrap()
}

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

fn per_minute(limit: u64) -> RateLimit {
    RateLimit {
        limit,
        window: Duration::from_secs(60),
    }
}

/// A subscription document on `simulator` with the given owner group, priority and token limit.
fn subscription(name: &str, namespace: &str, group: &str, priority: i32, tokens: u64) -> String {
    format!(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata:
  name: {name}
  namespace: {namespace}
spec:
  owner:
    groups:
      - name: {group}
  priority: {priority}
  modelRefs:
    - name: simulator
      namespace: llm
      tokenRateLimits:
        - limit: {tokens}
          window: 1m
"
    )
}

/// The problems a policy was rejected for, or the objects it left out for, one `Display` line
/// each.
fn issues(result: Result<Policy, PolicyError>) -> Vec<String> {
    match result {
        Err(PolicyError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("expected an invalid policy, got {other}"),
        Ok(policy) => {
            let lines: Vec<String> = policy
                .invalid_objects()
                .iter()
                .flat_map(|object| object.issues.iter().map(ToString::to_string))
                .collect();
            assert!(
                !lines.is_empty(),
                "expected problems, got {:?}",
                policy.counts()
            );
            lines
        }
    }
}

fn with_models(documents: &str) -> String {
    format!("{MODELS}---\n{documents}")
}

// --- The example policy ---------------------------------------------------------------------

#[test]
fn the_example_policy_loads_with_two_models_three_subscriptions_and_two_auth_policies() {
    let policy = Policy::load(&example_dir());

    let counts = policy.map(|policy| policy.counts());

    assert_eq!(
        counts.unwrap(),
        PolicyCounts {
            models: 2,
            subscriptions: 3,
            auth_policies: 2
        }
    );
}

#[test]
fn an_authenticated_user_can_use_simulator_through_free_but_not_qwen3() {
    let policy = example_policy();
    let user_groups = groups(&["system:authenticated"]);

    let subscription = policy
        .highest_priority_subscription("alice", &user_groups)
        .unwrap();
    let simulator = policy.find_model(Some("llm"), "simulator").unwrap();
    let qwen3 = policy.find_model(Some("llm"), "qwen3").unwrap();

    assert_eq!(subscription.name, "free");
    assert_eq!(subscription.tier, "free");
    assert!(policy.subscription_contains(subscription, simulator));
    assert!(policy.auth_policy_allows(simulator, "alice", &user_groups));
    assert!(!policy.subscription_contains(subscription, qwen3));
    assert!(!policy.auth_policy_allows(qwen3, "alice", &user_groups));
}

#[test]
fn the_free_tier_allows_100_tokens_and_5_requests_per_minute_on_simulator() {
    let policy = example_policy();
    let free = policy.find_subscription("free").unwrap();
    let simulator = policy.find_model(None, "simulator").unwrap();

    let limits = policy.subscription_model(free, simulator).unwrap();

    assert_eq!(limits.token_limits, [per_minute(100)]);
    assert_eq!(limits.request_limits, [per_minute(5)]);
    assert_eq!(policy.model(limits.model), Some(simulator));
}

#[test]
fn a_premium_user_can_use_qwen3_with_premium_limits() {
    let policy = example_policy();
    let user_groups = groups(&["system:authenticated", "premium-users"]);

    let subscription = policy
        .highest_priority_subscription("bob", &user_groups)
        .unwrap();
    let qwen3 = policy.find_model(None, "qwen3").unwrap();
    let limits = policy.subscription_model(subscription, qwen3).unwrap();

    assert_eq!(subscription.name, "premium");
    assert!(policy.auth_policy_allows(qwen3, "bob", &user_groups));
    assert_eq!(limits.token_limits, [per_minute(50_000)]);
    assert_eq!(limits.request_limits, [per_minute(20)]);
}

#[test]
fn an_enterprise_user_prefers_enterprise_over_free() {
    let policy = example_policy();
    let user_groups = groups(&["system:authenticated", "enterprise-users"]);

    let names: Vec<&str> = policy
        .accessible_subscriptions("carol", &user_groups)
        .into_iter()
        .map(|subscription| subscription.name.as_str())
        .collect();

    assert_eq!(names, ["enterprise", "free"]);
}

#[test]
fn the_example_models_carry_display_names_and_backend_namespaces() {
    let policy = example_policy();

    let simulator = policy.find_model(None, "simulator").unwrap();

    assert_eq!(simulator.qualified_name(), "models-as-a-service/simulator");
    assert_eq!(simulator.display_name.as_deref(), Some("Simulator Model"));
    assert_eq!(simulator.backend_namespace.as_deref(), Some("llm"));
}

// --- What gets skipped ----------------------------------------------------------------------

#[test]
fn an_empty_policy_is_valid_and_denies_everything() {
    let policy = Policy::from_yaml_str("empty.yaml", "").unwrap();
    let user_groups = groups(&["system:authenticated"]);

    let model = policy.find_model(None, "simulator");
    let subscription = policy.highest_priority_subscription("alice", &user_groups);

    assert_eq!(policy.counts(), PolicyCounts::default());
    assert_eq!(model, Err(ModelLookupError::NotFound));
    assert_eq!(subscription, None);
}

#[test]
fn an_empty_directory_is_a_valid_empty_policy() {
    let dir = tempfile::tempdir().unwrap();

    let policy = Policy::load(dir.path()).unwrap();

    assert_eq!(policy.counts(), PolicyCounts::default());
    assert_eq!(policy.fingerprint(), Policy::empty().fingerprint());
}

#[test]
fn empty_documents_and_comment_only_documents_are_skipped() {
    let yaml = format!("---\n# nothing here\n---\n{MODELS}---\n");

    let policy = Policy::from_yaml_str("models.yaml", &yaml).unwrap();

    assert_eq!(policy.counts().models, 2);
}

#[test]
fn documents_of_other_kinds_or_groups_are_skipped() {
    let yaml = with_models(
        "\
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
---
apiVersion: example.com/v1
kind: MaaSModelRef
metadata: {name: lookalike}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSTenant
metadata: {name: future-kind}
",
    );

    let policy = Policy::from_yaml_str("mixed.yaml", &yaml).unwrap();

    assert_eq!(policy.counts().models, 2);
    assert_eq!(
        policy.find_model(None, "lookalike"),
        Err(ModelLookupError::NotFound)
    );
}

#[test]
fn unknown_fields_and_status_blocks_are_ignored() {
    let yaml = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: simulator
  labels: {team: inference}
  uid: 1234
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm, extra: true}
  endpoint: http://simulator.llm.svc.cluster.local:8000
  operatorNote: added by someone
status:
  resolvedModelAlias: publishers/llm/models/simulator
  endpoint: 42
";

    let policy = Policy::from_yaml_str("models.yaml", yaml).unwrap();

    let model = policy.find_model(None, "simulator").unwrap();
    assert_eq!(
        model.endpoint.as_deref(),
        Some("http://simulator.llm.svc.cluster.local:8000")
    );
}

// --- Validation errors ----------------------------------------------------------------------

#[test]
fn rejects_a_window_in_days_naming_file_document_object_and_field() {
    let yaml = format!(
        "{}---\n{}",
        MODELS.split("---\n").next().unwrap(),
        subscription(
            "free",
            "models-as-a-service",
            "system:authenticated",
            10,
            100
        )
        .replace("window: 1m", "window: 90d")
    );

    let problems = issues(Policy::from_yaml_str(
        "examples/policy/subscriptions.yaml",
        &yaml,
    ));

    assert_eq!(
        problems,
        [
            r#"examples/policy/subscriptions.yaml: document 2 (MaaSSubscription free): spec.modelRefs[0].tokenRateLimits[0].window: "90d" does not match ^[1-9]\d{0,3}(s|m|h)$"#
        ]
    );
}

#[test]
fn rejects_a_window_longer_than_366_days() {
    let yaml = with_models(
        &subscription(
            "free",
            "models-as-a-service",
            "system:authenticated",
            10,
            100,
        )
        .replace("window: 1m", "window: 9000h"),
    );

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].tokenRateLimits[0].window: "9000h" is longer than the maximum window of 8784h (366 days)"#
        ]
    );
}

#[test]
fn rejects_request_rate_limits_with_a_bad_window_a_missing_limit_or_a_non_list() {
    let base = subscription(
        "free",
        "models-as-a-service",
        "system:authenticated",
        10,
        100,
    );
    let bad_entries = with_models(&base.replace(
        "window: 1m\n",
        "window: 1m\n      requestRateLimits:\n        - {limit: 5, window: 1d}\n        - {window: 1m}\n",
    ));
    let not_a_list =
        with_models(&base.replace("window: 1m\n", "window: 1m\n      requestRateLimits: 5\n"));

    let entries = issues(Policy::from_yaml_str("p.yaml", &bad_entries));
    let list = issues(Policy::from_yaml_str("p.yaml", &not_a_list));

    assert_eq!(
        entries,
        [
            r#"p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].requestRateLimits[0].window: "1d" does not match ^[1-9]\d{0,3}(s|m|h)$"#,
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].requestRateLimits[1].limit: required field is missing",
        ]
    );
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(
        list[0].starts_with(
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].requestRateLimits: "
        ),
        "{list:?}"
    );
}

#[test]
fn rejects_a_priority_that_is_not_an_integer() {
    let yaml = with_models(
        &subscription(
            "free",
            "models-as-a-service",
            "system:authenticated",
            10,
            100,
        )
        .replace("priority: 10", "priority: \"high\""),
    );

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 3 (MaaSSubscription free): spec.priority: expected an integer, found string "high""#
        ]
    );
}

#[test]
fn rejects_a_negative_limit_and_a_limit_above_one_billion() {
    let yaml = with_models(
        &subscription(
            "free",
            "models-as-a-service",
            "system:authenticated",
            10,
            100,
        )
        .replace("limit: 100", "limit: -3")
        .replace(
            "window: 1m\n",
            "window: 1m\n      requestRateLimits:\n        - {limit: 1000000001, window: 1m}\n",
        ),
    );

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].tokenRateLimits[0].limit: -3 is out of range (must be 1 to 1000000000)",
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].requestRateLimits[0].limit: 1000000001 is out of range (must be 1 to 1000000000)",
        ]
    );
}

#[test]
fn rejects_missing_required_fields() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata:
  name: free
spec:
  modelRefs:
    - name: simulator
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  namespace: models-as-a-service
spec:
  modelRef: {name: nameless}
---
kind: MaaSAuthPolicy
metadata: {name: no-version}
",
    );

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            "p.yaml: document 3 (MaaSSubscription free): spec.owner: required field is missing",
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].namespace: required field is missing",
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[0].tokenRateLimits: required field is missing",
            "p.yaml: document 4 (MaaSModelRef): metadata.name: required field is missing",
            "p.yaml: document 4 (MaaSModelRef): spec.modelRef.kind: required field is missing",
            "p.yaml: document 5: apiVersion: required field is missing",
        ]
    );
}

#[test]
fn rejects_fields_of_the_wrong_shape() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata:
  name: free
  annotations:
    openshift.io/display-name: [not, a, string]
spec:
  owner:
    groups: [premium-users]
    users: alice
  modelRefs:
    name: simulator
  tokenMetadata: {organizationId: 42}
",
    );

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 3 (MaaSSubscription free): metadata.annotations["openshift.io/display-name"]: expected a string, found a list"#,
            r#"p.yaml: document 3 (MaaSSubscription free): spec.owner.users: expected a list, found string "alice""#,
            r#"p.yaml: document 3 (MaaSSubscription free): spec.owner.groups[0]: expected a mapping, found string "premium-users""#,
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs: expected a list, found a mapping",
            "p.yaml: document 3 (MaaSSubscription free): spec.tokenMetadata.organizationId: expected a string, found integer 42",
        ]
    );
}

#[test]
fn rejects_a_document_that_is_not_a_mapping() {
    let yaml = "- just\n- a list\n";

    let problems = issues(Policy::from_yaml_str("p.yaml", yaml));

    assert_eq!(
        problems,
        ["p.yaml: document 1: expected a mapping, found a list"]
    );
}

#[test]
fn rejects_a_maas_kind_with_an_unsupported_version() {
    let yaml = "\
apiVersion: maas.opendatahub.io/v1beta1
kind: MaaSModelRef
metadata: {name: simulator}
spec: {}
";

    let problems = issues(Policy::from_yaml_str("p.yaml", yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 1 (MaaSModelRef simulator): apiVersion: "maas.opendatahub.io/v1beta1" is not supported for MaaSModelRef (expected maas.opendatahub.io/v1alpha1)"#
        ]
    );
}

#[test]
fn rejects_names_that_are_not_kubernetes_names() {
    let yaml = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: Qwen/3, namespace: My_NS}
spec:
  modelRef: {kind: LLMInferenceService, name: qwen3}
  endpoint: qwen3.llm.svc
";

    let problems = issues(Policy::from_yaml_str("p.yaml", yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 1 (MaaSModelRef): metadata.name: "Qwen/3" is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"#,
            r#"p.yaml: document 1 (MaaSModelRef): metadata.namespace: "My_NS" is not a valid namespace: use lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"#,
            r#"p.yaml: document 1 (MaaSModelRef): spec.endpoint: "qwen3.llm.svc" is not an absolute http:// or https:// URL"#,
        ]
    );
}

#[test]
fn rejects_duplicate_names_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let free = subscription(
        "free",
        "models-as-a-service",
        "system:authenticated",
        10,
        100,
    );
    fs::write(dir.path().join("a-models.yaml"), MODELS).unwrap();
    fs::write(dir.path().join("b-subscriptions.yaml"), &free).unwrap();
    let skipped = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated}\n";
    fs::write(
        dir.path().join("c-more.yaml"),
        format!("{skipped}---\n{free}"),
    )
    .unwrap();

    let problems = issues(Policy::load(dir.path()));

    let first = dir
        .path()
        .join("b-subscriptions.yaml")
        .display()
        .to_string();
    let second = dir.path().join("c-more.yaml").display().to_string();
    assert_eq!(
        problems,
        [format!(
            "{second}: document 2 (MaaSSubscription free): metadata.name: duplicate MaaSSubscription models-as-a-service/free (first defined in {first}: document 1)"
        )]
    );
}

#[test]
fn the_same_name_in_two_namespaces_is_not_a_duplicate() {
    let yaml = with_models(&format!(
        "{}---\n{}",
        subscription(
            "free",
            "models-as-a-service",
            "system:authenticated",
            10,
            100
        ),
        subscription("free", "team-a", "team-a", 10, 100)
    ));

    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    assert_eq!(policy.counts().subscriptions, 2);
}

#[test]
fn a_subscription_whose_only_model_ref_is_missing_is_failed_and_serves_nothing() {
    let yaml = with_models(
        &subscription(
            "free",
            "models-as-a-service",
            "system:authenticated",
            10,
            100,
        )
        .replace("- name: simulator", "- name: qwen4"),
    );

    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    let free = policy.find_subscription("free").unwrap();
    assert_eq!(free.phase, Phase::Failed);
    assert!(free.models.is_empty());
    assert_eq!(free.missing_models, ["llm/qwen4"]);
    assert!(policy.invalid_objects().is_empty());
}

#[test]
fn a_subscription_with_some_model_refs_missing_is_degraded_and_serves_the_rest() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: free}
spec:
  owner: {users: [alice]}
  modelRefs:
    - {name: simulator, namespace: llm, tokenRateLimits: [{limit: 1, window: 1s}]}
    - {name: gone, namespace: llm, tokenRateLimits: [{limit: 2, window: 1s}]}
",
    );

    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    let free = policy.find_subscription("free").unwrap();
    let simulator = policy.find_model(None, "simulator").unwrap();
    assert_eq!(free.phase, Phase::Degraded);
    assert!(free.phase.is_usable());
    assert!(policy.subscription_contains(free, simulator));
    assert_eq!(free.missing_models, ["llm/gone"]);
}

#[test]
fn a_subscription_naming_an_invalid_model_ref_is_degraded_by_it() {
    let yaml = format!(
        "{}---\n{}",
        MODELS.replace(
            "metadata:\n  name: qwen3\nspec:\n  modelRef: {kind: LLMInferenceService, ",
            "metadata:\n  name: qwen3\nspec:\n  modelRef: {"
        ),
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: premium}
spec:
  owner: {users: [bob]}
  modelRefs:
    - {name: simulator, namespace: llm, tokenRateLimits: [{limit: 1, window: 1s}]}
    - {name: qwen3, namespace: llm, tokenRateLimits: [{limit: 2, window: 1s}]}
"
    );

    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    let premium = policy.find_subscription("premium").unwrap();
    assert_eq!(premium.phase, Phase::Degraded);
    assert_eq!(premium.missing_models, ["llm/qwen3"]);
    let left_out: Vec<_> = policy
        .invalid_objects()
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(left_out, [("MaaSModelRef", "qwen3")]);
}

#[test]
fn an_invalid_subscription_is_left_out_and_the_rest_of_the_policy_applies() {
    let mut yaml = String::new();
    for file in ["models.yaml", "subscriptions.yaml", "auth-policies.yaml"] {
        yaml.push_str(&fs::read_to_string(example_dir().join(file)).unwrap());
        yaml.push_str("\n---\n");
    }
    yaml.push_str(&subscription(
        "broken",
        "models-as-a-service",
        "bad group!",
        1,
        10,
    ));

    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    assert_eq!(policy.counts(), example_policy().counts());
    assert!(policy.find_subscription("broken").is_none());
    let [object] = policy.invalid_objects() else {
        panic!(
            "expected one invalid object, got {:?}",
            policy.invalid_objects()
        );
    };
    assert_eq!(
        (
            object.kind.as_str(),
            object.namespace.as_str(),
            object.name.as_str()
        ),
        ("MaaSSubscription", "models-as-a-service", "broken")
    );
    assert!(
        object.reason().contains("is not a valid group name"),
        "{}",
        object.reason()
    );
}

#[test]
fn rejects_a_subscription_listing_one_model_twice() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: free}
spec:
  owner: {users: [alice]}
  modelRefs:
    - {name: simulator, namespace: llm, tokenRateLimits: [{limit: 1, window: 1s}]}
    - {name: simulator, namespace: models-as-a-service, tokenRateLimits: [{limit: 2, window: 1s}]}
",
    );

    let policy = Policy::from_yaml_str("p.yaml", &yaml);
    let left_out = policy
        .as_ref()
        .is_ok_and(|p| p.find_subscription("free").is_none());
    let problems = issues(policy);

    assert!(left_out);
    assert_eq!(
        problems,
        [
            "p.yaml: document 3 (MaaSSubscription free): spec.modelRefs[1]: model models-as-a-service/simulator is already listed at spec.modelRefs[0]"
        ]
    );
}

#[test]
fn an_auth_policy_with_missing_model_refs_is_degraded_and_grants_the_rest() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSAuthPolicy
metadata: {name: access}
spec:
  modelRefs:
    - simulator
    - llama
    - {name: qwen3, namespace: elsewhere}
  subjects: {users: [alice]}
",
    );

    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    let simulator = policy.find_model(None, "simulator").unwrap();
    let qwen3 = policy.find_model(None, "qwen3").unwrap();
    assert!(policy.auth_policy_allows(simulator, "alice", &[]));
    assert!(!policy.auth_policy_allows(qwen3, "alice", &[]));
    assert_eq!(
        policy.auth_policies(),
        [AuthPolicyStatus {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            name: "access".to_owned(),
            phase: Phase::Degraded,
            missing_models: vec!["llama".to_owned(), "elsewhere/qwen3".to_owned()],
        }]
    );
}

#[test]
fn rejects_an_ambiguous_plain_model_ref() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator, namespace: team-a}
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: team-a-models}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSAuthPolicy
metadata: {name: access}
spec:
  modelRefs: [simulator, team-a/simulator]
  subjects: {users: [alice]}
",
    );

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 4 (MaaSAuthPolicy access): spec.modelRefs[0]: "simulator" is ambiguous: it matches MaaSModelRefs models-as-a-service/simulator, team-a/simulator; give its namespace"#
        ]
    );
}

#[test]
fn rejects_bad_group_names() {
    let yaml = with_models(&format!(
        "{}---\n{}",
        subscription(
            "premium",
            "models-as-a-service",
            "\"premium users\"",
            20,
            100
        ),
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSAuthPolicy
metadata: {name: access}
spec:
  modelRefs: [simulator]
  subjects:
    groups: [{name: team/a}, {name: ''}]
"
    ));

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 3 (MaaSSubscription premium): spec.owner.groups[0].name: "premium users" is not a valid group name (must match ^[a-zA-Z0-9:._-]+$)"#,
            r#"p.yaml: document 4 (MaaSAuthPolicy access): spec.subjects.groups[0].name: "team/a" is not a valid group name (must match ^[a-zA-Z0-9:._-]+$)"#,
            r#"p.yaml: document 4 (MaaSAuthPolicy access): spec.subjects.groups[1].name: "" is not a valid group name (must match ^[a-zA-Z0-9:._-]+$)"#,
        ]
    );
}

#[test]
fn rejects_an_auth_policy_without_subjects_and_a_subscription_without_models() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSAuthPolicy
metadata: {name: access}
spec:
  modelRefs: [simulator]
  subjects: {groups: [], users: []}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: free}
spec:
  owner: {users: [alice]}
  modelRefs: []
",
    );

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            "p.yaml: document 3 (MaaSAuthPolicy access): spec.subjects: must name at least one group or user",
            "p.yaml: document 4 (MaaSSubscription free): spec.modelRefs: must list at least one model",
        ]
    );
}

#[test]
fn reports_a_yaml_syntax_error_with_line_and_column() {
    let yaml = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator
spec: {}
";

    let problems = issues(Policy::from_yaml_str("models.yaml", yaml));

    assert_eq!(
        problems,
        [
            "models.yaml: document 1: invalid YAML: did not find expected ',' or '}' at line 4 column 5, while parsing a flow mapping at line 3 column 11"
        ]
    );
}

#[test]
fn reports_a_yaml_error_in_a_later_document_after_checking_the_earlier_ones() {
    let yaml = with_models("a: 1\n  b: 2\n");

    let problems = issues(Policy::from_yaml_str("p.yaml", &yaml));

    assert_eq!(
        problems,
        [
            "p.yaml: document 3: invalid YAML: mapping values are not allowed in this context at line 16 column 4"
        ]
    );
}

#[test]
fn reports_a_duplicate_key_with_its_location() {
    let yaml = "apiVersion: v1\nkind: ConfigMap\nkind: Secret\n";

    let problems = issues(Policy::from_yaml_str("p.yaml", yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 1: invalid YAML at line 1, column 1: duplicate entry with key "kind""#
        ]
    );
}

#[test]
fn malformed_yaml_is_reported_and_never_panics() {
    let nasty = [
        "a: *unknown\n---\nb: 1\n",
        "a:\n\t- tab\n---\nb: 1\n",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
        "a: &a [*a, *a]\n",
        "x: &x [1, 1, 1, 1, 1, 1, 1, 1, 1]\ny: &y [*x, *x, *x, *x, *x, *x, *x, *x, *x]\nz: &z [*y, *y, *y, *y, *y, *y, *y, *y, *y]\nw: [*z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z, *z]\n",
        "<<: 5\n",
        "? [complex, key]\n: value\n",
        "...\n---\n...\n",
        "!custom {kind: MaaSModelRef}\n",
    ];

    for yaml in nasty {
        let result = std::panic::catch_unwind(|| Policy::from_yaml_str("nasty.yaml", yaml));

        // Either the file is rejected, or every document in it is left out as invalid.
        let reported = match &result {
            Ok(Err(PolicyError::Invalid(_))) => true,
            Ok(Ok(policy)) => {
                policy.counts() == PolicyCounts::default() && !policy.invalid_objects().is_empty()
            }
            _ => false,
        };
        assert!(reported, "input {yaml:?} gave {result:?}");
    }
}

#[test]
fn reports_a_file_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.yaml");
    fs::write(&file, b"kind: \xff\n").unwrap();

    let problems = issues(Policy::load(&file));

    assert_eq!(
        problems,
        [format!(
            "{}: file is not valid UTF-8 (invalid byte at offset 6)",
            file.display()
        )]
    );
}

#[test]
fn reports_an_unreadable_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");

    let error = Policy::load(&missing).unwrap_err();

    assert!(matches!(&error, PolicyError::Io { path, .. } if *path == missing));
    assert_eq!(
        error.to_string(),
        format!(
            "cannot read policy at {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn collects_every_problem_across_files_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("a.yaml"),
        MODELS.replace("kind: LLMInferenceService, ", ""),
    )
    .unwrap();
    fs::write(
        dir.path().join("b.yaml"),
        subscription("free", "models-as-a-service", "system:authenticated", 10, 0),
    )
    .unwrap();

    let problems = issues(Policy::load(dir.path()));

    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("b.yaml").display().to_string();
    assert_eq!(
        problems,
        [
            format!(
                "{a}: document 1 (MaaSModelRef simulator): spec.modelRef.kind: required field is missing"
            ),
            format!(
                "{a}: document 2 (MaaSModelRef qwen3): spec.modelRef.kind: required field is missing"
            ),
            format!(
                "{b}: document 1 (MaaSSubscription free): spec.modelRefs[0].tokenRateLimits[0].limit: 0 is out of range (must be 1 to 1000000000)"
            ),
        ]
    );
}

// --- Queries --------------------------------------------------------------------------------

const TWO_NAMESPACES: &str = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator}
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator, namespace: team-a}
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: team-a-models}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: qwen3}
spec:
  modelRef: {kind: LLMInferenceService, name: qwen3, namespace: llm}
";

#[test]
fn a_model_is_found_by_its_own_namespace_or_its_backend_namespace() {
    let policy = Policy::from_yaml_str("models.yaml", TWO_NAMESPACES).unwrap();

    let by_own = policy
        .find_model(Some("team-a"), "simulator")
        .map(Model::qualified_name);
    let by_backend = policy
        .find_model(Some("team-a-models"), "simulator")
        .map(Model::qualified_name);
    let default = policy
        .find_model(Some("llm"), "simulator")
        .map(Model::qualified_name);

    assert_eq!(by_own.as_deref(), Ok("team-a/simulator"));
    assert_eq!(by_backend.as_deref(), Ok("team-a/simulator"));
    assert_eq!(default.as_deref(), Ok("models-as-a-service/simulator"));
}

#[test]
fn a_bare_model_name_used_in_two_namespaces_is_ambiguous() {
    let policy = Policy::from_yaml_str("models.yaml", TWO_NAMESPACES).unwrap();

    let bare = policy.find_model(None, "simulator");
    let unique = policy
        .find_model(None, "qwen3")
        .map(|model| model.name.as_str());

    assert_eq!(bare, Err(ModelLookupError::Ambiguous));
    assert_eq!(unique, Ok("qwen3"));
}

#[test]
fn a_model_name_with_one_slash_is_read_as_namespace_and_name() {
    let policy = Policy::from_yaml_str("models.yaml", TWO_NAMESPACES).unwrap();

    let split = policy
        .find_model(None, "team-a/simulator")
        .map(Model::qualified_name);
    let backend = policy
        .find_model(None, "llm/qwen3")
        .map(Model::qualified_name);
    let publisher = policy.find_model(None, "publishers/llm/models/qwen3");
    let unknown = policy.find_model(Some("llm"), "llama");

    assert_eq!(split.as_deref(), Ok("team-a/simulator"));
    assert_eq!(backend.as_deref(), Ok("models-as-a-service/qwen3"));
    assert_eq!(publisher, Err(ModelLookupError::NotFound));
    assert_eq!(unknown, Err(ModelLookupError::NotFound));
}

#[test]
fn a_model_found_only_through_two_backend_namespaces_is_ambiguous() {
    let yaml = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator, namespace: team-a}
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator, namespace: team-b}
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}
";
    let policy = Policy::from_yaml_str("models.yaml", yaml).unwrap();

    let result = policy.find_model(Some("llm"), "simulator");

    assert_eq!(result, Err(ModelLookupError::Ambiguous));
}

#[test]
fn a_subscription_is_found_by_bare_or_qualified_name() {
    let yaml = with_models(&format!(
        "{}---\n{}---\n{}",
        subscription(
            "free",
            "models-as-a-service",
            "system:authenticated",
            10,
            100
        ),
        subscription("free", "team-a", "team-a", 10, 100),
        subscription("gold", "team-a", "team-a", 10, 100),
    ));
    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    let namespace_of = |reference: &str| {
        policy
            .find_subscription(reference)
            .map(|subscription| subscription.namespace.as_str())
    };

    assert_eq!(namespace_of("free"), Some(DEFAULT_NAMESPACE));
    assert_eq!(namespace_of("team-a/free"), Some("team-a"));
    assert_eq!(namespace_of("gold"), Some("team-a"));
    assert_eq!(namespace_of("models-as-a-service/gold"), None);
    assert_eq!(namespace_of("silver"), None);
}

#[test]
fn a_bare_subscription_name_shared_outside_the_default_namespace_finds_nothing() {
    let yaml = with_models(&format!(
        "{}---\n{}",
        subscription("free", "team-a", "team-a", 10, 100),
        subscription("free", "team-b", "team-b", 10, 100),
    ));
    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    let found = policy.find_subscription("free");

    assert_eq!(found, None);
}

#[test]
fn the_highest_priority_subscription_breaks_ties_by_token_limit_then_name() {
    let yaml = with_models(&format!(
        "{}---\n{}---\n{}---\n{}",
        subscription("zeta", "models-as-a-service", "everyone", 10, 500),
        subscription("beta", "models-as-a-service", "everyone", 10, 100),
        subscription("alpha", "models-as-a-service", "everyone", 10, 100),
        subscription("low", "models-as-a-service", "everyone", 5, 1_000_000),
    ));
    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();
    let user_groups = groups(&["everyone"]);

    let highest = policy.highest_priority_subscription("alice", &user_groups);
    let order: Vec<&str> = policy
        .accessible_subscriptions("alice", &user_groups)
        .into_iter()
        .map(|subscription| subscription.name.as_str())
        .collect();

    assert_eq!(
        highest.map(|subscription| subscription.name.as_str()),
        Some("zeta")
    );
    assert_eq!(order, ["zeta", "alpha", "beta", "low"]);
}

#[test]
fn a_subscription_without_a_tier_annotation_uses_its_name_as_tier() {
    let yaml = with_models(&subscription(
        "gold",
        "models-as-a-service",
        "everyone",
        1,
        10,
    ));
    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();

    let subscription = policy.find_subscription("gold").unwrap();

    assert_eq!(subscription.tier, "gold");
    assert_eq!(subscription.priority, 1);
}

#[test]
fn access_is_granted_by_username_or_by_a_trimmed_group() {
    let yaml = with_models(
        "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: personal}
spec:
  owner:
    users: [alice]
    groups: [{name: team-a}]
  modelRefs:
    - {name: qwen3, namespace: llm, tokenRateLimits: [{limit: 10, window: 1h}]}
  tokenMetadata: {organizationId: org-1, costCenter: cc-7, labels: {team: a}}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSAuthPolicy
metadata: {name: access}
spec:
  modelRefs: [qwen3]
  subjects:
    users: [alice]
    groups: [{name: team-a}]
  meteringMetadata: {organizationId: org-1}
",
    );
    let policy = Policy::from_yaml_str("p.yaml", &yaml).unwrap();
    let subscription = policy.find_subscription("personal").unwrap();
    let qwen3 = policy.find_model(None, "qwen3").unwrap();
    let simulator = policy.find_model(None, "simulator").unwrap();

    let by_user = policy.subscription_accessible(subscription, " alice ", &[]);
    let by_group = policy.subscription_accessible(subscription, "bob", &groups(&[" team-a"]));
    let stranger = policy.subscription_accessible(subscription, "bob", &groups(&["team-b"]));
    let allowed_by_user = policy.auth_policy_allows(qwen3, "alice", &[]);
    let allowed_by_group = policy.auth_policy_allows(qwen3, "bob", &groups(&["team-a "]));
    let other_model = policy.auth_policy_allows(simulator, "alice", &groups(&["team-a"]));

    assert!(by_user && by_group && !stranger);
    assert!(allowed_by_user && allowed_by_group && !other_model);
    assert_eq!(subscription.organization_id.as_deref(), Some("org-1"));
    assert_eq!(subscription.cost_center.as_deref(), Some("cc-7"));
}

#[test]
fn the_fingerprint_follows_the_source_text() {
    let first = Policy::from_yaml_str("models.yaml", MODELS).unwrap();
    let same = Policy::from_yaml_str("models.yaml", MODELS).unwrap();
    let changed = Policy::from_yaml_str("models.yaml", &format!("{MODELS}\n# edited\n")).unwrap();

    assert_eq!(first.fingerprint(), same.fingerprint());
    assert_ne!(first.fingerprint(), changed.fingerprint());
    assert_eq!(first.fingerprint().len(), 64);
}

#[test]
fn a_policy_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}

    assert_send_sync::<Policy>();
}

#[test]
fn a_model_ref_status_gives_its_served_name_readiness_and_creation_time() {
    let yaml = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata:
  name: opt
  namespace: llm
  creationTimestamp: 2026-01-31T12:00:00Z
spec:
  modelRef: {kind: LLMInferenceService, name: opt, namespace: llm}
status:
  phase: Pending
  resolvedModelAlias: publishers/llm/models/facebook/opt-125m
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: simulator}
spec:
  modelRef: {kind: LLMInferenceService, name: simulator, namespace: llm}
";

    let policy = Policy::from_yaml_str("p.yaml", yaml).unwrap();

    let opt = policy
        .find_model(None, "publishers/llm/models/facebook/opt-125m")
        .unwrap();
    assert_eq!(opt.name, "opt");
    assert_eq!(opt.served_id(), "publishers/llm/models/facebook/opt-125m");
    assert!(opt.is_served_as("publishers/llm/models/facebook/opt-125m"));
    assert!(!opt.ready);
    assert_eq!(opt.created, 1_769_860_800);
    let simulator = policy.find_model(None, "simulator").unwrap();
    assert_eq!(simulator.served_id(), "simulator");
    assert!(simulator.ready);
    assert!(simulator.created > 1_700_000_000);
}

#[test]
fn a_creation_timestamp_that_is_not_rfc_3339_makes_the_model_ref_invalid() {
    let yaml = "\
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: opt, creationTimestamp: yesterday}
spec:
  modelRef: {kind: LLMInferenceService, name: opt, namespace: llm}
";

    let problems = issues(Policy::from_yaml_str("p.yaml", yaml));

    assert_eq!(
        problems,
        [
            r#"p.yaml: document 1 (MaaSModelRef opt): metadata.creationTimestamp: "yesterday" is not an RFC 3339 time such as 2026-01-31T12:00:00Z"#
        ]
    );
}
