//! Which key hashes exist, as 64-bit prefixes: lets a lookup of a key known to exist skip the unknown-key budget.
//!
//! Why: the unknown-key budget ([`crate::lookup_budget`]) bounds the queries for hashes no cache
//! holds, so that a flood of random keys cannot reach PostgreSQL. A replica that starts cold (or
//! whose cache evicted) sees its *legitimate* traffic as uncached too, and a rolling deploy under
//! load would answer valid keys "429 unknown_key_rate_limited" until the budget refilled. This set
//! tells the two apart without a query: it holds the first 8 bytes of the hash of every key that
//! exists (read at start-up, then kept current by every key change this replica learns of).
//!
//! It is only a hint, and every way it can be wrong is safe:
//! - a hash it lacks (a key minted on another replica while its notice was lost, a load not
//!   finished yet) takes a budget token, as without the set;
//! - a hash it holds wrongly (a deleted key, a revoked one, a random key whose prefix collides) is
//!   queried once without a token and then cached, positively or negatively. Prefixes come from
//!   SHA-256 digests of secret keys, which an attacker does not know, so a guess collides with
//!   probability `keys / 2^64`.
//!
//! The set never decides an answer: the store does. At 1 M keys it takes about 18 MB.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use crate::key::KeyHash;

const SHARDS: usize = 16;

type Hasher = foldhash::fast::RandomState;

/// A concurrent set of key-hash prefixes (see the module's doc).
#[derive(Debug)]
pub struct KnownKeys {
    shards: [RwLock<HashSet<u64, Hasher>>; SHARDS],
}

impl Default for KnownKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl KnownKeys {
    pub fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| RwLock::new(HashSet::with_hasher(Hasher::default()))),
        }
    }

    /// Whether a key with this hash exists or existed, as far as this replica knows.
    pub fn contains(&self, hash: &KeyHash) -> bool {
        let prefix = prefix(hash);
        self.shard(prefix)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&prefix)
    }

    /// Notes that a key with this hash exists (read from the store, minted, or changed).
    pub fn insert(&self, hash: &KeyHash) {
        let prefix = prefix(hash);
        // A read first: nearly every hash noted on the hot path is there already.
        if self.contains(hash) {
            return;
        }
        self.shard(prefix)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(prefix);
    }

    /// Notes many hashes, taking each shard's lock once (a start-up load reads them by the page).
    pub fn extend<'a>(&self, hashes: impl IntoIterator<Item = &'a KeyHash>) {
        let mut by_shard: [Vec<u64>; SHARDS] = std::array::from_fn(|_| Vec::new());
        for hash in hashes {
            let prefix = prefix(hash);
            by_shard[shard_index(prefix)].push(prefix);
        }
        for (shard, prefixes) in self.shards.iter().zip(by_shard) {
            if !prefixes.is_empty() {
                shard
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(prefixes);
            }
        }
    }

    /// How many prefixes the set holds.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, prefix: u64) -> &RwLock<HashSet<u64, Hasher>> {
        &self.shards[shard_index(prefix)]
    }
}

/// The digest's first 8 bytes. SHA-256 output is uniform, so they spread as well as any hash.
fn prefix(hash: &KeyHash) -> u64 {
    let bytes = hash.as_bytes();
    u64::from_be_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

/// The shard of a prefix: its last byte (the first ones already place it in the set's table).
fn shard_index(prefix: u64) -> usize {
    (prefix & 0xff) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ApiKey;

    fn some_hash() -> KeyHash {
        ApiKey::generate().unwrap().hash()
    }

    #[test]
    fn a_new_set_knows_no_key() {
        let known = KnownKeys::new();

        assert!(!known.contains(&some_hash()));
        assert!(known.is_empty());
    }

    #[test]
    fn an_inserted_hash_is_known_and_others_are_not() {
        let known = KnownKeys::new();
        let (minted, other) = (some_hash(), some_hash());

        known.insert(&minted);
        known.insert(&minted);

        assert!(known.contains(&minted));
        assert!(!known.contains(&other));
        assert_eq!(known.len(), 1);
    }

    #[test]
    fn extend_notes_every_hash_of_a_page_across_shards() {
        let known = KnownKeys::new();
        let page: Vec<KeyHash> = (0..500).map(|_| some_hash()).collect();

        known.extend(&page);

        assert!(page.iter().all(|hash| known.contains(hash)));
        assert_eq!(known.len(), 500);
        assert!(!known.contains(&some_hash()));
    }
}
