//! The do-nothing ext_authz service both do-nothing servers answer with: OK with one header, as
//! an authorizer that stamps the caller's name would (the in-process baseline of the loadgen and
//! the separate `maas-authz-do-nothing` process of `scripts/bench-check.sh`).

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::google::rpc;

/// An ext_authz server that does no work: OK with one header, for the comparison.
#[derive(Debug, Clone, Copy)]
pub struct DoNothing;

#[async_trait::async_trait]
impl Authorization for DoNothing {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-maas-username".to_owned(),
                        value: "baseline".to_owned(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            dynamic_metadata: None,
        }))
    }
}
