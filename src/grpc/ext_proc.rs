//! Envoy's `envoy.service.ext_proc.v3.ExternalProcessor/Process`: the token meter's adapter.
//!
//! One bidirectional stream per HTTP request, on model routes only (ext_authz runs first).
//! Fail closed: every response from a model is charged, or the request is refused with an
//! `ImmediateResponse` Envoy answers the client with (see [`refusal_response`]).
//!
//! 1. Request headers. The identity comes only from Check's signed assertion
//!    ([`HEADER_IDENTITY_ASSERTION`]), never from metadata or other client headers: a request
//!    without a valid one is refused (403), so a forged `Process` call charges nobody. The header
//!    is removed before the model server sees the request. A non-canonical path is refused (400;
//!    Check refuses it too). A request Check allowed without a model (a configured model-free
//!    path) and `GET`/`HEAD` model listings pass untouched. Everything else is metered, whatever
//!    its endpoint ([`Endpoint::Other`] included): `accept-encoding` is removed (a compressed body
//!    cannot be read), the response headers and body are asked for (STREAMED: SSE passes chunk by
//!    chunk), and a request body is asked for whole (BUFFERED_PARTIAL, `content-length` removed
//!    because the body may change length).
//! 2. Request body: larger than `max_request_bytes` (or than Envoy's buffer, which then sends it
//!    incomplete) is refused (413); [`inspect_request`] refuses a body a model server could read
//!    differently (400); a body `model` that is not the model Check authorized is refused (400);
//!    a streaming chat or legacy completion is rewritten to ask for usage.
//! 3. Response headers: a non-2xx status ends metering (nothing charged); a compressed body is
//!    refused (502): its usage cannot be read.
//! 4. Response body chunks feed a [`ResponseMeter`], which may drop OpenAI's usage-only chunk
//!    when the gateway (not the client) asked for it. At `end_of_stream` the reported usage (else
//!    an estimate) is charged to the [`TokenSink`], once, after Envoy has its answer.
//!
//! If the stream ends before the response did (client gone, Envoy reset), what was reported,
//! else an estimate ([`crate::usage::estimate`]), is charged and the response counted as
//! interrupted.

use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
    body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::assertion::{AssertionError, HEADER_IDENTITY_ASSERTION, SigningKeys};
use crate::ids::SubscriptionKey;
use crate::policy::Policy;
use crate::request_path::CanonicalPath;
use crate::usage::estimate::TextTally;
use crate::usage::{
    Charge, ChunkAction, DEFAULT_MAX_REQUEST_BYTES, Endpoint, MeterOutcome, MeterRefusal,
    ResponseMeter, TokenSink, TokenUsage, UsageObserver, UsageSubject, inspect_request,
};

/// How the meter treats requests.
#[derive(Debug, Clone, Copy)]
pub struct MeterSettings {
    /// Add `stream_options.include_usage` to streaming chat/completions requests without it
    /// (and strip the usage chunk the client did not ask for from the stream).
    pub force_stream_usage: bool,
    /// Largest request body a metered request may have (`MAAS_AUTHZ_METER_MAX_REQUEST_BYTES`).
    pub max_request_bytes: usize,
}

impl Default for MeterSettings {
    fn default() -> Self {
        Self {
            force_stream_usage: true,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// What every conversation shares: settings, the keys that verify Check's assertions, and the
/// policy (to read a body's `model` the way Check reads model names).
struct MeterContext {
    settings: MeterSettings,
    signing: Arc<SigningKeys>,
    policy: Arc<ArcSwap<Policy>>,
}

/// The tonic service for Envoy's ext_proc filter.
pub struct ExtProcService {
    sink: Arc<dyn TokenSink>,
    observer: Arc<dyn UsageObserver>,
    context: Arc<MeterContext>,
}

impl std::fmt::Debug for ExtProcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtProcService")
            .field("settings", &self.context.settings)
            .finish_non_exhaustive()
    }
}

impl ExtProcService {
    pub fn new(
        sink: Arc<dyn TokenSink>,
        observer: Arc<dyn UsageObserver>,
        settings: MeterSettings,
        signing: Arc<SigningKeys>,
        policy: Arc<ArcSwap<Policy>>,
    ) -> Self {
        Self {
            sink,
            observer,
            context: Arc::new(MeterContext {
                settings,
                signing,
                policy,
            }),
        }
    }

    /// The largest gRPC message the meter accepts: twice the request-body limit (at least 16 MiB),
    /// so that a body over the limit but within Envoy's buffer still arrives and gets its clear
    /// 413; a larger message breaks the conversation, which fails the request too.
    pub fn max_message_bytes(&self) -> usize {
        self.context
            .settings
            .max_request_bytes
            .saturating_mul(2)
            .max(16 * 1024 * 1024)
            .saturating_add(64 * 1024)
    }
}

type ReplyStream = std::pin::Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[async_trait::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReplyStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, outbound) = mpsc::channel::<Result<ProcessingResponse, Status>>(8);
        let mut exchange = Exchange::new(self.context.clone());
        let (sink, observer) = (self.sink.clone(), self.observer.clone());
        // The conversation runs on its own task so that charging never waits on, nor is lost
        // with, the response stream Envoy reads.
        tokio::spawn(async move {
            // Envoy carries on, unmetered, with a request whose processor ends its reply stream
            // cleanly. So a conversation that breaks (a message that cannot be decoded, such as
            // a body beyond the gRPC message limit, or a panic here) must end in an error status,
            // which makes the filter's failure mode (closed) apply.
            let mut failure = FailOnDrop(Some(replies.clone()));
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(%status, "ext_proc stream broke: failing the request");
                        break;
                    }
                };
                let step = exchange.on_message(message, chrono::Utc::now().timestamp());
                if let Some(forced) = step.forced_stream_usage {
                    observer.observe_forced_stream_usage(forced);
                }
                if let Some(refusal) = step.refusal {
                    observer.observe_refusal(refusal);
                    tracing::info!(reason = refusal.as_str(), "token meter refused a request");
                }
                if let Some(reply) = step.reply {
                    // Envoy gone: keep reading, so the end of the stream is seen and charged.
                    let _ = replies.send(Ok(reply)).await;
                }
                if let Some(finished) = step.finished {
                    settle(finished, sink.as_ref(), observer.as_ref()).await;
                }
            }
            if exchange.complete() {
                failure.0 = None;
            }
            if let Some(finished) = exchange.interrupted() {
                settle(finished, sink.as_ref(), observer.as_ref()).await;
            }
        });
        let stream = futures::stream::unfold(outbound, |mut outbound| async move {
            outbound.recv().await.map(|reply| (reply, outbound))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Sends an error to Envoy when dropped armed: the conversation did not end as Envoy ended it.
struct FailOnDrop(Option<mpsc::Sender<Result<ProcessingResponse, Status>>>);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        if let Some(replies) = self.0.take() {
            let _ = replies.try_send(Err(Status::internal(
                "the token meter could not process this request",
            )));
        }
    }
}

/// Observes a finished response and charges its tokens.
async fn settle(finished: Finished, sink: &dyn TokenSink, observer: &dyn UsageObserver) {
    observer.observe_response(
        finished.endpoint,
        finished.outcome,
        finished.charge.as_ref(),
    );
    tracing::debug!(
        user = %finished.subject.user,
        subscription = %finished.subject.subscription_key,
        endpoint = finished.endpoint.as_str(),
        outcome = finished.outcome.as_str(),
        tokens = finished.charge.map_or(0, |c| c.usage.total),
        estimated = finished.charge.is_some_and(|c| c.estimated),
        "response metered"
    );
    if let Some(charge) = finished.charge.filter(|c| c.usage.total > 0) {
        sink.charge(&finished.subject, &charge).await;
    }
}

/// A response whose metering is over.
#[derive(Debug)]
struct Finished {
    subject: UsageSubject,
    endpoint: Endpoint,
    outcome: MeterOutcome,
    charge: Option<Charge>,
}

/// What one message leads to.
#[derive(Debug, Default)]
struct Step {
    reply: Option<ProcessingResponse>,
    forced_stream_usage: Option<Endpoint>,
    refusal: Option<MeterRefusal>,
    finished: Option<Finished>,
}

/// The state of one HTTP request/response.
struct Exchange {
    context: Arc<MeterContext>,
    metered: Option<MeteredExchange>,
    /// An `ImmediateResponse` was sent: whatever Envoy still sends is answered, not metered.
    refused: bool,
}

#[derive(Debug)]
struct MeteredExchange {
    subject: UsageSubject,
    /// The model Check authorized, `namespace/name`.
    model: String,
    endpoint: Endpoint,
    /// The gateway added `include_usage`: the client gets no usage chunk it did not ask for.
    forced_stream_usage: bool,
    /// The request's text, for an estimate.
    prompt: TextTally,
    meter: Option<ResponseMeter>,
    finished: bool,
}

impl MeteredExchange {
    /// Ends metering once; what is charged depends on how the response ended.
    fn finish(&mut self, outcome: MeterOutcome) -> Option<Finished> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let metered = self.meter.as_ref().map(ResponseMeter::metered);
        let reported = metered.and_then(|m| m.usage);
        let generated = metered.map(|m| m.generated).unwrap_or_default();
        let estimate = TokenUsage {
            prompt: self.prompt.tokens(),
            completion: generated.tokens(),
            total: self.prompt.tokens().saturating_add(generated.tokens()),
        };
        let (outcome, charge) = match (outcome, reported) {
            (MeterOutcome::Metered, Some(usage)) => (
                MeterOutcome::Metered,
                Some(Charge {
                    usage,
                    estimated: false,
                }),
            ),
            (MeterOutcome::Metered, None) => (
                MeterOutcome::Estimated,
                Some(Charge {
                    usage: estimate,
                    estimated: true,
                }),
            ),
            (MeterOutcome::Interrupted, reported) => (
                MeterOutcome::Interrupted,
                Some(interrupted_charge(reported, estimate)),
            ),
            (outcome, _) => (outcome, None),
        };
        Some(Finished {
            subject: self.subject.clone(),
            endpoint: self.endpoint,
            outcome,
            charge,
        })
    }
}

/// A response cut short: the prompt as reported (else estimated), the larger of the reported and
/// the estimated completion (a stream reports its final count only at its end).
fn interrupted_charge(reported: Option<TokenUsage>, estimate: TokenUsage) -> Charge {
    let reported = reported.unwrap_or_default();
    let prompt = if reported.prompt > 0 {
        reported.prompt
    } else {
        estimate.prompt
    };
    let completion = reported.completion.max(estimate.completion);
    let total = prompt.saturating_add(completion).max(reported.total);
    Charge {
        usage: TokenUsage {
            prompt,
            completion,
            total,
        },
        estimated: total > reported.total,
    }
}

impl Exchange {
    fn new(context: Arc<MeterContext>) -> Self {
        Self {
            context,
            metered: None,
            refused: false,
        }
    }

    fn on_message(&mut self, message: ProcessingRequest, now_unix: i64) -> Step {
        let silent = message.observability_mode;
        let mut step = match message.request {
            _ if self.refused => Step::default(),
            Some(Message::RequestHeaders(headers)) => self.on_request_headers(&headers, now_unix),
            Some(Message::RequestBody(body)) => self.on_request_body(&body),
            Some(Message::ResponseHeaders(headers)) => self.on_response_headers(&headers),
            Some(Message::ResponseBody(body)) => self.on_response_body(&body),
            Some(Message::RequestTrailers(_)) => Step {
                reply: Some(reply(Reply::RequestTrailers(TrailersResponse::default()))),
                ..Step::default()
            },
            Some(Message::ResponseTrailers(_)) => Step {
                reply: Some(reply(Reply::ResponseTrailers(TrailersResponse::default()))),
                finished: self
                    .metered
                    .as_mut()
                    .and_then(|m| m.finish(MeterOutcome::Metered)),
                ..Step::default()
            },
            None => Step::default(),
        };
        // In observability mode Envoy ignores replies (and cannot refuse); metering goes on.
        if silent {
            step.reply = None;
        }
        step
    }

    /// Answers the client instead of the model server: nothing is served, nothing charged.
    fn refuse(&mut self, refusal: MeterRefusal) -> Step {
        self.refused = true;
        let finished = self
            .metered
            .as_mut()
            .and_then(|m| m.finish(MeterOutcome::Refused));
        Step {
            reply: Some(reply(Reply::ImmediateResponse(refusal_response(
                refusal,
                self.context.settings.max_request_bytes,
            )))),
            refusal: Some(refusal),
            finished,
            ..Step::default()
        }
    }

    fn on_request_headers(&mut self, headers: &HttpHeaders, now_unix: i64) -> Step {
        let map = headers.headers.as_ref();
        let assertion = match header(map, HEADER_IDENTITY_ASSERTION) {
            Some(token) => self.context.signing.verify(token, now_unix),
            None => Err(AssertionError::Missing),
        };
        let assertion = match assertion {
            Ok(assertion) => assertion,
            Err(error) => return self.refuse(MeterRefusal::Identity(error)),
        };
        let Ok(path) = CanonicalPath::parse(header(map, ":path").unwrap_or_default()) else {
            return self.refuse(MeterRefusal::NonCanonicalPath);
        };
        let mut remove_headers = vec![HEADER_IDENTITY_ASSERTION.to_owned()];
        let listing =
            path.is_model_listing() && matches!(header(map, ":method"), Some("GET") | Some("HEAD"));
        if assertion.model.is_empty() || listing {
            return Step {
                reply: Some(ProcessingResponse {
                    mode_override: Some(pass_through_mode()),
                    response: Some(Reply::RequestHeaders(removing(remove_headers))),
                    ..Default::default()
                }),
                ..Step::default()
            };
        }
        let read_request_body = !headers.end_of_stream;
        remove_headers.push("accept-encoding".to_owned());
        if read_request_body {
            remove_headers.push("content-length".to_owned());
        }
        self.metered = Some(MeteredExchange {
            subject: UsageSubject {
                user: assertion.user,
                subscription_key: SubscriptionKey::from_wire(assertion.subscription_key),
                key_id: assertion.key_id,
            },
            model: assertion.model,
            endpoint: Endpoint::of_path(&path),
            forced_stream_usage: false,
            prompt: TextTally::default(),
            meter: None,
            finished: false,
        });
        Step {
            reply: Some(ProcessingResponse {
                mode_override: Some(metering_mode(read_request_body)),
                response: Some(Reply::RequestHeaders(removing(remove_headers))),
                ..Default::default()
            }),
            ..Step::default()
        }
    }

    fn on_request_body(&mut self, body: &HttpBody) -> Step {
        let settings = self.context.settings;
        let Some(metered) = self.metered.as_mut() else {
            return Step {
                reply: Some(reply(Reply::RequestBody(BodyResponse::default()))),
                ..Step::default()
            };
        };
        // Not the end of the stream: Envoy's buffer filled up before the body ended.
        if !body.end_of_stream || body.body.len() > settings.max_request_bytes {
            return self.refuse(MeterRefusal::RequestTooLarge);
        }
        let inspected =
            match inspect_request(&body.body, metered.endpoint, settings.force_stream_usage) {
                Ok(inspected) => inspected,
                Err(refusal) => return self.refuse(MeterRefusal::InvalidBody(refusal)),
            };
        if let Some(named) = inspected.model.as_deref()
            && !self.context.policy.load().same_model(&metered.model, named)
        {
            return self.refuse(MeterRefusal::ModelMismatch);
        }
        metered.prompt = inspected.prompt;
        let mut step = Step::default();
        let mut response = BodyResponse::default();
        if let Some(rewritten) = inspected.rewritten {
            metered.forced_stream_usage = true;
            step.forced_stream_usage = Some(metered.endpoint);
            response.response = Some(replace_body(rewritten));
        }
        step.reply = Some(reply(Reply::RequestBody(response)));
        step
    }

    fn on_response_headers(&mut self, headers: &HttpHeaders) -> Step {
        let mut step = Step::default();
        let mut response = ProcessingResponse::default();
        let mut mutation = HeaderMutation::default();
        if let Some(metered) = self.metered.as_mut() {
            let map = headers.headers.as_ref();
            let successful = header(map, ":status")
                .and_then(|s| s.parse::<u16>().ok())
                .is_some_and(|s| (200..300).contains(&s));
            let encoded = header(map, "content-encoding").is_some_and(|e| {
                !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity")
            });
            if !successful {
                response.mode_override = Some(ProcessingMode {
                    response_body_mode: BodySendMode::None as i32,
                    response_trailer_mode: HeaderSendMode::Skip as i32,
                    ..Default::default()
                });
                step.finished = metered.finish(MeterOutcome::NotSuccessful);
            } else if encoded {
                return self.refuse(MeterRefusal::ResponseEncoded);
            } else {
                let meter = ResponseMeter::new(
                    metered.endpoint,
                    header(map, "content-type"),
                    metered.forced_stream_usage,
                );
                if meter.rewrites_body() {
                    // Events may be removed: the original length would be wrong.
                    mutation.remove_headers.push("content-length".to_owned());
                }
                metered.meter = Some(meter);
                if headers.end_of_stream {
                    step.finished = metered.finish(MeterOutcome::Metered);
                }
            }
        }
        response.response = Some(Reply::ResponseHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(mutation),
                ..Default::default()
            }),
        }));
        step.reply = Some(response);
        step
    }

    fn on_response_body(&mut self, body: &HttpBody) -> Step {
        let mut step = Step::default();
        let mut response = BodyResponse::default();
        if let Some(metered) = self.metered.as_mut()
            && let Some(meter) = metered.meter.as_mut()
        {
            if let ChunkAction::Replace(bytes) = meter.feed(&body.body, body.end_of_stream) {
                response.response = Some(replace_body(bytes));
            }
            if body.end_of_stream {
                step.finished = metered.finish(MeterOutcome::Metered);
            }
        }
        step.reply = Some(reply(Reply::ResponseBody(response)));
        step
    }

    /// Whether Envoy may carry on without the meter: nothing was metered, or the response was
    /// fully seen or refused. A stream that broke mid-request is not complete.
    fn complete(&self) -> bool {
        self.refused || self.metered.as_ref().is_none_or(|m| m.finished)
    }

    /// The stream ended: a metered response not yet finished was cut short.
    fn interrupted(&mut self) -> Option<Finished> {
        self.metered
            .as_mut()
            .and_then(|m| m.finish(MeterOutcome::Interrupted))
    }
}

/// Maps a refusal to the answer Envoy sends the client instead of forwarding: an OpenAI-shaped
/// error with the reason in `x-ext-auth-reason`. Client mistakes (a body or path that could be
/// read two ways, another model, too large) are 4xx the client can fix; a request without Check's
/// assertion is 403 (it was not authorized here, e.g. a forged call or a route without ext_authz);
/// a compressed response is 502 (the model server misbehaved, the client can only retry).
pub fn refusal_response(refusal: MeterRefusal, max_request_bytes: usize) -> ImmediateResponse {
    let (status, error_type, message) = match refusal {
        MeterRefusal::Identity(error) => (
            403,
            "permission_error",
            format!("This request was not authorized by the gateway: {error}"),
        ),
        MeterRefusal::NonCanonicalPath => (
            400,
            "invalid_request_error",
            "The request path is not canonical (send /<model>/v1/... as is, without \
             percent-encodings a server would decode, dot segments or '//')"
                .to_owned(),
        ),
        MeterRefusal::RequestTooLarge => (
            413,
            "invalid_request_error",
            format!(
                "The request body is larger than the gateway accepts for model requests \
                 ({max_request_bytes} bytes)"
            ),
        ),
        MeterRefusal::InvalidBody(refusal) => (
            400,
            "invalid_request_error",
            format!("Invalid request body: {refusal}"),
        ),
        MeterRefusal::ModelMismatch => (
            400,
            "invalid_request_error",
            "The body's 'model' names another model than the one this route or path is \
             authorized for"
                .to_owned(),
        ),
        MeterRefusal::ResponseEncoded => (
            502,
            "server_error",
            "The model server sent a compressed response, which the gateway cannot meter"
                .to_owned(),
        ),
    };
    let body = serde_json::json!({
        "error": { "message": message, "type": error_type, "code": refusal.as_str() }
    })
    .to_string();
    ImmediateResponse {
        status: Some(HttpStatus { code: status }),
        headers: Some(HeaderMutation {
            set_headers: vec![
                set_header("content-type", "application/json"),
                set_header(crate::gateway_headers::HEADER_REASON, refusal.as_str()),
            ],
            ..Default::default()
        }),
        body: body.into_bytes(),
        details: format!("maas_authz_meter_{}", refusal.as_str()),
        ..Default::default()
    }
}

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn removing(remove_headers: Vec<String>) -> HeadersResponse {
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(HeaderMutation {
                remove_headers,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A header by lowercase name; Envoy puts ext_proc header values in `raw_value`.
fn header<'a>(map: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let entry = map?.headers.iter().find(|h| h.key == name)?;
    if entry.raw_value.is_empty() {
        Some(entry.value.as_str())
    } else {
        std::str::from_utf8(&entry.raw_value).ok()
    }
}

/// Nothing more to see for this request: no bodies, no response headers, no trailers.
fn pass_through_mode() -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Skip as i32,
        request_body_mode: BodySendMode::None as i32,
        response_body_mode: BodySendMode::None as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// Metering: response headers and the response body as it streams; the request body whole (up
/// to Envoy's buffer limit) when there is one.
fn metering_mode(read_request_body: bool) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: if read_request_body {
            BodySendMode::BufferedPartial as i32
        } else {
            BodySendMode::None as i32
        },
        response_body_mode: BodySendMode::Streamed as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

fn replace_body(bytes: Vec<u8>) -> CommonResponse {
    CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::Body(bytes)),
        }),
        ..Default::default()
    }
}

fn reply(response: Reply) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use crate::assertion::IdentityAssertion;

    use super::*;

    const NOW: i64 = 1_790_000_000;
    const SUBSCRIPTION_KEY: &str = "models-as-a-service/premium@models-as-a-service/simulator";

    fn signing() -> Arc<SigningKeys> {
        Arc::new(SigningKeys::parse("k1=a-test-secret-of-thirty-two-bytes-or-more").unwrap())
    }

    fn context(settings: MeterSettings) -> Arc<MeterContext> {
        let policy =
            Policy::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy"))
                .unwrap();
        Arc::new(MeterContext {
            settings,
            signing: signing(),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
        })
    }

    fn exchange() -> Exchange {
        Exchange::new(context(MeterSettings::default()))
    }

    fn assertion(model: &str) -> String {
        signing().sign(&IdentityAssertion {
            user: "alice".to_owned(),
            subscription_key: SUBSCRIPTION_KEY.to_owned(),
            model: model.to_owned(),
            key_id: "k".to_owned(),
            issued_at: NOW,
        })
    }

    fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
        HttpHeaders {
            headers: Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(key, value)| HeaderValue {
                        key: (*key).to_owned(),
                        raw_value: value.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            end_of_stream,
            ..Default::default()
        }
    }

    fn message(request: Message) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(request),
            ..Default::default()
        }
    }

    /// A POST with a body to come, carrying Check's assertion for `model` (none when empty).
    fn request_headers(path: &str, token: Option<&str>) -> ProcessingRequest {
        let mut pairs = vec![
            (":method", "POST"),
            (":path", path),
            ("content-type", "application/json"),
        ];
        if let Some(token) = token {
            pairs.push((HEADER_IDENTITY_ASSERTION, token));
        }
        message(Message::RequestHeaders(headers(&pairs, false)))
    }

    fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
        HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        }
    }

    fn send(exchange: &mut Exchange, request: ProcessingRequest) -> Step {
        exchange.on_message(request, NOW)
    }

    fn mode(step: &Step) -> ProcessingMode {
        step.reply
            .as_ref()
            .and_then(|r| r.mode_override)
            .expect("a mode override")
    }

    fn removed_headers(step: &Step) -> Vec<String> {
        match step.reply.as_ref().and_then(|r| r.response.as_ref()) {
            Some(Reply::RequestHeaders(h)) => h
                .response
                .as_ref()
                .and_then(|c| c.header_mutation.as_ref())
                .map(|m| m.remove_headers.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn refusal(step: &Step) -> Option<(u32, serde_json::Value)> {
        match step.reply.as_ref()?.response.as_ref()? {
            Reply::ImmediateResponse(answer) => Some((
                answer.status.map_or(0, |s| s.code as u32),
                serde_json::from_slice(&answer.body).unwrap(),
            )),
            _ => None,
        }
    }

    fn replaced_body(step: &Step) -> Option<Vec<u8>> {
        let common = match step.reply.as_ref()?.response.as_ref()? {
            Reply::RequestBody(b) | Reply::ResponseBody(b) => b.response.as_ref()?,
            _ => return None,
        };
        match common.body_mutation.as_ref()?.mutation.as_ref()? {
            body_mutation::Mutation::Body(bytes) => Some(bytes.clone()),
            _ => None,
        }
    }

    /// Request headers and body for `model`, then a 200 with `content_type`.
    fn started(path: &str, model: &str, request: &[u8], content_type: &str) -> Exchange {
        let mut exchange = exchange();
        let token = assertion(model);
        send(&mut exchange, request_headers(path, Some(&token)));
        let step = send(
            &mut exchange,
            message(Message::RequestBody(body(request, true))),
        );
        assert!(refusal(&step).is_none(), "{:?}", refusal(&step));
        send(
            &mut exchange,
            message(Message::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", content_type)],
                false,
            ))),
        );
        exchange
    }

    #[test]
    fn a_request_without_checks_assertion_is_refused_whatever_its_headers_say() {
        let mut exchange = exchange();
        let mut request = request_headers("/simulator/v1/chat/completions", None);
        if let Some(Message::RequestHeaders(h)) = request.request.as_mut() {
            h.headers.as_mut().unwrap().headers.push(HeaderValue {
                key: "x-maas-username".to_owned(),
                raw_value: b"mallory".to_vec(),
                ..Default::default()
            });
        }

        let step = send(&mut exchange, request);

        let (status, body) = refusal(&step).expect("refused");
        assert_eq!(status, 403);
        assert_eq!(body["error"]["code"], "identity_missing");
        assert_eq!(
            step.refusal,
            Some(MeterRefusal::Identity(AssertionError::Missing))
        );
        assert!(exchange.interrupted().is_none(), "nobody is charged");
    }

    #[test]
    fn forged_expired_and_foreign_assertions_are_refused() {
        let foreign = SigningKeys::parse("k1=another-secret-of-thirty-two-bytes-at-least")
            .unwrap()
            .sign(&IdentityAssertion {
                user: "victim".to_owned(),
                subscription_key: SUBSCRIPTION_KEY.to_owned(),
                model: "models-as-a-service/simulator".to_owned(),
                key_id: "k".to_owned(),
                issued_at: NOW,
            });
        let mut expired_exchange = exchange();
        let expired = expired_exchange.on_message(
            request_headers(
                "/simulator/v1/chat/completions",
                Some(&assertion("models-as-a-service/simulator")),
            ),
            NOW + 301,
        );
        assert_eq!(
            expired.refusal,
            Some(MeterRefusal::Identity(AssertionError::Expired))
        );
        for (token, error) in [
            (foreign.as_str(), AssertionError::BadSignature),
            ("v1.k1.e30.AAAA", AssertionError::BadSignature),
            ("garbage", AssertionError::Malformed),
        ] {
            let step = send(
                &mut exchange(),
                request_headers("/simulator/v1/chat/completions", Some(token)),
            );
            assert_eq!(step.refusal, Some(MeterRefusal::Identity(error)), "{token}");
        }
    }

    #[test]
    fn a_model_free_request_and_a_model_listing_pass_untouched_without_the_assertion() {
        let model_free = assertion("");
        let step = send(
            &mut exchange(),
            request_headers("/v1/tokenize", Some(&model_free)),
        );
        assert_eq!(mode(&step), pass_through_mode());
        assert_eq!(removed_headers(&step), [HEADER_IDENTITY_ASSERTION]);

        let token = assertion("models-as-a-service/simulator");
        let listing = message(Message::RequestHeaders(headers(
            &[
                (":method", "GET"),
                (":path", "/simulator/v1/models"),
                (HEADER_IDENTITY_ASSERTION, &token),
            ],
            true,
        )));
        let step = send(&mut exchange(), listing);
        assert_eq!(mode(&step), pass_through_mode());
    }

    #[test]
    fn a_metered_request_reads_its_body_and_never_lets_the_assertion_reach_the_model() {
        for path in [
            "/simulator/v1/chat/completions",
            "/simulator/v1/embeddings",
            "/simulator/invocations",
            "/simulator/v1/models",
        ] {
            let step = send(
                &mut exchange(),
                request_headers(path, Some(&assertion("models-as-a-service/simulator"))),
            );
            assert_eq!(mode(&step), metering_mode(true), "{path}");
            assert_eq!(
                removed_headers(&step),
                [
                    HEADER_IDENTITY_ASSERTION,
                    "accept-encoding",
                    "content-length"
                ],
                "{path}"
            );
        }
    }

    #[test]
    fn a_non_canonical_path_is_refused() {
        let step = send(
            &mut exchange(),
            request_headers(
                "/simulator/v1/chat/%63ompletions",
                Some(&assertion("models-as-a-service/simulator")),
            ),
        );
        assert_eq!(refusal(&step).unwrap().0, 400);
        assert_eq!(step.refusal, Some(MeterRefusal::NonCanonicalPath));
    }

    #[test]
    fn a_streaming_chat_request_is_rewritten_and_its_usage_chunk_stripped_and_charged() {
        let mut exchange = exchange();
        let token = assertion("models-as-a-service/simulator");
        send(
            &mut exchange,
            request_headers("/simulator/v1/chat/completions", Some(&token)),
        );
        let step = send(
            &mut exchange,
            message(Message::RequestBody(body(
                br#"{"model":"simulator","stream":true,"messages":[]}"#,
                true,
            ))),
        );
        let rewritten: serde_json::Value =
            serde_json::from_slice(&replaced_body(&step).expect("rewritten body")).unwrap();
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        assert_eq!(step.forced_stream_usage, Some(Endpoint::ChatCompletions));

        send(
            &mut exchange,
            message(Message::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "text/event-stream")],
                false,
            ))),
        );
        let content = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n";
        let step = send(
            &mut exchange,
            message(Message::ResponseBody(body(content, false))),
        );
        assert!(step.finished.is_none());
        assert_eq!(
            replaced_body(&step).unwrap(),
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"
        );
        let step = send(
            &mut exchange,
            message(Message::ResponseBody(body(b"data: [DONE]\n\n", true))),
        );

        assert_eq!(replaced_body(&step).unwrap(), b"data: [DONE]\n\n");
        let finished = step.finished.expect("charged at end of stream");
        assert_eq!(finished.outcome, MeterOutcome::Metered);
        let charge = finished.charge.unwrap();
        assert_eq!((charge.usage.total, charge.estimated), (3, false));
        assert_eq!(finished.subject.user, "alice");
        assert_eq!(finished.subject.subscription_key.as_str(), SUBSCRIPTION_KEY);
        assert!(exchange.interrupted().is_none(), "charged once");
    }

    #[test]
    fn a_body_naming_another_model_or_a_qualified_name_is_refused_and_the_served_name_passes() {
        let token = assertion("models-as-a-service/simulator");
        for (named, refused) in [
            ("qwen3", true),
            ("llm/qwen3", true),
            ("simulator2", true),
            ("Simulator", true),
            // A model server reads a body's model as a served name: qualified forms are not it.
            ("llm/simulator", true),
            ("models-as-a-service/simulator", true),
            ("simulator", false),
        ] {
            let mut exchange = exchange();
            send(
                &mut exchange,
                request_headers("/simulator/v1/chat/completions", Some(&token)),
            );
            let request = format!(r#"{{"model":"{named}","messages":[]}}"#);
            let step = send(
                &mut exchange,
                message(Message::RequestBody(body(request.as_bytes(), true))),
            );
            assert_eq!(
                step.refusal == Some(MeterRefusal::ModelMismatch),
                refused,
                "{named}"
            );
            if refused {
                assert_eq!(refusal(&step).unwrap().0, 400);
                assert_eq!(
                    step.finished.map(|f| f.outcome),
                    Some(MeterOutcome::Refused)
                );
                assert!(exchange.interrupted().is_none(), "{named}: charged nothing");
            }
        }
    }

    #[test]
    fn bodies_a_backend_could_read_differently_and_oversized_bodies_are_refused() {
        let token = assertion("models-as-a-service/simulator");
        let cases: [(&[u8], bool, u32, &str); 5] = [
            (br#"{"stream":"true"}"#, true, 400, "stream_not_boolean"),
            (br#"{"stream":1}"#, true, 400, "stream_not_boolean"),
            (br#"{"temperature":NaN}"#, true, 400, "body_not_json"),
            (br#"{"messages":[]}"#, false, 413, "request_too_large"),
            (&[b' '; 2048], true, 413, "request_too_large"),
        ];
        for (request, end_of_stream, status, code) in cases {
            let mut exchange = Exchange::new(context(MeterSettings {
                max_request_bytes: 1024,
                ..MeterSettings::default()
            }));
            send(
                &mut exchange,
                request_headers("/simulator/v1/chat/completions", Some(&token)),
            );
            let step = send(
                &mut exchange,
                message(Message::RequestBody(body(request, end_of_stream))),
            );
            let (got, answer) = refusal(&step).expect("refused");
            assert_eq!(
                (got, answer["error"]["code"].as_str()),
                (status, Some(code))
            );
            if status == 413 {
                assert!(
                    answer["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("(1024 bytes)")
                );
            }
        }
    }

    #[test]
    fn an_error_status_ends_metering_and_a_compressed_body_is_refused() {
        let mut failing = exchange();
        let token = assertion("models-as-a-service/simulator");
        send(
            &mut failing,
            request_headers("/m/v1/embeddings", Some(&token)),
        );
        let step = send(
            &mut failing,
            message(Message::ResponseHeaders(headers(
                &[(":status", "429")],
                false,
            ))),
        );
        assert_eq!(mode(&step).response_body_mode, BodySendMode::None as i32);
        let finished = step.finished.expect("finished");
        assert_eq!(finished.outcome, MeterOutcome::NotSuccessful);
        assert_eq!(finished.charge, None);

        let mut compressed = exchange();
        send(
            &mut compressed,
            request_headers("/m/v1/embeddings", Some(&token)),
        );
        let step = send(
            &mut compressed,
            message(Message::ResponseHeaders(headers(
                &[(":status", "200"), ("content-encoding", "gzip")],
                false,
            ))),
        );
        assert_eq!(refusal(&step).unwrap().0, 502);
        assert_eq!(step.refusal, Some(MeterRefusal::ResponseEncoded));
    }

    #[test]
    fn a_stream_cut_short_is_charged_what_was_reported_or_an_estimate_never_zero() {
        let mut exchange = started(
            "/claude/v1/messages",
            "models-as-a-service/simulator",
            br#"{"messages":[{"role":"user","content":"sixteen characte"}]}"#,
            "text/event-stream",
        );
        let step = send(
            &mut exchange,
            message(Message::ResponseBody(body(
                b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello there, world\"}}\n\n",
                false,
            ))),
        );
        assert!(
            replaced_body(&step).is_none(),
            "Anthropic streams pass unchanged"
        );

        let finished = exchange.interrupted().expect("interrupted");
        assert_eq!(finished.outcome, MeterOutcome::Interrupted);
        let charge = finished.charge.unwrap();
        assert_eq!(charge.usage.prompt, 12, "the reported prompt");
        assert_eq!(charge.usage.completion, 5, "18 characters streamed");
        assert!(charge.estimated);
        assert!(exchange.interrupted().is_none());

        let mut silent = started(
            "/m/v1/chat/completions",
            "models-as-a-service/simulator",
            br#"{"stream":true,"messages":[{"role":"user","content":"twelve chars"}]}"#,
            "text/event-stream",
        );
        for piece in ["a", "b"] {
            let event =
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{piece}\"}}}}]}}\n\n");
            send(
                &mut silent,
                message(Message::ResponseBody(body(event.as_bytes(), false))),
            );
        }
        let charge = silent.interrupted().unwrap().charge.unwrap();
        assert_eq!(
            (
                charge.usage.prompt,
                charge.usage.completion,
                charge.usage.total
            ),
            (3, 2, 5)
        );
    }

    #[test]
    fn a_response_without_usage_is_charged_an_estimate() {
        let mut exchange = started(
            "/m/invocations",
            "models-as-a-service/simulator",
            br#"{"prompt":"eight ch"}"#,
            "application/json",
        );
        let step = send(
            &mut exchange,
            message(Message::ResponseBody(body(
                br#"{"choices":[{"text":"twelve chars"}]}"#,
                true,
            ))),
        );
        let finished = step.finished.expect("finished");
        assert_eq!(finished.outcome, MeterOutcome::Estimated);
        assert_eq!(finished.endpoint, Endpoint::Other);
        let charge = finished.charge.unwrap();
        assert_eq!(
            (
                charge.usage.prompt,
                charge.usage.completion,
                charge.estimated
            ),
            (2, 3, true)
        );
    }

    #[test]
    fn another_endpoint_is_metered_from_whatever_usage_shape_it_reports() {
        let mut exchange = started(
            "/m/invocations",
            "models-as-a-service/simulator",
            br#"{"messages":[]}"#,
            "application/json",
        );
        let step = send(
            &mut exchange,
            message(Message::ResponseBody(body(
                br#"{"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
                true,
            ))),
        );
        let charge = step.finished.unwrap().charge.unwrap();
        assert_eq!((charge.usage.total, charge.estimated), (9, false));
    }

    #[test]
    fn in_observability_mode_nothing_is_answered_but_tokens_are_metered() {
        let mut exchange = exchange();
        let token = assertion("models-as-a-service/simulator");
        let mut silent = |request: Message| {
            let step = exchange.on_message(
                ProcessingRequest {
                    observability_mode: true,
                    ..message(request)
                },
                NOW,
            );
            assert!(step.reply.is_none());
            step
        };
        silent(Message::RequestHeaders(headers(
            &[
                (":method", "POST"),
                (":path", "/m/v1/embeddings"),
                (HEADER_IDENTITY_ASSERTION, &token),
            ],
            true,
        )));
        silent(Message::ResponseHeaders(headers(
            &[(":status", "200")],
            false,
        )));
        let step = silent(Message::ResponseBody(body(
            br#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
            true,
        )));
        assert_eq!(
            step.finished.and_then(|f| f.charge).map(|c| c.usage.total),
            Some(8)
        );
    }

    #[test]
    fn every_refusal_is_an_openai_shaped_error_with_its_reason() {
        for refusal in MeterRefusal::all() {
            let answer = refusal_response(refusal, 1024);
            let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(body["error"]["code"], refusal.as_str());
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            let status = answer.status.unwrap().code;
            assert!((400..=599).contains(&status), "{refusal:?}");
        }
    }
}
