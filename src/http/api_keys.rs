//! `/v1/api-keys…` handlers and their wire types (upstream's field names, plus the seed's).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::JsonBody;
use super::openapi::FlatError;
use super::state::SharedState;
use crate::duration::format_go_duration;
use crate::identity::Caller;
use crate::keys::{
    BulkRevoke, CreateKey, EPHEMERAL_MAX_LIFETIME, KeyError, LifetimeInput, SearchKeys,
};
use crate::store::KeyRecord;

/// A lifetime: a number of seconds, or a Go duration string (`30m`, `2h30m`, `1.5h`) or whole
/// days (`90d`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // documents the accepted forms; bodies are read as JSON values
pub enum Lifetime {
    Seconds(f64),
    Text(String),
}

/// Reads a lifetime field: absent and `null` mean "default".
pub(super) fn lifetime_field(
    field: &str,
    value: Option<serde_json::Value>,
) -> Result<Option<LifetimeInput>, ApiError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(number)) => Ok(number.as_f64().map(LifetimeInput::Seconds)),
        Some(serde_json::Value::String(text)) => Ok(Some(LifetimeInput::Text(text))),
        Some(_) => Err(KeyError::InvalidRequest(format!(
            "{field} must be a number of seconds or a duration string like 90d, 2h30m or 30m"
        ))
        .into()),
    }
}

/// `POST /v1/api-keys` body. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateApiKeyRequest {
    /// Required unless `ephemeral`; trimmed, at most 128 characters, no control characters.
    pub name: Option<String>,
    /// At most 1024 characters.
    pub description: Option<String>,
    /// Default: the configured maximum (ephemeral keys: 1h).
    #[schema(value_type = Option<Lifetime>)]
    pub expires_in: Option<serde_json::Value>,
    /// `name` or `namespace/name` of a subscription you can use; default: your highest-priority one.
    pub subscription: Option<String>,
    /// Short-lived (at most 1h), name optional, hidden from search by default, deleted 30 minutes after expiry.
    pub ephemeral: Option<bool>,
    /// Up to 50 immutable labels (Kubernetes label-key syntax; the `maas-authz.io/` prefix is reserved).
    pub labels: Option<BTreeMap<String, String>>,
}

/// `POST /v1/api-keys` answer: the only time the key is shown.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    pub id: String,
    /// The plaintext key. Store it now: it cannot be shown again.
    pub key: String,
    /// For display, e.g. `sk-oai-0123456789AB...`.
    pub key_prefix: String,
    pub name: String,
    pub subscription: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub ephemeral: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A key's metadata (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub username: String,
    pub subscription: String,
    /// Effective status: an active key past its expiry is `expired`.
    #[schema(example = "active")]
    pub status: String,
    pub created_at: String,
    /// Same as `createdAt` (upstream's name).
    pub creation_date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Same as `expiresAt` (upstream's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    pub ephemeral: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl ApiKeyView {
    fn new(record: KeyRecord, now: DateTime<Utc>) -> Self {
        let created = timestamp(record.created_at);
        let expires = record.expires_at.map(timestamp);
        Self {
            id: record.id.to_string(),
            status: record.effective_status(now).as_str().to_owned(),
            name: record.name,
            description: record.description,
            username: record.username,
            subscription: record.subscription,
            created_at: created.clone(),
            creation_date: created,
            expires_at: expires.clone(),
            expiration_date: expires,
            last_used_at: record.last_used_at.map(timestamp),
            ephemeral: record.ephemeral,
            labels: record.labels,
        }
    }
}

/// A status filter: one status or several.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StatusFilter {
    One(String),
    Many(Vec<String>),
}

impl StatusFilter {
    fn into_vec(self) -> Vec<String> {
        match self {
            StatusFilter::One(status) => vec![status],
            StatusFilter::Many(statuses) => statuses,
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchFilters {
    /// Admins only (others may name only themselves); admins without it search every user.
    pub username: Option<String>,
    /// `active`, `revoked`, `expired` (effective status).
    pub status: Option<StatusFilter>,
    pub subscription: Option<String>,
    /// Default false: ephemeral keys (and access tokens) are hidden.
    pub include_ephemeral: Option<bool>,
    /// Keys carrying all of these labels.
    pub labels_contain: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SearchSort {
    /// `created_at` (default), `expires_at`, `last_used_at` or `name`.
    pub by: Option<String>,
    /// `asc` or `desc` (default), any case.
    pub order: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SearchPagination {
    /// 1 to 100 (larger values are capped); default 50.
    pub limit: Option<i64>,
    /// At least 0; default 0.
    pub offset: Option<i64>,
}

/// `POST /v1/api-keys/search` body: upstream's nested form, or the seed's flat `status`,
/// `limit`, `offset`, `includeEphemeral` (nested values win when both are given).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchApiKeysRequest {
    pub filters: Option<SearchFilters>,
    pub sort: Option<SearchSort>,
    pub pagination: Option<SearchPagination>,
    pub status: Option<StatusFilter>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub include_ephemeral: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ApiKeyView>,
    pub has_more: bool,
}

/// `POST /v1/api-keys/bulk-revoke` body. No body at all means "all my active keys" (the seed's
/// "Revoke All Your Keys"); a body must name `username` and/or `subscription` (upstream's rule:
/// an empty `{}` is refused rather than read as "everything of mine").
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkRevokeRequest {
    /// Another user's keys need an admin.
    pub username: Option<String>,
    /// Every active key bound to this subscription (admins only).
    pub subscription: Option<String>,
    /// Count only.
    pub dry_run: Option<bool>,
}

const UNSCOPED_BULK_REVOKE: &str = "at least one of username or subscription is required \
     (send {\"username\": \"<your name>\"} or no body at all to revoke all your own active keys)";

fn is_blank(field: &Option<String>) -> bool {
    field.as_deref().is_none_or(|text| text.trim().is_empty())
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkRevokeResponse {
    pub revoked_count: u64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyConfigResponse {
    pub max_expiration_days: u32,
    /// Go duration, e.g. `1h0m0s`.
    pub ephemeral_max_expiration: String,
}

fn no_store(response: impl IntoResponse) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], response).into_response()
}

/// Mint an API key for yourself. Needs a user token: an API key cannot mint keys.
#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    request_body = CreateApiKeyRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = CreatedApiKey),
        (status = 400, description = "Invalid field, or `invalid_subscription`", body = FlatError),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
        (status = 403, description = "Called with an API key, with forged X-MaaS identity headers, or the requested subscription is Failed (`subscription_not_ready`)", body = FlatError),
        (status = 413, description = "Body over 1 MiB", body = FlatError),
        (status = 415, description = "Body not sent as application/json", body = FlatError),
    )
)]
pub(super) async fn create_key(
    State(state): State<SharedState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateApiKeyRequest>,
) -> Result<Response, ApiError> {
    let create = CreateKey {
        name: request.name,
        description: request.description,
        expires_in: lifetime_field("expiresIn", request.expires_in)?,
        subscription: request.subscription,
        ephemeral: request.ephemeral.unwrap_or(false),
        labels: request.labels.unwrap_or_default(),
    };
    let minted = state.keys.create_key(&caller, create, Utc::now()).await?;
    tracing::info!(
        key_id = %minted.record.id,
        user = %minted.record.username,
        subscription = %minted.record.subscription,
        ephemeral = minted.record.ephemeral,
        "API key created"
    );
    let record = minted.record;
    let created = CreatedApiKey {
        id: record.id.to_string(),
        key: minted.key.expose().to_owned(),
        key_prefix: minted.key.display_prefix(),
        name: record.name,
        subscription: record.subscription,
        created_at: timestamp(record.created_at),
        expires_at: record.expires_at.map(timestamp),
        ephemeral: record.ephemeral,
        labels: record.labels,
    };
    Ok(no_store((StatusCode::CREATED, Json(created))))
}

/// Search your keys (admins: anyone's), newest first by default.
#[utoipa::path(
    post,
    path = "/v1/api-keys/search",
    tag = "api-keys",
    request_body = SearchApiKeysRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of keys", body = ApiKeyList),
        (status = 400, description = "Invalid filter, sort or pagination", body = FlatError),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
        (status = 403, description = "A non-admin named another user", body = FlatError),
    )
)]
pub(super) async fn search_keys(
    State(state): State<SharedState>,
    caller: Caller,
    JsonBody(request): JsonBody<SearchApiKeysRequest>,
) -> Result<Response, ApiError> {
    let filters = request.filters.unwrap_or_default();
    let sort = request.sort.unwrap_or_default();
    let pagination = request.pagination.unwrap_or_default();
    let search = SearchKeys {
        username: filters.username,
        statuses: filters
            .status
            .or(request.status)
            .map(StatusFilter::into_vec)
            .unwrap_or_default(),
        subscription: filters.subscription,
        labels_contain: filters.labels_contain.unwrap_or_default(),
        include_ephemeral: filters
            .include_ephemeral
            .or(request.include_ephemeral)
            .unwrap_or(false),
        sort_by: sort.by,
        sort_order: sort.order,
        limit: pagination.limit.or(request.limit),
        offset: pagination.offset.or(request.offset),
    };
    let page = state.keys.search_keys(&caller, search).await?;
    let now = Utc::now();
    let list = ApiKeyList {
        object: "list",
        data: page
            .keys
            .into_iter()
            .map(|record| ApiKeyView::new(record, now))
            .collect(),
        has_more: page.has_more,
    };
    Ok(no_store(Json(list)))
}

/// One key's metadata. Someone else's key (unless you are an admin) is "not found".
#[utoipa::path(
    get,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    params(("id" = String, Path, description = "The key's id (a UUID), as returned at creation")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The key", body = ApiKeyView),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
        (status = 404, description = "No such key of yours", body = FlatError),
    )
)]
pub(super) async fn get_key(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let record = state.keys.get_key(&caller, &id).await?;
    Ok(no_store(Json(ApiKeyView::new(record, Utc::now()))))
}

/// Revoke one active key; the row is kept. Check refuses the key at once on this replica.
#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    params(("id" = String, Path, description = "The key's id (a UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked; the updated key", body = ApiKeyView),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
        (status = 404, description = "No such active key of yours", body = FlatError),
    )
)]
pub(super) async fn revoke_key(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let record = state.keys.revoke_key(&caller, &id).await?;
    Ok(no_store(Json(ApiKeyView::new(record, Utc::now()))))
}

/// Revoke every active key of a user and/or subscription. No body: all your own active keys.
#[utoipa::path(
    post,
    path = "/v1/api-keys/bulk-revoke",
    tag = "api-keys",
    request_body(content = Option<BulkRevokeRequest>, description = "Optional: no body revokes all your own active keys; a body must give username and/or subscription"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked (or counted, on a dry run)", body = BulkRevokeResponse),
        (status = 400, description = "A body with neither username nor subscription", body = FlatError),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
        (status = 403, description = "Another user or a subscription without admin rights", body = FlatError),
    )
)]
pub(super) async fn bulk_revoke(
    State(state): State<SharedState>,
    caller: Caller,
    JsonBody(request): JsonBody<Option<BulkRevokeRequest>>,
) -> Result<Response, ApiError> {
    let request = match request {
        None => BulkRevokeRequest::default(),
        Some(request) if is_blank(&request.username) && is_blank(&request.subscription) => {
            return Err(KeyError::InvalidRequest(UNSCOPED_BULK_REVOKE.to_owned()).into());
        }
        Some(request) => request,
    };
    let outcome = state
        .keys
        .bulk_revoke(
            &caller,
            BulkRevoke {
                username: request.username,
                subscription: request.subscription,
                dry_run: request.dry_run.unwrap_or(false),
            },
        )
        .await?;
    let response = if outcome.dry_run {
        BulkRevokeResponse {
            revoked_count: outcome.count,
            message: format!("Dry run: {} API key(s) would be revoked", outcome.count),
            dry_run: Some(true),
        }
    } else {
        BulkRevokeResponse {
            revoked_count: outcome.count,
            message: format!("Successfully revoked {} API key(s)", outcome.count),
            dry_run: None,
        }
    };
    Ok(no_store(Json(response)))
}

/// Limits that apply to new keys.
#[utoipa::path(
    get,
    path = "/v1/api-keys/config",
    tag = "api-keys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Key lifetime limits", body = KeyConfigResponse),
        (status = 401, description = "Missing or invalid bearer token", body = FlatError),
    )
)]
pub(super) async fn key_config(
    State(state): State<SharedState>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    Ok(Json(KeyConfigResponse {
        max_expiration_days: state.keys.settings().max_expiration_days,
        ephemeral_max_expiration: format_go_duration(EPHEMERAL_MAX_LIFETIME),
    })
    .into_response())
}
