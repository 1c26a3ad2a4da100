//! What a REST caller may discover: the models they can use (with the tier serving each) and
//! the subscriptions they can use, read from the policy in force.

use std::collections::HashSet;

use crate::identity::{Caller, CredentialKind};
use crate::ids::SubscriptionKey;
use crate::policy::{Model, Policy, Subscription, SubscriptionModel};

/// A model the caller may use, and the subscription that serves it for them.
#[derive(Debug, Clone, Copy)]
pub struct VisibleModel<'p> {
    pub model: &'p Model,
    pub subscription: &'p Subscription,
}

/// The caller named a subscription (`X-MaaS-Subscription`) that does not exist or is not theirs;
/// the two are deliberately indistinguishable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access denied to requested subscription")]
pub struct SubscriptionDenied;

/// The subscriptions a caller may draw on, best first. API-key callers (and access tokens) have
/// exactly the key's subscription, judged against the key's group snapshot; other callers have
/// the one they ask for, else all they can use.
pub fn usable_subscriptions<'p>(
    policy: &'p Policy,
    caller: &Caller,
    requested: Option<&str>,
) -> Result<Vec<&'p Subscription>, SubscriptionDenied> {
    let accessible = |subscription: &&Subscription| {
        policy.subscription_accessible(subscription, caller.username.as_str(), &caller.groups)
    };
    match &caller.credential {
        CredentialKind::ApiKey { subscription, .. } => Ok(policy
            .find_subscription(subscription)
            .filter(accessible)
            .into_iter()
            .collect()),
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

/// Models the caller may use: covered by one of their usable subscriptions and granted to them
/// by an auth policy. Each model appears once, with the best subscription that serves it.
pub fn visible_models<'p>(
    policy: &'p Policy,
    caller: &Caller,
    requested_subscription: Option<&str>,
) -> Result<Vec<VisibleModel<'p>>, SubscriptionDenied> {
    let subscriptions = usable_subscriptions(policy, caller, requested_subscription)?;
    let mut seen = HashSet::new();
    let mut visible = Vec::new();
    for subscription in subscriptions {
        for entry in &subscription.models {
            let Some(model) = policy.model(entry.model) else {
                continue;
            };
            if policy.auth_policy_allows(model, caller.username.as_str(), &caller.groups)
                && seen.insert((model.namespace.as_str(), model.name.as_str()))
            {
                visible.push(VisibleModel {
                    model,
                    subscription,
                });
            }
        }
    }
    Ok(visible)
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
