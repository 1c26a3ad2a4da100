//! A do-nothing Envoy ext_authz server that allows every request: the baseline for measuring what maas-authz adds behind Envoy.

use std::future::Future;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::google::rpc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Copy)]
struct AllowAll;

#[async_trait::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok as i32,
                ..Default::default()
            }),
            dynamic_metadata: None,
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        }))
    }
}

/// Serves `envoy.service.auth.v3.Authorization/Check`, answering OK to everything, until
/// `shutdown` resolves.
pub async fn serve_noop_ext_authz(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(AllowAll))
        // Served on the same sockets as maas-authz's gRPC port, so a comparison differs only in
        // the work done per Check.
        .serve_with_incoming_shutdown(maas_authz::grpc::socket::copying(incoming), shutdown)
        .await
}
