//! Applies `migrations/*.sql` in order, once, under an advisory lock so replicas may start together.
//!
//! Our own bookkeeping lives in `maas_authz_schema_migrations`. For drop-in compatibility we also
//! keep upstream maas-api's golang-migrate table (`schema_migrations`) at the upstream version our
//! schema matches, so an upstream maas-api pointed at this database finds nothing to do.

use tokio_postgres::Client;

use super::sql;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append only: never edit or renumber a released file.
pub const MIGRATIONS: &[Migration] = &[
    migration(
        1,
        "create_api_keys",
        include_str!("../../migrations/0001_create_api_keys.sql"),
    ),
    migration(
        2,
        "ephemeral_keys",
        include_str!("../../migrations/0002_ephemeral_keys.sql"),
    ),
    migration(
        3,
        "subscription_binding",
        include_str!("../../migrations/0003_subscription_binding.sql"),
    ),
    migration(
        4,
        "tenant",
        include_str!("../../migrations/0004_tenant.sql"),
    ),
    migration(
        5,
        "key_hash_unique_per_tenant",
        include_str!("../../migrations/0005_key_hash_unique_per_tenant.sql"),
    ),
    migration(
        6,
        "labels",
        include_str!("../../migrations/0006_labels.sql"),
    ),
    migration(
        7,
        "key_change_notify",
        include_str!("../../migrations/0007_key_change_notify.sql"),
    ),
    migration(
        8,
        "usage_ledger",
        include_str!("../../migrations/0008_usage_ledger.sql"),
    ),
];

/// The upstream golang-migrate version whose schema ours includes.
const UPSTREAM_SCHEMA_VERSION: i64 = 6;

/// Arbitrary but fixed: every replica takes this advisory lock around migrating.
const MIGRATION_LOCK_KEY: i64 = 0x006d_6161_736d_6967; // "maasmig"

const fn migration(version: i32, name: &'static str, sql: &'static str) -> Migration {
    Migration { version, name, sql }
}

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<i32>,
    pub already_applied: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot run migration {version} ({name}): {source}")]
    Apply {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("migration bookkeeping failed: {0}")]
    Bookkeeping(#[from] tokio_postgres::Error),
    #[error(
        "the database has migration {0} which this build does not know; refusing to run an older build against a newer schema"
    )]
    UnknownVersion(i32),
}

/// Applies pending migrations in one transaction, holding a transaction-scoped advisory lock so
/// concurrent callers wait and then find nothing left to do.
pub async fn run_migrations(client: &mut Client) -> Result<MigrationReport, MigrateError> {
    let transaction = client.transaction().await?;
    sql::lock_migrations(&transaction, MIGRATION_LOCK_KEY).await?;
    sql::create_migrations_table(&transaction).await?;
    let applied_versions = sql::select_applied_migrations(&transaction).await?;
    if let Some(unknown) = applied_versions
        .iter()
        .find(|v| !MIGRATIONS.iter().any(|m| m.version == **v))
    {
        return Err(MigrateError::UnknownVersion(*unknown));
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        if applied_versions.contains(&migration.version) {
            continue;
        }
        transaction
            .batch_execute(migration.sql)
            .await
            .map_err(|source| MigrateError::Apply {
                version: migration.version,
                name: migration.name,
                source,
            })?;
        sql::insert_applied_migration(&transaction, migration.version, migration.name).await?;
        applied.push(migration.version);
    }
    record_upstream_version(&transaction).await?;
    transaction.commit().await?;
    Ok(MigrationReport {
        already_applied: applied_versions.len(),
        applied,
    })
}

/// Keeps golang-migrate's table at the upstream version our schema covers (never lowers it).
async fn record_upstream_version(
    transaction: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    sql::create_upstream_migrations_table(transaction).await?;
    match sql::select_upstream_migration_version(transaction).await? {
        Some(version) if version >= UPSTREAM_SCHEMA_VERSION => Ok(()),
        _ => sql::set_upstream_migration_version(transaction, UPSTREAM_SCHEMA_VERSION).await,
    }
}
