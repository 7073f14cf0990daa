//! `rota-coordinator`: one replica, built by [`rota_coordinator::replica`], until a signal.

use clap::Parser;
use rota_coordinator::config::Config;
use rota_coordinator::replica::Replica;
use rota_coordinator::{shutdown, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log.log_format, config.log.log_filter.as_deref())?;
    let stop = CancellationToken::new();
    let signals = shutdown::signals()?;
    let grace = config.shutdown.shutdown_grace;
    let replica = Replica::builder(config).stop(stop.clone());
    let run = async move { replica.start().await?.run().await };
    Ok(shutdown::run_until_signalled(run, stop, signals, grace).await??)
}
