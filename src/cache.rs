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
//! What an entry holds: a [`CachedKey`], the few fields of a key's row that Check and the
//! validate endpoints read, with the values many keys share (user, group set, subscription,
//! label set) interned, so a million cached keys fit in a few hundred megabytes. The interner
//! forgets values no cached key holds any more (swept whenever it has doubled since its last
//! sweep), so its memory follows the cache's.
//!
//! Bounded work for unknown keys: with a [`LookupBudget`], a hash that neither cache holds may
//! only be queried after taking a token from it (per peer and global); hits, negative hits and
//! re-reads of entries we hold never ask it, so the hot path costs the same. Nor do hashes the
//! [`KnownKeys`] set holds (keys that exist, loaded at start-up and noted on every change), so a
//! cold replica's legitimate traffic is not mistaken for a flood.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use moka::future::Cache;

use crate::clock::{Clock, SystemClock};
use crate::key::KeyHash;
use crate::known_keys::KnownKeys;
use crate::lookup_budget::{LookupBudget, Throttled};
use crate::store::{KeyRecord, KeyRecordId, KeyStatus, KeyStore, StoreError};

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

/// What the cache keeps of a key's row: what Check, the identity assertion, the usage ledger
/// and the validate endpoints read, and nothing else (no description, creation or use times).
/// Values that many keys share are `Arc`s, one per distinct value when interned by the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedKey {
    pub id: KeyRecordId,
    pub key_hash: KeyHash,
    pub status: KeyStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub username: Arc<str>,
    pub name: Box<str>,
    pub groups: Arc<[String]>,
    pub subscription: Arc<str>,
    /// `None` when the key has no labels (most keys): no map is allocated for them.
    pub labels: Option<Arc<BTreeMap<String, String>>>,
}

impl CachedKey {
    /// The status that counts at `now` (see [`KeyStatus::effective`]).
    pub fn effective_status(&self, now: DateTime<Utc>) -> KeyStatus {
        self.status.effective(self.expires_at, now)
    }

    /// The key's labels, if it has any.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.labels.as_deref()
    }

    /// Keeps what the cache needs of `record`, its shared values taken from `interner`.
    fn interned(record: KeyRecord, interner: &Interner) -> Self {
        let KeyRecord {
            id,
            username,
            name,
            key_hash,
            status,
            groups,
            subscription,
            expires_at,
            labels,
            description: _,
            created_at: _,
            last_used_at: _,
            ephemeral: _,
        } = record;
        let mut state = interner.lock();
        let key = Self {
            id,
            key_hash,
            status,
            expires_at,
            username: state.string(&username),
            name: name.into_boxed_str(),
            groups: state.groups(groups),
            subscription: state.string(&subscription),
            labels: (!labels.is_empty()).then(|| state.labels(labels)),
        };
        state.sweep_if_grown();
        key
    }
}

impl From<KeyRecord> for CachedKey {
    /// Without interning (tests, one-off conversions).
    fn from(record: KeyRecord) -> Self {
        CachedKey::interned(record, &Interner::default())
    }
}

/// One shared `Arc` per distinct user name, subscription, group set and label set of the cached
/// keys. Only misses and preloads take its lock; hits never do.
#[derive(Default)]
struct Interner {
    state: Mutex<InternedValues>,
}

#[derive(Default)]
struct InternedValues {
    strings: HashSet<Arc<str>, Hasher>,
    group_sets: HashSet<Arc<[String]>, Hasher>,
    label_sets: HashSet<Arc<BTreeMap<String, String>>, Hasher>,
    /// Sweep once this many values are held (twice what the last sweep kept).
    sweep_at: usize,
}

/// The least number of interned values that triggers a sweep.
const INTERN_SWEEP_MIN: usize = 4_096;

impl Interner {
    fn lock(&self) -> std::sync::MutexGuard<'_, InternedValues> {
        // A panic while holding the lock leaves the sets consistent (inserts are atomic).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl InternedValues {
    fn string(&mut self, value: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(value) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(value);
        self.strings.insert(shared.clone());
        shared
    }

    fn groups(&mut self, groups: Vec<String>) -> Arc<[String]> {
        if let Some(shared) = self.group_sets.get(groups.as_slice()) {
            return shared.clone();
        }
        let shared: Arc<[String]> = Arc::from(groups);
        self.group_sets.insert(shared.clone());
        shared
    }

    fn labels(&mut self, labels: BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
        if let Some(shared) = self.label_sets.get(&labels) {
            return shared.clone();
        }
        let shared = Arc::new(labels);
        self.label_sets.insert(shared.clone());
        shared
    }

    fn len(&self) -> usize {
        self.strings.len() + self.group_sets.len() + self.label_sets.len()
    }

    /// Forgets the values only the interner still holds, once it has doubled since the last
    /// sweep: amortised constant work per interned key, memory bounded by the cache's.
    fn sweep_if_grown(&mut self) {
        if self.len() < self.sweep_at.max(INTERN_SWEEP_MIN) {
            return;
        }
        self.strings.retain(|value| Arc::strong_count(value) > 1);
        self.group_sets.retain(|value| Arc::strong_count(value) > 1);
        self.label_sets.retain(|value| Arc::strong_count(value) > 1);
        self.sweep_at = self.len() * 2;
    }
}

/// The answer to "which key has this hash?".
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<CachedKey>),
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
    record: Arc<CachedKey>,
    loaded_at: Instant,
}

/// The positive entries: hash → [`Cached`] in shards, each an insertion-ordered map under a
/// read-write lock, bounded by CLOCK (second-chance) eviction. Chosen over a moka cache for its
/// memory: one 72-byte slot in a dense vector plus an 8-byte index per key, where moka keeps
/// seven allocations per entry (entry info, deque nodes, hash-table bucket, key `Arc`), which
/// weighed more than the keys themselves at a million entries. Hits take one shard's read lock
/// and set the slot's reference bit; ages and lifetimes are the [`KeyCache`]'s business.
struct KeyEntries {
    shards: Box<[std::sync::RwLock<Shard>]>,
    shard_capacity: usize,
    hasher: Hasher,
}

/// Shards of [`KeyEntries`]: enough that concurrent hits and inserts rarely meet on one lock,
/// one per 4 096 entries of capacity up to this many (a small cache is bounded exactly).
const KNOWN_SHARDS: usize = 64;

struct Shard {
    slots: indexmap::IndexMap<KeyHash, Slot, Hasher>,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: usize,
}

struct Slot {
    entry: Cached,
    /// Set by every hit, cleared when the hand passes: an entry used since is spared once.
    referenced: std::sync::atomic::AtomicBool,
}

impl KeyEntries {
    fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        Self::with_shards(capacity, (capacity / 4_096).clamp(1, KNOWN_SHARDS))
    }

    fn with_shards(capacity: usize, shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| {
                    std::sync::RwLock::new(Shard {
                        slots: indexmap::IndexMap::with_hasher(Hasher::default()),
                        hand: 0,
                    })
                })
                .collect(),
            shard_capacity: shard_capacity(capacity, shards),
            hasher: Hasher::default(),
        }
    }

    fn shard(&self, hash: &KeyHash) -> &std::sync::RwLock<Shard> {
        use std::hash::BuildHasher;
        let at = self.hasher.hash_one(hash) as usize % self.shards.len();
        &self.shards[at]
    }

    fn get(&self, hash: &KeyHash) -> Option<Cached> {
        let shard = read(self.shard(hash));
        let slot = shard.slots.get(hash)?;
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(slot.entry.clone())
    }

    fn contains(&self, hash: &KeyHash) -> bool {
        read(self.shard(hash)).slots.contains_key(hash)
    }

    /// Inserts or replaces; a full shard first evicts the first slot the hand finds
    /// unreferenced (clearing the reference bits it passes).
    fn insert(&self, hash: KeyHash, entry: Cached) {
        let mut shard = write(self.shard(&hash));
        if let Some(slot) = shard.slots.get_mut(&hash) {
            slot.entry = entry;
            return;
        }
        if shard.slots.len() >= self.shard_capacity {
            shard.evict_one();
        }
        shard.slots.insert(
            hash,
            Slot {
                entry,
                referenced: std::sync::atomic::AtomicBool::new(false),
            },
        );
    }

    fn remove(&self, hash: &KeyHash) {
        write(self.shard(hash)).slots.swap_remove(hash);
    }

    fn clear(&self) {
        for shard in &self.shards {
            let mut shard = write(shard);
            // A new map: the old one's memory goes back rather than staying reserved.
            shard.slots = indexmap::IndexMap::with_hasher(Hasher::default());
            shard.hand = 0;
        }
    }

    fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| read(shard).slots.len() as u64)
            .sum()
    }
}

/// Each shard's bound: its share of `capacity`, plus 1/8 when there are several, so that the
/// uneven spread of hashes over shards (a standard deviation is under 1.6 % of a share of
/// 4 096 or more; 1/8 is eight of them) does not evict keys while the cache as a whole still
/// has room. A sharded cache may so hold up to 1/8 more than its capacity; a single shard holds
/// exactly it.
fn shard_capacity(capacity: usize, shards: usize) -> usize {
    let share = capacity.div_ceil(shards);
    if shards == 1 {
        share
    } else {
        share + share / 8
    }
}

impl Shard {
    fn evict_one(&mut self) {
        // Two passes at most: the first clears every reference bit it meets.
        for _ in 0..self.slots.len() * 2 {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let Some((_, slot)) = self.slots.get_index(self.hand) else {
                return;
            };
            if slot.referenced.swap(false, Ordering::Relaxed) {
                self.hand += 1;
            } else {
                // The last slot moves here; the hand looks at it next.
                self.slots.swap_remove_index(self.hand);
                return;
            }
        }
    }
}

/// A lock's guard even if a panic poisoned it: every write leaves the map consistent.
fn read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keys by hash, in front of a [`KeyStore`].
#[derive(Clone)]
pub struct KeyCache {
    known: Arc<KeyEntries>,
    unknown: Cache<KeyHash, (), Hasher>,
    /// Store queries under way, so concurrent lookups of one hash share one query. Entries live
    /// only until their query's leader removes them.
    in_flight: Cache<KeyHash, Option<Arc<CachedKey>>, Hasher>,
    /// Shared values of the cached keys (see [`CachedKey`]).
    interner: Arc<Interner>,
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
            .field("known", &self.known.len())
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

    /// A cache that reads the time from `clock`. A positive entry older than
    /// `max(ttl, max_staleness)` is never used again (a lookup treats it as absent); its memory
    /// is reclaimed when it is replaced, invalidated or evicted (the capacity bounds it).
    pub fn with_clock(settings: CacheSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            known: Arc::new(KeyEntries::new(settings.capacity)),
            unknown: Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .build_with_hasher(Hasher::default()),
            in_flight: Cache::builder()
                .max_capacity(settings.capacity)
                // Only a safety net: each query's leader removes its entry when done.
                .time_to_live(Duration::from_secs(1))
                .build_with_hasher(Hasher::default()),
            interner: Arc::new(Interner::default()),
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
        let stale = match self.known.get(hash) {
            Some(entry) if self.age(&entry) < self.ttl && !self.revalidation_due(&entry) => {
                return Ok((Lookup::Found(entry.record), CacheOutcome::Hit));
            }
            // Older than any use of it (stale-if-error included): as if evicted.
            Some(entry) if self.age(&entry) < self.ttl.max(self.max_staleness) => Some(entry),
            _ => {
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
    ) -> Result<Option<Arc<CachedKey>>, StoreError> {
        let shared = self
            .in_flight
            .try_get_with_by_ref(hash, async {
                let epoch = self.epoch.load(Ordering::SeqCst);
                let found = store.find_by_hash(hash).await?;
                match found {
                    Some(record) => {
                        self.note_known(hash);
                        let record = Arc::new(CachedKey::interned(record, &self.interner));
                        let entry = Cached {
                            record: record.clone(),
                            loaded_at: self.clock.instant(),
                        };
                        if self.epoch.load(Ordering::SeqCst) == epoch {
                            self.known.insert(*hash, entry);
                            if self.epoch.load(Ordering::SeqCst) != epoch {
                                self.known.remove(hash);
                            }
                        }
                        Ok(Some(record))
                    }
                    None => {
                        self.known.remove(hash);
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
        self.known.remove(hash);
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
        self.known.clear();
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
            if self.known.contains(&hash) {
                continue;
            }
            let entry = Cached {
                record: Arc::new(CachedKey::interned(record, &self.interner)),
                loaded_at,
            };
            self.known.insert(hash, entry);
            self.unknown.invalidate(&hash).await;
            inserted.push(hash);
        }
        // Checked again after inserting: an invalidation may have landed meanwhile.
        if self.epoch.load(Ordering::SeqCst) != ticket.0 {
            for hash in &inserted {
                self.known.remove(hash);
            }
            return false;
        }
        true
    }

    /// Entry counts: known (entries past their use included until evicted), unknown
    /// (approximate, as moka reports it).
    pub fn sizes(&self) -> (u64, u64) {
        (self.known.len(), self.unknown.entry_count())
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
        assert_eq!(&*found.name, "fresher");
    }

    #[tokio::test]
    async fn keys_of_one_user_share_one_copy_of_their_user_groups_and_subscription() {
        let (first, second) = (hash(), hash());
        let with_groups = |hash| KeyRecord {
            groups: vec!["team-a".into(), "system:authenticated".into()],
            ..record(hash)
        };
        let store = ScriptedStore::answering(vec![Ok(Some(with_groups(second)))]);
        let cache = KeyCache::new(SETTINGS);
        cache
            .preload(cache.preload_ticket(), vec![with_groups(first)])
            .await;

        let (Lookup::Found(a), _) = cache.lookup(&first, &store, None).await.unwrap() else {
            panic!("expected the preloaded key")
        };
        let (Lookup::Found(b), _) = cache.lookup(&second, &store, None).await.unwrap() else {
            panic!("expected the queried key")
        };

        assert!(Arc::ptr_eq(&a.username, &b.username));
        assert!(Arc::ptr_eq(&a.groups, &b.groups));
        assert!(Arc::ptr_eq(&a.subscription, &b.subscription));
        assert_eq!(&*a.groups, ["team-a", "system:authenticated"]);
        assert_eq!((a.labels(), &*a.name), (None, "k"));
    }

    #[test]
    fn a_cached_key_keeps_its_labels_and_judges_expiry_like_its_row() {
        let mut row = record(hash());
        row.labels = [("team".to_owned(), "search".to_owned())].into();
        row.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));

        let cached = CachedKey::from(row.clone());

        assert_eq!(cached.labels(), Some(&row.labels));
        assert_eq!(cached.effective_status(Utc::now()), KeyStatus::Expired);
        assert_eq!(
            cached.effective_status(Utc::now()),
            row.effective_status(Utc::now())
        );
    }

    #[test]
    fn the_interner_forgets_values_no_cached_key_holds_any_more() {
        let interner = Interner::default();
        let kept = interner.lock().string("kept-user");
        for user in 0..INTERN_SWEEP_MIN * 3 {
            let mut state = interner.lock();
            drop(state.string(&format!("gone-{user}")));
            state.sweep_if_grown();
        }

        let state = interner.lock();

        assert!(
            state.len() < INTERN_SWEEP_MIN,
            "{} values held",
            state.len()
        );
        assert!(Arc::ptr_eq(state.strings.get("kept-user").unwrap(), &kept));
    }

    fn entry() -> Cached {
        Cached {
            record: Arc::new(CachedKey::from(record(hash()))),
            loaded_at: Instant::now(),
        }
    }

    #[test]
    fn a_full_cache_evicts_a_key_unused_since_the_hand_last_passed_rather_than_a_used_one() {
        let known = KeyEntries::with_shards(3, 1);
        let [used, unused, newer, newest] = [hash(), hash(), hash(), hash()];
        for hash in [used, unused, newer] {
            known.insert(hash, entry());
        }
        known.get(&used);

        known.insert(newest, entry());

        assert!(known.contains(&used));
        assert!(!known.contains(&unused));
        assert!(known.contains(&newer) && known.contains(&newest));
        assert_eq!(known.len(), 3);
    }

    #[test]
    fn a_sharded_cache_has_room_for_its_capacity_despite_an_uneven_spread_of_hashes() {
        let capacity = 100_000;
        let known = KeyEntries::new(capacity as u64);

        let shared = entry();
        for i in 0..capacity {
            // Distinct digests without hashing a key each (that is slow in a debug build).
            let hash = KeyHash::from_hex(&format!("{:064x}", i as u128 + 1)).unwrap();
            known.insert(hash, shared.clone());
        }

        assert_eq!(known.len(), capacity as u64);
        assert!(known.shards.len() > 1);
    }

    #[tokio::test]
    async fn the_cache_never_holds_more_keys_than_its_capacity() {
        let cache = KeyCache::new(SETTINGS);
        let records = (0..SETTINGS.capacity * 3).map(|_| record(hash())).collect();

        cache.preload(cache.preload_ticket(), records).await;

        assert_eq!(cache.sizes().0, SETTINGS.capacity);
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
