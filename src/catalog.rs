//! What a REST caller may discover: the models they can use (with the tier serving each) and
//! the subscriptions they can use, read from the policy in force.

use crate::identity::{Caller, CredentialKind};
use crate::ids::SubscriptionKey;
use crate::policy::{Model, Policy, Subscription, SubscriptionModel};

/// A model the caller may use (one served id), and the subscriptions that serve it for them.
#[derive(Debug, Clone)]
pub struct VisibleModel<'p> {
    /// The first ref (by subscription preference) serving this id.
    pub model: &'p Model,
    /// The best subscription that serves it for the caller.
    pub subscription: &'p Subscription,
    /// Every usable subscription through which the caller reaches this id, best first.
    pub subscriptions: Vec<&'p Subscription>,
}

/// The caller named a subscription (`X-MaaS-Subscription`) that does not exist or is not theirs;
/// the two are deliberately indistinguishable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access denied to requested subscription")]
pub struct SubscriptionDenied;

/// The subscriptions a caller may draw on, best first. API-key callers (and access tokens) have
/// exactly the key's subscription, judged against the key's group snapshot (a requested one is
/// ignored: the key's binding is what the gateway enforces), and are denied when it is gone or no
/// longer theirs; other callers have the one they ask for, else all they can use.
pub fn usable_subscriptions<'p>(
    policy: &'p Policy,
    caller: &Caller,
    requested: Option<&str>,
) -> Result<Vec<&'p Subscription>, SubscriptionDenied> {
    let accessible = |subscription: &&Subscription| {
        policy.subscription_accessible(subscription, caller.username.as_str(), &caller.groups)
    };
    match &caller.credential {
        CredentialKind::ApiKey { subscription, .. } => policy
            .find_subscription(subscription)
            .filter(accessible)
            .map(|subscription| vec![subscription])
            .ok_or(SubscriptionDenied),
        CredentialKind::KubernetesToken
        | CredentialKind::OidcToken
        | CredentialKind::StaticToken => match requested.map(str::trim).filter(|r| !r.is_empty()) {
            Some(reference) => policy
                .find_subscription(reference)
                .filter(accessible)
                .map(|subscription| vec![subscription])
                .ok_or(SubscriptionDenied),
            None => Ok(policy.accessible_subscriptions(caller.username.as_str(), &caller.groups)),
        },
    }
}

/// Models the caller may use: covered by one of their usable subscriptions (a Degraded one
/// serves its healthy models, a Failed one none) and granted to them by an auth policy. Each
/// served id appears once, however many refs or subscriptions serve it.
pub fn visible_models<'p>(
    policy: &'p Policy,
    caller: &Caller,
    requested_subscription: Option<&str>,
) -> Result<Vec<VisibleModel<'p>>, SubscriptionDenied> {
    let subscriptions = usable_subscriptions(policy, caller, requested_subscription)?;
    let mut position_by_id: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::new();
    let mut visible: Vec<VisibleModel<'p>> = Vec::new();
    for subscription in subscriptions {
        for model in authorized_models(policy, caller, subscription) {
            match position_by_id.get(model.served_id()) {
                Some(&position) => {
                    let entry = &mut visible[position];
                    if !entry
                        .subscriptions
                        .iter()
                        .any(|s| std::ptr::eq(*s, subscription))
                    {
                        entry.subscriptions.push(subscription);
                    }
                }
                None => {
                    position_by_id.insert(model.served_id(), visible.len());
                    visible.push(VisibleModel {
                        model,
                        subscription,
                        subscriptions: vec![subscription],
                    });
                }
            }
        }
    }
    Ok(visible)
}

/// The models of `subscription` an auth policy grants the caller, in the subscription's order.
pub fn authorized_models<'p>(
    policy: &'p Policy,
    caller: &Caller,
    subscription: &'p Subscription,
) -> Vec<&'p Model> {
    if !subscription.phase.is_usable() {
        return Vec::new();
    }
    subscription
        .models
        .iter()
        .filter_map(|entry| policy.model(entry.model))
        .filter(|model| policy.auth_policy_allows(model, caller.username.as_str(), &caller.groups))
        .collect()
}

/// The subscriptions `GET /v1/subscriptions` lists: every one the caller's user can access
/// (for an API key, judged against its group snapshot, not only the bound one) that gives them
/// at least one model an auth policy grants, best first.
pub fn listed_subscriptions<'p>(policy: &'p Policy, caller: &Caller) -> Vec<&'p Subscription> {
    policy
        .accessible_subscriptions(caller.username.as_str(), &caller.groups)
        .into_iter()
        .filter(|subscription| !authorized_models(policy, caller, subscription).is_empty())
        .collect()
}

/// The listed subscriptions through which the caller reaches the model `id` (a served id, a
/// ref name or `namespace/name`); none for an unknown model.
pub fn subscriptions_for_model<'p>(
    policy: &'p Policy,
    caller: &Caller,
    id: &str,
) -> Vec<&'p Subscription> {
    listed_subscriptions(policy, caller)
        .into_iter()
        .filter(|subscription| {
            authorized_models(policy, caller, subscription)
                .iter()
                .any(|model| model.is_served_as(id) || model.qualified_name() == id)
        })
        .collect()
}

/// Why upstream's subscription-selection callback picked nothing; each is its `error` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error(
        "found {0} subscriptions for this model; must specify subscription using X-MaaS-Subscription header"
    )]
    MultipleSubscriptions(usize),
    #[error("{0}")]
    ModelNotInSubscription(String),
    /// The subscription is Failed: none of its models is there.
    #[error("subscription {0:?} is not ready")]
    NotReady(String),
}

impl SelectionError {
    /// Upstream's `error` value.
    pub fn code(&self) -> &'static str {
        match self {
            SelectionError::BadRequest(_) => "bad_request",
            SelectionError::NotFound(_) => "not_found",
            SelectionError::AccessDenied(_) => "access_denied",
            SelectionError::MultipleSubscriptions(_) => "multiple_subscriptions",
            SelectionError::ModelNotInSubscription(_) => "model_not_in_subscription",
            SelectionError::NotReady(_) => "model_unhealthy",
        }
    }
}

/// What the selection callback picked: the subscription, and the model it resolved (if asked).
#[derive(Debug, Clone, Copy)]
pub struct Selection<'p> {
    pub subscription: &'p Subscription,
    pub model: Option<&'p Model>,
    /// Whether an auth policy grants the resolved model to the user or one of the groups.
    pub access_allowed: bool,
}

/// Upstream's `POST /internal/v1/subscriptions/select`: the subscription a request by
/// `username`/`groups` for `requested_model` (a served id, `namespace/name` or ref name) is
/// served under: the `requested_subscription` if it is theirs and holds the model, else the one
/// accessible subscription holding it.
pub fn select_subscription<'p>(
    policy: &'p Policy,
    username: &str,
    groups: &[String],
    requested_subscription: Option<&str>,
    requested_model: Option<&str>,
) -> Result<Selection<'p>, SelectionError> {
    let username = username.trim();
    if username.is_empty() {
        return Err(SelectionError::BadRequest(
            "username is required".to_owned(),
        ));
    }
    let requested_subscription = requested_subscription
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let model = match requested_model.map(str::trim).filter(|m| !m.is_empty()) {
        Some(name) => Some(
            policy
                .find_model(None, name)
                .map_err(|_| SelectionError::NotFound(format!("model {name:?} not found")))?,
        ),
        None => None,
    };
    let subscription = match requested_subscription {
        Some(reference) => {
            let subscription = policy.find_subscription(reference).ok_or_else(|| {
                SelectionError::NotFound(format!("subscription {reference:?} not found"))
            })?;
            if !policy.subscription_accessible(subscription, username, groups) {
                return Err(SelectionError::AccessDenied(format!(
                    "access denied to subscription {reference:?}"
                )));
            }
            if !subscription.phase.is_usable() {
                return Err(SelectionError::NotReady(subscription.name.clone()));
            }
            if let Some(model) = model
                && !policy.subscription_contains(subscription, model)
            {
                return Err(SelectionError::ModelNotInSubscription(format!(
                    "model {} is not in subscription {reference:?}",
                    model.qualified_name()
                )));
            }
            subscription
        }
        None => {
            let Some(model) = model else {
                return Err(SelectionError::BadRequest(
                    "requestedModel is required when no requestedSubscription is given".to_owned(),
                ));
            };
            let holding: Vec<&Subscription> = policy
                .accessible_subscriptions(username, groups)
                .into_iter()
                .filter(|subscription| {
                    subscription.phase.is_usable()
                        && policy.subscription_contains(subscription, model)
                })
                .collect();
            match holding.as_slice() {
                [] => {
                    return Err(SelectionError::NotFound(format!(
                        "no accessible subscription holds model {}",
                        model.qualified_name()
                    )));
                }
                [only] => *only,
                several => return Err(SelectionError::MultipleSubscriptions(several.len())),
            }
        }
    };
    Ok(Selection {
        subscription,
        model,
        access_allowed: model
            .is_some_and(|model| policy.auth_policy_allows(model, username, groups)),
    })
}

/// A model the caller may use through one subscription, with the limits that apply there: one
/// set of counters (`GET /v1/usage`).
#[derive(Debug, Clone, Copy)]
pub struct MeteredModel<'p> {
    pub subscription: &'p Subscription,
    pub model: &'p Model,
    pub limits: &'p SubscriptionModel,
}

impl MeteredModel<'_> {
    /// `<subNs>/<subName>@<modelNs>/<modelName>`, the key Check counts under.
    pub fn selected_subscription_key(&self) -> SubscriptionKey {
        self.subscription.selected_key(self.model)
    }
}

/// Every (subscription, model) pair the caller may use, in subscription preference order.
pub fn metered_models<'p>(policy: &'p Policy, caller: &Caller) -> Vec<MeteredModel<'p>> {
    let Ok(subscriptions) = usable_subscriptions(policy, caller, None) else {
        return Vec::new();
    };
    subscriptions
        .into_iter()
        .flat_map(|subscription| {
            subscription.models.iter().filter_map(move |limits| {
                let model = policy.model(limits.model)?;
                policy
                    .auth_policy_allows(model, caller.username.as_str(), &caller.groups)
                    .then_some(MeteredModel {
                        subscription,
                        model,
                        limits,
                    })
            })
        })
        .collect()
}

/// How clients name a model, in request bodies and paths: its name, or `namespace/name` when
/// the bare name is used in several namespaces (Check resolves both forms).
pub fn model_id(policy: &Policy, model: &Model) -> String {
    match policy.find_model(None, &model.name) {
        Ok(found) if found.namespace == model.namespace => model.name.clone(),
        _ => model.qualified_name(),
    }
}

/// Where a model is reached through the gateway: `<base>/<model id>`, the prefix before
/// `/v1/chat/completions` (Check reads the model from that path).
pub fn model_url(public_base: &str, model_id: &str) -> String {
    format!("{}/{model_id}", public_base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyRecordId;

    fn example_policy() -> Policy {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policy");
        Policy::load(&path).expect("example policy")
    }

    fn person(name: &str, groups: &[&str]) -> Caller {
        Caller::new(
            crate::ids::Username::new(name).unwrap(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
            CredentialKind::StaticToken,
            &[],
        )
    }

    fn names(models: &[VisibleModel<'_>]) -> Vec<(String, String)> {
        models
            .iter()
            .map(|m| (m.model.name.clone(), m.subscription.tier.clone()))
            .collect()
    }

    #[test]
    fn token_callers_see_models_of_all_their_subscriptions_with_the_best_tier() {
        let policy = example_policy();
        let bob = person("bob", &["system:authenticated", "premium-users"]);
        let models = visible_models(&policy, &bob, None).unwrap();
        assert_eq!(
            names(&models),
            [
                ("simulator".to_owned(), "premium".to_owned()),
                ("qwen3".to_owned(), "premium".to_owned())
            ]
        );
        let alice = person("alice", &["system:authenticated"]);
        let models = visible_models(&policy, &alice, None).unwrap();
        assert_eq!(
            names(&models),
            [("simulator".to_owned(), "free".to_owned())]
        );
    }

    #[test]
    fn a_requested_subscription_must_exist_and_be_accessible() {
        let policy = example_policy();
        let alice = person("alice", &["system:authenticated"]);
        assert_eq!(
            visible_models(&policy, &alice, Some("premium")).err(),
            Some(SubscriptionDenied)
        );
        assert_eq!(
            visible_models(&policy, &alice, Some("nope")).err(),
            Some(SubscriptionDenied)
        );
        let bob = person("bob", &["system:authenticated", "premium-users"]);
        let models = visible_models(&policy, &bob, Some("free")).unwrap();
        assert_eq!(
            names(&models),
            [("simulator".to_owned(), "free".to_owned())]
        );
    }

    #[test]
    fn key_callers_see_only_their_keys_subscription() {
        let policy = example_policy();
        let mut bob = person("bob", &["system:authenticated", "premium-users"]);
        bob.credential = CredentialKind::ApiKey {
            id: KeyRecordId::new_random(),
            subscription: "free".to_owned(),
        };
        let models = visible_models(&policy, &bob, Some("premium")).unwrap();
        assert_eq!(
            names(&models),
            [("simulator".to_owned(), "free".to_owned())]
        );
    }

    #[test]
    fn model_urls_are_the_base_for_openai_paths() {
        let policy = example_policy();
        let model = policy.find_model(None, "qwen3").unwrap();
        let id = model_id(&policy, model);
        assert_eq!(id, "qwen3");
        assert_eq!(
            model_url("https://gw.example.com/", &id),
            "https://gw.example.com/qwen3"
        );
    }
}
