//! The tasks `serve` runs beside its listeners (key-change listener, cache preload, `last_used`
//! writer, housekeeping, policy reloader, database watcher), each stopped by the one shutdown
//! signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::breaker::BreakerState;
use crate::cache::KeyCache;
use crate::housekeeping::run_housekeeping;
use crate::known_keys::KnownKeys;
use crate::kube_policy::KubernetesSource;
use crate::last_used::LastUsedTracker;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyReloader, PolicySync, ReloadEvent};
use crate::store::connect::PgEndpoint;
use crate::store::notify::{KeyChange, ListenerSettings, listen_for_key_changes};
use crate::store::served::ServedStore;
use crate::store::{KeyAdminStore, UsageStore};

/// The gRPC health service name that reports whether the database answers. The overall status
/// (`""`) stays SERVING during an outage: cached keys are still served.
pub const DATABASE_HEALTH_SERVICE: &str = "maas.authz.v1.Database";

/// Every spawned task (background and listeners) and the signal that stops them.
pub(super) struct Tasks {
    shutdown: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            shutdown: watch::channel(false).0,
            running: Vec::new(),
        }
    }

    /// Resolves once shutdown was requested.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.subscribe();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    }

    /// Spawns `task` under `name` (the name is what a panic or a cut-off at shutdown reports).
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.running.push((name, tokio::spawn(task)));
    }

    /// Spawns a one-off `task` under `name` that shutdown simply cuts short (a start-up read:
    /// nothing of it needs finishing).
    pub fn spawn_until_shutdown(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let shutdown = self.shutdown_signal();
        self.spawn(name, async move {
            tokio::select! {
                () = shutdown => {}
                () = task => {}
            }
            Ok(())
        });
    }

    /// Stops accepting, lets in-flight requests finish within `grace`, and waits for every
    /// task; whatever is still running after the grace period is cut off.
    pub async fn shut_down(self, grace: Duration) -> anyhow::Result<()> {
        // `send_replace`: the value changes even if every task already ended (no receiver left).
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut task) in self.running {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(joined) => joined.with_context(|| format!("the {name} task panicked"))??,
                Err(_) => {
                    tracing::warn!(
                        task = name,
                        ?grace,
                        "grace period over: closing remaining connections"
                    );
                    task.abort();
                }
            }
        }
        Ok(())
    }
}

/// Revocations anywhere (another replica, the CLI, upstream maas-api) evict from `cache` at once.
/// Returns once the listener listens, or after `connect_timeout` (then it keeps trying): its first
/// resync would otherwise expire whatever the first requests cached.
pub(super) async fn spawn_key_change_listener(
    tasks: &mut Tasks,
    endpoint: PgEndpoint,
    connect_timeout: Duration,
    cache: KeyCache,
) {
    let (listening_tx, mut listening_rx) = watch::channel(false);
    let key_listener = listen_for_key_changes(
        ListenerSettings {
            endpoint,
            connect_timeout,
            max_backoff: Duration::from_secs(5),
        },
        move |change| match change {
            KeyChange::Key(hash) => {
                let cache = cache.clone();
                tokio::spawn(async move { cache.invalidate(&hash).await });
            }
            KeyChange::Resync => {
                cache.revalidate_all();
                listening_tx.send_replace(true);
            }
        },
        tasks.shutdown_signal(),
    );
    tasks.spawn("key-change listener", async move {
        key_listener.await;
        Ok(())
    });
    if tokio::time::timeout(
        connect_timeout,
        listening_rx.wait_for(|listening| *listening),
    )
    .await
    .is_err()
    {
        tracing::warn!("key-change listener not connected yet; serving anyway");
    }
}

/// Which keys a warm start reads into the cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachePreload {
    /// Keys used within this long before start-up (`last_used_at`).
    pub used_within: Duration,
    /// At most this many (the cache's capacity).
    pub most: u64,
}

/// Keys per preload query: each page is a short query on the primary key, and at most one page
/// of records is held outside the cache at a time.
const PRELOAD_PAGE: u64 = 2_000;
/// Reads of one page that an invalidation may spoil before the preload gives up.
const PRELOAD_ATTEMPTS: u32 = 5;

/// Reads recently used keys into the cache in the background (see [`preload_cache`]).
pub(super) fn spawn_cache_preload(
    tasks: &mut Tasks,
    cache: KeyCache,
    store: Arc<ServedStore>,
    preload: CachePreload,
) {
    tasks.spawn_until_shutdown("cache preload", async move {
        preload_cache(&cache, &store, preload).await;
    });
}

/// Warm start: a new replica reads the keys used recently, page by page, into its cache, so
/// that a rolling deploy under load is served from the cache rather than by a storm of misses
/// on PostgreSQL. It runs beside serving (readiness never waits for it; a miss meanwhile is an
/// ordinary lookup), and a failure only ends it early.
async fn preload_cache(cache: &KeyCache, store: &ServedStore, preload: CachePreload) {
    let started = std::time::Instant::now();
    let used_since = chrono::Utc::now()
        - chrono::Duration::from_std(preload.used_within).unwrap_or(chrono::Duration::MAX);
    let mut after = None;
    let mut loaded: u64 = 0;
    while loaded < preload.most {
        let limit = PRELOAD_PAGE.min(preload.most - loaded);
        let mut attempts = 0;
        let (read, last) = loop {
            let ticket = cache.preload_ticket();
            let page = match store
                .recently_used_keys(used_since, after, i64::try_from(limit).unwrap_or(i64::MAX))
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, keys = loaded, "key cache preload stopped early");
                    return;
                }
            };
            let (read, last) = (page.len() as u64, page.last().map(|key| key.id));
            if cache.preload(ticket, page).await {
                break (read, last);
            }
            attempts += 1;
            if attempts == PRELOAD_ATTEMPTS {
                tracing::warn!(
                    keys = loaded,
                    "key cache preload stopped early: keys keep changing"
                );
                return;
            }
        };
        loaded += read;
        after = last;
        if read < limit {
            break;
        }
    }
    tracing::info!(
        keys = loaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "key cache preloaded"
    );
}

/// Hashes per query of the known-key load: 64 bytes of hex and an id each, so one page is
/// about 1 MB on the wire and a short query on the primary key.
const KNOWN_KEYS_PAGE: i64 = 10_000;

/// Reads the hashes of every active key into the cache's known-key set (see
/// [`crate::known_keys`]); the receiver turns `true` when the load ended, however it ended
/// (or closes, should shutdown cut it short).
/// Until a key's hash is loaded, its first lookup takes a budget token as it would without the
/// set; a failure only ends the load early.
pub(super) fn spawn_known_keys_load(
    tasks: &mut Tasks,
    known: Arc<KnownKeys>,
    store: Arc<ServedStore>,
) -> watch::Receiver<bool> {
    // Cut short by shutdown, the sender is dropped, which ends a wait as well.
    let (done_tx, done) = watch::channel(false);
    tasks.spawn_until_shutdown("known-key load", async move {
        load_known_keys(&known, &store).await;
        done_tx.send_replace(true);
    });
    done
}

/// Waits up to `most` for the known-key load, so that a replica starts listening (and so takes
/// traffic) once it knows which keys exist: a cold replica's first burst of legitimate keys then
/// never meets the unknown-key budget. A longer load goes on in the background.
pub(super) async fn wait_for_known_keys(mut done: watch::Receiver<bool>, most: Duration) {
    if tokio::time::timeout(most, done.wait_for(|done| *done))
        .await
        .is_err()
    {
        tracing::warn!(
            waited = ?most,
            "known-key load still running; serving anyway (it goes on in the background)"
        );
    }
}

async fn load_known_keys(known: &KnownKeys, store: &ServedStore) {
    let started = std::time::Instant::now();
    let mut after = None;
    let mut loaded: u64 = 0;
    loop {
        let page = match store.active_key_hashes(after, KNOWN_KEYS_PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, keys = loaded, "known-key load stopped early");
                return;
            }
        };
        known.extend(page.iter().map(|(_, hash)| hash));
        loaded += page.len() as u64;
        match page.last() {
            Some((id, _)) if page.len() as i64 == KNOWN_KEYS_PAGE => after = Some(*id),
            _ => break,
        }
    }
    tracing::info!(
        keys = loaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "known keys loaded"
    );
}

/// When and how much the `last_used_at` writer writes.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastUsedWrites {
    pub every: Duration,
    /// Most keys per statement.
    pub batch_size: usize,
}

/// Writes noted key uses every `writes.every` (see [`write_last_used`]).
pub(super) fn spawn_last_used_writer(
    tasks: &mut Tasks,
    tracker: Arc<LastUsedTracker>,
    store: Arc<ServedStore>,
    metrics: Arc<Metrics>,
    writes: LastUsedWrites,
) {
    let shutdown = tasks.shutdown_signal();
    tasks.spawn("last-used writer", async move {
        write_last_used(tracker, store, metrics, writes, shutdown).await;
        Ok(())
    });
}

/// Deletes expired ephemeral keys every `every` (`None`: housekeeping is off).
pub(super) fn spawn_housekeeping(
    tasks: &mut Tasks,
    store: Arc<ServedStore>,
    every: Option<Duration>,
    usage_retention: Option<Duration>,
) {
    if let Some(every) = every {
        let shutdown = tasks.shutdown_signal();
        tasks.spawn("housekeeping", async move {
            run_housekeeping(store, every, usage_retention, shutdown).await;
            Ok(())
        });
    }
}

/// Re-reads the policy file every `every` into `policy`, reporting each reload to the metrics.
pub(super) fn spawn_policy_reloader(
    tasks: &mut Tasks,
    path: std::path::PathBuf,
    every: Duration,
    policy: Arc<ArcSwap<Policy>>,
    sync: Arc<PolicySync>,
    metrics: Arc<Metrics>,
) {
    let reloader = PolicyReloader::run(
        path,
        every,
        policy,
        move |event| match event {
            ReloadEvent::Reloaded {
                counts,
                fingerprint,
                invalid_objects,
            } => {
                metrics.set_policy_sync(&sync.record_in_force(&fingerprint, chrono::Utc::now()));
                metrics.observe_policy_reload(true);
                metrics.set_policy_counts(
                    counts.models,
                    counts.subscriptions,
                    counts.auth_policies,
                );
                metrics.set_policy_invalid_objects(invalid_objects.iter().map(|object| {
                    (
                        object.kind.as_str(),
                        object.namespace.as_str(),
                        object.name.as_str(),
                    )
                }));
            }
            ReloadEvent::Rejected { .. } => metrics.observe_policy_reload(false),
        },
        tasks.shutdown_signal(),
    );
    tasks.spawn("policy reloader", async move {
        reloader.await;
        Ok(())
    });
}

/// Watches the MaaS objects of the cluster into `policy` (see [`KubernetesSource::run`]).
pub(super) fn spawn_kubernetes_policy(
    tasks: &mut Tasks,
    source: KubernetesSource,
    policy: Arc<ArcSwap<Policy>>,
    sync: Arc<PolicySync>,
    metrics: Arc<Metrics>,
) {
    let watcher = source.run(policy, sync, metrics, tasks.shutdown_signal());
    tasks.spawn("Kubernetes policy watcher", async move {
        watcher.await;
        Ok(())
    });
}

/// Publishes whether the database answers (see [`watch_database`]).
pub(super) fn spawn_database_watcher(
    tasks: &mut Tasks,
    store: Arc<ServedStore>,
    metrics: Arc<Metrics>,
    health: tonic_health::server::HealthReporter,
    every: Duration,
) {
    let shutdown = tasks.shutdown_signal();
    tasks.spawn("database health watcher", async move {
        watch_database(store, metrics, health, every, shutdown).await;
        Ok(())
    });
}

/// Pings the database every `every` (through the circuit breaker, so a ping is also the probe
/// that closes it when the database is back) and publishes the outcome: metrics, and the
/// [`DATABASE_HEALTH_SERVICE`] gRPC health status.
async fn watch_database(
    store: Arc<ServedStore>,
    metrics: Arc<Metrics>,
    health: tonic_health::server::HealthReporter,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut reachable_before = None;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let ping = store.ping().await;
        let breaker = store
            .breaker()
            .map_or(BreakerState::Closed, |breaker| breaker.state());
        let reachable = ping.is_ok();
        metrics.set_database_state(breaker, !reachable);
        if reachable_before == Some(reachable) {
            continue;
        }
        reachable_before = Some(reachable);
        match ping {
            Ok(()) => {
                tracing::info!("database reachable");
                health
                    .set_service_status(
                        DATABASE_HEALTH_SERVICE,
                        tonic_health::ServingStatus::Serving,
                    )
                    .await;
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    breaker = breaker.as_str(),
                    "database unreachable: degraded, serving cached keys until they are too stale, refusing unknown keys"
                );
                health
                    .set_service_status(
                        DATABASE_HEALTH_SERVICE,
                        tonic_health::ServingStatus::NotServing,
                    )
                    .await;
            }
        }
    }
}

/// Writes noted key uses every `writes.every`, and once more at shutdown: everything noted, in
/// statements of at most `writes.batch_size` keys. A single statement for every key used in an
/// interval grew with traffic (302k keys timed out and were retried forever); bounded ones each
/// finish well inside the query timeout. Ids are sorted so two replicas writing overlapping sets
/// take row locks in one order and never deadlock.
async fn write_last_used(
    tracker: Arc<LastUsedTracker>,
    store: Arc<ServedStore>,
    metrics: Arc<Metrics>,
    writes: LastUsedWrites,
    shutdown: impl Future<Output = ()>,
) {
    let flush = async |tracker: &LastUsedTracker| {
        let mut uses = tracker.take_batch(chrono::Utc::now());
        if uses.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        uses.sort_unstable_by_key(|(id, _)| *id);
        let (mut written, mut slowest) = (0, Duration::ZERO);
        for chunk in uses.chunks(writes.batch_size.max(1)) {
            let batch_started = std::time::Instant::now();
            let outcome = store.record_last_used(chunk).await;
            let batch_elapsed = batch_started.elapsed();
            slowest = slowest.max(batch_elapsed);
            metrics.observe_last_used_batch(batch_elapsed, chunk.len(), outcome.is_ok());
            if let Err(error) = outcome {
                // The rest waits for the next flush: a store that failed once is likely to
                // fail again now, and the breaker should not be fed a burst of doomed queries.
                let unwritten = uses.split_off(written);
                tracing::warn!(%error, keys = unwritten.len(), "cannot write last_used_at; will retry");
                tracker.restore(unwritten);
                return;
            }
            written += chunk.len();
        }
        let elapsed = started.elapsed();
        metrics.observe_last_used_flush(elapsed);
        tracing::debug!(
            keys = written,
            batches = written.div_ceil(writes.batch_size.max(1)),
            slowest_batch_ms = slowest.as_millis() as u64,
            elapsed_ms = elapsed.as_millis() as u64,
            "last_used_at flushed"
        );
    };
    let mut ticker = tokio::time::interval(writes.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => flush(&tracker).await,
        }
    }
    flush(&tracker).await;
}

/// Writes the usage ledger's pending rows every `every` (see [`write_usage`]).
pub(super) fn spawn_usage_writer(
    tasks: &mut Tasks,
    ledger: Arc<Ledger>,
    store: Arc<ServedStore>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let shutdown = tasks.shutdown_signal();
    tasks.spawn("usage ledger writer", async move {
        write_usage(ledger, store, metrics, every, shutdown).await;
        Ok(())
    });
}

/// Writes the ledger's pending rows every `every` and once more at shutdown. A batch whose
/// write failed (database down, breaker open, answer lost) is kept as it is, with its id, and
/// retried before anything newer: the id makes the retry add nothing if the first attempt did
/// commit, so a count is never lost nor doubled. Meanwhile new records keep adding up in the
/// ledger, within its bound.
async fn write_usage(
    ledger: Arc<Ledger>,
    store: Arc<ServedStore>,
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    use crate::ledger::LedgerObserver;
    let mut unsent: Option<(String, Vec<crate::ledger::UsageRow>)> = None;
    let mut flush = async || {
        for _ in 0..2 {
            let (batch_id, batch) = match unsent.take() {
                Some(retry) => retry,
                None => {
                    let batch = ledger.take_batch();
                    if batch.is_empty() {
                        break;
                    }
                    (uuid::Uuid::new_v4().to_string(), batch)
                }
            };
            let rows = batch.len();
            if let Err(error) = store.add_usage(&batch_id, &batch).await {
                metrics.observe_flush(rows, false);
                tracing::warn!(%error, rows, "cannot write the usage ledger; will retry");
                unsent = Some((batch_id, batch));
                break;
            }
            metrics.observe_flush(rows, true);
        }
        let waiting = unsent.as_ref().map_or(0, |(_, batch)| batch.len());
        metrics.set_usage_pending_rows(ledger.pending_rows() + waiting);
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => flush().await,
        }
    }
    flush().await;
    if let Some((_, batch)) = &unsent {
        tracing::warn!(
            rows = batch.len(),
            "usage ledger rows not written at shutdown"
        );
    }
}
