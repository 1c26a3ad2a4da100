//! What the simulator generates and how it frames it: the canned reply cut at a token limit, request fields every API shares, errors and server-sent events.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::lax::{lax_integer, parse_json};
use super::{REPLY, count_tokens};

/// A request the simulator refuses with a 400; each API renders it in its own error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadRequest {
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl BadRequest {
    pub(super) fn invalid_json(reason: impl std::fmt::Display) -> Self {
        Self {
            code: "invalid_json",
            message: format!("the request body is not a valid request: {reason}"),
        }
    }

    pub(super) fn invalid_value(message: impl Into<String>) -> Self {
        Self {
            code: "invalid_value",
            message: message.into(),
        }
    }

    /// OpenAI's error shape.
    pub(super) fn openai(&self) -> Response {
        openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            self.code,
            &self.message,
        )
    }

    /// Anthropic's error shape (`{"type": "error", "error": {"type", "message"}}`).
    pub(super) fn anthropic(&self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "type": "error",
                "error": { "type": "invalid_request_error", "message": self.message },
            })),
        )
            .into_response()
    }
}

/// An OpenAI-shaped error.
pub(super) fn openai_error(
    status: StatusCode,
    error_type: &str,
    code: &str,
    message: &str,
) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "message": message, "type": error_type, "code": code } })),
    )
        .into_response()
}

/// The body as a JSON object, read leniently ([`parse_json`]).
pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    match parse_json(body).map_err(BadRequest::invalid_json)? {
        Value::Object(fields) => Ok(fields),
        _ => Err(BadRequest::invalid_json("expected a JSON object")),
    }
}

/// The request's messages: an array of objects.
pub(super) fn messages(request: &Map<String, Value>) -> Result<&[Value], BadRequest> {
    match request.get("messages") {
        Some(Value::Array(messages)) if messages.iter().all(Value::is_object) => Ok(messages),
        _ => Err(BadRequest::invalid_json(
            "messages must be an array of message objects",
        )),
    }
}

/// Words of a `content`: a string, or an array of parts (strings, or objects whose `text`
/// counts).
pub(super) fn content_tokens(content: Option<&Value>) -> u64 {
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

/// Words of every message's `content`.
pub(super) fn messages_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|m| content_tokens(m.get("content")))
        .sum()
}

/// The token limit: the first of `names` the request sets (not `null`), read leniently; it must
/// be at least 1.
pub(super) fn token_limit(
    request: &Map<String, Value>,
    names: &[&'static str],
) -> Result<Option<usize>, BadRequest> {
    for name in names {
        let value = request.get(*name);
        let limit = lax_integer(value)
            .map_err(|reason| BadRequest::invalid_value(format!("{name} {reason}")))?;
        match limit {
            None => continue,
            Some(limit) if limit < 1 => {
                return Err(BadRequest::invalid_value(format!(
                    "{name} must be at least 1"
                )));
            }
            Some(limit) => return Ok(Some(usize::try_from(limit).unwrap_or(usize::MAX))),
        }
    }
    Ok(None)
}

/// The reply's words for one request, cut at its token limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Generation<'m> {
    pub(super) model: &'m str,
    pub(super) prompt_tokens: u64,
    pub(super) words: Vec<&'static str>,
    /// The limit cut the reply short.
    pub(super) truncated: bool,
}

impl<'m> Generation<'m> {
    pub(super) fn new(model: &'m str, prompt_tokens: u64, limit: Option<usize>) -> Self {
        let all: Vec<&'static str> = REPLY.split_whitespace().collect();
        let limit = limit.unwrap_or(usize::MAX);
        let truncated = all.len() > limit;
        let words = if truncated {
            all[..limit].to_vec()
        } else {
            all
        };
        Self {
            model,
            prompt_tokens,
            words,
            truncated,
        }
    }

    pub(super) fn completion_tokens(&self) -> u64 {
        self.words.len() as u64
    }

    pub(super) fn text(&self) -> String {
        self.words.join(" ")
    }

    /// The words as streamed: each after the first carries its leading space, so the pieces
    /// join to [`Self::text`].
    pub(super) fn pieces(&self) -> impl Iterator<Item = String> + '_ {
        self.words.iter().enumerate().map(|(i, word)| {
            if i == 0 {
                (*word).to_owned()
            } else {
                format!(" {word}")
            }
        })
    }
}

/// One server-sent event: an optional `event:` name and its JSON data.
#[derive(Debug, Clone)]
pub(super) struct SseEvent {
    pub(super) name: Option<&'static str>,
    pub(super) data: Value,
}

impl SseEvent {
    /// A data-only event (OpenAI chat and completions).
    pub(super) fn data(data: Value) -> Self {
        Self { name: None, data }
    }

    /// A named event whose name is also its data's `type` (Anthropic, Responses).
    pub(super) fn typed(name: &'static str, mut data: Value) -> Self {
        data["type"] = Value::from(name);
        Self {
            name: Some(name),
            data,
        }
    }
}

/// How a stream ends after its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// OpenAI's `data: [DONE]`.
    DoneMarker,
    /// Nothing more: the last event says it is the last (Anthropic, Responses).
    LastEvent,
}

/// The events as `text/event-stream`, each its own body chunk, with `delay` before every chunk
/// after the first so a client can read a few and hang up mid-stream.
pub(super) fn sse(events: Vec<SseEvent>, end: StreamEnd, delay: Duration) -> Response {
    let mut chunks: Vec<String> = events
        .into_iter()
        .map(|event| match event.name {
            Some(name) => format!("event: {name}\ndata: {}\n\n", event.data),
            None => format!("data: {}\n\n", event.data),
        })
        .collect();
    if end == StreamEnd::DoneMarker {
        chunks.push("data: [DONE]\n\n".to_owned());
    }
    let stream =
        futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, text)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::convert::Infallible>(Bytes::from(text))
        });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A fresh id with the API's prefix (`chatcmpl-`, `msg_`, …).
pub(super) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(fields) => fields,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn content_counts_strings_and_text_parts() {
        assert_eq!(
            content_tokens(Some(
                &json!([{"type": "text", "text": "two words"}, "three more words", 7])
            )),
            5
        );
        assert_eq!(content_tokens(Some(&json!("one two"))), 2);
        assert_eq!(content_tokens(Some(&json!(null))), 0);
        assert_eq!(content_tokens(None), 0);
    }

    #[test]
    fn generation_is_capped_by_the_limit() {
        let capped = Generation::new("simulator", 3, Some(4));
        assert_eq!(capped.completion_tokens(), 4);
        assert!(capped.truncated);
        assert_eq!(capped.pieces().collect::<String>(), capped.text());
        let whole = Generation::new("qwen3", 1, Some(10_000));
        assert_eq!(
            whole.completion_tokens(),
            REPLY.split_whitespace().count() as u64
        );
        assert!(!whole.truncated);
        assert_eq!(whole.model, "qwen3");
    }

    #[test]
    fn the_first_token_limit_set_wins_and_must_be_at_least_one() {
        let names = &["max_completion_tokens", "max_tokens"];
        let limit = |body: Value| token_limit(&object(body), names);
        assert_eq!(limit(json!({})), Ok(None));
        assert_eq!(limit(json!({"max_tokens": "3"})), Ok(Some(3)));
        assert_eq!(
            limit(json!({"max_completion_tokens": 2.9, "max_tokens": 9})),
            Ok(Some(2))
        );
        assert_eq!(
            limit(json!({"max_completion_tokens": null, "max_tokens": 9})),
            Ok(Some(9))
        );
        assert_eq!(
            limit(json!({"max_tokens": 0})),
            Err(BadRequest::invalid_value("max_tokens must be at least 1"))
        );
        assert_eq!(
            limit(json!({"max_tokens": -4})),
            Err(BadRequest::invalid_value("max_tokens must be at least 1"))
        );
        assert_eq!(
            limit(json!({"max_completion_tokens": "NaN"})),
            Err(BadRequest::invalid_value(
                "max_completion_tokens must be a finite number"
            ))
        );
        assert_eq!(
            limit(json!({"max_tokens": {"n": 1}})),
            Err(BadRequest::invalid_value("max_tokens must be a number"))
        );
    }

    #[test]
    fn messages_must_be_an_array_of_objects() {
        assert!(messages(&object(json!({"messages": [{"content": "a"}]}))).is_ok());
        for body in [
            json!({}),
            json!({"messages": "not a list"}),
            json!({"messages": ["text"]}),
        ] {
            assert_eq!(
                messages(&object(body)),
                Err(BadRequest::invalid_json(
                    "messages must be an array of message objects"
                ))
            );
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_with_a_reason() {
        assert_eq!(
            parse_object(b"[1, 2]"),
            Err(BadRequest::invalid_json("expected a JSON object"))
        );
        let error = parse_object(b"{").unwrap_err();
        assert_eq!(error.code, "invalid_json");
        assert!(
            error
                .message
                .starts_with("the request body is not a valid request: EOF"),
            "{}",
            error.message
        );
    }
}
