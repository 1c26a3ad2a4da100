//! REST fixtures: the real server with static-token identities (alice, bob, an admin) and a
//! small HTTP client that returns status, headers and parsed JSON.

use std::time::Duration;

use maas_authz::app::Application;
use maas_authz::clock::{Clock, SystemClock};
use maas_authz::config::ServeConfig;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{TestDb, TestServer, serve_config};

/// Static bearer tokens of the test identities (`MAAS_AUTHZ_STATIC_TOKENS_FILE`).
pub const ALICE: &str = "alice-static-token";
pub const BOB: &str = "bob-static-token";
pub const ADMIN: &str = "admin-static-token";
/// The admin group (`MAAS_AUTHZ_ADMIN_GROUPS`).
pub const ADMIN_GROUP: &str = "maas-admins";

/// The test identities (alice, bob, and root-admin in the admin group), shared with the fast tier.
pub const STATIC_TOKENS: &str = include_str!("../fixtures/static-tokens.yaml");

const STATIC_TOKENS_FILE_NAME: &str = "static-tokens.yaml";

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Value::Null` when it is not JSON.
    pub json: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and the exact JSON body.
    #[track_caller]
    pub fn assert_exactly(&self, status: u16, json: Value) {
        assert_eq!(
            (self.status, &self.json),
            (status, &json),
            "body: {}",
            self.text
        );
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        &self.json
    }
}

/// The real server, its database, and the files its identities come from.
pub struct RestServer {
    pub test: TestServer,
    identities: TempDir,
    client: reqwest::Client,
}

/// A request under construction.
pub struct Call<'a> {
    server: &'a RestServer,
    internal: bool,
    method: Method,
    path: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<(String, Vec<u8>)>,
}

impl Call<'_> {
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A JSON body sent as `application/json`.
    pub fn json(self, body: Value) -> Self {
        self.raw("application/json", body.to_string().into_bytes())
    }

    pub fn raw(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.body = Some((content_type.to_owned(), body));
        self
    }

    pub async fn send(self) -> Reply {
        let addr = if self.internal {
            self.server.test.server.internal_addr
        } else {
            self.server.test.server.http_addr
        };
        let mut request = self
            .server
            .client
            .request(self.method, format!("http://{addr}{}", self.path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some((content_type, body)) = self.body {
            request = request.header("content-type", content_type).body(body);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("HTTP body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }
}

impl RestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test identities, after `configure` has adjusted the configuration.
    pub async fn start_with(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_with_clock(configure, std::sync::Arc::new(SystemClock)).await
    }

    /// [`RestServer::start_with`], the limits' windows read from `clock`.
    pub async fn start_with_clock(
        configure: impl FnOnce(&mut ServeConfig),
        clock: std::sync::Arc<dyn Clock>,
    ) -> Self {
        let identities = tempfile::tempdir().expect("temp dir");
        let tokens_file = identities.path().join(STATIC_TOKENS_FILE_NAME);
        std::fs::write(&tokens_file, STATIC_TOKENS).expect("write static tokens");
        let db = TestDb::migrated().await;
        let mut config = serve_config(&db);
        config.identity.static_tokens_file = Some(tokens_file);
        config.identity.admin_groups = vec![ADMIN_GROUP.to_owned()];
        configure(&mut config);
        let server = Application::build_with_clock(config, clock)
            .await
            .expect("server starts");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        Self {
            test: TestServer { db, server },
            identities,
            client,
        }
    }

    /// Replaces the running server's static token file, as an operator editing the mounted
    /// Secret would.
    pub fn rewrite_static_tokens(&self, yaml: &str) {
        std::fs::write(self.identities.path().join(STATIC_TOKENS_FILE_NAME), yaml)
            .expect("rewrite static tokens");
    }

    /// A call to the public listener.
    pub fn call(&self, method: Method, path: &str) -> Call<'_> {
        Call {
            server: self,
            internal: false,
            method,
            path: path.to_owned(),
            token: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// A call to the internal listener.
    pub fn internal(&self, method: Method, path: &str) -> Call<'_> {
        Call {
            internal: true,
            ..self.call(method, path)
        }
    }

    /// `POST /v1/api-keys` as `token`; returns the 201 body.
    pub async fn create_key(&self, token: &str, body: Value) -> Value {
        let reply = self
            .call(Method::POST, "/v1/api-keys")
            .token(token)
            .json(body)
            .send()
            .await;
        reply.assert_status(201).clone()
    }

    /// Envoy's Check for a chat call to `model` with `key`: `None` on allow, else the denial's
    /// HTTP status and `x-ext-auth-reason`.
    pub async fn check(&self, model: &str, key: &str) -> Option<(i32, String)> {
        use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
        let mut client = self.test.check_client().await;
        let response = client
            .check(crate::support::check_request(
                &format!("/{model}/v1/chat/completions"),
                &[("authorization", &crate::support::bearer(key))],
            ))
            .await
            .expect("Check answers")
            .into_inner();
        match response.http_response {
            Some(HttpResponse::OkResponse(_)) => None,
            Some(HttpResponse::DeniedResponse(denied)) => {
                let reason = denied
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == "x-ext-auth-reason")
                    .map(|h| h.value.clone())
                    .unwrap_or_default();
                Some((denied.status.map_or(0, |s| s.code), reason))
            }
            other => panic!("unexpected Check answer {other:?}"),
        }
    }
}
