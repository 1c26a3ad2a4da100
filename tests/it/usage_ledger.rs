//! The usage ledger against a real PostgreSQL (and a real Envoy where the token meter matters):
//! replicas writing the same hour add up exactly, a database outage during traffic loses no
//! counted tokens up to the buffer, and a full buffer counts what it drops.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use maas_authz::app::{Application, RunningServer};
use maas_authz::config::ServeConfig;
use tonic::transport::Channel;

use crate::support::*;

pub(crate) const CHAT: &str = "/simulator/v1/chat/completions";

/// Subscriptions with prices, chargeback attributes and (premium) a tight request limit; the
/// example's models and auth policies.
pub(crate) const BILLED_SUBSCRIPTIONS: &str = r#"
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata:
  name: free
  namespace: models-as-a-service
spec:
  owner:
    groups:
      - name: system:authenticated
  priority: 10
  modelRefs:
    - name: simulator
      namespace: llm
      tokenRateLimits:
        - limit: 1000000000
          window: 1m
      billingRate:
        perToken: "0.000002"
  tokenMetadata:
    organizationId: acme
    costCenter: cc-free
    labels:
      tier: free
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata:
  name: premium
  namespace: models-as-a-service
spec:
  owner:
    groups:
      - name: premium-users
  priority: 20
  modelRefs:
    - name: simulator
      namespace: llm
      tokenRateLimits:
        - limit: 1000000000
          window: 1m
      requestRateLimits:
        - limit: 3
          window: 1m
      billingRate:
        promptPerToken: "0.000001"
        completionPerToken: "0.000003"
    - name: qwen3
      namespace: llm
      tokenRateLimits:
        - limit: 1000000000
          window: 1m
  tokenMetadata:
    organizationId: acme
    costCenter: cc-premium
"#;

/// A policy directory: the example's models and auth policies, [`BILLED_SUBSCRIPTIONS`] plus
/// `extra` appended to the subscriptions file.
pub(crate) fn billed_policy(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["models.yaml", "auth-policies.yaml"] {
        std::fs::copy(example_policy_path().join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(
        dir.path().join("subscriptions.yaml"),
        format!("{BILLED_SUBSCRIPTIONS}{extra}"),
    )
    .unwrap();
    dir
}

/// `serve` on `db` with the billed policy, flushing the ledger every 50 ms.
pub(crate) fn ledger_config(db: &TestDb, policy: &tempfile::TempDir) -> ServeConfig {
    let mut config = serve_config(db);
    config.policy_path = Some(policy.path().to_owned());
    config.ledger.usage_flush_interval = Duration::from_millis(50);
    config
}

/// The sums of every ledger row: requests, rate_limited, prompt, completion, total, estimated,
/// and the cost in pico-units as text.
pub(crate) async fn ledger_totals(db: &TestDb) -> (i64, i64, i64, i64, i64, i64, String) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT COALESCE(sum(requests), 0)::int8, COALESCE(sum(rate_limited), 0)::int8, \
             COALESCE(sum(prompt_tokens), 0)::int8, COALESCE(sum(completion_tokens), 0)::int8, \
             COALESCE(sum(total_tokens), 0)::int8, COALESCE(sum(estimated_tokens), 0)::int8, \
             COALESCE(sum(cost_pico), 0)::text FROM usage_ledger",
            &[],
        )
        .await
        .unwrap();
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    )
}

/// Waits until `condition` holds on the ledger's totals (the write-behind runs every 50 ms).
pub(crate) async fn eventually_totals(
    db: &TestDb,
    what: &str,
    condition: impl Fn(&(i64, i64, i64, i64, i64, i64, String)) -> bool,
) -> (i64, i64, i64, i64, i64, i64, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let totals = ledger_totals(db).await;
        if condition(&totals) {
            return totals;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: ledger totals stuck at {totals:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn check_client(server: &RunningServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap()
}

/// The gRPC code of one Check of `key` on the chat path (0: allowed, 8: RESOURCE_EXHAUSTED).
async fn check(client: &mut AuthorizationClient<Channel>, key: &str) -> i32 {
    client
        .check(check_request(CHAT, &[("authorization", &bearer(key))]))
        .await
        .expect("Check answers")
        .into_inner()
        .status
        .map_or(-1, |s| s.code)
}

/// `count` Checks of `key`, all in flight at once.
async fn checks(server: &RunningServer, key: &str, count: usize) -> Vec<i32> {
    let client = check_client(server).await;
    futures::future::join_all((0..count).map(|_| {
        let mut client = client.clone();
        async move { check(&mut client, key).await }
    }))
    .await
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_booking_the_same_hour_add_up_to_exact_totals() {
    let db = TestDb::migrated().await;
    let policy = billed_policy("");
    let (free_key, _) = mint(&db.store(), &FREE_USER).await;
    let (premium_key, _) = mint(&db.store(), &PREMIUM_USER).await;
    let replica = || {
        let mut config = ledger_config(&db, &policy);
        // The suite runs many servers at once on two cores: the first lookup may be slow.
        config.db_check_timeout = Duration::from_secs(5);
        Application::build(config)
    };
    let first = replica().await.unwrap();
    let second = replica().await.unwrap();
    // Each replica caches both keys first (each Check counts, and is booked).
    let mut warm = Vec::new();
    for server in [&first, &second] {
        warm.extend(checks(server, &free_key, 1).await);
        warm.extend(checks(server, &premium_key, 1).await);
    }
    assert!(warm.iter().all(|code| *code == 0));

    // Both replicas at once, on the same user, key, model and hour: the same ledger rows.
    let (a, b, c, d) = tokio::join!(
        checks(&first, &free_key, 150),
        checks(&second, &free_key, 150),
        checks(&first, &premium_key, 10),
        checks(&second, &premium_key, 10),
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();

    assert!(
        a.iter().chain(&b).all(|code| *code == 0),
        "every free check allowed"
    );
    // Premium allows 3 a minute, counted per replica (in-process counters): 3 each, one of
    // them the warm-up.
    let premium: Vec<i32> = c.into_iter().chain(d).collect();
    assert_eq!(premium.iter().filter(|code| **code == 0).count(), 4);
    assert_eq!(premium.iter().filter(|code| **code == 8).count(), 16);
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT username, subscription, model, key_id, organization_id, cost_center, \
             requests, rate_limited, labels::text FROM usage_ledger ORDER BY username",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "one row per user, key, model and hour: {rows:?}"
    );
    let alice = &rows[0];
    assert_eq!(alice.get::<_, String>(0), "alice");
    assert_eq!(alice.get::<_, String>(1), "models-as-a-service/free");
    assert_eq!(alice.get::<_, String>(2), "models-as-a-service/simulator");
    assert_eq!(
        (alice.get::<_, String>(4), alice.get::<_, String>(5)),
        ("acme".to_owned(), "cc-free".to_owned())
    );
    assert_eq!((alice.get::<_, i64>(6), alice.get::<_, i64>(7)), (302, 0));
    assert_eq!(alice.get::<_, String>(8), r#"{"tier": "free"}"#);
    let bob = &rows[1];
    assert_eq!((bob.get::<_, i64>(6), bob.get::<_, i64>(7)), (6, 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_can_be_switched_off_and_then_books_nothing() {
    let db = TestDb::migrated().await;
    let policy = billed_policy("");
    let (key, _) = mint(&db.store(), &FREE_USER).await;
    let mut config = ledger_config(&db, &policy);
    config.ledger.usage_ledger = false;
    let server = Application::build(config).await.unwrap();

    let codes = checks(&server, &key, 5).await;
    server.shutdown().await.unwrap();

    assert!(codes.iter().all(|code| *code == 0));
    assert_eq!(ledger_totals(&db).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_during_a_database_outage_are_booked_after_it_and_a_full_buffer_counts_its_drops() {
    let db = TestDb::migrated().await;
    let policy = billed_policy("");
    let proxy = DbProxy::start().await;
    let mut keys = Vec::new();
    for _ in 0..40 {
        keys.push(mint(&db.store(), &FREE_USER).await.0);
    }
    let mut config = ledger_config(&db, &policy);
    config.database.database_url = proxy.url_for(&db.url);
    config.database.db_query_timeout = Duration::from_millis(300);
    config.database.db_connect_timeout = Duration::from_millis(300);
    config.db_breaker_threshold = 2;
    config.db_breaker_cool_down = Duration::from_millis(100);
    config.cache_ttl = Duration::from_secs(60);
    // The smallest buffer: one row per shard, sixteen in all (and one failed batch kept aside).
    config.ledger.usage_buffer_rows = 16;
    let server = Application::build(config).await.unwrap();
    let mut client = check_client(&server).await;
    // One at a time, each written before the next: the buffer holds few rows.
    for (written, key) in keys.iter().enumerate() {
        assert_eq!(
            check(&mut client, key).await,
            0,
            "cached while the database is up"
        );
        let written = written as i64 + 1;
        eventually_totals(&db, "the first round is written", |t| t.0 == written).await;
    }

    proxy.cut();
    let started = Instant::now();
    // One key many times: its one row keeps adding up however long the outage lasts.
    for _ in 0..50 {
        assert_eq!(check(&mut client, &keys[0]).await, 0);
    }
    // Forty keys: forty new rows, more than the buffer holds.
    for key in &keys {
        assert_eq!(
            check(&mut client, key).await,
            0,
            "Check never waits for the ledger"
        );
    }
    let during = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = crate::check::http_get(server.metrics_addr, "/metrics").await;
    let dropped = sample(&metrics, "maas_authz_usage_ledger_dropped_total");
    assert!(
        sample(&metrics, "maas_authz_usage_ledger_write_failures_total") >= 1.0,
        "the writer tried and failed"
    );
    assert_eq!(
        ledger_totals(&db).await.0,
        40,
        "nothing written during the outage"
    );
    proxy.restore();

    let totals = eventually_totals(&db, "the outage's records are written", |t| {
        t.0 + dropped as i64 == 40 + 90
    })
    .await;
    server.shutdown().await.unwrap();

    assert!(
        dropped >= 24.0,
        "at most 16 rows pending, 41 needed: dropped {dropped}"
    );
    assert!(
        totals.0 >= 40 + 50,
        "the first key's row survived whole: {totals:?}"
    );
    assert!(
        during < Duration::from_secs(5),
        "Checks were not slowed down: {during:?}"
    );
    assert_eq!(
        ledger_totals(&db).await.0,
        totals.0,
        "written once, never twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_metered_through_envoy_during_a_database_outage_are_all_booked_after_it() {
    use crate::e2e::{FREE_TOKEN, Gateway, GatewayOptions, hello};
    let proxy = std::sync::Arc::new(DbProxy::start().await);
    let policy = billed_policy("");
    let policy_path = policy.path().to_owned();
    let behind = proxy.clone();
    let gateway = Gateway::start_with(GatewayOptions {
        configure: Box::new(move |config| {
            config.database.database_url = behind.url_for(&config.database.database_url);
            config.database.db_query_timeout = Duration::from_millis(300);
            config.database.db_connect_timeout = Duration::from_millis(300);
            config.db_breaker_threshold = 2;
            config.db_breaker_cool_down = Duration::from_millis(100);
            config.cache_ttl = Duration::from_secs(60);
            config.policy_path = Some(policy_path);
            config.ledger.usage_flush_interval = Duration::from_millis(50);
        }),
        ..GatewayOptions::default()
    })
    .await;
    let (key, _) = gateway.mint(FREE_TOKEN).await;
    // The insert's key-change notice evicts the key from the cache: let it arrive before the
    // first request caches the key for the outage.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut expected_tokens = 0;
    let mut chat = async |max_tokens: u64| {
        let response = gateway
            .chat(CHAT, Some(&key), &hello("simulator", max_tokens))
            .await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        expected_tokens += body["usage"]["total_tokens"]
            .as_i64()
            .expect("usage reported");
    };
    chat(2).await;

    proxy.cut();
    for max_tokens in 1..=10 {
        chat(max_tokens).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = ledger_totals(gateway.db()).await;
    proxy.restore();

    let what = format!("the outage's {expected_tokens} tokens are written");
    let after =
        eventually_totals(gateway.db(), &what, |t| t.0 == 11 && t.4 == expected_tokens).await;
    assert!(
        during.0 < 11,
        "the outage kept the rows from the database: {during:?}"
    );
    assert_eq!(after.2 + after.3, after.4, "prompt + completion = total");
    assert_eq!(after.5, 0, "the simulator reports usage: nothing estimated");
    // 0.000002 per token, in pico-units.
    assert_eq!(after.6, (expected_tokens * 2_000_000).to_string());
}

#[tokio::test]
async fn housekeeping_deletes_usage_rows_older_than_the_retention_and_keeps_the_rest() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    for days_ago in [401, 399, 1] {
        client
            .execute(
                "INSERT INTO usage_ledger (hour, tenant, username, key_id, subscription, model, requests) \
                 VALUES (date_trunc('hour', now()) - make_interval(days => $1), 'models-as-a-service', \
                 'alice', 'k', 'models-as-a-service/free', 'models-as-a-service/simulator', 1)",
                &[&days_ago],
            )
            .await
            .unwrap();
    }
    let store = maas_authz::store::served::ServedStore::Postgres(db.store());
    let retention = Some(Duration::from_secs(400 * 86_400));

    maas_authz::housekeeping::delete_old_usage(&store, retention, chrono::Utc::now()).await;
    maas_authz::housekeeping::delete_old_usage(&store, None, chrono::Utc::now()).await;

    assert_eq!(
        ledger_totals(&db).await.0,
        2,
        "the 401-day-old row is gone, the others stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_limit_refuses_requests_through_envoy_once_metered_responses_reach_it() {
    use crate::e2e::{FREE_TOKEN, Gateway, GatewayOptions, hello};
    // 0.01 per token, at most 0.20 an hour: a few small chats.
    let policy = tempfile::tempdir().unwrap();
    let billed = billed_policy("");
    for file in ["models.yaml", "auth-policies.yaml", "subscriptions.yaml"] {
        let text = std::fs::read_to_string(billed.path().join(file)).unwrap();
        let text = text.replace(
            "      billingRate:\n        perToken: \"0.000002\"\n",
            "      billingRate:\n        perToken: \"0.01\"\n      spendLimits:\n        - amount: \"0.20\"\n          window: 1h\n",
        );
        std::fs::write(policy.path().join(file), text).unwrap();
    }
    let policy_path = policy.path().to_owned();
    let gateway = Gateway::start_with(GatewayOptions {
        configure: Box::new(move |config| {
            config.policy_path = Some(policy_path);
            config.ledger.usage_flush_interval = Duration::from_millis(50);
        }),
        ..GatewayOptions::default()
    })
    .await;
    let (key, _) = gateway.mint(FREE_TOKEN).await;

    let mut spent = 0;
    let mut refusal = None;
    for _ in 0..20 {
        let response = gateway.chat(CHAT, Some(&key), &hello("simulator", 5)).await;
        if response.status() == 429 {
            refusal = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-ratelimit-limit-spend"]
                .to_str()
                .unwrap(),
            "0.2"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        spent += body["usage"]["total_tokens"].as_i64().unwrap();
        // The meter charges just after the last chunk: let it land before the next Check.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let refusal = refusal.expect("the spend limit refused a request");
    assert!(
        spent as f64 * 0.01 >= 0.20,
        "refused only once 0.20 was spent ({spent} tokens)"
    );
    assert!(
        (spent as f64 - 9.0) * 0.01 < 0.20,
        "not refused before the cap was reached"
    );
    let headers = refusal.headers().clone();
    assert_eq!(headers["x-ext-auth-reason"], "spend_limit_exceeded");
    assert_eq!(headers["x-ratelimit-remaining-spend"], "0");
    assert!(headers.contains_key("retry-after"));
    let body: serde_json::Value = refusal.json().await.unwrap();
    assert_eq!(body["error"]["code"], "spend_limit_exceeded");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let totals = eventually_totals(gateway.db(), "the refusal is booked", |t| t.1 == 1).await;
    assert_eq!(totals.4, spent);
    assert_eq!(
        totals.6,
        (spent * 10_000_000_000).to_string(),
        "0.01 = 10^10 pico"
    );

    let usage: serde_json::Value = gateway
        .http
        .get(format!("{}/maas-api/v1/usage", gateway.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spend = &usage["data"][0]["spend"][0];
    assert_eq!(spend["window"], "1h");
    assert_eq!(spend["limit"], "0.2");
    assert_eq!(spend["used"], format!("{}", spent as f64 / 100.0));
    assert_eq!(spend["remaining"], "0");
}

#[tokio::test]
async fn a_batch_retried_after_its_answer_was_lost_is_added_once() {
    use maas_authz::ledger::{UsageCounts, UsageKey, UsageRow};
    use maas_authz::store::UsageStore;
    let db = TestDb::migrated().await;
    let store = db.store();
    let row = UsageRow {
        key: UsageKey {
            hour: 1_800_000_000 / 3600 * 3600,
            user: "alice".into(),
            key_id: "k".into(),
            subscription: "models-as-a-service/free".into(),
            model: "models-as-a-service/simulator".into(),
            organization_id: String::new(),
            cost_center: String::new(),
        },
        counts: UsageCounts {
            requests: 2,
            total_tokens: 10,
            ..UsageCounts::default()
        },
        labels: Default::default(),
        key_labels: Default::default(),
    };

    store
        .add_usage("batch-1", std::slice::from_ref(&row))
        .await
        .unwrap();
    store
        .add_usage("batch-1", std::slice::from_ref(&row))
        .await
        .unwrap();
    store
        .add_usage("batch-2", std::slice::from_ref(&row))
        .await
        .unwrap();

    let totals = ledger_totals(&db).await;
    assert_eq!((totals.0, totals.4), (4, 20), "batch-1 once, batch-2 once");
}
