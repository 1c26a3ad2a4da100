//! Envoy's `envoy.service.ext_proc.v3.ExternalProcessor/Process`: the token meter's adapter.
//!
//! One bidirectional stream per HTTP request. Envoy sends the request headers first, with the
//! dynamic metadata ext_authz stamped (`metadata_context`, namespace
//! `envoy.filters.http.ext_authz`, forwarded by the filter's
//! `metadata_options.forwarding_namespaces.untyped`; Envoy attaches it to every message). The
//! conversation, with the filter configured for headers only (`deploy/envoy/envoy.yaml`):
//!
//! 1. request headers: an inference `POST` (see [`Endpoint::from_path`]) with a `user` and
//!    `selected_subscription_key` in that metadata is metered; anything else (no identity, e.g. a
//!    route without ext_authz, or another path) gets a `mode_override` that turns every later
//!    message off, so it passes untouched. The identity never comes from client headers.
//!    For a metered request we remove `accept-encoding` (a compressed body cannot be read) and
//!    override the modes: response headers SEND, response body STREAMED (chunks pass as they
//!    come, SSE is never buffered whole), and — for chat and legacy completions with
//!    `MAAS_AUTHZ_FORCE_STREAM_USAGE` on — request body BUFFERED_PARTIAL, with `content-length`
//!    removed because the body may change length (Envoy then sends it chunked).
//! 2. request body (only then): [`force_stream_usage`] rewrites a streaming request to ask for
//!    usage; a body larger than Envoy's buffer (not `end_of_stream`) is left alone.
//! 3. response headers: a non-2xx status or a compressed body ends metering (body mode NONE).
//! 4. response body chunks: fed to a [`ResponseMeter`], which may drop OpenAI's usage-only chunk
//!    when the gateway (not the client) asked for it. At `end_of_stream` the usage is observed and
//!    its total charged to the [`TokenSink`], once, after Envoy has its answer.
//!
//! If the stream ends before the response did (client gone, Envoy reset), whatever usage was seen
//! is charged and the response counted as interrupted. Errors never reach the client's response:
//! Envoy runs this filter with `failure_mode_allow: true`.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ProcessingRequest, ProcessingResponse, TrailersResponse, body_mutation,
};
use envoy_types::pb::google::protobuf::value::Kind;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::usage::{
    ChunkAction, Endpoint, MeterOutcome, ResponseMeter, TokenSink, TokenUsage, UsageObserver,
    UsageSubject, force_stream_usage,
};

/// The dynamic-metadata namespace Check's identity arrives under.
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// How the meter treats requests.
#[derive(Debug, Clone, Copy)]
pub struct MeterSettings {
    /// Add `stream_options.include_usage` to streaming chat/completions requests without it
    /// (and strip the usage chunk the client did not ask for from the stream).
    pub force_stream_usage: bool,
}

/// The tonic service for Envoy's ext_proc filter.
pub struct ExtProcService {
    sink: Arc<dyn TokenSink>,
    observer: Arc<dyn UsageObserver>,
    settings: MeterSettings,
}

impl std::fmt::Debug for ExtProcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtProcService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ExtProcService {
    pub fn new(
        sink: Arc<dyn TokenSink>,
        observer: Arc<dyn UsageObserver>,
        settings: MeterSettings,
    ) -> Self {
        Self {
            sink,
            observer,
            settings,
        }
    }
}

type ReplyStream = std::pin::Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReplyStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, outbound) = mpsc::channel::<Result<ProcessingResponse, Status>>(8);
        let mut exchange = Exchange::new(self.settings);
        let (sink, observer) = (self.sink.clone(), self.observer.clone());
        // The conversation runs on its own task so that charging never waits on, nor is lost
        // with, the response stream Envoy reads.
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended with an error");
                        break;
                    }
                };
                let step = exchange.on_message(message);
                if let Some(forced) = step.forced_stream_usage {
                    observer.observe_forced_stream_usage(forced);
                }
                if let Some(reply) = step.reply {
                    // Envoy gone: keep reading, so the end of the stream is seen and charged.
                    let _ = replies.send(Ok(reply)).await;
                }
                if let Some(finished) = step.finished {
                    settle(finished, sink.as_ref(), observer.as_ref()).await;
                }
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

/// Observes a finished response and charges its tokens.
async fn settle(finished: Finished, sink: &dyn TokenSink, observer: &dyn UsageObserver) {
    observer.observe_response(finished.endpoint, finished.outcome, finished.usage.as_ref());
    tracing::debug!(
        user = %finished.subject.user,
        subscription = %finished.subject.subscription_key,
        endpoint = finished.endpoint.as_str(),
        outcome = finished.outcome.as_str(),
        tokens = finished.usage.map_or(0, |u| u.total),
        "response metered"
    );
    if let Some(usage) = finished.usage.filter(|u| u.total > 0) {
        sink.charge(&finished.subject, usage.total).await;
    }
}

/// A response whose metering is over.
#[derive(Debug)]
struct Finished {
    subject: UsageSubject,
    endpoint: Endpoint,
    outcome: MeterOutcome,
    usage: Option<TokenUsage>,
}

/// What one message leads to.
#[derive(Debug, Default)]
struct Step {
    reply: Option<ProcessingResponse>,
    forced_stream_usage: Option<Endpoint>,
    finished: Option<Finished>,
}

/// The state of one HTTP request/response.
#[derive(Debug)]
struct Exchange {
    settings: MeterSettings,
    metered: Option<MeteredExchange>,
}

#[derive(Debug)]
struct MeteredExchange {
    subject: UsageSubject,
    endpoint: Endpoint,
    /// The gateway added `include_usage`: the client gets no usage chunk it did not ask for.
    forced_stream_usage: bool,
    meter: Option<ResponseMeter>,
    finished: bool,
}

impl MeteredExchange {
    fn finish(&mut self, outcome: MeterOutcome) -> Option<Finished> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let usage = self.meter.as_ref().and_then(|m| m.metered().usage);
        let outcome = match (outcome, usage) {
            (MeterOutcome::Metered, None) => MeterOutcome::NoUsage,
            (outcome, _) => outcome,
        };
        Some(Finished {
            subject: self.subject.clone(),
            endpoint: self.endpoint,
            outcome,
            usage,
        })
    }
}

impl Exchange {
    fn new(settings: MeterSettings) -> Self {
        Self {
            settings,
            metered: None,
        }
    }

    fn on_message(&mut self, message: ProcessingRequest) -> Step {
        let silent = message.observability_mode;
        let mut step = match message.request {
            Some(Message::RequestHeaders(headers)) => {
                self.on_request_headers(&headers, message.metadata_context.as_ref())
            }
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
        // In observability mode Envoy ignores replies; metering goes on.
        if silent {
            step.reply = None;
        }
        step
    }

    fn on_request_headers(&mut self, headers: &HttpHeaders, metadata: Option<&Metadata>) -> Step {
        let map = headers.headers.as_ref();
        let endpoint = (header(map, ":method") == Some("POST"))
            .then(|| header(map, ":path").and_then(Endpoint::from_path))
            .flatten();
        let (Some(endpoint), Some(subject)) = (endpoint, subject_from(metadata)) else {
            return Step {
                reply: Some(ProcessingResponse {
                    mode_override: Some(pass_through_mode()),
                    response: Some(Reply::RequestHeaders(HeadersResponse::default())),
                    ..Default::default()
                }),
                ..Step::default()
            };
        };
        let read_request_body = self.settings.force_stream_usage
            && endpoint.accepts_stream_options()
            && !headers.end_of_stream;
        self.metered = Some(MeteredExchange {
            subject,
            endpoint,
            forced_stream_usage: false,
            meter: None,
            finished: false,
        });
        let mut remove_headers = vec!["accept-encoding".to_owned()];
        if read_request_body {
            remove_headers.push("content-length".to_owned());
        }
        Step {
            reply: Some(ProcessingResponse {
                mode_override: Some(metering_mode(read_request_body)),
                response: Some(Reply::RequestHeaders(HeadersResponse {
                    response: Some(CommonResponse {
                        header_mutation: Some(HeaderMutation {
                            remove_headers,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                })),
                ..Default::default()
            }),
            ..Step::default()
        }
    }

    fn on_request_body(&mut self, body: &HttpBody) -> Step {
        let mut step = Step::default();
        let mut response = BodyResponse::default();
        if let Some(metered) = self.metered.as_mut()
            && body.end_of_stream
            && let Some(rewritten) = force_stream_usage(&body.body)
        {
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
            if !successful || encoded {
                response.mode_override = Some(ProcessingMode {
                    response_body_mode: BodySendMode::None as i32,
                    response_trailer_mode: HeaderSendMode::Skip as i32,
                    ..Default::default()
                });
                step.finished = metered.finish(if successful {
                    MeterOutcome::Encoded
                } else {
                    MeterOutcome::NotSuccessful
                });
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

    /// The stream ended: a metered response not yet finished was cut short.
    fn interrupted(&mut self) -> Option<Finished> {
        self.metered
            .as_mut()
            .and_then(|m| m.finish(MeterOutcome::Interrupted))
    }
}

/// Check's identity from the ext_authz metadata Envoy forwarded; `None` unless both `user` and
/// `selected_subscription_key` are non-empty strings.
fn subject_from(metadata: Option<&Metadata>) -> Option<UsageSubject> {
    let fields = &metadata?.filter_metadata.get(EXT_AUTHZ_NAMESPACE)?.fields;
    let text = |name: &str| match fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(value) if !value.is_empty() => Some(value.clone()),
        _ => None,
    };
    Some(UsageSubject {
        user: text("user")?,
        subscription_key: text("selected_subscription_key")?,
    })
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

/// Metering: response headers and the response body as it streams; the request body (whole,
/// up to Envoy's buffer limit) only when it may need `include_usage`.
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
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

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

    fn identity(user: &str, subscription_key: &str) -> Metadata {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        Metadata {
            filter_metadata: HashMap::from([(
                EXT_AUTHZ_NAMESPACE.to_owned(),
                Struct {
                    fields: HashMap::from([
                        ("user".to_owned(), text(user)),
                        (
                            "selected_subscription_key".to_owned(),
                            text(subscription_key),
                        ),
                    ]),
                },
            )]),
            ..Default::default()
        }
    }

    const SUBSCRIPTION_KEY: &str = "maas/premium@llm/simulator";

    fn message(request: Message, metadata: Option<Metadata>) -> ProcessingRequest {
        ProcessingRequest {
            metadata_context: metadata,
            request: Some(request),
            ..Default::default()
        }
    }

    fn request_headers(path: &str, metadata: Option<Metadata>) -> ProcessingRequest {
        message(
            Message::RequestHeaders(headers(
                &[
                    (":method", "POST"),
                    (":path", path),
                    ("content-type", "application/json"),
                ],
                false,
            )),
            metadata,
        )
    }

    fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
        HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        }
    }

    fn mode(step: &Step) -> ProcessingMode {
        step.reply
            .as_ref()
            .and_then(|r| r.mode_override)
            .expect("a mode override")
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

    fn exchange() -> Exchange {
        Exchange::new(MeterSettings {
            force_stream_usage: true,
        })
    }

    #[test]
    fn a_request_without_check_metadata_passes_untouched_whatever_its_headers_say() {
        let mut exchange = exchange();
        let mut request = request_headers("/simulator/v1/chat/completions", None);
        if let Some(Message::RequestHeaders(h)) = request.request.as_mut() {
            let map = h.headers.as_mut().unwrap();
            map.headers.push(HeaderValue {
                key: "x-maas-username".to_owned(),
                raw_value: b"mallory".to_vec(),
                ..Default::default()
            });
        }

        let step = exchange.on_message(request);

        assert_eq!(mode(&step), pass_through_mode());
        assert!(exchange.metered.is_none());
        assert!(exchange.interrupted().is_none());
    }

    #[test]
    fn identity_needs_both_user_and_subscription_key() {
        assert!(subject_from(Some(&identity("alice", SUBSCRIPTION_KEY))).is_some());
        assert!(subject_from(Some(&identity("", SUBSCRIPTION_KEY))).is_none());
        assert!(subject_from(Some(&identity("alice", ""))).is_none());
        assert!(subject_from(Some(&Metadata::default())).is_none());
        assert!(subject_from(None).is_none());
    }

    #[test]
    fn other_paths_and_methods_are_not_metered() {
        for (method, path) in [
            ("POST", "/simulator/v1/models"),
            ("GET", "/simulator/v1/chat/completions"),
            ("POST", "/simulator/v1/responses/resp_1"),
        ] {
            let mut exchange = exchange();
            let step = exchange.on_message(message(
                Message::RequestHeaders(headers(&[(":method", method), (":path", path)], false)),
                Some(identity("alice", SUBSCRIPTION_KEY)),
            ));
            assert_eq!(mode(&step), pass_through_mode(), "{method} {path}");
        }
    }

    #[test]
    fn a_streaming_chat_request_is_rewritten_and_its_usage_chunk_stripped_and_charged() {
        let mut exchange = exchange();
        let metadata = Some(identity("alice", SUBSCRIPTION_KEY));

        let step = exchange.on_message(request_headers(
            "/simulator/v1/chat/completions",
            metadata.clone(),
        ));
        assert_eq!(mode(&step), metering_mode(true));
        let step = exchange.on_message(message(
            Message::RequestBody(body(br#"{"model":"m","stream":true,"messages":[]}"#, true)),
            metadata.clone(),
        ));
        let rewritten: serde_json::Value =
            serde_json::from_slice(&replaced_body(&step).expect("rewritten body")).unwrap();
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        assert_eq!(step.forced_stream_usage, Some(Endpoint::ChatCompletions));

        exchange.on_message(message(
            Message::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "text/event-stream")],
                false,
            )),
            metadata.clone(),
        ));
        let content = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n";
        let step = exchange.on_message(message(
            Message::ResponseBody(body(content, false)),
            metadata.clone(),
        ));
        assert!(step.finished.is_none());
        assert_eq!(
            replaced_body(&step).unwrap(),
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"
        );
        let step = exchange.on_message(message(
            Message::ResponseBody(body(b"data: [DONE]\n\n", true)),
            metadata,
        ));

        assert_eq!(replaced_body(&step).unwrap(), b"data: [DONE]\n\n");
        let finished = step.finished.expect("charged at end of stream");
        assert_eq!(finished.outcome, MeterOutcome::Metered);
        assert_eq!(finished.usage.map(|u| u.total), Some(3));
        assert_eq!(finished.subject.user, "alice");
        assert_eq!(finished.subject.subscription_key, SUBSCRIPTION_KEY);
        assert!(exchange.interrupted().is_none(), "charged once");
    }

    #[test]
    fn with_forcing_off_the_request_body_is_never_read() {
        let mut exchange = Exchange::new(MeterSettings {
            force_stream_usage: false,
        });
        let step = exchange.on_message(request_headers(
            "/m/v1/chat/completions",
            Some(identity("alice", SUBSCRIPTION_KEY)),
        ));
        assert_eq!(mode(&step), metering_mode(false));
    }

    #[test]
    fn an_error_status_or_a_compressed_body_ends_metering_at_the_headers() {
        for (status, encoding, outcome) in [
            ("429", "identity", MeterOutcome::NotSuccessful),
            ("200", "gzip", MeterOutcome::Encoded),
        ] {
            let mut exchange = exchange();
            let metadata = Some(identity("alice", SUBSCRIPTION_KEY));
            exchange.on_message(request_headers("/m/v1/embeddings", metadata.clone()));
            let step = exchange.on_message(message(
                Message::ResponseHeaders(headers(
                    &[(":status", status), ("content-encoding", encoding)],
                    false,
                )),
                metadata,
            ));
            assert_eq!(
                mode(&step).response_body_mode,
                BodySendMode::None as i32,
                "{status}"
            );
            let finished = step.finished.expect("finished");
            assert_eq!(finished.outcome, outcome);
            assert_eq!(finished.usage, None);
        }
    }

    #[test]
    fn a_stream_cut_short_is_interrupted_and_charges_what_was_seen() {
        let mut exchange = exchange();
        let metadata = Some(identity("alice", SUBSCRIPTION_KEY));
        exchange.on_message(request_headers("/claude/v1/messages", metadata.clone()));
        exchange.on_message(message(
            Message::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "text/event-stream")],
                false,
            )),
            metadata.clone(),
        ));
        let step = exchange.on_message(message(
            Message::ResponseBody(body(
                b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
                false,
            )),
            metadata,
        ));
        assert!(
            replaced_body(&step).is_none(),
            "Anthropic streams pass unchanged"
        );

        let finished = exchange.interrupted().expect("interrupted");
        assert_eq!(finished.outcome, MeterOutcome::Interrupted);
        assert_eq!(finished.usage.map(|u| u.total), Some(13));
        assert!(exchange.interrupted().is_none());
    }

    #[test]
    fn a_json_body_without_usage_is_counted_as_no_usage() {
        let mut exchange = exchange();
        let metadata = Some(identity("alice", SUBSCRIPTION_KEY));
        exchange.on_message(request_headers("/m/v1/responses", metadata.clone()));
        exchange.on_message(message(
            Message::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "application/json")],
                false,
            )),
            metadata.clone(),
        ));
        let step = exchange.on_message(message(
            Message::ResponseBody(body(br#"{"output":[]}"#, true)),
            metadata,
        ));
        let finished = step.finished.expect("finished");
        assert_eq!(finished.outcome, MeterOutcome::NoUsage);
    }

    #[test]
    fn in_observability_mode_nothing_is_answered_but_tokens_are_metered() {
        let mut exchange = exchange();
        let metadata = Some(identity("alice", SUBSCRIPTION_KEY));
        let mut silent = |request: Message| {
            let step = exchange.on_message(ProcessingRequest {
                observability_mode: true,
                ..message(request, metadata.clone())
            });
            assert!(step.reply.is_none());
            step
        };
        silent(Message::RequestHeaders(headers(
            &[(":method", "POST"), (":path", "/m/v1/embeddings")],
            false,
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
            step.finished.and_then(|f| f.usage).map(|u| u.total),
            Some(8)
        );
    }
}
