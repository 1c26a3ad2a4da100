//! Token metering (domain): which responses are metered, the usage they report, and where it goes.
//!
//! The model server reports what a request cost in the response itself: a JSON body's `usage`, or
//! an SSE stream's usage event(s). [`ResponseMeter`] reads it from the body as it passes, chunk by
//! chunk and in bounded memory; [`inspect_request`] reads the request body first (refusing what
//! a backend could read differently from us) and asks OpenAI-style servers for the usage chunk of
//! a stream the client did not ask for; [`TokenSink`] receives the tokens, charged to the
//! [`UsageSubject`] that Check stamped on the request. Nothing here knows Envoy or gRPC: the
//! `grpc::ext_proc` adapter translates.
//!
//! Every served token is charged: a response that reports no usage, or ends early, is charged an
//! estimate ([`estimate`]): prompt tokens from the request's text, completion tokens from the
//! text already sent, at four characters per token, at least one per piece of text streamed.

pub mod estimate;
mod extract;
mod json;
mod meter;
mod request;
mod sse;

use crate::assertion::AssertionError;
use crate::ids::SubscriptionKey;
use crate::request_path::CanonicalPath;

pub use meter::{ChunkAction, Metered, ResponseMeter};
pub use request::{InspectedRequest, RequestRefusal, inspect_request};
pub use sse::MAX_EVENT_BYTES;

/// The default of `MAAS_AUTHZ_METER_MAX_REQUEST_BYTES`: 8 MiB, room for a long context or a
/// few images in base64.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

pub use json::{MAX_JSON_BYTES, TAIL_BYTES};

/// Who a metered response is charged to: the identity Check stamped on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSubject {
    pub user: String,
    pub subscription_key: SubscriptionKey,
    /// The API key's id, as Check signed it (the usage ledger books per key).
    pub key_id: String,
}

/// Where metered tokens go (the usage ledger books them, the limits module charges them, the
/// metrics count them). Used as `dyn`, hence `#[async_trait]`. Called only for a charge whose
/// total is above zero.
#[async_trait::async_trait]
pub trait TokenSink: Send + Sync + 'static {
    async fn charge(&self, subject: &UsageSubject, charge: &Charge);
}

/// What one response was charged: its usage, and whether that usage is (partly) an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub usage: TokenUsage,
    pub estimated: bool,
}

/// Observes every metered response (implemented by the metrics module).
pub trait UsageObserver: Send + Sync + 'static {
    /// One response finished (or was given up on) with this outcome and, if any, this charge.
    fn observe_response(&self, endpoint: Endpoint, outcome: MeterOutcome, charge: Option<&Charge>);
    /// A streaming request was rewritten to ask for the usage chunk.
    fn observe_forced_stream_usage(&self, endpoint: Endpoint);
    /// The meter refused a request or response (nothing was served), for this reason.
    fn observe_refusal(&self, reason: MeterRefusal);
}

impl UsageObserver for () {
    fn observe_response(&self, _: Endpoint, _: MeterOutcome, _: Option<&Charge>) {}
    fn observe_forced_stream_usage(&self, _: Endpoint) {}
    fn observe_refusal(&self, _: MeterRefusal) {}
}

/// The inference APIs whose responses carry usage, by the path that names them; anything else
/// under a model route is [`Endpoint::Other`], metered all the same.
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
    /// Any other path under a model route (`/invocations`, `/v1/rerank`, a new API): a model
    /// server may generate there too, so it is metered, its usage read in any known shape.
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Messages,
        Endpoint::Responses,
        Endpoint::Other,
    ];

    /// The endpoint a canonical path calls, read from its API part (see
    /// [`CanonicalPath::api`]) whatever gateway prefix precedes it, case-insensitively (some
    /// servers route so); one trailing slash is ignored.
    pub fn of_path(path: &CanonicalPath<'_>) -> Self {
        let api = path.api();
        let api = api.strip_suffix('/').unwrap_or(api);
        [
            ("/v1/chat/completions", Endpoint::ChatCompletions),
            ("/v1/completions", Endpoint::Completions),
            ("/v1/embeddings", Endpoint::Embeddings),
            ("/v1/messages", Endpoint::Messages),
            ("/v1/responses", Endpoint::Responses),
        ]
        .into_iter()
        .find(|(known, _)| api.eq_ignore_ascii_case(known))
        .map_or(Endpoint::Other, |(_, endpoint)| endpoint)
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
            Endpoint::Other => "other",
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
    /// The response completed without usage the meter could read: an estimate was charged.
    Estimated,
    /// The response ended early (client gone, stream reset): what was reported, else an
    /// estimate, was charged.
    Interrupted,
    /// The model server answered with a non-2xx status: nothing to charge.
    NotSuccessful,
    /// The meter refused the request or the response (see [`MeterRefusal`]): nothing served.
    Refused,
}

impl MeterOutcome {
    pub const ALL: [MeterOutcome; 5] = [
        MeterOutcome::Metered,
        MeterOutcome::Estimated,
        MeterOutcome::Interrupted,
        MeterOutcome::NotSuccessful,
        MeterOutcome::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MeterOutcome::Metered => "metered",
            MeterOutcome::Estimated => "estimated",
            MeterOutcome::Interrupted => "interrupted",
            MeterOutcome::NotSuccessful => "not_successful",
            MeterOutcome::Refused => "refused",
        }
    }
}

/// Why the meter refused to pass a request (or a response) it could not charge. Fail closed:
/// what cannot be metered is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterRefusal {
    /// No valid identity assertion from Check: not a request Check allowed.
    Identity(AssertionError),
    /// The path could be read differently by the model server (Check refuses it too).
    NonCanonicalPath,
    /// The request body is larger than the meter's limit (or Envoy's buffer).
    RequestTooLarge,
    /// The request body cannot be read the way every model server would read it.
    InvalidBody(RequestRefusal),
    /// The body names another model than the one Check authorized.
    ModelMismatch,
    /// The model server compressed its response although the gateway asked it not to: its
    /// usage cannot be read.
    ResponseEncoded,
}

impl MeterRefusal {
    /// Every label, for registering metrics up front.
    pub fn all() -> Vec<MeterRefusal> {
        let mut all: Vec<MeterRefusal> = AssertionError::ALL
            .into_iter()
            .map(MeterRefusal::Identity)
            .collect();
        all.extend([
            MeterRefusal::NonCanonicalPath,
            MeterRefusal::RequestTooLarge,
            MeterRefusal::ModelMismatch,
            MeterRefusal::ResponseEncoded,
        ]);
        all.extend(
            RequestRefusal::ALL
                .into_iter()
                .map(MeterRefusal::InvalidBody),
        );
        all
    }

    /// The metric label and `x-ext-auth-reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterRefusal::Identity(error) => error.as_str(),
            MeterRefusal::NonCanonicalPath => "non_canonical_path",
            MeterRefusal::RequestTooLarge => "request_too_large",
            MeterRefusal::InvalidBody(refusal) => refusal.as_str(),
            MeterRefusal::ModelMismatch => "model_mismatch",
            MeterRefusal::ResponseEncoded => "response_encoded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_recognised_behind_any_gateway_prefix_and_in_any_case() {
        let cases = [
            ("/simulator/v1/chat/completions", Endpoint::ChatCompletions),
            ("/v1/chat/completions?x=1", Endpoint::ChatCompletions),
            ("/llm/qwen3/v1/completions", Endpoint::Completions),
            ("/m/v1/embeddings/", Endpoint::Embeddings),
            ("/claude/v1/messages", Endpoint::Messages),
            ("/m/v1/responses", Endpoint::Responses),
            ("/m/v1/Chat/Completions", Endpoint::ChatCompletions),
            ("/m/v1/EMBEDDINGS", Endpoint::Embeddings),
            ("/m/v1/responses/resp_123", Endpoint::Other),
            ("/m/v1/models", Endpoint::Other),
            ("/m/v1/chat", Endpoint::Other),
            ("/m/invocations", Endpoint::Other),
            ("/", Endpoint::Other),
        ];
        for (path, expected) in cases {
            let path = CanonicalPath::parse(path).unwrap();
            assert_eq!(Endpoint::of_path(&path), expected, "{path:?}");
        }
    }

    #[test]
    fn every_refusal_has_a_distinct_label() {
        let all = MeterRefusal::all();
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), all.len());
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
