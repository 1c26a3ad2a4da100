//! `POST /v1/tokens` and `DELETE /v1/tokens`: short-lived access tokens (upstream's legacy API).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api_keys::{Lifetime, lifetime_field};
use super::error::ApiError;
use super::extract::JsonBody;
use super::openapi::FlatError;
use super::state::SharedState;
use crate::duration::format_go_duration;
use crate::identity::Caller;

/// `POST /v1/tokens` body; optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// Default 4h; at least 10m; at most `MAAS_AUTHZ_TOKEN_MAX_EXPIRATION` (default 24h).
    #[schema(value_type = Option<Lifetime>)]
    pub expiration: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// An `sk-oai-…` credential; send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// Lifetime as a Go duration, e.g. `15m0s`.
    pub expiration: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds.
    pub issued_at: i64,
    /// The token's id; it also appears in key searches that include ephemeral keys.
    pub jti: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokeTokensResponse {
    pub revoked_count: u64,
    pub message: String,
}

/// Get a short-lived access token for yourself, bound to your highest-priority subscription.
/// Needs a user token: an API key (or access token) cannot mint tokens.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    request_body(content = Option<TokenRequest>, description = "Optional"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Issued", body = TokenResponse),
        (status = 400, description = "Expiration too short (`provided_expiration`) or too long", body = FlatError),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
        (status = 403, description = "Called with an API key", body = FlatError),
    )
)]
pub(super) async fn issue_token(
    State(state): State<SharedState>,
    caller: Caller,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let expiration = lifetime_field("expiration", request.expiration)?;
    let issued = state
        .keys
        .issue_token(&caller, expiration, Utc::now())
        .await?;
    let record = &issued.minted.record;
    tracing::info!(token_id = %record.id, user = %record.username, subscription = %record.subscription, "access token issued");
    let response = TokenResponse {
        token: issued.minted.key.expose().to_owned(),
        expiration: format_go_duration(issued.lifetime),
        expires_at: record
            .expires_at
            .map_or(0, |expires_at| expires_at.timestamp()),
        issued_at: issued.issued_at.timestamp(),
        jti: record.id.to_string(),
    };
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(response),
    )
        .into_response())
}

/// Revoke all of your access tokens at once.
#[utoipa::path(
    delete,
    path = "/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked", body = RevokeTokensResponse),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
    )
)]
pub(super) async fn revoke_tokens(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let count = state.keys.revoke_tokens(&caller).await?;
    Ok(Json(RevokeTokensResponse {
        revoked_count: count,
        message: format!("Successfully revoked {count} access token(s)"),
    })
    .into_response())
}
