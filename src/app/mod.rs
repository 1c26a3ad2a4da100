//! The composition root: [`Application::build`] builds every service once ([`services`]), hands
//! each edge only what it needs ([`edges`]), starts the background tasks ([`background`]) and
//! binds the listeners; [`Application::shutdown`] stops them all.

mod background;
pub(crate) mod edges;
pub(crate) mod services;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::authorizer::Authorizer;
use crate::clock::{Clock, SystemClock};
use crate::config::{DatabaseConfig, PolicySource, ServeConfig, pg_endpoint};
use crate::http::{internal_router, public_router, serve_http};
use crate::kube_policy::{KubernetesSource, KubernetesSourceSettings};
use crate::limits::Limiter;
use crate::store::migrate::run_migrations;
use crate::store::served::ServedStore;

pub use background::DATABASE_HEALTH_SERVICE;

use background::Tasks;
use services::Services;

/// A running server: its bound addresses, the services tests look into, and a handle to stop it.
pub struct Application {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The public REST API.
    pub http_addr: SocketAddr,
    /// The internal REST API (validate, cleanup).
    pub internal_addr: SocketAddr,
    grace: Duration,
    tasks: Tasks,
    authorizer: Arc<Authorizer<ServedStore>>,
    limiter: Option<Arc<Limiter>>,
    store: Arc<ServedStore>,
    ledger: Option<Arc<crate::ledger::Ledger>>,
}

/// The name callers used before the composition root had one.
pub type RunningServer = Application;

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("http_addr", &self.http_addr)
            .field("internal_addr", &self.internal_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Builds and starts everything; returns once every listener accepts connections.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Application::build`] with the clock the limits' windows are read from (tests move it
    /// by hand).
    pub async fn build_with_clock(
        config: ServeConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let services = Services::build(&config, clock).await?;
        let mut tasks = Tasks::new();

        background::spawn_key_change_listener(
            &mut tasks,
            services.endpoint.clone(),
            config.database.db_connect_timeout,
            services.cache.clone(),
        )
        .await;
        let known_keys_loaded = services.cache.known_keys().map(|known| {
            background::spawn_known_keys_load(&mut tasks, known.clone(), services.store.clone())
        });
        if let Some(used_within) = config.cache_preload.0 {
            background::spawn_cache_preload(
                &mut tasks,
                services.cache.clone(),
                services.store.clone(),
                background::CachePreload {
                    used_within,
                    most: config.cache_capacity,
                },
            );
        }
        background::spawn_last_used_writer(
            &mut tasks,
            services.last_used.clone(),
            services.store.clone(),
            services.metrics.clone(),
            background::LastUsedWrites {
                every: config.last_used_flush_interval,
                batch_size: config.last_used_batch_size as usize,
            },
        );
        if let Some(ledger) = &services.ledger {
            background::spawn_usage_writer(
                &mut tasks,
                ledger.clone(),
                services.store.clone(),
                services.metrics.clone(),
                config.ledger.usage_flush_interval,
            );
        }
        background::spawn_housekeeping(
            &mut tasks,
            services.store.clone(),
            config.housekeeping_interval.0,
            config.ledger.usage_retention.0,
        );
        match config.policy_source.policy_source {
            PolicySource::Files => background::spawn_policy_reloader(
                &mut tasks,
                config.policy_files()?.to_owned(),
                config.policy_reload_interval,
                services.policy.clone(),
                services.policy_sync.clone(),
                services.metrics.clone(),
            ),
            PolicySource::Kubernetes => background::spawn_kubernetes_policy(
                &mut tasks,
                KubernetesSource::connect(&kubernetes_settings(&config)).await?,
                services.policy.clone(),
                services.policy_sync.clone(),
                services.metrics.clone(),
            ),
        }

        if let Some(loaded) = known_keys_loaded {
            background::wait_for_known_keys(loaded, config.startup_timeout).await;
        }
        let grpc_listener = bind(config.grpc_addr, "MAAS_AUTHZ_GRPC_ADDR").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let metrics_listener = bind(config.metrics_addr, "MAAS_AUTHZ_METRICS_ADDR").await?;
        let metrics_addr = metrics_listener.local_addr()?;

        let (health, health_service) = tonic_health::server::health_reporter();
        edges::report_serving(&health).await;
        background::spawn_database_watcher(
            &mut tasks,
            services.store.clone(),
            services.metrics.clone(),
            health,
            config.db_breaker_cool_down,
        );
        let grpc = edges::grpc_router(&config, &services, health_service)?;
        let grpc_shutdown = tasks.shutdown_signal();
        tasks.spawn("gRPC server", async move {
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            grpc.serve_with_incoming_shutdown(crate::grpc::socket::copying(incoming), grpc_shutdown)
                .await
                .context("gRPC server failed")
        });

        let http_listener = bind(config.http.http_addr, "MAAS_AUTHZ_HTTP_ADDR").await?;
        let http_addr = http_listener.local_addr()?;
        let internal_listener = bind(config.http.internal_addr, "MAAS_AUTHZ_INTERNAL_ADDR").await?;
        let internal_addr = internal_listener.local_addr()?;
        let keys = edges::key_manager(&config, &services);
        let (public_routes, _) = public_router(edges::public_api(&config, &services, keys.clone()));
        let internal_routes = internal_router(edges::internal_api(&config, &services, keys));
        let http_shutdown = tasks.shutdown_signal();
        tasks.spawn(
            "REST API server",
            serve_http(http_listener, public_routes, http_shutdown),
        );
        let internal_shutdown = tasks.shutdown_signal();
        tasks.spawn(
            "internal REST API server",
            serve_http(internal_listener, internal_routes, internal_shutdown),
        );

        let metrics_routes = edges::metrics_router(
            services.metrics.clone(),
            services.cache.clone(),
            services.store.clone(),
            services.limiter.clone(),
        );
        let metrics_shutdown = tasks.shutdown_signal();
        tasks.spawn("metrics server", async move {
            axum::serve(metrics_listener, metrics_routes)
                .with_graceful_shutdown(metrics_shutdown)
                .await
                .context("metrics server failed")
        });

        tracing::info!(%grpc_addr, %metrics_addr, %http_addr, %internal_addr, "maas-authz serving");
        Ok(Self {
            grpc_addr,
            metrics_addr,
            http_addr,
            internal_addr,
            grace: config.shutdown_grace,
            tasks,
            authorizer: services.authorizer,
            limiter: services.limiter,
            store: services.store,
            ledger: services.ledger,
        })
    }

    /// The authorizer behind Check, for in-process callers such as tests.
    pub fn authorizer(&self) -> &Arc<Authorizer<ServedStore>> {
        &self.authorizer
    }

    /// The request and token limits (`None` when limits are off).
    pub fn limiter(&self) -> Option<&Arc<Limiter>> {
        self.limiter.as_ref()
    }

    /// The key store every edge shares.
    pub fn store(&self) -> &Arc<ServedStore> {
        &self.store
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and waits
    /// for every task; whatever is still running after the grace period is cut off.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let stopped = self.tasks.shut_down(self.grace).await;
        // Responses that finished while the listeners drained were booked after the writer's
        // last flush: write them now, with every task stopped.
        if let Some(ledger) = &self.ledger {
            let batch = ledger.take_batch();
            if !batch.is_empty() {
                use crate::store::UsageStore;
                let batch_id = uuid::Uuid::new_v4().to_string();
                if let Err(error) = self.store.add_usage(&batch_id, &batch).await {
                    tracing::warn!(%error, rows = batch.len(), "usage ledger rows lost at shutdown");
                }
            }
        }
        stopped
    }

    /// The usage ledger's pending rows (`None` when the ledger is off), for tests.
    pub fn ledger(&self) -> Option<&Arc<crate::ledger::Ledger>> {
        self.ledger.as_ref()
    }
}

/// The API server shared with TokenReview, and the namespaces upstream's maas-api watches.
fn kubernetes_settings(config: &ServeConfig) -> KubernetesSourceSettings {
    KubernetesSourceSettings {
        api_url: config.identity.kube_api_url.clone(),
        token_file: config.identity.kube_token_file.clone(),
        ca_file: config.identity.kube_ca_file.clone(),
        subscription_namespace: config.policy_source.subscription_namespace.clone(),
        model_namespaces: config.policy_source.model_namespaces.0.clone(),
    }
}

async fn bind(addr: SocketAddr, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {variable}={addr}"))
}

/// Applies pending migrations on a dedicated connection, retrying until `patience` runs out
/// while the database is not yet reachable (replicas and the database often start together). A
/// TLS failure or a server that wants TLS is not retried: only a configuration change helps.
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
