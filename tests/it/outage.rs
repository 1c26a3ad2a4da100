//! Database outages, cut for real by a TCP proxy between the service and PostgreSQL: cached keys
//! keep working (stale-if-error) up to the maximum staleness, unknown keys are refused at once by
//! the circuit breaker, readiness and gRPC health report the degraded state, and everything
//! recovers by itself when the database returns.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use maas_authz::app::{Application, DATABASE_HEALTH_SERVICE, RunningServer};
use maas_authz::config::ServeConfig;
use maas_authz::key::ApiKey;
use maas_authz::store::KeyStore;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

const CHAT: &str = "/simulator/v1/chat/completions";

/// A server reaching its database through `proxy`, with short timeouts and a short cache TTL so
/// an outage outlives cached entries within a test.
async fn server_behind(
    proxy: &DbProxy,
    db: &TestDb,
    tune: impl FnOnce(&mut ServeConfig),
) -> (RunningServer, AuthorizationClient<Channel>) {
    let mut config = serve_config(db);
    config.database.database_url = proxy.url_for(&db.url);
    config.database.db_query_timeout = Duration::from_millis(500);
    config.database.db_connect_timeout = Duration::from_millis(500);
    config.cache_ttl = Duration::from_millis(100);
    config.negative_cache_ttl = Duration::from_millis(100);
    config.cache_max_staleness = Duration::from_secs(60);
    config.db_breaker_threshold = 2;
    config.db_breaker_cool_down = Duration::from_millis(100);
    // These tests check one free-tier key many times: its 5 requests a minute are not the point.
    config.limits.limits_enabled = false;
    tune(&mut config);
    let server = Application::build(config).await.expect("server starts");
    let client = AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    (server, client)
}

/// The gRPC code of a Check (0 allowed; 7/16 denied as PERMISSION_DENIED/UNAUTHENTICATED), or
/// the transport status when the service could not decide.
async fn check(client: &mut AuthorizationClient<Channel>, key: &str) -> Result<i32, tonic::Code> {
    client
        .check(check_request(CHAT, &[("authorization", &bearer(key))]))
        .await
        .map(|response| response.into_inner().status.map_or(-1, |s| s.code))
        .map_err(|status| status.code())
}

async fn metrics(server: &RunningServer) -> String {
    crate::check::http_get(server.metrics_addr, "/metrics").await
}

/// The value of one sample line (`name{labels}`), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `condition` every 20 ms; bounded so a broken recovery fails the test.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut condition: F) {
    for _ in 0..1_000 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// The gRPC health status of `service` (1 SERVING, 2 NOT_SERVING).
async fn database_health(server: &RunningServer, service: &str) -> i32 {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn readiness(server: &RunningServer) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{}/ready", server.http_addr))
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_keeps_being_allowed_during_an_outage_past_the_cache_ttl() {
    let db = TestDb::migrated().await;
    let proxy = DbProxy::start().await;
    // Minted before the server starts, so the insert's own notice cannot evict the entry later.
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let (server, mut client) = server_behind(&proxy, &db, |_| {}).await;
    assert_eq!(check(&mut client, &key).await, Ok(0), "cached while up");

    proxy.cut();

    // Every check during the outage is allowed, until some were answered from a stale entry
    // (the TTL of 100 ms is over and the database did not answer the re-read).
    eventually("a check is answered stale-if-error", async || {
        assert_eq!(check(&mut client, &key).await, Ok(0));
        sample(
            &metrics(&server).await,
            "maas_authz_cache_lookups_total{result=\"stale\"}",
        ) >= 3.0
    })
    .await;
    assert_eq!(check(&mut client, &key).await, Ok(0));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_gets_unavailable_from_the_open_breaker_without_a_query() {
    let db = TestDb::migrated().await;
    let proxy = DbProxy::start().await;
    // A long cool-down keeps the breaker open for the whole test once it opened.
    let (server, mut client) = server_behind(&proxy, &db, |config| {
        config.db_breaker_cool_down = Duration::from_secs(600);
    })
    .await;
    proxy.cut();
    eventually("the breaker opens", async || {
        let unknown = ApiKey::generate().unwrap();
        assert_eq!(
            check(&mut client, unknown.expose()).await,
            Err(tonic::Code::Unavailable)
        );
        sample(
            &metrics(&server).await,
            "maas_authz_db_circuit_breaker_state{state=\"open\"}",
        ) == 1.0
            || sample(
                &metrics(&server).await,
                "maas_authz_db_query_refused_total{statement=\"select_key_by_hash\"}",
            ) > 0.0
    })
    .await;
    let before = metrics(&server).await;

    let unknown = ApiKey::generate().unwrap();
    let outcome = check(&mut client, unknown.expose()).await;

    let after = metrics(&server).await;
    assert_eq!(outcome, Err(tonic::Code::Unavailable));
    let refused = "maas_authz_db_query_refused_total{statement=\"select_key_by_hash\"}";
    assert_eq!(
        sample(&after, refused),
        sample(&before, refused) + 1.0,
        "the lookup was refused by the breaker:\n{after}"
    );
    let sent = "maas_authz_db_query_duration_seconds_count{statement=\"select_key_by_hash\"}";
    assert_eq!(
        sample(&after, sent),
        sample(&before, sent),
        "no statement was attempted"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_older_than_the_maximum_staleness_gets_unavailable() {
    let db = TestDb::migrated().await;
    let proxy = DbProxy::start().await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let (server, mut client) = server_behind(&proxy, &db, |config| {
        config.cache_max_staleness = Duration::from_millis(500);
    })
    .await;
    assert_eq!(check(&mut client, &key).await, Ok(0));

    proxy.cut();

    eventually("the stale entry stops being used", async || {
        match check(&mut client, &key).await {
            Ok(0) => false,
            Err(tonic::Code::Unavailable) => true,
            other => panic!("a cached valid key is allowed or unavailable, not {other:?}"),
        }
    })
    .await;
    assert_eq!(
        check(&mut client, &key).await,
        Err(tonic::Code::Unavailable)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_grpc_health_report_degraded_during_an_outage_and_recover() {
    let db = TestDb::migrated().await;
    let proxy = DbProxy::start().await;
    let (server, _) = server_behind(&proxy, &db, |_| {}).await;
    eventually("the database is reported reachable", async || {
        database_health(&server, DATABASE_HEALTH_SERVICE).await == 1
    })
    .await;
    assert_eq!(readiness(&server).await.1["status"], "ready");

    proxy.cut();

    eventually("the database is reported unreachable", async || {
        database_health(&server, DATABASE_HEALTH_SERVICE).await == 2
    })
    .await;
    let (status, body) = readiness(&server).await;
    assert_eq!(status, 200, "a degraded replica stays in the load balancer");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["database"], "unavailable");
    assert_eq!(
        database_health(&server, "").await,
        1,
        "the overall gRPC health stays SERVING"
    );
    let metrics_text = metrics(&server).await;
    assert_eq!(
        sample(&metrics_text, "maas_authz_database_degraded"),
        1.0,
        "{metrics_text}"
    );

    proxy.restore();

    eventually("the database is reported reachable again", async || {
        database_health(&server, DATABASE_HEALTH_SERVICE).await == 1
    })
    .await;
    assert_eq!(
        readiness(&server).await,
        (200, serde_json::json!({"status": "ready"}))
    );
    let metrics_text = metrics(&server).await;
    assert_eq!(sample(&metrics_text, "maas_authz_database_degraded"), 0.0);
    assert_eq!(
        sample(
            &metrics_text,
            "maas_authz_db_circuit_breaker_state{state=\"closed\"}"
        ),
        1.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_database_returns_a_key_revoked_afterwards_is_refused_again() {
    let db = TestDb::migrated().await;
    let proxy = DbProxy::start().await;
    let (key, record) = mint(&db.store(), &FREE_USER).await;
    // A TTL far beyond the test: only the recovered listener can explain a refusal.
    let (server, mut client) = server_behind(&proxy, &db, |config| {
        config.cache_ttl = Duration::from_secs(3_600);
        config.cache_max_staleness = Duration::from_secs(7_200);
    })
    .await;
    assert_eq!(check(&mut client, &key).await, Ok(0));
    proxy.cut();
    eventually("the outage is noticed", async || {
        sample(&metrics(&server).await, "maas_authz_database_degraded") == 1.0
    })
    .await;
    assert_eq!(
        check(&mut client, &key).await,
        Ok(0),
        "served during the outage"
    );

    proxy.restore();
    wait_for_listener(&db).await;
    assert_eq!(
        check(&mut client, &key).await,
        Ok(0),
        "still valid after recovery"
    );
    db.store()
        .revoke_key(record.id)
        .await
        .unwrap()
        .expect("revoked");

    eventually("the revoked key is refused", async || {
        check(&mut client, &key).await == Ok(16)
    })
    .await;
    server.shutdown().await.unwrap();
}
