//! Unit-test helpers: run an API handler on a body and read its answer whole, SSE events parsed.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::Call;

/// A handler's answer, read whole.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

impl Answer {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Each event's `event:` name (if any) and data, in order.
    pub(super) fn events(&self) -> Vec<(Option<String>, String)> {
        assert_eq!(
            self.headers["content-type"], "text/event-stream",
            "not a stream: {}",
            self.body
        );
        self.body
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let mut name = None;
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// The data of every event but OpenAI's `[DONE]`, parsed.
    pub(super) fn event_documents(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|(_, data)| data != "[DONE]")
            .map(|(_, data)| serde_json::from_str(&data).unwrap())
            .collect()
    }
}

/// Runs `handler` as the model `model` on `body`.
pub(super) async fn run(handler: fn(&Call<'_>) -> Response, model: &str, body: &Value) -> Answer {
    let body = body.to_string();
    let response = handler(&Call {
        model,
        body: body.as_bytes(),
        delay: Duration::ZERO,
    });
    read(response).await
}

/// Reads a response whole.
pub(super) async fn read(response: Response) -> Answer {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}
