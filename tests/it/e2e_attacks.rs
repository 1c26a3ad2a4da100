//! The gateway tried as an attacker would, through real Envoys: the shipped configuration and a
//! plain one with none of its path protections, in front of the simulator, which reads paths and
//! bodies the way lax Python servers do (percent-decoding, dot segments, body `model` wins).
//!
//! Two invariants, checked on every request of every table:
//! - a request reaches a model only if the key's subscription grants that model (the simulator
//!   reports which model served it);
//! - every response a model served was counted by Check (`x-ratelimit-*`) and charged by the
//!   token meter (a metered, estimated or interrupted response, and tokens charged).
//!
//! Requests are written byte for byte ([`crate::raw_http`]): client libraries would normalise
//! the very tricks being tested.

use std::time::{Duration, Instant};

use maas_simulator::HEADER_SERVED_MODEL;
use serde_json::{Value, json};

use crate::e2e::{
    FREE_TOKEN, Gateway, GatewayOptions, PLAIN_ENVOY_TEMPLATE, PREMIUM_TOKEN,
    SHIPPED_ENVOY_TEMPLATE,
};
use crate::e2e_tokens::{MetricsSample, metrics};
use crate::raw_http::{RawRequest, RawResponse, send, send_and_hang_up};
use crate::support::RaisedPolicy;

/// The meter's request-body limit in these tests, so that "too large" is cheap to send.
const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

struct Arena {
    gateway: Gateway,
    addr: String,
    free_key: String,
    premium_key: String,
    _policy: RaisedPolicy,
}

impl Arena {
    async fn start(envoy_template: &'static str) -> Self {
        let policy = RaisedPolicy::write();
        let policy_path = policy.path().to_owned();
        let gateway = Gateway::start_with(GatewayOptions {
            envoy_template,
            configure: Box::new(move |config| {
                config.policy_path = Some(policy_path);
                config.enforcement.meter_max_request_bytes = MAX_REQUEST_BYTES;
            }),
            ..GatewayOptions::default()
        })
        .await;
        let (free_key, _) = gateway.mint(FREE_TOKEN).await;
        let (premium_key, _) = gateway.mint(PREMIUM_TOKEN).await;
        let addr = gateway.url.trim_start_matches("http://").to_owned();
        Self {
            gateway,
            addr,
            free_key,
            premium_key,
            _policy: policy,
        }
    }

    /// Sends `request` and checks both invariants; `granted` are the models the key may reach.
    async fn attempt(&self, name: &str, request: &RawRequest, granted: &[&str]) -> RawResponse {
        let before = metrics(&self.gateway).await;
        let response = send(&self.addr, request).await;
        if let Some(served) = response.header(HEADER_SERVED_MODEL) {
            assert!(
                granted.contains(&served),
                "{name}: {} reached model {served:?}, which the key is not granted ({granted:?}); \
                 status {}: {}",
                request.target,
                response.status,
                response.text()
            );
            if (200..300).contains(&response.status) {
                assert!(
                    response.header("x-ratelimit-remaining-requests").is_some(),
                    "{name}: served by {served} but not counted by Check: {:?}",
                    response.headers
                );
                self.wait_until_charged(name, &before).await;
            }
        } else {
            assert!(
                !(200..300).contains(&response.status),
                "{name}: {} answered {} without reaching a model: {}",
                request.target,
                response.status,
                response.text()
            );
        }
        response
    }

    /// Waits until one more response was charged (metered, estimated or interrupted) and tokens
    /// were charged; fails with the metrics otherwise.
    async fn wait_until_charged(&self, name: &str, before: &MetricsSample) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = metrics(&self.gateway).await;
            if charged_responses(&now) > charged_responses(before)
                && now.value(CHARGED) > before.value(CHARGED)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: a model served the request but nothing was charged:\n{}",
                now.0
                    .lines()
                    .filter(|l| l.contains("metered") || l.contains("charged"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const CHARGED: &str = "maas_authz_tokens_charged_total";

/// Responses the meter charged, whatever their endpoint.
fn charged_responses(sample: &MetricsSample) -> u64 {
    sample
        .0
        .lines()
        .filter(|l| l.starts_with("maas_authz_metered_responses_total{"))
        .filter(|l| {
            ["metered", "estimated", "interrupted"]
                .iter()
                .any(|o| l.contains(&format!("outcome=\"{o}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn chat(model: &str) -> Vec<u8> {
    json!({
        "model": model,
        "messages": [{ "role": "user", "content": "Hello, how are you?" }],
        "max_tokens": 3,
    })
    .to_string()
    .into_bytes()
}

fn chat_without_model() -> Vec<u8> {
    json!({ "messages": [{ "role": "user", "content": "Hello" }], "max_tokens": 3 })
        .to_string()
        .into_bytes()
}

/// Every way we know to name `qwen3` while the path looks like something else, or to slip past
/// a reading of the path: the issue's examples and their relatives.
const MODEL_PATH_TRICKS: &[&str] = &[
    "/llm/qwen3/%76%31/chat/completions",
    "/llm/qwen3%2Fv1/chat/completions",
    "/llm/qwen3%2fv1/chat/completions",
    "/llm/./qwen3/v1/chat/completions",
    "/llm/simulator/../qwen3/v1/chat/completions",
    "/llm/qwen3/V1/chat/completions",
    "/llm/qwen3/v1%2Fchat/completions",
    "/llm/%71wen3/v1/chat/completions",
    "/llm/simulator/%2e%2e/qwen3/v1/chat/completions",
    "/llm/simulator/%2E%2E/qwen3/v1/chat/completions",
    "/llm/simulator/..%2fqwen3/v1/chat/completions",
    "/llm/simulator%2f..%2fqwen3/v1/chat/completions",
    "/llm/simulator/..%5cqwen3/v1/chat/completions",
    "/llm/simulator/..\\qwen3/v1/chat/completions",
    "/llm/simulator%5c..%5cqwen3/v1/chat/completions",
    "//llm/qwen3/v1/chat/completions",
    "/llm//qwen3/v1/chat/completions",
    "/qwen3//v1/chat/completions",
    "/llm/qwen3;x=1/v1/chat/completions",
    "/llm/qwen3/v1;/chat/completions",
    "/llm/qwen3%3b/v1/chat/completions",
    "/llm/qwen3./v1/chat/completions",
    "/llm/qwen3%2e/v1/chat/completions",
    "/llm/qwen3%00/v1/chat/completions",
    "/llm/qwen3%c0%af/v1/chat/completions",
    "/llm/simulator/%c0%ae%c0%ae/qwen3/v1/chat/completions",
    "/llm/qwen3%252fv1/chat/completions",
    "/llm/qwen3+/v1/chat/completions",
    "/llm/QWEN3/v1/chat/completions",
    "/LLM/qwen3/v1/chat/completions",
    "/qwen3/V1/chat/completions",
    "/qwen3%2Fv1/chat/completions",
    "/simulator/../qwen3/v1/chat/completions",
    "/simulator/./../qwen3/v1/chat/completions",
    "/simulator/v1/../../qwen3/v1/chat/completions",
    "/llm/qwen3/v1/chat/completions",
    "/qwen3/v1/chat/completions",
    "/v1/chat/completions",
];

/// The model tricks with a free key (granted only `simulator`): none may reach `qwen3`, and
/// whatever reaches `simulator` is counted and charged.
async fn a_free_key_never_reaches_qwen3(arena: &Arena) {
    for target in MODEL_PATH_TRICKS {
        for body in [chat("qwen3"), chat("simulator"), chat_without_model()] {
            let request = RawRequest::post(target, &arena.free_key, body);
            arena.attempt(target, &request, &["simulator"]).await;
        }
    }
    // Header and body disagreeing with the path, and the body alone naming the model.
    let header_and_body: [(&str, Option<&str>, Vec<u8>); 6] = [
        (
            "/llm/simulator/v1/chat/completions",
            Some("qwen3"),
            chat("simulator"),
        ),
        ("/llm/simulator/v1/chat/completions", None, chat("qwen3")),
        (
            "/llm/simulator/v1/chat/completions",
            None,
            chat("llm/qwen3"),
        ),
        ("/v1/chat/completions", Some("simulator"), chat("qwen3")),
        ("/v1/chat/completions", Some("qwen3"), chat("qwen3")),
        (
            "/llm/simulator/v1/chat/completions",
            None,
            br#"{"model":"simulator","model":"qwen3","messages":[]}"#.to_vec(),
        ),
    ];
    for (target, header, body) in header_and_body {
        let mut request = RawRequest::post(target, &arena.free_key, body);
        if let Some(model) = header {
            request = request.header("x-gateway-model-name", model);
        }
        arena.attempt(target, &request, &["simulator"]).await;
    }
}

/// Ways to be served tokens without being charged; each must be refused or charged.
async fn no_token_is_served_uncharged(arena: &Arena) {
    let key = &arena.premium_key;
    let both = ["simulator", "qwen3"];
    let streaming = |stream: Value| {
        json!({
            "model": "simulator",
            "messages": [{ "role": "user", "content": "Hello there" }],
            "max_tokens": 4,
            "stream": stream,
        })
        .to_string()
        .into_bytes()
    };
    let mut cases: Vec<(&str, RawRequest)> = vec![
        (
            "stream \"true\"",
            RawRequest::post("/llm/simulator/v1/chat/completions", key, streaming(json!("true"))),
        ),
        (
            "stream 1",
            RawRequest::post("/llm/simulator/v1/chat/completions", key, streaming(json!(1))),
        ),
        (
            "stream \"false\"",
            RawRequest::post("/llm/simulator/v1/chat/completions", key, streaming(json!("false"))),
        ),
        (
            "stream [0]",
            RawRequest::post("/llm/simulator/v1/chat/completions", key, streaming(json!([0]))),
        ),
        (
            "stream true",
            RawRequest::post("/llm/simulator/v1/chat/completions", key, streaming(json!(true))),
        ),
        (
            "NaN",
            RawRequest::post(
                "/llm/simulator/v1/chat/completions",
                key,
                br#"{"model":"simulator","messages":[{"role":"user","content":"hi"}],"temperature":NaN}"#.to_vec(),
            ),
        ),
        (
            "Infinity",
            RawRequest::post(
                "/llm/simulator/v1/chat/completions",
                key,
                br#"{"model":"simulator","messages":[{"role":"user","content":"hi"}],"top_p":Infinity}"#.to_vec(),
            ),
        ),
        (
            "byte-order mark",
            RawRequest::post(
                "/llm/simulator/v1/chat/completions",
                key,
                [b"\xef\xbb\xbf".as_slice(), &chat("simulator")].concat(),
            ),
        ),
        (
            "duplicate stream key",
            RawRequest::post(
                "/llm/simulator/v1/chat/completions",
                key,
                br#"{"model":"simulator","stream":false,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
            ),
        ),
        (
            "a body over the limit",
            RawRequest::post(
                "/llm/simulator/v1/chat/completions",
                key,
                json!({
                    "model": "simulator",
                    "messages": [{ "role": "user", "content": "x ".repeat(1_600_000) }],
                    "stream": true,
                })
                .to_string(),
            ),
        ),
        (
            "encoded endpoint",
            RawRequest::post("/simulator/v1/chat/%63ompletions", key, chat("simulator")),
        ),
        (
            "endpoint in capitals",
            RawRequest::post("/simulator/v1/CHAT/COMPLETIONS", key, chat("simulator")),
        ),
        (
            "trailing slash",
            RawRequest::post("/simulator/v1/chat/completions/", key, chat("simulator")),
        ),
        (
            "legacy completions streamed",
            RawRequest::post(
                "/simulator/v1/completions",
                key,
                json!({"model": "simulator", "prompt": "one two", "stream": true, "max_tokens": 2})
                    .to_string(),
            ),
        ),
        (
            "embeddings",
            RawRequest::post(
                "/simulator/v1/embeddings",
                key,
                json!({"model": "simulator", "input": "one two"}).to_string(),
            ),
        ),
        (
            "anthropic messages streamed",
            RawRequest::post(
                "/simulator/v1/messages",
                key,
                json!({"model": "simulator", "max_tokens": 3, "stream": true,
                       "messages": [{"role": "user", "content": "hi there"}]})
                .to_string(),
            ),
        ),
        (
            "responses",
            RawRequest::post(
                "/simulator/v1/responses",
                key,
                json!({"model": "simulator", "input": "hi there"}).to_string(),
            ),
        ),
        (
            "an endpoint the meter does not know",
            RawRequest::post("/simulator/invocations", key, chat("simulator")),
        ),
        (
            "a tokenizer endpoint",
            RawRequest::post(
                "/simulator/tokenize",
                key,
                json!({"model": "simulator", "prompt": "one two"}).to_string(),
            ),
        ),
        (
            "a compressed response",
            RawRequest::post("/simulator/v1/chat/completions", key, chat("simulator"))
                .header("x-simulator-compress", "gzip"),
        ),
        (
            "underscored identity header",
            RawRequest::post("/simulator/v1/chat/completions", key, chat("simulator"))
                .header("x_maas_username", "mallory"),
        ),
        (
            "client-sent assertion",
            RawRequest::post("/simulator/v1/chat/completions", key, chat("simulator"))
                .header("x-maas-identity-assertion", "v1.ephemeral.e30.AAAA"),
        ),
    ];
    let mut chunked = RawRequest::post(
        "/simulator/v1/chat/completions",
        key,
        String::from_utf8(streaming(json!(true))).unwrap(),
    );
    chunked.chunked = true;
    cases.push(("a chunked streaming body", chunked));
    for (name, request) in &cases {
        arena.attempt(name, request, &both).await;
    }
    // The model server compressed although the meter asked it not to: refused, not served.
    let compressed = send(
        &arena.addr,
        &RawRequest::post("/simulator/v1/chat/completions", key, chat("simulator"))
            .header("x-simulator-compress", "gzip"),
    )
    .await;
    assert_eq!(compressed.status, 502, "{}", compressed.text());
    assert_eq!(
        compressed.header("x-ext-auth-reason"),
        Some("response_encoded")
    );
}

/// A client that leaves a stream after two events is charged an estimate, never zero.
async fn an_interrupted_stream_is_charged_an_estimate(arena: &Arena) {
    let before = metrics(&arena.gateway).await;
    let request = RawRequest::post(
        "/simulator/v1/chat/completions",
        &arena.premium_key,
        json!({
            "model": "simulator",
            "messages": [{ "role": "user", "content": "Tell me a long story please" }],
            "stream": true,
        })
        .to_string(),
    )
    .header("x-simulator-chunk-delay-ms", "200");

    send_and_hang_up(&arena.addr, &request, 2).await;

    let interrupted =
        "maas_authz_metered_responses_total{endpoint=\"chat_completions\",outcome=\"interrupted\"}";
    let estimated = "maas_authz_tokens_estimated_total{kind=\"total\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = metrics(&arena.gateway).await;
        if now.value(interrupted) > before.value(interrupted)
            && now.value(estimated) > before.value(estimated)
            && now.value(CHARGED) > before.value(CHARGED)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted stream was not charged an estimate:\n{}",
            now.0
                .lines()
                .filter(|l| l.contains("interrupted")
                    || l.contains("estimated")
                    || l.contains("charged"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The legitimate requests still work (so the tables above prove something).
async fn legitimate_requests_are_served_and_charged(arena: &Arena, qwen3_path: &str) {
    let free = RawRequest::post(
        "/llm/simulator/v1/chat/completions",
        &arena.free_key,
        chat("simulator"),
    );
    let response = arena
        .attempt("free on simulator", &free, &["simulator"])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header(HEADER_SERVED_MODEL), Some("simulator"));

    let premium = RawRequest::post(qwen3_path, &arena.premium_key, chat("qwen3"));
    let response = arena
        .attempt("premium on qwen3", &premium, &["simulator", "qwen3"])
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header(HEADER_SERVED_MODEL), Some("qwen3"));
}

#[tokio::test]
async fn attacks_through_the_shipped_envoy_never_reach_an_ungranted_model_or_go_uncharged() {
    let arena = Arena::start(SHIPPED_ENVOY_TEMPLATE).await;

    legitimate_requests_are_served_and_charged(&arena, "/llm/qwen3/v1/chat/completions").await;
    a_free_key_never_reaches_qwen3(&arena).await;
    no_token_is_served_uncharged(&arena).await;
    an_interrupted_stream_is_charged_an_estimate(&arena).await;
    let underscored = send(
        &arena.addr,
        &RawRequest::post(
            "/simulator/v1/chat/completions",
            &arena.premium_key,
            chat("simulator"),
        )
        .header("x_maas_username", "mallory"),
    )
    .await;
    assert_eq!(
        underscored.status, 400,
        "underscored header names are refused at the edge"
    );
}

#[tokio::test]
async fn attacks_through_a_plain_envoy_never_reach_an_ungranted_model_or_go_uncharged() {
    let arena = Arena::start(PLAIN_ENVOY_TEMPLATE).await;

    legitimate_requests_are_served_and_charged(&arena, "/llm/qwen3/v1/chat/completions").await;
    a_free_key_never_reaches_qwen3(&arena).await;
    no_token_is_served_uncharged(&arena).await;
    an_interrupted_stream_is_charged_an_estimate(&arena).await;
    // Without Envoy's normalisation, Check itself refuses the issue's paths with 400.
    for target in &MODEL_PATH_TRICKS[..7] {
        let response = send(
            &arena.addr,
            &RawRequest::post(target, &arena.free_key, chat("simulator")),
        )
        .await;
        assert_eq!(response.status, 400, "{target}: {}", response.text());
        assert_eq!(
            response.header("x-ext-auth-reason"),
            Some("non_canonical_path")
        );
        let body: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"]["code"], "non_canonical_path");
    }
}
