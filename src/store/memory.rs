//! An in-memory key store with the PostgreSQL store's semantics, so the router and Check run in tests without a database.
//!
//! It mirrors the statements in `sql.rs`: the effective status (an active key past its expiry
//! counts as expired), revocation only of active, unexpired keys, the per-user active-key cap
//! checked and inserted atomically, search filters, `NULLS LAST` ordering with the id as
//! tie-breaker, and one row read beyond the page to tell whether more exist.
//!
//! Where it differs from PostgreSQL: one tenant per store (nothing is shared, so the tenant
//! column has nothing to separate); the time is this process's clock, not the database's
//! `now()` (times are rounded to microseconds as `timestamptz` stores them); a sort by name compares bytes (PostgreSQL uses the database's collation); a negative
//! limit or offset reads as zero (PostgreSQL refuses it); in a `last_used` batch naming one key
//! twice, the later time wins (PostgreSQL updates the row once, with either); and nothing is
//! published on a key change (no `LISTEN`/`NOTIFY`: the store is the only writer, and callers
//! evict their caches on revocation as they do anyway).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use super::{
    KeyAdminStore, KeyPage, KeyRecord, KeyRecordId, KeySearch, KeySortField, KeyStatus, KeyStore,
    LimitedInsert, NewKey, RevocationScope, SortOrder, StoreError,
};
use crate::key::KeyHash;

/// `timestamptz` keeps microseconds: times are stored as PostgreSQL would return them.
const MICROSECONDS: u16 = 6;

/// Keys held in this process, for one tenant.
pub struct MemoryKeyStore {
    tenant: String,
    keys: Mutex<Keys>,
    /// The usage ledger's rows, added to as PostgreSQL's upsert adds.
    usage: Mutex<std::collections::BTreeMap<crate::ledger::UsageKey, crate::ledger::UsageCounts>>,
}

/// The rows by id, and the id of each hash: the hot path looks keys up by hash.
#[derive(Debug, Default)]
struct Keys {
    by_id: HashMap<KeyRecordId, KeyRecord>,
    id_of_hash: HashMap<KeyHash, KeyRecordId>,
}

impl Keys {
    fn values(&self) -> impl Iterator<Item = &KeyRecord> {
        self.by_id.values()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut KeyRecord> {
        self.by_id.values_mut()
    }

    fn get(&self, id: &KeyRecordId) -> Option<&KeyRecord> {
        self.by_id.get(id)
    }

    fn get_mut(&mut self, id: &KeyRecordId) -> Option<&mut KeyRecord> {
        self.by_id.get_mut(id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

impl std::fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("tenant", &self.tenant)
            .field("keys", &self.lock().len())
            .finish()
    }
}

impl MemoryKeyStore {
    /// One page of the active, unexpired keys `wanted` picks, after `after` in id order, at most
    /// `limit`: the keyset pages PostgreSQL gives (ids compared as text).
    fn active_page(
        &self,
        after: Option<KeyRecordId>,
        limit: i64,
        wanted: impl Fn(&KeyRecord) -> bool,
    ) -> Vec<KeyRecord> {
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let now = Utc::now();
        let mut keys: Vec<(String, KeyRecord)> = self
            .lock()
            .values()
            .filter(|key| key.effective_status(now) == KeyStatus::Active && wanted(key))
            .map(|key| (key.id.to_string(), key.clone()))
            .filter(|(id, _)| *id > after)
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.truncate(non_negative(limit));
        keys.into_iter().map(|(_, key)| key).collect()
    }

    /// An empty store for `tenant`.
    pub fn new(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            keys: Mutex::new(Keys::default()),
            usage: Mutex::default(),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Deletes ephemeral keys that expired more than `grace` ago. No other replica can be at it,
    /// so this is always `Some`, as the PostgreSQL store's answer when its lock was free.
    pub fn delete_expired_ephemeral_keys_if_alone(&self, grace: Duration) -> Option<u64> {
        Some(self.delete_expired_ephemeral(grace, Utc::now()))
    }

    /// The map; a panic elsewhere while holding the lock leaves every row whole (each change is
    /// one assignment), so a poisoned lock is still safe to read.
    fn lock(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delete_expired_ephemeral(&self, grace: Duration, now: DateTime<Utc>) -> u64 {
        let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let mut keys = self.lock();
        let before = keys.len();
        let Keys { by_id, id_of_hash } = &mut *keys;
        by_id.retain(|_, key| {
            let keep = !(key.ephemeral && key.expires_at.is_some_and(|at| at < cutoff));
            if !keep {
                id_of_hash.remove(&key.key_hash);
            }
            keep
        });
        count(before - keys.len())
    }

    /// Inserts under the held lock, refusing a hash (or id) already stored.
    fn insert_locked(
        keys: &mut Keys,
        key: &NewKey,
        now: DateTime<Utc>,
    ) -> Result<KeyRecord, StoreError> {
        if keys.id_of_hash.contains_key(&key.key_hash) {
            return Err(StoreError::DuplicateHash);
        }
        if keys.by_id.contains_key(&key.id) {
            return Err(StoreError::Query(format!(
                "duplicate key id {} in api_keys",
                key.id
            )));
        }
        let record = KeyRecord {
            id: key.id,
            username: key.username.clone(),
            name: key.name.clone(),
            description: key.description.clone(),
            key_hash: key.key_hash,
            status: KeyStatus::Active,
            groups: key.groups.clone(),
            subscription: key.subscription.clone(),
            created_at: now.round_subsecs(MICROSECONDS),
            expires_at: Some(key.expires_at.round_subsecs(MICROSECONDS)),
            last_used_at: None,
            ephemeral: key.ephemeral,
            labels: key.labels.clone(),
        };
        keys.id_of_hash.insert(key.key_hash, key.id);
        keys.by_id.insert(key.id, record.clone());
        Ok(record)
    }
}

/// Active and not yet expired: what revocation may touch (`revocable!` in `sql.rs`).
fn is_revocable(key: &KeyRecord, now: DateTime<Utc>) -> bool {
    key.status == KeyStatus::Active && key.expires_at.is_none_or(|at| at > now)
}

/// Every pair of `wanted` is among `labels` (JSONB `@>` on a flat string object).
fn labels_contain(
    labels: &std::collections::BTreeMap<String, String>,
    wanted: &std::collections::BTreeMap<String, String>,
) -> bool {
    wanted
        .iter()
        .all(|(name, value)| labels.get(name) == Some(value))
}

fn in_scope(key: &KeyRecord, scope: &RevocationScope) -> bool {
    scope
        .username
        .as_ref()
        .is_none_or(|username| &key.username == username)
        && scope
            .subscription
            .as_ref()
            .is_none_or(|subscription| &key.subscription == subscription)
        && labels_contain(&key.labels, &scope.labels_contain)
}

/// `ORDER BY <column> <direction> NULLS LAST, id <direction>` as `search_keys` sorts.
fn search_order(a: &KeyRecord, b: &KeyRecord, field: KeySortField, order: SortOrder) -> Ordering {
    fn nulls_last<T: Ord>(a: Option<T>, b: Option<T>, order: SortOrder) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => directed(a.cmp(&b), order),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    let by_column = match field {
        KeySortField::CreatedAt => directed(a.created_at.cmp(&b.created_at), order),
        KeySortField::ExpiresAt => nulls_last(a.expires_at, b.expires_at, order),
        KeySortField::LastUsedAt => nulls_last(a.last_used_at, b.last_used_at, order),
        KeySortField::Name => directed(a.name.cmp(&b.name), order),
    };
    // The id column is text: its hyphenated form orders as PostgreSQL compares it.
    by_column.then_with(|| directed(a.id.to_string().cmp(&b.id.to_string()), order))
}

fn directed(ordering: Ordering, order: SortOrder) -> Ordering {
    match order {
        SortOrder::Ascending => ordering,
        SortOrder::Descending => ordering.reverse(),
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn non_negative(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

impl KeyStore for MemoryKeyStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let keys = self.lock();
        Ok(keys
            .id_of_hash
            .get(hash)
            .and_then(|id| keys.get(id))
            .cloned())
    }

    async fn insert_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        Self::insert_locked(&mut self.lock(), key, Utc::now())
    }

    async fn find_by_id(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.lock().get(&id).cloned())
    }

    async fn revoke_key(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        let now = Utc::now();
        Ok(self
            .lock()
            .get_mut(&id)
            .filter(|key| is_revocable(key, now))
            .map(|key| {
                key.status = KeyStatus::Revoked;
                key.clone()
            }))
    }

    async fn list_keys_of_user(
        &self,
        username: &str,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys: Vec<KeyRecord> = self
            .lock()
            .values()
            .filter(|key| key.username == username)
            .cloned()
            .collect();
        keys.sort_by_key(|key| std::cmp::Reverse(key.created_at));
        keys.truncate(non_negative(limit));
        Ok(keys)
    }
}

impl KeyAdminStore for MemoryKeyStore {
    async fn search_keys(&self, search: &KeySearch) -> Result<KeyPage, StoreError> {
        let now = Utc::now();
        let mut keys: Vec<KeyRecord> = self
            .lock()
            .values()
            .filter(|key| {
                search
                    .username
                    .as_ref()
                    .is_none_or(|username| &key.username == username)
                    && (search.statuses.is_empty()
                        || search.statuses.contains(&key.effective_status(now)))
                    && search
                        .subscription
                        .as_ref()
                        .is_none_or(|subscription| &key.subscription == subscription)
                    && labels_contain(&key.labels, &search.labels_contain)
                    && (search.include_ephemeral || !key.ephemeral)
            })
            .map(|key| KeyRecord {
                status: key.effective_status(now),
                ..key.clone()
            })
            .collect();
        keys.sort_by(|a, b| search_order(a, b, search.sort_by, search.order));
        let wanted = non_negative(search.limit);
        let mut page: Vec<KeyRecord> = keys
            .into_iter()
            .skip(non_negative(search.offset))
            .take(wanted.saturating_add(1))
            .collect();
        let has_more = page.len() > wanted;
        page.truncate(wanted);
        Ok(KeyPage {
            keys: page,
            has_more,
        })
    }

    async fn revoke_keys(&self, scope: &RevocationScope) -> Result<Vec<KeyHash>, StoreError> {
        let now = Utc::now();
        Ok(self
            .lock()
            .values_mut()
            .filter(|key| is_revocable(key, now) && in_scope(key, scope))
            .map(|key| {
                key.status = KeyStatus::Revoked;
                key.key_hash
            })
            .collect())
    }

    async fn count_revocable_keys(&self, scope: &RevocationScope) -> Result<u64, StoreError> {
        let now = Utc::now();
        Ok(count(
            self.lock()
                .values()
                .filter(|key| is_revocable(key, now) && in_scope(key, scope))
                .count(),
        ))
    }

    async fn delete_expired_ephemeral_keys(&self, grace: Duration) -> Result<u64, StoreError> {
        Ok(self.delete_expired_ephemeral(grace, Utc::now()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn insert_key_within_limit(
        &self,
        key: &NewKey,
        max_active: u32,
    ) -> Result<LimitedInsert, StoreError> {
        let now = Utc::now();
        // One lock around counting and inserting, as the PostgreSQL store's per-user advisory lock.
        let mut keys = self.lock();
        let active = count(
            keys.values()
                .filter(|stored| stored.username == key.username && is_revocable(stored, now))
                .count(),
        );
        if active >= u64::from(max_active) {
            return Ok(LimitedInsert::LimitReached { active });
        }
        Self::insert_locked(&mut keys, key, now)
            .map(|record| LimitedInsert::Inserted(Box::new(record)))
    }

    async fn recently_used_keys(
        &self,
        used_since: DateTime<Utc>,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.active_page(after, limit, |key| {
            key.last_used_at.is_some_and(|at| at >= used_since)
        }))
    }

    async fn active_key_hashes(
        &self,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> Result<Vec<(KeyRecordId, KeyHash)>, StoreError> {
        Ok(self
            .active_page(after, limit, |_| true)
            .into_iter()
            .map(|key| (key.id, key.key_hash))
            .collect())
    }

    async fn record_last_used(
        &self,
        uses: &[(KeyRecordId, DateTime<Utc>)],
    ) -> Result<u64, StoreError> {
        let mut keys = self.lock();
        let mut changed = std::collections::HashSet::new();
        for (id, at) in uses {
            let at = at.round_subsecs(MICROSECONDS);
            if let Some(key) = keys.get_mut(id)
                && key.last_used_at.is_none_or(|last| last < at)
            {
                key.last_used_at = Some(at);
                changed.insert(*id);
            }
        }
        Ok(count(changed.len()))
    }
}

impl super::UsageStore for MemoryKeyStore {
    async fn add_usage(
        &self,
        _batch_id: &str,
        rows: &[crate::ledger::UsageRow],
    ) -> Result<(), StoreError> {
        // One process, no lost answers: every call is a new batch.
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        for row in rows {
            usage.entry(row.key.clone()).or_default().add(&row.counts);
        }
        Ok(())
    }

    async fn usage_report(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> Result<super::UsagePage, StoreError> {
        let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<_> = crate::ledger::report::aggregate(usage.iter(), query)
            .into_iter()
            .filter(|row| query.after.as_ref().is_none_or(|after| row.groups > *after))
            .take(query.limit.saturating_add(1))
            .collect();
        let has_more = rows.len() > query.limit;
        rows.truncate(query.limit);
        Ok(super::UsagePage { rows, has_more })
    }

    async fn usage_totals(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> Result<crate::ledger::UsageCounts, StoreError> {
        let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let mut totals = crate::ledger::UsageCounts::default();
        for row in crate::ledger::report::aggregate(usage.iter(), query) {
            totals.add(&row.counts);
        }
        Ok(totals)
    }

    async fn delete_usage_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let before = usage.len();
        usage.retain(|key, _| key.hour >= cutoff.timestamp());
        Ok((before - usage.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn new_key(username: &str, name: &str, expires_at: DateTime<Utc>) -> NewKey {
        let id = KeyRecordId::new_random();
        NewKey {
            id,
            username: username.to_owned(),
            name: name.to_owned(),
            description: None,
            key_hash: KeyHash::from_hex(&id.to_string().replace('-', "").repeat(2)).unwrap(),
            groups: vec!["system:authenticated".to_owned()],
            subscription: "free".to_owned(),
            expires_at,
            ephemeral: false,
            labels: BTreeMap::new(),
        }
    }

    fn search(username: &str) -> KeySearch {
        KeySearch {
            username: Some(username.to_owned()),
            statuses: Vec::new(),
            subscription: None,
            labels_contain: BTreeMap::new(),
            include_ephemeral: true,
            sort_by: KeySortField::Name,
            order: SortOrder::Ascending,
            limit: 2,
            offset: 0,
        }
    }

    #[tokio::test]
    async fn active_key_hashes_page_through_active_keys_only_in_id_order() {
        let store = MemoryKeyStore::new("t");
        let day = chrono::Duration::days(1);
        let mut active = Vec::new();
        for name in ["a", "b", "c"] {
            let key = new_key("alice", name, Utc::now() + day);
            store.insert_key(&key).await.unwrap();
            active.push((key.id, key.key_hash));
        }
        let expired = new_key("alice", "old", Utc::now() - chrono::Duration::seconds(1));
        let revoked = new_key("alice", "gone", Utc::now() + day);
        store.insert_key(&expired).await.unwrap();
        store.insert_key(&revoked).await.unwrap();
        store.revoke_key(revoked.id).await.unwrap();
        active.sort_by_key(|(id, _)| id.to_string());

        let first = store.active_key_hashes(None, 2).await.unwrap();
        let rest = store.active_key_hashes(Some(first[1].0), 2).await.unwrap();

        assert_eq!(first, active[..2]);
        assert_eq!(rest, active[2..]);
    }

    #[tokio::test]
    async fn a_second_key_with_the_same_hash_is_refused() {
        let store = MemoryKeyStore::new("t");
        let key = new_key("alice", "a", Utc::now() + chrono::Duration::days(1));
        store.insert_key(&key).await.unwrap();

        let again = NewKey {
            id: KeyRecordId::new_random(),
            ..key
        };
        let error = store.insert_key(&again).await.unwrap_err();

        assert!(matches!(error, StoreError::DuplicateHash), "{error:?}");
    }

    #[tokio::test]
    async fn an_expired_key_is_neither_revocable_nor_active_in_a_search() {
        let store = MemoryKeyStore::new("t");
        let expired = new_key("alice", "old", Utc::now() - chrono::Duration::seconds(1));
        store.insert_key(&expired).await.unwrap();

        let revoked = store.revoke_key(expired.id).await.unwrap();
        let page = store.search_keys(&search("alice")).await.unwrap();

        assert_eq!(revoked, None);
        assert_eq!(page.keys[0].status, KeyStatus::Expired);
    }

    #[tokio::test]
    async fn a_search_pages_in_order_and_says_whether_more_exist() {
        let store = MemoryKeyStore::new("t");
        for name in ["c", "a", "b"] {
            store
                .insert_key(&new_key(
                    "alice",
                    name,
                    Utc::now() + chrono::Duration::days(1),
                ))
                .await
                .unwrap();
        }
        store
            .insert_key(&new_key("bob", "z", Utc::now() + chrono::Duration::days(1)))
            .await
            .unwrap();

        let first = store.search_keys(&search("alice")).await.unwrap();
        let second = store
            .search_keys(&KeySearch {
                offset: 2,
                ..search("alice")
            })
            .await
            .unwrap();

        let names = |page: &KeyPage| page.keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            (names(&first), first.has_more),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!((names(&second), second.has_more), (vec!["c".into()], false));
    }

    #[tokio::test]
    async fn the_active_key_cap_counts_only_active_unexpired_keys_of_the_user() {
        let store = MemoryKeyStore::new("t");
        let later = Utc::now() + chrono::Duration::days(1);
        store
            .insert_key(&new_key("alice", "1", later))
            .await
            .unwrap();
        let revoked = new_key("alice", "2", later);
        store.insert_key(&revoked).await.unwrap();
        store.revoke_key(revoked.id).await.unwrap();
        store
            .insert_key(&new_key(
                "alice",
                "3",
                Utc::now() - chrono::Duration::seconds(1),
            ))
            .await
            .unwrap();

        let second = store
            .insert_key_within_limit(&new_key("alice", "4", later), 2)
            .await
            .unwrap();
        let third = store
            .insert_key_within_limit(&new_key("alice", "5", later), 2)
            .await
            .unwrap();

        assert!(matches!(second, LimitedInsert::Inserted(_)), "{second:?}");
        assert_eq!(third, LimitedInsert::LimitReached { active: 2 });
    }

    #[tokio::test]
    async fn last_used_never_moves_backwards() {
        let store = MemoryKeyStore::new("t");
        let key = new_key("alice", "a", Utc::now() + chrono::Duration::days(1));
        store.insert_key(&key).await.unwrap();
        let now = Utc::now();

        let first = store.record_last_used(&[(key.id, now)]).await.unwrap();
        let earlier = store
            .record_last_used(&[(key.id, now - chrono::Duration::seconds(5))])
            .await
            .unwrap();

        assert_eq!((first, earlier), (1, 0));
        let stored = store.find_by_id(key.id).await.unwrap().unwrap();
        assert_eq!(stored.last_used_at, Some(now.round_subsecs(MICROSECONDS)));
    }

    #[tokio::test]
    async fn a_bulk_revocation_touches_only_its_scope_and_returns_the_hashes() {
        let store = MemoryKeyStore::new("t");
        let later = Utc::now() + chrono::Duration::days(1);
        let mut labelled = new_key("alice", "a", later);
        labelled.labels.insert("team".into(), "x".into());
        store.insert_key(&labelled).await.unwrap();
        store
            .insert_key(&new_key("alice", "b", later))
            .await
            .unwrap();
        let scope = RevocationScope {
            username: Some("alice".into()),
            subscription: None,
            labels_contain: BTreeMap::from([("team".into(), "x".into())]),
        };

        let counted = store.count_revocable_keys(&scope).await.unwrap();
        let hashes = store.revoke_keys(&scope).await.unwrap();

        assert_eq!((counted, hashes), (1, vec![labelled.key_hash]));
        assert_eq!(store.count_revocable_keys(&scope).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn only_ephemeral_keys_expired_beyond_the_grace_are_deleted() {
        let store = MemoryKeyStore::new("t");
        let long_ago = Utc::now() - chrono::Duration::hours(2);
        let mut old_ephemeral = new_key("alice", "old", long_ago);
        old_ephemeral.ephemeral = true;
        let mut fresh_ephemeral =
            new_key("alice", "fresh", Utc::now() - chrono::Duration::minutes(1));
        fresh_ephemeral.ephemeral = true;
        let old_regular = new_key("alice", "regular", long_ago);
        for key in [&old_ephemeral, &fresh_ephemeral, &old_regular] {
            store.insert_key(key).await.unwrap();
        }

        let deleted = store
            .delete_expired_ephemeral_keys(Duration::from_secs(30 * 60))
            .await
            .unwrap();

        assert_eq!(deleted, 1);
        assert_eq!(
            store.find_by_hash(&old_ephemeral.key_hash).await.unwrap(),
            None
        );
        assert!(
            store
                .find_by_id(fresh_ephemeral.id)
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.find_by_id(old_regular.id).await.unwrap().is_some());
    }
}
