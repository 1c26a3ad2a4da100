//! Abuse limits against the real server and PostgreSQL: the cap on a user's active keys (REST
//! mint and tokens, concurrency, the CLI's break-glass), and the budget of lookups for
//! credentials no cache holds (Check's per-peer and global buckets, the REST API's key and
//! TokenReview lookups), with the errors a user sees for bad settings.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use chrono::Utc;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use maas_authz::breaker::BreakerState;
use maas_authz::config::{ActiveKeyCap, OptionalRate};
use maas_authz::key::ApiKey;
use maas_authz::pb::ValidateRequest;
use maas_authz::pb::key_validation_client::KeyValidationClient;
use maas_authz::store::KeyStore;
use maas_authz::store::postgres::{NoQueryObserver, PgKeyStore, PgSettings};
use reqwest::Method;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::check::http_get;
use crate::rest_support::*;
use crate::support::*;

const CHAT: &str = "/simulator/v1/chat/completions";

fn cap_message(active: u32) -> String {
    format!(
        "you have {active} active API keys, the most allowed; revoke one (DELETE \
         /v1/api-keys/{{id}}) or wait for one to expire"
    )
}

async fn capped_server(cap: u32) -> RestServer {
    RestServer::start_with(|config| {
        config.abuse.max_active_keys_per_user = ActiveKeyCap(Some(cap));
    })
    .await
}

async fn try_create(server: &RestServer, token: &str, name: &str) -> Reply {
    server
        .call(Method::POST, "/v1/api-keys")
        .token(token)
        .json(json!({"name": name}))
        .send()
        .await
}

async fn active_keys_of(db: &TestDb, user: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM api_keys WHERE username = $1 AND status = 'active' \
             AND expires_at > now()",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------------------------
// The cap on active keys per user

#[tokio::test]
async fn the_mint_past_the_cap_is_refused_with_how_many_keys_and_what_to_do() {
    let server = capped_server(3).await;
    for name in ["one", "two", "three"] {
        server.create_key(ALICE, json!({"name": name})).await;
    }

    let key = try_create(&server, ALICE, "four").await;
    let token = server
        .call(Method::POST, "/v1/tokens")
        .token(ALICE)
        .json(json!({"expiration": "15m"}))
        .send()
        .await;
    let ephemeral = server
        .call(Method::POST, "/maas-api/v1/api-keys")
        .token(ALICE)
        .json(json!({"ephemeral": true}))
        .send()
        .await;

    let refusal = json!({"error": cap_message(3), "code": "too_many_active_keys"});
    key.assert_exactly(400, refusal.clone());
    token.assert_exactly(400, refusal.clone());
    ephemeral.assert_exactly(400, refusal);
    assert_eq!(active_keys_of(&server.test.db, "alice").await, 3);
    server.create_key(BOB, json!({"name": "bob's own"})).await;
}

#[tokio::test]
async fn ephemeral_keys_and_access_tokens_take_slots_too() {
    let server = capped_server(2).await;
    server.create_key(ALICE, json!({"ephemeral": true})).await;
    server
        .call(Method::POST, "/v1/tokens")
        .token(ALICE)
        .json(json!({"expiration": "15m"}))
        .send()
        .await
        .assert_status(201);

    let regular = try_create(&server, ALICE, "regular").await;

    regular.assert_exactly(
        400,
        json!({"error": cap_message(2), "code": "too_many_active_keys"}),
    );
}

#[tokio::test]
async fn revoking_a_key_frees_a_slot() {
    let server = capped_server(2).await;
    let first = server.create_key(ALICE, json!({"name": "first"})).await;
    server.create_key(ALICE, json!({"name": "second"})).await;
    try_create(&server, ALICE, "third").await.assert_status(400);

    server
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{}", first["id"].as_str().unwrap()),
        )
        .token(ALICE)
        .send()
        .await
        .assert_status(200);
    let after_revocation = try_create(&server, ALICE, "third").await;

    after_revocation.assert_status(201);
    assert_eq!(active_keys_of(&server.test.db, "alice").await, 2);
}

#[tokio::test]
async fn expired_keys_and_keys_of_another_tenant_do_not_count() {
    let server = capped_server(2).await;
    let store = server.test.db.store();
    for _ in 0..3 {
        insert_raw(
            &store,
            &FREE_USER,
            Utc::now() - chrono::Duration::minutes(1),
        )
        .await;
    }
    let other_tenant = PgKeyStore::connect(
        &PgSettings {
            database_url: server.test.db.url.clone(),
            database_ca_file: None,
            tenant: "another-tenant".to_owned(),
            pool_size: 1,
            query_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        },
        Arc::new(NoQueryObserver),
    )
    .unwrap();
    for _ in 0..3 {
        insert_raw(
            &other_tenant,
            &FREE_USER,
            Utc::now() + chrono::Duration::days(1),
        )
        .await;
    }

    let first = try_create(&server, ALICE, "first").await;
    let second = try_create(&server, ALICE, "second").await;
    let third = try_create(&server, ALICE, "third").await;

    first.assert_status(201);
    second.assert_status(201);
    third.assert_exactly(
        400,
        json!({"error": cap_message(2), "code": "too_many_active_keys"}),
    );
}

#[tokio::test]
async fn a_user_already_over_a_lowered_cap_is_told_how_many_to_revoke() {
    let server = capped_server(2).await;
    let store = server.test.db.store();
    for _ in 0..4 {
        insert_raw(&store, &FREE_USER, Utc::now() + chrono::Duration::days(1)).await;
    }

    let refused = try_create(&server, ALICE, "fifth").await;

    refused.assert_exactly(
        400,
        json!({
            "error": "you have 4 active API keys and at most 2 are allowed; revoke 3 (DELETE \
                      /v1/api-keys/{id}) or wait for them to expire",
            "code": "too_many_active_keys"
        }),
    );
}

#[tokio::test]
async fn concurrent_mints_one_below_the_cap_yield_exactly_one_key() {
    let server = Arc::new(capped_server(5).await);
    for i in 0..4 {
        server
            .create_key(ALICE, json!({"name": format!("k{i}")}))
            .await;
    }

    let racers = (0..8).map(|i| {
        let server = server.clone();
        tokio::spawn(async move { try_create(&server, ALICE, &format!("racer{i}")).await })
    });
    let statuses: Vec<u16> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(|reply| reply.unwrap().status)
        .collect();

    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(active_keys_of(&server.test.db, "alice").await, 5);
}

#[tokio::test]
async fn the_cap_switched_off_lets_a_user_mint_beyond_the_default() {
    let server = RestServer::start_with(|config| {
        config.abuse.max_active_keys_per_user = ActiveKeyCap(None);
    })
    .await;
    let store = server.test.db.store();
    for _ in 0..100 {
        insert_raw(&store, &FREE_USER, Utc::now() + chrono::Duration::days(1)).await;
    }

    let hundred_and_first = try_create(&server, ALICE, "one more").await;

    hundred_and_first.assert_status(201);
}

#[tokio::test]
async fn the_operator_cli_mints_past_the_cap() {
    let server = capped_server(1).await;
    server.create_key(ALICE, json!({"name": "only"})).await;
    try_create(&server, ALICE, "second")
        .await
        .assert_status(400);

    let output = Command::new(env!("CARGO_BIN_EXE_maas-authz"))
        .args(["keys", "create", "--user", "alice", "--expires-in", "1h"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &server.test.db.url)
        .env(
            "MAAS_AUTHZ_POLICY_PATH",
            example_policy_path().to_str().unwrap(),
        )
        .env("MAAS_AUTHZ_MAX_ACTIVE_KEYS_PER_USER", "1")
        .output()
        .unwrap();

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(active_keys_of(&server.test.db, "alice").await, 2);
}

// ---------------------------------------------------------------------------------------------
// The budget of lookups for keys no cache holds

/// A Check from `peer` (Envoy's `source.address`) with `key`.
fn check_from(peer: &str, key: &str) -> CheckRequest {
    let mut request = check_request(CHAT, &[("authorization", &bearer(key))]);
    if let Some(attributes) = request.attributes.as_mut() {
        attributes.source = Some(Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: peer.to_owned(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        });
    }
    request
}

/// What Check answered: `None` on allow, else the status, reason and `retry-after`.
type Answer = Option<(i32, String, Option<String>)>;

async fn check(client: &mut AuthorizationClient<Channel>, peer: &str, key: &str) -> Answer {
    let response = client
        .check(check_from(peer, key))
        .await
        .expect("Check answers, never UNAVAILABLE")
        .into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => None,
        Some(HttpResponse::DeniedResponse(denied)) => {
            let header = |name: &str| {
                denied
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == name)
                    .map(|h| h.value.clone())
            };
            Some((
                denied.status.map_or(0, |s| s.code),
                header("x-ext-auth-reason").unwrap_or_default(),
                header("retry-after"),
            ))
        }
        other => panic!("unexpected Check answer {other:?}"),
    }
}

fn random_key() -> String {
    ApiKey::generate().unwrap().expose().to_owned()
}

/// The value of one metric line (`name{labels} value`) in the exposition text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in metrics"))
}

fn breaker_state(server: &TestServer) -> BreakerState {
    server
        .server
        .store()
        .breaker()
        .expect("serve runs with a breaker")
        .state()
}

/// The server as `configure` sets it up, and a key minted before it started (so that no
/// insert notice can evict it from the cache once cached).
async fn budgeted_server(
    configure: impl FnOnce(&mut maas_authz::config::ServeConfig),
) -> (TestServer, String) {
    let db = TestDb::migrated().await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let mut config = serve_config(&db);
    // These tests count the budget's tokens exactly: no key may skip it as known.
    config.abuse.known_key_filter = false;
    configure(&mut config);
    let server = maas_authz::app::Application::build(config)
        .await
        .expect("server starts");
    (TestServer { db, server }, key)
}

/// A rate so slow that a spent bucket stays spent for the test (`retry-after` is capped at an
/// hour).
const NEVER_REFILLS: OptionalRate = OptionalRate(Some(1e-6));

#[tokio::test]
async fn a_flood_from_one_peer_beyond_its_budget_leaves_the_breaker_closed_and_other_peers_keys_allowed()
 {
    let (server, cached) = budgeted_server(|config| {
        config.abuse.unknown_key_lookups_per_second_per_peer = NEVER_REFILLS;
        config.abuse.unknown_key_lookup_burst_per_peer = 20;
    })
    .await;
    let mut client = server.check_client().await;
    assert_eq!(check(&mut client, "192.0.2.10", &cached).await, None);

    let mut answers = Vec::new();
    for _ in 0..200 {
        answers.push(check(&mut client, "203.0.113.66", &random_key()).await);
    }
    let (fresh, _) = mint(&server.db.store(), &FREE_USER).await;
    let fresh_from_elsewhere = check(&mut client, "192.0.2.20", &fresh).await;
    let cached_from_the_flooder = check(&mut client, "203.0.113.66", &cached).await;

    let not_found = Some((401, "key_not_found".to_owned(), None));
    let throttled = Some((
        429,
        "unknown_key_rate_limited".to_owned(),
        Some("3600".to_owned()),
    ));
    assert_eq!(answers.iter().filter(|a| **a == not_found).count(), 20);
    assert_eq!(answers.iter().filter(|a| **a == throttled).count(), 180);
    assert_eq!(fresh_from_elsewhere, None, "a new key from another peer");
    assert_eq!(
        cached_from_the_flooder, None,
        "cached keys never ask the budget"
    );
    assert_eq!(breaker_state(&server), BreakerState::Closed);
    let metrics = http_get(server.server.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "maas_authz_unknown_key_lookups_throttled_total{scope=\"peer\"}"
        ),
        180.0
    );
    assert_eq!(
        metric(
            &metrics,
            "maas_authz_db_query_duration_seconds_count{statement=\"select_key_by_hash\"}"
        ),
        22.0,
        "the cached key, 20 unknown keys within the budget, the fresh key"
    );
    assert_eq!(
        metric(
            &metrics,
            "maas_authz_check_decisions_total{outcome=\"deny\",reason=\"unknown_key_rate_limited\"}"
        ),
        180.0
    );
}

#[tokio::test]
async fn past_the_global_budget_unknown_keys_get_429_without_a_query_and_cached_keys_still_pass() {
    let (server, cached) = budgeted_server(|config| {
        config.abuse.unknown_key_lookups_per_second = NEVER_REFILLS;
        config.abuse.unknown_key_lookup_burst = 10;
        config.abuse.unknown_key_lookups_per_second_per_peer = OptionalRate(None);
    })
    .await;
    let mut client = server.check_client().await;
    assert_eq!(check(&mut client, "192.0.2.10", &cached).await, None);

    let mut answers = Vec::new();
    for peer in 0..30 {
        answers.push(check(&mut client, &format!("198.51.100.{peer}"), &random_key()).await);
    }
    let cached_again = check(&mut client, "192.0.2.99", &cached).await;

    let throttled = answers
        .iter()
        .filter(
            |a| matches!(a, Some((429, reason, Some(_))) if reason == "unknown_key_rate_limited"),
        )
        .count();
    assert_eq!(
        throttled, 21,
        "1 token for the cached key's first lookup, 9 for unknown keys"
    );
    assert_eq!(cached_again, None);
    assert_eq!(breaker_state(&server), BreakerState::Closed);
    let metrics = http_get(server.server.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "maas_authz_unknown_key_lookups_throttled_total{scope=\"global\"}"
        ),
        21.0
    );
}

/// A server whose budget allows 5 unknown-key lookups in all, ever, started cold (no preload)
/// over a database already holding `keys` keys, with the known-key set as `filter` says.
async fn cold_replica_over(keys: usize, filter: bool) -> (TestServer, Vec<String>) {
    let db = TestDb::migrated().await;
    let mut existing = Vec::new();
    for _ in 0..keys {
        existing.push(mint(&db.store(), &FREE_USER).await.0);
    }
    let mut config = serve_config(&db);
    config.abuse.unknown_key_lookups_per_second = NEVER_REFILLS;
    config.abuse.unknown_key_lookup_burst = 5;
    config.abuse.unknown_key_lookups_per_second_per_peer = OptionalRate(None);
    config.abuse.known_key_filter = filter;
    // One user's 30 keys would otherwise meet the free tier's request limit.
    config.limits.limits_enabled = false;
    let server = maas_authz::app::Application::build(config)
        .await
        .expect("server starts");
    (TestServer { db, server }, existing)
}

/// Waits until the known-key set holds `count` hashes (it loads in the background).
async fn wait_for_known_hashes(server: &TestServer, count: f64) -> String {
    let mut metrics = String::new();
    for _ in 0..250 {
        metrics = http_get(server.server.metrics_addr, "/metrics").await;
        if metric(&metrics, "maas_authz_cache_entries{cache=\"hashes\"}") >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metrics
}

#[tokio::test]
async fn a_cold_replica_serves_every_existing_key_past_the_budget_while_unknown_keys_get_429() {
    // Arrange: 30 keys in the database, a budget of 5 lookups, nothing cached. The server
    // listens only once it knows which keys exist: no wait for the load here.
    let (server, existing) = cold_replica_over(30, true).await;
    let loaded = http_get(server.server.metrics_addr, "/metrics").await;
    let mut client = server.check_client().await;

    // Act: every existing key once, then unknown keys, then a key minted and one revoked since.
    let mut existing_answers = Vec::new();
    for key in &existing {
        existing_answers.push(check(&mut client, "192.0.2.10", key).await);
    }
    let mut unknown_answers = Vec::new();
    for _ in 0..10 {
        unknown_answers.push(check(&mut client, "192.0.2.10", &random_key()).await);
    }
    let (fresh, _) = mint(&server.db.store(), &FREE_USER).await;
    wait_for_known_hashes(&server, 31.0).await;
    let fresh_answer = check(&mut client, "192.0.2.10", &fresh).await;

    // Assert: all 30 allowed without a token; the budget still stops the unknown ones, and a
    // key minted since (noted from its insert notice) passes although the budget is spent.
    assert_eq!(
        metric(&loaded, "maas_authz_cache_entries{cache=\"hashes\"}"),
        30.0
    );
    assert_eq!(existing_answers, vec![None; 30]);
    let not_found = Some((401, "key_not_found".to_owned(), None));
    assert_eq!(
        unknown_answers.iter().filter(|a| **a == not_found).count(),
        5,
        "{unknown_answers:?}"
    );
    assert_eq!(
        unknown_answers
            .iter()
            .filter(|a| matches!(a, Some((429, reason, Some(_))) if reason == "unknown_key_rate_limited"))
            .count(),
        5,
        "{unknown_answers:?}"
    );
    assert_eq!(fresh_answer, None, "a key minted after start-up");
    assert_eq!(breaker_state(&server), BreakerState::Closed);
}

#[tokio::test]
async fn without_the_known_key_filter_a_cold_replica_throttles_existing_keys_past_the_budget() {
    let (server, existing) = cold_replica_over(30, false).await;
    let mut client = server.check_client().await;

    let mut answers = Vec::new();
    for key in &existing {
        answers.push(check(&mut client, "192.0.2.10", key).await);
    }

    assert_eq!(answers.iter().filter(|a| a.is_none()).count(), 5);
    assert_eq!(
        answers
            .iter()
            .filter(|a| matches!(a, Some((429, reason, _)) if reason == "unknown_key_rate_limited"))
            .count(),
        25
    );
    let metrics = http_get(server.server.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(&metrics, "maas_authz_cache_entries{cache=\"hashes\"}"),
        0.0,
        "nothing loaded: the set is off"
    );
}

#[tokio::test]
async fn a_revoked_key_known_to_the_filter_is_refused_as_revoked_once_the_budget_is_spent() {
    let (server, existing) = cold_replica_over(3, true).await;
    wait_for_known_hashes(&server, 3.0).await;
    let mut client = server.check_client().await;
    let revoked = ApiKey::parse(&existing[0]).unwrap().hash();
    server
        .db
        .client()
        .await
        .execute(
            "UPDATE api_keys SET status = 'revoked' WHERE key_hash = $1",
            &[&revoked.to_hex()],
        )
        .await
        .unwrap();
    for _ in 0..6 {
        check(&mut client, "192.0.2.10", &random_key()).await;
    }

    let answer = check(&mut client, "192.0.2.10", &existing[0]).await;

    assert!(
        matches!(&answer, Some((401 | 403, reason, None)) if reason.contains("revoked")),
        "{answer:?}"
    );
}

#[tokio::test]
async fn the_rest_api_and_validate_answer_429_for_unseen_api_keys_past_the_budget() {
    let server = RestServer::start_with(|config| {
        config.abuse.unknown_key_lookups_per_second = NEVER_REFILLS;
        config.abuse.unknown_key_lookup_burst = 2;
    })
    .await;
    let search = |key: String| {
        let server = &server;
        async move {
            server
                .call(Method::POST, "/v1/api-keys/search")
                .token(&key)
                .json(json!({}))
                .send()
                .await
        }
    };
    search(random_key()).await.assert_status(401);
    search(random_key()).await.assert_status(401);

    let throttled = search(random_key()).await;

    let internal = server
        .internal(Method::POST, "/internal/v1/api-keys/validate")
        .json(json!({"key": random_key()}))
        .send()
        .await;
    let grpc = KeyValidationClient::new(server.test.channel().await)
        .validate(ValidateRequest { key: random_key() })
        .await
        .unwrap_err();

    let message = "too many requests with credentials this service has not seen recently; \
                   retry in 3600 s";
    throttled.assert_exactly(429, json!({ "error": message }));
    assert_eq!(throttled.header("retry-after"), Some("3600"));
    internal.assert_exactly(429, json!({ "error": message }));
    assert_eq!(grpc.code(), tonic::Code::ResourceExhausted);
}

/// A Kubernetes API server that reviews `k8s-token-of-erin` as erin, rejects every other
/// token, and counts the reviews it answers.
async fn token_review_server() -> (String, Arc<AtomicUsize>, tempfile::NamedTempFile) {
    async fn review(
        State(reviews): State<Arc<AtomicUsize>>,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        reviews.fetch_add(1, Ordering::SeqCst);
        let status = if body["spec"]["token"] == "k8s-token-of-erin" {
            json!({"authenticated": true, "user": {"username": "erin", "groups": ["system:authenticated"]}})
        } else {
            json!({"authenticated": false})
        };
        Json(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}),
        )
    }
    let reviews = Arc::new(AtomicUsize::new(0));
    let router = axum::Router::new()
        .route("/apis/authentication.k8s.io/v1/tokenreviews", post(review))
        .with_state(reviews.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "service-account-token\n").unwrap();
    (url, reviews, token_file)
}

#[tokio::test]
async fn past_the_token_review_budget_unseen_tokens_get_429_and_no_review_while_reviewed_ones_pass()
{
    let (url, reviews, token_file) = token_review_server().await;
    let server = RestServer::start_with(|config| {
        config.identity.kube_api_url = Some(url);
        config.identity.kube_token_file = Some(token_file.path().to_path_buf());
        config.abuse.token_reviews_per_second = NEVER_REFILLS;
        config.abuse.token_review_burst = 3;
    })
    .await;
    let models = |token: String| {
        let server = &server;
        async move {
            server
                .call(Method::GET, "/v1/models")
                .token(&token)
                .send()
                .await
        }
    };
    models("k8s-token-of-erin".to_owned())
        .await
        .assert_status(200);
    models("made-up-1".to_owned()).await.assert_status(401);
    models("made-up-2".to_owned()).await.assert_status(401);

    let throttled = models("made-up-3".to_owned()).await;
    let reviewed_again = models("k8s-token-of-erin".to_owned()).await;

    throttled.assert_exactly(
        429,
        json!({"error": {
            "message": "too many requests with credentials this service has not seen recently; retry in 3600 s",
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded"
        }}),
    );
    assert_eq!(throttled.header("retry-after"), Some("3600"));
    reviewed_again.assert_status(200);
    assert_eq!(
        reviews.load(Ordering::SeqCst),
        3,
        "no review past the budget"
    );
    let metrics = http_get(server.test.server.metrics_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "maas_authz_token_reviews_throttled_total{scope=\"global\"}"
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Settings

#[test]
fn serve_with_a_bad_abuse_limit_names_the_variable_and_the_fix() {
    let cases = [
        (
            "MAAS_AUTHZ_MAX_ACTIVE_KEYS_PER_USER",
            "0",
            "must be at least 1 (use off for no cap)",
        ),
        (
            "MAAS_AUTHZ_MAX_ACTIVE_KEYS_PER_USER",
            "plenty",
            "must be a whole number from 1 to 1000000, or off for no cap",
        ),
        (
            "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUPS_PER_SECOND",
            "0",
            "must be greater than zero (use off to disable)",
        ),
        (
            "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUPS_PER_SECOND_PER_PEER",
            "fast",
            "like 1000 or 0.5 (or off to disable)",
        ),
        (
            "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP_BURST",
            "0",
            "0 is not in 1..=10000000",
        ),
        (
            "MAAS_AUTHZ_UNKNOWN_KEY_LOOKUP_BURST_PER_PEER",
            "-5",
            "invalid value '-5'",
        ),
        (
            "MAAS_AUTHZ_TOKEN_REVIEWS_PER_SECOND",
            "-1",
            "like 1000 or 0.5 (or off to disable)",
        ),
        (
            "MAAS_AUTHZ_TOKEN_REVIEW_BURST",
            "lots",
            "invalid value 'lots'",
        ),
    ];

    for (variable, value, message) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_maas-authz"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", "postgres://x@127.0.0.1:9/x")
            .env("MAAS_AUTHZ_POLICY_PATH", "examples/policy")
            .env(variable, value)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}={value}");
        assert!(text.contains(variable), "{variable}={value}: {text}");
        assert!(text.contains(message), "{variable}={value}: {text}");
    }
}

#[tokio::test]
async fn an_unseen_key_is_refused_by_the_store_not_the_budget_while_tokens_remain() {
    let (server, _) = budgeted_server(|_| {}).await;
    let mut client = server.check_client().await;

    let answer = check(&mut client, "192.0.2.1", &random_key()).await;
    let revoked = {
        let (key, record) = mint(&server.db.store(), &FREE_USER).await;
        server.db.store().revoke_key(record.id).await.unwrap();
        check(&mut client, "192.0.2.1", &key).await
    };

    assert_eq!(answer, Some((401, "key_not_found".to_owned(), None)));
    assert_eq!(revoked, Some((401, "key_revoked".to_owned(), None)));
}
