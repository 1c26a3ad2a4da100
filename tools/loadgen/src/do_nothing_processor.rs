//! The do-nothing ext_proc service of `maas-authz-do-nothing`: the floor under any token meter
//! (`scripts/bench-envoy.sh`), what the ext_proc exchange itself costs Envoy and a processor.

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeadersResponse, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};

/// An ext_proc server that does no work: every message Envoy sends is answered "continue,
/// unchanged" on the same stream, so a benchmark can show what the ext_proc exchange itself costs
/// (the floor under any token meter with the same processing mode).
#[derive(Debug, Clone, Copy)]
pub struct DoNothingProcessor;

type ProcessorReplies = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>,
>;

#[async_trait::async_trait]
impl ExternalProcessor for DoNothingProcessor {
    type ProcessStream = ProcessorReplies;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        // The state is the inbound stream until it ends or breaks; a broken one ends the replies
        // with its error.
        let inbound = Some(request.into_inner());
        let replies = futures::stream::unfold(inbound, |inbound| async move {
            let mut inbound = inbound?;
            match inbound.message().await {
                Ok(Some(message)) => {
                    let reply = continue_unchanged(message);
                    let next = reply.is_ok().then_some(inbound);
                    Some((reply, next))
                }
                Ok(None) => None,
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}

/// The reply that lets Envoy carry on with the message's phase unchanged.
fn continue_unchanged(message: ProcessingRequest) -> Result<ProcessingResponse, tonic::Status> {
    let common = || CommonResponse::default();
    let response = match message.request {
        Some(Message::RequestHeaders(_)) => Reply::RequestHeaders(HeadersResponse {
            response: Some(common()),
        }),
        Some(Message::ResponseHeaders(_)) => Reply::ResponseHeaders(HeadersResponse {
            response: Some(common()),
        }),
        Some(Message::RequestBody(_)) => Reply::RequestBody(BodyResponse {
            response: Some(common()),
        }),
        Some(Message::ResponseBody(_)) => Reply::ResponseBody(BodyResponse {
            response: Some(common()),
        }),
        Some(Message::RequestTrailers(_)) => Reply::RequestTrailers(TrailersResponse::default()),
        Some(Message::ResponseTrailers(_)) => Reply::ResponseTrailers(TrailersResponse::default()),
        None => {
            return Err(tonic::Status::invalid_argument(
                "a ProcessingRequest without a message",
            ));
        }
    };
    Ok(ProcessingResponse {
        response: Some(response),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, HttpTrailers};

    use super::*;

    fn kind(reply: &ProcessingResponse) -> &'static str {
        match reply.response {
            Some(Reply::RequestHeaders(_)) => "request headers",
            Some(Reply::ResponseHeaders(_)) => "response headers",
            Some(Reply::RequestBody(_)) => "request body",
            Some(Reply::ResponseBody(_)) => "response body",
            Some(Reply::RequestTrailers(_)) => "request trailers",
            Some(Reply::ResponseTrailers(_)) => "response trailers",
            _ => "something else",
        }
    }

    #[test]
    fn every_message_is_answered_in_its_own_phase_without_a_change() {
        let cases = [
            (
                Message::RequestHeaders(HttpHeaders::default()),
                "request headers",
            ),
            (
                Message::ResponseHeaders(HttpHeaders::default()),
                "response headers",
            ),
            (Message::RequestBody(HttpBody::default()), "request body"),
            (Message::ResponseBody(HttpBody::default()), "response body"),
            (
                Message::RequestTrailers(HttpTrailers::default()),
                "request trailers",
            ),
            (
                Message::ResponseTrailers(HttpTrailers::default()),
                "response trailers",
            ),
        ];
        for (message, expected) in cases {
            let reply = continue_unchanged(ProcessingRequest {
                request: Some(message),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(kind(&reply), expected);
            assert_eq!(reply.mode_override, None, "{expected}: no mode change");
            assert_eq!(reply.dynamic_metadata, None, "{expected}: no metadata");
        }
    }

    #[test]
    fn a_request_without_a_message_is_refused() {
        let status = continue_unchanged(ProcessingRequest::default()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
