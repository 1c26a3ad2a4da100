//! The `maas-authz` binary: parses configuration, sets up logging, and hands over to the library.

use clap::Parser;
use maas_authz::config::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.logging.log_format);
    let outcome = match cli.command {
        Command::Serve(config) => maas_authz::serve::run(*config).await,
        Command::Migrate(database) => {
            maas_authz::app::migrate(&database, database.db_connect_timeout).await
        }
        Command::Keys(keys) => {
            maas_authz::cli::run_keys(keys, &mut std::io::stdout(), &mut std::io::stderr()).await
        }
        Command::Cleanup(database) => maas_authz::cli::run_cleanup(&database).await,
        Command::Check(check) => return check_exit_code(&check).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `check`'s exit code: 0 allowed, 1 denied, 2 no decision (clap's code for bad arguments too).
async fn check_exit_code(check: &maas_authz::config::CheckCommand) -> std::process::ExitCode {
    match maas_authz::cli::check::run_check(check, &mut std::io::stdout()).await {
        Ok(decision) if decision.allowed => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("maas-authz check: error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
