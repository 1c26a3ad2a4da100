//! Request and token limits through the real gRPC Check: 429s, `retry-after`, the
//! `x-ratelimit-*` headers, token charges, and counters shared by two servers through Redis.
//!
//! The servers read their windows from a manual clock, so the window boundaries are where the
//! test puts them. Redis comes from `MAAS_AUTHZ_TEST_REDIS_URL` (`scripts/test.sh` finds or
//! starts one); each test uses its own random key prefix.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use maas_authz::app::{Application, RunningServer};
use maas_authz::clock::ManualClock;
use maas_authz::config::{OnRedisError, ServeConfig};
use maas_authz::ids::SubscriptionKey;
use reqwest::Method;
use serde_json::json;

use crate::rest_support::{ALICE, RestServer};
use crate::support::*;

const CHAT: &str = "/simulator/v1/chat/completions";
const FREE_SIMULATOR: &str = "models-as-a-service/free@models-as-a-service/simulator";
/// 10 s into a minute, so that the current one-minute window has 50 s left.
const TEN_SECONDS_INTO_A_MINUTE: u64 = 1_800_000_000_000 + 10_000;

fn redis_url() -> String {
    std::env::var("MAAS_AUTHZ_TEST_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect(
            "MAAS_AUTHZ_TEST_REDIS_URL is unset: run the tests through scripts/test.sh, which \
             finds or starts a Redis (scripts/ensure-redis.sh)",
        )
}

fn with_redis(config: &mut ServeConfig, url: String, prefix: &str) {
    config.limits.redis_url = Some(url);
    config.limits.redis_key_prefix = prefix.to_owned();
}

async fn start_server(config: ServeConfig, clock: &Arc<ManualClock>) -> RunningServer {
    Application::build_with_clock(config, clock.clone())
        .await
        .expect("server starts")
}

async fn check(server: &RunningServer, key: &str, path: &str) -> CheckResponse {
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .expect("connect gRPC");
    client
        .check(check_request(path, &[("authorization", &bearer(key))]))
        .await
        .expect("Check answers")
        .into_inner()
}

fn header<'a>(options: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The `x-ratelimit-*` headers of an allowed request (they go to the client's response).
fn allowed_limits(response: &CheckResponse) -> Vec<(String, String)> {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected an allow, got {response:?}");
    };
    ok.response_headers_to_add
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn remaining_requests(response: &CheckResponse) -> String {
    allowed_limits(response)
        .into_iter()
        .find(|(name, _)| name == "x-ratelimit-remaining-requests")
        .map(|(_, value)| value)
        .expect("x-ratelimit-remaining-requests")
}

fn denied(response: &CheckResponse) -> (i32, &[HeaderValueOption], serde_json::Value) {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => (
            denied.status.as_ref().map_or(0, |s| s.code),
            &denied.headers,
            serde_json::from_str(&denied.body).expect("JSON body"),
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn the_free_tiers_sixth_request_in_a_minute_gets_429_with_retry_after_and_headers_count_down()
{
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let server = start_server(serve_config(&db), &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    let mut first_five = Vec::new();
    for _ in 0..5 {
        first_five.push(check(&server, &key, CHAT).await);
    }
    let sixth = check(&server, &key, CHAT).await;

    assert_eq!(
        allowed_limits(&first_five[0]),
        [
            ("x-ratelimit-limit-requests", "5"),
            ("x-ratelimit-remaining-requests", "4"),
            ("x-ratelimit-reset-requests", "50s"),
            ("x-ratelimit-limit-tokens", "100"),
            ("x-ratelimit-remaining-tokens", "100"),
            ("x-ratelimit-reset-tokens", "50s"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    let countdown: Vec<String> = first_five.iter().map(remaining_requests).collect();
    assert_eq!(countdown, ["4", "3", "2", "1", "0"]);
    let (status, headers, body) = denied(&sixth);
    assert_eq!(status, 429);
    assert_eq!(header(headers, "retry-after"), Some("50"));
    assert_eq!(
        header(headers, "x-ext-auth-reason"),
        Some("request_rate_limited")
    );
    assert_eq!(header(headers, "x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(header(headers, "content-type"), Some("application/json"));
    assert_eq!(
        body,
        serde_json::json!({"error": {
            "message": "Rate limit exceeded",
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
        }})
    );

    clock.advance(Duration::from_secs(50));
    let next_window = check(&server, &key, CHAT).await;
    assert_eq!(remaining_requests(&next_window), "4");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn check_refuses_with_429_once_charged_tokens_spend_the_window() {
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let server = start_server(serve_config(&db), &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let limiter = server.limiter().expect("limits on").clone();

    limiter
        .charge_tokens("alice", &SubscriptionKey::from_wire(FREE_SIMULATOR), 60)
        .await
        .unwrap();
    let partly_spent = check(&server, &key, CHAT).await;
    limiter
        .charge_tokens("alice", &SubscriptionKey::from_wire(FREE_SIMULATOR), 40)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let spent = check(&server, &key, CHAT).await;

    let remaining_tokens = allowed_limits(&partly_spent)
        .into_iter()
        .find(|(name, _)| name == "x-ratelimit-remaining-tokens");
    assert_eq!(
        remaining_tokens,
        Some(("x-ratelimit-remaining-tokens".to_owned(), "40".to_owned()))
    );
    let (status, headers, body) = denied(&spent);
    assert_eq!(status, 429);
    assert_eq!(
        header(headers, "x-ext-auth-reason"),
        Some("token_rate_limited")
    );
    assert_eq!(header(headers, "retry-after"), Some("45"));
    assert_eq!(header(headers, "x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn model_listings_under_a_model_are_never_counted() {
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let server = start_server(serve_config(&db), &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    for path in ["/simulator/v1/models", "/llm/simulator/v1/models/simulator"]
        .into_iter()
        .cycle()
        .take(8)
    {
        let models = check(&server, &key, path).await;
        assert!(allowed_limits(&models).is_empty(), "{path}");
    }
    let chat = check(&server, &key, CHAT).await;

    assert_eq!(remaining_requests(&chat), "4");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn all_of_a_users_keys_share_one_counter() {
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let server = start_server(serve_config(&db), &clock).await;
    let (first_key, _) = mint(&db.store(), &FREE_USER).await;
    let (second_key, _) = mint(&db.store(), &FREE_USER).await;

    for _ in 0..3 {
        check(&server, &first_key, CHAT).await;
    }
    let fourth = check(&server, &second_key, CHAT).await;
    check(&server, &second_key, CHAT).await;
    let sixth = check(&server, &second_key, CHAT).await;

    assert_eq!(remaining_requests(&fourth), "1");
    assert_eq!(denied(&sixth).0, 429);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_servers_on_one_redis_share_one_counter_exactly() {
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let prefix = format!("maas-authz-test-{}:", uuid_simple());
    let mut config = serve_config(&db);
    with_redis(&mut config, redis_url(), &prefix);
    let first = start_server(config.clone(), &clock).await;
    let second = start_server(config, &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    let mut countdown = Vec::new();
    for round in 0..5 {
        let server = if round % 2 == 0 { &first } else { &second };
        countdown.push(remaining_requests(&check(server, &key, CHAT).await));
    }
    let sixth_on_first = check(&first, &key, CHAT).await;
    let sixth_on_second = check(&second, &key, CHAT).await;
    second
        .limiter()
        .unwrap()
        .charge_tokens("alice", &SubscriptionKey::from_wire(FREE_SIMULATOR), 30)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(50));
    let next_window = check(&first, &key, CHAT).await;

    assert_eq!(countdown, ["4", "3", "2", "1", "0"]);
    assert_eq!(denied(&sixth_on_first).0, 429);
    assert_eq!(denied(&sixth_on_second).0, 429);
    assert_eq!(
        header(denied(&sixth_on_second).1, "retry-after"),
        Some("50")
    );
    assert_eq!(remaining_requests(&next_window), "4");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_charged_on_one_server_refuse_requests_on_another_through_redis() {
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let prefix = format!("maas-authz-test-{}:", uuid_simple());
    let mut config = serve_config(&db);
    with_redis(&mut config, redis_url(), &prefix);
    let first = start_server(config.clone(), &clock).await;
    let second = start_server(config, &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    first
        .limiter()
        .unwrap()
        .charge_tokens("alice", &SubscriptionKey::from_wire(FREE_SIMULATOR), 100)
        .await
        .unwrap();
    let refused = check(&second, &key, CHAT).await;

    let (status, headers, _) = denied(&refused);
    assert_eq!(status, 429);
    assert_eq!(
        header(headers, "x-ext-auth-reason"),
        Some("token_rate_limited")
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// A loopback port nothing listens on: Redis "down".
fn unreachable_redis() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("redis://127.0.0.1:{port}")
}

#[tokio::test]
async fn with_redis_unreachable_requests_pass_uncounted_by_default_and_metrics_say_so() {
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let mut config = serve_config(&db);
    with_redis(&mut config, unreachable_redis(), "maas-authz-test:");
    let server = start_server(config, &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(check(&server, &key, CHAT).await);
    }
    let ready = reqwest::get(format!("http://{}/ready", server.http_addr))
        .await
        .unwrap();
    let ready_status = ready.status().as_u16();
    let ready_body: serde_json::Value = ready.json().await.unwrap();
    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    for answer in &answers {
        assert!(allowed_limits(answer).is_empty(), "allowed, uncounted");
    }
    assert_eq!(ready_status, 200);
    assert_eq!(
        ready_body,
        serde_json::json!({"status": "ready", "counterStore": "down"})
    );
    assert!(
        metrics.contains("maas_authz_counter_store_errors_total 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("maas_authz_counter_store_up 0"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_redis_unreachable_and_deny_configured_check_fails_unavailable_and_is_not_ready() {
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let mut config = serve_config(&db);
    with_redis(&mut config, unreachable_redis(), "maas-authz-test:");
    config.limits.limits_on_redis_error = OnRedisError::Deny;
    let server = start_server(config, &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", server.grpc_addr),
    )
    .await
    .unwrap();

    let outcome = client
        .check(check_request(CHAT, &[("authorization", &bearer(&key))]))
        .await;
    let models = client
        .check(check_request(
            "/simulator/v1/models",
            &[("authorization", &bearer(&key))],
        ))
        .await;
    let ready = reqwest::get(format!("http://{}/ready", server.http_addr))
        .await
        .unwrap();

    let status = outcome.expect_err("Check must fail, not allow");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let models = models
        .expect("a model listing needs no counter")
        .into_inner();
    assert!(
        matches!(models.http_response, Some(HttpResponse::OkResponse(_))),
        "{models:?}"
    );
    assert_eq!(ready.status().as_u16(), 503);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn usage_shows_the_callers_windows_per_subscription_and_model_without_counting() {
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let rest = RestServer::start_with_clock(|_| {}, clock.clone()).await;
    let key = rest.create_key(ALICE, json!({"name": "usage"})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        assert_eq!(rest.check("simulator", &key).await, None);
    }
    rest.test
        .server
        .limiter()
        .unwrap()
        .charge_tokens("alice", &SubscriptionKey::from_wire(FREE_SIMULATOR), 30)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(8));

    let first = rest
        .call(Method::GET, "/v1/usage")
        .token(ALICE)
        .send()
        .await;
    let again = rest
        .call(Method::GET, "/maas-api/v1/usage")
        .token(&key)
        .send()
        .await;

    let window = |limit: u64, used: u64| {
        json!({"window": "1m", "limit": limit, "used": used, "remaining": limit - used,
               "reset": "42s", "resetSeconds": 42})
    };
    let expected = json!({"object": "list", "data": [{
        "subscription": "models-as-a-service/free",
        "tier": "free",
        "model": "models-as-a-service/simulator",
        "requests": [window(5, 2)],
        "tokens": [window(100, 30)],
        "spend": [],
    }]});
    first.assert_exactly(200, expected.clone());
    again.assert_exactly(200, expected);
}

#[tokio::test]
async fn usage_needs_a_bearer_token() {
    let rest = RestServer::start().await;

    let reply = rest.call(Method::GET, "/v1/usage").send().await;

    reply.assert_status(401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test]
async fn usage_answers_503_when_redis_is_unreachable() {
    let rest = RestServer::start_with(|config| {
        with_redis(config, unreachable_redis(), "maas-authz-test:");
    })
    .await;

    let reply = rest
        .call(Method::GET, "/v1/usage")
        .token(ALICE)
        .send()
        .await;

    let body = reply.assert_status(503);
    assert_eq!(body["error"]["type"], "server_error");
}

/// A `redis-server` of our own (the one `scripts/ensure-redis.sh` found or installed), so that
/// the test may stop and restart it.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-redis.sh installs it)");
        let redis = Self { port, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on {port}");
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn counting_resumes_when_redis_comes_back() {
    let port = unreachable_redis()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let redis = OwnRedis::start_on(port);
    let db = TestDb::migrated().await;
    let clock = Arc::new(ManualClock::at_millis(TEN_SECONDS_INTO_A_MINUTE));
    let mut config = serve_config(&db);
    with_redis(
        &mut config,
        format!("redis://127.0.0.1:{}", redis.port),
        "t:",
    );
    let server = start_server(config, &clock).await;
    let (key, _) = mint(&db.store(), &FREE_USER).await;

    let before = check(&server, &key, CHAT).await;
    redis.stop();
    let during = check(&server, &key, CHAT).await;
    let redis = OwnRedis::start_on(port);
    // The connection manager reconnects on its own; wait for the first counted answer.
    let mut after = None;
    for _ in 0..100 {
        let answer = check(&server, &key, CHAT).await;
        if !allowed_limits(&answer).is_empty() {
            after = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(remaining_requests(&before), "4");
    assert!(allowed_limits(&during).is_empty(), "allowed uncounted");
    // A fresh Redis: the counter starts again from this request.
    assert_eq!(remaining_requests(&after.expect("counted again")), "4");
    redis.stop();
    server.shutdown().await.unwrap();
}
