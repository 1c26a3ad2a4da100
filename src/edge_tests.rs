//! The edges without external services: the REST router and Check as `serve` builds them, on loopback, over the in-memory key store.
//!
//! The fast tier's counterpart of `tests/it` (which runs the same edges on PostgreSQL): keys
//! minted, searched and revoked over HTTP, models listed, errors in their wire shape, and Check's
//! allow (identity headers) and deny reasons through tonic, all in this process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;

use crate::app::edges;
use crate::app::services::{Services, StoreParts};
use crate::clock::SystemClock;
use crate::config::{ServeConfig, pg_endpoint};
use crate::http::{public_router, serve_http};
use crate::metrics::Metrics;
use crate::store::memory::MemoryKeyStore;
use crate::store::served::ServedStore;

/// Static bearer tokens of the test identities in `tests/fixtures/static-tokens.yaml`, which
/// `tests/it` uses too.
const ALICE: &str = "alice-static-token";
const BOB: &str = "bob-static-token";
const ADMIN_GROUP: &str = "maas-admins";
const CHAT: &str = "/simulator/v1/chat/completions";

/// The REST API and Check on free loopback ports, wired as `serve` wires them but over memory;
/// both stop when this is dropped.
struct Edges {
    http_addr: SocketAddr,
    check: AuthorizationClient<Channel>,
    client: reqwest::Client,
    _stop: watch::Sender<bool>,
}

impl Edges {
    async fn start() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let policy_path = root.join("examples/policy");
        // Parsed only for its defaults: nothing connects to this URL.
        let mut config = ServeConfig::new("postgres://unused.invalid/none", &policy_path);
        config.identity.static_tokens_file = Some(root.join("tests/fixtures/static-tokens.yaml"));
        config.identity.admin_groups = vec![ADMIN_GROUP.to_owned()];

        // The services and edges `serve` builds, around the in-memory store.
        let services = Services::around_store(
            &config,
            Arc::new(SystemClock),
            StoreParts {
                signing: Arc::new(config.enforcement.signing_keys().unwrap()),
                metrics: Arc::new(Metrics::new().unwrap()),
                endpoint: pg_endpoint(&config.database).unwrap(),
                store: ServedStore::Memory(MemoryKeyStore::new(config.database.tenant.clone())),
            },
        )
        .await
        .unwrap();
        let keys = edges::key_manager(&config, &services);
        let state = edges::public_api(&config, &services, keys);
        let (_, health) = tonic_health::server::health_reporter();
        let grpc = edges::grpc_router(&config, &services, health).unwrap();

        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http_listener.local_addr().unwrap();
        let (router, _) = public_router(state);
        tokio::spawn(serve_http(http_listener, router, until_stopped()));
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc_listener.local_addr().unwrap();
        tokio::spawn(
            grpc.serve_with_incoming_shutdown(TcpIncoming::from(grpc_listener), until_stopped()),
        );
        let check = AuthorizationClient::connect(format!("http://{grpc_addr}"))
            .await
            .unwrap();
        Self {
            http_addr,
            check,
            client: reqwest::Client::new(),
            _stop: stop,
        }
    }

    /// `method path` as `token`, with an optional JSON body: the status and the body as JSON.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.http_addr));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST /v1/api-keys` as `token`; the 201 body.
    async fn create_key(&self, token: &str, body: Value) -> Value {
        let (status, created) = self
            .call(
                reqwest::Method::POST,
                "/v1/api-keys",
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created
    }

    /// Envoy's Check for `path` with `headers`.
    async fn check(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "POST".to_owned(),
                        path: path.to_owned(),
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
        };
        self.check
            .clone()
            .check(request)
            .await
            .unwrap()
            .into_inner()
            .http_response
            .expect("an HTTP answer")
    }

    /// `None` when Check allows `key` on `path`, else the denial's status and reason.
    async fn decision(&self, path: &str, key: &str) -> Option<(i32, String)> {
        match self
            .check(path, &[("authorization", &format!("Bearer {key}"))])
            .await
        {
            HttpResponse::OkResponse(_) => None,
            HttpResponse::DeniedResponse(denied) => Some((
                denied.status.map_or(0, |status| status.code),
                header(&denied.headers, "x-ext-auth-reason")
                    .unwrap_or_default()
                    .to_owned(),
            )),
            other => panic!("unexpected Check answer {other:?}"),
        }
    }
}

fn header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == name)
        .map(|header| header.value.as_str())
}

fn names(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_minted_key_is_bound_to_the_best_subscription_and_check_allows_it_with_identity_headers()
{
    let edges = Edges::start().await;

    let created = edges.create_key(BOB, json!({"name": "my-api-key"})).await;
    let key = created["key"].as_str().unwrap();
    let allowed = edges
        .check(
            "/qwen3/v1/chat/completions",
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;

    assert!(key.starts_with("sk-oai-"));
    assert_eq!(created["subscription"], "premium");
    let HttpResponse::OkResponse(ok) = allowed else {
        panic!("expected an allow, got {allowed:?}");
    };
    assert_eq!(header(&ok.headers, "x-maas-username"), Some("bob"));
    assert_eq!(header(&ok.headers, "x-maas-subscription"), Some("premium"));
    assert_eq!(header(&ok.headers, "x-maas-key-id"), created["id"].as_str());
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);
}

#[tokio::test]
async fn check_denies_with_the_reason_envoy_reports() {
    let edges = Edges::start().await;
    let created = edges.create_key(ALICE, json!({"name": "free one"})).await;
    let key = created["key"].as_str().unwrap();
    let unknown = crate::key::ApiKey::generate().unwrap();

    let missing = edges.check(CHAT, &[]).await;
    let malformed = edges.decision(CHAT, "not-a-key").await;
    let not_minted = edges.decision(CHAT, unknown.expose()).await;
    let premium_model = edges.decision("/qwen3/v1/chat/completions", key).await;

    let HttpResponse::DeniedResponse(missing) = missing else {
        panic!("expected a denial, got {missing:?}");
    };
    assert_eq!(
        header(&missing.headers, "x-ext-auth-reason"),
        Some("missing_credentials")
    );
    assert_eq!(malformed, Some((401, "invalid_key_format".to_owned())));
    assert_eq!(not_minted, Some((401, "key_not_found".to_owned())));
    assert_eq!(
        premium_model,
        Some((403, "model_not_in_subscription".to_owned()))
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_and_stays_readable() {
    let edges = Edges::start().await;
    let created = edges.create_key(ALICE, json!({"name": "doomed"})).await;
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    assert_eq!(edges.decision(CHAT, key).await, None);

    let (status, revoked) = edges
        .call(
            reqwest::Method::DELETE,
            &format!("/maas-api/v1/api-keys/{id}"),
            Some(ALICE),
            None,
        )
        .await;
    let again = edges
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(ALICE),
            None,
        )
        .await;
    let read = edges
        .call(
            reqwest::Method::GET,
            &format!("/v1/api-keys/{id}"),
            Some(ALICE),
            None,
        )
        .await;

    assert_eq!((status, &revoked["status"]), (200, &json!("revoked")));
    assert_eq!(
        edges.decision(CHAT, key).await,
        Some((401, "key_revoked".to_owned()))
    );
    assert_eq!(again, (404, json!({"error": "API key not found"})));
    assert_eq!((read.0, &read.1["status"]), (200, &json!("revoked")));
}

#[tokio::test]
async fn a_search_shows_only_the_callers_keys_newest_first() {
    let edges = Edges::start().await;
    for name in ["first", "second", "third"] {
        edges.create_key(ALICE, json!({"name": name})).await;
    }
    edges.create_key(BOB, json!({"name": "bobs"})).await;

    let (status, page) = edges
        .call(
            reqwest::Method::POST,
            "/v1/api-keys/search",
            Some(ALICE),
            Some(json!({})),
        )
        .await;

    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (&page["object"], &page["has_more"]),
        (&json!("list"), &json!(false))
    );
    assert_eq!(names(&page), ["third", "second", "first"]);
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|key| key["username"] == "alice" && key.get("key").is_none())
    );
}

#[tokio::test]
async fn models_are_listed_per_subscription() {
    let edges = Edges::start().await;

    let (bob_status, bob) = edges
        .call(reqwest::Method::GET, "/v1/models", Some(BOB), None)
        .await;
    let (alice_status, alice) = edges
        .call(
            reqwest::Method::GET,
            "/maas-api/v1/models",
            Some(ALICE),
            None,
        )
        .await;

    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|model| format!("{}:{}", model["id"], model["tier"]))
            .collect()
    };
    assert_eq!(
        (bob_status, ids(&bob)),
        (
            200,
            vec![
                "\"simulator\":\"premium\"".to_owned(),
                "\"qwen3\":\"premium\"".to_owned()
            ]
        )
    );
    assert_eq!(
        (alice_status, ids(&alice)),
        (200, vec!["\"simulator\":\"free\"".to_owned()])
    );
}

#[tokio::test]
async fn errors_keep_their_wire_shape() {
    let edges = Edges::start().await;

    let anonymous = edges
        .call(
            reqwest::Method::GET,
            "/v1/api-keys/00000000-0000-4000-8000-000000000000",
            None,
            None,
        )
        .await;
    let anonymous_models = edges
        .call(reqwest::Method::GET, "/v1/models", None, None)
        .await;
    let unknown_id = edges
        .call(
            reqwest::Method::GET,
            "/v1/api-keys/not-a-uuid",
            Some(ALICE),
            None,
        )
        .await;

    assert_eq!(anonymous, (401, json!({"error": "missing bearer token"})));
    assert_eq!(
        anonymous_models,
        (
            401,
            json!({"error": {
                "code": "invalid_api_key",
                "message": "missing bearer token",
                "type": "authentication_error",
            }})
        )
    );
    assert_eq!(unknown_id, (404, json!({"error": "API key not found"})));
}
