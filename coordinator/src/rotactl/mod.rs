//! `rotactl`: the on-call engineer's view of rota and their levers, through the Kubernetes API
//! with the user's own kubeconfig, so that Kubernetes RBAC decides who may do what.
//!
//! - [`status`]: every node's state, slot and token, queue position and why it waits, read from
//!   the `rota.dev/` node annotations and the MaintenancePolicies' status.
//! - [`actions`]: `reboot`/`upgrade`/`kubelet-restart` (the `rota.dev/maintenance-requested`
//!   annotation the coordinator turns into a manual request), `pause`/`resume` (`spec.paused`)
//!   and `release` (`rota.dev/release=true`).
//! - [`history`]: a node's Events from `events.k8s.io/v1` and `core/v1`, oldest first;
//! - [`records`]: the MaintenanceRecords (`history`) and the change report per pool (`report`).
//! - [`watch`]: the rollout's progress, redrawn on every change (watches, no polling).
//!
//! `rotactl` never talks to the coordinator directly: everything it writes is an annotation or
//! a spec field the coordinator reads, so it also works while the coordinator is failing over.

pub mod actions;
pub mod history;
pub mod plan;
pub mod records;
pub mod status;
pub mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use rota_core::controller::annotations::ManualRequest;

/// Errors of `rotactl`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable Kubernetes configuration.
    #[error("loading the Kubernetes configuration: {0}")]
    Config(String),
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// The node does not exist.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// The policy does not exist, or none was named where several exist.
    #[error("{0}")]
    Policy(String),
    /// The user did not confirm a destructive action.
    #[error("not confirmed; nothing changed (pass --yes to skip the question)")]
    NotConfirmed,
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// Encoding JSON output failed.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `watch` ran into its `--timeout` before the rollout was done.
    #[error("the rollout was not done within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// Wraps an API error with what was being done.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            what: what.into(),
            source,
        }
    }
}

/// Result alias of `rotactl`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// rota's command line for humans: what every node is doing, and the levers to reboot, pause,
/// resume and release. Works through the Kubernetes API with your kubeconfig.
#[derive(Debug, Parser)]
#[command(name = "rotactl", version)]
pub struct Cli {
    /// Kubeconfig file (default: `KUBECONFIG`, else `~/.kube/config`, else in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

/// Output formats of `history`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum HistoryOutput {
    /// Human-readable tables.
    #[default]
    Table,
    /// JSON: `{"records": [...], "events": [...]}`.
    Json,
    /// CSV of the records, for spreadsheets and change tickets.
    Csv,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every node's state, slot (phase and fencing token), since when, queue position and why
    /// it waits; and each pool's progress.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only nodes of this pool (MaintenancePolicy).
        #[arg(long, value_parser = object_name)]
        pool: Option<String>,
        /// Only nodes that are queued, hold a slot, or have a pending request or release.
        #[arg(long)]
        active: bool,
    },
    /// Reboot a node safely, now: queued ahead of automatic maintenance (skips windows, not
    /// blackouts), drained with its PodDisruptionBudgets respected.
    Reboot {
        /// The node.
        #[arg(value_parser = object_name)]
        node: String,
    },
    /// Upgrade a node's packages (then reboot if the upgrade requires it), ahead of automatic
    /// maintenance.
    Upgrade {
        /// The node.
        #[arg(value_parser = object_name)]
        node: String,
        /// Security updates only.
        #[arg(long)]
        security_only: bool,
    },
    /// Restart a node's kubelet, drained first, ahead of automatic maintenance.
    KubeletRestart {
        /// The node.
        #[arg(value_parser = object_name)]
        node: String,
    },
    /// Stop admitting nodes of a pool (nodes in maintenance finish).
    Pause {
        /// The MaintenancePolicy (may be left out when there is exactly one).
        #[arg(value_parser = object_name)]
        policy: Option<String>,
    },
    /// Resume a paused pool; also closes an open circuit breaker.
    Resume {
        /// The MaintenancePolicy (may be left out when there is exactly one).
        #[arg(value_parser = object_name)]
        policy: Option<String>,
        /// How long to wait for the coordinator to see the pause when closing a circuit
        /// breaker.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Force-release a node's slot or request (e.g. a slot stuck on a broken node), so that its
    /// capacity is free again.
    Release {
        /// The node.
        #[arg(value_parser = object_name)]
        node: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// What rota did: the maintenance records (one per maintenance, kept for months) of a
    /// node, or of every node with `--since`; with a node, also its Events (rota's and everyone
    /// else's, kept about an hour), oldest first.
    History {
        /// The node (every node when left out).
        #[arg(value_parser = object_name)]
        node: Option<String>,
        /// Only maintenances admitted within this long, e.g. `7d`, `12h`.
        #[arg(long, value_parser = parse_since)]
        since: Option<Duration>,
        /// Output format (`csv`: the records only).
        #[arg(short = 'o', long, value_enum, default_value_t = HistoryOutput::Table)]
        output: HistoryOutput,
    },
    /// A change report from the maintenance records, per pool: nodes maintained, failures,
    /// median cycle time (admission to verification), security updates applied.
    Report {
        /// The period: maintenances admitted within this long, e.g. `30d`.
        #[arg(long, default_value = "30d", value_parser = parse_since)]
        since: Duration,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// What each pool's Kubernetes upgrade rollout would do and in which order: per node the
    /// operation, versions from and to, whether an etcd snapshot is needed, and what blocks it
    /// now. Changes nothing.
    Plan {
        /// Only this pool (MaintenancePolicy).
        #[arg(value_parser = object_name)]
        pool: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Upgrade a pool's nodes to a Kubernetes version the kubeadm way (sets the policy's
    /// `upgrade.kubernetesVersion`): control plane first, one minor at a time, an etcd snapshot
    /// before each control-plane node. A downgrade is refused before anything changes.
    KubernetesUpgrade {
        /// The target version, e.g. `1.32.4`.
        #[arg(long)]
        to: String,
        /// The MaintenancePolicy (may be left out when there is exactly one).
        #[arg(value_parser = object_name)]
        pool: Option<String>,
    },
    /// Follow the rollout: each pool's progress and the nodes in maintenance, redrawn on every
    /// change.
    Watch {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Exit (status 0) once no node is queued or holds a slot.
        #[arg(long)]
        until_done: bool,
        /// Give up (status 1) after this long, e.g. `30m`.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
}

/// Runs the command; the exit code is 0 on success.
/// A node or MaintenancePolicy name from the command line: checked before it goes anywhere near
/// an API path.
fn object_name(value: &str) -> std::result::Result<String, String> {
    if rota_core::node::is_dns_subdomain(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{:?} is not a valid Kubernetes object name (lower-case RFC 1123 subdomain: a-z, \
             0-9, '-' and '.', at most 253 characters)",
            rota_core::text::printable(value)
        ))
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let client = client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let mut out = std::io::stdout();
    let now = jiff::Timestamp::now();
    match cli.command {
        Command::Status {
            output,
            pool,
            active,
        } => {
            let view = status::fetch(&client, now).await?;
            let filter = status::Filter { pool, active };
            status::print(&mut out, &view.filtered(&filter), output, now)?;
        }
        Command::Reboot { node } => {
            actions::request(&client, &mut out, &node, ManualRequest::Reboot).await?;
        }
        Command::Upgrade {
            node,
            security_only,
        } => {
            let request = if security_only {
                ManualRequest::SecurityUpgrade
            } else {
                ManualRequest::Upgrade
            };
            actions::request(&client, &mut out, &node, request).await?;
        }
        Command::KubeletRestart { node } => {
            actions::request(&client, &mut out, &node, ManualRequest::KubeletRestart).await?;
        }
        Command::Pause { policy } => {
            actions::pause(&client, &mut out, policy.as_deref()).await?;
        }
        Command::Resume { policy, timeout } => {
            actions::resume(&client, &mut out, policy.as_deref(), timeout).await?;
        }
        Command::Release { node, yes } => {
            let confirm = if yes {
                actions::Confirm::Yes
            } else {
                actions::Confirm::Ask
            };
            actions::release(&client, &mut out, &node, confirm, now).await?;
        }
        Command::History {
            node,
            since,
            output,
        } => {
            let since = since.map(|d| ago(now, d));
            let found = records::fetch(&client, node.as_deref(), since).await?;
            let events = match &node {
                Some(node) if output != HistoryOutput::Csv => history::fetch(&client, node).await?,
                _ => Vec::new(),
            };
            match output {
                HistoryOutput::Csv => records::print_csv(&mut out, &found)?,
                HistoryOutput::Json => {
                    serde_json::to_writer_pretty(
                        &mut out,
                        &serde_json::json!({ "records": found, "events": events }),
                    )?;
                    std::io::Write::write_all(&mut out, b"\n")?;
                }
                HistoryOutput::Table => {
                    records::print_table(&mut out, &found, now)?;
                    if node.is_some() {
                        std::io::Write::write_all(&mut out, b"\n")?;
                        history::print(&mut out, &events, Output::Table, now)?;
                    }
                }
            }
        }
        Command::Report { since, output } => {
            let since = ago(now, since);
            let found = records::fetch(&client, None, Some(since)).await?;
            let report = rota_core::records::report(found.iter().map(|r| &r.spec), since);
            match output {
                Output::Table => records::print_report(&mut out, &report, since, now)?,
                Output::Json => records::print_report_json(&mut out, &report, since)?,
            }
        }
        Command::Plan { pool, output } => {
            plan::plan(&client, &mut out, pool.as_deref(), output, now).await?;
        }
        Command::KubernetesUpgrade { to, pool } => {
            plan::kubernetes_upgrade(&client, &mut out, pool.as_deref(), &to, now).await?;
        }
        Command::Watch {
            pool,
            until_done,
            timeout,
        } => {
            let options = watch::Options {
                pool,
                until_done,
                timeout,
            };
            watch::run(&client, &mut out, &options).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A client from `kubeconfig` (or the default kubeconfig, else in-cluster) and `context`.
async fn client(kubeconfig: Option<&std::path::Path>, context: Option<&str>) -> Result<Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options).await
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options).await,
        None => {
            return Client::try_default()
                .await
                .map_err(|e| Error::Config(e.to_string()));
        }
    }
    .map_err(|e| Error::Config(e.to_string()))?;
    Client::try_from(config).map_err(|e| Error::Config(e.to_string()))
}

/// Parses `60s`, `5m`, `1h30m` and the like.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let signed: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("not a duration ({e}); write e.g. 30s or 5m"))?;
    Duration::try_from(signed).map_err(|_| "a duration cannot be negative".to_owned())
}

/// `7d`, `36h`, `90m`: a period back from now (days are 24 hours).
fn parse_since(s: &str) -> std::result::Result<Duration, String> {
    match s.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => days
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| "too many days".to_owned()),
        Some(Err(_)) => Err(format!("{s:?} is not a number of days; write e.g. 7d")),
        None => parse_duration(s),
    }
}

/// `now` minus `period`, saturating.
fn ago(now: jiff::Timestamp, period: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(period)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .unwrap_or(jiff::Timestamp::MIN)
}

/// `5s`, `3m`, `2h`, `4d`: how long ago, for tables.
pub fn age(since: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let seconds = now.as_second().saturating_sub(since.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let ago = |s: i64| age(jiff::Timestamp::from_second(1_000_000 - s).unwrap(), now);
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(119), "119s");
        assert_eq!(ago(600), "10m");
        assert_eq!(ago(3 * 3600), "3h");
        assert_eq!(ago(3 * 86_400), "3d");
        assert_eq!(ago(-50), "0s");
    }

    #[test]
    fn periods_read_days_and_durations() {
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_since("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_since("90m"), Ok(Duration::from_secs(90 * 60)));
        assert!(parse_since("xd").is_err());
        assert!(parse_since("soon").is_err());
    }
}
