//! In-process housekeeping: every interval, one replica (whichever wins an advisory lock)
//! deletes ephemeral keys more than 30 minutes past expiry, as `maas-authz cleanup` does, and
//! usage ledger rows older than the retention (`MAAS_AUTHZ_USAGE_RETENTION`).

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
    usage_retention: Option<Duration>,
    shutdown: impl Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {
                if housekeep_once(&store).await {
                    delete_old_usage(&store, usage_retention, chrono::Utc::now()).await;
                }
            }
        }
    }
}

/// Deletes the ledger's rows of hours more than `retention` before `now` (`None`: keeps all).
pub async fn delete_old_usage(
    store: &ServedStore,
    retention: Option<Duration>,
    now: chrono::DateTime<chrono::Utc>,
) {
    use crate::store::UsageStore;
    let Some(retention) = retention.and_then(|r| chrono::Duration::from_std(r).ok()) else {
        return;
    };
    let Some(cutoff) = now.checked_sub_signed(retention) else {
        return;
    };
    match store.delete_usage_before(cutoff).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, %cutoff, "housekeeping: old usage rows deleted"),
        Err(error) => tracing::warn!(%error, "housekeeping of usage rows failed; will retry"),
    }
}

/// One pass; failures are logged and retried at the next interval. Returns whether this replica
/// did the pass (it won the lock), so the ledger's retention runs on that replica alone.
pub async fn housekeep_once(store: &ServedStore) -> bool {
    match store
        .delete_expired_ephemeral_keys_if_alone(EPHEMERAL_CLEANUP_GRACE)
        .await
    {
        Ok(Some(deleted)) => {
            tracing::info!(deleted, "housekeeping: expired ephemeral keys deleted");
            true
        }
        Ok(None) => {
            tracing::debug!("housekeeping: another replica is at it; skipped");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "housekeeping failed; will retry");
            false
        }
    }
}
