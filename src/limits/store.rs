//! Where counters live: the [`CounterStore`] contract and the in-process store (one replica).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Fast hashing of the long counter keys (they are built by us, not sent by clients).
type FastState = foldhash::fast::RandomState;

/// One counter touched by [`CounterStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSpec {
    /// Full key; all counters of one call share the part up to the first `}` (same owner), which
    /// the in-process store shards on and Redis Cluster hashes on.
    pub key: String,
    /// The counter may not go above this.
    pub limit: u64,
    /// Room the request needs: admitted only if `value + cost <= limit`.
    pub cost: u64,
    /// Added when every counter of the call has room (0 to only compare).
    pub add: u64,
    /// When the window ends (epoch ms): the counter is forgotten after that.
    pub expires_at_millis: u64,
}

/// Added unconditionally by [`CounterStore::add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterCharge {
    pub key: String,
    pub amount: u64,
    pub expires_at_millis: u64,
}

/// The answer of [`CounterStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// Whether every counter had room, and so was incremented.
    pub admitted: bool,
    /// Each counter's value afterwards, in the order asked.
    pub values: Vec<u64>,
}

/// The counter store could not answer. Always transient: the next request may succeed.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
    #[error("counter store full: {0} live counters")]
    Full(usize),
}

impl CounterError {
    pub fn is_transient(&self) -> bool {
        true
    }
}

/// Counters of fixed windows, keyed by strings that already name the window. Every method is ONE
/// atomic operation against the store, whatever the number of counters.
#[async_trait::async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// If every counter has room for its `cost`, adds each `add`; returns the values either way.
    async fn acquire(
        &self,
        counters: &[CounterSpec],
        now_millis: u64,
    ) -> Result<Acquired, CounterError>;
    /// Adds each amount (tokens already spent cannot be refused).
    async fn add(&self, charges: &[CounterCharge], now_millis: u64) -> Result<(), CounterError>;
    /// Current values; an unknown or expired counter is 0.
    async fn read(&self, keys: &[String], now_millis: u64) -> Result<Vec<u64>, CounterError>;
    /// Whether the store answers, for readiness.
    async fn ping(&self) -> Result<(), CounterError>;
    /// `in-process` or `redis`, for logs and `/ready`.
    fn kind(&self) -> &'static str;
}

/// Counters in this process: exact for one replica, lost on restart.
///
/// Sharded by the counters' owner part so that unrelated users do not contend; expired windows
/// are swept from a shard when it has grown since the last sweep, and the total number of live
/// counters is capped so that memory stays bounded whatever the traffic.
#[derive(Debug)]
pub struct InProcessCounterStore {
    shards: Vec<Mutex<Shard>>,
    max_counters_per_shard: usize,
    shard_hasher: FastState,
}

#[derive(Debug, Default)]
struct Shard {
    counters: HashMap<String, Counter, FastState>,
    /// Sweep again once the shard holds this many counters.
    sweep_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    value: u64,
    expires_at_millis: u64,
}

const SHARDS: usize = 32;
const MIN_SWEEP_AT: usize = 256;
/// About 100 bytes per counter: a million live counters stay around 100 MiB.
pub const DEFAULT_MAX_COUNTERS: usize = 1_000_000;

impl Default for InProcessCounterStore {
    fn default() -> Self {
        Self::with_max_counters(DEFAULT_MAX_COUNTERS)
    }
}

impl InProcessCounterStore {
    pub fn with_max_counters(max_counters: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        counters: HashMap::default(),
                        sweep_at: MIN_SWEEP_AT,
                    })
                })
                .collect(),
            max_counters_per_shard: (max_counters / SHARDS).max(1),
            shard_hasher: FastState::default(),
        }
    }

    /// Live counters (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).counters.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let owner = key.split_once('}').map_or(key, |(owner, _)| owner);
        let position =
            usize::try_from(self.shard_hasher.hash_one(owner) % SHARDS as u64).unwrap_or_default();
        &self.shards[position]
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding the lock leaves plain numbers behind, still usable.
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shard {
    fn value(&self, key: &str, now_millis: u64) -> u64 {
        self.counters
            .get(key)
            .filter(|counter| counter.expires_at_millis > now_millis)
            .map_or(0, |counter| counter.value)
    }

    fn add(
        &mut self,
        key: &str,
        amount: u64,
        expires_at_millis: u64,
        now_millis: u64,
        max: usize,
    ) -> Result<u64, CounterError> {
        if let Some(counter) = self.counters.get_mut(key) {
            if counter.expires_at_millis <= now_millis {
                *counter = Counter {
                    value: 0,
                    expires_at_millis,
                };
            }
            counter.value = counter.value.saturating_add(amount);
            return Ok(counter.value);
        }
        if self.counters.len() >= self.sweep_at.min(max) {
            self.counters
                .retain(|_, counter| counter.expires_at_millis > now_millis);
            self.sweep_at = (self.counters.len() * 2).max(MIN_SWEEP_AT);
        }
        if self.counters.len() >= max {
            return Err(CounterError::Full(self.counters.len()));
        }
        self.counters.insert(
            key.to_owned(),
            Counter {
                value: amount,
                expires_at_millis,
            },
        );
        Ok(amount)
    }
}

#[async_trait::async_trait]
impl CounterStore for InProcessCounterStore {
    async fn acquire(
        &self,
        counters: &[CounterSpec],
        now_millis: u64,
    ) -> Result<Acquired, CounterError> {
        let Some(first) = counters.first() else {
            return Ok(Acquired {
                admitted: true,
                values: Vec::new(),
            });
        };
        // All counters of one call share an owner, hence a shard: one lock makes it atomic.
        debug_assert!(
            counters
                .iter()
                .all(|c| std::ptr::eq(self.shard(&c.key), self.shard(&first.key)))
        );
        let mut shard = lock(self.shard(&first.key));
        let mut values: Vec<u64> = counters
            .iter()
            .map(|counter| shard.value(&counter.key, now_millis))
            .collect();
        let admitted = counters
            .iter()
            .zip(&values)
            .all(|(counter, value)| value.saturating_add(counter.cost) <= counter.limit);
        if admitted {
            for (counter, value) in counters.iter().zip(values.iter_mut()) {
                if counter.add > 0 {
                    *value = shard.add(
                        &counter.key,
                        counter.add,
                        counter.expires_at_millis,
                        now_millis,
                        self.max_counters_per_shard,
                    )?;
                }
            }
        }
        Ok(Acquired { admitted, values })
    }

    async fn add(&self, charges: &[CounterCharge], now_millis: u64) -> Result<(), CounterError> {
        for charge in charges {
            lock(self.shard(&charge.key)).add(
                &charge.key,
                charge.amount,
                charge.expires_at_millis,
                now_millis,
                self.max_counters_per_shard,
            )?;
        }
        Ok(())
    }

    async fn read(&self, keys: &[String], now_millis: u64) -> Result<Vec<u64>, CounterError> {
        Ok(keys
            .iter()
            .map(|key| lock(self.shard(key)).value(key, now_millis))
            .collect())
    }

    async fn ping(&self) -> Result<(), CounterError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, limit: u64, cost: u64, add: u64) -> CounterSpec {
        CounterSpec {
            key: key.to_owned(),
            limit,
            cost,
            add,
            expires_at_millis: 60_000,
        }
    }

    #[tokio::test]
    async fn acquire_counts_up_to_the_limit_and_then_refuses_without_counting() {
        let store = InProcessCounterStore::default();
        let counters = [spec("{u}r", 2, 1, 1)];

        let first = store.acquire(&counters, 0).await.unwrap();
        let second = store.acquire(&counters, 0).await.unwrap();
        let third = store.acquire(&counters, 0).await.unwrap();

        assert_eq!((first.admitted, first.values), (true, vec![1]));
        assert_eq!((second.admitted, second.values), (true, vec![2]));
        assert_eq!((third.admitted, third.values), (false, vec![2]));
    }

    #[tokio::test]
    async fn one_full_counter_refuses_the_call_and_leaves_the_others_untouched() {
        let store = InProcessCounterStore::default();
        store
            .add(
                &[CounterCharge {
                    key: "{u}t".to_owned(),
                    amount: 100,
                    expires_at_millis: 60_000,
                }],
                0,
            )
            .await
            .unwrap();

        let refused = store
            .acquire(&[spec("{u}r", 5, 1, 1), spec("{u}t", 100, 1, 0)], 0)
            .await
            .unwrap();

        assert!(!refused.admitted);
        assert_eq!(refused.values, vec![0, 100]);
        assert_eq!(store.read(&["{u}r".to_owned()], 0).await.unwrap(), [0]);
    }

    #[tokio::test]
    async fn an_expired_counter_reads_as_zero_and_starts_over() {
        let store = InProcessCounterStore::default();
        let counters = [spec("{u}r", 1, 1, 1)];
        store.acquire(&counters, 0).await.unwrap();

        let after_expiry = store.acquire(&counters, 60_000).await.unwrap();

        assert_eq!(
            (after_expiry.admitted, after_expiry.values),
            (true, vec![1])
        );
    }

    #[tokio::test]
    async fn expired_windows_are_dropped_and_memory_stays_bounded() {
        let store = InProcessCounterStore::with_max_counters(SHARDS * 300);
        // One owner, so every counter lands in the same (capped) shard.
        for n in 0..300 {
            let key = format!("{{user}}r{n}");
            store.acquire(&[spec(&key, 10, 1, 1)], 0).await.unwrap();
        }
        let full = store.acquire(&[spec("{user}x", 10, 1, 1)], 0).await;

        let later = store
            .acquire(&[spec("{user}x", 10, 1, 1)], 60_000)
            .await
            .unwrap();

        assert!(matches!(full, Err(CounterError::Full(_))), "got {full:?}");
        assert!(later.admitted);
        assert_eq!(store.len(), 1, "expired counters were swept");
    }
}
