//! The internal listener's routes: upstream's validate and subscription-selection callbacks and
//! the ephemeral clean-up job.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::catalog::compact_window;
use super::error::ApiError;
use super::extract::JsonBody;
use super::state::InternalApi;
use crate::authorizer::{CheckError, KeyValidity};
use crate::catalog::{Selection, SelectionError, select_subscription};
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
            username: Some(record.username.to_string()),
            key_id: Some(record.id.to_string()),
            key_name: Some(record.name.to_string()),
            groups: record.groups.to_vec(),
            subscription: Some(record.subscription.to_string()),
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

/// Upstream's `SelectRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectRequest {
    #[serde(default)]
    pub groups: Vec<String>,
    pub username: Option<String>,
    pub requested_subscription: Option<String>,
    pub requested_model: Option<String>,
}

/// `POST /internal/v1/subscriptions/select`: always 200; a refusal is `error` + `message` in the
/// body (upstream's contract, which Authorino-style callers read).
pub(super) async fn select(
    State(state): State<Arc<InternalApi>>,
    JsonBody(request): JsonBody<Option<SelectRequest>>,
) -> Json<serde_json::Value> {
    let request = request.unwrap_or_default();
    let policy = state.keys.policy();
    let selected = select_subscription(
        &policy,
        request.username.as_deref().unwrap_or_default(),
        &request.groups,
        request.requested_subscription.as_deref(),
        request.requested_model.as_deref(),
    );
    Json(match selected {
        Ok(selection) => selection_body(&policy, &selection),
        Err(error) => {
            let mut body = serde_json::json!({
                "error": error.code(),
                "message": error.to_string(),
                "accessAllowed": false,
                "phase": "",
            });
            if let SelectionError::NotReady(_) = error {
                body["phase"] = serde_json::Value::from("Failed");
            }
            body
        }
    })
}

fn selection_body(policy: &crate::policy::Policy, selection: &Selection<'_>) -> serde_json::Value {
    let subscription = selection.subscription;
    let model_refs: Vec<serde_json::Value> = subscription
        .models
        .iter()
        .filter_map(|entry| {
            let model = policy.model(entry.model)?;
            Some(serde_json::json!({
                "name": model.name,
                "namespace": model.namespace,
                "model_name": model.served_id(),
                "display_name": model.display_name.clone().unwrap_or_default(),
                "description": model.description.clone().unwrap_or_default(),
                "source": model.backend_namespace.clone().unwrap_or_default(),
                "token_rate_limits": entry.token_limits.iter().map(|limit| serde_json::json!({
                    "limit": limit.limit,
                    "window": compact_window(limit.window),
                })).collect::<Vec<_>>(),
                // Upstream's `billing_rate{per_token}`, a decimal string; absent when unset.
                "billing_rate": entry.billing.per_token.map(|rate| serde_json::json!({
                    "per_token": rate.to_string(),
                })),
            }))
        })
        .collect();
    serde_json::json!({
        "name": subscription.name,
        "namespace": subscription.namespace,
        "displayName": subscription.display_name.clone().unwrap_or_default(),
        "description": subscription.description.clone().unwrap_or_default(),
        "priority": subscription.priority,
        "modelRefs": model_refs,
        "organizationId": subscription.organization_id.clone().unwrap_or_default(),
        "costCenter": subscription.cost_center.clone().unwrap_or_default(),
        "labels": subscription.labels,
        "resolvedModel": selection.model.map(|model| model.qualified_name()).unwrap_or_default(),
        "accessAllowed": selection.access_allowed,
        "phase": subscription.phase.as_str(),
        "ready": subscription.phase.is_usable(),
        "deletionTimestamp": serde_json::Value::Null,
    })
}
