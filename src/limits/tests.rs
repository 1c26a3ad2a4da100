//! The limiter against the in-process store with a manual clock and the example policy.

use std::path::Path;

use super::*;
use crate::clock::ManualClock;

const FREE_SIMULATOR: &str = "models-as-a-service/free@models-as-a-service/simulator";
/// 10 seconds into a minute.
const START: u64 = 1_800_000_000_000 + 10_000;

fn key(text: &str) -> SubscriptionKey {
    SubscriptionKey::from_wire(text)
}

struct Fixture {
    limiter: Limiter,
    clock: Arc<ManualClock>,
    policy: Arc<ArcSwap<Policy>>,
}

fn fixture(store: Arc<dyn CounterStore>) -> Fixture {
    let policy = Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy"))
        .expect("example policy");
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let clock = Arc::new(ManualClock::at_millis(START));
    let limiter = Limiter::new(store, policy.clone()).with_clock(clock.clone());
    Fixture {
        limiter,
        clock,
        policy,
    }
}

fn free_simulator_limits(policy: &Policy) -> SubscriptionModel {
    let subscription = policy.find_subscription("free").unwrap();
    let model = policy.find_model(None, "simulator").unwrap();
    policy
        .subscription_model(subscription, model)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn the_sixth_free_request_in_a_minute_is_limited_until_the_window_ends() {
    let f = fixture(Arc::new(InProcessCounterStore::default()));
    let limits = free_simulator_limits(&f.policy.load());
    let mut remaining = Vec::new();
    for _ in 0..5 {
        match f
            .limiter
            .check_request("alice", &key(FREE_SIMULATOR), &limits)
            .await
            .unwrap()
        {
            RequestVerdict::Within(status) => remaining.push(status.requests.unwrap().remaining()),
            other => panic!("expected within, got {other:?}"),
        }
    }

    let sixth = f
        .limiter
        .check_request("alice", &key(FREE_SIMULATOR), &limits)
        .await
        .unwrap();

    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let RequestVerdict::Limited {
        kind, retry_after, ..
    } = sixth
    else {
        panic!("expected limited, got {sixth:?}");
    };
    assert_eq!(kind, LimitKind::Requests);
    assert_eq!(retry_after, Duration::from_secs(50));

    f.clock.advance(Duration::from_secs(50));
    let next_window = f
        .limiter
        .check_request("alice", &key(FREE_SIMULATOR), &limits)
        .await
        .unwrap();
    assert!(matches!(next_window, RequestVerdict::Within(_)));
}

#[tokio::test]
async fn users_and_subscriptions_have_separate_counters() {
    let f = fixture(Arc::new(InProcessCounterStore::default()));
    let limits = free_simulator_limits(&f.policy.load());
    for _ in 0..5 {
        f.limiter
            .check_request("alice", &key(FREE_SIMULATOR), &limits)
            .await
            .unwrap();
    }

    let bob = f
        .limiter
        .check_request("bob", &key(FREE_SIMULATOR), &limits)
        .await
        .unwrap();
    let other_key = f
        .limiter
        .check_request(
            "alice",
            &key("models-as-a-service/other@llm/simulator"),
            &limits,
        )
        .await
        .unwrap();

    assert!(matches!(bob, RequestVerdict::Within(_)));
    assert!(matches!(other_key, RequestVerdict::Within(_)));
}

#[tokio::test]
async fn charged_tokens_count_down_and_then_refuse_requests() {
    let f = fixture(Arc::new(InProcessCounterStore::default()));
    let limits = free_simulator_limits(&f.policy.load());
    f.limiter
        .charge_tokens("alice", &key(FREE_SIMULATOR), 60)
        .await
        .unwrap();

    let partly = f
        .limiter
        .check_request("alice", &key(FREE_SIMULATOR), &limits)
        .await
        .unwrap();
    f.limiter
        .charge_tokens("alice", &key(FREE_SIMULATOR), 45)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(20));
    let spent = f
        .limiter
        .check_request("alice", &key(FREE_SIMULATOR), &limits)
        .await
        .unwrap();

    let RequestVerdict::Within(status) = partly else {
        panic!("expected within, got {partly:?}");
    };
    assert_eq!(
        status.tokens.map(|t| (t.limit, t.remaining())),
        Some((100, 40))
    );
    assert_eq!(
        spent,
        RequestVerdict::Limited {
            kind: LimitKind::Tokens,
            retry_after: Duration::from_secs(30),
            status: LimitStatus {
                requests: Some(WindowStatus {
                    limit: 5,
                    used: 1,
                    window: Duration::from_secs(60),
                    reset_after: Duration::from_secs(30),
                }),
                tokens: Some(WindowStatus {
                    limit: 100,
                    used: 105,
                    window: Duration::from_secs(60),
                    reset_after: Duration::from_secs(30),
                }),
                spend: None,
            },
        }
    );
}

#[tokio::test]
async fn tokens_for_a_key_the_policy_does_not_know_are_not_charged() {
    let store = Arc::new(InProcessCounterStore::default());
    let f = fixture(store.clone());

    let result = f
        .limiter
        .charge_tokens("alice", &key("models-as-a-service/gone@llm/simulator"), 10)
        .await;

    assert!(result.is_ok());
    assert!(store.is_empty());
}

#[tokio::test]
async fn usage_reads_windows_without_counting() {
    let f = fixture(Arc::new(InProcessCounterStore::default()));
    let limits = free_simulator_limits(&f.policy.load());
    f.limiter
        .check_request("alice", &key(FREE_SIMULATOR), &limits)
        .await
        .unwrap();
    f.limiter
        .charge_tokens("alice", &key(FREE_SIMULATOR), 7)
        .await
        .unwrap();

    let first = f
        .limiter
        .usage("alice", &[(key(FREE_SIMULATOR), &limits)])
        .await
        .unwrap();
    let second = f
        .limiter
        .usage("alice", &[(key(FREE_SIMULATOR), &limits)])
        .await
        .unwrap();

    assert_eq!(first, second);
    let used: Vec<(LimitKind, u64, u64)> = first[0]
        .iter()
        .map(|w| (w.kind, w.status.used, w.status.remaining()))
        .collect();
    assert_eq!(
        used,
        [(LimitKind::Requests, 1, 4), (LimitKind::Tokens, 7, 93)]
    );
}

/// A store that never answers, as Redis does when it is down.
#[derive(Debug)]
struct DownStore;

#[async_trait::async_trait]
impl CounterStore for DownStore {
    async fn acquire(&self, _: &[CounterSpec], _: u64) -> Result<Acquired, CounterError> {
        Err(CounterError::Unavailable("connection refused".to_owned()))
    }
    async fn add(&self, _: &[CounterCharge], _: u64) -> Result<(), CounterError> {
        Err(CounterError::Unavailable("connection refused".to_owned()))
    }
    async fn read(&self, _: &[String], _: u64) -> Result<Vec<u64>, CounterError> {
        Err(CounterError::Unavailable("connection refused".to_owned()))
    }
    async fn ping(&self) -> Result<(), CounterError> {
        Err(CounterError::Unavailable("connection refused".to_owned()))
    }
    fn kind(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn a_store_outage_lets_requests_through_uncounted_by_default() {
    let f = fixture(Arc::new(DownStore));
    let limits = free_simulator_limits(&f.policy.load());

    let verdict = f
        .limiter
        .check_request("alice", &key(FREE_SIMULATOR), &limits)
        .await;

    assert!(matches!(verdict, Ok(RequestVerdict::Uncounted)));
}

#[tokio::test]
async fn a_store_outage_refuses_requests_when_configured_to_deny() {
    let f = fixture(Arc::new(DownStore));
    let limiter = f.limiter.with_on_store_error(OnStoreError::Deny);
    let limits = free_simulator_limits(&f.policy.load());

    let verdict = limiter
        .check_request("alice", &key(FREE_SIMULATOR), &limits)
        .await;

    assert!(matches!(verdict, Err(LimitError::Store(_))));
}

#[test]
fn the_tightest_window_is_the_one_with_the_fewest_units_left() {
    let window = |limit, used, reset| WindowStatus {
        limit,
        used,
        window: Duration::from_secs(3_600),
        reset_after: Duration::from_secs(reset),
    };
    let statuses = [
        (LimitKind::Requests, window(100, 10, 3_000)),
        (LimitKind::Requests, window(5, 4, 30)),
        (LimitKind::Tokens, window(1_000, 0, 30)),
    ];

    let status = tightest(&statuses);

    assert_eq!(status.requests, Some(window(5, 4, 30)));
    assert_eq!(status.tokens, Some(window(1_000, 0, 30)));
}

#[test]
fn counter_keys_name_owner_kind_and_window() {
    let f = fixture(Arc::new(InProcessCounterStore::default()));
    let owner = f.limiter.owner("a:b", &key(FREE_SIMULATOR));

    let key = counter_key(
        &owner,
        LimitKind::Tokens,
        &FixedWindow::containing(START, Duration::from_secs(60)),
    );

    assert_eq!(
        key,
        format!(
            "maas-authz:{{3:a:b|{FREE_SIMULATOR}}}:t:60000:{}",
            START / 60_000
        )
    );
}

const SPEND_POLICY: &str = r#"
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSModelRef
metadata: {name: opt, namespace: llm}
spec: {modelRef: {kind: LLMInferenceService, name: opt}}
---
apiVersion: maas.opendatahub.io/v1alpha1
kind: MaaSSubscription
metadata: {name: team, namespace: maas}
spec:
  owner: {groups: [{name: eng}]}
  modelRefs:
    - name: opt
      namespace: llm
      tokenRateLimits: [{limit: 1000000, window: 1m}]
      billingRate: {promptPerToken: "0.001", completionPerToken: "0.002"}
      spendLimits: [{amount: "0.50", window: 720h}]
"#;

#[tokio::test]
async fn spend_is_charged_at_the_billing_rates_and_refuses_requests_once_the_cap_is_reached() {
    let policy = Policy::from_yaml_str("spend", SPEND_POLICY).unwrap();
    let subscription = policy.find_subscription("maas/team").unwrap();
    let model = policy.find_model(Some("llm"), "opt").unwrap();
    let limits = policy
        .subscription_model(subscription, model)
        .unwrap()
        .clone();
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let clock = Arc::new(ManualClock::at_millis(START));
    let limiter =
        Limiter::new(Arc::new(InProcessCounterStore::default()), policy).with_clock(clock.clone());
    let team = key("maas/team@llm/opt");
    let usage = |prompt, completion| crate::usage::TokenUsage {
        prompt,
        completion,
        total: prompt + completion,
    };

    // 100 prompt tokens at 0.001 and 100 completion tokens at 0.002: 0.30 of 0.50.
    limiter
        .charge_usage("alice", &team, &usage(100, 100))
        .await
        .unwrap();
    let within = limiter
        .check_request("alice", &team, &limits)
        .await
        .unwrap();
    // Another 0.30: 0.60, over the cap.
    limiter
        .charge_usage("alice", &team, &usage(100, 100))
        .await
        .unwrap();
    let over = limiter
        .check_request("alice", &team, &limits)
        .await
        .unwrap();
    let bob = limiter.check_request("bob", &team, &limits).await.unwrap();

    let RequestVerdict::Within(status) = within else {
        panic!("expected within, got {within:?}");
    };
    let spend = status.spend.unwrap();
    assert_eq!(
        (spend.limit, spend.used),
        (500_000_000_000, 300_000_000_000)
    );
    let RequestVerdict::Limited {
        kind,
        retry_after,
        status,
    } = over
    else {
        panic!("expected limited, got {over:?}");
    };
    assert_eq!(kind, LimitKind::Spend);
    assert_eq!(status.spend.unwrap().remaining(), 0);
    assert!(retry_after <= Duration::from_secs(720 * 3600));
    assert!(matches!(bob, RequestVerdict::Within(_)), "per user");
}

/// What the policy says of the one object it left out (each object is judged on its own).
fn left_out_because(yaml: &str) -> String {
    let policy = Policy::from_yaml_str("spend", yaml).unwrap();
    let [invalid] = policy.invalid_objects() else {
        panic!(
            "one invalid object expected: {:?}",
            policy.invalid_objects()
        );
    };
    format!("{} {:?}", invalid.kind, invalid.issues)
}

#[test]
fn spend_limits_that_are_not_positive_decimals_leave_their_subscription_out_of_the_policy() {
    for (amount, message) in [
        ("\"-1\"", "is not a decimal amount"),
        ("\"0\"", "is out of range"),
        ("\"1000000.01\"", "is out of range"),
        ("\"1e3\"", "is not a decimal amount"),
        ("\"0.0000000000001\"", "more than 12 decimal places"),
    ] {
        let yaml = SPEND_POLICY.replace("\"0.50\"", amount);
        let reason = left_out_because(&yaml);
        assert!(reason.starts_with("MaaSSubscription"), "{amount}: {reason}");
        assert!(reason.contains(message), "{amount}: {reason}");
        assert!(
            reason.contains("spendLimits[0].amount"),
            "{amount}: {reason}"
        );
    }
    let bad_rate = SPEND_POLICY.replace("\"0.001\"", "0.001");
    let reason = left_out_because(&bad_rate);
    assert!(reason.contains("billingRate.promptPerToken"), "{reason}");
}
