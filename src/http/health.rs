//! `GET /health` (the process answers) and `GET /ready` (it can decide: the database answers, or
//! answered before and cached keys are served while it is away; and Redis, when limits need it).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::SharedState;
use crate::breaker::BreakerState;
use crate::limits::OnStoreError;
use crate::policy::PolicySourceKind;
use crate::store::KeyAdminStore;

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `healthy`, `ready`, `degraded` (the database does not answer; cached keys are served) or
    /// `unavailable` (the database never answered, or Redis is down with limits set to deny).
    pub status: &'static str,
    /// `unavailable` when the database does not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    /// The database circuit breaker when degraded: `closed`, `open` or `half_open`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<&'static str>,
    /// With counters in Redis: `up` or `down`. Down makes the replica unready only when
    /// `MAAS_AUTHZ_LIMITS_ON_REDIS_ERROR=deny` (with `allow` it still serves, uncounted).
    #[serde(rename = "counterStore", skip_serializing_if = "Option::is_none")]
    pub counter_store: Option<&'static str>,
    /// With MAAS_AUTHZ_POLICY_SOURCE=kubernetes: whether every watched kind was listed, the
    /// policy's generation and its last sync. Not ready until the first complete list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyReadiness>,
}

/// The policy part of readiness (Kubernetes source).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReadiness {
    /// `kubernetes`.
    pub source: &'static str,
    /// Every watched kind was listed in full and the policy compiled at least once.
    pub synced: bool,
    /// How many different policies have been in force (0 before the first list).
    pub generation: u64,
    /// When the cluster's objects were last read in full and the policy confirmed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
}

impl HealthStatus {
    fn plain(status: &'static str) -> Self {
        Self {
            status,
            database: None,
            circuit_breaker: None,
            counter_store: None,
            policy: None,
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

/// Readiness. A database outage must not take every replica out of the load balancer: their
/// caches keep serving known keys, so a replica that ever reached the database stays ready and
/// reports `degraded`. One that never did has nothing to serve and is not ready. Redis counts
/// only when the limits are configured to refuse without it.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready, or degraded: the database does not answer but cached keys are served", body = HealthStatus),
        (status = 503, description = "The database never answered since start-up, Redis does not answer with limits set to deny without it, or (Kubernetes policy source) the MaaS objects were not listed in full yet", body = HealthStatus),
    )
)]
pub(super) async fn ready(State(state): State<SharedState>) -> (StatusCode, Json<HealthStatus>) {
    let mut answer = HealthStatus::plain("ready");
    let mut counters_required = false;
    if let Some(limiter) = state
        .limiter
        .as_ref()
        .filter(|l| l.store_kind() != "in-process")
    {
        let up = match limiter.ping().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "counter store ping failed");
                false
            }
        };
        answer.counter_store = Some(if up { "up" } else { "down" });
        counters_required = !up && limiter.on_store_error() == OnStoreError::Deny;
    }
    let store = &state.store;
    let mut ready = !counters_required;
    let sync = state.policy_sync.snapshot();
    if sync.source == PolicySourceKind::Kubernetes {
        if !sync.synced {
            tracing::debug!("not ready: the MaaS objects were not listed in full yet");
            ready = false;
        }
        answer.policy = Some(PolicyReadiness {
            source: sync.source.as_str(),
            synced: sync.synced,
            generation: sync.generation,
            last_sync: sync
                .last_sync
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        });
    }
    if let Err(error) = store.ping().await {
        if store.has_reached_database() {
            tracing::debug!(%error, "degraded: database ping failed");
            let breaker = store
                .breaker()
                .map_or(BreakerState::Closed, |breaker| breaker.state());
            answer.status = "degraded";
            answer.circuit_breaker = Some(breaker.as_str());
        } else {
            tracing::warn!(%error, "not ready: the database never answered");
            ready = false;
        }
        answer.database = Some("unavailable");
    }
    if ready {
        (StatusCode::OK, Json(answer))
    } else {
        answer.status = "unavailable";
        (StatusCode::SERVICE_UNAVAILABLE, Json(answer))
    }
}
