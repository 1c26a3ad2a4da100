//! Checks manifests against each other (duplicates, references) and builds the indexed `Policy`.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::error::IssueLog;
use super::manifest::{
    AuthPolicySpec, Document, Kind, Manifest, Metadata, ModelRefSpec, Origin, SubscriptionSpec,
    parse_source,
};
use super::source::{SourceFile, fingerprint};
use super::{
    DEFAULT_NAMESPACE, Grant, Model, ModelIndex, ModelLookupError, Policy, PolicyError,
    Subscription, SubscriptionModel,
};

/// Parses every source and compiles them into one policy, or reports every problem found.
pub(super) fn compile(sources: &[SourceFile]) -> Result<Policy, PolicyError> {
    let mut issues = IssueLog::default();
    let mut documents = Vec::new();
    for (file_order, source) in sources.iter().enumerate() {
        documents.extend(parse_source(file_order, source, &mut issues));
    }
    let documents = without_duplicates(documents, &mut issues);

    let mut policy = Policy::empty();
    policy.fingerprint = fingerprint(sources);

    let mut subscriptions = Vec::new();
    let mut auth_policies = Vec::new();
    for document in documents {
        match document.manifest {
            Manifest::ModelRef(spec) => add_model(&mut policy, &document.metadata, spec),
            Manifest::Subscription(spec) => {
                subscriptions.push((document.origin, document.metadata, spec));
            }
            Manifest::AuthPolicy(spec) => auth_policies.push((document.origin, spec)),
        }
    }
    policy.grants = vec![Grant::default(); policy.models.len()];

    for (origin, metadata, spec) in subscriptions {
        let subscription = build_subscription(&policy, &origin, metadata, spec, &mut issues);
        policy.subscriptions.push(subscription);
    }
    for (origin, spec) in &auth_policies {
        grant_access(&mut policy, origin, spec, &mut issues);
    }
    policy.auth_policy_count = auth_policies.len();

    if !issues.is_empty() {
        return Err(PolicyError::Invalid(issues.into_sorted()));
    }
    index_subscriptions(&mut policy);
    Ok(policy)
}

/// Drops every object whose kind, namespace and name were already seen, reporting it.
fn without_duplicates(documents: Vec<Document>, issues: &mut IssueLog) -> Vec<Document> {
    let mut first_seen: HashMap<(Kind, String, String), Origin> = HashMap::new();
    let mut unique = Vec::with_capacity(documents.len());
    for document in documents {
        let key = (
            document.origin.kind,
            document.metadata.namespace.clone(),
            document.metadata.name.clone(),
        );
        match first_seen.entry(key) {
            Entry::Occupied(first) => {
                let message = format!(
                    "duplicate {} {}/{} (first defined in {})",
                    document.origin.kind.name(),
                    document.metadata.namespace,
                    document.metadata.name,
                    first.get().location()
                );
                issues.push(
                    document.origin.order(),
                    document.origin.issue("metadata.name", message),
                );
            }
            Entry::Vacant(slot) => {
                slot.insert(document.origin.clone());
                unique.push(document);
            }
        }
    }
    unique
}

fn add_model(policy: &mut Policy, metadata: &Metadata, spec: ModelRefSpec) {
    let position = policy.models.len();
    policy.models.push(Model {
        namespace: metadata.namespace.clone(),
        name: metadata.name.clone(),
        backend_namespace: spec.backend_namespace,
        display_name: metadata.display_name.clone(),
        description: metadata.description.clone(),
        endpoint: spec.endpoint,
    });
    policy
        .models_by_name
        .entry(metadata.name.clone())
        .or_default()
        .push(position);
}

fn build_subscription(
    policy: &Policy,
    origin: &Origin,
    metadata: Metadata,
    spec: SubscriptionSpec,
    issues: &mut IssueLog,
) -> Subscription {
    let mut models: Vec<SubscriptionModel> = Vec::with_capacity(spec.model_refs.len());
    let mut listed_at: HashMap<usize, String> = HashMap::new();
    for reference in spec.model_refs {
        let resolved = policy.model_position(Some(&reference.namespace), &reference.name);
        let position = match resolved {
            Ok(position) => position,
            Err(error) => {
                let message =
                    unresolved_message(error, &reference.name, Some(&reference.namespace), policy);
                issues.push(origin.order(), origin.issue(&reference.path, message));
                continue;
            }
        };
        if let Some(first_path) = listed_at.get(&position) {
            let message = format!(
                "model {} is already listed at {first_path}",
                policy.models[position].qualified_name()
            );
            issues.push(origin.order(), origin.issue(&reference.path, message));
            continue;
        }
        listed_at.insert(position, reference.path);
        models.push(SubscriptionModel {
            model: ModelIndex(position),
            token_limits: reference.token_limits,
            request_limits: reference.request_limits,
            billing: reference.billing,
            spend_limits: reference.spend_limits,
        });
    }

    Subscription {
        tier: metadata.tier.unwrap_or_else(|| metadata.name.clone()),
        namespace: metadata.namespace,
        name: metadata.name,
        priority: spec.priority,
        display_name: metadata.display_name,
        description: metadata.description,
        owner_users: spec.owner_users,
        owner_groups: spec.owner_groups,
        models,
        organization_id: spec.organization_id,
        cost_center: spec.cost_center,
        labels: spec.labels,
    }
}

fn grant_access(
    policy: &mut Policy,
    origin: &Origin,
    spec: &AuthPolicySpec,
    issues: &mut IssueLog,
) {
    for reference in &spec.model_refs {
        let resolved = policy.model_position(reference.namespace.as_deref(), &reference.name);
        let position = match resolved {
            Ok(position) => position,
            Err(error) => {
                let message = unresolved_message(
                    error,
                    &reference.name,
                    reference.namespace.as_deref(),
                    policy,
                );
                issues.push(origin.order(), origin.issue(&reference.path, message));
                continue;
            }
        };
        if let Some(grant) = policy.grants.get_mut(position) {
            grant.users.extend(spec.users.iter().cloned());
            grant.groups.extend(spec.groups.iter().cloned());
        }
    }
}

fn unresolved_message(
    error: ModelLookupError,
    name: &str,
    namespace: Option<&str>,
    policy: &Policy,
) -> String {
    match (error, namespace) {
        (ModelLookupError::NotFound, Some(namespace)) => {
            format!("no MaaSModelRef named {name:?} in namespace {namespace:?}")
        }
        (ModelLookupError::NotFound, None) => format!("no MaaSModelRef named {name:?}"),
        (ModelLookupError::Ambiguous, _) => {
            let bare_name = name.rsplit('/').next().unwrap_or(name);
            let mut matches: Vec<String> = policy
                .models
                .iter()
                .filter(|model| model.name == bare_name)
                .map(Model::qualified_name)
                .collect();
            matches.sort();
            format!(
                "{name:?} is ambiguous: it matches MaaSModelRefs {}; give its namespace",
                matches.join(", ")
            )
        }
    }
}

/// Builds the subscription lookups and the mint-time preference order.
fn index_subscriptions(policy: &mut Policy) {
    let mut positions_by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (position, subscription) in policy.subscriptions.iter().enumerate() {
        policy
            .subscriptions_by_reference
            .insert(subscription.qualified_name(), position);
        positions_by_name
            .entry(subscription.name.as_str())
            .or_default()
            .push(position);
    }
    for (name, positions) in positions_by_name {
        let chosen = match positions.as_slice() {
            [only] => Some(*only),
            several => several
                .iter()
                .copied()
                .find(|&position| policy.subscriptions[position].namespace == DEFAULT_NAMESPACE),
        };
        if let Some(position) = chosen {
            policy
                .subscriptions_by_name
                .insert(name.to_owned(), position);
        }
    }

    let mut ranked: Vec<usize> = (0..policy.subscriptions.len()).collect();
    ranked.sort_by_key(|&position| {
        let subscription = &policy.subscriptions[position];
        (
            Reverse(subscription.priority),
            Reverse(max_token_limit(subscription)),
            subscription.name.as_str(),
            subscription.namespace.as_str(),
        )
    });
    policy.ranked_subscriptions = ranked;
}

fn max_token_limit(subscription: &Subscription) -> u64 {
    subscription
        .models
        .iter()
        .flat_map(|model| &model.token_limits)
        .map(|limit| limit.limit)
        .max()
        .unwrap_or(0)
}
