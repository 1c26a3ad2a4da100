//! Anthropic's `POST /v1/messages`, plain and streamed, with Anthropic's usage and error shapes.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Call;
use super::lax::truthy;
use super::reply::{
    Generation, SseEvent, StreamEnd, content_tokens, messages, messages_tokens, new_id,
    parse_object, sse, token_limit,
};

/// `POST /v1/messages`: a `message`, or its event stream: `message_start` (input tokens and
/// Anthropic's initial output count of 1), `content_block_start`, `ping`, one
/// `content_block_delta` per word, `content_block_stop`, `message_delta` (stop reason and the
/// final `output_tokens`), `message_stop`. Prompt tokens are the words of `system` and of every
/// message's content.
pub(super) fn messages_endpoint(call: &Call<'_>) -> Response {
    let request = match parse_object(call.body) {
        Ok(request) => request,
        Err(error) => return error.anthropic(),
    };
    let prompt_tokens = match messages(&request) {
        Ok(messages) => messages_tokens(messages) + content_tokens(request.get("system")),
        Err(error) => return error.anthropic(),
    };
    let limit = match token_limit(&request, &["max_tokens"]) {
        Ok(limit) => limit,
        Err(error) => return error.anthropic(),
    };
    let generation = Generation::new(call.model, prompt_tokens, limit);
    let stop_reason = if generation.truncated {
        "max_tokens"
    } else {
        "end_turn"
    };
    let id = new_id("msg_");
    let message = |content: Value, stop_reason: Value, output_tokens: u64| {
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": generation.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": { "input_tokens": generation.prompt_tokens, "output_tokens": output_tokens },
        })
    };
    if !truthy(request.get("stream")) {
        return axum::Json(message(
            json!([{ "type": "text", "text": generation.text() }]),
            Value::from(stop_reason),
            generation.completion_tokens(),
        ))
        .into_response();
    }
    let mut events = vec![
        SseEvent::typed(
            "message_start",
            json!({ "message": message(json!([]), Value::Null, 1) }),
        ),
        SseEvent::typed(
            "content_block_start",
            json!({ "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
        SseEvent::typed("ping", json!({})),
    ];
    for piece in generation.pieces() {
        events.push(SseEvent::typed(
            "content_block_delta",
            json!({ "index": 0, "delta": { "type": "text_delta", "text": piece } }),
        ));
    }
    events.extend([
        SseEvent::typed("content_block_stop", json!({ "index": 0 })),
        SseEvent::typed(
            "message_delta",
            json!({
                "delta": { "stop_reason": stop_reason, "stop_sequence": null },
                "usage": { "output_tokens": generation.completion_tokens() },
            }),
        ),
        SseEvent::typed("message_stop", json!({})),
    ]);
    sse(events, StreamEnd::LastEvent, call.delay)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::test_support::run;
    use super::*;

    fn request(extra: Value) -> Value {
        let mut body = json!({
            "model": "qwen3",
            "system": [{ "type": "text", "text": "be brief" }],
            "messages": [{ "role": "user", "content": "one two three" }],
        });
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    }

    #[tokio::test]
    async fn messages_answer_json_with_input_and_output_tokens() {
        let answer = run(
            messages_endpoint,
            "qwen3",
            &request(json!({ "max_tokens": 3 })),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        let body = answer.json();
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "qwen3");
        assert_eq!(
            body["content"],
            json!([{ "type": "text", "text": "Hello! I am" }])
        );
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(
            body["usage"],
            json!({ "input_tokens": 5, "output_tokens": 3 })
        );
    }

    #[tokio::test]
    async fn messages_stream_start_deltas_and_final_output_tokens() {
        let answer = run(
            messages_endpoint,
            "simulator",
            &request(json!({ "stream": "1", "max_tokens": 2.5 })),
        )
        .await;
        let events = answer.events();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let documents = answer.event_documents();
        for (document, name) in documents.iter().zip(&names) {
            assert_eq!(document["type"], *name);
        }
        assert_eq!(documents[0]["message"]["model"], "simulator");
        assert_eq!(
            documents[0]["message"]["usage"],
            json!({ "input_tokens": 5, "output_tokens": 1 })
        );
        assert_eq!(
            documents[3]["delta"],
            json!({ "type": "text_delta", "text": "Hello!" })
        );
        assert_eq!(documents[4]["delta"]["text"], " I");
        assert_eq!(documents[6]["delta"]["stop_reason"], "max_tokens");
        assert_eq!(documents[6]["usage"], json!({ "output_tokens": 2 }));
    }

    #[tokio::test]
    async fn messages_errors_are_in_anthropics_shape() {
        let answer = run(
            messages_endpoint,
            "qwen3",
            &request(json!({ "max_tokens": 0 })),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer.json(),
            json!({
                "type": "error",
                "error": { "type": "invalid_request_error", "message": "max_tokens must be at least 1" },
            })
        );
    }
}
