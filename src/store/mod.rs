//! The key store boundary: what the domain asks of persistence, in domain types only.
//!
//! The PostgreSQL implementation lives in [`postgres`], its SQL in [`sql`], its schema in
//! `migrations/` applied by [`migrate`]; [`memory`] holds keys in this process with the same
//! semantics (tests without a database); [`served`] is the one `serve` runs on.

pub mod connect;
pub mod memory;
pub mod migrate;
pub mod notify;
pub mod postgres;
pub mod served;
mod sql;

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};

use crate::key::KeyHash;

/// The database id of a key (`api_keys.id`, a UUIDv4); distinct from the key id in the key text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRecordId(uuid::Uuid);

impl KeyRecordId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn parse(text: &str) -> Result<Self, uuid::Error> {
        uuid::Uuid::parse_str(text).map(Self)
    }
}

impl std::fmt::Display for KeyRecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The stored status; one-way `active → revoked | expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
        }
    }

    /// The status that counts at `now` for a key stored with this status and expiry: an
    /// active key past its expiry is expired (the one rule, for rows and cached keys alike).
    pub fn effective(self, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> KeyStatus {
        match (self, expires_at) {
            (KeyStatus::Active, Some(expires_at)) if expires_at <= now => KeyStatus::Expired,
            (status, _) => status,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(KeyStatus::Active),
            "revoked" => Some(KeyStatus::Revoked),
            "expired" => Some(KeyStatus::Expired),
            _ => None,
        }
    }
}

/// One row of `api_keys`, as the hot path and the admin tools need it. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyRecordId,
    pub username: String,
    pub name: String,
    pub description: Option<String>,
    pub key_hash: KeyHash,
    pub status: KeyStatus,
    pub groups: Vec<String>,
    pub subscription: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub ephemeral: bool,
    /// Immutable labels set at mint (`api_keys.labels`; `NULL` reads as empty).
    pub labels: BTreeMap<String, String>,
}

impl KeyRecord {
    /// The status that counts at `now`: an active key past its expiry is expired, whatever the
    /// row says, so cached entries need no refresh to stop working on time.
    pub fn effective_status(&self, now: DateTime<Utc>) -> KeyStatus {
        self.status.effective(self.expires_at, now)
    }
}

/// What minting writes. The caller has validated every field.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: KeyRecordId,
    pub username: String,
    pub name: String,
    pub description: Option<String>,
    pub key_hash: KeyHash,
    pub groups: Vec<String>,
    pub subscription: String,
    pub expires_at: DateTime<Utc>,
    pub ephemeral: bool,
    /// Stored as a JSON object; an empty map is stored as `NULL`, as upstream does.
    pub labels: BTreeMap<String, String>,
}

/// What [`KeyAdminStore::insert_key_within_limit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitedInsert {
    Inserted(Box<KeyRecord>),
    /// Nothing was written: the user already holds this many active keys (at least the limit).
    LimitReached {
        active: u64,
    },
}

/// Why the store could not answer. `transient` tells callers whether retrying (or Envoy's
/// failure mode) is the right reaction, as opposed to a bug or corrupt data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database query timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Recent statements failed transiently; none is sent until the breaker's cool-down ends.
    #[error("database unavailable: circuit breaker open")]
    CircuitOpen,
    #[error("corrupt row in api_keys: {0}")]
    CorruptRow(String),
    #[error("database error: {0}")]
    Query(String),
    #[error("a key with this hash already exists")]
    DuplicateHash,
    /// The connection settings cannot work (e.g. an `sslmode` we refuse); fix and restart.
    #[error("{0}")]
    Configuration(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::CircuitOpen
        )
    }
}

/// Persistence of API keys for one tenant.
pub trait KeyStore: Send + Sync + 'static {
    /// The hot-path lookup: by `(key_hash, tenant)`. `Ok(None)` means no such key.
    fn find_by_hash(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    fn insert_key(
        &self,
        key: &NewKey,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send;

    fn find_by_id(
        &self,
        id: KeyRecordId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Revokes an active key; `Ok(None)` when there is no active key with that id. Returns the
    /// revoked row so callers can evict its hash from caches.
    fn revoke_key(
        &self,
        id: KeyRecordId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// A user's keys, newest first.
    fn list_keys_of_user(
        &self,
        username: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;
}

/// Columns a key search may sort by; the store maps each to a fixed column name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeySortField {
    #[default]
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
    Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    Ascending,
    #[default]
    Descending,
}

/// A validated key search. Every field becomes a query parameter; none is interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySearch {
    /// Only this user's keys; `None` searches every user of the tenant (admins).
    pub username: Option<String>,
    /// Effective statuses to return (an active key past its expiry counts as expired);
    /// empty means all.
    pub statuses: Vec<KeyStatus>,
    pub subscription: Option<String>,
    /// Keys whose labels contain all of these (JSONB containment).
    pub labels_contain: BTreeMap<String, String>,
    pub include_ephemeral: bool,
    pub sort_by: KeySortField,
    pub order: SortOrder,
    /// Rows to return (the store reads one more to know whether more exist).
    pub limit: i64,
    pub offset: i64,
}

/// One page of a key search. Records carry their effective status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    pub has_more: bool,
}

/// Which active, unexpired keys a bulk revocation touches; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationScope {
    pub username: Option<String>,
    pub subscription: Option<String>,
    /// Keys whose labels contain all of these; empty does not filter.
    pub labels_contain: BTreeMap<String, String>,
}

/// Persistence for the key-management API, beyond what the hot path needs.
pub trait KeyAdminStore: KeyStore {
    /// One page of keys matching `search`, in its order.
    fn search_keys(
        &self,
        search: &KeySearch,
    ) -> impl Future<Output = Result<KeyPage, StoreError>> + Send;

    /// Revokes every active, unexpired key in `scope` with one statement; returns their hashes
    /// so callers can evict them from caches.
    fn revoke_keys(
        &self,
        scope: &RevocationScope,
    ) -> impl Future<Output = Result<Vec<KeyHash>, StoreError>> + Send;

    /// How many keys [`KeyAdminStore::revoke_keys`] would revoke now (dry run).
    fn count_revocable_keys(
        &self,
        scope: &RevocationScope,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes ephemeral keys that expired more than `grace` ago; returns how many.
    fn delete_expired_ephemeral_keys(
        &self,
        grace: std::time::Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// One round trip, for readiness probes.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Inserts `key` unless its user already holds `max_active` or more active, unexpired keys
    /// (ephemeral ones included) in this tenant. Counting and inserting happen under a per-user
    /// lock, so concurrent mints can never both take the last free slot.
    fn insert_key_within_limit(
        &self,
        key: &NewKey,
        max_active: u32,
    ) -> impl Future<Output = Result<LimitedInsert, StoreError>> + Send;

    /// Active, unexpired keys used at or after `used_since`, in id order, at most `limit`,
    /// starting after `after` (a warm start's preload reads them page by page).
    fn recently_used_keys(
        &self,
        used_since: DateTime<Utc>,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// Ids and hashes of the active, unexpired keys, in id order, at most `limit`, starting
    /// after `after` (the start-up load of the known-key set reads them page by page).
    fn active_key_hashes(
        &self,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(KeyRecordId, KeyHash)>, StoreError>> + Send;

    /// Sets `last_used_at` for a batch of keys in one statement (never moving it backwards);
    /// returns the rows changed.
    fn record_last_used(
        &self,
        uses: &[(KeyRecordId, DateTime<Utc>)],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// One page of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePage {
    pub rows: Vec<crate::ledger::report::ReportRow>,
    /// Whether rows follow the last one.
    pub has_more: bool,
}

/// Persistence of the usage ledger (migration 0008) for one tenant.
pub trait UsageStore: Send + Sync + 'static {
    /// Adds every row's counts to the stored row of the same key (creating it): several
    /// replicas adding to one hour lose nothing. Idempotent per `batch_id`: retrying a batch
    /// whose answer was lost (it may have committed) adds nothing twice.
    fn add_usage(
        &self,
        batch_id: &str,
        rows: &[crate::ledger::UsageRow],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One page (at most `query.limit` rows) of the report, grouped and ordered by
    /// `query.group_by`, after `query.after`.
    fn usage_report(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> impl Future<Output = Result<UsagePage, StoreError>> + Send;

    /// The sums over the report's whole range and filters.
    fn usage_totals(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> impl Future<Output = Result<crate::ledger::UsageCounts, StoreError>> + Send;

    /// Deletes the rows of hours before `cutoff`; returns how many.
    fn delete_usage_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
