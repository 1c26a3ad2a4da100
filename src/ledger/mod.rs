//! Usage ledger (domain): Check decisions and metered responses add up in memory per (hour,
//! user, key, subscription, model, chargeback attributes); a background task writes them behind.
//!
//! The Check path only takes one shard's mutex for a map update: no await, no I/O. The flusher
//! ([`Ledger::take_batch`]) drains every shard and the store adds the batch to the table with an
//! additive upsert, so several replicas writing the same hour lose nothing. A failed batch is kept
//! by the writer and retried under the same id (the store skips an id it already added). The
//! buffer is bounded by rows: while the database is away, rows already pending keep adding up
//! (same user, key, model and hour cost no memory), and only a record that would need a new row
//! beyond the bound is dropped, counted by the [`LedgerObserver`]. Nothing here knows
//! PostgreSQL: the store implements the writes.

pub mod report;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::ids::SubscriptionKey;
use crate::money::Amount;
use crate::policy::{Policy, Subscription};
use crate::usage::{Charge, TokenSink, UsageSubject};

/// The default of `MAAS_AUTHZ_USAGE_BUFFER_ROWS`.
pub const DEFAULT_BUFFER_ROWS: usize = 100_000;
/// The default of `MAAS_AUTHZ_BILLING_CURRENCY`.
pub const DEFAULT_CURRENCY: &str = "USD";

const SHARDS: usize = 16;

type FastState = foldhash::fast::RandomState;

/// What one ledger row is keyed by: everything a report can group by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    /// The start of the hour, seconds since the Unix epoch (UTC).
    pub hour: i64,
    pub user: String,
    pub key_id: String,
    /// `namespace/name`.
    pub subscription: String,
    /// `namespace/name`.
    pub model: String,
    /// The subscription's `tokenMetadata.organizationId` when the row was written ('' if none).
    pub organization_id: String,
    /// The subscription's `tokenMetadata.costCenter` when the row was written ('' if none).
    pub cost_center: String,
}

/// The counters of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageCounts {
    /// Requests Check allowed (and counted against the limits).
    pub requests: u64,
    /// Requests Check refused with 429 for a request, token or spend limit.
    pub rate_limited: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of `total_tokens`, those of responses whose usage was (partly) estimated.
    pub estimated_tokens: u64,
    pub cost: Amount,
}

impl UsageCounts {
    pub fn add(&mut self, other: &UsageCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.estimated_tokens = self.estimated_tokens.saturating_add(other.estimated_tokens);
        self.cost = self.cost.saturating_add(other.cost);
    }
}

/// One row as written: key, counters, and the labels copied with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key: UsageKey,
    pub counts: UsageCounts,
    /// The subscription's `tokenMetadata.labels`.
    pub labels: Arc<BTreeMap<String, String>>,
    /// The API key's labels (known to Check; a metered response alone leaves them empty and the
    /// store keeps what Check wrote).
    pub key_labels: Arc<BTreeMap<String, String>>,
}

/// What a Check decision adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Allowed,
    RateLimited,
}

/// Who a decision or a charge is booked to.
#[derive(Debug, Clone, Copy)]
pub struct Booking<'a> {
    pub user: &'a str,
    pub key_id: &'a str,
    /// `namespace/name`.
    pub subscription: &'a str,
    /// The subscription as the policy has it now, for its chargeback attributes; `None` when
    /// the policy no longer knows it (the tokens were served all the same).
    pub attributes: Option<&'a Subscription>,
    /// `namespace/name`.
    pub model: &'a str,
    pub key_labels: Option<&'a BTreeMap<String, String>>,
}

/// Observes the ledger's buffer (implemented by the metrics module).
pub trait LedgerObserver: Send + Sync + 'static {
    /// A record was dropped: the buffer was full and it needed a new row.
    fn observe_dropped(&self, records: u64);
    /// A batch of rows was written (`ok`) or put back for a retry.
    fn observe_flush(&self, rows: usize, ok: bool);
}

impl LedgerObserver for () {
    fn observe_dropped(&self, _: u64) {}
    fn observe_flush(&self, _: usize, _: bool) {}
}

struct Pending {
    counts: UsageCounts,
    labels: Arc<BTreeMap<String, String>>,
    key_labels: Arc<BTreeMap<String, String>>,
}

/// The in-memory side of the ledger: sharded pending rows, bounded.
pub struct Ledger {
    shards: Box<[Mutex<std::collections::HashMap<UsageKey, Pending, FastState>>]>,
    hasher: FastState,
    rows_per_shard: usize,
    observer: Arc<dyn LedgerObserver>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("max_rows", &(self.rows_per_shard * SHARDS))
            .field("pending_rows", &self.pending_rows())
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger that holds at most about `max_rows` pending rows (rounded up to a multiple of
    /// its shard count) until they are written.
    pub fn new(max_rows: usize) -> Self {
        let rows_per_shard = max_rows.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: FastState::default(),
            rows_per_shard,
            observer: Arc::new(()),
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn LedgerObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Books one Check decision at `at`.
    pub fn record_check(&self, at: DateTime<Utc>, booking: &Booking<'_>, outcome: CheckOutcome) {
        let counts = match outcome {
            CheckOutcome::Allowed => UsageCounts {
                requests: 1,
                ..UsageCounts::default()
            },
            CheckOutcome::RateLimited => UsageCounts {
                rate_limited: 1,
                ..UsageCounts::default()
            },
        };
        self.add(at, booking, &counts);
    }

    /// Books one metered response's tokens and cost at `at`.
    pub fn record_charge(
        &self,
        at: DateTime<Utc>,
        booking: &Booking<'_>,
        charge: &Charge,
        cost: Amount,
    ) {
        let usage = charge.usage;
        let counts = UsageCounts {
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
            total_tokens: usage.total,
            estimated_tokens: if charge.estimated { usage.total } else { 0 },
            cost,
            ..UsageCounts::default()
        };
        self.add(at, booking, &counts);
    }

    fn add(&self, at: DateTime<Utc>, booking: &Booking<'_>, counts: &UsageCounts) {
        let attributes = booking.attributes;
        let attribute = |read: fn(&Subscription) -> &Option<String>| {
            attributes.and_then(|s| read(s).clone()).unwrap_or_default()
        };
        let key = UsageKey {
            hour: at.timestamp().div_euclid(3600) * 3600,
            user: booking.user.to_owned(),
            key_id: booking.key_id.to_owned(),
            subscription: booking.subscription.to_owned(),
            model: booking.model.to_owned(),
            organization_id: attribute(|s| &s.organization_id),
            cost_center: attribute(|s| &s.cost_center),
        };
        let labels = || Arc::new(attributes.map(|s| s.labels.clone()).unwrap_or_default());
        let key_labels = booking.key_labels.filter(|labels| !labels.is_empty());
        self.merge(key, counts, labels, || {
            key_labels.map(|l| Arc::new(l.clone()))
        });
    }

    /// Adds `counts` to the row of `key`, creating it if there is room; else counts a drop.
    fn merge(
        &self,
        key: UsageKey,
        counts: &UsageCounts,
        labels: impl FnOnce() -> Arc<BTreeMap<String, String>>,
        key_labels: impl FnOnce() -> Option<Arc<BTreeMap<String, String>>>,
    ) -> bool {
        let shard = &self.shards[self.shard_of(&key)];
        let Ok(mut rows) = shard.lock() else {
            self.observer.observe_dropped(1);
            return false;
        };
        if let Some(pending) = rows.get_mut(&key) {
            pending.counts.add(counts);
            if pending.key_labels.is_empty()
                && let Some(key_labels) = key_labels()
            {
                pending.key_labels = key_labels;
            }
            return true;
        }
        if rows.len() >= self.rows_per_shard {
            drop(rows);
            self.observer.observe_dropped(1);
            return false;
        }
        rows.insert(
            key,
            Pending {
                counts: *counts,
                labels: labels(),
                key_labels: key_labels().unwrap_or_default(),
            },
        );
        true
    }

    fn shard_of(&self, key: &UsageKey) -> usize {
        let mut hasher = self.hasher.build_hasher();
        key.hash(&mut hasher);
        (std::hash::Hasher::finish(&hasher) as usize) % SHARDS
    }

    /// Takes every pending row, leaving the buffer empty.
    pub fn take_batch(&self) -> Vec<UsageRow> {
        let mut batch = Vec::new();
        for shard in self.shards.iter() {
            let drained = match shard.lock() {
                Ok(mut rows) => std::mem::take(&mut *rows),
                Err(_) => continue,
            };
            batch.extend(drained.into_iter().map(|(key, pending)| UsageRow {
                key,
                counts: pending.counts,
                labels: pending.labels,
                key_labels: pending.key_labels,
            }));
        }
        batch
    }

    /// Rows waiting to be written.
    pub fn pending_rows(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |rows| rows.len()))
            .sum()
    }

    /// The most rows the buffer holds.
    pub fn max_rows(&self) -> usize {
        self.rows_per_shard * SHARDS
    }
}

/// Books metered responses in the ledger (tokens and cost), then hands them to `next` (the
/// limits' charge and the metrics' count).
pub struct LedgerTokenSink {
    ledger: Arc<Ledger>,
    policy: Arc<ArcSwap<Policy>>,
    next: Arc<dyn TokenSink>,
}

impl LedgerTokenSink {
    pub fn new(
        ledger: Arc<Ledger>,
        policy: Arc<ArcSwap<Policy>>,
        next: Arc<dyn TokenSink>,
    ) -> Self {
        Self {
            ledger,
            policy,
            next,
        }
    }
}

impl std::fmt::Debug for LedgerTokenSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerTokenSink").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenSink for LedgerTokenSink {
    async fn charge(&self, subject: &UsageSubject, charge: &Charge) {
        book_charge(
            &self.ledger,
            &self.policy.load(),
            subject,
            charge,
            Utc::now(),
        );
        self.next.charge(subject, charge).await;
    }
}

/// The cost of `charge` under the subscription and model of `subscription_key`: zero when the
/// policy no longer knows them or sets no rate.
pub fn cost_of(policy: &Policy, subscription_key: &SubscriptionKey, charge: &Charge) -> Amount {
    let Some((subscription, model_namespace, model_name)) = subscription_key.parts() else {
        return Amount::ZERO;
    };
    let Some(subscription) = policy.find_subscription(subscription) else {
        return Amount::ZERO;
    };
    let Ok(model) = policy.find_model(Some(model_namespace), model_name) else {
        return Amount::ZERO;
    };
    policy
        .subscription_model(subscription, model)
        .map_or(Amount::ZERO, |entry| {
            let usage = charge.usage;
            entry
                .billing
                .cost(usage.prompt, usage.completion, usage.total)
        })
}

/// Books one metered response. A subscription the policy no longer knows is still booked, under
/// its name without chargeback attributes: the tokens were served.
fn book_charge(
    ledger: &Ledger,
    policy: &Policy,
    subject: &UsageSubject,
    charge: &Charge,
    at: DateTime<Utc>,
) {
    let Some((subscription, model_namespace, model_name)) = subject.subscription_key.parts() else {
        return;
    };
    let cost = cost_of(policy, &subject.subscription_key, charge);
    let model = format!("{model_namespace}/{model_name}");
    let booking = Booking {
        user: &subject.user,
        key_id: &subject.key_id,
        subscription,
        attributes: policy.find_subscription(subscription),
        model: &model,
        key_labels: None,
    };
    ledger.record_charge(at, &booking, charge, cost);
}

#[cfg(test)]
mod tests;
