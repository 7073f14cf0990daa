//! `rota-sim`: the emulated Kubernetes API server and, with `--nodes N`, the simulated cluster
//! around it, as a process.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rota_sim::apiserver::Store;
use rota_sim::apiserver::serve::{self, ServeOptions};
use rota_sim::cluster::{Cluster, ClusterArgs};
use rota_sim::demo::campaign::CampaignArgs;
use rota_sim::demo::cli::DemoArgs;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[clap(
    name = "rota-sim",
    version,
    about = "rota on an emulated cluster: the demo, and the emulated Kubernetes API server",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Log format.
    #[clap(long, env = "ROTA_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"], global = true)]
    log_format: String,
    #[clap(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: the demo's flags.
    #[clap(flatten)]
    demo: DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Roll maintenance through an emulated cluster with rota (the default).
    Demo(DemoArgs),
    /// Run rota through many seeded scenarios with random faults; exit 1 if any broke an
    /// invariant or left a healthy node unfinished.
    Campaign(CampaignArgs),
    /// Serve the emulated API server until SIGINT/SIGTERM.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[clap(flatten)]
    api: ServeOptions,
    #[clap(flatten)]
    cluster: ClusterArgs,
}

fn init_tracing(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal, exiting now");
        std::process::exit(130);
    });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Demo(cli.demo)) {
        Command::Demo(args) => {
            // The live view owns the terminal: only problems are logged. The replicas' start-up
            // warnings (no node name, plain text) describe the demo's set-up, not a problem.
            init_tracing(
                &cli.log_format,
                "warn,rota_coordinator::drain=error,rota_coordinator::replica=error",
            );
            let code = rota_sim::demo::cli::run(args)
                .await
                .context("the demo failed")?;
            return Ok(std::process::ExitCode::from(code));
        }
        Command::Campaign(args) => {
            // One line per run is the output; the faults make every component complain, by
            // design, so only errors are logged unless RUST_LOG asks for more; kube's client logs
            // every injected 5xx as an error.
            init_tracing(&cli.log_format, "error,kube_client=off");
            let code = rota_sim::demo::campaign::run(args)
                .await
                .context("the campaign failed")?;
            return Ok(std::process::ExitCode::from(code));
        }
        Command::Serve(args) => {
            init_tracing(&cli.log_format, "info");
            let store = Store::new();
            let handle = serve::start(store.clone(), &args.api)
                .await
                .context("starting the API server")?;
            let faults = args.cluster.faults();
            handle.faults().set(faults.api.clone());
            let cluster = if args.cluster.nodes > 0 {
                let scenario = args.cluster.scenario();
                let mut cluster = Cluster::start(store, &scenario, args.cluster.timings(), faults)
                    .context("starting the simulated cluster")?;
                cluster.drive_api_faults(handle.faults().clone());
                Some(cluster)
            } else {
                None
            };
            println!("{}", handle.url());
            shutdown_signal().await?;
            tracing::info!("shutting down");
            if let Some(cluster) = cluster {
                cluster.shutdown().await;
            }
            handle.shutdown().await;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
