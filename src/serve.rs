//! `maas-authz serve`: builds the [`Application`] and runs it until SIGTERM or Ctrl-C.

use crate::app::Application;
use crate::config::ServeConfig;

/// Runs until SIGTERM or Ctrl-C, then drains and stops.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let application = Application::build(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    application.shutdown().await?;
    tracing::info!("stopped");
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
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
