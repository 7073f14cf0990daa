//! `rota-agent`: see [`rota_agent::cli`].

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use rota_agent::cli::Cli;

fn main() -> anyhow::Result<ExitCode> {
    // The matches, not only the parsed values: `check` tells flags from defaults.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok(rota_agent::cli::main(cli, &matches)?)
}
