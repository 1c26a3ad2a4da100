//! `GET /health` (the process answers) and `GET /ready` (and so does the database).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::SharedState;
use crate::store::KeyAdminStore;

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `healthy`, `ready` or `unavailable`.
    pub status: &'static str,
}

/// Liveness: the process serves requests.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "Alive", body = HealthStatus))
)]
pub(super) async fn health() -> Json<HealthStatus> {
    Json(HealthStatus { status: "healthy" })
}

/// Readiness: the database answers a ping.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthStatus),
        (status = 503, description = "The database does not answer", body = HealthStatus),
    )
)]
pub(super) async fn ready(State(state): State<SharedState>) -> (StatusCode, Json<HealthStatus>) {
    match state.keys.authorizer().store().ping().await {
        Ok(()) => (StatusCode::OK, Json(HealthStatus { status: "ready" })),
        Err(error) => {
            tracing::warn!(%error, "not ready: database ping failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(HealthStatus {
                    status: "unavailable",
                }),
            )
        }
    }
}
