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

/// One page of the ids and hashes of the active, unexpired keys after `after_id` in id order
/// (keyset pagination on the primary key, as the preload's pages).
pub(super) async fn select_active_key_hashes_page(
    client: &impl GenericClient,
    tenant: &str,
    after_id: &str,
    limit: i64,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(concat!(
            "SELECT id, key_hash FROM api_keys WHERE tenant = $1 AND id > $2 AND ",
            revocable!(),
            " ORDER BY id LIMIT $3"
        ))
        .await?;
    client
        .query(&statement, &[&tenant, &after_id, &limit])
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

// Usage ledger (migration 0008).

/// The columns of one batch of usage rows, each an array of the same length (see
/// [`upsert_usage`]).
pub(super) struct UsageBatch {
    pub hour: Vec<chrono::DateTime<chrono::Utc>>,
    pub username: Vec<String>,
    pub key_id: Vec<String>,
    pub subscription: Vec<String>,
    pub model: Vec<String>,
    pub organization_id: Vec<String>,
    pub cost_center: Vec<String>,
    pub requests: Vec<i64>,
    pub rate_limited: Vec<i64>,
    pub prompt_tokens: Vec<i64>,
    pub completion_tokens: Vec<i64>,
    pub total_tokens: Vec<i64>,
    pub estimated_tokens: Vec<i64>,
    /// Pico-units as decimal text (NUMERIC has no Rust type here; text keeps it exact).
    pub cost_pico: Vec<String>,
    pub labels: Vec<Option<serde_json::Value>>,
    pub key_labels: Vec<Option<serde_json::Value>>,
}

/// Adds a batch of rows to the ledger in one statement: a row that exists (another replica, an
/// earlier flush) gets the batch's counts added, never replaced. Labels keep what was written
/// first. The batch must not hold one key twice. The same statement claims `batch_id`: a batch
/// already claimed (a retry whose first attempt committed) adds nothing.
pub(super) async fn upsert_usage(
    client: &impl GenericClient,
    tenant: &str,
    batch_id: &str,
    batch: &UsageBatch,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "WITH claimed AS (INSERT INTO usage_ledger_batches (batch_id) VALUES ($18) \
               ON CONFLICT DO NOTHING RETURNING 1) \
             INSERT INTO usage_ledger (hour, tenant, username, key_id, subscription, model, \
               organization_id, cost_center, requests, rate_limited, prompt_tokens, \
               completion_tokens, total_tokens, estimated_tokens, cost_pico, labels, key_labels) \
             SELECT u.hour, $1, u.username, u.key_id, u.subscription, u.model, u.organization_id, \
               u.cost_center, u.requests, u.rate_limited, u.prompt_tokens, u.completion_tokens, \
               u.total_tokens, u.estimated_tokens, u.cost_pico::numeric, u.labels, u.key_labels \
             FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], \
               $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], \
               $13::int8[], $14::int8[], $15::text[], $16::jsonb[], $17::jsonb[]) \
               AS u(hour, username, key_id, subscription, model, organization_id, cost_center, \
                    requests, rate_limited, prompt_tokens, completion_tokens, total_tokens, \
                    estimated_tokens, cost_pico, labels, key_labels) \
             WHERE EXISTS (SELECT 1 FROM claimed) \
             ON CONFLICT (tenant, hour, username, key_id, subscription, model, organization_id, \
               cost_center) DO UPDATE SET \
               requests = usage_ledger.requests + EXCLUDED.requests, \
               rate_limited = usage_ledger.rate_limited + EXCLUDED.rate_limited, \
               prompt_tokens = usage_ledger.prompt_tokens + EXCLUDED.prompt_tokens, \
               completion_tokens = usage_ledger.completion_tokens + EXCLUDED.completion_tokens, \
               total_tokens = usage_ledger.total_tokens + EXCLUDED.total_tokens, \
               estimated_tokens = usage_ledger.estimated_tokens + EXCLUDED.estimated_tokens, \
               cost_pico = usage_ledger.cost_pico + EXCLUDED.cost_pico, \
               labels = COALESCE(usage_ledger.labels, EXCLUDED.labels), \
               key_labels = COALESCE(usage_ledger.key_labels, EXCLUDED.key_labels), \
               updated_at = now()",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &tenant,
                &batch.hour,
                &batch.username,
                &batch.key_id,
                &batch.subscription,
                &batch.model,
                &batch.organization_id,
                &batch.cost_center,
                &batch.requests,
                &batch.rate_limited,
                &batch.prompt_tokens,
                &batch.completion_tokens,
                &batch.total_tokens,
                &batch.estimated_tokens,
                &batch.cost_pico,
                &batch.labels,
                &batch.key_labels,
                &batch_id,
            ],
        )
        .await
}

/// The fixed SQL expression of each report group: the only way a `groupBy` reaches the SQL.
/// Byte order (`COLLATE "C"`) so pages and cursors agree on every server.
fn usage_group_expression(group: crate::ledger::report::GroupBy) -> &'static str {
    use crate::ledger::report::GroupBy;
    match group {
        GroupBy::Day => "to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD') COLLATE \"C\"",
        GroupBy::Hour => {
            "to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24\":00:00Z\"') COLLATE \"C\""
        }
        GroupBy::Model => "model COLLATE \"C\"",
        GroupBy::Key => "key_id COLLATE \"C\"",
        GroupBy::User => "username COLLATE \"C\"",
        GroupBy::Subscription => "subscription COLLATE \"C\"",
        GroupBy::CostCenter => "cost_center COLLATE \"C\"",
        GroupBy::OrganizationId => "organization_id COLLATE \"C\"",
    }
}

/// The sums every report row and the totals return, after the group columns.
const USAGE_SUMS: &str = "sum(requests)::int8, sum(rate_limited)::int8, sum(prompt_tokens)::int8, \
     sum(completion_tokens)::int8, sum(total_tokens)::int8, sum(estimated_tokens)::int8, \
     COALESCE(sum(cost_pico), 0)::text";

/// Parameters of [`select_usage_report`] and [`select_usage_totals`].
pub(super) struct UsageReportParams<'a> {
    pub tenant: &'a str,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub username: Option<&'a str>,
    pub subscription: Option<&'a str>,
    pub model: Option<&'a str>,
    pub group_by: &'a [crate::ledger::report::GroupBy],
    /// Group values to continue after (keyset pagination).
    pub after: Option<&'a [String]>,
    pub limit: i64,
}

/// The WHERE clause both report statements share; every value a parameter.
fn usage_filter<'v>(
    params: &'v UsageReportParams<'_>,
    placeholders: &mut Placeholders<'v>,
) -> String {
    let mut sql = format!(
        " FROM usage_ledger WHERE tenant = {} AND hour >= {} AND hour < {}",
        placeholders.bind(&params.tenant),
        placeholders.bind(&params.from),
        placeholders.bind(&params.to)
    );
    if let Some(username) = &params.username {
        sql += &format!(" AND username = {}", placeholders.bind(username));
    }
    if let Some(subscription) = &params.subscription {
        sql += &format!(" AND subscription = {}", placeholders.bind(subscription));
    }
    if let Some(model) = &params.model {
        sql += &format!(" AND model = {}", placeholders.bind(model));
    }
    sql
}

/// One page of a usage report: group columns (text, from [`usage_group_expression`]) then the
/// sums, ordered by the groups, after the cursor's groups.
pub(super) async fn select_usage_report(
    client: &impl GenericClient,
    params: &UsageReportParams<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let mut placeholders = Placeholders { values: Vec::new() };
    let groups: Vec<&str> = params
        .group_by
        .iter()
        .map(|group| usage_group_expression(*group))
        .collect();
    let group_list = groups.join(", ");
    let mut sql = format!("SELECT {group_list}, {USAGE_SUMS}");
    sql += &usage_filter(params, &mut placeholders);
    sql += &format!(" GROUP BY {group_list}");
    if let Some(after) = params.after {
        let bound: Vec<String> = after
            .iter()
            .map(|value| format!("{}::text COLLATE \"C\"", placeholders.bind(value)))
            .collect();
        sql += &format!(" HAVING ({group_list}) > ({})", bound.join(", "));
    }
    sql += &format!(
        " ORDER BY {group_list} LIMIT {}",
        placeholders.bind(&params.limit)
    );
    let statement = client.prepare_cached(&sql).await?;
    client.query(&statement, &placeholders.values).await
}

/// The sums over every row of the report's range and filters.
pub(super) async fn select_usage_totals(
    client: &impl GenericClient,
    params: &UsageReportParams<'_>,
) -> Result<Row, tokio_postgres::Error> {
    let mut placeholders = Placeholders { values: Vec::new() };
    let mut sql = format!("SELECT {USAGE_SUMS}");
    sql += &usage_filter(params, &mut placeholders);
    let statement = client.prepare_cached(&sql).await?;
    client.query_one(&statement, &placeholders.values).await
}

/// Deletes the tenant's ledger rows of hours before `cutoff` (retention).
pub(super) async fn delete_usage_before(
    client: &impl GenericClient,
    tenant: &str,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached("DELETE FROM usage_ledger WHERE tenant = $1 AND hour < $2")
        .await?;
    client.execute(&statement, &[&tenant, &cutoff]).await
}

/// Forgets batch ids claimed before `cutoff`: a lost answer is retried within seconds, so a day
/// later nobody will retry them.
pub(super) async fn delete_usage_batches_before(
    client: &impl GenericClient,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<u64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached("DELETE FROM usage_ledger_batches WHERE written_at < $1")
        .await?;
    client.execute(&statement, &[&cutoff]).await
}
