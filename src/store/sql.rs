//! Every SQL statement the service runs against `api_keys`, one named function each, parameters only.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{KeySortField, SortOrder};

/// The columns every key-reading statement returns, in the order `row_to_record` expects.
macro_rules! key_columns {
    () => {
        "id, username, name, description, key_hash, status, user_groups, subscription, \
         created_at, expires_at, last_used_at, ephemeral, labels"
    };
}

/// The status that counts now: an active key past its expiry is expired, whatever the row says.
macro_rules! effective_status {
    () => {
        "CASE WHEN status = 'active' AND expires_at IS NOT NULL AND expires_at <= now() \
         THEN 'expired' ELSE status END"
    };
}

/// [`key_columns!`] with the stored status replaced by [`effective_status!`].
macro_rules! key_columns_with_effective_status {
    () => {
        concat!(
            "id, username, name, description, key_hash, ",
            effective_status!(),
            " AS status, user_groups, subscription, created_at, expires_at, last_used_at, \
             ephemeral, labels"
        )
    };
}

/// Keys a bulk revocation may touch: active and not yet expired.
macro_rules! revocable {
    () => {
        "status = 'active' AND (expires_at IS NULL OR expires_at > now())"
    };
}

/// The hot-path lookup, served by the unique index on `(key_hash, tenant)`.
pub(super) async fn select_key_by_hash(
    client: &impl GenericClient,
    key_hash: &str,
    tenant: &str,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE key_hash = $1 AND tenant = $2"
        ))
        .await?;
    client.query_opt(&statement, &[&key_hash, &tenant]).await
}

pub(super) async fn select_key_by_id(
    client: &impl GenericClient,
    id: &str,
    tenant: &str,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE id = $1 AND tenant = $2"
        ))
        .await?;
    client.query_opt(&statement, &[&id, &tenant]).await
}

/// Parameters of [`insert_key`], named so the call site cannot swap two strings.
pub(super) struct InsertKeyParams<'a> {
    pub id: &'a str,
    pub username: &'a str,
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub key_hash: &'a str,
    pub groups: &'a [String],
    pub subscription: &'a str,
    pub tenant: &'a str,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub ephemeral: bool,
    /// A JSON object, or `None` for `NULL` (no labels).
    pub labels: Option<serde_json::Value>,
}

pub(super) async fn insert_key(
    client: &impl GenericClient,
    params: &InsertKeyParams<'_>,
) -> Result<Row, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "INSERT INTO api_keys (id, username, name, description, key_hash, status, user_groups, \
             subscription, tenant, expires_at, ephemeral, labels) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10, $11) RETURNING ",
            key_columns!()
        ))
        .await?;
    let values: [&(dyn ToSql + Sync); 11] = [
        &params.id,
        &params.username,
        &params.name,
        &params.description,
        &params.key_hash,
        &params.groups,
        &params.subscription,
        &params.tenant,
        &params.expires_at,
        &params.ephemeral,
        &params.labels,
    ];
    client.query_one(&statement, &values).await
}

/// Holds the per-user mint lock until the transaction ends: a transaction-scoped advisory lock
/// in the two-key space (`lock_class`, a hash of tenant and user), which never meets the
/// single-key locks of migrations and housekeeping. Two users whose hashes collide merely wait
/// for each other.
pub(super) async fn lock_key_mints_of_user(
    client: &impl GenericClient,
    lock_class: i32,
    tenant: &str,
    username: &str,
) -> Result<(), tokio_postgres::Error> {
    let statement = client
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2::text || '/' || $3::text))")
        .await?;
    client
        .execute(&statement, &[&lock_class, &tenant, &username])
        .await
        .map(drop)
}

/// How many keys of one user are active and unexpired now, ephemeral ones included.
pub(super) async fn count_active_keys_of_user(
    client: &impl GenericClient,
    tenant: &str,
    username: &str,
) -> Result<i64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT count(*) FROM api_keys WHERE tenant = $1 AND username = $2 AND ",
            revocable!()
        ))
        .await?;
    let row = client.query_one(&statement, &[&tenant, &username]).await?;
    row.try_get(0)
}

/// Revokes one key if it is still active and unexpired; the row stays for audit.
pub(super) async fn revoke_key_by_id(
    client: &impl GenericClient,
    id: &str,
    tenant: &str,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "UPDATE api_keys SET status = 'revoked' WHERE id = $1 AND tenant = $2 AND ",
            revocable!(),
            " RETURNING ",
            key_columns!()
        ))
        .await?;
    client.query_opt(&statement, &[&id, &tenant]).await
}

pub(super) async fn select_keys_of_user(
    client: &impl GenericClient,
    username: &str,
    tenant: &str,
    limit: i64,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE username = $1 AND tenant = $2 \
             ORDER BY created_at DESC LIMIT $3"
        ))
        .await?;
    client
        .query(&statement, &[&username, &tenant, &limit])
        .await
}

/// One page of the active, unexpired keys used since `used_since`, after `after_id` in id
/// order (keyset pagination on the primary key: each page is one short, bounded query).
pub(super) async fn select_recently_used_keys_page(
    client: &impl GenericClient,
    tenant: &str,
    used_since: chrono::DateTime<chrono::Utc>,
    after_id: &str,
    limit: i64,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE tenant = $1 AND id > $2 AND last_used_at >= $3 AND ",
            revocable!(),
            " ORDER BY id LIMIT $4"
        ))
        .await?;
    client
        .query(&statement, &[&tenant, &after_id, &used_since, &limit])
        .await
}

/// Parameters of [`search_keys`]; `None` and empty values do not filter.
pub(super) struct SearchKeysParams<'a> {
    pub tenant: &'a str,
    pub username: Option<&'a str>,
    /// Effective statuses, as stored strings.
    pub statuses: Vec<&'static str>,
    pub subscription: Option<&'a str>,
    /// A JSON object the key's labels must contain.
    pub labels_contain: Option<serde_json::Value>,
    pub include_ephemeral: bool,
    pub sort_by: KeySortField,
    pub order: SortOrder,
    pub limit: i64,
    pub offset: i64,
}

/// The fixed column text of each sort field: the only way a sort reaches the SQL.
fn sort_column(field: KeySortField) -> &'static str {
    match field {
        KeySortField::CreatedAt => "created_at",
        KeySortField::ExpiresAt => "expires_at",
        KeySortField::LastUsedAt => "last_used_at",
        KeySortField::Name => "name",
    }
}

fn sort_direction(order: SortOrder) -> &'static str {
    match order {
        SortOrder::Ascending => "ASC",
        SortOrder::Descending => "DESC",
    }
}

/// Numbers the parameters of a statement assembled at run time.
struct Placeholders<'v> {
    values: Vec<&'v (dyn ToSql + Sync)>,
}

impl<'v> Placeholders<'v> {
    /// Adds `value` as the next parameter and returns its placeholder (`$n`).
    fn bind(&mut self, value: &'v (dyn ToSql + Sync)) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }
}

/// One page of keys with their effective status. The statement is assembled from fixed
/// fragments and numbered placeholders only: every value travels as a parameter, and the sort
/// column and direction come from [`sort_column`] and [`sort_direction`].
pub(super) async fn search_keys(
    client: &impl GenericClient,
    params: &SearchKeysParams<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let mut placeholders = Placeholders { values: Vec::new() };
    let mut sql = format!(
        concat!(
            "SELECT ",
            key_columns_with_effective_status!(),
            " FROM api_keys WHERE tenant = {}"
        ),
        placeholders.bind(&params.tenant)
    );
    if let Some(username) = &params.username {
        sql += &format!(" AND username = {}", placeholders.bind(username));
    }
    if !params.statuses.is_empty() {
        sql += &format!(
            concat!(" AND (", effective_status!(), ") = ANY({})"),
            placeholders.bind(&params.statuses)
        );
    }
    if let Some(subscription) = &params.subscription {
        sql += &format!(" AND subscription = {}", placeholders.bind(subscription));
    }
    if let Some(labels) = &params.labels_contain {
        sql += &format!(" AND labels @> {}::jsonb", placeholders.bind(labels));
    }
    if !params.include_ephemeral {
        sql += " AND NOT ephemeral";
    }
    let (column, direction) = (sort_column(params.sort_by), sort_direction(params.order));
    sql += &format!(
        " ORDER BY {column} {direction} NULLS LAST, id {direction} LIMIT {} OFFSET {}",
        placeholders.bind(&params.limit),
        placeholders.bind(&params.offset)
    );
    let statement = client.prepare_cached(&sql).await?;
    client.query(&statement, &placeholders.values).await
}

/// Parameters of [`revoke_keys_in_scope`] and [`count_keys_in_scope`].
pub(super) struct ScopeParams<'a> {
    pub tenant: &'a str,
    pub username: Option<&'a str>,
    pub subscription: Option<&'a str>,
    pub labels_contain: Option<serde_json::Value>,
}

/// Revokes every revocable key in the scope in one statement, returning their hashes.
pub(super) async fn revoke_keys_in_scope(
    client: &impl GenericClient,
    params: &ScopeParams<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "UPDATE api_keys SET status = 'revoked' WHERE tenant = $1 AND ",
            revocable!(),
            " AND ($2::text IS NULL OR username = $2) \
             AND ($3::text IS NULL OR subscription = $3) \
             AND ($4::jsonb IS NULL OR labels @> $4) RETURNING key_hash"
        ))
        .await?;
    client
        .query(
            &statement,
            &[
                &params.tenant,
                &params.username,
                &params.subscription,
                &params.labels_contain,
            ],
        )
        .await
}

/// How many keys [`revoke_keys_in_scope`] would revoke now.
pub(super) async fn count_keys_in_scope(
    client: &impl GenericClient,
    params: &ScopeParams<'_>,
) -> Result<i64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT count(*) FROM api_keys WHERE tenant = $1 AND ",
            revocable!(),
            " AND ($2::text IS NULL OR username = $2) \
             AND ($3::text IS NULL OR subscription = $3) \
             AND ($4::jsonb IS NULL OR labels @> $4)"
        ))
        .await?;
    let row = client
        .query_one(
            &statement,
            &[
                &params.tenant,
                &params.username,
                &params.subscription,
                &params.labels_contain,
            ],
        )
        .await?;
    row.try_get(0)
}

/// Hard-deletes ephemeral keys whose expiry is more than `grace_seconds` in the past.
pub(super) async fn delete_expired_ephemeral_keys(
    client: &impl GenericClient,
    tenant: &str,
    grace_seconds: f64,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "DELETE FROM api_keys WHERE tenant = $1 AND ephemeral \
             AND expires_at < now() - make_interval(secs => $2)",
        )
        .await?;
    client.execute(&statement, &[&tenant, &grace_seconds]).await
}

/// [`delete_expired_ephemeral_keys`] under a transaction-scoped advisory lock taken with
/// `pg_try_advisory_xact_lock`, all in one statement (so its own transaction): returns whether
/// the lock was free and how many keys were deleted. When another session holds the lock,
/// nothing is deleted.
pub(super) async fn delete_expired_ephemeral_keys_under_lock(
    client: &impl GenericClient,
    tenant: &str,
    grace_seconds: f64,
    lock_key: i64,
) -> Result<(bool, i64), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($3) AS held), \
             deleted AS (DELETE FROM api_keys WHERE (SELECT held FROM lock) \
               AND tenant = $1 AND ephemeral \
               AND expires_at < now() - make_interval(secs => $2) RETURNING 1) \
             SELECT (SELECT held FROM lock), (SELECT count(*) FROM deleted)",
        )
        .await?;
    let row = client
        .query_one(&statement, &[&tenant, &grace_seconds, &lock_key])
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A cheap round trip, for readiness checks.
pub(super) async fn select_one(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client.query_one("SELECT 1", &[]).await.map(drop)
}

// Migration bookkeeping: run inside the migration transaction.

/// Serialises concurrent migration runs until the transaction ends.
pub(super) async fn lock_migrations(
    transaction: &tokio_postgres::Transaction<'_>,
    lock_key: i64,
) -> Result<(), tokio_postgres::Error> {
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
        .await
        .map(drop)
}

pub(super) async fn create_migrations_table(
    transaction: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS maas_authz_schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
}

pub(super) async fn select_applied_migrations(
    transaction: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let rows = transaction
        .query("SELECT version FROM maas_authz_schema_migrations", &[])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

pub(super) async fn insert_applied_migration(
    transaction: &tokio_postgres::Transaction<'_>,
    version: i32,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    transaction
        .execute(
            "INSERT INTO maas_authz_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map(drop)
}

/// golang-migrate's table, as upstream maas-api keeps it.
pub(super) async fn create_upstream_migrations_table(
    transaction: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT NOT NULL PRIMARY KEY,
                 dirty   BOOLEAN NOT NULL
             )",
        )
        .await
}

pub(super) async fn select_upstream_migration_version(
    transaction: &tokio_postgres::Transaction<'_>,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = transaction
        .query_opt("SELECT version FROM schema_migrations LIMIT 1", &[])
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Replaces golang-migrate's single row with `version`, clean.
pub(super) async fn set_upstream_migration_version(
    transaction: &tokio_postgres::Transaction<'_>,
    version: i64,
) -> Result<(), tokio_postgres::Error> {
    transaction
        .execute("DELETE FROM schema_migrations", &[])
        .await?;
    transaction
        .execute(
            "INSERT INTO schema_migrations (version, dirty) VALUES ($1, false)",
            &[&version],
        )
        .await
        .map(drop)
}

/// Subscribes a dedicated connection to the key-change channel of migration 0007.
pub(super) async fn listen_for_key_changes(
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("LISTEN maas_authz_key_changes").await
}

/// Writes a batch of `last_used_at` values in one statement; never moves a value backwards.
pub(super) async fn update_last_used(
    client: &impl GenericClient,
    ids: &[String],
    used_at: &[chrono::DateTime<chrono::Utc>],
    tenant: &str,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "UPDATE api_keys SET last_used_at = used.at \
             FROM unnest($1::text[], $2::timestamptz[]) AS used(id, at) \
             WHERE api_keys.id = used.id AND api_keys.tenant = $3 \
               AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < used.at)",
        )
        .await?;
    client.execute(&statement, &[&ids, &used_at, &tenant]).await
}
