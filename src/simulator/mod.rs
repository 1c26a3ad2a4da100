//! A stand-in OpenAI-compatible model server and a do-nothing ext_authz server, for the Envoy demo, end-to-end tests and benchmarks.
//!
//! The model server answers `POST /v1/chat/completions` and `POST /v1/completions`, plain or
//! streamed (SSE), with a canned reply and exact `usage` counts: prompt tokens are the
//! whitespace-separated words of the prompt (or of every message's content), completion tokens
//! the words it generated (at most `max_tokens`). `POST /v1/embeddings` answers small fixed
//! vectors with the input's words as `prompt_tokens`. It reports what reached it so tests can check
//! the gateway: `x-simulator-received-identity` (a JSON object of the `x-maas-*` identity headers,
//! `null` when absent) and `x-simulator-received-credentials` (`none`, `authorization`,
//! `x-api-key`, or both comma-separated). It never logs headers or bodies.
//!
//! Envoy strips the `/<model>` prefix before forwarding, so the server only knows `/v1/...`.

mod noop_ext_authz;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use noop_ext_authz::serve_noop_ext_authz;

/// Response header: the identity headers the simulator received, as a JSON object.
pub const HEADER_RECEIVED_IDENTITY: &str = "x-simulator-received-identity";
/// Response header: which credential headers reached the simulator (`none` when the gateway
/// removed them, as it must).
pub const HEADER_RECEIVED_CREDENTIALS: &str = "x-simulator-received-credentials";
/// The identity headers echoed in [`HEADER_RECEIVED_IDENTITY`], in this order.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-maas-username",
    "x-maas-group",
    "x-maas-subscription",
    "x-maas-tier",
    "x-maas-key-id",
];
/// The model name used when a request names none.
pub const DEFAULT_MODEL: &str = "simulator";
/// What the simulator says, word by word, until `max_tokens` cuts it short.
pub const REPLY: &str = "Hello! I am the MaaS simulator. I answer instantly and count tokens \
     the simple way: one token per whitespace-separated word, for the prompt and for this reply.";

/// Serves the simulator on `listener` until `shutdown` resolves, then finishes in-flight
/// requests and returns.
pub async fn serve_simulator(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// The simulator's routes, for embedding in another server.
pub fn router() -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                "the simulator serves /v1/chat/completions, /v1/completions and /v1/embeddings",
            )
        })
        .layer(axum::middleware::from_fn(report_received))
}

/// Adds the two `x-simulator-received-*` headers to every response.
async fn report_received(request: Request, next: Next) -> Response {
    let identity = received_identity(request.headers());
    let credentials = received_credentials(request.headers());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&identity) {
        headers.insert(HEADER_RECEIVED_IDENTITY, value);
    }
    headers.insert(
        HEADER_RECEIVED_CREDENTIALS,
        HeaderValue::from_static(credentials),
    );
    response
}

/// The identity headers as an ASCII-only JSON object; repeated headers are joined with `, `
/// so a smuggled second copy shows up.
pub fn received_identity(headers: &HeaderMap) -> String {
    let mut object = serde_json::Map::new();
    for name in IDENTITY_HEADERS {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let value = if values.is_empty() {
            Value::Null
        } else {
            Value::String(values.join(", "))
        };
        object.insert(name.to_owned(), value);
    }
    ascii_json(&Value::Object(object))
}

fn received_credentials(headers: &HeaderMap) -> &'static str {
    match (
        headers.contains_key("authorization"),
        headers.contains_key("x-api-key"),
    ) {
        (false, false) => "none",
        (true, false) => "authorization",
        (false, true) => "x-api-key",
        (true, true) => "authorization,x-api-key",
    }
}

/// JSON with every non-ASCII character escaped, so it is a valid header value.
fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Whitespace-separated words: the simulator's token count.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: Option<Value>,
    max_tokens: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

/// Words of a message's `content`: a string, or an array of parts whose `text` counts.
fn content_tokens(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(text)) => count_tokens(text),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part {
                Value::String(text) => count_tokens(text),
                Value::Object(fields) => fields
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, count_tokens),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// What to generate: the reply's words, cut at `max_tokens`.
#[derive(Debug)]
struct Generation {
    model: String,
    prompt_tokens: u64,
    words: Vec<&'static str>,
    finish_reason: &'static str,
    stream: bool,
    include_usage: bool,
}

impl Generation {
    fn new(
        model: Option<String>,
        prompt_tokens: u64,
        max_tokens: Option<u64>,
        stream: bool,
        stream_options: Option<StreamOptions>,
    ) -> Result<Self, BadRequest> {
        let all: Vec<&'static str> = REPLY.split_whitespace().collect();
        let limit = match max_tokens {
            Some(0) => {
                return Err(BadRequest {
                    code: "invalid_value",
                    message: "max_tokens must be at least 1".to_owned(),
                });
            }
            Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let (words, finish_reason) = if all.len() > limit {
            (all[..limit].to_vec(), "length")
        } else {
            (all, "stop")
        };
        Ok(Self {
            model: model
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            prompt_tokens,
            words,
            finish_reason,
            stream,
            include_usage: stream_options.is_some_and(|o| o.include_usage),
        })
    }

    fn text(&self) -> String {
        self.words.join(" ")
    }

    fn usage(&self) -> Value {
        let completion = self.words.len() as u64;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }
}

async fn chat_completions(body: Bytes) -> Response {
    let request: ChatRequest = match parse(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let prompt_tokens = request
        .messages
        .iter()
        .map(|m| content_tokens(m.content.as_ref()))
        .sum();
    let generation = match Generation::new(
        request.model,
        prompt_tokens,
        request.max_completion_tokens.or(request.max_tokens),
        request.stream,
        request.stream_options,
    ) {
        Ok(generation) => generation,
        Err(error) => return error.into_response(),
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    if !generation.stream {
        return axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": generation.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": generation.text() },
                "logprobs": null,
                "finish_reason": generation.finish_reason,
            }],
            "usage": generation.usage(),
        }))
        .into_response();
    }
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": generation.model,
            "choices": choices,
        });
        if generation.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    };
    let mut events = vec![chunk(
        json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]),
        None,
    )];
    for (i, word) in generation.words.iter().enumerate() {
        let content = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events.push(chunk(
            json!([{ "index": 0, "delta": { "content": content }, "finish_reason": null }]),
            None,
        ));
    }
    events.push(chunk(
        json!([{ "index": 0, "delta": {}, "finish_reason": generation.finish_reason }]),
        None,
    ));
    if generation.include_usage {
        events.push(chunk(json!([]), Some(generation.usage())));
    }
    sse(events)
}

async fn completions(body: Bytes) -> Response {
    let request: CompletionRequest = match parse(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let prompt_tokens = match &request.prompt {
        Some(Value::String(text)) => count_tokens(text),
        Some(Value::Array(prompts)) => prompts
            .iter()
            .map(|p| p.as_str().map_or(0, count_tokens))
            .sum(),
        None | Some(Value::Null) => 0,
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                "prompt must be a string or an array of strings",
            );
        }
    };
    let generation = match Generation::new(
        request.model,
        prompt_tokens,
        request.max_tokens,
        request.stream,
        request.stream_options,
    ) {
        Ok(generation) => generation,
        Err(error) => return error.into_response(),
    };
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    if !generation.stream {
        return axum::Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": generation.model,
            "choices": [{
                "index": 0,
                "text": generation.text(),
                "logprobs": null,
                "finish_reason": generation.finish_reason,
            }],
            "usage": generation.usage(),
        }))
        .into_response();
    }
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": generation.model,
            "choices": choices,
        });
        if generation.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    };
    let mut events = Vec::with_capacity(generation.words.len() + 2);
    let last = generation.words.len().saturating_sub(1);
    for (i, word) in generation.words.iter().enumerate() {
        let text = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        let finish = if i == last {
            Value::from(generation.finish_reason)
        } else {
            Value::Null
        };
        events.push(chunk(
            json!([{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }]),
            None,
        ));
    }
    if generation.include_usage {
        events.push(chunk(json!([]), Some(generation.usage())));
    }
    sse(events)
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Value,
}

/// Dimensions of the simulator's embedding vectors.
pub const EMBEDDING_DIMENSIONS: usize = 8;

/// The inputs of an embeddings request: a string or an array of strings.
fn embedding_inputs(input: &Value) -> Option<Vec<&str>> {
    match input {
        Value::String(text) => Some(vec![text.as_str()]),
        Value::Array(items) if !items.is_empty() => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

async fn embeddings(body: Bytes) -> Response {
    let request: EmbeddingsRequest = match parse(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Some(inputs) = embedding_inputs(&request.input) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            "input must be a non-empty string or array of strings",
        );
    };
    let prompt_tokens: u64 = inputs.iter().map(|text| count_tokens(text)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let words = count_tokens(text) as f64;
            let vector: Vec<f64> = (0..EMBEDDING_DIMENSIONS)
                .map(|d| ((words + d as f64) * 0.125).sin())
                .collect();
            json!({ "object": "embedding", "index": index, "embedding": vector })
        })
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": request.model.filter(|m| !m.is_empty()).unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    }))
    .into_response()
}

async fn models() -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{ "id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "maas-simulator" }],
    }))
    .into_response()
}

/// `data: {json}\n\n` per event, then `data: [DONE]\n\n`, each sent as its own body chunk.
fn sse(events: Vec<Value>) -> Response {
    let chunks = events
        .into_iter()
        .map(|event| format!("data: {event}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .map(|text| Ok::<_, std::convert::Infallible>(Bytes::from(text)));
    let mut response = Response::new(Body::from_stream(futures::stream::iter(chunks)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A 400 in OpenAI's error shape.
#[derive(Debug)]
struct BadRequest {
    code: &'static str,
    message: String,
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            self.code,
            &self.message,
        )
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|error| BadRequest {
        code: "invalid_json",
        message: format!("the request body is not a valid request: {error}"),
    })
}

/// An OpenAI-shaped error.
fn error_response(status: StatusCode, error_type: &str, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "message": message, "type": error_type, "code": code } })),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_whitespace_separated_words() {
        assert_eq!(count_tokens("Hello, how are you?"), 4);
        assert_eq!(count_tokens("  spaced\tout\n words "), 3);
        assert_eq!(count_tokens(""), 0);
        assert_eq!(
            content_tokens(Some(
                &json!([{"type": "text", "text": "two words"}, "three more words"])
            )),
            5
        );
    }

    #[test]
    fn generation_is_capped_by_max_tokens() {
        let g = Generation::new(None, 3, Some(4), false, None).unwrap();
        assert_eq!(g.words.len(), 4);
        assert_eq!(g.finish_reason, "length");
        assert_eq!(g.usage()["total_tokens"], 7);
        let g = Generation::new(Some("qwen3".into()), 1, Some(10_000), false, None).unwrap();
        assert_eq!(g.words.len(), REPLY.split_whitespace().count());
        assert_eq!(g.finish_reason, "stop");
        assert_eq!(g.model, "qwen3");
        assert!(Generation::new(None, 1, Some(0), false, None).is_err());
    }

    #[test]
    fn embedding_inputs_are_a_string_or_strings() {
        assert_eq!(embedding_inputs(&json!("a b")), Some(vec!["a b"]));
        assert_eq!(
            embedding_inputs(&json!(["a", "b c"])),
            Some(vec!["a", "b c"])
        );
        assert_eq!(embedding_inputs(&json!([])), None);
        assert_eq!(embedding_inputs(&json!([1, 2])), None);
        assert_eq!(embedding_inputs(&json!(null)), None);
    }

    #[test]
    fn identity_echo_is_ascii_json_with_nulls_for_missing_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-maas-username",
            HeaderValue::from_bytes("jörg".as_bytes()).unwrap(),
        );
        headers.append("x-maas-tier", HeaderValue::from_static("free"));
        headers.append("x-maas-tier", HeaderValue::from_static("premium"));
        let echoed = received_identity(&headers);
        assert!(echoed.is_ascii());
        let parsed: Value = serde_json::from_str(&echoed).unwrap();
        assert_eq!(parsed["x-maas-username"], "jörg");
        assert_eq!(parsed["x-maas-tier"], "free, premium");
        assert_eq!(parsed["x-maas-key-id"], Value::Null);
        assert_eq!(received_credentials(&headers), "none");
    }
}
