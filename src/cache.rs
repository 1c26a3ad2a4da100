//! The in-process key cache: positive entries by hash, a bounded negative cache for unknown keys,
//! coalescing of concurrent store queries for one key, and stale-if-error during outages.
//!
//! Freshness: an entry younger than the TTL is used as is. An older one is re-read; when the
//! store fails transiently (unreachable, timed out, breaker open) the old record keeps being
//! used until it is `max_staleness` old. Status and expiry are judged by the caller at request
//! time, so a stale record still stops working at its expiry. Invalidations (NOTIFY, revocations
//! here) evict at once whatever the age.
//!
//! Invalidation race: a query that started before an invalidation of its hash may return the
//! row as it was before. Every invalidation bumps an epoch; a load caches its result only if the
//! epoch did not move while it ran (checked again after inserting, since an invalidation may
//! land between the check and the insert). A global epoch rather than one per hash: invalidations
//! are rare, and the only cost of a false alarm is one more query later.
//!
//! Bounded work for unknown keys: with a [`LookupBudget`], a hash that neither cache holds may
//! only be queried after taking a token from it (per peer and global); hits, negative hits and
//! re-reads of entries we hold never ask it, so the hot path costs the same. Nor do hashes the
//! [`KnownKeys`] set holds (keys that exist, loaded at start-up and noted on every change), so a
//! cold replica's legitimate traffic is not mistaken for a flood.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::clock::{Clock, SystemClock};
use crate::key::KeyHash;
use crate::known_keys::KnownKeys;
use crate::lookup_budget::{LookupBudget, Throttled};
use crate::store::{KeyRecord, KeyStore, StoreError};

/// The caches' hasher: keys are SHA-256 digests, so a fast seeded hash is enough (moka's default
/// SipHash costs a few hundred nanoseconds per Check on the hot path).
type Hasher = foldhash::fast::RandomState;
/// Sizes and lifetimes of both caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub capacity: u64,
    /// How long an entry is used without re-reading it. A safety net only: status and expiry are
    /// judged at request time, and invalidations evict at once.
    pub ttl: Duration,
    /// How old an entry may get while the store fails transiently (stale-if-error); at or below
    /// `ttl`, a failed re-read is an error as soon as the TTL is over.
    pub max_staleness: Duration,
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
    /// The entry was past its TTL and the store failed transiently: the old record was used.
    Stale,
}

/// The answer to "which key has this hash?".
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<KeyRecord>),
    NotFound,
}

/// Why a lookup has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The store failed (see [`StoreError::is_transient`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hash is cached nowhere and the unknown-key budget is spent: no query was sent.
    #[error(transparent)]
    Throttled(#[from] Throttled),
}

/// The cache's invalidation epoch when a preload started reading (see [`KeyCache::preload`]).
#[derive(Debug, Clone, Copy)]
pub struct PreloadTicket(u64);

#[derive(Debug, Clone)]
struct Cached {
    record: Arc<KeyRecord>,
    loaded_at: Instant,
}

/// Keys by hash, in front of a [`KeyStore`].
#[derive(Clone)]
pub struct KeyCache {
    known: Cache<KeyHash, Cached, Hasher>,
    unknown: Cache<KeyHash, (), Hasher>,
    /// Store queries under way, so concurrent lookups of one hash share one query. Entries live
    /// only until their query's leader removes them.
    in_flight: Cache<KeyHash, Option<Arc<KeyRecord>>, Hasher>,
    epoch: Arc<AtomicU64>,
    /// Entries loaded at or before `created + revalidate_before` nanoseconds count as past their
    /// TTL (see [`KeyCache::revalidate_all`]); 0: none.
    revalidate_before: Arc<AtomicU64>,
    created: Instant,
    ttl: Duration,
    max_staleness: Duration,
    /// Read for ages (its monotonic instant); a manual one lets tests age entries without sleeping.
    clock: Arc<dyn Clock>,
    /// Queries for hashes no cache holds take a token from it first (none: unbounded).
    budget: Option<Arc<LookupBudget>>,
    /// Hashes of keys that exist, whose queries never wait for the budget (none: all wait).
    known_keys: Option<Arc<KnownKeys>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("known", &self.known.entry_count())
            .field("unknown", &self.unknown.entry_count())
            .field("ttl", &self.ttl)
            .field("max_staleness", &self.max_staleness)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// A cache that reads the time from `clock` (moka still evicts on its own clock, after
    /// `max(ttl, max_staleness)`, which only bounds memory).
    pub fn with_clock(settings: CacheSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            known: Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.ttl.max(settings.max_staleness))
                .build_with_hasher(Hasher::default()),
            unknown: Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .build_with_hasher(Hasher::default()),
            in_flight: Cache::builder()
                .max_capacity(settings.capacity)
                // Only a safety net: each query's leader removes its entry when done.
                .time_to_live(Duration::from_secs(1))
                .build_with_hasher(Hasher::default()),
            epoch: Arc::new(AtomicU64::new(0)),
            revalidate_before: Arc::new(AtomicU64::new(0)),
            created: clock.instant(),
            ttl: settings.ttl,
            max_staleness: settings.max_staleness,
            clock,
            budget: None,
            known_keys: None,
        }
    }

    /// Keeps a [`KnownKeys`] set: hashes it holds skip the lookup budget (see the module's doc).
    pub fn with_known_key_filter(mut self) -> Self {
        self.known_keys = Some(Arc::new(KnownKeys::new()));
        self
    }

    /// The hashes of keys known to exist, which skip the lookup budget; a start-up load fills it.
    pub fn known_keys(&self) -> Option<&Arc<KnownKeys>> {
        self.known_keys.as_ref()
    }

    fn note_known(&self, hash: &KeyHash) {
        if let Some(known) = &self.known_keys {
            known.insert(hash);
        }
    }

    /// Bounds the queries for hashes that no cache holds by `budget` (see the module's doc).
    pub fn with_lookup_budget(mut self, budget: Arc<LookupBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The record for `hash`, from the cache or else from the store; concurrent queries for the
    /// same hash are shared. Store errors are not cached; a transient one is answered with the
    /// old record while it is younger than the maximum staleness. A hash no cache holds is
    /// queried only within the lookup budget of `peer` (the client's address, when known).
    pub async fn lookup<S: KeyStore>(
        &self,
        hash: &KeyHash,
        store: &S,
        peer: Option<&str>,
    ) -> Result<(Lookup, CacheOutcome), LookupError> {
        // Positive first: on the hot path nearly every lookup is a hit.
        let stale = match self.known.get(hash).await {
            Some(entry) if self.age(&entry) < self.ttl && !self.revalidation_due(&entry) => {
                return Ok((Lookup::Found(entry.record), CacheOutcome::Hit));
            }
            Some(entry) => Some(entry),
            None => {
                if self.unknown.contains_key(hash) {
                    return Ok((Lookup::NotFound, CacheOutcome::NegativeHit));
                }
                None
            }
        };
        if stale.is_none()
            && let Some(budget) = &self.budget
            && !self
                .known_keys
                .as_ref()
                .is_some_and(|known| known.contains(hash))
        {
            budget.try_acquire(peer, self.clock.instant())?;
        }
        // Boxed: the miss path's future (moka's coalescing and the store query) is large, and
        // inline it would make every Check future, hits included, that large to create and move.
        match Box::pin(self.fetch(hash, store)).await {
            Ok(Some(record)) => Ok((Lookup::Found(record), CacheOutcome::Miss)),
            Ok(None) => Ok((Lookup::NotFound, CacheOutcome::Miss)),
            Err(error) if error.is_transient() => match stale {
                Some(entry) if self.age(&entry) < self.max_staleness => {
                    Ok((Lookup::Found(entry.record), CacheOutcome::Stale))
                }
                _ => Err(error.into()),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// Queries the store once for all concurrent callers and caches the answer, unless an
    /// invalidation ran meanwhile.
    async fn fetch<S: KeyStore>(
        &self,
        hash: &KeyHash,
        store: &S,
    ) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let shared = self
            .in_flight
            .try_get_with_by_ref(hash, async {
                let epoch = self.epoch.load(Ordering::SeqCst);
                let found = store.find_by_hash(hash).await?;
                match &found {
                    Some(record) => {
                        self.note_known(hash);
                        let record = Arc::new(record.clone());
                        let entry = Cached {
                            record: record.clone(),
                            loaded_at: self.clock.instant(),
                        };
                        if self.epoch.load(Ordering::SeqCst) == epoch {
                            self.known.insert(*hash, entry).await;
                            if self.epoch.load(Ordering::SeqCst) != epoch {
                                self.known.invalidate(hash).await;
                            }
                        }
                        Ok(Some(record))
                    }
                    None => {
                        self.known.invalidate(hash).await;
                        if self.epoch.load(Ordering::SeqCst) == epoch {
                            self.unknown.insert(*hash, ()).await;
                            if self.epoch.load(Ordering::SeqCst) != epoch {
                                self.unknown.invalidate(hash).await;
                            }
                        }
                        Ok(None)
                    }
                }
            })
            .await;
        self.in_flight.invalidate(hash).await;
        shared.map_err(|error: Arc<StoreError>| (*error).clone())
    }

    fn revalidation_due(&self, entry: &Cached) -> bool {
        let loaded = entry.loaded_at.saturating_duration_since(self.created);
        u64::try_from(loaded.as_nanos()).unwrap_or(u64::MAX)
            < self.revalidate_before.load(Ordering::Acquire)
    }

    fn age(&self, entry: &Cached) -> Duration {
        self.clock
            .instant()
            .saturating_duration_since(entry.loaded_at)
    }

    /// Forgets a key (after revocation, or when a new key with this hash was minted), including
    /// what a query under way may be about to cache. Every invalidation comes from a change to a
    /// stored key, so the hash is noted as known: its next query needs no budget token.
    pub async fn invalidate(&self, hash: &KeyHash) {
        self.note_known(hash);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.in_flight.invalidate(hash).await;
        self.known.invalidate(hash).await;
        self.unknown.invalidate(hash).await;
    }

    /// Treats every entry as past its TTL, e.g. after possibly missing invalidation notices:
    /// each is re-read before its next use, but stays usable stale-if-error should the store
    /// fail (a listener that reconnects during a flapping outage must not empty the cache).
    pub fn revalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.in_flight.invalidate_all();
        let now = self.clock.instant().saturating_duration_since(self.created);
        let cutoff = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.revalidate_before.fetch_max(cutoff, Ordering::AcqRel);
        self.unknown.invalidate_all();
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.in_flight.invalidate_all();
        self.known.invalidate_all();
        self.unknown.invalidate_all();
    }

    /// Taken before a preload reads records: [`KeyCache::preload`] keeps what was read only if
    /// no invalidation ran since.
    pub fn preload_ticket(&self) -> PreloadTicket {
        PreloadTicket(self.epoch.load(Ordering::SeqCst))
    }

    /// Caches records a warm start read from the store after taking `ticket`, so that the
    /// first Checks of a new replica are hits rather than a storm of misses. Returns `false`,
    /// keeping none of them, when an invalidation ran since the ticket was taken (a record read
    /// before a revocation must never outlive it): read them again. Hashes already cached keep
    /// their entry; a preloaded hash leaves the negative cache.
    pub async fn preload(&self, ticket: PreloadTicket, records: Vec<KeyRecord>) -> bool {
        if self.epoch.load(Ordering::SeqCst) != ticket.0 {
            return false;
        }
        let loaded_at = self.clock.instant();
        let mut inserted = Vec::with_capacity(records.len());
        for record in records {
            let hash = record.key_hash;
            self.note_known(&hash);
            if self.known.contains_key(&hash) {
                continue;
            }
            let entry = Cached {
                record: Arc::new(record),
                loaded_at,
            };
            self.known.insert(hash, entry).await;
            self.unknown.invalidate(&hash).await;
            inserted.push(hash);
        }
        // Checked again after inserting: an invalidation may have landed meanwhile.
        if self.epoch.load(Ordering::SeqCst) != ticket.0 {
            for hash in &inserted {
                self.known.invalidate(hash).await;
            }
            return false;
        }
        // So that `maas_authz_cache_entries` shows the preload as it goes (moka counts lazily).
        self.known.run_pending_tasks().await;
        true
    }

    /// Entry counts (approximate, as moka reports them): known, unknown.
    pub fn sizes(&self) -> (u64, u64) {
        (self.known.entry_count(), self.unknown.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use chrono::Utc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{KeyRecordId, KeyStatus, NewKey};

    const SETTINGS: CacheSettings = CacheSettings {
        capacity: 100,
        ttl: Duration::from_secs(30),
        max_staleness: Duration::from_secs(900),
        negative_capacity: 100,
        negative_ttl: Duration::from_secs(5),
    };

    /// A store that answers from a script, counting queries.
    #[derive(Default)]
    struct ScriptedStore {
        answers: Mutex<VecDeque<Result<Option<KeyRecord>, StoreError>>>,
        queries: AtomicUsize,
        /// Runs inside `find_by_hash`, after the query "was sent": to interleave an invalidation.
        during_query: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl ScriptedStore {
        fn answering(answers: Vec<Result<Option<KeyRecord>, StoreError>>) -> Self {
            Self {
                answers: Mutex::new(answers.into()),
                ..Self::default()
            }
        }

        fn queries(&self) -> usize {
            self.queries.load(Ordering::SeqCst)
        }
    }

    impl KeyStore for ScriptedStore {
        async fn find_by_hash(&self, _: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            let hook = self.during_query.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
                tokio::task::yield_now().await;
            }
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Err(StoreError::Unavailable("script exhausted".into())))
        }
        async fn insert_key(&self, _: &NewKey) -> Result<KeyRecord, StoreError> {
            unreachable!()
        }
        async fn find_by_id(&self, _: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
            unreachable!()
        }
        async fn revoke_key(&self, _: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
            unreachable!()
        }
        async fn list_keys_of_user(&self, _: &str, _: i64) -> Result<Vec<KeyRecord>, StoreError> {
            unreachable!()
        }
    }

    fn record(hash: KeyHash) -> KeyRecord {
        KeyRecord {
            id: KeyRecordId::new_random(),
            username: "alice".into(),
            name: "k".into(),
            description: None,
            key_hash: hash,
            status: KeyStatus::Active,
            groups: vec![],
            subscription: "free".into(),
            created_at: Utc::now(),
            expires_at: None,
            last_used_at: None,
            ephemeral: false,
            labels: Default::default(),
        }
    }

    fn hash() -> KeyHash {
        crate::key::ApiKey::generate().unwrap().hash()
    }

    /// A clock the test moves by hand.
    fn manual_clock() -> (Arc<dyn Clock>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (clock.clone(), clock)
    }

    fn advance(now: &ManualClock, by: Duration) {
        now.advance(by);
    }

    fn outage() -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::CircuitOpen)
    }

    #[tokio::test]
    async fn a_preloaded_key_is_a_hit_without_any_query() {
        let hash = hash();
        let store = ScriptedStore::default();
        let cache = KeyCache::new(SETTINGS);
        let ticket = cache.preload_ticket();

        let kept = cache.preload(ticket, vec![record(hash)]).await;
        let (found, outcome) = cache.lookup(&hash, &store, None).await.unwrap();

        assert!(kept);
        assert_eq!(outcome, CacheOutcome::Hit);
        assert!(matches!(found, Lookup::Found(_)));
        assert_eq!(store.queries(), 0);
    }

    #[tokio::test]
    async fn a_preload_read_before_a_revocation_keeps_nothing() {
        let (revoked, other) = (hash(), hash());
        let store = ScriptedStore::answering(vec![Ok(None)]);
        let cache = KeyCache::new(SETTINGS);
        let ticket = cache.preload_ticket();
        cache.invalidate(&revoked).await;

        let kept = cache
            .preload(ticket, vec![record(revoked), record(other)])
            .await;
        let (found, outcome) = cache.lookup(&revoked, &store, None).await.unwrap();

        assert!(!kept, "the caller must read the page again");
        assert_eq!(cache.sizes().0, 0);
        assert_eq!(outcome, CacheOutcome::Miss);
        assert!(matches!(found, Lookup::NotFound));
    }

    #[tokio::test]
    async fn a_preload_leaves_a_fresher_entry_alone() {
        let hash = hash();
        let mut fresher = record(hash);
        fresher.name = "fresher".into();
        let store = ScriptedStore::answering(vec![Ok(Some(fresher))]);
        let cache = KeyCache::new(SETTINGS);
        let ticket = cache.preload_ticket();
        cache.lookup(&hash, &store, None).await.unwrap();

        cache.preload(ticket, vec![record(hash)]).await;
        let (found, _) = cache.lookup(&hash, &store, None).await.unwrap();

        let Lookup::Found(found) = found else {
            panic!("expected the key")
        };
        assert_eq!(found.name, "fresher");
    }

    #[tokio::test]
    async fn a_known_key_is_read_once_and_then_served_from_the_cache() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![Ok(Some(record(hash)))]);
        let cache = KeyCache::new(SETTINGS);

        let (_, first) = cache.lookup(&hash, &store, None).await.unwrap();
        let (found, second) = cache.lookup(&hash, &store, None).await.unwrap();

        assert_eq!((first, second), (CacheOutcome::Miss, CacheOutcome::Hit));
        assert!(matches!(found, Lookup::Found(_)));
        assert_eq!(store.queries(), 1);
    }

    #[tokio::test]
    async fn an_entry_past_its_ttl_is_read_again() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![Ok(Some(record(hash))), Ok(Some(record(hash)))]);
        let (clock, now) = manual_clock();
        let cache = KeyCache::with_clock(SETTINGS, clock);
        cache.lookup(&hash, &store, None).await.unwrap();

        advance(&now, SETTINGS.ttl);
        let (_, outcome) = cache.lookup(&hash, &store, None).await.unwrap();

        assert_eq!(outcome, CacheOutcome::Miss);
        assert_eq!(store.queries(), 2);
    }

    #[tokio::test]
    async fn a_stale_entry_is_used_while_the_store_is_unavailable() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![Ok(Some(record(hash))), outage()]);
        let (clock, now) = manual_clock();
        let cache = KeyCache::with_clock(SETTINGS, clock);
        cache.lookup(&hash, &store, None).await.unwrap();

        advance(&now, SETTINGS.ttl * 2);
        let (found, outcome) = cache.lookup(&hash, &store, None).await.unwrap();

        assert_eq!(outcome, CacheOutcome::Stale);
        assert!(matches!(found, Lookup::Found(r) if r.key_hash == hash));
    }

    #[tokio::test]
    async fn a_stale_entry_beyond_the_maximum_staleness_is_an_error() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![Ok(Some(record(hash))), outage()]);
        let (clock, now) = manual_clock();
        let cache = KeyCache::with_clock(SETTINGS, clock);
        cache.lookup(&hash, &store, None).await.unwrap();

        advance(&now, SETTINGS.max_staleness);
        let error = cache.lookup(&hash, &store, None).await.unwrap_err();

        assert!(matches!(error, LookupError::Store(StoreError::CircuitOpen)));
    }

    #[tokio::test]
    async fn a_stale_entry_is_not_used_after_a_non_transient_error() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![
            Ok(Some(record(hash))),
            Err(StoreError::CorruptRow("bad".into())),
        ]);
        let (clock, now) = manual_clock();
        let cache = KeyCache::with_clock(SETTINGS, clock);
        cache.lookup(&hash, &store, None).await.unwrap();

        advance(&now, SETTINGS.ttl);
        let error = cache.lookup(&hash, &store, None).await.unwrap_err();

        assert!(matches!(
            error,
            LookupError::Store(StoreError::CorruptRow(_))
        ));
    }

    #[tokio::test]
    async fn an_invalidated_entry_is_not_used_even_during_an_outage() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![Ok(Some(record(hash))), outage()]);
        let cache = KeyCache::new(SETTINGS);
        cache.lookup(&hash, &store, None).await.unwrap();

        cache.invalidate(&hash).await;
        let error = cache.lookup(&hash, &store, None).await.unwrap_err();

        assert!(matches!(error, LookupError::Store(StoreError::CircuitOpen)));
    }

    #[tokio::test]
    async fn after_a_resync_entries_are_read_again_but_still_serve_stale_if_the_store_fails() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![
            Ok(Some(record(hash))),
            Ok(Some(record(hash))),
            outage(),
        ]);
        let (clock, now) = manual_clock();
        let cache = KeyCache::with_clock(SETTINGS, clock);
        cache.lookup(&hash, &store, None).await.unwrap();
        advance(&now, Duration::from_millis(1));

        cache.revalidate_all();
        let (_, reread) = cache.lookup(&hash, &store, None).await.unwrap();
        let (_, cached) = cache.lookup(&hash, &store, None).await.unwrap();
        advance(&now, Duration::from_millis(1));
        cache.revalidate_all();
        let (_, stale) = cache.lookup(&hash, &store, None).await.unwrap();

        assert_eq!(
            (reread, cached, stale),
            (CacheOutcome::Miss, CacheOutcome::Hit, CacheOutcome::Stale)
        );
    }

    #[tokio::test]
    async fn a_key_that_vanished_is_forgotten_and_remembered_as_unknown() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![Ok(Some(record(hash))), Ok(None)]);
        let (clock, now) = manual_clock();
        let cache = KeyCache::with_clock(SETTINGS, clock);
        cache.lookup(&hash, &store, None).await.unwrap();
        advance(&now, SETTINGS.ttl);

        let (found, _) = cache.lookup(&hash, &store, None).await.unwrap();
        let (_, again) = cache.lookup(&hash, &store, None).await.unwrap();

        assert!(matches!(found, Lookup::NotFound));
        assert_eq!(again, CacheOutcome::NegativeHit);
    }

    #[tokio::test]
    async fn a_load_overtaken_by_an_invalidation_is_not_cached() {
        let hash = hash();
        let store = ScriptedStore::answering(vec![Ok(Some(record(hash))), Ok(Some(record(hash)))]);
        let cache = KeyCache::new(SETTINGS);
        let invalidating = cache.clone();
        // The NOTIFY arrives while the query is under way (its answer predates the change).
        *store.during_query.lock().unwrap() = Some(Box::new(move || {
            invalidating.epoch.fetch_add(1, Ordering::SeqCst);
        }));

        let (found, _) = cache.lookup(&hash, &store, None).await.unwrap();
        let (_, second) = cache.lookup(&hash, &store, None).await.unwrap();

        assert!(matches!(found, Lookup::Found(_)));
        assert_eq!(second, CacheOutcome::Miss, "the overtaken row was not kept");
        assert_eq!(store.queries(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_for_one_key_share_one_query() {
        let hash = hash();
        let store = Arc::new(ScriptedStore::answering(vec![Ok(Some(record(hash)))]));
        let cache = KeyCache::new(SETTINGS);

        let lookups = (0..32).map(|_| {
            let (cache, store) = (cache.clone(), store.clone());
            tokio::spawn(async move { cache.lookup(&hash, store.as_ref(), None).await })
        });
        for lookup in futures::future::join_all(lookups).await {
            assert!(matches!(lookup.unwrap(), Ok((Lookup::Found(_), _))));
        }

        assert_eq!(store.queries(), 1);
    }

    fn budget_of(burst: u32) -> Arc<LookupBudget> {
        use crate::lookup_budget::{BudgetKind, BudgetSettings, Rate};
        let rate = Rate {
            per_second: 0.001,
            burst,
        };
        let settings = BudgetSettings {
            global: Some(rate),
            per_peer: None,
        };
        Arc::new(
            LookupBudget::new(BudgetKind::UnknownKeyLookups, settings, Instant::now()).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_hash_no_cache_holds_is_not_queried_once_the_lookup_budget_is_spent() {
        let store = ScriptedStore::answering(vec![Ok(None), Ok(None)]);
        let cache = KeyCache::new(SETTINGS).with_lookup_budget(budget_of(1));

        let first = cache.lookup(&hash(), &store, Some("10.0.0.1")).await;
        let second = cache.lookup(&hash(), &store, Some("10.0.0.1")).await;

        assert!(matches!(first, Ok((Lookup::NotFound, CacheOutcome::Miss))));
        assert!(
            matches!(second, Err(LookupError::Throttled(_))),
            "{second:?}"
        );
        assert_eq!(store.queries(), 1);
    }

    #[tokio::test]
    async fn cached_known_and_unknown_hashes_never_ask_the_lookup_budget() {
        let (known, unknown) = (hash(), hash());
        let store = ScriptedStore::answering(vec![Ok(Some(record(known))), Ok(None)]);
        let (clock, now) = manual_clock();
        let cache = KeyCache::with_clock(SETTINGS, clock).with_lookup_budget(budget_of(2));
        cache.lookup(&known, &store, None).await.unwrap();
        cache.lookup(&unknown, &store, None).await.unwrap();

        let (_, hit) = cache.lookup(&known, &store, None).await.unwrap();
        let (_, negative) = cache.lookup(&unknown, &store, None).await.unwrap();
        advance(&now, SETTINGS.ttl);
        let store_after_ttl = ScriptedStore::answering(vec![Ok(Some(record(known)))]);
        let (_, reread) = cache.lookup(&known, &store_after_ttl, None).await.unwrap();

        assert_eq!(
            (hit, negative, reread),
            (
                CacheOutcome::Hit,
                CacheOutcome::NegativeHit,
                CacheOutcome::Miss
            )
        );
        assert!(matches!(
            cache.lookup(&hash(), &store, None).await,
            Err(LookupError::Throttled(_))
        ));
    }

    #[tokio::test]
    async fn hashes_of_keys_known_to_exist_are_queried_past_a_spent_budget_and_others_are_not() {
        // Arrange: a budget of one token, spent; two hashes noted as known, one by the start-up
        // load and one by an invalidation (a key change), and one hash nobody knows.
        let (loaded, changed, stranger) = (hash(), hash(), hash());
        let store = ScriptedStore::answering(vec![
            Ok(None),
            Ok(Some(record(loaded))),
            Ok(Some(record(changed))),
        ]);
        let cache = KeyCache::new(SETTINGS)
            .with_lookup_budget(budget_of(1))
            .with_known_key_filter();
        cache.lookup(&hash(), &store, None).await.unwrap();
        cache.known_keys().unwrap().extend([&loaded]);
        cache.invalidate(&changed).await;

        // Act
        let from_load = cache.lookup(&loaded, &store, None).await;
        let from_change = cache.lookup(&changed, &store, None).await;
        let unknown = cache.lookup(&stranger, &store, None).await;

        // Assert: the known ones were queried (and found), the stranger was not.
        assert!(matches!(
            from_load,
            Ok((Lookup::Found(_), CacheOutcome::Miss))
        ));
        assert!(matches!(
            from_change,
            Ok((Lookup::Found(_), CacheOutcome::Miss))
        ));
        assert!(
            matches!(unknown, Err(LookupError::Throttled(_))),
            "{unknown:?}"
        );
        assert_eq!(store.queries(), 3);
    }

    #[tokio::test]
    async fn a_key_read_from_the_store_or_preloaded_is_noted_as_known() {
        let (read, preloaded) = (hash(), hash());
        let store = ScriptedStore::answering(vec![Ok(Some(record(read)))]);
        let cache = KeyCache::new(SETTINGS).with_known_key_filter();

        cache.lookup(&read, &store, None).await.unwrap();
        let ticket = cache.preload_ticket();
        assert!(cache.preload(ticket, vec![record(preloaded)]).await);

        let known = cache.known_keys().unwrap();
        assert!(known.contains(&read));
        assert!(known.contains(&preloaded));
        assert!(!known.contains(&hash()));
        assert!(KeyCache::new(SETTINGS).known_keys().is_none());
    }
}
