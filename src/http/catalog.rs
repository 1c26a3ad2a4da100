//! `GET /v1/models` (OpenAI's list shape) and `GET /v1/subscriptions` (upstream's fields).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::OpenAiError;
use super::extract::OpenAiCaller;
use super::openapi::OpenAiErrorBody;
use super::state::{SharedState, public_base};
use crate::catalog::{model_id, model_url, usable_subscriptions, visible_models};
use crate::gateway_headers::HEADER_SUBSCRIPTION;
use crate::policy::{Policy, RateLimit, Subscription};

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    /// What to send as `model` (the `MaaSModelRef` name, or `namespace/name` if ambiguous).
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds; 0, as the policy files carry no creation time.
    pub created: i64,
    /// Namespace of the model's backend.
    pub owned_by: String,
    /// Display name (annotation `openshift.io/display-name`), else the id.
    pub name: String,
    /// Base URL of the model: append `/v1/chat/completions` (or another OpenAI path).
    pub url: String,
    /// Tier of the subscription that serves this model for you.
    pub tier: String,
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRefView {
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
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

/// The models you can use, with the URL to call each at.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "discovery",
    params(("X-MaaS-Subscription" = Option<String>, Header,
        description = "Token callers: list only this subscription's models")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Models you can use", body = ModelList),
        (status = 401, description = "Missing or invalid bearer token", body = OpenAiErrorBody),
        (status = 403, description = "The requested subscription is unknown or not yours", body = OpenAiErrorBody),
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
            let id = model_id(&policy, visible.model);
            ModelView {
                url: model_url(&base, &id),
                object: "model",
                created: 0,
                owned_by: visible
                    .model
                    .backend_namespace
                    .clone()
                    .unwrap_or_else(|| visible.model.namespace.clone()),
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

/// The subscriptions you can use, best first (API keys: the key's own).
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
    let views: Vec<SubscriptionView> = usable_subscriptions(&policy, &caller, None)?
        .into_iter()
        .map(|subscription| subscription_view(&policy, subscription))
        .collect();
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(views)).into_response())
}

fn subscription_view(policy: &Policy, subscription: &Subscription) -> SubscriptionView {
    let model_refs = subscription
        .models
        .iter()
        .filter_map(|entry| {
            let model = policy.model(entry.model)?;
            Some(ModelRefView {
                name: model.name.clone(),
                namespace: model.namespace.clone(),
                display_name: model.display_name.clone(),
                token_rate_limits: entry.token_limits.iter().map(limit_view).collect(),
            })
        })
        .collect();
    SubscriptionView {
        subscription_id_header: subscription.name.clone(),
        name: subscription.name.clone(),
        namespace: subscription.namespace.clone(),
        display_name: subscription
            .display_name
            .clone()
            .unwrap_or_else(|| subscription.name.clone()),
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
