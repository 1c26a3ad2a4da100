//! maas-authz-pass-through: a plain HTTP/1 reverse proxy that forwards every request to one
//! upstream and streams the answer back, doing nothing else (hyper with default settings, and
//! TCP_NODELAY on both sides as every proxy sets it: without it an SSE event written after
//! another waits for the peer's delayed ACK, ~40 ms).
//! `scripts/bench-envoy.sh` puts it between Envoy and the model server: the floor under a token
//! meter that would sit on the model route as a proxy hop instead of Envoy's ext_proc.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

const USAGE: &str = "usage: maas-authz-pass-through LISTEN_HOST:PORT UPSTREAM_HOST:PORT";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!(USAGE);
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| anyhow::anyhow!("{USAGE} (LISTEN_HOST:PORT {listen:?} is not an address)"))?;
    let upstream: SocketAddr = upstream.parse().map_err(|_| {
        anyhow::anyhow!("{USAGE} (UPSTREAM_HOST:PORT {upstream:?} is not an address)")
    })?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("pass-through proxy listening on {listen}, forwarding to {upstream}");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        // A connection reset before it could be set up is the client's loss, not the proxy's end.
        if stream.set_nodelay(true).is_err() {
            continue;
        }
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
                let client = client.clone();
                let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let uri = format!("http://{upstream}{target}").parse::<Uri>();
                async move {
                    *request.uri_mut() = uri?;
                    anyhow::Ok(client.request(request).await?)
                }
            });
            // A client that goes away mid-request ends its connection; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
