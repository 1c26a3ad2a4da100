//! Bounded work for credentials nobody has seen: token buckets, per peer and global, from which
//! every lookup of an uncached credential (a database query, a Kubernetes TokenReview) must take
//! a token before it may run.
//!
//! Why: a cached credential costs no I/O, but a well-formed one that no cache knows costs one
//! query. A flood of random well-formed keys would otherwise turn into as many queries, time out
//! together, open the database circuit breaker and so refuse *legitimate* new keys too. With a
//! budget, the flood's excess is refused before any I/O, the database sees at most the budget's
//! rate, and cached keys (which never ask the budget) are untouched.
//!
//! Peers are keyed by IPv4 address, or by IPv6 /64 (one host usually holds a whole /64). The
//! per-peer table is bounded: buckets that have refilled completely are equivalent to absent
//! ones and are swept out; while a shard is still full, new peers share one overflow bucket.
//!
//! Pure domain: the caller passes the time, so tests need no sleeps.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Peers tracked at once (all shards together); about 64 bytes each.
pub const PEER_CAPACITY: usize = 65_536;
const SHARDS: usize = 16;
/// A full shard is swept at most this often, so an address-spraying flood costs one sweep per
/// shard per interval rather than one per request.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `retry_after` ever reported (a very slow rate could otherwise ask for days).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// A sustained rate and the burst a full bucket allows at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second; positive and finite.
    pub per_second: f64,
    /// Tokens a bucket holds when full; at least 1.
    pub burst: u32,
}

/// `1000/s (burst 1000)`.
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s (burst {})", self.per_second, self.burst)
    }
}

impl Rate {
    fn burst(self) -> f64 {
        f64::from(self.burst.max(1))
    }
}

/// Which buckets apply; `None` switches that scope off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    pub global: Option<Rate>,
    pub per_peer: Option<Rate>,
}

/// What a budget guards, for metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    /// Key lookups in the database for keys no cache knows (Check, Validate, the REST API).
    UnknownKeyLookups,
    /// Kubernetes TokenReviews for bearer tokens the review cache does not hold.
    TokenReviews,
}

/// Which bucket ran dry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    Peer,
    Global,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Peer => "peer",
            BudgetScope::Global => "global",
        }
    }
}

/// The lookup may not run now; retrying after `retry_after` finds a token (unless others take it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many lookups of unseen credentials ({} budget); retry in {retry_after:?}", scope.as_str())]
pub struct Throttled {
    pub scope: BudgetScope,
    pub retry_after: Duration,
}

/// Observes refusals (implemented by the metrics module).
pub trait ThrottleObserver: Send + Sync + 'static {
    fn observe_throttled(&self, budget: BudgetKind, scope: BudgetScope);
}

/// One bucket: `tokens` as of `updated`.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst(),
            updated: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        // A caller with an older `now` than the last one (threads race) adds nothing.
        if now > self.updated {
            let earned = now.duration_since(self.updated).as_secs_f64() * rate.per_second;
            self.tokens = (self.tokens + earned).min(rate.burst());
            self.updated = now;
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / rate.per_second;
        Err(Duration::try_from_secs_f64(wait).map_or(MAX_RETRY_AFTER, |w| w.min(MAX_RETRY_AFTER)))
    }

    fn give_back(&mut self, rate: Rate) {
        self.tokens = (self.tokens + 1.0).min(rate.burst());
    }

    /// Whether the bucket would be full at `now`: then it is no different from a new one.
    fn is_full_at(&self, rate: Rate, now: Instant) -> bool {
        let mut probe = *self;
        probe.refill(rate, now);
        probe.tokens >= rate.burst()
    }
}

/// How a peer is told apart: its IPv4 address, or its IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    V4([u8; 4]),
    V6Net([u8; 8]),
}

impl PeerKey {
    /// Envoy's `source.address.socket_address.address`: an IP literal. Anything else (a pipe, a
    /// scoped or unparsable address) has no peer bucket.
    fn parse(address: &str) -> Option<Self> {
        Some(match address.trim().parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => PeerKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4.octets()),
                None => {
                    let mut net = [0; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    PeerKey::V6Net(net)
                }
            },
        })
    }
}

type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct PeerShard {
    buckets: HashMap<PeerKey, TokenBucket, Hasher>,
    /// Shared by peers that arrive while the shard is full of partly spent buckets.
    overflow: TokenBucket,
    next_sweep: Instant,
}

/// Which bucket of a shard a peer drew from, so a token can be given back.
#[derive(Debug, Clone, Copy)]
enum Drawn {
    Own(PeerKey),
    Overflow,
}

#[derive(Debug)]
struct PeerTable {
    rate: Rate,
    capacity_per_shard: usize,
    shard_hasher: Hasher,
    shards: Box<[Mutex<PeerShard>]>,
}

impl PeerTable {
    fn new(rate: Rate, capacity: usize, now: Instant) -> Self {
        Self {
            rate,
            capacity_per_shard: (capacity / SHARDS).max(1),
            shard_hasher: Hasher::default(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(PeerShard {
                        buckets: HashMap::with_hasher(Hasher::default()),
                        overflow: TokenBucket::full(rate, now),
                        next_sweep: now,
                    })
                })
                .collect(),
        }
    }

    fn shard(&self, peer: PeerKey) -> MutexGuard<'_, PeerShard> {
        let index = (self.shard_hasher.hash_one(peer) as usize) % self.shards.len();
        lock(&self.shards[index])
    }

    fn take(&self, peer: PeerKey, now: Instant) -> Result<Drawn, Duration> {
        let rate = self.rate;
        let mut shard = self.shard(peer);
        if !shard.buckets.contains_key(&peer) && shard.buckets.len() >= self.capacity_per_shard {
            if now >= shard.next_sweep {
                shard
                    .buckets
                    .retain(|_, bucket| !bucket.is_full_at(rate, now));
                shard.next_sweep = now + SWEEP_INTERVAL;
            }
            if shard.buckets.len() >= self.capacity_per_shard {
                return shard.overflow.take(rate, now).map(|()| Drawn::Overflow);
            }
        }
        shard
            .buckets
            .entry(peer)
            .or_insert_with(|| TokenBucket::full(rate, now))
            .take(rate, now)
            .map(|()| Drawn::Own(peer))
    }

    fn give_back(&self, peer: PeerKey, drawn: Drawn) {
        let rate = self.rate;
        let mut shard = self.shard(peer);
        match drawn {
            Drawn::Own(key) => {
                if let Some(bucket) = shard.buckets.get_mut(&key) {
                    bucket.give_back(rate);
                }
            }
            Drawn::Overflow => shard.overflow.give_back(rate),
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).buckets.len())
            .sum()
    }
}

/// The budget of one kind of lookup: a per-peer and a global token bucket, either optional.
pub struct LookupBudget {
    kind: BudgetKind,
    global: Option<(Rate, Mutex<TokenBucket>)>,
    per_peer: Option<PeerTable>,
    observer: Option<Arc<dyn ThrottleObserver>>,
}

/// Read in start-up logs: `global: 1000/s (burst 1000), per_peer: off`, not `Some(Rate { … })`.
impl std::fmt::Debug for LookupBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = |rate: Option<&Rate>| match rate {
            Some(rate) => format!("{rate}"),
            None => "off".to_owned(),
        };
        f.debug_struct("LookupBudget")
            .field("kind", &self.kind)
            .field(
                "global",
                &format_args!("{}", scope(self.global.as_ref().map(|(rate, _)| rate))),
            )
            .field(
                "per_peer",
                &format_args!("{}", scope(self.per_peer.as_ref().map(|table| &table.rate))),
            )
            .finish_non_exhaustive()
    }
}

impl LookupBudget {
    /// Full buckets as of `now`; `None` when both scopes are off (nothing to enforce).
    pub fn new(kind: BudgetKind, settings: BudgetSettings, now: Instant) -> Option<Self> {
        Self::with_peer_capacity(kind, settings, PEER_CAPACITY, now)
    }

    /// [`LookupBudget::new`] tracking at most about `peer_capacity` peers.
    pub fn with_peer_capacity(
        kind: BudgetKind,
        settings: BudgetSettings,
        peer_capacity: usize,
        now: Instant,
    ) -> Option<Self> {
        if settings.global.is_none() && settings.per_peer.is_none() {
            return None;
        }
        Some(Self {
            kind,
            global: settings
                .global
                .map(|rate| (rate, Mutex::new(TokenBucket::full(rate, now)))),
            per_peer: settings
                .per_peer
                .map(|rate| PeerTable::new(rate, peer_capacity, now)),
            observer: None,
        })
    }

    /// Reports every refusal to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn ThrottleObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn kind(&self) -> BudgetKind {
        self.kind
    }

    /// Takes a token for one lookup by `peer` (Envoy's source address; `None` or unparsable:
    /// only the global bucket applies) at `now`. The peer's bucket is asked first; a token it
    /// gave is returned when the global bucket then refuses, since no lookup ran.
    pub fn try_acquire(&self, peer: Option<&str>, now: Instant) -> Result<(), Throttled> {
        let from_peer = match (&self.per_peer, peer.and_then(PeerKey::parse)) {
            (Some(table), Some(key)) => match table.take(key, now) {
                Ok(drawn) => Some((table, key, drawn)),
                Err(wait) => return Err(self.refuse(BudgetScope::Peer, wait)),
            },
            _ => None,
        };
        if let Some((rate, bucket)) = &self.global {
            let taken = lock(bucket).take(*rate, now);
            if let Err(wait) = taken {
                if let Some((table, key, drawn)) = from_peer {
                    table.give_back(key, drawn);
                }
                return Err(self.refuse(BudgetScope::Global, wait));
            }
        }
        Ok(())
    }

    fn refuse(&self, scope: BudgetScope, retry_after: Duration) -> Throttled {
        if let Some(observer) = &self.observer {
            observer.observe_throttled(self.kind, scope);
        }
        Throttled { scope, retry_after }
    }

    /// Peers with a bucket of their own right now (approximate under concurrent use).
    pub fn tracked_peers(&self) -> usize {
        self.per_peer.as_ref().map_or(0, PeerTable::len)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A bucket is a pair of plain values, replaced whole: a panic elsewhere cannot corrupt it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const TEN_A_SECOND: Rate = Rate {
        per_second: 10.0,
        burst: 3,
    };

    fn budget(global: Option<Rate>, per_peer: Option<Rate>, now: Instant) -> LookupBudget {
        LookupBudget::new(
            BudgetKind::UnknownKeyLookups,
            BudgetSettings { global, per_peer },
            now,
        )
        .unwrap()
    }

    fn take_all(budget: &LookupBudget, peer: Option<&str>, now: Instant) -> usize {
        (0..1_000)
            .take_while(|_| budget.try_acquire(peer, now).is_ok())
            .count()
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses_with_the_wait_for_the_next_token() {
        let now = Instant::now();
        let budget = budget(Some(TEN_A_SECOND), None, now);

        let granted = take_all(&budget, None, now);
        let refused = budget.try_acquire(None, now).unwrap_err();

        assert_eq!(granted, 3);
        assert_eq!(
            refused,
            Throttled {
                scope: BudgetScope::Global,
                retry_after: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn tokens_come_back_at_the_rate_and_never_beyond_the_burst() {
        let now = Instant::now();
        let budget = budget(Some(TEN_A_SECOND), None, now);
        take_all(&budget, None, now);

        let after_a_fifth_of_a_second = take_all(&budget, None, now + Duration::from_millis(200));
        let after_an_hour = take_all(&budget, None, now + Duration::from_secs(3_600));

        assert_eq!((after_a_fifth_of_a_second, after_an_hour), (2, 3));
    }

    #[test]
    fn each_peer_has_its_own_bucket_and_ipv6_peers_are_told_apart_by_their_slash_64() {
        let now = Instant::now();
        let budget = budget(None, Some(TEN_A_SECOND), now);

        let first = take_all(&budget, Some("10.0.0.1"), now);
        let second = take_all(&budget, Some("10.0.0.2"), now);
        let same_host_v6 = take_all(&budget, Some("2001:db8:0:1::a"), now)
            + take_all(&budget, Some("2001:db8:0:1::b"), now);
        let mapped_v4 = take_all(&budget, Some("::ffff:10.0.0.1"), now);
        let refused = budget.try_acquire(Some("10.0.0.1"), now).unwrap_err();

        assert_eq!((first, second, same_host_v6, mapped_v4), (3, 3, 3, 0));
        assert_eq!(refused.scope, BudgetScope::Peer);
    }

    #[test]
    fn a_request_without_a_usable_peer_address_only_meets_the_global_bucket() {
        let now = Instant::now();
        let budget = budget(None, Some(TEN_A_SECOND), now);

        let granted =
            take_all(&budget, Some("unix:/var/run/envoy.sock"), now) + take_all(&budget, None, now);

        assert_eq!(granted, 2_000, "no bucket applies, so nothing is refused");
    }

    #[test]
    fn a_peer_refused_by_the_global_bucket_keeps_its_own_token() {
        let now = Instant::now();
        let global = Rate {
            per_second: 1.0,
            burst: 2,
        };
        let budget = budget(Some(global), Some(TEN_A_SECOND), now);
        take_all(&budget, Some("10.0.0.9"), now);

        let refused = budget.try_acquire(Some("10.0.0.1"), now).unwrap_err();
        let later = now + Duration::from_secs(3);
        let granted_later = take_all(&budget, Some("10.0.0.1"), later);

        assert_eq!(refused.scope, BudgetScope::Global);
        assert_eq!(
            granted_later, 2,
            "the global bucket refilled to its burst; the peer's own was never spent"
        );
    }

    #[test]
    fn the_peer_table_stays_bounded_and_forgets_refilled_peers() {
        let now = Instant::now();
        let budget = LookupBudget::with_peer_capacity(
            BudgetKind::UnknownKeyLookups,
            BudgetSettings {
                global: None,
                per_peer: Some(TEN_A_SECOND),
            },
            SHARDS * 4,
            now,
        )
        .unwrap();

        for host in 0..2_000_u32 {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + host).to_string();
            let _ = budget.try_acquire(Some(&address), now);
        }
        let tracked_during_the_spray = budget.tracked_peers();
        // Ten seconds on, every bucket has refilled: the next new peer's shard sweeps them out.
        budget
            .try_acquire(Some("192.0.2.1"), now + Duration::from_secs(10))
            .unwrap();

        assert_eq!(tracked_during_the_spray, SHARDS * 4);
        assert!(budget.tracked_peers() < tracked_during_the_spray);
    }

    #[test]
    fn peers_beyond_the_table_share_an_overflow_bucket_rather_than_going_unchecked() {
        let now = Instant::now();
        let budget = LookupBudget::with_peer_capacity(
            BudgetKind::UnknownKeyLookups,
            BudgetSettings {
                global: None,
                per_peer: Some(TEN_A_SECOND),
            },
            SHARDS,
            now,
        )
        .unwrap();

        let granted: usize = (0..10_000_u32)
            .map(|host| {
                let address = std::net::Ipv4Addr::from(0x0a00_0000 + host).to_string();
                usize::from(budget.try_acquire(Some(&address), now).is_ok())
            })
            .sum();

        // Each shard: one peer's burst of its own, then one shared overflow burst.
        assert!(granted <= SHARDS * 3 * 2, "{granted}");
    }

    #[test]
    fn both_scopes_off_means_no_budget_at_all() {
        let settings = BudgetSettings {
            global: None,
            per_peer: None,
        };

        let budget = LookupBudget::new(BudgetKind::TokenReviews, settings, Instant::now());

        assert!(budget.is_none());
    }

    #[derive(Default)]
    struct Counting(AtomicUsize, AtomicUsize);

    impl ThrottleObserver for Counting {
        fn observe_throttled(&self, _: BudgetKind, scope: BudgetScope) {
            match scope {
                BudgetScope::Peer => self.0.fetch_add(1, Ordering::SeqCst),
                BudgetScope::Global => self.1.fetch_add(1, Ordering::SeqCst),
            };
        }
    }

    #[test]
    fn every_refusal_is_reported_with_its_scope() {
        let now = Instant::now();
        let counting = Arc::new(Counting::default());
        let global = Rate {
            per_second: 1.0,
            burst: 4,
        };
        let budget = budget(Some(global), Some(TEN_A_SECOND), now).with_observer(counting.clone());

        take_all(&budget, Some("10.0.0.1"), now);
        take_all(&budget, Some("10.0.0.2"), now);

        assert_eq!(
            (
                counting.0.load(Ordering::SeqCst),
                counting.1.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
    }

    #[test]
    fn a_budget_reads_in_logs_as_its_rates_with_off_for_a_scope_switched_off() {
        let budget = budget(Some(TEN_A_SECOND), None, Instant::now());

        let shown = format!("{budget:?}");

        assert_eq!(
            shown,
            "LookupBudget { kind: UnknownKeyLookups, global: 10/s (burst 3), per_peer: off, .. }"
        );
    }
}
