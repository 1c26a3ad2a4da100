//! [`KeyStore`] on PostgreSQL: a deadpool connection pool, per-query timeouts, a circuit
//! breaker, row mapping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Row;

use std::collections::BTreeMap;

use super::connect::PgEndpoint;
use super::sql;
use super::{
    KeyAdminStore, KeyPage, KeyRecord, KeyRecordId, KeySearch, KeyStatus, KeyStore, LimitedInsert,
    NewKey, RevocationScope, StoreError,
};
use crate::breaker::{Admission, CircuitBreaker};
use crate::key::KeyHash;
use crate::tls::CaBundle;

/// How the pool connects and how long anything may take.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub database_url: String,
    /// `MAAS_AUTHZ_DATABASE_CA_FILE`: the CAs the server's certificate must lead to.
    pub database_ca_file: Option<CaBundle>,
    pub tenant: String,
    pub pool_size: usize,
    /// Upper bound for one statement including waiting for a pooled connection, so a slow or
    /// unreachable database answers the hot path with an error quickly instead of piling up.
    pub query_timeout: Duration,
    pub connect_timeout: Duration,
}

/// Observes query latency and outcomes (implemented by the metrics module).
pub trait QueryObserver: Send + Sync + 'static {
    fn observe_query(&self, statement: &'static str, elapsed: Duration, ok: bool);

    /// A statement was not sent because the circuit breaker is open.
    fn observe_refused(&self, _statement: &'static str) {}
}

/// Observes nothing; for tools and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoQueryObserver;

impl QueryObserver for NoQueryObserver {
    fn observe_query(&self, _: &'static str, _: Duration, _: bool) {}
}

/// The PostgreSQL-backed key store of one tenant.
pub struct PgKeyStore {
    pool: Pool,
    /// Explains connection failures (which TLS check failed).
    endpoint: PgEndpoint,
    tenant: String,
    query_timeout: Duration,
    /// The hot-path lookup's own, shorter bound (see [`PgKeyStore::with_check_timeout`]).
    check_timeout: Duration,
    breaker: Option<Arc<CircuitBreaker>>,
    /// Whether any statement ever reached the database (readiness tells "degraded" from "never
    /// connected").
    reached: std::sync::atomic::AtomicBool,
    observer: Arc<dyn QueryObserver>,
}

impl std::fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKeyStore")
            .field("tenant", &self.tenant)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// The advisory lock that lets one replica at a time run housekeeping (distinct from the
/// migrations' lock).
pub const HOUSEKEEPING_LOCK_KEY: i64 = 0x006d_6161_7368_6b70; // "maashkp"

/// The class (first key) of the per-user advisory locks that serialise capped mints.
pub const MINT_LOCK_CLASS: i32 = 0x6d6b_6d74; // "mkmt"

/// Pool occupancy, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolState {
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
    pub max_size: usize,
}

impl PgKeyStore {
    /// Builds the pool; connections are made lazily, so this succeeds while the database is down.
    pub fn connect(
        settings: &PgSettings,
        observer: Arc<dyn QueryObserver>,
    ) -> Result<Self, StoreError> {
        let mut endpoint =
            PgEndpoint::new(&settings.database_url, settings.database_ca_file.as_ref())
                .map_err(|error| StoreError::Configuration(error.to_string()))?;
        let pg_config = endpoint.config_mut();
        pg_config.connect_timeout(settings.connect_timeout);
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("maas-authz");
        }

        let manager = Manager::from_config(
            endpoint.config().clone(),
            endpoint.tls(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.query_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.query_timeout))
            .build()
            .map_err(|e| StoreError::Query(format!("cannot build the connection pool: {e}")))?;
        Ok(Self {
            pool,
            endpoint,
            tenant: settings.tenant.clone(),
            query_timeout: settings.query_timeout,
            check_timeout: settings.query_timeout,
            breaker: None,
            reached: std::sync::atomic::AtomicBool::new(false),
            observer,
        })
    }

    /// Bounds the Check path's lookup (connection wait included) by `timeout` instead of the
    /// query timeout: a miss should fail fast, and a cached key survives the failure anyway.
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Sends every statement through `breaker`: while it is open, statements fail at once with
    /// [`StoreError::CircuitOpen`] without touching the pool.
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    pub fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    /// Whether the database answered at least once since start-up.
    pub fn has_reached_database(&self) -> bool {
        self.reached.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn pool_state(&self) -> PoolState {
        let status = self.pool.status();
        PoolState {
            size: status.size,
            available: status.available,
            waiting: status.waiting,
            max_size: status.max_size,
        }
    }

    /// Deletes ephemeral keys that expired more than `grace` ago, unless another replica is
    /// doing so right now (it holds [`HOUSEKEEPING_LOCK_KEY`]): then `Ok(None)`.
    pub async fn delete_expired_ephemeral_keys_if_alone(
        &self,
        grace: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let (held, deleted) = self
            .run("delete_expired_ephemeral_keys_under_lock", async |client| {
                sql::delete_expired_ephemeral_keys_under_lock(
                    client,
                    &self.tenant,
                    grace.as_secs_f64(),
                    HOUSEKEEPING_LOCK_KEY,
                )
                .await
            })
            .await?;
        Ok(held.then(|| u64::try_from(deleted).unwrap_or(0)))
    }

    /// [`NewKey`] as [`sql::insert_key`] takes it, in this store's tenant.
    fn insert_params<'a>(
        &'a self,
        key: &'a NewKey,
        id: &'a str,
        key_hash: &'a str,
    ) -> sql::InsertKeyParams<'a> {
        sql::InsertKeyParams {
            id,
            username: &key.username,
            name: &key.name,
            description: key.description.as_deref(),
            key_hash,
            groups: &key.groups,
            subscription: &key.subscription,
            tenant: &self.tenant,
            expires_at: key.expires_at,
            ephemeral: key.ephemeral,
            labels: labels_to_json(&key.labels),
        }
    }

    /// Runs one statement on a pooled connection within the query timeout, recording its latency.
    async fn run<T>(
        &self,
        statement: &'static str,
        body: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.run_within(self.query_timeout, statement, body).await
    }

    /// Runs one statement within `timeout` (see [`PgKeyStore::guarded`]).
    async fn run_within<T>(
        &self,
        timeout: Duration,
        statement: &'static str,
        body: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.guarded(timeout, statement, async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|error| pool_error(&self.endpoint, error))?;
            body(&client).await.map_err(query_error)
        })
        .await
    }

    /// Runs `body`'s statements in one transaction on one pooled connection within the query
    /// timeout, committing when it succeeds (dropped uncommitted, it rolls back).
    async fn run_in_transaction<T>(
        &self,
        statement: &'static str,
        body: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.guarded(self.query_timeout, statement, async {
            let mut client = self
                .pool
                .get()
                .await
                .map_err(|error| pool_error(&self.endpoint, error))?;
            let transaction = client.transaction().await.map_err(query_error)?;
            let value = body(&transaction).await.map_err(query_error)?;
            transaction.commit().await.map_err(query_error)?;
            Ok(value)
        })
        .await
    }

    /// Runs `work` within `timeout`, unless the breaker refuses; reports the outcome to the
    /// breaker (only unavailability and timeouts count as failures) and the observer.
    async fn guarded<T>(
        &self,
        timeout: Duration,
        statement: &'static str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        if let Some(breaker) = &self.breaker
            && breaker.admit(started) == Admission::Refuse
        {
            self.observer.observe_refused(statement);
            return Err(StoreError::CircuitOpen);
        }
        let outcome = tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(StoreError::Timeout(timeout)));
        let reached = !matches!(&outcome, Err(error) if error.is_transient());
        if reached {
            self.reached
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(breaker) = &self.breaker {
            if reached {
                breaker.record_success();
            } else {
                breaker.record_failure(Instant::now());
            }
        }
        self.observer
            .observe_query(statement, started.elapsed(), outcome.is_ok());
        outcome
    }
}

impl KeyStore for PgKeyStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let hex = hash.to_hex();
        let row = self
            .run_within(self.check_timeout, "select_key_by_hash", async |client| {
                sql::select_key_by_hash(client, &hex, &self.tenant).await
            })
            .await?;
        row.map(|row| row_to_record(&row)).transpose()
    }

    async fn insert_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        let id = key.id.to_string();
        let key_hash = key.key_hash.to_hex();
        let params = self.insert_params(key, &id, &key_hash);
        let row = self
            .run("insert_key", async |client| {
                sql::insert_key(client, &params).await
            })
            .await?;
        row_to_record(&row)
    }

    async fn find_by_id(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_string();
        let row = self
            .run("select_key_by_id", async |client| {
                sql::select_key_by_id(client, &id, &self.tenant).await
            })
            .await?;
        row.map(|row| row_to_record(&row)).transpose()
    }

    async fn revoke_key(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_string();
        let row = self
            .run("revoke_key_by_id", async |client| {
                sql::revoke_key_by_id(client, &id, &self.tenant).await
            })
            .await?;
        row.map(|row| row_to_record(&row)).transpose()
    }

    async fn list_keys_of_user(
        &self,
        username: &str,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self
            .run("select_keys_of_user", async |client| {
                sql::select_keys_of_user(client, username, &self.tenant, limit).await
            })
            .await?;
        rows.iter().map(row_to_record).collect()
    }
}

impl KeyAdminStore for PgKeyStore {
    async fn search_keys(&self, search: &KeySearch) -> Result<KeyPage, StoreError> {
        let params = sql::SearchKeysParams {
            tenant: &self.tenant,
            username: search.username.as_deref(),
            statuses: search.statuses.iter().map(|s| s.as_str()).collect(),
            subscription: search.subscription.as_deref(),
            labels_contain: labels_to_json(&search.labels_contain),
            include_ephemeral: search.include_ephemeral,
            sort_by: search.sort_by,
            order: search.order,
            // One more than asked for tells whether another page exists.
            limit: search.limit.saturating_add(1),
            offset: search.offset,
        };
        let rows = self
            .run("search_keys", async |client| {
                sql::search_keys(client, &params).await
            })
            .await?;
        let mut keys = rows
            .iter()
            .map(row_to_record)
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = usize::try_from(search.limit).unwrap_or(0);
        let has_more = keys.len() > wanted;
        keys.truncate(wanted);
        Ok(KeyPage { keys, has_more })
    }

    async fn revoke_keys(&self, scope: &RevocationScope) -> Result<Vec<KeyHash>, StoreError> {
        let params = scope_params(&self.tenant, scope);
        let rows = self
            .run("revoke_keys_in_scope", async |client| {
                sql::revoke_keys_in_scope(client, &params).await
            })
            .await?;
        rows.iter()
            .map(|row| {
                let text: String = row
                    .try_get(0)
                    .map_err(|e| StoreError::CorruptRow(e.to_string()))?;
                KeyHash::from_hex(&text).map_err(|e| StoreError::CorruptRow(e.to_string()))
            })
            .collect()
    }

    async fn count_revocable_keys(&self, scope: &RevocationScope) -> Result<u64, StoreError> {
        let params = scope_params(&self.tenant, scope);
        let count = self
            .run("count_keys_in_scope", async |client| {
                sql::count_keys_in_scope(client, &params).await
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn delete_expired_ephemeral_keys(&self, grace: Duration) -> Result<u64, StoreError> {
        self.run("delete_expired_ephemeral_keys", async |client| {
            sql::delete_expired_ephemeral_keys(client, &self.tenant, grace.as_secs_f64()).await
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", async |client| sql::select_one(client).await)
            .await
    }

    async fn insert_key_within_limit(
        &self,
        key: &NewKey,
        max_active: u32,
    ) -> Result<LimitedInsert, StoreError> {
        let id = key.id.to_string();
        let key_hash = key.key_hash.to_hex();
        let params = self.insert_params(key, &id, &key_hash);
        let outcome = self
            .run_in_transaction("insert_key_within_limit", async |transaction| {
                // Under the lock the count cannot change by another capped mint of this user
                // before our insert commits (revocations and expiry only lower it).
                sql::lock_key_mints_of_user(
                    transaction,
                    MINT_LOCK_CLASS,
                    &self.tenant,
                    &key.username,
                )
                .await?;
                let active =
                    sql::count_active_keys_of_user(transaction, &self.tenant, &key.username)
                        .await?;
                if active >= i64::from(max_active) {
                    return Ok(Err(active));
                }
                sql::insert_key(transaction, &params).await.map(Ok)
            })
            .await?;
        match outcome {
            Ok(row) => row_to_record(&row).map(|record| LimitedInsert::Inserted(Box::new(record))),
            Err(active) => Ok(LimitedInsert::LimitReached {
                active: u64::try_from(active).unwrap_or(0),
            }),
        }
    }

    async fn recently_used_keys(
        &self,
        used_since: DateTime<Utc>,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        // Ids are hyphenated lowercase UUIDs, and "" sorts before every one of them.
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let rows = self
            .run("select_recently_used_keys_page", async |client| {
                sql::select_recently_used_keys_page(client, &self.tenant, used_since, &after, limit)
                    .await
            })
            .await?;
        rows.iter().map(row_to_record).collect()
    }

    async fn active_key_hashes(
        &self,
        after: Option<KeyRecordId>,
        limit: i64,
    ) -> Result<Vec<(KeyRecordId, KeyHash)>, StoreError> {
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let rows = self
            .run("select_active_key_hashes_page", async |client| {
                sql::select_active_key_hashes_page(client, &self.tenant, &after, limit).await
            })
            .await?;
        rows.iter().map(row_to_id_and_hash).collect()
    }

    async fn record_last_used(
        &self,
        uses: &[(KeyRecordId, DateTime<Utc>)],
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = uses.iter().map(|(id, _)| id.to_string()).collect();
        let used_at: Vec<DateTime<Utc>> = uses.iter().map(|(_, at)| *at).collect();
        self.run("update_last_used", async |client| {
            sql::update_last_used(client, &ids, &used_at, &self.tenant).await
        })
        .await
    }
}

fn scope_params<'a>(tenant: &'a str, scope: &'a RevocationScope) -> sql::ScopeParams<'a> {
    sql::ScopeParams {
        tenant,
        username: scope.username.as_deref(),
        subscription: scope.subscription.as_deref(),
        labels_contain: labels_to_json(&scope.labels_contain),
    }
}

/// Labels as the JSONB column holds them: an object, or `NULL` when there are none.
fn labels_to_json(labels: &BTreeMap<String, String>) -> Option<serde_json::Value> {
    (!labels.is_empty()).then(|| {
        serde_json::Value::Object(
            labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    })
}

/// The JSONB column back into labels; anything but an object of strings is corrupt.
fn labels_from_json(
    id: KeyRecordId,
    value: Option<serde_json::Value>,
) -> Result<BTreeMap<String, String>, StoreError> {
    let corrupt =
        || StoreError::CorruptRow(format!("key {id}: labels are not an object of strings"));
    match value {
        None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
        Some(serde_json::Value::Object(object)) => object
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(v) => Ok((k, v)),
                _ => Err(corrupt()),
            })
            .collect(),
        Some(_) => Err(corrupt()),
    }
}

/// Maps one `(id, key_hash)` row, refusing corrupt data.
fn row_to_id_and_hash(row: &Row) -> Result<(KeyRecordId, KeyHash), StoreError> {
    let text = |index: usize| -> Result<String, StoreError> {
        row.try_get::<_, String>(index)
            .map_err(|e| StoreError::CorruptRow(e.to_string()))
    };
    let id_text = text(0)?;
    let id = KeyRecordId::parse(&id_text)
        .map_err(|_| StoreError::CorruptRow(format!("id {id_text:?} is not a UUID")))?;
    let key_hash = KeyHash::from_hex(&text(1)?)
        .map_err(|e| StoreError::CorruptRow(format!("key {id}: {e}")))?;
    Ok((id, key_hash))
}

/// Maps one row (columns as in `sql::key_columns!`) to a record, refusing corrupt data.
fn row_to_record(row: &Row) -> Result<KeyRecord, StoreError> {
    let get_text = |index: usize| -> Result<String, StoreError> {
        row.try_get::<_, String>(index)
            .map_err(|e| StoreError::CorruptRow(e.to_string()))
    };
    let id_text = get_text(0)?;
    let id = KeyRecordId::parse(&id_text)
        .map_err(|_| StoreError::CorruptRow(format!("id {id_text:?} is not a UUID")))?;
    let hash_text = get_text(4)?;
    let key_hash = KeyHash::from_hex(&hash_text)
        .map_err(|e| StoreError::CorruptRow(format!("key {id}: {e}")))?;
    let status_text = get_text(5)?;
    let status = KeyStatus::parse(&status_text).ok_or_else(|| {
        StoreError::CorruptRow(format!("key {id}: unknown status {status_text:?}"))
    })?;
    let corrupt = |e: tokio_postgres::Error| StoreError::CorruptRow(format!("key {id}: {e}"));
    Ok(KeyRecord {
        id,
        username: get_text(1)?,
        name: get_text(2)?,
        description: row.try_get(3).map_err(corrupt)?,
        key_hash,
        status,
        groups: row.try_get(6).map_err(corrupt)?,
        subscription: get_text(7)?,
        created_at: row.try_get(8).map_err(corrupt)?,
        expires_at: row.try_get(9).map_err(corrupt)?,
        last_used_at: row.try_get(10).map_err(corrupt)?,
        ephemeral: row.try_get(11).map_err(corrupt)?,
        labels: labels_from_json(id, row.try_get(12).map_err(corrupt)?)?,
    })
}

fn pool_error(endpoint: &PgEndpoint, error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Timeout(_) => {
            StoreError::Unavailable("no database connection available in time".into())
        }
        // At run time even a certificate that stopped verifying is an outage: cached keys go on.
        deadpool_postgres::PoolError::Backend(error) => {
            StoreError::Unavailable(endpoint.connect_error(&error).to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn query_error(error: tokio_postgres::Error) -> StoreError {
    if let Some(db_error) = error.as_db_error() {
        if db_error.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
            return StoreError::DuplicateHash;
        }
        return StoreError::Query(format!(
            "{}: {}",
            db_error.code().code(),
            db_error.message()
        ));
    }
    if error.is_closed() {
        return StoreError::Unavailable("database connection closed".into());
    }
    StoreError::Unavailable(error.to_string())
}

/// Rows per upsert statement: big enough to amortise the round trip, small enough that one
/// statement stays well within the query timeout.
const USAGE_ROWS_PER_STATEMENT: usize = 1000;

impl super::UsageStore for PgKeyStore {
    async fn add_usage(
        &self,
        batch_id: &str,
        rows: &[crate::ledger::UsageRow],
    ) -> Result<(), StoreError> {
        // One order for every replica: two upserts touching the same rows then lock them in the
        // same order and cannot deadlock.
        let mut sorted: Vec<&crate::ledger::UsageRow> = rows.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        for (number, chunk) in sorted.chunks(USAGE_ROWS_PER_STATEMENT).enumerate() {
            let batch = usage_batch(chunk);
            let chunk_id = format!("{batch_id}:{number}");
            self.run("upsert_usage", async |client| {
                sql::upsert_usage(client, &self.tenant, &chunk_id, &batch).await
            })
            .await?;
        }
        Ok(())
    }

    async fn usage_report(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> Result<super::UsagePage, StoreError> {
        let wanted = query.limit;
        let params = usage_report_params(&self.tenant, query, wanted);
        let rows = self
            .run("select_usage_report", async |client| {
                sql::select_usage_report(client, &params).await
            })
            .await?;
        let groups = query.group_by.len();
        let mut rows = rows
            .iter()
            .map(|row| {
                let values = (0..groups)
                    .map(|column| row.try_get::<_, String>(column))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::CorruptRow(e.to_string()))?;
                Ok(crate::ledger::report::ReportRow {
                    groups: values,
                    counts: usage_counts(row, groups)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let has_more = rows.len() > wanted;
        rows.truncate(wanted);
        Ok(super::UsagePage { rows, has_more })
    }

    async fn usage_totals(
        &self,
        query: &crate::ledger::report::ReportQuery,
    ) -> Result<crate::ledger::UsageCounts, StoreError> {
        let params = usage_report_params(&self.tenant, query, 0);
        let row = self
            .run("select_usage_totals", async |client| {
                sql::select_usage_totals(client, &params).await
            })
            .await?;
        usage_counts(&row, 0)
    }

    async fn delete_usage_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let day_ago = Utc::now() - chrono::Duration::days(1);
        self.run("delete_usage_batches_before", async |client| {
            sql::delete_usage_batches_before(client, day_ago).await
        })
        .await?;
        self.run("delete_usage_before", async |client| {
            sql::delete_usage_before(client, &self.tenant, cutoff).await
        })
        .await
    }
}

fn usage_report_params<'a>(
    tenant: &'a str,
    query: &'a crate::ledger::report::ReportQuery,
    wanted: usize,
) -> sql::UsageReportParams<'a> {
    sql::UsageReportParams {
        tenant,
        from: query.from,
        to: query.to,
        username: query.user.as_deref(),
        subscription: query.subscription.as_deref(),
        model: query.model.as_deref(),
        group_by: &query.group_by,
        after: query.after.as_deref(),
        // One more than asked for tells whether another page exists.
        limit: i64::try_from(wanted.saturating_add(1)).unwrap_or(i64::MAX),
    }
}

/// The sums of a report row, from column `first` on (see `sql::USAGE_SUMS`). A SUM over no
/// rows is NULL: zero.
fn usage_counts(row: &Row, first: usize) -> Result<crate::ledger::UsageCounts, StoreError> {
    let corrupt = |e: tokio_postgres::Error| StoreError::CorruptRow(e.to_string());
    let count = |column: usize| -> Result<u64, StoreError> {
        let value: Option<i64> = row.try_get(first + column).map_err(corrupt)?;
        Ok(u64::try_from(value.unwrap_or(0)).unwrap_or(0))
    };
    let cost: String = row.try_get(first + 6).map_err(corrupt)?;
    let cost = cost
        .parse::<i128>()
        .map_err(|e| StoreError::CorruptRow(format!("usage cost {cost:?}: {e}")))?;
    Ok(crate::ledger::UsageCounts {
        requests: count(0)?,
        rate_limited: count(1)?,
        prompt_tokens: count(2)?,
        completion_tokens: count(3)?,
        total_tokens: count(4)?,
        estimated_tokens: count(5)?,
        cost: crate::money::Amount::from_pico(cost),
    })
}

/// A chunk of rows as the upsert's column arrays.
fn usage_batch(rows: &[&crate::ledger::UsageRow]) -> sql::UsageBatch {
    let clamp = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let mut batch = sql::UsageBatch {
        hour: Vec::with_capacity(rows.len()),
        username: Vec::with_capacity(rows.len()),
        key_id: Vec::with_capacity(rows.len()),
        subscription: Vec::with_capacity(rows.len()),
        model: Vec::with_capacity(rows.len()),
        organization_id: Vec::with_capacity(rows.len()),
        cost_center: Vec::with_capacity(rows.len()),
        requests: Vec::with_capacity(rows.len()),
        rate_limited: Vec::with_capacity(rows.len()),
        prompt_tokens: Vec::with_capacity(rows.len()),
        completion_tokens: Vec::with_capacity(rows.len()),
        total_tokens: Vec::with_capacity(rows.len()),
        estimated_tokens: Vec::with_capacity(rows.len()),
        cost_pico: Vec::with_capacity(rows.len()),
        labels: Vec::with_capacity(rows.len()),
        key_labels: Vec::with_capacity(rows.len()),
    };
    for row in rows {
        let (key, counts) = (&row.key, &row.counts);
        batch
            .hour
            .push(DateTime::from_timestamp(key.hour, 0).unwrap_or_default());
        batch.username.push(key.user.clone());
        batch.key_id.push(key.key_id.clone());
        batch.subscription.push(key.subscription.clone());
        batch.model.push(key.model.clone());
        batch.organization_id.push(key.organization_id.clone());
        batch.cost_center.push(key.cost_center.clone());
        batch.requests.push(clamp(counts.requests));
        batch.rate_limited.push(clamp(counts.rate_limited));
        batch.prompt_tokens.push(clamp(counts.prompt_tokens));
        batch
            .completion_tokens
            .push(clamp(counts.completion_tokens));
        batch.total_tokens.push(clamp(counts.total_tokens));
        batch.estimated_tokens.push(clamp(counts.estimated_tokens));
        batch.cost_pico.push(counts.cost.pico().to_string());
        batch.labels.push(labels_to_json(&row.labels));
        batch.key_labels.push(labels_to_json(&row.key_labels));
    }
    batch
}
