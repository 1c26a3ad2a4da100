//! The services `serve` runs, each built once from the configuration: the edges and background
//! tasks are handed the pieces they need from here.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;

use crate::assertion::SigningKeys;
use crate::authorizer::Authorizer;
use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::cache::{CacheSettings, KeyCache};
use crate::clock::Clock;
use crate::config::PolicySource;
use crate::config::{LimitsConfig, OnRedisError, ServeConfig, pg_endpoint, pg_settings};
use crate::identity::IdentityResolver;
use crate::last_used::LastUsedTracker;
use crate::ledger::{Ledger, LedgerTokenSink};
use crate::limits::{
    ChargingTokenSink, CounterStore, InProcessCounterStore, Limiter, OnStoreError,
    RedisCounterStore, RedisEndpoint,
};
use crate::lookup_budget::{BudgetKind, LookupBudget};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicySourceKind, PolicySync};
use crate::store::connect::PgEndpoint;
use crate::store::postgres::PgKeyStore;
use crate::store::served::ServedStore;
use crate::usage::TokenSink;

/// What the store-independent services are built around: the store and what was made before it.
pub(crate) struct StoreParts {
    pub signing: Arc<SigningKeys>,
    pub metrics: Arc<Metrics>,
    /// The database, for the key-change listener's own connection.
    pub endpoint: PgEndpoint,
    pub store: ServedStore,
}

/// Every service, built once. Plain fields: the composition root takes what each edge needs.
pub(crate) struct Services {
    pub metrics: Arc<Metrics>,
    /// Signs (Check) and verifies (token meter) the identity assertion.
    pub signing: Arc<SigningKeys>,
    /// The database, for the key-change listener's own connection.
    pub endpoint: PgEndpoint,
    /// The current policy; the reloader (files) or the cluster watcher (Kubernetes) swaps it.
    pub policy: Arc<ArcSwap<Policy>>,
    /// The policy's generation and last full read, for `/ready` and the metrics.
    pub policy_sync: Arc<PolicySync>,
    pub store: Arc<ServedStore>,
    /// Check's key cache; revocations (REST, NOTIFY) evict from this same cache.
    pub cache: KeyCache,
    pub last_used: Arc<LastUsedTracker>,
    /// `None` with `MAAS_AUTHZ_LIMITS_ENABLED=false`.
    pub limiter: Option<Arc<Limiter>>,
    pub authorizer: Arc<Authorizer<ServedStore>>,
    pub identity: Arc<IdentityResolver<ServedStore>>,
    /// Where the token meter charges metered tokens.
    pub token_sink: Arc<dyn TokenSink>,
    /// The usage ledger's pending rows; `None` with `MAAS_AUTHZ_USAGE_LEDGER=off`.
    pub ledger: Option<Arc<Ledger>>,
}

impl Services {
    /// Builds every service in dependency order; migrations run here (unless skipped), before the
    /// policy is read, as before any listener exists.
    pub async fn build(config: &ServeConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let signing = Arc::new(config.enforcement.signing_keys()?);
        if signing.is_ephemeral() {
            tracing::warn!(
                "MAAS_AUTHZ_IDENTITY_SIGNING_KEYS is unset: identity assertions are signed with a \
                 key of this process only, so with several replicas the token meter of one refuses \
                 requests another checked; set the same keys on every replica"
            );
        }
        let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
        let endpoint = pg_endpoint(&config.database)?;
        if endpoint.is_plain_over_network() {
            tracing::warn!(
                "DATABASE_URL reaches a host beyond this machine without TLS (sslmode=disable, the \
                 default without sslmode): queries and key hashes cross the network unencrypted; \
                 set sslmode=verify-full"
            );
        }
        if !config.skip_migrations {
            super::migrate(&config.database, config.startup_timeout).await?;
        }
        let store = ServedStore::Postgres(
            PgKeyStore::connect(&pg_settings(&config.database), metrics.clone())?
                .with_check_timeout(config.db_check_timeout)
                .with_breaker(Arc::new(CircuitBreaker::new(BreakerSettings {
                    failure_threshold: config.db_breaker_threshold,
                    cool_down: config.db_breaker_cool_down,
                }))),
        );
        Self::around_store(
            config,
            clock,
            StoreParts {
                signing,
                metrics,
                endpoint,
                store,
            },
        )
        .await
    }

    /// Builds the services that do not depend on which store it is, around `parts` (the fast
    /// tier's edge tests pass the in-memory store here).
    pub(crate) async fn around_store(
        config: &ServeConfig,
        clock: Arc<dyn Clock>,
        parts: StoreParts,
    ) -> anyhow::Result<Self> {
        let StoreParts {
            signing,
            metrics,
            endpoint,
            store,
        } = parts;
        let store = Arc::new(store);
        let policy_sync = Arc::new(PolicySync::new(match config.policy_source.policy_source {
            PolicySource::Files => PolicySourceKind::Files,
            PolicySource::Kubernetes => PolicySourceKind::Kubernetes,
        }));
        let initial = match config.policy_source.policy_source {
            PolicySource::Files => {
                let policy = load_policy(config, &metrics)?;
                let state = policy_sync.record_in_force(policy.fingerprint(), chrono::Utc::now());
                metrics.set_policy_sync(&state);
                policy
            }
            // Empty (every model unknown) until the first complete list; /ready says so.
            PolicySource::Kubernetes => {
                metrics.set_policy_sync(&policy_sync.snapshot());
                Policy::empty()
            }
        };
        let policy = Arc::new(ArcSwap::from_pointee(initial));
        let cache = key_cache(config, &metrics);
        let last_used = Arc::new(LastUsedTracker::new(config.last_used_interval));
        let limiter = if config.limits.limits_enabled {
            Some(Arc::new(
                limiter(&config.limits, policy.clone(), clock, metrics.clone()).await?,
            ))
        } else {
            tracing::info!("limits disabled (MAAS_AUTHZ_LIMITS_ENABLED=false)");
            None
        };
        let mut authorizer = Authorizer::new(
            store.clone(),
            cache.clone(),
            policy.clone(),
            metrics.clone(),
        )
        .with_last_used(last_used.clone())
        .with_model_free_paths(config.enforcement.model_free_paths.clone());
        if let Some(limiter) = &limiter {
            authorizer = authorizer.with_limiter(limiter.clone());
        }
        let ledger = config.ledger.usage_ledger.then(|| {
            let rows = usize::try_from(config.ledger.usage_buffer_rows).unwrap_or(usize::MAX);
            Arc::new(Ledger::new(rows).with_observer(metrics.clone()))
        });
        match &ledger {
            Some(ledger) => {
                tracing::info!(?ledger, "usage ledger on");
                authorizer = authorizer.with_ledger(ledger.clone());
            }
            None => tracing::info!("usage ledger off (MAAS_AUTHZ_USAGE_LEDGER=off)"),
        }
        let authorizer = Arc::new(authorizer);
        let mut identity = IdentityResolver::from_settings(&config.identity, authorizer.clone())
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
        // Metered tokens are charged to the caller's token windows (when limits are on) and counted.
        let counted: Arc<dyn TokenSink> = metrics.clone();
        let token_sink: Arc<dyn TokenSink> = match &limiter {
            Some(limiter) => Arc::new(ChargingTokenSink::new(limiter.clone(), counted)),
            None => counted,
        };
        // The ledger books each response first (in memory), then the limits and metrics charge it.
        let token_sink: Arc<dyn TokenSink> = match &ledger {
            Some(ledger) => Arc::new(LedgerTokenSink::new(
                ledger.clone(),
                policy.clone(),
                token_sink,
            )),
            None => token_sink,
        };
        Ok(Self {
            metrics,
            signing,
            endpoint,
            policy,
            policy_sync,
            store,
            cache,
            last_used,
            limiter,
            authorizer,
            identity: Arc::new(identity),
            token_sink,
            ledger,
        })
    }
}

fn load_policy(config: &ServeConfig, metrics: &Metrics) -> anyhow::Result<Policy> {
    let path = config.policy_files()?;
    let policy = Policy::load(path).with_context(|| {
        format!(
            "MAAS_AUTHZ_POLICY_PATH={}: the policy cannot be read",
            path.display()
        )
    })?;
    let counts = policy.counts();
    metrics.set_policy_counts(counts.models, counts.subscriptions, counts.auth_policies);
    metrics.set_policy_invalid_objects(policy.invalid_objects().iter().map(|object| {
        (
            object.kind.as_str(),
            object.namespace.as_str(),
            object.name.as_str(),
        )
    }));
    tracing::info!(
        path = %path.display(),
        fingerprint = policy.fingerprint(),
        models = counts.models,
        subscriptions = counts.subscriptions,
        auth_policies = counts.auth_policies,
        invalid_objects = policy.invalid_objects().len(),
        "policy loaded"
    );
    Ok(policy)
}

fn key_cache(config: &ServeConfig, metrics: &Arc<Metrics>) -> KeyCache {
    let cache = KeyCache::new(CacheSettings {
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
            let cache = cache.with_lookup_budget(Arc::new(budget.with_observer(metrics.clone())));
            // Only a budget makes the set worth its memory: it exempts known keys from it.
            if config.abuse.known_key_filter {
                cache.with_known_key_filter()
            } else {
                cache
            }
        }
        None => {
            tracing::info!("lookups of unknown keys are unbounded");
            cache
        }
    }
}

/// The limiter the configuration asks for: counters in Redis, else in this process. A Redis
/// whose TLS certificate does not verify stops start-up; a Redis that is down does not.
async fn limiter(
    config: &LimitsConfig,
    policy: Arc<ArcSwap<Policy>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Limiter> {
    let store: Arc<dyn CounterStore> = match &config.redis_url {
        Some(url) => {
            let store = RedisCounterStore::connect_lazily(RedisEndpoint {
                url,
                ca_file: config.redis_ca_file.as_ref(),
                timeout: config.redis_timeout,
                cluster: config.redis_cluster,
            })
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
