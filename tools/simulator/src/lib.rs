//! A stand-in multi-model server speaking OpenAI's and Anthropic's APIs as lax Python backends read requests, and a do-nothing ext_authz server, for the Envoy demo, end-to-end and attack tests, and benchmarks.
//!
//! **Routes.** `POST /v1/chat/completions`, `/v1/completions`, `/v1/responses` (OpenAI) and
//! `/v1/messages` (Anthropic), plain or streamed (SSE), answer a canned [`REPLY`] with exact usage:
//! prompt tokens are the whitespace-separated words of the prompt (every message's content, the
//! system prompt or instructions), completion tokens the words generated (at most the request's
//! `max_tokens`, `max_completion_tokens` or `max_output_tokens`). `POST /v1/embeddings` answers
//! small fixed vectors with the input's words as `prompt_tokens`. Two generating or counting
//! routes outside the well-known API list, as vLLM serves them: `POST /invocations` (SageMaker's
//! route: a chat request, answered as a plain `chat.completion`) and `POST /tokenize`
//! (`{"count", "max_model_len", "tokens"}`, nothing generated). `GET /v1/models` lists the served
//! models, `GET /health` says `ok`.
//!
//! **Paths are read as uvicorn reads them, then laxer** ([`served_model`]): percent-decoded
//! exactly once (`%2F` is `/`, `%76` is `v`, invalid escapes and `+` stay, invalid UTF-8 such as
//! an overlong `%c0%af` becomes U+FFFD, `;` stays in the segment), then `.` and `..` segments
//! resolved and repeated or trailing slashes dropped. A leading `/<model>/` or
//! `/<namespace>/<model>/` before `v1/` (any case: `V1/Chat/...` serves) selects a served model;
//! the namespace is ignored. `/health`, `/invocations` and `/tokenize` only answer bare.
//!
//! **The model.** A body `model` naming a served model wins, even over a path prefix naming
//! another (as one vLLM process serving several models routes on the body); otherwise the
//! path's model; otherwise [`DEFAULT_MODEL`] (or the first served model when that is not served).
//! The model that served is reported in [`HEADER_SERVED_MODEL`] on every routed response (absent
//! on a 404) and in the `model` field of JSON and SSE bodies.
//!
//! **Bodies are read as Python's `json.loads` and pydantic-lax code read them**: a UTF-8 BOM,
//! `NaN`/`Infinity`/`-Infinity`, and duplicate keys (the last wins) are accepted; `stream` and
//! `stream_options.include_usage` follow Python truthiness (`"false"` is true); token limits may
//! be integers, floats (truncated), booleans or numeric strings. A chunked body is read whole.
//!
//! **Test controls.** Request header [`HEADER_CHUNK_DELAY_MS`] spaces SSE events (at most
//! [`MAX_CHUNK_DELAY_MS`]) so a client can read a few and hang up. It reports what reached it so
//! tests can check the gateway: [`HEADER_RECEIVED_IDENTITY`] (a JSON object of the `x-maas-*`
//! identity headers, `null` when absent) and [`HEADER_RECEIVED_CREDENTIALS`] (`none`,
//! `authorization`, `x-api-key`, or both comma-separated). It never logs headers or bodies.

mod anthropic;
mod gzip;
mod lax;
mod noop_ext_authz;
mod openai;
mod path;
mod reply;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;

pub use gzip::HEADER_COMPRESS;
pub use noop_ext_authz::serve_noop_ext_authz;

use path::Route;
use reply::{BadRequest, openai_error};

/// Response header: the identity headers the simulator received, as a JSON object.
pub const HEADER_RECEIVED_IDENTITY: &str = "x-simulator-received-identity";
/// Response header: which credential headers reached the simulator (`none` when the gateway
/// removed them, as it must).
pub const HEADER_RECEIVED_CREDENTIALS: &str = "x-simulator-received-credentials";
/// Response header: the model that served the request ([`served_model`]).
pub const HEADER_SERVED_MODEL: &str = "x-simulator-served-model";
/// Request header: milliseconds to wait between SSE events (capped at [`MAX_CHUNK_DELAY_MS`]).
pub const HEADER_CHUNK_DELAY_MS: &str = "x-simulator-chunk-delay-ms";
/// The longest [`HEADER_CHUNK_DELAY_MS`] honoured; larger values are cut to it.
pub const MAX_CHUNK_DELAY_MS: u64 = 1000;
/// The identity headers echoed in [`HEADER_RECEIVED_IDENTITY`], in this order.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-maas-username",
    "x-maas-group",
    "x-maas-subscription",
    "x-maas-tier",
    "x-maas-key-id",
];
/// The model that serves a request naming no served model.
pub const DEFAULT_MODEL: &str = "simulator";
/// The models served unless configured otherwise.
pub const DEFAULT_SERVED_MODELS: [&str; 2] = [DEFAULT_MODEL, "qwen3"];
/// What the simulator says, word by word, until `max_tokens` cuts it short.
pub const REPLY: &str = "Hello! I am the MaaS simulator. I answer instantly and count tokens \
     the simple way: one token per whitespace-separated word, for the prompt and for this reply.";

/// The largest request body read; a larger one is refused with a 413.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The model this simulator serves a request with this raw path (as received, before any
/// decoding; a `?query` is ignored) and body, or `None` when it answers 404 (no route). The HTTP
/// handlers call this very function, so a test's prediction cannot drift from the server.
///
/// The body's `model` wins when it names a served model (even over a path prefix naming
/// another: one process serving several models routes on the body); else the model of a
/// `/<model>/v1/...` or `/<namespace>/<model>/v1/...` prefix; else [`DEFAULT_MODEL`] if served,
/// else the first of `served`. See the module docs for how the path is decoded and normalized.
pub fn served_model<'a>(path: &str, body: &[u8], served: &'a [&'a str]) -> Option<&'a str> {
    let target = path::target(path, served)?;
    let body_model = lax::parse_json(body).ok().and_then(|document| {
        let named = document.get("model")?.as_str()?;
        served.iter().copied().find(|model| *model == named)
    });
    body_model.or(target.path_model).or_else(|| {
        served
            .iter()
            .copied()
            .find(|model| *model == DEFAULT_MODEL)
            .or_else(|| served.first().copied())
    })
}

/// The model names a simulator serves: at least one, each printable ASCII without spaces (it is
/// echoed in a response header). Parsed from a comma-separated list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModels(Vec<String>);

/// Why a served-model list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServedModelsError {
    #[error("name at least one model to serve (a comma-separated list such as simulator,qwen3)")]
    Empty,
    #[error("model name {0:?} must be printable ASCII without spaces")]
    BadName(String),
}

impl ServedModels {
    /// The names, in the order given.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

impl Default for ServedModels {
    fn default() -> Self {
        Self(DEFAULT_SERVED_MODELS.map(str::to_owned).to_vec())
    }
}

impl FromStr for ServedModels {
    type Err = ServedModelsError;

    /// Comma-separated names; blanks around names are trimmed, repeats dropped.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut names: Vec<String> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ServedModelsError::BadName(name.to_owned()));
            }
            if !names.iter().any(|known| known == name) {
                names.push(name.to_owned());
            }
        }
        if names.is_empty() {
            return Err(ServedModelsError::Empty);
        }
        Ok(Self(names))
    }
}

/// How a simulator behaves; [`Default`] serves [`DEFAULT_SERVED_MODELS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimulatorConfig {
    /// The models it serves, chosen per request by [`served_model`].
    pub models: ServedModels,
}

/// Serves the simulator with the default configuration on `listener` until `shutdown` resolves,
/// then finishes in-flight requests and returns.
pub async fn serve_simulator(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_simulator_with(listener, SimulatorConfig::default(), shutdown).await
}

/// Serves the simulator configured by `config` on `listener` until `shutdown` resolves.
pub async fn serve_simulator_with(
    listener: TcpListener,
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The simulator's routes, for embedding in another server. Routing is its own ([`served_model`]),
/// not axum's, so paths are read the lax way.
pub fn router(config: SimulatorConfig) -> Router {
    Router::new()
        .fallback(answer)
        .with_state(Arc::new(config))
        .layer(axum::middleware::from_fn(compress_if_asked))
        .layer(axum::middleware::from_fn(report_received))
}

/// With `x-simulator-compress: gzip`, answers with a gzip body and `content-encoding: gzip`,
/// whatever the client accepts: a misbehaving backend, for the token meter's tests.
async fn compress_if_asked(request: Request, next: Next) -> Response {
    let asked = request
        .headers()
        .get(HEADER_COMPRESS)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let response = next.run(request).await;
    if !asked {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "response too large to compress",
        )
            .into_response();
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_ENCODING,
        HeaderValue::from_static("gzip"),
    );
    Response::from_parts(parts, axum::body::Body::from(gzip::gzip_stored(&bytes)))
}

/// One routed request, as the API handlers see it.
#[derive(Debug)]
struct Call<'a> {
    model: &'a str,
    body: &'a [u8],
    /// Wait between SSE events.
    delay: Duration,
}

/// Routes a request, answers it, and names the model that served in [`HEADER_SERVED_MODEL`].
async fn answer(State(config): State<Arc<SimulatorConfig>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let served = config.models.names();
    let path = parts.uri.path();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            let mut response = openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "payload_too_large",
                &format!("the simulator reads request bodies up to {MAX_BODY_BYTES} bytes"),
            );
            label_served_model(&mut response, served_model(path, b"", &served));
            return response;
        }
    };
    let (Some(target), Some(model)) = (
        path::target(path, &served),
        served_model(path, &body, &served),
    ) else {
        return openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            "the simulator serves /v1/chat/completions, /v1/completions, /v1/embeddings, \
             /v1/responses, /v1/messages, /v1/models (each also after /<model>/ or \
             /<namespace>/<model>/ naming a served model), /invocations, /tokenize and /health",
        );
    };
    let mut response = respond(
        target.route,
        &parts.method,
        &parts.headers,
        &served,
        model,
        &body,
    );
    label_served_model(&mut response, Some(model));
    response
}

fn label_served_model(response: &mut Response, model: Option<&str>) {
    if let Some(value) = model.and_then(|m| HeaderValue::from_str(m).ok()) {
        response.headers_mut().insert(HEADER_SERVED_MODEL, value);
    }
}

/// Answers a routed request: the method must fit the route, then the route's API answers.
fn respond(
    route: Route,
    method: &Method,
    headers: &HeaderMap,
    served: &[&str],
    model: &str,
    body: &[u8],
) -> Response {
    let (method_fits, allowed) = if route.is_read() {
        (method == Method::GET || method == Method::HEAD, "GET")
    } else {
        (method == Method::POST, "POST")
    };
    if !method_fits {
        return openai::method_not_allowed(allowed);
    }
    let delay = match chunk_delay(headers) {
        Ok(delay) => delay,
        Err(error) => return error.openai(),
    };
    let call = Call { model, body, delay };
    match route {
        Route::ChatCompletions => openai::chat_completions(&call),
        Route::Completions => openai::completions(&call),
        Route::Embeddings => openai::embeddings(&call),
        Route::Responses => openai::responses(&call),
        Route::Invocations => openai::invocations(&call),
        Route::Tokenize => openai::tokenize(&call),
        Route::Models => openai::models(served),
        Route::Messages => anthropic::messages_endpoint(&call),
        Route::Health => "ok".into_response(),
    }
}

/// The [`HEADER_CHUNK_DELAY_MS`] asked for: none by default, at most [`MAX_CHUNK_DELAY_MS`].
fn chunk_delay(headers: &HeaderMap) -> Result<Duration, BadRequest> {
    let Some(value) = headers.get(HEADER_CHUNK_DELAY_MS) else {
        return Ok(Duration::ZERO);
    };
    let millis = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            BadRequest::invalid_value(format!(
                "{HEADER_CHUNK_DELAY_MS} must be a whole number of milliseconds \
                 (0 to {MAX_CHUNK_DELAY_MS})"
            ))
        })?;
    Ok(Duration::from_millis(millis.min(MAX_CHUNK_DELAY_MS)))
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

/// Dimensions of the simulator's embedding vectors.
pub const EMBEDDING_DIMENSIONS: usize = 8;

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SERVED: &[&str] = &["simulator", "qwen3"];

    #[test]
    fn tokens_are_whitespace_separated_words() {
        assert_eq!(count_tokens("Hello, how are you?"), 4);
        assert_eq!(count_tokens("  spaced\tout\n words "), 3);
        assert_eq!(count_tokens(""), 0);
    }

    #[test]
    fn the_body_model_wins_then_the_path_model_then_the_default() {
        let chat = |model: Value| json!({ "model": model, "messages": [] }).to_string();
        let cases = [
            ("/v1/chat/completions", chat(json!("qwen3")), Some("qwen3")),
            (
                "/v1/chat/completions",
                chat(json!("gpt-4")),
                Some("simulator"),
            ),
            ("/v1/chat/completions", chat(json!(null)), Some("simulator")),
            (
                "/v1/chat/completions",
                chat(json!(["qwen3"])),
                Some("simulator"),
            ),
            ("/v1/chat/completions", String::new(), Some("simulator")),
            (
                "/v1/chat/completions",
                "not json".to_owned(),
                Some("simulator"),
            ),
            (
                "/qwen3/v1/chat/completions",
                chat(json!("simulator")),
                Some("simulator"),
            ),
            (
                "/llm/simulator/v1/chat/completions",
                chat(json!("qwen3")),
                Some("qwen3"),
            ),
            (
                "/qwen3/v1/chat/completions",
                chat(json!("gpt-4")),
                Some("qwen3"),
            ),
            (
                "/qwen3/v1/chat/completions",
                chat(json!("QWEN3")),
                Some("qwen3"),
            ),
            ("/qwen3/v1/chat/completions", String::new(), Some("qwen3")),
            ("/v1/models", String::new(), Some("simulator")),
            ("/health", String::new(), Some("simulator")),
            ("/tokenize", chat(json!("qwen3")), Some("qwen3")),
            ("/nowhere", chat(json!("qwen3")), None),
            ("/gpt-4/v1/chat/completions", chat(json!("qwen3")), None),
        ];
        for (path, body, expected) in cases {
            assert_eq!(
                served_model(path, body.as_bytes(), SERVED),
                expected,
                "{path} with {body}"
            );
        }
    }

    #[test]
    fn the_body_model_is_read_the_lax_way() {
        let path = "/v1/chat/completions";
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(br#"{"model": "qwen3"}"#);
        assert_eq!(served_model(path, &bom, SERVED), Some("qwen3"));
        assert_eq!(
            served_model(path, br#"{"model": "simulator", "model": "qwen3"}"#, SERVED),
            Some("qwen3")
        );
        assert_eq!(
            served_model(path, br#"{"temperature": NaN, "model": "qwen3"}"#, SERVED),
            Some("qwen3")
        );
        assert_eq!(
            served_model(path, br#"{"model": "qwen\u0033"}"#, SERVED),
            Some("qwen3")
        );
    }

    #[test]
    fn without_the_default_model_the_first_served_model_serves() {
        assert_eq!(
            served_model("/v1/chat/completions", b"{}", &["qwen3", "llama"]),
            Some("qwen3")
        );
        assert_eq!(served_model("/v1/chat/completions", b"{}", &[]), None);
    }

    #[test]
    fn served_models_are_a_comma_separated_list_of_header_safe_names() {
        assert_eq!(
            " qwen3, simulator ,qwen3,"
                .parse::<ServedModels>()
                .map(|m| m.names().join("|")),
            Ok("qwen3|simulator".to_owned())
        );
        assert_eq!(ServedModels::default().names(), vec!["simulator", "qwen3"]);
        assert_eq!(
            " , ".parse::<ServedModels>().unwrap_err().to_string(),
            "name at least one model to serve (a comma-separated list such as simulator,qwen3)"
        );
        assert_eq!(
            "qwen3,my model"
                .parse::<ServedModels>()
                .unwrap_err()
                .to_string(),
            r#"model name "my model" must be printable ASCII without spaces"#
        );
    }

    #[test]
    fn the_chunk_delay_is_whole_milliseconds_capped_at_a_second() {
        let delay = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_CHUNK_DELAY_MS, HeaderValue::from_static(value));
            chunk_delay(&headers)
        };
        assert_eq!(chunk_delay(&HeaderMap::new()), Ok(Duration::ZERO));
        assert_eq!(delay("50"), Ok(Duration::from_millis(50)));
        assert_eq!(delay("999999"), Ok(Duration::from_secs(1)));
        assert_eq!(
            delay("fast"),
            Err(BadRequest::invalid_value(
                "x-simulator-chunk-delay-ms must be a whole number of milliseconds (0 to 1000)"
            ))
        );
        assert!(delay("-5").is_err());
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
