use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::TimeZone;

use super::*;
use crate::usage::TokenUsage;

const POLICY: &str = r#"
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
      tokenRateLimits: [{limit: 1000, window: 1m}]
      billingRate: {perToken: "0.000002", completionPerToken: "0.00001"}
  tokenMetadata:
    organizationId: acme
    costCenter: cc-42
    labels: {team: search}
"#;

fn policy() -> Policy {
    Policy::from_yaml_str("ledger-test", POLICY).expect("valid policy")
}

fn at(hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, hour, minute, 0).unwrap()
}

fn booking<'a>(
    policy: &'a Policy,
    key_id: &'a str,
    labels: &'a BTreeMap<String, String>,
) -> Booking<'a> {
    Booking {
        user: "alice",
        key_id,
        subscription: "maas/team",
        attributes: policy.find_subscription("maas/team"),
        model: "llm/opt",
        key_labels: Some(labels),
    }
}

fn charge(prompt: u64, completion: u64, estimated: bool) -> Charge {
    Charge {
        usage: TokenUsage {
            prompt,
            completion,
            total: prompt + completion,
        },
        estimated,
    }
}

#[derive(Default)]
struct CountingObserver {
    dropped: AtomicU64,
}

impl LedgerObserver for CountingObserver {
    fn observe_dropped(&self, records: u64) {
        self.dropped.fetch_add(records, Ordering::Relaxed);
    }
    fn observe_flush(&self, _: usize, _: bool) {}
}

#[test]
fn decisions_and_charges_of_one_hour_add_up_in_one_row_with_its_chargeback_attributes() {
    let policy = policy();
    let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
    let ledger = Ledger::new(100);
    let booking = booking(&policy, "key-1", &labels);

    ledger.record_check(at(10, 1), &booking, CheckOutcome::Allowed);
    ledger.record_check(at(10, 59), &booking, CheckOutcome::Allowed);
    ledger.record_check(at(10, 30), &booking, CheckOutcome::RateLimited);
    ledger.record_charge(
        at(10, 2),
        &booking,
        &charge(10, 5, false),
        Amount::from_pico(7),
    );
    ledger.record_charge(
        at(10, 3),
        &booking,
        &charge(1, 2, true),
        Amount::from_pico(3),
    );
    let batch = ledger.take_batch();

    assert_eq!(batch.len(), 1);
    let row = &batch[0];
    assert_eq!(row.key.hour, at(10, 0).timestamp());
    assert_eq!(
        (
            row.key.organization_id.as_str(),
            row.key.cost_center.as_str()
        ),
        ("acme", "cc-42")
    );
    assert_eq!(row.labels.get("team").map(String::as_str), Some("search"));
    assert_eq!(row.key_labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(
        row.counts,
        UsageCounts {
            requests: 2,
            rate_limited: 1,
            prompt_tokens: 11,
            completion_tokens: 7,
            total_tokens: 18,
            estimated_tokens: 3,
            cost: Amount::from_pico(10),
        }
    );
    assert!(ledger.take_batch().is_empty(), "taken rows are gone");
}

#[test]
fn another_hour_or_key_is_another_row() {
    let policy = policy();
    let labels = BTreeMap::new();
    let ledger = Ledger::new(100);

    ledger.record_check(
        at(10, 59),
        &booking(&policy, "k1", &labels),
        CheckOutcome::Allowed,
    );
    ledger.record_check(
        at(11, 0),
        &booking(&policy, "k1", &labels),
        CheckOutcome::Allowed,
    );
    ledger.record_check(
        at(11, 0),
        &booking(&policy, "k2", &labels),
        CheckOutcome::Allowed,
    );

    assert_eq!(ledger.take_batch().len(), 3);
}

#[test]
fn a_full_buffer_keeps_adding_to_its_rows_and_counts_what_needed_a_new_one() {
    let policy = policy();
    let labels = BTreeMap::new();
    let observer = Arc::new(CountingObserver::default());
    // One row per shard at most: sixteen in all.
    let ledger = Ledger::new(1).with_observer(observer.clone());
    for hour in 0..24 {
        for _ in 0..3 {
            ledger.record_check(
                at(hour, 0),
                &booking(&policy, "k", &labels),
                CheckOutcome::Allowed,
            );
        }
    }

    let kept = ledger.take_batch();
    let requests: u64 = kept.iter().map(|row| row.counts.requests).sum();
    let dropped = observer.dropped.load(Ordering::Relaxed);

    assert!(kept.len() <= ledger.max_rows());
    assert_eq!(
        requests + dropped,
        72,
        "every record is either kept or counted as dropped"
    );
    assert_eq!(
        requests % 3,
        0,
        "a row, once there, gets every later record of its key"
    );
}

#[test]
fn concurrent_records_from_many_threads_are_all_counted() {
    let policy = Arc::new(policy());
    let ledger = Arc::new(Ledger::new(10_000));
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let (ledger, policy) = (ledger.clone(), policy.clone());
            std::thread::spawn(move || {
                let labels = BTreeMap::new();
                let key = format!("k{}", thread % 3);
                for i in 0..1000 {
                    ledger.record_check(
                        at(i % 3, 0),
                        &booking(&policy, &key, &labels),
                        CheckOutcome::Allowed,
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }

    let requests: u64 = ledger.take_batch().iter().map(|r| r.counts.requests).sum();

    assert_eq!(requests, 8000);
}

#[test]
fn a_charge_costs_prompt_and_completion_at_their_rates() {
    let policy = policy();
    let key = SubscriptionKey::from_wire("maas/team@llm/opt");

    // 100 prompt tokens at perToken 0.000002, 50 completion tokens at 0.00001.
    let cost = cost_of(&policy, &key, &charge(100, 50, false));

    assert_eq!(cost.to_decimal(6), "0.000700");
    assert_eq!(
        cost_of(
            &policy,
            &SubscriptionKey::from_wire("maas/gone@llm/opt"),
            &charge(1, 1, false)
        ),
        Amount::ZERO
    );
}

#[tokio::test]
async fn the_ledger_sink_books_the_response_under_the_signed_key_then_passes_it_on() {
    #[derive(Default)]
    struct Next(AtomicU64);
    #[async_trait::async_trait]
    impl TokenSink for Next {
        async fn charge(&self, _: &UsageSubject, charge: &Charge) {
            self.0.fetch_add(charge.usage.total, Ordering::Relaxed);
        }
    }
    let ledger = Arc::new(Ledger::new(100));
    let next = Arc::new(Next::default());
    let sink = LedgerTokenSink::new(
        ledger.clone(),
        Arc::new(ArcSwap::from_pointee(policy())),
        next.clone(),
    );
    let subject = UsageSubject {
        user: "alice".into(),
        subscription_key: SubscriptionKey::from_wire("maas/team@llm/opt"),
        key_id: "key-7".into(),
    };

    sink.charge(&subject, &charge(100, 50, false)).await;

    let batch = ledger.take_batch();
    assert_eq!(next.0.load(Ordering::Relaxed), 150);
    assert_eq!(batch.len(), 1);
    assert_eq!(
        (
            batch[0].key.key_id.as_str(),
            batch[0].key.model.as_str(),
            batch[0].key.subscription.as_str()
        ),
        ("key-7", "llm/opt", "maas/team")
    );
    assert_eq!(batch[0].counts.cost.to_decimal(6), "0.000700");
    assert_eq!(batch[0].key.cost_center, "cc-42");
}
