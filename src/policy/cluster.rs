//! Policy objects as a cluster's API server holds them, compiled by the same compiler as files.
//!
//! The Kubernetes source (an edge, `crate::kube_policy`) hands over plain JSON values; nothing here
//! knows a Kubernetes client type. Each object becomes one source "file" named after its kind,
//! namespace and name, so that every validation message names the object and field at fault.

use serde_json::{Map, Value};

use super::manifest::{API_VERSION, Kind};
use super::source::SourceFile;
use super::{Policy, PolicyError, compile};

/// Which of upstream's three kinds an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterKind {
    ModelRef,
    Subscription,
    AuthPolicy,
}

impl ClusterKind {
    /// All three, in the order their objects are compiled (models before what refers to them).
    pub const ALL: [ClusterKind; 3] = [
        ClusterKind::ModelRef,
        ClusterKind::Subscription,
        ClusterKind::AuthPolicy,
    ];

    /// The CRD's kind, e.g. `MaaSSubscription`.
    pub fn kind(self) -> &'static str {
        self.manifest_kind().name()
    }

    /// The CRD's plural resource name, as in its URL and in RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            ClusterKind::ModelRef => "maasmodelrefs",
            ClusterKind::Subscription => "maassubscriptions",
            ClusterKind::AuthPolicy => "maasauthpolicies",
        }
    }

    /// `maas.opendatahub.io/v1alpha1`.
    pub fn api_version() -> &'static str {
        API_VERSION
    }

    fn manifest_kind(self) -> Kind {
        match self {
            ClusterKind::ModelRef => Kind::ModelRef,
            ClusterKind::Subscription => Kind::Subscription,
            ClusterKind::AuthPolicy => Kind::AuthPolicy,
        }
    }
}

/// One object of the cluster, as the API server returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterObject {
    pub kind: ClusterKind,
    pub namespace: String,
    pub name: String,
    /// The whole object (`metadata`, `spec`, `status`…); only what the policy reads is kept.
    pub object: Value,
}

impl ClusterObject {
    /// `namespace/name`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the API server is deleting it (`metadata.deletionTimestamp` is set).
    pub fn is_being_deleted(&self) -> bool {
        self.object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|at| !at.is_null())
    }

    /// The object reduced to what the policy reads, as a YAML document: the kind and version it
    /// was watched as, `metadata.name`/`namespace`/`annotations`/`labels` and `spec`. Status,
    /// resource versions and managed fields are dropped, so that a status update neither looks
    /// like a policy change nor changes the policy's fingerprint.
    fn source(&self) -> SourceFile {
        let mut metadata = Map::new();
        metadata.insert("name".to_owned(), Value::String(self.name.clone()));
        metadata.insert(
            "namespace".to_owned(),
            Value::String(self.namespace.clone()),
        );
        for field in ["annotations", "labels"] {
            if let Some(value) = self.object.pointer(&format!("/metadata/{field}")) {
                metadata.insert(field.to_owned(), value.clone());
            }
        }
        let mut document = Map::new();
        document.insert(
            "apiVersion".to_owned(),
            Value::String(API_VERSION.to_owned()),
        );
        document.insert(
            "kind".to_owned(),
            Value::String(self.kind.kind().to_owned()),
        );
        document.insert("metadata".to_owned(), Value::Object(metadata));
        if let Some(spec) = self.object.get("spec") {
            document.insert("spec".to_owned(), spec.clone());
        }
        // JSON is YAML; serde_json's output is what the YAML reader is sure to read back alike.
        let bytes = serde_json::to_vec_pretty(&Value::Object(document)).unwrap_or_default();
        SourceFile {
            display: format!("cluster {} {}", self.kind.kind(), self.qualified_name()),
            key: format!("{}/{}", self.kind.plural(), self.qualified_name()),
            bytes,
        }
    }
}

impl Policy {
    /// Compiles the cluster's objects exactly as [`Policy::load`] compiles files. The order the
    /// objects come in does not matter: they are sorted by kind, namespace and name first, so the
    /// same objects always give the same policy and fingerprint.
    ///
    /// An object being deleted (`metadata.deletionTimestamp` set, finalizers pending) grants
    /// nothing any more, as upstream treats it: it is left out.
    pub fn from_cluster_objects(objects: &[ClusterObject]) -> Result<Policy, PolicyError> {
        let mut ordered: Vec<&ClusterObject> = objects
            .iter()
            .filter(|object| !object.is_being_deleted())
            .collect();
        ordered
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        let sources: Vec<SourceFile> = ordered.into_iter().map(ClusterObject::source).collect();
        compile::compile(&sources)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(kind: ClusterKind, namespace: &str, name: &str, spec: Value) -> ClusterObject {
        ClusterObject {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            object: json!({
                "apiVersion": "maas.opendatahub.io/v1alpha1",
                "kind": kind.kind(),
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": "17",
                    "uid": "0b7e2f6c-1111-2222-3333-444455556666",
                    "managedFields": [{"manager": "kubectl"}],
                    "annotations": {"openshift.io/display-name": format!("{name} shown")},
                },
                "spec": spec,
                "status": {"phase": "Active"},
            }),
        }
    }

    fn simulator() -> ClusterObject {
        object(
            ClusterKind::ModelRef,
            "llm",
            "simulator",
            json!({"modelRef": {"kind": "LLMInferenceService", "name": "simulator"}}),
        )
    }

    fn free_subscription(limit: u64) -> ClusterObject {
        object(
            ClusterKind::Subscription,
            "models-as-a-service",
            "free",
            json!({
                "owner": {"groups": [{"name": "system:authenticated"}]},
                "modelRefs": [{
                    "name": "simulator",
                    "namespace": "llm",
                    "tokenRateLimits": [{"limit": limit, "window": "1m"}],
                }],
            }),
        )
    }

    fn grant() -> ClusterObject {
        object(
            ClusterKind::AuthPolicy,
            "models-as-a-service",
            "everyone",
            json!({
                "modelRefs": [{"name": "simulator", "namespace": "llm"}],
                "subjects": {"groups": [{"name": "system:authenticated"}]},
            }),
        )
    }

    #[test]
    fn cluster_objects_compile_into_the_same_policy_a_file_gives() {
        let objects = [simulator(), free_subscription(100), grant()];

        let policy = Policy::from_cluster_objects(&objects).unwrap();

        let model = policy.find_model(Some("llm"), "simulator").unwrap();
        assert_eq!(model.display_name.as_deref(), Some("simulator shown"));
        let subscription = policy
            .find_subscription("models-as-a-service/free")
            .unwrap();
        assert!(policy.subscription_contains(subscription, model));
        assert!(policy.auth_policy_allows(model, "alice", &["system:authenticated".to_owned()]));
        assert_eq!(policy.counts().auth_policies, 1);
    }

    #[test]
    fn the_fingerprint_ignores_order_status_and_resource_versions_but_not_the_spec() {
        let first =
            Policy::from_cluster_objects(&[simulator(), free_subscription(100), grant()]).unwrap();
        let mut restatused = free_subscription(100);
        restatused.object["status"] = json!({"phase": "Degraded"});
        restatused.object["metadata"]["resourceVersion"] = json!("99");
        let reordered = Policy::from_cluster_objects(&[grant(), restatused, simulator()]).unwrap();
        let changed =
            Policy::from_cluster_objects(&[simulator(), free_subscription(5), grant()]).unwrap();

        assert_eq!(first.fingerprint(), reordered.fingerprint());
        assert_ne!(first.fingerprint(), changed.fingerprint());
    }

    #[test]
    fn an_object_being_deleted_grants_nothing() {
        let mut leaving = grant();
        leaving.object["metadata"]["deletionTimestamp"] = json!("2026-11-29T08:00:00Z");
        leaving.object["metadata"]["finalizers"] = json!(["maas.opendatahub.io/cleanup"]);

        let policy =
            Policy::from_cluster_objects(&[simulator(), free_subscription(100), leaving]).unwrap();

        let model = policy.find_model(Some("llm"), "simulator").unwrap();
        assert!(!policy.auth_policy_allows(model, "alice", &["system:authenticated".to_owned()]));
        assert_eq!(policy.counts().auth_policies, 0);
    }

    #[test]
    fn a_wrong_object_is_reported_by_kind_namespace_name_and_field() {
        let mut broken = free_subscription(100);
        broken.object["spec"]["modelRefs"][0]["tokenRateLimits"][0]["window"] = json!("1d");

        let error = Policy::from_cluster_objects(&[simulator(), broken, grant()]).unwrap_err();

        let text = error.to_string();
        assert!(
            text.contains("cluster MaaSSubscription models-as-a-service/free")
                && text.contains("spec.modelRefs[0].tokenRateLimits[0].window"),
            "{text}"
        );
    }

    #[test]
    fn an_object_without_a_spec_is_reported_not_skipped_silently() {
        let mut empty = simulator();
        empty.object.as_object_mut().unwrap().remove("spec");

        let error = Policy::from_cluster_objects(&[empty]).unwrap_err();

        assert!(
            error
                .to_string()
                .contains("cluster MaaSModelRef llm/simulator"),
            "{error}"
        );
    }
}
