//! `maas-authz serve`: wires store, cache, policy, authorizer, token meter and the listeners, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::authorizer::Authorizer;
use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker};
use crate::cache::{CacheSettings, KeyCache};
use crate::clock::{Clock, SystemClock};
use crate::config::{DatabaseConfig, LimitsConfig, OnRedisError, ServeConfig};
use crate::grpc::check_server::CheckServer;
use crate::grpc::ext_authz::ExtAuthzService;
use crate::grpc::ext_proc::{ExtProcService, MeterSettings};
use crate::grpc::key_validation::KeyValidationService;
use crate::housekeeping::run_housekeeping;
use crate::http::{ApiState, internal_router, public_router, serve_http};
use crate::identity::IdentityResolver;
use crate::keys::{KeyManager, KeyPolicySettings};
use crate::last_used::LastUsedTracker;
use crate::limits::ChargingTokenSink;
use crate::limits::{
    CounterStore, InProcessCounterStore, Limiter, OnStoreError, RedisCounterStore,
};
use crate::lookup_budget::{BudgetKind, LookupBudget};
use crate::metrics::Metrics;
use crate::pb::key_validation_server::KeyValidationServer;
use crate::policy::Policy;
use crate::policy::{PolicyReloader, ReloadEvent};
use crate::store::KeyAdminStore;
use crate::store::connect::{PgEndpoint, PgEndpointError};
use crate::store::migrate::run_migrations;
use crate::store::notify::{KeyChange, ListenerSettings, listen_for_key_changes};
use crate::store::postgres::{PgKeyStore, PgSettings};
use crate::usage::TokenSink;

/// The key store as `serve` runs it: PostgreSQL, observed by the metrics.
pub type ServedStore = PgKeyStore<Arc<Metrics>>;

/// The gRPC health service name that reports whether the database answers. The overall status
/// (`""`) stays SERVING during an outage: cached keys are still served.
pub const DATABASE_HEALTH_SERVICE: &str = "maas.authz.v1.Database";

/// A running server: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The public REST API.
    pub http_addr: SocketAddr,
    /// The internal REST API (validate, cleanup).
    pub internal_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    grace: Duration,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    authorizer: Arc<Authorizer<ServedStore, Arc<Metrics>>>,
}

impl RunningServer {
    /// The authorizer behind Check, for in-process callers such as tests and the REST API.
    pub fn authorizer(&self) -> &Arc<Authorizer<ServedStore, Arc<Metrics>>> {
        &self.authorizer
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and waits
    /// for every task; whatever is still running after the grace period is cut off.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        for (name, mut task) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(joined) => joined.with_context(|| format!("the {name} task panicked"))??,
                Err(_) => {
                    tracing::warn!(task = name, grace = ?self.grace, "grace period over: closing remaining connections");
                    task.abort();
                }
            }
        }
        Ok(())
    }
}

/// Settings for the pool, from the shared database configuration.
pub fn pg_settings(database: &DatabaseConfig) -> PgSettings {
    PgSettings {
        database_url: database.database_url.clone(),
        database_ca_file: database.database_ca_file.clone(),
        tenant: database.tenant.clone(),
        pool_size: usize::from(database.db_pool_size),
        query_timeout: database.db_query_timeout,
        connect_timeout: database.db_connect_timeout,
    }
}

/// Where the database is and how to reach it (TLS included), from the shared configuration.
pub fn pg_endpoint(database: &DatabaseConfig) -> Result<PgEndpoint, PgEndpointError> {
    PgEndpoint::new(&database.database_url, database.database_ca_file.as_ref())
}

/// Applies pending migrations on a dedicated connection, retrying until `deadline` while the
/// database is not yet reachable (replicas and the database often start together). A TLS
/// failure or a server that wants TLS is not retried: only a configuration change helps.
pub async fn migrate(database: &DatabaseConfig, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    let mut endpoint = pg_endpoint(database)?;
    endpoint
        .config_mut()
        .connect_timeout(database.db_connect_timeout);
    let (mut client, connection) = loop {
        match endpoint.connect().await {
            Ok(connected) => break connected,
            Err(error) if error.is_transient() && Instant::now() + delay < deadline => {
                tracing::warn!(%error, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                return Err(error).context("cannot connect to the database named by DATABASE_URL");
            }
        }
    };
    let connection_task = tokio::spawn(connection);
    let report = run_migrations(&mut client).await?;
    drop(client);
    let _ = connection_task.await;
    tracing::info!(
        applied = ?report.applied,
        already_applied = report.already_applied,
        "database schema is current"
    );
    Ok(())
}

/// Starts every listener and background task; returns once they accept connections.
pub async fn start(config: ServeConfig) -> anyhow::Result<RunningServer> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// The limiter the configuration asks for: counters in Redis, else in this process. A Redis
/// whose TLS certificate does not verify stops start-up; a Redis that is down does not.
pub async fn limiter(
    config: &LimitsConfig,
    policy: Arc<ArcSwap<Policy>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Limiter> {
    let store: Arc<dyn CounterStore> = match &config.redis_url {
        Some(url) => {
            let store = RedisCounterStore::connect_lazily(
                url,
                config.redis_ca_file.as_ref(),
                config.redis_timeout,
            )
            .context("MAAS_AUTHZ_REDIS_URL is not usable")?;
            store.check_certificate().await?;
            Arc::new(store)
        }
        None => Arc::new(InProcessCounterStore::default()),
    };
    let on_store_error = match config.limits_on_redis_error {
        OnRedisError::Allow => OnStoreError::Allow,
        OnRedisError::Deny => OnStoreError::Deny,
    };
    tracing::info!(store = store.kind(), ?on_store_error, "rate-limit counters");
    Ok(Limiter::new(store, policy)
        .with_clock(clock)
        .with_on_store_error(on_store_error)
        .with_observer(metrics)
        .with_key_prefix(config.redis_key_prefix.clone()))
}

/// [`start`] with the clock the limits' windows are read from (tests move it by hand).
pub async fn start_with_clock(
    config: ServeConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<RunningServer> {
    let signing = Arc::new(config.enforcement.signing_keys()?);
    if signing.is_ephemeral() {
        tracing::warn!(
            "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS is unset: identity assertions are signed with a key \
             of this process only, so with several replicas the token meter of one refuses \
             requests another checked; set the same keys on every replica"
        );
    }
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    let endpoint = pg_endpoint(&config.database)?;
    if endpoint.is_plain_over_network() {
        tracing::warn!(
            "DATABASE_URL reaches a host beyond this machine without TLS (sslmode=disable, the \
             default without sslmode): queries and key hashes cross the network unencrypted; set \
             sslmode=verify-full"
        );
    }
    if !config.skip_migrations {
        migrate(&config.database, config.startup_timeout).await?;
    }
    let policy = Policy::load(&config.policy_path).with_context(|| {
        format!(
            "MAAS_AUTHZ_POLICY_PATH={}: the policy is invalid",
            config.policy_path.display()
        )
    })?;
    let counts = policy.counts();
    metrics.set_policy_counts(counts.models, counts.subscriptions, counts.auth_policies);
    tracing::info!(
        path = %config.policy_path.display(),
        fingerprint = policy.fingerprint(),
        models = counts.models,
        subscriptions = counts.subscriptions,
        auth_policies = counts.auth_policies,
        "policy loaded"
    );
    let shared_policy = Arc::new(ArcSwap::from_pointee(policy));

    let breaker = Arc::new(CircuitBreaker::new(BreakerSettings {
        failure_threshold: config.db_breaker_threshold,
        cool_down: config.db_breaker_cool_down,
    }));
    let store = Arc::new(
        PgKeyStore::connect(&pg_settings(&config.database), metrics.clone())?
            .with_check_timeout(config.db_check_timeout)
            .with_breaker(breaker),
    );
    let mut cache = KeyCache::new(CacheSettings {
        capacity: config.cache_capacity,
        ttl: config.cache_ttl,
        max_staleness: config.cache_max_staleness,
        negative_capacity: config.negative_cache_capacity,
        negative_ttl: config.negative_cache_ttl,
    });
    match LookupBudget::new(
        BudgetKind::UnknownKeyLookups,
        config.abuse.unknown_key_budget(),
        Instant::now(),
    ) {
        Some(budget) => {
            tracing::info!(?budget, "lookups of unknown keys are bounded");
            cache = cache.with_lookup_budget(Arc::new(budget.with_observer(metrics.clone())));
        }
        None => tracing::info!("lookups of unknown keys are unbounded"),
    }
    let last_used = Arc::new(LastUsedTracker::new(config.last_used_interval));
    let mut authorizer =
        Authorizer::new(store.clone(), cache, shared_policy.clone(), metrics.clone())
            .with_last_used(last_used.clone())
            .with_model_free_paths(config.enforcement.model_free_paths.clone());
    if config.limits.limits_enabled {
        authorizer = authorizer.with_limiter(Arc::new(
            limiter(
                &config.limits,
                shared_policy.clone(),
                clock,
                metrics.clone(),
            )
            .await?,
        ));
    } else {
        tracing::info!("limits disabled (MAAS_AUTHZ_LIMITS_ENABLED=false)");
    }
    let authorizer = Arc::new(authorizer);

    let mut identity = IdentityResolver::from_args(&config.identity, authorizer.clone())
        .await
        .context("cannot set up the identity sources of the REST API")?;
    if let Some(budget) = LookupBudget::new(
        BudgetKind::TokenReviews,
        config.abuse.token_review_budget(),
        Instant::now(),
    ) {
        identity =
            identity.with_token_review_budget(Arc::new(budget.with_observer(metrics.clone())));
    }
    let api_state = Arc::new(ApiState {
        keys: KeyManager::new(
            authorizer.clone(),
            KeyPolicySettings {
                max_expiration_days: config.http.api_key_max_expiration_days,
                token_max_lifetime: config.http.token_max_expiration,
                max_active_keys_per_user: config.abuse.max_active_keys_per_user.0,
            },
        ),
        identity,
        public_url: config.http.public_url.clone(),
        tenant: config.database.tenant.clone(),
        request_timeout: config.http.http_request_timeout,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Revocations anywhere (another replica, the CLI, upstream maas-api) evict here at once.
    let listener_authorizer = authorizer.clone();
    let (listening_tx, mut listening_rx) = watch::channel(false);
    let key_listener = listen_for_key_changes(
        ListenerSettings {
            endpoint,
            connect_timeout: config.database.db_connect_timeout,
            max_backoff: Duration::from_secs(5),
        },
        move |change| match change {
            KeyChange::Key(hash) => {
                let authorizer = listener_authorizer.clone();
                tokio::spawn(async move { authorizer.cache().invalidate(&hash).await });
            }
            KeyChange::Resync => {
                listener_authorizer.cache().revalidate_all();
                listening_tx.send_replace(true);
            }
        },
        wait_for(shutdown_rx.clone()),
    );
    tasks.push((
        "key-change listener",
        tokio::spawn(async move {
            key_listener.await;
            Ok(())
        }),
    ));
    // Serve only once the listener listens (or the database is slow to let it): its first
    // resync would otherwise expire whatever the first requests cached.
    if tokio::time::timeout(
        config.database.db_connect_timeout,
        listening_rx.wait_for(|listening| *listening),
    )
    .await
    .is_err()
    {
        tracing::warn!("key-change listener not connected yet; serving anyway");
    }

    let flush_store = store.clone();
    let flush_shutdown = wait_for(shutdown_rx.clone());
    let flush_every = config.last_used_flush_interval;
    tasks.push((
        "last-used writer",
        tokio::spawn(async move {
            write_last_used(last_used, flush_store, flush_every, flush_shutdown).await;
            Ok(())
        }),
    ));

    if let Some(every) = config.housekeeping_interval.0 {
        let housekeeping_store = store.clone();
        let housekeeping_shutdown = wait_for(shutdown_rx.clone());
        tasks.push((
            "housekeeping",
            tokio::spawn(async move {
                run_housekeeping(housekeeping_store, every, housekeeping_shutdown).await;
                Ok(())
            }),
        ));
    }

    let meter_policy = shared_policy.clone();
    let reload_metrics = metrics.clone();
    let reloader = PolicyReloader::run(
        config.policy_path.clone(),
        config.policy_reload_interval,
        shared_policy,
        move |event| match event {
            ReloadEvent::Reloaded { counts, .. } => {
                reload_metrics.observe_policy_reload(true);
                reload_metrics.set_policy_counts(
                    counts.models,
                    counts.subscriptions,
                    counts.auth_policies,
                );
            }
            ReloadEvent::Rejected { .. } => reload_metrics.observe_policy_reload(false),
        },
        wait_for(shutdown_rx.clone()),
    );
    tasks.push((
        "policy reloader",
        tokio::spawn(async move {
            reloader.await;
            Ok(())
        }),
    ));

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on MAAS_AUTHZ_GRPC_ADDR={}", config.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on MAAS_AUTHZ_METRICS_ADDR={}",
                config.metrics_addr
            )
        })?;
    let metrics_addr = metrics_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CheckServer<ServedStore, Arc<Metrics>, Arc<Metrics>>>()
        .await;
    health
        .set_serving::<KeyValidationServer<KeyValidationService<ServedStore, Arc<Metrics>>>>()
        .await;
    health
        .set_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;
    // Migrations (or the pool) just ran: SERVING until the watcher's first ping says otherwise.
    health
        .set_service_status(
            DATABASE_HEALTH_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let watch_store = store.clone();
    let watch_metrics = metrics.clone();
    let watch_shutdown = wait_for(shutdown_rx.clone());
    let watch_every = config.db_breaker_cool_down;
    tasks.push((
        "database health watcher",
        tokio::spawn(async move {
            watch_database(
                watch_store,
                watch_metrics,
                health,
                watch_every,
                watch_shutdown,
            )
            .await;
            Ok(())
        }),
    ));
    // Metered tokens are charged to the caller's token windows (when limits are on) and counted.
    let counted: Arc<dyn TokenSink> = metrics.clone();
    let token_sink: Arc<dyn TokenSink> = match authorizer.limiter() {
        Some(limiter) => Arc::new(ChargingTokenSink::new(limiter.clone(), counted)),
        None => counted,
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build gRPC reflection")?;
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(CheckServer::new(
            ExtAuthzService::new(authorizer.clone(), metrics.clone(), signing.clone())
                .with_dynamic_metadata(config.dynamic_metadata),
        ))
        .add_service(KeyValidationServer::new(KeyValidationService::new(
            authorizer.clone(),
            config.database.tenant.clone(),
        )))
        .add_service({
            let meter = ExtProcService::new(
                token_sink,
                metrics.clone(),
                MeterSettings {
                    force_stream_usage: config.force_stream_usage,
                    max_request_bytes: usize::try_from(config.enforcement.meter_max_request_bytes)
                        .unwrap_or(usize::MAX),
                },
                signing,
                meter_policy,
            );
            let max_message = meter.max_message_bytes();
            ExternalProcessorServer::new(meter).max_decoding_message_size(max_message)
        });
    let grpc_shutdown = wait_for(shutdown_rx.clone());
    tasks.push((
        "gRPC server",
        tokio::spawn(async move {
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            grpc.serve_with_incoming_shutdown(crate::grpc::socket::copying(incoming), grpc_shutdown)
                .await
                .context("gRPC server failed")
        }),
    ));

    let http_listener = TcpListener::bind(config.http.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on MAAS_AUTHZ_HTTP_ADDR={}",
                config.http.http_addr
            )
        })?;
    let http_addr = http_listener.local_addr()?;
    let internal_listener = TcpListener::bind(config.http.internal_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on MAAS_AUTHZ_INTERNAL_ADDR={}",
                config.http.internal_addr
            )
        })?;
    let internal_addr = internal_listener.local_addr()?;
    let (public_routes, _) = public_router(api_state.clone());
    let http_shutdown = wait_for(shutdown_rx.clone());
    tasks.push((
        "REST API server",
        tokio::spawn(serve_http(http_listener, public_routes, http_shutdown)),
    ));
    let internal_shutdown = wait_for(shutdown_rx.clone());
    tasks.push((
        "internal REST API server",
        tokio::spawn(serve_http(
            internal_listener,
            internal_router(api_state),
            internal_shutdown,
        )),
    ));

    let metrics_router = metrics_router(metrics.clone(), authorizer.clone(), store);
    let metrics_shutdown = wait_for(shutdown_rx.clone());
    tasks.push((
        "metrics server",
        tokio::spawn(async move {
            axum::serve(metrics_listener, metrics_router)
                .with_graceful_shutdown(metrics_shutdown)
                .await
                .context("metrics server failed")
        }),
    ));

    tracing::info!(%grpc_addr, %metrics_addr, %http_addr, %internal_addr, "maas-authz serving");
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        http_addr,
        internal_addr,
        shutdown: shutdown_tx,
        grace: config.shutdown_grace,
        tasks,
        authorizer,
    })
}

/// Runs until SIGTERM or Ctrl-C, then drains and stops.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let server = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

fn metrics_router(
    metrics: Arc<Metrics>,
    authorizer: Arc<Authorizer<ServedStore, Arc<Metrics>>>,
    store: Arc<ServedStore>,
) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, authorizer, store) = (metrics.clone(), authorizer.clone(), store.clone());
            async move {
                metrics.set_state(authorizer.cache().sizes(), store.pool_state());
                if let Some(limiter) = authorizer.limiter() {
                    metrics.set_counter_store_up(limiter.ping().await.is_ok());
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    )
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

/// Writes noted key uses every `every`, one statement per batch, and once more at shutdown.
async fn write_last_used(
    tracker: Arc<LastUsedTracker>,
    store: Arc<ServedStore>,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let flush = async |tracker: &LastUsedTracker| {
        let batch = tracker.take_batch(chrono::Utc::now());
        if batch.is_empty() {
            return;
        }
        if let Err(error) = store.record_last_used(&batch).await {
            tracing::warn!(%error, keys = batch.len(), "cannot write last_used_at; will retry");
            tracker.restore(batch);
        }
    };
    let mut ticker = tokio::time::interval(every);
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

/// Resolves once shutdown was requested.
async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
