//! The internal listener's routes: upstream's validate callback and the ephemeral clean-up job.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::JsonBody;
use super::state::InternalApi;
use crate::authorizer::{CheckError, KeyValidity};
use crate::identity::AuthError;

#[derive(Debug, Default, Deserialize)]
pub struct ValidateRequest {
    pub key: Option<String>,
}

/// Upstream's `ValidationResult`, field for field.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResult {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupResponse {
    pub deleted_count: u64,
    pub message: String,
}

/// `POST /internal/v1/api-keys/validate`: 200 for every decision, valid or not.
pub(super) async fn validate_key(
    State(state): State<Arc<InternalApi>>,
    JsonBody(request): JsonBody<ValidateRequest>,
) -> Result<Json<ValidationResult>, ApiError> {
    let key = request
        .key
        .filter(|key| !key.is_empty())
        .ok_or(ApiError::KeyRequired)?;
    let validity = state
        .authorizer
        .validate_key(&key, chrono::Utc::now())
        .await
        .map_err(|error: CheckError| match error {
            // Not looked up: the unknown-key budget is spent (429 with retry-after).
            CheckError::UnknownKeyThrottled(throttled) => ApiError::Auth(AuthError::Throttled {
                retry_after: throttled.retry_after,
            }),
            error => {
                tracing::warn!(%error, "validate failed: key store unavailable");
                ApiError::ValidationFailed
            }
        })?;
    let tenant = state.tenant.clone();
    Ok(Json(match validity {
        KeyValidity::Valid(record) => ValidationResult {
            valid: true,
            user_id: Some(record.id.to_string()),
            username: Some(record.username.clone()),
            key_id: Some(record.id.to_string()),
            key_name: Some(record.name.clone()),
            groups: record.groups.clone(),
            subscription: Some(record.subscription.clone()),
            tenant,
            reason: None,
        },
        KeyValidity::Invalid(invalid) => ValidationResult {
            valid: false,
            user_id: None,
            username: None,
            key_id: None,
            key_name: None,
            groups: Vec::new(),
            subscription: None,
            tenant,
            reason: Some(invalid.upstream_reason()),
        },
    }))
}

/// `POST /internal/v1/api-keys/cleanup`: deletes ephemeral keys 30 minutes past expiry.
pub(super) async fn clean_up(
    State(state): State<Arc<InternalApi>>,
) -> Result<Json<CleanupResponse>, ApiError> {
    let deleted = state.keys.clean_up_ephemeral_keys().await?;
    Ok(Json(CleanupResponse {
        deleted_count: deleted,
        message: format!("Successfully deleted {deleted} expired ephemeral key(s)"),
    }))
}
