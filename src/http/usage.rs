//! `GET /v1/usage`: the caller's current request and token windows per subscription and model.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::OpenAiError;
use super::extract::OpenAiCaller;
use super::openapi::OpenAiErrorBody;
use super::state::SharedState;
use crate::catalog::metered_models;
use crate::duration::format_go_duration;
use crate::limits::{LimitKind, UsageWindow, retry_after_seconds};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageWindowView {
    /// Length of the window as the policy writes it, e.g. `1m`.
    pub window: String,
    pub limit: u64,
    /// Counted in the current window (requests: this replica's view when counters are in-process).
    pub used: u64,
    pub remaining: u64,
    /// Until the window starts over, as in `x-ratelimit-reset-*` (e.g. `42s`).
    pub reset: String,
    /// The same, in whole seconds (rounded up).
    pub reset_seconds: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    /// `namespace/name` of the subscription.
    pub subscription: String,
    pub tier: String,
    /// `namespace/name` of the model.
    pub model: String,
    /// `requestRateLimits` windows (empty when the subscription sets none).
    pub requests: Vec<UsageWindowView>,
    /// `tokenRateLimits` windows.
    pub tokens: Vec<UsageWindowView>,
    /// `spendLimits` windows (our extension; empty when the subscription sets none).
    pub spend: Vec<SpendWindowView>,
}

/// One spend window: amounts as decimal strings in the billing currency.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendWindowView {
    /// Length of the window as the policy writes it, e.g. `720h`.
    pub window: String,
    /// The cap, e.g. `50`.
    pub limit: String,
    /// Spent in the current window (charged after each response).
    pub used: String,
    pub remaining: String,
    /// Until the window starts over (e.g. `42s`).
    pub reset: String,
    /// The same, in whole seconds (rounded up).
    pub reset_seconds: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelUsage>,
}

/// Where you stand against your limits: one entry per subscription and model you can use
/// (API keys: the key's subscription). Reading it counts nothing.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "discovery",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Your current windows", body = UsageList),
        (status = 401, description = "Missing or invalid bearer token", body = OpenAiErrorBody),
        (status = 503, description = "The counter store (Redis) is unavailable", body = OpenAiErrorBody),
    )
)]
pub(super) async fn usage(
    State(state): State<SharedState>,
    OpenAiCaller(caller): OpenAiCaller,
) -> Result<Response, OpenAiError> {
    let policy = state.policy.load_full();
    let metered = metered_models(&policy, &caller);
    let windows = match &state.limiter {
        Some(limiter) => {
            let entries: Vec<_> = metered
                .iter()
                .map(|entry| (entry.selected_subscription_key(), entry.limits))
                .collect();
            limiter.usage(caller.username.as_str(), &entries).await?
        }
        None => vec![Vec::new(); metered.len()],
    };
    let data = metered
        .iter()
        .zip(windows)
        .map(|(entry, windows)| {
            let of_kind = |kind: LimitKind| {
                windows
                    .iter()
                    .filter(|window| window.kind == kind)
                    .map(window_view)
                    .collect()
            };
            ModelUsage {
                subscription: entry.subscription.qualified_name(),
                tier: entry.subscription.tier.clone(),
                model: entry.model.qualified_name(),
                requests: of_kind(LimitKind::Requests),
                tokens: of_kind(LimitKind::Tokens),
                spend: windows
                    .iter()
                    .filter(|window| window.kind == LimitKind::Spend)
                    .map(spend_view)
                    .collect(),
            }
        })
        .collect();
    let list = UsageList {
        object: "list",
        data,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(list)).into_response())
}

fn window_view(window: &UsageWindow) -> UsageWindowView {
    let status = &window.status;
    let reset_seconds = retry_after_seconds(status.reset_after);
    UsageWindowView {
        window: super::catalog::compact_window(status.window),
        limit: status.limit,
        used: status.used,
        remaining: status.remaining(),
        reset: format_go_duration(Duration::from_secs(reset_seconds)),
        reset_seconds,
    }
}

fn spend_view(window: &UsageWindow) -> SpendWindowView {
    let view = window_view(window);
    let amount = |pico: u64| crate::money::Amount::from_pico(i128::from(pico)).to_string();
    let status = &window.status;
    SpendWindowView {
        window: view.window,
        limit: amount(status.limit),
        used: amount(status.used),
        remaining: amount(status.remaining()),
        reset: view.reset,
        reset_seconds: view.reset_seconds,
    }
}
