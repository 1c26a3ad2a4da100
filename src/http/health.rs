//! `GET /health` (the process answers) and `GET /ready` (it can decide: the database answers, or
//! answered before and cached keys are served while it is away).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::SharedState;
use crate::breaker::BreakerState;
use crate::store::KeyAdminStore;

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `healthy`, `ready`, `degraded` (the database does not answer; cached keys are served) or
    /// `unavailable` (the database never answered).
    pub status: &'static str,
    /// `unavailable` when degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    /// The database circuit breaker when degraded: `closed`, `open` or `half_open`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<&'static str>,
}

impl HealthStatus {
    fn plain(status: &'static str) -> Self {
        Self {
            status,
            database: None,
            circuit_breaker: None,
        }
    }
}

/// Liveness: the process serves requests.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "Alive", body = HealthStatus))
)]
pub(super) async fn health() -> Json<HealthStatus> {
    Json(HealthStatus::plain("healthy"))
}

/// Readiness: the database answers a ping, or answered before. A database outage must not take
/// every replica out of the load balancer: their caches keep serving known keys, so a replica
/// that ever reached the database stays ready and reports `degraded`. One that never did has
/// nothing to serve and is not ready.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready, or degraded: the database does not answer but cached keys are served", body = HealthStatus),
        (status = 503, description = "The database never answered since start-up", body = HealthStatus),
    )
)]
pub(super) async fn ready(State(state): State<SharedState>) -> (StatusCode, Json<HealthStatus>) {
    let store = state.keys.authorizer().store();
    match store.ping().await {
        Ok(()) => (StatusCode::OK, Json(HealthStatus::plain("ready"))),
        Err(error) if store.has_reached_database() => {
            tracing::debug!(%error, "degraded: database ping failed");
            let breaker = store
                .breaker()
                .map_or(BreakerState::Closed, |breaker| breaker.state());
            (
                StatusCode::OK,
                Json(HealthStatus {
                    status: "degraded",
                    database: Some("unavailable"),
                    circuit_breaker: Some(breaker.as_str()),
                }),
            )
        }
        Err(error) => {
            tracing::warn!(%error, "not ready: the database never answered");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(HealthStatus::plain("unavailable")),
            )
        }
    }
}
