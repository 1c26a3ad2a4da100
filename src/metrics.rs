//! Prometheus metrics: decisions, Check latency, cache, database queries, pool and policy state,
//! rate limits, the counter store, metered tokens and throttled lookups of unseen credentials.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::authorizer::{CheckObserver, DecisionObserver, DenyReason, PerDenyReason};
use crate::breaker::BreakerState;
use crate::cache::CacheOutcome;
use crate::limits::{LimitKind, LimitObserver};
use crate::lookup_budget::{BudgetKind, BudgetScope, ThrottleObserver};
use crate::store::postgres::{PoolState, QueryObserver};
use crate::usage::{
    Charge, Endpoint, MeterOutcome, MeterRefusal, TokenSink, UsageObserver, UsageSubject,
};

/// Check latencies are tens of microseconds on a hit and milliseconds on a miss.
const CHECK_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];
const QUERY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every metric the service exports, registered in its own registry (no globals).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    allowed: IntCounter,
    denied: PerDenyReason<IntCounter>,
    failed: IntCounter,
    check_seconds: Histogram,
    cache_hit: IntCounter,
    cache_negative_hit: IntCounter,
    cache_miss: IntCounter,
    cache_stale: IntCounter,
    cache_entries: IntGaugeVec,
    query_seconds: HistogramVec,
    query_errors: IntCounterVec,
    query_refused: IntCounterVec,
    database_degraded: IntGauge,
    breaker_state: IntGaugeVec,
    pool_connections: IntGaugeVec,
    policy_reloads: IntCounterVec,
    policy_objects: IntGaugeVec,
    policy_generation: IntGauge,
    policy_synced: IntGauge,
    policy_last_sync: prometheus::Gauge,
    policy_lists: IntCounterVec,
    policy_watch_errors: IntCounterVec,
    tokens_by_subscription: IntCounterVec,
    policy_invalid_objects: IntGaugeVec,
    /// `[prompt, completion, total]`.
    tokens_metered: [IntCounter; 3],
    /// `[prompt, completion, total]` of the charges that were estimates.
    tokens_estimated: [IntCounter; 3],
    meter_refusals: IntCounterVec,
    metered_responses: IntCounterVec,
    forced_stream_usage: IntCounterVec,
    tokens_charged: IntCounter,
    /// Aligned with `LimitKind::ALL`.
    rate_limited: Vec<IntCounter>,
    counter_store_errors: IntCounter,
    counter_store_up: IntGauge,
    /// `[peer, global]`, each for unknown-key lookups and for TokenReviews.
    unknown_key_lookups_throttled: [IntCounter; 2],
    token_reviews_throttled: [IntCounter; 2],
    usage_ledger: UsageLedgerMetrics,
    last_used: LastUsedMetrics,
}

/// The `last_used_at` write-behind's flushes.
#[derive(Debug)]
struct LastUsedMetrics {
    flush_seconds: Histogram,
    batch_seconds: Histogram,
    keys_written: IntCounter,
    write_failures: IntCounter,
}

/// A flush writes up to hundreds of thousands of keys in batches of a few thousand.
const LAST_USED_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl LastUsedMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LAST_USED_BUCKETS.to_vec()))
        };
        let metrics = Self {
            flush_seconds: histogram(
                "last_used_flush_seconds",
                "Time to write every key use noted since the previous flush (all its batches)",
            )?,
            batch_seconds: histogram(
                "last_used_batch_seconds",
                "Time to write one last_used_at batch (one statement of at most \
                 MAAS_AUTHZ_LAST_USED_BATCH_SIZE keys)",
            )?,
            keys_written: IntCounter::new(
                "last_used_keys_written_total",
                "Key uses handed to the database by the last_used_at write-behind",
            )?,
            write_failures: IntCounter::new(
                "last_used_write_failures_total",
                "last_used_at batches whose write failed (their keys are retried next flush)",
            )?,
        };
        registry.register(Box::new(metrics.flush_seconds.clone()))?;
        registry.register(Box::new(metrics.batch_seconds.clone()))?;
        registry.register(Box::new(metrics.keys_written.clone()))?;
        registry.register(Box::new(metrics.write_failures.clone()))?;
        Ok(metrics)
    }
}

impl Metrics {
    /// One `last_used_at` batch: how long its statement took, how many keys it carried.
    pub fn observe_last_used_batch(&self, elapsed: Duration, keys: usize, ok: bool) {
        self.last_used.batch_seconds.observe(elapsed.as_secs_f64());
        if ok {
            self.last_used.keys_written.inc_by(keys as u64);
        } else {
            self.last_used.write_failures.inc();
        }
    }

    /// One whole `last_used_at` flush (every batch it wrote).
    pub fn observe_last_used_flush(&self, elapsed: Duration) {
        self.last_used.flush_seconds.observe(elapsed.as_secs_f64());
    }
}

/// The usage ledger's buffer and writes.
#[derive(Debug)]
struct UsageLedgerMetrics {
    dropped: IntCounter,
    rows_written: IntCounter,
    write_failures: IntCounter,
    pending_rows: IntGauge,
}

impl UsageLedgerMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            dropped: IntCounter::new(
                "usage_ledger_dropped_total",
                "Usage records (Check decisions, metered responses) dropped because the ledger's \
                 buffer was full (MAAS_AUTHZ_USAGE_BUFFER_ROWS), e.g. during a long database outage",
            )?,
            rows_written: IntCounter::new(
                "usage_ledger_rows_written_total",
                "Ledger rows added to the database by the write-behind",
            )?,
            write_failures: IntCounter::new(
                "usage_ledger_write_failures_total",
                "Ledger batches whose write failed and were kept for a retry",
            )?,
            pending_rows: IntGauge::new(
                "usage_ledger_pending_rows",
                "Ledger rows in memory waiting to be written",
            )?,
        };
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.rows_written.clone()))?;
        registry.register(Box::new(metrics.write_failures.clone()))?;
        registry.register(Box::new(metrics.pending_rows.clone()))?;
        Ok(metrics)
    }
}

impl crate::ledger::LedgerObserver for Metrics {
    fn observe_dropped(&self, records: u64) {
        self.usage_ledger.dropped.inc_by(records);
    }

    fn observe_flush(&self, rows: usize, ok: bool) {
        if ok {
            self.usage_ledger.rows_written.inc_by(rows as u64);
        } else {
            self.usage_ledger.write_failures.inc();
        }
    }
}

impl Metrics {
    /// Rows the ledger holds in memory now.
    pub fn set_usage_pending_rows(&self, rows: usize) {
        self.usage_ledger
            .pending_rows
            .set(i64::try_from(rows).unwrap_or(i64::MAX));
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("maas_authz".into()), None)?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "check_decisions_total",
                "Check decisions by outcome and reason",
            ),
            &["outcome", "reason"],
        )?;
        let check_seconds = Histogram::with_opts(
            HistogramOpts::new("check_duration_seconds", "Time to decide one Check request")
                .buckets(CHECK_BUCKETS.to_vec()),
        )?;
        let cache_lookups = IntCounterVec::new(
            Opts::new("cache_lookups_total", "Key cache lookups by result"),
            &["result"],
        )?;
        let cache_entries = IntGaugeVec::new(
            Opts::new(
                "cache_entries",
                "Entries in the key caches (known, unknown) and hashes in the known-key set (hashes)",
            ),
            &["cache"],
        )?;
        let query_seconds = HistogramVec::new(
            HistogramOpts::new("db_query_duration_seconds", "Database statement latency")
                .buckets(QUERY_BUCKETS.to_vec()),
            &["statement"],
        )?;
        let query_errors = IntCounterVec::new(
            Opts::new("db_query_errors_total", "Database statements that failed"),
            &["statement"],
        )?;
        let query_refused = IntCounterVec::new(
            Opts::new(
                "db_query_refused_total",
                "Database statements not sent because the circuit breaker was open",
            ),
            &["statement"],
        )?;
        let database_degraded = IntGauge::new(
            "database_degraded",
            "1 while the database does not answer: cached keys are served stale-if-error, \
             unknown keys are refused",
        )?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "db_circuit_breaker_state",
                "1 for the database circuit breaker's current state",
            ),
            &["state"],
        )?;
        let pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Connection pool state"),
            &["state"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new("policy_reloads_total", "Policy reload attempts by result"),
            &["result"],
        )?;
        let policy_objects = IntGaugeVec::new(
            Opts::new("policy_objects", "Objects in the active policy"),
            &["kind"],
        )?;
        let policy_generation = IntGauge::new(
            "policy_generation",
            "How many different policies have been in force since start-up (1: the first)",
        )?;
        let policy_synced = IntGauge::new(
            "policy_synced",
            "1 once the policy source was read in full (for Kubernetes: every watched kind listed)",
        )?;
        let policy_last_sync = prometheus::Gauge::new(
            "policy_last_sync_timestamp_seconds",
            "When the policy source was last read in full and the policy in force confirmed",
        )?;
        let policy_lists = IntCounterVec::new(
            Opts::new(
                "policy_watch_lists_total",
                "Full lists of a watched MaaS kind (the first, and each relist after a watch failure)",
            ),
            &["kind"],
        )?;
        let policy_watch_errors = IntCounterVec::new(
            Opts::new(
                "policy_watch_errors_total",
                "Failed or expired (410 Gone) watches of a MaaS kind; each is resumed or relisted",
            ),
            &["kind"],
        )?;
        let tokens_by_subscription = IntCounterVec::new(
            Opts::new(
                "tokens_charged_by_subscription_total",
                "Tokens charged by subscription (<namespace>/<name>) and model (<namespace>/<name>); \
                 both come from the signed identity assertion, so the label values are bounded by \
                 the policy",
            ),
            &["subscription", "model"],
        )?;
        registry.register(Box::new(tokens_by_subscription.clone()))?;
        registry.register(Box::new(policy_generation.clone()))?;
        registry.register(Box::new(policy_synced.clone()))?;
        registry.register(Box::new(policy_last_sync.clone()))?;
        registry.register(Box::new(policy_lists.clone()))?;
        registry.register(Box::new(policy_watch_errors.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(check_seconds.clone()))?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(query_seconds.clone()))?;
        registry.register(Box::new(query_errors.clone()))?;
        registry.register(Box::new(query_refused.clone()))?;
        registry.register(Box::new(database_degraded.clone()))?;
        registry.register(Box::new(breaker_state.clone()))?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(policy_reloads.clone()))?;
        registry.register(Box::new(policy_objects.clone()))?;
        let policy_invalid_objects = IntGaugeVec::new(
            Opts::new(
                "policy_invalid_objects",
                "Policy objects left out because they are invalid (1 each; the log says why)",
            ),
            &["kind", "namespace", "name"],
        )?;
        registry.register(Box::new(policy_invalid_objects.clone()))?;
        let tokens_metered = IntCounterVec::new(
            Opts::new(
                "tokens_metered_total",
                "Tokens read from model responses, by kind (prompt, completion, total)",
            ),
            &["kind"],
        )?;
        let metered_responses = IntCounterVec::new(
            Opts::new(
                "metered_responses_total",
                "Responses seen by the token meter, by endpoint and outcome",
            ),
            &["endpoint", "outcome"],
        )?;
        let forced_stream_usage = IntCounterVec::new(
            Opts::new(
                "stream_usage_forced_total",
                "Streaming requests rewritten to ask for usage (stream_options.include_usage)",
            ),
            &["endpoint"],
        )?;
        let tokens_charged = IntCounter::new(
            "tokens_charged_total",
            "Tokens charged to callers (the total of each metered response)",
        )?;
        let tokens_estimated = IntCounterVec::new(
            Opts::new(
                "tokens_estimated_total",
                "Tokens charged by estimate (responses without usage, interrupted streams), by kind; \
                 also counted in tokens_metered_total",
            ),
            &["kind"],
        )?;
        let meter_refusals = IntCounterVec::new(
            Opts::new(
                "meter_refusals_total",
                "Requests or responses the token meter refused to pass because it could not charge \
                 them, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(tokens_estimated.clone()))?;
        registry.register(Box::new(meter_refusals.clone()))?;
        for refusal in MeterRefusal::all() {
            meter_refusals.with_label_values(&[refusal.as_str()]);
        }
        registry.register(Box::new(tokens_metered.clone()))?;
        registry.register(Box::new(metered_responses.clone()))?;
        registry.register(Box::new(forced_stream_usage.clone()))?;
        registry.register(Box::new(tokens_charged.clone()))?;
        // Every label combination exists from the start, so dashboards see zeros, not gaps.
        for endpoint in Endpoint::ALL {
            forced_stream_usage.with_label_values(&[endpoint.as_str()]);
            for outcome in MeterOutcome::ALL {
                metered_responses.with_label_values(&[endpoint.as_str(), outcome.as_str()]);
            }
        }
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused with 429, by the kind of limit reached",
            ),
            &["kind"],
        )?;
        let counter_store_errors = IntCounter::new(
            "counter_store_errors_total",
            "Rate-limit counter store operations that failed (Redis unreachable, store full)",
        )?;
        let counter_store_up = IntGauge::new(
            "counter_store_up",
            "1 if the rate-limit counter store answered its last ping (at scrape time), else 0",
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(counter_store_errors.clone()))?;
        registry.register(Box::new(counter_store_up.clone()))?;
        let unknown_key_lookups_throttled = IntCounterVec::new(
            Opts::new(
                "unknown_key_lookups_throttled_total",
                "Lookups of keys no cache holds refused without a query because the lookup \
                 budget was spent, by the bucket that ran dry (peer, global)",
            ),
            &["scope"],
        )?;
        let token_reviews_throttled = IntCounterVec::new(
            Opts::new(
                "token_reviews_throttled_total",
                "TokenReviews not sent because the TokenReview budget was spent, by scope",
            ),
            &["scope"],
        )?;
        registry.register(Box::new(unknown_key_lookups_throttled.clone()))?;
        registry.register(Box::new(token_reviews_throttled.clone()))?;
        let by_scope = |vec: &IntCounterVec| {
            [BudgetScope::Peer, BudgetScope::Global]
                .map(|scope| vec.with_label_values(&[scope.as_str()]))
        };
        // Children resolved once, so the hot path does no label lookups.
        let denied =
            PerDenyReason::new(|reason| decisions.with_label_values(&["deny", reason.as_str()]));
        Ok(Self {
            allowed: decisions.with_label_values(&["allow", ""]),
            failed: decisions.with_label_values(&["error", "store_unavailable"]),
            denied,
            check_seconds,
            cache_hit: cache_lookups.with_label_values(&["hit"]),
            cache_negative_hit: cache_lookups.with_label_values(&["negative_hit"]),
            cache_miss: cache_lookups.with_label_values(&["miss"]),
            cache_stale: cache_lookups.with_label_values(&["stale"]),
            cache_entries,
            query_seconds,
            query_errors,
            query_refused,
            database_degraded,
            breaker_state,
            pool_connections,
            policy_reloads,
            policy_objects,
            policy_generation,
            policy_synced,
            policy_last_sync,
            policy_lists,
            policy_watch_errors,
            tokens_by_subscription,
            policy_invalid_objects,
            tokens_metered: ["prompt", "completion", "total"]
                .map(|kind| tokens_metered.with_label_values(&[kind])),
            tokens_estimated: ["prompt", "completion", "total"]
                .map(|kind| tokens_estimated.with_label_values(&[kind])),
            meter_refusals,
            metered_responses,
            forced_stream_usage,
            tokens_charged,
            rate_limited: LimitKind::ALL
                .iter()
                .map(|kind| rate_limited.with_label_values(&[kind.as_str()]))
                .collect(),
            counter_store_errors,
            counter_store_up,
            unknown_key_lookups_throttled: by_scope(&unknown_key_lookups_throttled),
            token_reviews_throttled: by_scope(&token_reviews_throttled),
            usage_ledger: UsageLedgerMetrics::register(&registry)?,
            last_used: LastUsedMetrics::register(&registry)?,
            registry,
        })
    }

    /// Sets the gauges that are read rather than counted.
    /// `known_hashes`: the known-key set's size (`crate::known_keys`), shown as `cache="hashes"`.
    pub fn set_state(&self, cache_sizes: (u64, u64), known_hashes: usize, pool: PoolState) {
        let gauge = |vec: &IntGaugeVec, label: &str, value: usize| {
            vec.with_label_values(&[label])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge(&self.cache_entries, "known", cache_sizes.0 as usize);
        gauge(&self.cache_entries, "unknown", cache_sizes.1 as usize);
        gauge(&self.cache_entries, "hashes", known_hashes);
        gauge(&self.pool_connections, "open", pool.size);
        gauge(&self.pool_connections, "idle", pool.available);
        gauge(&self.pool_connections, "waiting", pool.waiting);
        gauge(&self.pool_connections, "max", pool.max_size);
    }

    pub fn set_counter_store_up(&self, up: bool) {
        self.counter_store_up.set(i64::from(up));
    }

    /// Publishes the database circuit breaker's state and whether service is degraded (the
    /// database did not answer the last health ping).
    pub fn set_database_state(&self, breaker: BreakerState, degraded: bool) {
        for candidate in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            self.breaker_state
                .with_label_values(&[candidate.as_str()])
                .set(i64::from(candidate == breaker));
        }
        self.database_degraded.set(i64::from(degraded));
    }

    pub fn observe_policy_reload(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.policy_reloads.with_label_values(&[result]).inc();
    }

    pub fn set_policy_counts(&self, models: usize, subscriptions: usize, auth_policies: usize) {
        for (kind, count) in [
            ("models", models),
            ("subscriptions", subscriptions),
            ("auth_policies", auth_policies),
        ] {
            self.policy_objects
                .with_label_values(&[kind])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Publishes the policy's generation, whether its source was read in full, and when.
    pub fn set_policy_sync(&self, state: &crate::policy::PolicySyncState) {
        self.policy_generation
            .set(i64::try_from(state.generation).unwrap_or(i64::MAX));
        self.policy_synced.set(i64::from(state.synced));
        if let Some(at) = state.last_sync {
            self.policy_last_sync
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// A watched MaaS kind (`MaaSSubscription`…) is being listed in full.
    pub fn observe_policy_list(&self, kind: &str) {
        self.policy_lists.with_label_values(&[kind]).inc();
    }

    /// A watch of a MaaS kind failed or expired.
    pub fn observe_policy_watch_error(&self, kind: &str) {
        self.policy_watch_errors.with_label_values(&[kind]).inc();
    }

    /// Replaces the invalid objects of the previous policy with `objects` (kind, namespace, name).
    pub fn set_policy_invalid_objects<'a>(
        &self,
        objects: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) {
        self.policy_invalid_objects.reset();
        for (kind, namespace, name) in objects {
            self.policy_invalid_objects
                .with_label_values(&[kind, namespace, name])
                .set(1);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl UsageObserver for Metrics {
    fn observe_response(&self, endpoint: Endpoint, outcome: MeterOutcome, charge: Option<&Charge>) {
        self.metered_responses
            .with_label_values(&[endpoint.as_str(), outcome.as_str()])
            .inc();
        if let Some(charge) = charge {
            let usage = &charge.usage;
            let counters = [
                Some(&self.tokens_metered),
                charge.estimated.then_some(&self.tokens_estimated),
            ];
            for [prompt, completion, total] in counters.into_iter().flatten() {
                prompt.inc_by(usage.prompt);
                completion.inc_by(usage.completion);
                total.inc_by(usage.total);
            }
        }
    }

    fn observe_refusal(&self, reason: MeterRefusal) {
        self.meter_refusals
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    fn observe_forced_stream_usage(&self, endpoint: Endpoint) {
        self.forced_stream_usage
            .with_label_values(&[endpoint.as_str()])
            .inc();
    }
}

/// The sink `serve` wires when nothing enforces token limits: it only counts what would be
/// charged (`maas_authz_tokens_charged_total`). A limiter wraps or replaces it.
#[async_trait::async_trait]
impl TokenSink for Metrics {
    async fn charge(&self, subject: &UsageSubject, charge: &Charge) {
        let tokens = charge.usage.total;
        self.tokens_charged.inc_by(tokens);
        if let Some((subscription, model_namespace, model_name)) = subject.subscription_key.parts()
        {
            let model = format!("{model_namespace}/{model_name}");
            self.tokens_by_subscription
                .with_label_values(&[subscription, model.as_str()])
                .inc_by(tokens);
        }
    }
}

impl DecisionObserver for Metrics {
    fn observe_allow(&self, elapsed: Duration) {
        self.allowed.inc();
        self.check_seconds.observe(elapsed.as_secs_f64());
    }

    fn observe_deny(&self, reason: DenyReason, elapsed: Duration) {
        self.denied.get(reason).inc();
        self.check_seconds.observe(elapsed.as_secs_f64());
    }

    fn observe_error(&self, elapsed: Duration) {
        self.failed.inc();
        self.check_seconds.observe(elapsed.as_secs_f64());
    }
}

impl CheckObserver for Metrics {
    fn observe_cache(&self, outcome: CacheOutcome) {
        match outcome {
            CacheOutcome::Hit => self.cache_hit.inc(),
            CacheOutcome::NegativeHit => self.cache_negative_hit.inc(),
            CacheOutcome::Miss => self.cache_miss.inc(),
            CacheOutcome::Stale => self.cache_stale.inc(),
        }
    }
}

impl QueryObserver for Metrics {
    fn observe_query(&self, statement: &'static str, elapsed: Duration, ok: bool) {
        self.query_seconds
            .with_label_values(&[statement])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.query_errors.with_label_values(&[statement]).inc();
        }
    }

    fn observe_refused(&self, statement: &'static str) {
        self.query_refused.with_label_values(&[statement]).inc();
    }
}

impl ThrottleObserver for Metrics {
    fn observe_throttled(&self, budget: BudgetKind, scope: BudgetScope) {
        let counters = match budget {
            BudgetKind::UnknownKeyLookups => &self.unknown_key_lookups_throttled,
            BudgetKind::TokenReviews => &self.token_reviews_throttled,
        };
        counters[scope as usize].inc();
    }
}

impl LimitObserver for Metrics {
    fn observe_limited(&self, kind: LimitKind) {
        self.rate_limited[kind as usize].inc();
    }

    fn observe_store_error(&self) {
        self.counter_store_errors.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SubscriptionKey;

    #[tokio::test]
    async fn charged_tokens_are_counted_by_subscription_and_model() {
        let metrics = Metrics::new().unwrap();
        let subject = UsageSubject {
            user: "alice".to_owned(),
            subscription_key: SubscriptionKey::from_names(
                "models-as-a-service",
                "free",
                "llm",
                "simulator",
            ),
            key_id: "k1".to_owned(),
        };
        let charge = |total| Charge {
            usage: crate::usage::TokenUsage {
                prompt: 0,
                completion: total,
                total,
            },
            estimated: false,
        };

        metrics.charge(&subject, &charge(30)).await;
        metrics.charge(&subject, &charge(12)).await;

        let text = metrics.render();
        assert!(
            text.contains(
                "maas_authz_tokens_charged_by_subscription_total{model=\"llm/simulator\",subscription=\"models-as-a-service/free\"} 42"
            ),
            "{text}"
        );
        assert!(
            !text.contains("alice"),
            "no user label: unbounded and personal"
        );
    }
}
