//! The key store `serve` runs on: PostgreSQL in production, or the in-memory store (tests, demos without a database).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::memory::MemoryKeyStore;
use super::postgres::{PgKeyStore, PoolState};
use super::{
    KeyAdminStore, KeyPage, KeyRecord, KeyRecordId, KeySearch, KeyStore, LimitedInsert, NewKey,
    RevocationScope, StoreError,
};
use crate::breaker::CircuitBreaker;
use crate::key::KeyHash;

/// One of the two stores; every trait call is delegated to it. An enum rather than a type
/// parameter, so the edges (HTTP, Check, housekeeping) keep one concrete store type.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per process, behind an Arc; boxing would add a hop to every Check lookup"
)]
pub enum ServedStore {
    /// PostgreSQL, observed by the metrics.
    Postgres(PgKeyStore),
    /// This process's memory: nothing survives a restart, nothing is shared between replicas.
    Memory(MemoryKeyStore),
}

/// Calls the same method on whichever store this is.
macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            ServedStore::Postgres($store) => $call,
            ServedStore::Memory($store) => $call,
        }
    };
}

impl ServedStore {
    /// Whether the database answered at least once since start-up (memory always has).
    pub fn has_reached_database(&self) -> bool {
        match self {
            ServedStore::Postgres(store) => store.has_reached_database(),
            ServedStore::Memory(_) => true,
        }
    }

    /// The database's circuit breaker; memory has none.
    pub fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        match self {
            ServedStore::Postgres(store) => store.breaker(),
            ServedStore::Memory(_) => None,
        }
    }

    pub fn tenant(&self) -> &str {
        delegate!(self, store => store.tenant())
    }

    /// The connection pool's state; memory has no pool and reports all zeros.
    pub fn pool_state(&self) -> PoolState {
        match self {
            ServedStore::Postgres(store) => store.pool_state(),
            ServedStore::Memory(_) => PoolState {
                size: 0,
                available: 0,
                waiting: 0,
                max_size: 0,
            },
        }
    }

    /// Deletes ephemeral keys that expired more than `grace` ago unless another replica is at
    /// it (`Ok(None)`); memory has no other replica.
    pub async fn delete_expired_ephemeral_keys_if_alone(
        &self,
        grace: Duration,
    ) -> Result<Option<u64>, StoreError> {
        match self {
            ServedStore::Postgres(store) => {
                store.delete_expired_ephemeral_keys_if_alone(grace).await
            }
            ServedStore::Memory(store) => Ok(store.delete_expired_ephemeral_keys_if_alone(grace)),
        }
    }
}

impl KeyStore for ServedStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        delegate!(self, store => store.find_by_hash(hash).await)
    }

    async fn insert_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        delegate!(self, store => store.insert_key(key).await)
    }

    async fn find_by_id(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        delegate!(self, store => store.find_by_id(id).await)
    }

    async fn revoke_key(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        delegate!(self, store => store.revoke_key(id).await)
    }

    async fn list_keys_of_user(
        &self,
        username: &str,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        delegate!(self, store => store.list_keys_of_user(username, limit).await)
    }
}

impl KeyAdminStore for ServedStore {
    async fn search_keys(&self, search: &KeySearch) -> Result<KeyPage, StoreError> {
        delegate!(self, store => store.search_keys(search).await)
    }

    async fn revoke_keys(&self, scope: &RevocationScope) -> Result<Vec<KeyHash>, StoreError> {
        delegate!(self, store => store.revoke_keys(scope).await)
    }

    async fn count_revocable_keys(&self, scope: &RevocationScope) -> Result<u64, StoreError> {
        delegate!(self, store => store.count_revocable_keys(scope).await)
    }

    async fn recently_used_keys(
        &self,
        used_since: DateTime<Utc>,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        delegate!(self, store => store.recently_used_keys(used_since, after, limit).await)
    }

    async fn active_key_hashes(
        &self,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> Result<Vec<(KeyRecordId, KeyHash)>, StoreError> {
        delegate!(self, store => store.active_key_hashes(after, limit).await)
    }

    async fn delete_expired_ephemeral_keys(&self, grace: Duration) -> Result<u64, StoreError> {
        delegate!(self, store => store.delete_expired_ephemeral_keys(grace).await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, store => store.ping().await)
    }

    async fn insert_key_within_limit(
        &self,
        key: &NewKey,
        max_active: u32,
    ) -> Result<LimitedInsert, StoreError> {
        delegate!(self, store => store.insert_key_within_limit(key, max_active).await)
    }

    async fn record_last_used(
        &self,
        uses: &[(KeyRecordId, DateTime<Utc>)],
    ) -> Result<u64, StoreError> {
        delegate!(self, store => store.record_last_used(uses).await)
    }
}

impl super::UsageStore for ServedStore {
    async fn add_usage(
        &self,
        batch_id: &str,
        rows: &[crate::ledger::UsageRow],
    ) -> Result<(), StoreError> {
        delegate!(self, store => store.add_usage(batch_id, rows).await)
    }

    async fn usage_report(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> Result<super::UsagePage, StoreError> {
        delegate!(self, store => store.usage_report(query).await)
    }

    async fn usage_totals(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> Result<crate::ledger::UsageCounts, StoreError> {
        delegate!(self, store => store.usage_totals(query).await)
    }

    async fn delete_usage_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        delegate!(self, store => store.delete_usage_before(cutoff).await)
    }
}
