//! Token metering (domain): which responses are metered, the usage they report, and where it goes.
//!
//! The model server reports what a request cost in the response itself: a JSON body's `usage`, or
//! an SSE stream's usage event(s). [`ResponseMeter`] reads it from the body as it passes, chunk by
//! chunk and in bounded memory; [`force_stream_usage`] asks OpenAI-style servers for the usage
//! chunk of a stream the client did not ask for; [`TokenSink`] receives the tokens, charged to the
//! [`UsageSubject`] that Check stamped on the request. Nothing here knows Envoy or gRPC: the
//! `grpc::ext_proc` adapter translates.

mod extract;
mod json;
mod meter;
mod request;
mod sse;

use std::future::Future;
use std::pin::Pin;

pub use meter::{ChunkAction, Metered, ResponseMeter};
pub use request::force_stream_usage;
pub use sse::MAX_EVENT_BYTES;

pub use json::{MAX_JSON_BYTES, TAIL_BYTES};

/// Who a metered response is charged to: the identity Check stamped on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSubject {
    pub user: String,
    pub subscription_key: String,
}

/// Where metered tokens go (implemented by the limits module at merge time).
pub trait TokenSink: Send + Sync + 'static {
    fn charge<'a>(
        &'a self,
        subject: &'a UsageSubject,
        tokens: u64,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Observes every metered response (implemented by the metrics module).
pub trait UsageObserver: Send + Sync + 'static {
    /// One response finished (or was given up on) with this outcome and, if found, this usage.
    fn observe_response(
        &self,
        endpoint: Endpoint,
        outcome: MeterOutcome,
        usage: Option<&TokenUsage>,
    );
    /// A streaming request was rewritten to ask for the usage chunk.
    fn observe_forced_stream_usage(&self, endpoint: Endpoint);
}

impl UsageObserver for () {
    fn observe_response(&self, _: Endpoint, _: MeterOutcome, _: Option<&TokenUsage>) {}
    fn observe_forced_stream_usage(&self, _: Endpoint) {}
}

/// The inference APIs whose responses carry usage, by the path suffix that names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/completions` (legacy).
    Completions,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// OpenAI `POST /v1/responses`.
    Responses,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Messages,
        Endpoint::Responses,
    ];

    /// The endpoint a request path calls, whatever gateway prefix precedes `/v1/...`
    /// (`/simulator/v1/chat/completions`, `/llm/qwen3/v1/messages`); the query is ignored.
    /// `None` for anything else, e.g. `/v1/models` or `/v1/responses/{id}`.
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.strip_suffix('/').unwrap_or(path);
        [
            ("/v1/chat/completions", Endpoint::ChatCompletions),
            ("/v1/completions", Endpoint::Completions),
            ("/v1/embeddings", Endpoint::Embeddings),
            ("/v1/messages", Endpoint::Messages),
            ("/v1/responses", Endpoint::Responses),
        ]
        .into_iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, endpoint)| endpoint)
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }

    /// Whether a streaming request can ask for usage with `stream_options.include_usage`
    /// (OpenAI's chat and legacy completions; the others always report it).
    pub fn accepts_stream_options(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// Tokens one response reports. `prompt` is the input side (OpenAI `prompt_tokens`, Anthropic and
/// Responses `input_tokens`), `completion` the output side; `total` is the server's own total
/// when it reports one, else their sum. Total is what is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

/// How metering one response ended (the metric label says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterOutcome {
    /// The response reported usage; its total was charged.
    Metered,
    /// The response completed without any usage the meter could read.
    NoUsage,
    /// The model server answered with a non-2xx status: nothing to meter.
    NotSuccessful,
    /// The body is compressed (`content-encoding`), so its usage cannot be read.
    Encoded,
    /// The response ended early (client gone, stream reset); any usage already seen was charged.
    Interrupted,
}

impl MeterOutcome {
    pub const ALL: [MeterOutcome; 5] = [
        MeterOutcome::Metered,
        MeterOutcome::NoUsage,
        MeterOutcome::NotSuccessful,
        MeterOutcome::Encoded,
        MeterOutcome::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MeterOutcome::Metered => "metered",
            MeterOutcome::NoUsage => "no_usage",
            MeterOutcome::NotSuccessful => "not_successful",
            MeterOutcome::Encoded => "encoded",
            MeterOutcome::Interrupted => "interrupted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_recognised_behind_any_gateway_prefix() {
        let cases = [
            (
                "/simulator/v1/chat/completions",
                Some(Endpoint::ChatCompletions),
            ),
            ("/v1/chat/completions?x=1", Some(Endpoint::ChatCompletions)),
            ("/llm/qwen3/v1/completions", Some(Endpoint::Completions)),
            ("/m/v1/embeddings/", Some(Endpoint::Embeddings)),
            ("/claude/v1/messages", Some(Endpoint::Messages)),
            ("/m/v1/responses", Some(Endpoint::Responses)),
            ("/m/v1/responses/resp_123", None),
            ("/m/v1/models", None),
            ("/m/v1/chat", None),
            ("/m/chat/completions", None),
            ("", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Endpoint::from_path(path), expected, "{path}");
        }
    }

    #[test]
    fn only_openai_generation_endpoints_take_stream_options() {
        let taking: Vec<_> = Endpoint::ALL
            .into_iter()
            .filter(|e| e.accepts_stream_options())
            .collect();
        assert_eq!(taking, [Endpoint::ChatCompletions, Endpoint::Completions]);
    }
}
