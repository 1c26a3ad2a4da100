//! maas-authz-do-nothing: the baseline of `scripts/bench-check.sh`, the plain generated
//! envoy-types tonic ext_authz server with default settings (no custom sockets, codecs or
//! tuning) answering every Check OK with one header, in its own process; beside it, on the same
//! port, a do-nothing ext_proc service that lets every message through unchanged.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

#[path = "../do_nothing.rs"]
mod do_nothing;

#[path = "../do_nothing_processor.rs"]
mod do_nothing_processor;

use do_nothing::DoNothing;
use do_nothing_processor::DoNothingProcessor;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(text) => text.parse().map_err(|_| {
            anyhow::anyhow!("usage: maas-authz-do-nothing HOST:PORT (got {text:?})")
        })?,
        None => anyhow::bail!("usage: maas-authz-do-nothing HOST:PORT"),
    };
    println!("do-nothing ext_authz and ext_proc listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(DoNothing))
        .add_service(ExternalProcessorServer::new(DoNothingProcessor))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
