//! The self-service portal in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over W3C WebDriver), against the real server behind a real Envoy: sign in, create a key
//! and see it once, use it through Envoy, see limits and usage, export CSV, revoke, and the admin's
//! bulk revoke with its dry run. Screenshots of every page go to `<target>/portal-screenshots/`.
//!
//! Chromium comes from `MAAS_AUTHZ_CHROMIUM_BIN`/`MAAS_AUTHZ_CHROMEDRIVER_BIN`, else PATH;
//! `scripts/test.sh` installs it (scripts/ensure-chromium.sh). Without it these tests fail (never
//! skip) and say how to get it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::e2e::{Gateway, GatewayOptions, hello};

const USER_TOKEN: &str = "portal-static-token-user";
const USER: &str = "portal-user";
const ADMIN_TOKEN: &str = "portal-static-token-admin";
const ADMIN: &str = "portal-admin";
const OTHER_TOKEN: &str = "portal-static-token-other";
const OTHER: &str = "portal-other";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(20);

/// A `chromedriver` child process on a free port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

fn tool(variable: &str, names: &[&str]) -> PathBuf {
    if let Some(bin) = std::env::var_os(variable).filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    for name in names {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no {} for the portal's browser tests: {variable} is unset and none of {names:?} is on \
         PATH. Run the tests with scripts/test.sh (it installs Debian's chromium and \
         chromium-driver), or run `bash scripts/ensure-chromium.sh` once.",
        names[0]
    );
}

impl Driver {
    async fn start() -> Self {
        let driver = tool("MAAS_AUTHZ_CHROMEDRIVER_BIN", &["chromedriver"]);
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = client
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == StatusCode::OK);
            if let Some(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session: the WebDriver commands these tests use, and waits that poll.
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: Driver,
}

impl Browser {
    async fn start() -> Self {
        let driver = Driver::start().await;
        let chromium = tool("MAAS_AUTHZ_CHROMIUM_BIN", &["chromium", "chromium-browser"]);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let answer: Value = http
            .post(format!("{}/session", driver.url))
            .json(&json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1000",
                             "--no-first-run", "--disable-extensions"],
                },
            } } }))
            .send()
            .await
            .expect("new WebDriver session")
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver did not start Chromium: {answer}"))
            .to_owned();
        Self {
            http,
            session: format!("{}/session/{session}", driver.url),
            _driver: driver,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("WebDriver command")
            .json()
            .await
            .unwrap();
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` as usual) and returns its value.
    async fn run(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    async fn find(&self, css: &str) -> Option<String> {
        let value = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        value[ELEMENT].as_str().map(str::to_owned)
    }

    /// The element, once it is there (and displayed); panics with the page text after [`WAIT`].
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let shown = self
                .run(
                    "const e = document.querySelector(arguments[0]); \
                     return !!e && e.getClientRects().length > 0;",
                    json!([css]),
                )
                .await;
            if shown == true
                && let Some(element) = self.find(css).await
            {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no visible {css} within {WAIT:?}; the page says:\n{}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css`'s text contains `expected`; returns the whole text.
    async fn wait_text(&self, css: &str, expected: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(element) = self.find(css).await {
                let text = self.text(&element).await;
                if text.contains(expected) {
                    return text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css} never said {expected:?}; the page says:\n{}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, element: &str) -> String {
        self.command(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    async fn page_text(&self) -> String {
        self.run("return document.body.innerText;", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css).await;
        self.post(&format!("/element/{element}/clear"), json!({}))
            .await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn select(&self, css: &str, value: &str) {
        self.wait_for(css).await;
        self.run(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1]; \
             s.dispatchEvent(new Event('change', { bubbles: true }));",
            json!([css, value]),
        )
        .await;
    }

    /// Saves a PNG of the viewport as `<target>/portal-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let data = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("screenshot data"))
            .expect("screenshot base64");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn console_errors(&self) -> Vec<String> {
        let logs = self.post("/se/log", json!({ "type": "browser" })).await;
        logs.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let http = self.http.clone();
        let session = self.session.clone();
        // Closing the session quits Chromium; the driver is killed right after.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let _ = http.delete(session).send().await;
            });
        })
        .join();
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("portal-screenshots")
}

/// The gateway with three static identities: a premium user, another user and an admin.
async fn portal_gateway() -> (Gateway, tempfile::NamedTempFile) {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tokens.path(),
        format!(
            "- token: {USER_TOKEN}\n  username: {USER}\n  groups: [premium-users]\n\
             - token: {OTHER_TOKEN}\n  username: {OTHER}\n  groups: []\n\
             - token: {ADMIN_TOKEN}\n  username: {ADMIN}\n  groups: [portal-admins]\n"
        ),
    )
    .unwrap();
    let path = tokens.path().to_owned();
    let gateway = Gateway::start_with(GatewayOptions {
        configure: Box::new(move |config| {
            config.identity.static_tokens_file = Some(path);
            config.identity.admin_groups = vec!["portal-admins".to_owned()];
        }),
        ..GatewayOptions::default()
    })
    .await;
    (gateway, tokens)
}

async fn sign_in(browser: &Browser, portal: &str, token: &str, user: &str) {
    browser.goto(portal).await;
    browser.type_into("#token", token).await;
    browser.click("#signin-submit").await;
    browser.wait_text("#who-name", user).await;
}

async fn mint(gateway: &Gateway, token: &str, name: &str) -> String {
    let response = gateway
        .http
        .post(format!("{}/maas-api/v1/api-keys", gateway.url))
        .bearer_auth(token)
        .json(&json!({ "name": name, "expiresIn": "1d" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn active_keys(gateway: &Gateway, token: &str) -> Vec<Value> {
    let response: Value = gateway
        .http
        .post(format!("{}/maas-api/v1/api-keys/search", gateway.url))
        .bearer_auth(token)
        .json(&json!({ "filters": { "status": ["active"] } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["data"].as_array().unwrap().clone()
}

/// Whether the server under test has the usage ledger's report (brief C); the usage page is
/// checked either way: full figures with it, an honest "no history" notice without.
async fn has_usage_report(gateway: &Gateway) -> bool {
    let document: Value = gateway
        .http
        .get(format!("{}/maas-api/openapi.json", gateway.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    document["paths"].get("/v1/usage/report").is_some()
}

#[tokio::test]
async fn portal_pages_carry_a_strict_content_security_policy_and_the_root_leads_to_them() {
    let (gateway, _tokens) = portal_gateway().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    for path in [
        "/maas-api/ui/",
        "/maas-api/ui/app.js",
        "/maas-api/ui/style.css",
    ] {
        let response = client
            .get(format!("{}{path}", gateway.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self';"), "{path}: {policy}");
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    let page = client
        .get(format!("{}/maas-api/ui/", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>"), "no inline script");
    assert!(!page.contains("style="), "no inline style");

    let redirect = client
        .get(format!("{}/maas-api/ui", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::FOUND);
    assert_eq!(redirect.headers()["location"], "ui/");

    let missing = client
        .get(format!("{}/maas-api/ui/secrets.js", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let session = client
        .get(format!("{}/maas-api/ui/session", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), StatusCode::UNAUTHORIZED);
    let session: Value = client
        .get(format!("{}/maas-api/ui/session", gateway.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["username"], ADMIN);
    assert_eq!(session["admin"], true);
}

#[tokio::test]
async fn portal_takes_a_user_from_sign_in_to_a_used_key_and_revokes_it() {
    let (gateway, _tokens) = portal_gateway().await;
    let browser = Browser::start().await;
    let portal = format!("{}/maas-api/ui/", gateway.url);

    // Sign in: a wrong token is refused with a clear message, the right one gets in.
    browser.goto(&portal).await;
    browser.wait_for("#token").await;
    browser.screenshot("01-sign-in").await;
    browser.type_into("#token", "not-a-token").await;
    browser.click("#signin-submit").await;
    browser.wait_text("#signin-status", "not accepted").await;
    browser.type_into("#token", USER_TOKEN).await;
    browser.click("#signin-submit").await;
    browser.wait_text("#who-name", USER).await;
    assert!(
        browser.find("#nav-admin a").await.is_some()
            && browser
                .run(
                    "return document.getElementById('nav-admin').hidden;",
                    json!([])
                )
                .await
                == true,
        "no Admin link for a user"
    );

    // My keys: none yet; create one and see it once, with snippets naming a granted model.
    browser.wait_text("#keys-list", "no active keys").await;
    browser.wait_for("#create-key-form").await;
    let subscriptions = browser
        .run(
            "return [...document.querySelectorAll('#key-subscription option')].map(o => o.value);",
            json!([]),
        )
        .await;
    assert_eq!(
        subscriptions,
        json!(["premium", "free"]),
        "sorted by priority, highest first"
    );
    let expiry_choices = browser
        .run(
            "return [...document.querySelectorAll('#key-expiry option')].map(o => o.value);",
            json!([]),
        )
        .await;
    assert_eq!(
        expiry_choices.as_array().unwrap().last().unwrap(),
        "90d",
        "capped by the server's maximum: {expiry_choices}"
    );
    browser.type_into("#key-name", "notebook").await;
    browser
        .type_into("#key-labels", "team=search\nenv=dev")
        .await;
    browser.click("#create-key").await;
    let key_element = browser.wait_for("#new-key-value").await;
    let key = browser.text(&key_element).await;
    assert!(key.starts_with("sk-oai-"), "{key}");
    let curl = browser.text(&browser.wait_for("#snippet-curl").await).await;
    assert!(
        curl.contains(&format!("{}/simulator/v1/chat/completions", gateway.url))
            || curl.contains(&format!("{}/llm/", gateway.url)),
        "{curl}"
    );
    assert!(curl.contains(&key), "{curl}");
    let python = browser
        .text(&browser.wait_for("#snippet-python").await)
        .await;
    assert!(python.contains("OpenAI(base_url=\""), "{python}");
    browser.screenshot("02-my-keys-new-key").await;
    browser.wait_text("#keys-table", "notebook").await;
    let row = browser.wait_text("#keys-table", "team=search").await;
    assert!(row.contains("active"), "{row}");
    browser.click("#dismiss-key").await;
    let source = browser
        .run("return document.documentElement.outerHTML;", json!([]))
        .await;
    assert!(
        !source.as_str().unwrap().contains(&key),
        "the key is gone from the page once dismissed"
    );
    let stored = browser
        .run(
            "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie;",
            json!([]),
        )
        .await;
    assert!(
        !stored.as_str().unwrap().contains("sk-oai-")
            && !stored.as_str().unwrap().contains(USER_TOKEN),
        "nothing secret is stored in the browser: {stored}"
    );

    // Use the key through Envoy.
    for _ in 0..3 {
        let response = gateway
            .chat(
                "/simulator/v1/chat/completions",
                Some(&key),
                &hello("simulator", 5),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    // Subscriptions and models.
    browser.click("a[data-page='subscriptions']").await;
    let cards = browser.wait_text("#subscriptions", "Premium").await;
    assert!(cards.contains("priority 20"), "{cards}");
    browser.wait_text("#models-table", "simulator").await;
    browser.screenshot("03-subscriptions").await;

    // Limits now: the three requests and their tokens are counted.
    browser.click("a[data-page='limits']").await;
    browser.wait_for("[data-limits]").await;
    let limits = browser
        .run(
            "return Object.fromEntries([...document.querySelectorAll('[data-limits]')].map(s => \
             [s.dataset.limits, [...s.querySelectorAll('[data-used]')].map(e => Number(e.dataset.used))]));",
            json!([]),
        )
        .await;
    let used = limits
        .as_object()
        .and_then(|all| {
            all.iter()
                .find(|(name, _)| name.contains("premium") && name.ends_with("simulator"))
        })
        .map(|(_, used)| used.clone())
        .unwrap_or_else(|| panic!("no premium simulator limits in {limits}"));
    assert_eq!(used[0], 3, "requests used: {limits}");
    assert_eq!(used[1], 27, "tokens used (3 × 9): {limits}");
    browser.wait_for("#last-429").await;
    browser.screenshot("04-limits").await;

    // Usage.
    browser.click("a[data-page='usage']").await;
    if has_usage_report(&gateway).await {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            browser.click("#usage-apply").await;
            browser.wait_for("#usage-totals").await;
            let requests = browser
                .text(&browser.wait_for("#total-requests").await)
                .await;
            if requests == "3" {
                break;
            }
            assert!(Instant::now() < deadline, "usage never showed 3 requests");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        browser.wait_for("#usage-chart rect.bar-tokens").await;
        browser.wait_text("#usage-by-model", "simulator").await;
        browser.wait_text("#usage-by-key", "notebook").await;
        browser.screenshot("05-usage").await;
        browser.click("#csv-export").await;
        browser.wait_for("#csv-download").await;
        // The page's CSP keeps even blob: URLs out of fetch, so the test compares the downloaded
        // blob's size with the same export fetched here.
        let link = browser
            .run(
                "const a = document.getElementById('csv-download'); \
                 return [a.dataset.from, a.dataset.to, Number(a.dataset.bytes), a.download, a.href];",
                json!([]),
            )
            .await;
        assert!(link[4].as_str().unwrap().starts_with("blob:"), "{link}");
        assert!(link[3].as_str().unwrap().ends_with(".csv"), "{link}");
        let csv = gateway
            .http
            .get(format!("{}/maas-api/v1/usage/report", gateway.url))
            .query(&[
                ("from", link[0].as_str().unwrap()),
                ("to", link[1].as_str().unwrap()),
                ("groupBy", "day,model,key"),
                ("format", "csv"),
            ])
            .bearer_auth(USER_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(link[2], csv.len(), "the page downloaded the export: {csv}");
        let header = csv.lines().next().unwrap_or_default();
        assert!(
            header.starts_with("day,model,key,requests,rate_limited,"),
            "{header}"
        );
        assert_eq!(csv.lines().count(), 2, "one row for the day: {csv}");
    } else {
        browser
            .wait_text("#usage-results", "keeps no usage history")
            .await;
        browser.screenshot("05-usage").await;
    }

    // Revoke with confirmation: cancel keeps the key, confirm revokes it, Envoy refuses it.
    browser.click("a[data-page='keys']").await;
    browser.click("button[data-revoke]").await;
    browser.click("#confirm-cancel").await;
    assert_eq!(active_keys(&gateway, USER_TOKEN).await.len(), 1);
    browser.click("button[data-revoke]").await;
    browser.wait_text("#confirm-text", "notebook").await;
    browser.screenshot("06-revoke-confirmation").await;
    browser.click("#confirm-ok").await;
    browser.wait_text("#keys-list", "no active keys").await;
    assert!(active_keys(&gateway, USER_TOKEN).await.is_empty());
    let refused = gateway
        .chat(
            "/simulator/v1/chat/completions",
            Some(&key),
            &hello("simulator", 5),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        crate::e2e::header(&refused, "x-ext-auth-reason"),
        "key_revoked"
    );
    browser.select("#key-status-filter", "revoked").await;
    browser.wait_text("#keys-table", "revoked").await;

    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .all(|e| !e.contains("Content Security Policy")),
        "CSP violations: {errors:?}"
    );
}

#[tokio::test]
async fn portal_admin_counts_a_bulk_revoke_by_dry_run_before_revoking_exactly_that() {
    let (gateway, _tokens) = portal_gateway().await;
    mint(&gateway, OTHER_TOKEN, "batch-1").await;
    mint(&gateway, OTHER_TOKEN, "batch-2").await;
    mint(&gateway, USER_TOKEN, "keep-me").await;
    let browser = Browser::start().await;
    let portal = format!("{}/maas-api/ui/", gateway.url);

    sign_in(&browser, &portal, ADMIN_TOKEN, ADMIN).await;
    browser.click("a[data-page='admin']").await;
    let everyone = browser.wait_text("#admin-keys-table", "batch-1").await;
    assert!(
        everyone.contains("keep-me") && everyone.contains(OTHER),
        "{everyone}"
    );
    browser.type_into("#admin-user", OTHER).await;
    browser.click("#admin-search").await;
    browser.wait_text("#admin-keys", "batch-2").await;
    assert!(!browser.page_text().await.contains("keep-me"));
    browser.screenshot("07-admin").await;

    // Nothing named: a clear message, nothing counted.
    browser.click("#bulk-count-button").await;
    browser.wait_text("#bulk-result", "Name a user").await;
    assert_eq!(
        browser
            .run(
                "return document.getElementById('bulk-run').disabled;",
                json!([])
            )
            .await,
        true
    );

    browser.type_into("#bulk-user", OTHER).await;
    browser.click("#bulk-count-button").await;
    browser.wait_text("#bulk-count", "2 active key(s)").await;
    assert_eq!(
        active_keys(&gateway, OTHER_TOKEN).await.len(),
        2,
        "a dry run revokes nothing"
    );
    browser.screenshot("08-admin-dry-run").await;
    browser.click("#bulk-run").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text("#bulk-done", "Successfully revoked 2")
        .await;
    assert!(active_keys(&gateway, OTHER_TOKEN).await.is_empty());
    assert_eq!(
        active_keys(&gateway, USER_TOKEN).await.len(),
        1,
        "other users keep theirs"
    );

    if has_usage_report(&gateway).await {
        browser.wait_for("#chargeback").await;
        browser.wait_text("#chargeback", "cost center").await;
    } else {
        browser
            .wait_text("#chargeback", "keeps no usage history")
            .await;
    }
}

#[tokio::test]
async fn portal_refuses_an_admin_page_to_a_user_and_signs_out_on_request() {
    let (gateway, _tokens) = portal_gateway().await;
    let browser = Browser::start().await;
    let portal = format!("{}/maas-api/ui/", gateway.url);
    sign_in(&browser, &portal, OTHER_TOKEN, OTHER).await;

    browser.goto(&format!("{portal}#/admin")).await;
    browser.wait_for("#create-key-form").await;
    let page = browser
        .run("return document.body.dataset.page;", json!([]))
        .await;
    assert_eq!(page, "keys", "a user asking for #/admin lands on My keys");

    // A new page load forgets the token (memory only): sign in again.
    browser.run("window.location.reload();", json!([])).await;
    browser.wait_for("#token").await;
    sign_in(&browser, &portal, OTHER_TOKEN, OTHER).await;

    browser.click("#sign-out").await;
    browser.wait_for("#token").await;
    assert!(!browser.page_text().await.contains(OTHER));
}

/// What the stand-in issuer remembers between its authorize and token endpoints.
#[derive(Default)]
struct IssuerState {
    url: std::sync::Mutex<String>,
    /// code → (code_challenge, nonce, redirect_uri); a code is redeemed at most once.
    codes: std::sync::Mutex<std::collections::HashMap<String, (String, String, String)>>,
    /// Token requests refused, and why (the test asserts there were none, or the expected ones).
    refusals: std::sync::Mutex<Vec<String>>,
}

const CLIENT_ID: &str = "maas-portal";

/// A small OIDC issuer speaking the real protocol over loopback: discovery, an authorize
/// endpoint that signs `dana` in at once (302 back with code and state), a token endpoint that
/// checks the PKCE verifier (S256) and returns an ES256 ID token carrying the nonce, and JWKS.
struct StandInIssuer {
    url: String,
    state: std::sync::Arc<IssuerState>,
}

impl StandInIssuer {
    async fn start() -> Self {
        use axum::extract::{Query, State};
        use axum::http::header;
        use axum::response::IntoResponse;
        use axum::routing::{get, post};
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use p256::ecdsa::signature::Signer;
        use sha2::Digest;
        use std::collections::HashMap;
        use std::sync::Arc;

        let signing = p256::ecdsa::SigningKey::from_slice(&[7_u8; 32]).unwrap();
        let point = signing.verifying_key().to_encoded_point(false);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "portal-test",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        });
        let state = Arc::new(IssuerState::default());
        let cors = || [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move |State(state): State<Arc<IssuerState>>| async move {
                    let url = state.url.lock().unwrap().clone();
                    (
                        cors(),
                        axum::Json(json!({
                            "issuer": url,
                            "authorization_endpoint": format!("{url}/authorize"),
                            "token_endpoint": format!("{url}/token"),
                            "jwks_uri": format!("{url}/keys"),
                            "code_challenge_methods_supported": ["S256"],
                            "id_token_signing_alg_values_supported": ["ES256"],
                        })),
                    )
                }),
            )
            .route(
                "/authorize",
                get(
                    |State(state): State<Arc<IssuerState>>,
                     Query(query): Query<HashMap<String, String>>| async move {
                        let ok = query.get("response_type").map(String::as_str) == Some("code")
                            && query.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                            && query.get("code_challenge_method").map(String::as_str)
                                == Some("S256")
                            && query.get("scope").is_some_and(|s| s.contains("openid"));
                        if !ok {
                            return (StatusCode::BAD_REQUEST, format!("bad request {query:?}"))
                                .into_response();
                        }
                        let code = crate::support::uuid_simple();
                        let redirect = query["redirect_uri"].clone();
                        state.codes.lock().unwrap().insert(
                            code.clone(),
                            (
                                query["code_challenge"].clone(),
                                query["nonce"].clone(),
                                redirect.clone(),
                            ),
                        );
                        let location = format!(
                            "{redirect}?code={code}&state={}",
                            percent_encode(&query["state"])
                        );
                        (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
                    },
                ),
            )
            .route(
                "/token",
                post(
                    move |State(state): State<Arc<IssuerState>>, body: String| async move {
                        let form: HashMap<String, String> = body
                            .split('&')
                            .filter_map(|pair| pair.split_once('='))
                            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                            .collect();
                        let refuse = |why: String| {
                            state.refusals.lock().unwrap().push(why.clone());
                            (
                                StatusCode::BAD_REQUEST,
                                cors(),
                                axum::Json(
                                    json!({ "error": "invalid_grant", "error_description": why }),
                                ),
                            )
                                .into_response()
                        };
                        let Some((challenge, nonce, redirect)) = form
                            .get("code")
                            .and_then(|code| state.codes.lock().unwrap().remove(code))
                        else {
                            return refuse("unknown or used code".to_owned());
                        };
                        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                        if URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
                            != challenge
                        {
                            return refuse("PKCE verifier does not match".to_owned());
                        }
                        if form.get("redirect_uri") != Some(&redirect)
                            || form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
                            || form.get("grant_type").map(String::as_str)
                                != Some("authorization_code")
                        {
                            return refuse(format!("bad token request {form:?}"));
                        }
                        let url = state.url.lock().unwrap().clone();
                        let now = chrono::Utc::now().timestamp();
                        let claims = json!({
                            "iss": url, "aud": CLIENT_ID, "azp": CLIENT_ID, "sub": "dana-subject",
                            "preferred_username": "dana", "groups": ["premium-users"],
                            "nonce": nonce, "iat": now, "nbf": now - 5, "exp": now + 300,
                        });
                        let header = json!({ "alg": "ES256", "typ": "JWT", "kid": "portal-test" });
                        let input = format!(
                            "{}.{}",
                            URL_SAFE_NO_PAD.encode(header.to_string()),
                            URL_SAFE_NO_PAD.encode(claims.to_string())
                        );
                        let signature: p256::ecdsa::Signature = signing.sign(input.as_bytes());
                        let id_token =
                            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
                        (
                            cors(),
                            axum::Json(json!({
                                "access_token": "opaque-access-token", "token_type": "Bearer",
                                "expires_in": 300, "id_token": id_token,
                            })),
                        )
                            .into_response()
                    },
                ),
            )
            .route(
                "/keys",
                get(move || async move { axum::Json(json!({ "keys": [jwk] })) }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *state.url.lock().unwrap() = url.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, state }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn portal_signs_in_through_the_oidc_code_flow_with_pkce_and_refuses_a_forged_return() {
    let issuer = StandInIssuer::start().await;
    let issuer_url = issuer.url.clone();
    let gateway = Gateway::start_with(GatewayOptions {
        configure: Box::new(move |config| {
            config.identity.oidc_issuer = Some(issuer_url);
            config.identity.oidc_audience = Some(CLIENT_ID.to_owned());
            config.identity.oidc_username_claim = Some("preferred_username".to_owned());
            config.identity.oidc_username_prefix = Some("-".to_owned());
            config.http.portal_oidc_client_id = Some(CLIENT_ID.to_owned());
        }),
        ..GatewayOptions::default()
    })
    .await;
    let browser = Browser::start().await;
    let portal = format!("{}/maas-api/ui/", gateway.url);

    // A forged return (a code and state this tab never asked for) signs nobody in.
    browser
        .goto(&format!("{portal}?code=stolen&state=guessed"))
        .await;
    browser
        .wait_text("#signin-status", "no sign-in was started")
        .await;
    let url = browser.run("return window.location.href;", json!([])).await;
    assert_eq!(url, portal, "the code is removed from the address bar");

    // The real flow: discovery, authorize, back with code and state, token with the verifier.
    browser.click("#oidc-start").await;
    browser.wait_text("#who-name", "dana").await;
    browser.wait_for("#create-key-form").await;
    assert!(
        issuer.state.refusals.lock().unwrap().is_empty(),
        "the issuer refused: {:?}",
        issuer.state.refusals.lock().unwrap()
    );
    let url = browser.run("return window.location.href;", json!([])).await;
    assert!(!url.as_str().unwrap().contains("code="), "{url}");
    let stored = browser
        .run(
            "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie;",
            json!([]),
        )
        .await;
    assert_eq!(stored, "{}{}", "nothing left in browser storage");

    // The ID token works as the bearer: dana mints a key in the portal.
    browser.type_into("#key-name", "from sso").await;
    browser.click("#create-key").await;
    let key = browser
        .text(&browser.wait_for("#new-key-value").await)
        .await;
    assert!(key.starts_with("sk-oai-"), "{key}");
    browser.screenshot("09-oidc-signed-in").await;
}
