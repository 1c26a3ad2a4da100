//! Warm start: a new replica reads the recently used active keys into its cache in the
//! background, so its first Checks are hits and PostgreSQL sees no miss storm.

use std::time::Duration;

use maas_authz::app::Application;
use maas_authz::config::OptionalDuration;
use maas_authz::store::KeyStore;

use crate::check::http_get;
use crate::support::*;

/// The value of one sample line of a Prometheus text page, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_serves_recently_used_keys_from_its_cache_without_querying_them() {
    // Arrange: 20 keys used an hour ago, 5 used and then revoked, 5 never used.
    let db = TestDb::migrated().await;
    let store = db.store();
    let mut used = Vec::new();
    for _ in 0..20 {
        used.push(mint(&store, &FREE_USER).await);
    }
    let mut revoked = Vec::new();
    for _ in 0..5 {
        revoked.push(mint(&store, &FREE_USER).await);
    }
    let mut never_used = Vec::new();
    for _ in 0..5 {
        never_used.push(mint(&store, &FREE_USER).await);
    }
    let client = db.client().await;
    for (_, record) in used.iter().chain(&revoked) {
        client
            .execute(
                "UPDATE api_keys SET last_used_at = now() - interval '1 hour' WHERE id = $1",
                &[&record.id.to_string()],
            )
            .await
            .unwrap();
    }
    for (_, record) in &revoked {
        store.revoke_key(record.id).await.unwrap();
    }
    let mut config = serve_config(&db);
    config.cache_preload = OptionalDuration(Some(Duration::from_secs(24 * 3_600)));

    // Act: start, wait for the preload, then use every key once.
    let server = Application::build(config).await.unwrap();
    let mut metrics = String::new();
    for _ in 0..250 {
        metrics = http_get(server.metrics_addr, "/metrics").await;
        if sample(&metrics, "maas_authz_cache_entries{cache=\"known\"}") >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = reqwest::get(format!("http://{}/ready", server.http_addr))
        .await
        .unwrap()
        .status();
    let mut grpc = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();
    let mut codes = Vec::new();
    for (key, _) in &used {
        let answer = grpc
            .check(check_request(
                "/simulator/v1/models",
                &[("authorization", &bearer(key))],
            ))
            .await
            .unwrap()
            .into_inner();
        codes.push(answer.status.map_or(-1, |status| status.code));
    }
    let after_used = http_get(server.metrics_addr, "/metrics").await;
    let mut revoked_codes = Vec::new();
    for (key, _) in revoked.iter().chain(&never_used) {
        let answer = grpc
            .check(check_request(
                "/simulator/v1/models",
                &[("authorization", &bearer(key))],
            ))
            .await
            .unwrap()
            .into_inner();
        revoked_codes.push(answer.status.map_or(-1, |status| status.code));
    }

    // Assert: the 20 used keys were preloaded (not the revoked or unused ones) and answered
    // from the cache, with no key query at all.
    assert_eq!(
        sample(&metrics, "maas_authz_cache_entries{cache=\"known\"}"),
        20.0,
        "{metrics}"
    );
    assert!(ready.is_success());
    assert_eq!(codes, vec![0; 20], "every preloaded key is allowed");
    assert_eq!(
        sample(
            &after_used,
            "maas_authz_cache_lookups_total{result=\"hit\"}"
        ),
        20.0
    );
    assert_eq!(
        sample(
            &after_used,
            "maas_authz_db_query_duration_seconds_count{statement=\"select_key_by_hash\"}"
        ),
        0.0,
        "{after_used}"
    );
    // Revoked keys are refused (read on first use, as revoked); unused ones read and allowed.
    assert_eq!(&revoked_codes[..5], &[16; 5], "UNAUTHENTICATED");
    assert_eq!(&revoked_codes[5..], &[0; 5]);
    server.shutdown().await.unwrap();
}
