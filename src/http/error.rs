//! Every REST error and the one function that turns each into an HTTP response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body::BodyError;
use crate::catalog::SubscriptionDenied;
use crate::identity::AuthError;
use crate::keys::KeyError;
use crate::limits::{LimitError, retry_after_seconds};

/// Everything a REST handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    SubscriptionDenied(#[from] SubscriptionDenied),
    /// `GET /v1/usage` could not read the counters.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// The internal validate endpoint got no key.
    #[error("key is required")]
    KeyRequired,
    /// The internal validate endpoint could not reach the key store.
    #[error("validation failed")]
    ValidationFailed,
    #[error("the request took too long")]
    Timeout,
    #[error("not found")]
    RouteNotFound,
    /// `GET /v1/usage/report` was asked something it cannot answer (or may not).
    #[error(transparent)]
    UsageReport(#[from] crate::ledger::report::ReportError),
    /// The usage ledger could not be read.
    #[error("usage ledger: {0}")]
    Usage(#[source] crate::store::StoreError),
}

/// How the error body is shaped: upstream's key API uses `{"error": "..."}`; the OpenAI-style
/// discovery routes (`/v1/models`, `/v1/subscriptions`) use `{"error": {"message", "type", "code"}}`
/// so OpenAI SDKs raise the matching exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    Flat,
    OpenAi,
}

/// An [`ApiError`] answered in the OpenAI shape.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(error: E) -> Self {
        OpenAiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self, ErrorShape::Flat)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        error_response(&self.0, ErrorShape::OpenAi)
    }
}

/// What one error looks like on the wire, before shaping.
struct ErrorParts {
    status: StatusCode,
    message: String,
    /// OpenAI `type`.
    kind: &'static str,
    /// OpenAI `code`, when clients branch on it.
    code: Option<&'static str>,
    /// An extra top-level field of the flat shape (upstream's `code`, `provided_expiration`).
    extra: Option<(&'static str, Value)>,
}

/// THE mapping from errors to HTTP responses. The comment on each arm says what the client does.
pub fn error_response(error: &ApiError, shape: ErrorShape) -> Response {
    let parts = |status, message: String, kind, code| ErrorParts {
        status,
        message,
        kind,
        code,
        extra: None,
    };
    let parts = match error {
        // Send (or fix) `Authorization: Bearer <token>`; the challenge header says so.
        // (`type` is upstream's `authentication_error`; `code` OpenAI's `invalid_api_key`.)
        ApiError::Auth(AuthError::Missing | AuthError::Malformed | AuthError::Invalid(_)) => parts(
            StatusCode::UNAUTHORIZED,
            error.to_string(),
            "authentication_error",
            Some("invalid_api_key"),
        ),
        // Retry later: the identity source (API server, issuer, database) is down.
        ApiError::Auth(AuthError::Unavailable(detail)) => {
            tracing::warn!(%detail, "authentication unavailable");
            parts(
                StatusCode::SERVICE_UNAVAILABLE,
                "authentication is temporarily unavailable; retry later".into(),
                "server_error",
                None,
            )
        }
        // Retry after `retry-after` seconds: too many credentials nobody has seen recently
        // arrived at once, so yours was not checked (it may well be valid).
        ApiError::Auth(AuthError::Throttled { .. }) => parts(
            StatusCode::TOO_MANY_REQUESTS,
            error.to_string(),
            "rate_limit_error",
            Some("rate_limit_exceeded"),
        ),
        // Remove the x-maas-username / x-maas-group / ... headers: the gateway sets them.
        ApiError::Auth(AuthError::ForgedIdentityHeader) => parts(
            StatusCode::FORBIDDEN,
            error.to_string(),
            "permission_error",
            Some("forged_identity_header"),
        ),
        // Send JSON with `Content-Type: application/json`.
        ApiError::Body(BodyError::UnsupportedMediaType) => parts(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error.to_string(),
            "invalid_request_error",
            None,
        ),
        // Send a smaller body (1 MiB at most).
        ApiError::Body(BodyError::TooLarge) => parts(
            StatusCode::PAYLOAD_TOO_LARGE,
            error.to_string(),
            "invalid_request_error",
            None,
        ),
        // Fix the body; the message points at the problem.
        ApiError::Body(BodyError::Malformed(_) | BodyError::Unreadable) => parts(
            StatusCode::BAD_REQUEST,
            error.to_string(),
            "invalid_request_error",
            None,
        ),
        // Fix the named field and retry.
        ApiError::Keys(KeyError::InvalidRequest(_)) | ApiError::KeyRequired => parts(
            StatusCode::BAD_REQUEST,
            error.to_string(),
            "invalid_request_error",
            None,
        ),
        // Ask for a longer token; `provided_expiration` echoes what was asked.
        ApiError::Keys(KeyError::TokenTooShort { provided }) => ErrorParts {
            extra: Some(("provided_expiration", Value::String(provided.clone()))),
            ..parts(
                StatusCode::BAD_REQUEST,
                error.to_string(),
                "invalid_request_error",
                None,
            )
        },
        // Revoke a key (DELETE /v1/api-keys/{id}) or wait for one to expire, then retry; the
        // message says how many you hold (branch on `code`).
        ApiError::Keys(KeyError::TooManyActiveKeys { .. }) => ErrorParts {
            extra: Some(("code", Value::String("too_many_active_keys".into()))),
            ..parts(
                StatusCode::BAD_REQUEST,
                error.to_string(),
                "invalid_request_error",
                Some("too_many_active_keys"),
            )
        },
        // Name a subscription you can use, or omit it (branch on `code`).
        ApiError::Keys(KeyError::UnresolvableSubscription) => ErrorParts {
            extra: Some(("code", Value::String("invalid_subscription".into()))),
            ..parts(
                StatusCode::BAD_REQUEST,
                error.to_string(),
                "invalid_request_error",
                Some("invalid_subscription"),
            )
        },
        // Name another subscription, or fix its model refs (branch on `code`).
        ApiError::Keys(KeyError::SubscriptionNotReady(_)) => ErrorParts {
            extra: Some(("code", Value::String("subscription_not_ready".into()))),
            ..parts(
                StatusCode::FORBIDDEN,
                error.to_string(),
                "permission_error",
                Some("subscription_not_ready"),
            )
        },
        // Nothing to show: the id is wrong, not yours, or the key is no longer active.
        ApiError::Keys(KeyError::NotFound) => parts(
            StatusCode::NOT_FOUND,
            error.to_string(),
            "invalid_request_error",
            Some("not_found"),
        ),
        // Not allowed for this caller: act on your own keys, or ask an admin; mint with a
        // user token rather than an API key.
        ApiError::Keys(
            KeyError::SearchOthersDenied
            | KeyError::BulkRevokeDenied
            | KeyError::KeyCallerCannotMint,
        )
        | ApiError::SubscriptionDenied(_) => parts(
            StatusCode::FORBIDDEN,
            error.to_string(),
            "permission_error",
            Some("access_denied"),
        ),
        // Retry later: the database is unreachable or slow.
        ApiError::Keys(KeyError::Store(store)) if store.is_transient() => {
            tracing::warn!(error = %store, "key store unavailable");
            parts(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable; retry later".into(),
                "server_error",
                None,
            )
        }
        // Report it with the x-request-id: a bug or corrupt data on our side.
        ApiError::Keys(KeyError::Store(_) | KeyError::Internal(_)) => {
            tracing::error!(%error, "request failed");
            parts(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error".into(),
                "server_error",
                None,
            )
        }
        // Retry later: the counter store (Redis) is unreachable.
        ApiError::Limits(limits) => {
            tracing::warn!(error = %limits, "usage counters unavailable");
            parts(
                StatusCode::SERVICE_UNAVAILABLE,
                "usage counters are unavailable; retry later".into(),
                "server_error",
                None,
            )
        }
        // Authorino-style callers treat this as "no decision" and retry or fail closed.
        ApiError::ValidationFailed => parts(
            StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
            "server_error",
            None,
        ),
        // Retry later, perhaps with a smaller request.
        ApiError::Timeout => parts(
            StatusCode::SERVICE_UNAVAILABLE,
            error.to_string(),
            "server_error",
            None,
        ),
        // Ask for your own usage (or ask an admin).
        ApiError::UsageReport(report) if report.is_forbidden() => parts(
            StatusCode::FORBIDDEN,
            error.to_string(),
            "permission_error",
            Some("access_denied"),
        ),
        // Fix the parameter the message names.
        ApiError::UsageReport(_) => parts(
            StatusCode::BAD_REQUEST,
            error.to_string(),
            "invalid_request_error",
            Some("invalid_parameter"),
        ),
        // Retry later: the database is unreachable or slow.
        ApiError::Usage(store) if store.is_transient() => {
            tracing::warn!(error = %store, "usage ledger unavailable");
            parts(
                StatusCode::SERVICE_UNAVAILABLE,
                "the usage ledger is unavailable; retry later".into(),
                "server_error",
                None,
            )
        }
        // Report it with the x-request-id: a bug or corrupt data on our side.
        ApiError::Usage(store) => {
            tracing::error!(error = %store, "usage report failed");
            parts(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error".into(),
                "server_error",
                None,
            )
        }
        // Check the path (see /openapi.json).
        ApiError::RouteNotFound => parts(
            StatusCode::NOT_FOUND,
            error.to_string(),
            "invalid_request_error",
            None,
        ),
    };
    let body = match shape {
        ErrorShape::Flat => {
            let mut body = json!({ "error": parts.message });
            if let Some((field, value)) = parts.extra {
                body[field] = value;
            }
            body
        }
        ErrorShape::OpenAi => json!({
            "error": { "message": parts.message, "type": parts.kind, "code": parts.code }
        }),
    };
    let mut response = (parts.status, Json(body)).into_response();
    if parts.status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let ApiError::Auth(AuthError::Throttled { retry_after }) = error {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_seconds(*retry_after)),
        );
    }
    response
}
