//! maas-simulator: a stand-in multi-model OpenAI- and Anthropic-compatible server (and optionally a do-nothing ext_authz server) for the Envoy demo, tests and benchmarks.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use maas_simulator::{ServedModels, SimulatorConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Stand-in multi-model server (OpenAI and Anthropic APIs, read as lax Python backends read them)
/// for the maas-authz gateway demo and tests.
#[derive(Debug, Parser)]
#[command(name = "maas-simulator", version)]
struct Args {
    /// Where the model server listens (`/v1/chat/completions`, `/v1/messages`, … optionally
    /// after `/<model>/` or `/<namespace>/<model>/`).
    #[arg(
        long,
        env = "MAAS_SIMULATOR_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8000"
    )]
    addr: SocketAddr,
    /// The models served, comma-separated: a request's body `model`, else its path's
    /// `/<model>/v1/...` prefix, picks one; else `simulator` (or the first listed) serves.
    #[arg(
        long,
        env = "MAAS_SIMULATOR_MODELS",
        value_name = "MAAS_SIMULATOR_MODELS",
        default_value = "simulator,qwen3"
    )]
    models: ServedModels,
    /// Also serve a do-nothing ext_authz gRPC server (allows everything) on this address:
    /// the baseline for `scripts/bench-envoy.sh`.
    #[arg(long, value_name = "HOST:PORT")]
    noop_ext_authz: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on --addr {}", args.addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        models = %args.models.names().join(","),
        "simulator serving"
    );
    let config = SimulatorConfig {
        models: args.models,
    };
    let simulator = tokio::spawn(maas_simulator::serve_simulator_with(
        listener,
        config,
        stopped(),
    ));

    let noop = match args.noop_ext_authz {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --noop-ext-authz {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "do-nothing ext_authz serving");
            Some(tokio::spawn(maas_simulator::serve_noop_ext_authz(
                listener,
                stopped(),
            )))
        }
        None => None,
    };

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    simulator
        .await
        .context("simulator task panicked")?
        .context("simulator failed")?;
    if let Some(noop) = noop {
        noop.await
            .context("ext_authz task panicked")?
            .context("do-nothing ext_authz failed")?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
