//! The in-process key cache: positive entries by hash, a bounded negative cache for unknown keys,
//! and coalescing of concurrent misses for one key into a single store query.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use crate::key::KeyHash;
use crate::store::{KeyRecord, KeyStore, StoreError};

/// Sizes and lifetimes of both caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub capacity: u64,
    /// Safety net only: status and expiry are judged at request time, and revocations on this
    /// replica evict at once.
    pub ttl: Duration,
    pub negative_capacity: u64,
    pub negative_ttl: Duration,
}

/// How a lookup was answered, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    NegativeHit,
    /// This call (or a concurrent one it joined) queried the store.
    Miss,
}

/// The answer to "which key has this hash?".
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<KeyRecord>),
    NotFound,
}

/// Keys by hash, in front of a [`KeyStore`].
#[derive(Clone)]
pub struct KeyCache {
    known: Cache<KeyHash, Arc<KeyRecord>>,
    unknown: Cache<KeyHash, ()>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("known", &self.known.entry_count())
            .field("unknown", &self.unknown.entry_count())
            .finish()
    }
}

/// Why a miss could not be resolved; shared by every caller coalesced on that miss.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("no such key")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            known: Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.ttl)
                .build(),
            unknown: Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .build(),
        }
    }

    /// The record for `hash`, from the cache or else from the store; concurrent misses for the
    /// same hash wait for one query. Store errors are not cached.
    pub async fn lookup<S: KeyStore>(
        &self,
        hash: &KeyHash,
        store: &S,
    ) -> Result<(Lookup, CacheOutcome), StoreError> {
        // Known keys first: they are the hot path, and the miss path's large future (moka's
        // entry machinery and the store query) is boxed so every Check future stays small.
        if let Some(record) = self.known.get(hash).await {
            return Ok((Lookup::Found(record), CacheOutcome::Hit));
        }
        if self.unknown.contains_key(hash) {
            return Ok((Lookup::NotFound, CacheOutcome::NegativeHit));
        }
        Box::pin(self.load(hash, store)).await
    }

    async fn load<S: KeyStore>(
        &self,
        hash: &KeyHash,
        store: &S,
    ) -> Result<(Lookup, CacheOutcome), StoreError> {
        let entry = self
            .known
            .entry_by_ref(hash)
            .or_try_insert_with(async {
                match store.find_by_hash(hash).await {
                    Ok(Some(record)) => Ok(Arc::new(record)),
                    Ok(None) => {
                        self.unknown.insert(*hash, ()).await;
                        Err(LoadError::NotFound)
                    }
                    Err(error) => Err(LoadError::Store(error)),
                }
            })
            .await;
        match entry {
            Ok(entry) => {
                let outcome = if entry.is_fresh() {
                    CacheOutcome::Miss
                } else {
                    CacheOutcome::Hit
                };
                Ok((Lookup::Found(entry.into_value()), outcome))
            }
            Err(shared) => match shared.as_ref() {
                LoadError::NotFound => Ok((Lookup::NotFound, CacheOutcome::Miss)),
                LoadError::Store(error) => Err(error.clone()),
            },
        }
    }

    /// Forgets a key (after revocation, or when a new key with this hash was minted).
    pub async fn invalidate(&self, hash: &KeyHash) {
        self.known.invalidate(hash).await;
        self.unknown.invalidate(hash).await;
    }

    /// Forgets everything, e.g. after missing invalidation notices.
    pub fn invalidate_all(&self) {
        self.known.invalidate_all();
        self.unknown.invalidate_all();
    }

    /// Entry counts (approximate, as moka reports them): known, unknown.
    pub fn sizes(&self) -> (u64, u64) {
        (self.known.entry_count(), self.unknown.entry_count())
    }
}
