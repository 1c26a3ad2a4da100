//! In-process housekeeping: every interval, one replica (whichever wins an advisory lock)
//! deletes ephemeral keys more than 30 minutes past expiry, as `maas-authz cleanup` does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::EPHEMERAL_CLEANUP_GRACE;
use crate::store::served::ServedStore;

/// Runs a housekeeping pass every `every` until `shutdown` completes; the first pass runs one
/// interval after start-up, so a rollout does not stampede the database.
pub async fn run_housekeeping(
    store: Arc<ServedStore>,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => housekeep_once(&store).await,
        }
    }
}

/// One pass; failures are logged and retried at the next interval.
pub async fn housekeep_once(store: &ServedStore) {
    match store
        .delete_expired_ephemeral_keys_if_alone(EPHEMERAL_CLEANUP_GRACE)
        .await
    {
        Ok(Some(deleted)) => {
            tracing::info!(deleted, "housekeeping: expired ephemeral keys deleted")
        }
        Ok(None) => tracing::debug!("housekeeping: another replica is at it; skipped"),
        Err(error) => tracing::warn!(%error, "housekeeping failed; will retry"),
    }
}
