//! `GET /health` (the process answers) and `GET /ready` (and so do the database and, when the
//! limits' counters are in Redis, Redis).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::SharedState;
use crate::limits::OnStoreError;
use crate::store::KeyAdminStore;

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `healthy`, `ready` or `unavailable`.
    pub status: &'static str,
    /// With counters in Redis: `up` or `down`. Down makes the replica unready only when
    /// `MAAS_AUTHZ_LIMITS_ON_REDIS_ERROR=deny` (with `allow` it still serves, uncounted).
    #[serde(rename = "counterStore", skip_serializing_if = "Option::is_none")]
    pub counter_store: Option<&'static str>,
}

/// Liveness: the process serves requests.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "Alive", body = HealthStatus))
)]
pub(super) async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "healthy",
        counter_store: None,
    })
}

/// Readiness: the database answers a ping, and so does Redis if limits refuse without it.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthStatus),
        (status = 503, description = "The database (or Redis, with limits set to deny without it) does not answer", body = HealthStatus),
    )
)]
pub(super) async fn ready(State(state): State<SharedState>) -> (StatusCode, Json<HealthStatus>) {
    let authorizer = state.keys.authorizer();
    let mut counter_store = None;
    let mut counters_required = false;
    if let Some(limiter) = authorizer
        .limiter()
        .filter(|l| l.store_kind() != "in-process")
    {
        let up = match limiter.ping().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "counter store ping failed");
                false
            }
        };
        counter_store = Some(if up { "up" } else { "down" });
        counters_required = !up && limiter.on_store_error() == OnStoreError::Deny;
    }
    let database_up = match authorizer.store().ping().await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "not ready: database ping failed");
            false
        }
    };
    if database_up && !counters_required {
        (
            StatusCode::OK,
            Json(HealthStatus {
                status: "ready",
                counter_store,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthStatus {
                status: "unavailable",
                counter_store,
            }),
        )
    }
}
