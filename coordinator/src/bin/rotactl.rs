//! `rotactl`: see [`rota_coordinator::rotactl`].

use std::process::ExitCode;

use clap::Parser;
use rota_coordinator::rotactl::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Warnings of the Kubernetes client (e.g. a retried watch) go to stderr; RUST_LOG tunes it.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("rotactl: {error}");
            ExitCode::FAILURE
        }
    }
}
