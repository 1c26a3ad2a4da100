//! `GET /v1/models` (OpenAI's list shape), `GET /v1/subscriptions` and
//! `GET /v1/model/{id}/subscriptions` (upstream's fields).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::OpenAiError;
use super::extract::OpenAiCaller;
use super::openapi::OpenAiErrorBody;
use super::state::{SharedState, public_base};
use crate::catalog::{
    authorized_models, listed_subscriptions, model_id, model_url, subscriptions_for_model,
    visible_models,
};
use crate::gateway_headers::HEADER_SUBSCRIPTION;
use crate::policy::{Policy, RateLimit, Subscription};

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    /// What to send as `model`: the served model name the ref resolves to
    /// (`status.resolvedModelAlias`), else the `MaaSModelRef` name.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds: the ref's `metadata.creationTimestamp`, else when the policy first held it.
    pub created: i64,
    /// Namespace of the model's backend.
    pub owned_by: String,
    /// Whether the model ref reports ready (`status.phase: Ready`, or no status).
    pub ready: bool,
    /// The subscriptions through which you reach this model, best first.
    pub subscriptions: Vec<ModelSubscriptionView>,
    /// Display name (annotation `openshift.io/display-name`), else the id.
    pub name: String,
    /// Base URL of the model: append `/v1/chat/completions` (or another OpenAI path).
    pub url: String,
    /// Tier of the subscription that serves this model for you.
    pub tier: String,
}

/// A subscription as `GET /v1/models` names it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelSubscriptionView {
    pub name: String,
    #[serde(rename = "displayName")]
    pub display_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRateLimitView {
    pub limit: u64,
    /// e.g. `1m`.
    pub window: String,
}

/// A model of a subscription; its namespace is not exposed (upstream's shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRefView {
    pub name: String,
    /// The annotation `openshift.io/display-name` of the `MaaSModelRef`, else its name.
    pub display_name: String,
    /// The annotation `openshift.io/description` of the `MaaSModelRef`, else empty.
    pub description: String,
    pub token_rate_limits: Vec<TokenRateLimitView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// The value to send as `X-MaaS-Subscription` (and `subscription` when minting keys).
    pub subscription_id_header: String,
    pub name: String,
    pub namespace: String,
    pub display_name: String,
    pub subscription_description: String,
    pub priority: i32,
    pub tier: String,
    pub model_refs: Vec<ModelRefView>,
    pub organization_id: String,
    pub cost_center: String,
}

/// The models you can use, with the URL to call each at. An API key sees its bound
/// subscription's models (a sent `X-MaaS-Subscription` is ignored); a user token sees those of
/// every subscription it can use, or of the one it names.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "discovery",
    params(("X-MaaS-Subscription" = Option<String>, Header,
        description = "Token callers: list only this subscription's models (ignored for API keys)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Models you can use", body = ModelList),
        (status = 401, description = "Missing or invalid bearer token (`type` `authentication_error`)", body = OpenAiErrorBody),
        (status = 403, description = "The requested subscription (or an API key's bound one) is unknown or not yours", body = OpenAiErrorBody),
    )
)]
pub(super) async fn list_models(
    State(state): State<SharedState>,
    OpenAiCaller(caller): OpenAiCaller,
    headers: HeaderMap,
) -> Result<Response, OpenAiError> {
    let requested = headers
        .get(HEADER_SUBSCRIPTION)
        .and_then(|v| v.to_str().ok());
    let policy = state.policy.load_full();
    let base = public_base(&state, &headers).unwrap_or_default();
    let data = visible_models(&policy, &caller, requested)?
        .into_iter()
        .map(|visible| {
            let route = model_id(&policy, visible.model);
            let id = visible.model.served_id().to_owned();
            ModelView {
                url: model_url(&base, &route),
                object: "model",
                created: visible.model.created,
                owned_by: visible
                    .model
                    .backend_namespace
                    .clone()
                    .unwrap_or_else(|| visible.model.namespace.clone()),
                ready: visible.model.ready,
                subscriptions: visible
                    .subscriptions
                    .iter()
                    .map(|subscription| ModelSubscriptionView {
                        name: subscription.name.clone(),
                        display_name: display_name(subscription),
                    })
                    .collect(),
                name: visible
                    .model
                    .display_name
                    .clone()
                    .unwrap_or_else(|| id.clone()),
                tier: visible.subscription.tier.clone(),
                id,
            }
        })
        .collect();
    let list = ModelList {
        object: "list",
        data,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(list)).into_response())
}

/// The subscriptions you can use, best first: every one your user can access (an API key's
/// user, by its group snapshot) that gives you a model an auth policy grants, with only those
/// models.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "discovery",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Subscriptions you can use", body = Vec<SubscriptionView>),
        (status = 401, description = "Missing or invalid bearer token", body = OpenAiErrorBody),
    )
)]
pub(super) async fn list_subscriptions(
    State(state): State<SharedState>,
    OpenAiCaller(caller): OpenAiCaller,
) -> Result<Response, OpenAiError> {
    let policy = state.policy.load_full();
    let views: Vec<SubscriptionView> = listed_subscriptions(&policy, &caller)
        .into_iter()
        .map(|subscription| subscription_view(&policy, &caller, subscription))
        .collect();
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(views)).into_response())
}

/// The subscriptions through which you reach one model (a served id, a `MaaSModelRef` name or
/// `namespace/name`); an empty list for a model you cannot use or that does not exist.
#[utoipa::path(
    get,
    path = "/v1/model/{id}/subscriptions",
    tag = "discovery",
    params(("id" = String, Path, description = "The model's id as /v1/models lists it")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Subscriptions serving this model to you", body = Vec<SubscriptionView>),
        (status = 401, description = "Missing or invalid bearer token", body = OpenAiErrorBody),
    )
)]
pub(super) async fn list_model_subscriptions(
    State(state): State<SharedState>,
    OpenAiCaller(caller): OpenAiCaller,
    Path(id): Path<String>,
) -> Result<Response, OpenAiError> {
    let policy = state.policy.load_full();
    let views: Vec<SubscriptionView> = subscriptions_for_model(&policy, &caller, &id)
        .into_iter()
        .map(|subscription| subscription_view(&policy, &caller, subscription))
        .collect();
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(views)).into_response())
}

fn display_name(subscription: &Subscription) -> String {
    subscription
        .display_name
        .clone()
        .unwrap_or_else(|| subscription.name.clone())
}

fn subscription_view(
    policy: &Policy,
    caller: &crate::identity::Caller,
    subscription: &Subscription,
) -> SubscriptionView {
    let authorized = authorized_models(policy, caller, subscription);
    let model_refs = subscription
        .models
        .iter()
        .filter_map(|entry| {
            let model = policy.model(entry.model)?;
            authorized
                .iter()
                .any(|granted| std::ptr::eq(*granted, model))
                .then(|| ModelRefView {
                    name: model.name.clone(),
                    display_name: model
                        .display_name
                        .clone()
                        .unwrap_or_else(|| model.name.clone()),
                    description: model.description.clone().unwrap_or_default(),
                    token_rate_limits: entry.token_limits.iter().map(limit_view).collect(),
                })
        })
        .collect();
    SubscriptionView {
        subscription_id_header: subscription.name.clone(),
        name: subscription.name.clone(),
        namespace: subscription.namespace.clone(),
        display_name: display_name(subscription),
        subscription_description: subscription.description.clone().unwrap_or_default(),
        priority: subscription.priority,
        tier: subscription.tier.clone(),
        model_refs,
        organization_id: subscription.organization_id.clone().unwrap_or_default(),
        cost_center: subscription.cost_center.clone().unwrap_or_default(),
    }
}

fn limit_view(limit: &RateLimit) -> TokenRateLimitView {
    TokenRateLimitView {
        limit: limit.limit,
        window: compact_window(limit.window),
    }
}

/// A window as the CRD writes it: `1m`, `30s`, `2h`.
pub(super) fn compact_window(window: Duration) -> String {
    let seconds = window.as_secs();
    match seconds {
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_print_as_the_crd_writes_them() {
        assert_eq!(compact_window(Duration::from_secs(60)), "1m");
        assert_eq!(compact_window(Duration::from_secs(7_200)), "2h");
        assert_eq!(compact_window(Duration::from_secs(90)), "90s");
    }
}
