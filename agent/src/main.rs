//! `rota-agent`: see [`rota_agent::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    let cli = rota_agent::cli::Cli::parse();
    Ok(rota_agent::cli::main(cli)?)
}
