//! maas-authz-do-nothing: the baseline of `scripts/bench-check.sh`, the plain generated
//! envoy-types tonic ext_authz server with default settings (no custom sockets, codecs or
//! tuning) answering every Check OK with one header, in its own process.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

#[path = "../do_nothing.rs"]
mod do_nothing;

use do_nothing::DoNothing;

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
