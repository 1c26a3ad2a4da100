//! maas-authz-do-nothing: the baseline of `scripts/bench-check.sh`, the plain generated
//! envoy-types tonic ext_authz server with default settings (no custom sockets, codecs or
//! tuning) answering every Check OK with one header, in its own process.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::google::rpc;

/// OK with one header, as an authorizer that stamps the caller's name would.
#[derive(Debug, Clone, Copy)]
struct DoNothing;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(text) => text.parse().map_err(|_| {
            anyhow::anyhow!("usage: maas-authz-do-nothing HOST:PORT (got {text:?})")
        })?,
        None => anyhow::bail!("usage: maas-authz-do-nothing HOST:PORT"),
    };
    println!("do-nothing ext_authz listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(DoNothing))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
