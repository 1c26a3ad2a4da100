//! OpenAI-shaped endpoints: chat and legacy completions, embeddings, models, Responses, and vLLM's `/invocations` and `/tokenize`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::Call;
use super::lax::truthy;
use super::reply::{
    BadRequest, Generation, SseEvent, StreamEnd, content_tokens, messages, messages_tokens, new_id,
    openai_error, parse_object, sse, token_limit, unix_now,
};
use super::{EMBEDDING_DIMENSIONS, count_tokens};

/// A chat request as every OpenAI-compatible chat endpoint reads it.
struct ChatRequest {
    prompt_tokens: u64,
    limit: Option<usize>,
    stream: bool,
    include_usage: bool,
}

impl ChatRequest {
    fn read(body: &[u8]) -> Result<Self, BadRequest> {
        let request = parse_object(body)?;
        Ok(Self {
            prompt_tokens: messages_tokens(messages(&request)?),
            limit: token_limit(&request, &["max_completion_tokens", "max_tokens"])?,
            stream: truthy(request.get("stream")),
            include_usage: include_usage(&request),
        })
    }
}

/// `stream_options.include_usage`, by Python truthiness.
fn include_usage(request: &Map<String, Value>) -> bool {
    truthy(
        request
            .get("stream_options")
            .and_then(|options| options.get("include_usage")),
    )
}

fn openai_usage(generation: &Generation<'_>) -> Value {
    let completion = generation.completion_tokens();
    json!({
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": generation.prompt_tokens + completion,
    })
}

fn finish_reason(generation: &Generation<'_>) -> &'static str {
    if generation.truncated {
        "length"
    } else {
        "stop"
    }
}

/// The whole `chat.completion` document.
fn chat_document(generation: &Generation<'_>) -> Value {
    json!({
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": generation.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": generation.text() },
            "logprobs": null,
            "finish_reason": finish_reason(generation),
        }],
        "usage": openai_usage(generation),
    })
}

/// `POST /v1/chat/completions`: JSON, or SSE chunks (usage in a last choice-less chunk when
/// `stream_options.include_usage` is truthy).
pub(super) fn chat_completions(call: &Call<'_>) -> Response {
    let request = match ChatRequest::read(call.body) {
        Ok(request) => request,
        Err(error) => return error.openai(),
    };
    let generation = Generation::new(call.model, request.prompt_tokens, request.limit);
    if !request.stream {
        return axum::Json(chat_document(&generation)).into_response();
    }
    let id = new_id("chatcmpl-");
    let created = unix_now();
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": generation.model,
            "choices": choices,
        });
        if request.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::data(chunk)
    };
    let mut events = vec![chunk(
        json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]),
        None,
    )];
    for piece in generation.pieces() {
        events.push(chunk(
            json!([{ "index": 0, "delta": { "content": piece }, "finish_reason": null }]),
            None,
        ));
    }
    events.push(chunk(
        json!([{ "index": 0, "delta": {}, "finish_reason": finish_reason(&generation) }]),
        None,
    ));
    if request.include_usage {
        events.push(chunk(json!([]), Some(openai_usage(&generation))));
    }
    sse(events, StreamEnd::DoneMarker, call.delay)
}

/// `POST /invocations` (vLLM's SageMaker route): a chat request answered as a plain
/// `chat.completion`, never streamed.
pub(super) fn invocations(call: &Call<'_>) -> Response {
    match ChatRequest::read(call.body) {
        Ok(request) => axum::Json(chat_document(&Generation::new(
            call.model,
            request.prompt_tokens,
            request.limit,
        )))
        .into_response(),
        Err(error) => error.openai(),
    }
}

/// `POST /v1/completions`: JSON, or SSE chunks, the last word's chunk carrying the finish reason.
pub(super) fn completions(call: &Call<'_>) -> Response {
    let request = match parse_object(call.body) {
        Ok(request) => request,
        Err(error) => return error.openai(),
    };
    let prompt_tokens = match request.get("prompt") {
        Some(Value::String(text)) => count_tokens(text),
        Some(Value::Array(prompts)) => prompts
            .iter()
            .map(|p| p.as_str().map_or(0, count_tokens))
            .sum(),
        None | Some(Value::Null) => 0,
        Some(_) => {
            return BadRequest::invalid_value("prompt must be a string or an array of strings")
                .openai();
        }
    };
    let limit = match token_limit(&request, &["max_tokens"]) {
        Ok(limit) => limit,
        Err(error) => return error.openai(),
    };
    let generation = Generation::new(call.model, prompt_tokens, limit);
    let include_usage = include_usage(&request);
    let id = new_id("cmpl-");
    let created = unix_now();
    if !truthy(request.get("stream")) {
        return axum::Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": generation.model,
            "choices": [{
                "index": 0,
                "text": generation.text(),
                "logprobs": null,
                "finish_reason": finish_reason(&generation),
            }],
            "usage": openai_usage(&generation),
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
        if include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::data(chunk)
    };
    let last = generation.words.len().saturating_sub(1);
    let mut events: Vec<SseEvent> = generation
        .pieces()
        .enumerate()
        .map(|(i, text)| {
            let finish = if i == last {
                Value::from(finish_reason(&generation))
            } else {
                Value::Null
            };
            chunk(
                json!([{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }]),
                None,
            )
        })
        .collect();
    if include_usage {
        events.push(chunk(json!([]), Some(openai_usage(&generation))));
    }
    sse(events, StreamEnd::DoneMarker, call.delay)
}

/// The inputs of an embeddings request: a string or a non-empty array of strings.
fn embedding_inputs(input: Option<&Value>) -> Option<Vec<&str>> {
    match input? {
        Value::String(text) => Some(vec![text.as_str()]),
        Value::Array(items) if !items.is_empty() => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// `POST /v1/embeddings`: small fixed vectors, the input's words as `prompt_tokens`.
pub(super) fn embeddings(call: &Call<'_>) -> Response {
    let request = match parse_object(call.body) {
        Ok(request) => request,
        Err(error) => return error.openai(),
    };
    let Some(inputs) = embedding_inputs(request.get("input")) else {
        return BadRequest::invalid_value("input must be a non-empty string or array of strings")
            .openai();
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
        "model": call.model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    }))
    .into_response()
}

/// `GET /v1/models`: every served model.
pub(super) fn models(served: &[&str]) -> Response {
    let data: Vec<Value> = served
        .iter()
        .map(
            |id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "maas-simulator" }),
        )
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// vLLM's context length, reported by `/tokenize`.
const MAX_MODEL_LEN: u64 = 32_768;

/// `POST /tokenize` (vLLM): the prompt's (or the messages') tokens, nothing generated.
pub(super) fn tokenize(call: &Call<'_>) -> Response {
    let request = match parse_object(call.body) {
        Ok(request) => request,
        Err(error) => return error.openai(),
    };
    let words: Vec<&str> = match (request.get("prompt"), request.get("messages")) {
        (Some(Value::String(prompt)), _) => prompt.split_whitespace().collect(),
        (None | Some(Value::Null), Some(_)) => match messages(&request) {
            Ok(messages) => messages
                .iter()
                .flat_map(|m| content_words(m.get("content")))
                .collect(),
            Err(error) => return error.openai(),
        },
        _ => {
            return BadRequest::invalid_value("tokenize needs a prompt string or messages")
                .openai();
        }
    };
    let tokens: Vec<u64> = words.iter().map(|word| token_id(word)).collect();
    axum::Json(json!({
        "count": tokens.len(),
        "max_model_len": MAX_MODEL_LEN,
        "tokens": tokens,
    }))
    .into_response()
}

/// The words of a `content`, counted as [`content_tokens`] counts them.
fn content_words(content: Option<&Value>) -> Vec<&str> {
    match content {
        Some(Value::String(text)) => text.split_whitespace().collect(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part {
                Value::String(text) => Some(text.as_str()),
                Value::Object(fields) => fields.get("text").and_then(Value::as_str),
                _ => None,
            })
            .flat_map(str::split_whitespace)
            .collect(),
        _ => Vec::new(),
    }
}

/// A stable id per word (FNV-1a folded into a 100k vocabulary), so equal words tokenize alike.
fn token_id(word: &str) -> u64 {
    let hash = word.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % 100_000
}

/// The words of a Responses `input`: a string, or items that are strings or carry `content`
/// (a string or parts) or `text`.
fn responses_input_tokens(input: Option<&Value>) -> Result<u64, BadRequest> {
    match input {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(text)) => Ok(count_tokens(text)),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .map(|item| match item {
                Value::String(text) => count_tokens(text),
                Value::Object(fields) if fields.contains_key("content") => {
                    content_tokens(fields.get("content"))
                }
                Value::Object(fields) => fields
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, count_tokens),
                _ => 0,
            })
            .sum()),
        Some(_) => Err(BadRequest::invalid_value(
            "input must be a string or an array of input items",
        )),
    }
}

/// `POST /v1/responses`: a `response` object, or its event stream (`response.created` …
/// `response.output_text.delta` … `response.completed`, or `response.incomplete` when
/// `max_output_tokens` cut it short, with the usage).
pub(super) fn responses(call: &Call<'_>) -> Response {
    let request = match parse_object(call.body) {
        Ok(request) => request,
        Err(error) => return error.openai(),
    };
    let prompt_tokens = match responses_input_tokens(request.get("input")) {
        Ok(tokens) => {
            tokens
                + request
                    .get("instructions")
                    .and_then(Value::as_str)
                    .map_or(0, count_tokens)
        }
        Err(error) => return error.openai(),
    };
    let limit = match token_limit(&request, &["max_output_tokens"]) {
        Ok(limit) => limit,
        Err(error) => return error.openai(),
    };
    let generation = Generation::new(call.model, prompt_tokens, limit);
    let response_id = new_id("resp_");
    let item_id = new_id("msg_");
    let created_at = unix_now();
    let response = |status: &str, output: Value, usage: Value| {
        let incomplete = if status == "incomplete" {
            json!({ "reason": "max_output_tokens" })
        } else {
            Value::Null
        };
        json!({
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "model": generation.model,
            "output": output,
            "incomplete_details": incomplete,
            "max_output_tokens": limit,
            "usage": usage,
        })
    };
    let text_part = json!({ "type": "output_text", "text": generation.text(), "annotations": [] });
    let message = |status: &str, content: Value| {
        json!({
            "type": "message",
            "id": item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let usage = json!({
        "input_tokens": generation.prompt_tokens,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": generation.completion_tokens(),
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": generation.prompt_tokens + generation.completion_tokens(),
    });
    let (final_status, final_event) = if generation.truncated {
        ("incomplete", "response.incomplete")
    } else {
        ("completed", "response.completed")
    };
    let done_message = message(final_status, json!([text_part]));
    if !truthy(request.get("stream")) {
        return axum::Json(response(final_status, json!([done_message]), usage)).into_response();
    }
    let mut events = vec![
        SseEvent::typed(
            "response.created",
            json!({ "response": response("in_progress", json!([]), Value::Null) }),
        ),
        SseEvent::typed(
            "response.in_progress",
            json!({ "response": response("in_progress", json!([]), Value::Null) }),
        ),
        SseEvent::typed(
            "response.output_item.added",
            json!({ "output_index": 0, "item": message("in_progress", json!([])) }),
        ),
        SseEvent::typed(
            "response.content_part.added",
            json!({
                "item_id": item_id, "output_index": 0, "content_index": 0,
                "part": { "type": "output_text", "text": "", "annotations": [] },
            }),
        ),
    ];
    for piece in generation.pieces() {
        events.push(SseEvent::typed(
            "response.output_text.delta",
            json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece }),
        ));
    }
    events.extend([
        SseEvent::typed(
            "response.output_text.done",
            json!({
                "item_id": item_id, "output_index": 0, "content_index": 0,
                "text": generation.text(),
            }),
        ),
        SseEvent::typed(
            "response.content_part.done",
            json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "part": text_part }),
        ),
        SseEvent::typed(
            "response.output_item.done",
            json!({ "output_index": 0, "item": done_message }),
        ),
        SseEvent::typed(
            final_event,
            json!({ "response": response(final_status, json!([done_message]), usage) }),
        ),
    ]);
    for (sequence_number, event) in events.iter_mut().enumerate() {
        event.data["sequence_number"] = Value::from(sequence_number);
    }
    sse(events, StreamEnd::LastEvent, call.delay)
}

/// `405` for a known route asked with the wrong method.
pub(super) fn method_not_allowed(allowed: &str) -> Response {
    let mut response = openai_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        &format!("this route only answers {allowed}"),
    );
    if let Ok(value) = allowed.parse() {
        response
            .headers_mut()
            .insert(axum::http::header::ALLOW, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::super::test_support::run;
    use super::*;

    fn chat(extra: Value) -> Value {
        let mut body = json!({
            "model": "ignored-here",
            "messages": [
                { "role": "system", "content": "be brief" },
                { "role": "user", "content": [{ "type": "text", "text": "one two three" }] },
            ],
        });
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    }

    #[tokio::test]
    async fn chat_answers_json_with_exact_usage_and_the_served_model() {
        let answer = run(
            chat_completions,
            "qwen3",
            &chat(json!({ "max_tokens": "3.7" })),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        let body = answer.json();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "qwen3");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello! I am");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(
            body["usage"],
            json!({ "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8 })
        );
    }

    #[tokio::test]
    async fn chat_streams_when_stream_is_truthy_even_the_string_false() {
        let body = chat(json!({
            "stream": "false",
            "stream_options": { "include_usage": 1 },
            "max_completion_tokens": 2,
        }));
        let answer = run(chat_completions, "simulator", &body).await;
        let events = answer.events();
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let documents = answer.event_documents();
        // role, two words, finish, usage
        assert_eq!(documents.len(), 5);
        assert!(documents.iter().all(|d| d["model"] == "simulator"));
        assert_eq!(documents[1]["choices"][0]["delta"]["content"], "Hello!");
        assert_eq!(documents[2]["choices"][0]["delta"]["content"], " I");
        assert_eq!(documents[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(documents[3]["usage"], Value::Null);
        assert_eq!(documents[4]["choices"], json!([]));
        assert_eq!(
            documents[4]["usage"],
            json!({ "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7 })
        );
    }

    #[tokio::test]
    async fn chat_does_not_stream_for_falsy_values() {
        for stream in [
            json!(false),
            json!(0),
            json!(""),
            json!(null),
            json!([]),
            json!({}),
        ] {
            let answer = run(
                chat_completions,
                "simulator",
                &chat(json!({ "stream": stream })),
            )
            .await;
            assert_eq!(
                answer.json()["object"],
                "chat.completion",
                "stream {stream}"
            );
        }
    }

    #[tokio::test]
    async fn chat_refuses_messages_that_are_not_a_list() {
        let answer = run(
            chat_completions,
            "simulator",
            &json!({ "model": "simulator", "messages": "not a list" }),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer.json()["error"],
            json!({
                "message": "the request body is not a valid request: messages must be an array of message objects",
                "type": "invalid_request_error",
                "code": "invalid_json",
            })
        );
    }

    #[tokio::test]
    async fn completions_stream_one_chunk_per_word_and_usage_last() {
        let body = json!({
            "prompt": ["a b", "c"], "max_tokens": 2, "stream": 1,
            "stream_options": { "include_usage": true },
        });
        let documents = run(completions, "qwen3", &body).await.event_documents();
        assert_eq!(documents.len(), 3);
        assert_eq!(documents[0]["choices"][0]["text"], "Hello!");
        assert_eq!(documents[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(documents[2]["model"], "qwen3");
        assert_eq!(
            documents[2]["usage"],
            json!({ "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 })
        );
        let plain = run(completions, "qwen3", &json!({ "prompt": 5 })).await;
        assert_eq!(plain.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            plain.json()["error"]["message"],
            "prompt must be a string or an array of strings"
        );
    }

    #[tokio::test]
    async fn embeddings_count_every_input() {
        let body = run(
            embeddings,
            "qwen3",
            &json!({ "input": ["one two", "three four five"] }),
        )
        .await
        .json();
        assert_eq!(body["model"], "qwen3");
        assert_eq!(
            body["data"][1]["embedding"].as_array().unwrap().len(),
            EMBEDDING_DIMENSIONS
        );
        assert_eq!(
            body["usage"],
            json!({ "prompt_tokens": 5, "total_tokens": 5 })
        );
    }

    #[tokio::test]
    async fn models_lists_every_served_model() {
        let body = super::super::test_support::read(models(&["simulator", "qwen3"]))
            .await
            .json();
        let ids: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["simulator", "qwen3"]);
    }

    #[tokio::test]
    async fn invocations_answer_a_chat_completion_and_never_stream() {
        let body = run(
            invocations,
            "qwen3",
            &chat(json!({ "stream": true, "max_tokens": 4 })),
        )
        .await
        .json();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "qwen3");
        assert_eq!(
            body["usage"],
            json!({ "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 })
        );
    }

    #[tokio::test]
    async fn tokenize_counts_a_prompt_or_messages_and_generates_nothing() {
        let body = run(tokenize, "qwen3", &json!({ "prompt": "one two one" }))
            .await
            .json();
        assert_eq!(body["count"], 3);
        let tokens = body["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens[0], tokens[2]);
        let body = run(tokenize, "qwen3", &chat(json!({}))).await.json();
        assert_eq!(body["count"], 5);
        let refused = run(tokenize, "qwen3", &json!({ "prompt": 1 })).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            refused.json()["error"]["message"],
            "tokenize needs a prompt string or messages"
        );
    }

    fn responses_request(extra: Value) -> Value {
        let mut body = json!({
            "model": "qwen3",
            "instructions": "answer briefly",
            "input": [{ "role": "user", "content": [{ "type": "input_text", "text": "one two three" }] }],
        });
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    }

    #[tokio::test]
    async fn responses_answer_json_with_input_and_output_tokens() {
        let body = run(
            responses,
            "qwen3",
            &responses_request(json!({ "max_output_tokens": 3 })),
        )
        .await
        .json();
        assert_eq!(body["object"], "response");
        assert_eq!(body["model"], "qwen3");
        assert_eq!(body["status"], "incomplete");
        assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(body["output"][0]["content"][0]["text"], "Hello! I am");
        assert_eq!(body["usage"]["input_tokens"], 5);
        assert_eq!(body["usage"]["output_tokens"], 3);
        assert_eq!(body["usage"]["total_tokens"], 8);
        let whole = run(responses, "qwen3", &responses_request(json!({})))
            .await
            .json();
        assert_eq!(whole["status"], "completed");
        assert_eq!(whole["incomplete_details"], Value::Null);
        assert_eq!(whole["usage"]["output_tokens"], 27);
    }

    #[tokio::test]
    async fn responses_stream_named_events_ending_with_the_usage() {
        let answer = run(
            responses,
            "qwen3",
            &responses_request(json!({ "stream": "yes" })),
        )
        .await;
        let events = answer.events();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(
            names[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
            ]
        );
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == "response.output_text.delta")
                .count(),
            27
        );
        assert_eq!(names.last(), Some(&"response.completed"));
        let documents = answer.event_documents();
        for (i, (document, name)) in documents.iter().zip(&names).enumerate() {
            assert_eq!(document["type"], *name);
            assert_eq!(document["sequence_number"], i);
        }
        assert_eq!(documents[0]["response"]["usage"], Value::Null);
        let done = &documents.last().unwrap()["response"];
        assert_eq!(done["model"], "qwen3");
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["input_tokens"], 5);
        assert_eq!(done["usage"]["output_tokens"], 27);
        assert_eq!(done["usage"]["total_tokens"], 32);
        let text: String = documents
            .iter()
            .filter(|d| d["type"] == "response.output_text.delta")
            .map(|d| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(
            text,
            crate::REPLY
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    #[tokio::test]
    async fn a_stream_cut_by_max_output_tokens_ends_incomplete() {
        let answer = run(
            responses,
            "qwen3",
            &responses_request(json!({ "stream": true, "max_output_tokens": 2 })),
        )
        .await;
        let last = answer.event_documents().pop().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(last["response"]["usage"]["output_tokens"], 2);
    }

    #[test]
    fn embedding_inputs_are_a_string_or_strings() {
        assert_eq!(embedding_inputs(Some(&json!("a b"))), Some(vec!["a b"]));
        assert_eq!(
            embedding_inputs(Some(&json!(["a", "b c"]))),
            Some(vec!["a", "b c"])
        );
        assert_eq!(embedding_inputs(Some(&json!([]))), None);
        assert_eq!(embedding_inputs(Some(&json!([1, 2]))), None);
        assert_eq!(embedding_inputs(Some(&json!(null))), None);
        assert_eq!(embedding_inputs(None), None);
    }

    #[test]
    fn responses_input_counts_strings_items_and_parts() {
        assert_eq!(responses_input_tokens(Some(&json!("one two"))), Ok(2));
        assert_eq!(
            responses_input_tokens(Some(&json!([
                "a b",
                { "role": "user", "content": "c d e" },
                { "role": "user", "content": [{ "type": "input_text", "text": "f" }] },
                { "type": "input_text", "text": "g h" },
            ]))),
            Ok(8)
        );
        assert_eq!(responses_input_tokens(None), Ok(0));
        assert!(responses_input_tokens(Some(&json!(5))).is_err());
    }

    #[test]
    fn equal_words_get_equal_token_ids() {
        assert_eq!(token_id("hello"), token_id("hello"));
        assert_ne!(token_id("hello"), token_id("world"));
        assert!(token_id("anything") < 100_000);
        assert_eq!(
            content_words(Some(&json!([{"text": "a b"}, "c", 1]))),
            vec!["a", "b", "c"]
        );
    }
}
