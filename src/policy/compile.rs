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
    AuthPolicyStatus, DEFAULT_NAMESPACE, Grant, Model, ModelIndex, ModelLookupError, Phase, Policy,
    PolicyError, Subscription, SubscriptionModel,
};

/// Parses every source and compiles them into one policy.
///
/// Each object is judged on its own, as upstream's controller does: an invalid one is left out
/// (and listed in [`Policy::invalid_objects`]), a subscription or auth policy naming a missing
/// model serves the rest (Degraded) or nothing (Failed). Only a file that cannot be parsed at all
/// rejects the policy, since then it is unknown what the operator meant to remove.
pub(super) fn compile(sources: &[SourceFile]) -> Result<Policy, PolicyError> {
    let mut issues = IssueLog::default();
    let mut documents = Vec::new();
    for (file_order, source) in sources.iter().enumerate() {
        documents.extend(parse_source(file_order, source, &mut issues));
    }
    if issues.is_unparsable() {
        return Err(PolicyError::Invalid(issues.into_sorted()));
    }
    let documents = without_duplicates(documents, &mut issues);

    let mut policy = Policy::empty();
    policy.fingerprint = fingerprint(sources);

    // Models that carry no creationTimestamp were "created" when first compiled; the reloader
    // keeps that time across reloads (Policy::keep_creation_times_from).
    let compiled_at = chrono::Utc::now().timestamp();
    let mut subscriptions = Vec::new();
    let mut auth_policies = Vec::new();
    for document in documents {
        match document.manifest {
            Manifest::ModelRef(spec) => {
                add_model(&mut policy, &document.metadata, spec, compiled_at);
            }
            Manifest::Subscription(spec) => {
                subscriptions.push((document.origin, document.metadata, spec));
            }
            Manifest::AuthPolicy(spec) => {
                auth_policies.push((document.origin, document.metadata, spec));
            }
        }
    }
    policy.grants = vec![Grant::default(); policy.models.len()];

    for (origin, metadata, spec) in subscriptions {
        if let Some(subscription) =
            build_subscription(&policy, &origin, metadata, spec, &mut issues)
        {
            policy.subscriptions.push(subscription);
        }
    }
    for (origin, metadata, spec) in &auth_policies {
        if let Some(status) = grant_access(&mut policy, origin, metadata, spec, &mut issues) {
            policy.auth_policies.push(status);
        }
    }
    policy.auth_policy_count = policy.auth_policies.len();

    policy.invalid_objects = issues.into_invalid_objects();
    for object in &policy.invalid_objects {
        tracing::warn!(
            kind = %object.kind,
            namespace = %object.namespace,
            name = %object.name,
            "leaving an invalid policy object out: {}",
            object.reason()
        );
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
                let order = document.origin.order();
                issues.identify(
                    order,
                    document.origin.kind.name(),
                    &document.metadata.namespace,
                    &document.metadata.name,
                );
                issues.push(order, document.origin.issue("metadata.name", message));
            }
            Entry::Vacant(slot) => {
                slot.insert(document.origin.clone());
                unique.push(document);
            }
        }
    }
    unique
}

fn add_model(policy: &mut Policy, metadata: &Metadata, spec: ModelRefSpec, compiled_at: i64) {
    let position = policy.models.len();
    if let Some(alias) = &spec.served_name {
        policy
            .models_by_alias
            .entry(alias.clone())
            .or_default()
            .push(position);
    }
    policy.models.push(Model {
        namespace: metadata.namespace.clone(),
        name: metadata.name.clone(),
        backend_namespace: spec.backend_namespace,
        display_name: metadata.display_name.clone(),
        description: metadata.description.clone(),
        endpoint: spec.endpoint,
        served_name: spec.served_name,
        ready: spec.ready,
        created: metadata.created.unwrap_or(compiled_at),
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
) -> Option<Subscription> {
    let mut models: Vec<SubscriptionModel> = Vec::with_capacity(spec.model_refs.len());
    let mut listed_at: HashMap<usize, String> = HashMap::new();
    let mut missing_models = Vec::new();
    let mut invalid = false;
    for reference in spec.model_refs {
        let resolved = policy.model_position(Some(&reference.namespace), &reference.name);
        let position = match resolved {
            Ok(position) => position,
            // A model that is not (or not yet) there degrades the subscription, as upstream's
            // controller marks it; the models that are there keep being served.
            Err(ModelLookupError::NotFound) => {
                missing_models.push(format!("{}/{}", reference.namespace, reference.name));
                continue;
            }
            Err(error) => {
                let message =
                    unresolved_message(error, &reference.name, Some(&reference.namespace), policy);
                issues.push(origin.order(), origin.issue(&reference.path, message));
                invalid = true;
                continue;
            }
        };
        if let Some(first_path) = listed_at.get(&position) {
            let message = format!(
                "model {} is already listed at {first_path}",
                policy.models[position].qualified_name()
            );
            issues.push(origin.order(), origin.issue(&reference.path, message));
            invalid = true;
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
    if invalid {
        issues.identify(
            origin.order(),
            origin.kind.name(),
            &metadata.namespace,
            &metadata.name,
        );
        return None;
    }
    let phase = Phase::judge(models.len(), missing_models.len());
    if phase != Phase::Active {
        tracing::warn!(
            kind = origin.kind.name(),
            namespace = %metadata.namespace,
            name = %metadata.name,
            phase = phase.as_str(),
            missing_models = ?missing_models,
            "subscription names models that are not in the policy"
        );
    }

    Some(Subscription {
        phase,
        missing_models,
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
    })
}

/// Grants the auth policy's subjects its models; `None` (and nothing granted) when the policy is
/// invalid.
fn grant_access(
    policy: &mut Policy,
    origin: &Origin,
    metadata: &Metadata,
    spec: &AuthPolicySpec,
    issues: &mut IssueLog,
) -> Option<AuthPolicyStatus> {
    let mut positions = Vec::with_capacity(spec.model_refs.len());
    let mut missing_models = Vec::new();
    let mut invalid = false;
    for reference in &spec.model_refs {
        let resolved = policy.model_position(reference.namespace.as_deref(), &reference.name);
        match resolved {
            Ok(position) => positions.push(position),
            Err(ModelLookupError::NotFound) => missing_models.push(match &reference.namespace {
                Some(namespace) => format!("{namespace}/{}", reference.name),
                None => reference.name.clone(),
            }),
            Err(error) => {
                let message = unresolved_message(
                    error,
                    &reference.name,
                    reference.namespace.as_deref(),
                    policy,
                );
                issues.push(origin.order(), origin.issue(&reference.path, message));
                invalid = true;
            }
        }
    }
    if invalid {
        issues.identify(
            origin.order(),
            origin.kind.name(),
            &metadata.namespace,
            &metadata.name,
        );
        return None;
    }
    for position in &positions {
        if let Some(grant) = policy.grants.get_mut(*position) {
            grant.users.extend(spec.users.iter().cloned());
            grant.groups.extend(spec.groups.iter().cloned());
        }
    }
    let phase = Phase::judge(positions.len(), missing_models.len());
    if phase != Phase::Active {
        tracing::warn!(
            kind = origin.kind.name(),
            namespace = %metadata.namespace,
            name = %metadata.name,
            phase = phase.as_str(),
            missing_models = ?missing_models,
            "auth policy names models that are not in the policy"
        );
    }
    Some(AuthPolicyStatus {
        namespace: metadata.namespace.clone(),
        name: metadata.name.clone(),
        phase,
        missing_models,
    })
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
