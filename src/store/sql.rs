//! Every SQL statement the service runs against `api_keys`, one named function each, parameters only.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// The columns every key-reading statement returns, in the order `row_to_record` expects.
macro_rules! key_columns {
    () => {
        "id, username, name, description, key_hash, status, user_groups, subscription, \
         created_at, expires_at, last_used_at, ephemeral"
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
}

pub(super) async fn insert_key(
    client: &impl GenericClient,
    params: &InsertKeyParams<'_>,
) -> Result<Row, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "INSERT INTO api_keys (id, username, name, description, key_hash, status, user_groups, \
             subscription, tenant, expires_at, ephemeral) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10) RETURNING ",
            key_columns!()
        ))
        .await?;
    let values: [&(dyn ToSql + Sync); 10] = [
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
    ];
    client.query_one(&statement, &values).await
}

/// Revokes one key if it is still active; the row stays for audit.
pub(super) async fn revoke_key_by_id(
    client: &impl GenericClient,
    id: &str,
    tenant: &str,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "UPDATE api_keys SET status = 'revoked' \
             WHERE id = $1 AND tenant = $2 AND status = 'active' RETURNING ",
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
