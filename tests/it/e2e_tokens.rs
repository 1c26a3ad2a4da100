//! End-to-end token metering through a real Envoy: ext_proc reads the simulator's usage from
//! JSON bodies and SSE streams, and the client still gets a well-formed response.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::e2e::{FREE_TOKEN, Gateway, PREMIUM_TOKEN, header, hello};

/// A sample of maas-authz's metrics: `name{labels} value` lines, by their `name{labels}`.
pub(crate) struct MetricsSample(pub(crate) String);

impl MetricsSample {
    /// The value of `series` (e.g. `maas_authz_tokens_metered_total{kind="total"}`), 0 if absent.
    pub(crate) fn value(&self, series: &str) -> u64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0, |value| {
                value.trim().parse::<f64>().expect("numeric sample") as u64
            })
    }
}

pub(crate) async fn metrics(gateway: &Gateway) -> MetricsSample {
    let text = gateway
        .http
        .get(gateway.metrics_url())
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    MetricsSample(text)
}

/// Waits until `series` reaches `expected` (charging happens once Envoy has the last chunk,
/// possibly just after the client got it); fails with the last sample otherwise.
async fn wait_for_metric(gateway: &Gateway, series: &str, expected: u64) -> MetricsSample {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sample = metrics(gateway).await;
        if sample.value(series) == expected {
            return sample;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {expected}; metrics:\n{}",
            sample
                .0
                .lines()
                .filter(|l| l.starts_with("maas_authz_")
                    && (l.contains("token") || l.contains("metered")))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TOTAL: &str = "maas_authz_tokens_metered_total{kind=\"total\"}";
const PROMPT: &str = "maas_authz_tokens_metered_total{kind=\"prompt\"}";
const COMPLETION: &str = "maas_authz_tokens_metered_total{kind=\"completion\"}";
const CHARGED: &str = "maas_authz_tokens_charged_total";

fn responses(endpoint: &str, outcome: &str) -> String {
    format!("maas_authz_metered_responses_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}")
}

/// The `data:` payloads of an SSE body, checking every event is one well-formed data line.
fn sse_events(text: &str) -> Vec<&str> {
    assert!(
        text.ends_with("\n\n"),
        "stream not closed by a blank line: {text:?}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("SSE data line"))
        .collect()
}

/// The chunks of a chat stream (without `[DONE]`), after checking it ends with `[DONE]`.
fn chat_chunks(text: &str) -> Vec<Value> {
    let events = sse_events(text);
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect()
}

fn streaming(model: &str, max_tokens: u64) -> Value {
    let mut request = hello(model, max_tokens);
    request["stream"] = json!(true);
    request
}

#[tokio::test]
async fn e2e_tokens_of_a_chat_completion_are_metered_from_its_json_body() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;

    let response = gateway
        .chat(
            "/simulator/v1/chat/completions",
            Some(&key),
            &hello("simulator", 5),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(
        body["usage"],
        json!({ "prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9 })
    );
    let sample = wait_for_metric(&gateway, TOTAL, 9).await;
    assert_eq!(sample.value(PROMPT), 4);
    assert_eq!(sample.value(COMPLETION), 5);
    assert_eq!(sample.value(CHARGED), 9);
    assert_eq!(sample.value(&responses("chat_completions", "metered")), 1);
}

#[tokio::test]
async fn e2e_a_stream_without_include_usage_is_metered_and_the_client_gets_no_usage_chunk() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;

    let response = gateway
        .chat(
            "/simulator/v1/chat/completions",
            Some(&key),
            &streaming("simulator", 7),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let text = response.text().await.expect("stream");
    let chunks = chat_chunks(&text);
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())),
        "a chunk without choices reached the client: {text}"
    );
    assert!(
        chunks.iter().all(|c| c["usage"].is_null()),
        "usage reached a client that did not ask for it: {text}"
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content.split_whitespace().count(), 7);
    let sample = wait_for_metric(&gateway, TOTAL, 4 + 7).await;
    assert_eq!(sample.value(PROMPT), 4);
    assert_eq!(sample.value(COMPLETION), 7);
    assert_eq!(sample.value(CHARGED), 11);
    assert_eq!(
        sample.value("maas_authz_stream_usage_forced_total{endpoint=\"chat_completions\"}"),
        1
    );
    assert_eq!(sample.value(&responses("chat_completions", "metered")), 1);
}

#[tokio::test]
async fn e2e_a_stream_with_include_usage_keeps_its_usage_chunk_and_is_metered() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;
    let mut request = streaming("simulator", 6);
    request["stream_options"] = json!({ "include_usage": true });

    let response = gateway
        .chat("/simulator/v1/chat/completions", Some(&key), &request)
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("stream");
    let chunks = chat_chunks(&text);
    let last = chunks.last().expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({ "prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10 })
    );
    let sample = wait_for_metric(&gateway, TOTAL, 10).await;
    assert_eq!(sample.value(CHARGED), 10);
    assert_eq!(
        sample.value("maas_authz_stream_usage_forced_total{endpoint=\"chat_completions\"}"),
        0
    );
}

#[tokio::test]
async fn e2e_legacy_completions_are_metered_plain_and_streamed() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;
    let plain = json!({ "model": "qwen3", "prompt": "one two three", "max_tokens": 2 });
    let mut streamed = plain.clone();
    streamed["stream"] = json!(true);

    let response = gateway
        .chat("/llm/qwen3/v1/completions", Some(&key), &plain)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["usage"]["total_tokens"], 5);
    let response = gateway
        .chat("/qwen3/v1/completions", Some(&key), &streamed)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("stream");
    let events = sse_events(&text);
    assert_eq!(events.last(), Some(&"[DONE]"));
    assert_eq!(
        events.len(),
        3,
        "two words and [DONE], no usage chunk: {text}"
    );

    let sample = wait_for_metric(&gateway, TOTAL, 10).await;
    assert_eq!(sample.value(PROMPT), 6);
    assert_eq!(sample.value(COMPLETION), 4);
    assert_eq!(sample.value(&responses("completions", "metered")), 2);
}

#[tokio::test]
async fn e2e_embeddings_are_metered_by_their_prompt_tokens() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;

    let response = gateway
        .chat(
            "/simulator/v1/embeddings",
            Some(&key),
            &json!({ "model": "simulator", "input": ["one two", "three four five"] }),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        body["usage"],
        json!({ "prompt_tokens": 5, "total_tokens": 5 })
    );
    let sample = wait_for_metric(&gateway, TOTAL, 5).await;
    assert_eq!(sample.value(PROMPT), 5);
    assert_eq!(sample.value(COMPLETION), 0);
    assert_eq!(sample.value(&responses("embeddings", "metered")), 1);
}

#[tokio::test]
async fn e2e_refused_and_rest_requests_are_not_metered() {
    let gateway = Gateway::start().await;
    let (key, _) = gateway.mint(PREMIUM_TOKEN).await;

    // Refused by Check: never reaches the meter's identity check.
    let response = gateway
        .chat(
            "/simulator/v1/chat/completions",
            None,
            &hello("simulator", 3),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A REST route: ext_proc is off there.
    let response = gateway
        .http
        .get(format!("{}/v1/models", gateway.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // An error from the model: counted, nothing charged.
    let response = gateway
        .chat(
            "/simulator/v1/chat/completions",
            Some(&key),
            &json!({ "model": "simulator", "messages": "not a list" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "invalid_json");

    let sample = wait_for_metric(
        &gateway,
        &responses("chat_completions", "not_successful"),
        1,
    )
    .await;
    assert_eq!(sample.value(TOTAL), 0);
    assert_eq!(sample.value(CHARGED), 0);
    let all_responses: u64 = sample
        .0
        .lines()
        .filter(|l| l.starts_with("maas_authz_metered_responses_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(all_responses, 1, "only the model's 400 was metered");
}

#[tokio::test]
async fn e2e_metered_tokens_spend_the_free_tiers_token_window_and_the_next_request_gets_429() {
    // Arrange: 10 s into a minute, so the window has 50 s left whatever the wall clock says.
    let clock = std::sync::Arc::new(maas_authz::clock::ManualClock::at_millis(
        1_800_000_000_000 + 10_000,
    ));
    let gateway = Gateway::start_with_clock(clock.clone()).await;
    let (free, _) = gateway.mint(FREE_TOKEN).await;
    let path = "/simulator/v1/chat/completions";
    // The simulator counts the prompt's words as prompt tokens: 120 of them spend more than the
    // free tier's 100 tokens a minute in one request.
    let mut long = hello("simulator", 5);
    long["messages"][0]["content"] = json!(vec!["word"; 120].join(" "));

    // Act
    let first = gateway.chat(path, Some(&free), &long).await;
    let first_status = first.status();
    let remaining_before = header(&first, "x-ratelimit-remaining-tokens").to_owned();
    let usage: Value = first.json().await.expect("JSON body");
    let spent = usage["usage"]["total_tokens"].as_u64().expect("usage");
    wait_for_metric(&gateway, CHARGED, spent).await;
    let second = gateway
        .chat(path, Some(&free), &hello("simulator", 5))
        .await;

    // Assert
    assert_eq!(first_status, StatusCode::OK);
    assert_eq!(
        remaining_before, "100",
        "nothing was spent before the first answer"
    );
    assert!(spent > 100, "the request spent {spent} tokens");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&second, "x-ext-auth-reason"), "token_rate_limited");
    assert_eq!(header(&second, "retry-after"), "50");
    assert_eq!(header(&second, "x-ratelimit-remaining-tokens"), "0");
}
