//! `last_used_at` write-behind: Check never writes; a burst on one key makes one batched write.

use futures::future::join_all;

use crate::check::http_get;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_256_checks_on_one_key_makes_one_write_of_last_used_at() {
    let server = TestServer::start().await;
    let (key, record) = mint(&server.db.store(), &FREE_USER).await;
    let client = server.check_client().await;
    let authorization = bearer(&key);

    let answers = join_all((0..256).map(|_| {
        let mut client = client.clone();
        // A model listing: the free tier's 5 requests a minute do not apply.
        let request = check_request("/simulator/v1/models", &[("authorization", &authorization)]);
        async move { client.check(request).await.unwrap().into_inner() }
    }))
    .await;

    assert!(
        answers
            .iter()
            .all(|a| a.status.as_ref().is_some_and(|s| s.code == 0))
    );
    let db = server.db.client().await;
    let mut last_used: Option<chrono::DateTime<chrono::Utc>> = None;
    for _ in 0..200 {
        last_used = db
            .query_one(
                "SELECT last_used_at FROM api_keys WHERE id = $1",
                &[&record.id.to_string()],
            )
            .await
            .unwrap()
            .get(0);
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        last_used.is_some(),
        "last_used_at is written by the background flush"
    );
    // Several more flush periods pass: the interval (60 s) suppresses any second write.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let metrics = http_get(server.server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains(
            "maas_authz_db_query_duration_seconds_count{statement=\"update_last_used\"} 1"
        ),
        "exactly one write expected:\n{metrics}"
    );
    for flushed in [
        "maas_authz_last_used_keys_written_total 1",
        "maas_authz_last_used_batch_seconds_count 1",
        "maas_authz_last_used_flush_seconds_count 1",
        "maas_authz_last_used_write_failures_total 0",
    ] {
        assert!(metrics.contains(flushed), "{flushed}:\n{metrics}");
    }
}

#[tokio::test]
async fn shutdown_writes_the_uses_noted_since_the_last_flush() {
    let db = TestDb::migrated().await;
    let mut config = serve_config(&db);
    config.last_used_flush_interval = std::time::Duration::from_secs(3_600);
    let server = maas_authz::app::Application::build(config).await.unwrap();
    let (key, record) = mint(&db.store(), &FREE_USER).await;
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();
    client
        .check(check_request(
            "/simulator/v1/models",
            &[("authorization", &bearer(&key))],
        ))
        .await
        .unwrap();
    drop(client);

    server.shutdown().await.unwrap();

    let last_used: Option<chrono::DateTime<chrono::Utc>> = db
        .client()
        .await
        .query_one(
            "SELECT last_used_at FROM api_keys WHERE id = $1",
            &[&record.id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        last_used.is_some(),
        "the final flush at shutdown writes pending uses"
    );
}

#[tokio::test]
async fn a_flush_writes_every_noted_use_in_statements_of_at_most_the_batch_size() {
    // Arrange: a statement-level trigger records how many rows each UPDATE of api_keys touched.
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE update_statements (rows bigint NOT NULL, at timestamptz DEFAULT clock_timestamp());
             CREATE FUNCTION note_update_statement() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO update_statements (rows) SELECT count(*) FROM new_rows; RETURN NULL; END $$;
             CREATE TRIGGER note_update_statement AFTER UPDATE ON api_keys
             REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION note_update_statement();",
        )
        .await
        .unwrap();
    let mut config = serve_config(&db);
    config.last_used_flush_interval = std::time::Duration::from_secs(3_600);
    config.last_used_batch_size = 4;
    let server = maas_authz::app::Application::build(config).await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..10 {
        keys.push(mint(&db.store(), &FREE_USER).await);
    }
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();
    for (key, _) in &keys {
        client
            .check(check_request(
                "/simulator/v1/models",
                &[("authorization", &bearer(key))],
            ))
            .await
            .unwrap();
    }
    drop(client);

    // Act: the flush at shutdown writes all ten noted uses.
    server.shutdown().await.unwrap();

    // Assert
    let client = db.client().await;
    let unwritten: i64 = client
        .query_one(
            "SELECT count(*) FROM api_keys WHERE last_used_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let statements: Vec<i64> = client
        .query("SELECT rows FROM update_statements ORDER BY at", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(unwritten, 0, "every used key has last_used_at");
    assert_eq!(statements, vec![4, 4, 2]);
}
