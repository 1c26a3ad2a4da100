//! Migrations: idempotent, safe under concurrent start-ups, and compatible with upstream's schema.

use maas_authz::store::KeyStore;
use maas_authz::store::migrate::MIGRATIONS;

use crate::support::*;

#[tokio::test]
async fn migrations_apply_once_and_then_find_nothing_to_do() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;

    let first = maas_authz::store::migrate::run_migrations(&mut client)
        .await
        .unwrap();
    let second = maas_authz::store::migrate::run_migrations(&mut client)
        .await
        .unwrap();

    assert_eq!(first.applied.len(), MIGRATIONS.len());
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, MIGRATIONS.len());
}

#[tokio::test]
async fn concurrent_migrations_from_several_replicas_all_succeed() {
    let db = TestDb::empty().await;
    let config = db.database_config();

    let runs: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                maas_authz::app::migrate(&config, std::time::Duration::from_secs(10)).await
            })
        })
        .collect();

    for run in runs {
        run.await.unwrap().unwrap();
    }
    let count: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM maas_authz_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn schema_has_upstreams_columns_indexes_and_checks() {
    let db = TestDb::migrated().await;
    let client = db.client().await;

    let columns: Vec<(String, String, String)> = client
        .query(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
             WHERE table_name = 'api_keys' ORDER BY column_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let indexes: Vec<String> = client
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'api_keys' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let upstream_version: i64 = client
        .query_one("SELECT version FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);

    let expected_columns = [
        ("created_at", "timestamp with time zone", "NO"),
        ("description", "text", "YES"),
        ("ephemeral", "boolean", "NO"),
        ("expires_at", "timestamp with time zone", "YES"),
        ("id", "text", "NO"),
        ("key_hash", "text", "NO"),
        ("labels", "jsonb", "YES"),
        ("last_used_at", "timestamp with time zone", "YES"),
        ("name", "text", "NO"),
        ("status", "text", "NO"),
        ("subscription", "text", "NO"),
        ("tenant", "text", "NO"),
        ("user_groups", "ARRAY", "NO"),
        ("username", "text", "NO"),
    ];
    let actual: Vec<(&str, &str, &str)> = columns
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(actual, expected_columns);
    assert_eq!(
        indexes,
        [
            "api_keys_pkey",
            "idx_api_keys_ephemeral_expired",
            "idx_api_keys_key_hash_tenant",
            "idx_api_keys_labels_gin",
            "idx_api_keys_last_used",
            "idx_api_keys_tenant_username_created",
            "idx_api_keys_user_groups",
            "idx_api_keys_username_created",
        ]
    );
    assert_eq!(upstream_version, 6);
    let bad_status = client
        .execute(
            "INSERT INTO api_keys (id, username, name, key_hash, status, user_groups, subscription) \
             VALUES ('x', 'u', 'n', 'h', 'paused', '{}', 's')",
            &[],
        )
        .await;
    assert!(bad_status.is_err());
    let bad_labels = client
        .execute(
            "INSERT INTO api_keys (id, username, name, key_hash, user_groups, subscription, labels) \
             VALUES ('y', 'u', 'n', 'h2', '{}', 's', '[1]')",
            &[],
        )
        .await;
    assert!(bad_labels.is_err());
}

#[tokio::test]
async fn a_key_written_by_upstream_validates_here() {
    // Arrange: the table as upstream's migrations leave it, with a row upstream's code would
    // write (hash = SHA-256 of key id, NUL, secret; a UUIDv4 id), and no bookkeeping of ours.
    let db = TestDb::empty().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, username TEXT NOT NULL, name TEXT NOT NULL, \
               description TEXT, key_hash TEXT NOT NULL, \
               status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','revoked','expired')), \
               user_groups TEXT[] NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
               expires_at TIMESTAMPTZ, last_used_at TIMESTAMPTZ, \
               ephemeral BOOLEAN NOT NULL DEFAULT false, subscription TEXT NOT NULL, \
               tenant TEXT NOT NULL DEFAULT 'models-as-a-service', labels JSONB DEFAULT NULL); \
             CREATE UNIQUE INDEX idx_api_keys_key_hash_tenant ON api_keys (key_hash, tenant); \
             CREATE TABLE schema_migrations (version BIGINT NOT NULL PRIMARY KEY, dirty BOOLEAN NOT NULL); \
             INSERT INTO schema_migrations VALUES (6, false);",
        )
        .await
        .unwrap();
    let key = "sk-oai-7n42DGM5Tflk9n8m_Qz3xYwVbN8mKpL2aRtUe5sHj9DcFg1oIiW7vZyXqAbC";
    let hash = {
        use sha2::Digest;
        let (key_id, secret) = key["sk-oai-".len()..].split_once('_').unwrap();
        let mut hasher = sha2::Sha256::new();
        hasher.update(key_id.as_bytes());
        hasher.update([0u8]);
        hasher.update(secret.as_bytes());
        hex::encode(hasher.finalize())
    };
    client
        .execute(
            "INSERT INTO api_keys (id, username, name, key_hash, user_groups, subscription, expires_at) \
             VALUES ('550e8400-e29b-41d4-a716-446655440000', 'alice', 'upstream key', $1, \
                     ARRAY['system:authenticated'], 'free', now() + interval '1 day')",
            &[&hash],
        )
        .await
        .unwrap();

    // Act: our migrations run over it, then our store reads the key.
    let server_db_config = db.database_config();
    maas_authz::app::migrate(&server_db_config, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let parsed = maas_authz::key::ApiKey::parse(key).unwrap();
    let found = db.store().find_by_hash(&parsed.hash()).await.unwrap();

    // Assert
    let record = found.expect("upstream's key is found by its hash");
    assert_eq!(record.username, "alice");
    assert_eq!(record.subscription, "free");
    let version: i64 = client
        .query_one("SELECT version FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 6);
}

#[tokio::test]
async fn a_key_minted_here_is_readable_with_upstreams_query() {
    let db = TestDb::migrated().await;
    let (key, record) = mint(&db.store(), &FREE_USER).await;
    let client = db.client().await;
    let parsed = maas_authz::key::ApiKey::parse(&key).unwrap();

    // Upstream's validate lookup: by (key_hash, tenant), the hash as lowercase hex.
    let row = client
        .query_one(
            "SELECT id, username, status, user_groups, subscription FROM api_keys \
             WHERE key_hash = $1 AND tenant = $2",
            &[&parsed.hash().to_hex(), &"models-as-a-service"],
        )
        .await
        .unwrap();

    assert_eq!(row.get::<_, String>(0), record.id.to_string());
    assert_eq!(row.get::<_, String>(2), "active");
    assert_eq!(row.get::<_, Vec<String>>(3), vec!["system:authenticated"]);
    assert!(uuid_is_v4(&row.get::<_, String>(0)));
}

fn uuid_is_v4(text: &str) -> bool {
    text.len() == 36 && text.as_bytes()[14] == b'4'
}
