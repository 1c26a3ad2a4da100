//! Criterion benchmarks of the in-process Check path: key parsing, cache hits (limits off and on), junk keys and the ext_authz adapter.
//!
//! No PostgreSQL: an in-memory [`KeyStore`] stands in for the storage only. What is measured is
//! the real `KeyCache`, `Authorizer`, example policy and gRPC adapter. Run with
//! `cargo bench --bench check`; `cargo test --all-targets` runs every benchmark once in test mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use maas_authz::assertion::SigningKeys;
use maas_authz::authorizer::{Authorizer, CheckInput, Decision, DenyReason};
use maas_authz::cache::{CacheSettings, KeyCache};
use maas_authz::grpc::check_request::CheckAttributes;
use maas_authz::grpc::check_response::check_response;
use maas_authz::grpc::ext_authz::ExtAuthzService;
use maas_authz::key::{ApiKey, KeyHash};
use maas_authz::last_used::LastUsedTracker;
use maas_authz::limits::{InProcessCounterStore, Limiter};
use maas_authz::metrics::Metrics;
use maas_authz::minting::{MintRequest, mint_key};
use maas_authz::policy::Policy;
use maas_authz::store::{KeyRecord, KeyRecordId, KeyStatus, KeyStore, NewKey, StoreError};
use prost::Message as _;
use prost::bytes::Bytes;
use tokio::runtime::Runtime;

/// The path Envoy reports for an OpenAI-style chat call to the example `simulator` model.
const MODEL_PATH: &str = "/simulator/v1/chat/completions";
/// Keys minted for the round-robin benchmark (as many as the load generator's default).
const ROUND_ROBIN_KEYS: usize = 100;

/// Storage test double: rows by hash in a map. The cache in front of it is the real one.
#[derive(Debug, Default)]
struct MemoryStore {
    rows: RwLock<HashMap<KeyHash, KeyRecord>>,
}

impl KeyStore for MemoryStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.rows.read().unwrap().get(hash).cloned())
    }

    async fn insert_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        let record = KeyRecord {
            id: key.id,
            username: key.username.clone(),
            name: key.name.clone(),
            description: key.description.clone(),
            key_hash: key.key_hash,
            status: KeyStatus::Active,
            groups: key.groups.clone(),
            subscription: key.subscription.clone(),
            created_at: Utc::now(),
            expires_at: Some(key.expires_at),
            last_used_at: None,
            ephemeral: key.ephemeral,
            labels: key.labels.clone(),
        };
        let mut rows = self.rows.write().unwrap();
        if rows.contains_key(&key.key_hash) {
            return Err(StoreError::DuplicateHash);
        }
        rows.insert(key.key_hash, record.clone());
        Ok(record)
    }

    async fn find_by_id(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        let rows = self.rows.read().unwrap();
        Ok(rows.values().find(|r| r.id == id).cloned())
    }

    async fn revoke_key(&self, id: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        let mut rows = self.rows.write().unwrap();
        Ok(rows
            .values_mut()
            .find(|r| r.id == id && r.status == KeyStatus::Active)
            .map(|r| {
                r.status = KeyStatus::Revoked;
                r.clone()
            }))
    }

    async fn list_keys_of_user(
        &self,
        username: &str,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self.rows.read().unwrap();
        let mut keys: Vec<_> = rows
            .values()
            .filter(|r| r.username == username)
            .cloned()
            .collect();
        keys.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        keys.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(keys)
    }
}

/// The serve defaults (`MAAS_AUTHZ_CACHE_*`).
fn cache_settings() -> CacheSettings {
    CacheSettings {
        capacity: 100_000,
        ttl: Duration::from_secs(30),
        max_staleness: Duration::from_secs(900),
        negative_capacity: 10_000,
        negative_ttl: Duration::from_secs(5),
    }
}

fn example_policy() -> Arc<ArcSwap<Policy>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policy");
    let policy = Policy::load(&path).expect("examples/policy loads");
    Arc::new(ArcSwap::from_pointee(policy))
}

/// The example policy with every limit raised to the maximum (10^9 per window), so that a
/// benchmark with limits on measures counting, not 429s.
fn example_policy_with_high_limits() -> Arc<ArcSwap<Policy>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policy");
    let yaml = ["models.yaml", "subscriptions.yaml", "auth-policies.yaml"]
        .map(|file| std::fs::read_to_string(dir.join(file)).expect("example policy file"))
        .join("\n---\n");
    let raised: Vec<String> = yaml
        .lines()
        .map(|line| match line.split_once("- limit: ") {
            Some((indent, _)) => format!("{indent}- limit: 1000000000"),
            None => line.to_owned(),
        })
        .collect();
    let policy = Policy::from_yaml_str("high-limits.yaml", &raised.join("\n"))
        .expect("the raised example policy loads");
    Arc::new(ArcSwap::from_pointee(policy))
}

/// A free-tier key, as `keys create --user alice` would mint it.
async fn mint_free_key(store: &MemoryStore, now: DateTime<Utc>) -> String {
    let minted = mint_key(
        store,
        MintRequest {
            username: "alice".to_owned(),
            groups: vec!["system:authenticated".to_owned()],
            name: "bench".to_owned(),
            description: None,
            subscription: "free".to_owned(),
            lifetime: Duration::from_secs(90 * 86_400),
            ephemeral: false,
        },
        now,
    )
    .await
    .expect("mint into the in-memory store");
    minted.key.expose().to_owned()
}

/// Authorizers over one store with minted keys: bare (no observer, no last-used tracking) and
/// as `serve` wires it (Prometheus metrics and the `last_used_at` tracker).
struct Fixture {
    runtime: Runtime,
    now: DateTime<Utc>,
    authorizer: Arc<Authorizer<MemoryStore>>,
    /// `authorizer` with request and token limits counted in process.
    limited: Arc<Authorizer<MemoryStore>>,
    metered: Arc<Authorizer<MemoryStore>>,
    /// `metered` with limits in process, as `serve` runs without Redis.
    metered_limited: Arc<Authorizer<MemoryStore>>,
    metrics: Arc<Metrics>,
    /// `Bearer <key>` for each minted key; the first is the single hot key.
    bearers: Vec<String>,
    /// `Bearer <well-formed key that is not in the store>`.
    unknown_bearer: String,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let now = Utc::now();
        let store = Arc::new(MemoryStore::default());
        let bearers = runtime.block_on(async {
            let mut bearers = Vec::with_capacity(ROUND_ROBIN_KEYS);
            for _ in 0..ROUND_ROBIN_KEYS {
                bearers.push(format!("Bearer {}", mint_free_key(&store, now).await));
            }
            bearers
        });
        let policy = example_policy();
        let authorizer = Arc::new(Authorizer::new(
            store.clone(),
            KeyCache::new(cache_settings()),
            policy.clone(),
            Arc::new(()),
        ));
        let high_limits = example_policy_with_high_limits();
        let limiter = |observer: Arc<Metrics>| {
            Arc::new(
                Limiter::new(
                    Arc::new(InProcessCounterStore::default()),
                    high_limits.clone(),
                )
                .with_observer(observer),
            )
        };
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let limited = Arc::new(
            Authorizer::new(
                store.clone(),
                KeyCache::new(cache_settings()),
                high_limits.clone(),
                Arc::new(()),
            )
            .with_limiter(limiter(metrics.clone())),
        );
        let metered_limited = Arc::new(
            Authorizer::new(
                store.clone(),
                KeyCache::new(cache_settings()),
                high_limits.clone(),
                metrics.clone(),
            )
            .with_last_used(Arc::new(LastUsedTracker::new(Duration::from_secs(60))))
            .with_limiter(limiter(metrics.clone())),
        );
        // The serve default interval; nothing flushes here, so after the first use of each key
        // every Check takes the tracker's "already pending" path, as between two flushes.
        let tracker = Arc::new(LastUsedTracker::new(Duration::from_secs(60)));
        let metered = Arc::new(
            Authorizer::new(
                store,
                KeyCache::new(cache_settings()),
                policy,
                metrics.clone(),
            )
            .with_last_used(tracker),
        );
        let unknown = ApiKey::generate().expect("OS randomness");
        let fixture = Self {
            runtime,
            now,
            authorizer,
            limited,
            metered,
            metered_limited,
            metrics,
            bearers,
            unknown_bearer: format!("Bearer {}", unknown.expose()),
        };
        fixture.warm_caches();
        fixture
    }

    /// Every minted key in both positive caches, the unknown key in the negative ones, and a
    /// sanity check that each benchmark measures the outcome its name claims.
    fn warm_caches(&self) {
        self.runtime.block_on(async {
            for bearer in &self.bearers {
                let input = input(bearer);
                let decision = self.authorizer.check(&input, self.now).await.unwrap();
                assert!(
                    matches!(decision, Decision::Allow(_)),
                    "minted key must be allowed"
                );
                for authorizer in [&self.metered, &self.metered_limited] {
                    let decision = authorizer.check(&input, self.now).await.unwrap();
                    assert!(
                        matches!(decision, Decision::Allow(_)),
                        "minted key must be allowed"
                    );
                }
                let decision = self.limited.check(&input, self.now).await.unwrap();
                assert!(
                    matches!(&decision, Decision::Allow(allowed) if allowed.limits.is_some()),
                    "minted key must be allowed and counted"
                );
            }
            let unknown = input(&self.unknown_bearer);
            for _ in 0..2 {
                let decision = self.authorizer.check(&unknown, self.now).await.unwrap();
                assert!(denied_for(&decision, DenyReason::KeyNotFound));
                let decision = self.metered.check(&unknown, self.now).await.unwrap();
                assert!(denied_for(&decision, DenyReason::KeyNotFound));
            }
            let malformed = input("Bearer nope");
            let decision = self.authorizer.check(&malformed, self.now).await.unwrap();
            assert!(denied_for(&decision, DenyReason::InvalidKeyFormat));
        });
    }

    fn allow_decision(&self) -> Decision {
        self.runtime
            .block_on(self.authorizer.check(&input(&self.bearers[0]), self.now))
            .unwrap()
    }
}

fn input(authorization: &str) -> CheckInput<'_> {
    CheckInput {
        authorization: Some(authorization),
        path: MODEL_PATH,
        ..Default::default()
    }
}

fn denied_for(decision: &Decision, reason: DenyReason) -> bool {
    matches!(decision, Decision::Deny(denied) if denied.reason == reason)
}

/// A CheckRequest as Envoy sends it for a chat call, with typical request headers.
fn check_request(authorization: &str) -> CheckRequest {
    let headers = [
        (":authority", "gateway.local"),
        (":method", "POST"),
        (":path", MODEL_PATH),
        (":scheme", "https"),
        ("authorization", authorization),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.40.0"),
        ("x-request-id", "5b3c6f8e-5f3a-4e4b-9d8a-7a1e2f0c9b11"),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".to_owned(),
                    path: MODEL_PATH.to_owned(),
                    host: "gateway.local".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn bench_key(c: &mut Criterion, fixture: &Fixture) {
    let mut group = c.benchmark_group("key");
    let text = fixture.bearers[0].trim_start_matches("Bearer ");
    group.bench_function("parse_and_hash", |b| {
        b.iter(|| ApiKey::parse(black_box(text)).map(|key| key.hash()))
    });
    group.bench_function("parse_malformed", |b| {
        b.iter(|| ApiKey::parse(black_box("nope")).is_err())
    });
    group.finish();
}

fn bench_check(c: &mut Criterion, fixture: &Fixture) {
    let mut group = c.benchmark_group("check");
    let now = fixture.now;
    let authorizer = &fixture.authorizer;

    let hot = &input(&fixture.bearers[0]);
    group.bench_function("cache_hit_allow", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async move { authorizer.check(black_box(hot), now).await.unwrap() })
    });

    let inputs: &[CheckInput<'_>] = &fixture.bearers.iter().map(|b| input(b)).collect::<Vec<_>>();
    let mut next = 0usize;
    group.bench_function("cache_hit_allow_100_keys", |b| {
        b.to_async(&fixture.runtime).iter(|| {
            let input = &inputs[next % inputs.len()];
            next = next.wrapping_add(1);
            async move { authorizer.check(black_box(input), now).await.unwrap() }
        })
    });

    let limited = &fixture.limited;
    group.bench_function("cache_hit_allow_limits_in_process", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async move { limited.check(black_box(hot), now).await.unwrap() })
    });

    let metered = &fixture.metered;
    group.bench_function("cache_hit_allow_as_served", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async move { metered.check(black_box(hot), now).await.unwrap() })
    });

    let unknown = &input(&fixture.unknown_bearer);
    group.bench_function("negative_cache_hit", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async move { authorizer.check(black_box(unknown), now).await.unwrap() })
    });

    let malformed = &input("Bearer nope");
    group.bench_function("malformed_key", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| async move { authorizer.check(black_box(malformed), now).await.unwrap() })
    });
    group.finish();
}

fn bench_adapter(c: &mut Criterion, fixture: &Fixture) {
    let mut group = c.benchmark_group("adapter");

    let signing = Arc::new(SigningKeys::ephemeral().unwrap());
    let now = fixture.now.timestamp();
    let allow = fixture.allow_decision();
    assert!(matches!(allow, Decision::Allow(_)));
    group.bench_function("check_response_allow", |b| {
        b.iter_batched(
            || Ok(allow.clone()),
            |outcome| check_response(outcome, &signing, now),
            BatchSize::SmallInput,
        )
    });

    let deny = fixture
        .runtime
        .block_on(
            fixture
                .authorizer
                .check(&input(&fixture.unknown_bearer), fixture.now),
        )
        .unwrap();
    assert!(denied_for(&deny, DenyReason::KeyNotFound));
    group.bench_function("check_response_deny", |b| {
        b.iter_batched(
            || Ok(deny.clone()),
            |outcome| check_response(outcome, &signing, now),
            BatchSize::SmallInput,
        )
    });

    // Decoding the request off the wire: the fields Check reads, against prost's whole message.
    let hit = Bytes::from(check_request(&fixture.bearers[0]).encode_to_vec());
    group.bench_function("decode_check_attributes", |b| {
        b.iter(|| CheckAttributes::decode(black_box(hit.clone())).unwrap())
    });
    group.bench_function("decode_check_request_prost", |b| {
        b.iter(|| CheckRequest::decode(black_box(hit.clone())).unwrap())
    });

    // The whole tonic handler as `serve` wires it (metrics observers included), minus the
    // transport: decoding the request, decision at `Utc::now()`, the encoded answer.
    let service = &ExtAuthzService::new(
        fixture.metered.clone(),
        fixture.metrics.clone(),
        signing.clone(),
    );
    let decode_and_check = |service, message: &Bytes| {
        let service: &ExtAuthzService<_> = service;
        let message = message.clone();
        async move {
            let request = CheckAttributes::decode(black_box(message)).unwrap();
            service.check(&request).await.unwrap()
        }
    };
    group.bench_function("service_check_hit", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| decode_and_check(service, &hit))
    });
    let limited_service = &ExtAuthzService::new(
        fixture.metered_limited.clone(),
        fixture.metrics.clone(),
        signing,
    );
    group.bench_function("service_check_hit_limits_in_process", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| decode_and_check(limited_service, &hit))
    });
    let junk = Bytes::from(check_request("Bearer nope").encode_to_vec());
    group.bench_function("service_check_malformed", |b| {
        b.to_async(&fixture.runtime)
            .iter(|| decode_and_check(service, &junk))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let fixture = Fixture::new();
    bench_key(c, &fixture);
    bench_check(c, &fixture);
    bench_adapter(c, &fixture);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! {
    name = check;
    config = config();
    targets = benches
}
criterion_main!(check);
