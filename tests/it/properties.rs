//! Property tests (proptest): the key parser and Check handling take arbitrary input without
//! panicking; generated keys always parse and round-trip; every denial is a 4xx; an allowed
//! request's identity headers always overwrite the client's. Case counts are modest so the suite
//! stays fast.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::Utc;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use maas_authz::authorizer::Authorizer;
use maas_authz::cache::{CacheSettings, KeyCache};
use maas_authz::grpc::check_request::CheckAttributes;
use maas_authz::grpc::ext_authz::ExtAuthzService;
use maas_authz::key::{ApiKey, KeyHash};
use maas_authz::policy::Policy;
use maas_authz::store::{KeyRecord, KeyRecordId, KeyStatus, KeyStore, NewKey, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message as _;
use prost::bytes::Bytes;

use crate::support::example_policy_path;

const IDENTITY_HEADERS: [&str; 5] = [
    "x-maas-username",
    "x-maas-group",
    "x-maas-subscription",
    "x-maas-tier",
    "x-maas-key-id",
];

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Keys by hash in memory: the properties are about request handling, not PostgreSQL.
struct InMemoryStore {
    keys: HashMap<KeyHash, KeyRecord>,
}

impl KeyStore for InMemoryStore {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.keys.get(hash).cloned())
    }
    async fn insert_key(&self, _: &NewKey) -> Result<KeyRecord, StoreError> {
        Err(StoreError::Query("read-only".into()))
    }
    async fn find_by_id(&self, _: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(None)
    }
    async fn revoke_key(&self, _: KeyRecordId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(None)
    }
    async fn list_keys_of_user(&self, _: &str, _: i64) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(Vec::new())
    }
}

/// A cache big enough for the few keys of a property.
fn small_cache() -> KeyCache {
    KeyCache::new(CacheSettings {
        capacity: 100,
        ttl: Duration::from_secs(30),
        max_staleness: Duration::from_secs(900),
        negative_capacity: 100,
        negative_ttl: Duration::from_secs(5),
    })
}

fn record(key: &ApiKey, status: KeyStatus) -> KeyRecord {
    KeyRecord {
        id: KeyRecordId::new_random(),
        username: "alice".into(),
        name: "property".into(),
        description: None,
        key_hash: key.hash(),
        status,
        groups: vec!["system:authenticated".into()],
        subscription: "free".into(),
        created_at: Utc::now(),
        expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
        last_used_at: None,
        ephemeral: false,
        labels: Default::default(),
    }
}

#[test]
fn the_key_parser_takes_any_string_without_panicking() {
    let strings = prop_oneof![
        any::<String>(),
        "sk-oai-.{0,80}",
        "sk-oai-[0-9A-Za-z_]{0,70}",
    ];
    runner(512)
        .run(&strings, |text| {
            if let Ok(key) = ApiKey::parse(&text) {
                prop_assert_eq!(key.expose(), text.as_str());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_key_parser_takes_any_bytes_read_lossily_without_panicking() {
    runner(512)
        .run(&proptest::collection::vec(any::<u8>(), 0..120), |bytes| {
            let _ = ApiKey::parse(&String::from_utf8_lossy(&bytes));
            Ok(())
        })
        .unwrap();
}

#[test]
fn well_formed_keys_always_parse_and_round_trip() {
    let parts = ("[0-9A-Za-z]{1,17}", "[0-9A-Za-z]{1,43}");
    runner(512)
        .run(&parts, |(key_id, secret)| {
            let text = format!("sk-oai-{key_id}_{secret}");
            let key = ApiKey::parse(&text).expect("well-formed");
            prop_assert_eq!(key.expose(), text.as_str());
            prop_assert_eq!(key.key_id(), key_id.as_str());
            let again = ApiKey::parse(key.expose()).expect("round trip");
            prop_assert!(again.hash().ct_eq(&key.hash()));
            Ok(())
        })
        .unwrap();
}

#[test]
fn generated_keys_always_parse_to_the_same_key() {
    runner(256)
        .run(&Just(()), |()| {
            let key = ApiKey::generate().expect("random");
            let parsed = ApiKey::parse(key.expose()).expect("generated keys are well-formed");
            prop_assert_eq!(parsed.expose(), key.expose());
            prop_assert_eq!(
                KeyHash::from_hex(&key.hash().to_hex()).unwrap(),
                parsed.hash()
            );
            Ok(())
        })
        .unwrap();
}

/// Header values, some of them credentials the store knows.
fn header_value(valid: String, revoked: String) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "Bearer .{0,60}",
        "[bB][eE][aA][rR][eE][rR] +sk-oai-[0-9A-Za-z]{0,18}_[0-9A-Za-z]{0,44} *",
        Just(format!("Bearer {valid}")),
        Just(format!("Bearer {revoked}")),
        Just(valid),
    ]
}

fn headers(valid: String, revoked: String) -> impl Strategy<Value = HashMap<String, String>> {
    let name = prop_oneof![
        Just("authorization".to_owned()),
        Just("x-api-key".to_owned()),
        Just("x-gateway-model-name".to_owned()),
        Just("x-maas-username".to_owned()),
        Just("x-maas-group".to_owned()),
        Just("x-maas-subscription".to_owned()),
        Just("x-maas-tier".to_owned()),
        Just("x-maas-key-id".to_owned()),
        "[a-z-]{1,16}",
        any::<String>(),
    ];
    let arbitrary =
        proptest::collection::hash_map(name, header_value(valid.clone(), revoked), 0..6);
    // Half the requests carry the valid key, so the allow path is exercised on every run and
    // not only when chance strings a credential together (256 cases once found none).
    (arbitrary, any::<bool>()).prop_map(move |(mut headers, carries_valid_key)| {
        if carries_valid_key {
            headers.insert("authorization".to_owned(), format!("Bearer {valid}"));
        }
        headers
    })
}

fn paths() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just("/simulator/v1/chat/completions".to_owned()),
        "/[a-z0-9._-]{0,12}(/[a-z0-9._-]{0,12}){0,4}(\\?.{0,20})?",
        "/(llm|simulator|[a-z]{1,8})/[a-z0-9-]{0,12}/v1/(chat/completions|completions|models|embeddings)",
    ]
}

fn bodies() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![
        Just((String::new(), Vec::new())),
        any::<String>().prop_map(|body| (body, Vec::new())),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|raw| (String::new(), raw)),
        "\\{\"model\": ?\".{0,30}\"(, ?\"messages\": ?\\[\\])?\\}"
            .prop_map(|body| (body, Vec::new())),
    ]
}

#[test]
fn check_answers_arbitrary_headers_paths_and_bodies_and_every_denial_is_a_4xx() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let valid = ApiKey::generate().unwrap();
    let revoked = ApiKey::generate().unwrap();
    let store = InMemoryStore {
        keys: [
            (valid.hash(), record(&valid, KeyStatus::Active)),
            (revoked.hash(), record(&revoked, KeyStatus::Revoked)),
        ]
        .into(),
    };
    let policy = Policy::load(&example_policy_path()).expect("example policy");
    let authorizer = Arc::new(Authorizer::new(
        Arc::new(store),
        small_cache(),
        Arc::new(ArcSwap::from_pointee(policy)),
        Arc::new(()),
    ));
    let service = ExtAuthzService::new(
        authorizer,
        Arc::new(()),
        Arc::new(maas_authz::assertion::SigningKeys::ephemeral().unwrap()),
    );
    let requests = (
        headers(valid.expose().to_owned(), revoked.expose().to_owned()),
        paths(),
        bodies(),
    );

    let (allowed, denied) = (AtomicUsize::new(0), AtomicUsize::new(0));

    runner(256)
        .run(&requests, |(headers, path, (body, raw_body))| {
            let request = CheckRequest {
                attributes: Some(AttributeContext {
                    request: Some(Request {
                        http: Some(HttpRequest {
                            method: "POST".to_owned(),
                            path,
                            host: "gateway.local".to_owned(),
                            headers,
                            body,
                            raw_body,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            };
            // Through the wire decoder the server uses, which must read what prost reads.
            let attributes = CheckAttributes::decode(Bytes::from(request.encode_to_vec()))
                .expect("prost's encoding decodes");
            prop_assert_eq!(&attributes, &CheckAttributes::from(&request));
            let response = runtime
                .block_on(service.check(&attributes))
                .expect("the in-memory store never fails, so Check always decides")
                .decode()
                .expect("the answer is a well-formed CheckResponse");
            let code = response.status.as_ref().map_or(0, |s| s.code);
            match response.http_response {
                Some(HttpResponse::OkResponse(ok)) => {
                    allowed.fetch_add(1, Ordering::Relaxed);
                    prop_assert_eq!(code, 0);
                    // Whatever identity headers the client sent, ours replace them.
                    for name in IDENTITY_HEADERS {
                        let set: Vec<_> = ok
                            .headers
                            .iter()
                            .filter_map(|h| h.header.as_ref().map(|v| (v, h.append_action)))
                            .filter(|(v, _)| v.key == name)
                            .collect();
                        prop_assert_eq!(set.len(), 1, "{} set once", name);
                        prop_assert_eq!(
                            set[0].1,
                            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                        );
                    }
                    let username = ok
                        .headers
                        .iter()
                        .filter_map(|h| h.header.as_ref())
                        .find(|v| v.key == "x-maas-username")
                        .map(|v| v.value.clone());
                    prop_assert_eq!(username.as_deref(), Some("alice"));
                }
                Some(HttpResponse::DeniedResponse(denial)) => {
                    denied.fetch_add(1, Ordering::Relaxed);
                    prop_assert_ne!(code, 0);
                    let http = denial.status.map_or(0, |s| s.code);
                    prop_assert!((400..500).contains(&http), "denied with HTTP {}", http);
                }
                other => prop_assert!(false, "neither allowed nor denied: {:?}", other),
            }
            Ok(())
        })
        .unwrap();
    // Both outcomes were exercised, not only the early rejections.
    assert!(
        allowed.load(Ordering::Relaxed) > 0,
        "no request was allowed"
    );
    assert!(denied.load(Ordering::Relaxed) > 0, "no request was denied");
}

/// The models the simulator serves in these properties.
const SERVED: &[&str] = &["simulator", "qwen3"];

/// Path pieces that every trick in the book is built from.
fn tricky_paths() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("llm"),
        Just("qwen3"),
        Just("simulator"),
        Just("v1"),
        Just("V1"),
        Just("chat"),
        Just("completions"),
        Just("models"),
        Just("embeddings"),
        Just("."),
        Just(".."),
        Just(""),
        Just("%2F"),
        Just("%2e%2e"),
        Just("%76%31"),
        Just("%71wen3"),
        Just("qwen3%2Fv1"),
        Just("simulator;x"),
        Just("qwen3."),
        Just("%5c"),
        Just("QWEN3"),
        Just("invocations"),
        Just("maas-api"),
    ];
    (
        proptest::collection::vec(piece, 1..7),
        proptest::option::of(Just("?model=qwen3")),
    )
        .prop_map(|(pieces, query)| format!("/{}{}", pieces.join("/"), query.unwrap_or("")))
}

fn model_names() -> impl Strategy<Value = Option<&'static str>> {
    proptest::option::of(prop_oneof![
        Just("qwen3"),
        Just("simulator"),
        Just("llm/qwen3"),
        Just("llm/simulator"),
        Just("models-as-a-service/qwen3"),
        Just("unknown"),
        Just(""),
    ])
}

fn request_bodies() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        model_names().prop_map(|model| match model {
            Some(model) => format!(r#"{{"model":"{model}","messages":[]}}"#),
            None => r#"{"messages":[]}"#.to_owned(),
        }),
        Just(r#"{"model":"simulator","model":"qwen3"}"#.to_owned()),
        Just(r#"{"model":"qwen3","stream":"true"}"#.to_owned()),
        Just(r#"{"model":["qwen3"]}"#.to_owned()),
        Just(r#"{"model":"simulator","temperature":NaN}"#.to_owned()),
        Just("not json".to_owned()),
    ])
}

#[test]
fn check_allows_only_the_model_the_backend_would_serve_and_counts_it() {
    use maas_authz::authorizer::{CheckInput, Decision};
    use maas_authz::limits::{InProcessCounterStore, Limiter};
    use maas_authz::request_path::CanonicalPath;
    use maas_authz::usage::{Endpoint, inspect_request};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (free, premium) = (ApiKey::generate().unwrap(), ApiKey::generate().unwrap());
    let mut premium_record = record(&premium, KeyStatus::Active);
    premium_record.subscription = "premium".into();
    premium_record.groups = vec!["premium-users".into(), "system:authenticated".into()];
    let store = InMemoryStore {
        keys: [
            (free.hash(), record(&free, KeyStatus::Active)),
            (premium.hash(), premium_record),
        ]
        .into(),
    };
    let raised = crate::support::RaisedPolicy::write();
    let policy = Arc::new(ArcSwap::from_pointee(
        Policy::load(raised.path()).expect("raised example policy"),
    ));
    let authorizer = Authorizer::new(Arc::new(store), small_cache(), policy.clone(), Arc::new(()))
        .with_limiter(Arc::new(Limiter::new(
            Arc::new(InProcessCounterStore::default()),
            policy.clone(),
        )));
    let keys = [
        format!("Bearer {}", free.expose()),
        format!("Bearer {}", premium.expose()),
    ];
    let requests = (
        0..2usize,
        tricky_paths(),
        model_names(),
        model_names(),
        request_bodies(),
        any::<bool>(),
    );
    let allowed = AtomicUsize::new(0);

    runner(4096)
        .run(
            &requests,
            |(key, path, route, header, body, check_sees_body)| {
                let input = CheckInput {
                    authorization: Some(&keys[key]),
                    path: &path,
                    route_model: route,
                    model_header: header,
                    body: body
                        .as_deref()
                        .filter(|_| check_sees_body)
                        .map(str::as_bytes),
                    ..Default::default()
                };
                let decision = runtime
                    .block_on(authorizer.check(&input, Utc::now()))
                    .expect("the in-memory store never fails");
                let Decision::Allow(granted) = decision else {
                    return Ok(());
                };
                allowed.fetch_add(1, Ordering::Relaxed);
                let model = granted
                    .answer
                    .model
                    .as_ref()
                    .expect("no model-free paths are configured: an allow names a model");
                let authorized = format!("{}/{}", model.namespace(), model.name());
                let canonical = CanonicalPath::parse(&path).expect("only canonical paths pass");
                // Counted by Check, unless it is a model listing.
                prop_assert!(
                    granted.limits.is_some() || canonical.is_model_listing(),
                    "{} allowed uncounted",
                    path
                );
                // The token meter reads the whole body; it refuses one it cannot read or that
                // names another model, and then nothing reaches a model.
                let bytes = body.as_deref().unwrap_or_default().as_bytes();
                let meter_refuses = body.is_some()
                    && match inspect_request(bytes, Endpoint::of_path(&canonical), true) {
                        Err(_) => true,
                        Ok(inspected) => inspected
                            .model
                            .is_some_and(|named| !policy.load().same_model(&authorized, &named)),
                    };
                if meter_refuses {
                    return Ok(());
                }
                // The backend: the model server the gateway routes to when the operator's route
                // or a trusted header names the model (it gets that model's path), else the
                // simulator reading the raw path as uvicorn does. `None`: it serves nothing (404).
                let routed_by = [route, header]
                    .into_iter()
                    .flatten()
                    .find(|name| !name.trim().is_empty());
                let backend_path = match routed_by {
                    Some(name) => format!(
                        "/{}/v1/chat/completions",
                        name.rsplit('/').next().unwrap_or(name)
                    ),
                    None => path.clone(),
                };
                let served = maas_simulator::served_model(&backend_path, bytes, SERVED);
                prop_assert!(
                    served.is_none() || served == Some(model.name()),
                    "path {:?}, route {:?}, header {:?}, body {:?}: Check authorized {}, the \
                     backend serves {:?}",
                    path,
                    route,
                    header,
                    body,
                    authorized,
                    served
                );
                Ok(())
            },
        )
        .unwrap();
    assert!(
        allowed.load(Ordering::Relaxed) > 10,
        "too few requests were allowed for the property to mean anything"
    );
}
