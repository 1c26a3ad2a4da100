//! Access policy: subscriptions, auth policies and model references read from MaaS manifests.
//!
//! The manifests are upstream's CRDs (`MaaSModelRef`, `MaaSSubscription`, `MaaSAuthPolicy`,
//! `maas.opendatahub.io/v1alpha1`) read from YAML files. They are validated as a whole and compiled
//! into an immutable [`Policy`] whose lookups are hash-map reads with no allocation; a new
//! [`Policy`] replaces the old one on change (see [`PolicyReloader`]).
//!
//! Using a model needs both a subscription that contains it (quota) and an auth policy whose
//! subjects match the caller (permission).

mod cluster;
mod compile;
mod error;
mod fields;
mod manifest;
mod reload;
mod source;
mod sync;
#[cfg(test)]
mod tests;

// Looked up on every Check; the policy comes from the operator's files, so no hash flooding.
use foldhash::{HashMap, HashMapExt, HashSet};

use crate::ids::{ModelRef, SubscriptionKey, SubscriptionRef};
use std::path::Path;
use std::time::Duration;

pub use cluster::{ClusterKind, ClusterObject};
pub use error::{PolicyError, PolicyIssue};
pub use reload::{PolicyReloader, ReloadEvent};
pub use sync::{PolicySourceKind, PolicySync, PolicySyncState};

/// Namespace of MaaS objects that do not name one, as in upstream's default install.
pub const DEFAULT_NAMESPACE: &str = "models-as-a-service";

/// A validated, immutable policy. Cheap to query; share it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    models: Vec<Model>,
    /// Model name → positions in `models`; usually one entry, more when namespaces reuse a name.
    models_by_name: HashMap<String, Vec<usize>>,
    /// Who the auth policies let use each model, aligned with `models`.
    grants: Vec<Grant>,
    subscriptions: Vec<Subscription>,
    /// "namespace/name" → position in `subscriptions`.
    subscriptions_by_reference: HashMap<String, usize>,
    /// Bare name → position in `subscriptions`, only for names that resolve to one subscription.
    subscriptions_by_name: HashMap<String, usize>,
    /// Positions in `subscriptions` in upstream's mint-time preference order.
    ranked_subscriptions: Vec<usize>,
    auth_policy_count: usize,
    fingerprint: String,
}

/// A model that can be served: one `MaaSModelRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Namespace of the `MaaSModelRef` object itself.
    pub namespace: String,
    pub name: String,
    /// Namespace of the backend it points at (`spec.modelRef.namespace`), e.g. `llm`.
    pub backend_namespace: Option<String>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Where to send requests (`spec.endpoint`, our extension), when given.
    pub endpoint: Option<String>,
}

impl Model {
    /// `namespace/name`, as upstream writes model identities.
    pub fn qualified_name(&self) -> String {
        self.reference().to_string()
    }

    /// The identifier other modules carry for this model.
    pub fn reference(&self) -> ModelRef {
        ModelRef::new(self.namespace.clone(), self.name.clone())
    }

    /// Whether a model server asked for `name` (a body's `model`, `x-gateway-model-name`)
    /// serves this model: the name it is served as, exactly (no namespace, no case folding).
    pub fn is_served_as(&self, name: &str) -> bool {
        name == self.name
    }

    /// Whether a request naming `namespace`/`name` names this model, read as
    /// [`Policy::find_model`] reads it (a bare `ns/name` is split; the namespace may be the
    /// model's own or its backend's). Used to check that two sources of a request agree.
    pub fn answers_to(&self, namespace: Option<&str>, name: &str) -> bool {
        let (namespace, name) = split_model_name(namespace, name);
        name == self.name
            && namespace.is_none_or(|namespace| {
                namespace == self.namespace || Some(namespace) == self.backend_namespace.as_deref()
            })
    }
}

/// A model named without a namespace may say `ns/name`; split it (a name with more slashes stays whole).
fn split_model_name<'a>(namespace: Option<&'a str>, name: &'a str) -> (Option<&'a str>, &'a str) {
    match namespace {
        Some(namespace) => (Some(namespace), name),
        None => match name.split_once('/') {
            Some((namespace, bare)) if !bare.contains('/') => (Some(namespace), bare),
            _ => (None, name),
        },
    }
}

/// Refers to a [`Model`] of the [`Policy`] it came from; see [`Policy::model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelIndex(usize);

/// One `MaaSSubscription`: who owns it, which models it covers, with which limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub namespace: String,
    pub name: String,
    /// The `maas.opendatahub.io/tier` annotation, else the subscription's name.
    pub tier: String,
    pub priority: i32,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub owner_users: Vec<String>,
    pub owner_groups: Vec<String>,
    pub models: Vec<SubscriptionModel>,
    pub organization_id: Option<String>,
    pub cost_center: Option<String>,
}

impl Subscription {
    /// `namespace/name`, the form stored on API keys.
    pub fn qualified_name(&self) -> String {
        self.reference().to_string()
    }

    /// The identifier other modules carry for this subscription.
    pub fn reference(&self) -> SubscriptionRef {
        SubscriptionRef::new(self.namespace.clone(), self.name.clone())
    }

    /// The key `model`'s counters have under this subscription.
    pub fn selected_key(&self, model: &Model) -> SubscriptionKey {
        SubscriptionKey::from_names(&self.namespace, &self.name, &model.namespace, &model.name)
    }
}

/// A model as covered by one subscription, with the limits that apply to it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionModel {
    pub model: ModelIndex,
    /// `tokenRateLimits`; never empty.
    pub token_limits: Vec<RateLimit>,
    /// `requestRateLimits`, our extension; may be empty.
    pub request_limits: Vec<RateLimit>,
}

/// At most `limit` units (tokens or requests) per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub limit: u64,
    pub window: Duration,
}

/// Why [`Policy::find_model`] found no single model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelLookupError {
    NotFound,
    /// The bare name is used in several namespaces; the caller must say which.
    Ambiguous,
}

/// How many objects of each kind a policy holds, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyCounts {
    pub models: usize,
    pub subscriptions: usize,
    pub auth_policies: usize,
}

impl Policy {
    /// A policy with nothing in it: every model is unknown and every request denied.
    pub fn empty() -> Self {
        Policy {
            models: Vec::new(),
            models_by_name: HashMap::new(),
            grants: Vec::new(),
            subscriptions: Vec::new(),
            subscriptions_by_reference: HashMap::new(),
            subscriptions_by_name: HashMap::new(),
            ranked_subscriptions: Vec::new(),
            auth_policy_count: 0,
            fingerprint: source::fingerprint(&[]),
        }
    }

    /// Loads one YAML file, or every `.yaml`/`.yml` file directly inside a directory.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let sources = source::read_sources(path)?;
        compile::compile(&sources)
    }

    /// Compiles manifests held in memory; `source_name` stands in for the file name in messages.
    pub fn from_yaml_str(source_name: &str, yaml: &str) -> Result<Policy, PolicyError> {
        let sources = [source::SourceFile {
            display: source_name.to_owned(),
            key: source_name.to_owned(),
            bytes: yaml.as_bytes().to_vec(),
        }];
        compile::compile(&sources)
    }

    /// Finds the model a request names.
    ///
    /// With a namespace (the `/<ns>/<name>/v1/...` path form), the model's own namespace or its
    /// backend's namespace must match, the model's own taking precedence. Without one (the
    /// `/<name>/v1/...` path form, the `x-gateway-model-name` header, the body's `model`), a
    /// `name` of the form `ns/name` is split; a bare name must be unique across namespaces.
    pub fn find_model(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<&Model, ModelLookupError> {
        self.model_position(namespace, name)
            .map(|position| &self.models[position])
    }

    /// Whether `named` (a body's `model`, which model servers read as a served-model name)
    /// names the model `authorized` (`namespace/name`, as Check's assertion carries it). A model
    /// no longer in the policy is named by the last segment of `authorized` only.
    pub fn same_model(&self, authorized: &str, named: &str) -> bool {
        match self.find_model(None, authorized) {
            Ok(model) => model.is_served_as(named),
            Err(_) => authorized.rsplit('/').next() == Some(named),
        }
    }

    /// The model a [`SubscriptionModel`] of this policy refers to.
    pub fn model(&self, index: ModelIndex) -> Option<&Model> {
        self.models.get(index.0)
    }

    /// Finds a subscription by `namespace/name` or by bare name.
    ///
    /// A bare name used in several namespaces means the one in [`DEFAULT_NAMESPACE`] if there is
    /// one there, else nothing: guessing between tenants' subscriptions would be worse than
    /// asking the caller to qualify the name.
    pub fn find_subscription(&self, reference: &str) -> Option<&Subscription> {
        let index = if reference.contains('/') {
            self.subscriptions_by_reference.get(reference)
        } else {
            self.subscriptions_by_name.get(reference)
        };
        index.map(|&position| &self.subscriptions[position])
    }

    /// Whether `subscription` covers `model`.
    pub fn subscription_contains(&self, subscription: &Subscription, model: &Model) -> bool {
        self.subscription_model(subscription, model).is_some()
    }

    /// The limits `subscription` sets for `model`, if it covers it.
    pub fn subscription_model<'s>(
        &self,
        subscription: &'s Subscription,
        model: &Model,
    ) -> Option<&'s SubscriptionModel> {
        subscription.models.iter().find(|entry| {
            self.models
                .get(entry.model.0)
                .is_some_and(|candidate| is_same_model(candidate, model))
        })
    }

    /// Whether the user owns `subscription`: by username or through any of `groups`.
    /// Surrounding whitespace in the caller's values is ignored, as upstream does.
    pub fn subscription_accessible(
        &self,
        subscription: &Subscription,
        username: &str,
        groups: &[String],
    ) -> bool {
        let username = username.trim();
        subscription.owner_users.iter().any(|user| user == username)
            || groups.iter().any(|group| {
                let group = group.trim();
                subscription.owner_groups.iter().any(|owner| owner == group)
            })
    }

    /// Whether some `MaaSAuthPolicy` lists `model` for the user or one of `groups`.
    pub fn auth_policy_allows(&self, model: &Model, username: &str, groups: &[String]) -> bool {
        let Some(grant) = self
            .position_of(model)
            .and_then(|position| self.grants.get(position))
        else {
            return false;
        };
        grant.users.contains(username.trim())
            || groups
                .iter()
                .any(|group| grant.groups.contains(group.trim()))
    }

    /// All models, in the order they were read.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.iter()
    }

    /// All subscriptions, in the order they were read.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.iter()
    }

    /// The subscription upstream binds a new key to when none is asked for: the first of
    /// [`Policy::accessible_subscriptions`].
    pub fn highest_priority_subscription(
        &self,
        username: &str,
        groups: &[String],
    ) -> Option<&Subscription> {
        self.ranked()
            .find(|subscription| self.subscription_accessible(subscription, username, groups))
    }

    /// Subscriptions the user owns, by priority (highest first), then by the largest token limit
    /// across their models (largest first), then by name, then by namespace.
    pub fn accessible_subscriptions(
        &self,
        username: &str,
        groups: &[String],
    ) -> Vec<&Subscription> {
        self.ranked()
            .filter(|subscription| self.subscription_accessible(subscription, username, groups))
            .collect()
    }

    /// SHA-256 (hex) of the files the policy was compiled from.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn counts(&self) -> PolicyCounts {
        PolicyCounts {
            models: self.models.len(),
            subscriptions: self.subscriptions.len(),
            auth_policies: self.auth_policy_count,
        }
    }

    fn ranked(&self) -> impl Iterator<Item = &Subscription> {
        self.ranked_subscriptions
            .iter()
            .filter_map(|&position| self.subscriptions.get(position))
    }

    fn model_position(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<usize, ModelLookupError> {
        let (namespace, name) = split_model_name(namespace, name);
        let candidates = self
            .models_by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(namespace) = namespace else {
            return match candidates {
                [] => Err(ModelLookupError::NotFound),
                [only] => Ok(*only),
                _ => Err(ModelLookupError::Ambiguous),
            };
        };
        if let Some(&own) = candidates
            .iter()
            .find(|&&position| self.models[position].namespace == namespace)
        {
            return Ok(own);
        }
        let mut by_backend = candidates.iter().filter(|&&position| {
            self.models[position].backend_namespace.as_deref() == Some(namespace)
        });
        match (by_backend.next(), by_backend.next()) {
            (None, _) => Err(ModelLookupError::NotFound),
            (Some(&only), None) => Ok(only),
            (Some(_), Some(_)) => Err(ModelLookupError::Ambiguous),
        }
    }

    fn position_of(&self, model: &Model) -> Option<usize> {
        self.models_by_name
            .get(&model.name)?
            .iter()
            .copied()
            .find(|&position| is_same_model(&self.models[position], model))
    }
}

/// Users and groups some auth policy lets use one model, merged over all policies.
#[derive(Debug, Clone, Default)]
struct Grant {
    users: HashSet<String>,
    groups: HashSet<String>,
}

/// Models are identified by the `MaaSModelRef`'s namespace and name, unique within a policy.
fn is_same_model(a: &Model, b: &Model) -> bool {
    a.namespace == b.namespace && a.name == b.name
}
