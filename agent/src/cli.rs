//! The `rota-agent` command line: `check`, `upgrade`, `run` and the hidden `__host-exec`.
//! Every flag can also come from a `ROTA_...` environment variable (the DaemonSet sets those).
use rota_core::model::{Blocked, NodeFacts, NodePolicy, Operation, UpgradeReboot};

use std::future::Future;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::daemon::{self, DaemonConfig, TokenAuth};
use crate::detect::{self, DetectConfig};
use crate::host::{ChrootHost, Host, HostExecArgs, NamespaceHost, RebootMethod, host_exec_main};
use crate::kubernetes::etcd::{self, EtcdConfig};
use crate::kubernetes::{self, KubernetesConfig};
use crate::ops::{CompleteAck, Completion, Executor, ExecutorConfig, Reporter};
use crate::packages::UpgradeScope;
use crate::settings::UpgradePolicy;
use crate::settings::{self, AgentSources, Effective, Own, Report};
use crate::tls::TlsArgs;
use crate::{Error, Result, state};

/// rota's node agent.
#[derive(Debug, Parser)]
#[command(name = "rota-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what this node needs: reboot and why, pending upgrades, kernels, versions.
    Check(CheckArgs),
    /// Apply package upgrades now, on a node that is already drained.
    Upgrade(UpgradeArgs),
    /// The daemon: report facts, ask the coordinator for slots, perform granted operations.
    Run(Box<RunArgs>),
    /// Run one command inside the host (used by the agent itself).
    #[command(name = "__host-exec", hide = true)]
    HostExec(HostExecArgs),
}

/// Log output.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "ROTA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax).
    #[arg(long, env = "ROTA_LOG", default_value = "info", global = true)]
    pub log: String,
}

/// Log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Which host to act on.
#[derive(Clone, Debug, Args)]
pub struct HostArgs {
    /// Act on the root file system in this directory (chroot) instead of the node (PID 1's
    /// namespaces).
    #[arg(long, env = "ROTA_HOST_ROOT")]
    pub host_root: Option<PathBuf>,
}

impl HostArgs {
    /// The host these arguments name.
    pub fn host(&self) -> Box<dyn Host> {
        match &self.host_root {
            Some(dir) => Box::new(ChrootHost::new(dir)),
            None => Box::new(NamespaceHost::new()),
        }
    }
}

/// How to detect what the node needs.
#[derive(Clone, Debug, Args)]
pub struct DetectArgs {
    /// Reboot sentinel files (comma-separated); the pool's `reboot.sentinelFiles` overrides
    /// them.
    #[arg(
        long = "sentinel",
        env = "ROTA_SENTINELS",
        value_delimiter = ',',
        default_values_t = detect::DEFAULT_SENTINELS.map(String::from)
    )]
    pub sentinels: Vec<String>,
    /// Sentinel command run in the host (split on whitespace): exit 0 = reboot required, 1 =
    /// not required, anything else is a detection error. The pool's `reboot.sentinelCommand`
    /// overrides it.
    #[arg(long, env = "ROTA_SENTINEL_COMMAND")]
    pub sentinel_command: Option<String>,
    /// Refresh package lists before looking for upgrades.
    #[arg(long, env = "ROTA_REFRESH")]
    pub refresh: bool,
    /// Kubernetes upgrades and etcd snapshots.
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
}

/// Where a kubeadm node keeps what Kubernetes upgrades and etcd snapshots use; the defaults are
/// kubeadm's and pkgs.k8s.io's layout.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Kubernetes upgrades and etcd snapshots")]
pub struct KubernetesArgs {
    /// Base URL of the Kubernetes package repository (a mirror of
    /// https://pkgs.k8s.io): a Kubernetes upgrade writes it into the repository file in place of
    /// the base there, before `/core:/stable:/vX.Y/`. Unset: the base in the file is kept.
    #[arg(long, env = "ROTA_KUBERNETES_REPOSITORY")]
    pub kubernetes_repository: Option<String>,
    /// The apt source file of the Kubernetes packages.
    #[arg(long, env = "ROTA_APT_KUBERNETES_LIST", default_value = kubernetes::DEFAULT_APT_LIST)]
    pub apt_kubernetes_list: PathBuf,
    /// The dnf repository file of the Kubernetes packages.
    #[arg(long, env = "ROTA_DNF_KUBERNETES_REPO", default_value = kubernetes::DEFAULT_DNF_REPO)]
    pub dnf_kubernetes_repo: PathBuf,
    /// kubeadm's static pod manifests: `etcd.yaml` there means a stacked etcd member,
    /// `kube-apiserver.yaml` alone an external etcd.
    #[arg(long, env = "ROTA_KUBEADM_MANIFESTS", default_value = kubernetes::DEFAULT_MANIFESTS)]
    pub kubeadm_manifests: PathBuf,
    /// The stacked etcd member's client endpoint for `etcdctl snapshot save`.
    #[arg(long, env = "ROTA_ETCD_ENDPOINT", default_value = etcd::DEFAULT_ENDPOINT)]
    pub etcd_endpoint: String,
    /// etcd's CA certificate.
    #[arg(long, env = "ROTA_ETCD_CACERT", default_value = etcd::DEFAULT_CACERT)]
    pub etcd_cacert: PathBuf,
    /// etcd client certificate.
    #[arg(long, env = "ROTA_ETCD_CERT", default_value = etcd::DEFAULT_CERT)]
    pub etcd_cert: PathBuf,
    /// Its key.
    #[arg(long, env = "ROTA_ETCD_KEY", default_value = etcd::DEFAULT_KEY)]
    pub etcd_key: PathBuf,
    /// Host directory of the agent's etcd snapshots.
    #[arg(long, env = "ROTA_ETCD_SNAPSHOT_DIR", default_value = etcd::DEFAULT_SNAPSHOT_DIR)]
    pub etcd_snapshot_dir: PathBuf,
    /// How many snapshots are kept there (older ones are deleted).
    #[arg(
        long,
        env = "ROTA_ETCD_SNAPSHOT_KEEP",
        default_value_t = etcd::DEFAULT_KEEP,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub etcd_snapshot_keep: u16,
}

impl KubernetesArgs {
    /// The configuration these flags name.
    pub fn config(&self) -> KubernetesConfig {
        KubernetesConfig {
            repository_base: self
                .kubernetes_repository
                .clone()
                .filter(|base| !base.trim().is_empty()),
            apt_list: self.apt_kubernetes_list.clone(),
            dnf_repo: self.dnf_kubernetes_repo.clone(),
            manifests: self.kubeadm_manifests.clone(),
            etcd: EtcdConfig {
                endpoint: self.etcd_endpoint.clone(),
                cacert: self.etcd_cacert.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
                snapshot_dir: self.etcd_snapshot_dir.clone(),
                keep: usize::from(self.etcd_snapshot_keep),
                ..EtcdConfig::default()
            },
            ..KubernetesConfig::default()
        }
    }
}

impl DetectArgs {
    /// The detection configuration.
    pub fn config(&self) -> DetectConfig {
        DetectConfig {
            sentinel_files: self.sentinels.iter().map(PathBuf::from).collect(),
            sentinel_command: self
                .sentinel_command
                .as_ref()
                .map(|c| c.split_whitespace().map(String::from).collect()),
            refresh: self.refresh,
            kubernetes: self.kubernetes.config(),
            ..DetectConfig::default()
        }
    }
}

/// How the node reboots.
#[derive(Clone, Debug, Args)]
pub struct RebootArgs {
    /// Reboot command run in the host (split on whitespace); default `systemctl reboot`.
    /// `signal` sends SIGINT to the host's PID 1 instead. The pool's `reboot.command`
    /// overrides it.
    #[arg(long, env = "ROTA_REBOOT_COMMAND")]
    pub reboot_command: Option<String>,
}

impl RebootArgs {
    /// The reboot method these arguments name.
    pub fn method(&self) -> RebootMethod {
        match self.reboot_command.as_deref() {
            None => RebootMethod::Systemctl,
            Some("signal") => RebootMethod::SignalInit,
            Some(cmd) => RebootMethod::Command(cmd.split_whitespace().map(String::from).collect()),
        }
    }
}

/// Which upgrades the daemon asks slots for.
#[derive(Clone, Debug, Args)]
pub struct UpgradeModeArgs {
    /// Which upgrades to ask slots for; the pool's `upgrade.mode` overrides it.
    #[arg(long, env = "ROTA_UPGRADE", value_enum, default_value_t = UpgradePolicy::Security)]
    pub upgrade: UpgradePolicy,
}

/// How operations are performed.
#[derive(Clone, Debug, Args)]
pub struct ExecArgs {
    /// Where the agent keeps its state on the host.
    #[arg(long, env = "ROTA_STATE_PATH", default_value = state::DEFAULT_STATE_PATH)]
    pub state_path: PathBuf,
    /// Rebooting.
    #[command(flatten)]
    pub reboot: RebootArgs,
    /// Health check run in the host after an operation: exit 0 = healthy.
    #[arg(
        long,
        env = "ROTA_HEALTH_COMMAND",
        default_value = "systemctl is-active --quiet kubelet"
    )]
    pub health_command: String,
    /// How long to wait for the node to go down after a reboot request (seconds).
    #[arg(long, env = "ROTA_REBOOT_TIMEOUT", default_value_t = 600)]
    pub reboot_timeout: u64,
}

impl ExecArgs {
    /// The executor configuration.
    pub fn config(&self, detect: DetectConfig) -> ExecutorConfig {
        ExecutorConfig {
            state_path: self.state_path.clone(),
            reboot_method: self.reboot.method(),
            health_command: self
                .health_command
                .split_whitespace()
                .map(String::from)
                .collect(),
            shutdown_wait: Duration::from_secs(self.reboot_timeout),
            detect,
            ..ExecutorConfig::default()
        }
    }
}

/// `rota-agent check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The host.
    #[command(flatten)]
    pub host: HostArgs,
    /// Detection.
    #[command(flatten)]
    pub detect: DetectArgs,
    /// The daemon's upgrade mode (shown with its source).
    #[command(flatten)]
    pub upgrade: UpgradeModeArgs,
    /// The daemon's reboot method (shown with its source).
    #[command(flatten)]
    pub reboot: RebootArgs,
    /// Ask the coordinator for this node's policy (one `ReportFacts`), e.g.
    /// `https://rota-coordinator.rota-system:9443`; without it no policy is consulted.
    #[arg(long, env = "ROTA_COORDINATOR", requires = "node")]
    pub coordinator: Option<String>,
    /// This node's name, for --coordinator.
    #[arg(long, env = "ROTA_NODE_NAME")]
    pub node: Option<String>,
    /// Token file for --coordinator (as `run` uses it).
    #[arg(long, env = "ROTA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS to the coordinator.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Print JSON instead of text.
    #[arg(long, env = "ROTA_JSON")]
    pub json: bool,
}

/// `rota-agent upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The host.
    #[command(flatten)]
    pub host: HostArgs,
    /// Detection.
    #[command(flatten)]
    pub detect: DetectArgs,
    /// Execution.
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Only security upgrades.
    #[arg(long, env = "ROTA_SECURITY_ONLY")]
    pub security_only: bool,
    /// Reboot afterwards when the upgrade requires it.
    #[arg(long, env = "ROTA_REBOOT")]
    pub reboot: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y', env = "ROTA_YES")]
    pub yes: bool,
}

/// `rota-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The coordinator's gRPC address, e.g. `https://rota-coordinator.rota-system:9443`.
    #[arg(long, env = "ROTA_COORDINATOR")]
    pub coordinator: String,
    /// This node's name (from the downward API).
    #[arg(long, env = "ROTA_NODE_NAME")]
    pub node: String,
    /// Projected service-account token sent as `authorization: Bearer` (re-read per call, so
    /// rotation works).
    #[arg(long, env = "ROTA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS to the coordinator.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Which upgrades to ask slots for.
    #[command(flatten)]
    pub upgrade: UpgradeModeArgs,
    /// Seconds between package list refreshes (at least 60).
    #[arg(long, env = "ROTA_REFRESH_INTERVAL", default_value_t = 3600)]
    pub refresh_interval: u64,
    /// Milliseconds to wait before reconnecting a broken slot watch or retrying a completion
    /// the coordinator did not take.
    #[arg(long, env = "ROTA_RETRY_INTERVAL_MS", default_value_t = 5000)]
    pub retry_interval_ms: u64,
    /// The host.
    #[command(flatten)]
    pub host: HostArgs,
    /// Detection.
    #[command(flatten)]
    pub detect: DetectArgs,
    /// Execution.
    #[command(flatten)]
    pub exec: ExecArgs,
}

impl RunArgs {
    /// The daemon's configuration: the one conversion of these flags.
    pub fn daemon_config(&self) -> DaemonConfig {
        let detect = self.detect.config();
        DaemonConfig {
            node: self.node.clone(),
            upgrade: self.upgrade.upgrade,
            exec: self.exec.config(detect.clone()),
            detect,
            refresh_interval: Duration::from_secs(self.refresh_interval.max(60)),
            retry_interval: Duration::from_millis(self.retry_interval_ms),
        }
    }

    /// Runs the daemon on `host` until `shutdown`, as `rota-agent run` does; `host` is the one
    /// [`HostArgs::host`] names, or a stand-in (the simulator's hosts).
    pub async fn run(&self, host: Arc<dyn Host>, shutdown: impl Future<Output = ()>) -> Result<()> {
        let auth = TokenAuth {
            token_file: self.token_file.clone(),
        };
        let client = daemon::client(&self.coordinator, &self.tls, auth)?;
        daemon::run(self.daemon_config(), host, client, shutdown).await
    }
}

/// How long a shutdown waits for an operation's current step.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `run`: the daemon until SIGTERM or SIGINT.
fn run_daemon(args: &RunArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start runtime", "/", e))?;
    let host: Arc<dyn Host> = Arc::from(args.host.host());
    let result = runtime.block_on(args.run(host, shutdown_signal()));
    // An operation in flight gets a bounded grace period to finish its current step (a dpkg
    // transaction is better finished than killed); whatever is left resumes from the persisted
    // state at the next start.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result.map(|()| ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process still ends on SIGTERM, just not gracefully.
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the command line parsed into `matches` (which tell `check` where each flag's value
/// came from). The `__host-exec` helper must be dispatched before any thread is started, so
/// this is the very first thing `main` calls.
pub fn main(cli: Cli, matches: &clap::ArgMatches) -> Result<ExitCode> {
    match cli.command {
        Command::HostExec(args) => {
            let code = host_exec_main(&args);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Check(args) => {
            init_logging(&cli.log);
            let sources = matches
                .subcommand_matches("check")
                .map(agent_sources)
                .unwrap_or_default();
            check(&args, &sources)
        }
        Command::Upgrade(args) => {
            init_logging(&cli.log);
            upgrade(&args)
        }
        Command::Run(args) => {
            init_logging(&cli.log);
            run_daemon(&args)
        }
    }
}

fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests driving `main` twice) keeps the first subscriber.
    let _ = match log.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// `check`: exit 0 when every check ran, 2 on detection errors. With `--coordinator`, the
/// node's facts are reported once and the answer's policy is applied (detecting again when it
/// changes what detection looks at); the settings are shown with their sources either way.
fn check(args: &CheckArgs, sources: &AgentSources) -> Result<ExitCode> {
    let host = args.host.host();
    let base = args.detect.config();
    let own = Own {
        upgrade: args.upgrade.upgrade,
        sentinel_files: base.sentinel_files.clone(),
        sentinel_command: base.sentinel_command.clone(),
        reboot_method: args.reboot.method(),
    };
    let mut facts = detect::detect(host.as_ref(), &base);
    let policy = match &args.coordinator {
        None => None,
        Some(url) => {
            let asker = PolicyAsker::new(url, args)?;
            let policy = asker.ask(&facts)?;
            let config = settings::detect_config(&base, policy.as_ref());
            if config != base {
                facts = detect::detect(host.as_ref(), &config);
                asker.ask(&facts)?;
            }
            policy
        }
    };
    let report = Effective::resolve(&own, policy.as_ref()).report(
        sources,
        args.coordinator.is_some(),
        policy.as_ref().map(|p| p.name.as_str()),
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        #[derive(serde::Serialize)]
        struct CheckJson<'a> {
            #[serde(flatten)]
            facts: &'a NodeFacts,
            settings: &'a Report,
        }
        let json = serde_json::to_string_pretty(&CheckJson {
            facts: &facts,
            settings: &report,
        })
        .map_err(|e| Error::parse("facts as JSON", e.to_string()))?;
        writeln!(out, "{json}").map_err(|e| Error::io("write", "stdout", e))?;
    } else {
        write!(out, "{}{}", render_facts(&facts), render_settings(&report))
            .map_err(|e| Error::io("write", "stdout", e))?;
    }
    Ok(if facts.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Where the flags `check` shows came from: the command line, the environment, or defaults.
fn agent_sources(matches: &clap::ArgMatches) -> AgentSources {
    let source = |id: &str| match matches.value_source(id) {
        Some(ValueSource::CommandLine) => "flag",
        Some(ValueSource::EnvVariable) => "env",
        _ => "default",
    };
    AgentSources {
        upgrade: source("upgrade"),
        sentinel_files: source("sentinels"),
        sentinel_command: source("sentinel_command"),
        reboot_command: source("reboot_command"),
    }
}

/// Asks the coordinator for the node's policy the way the daemon learns it: by reporting the
/// node's facts.
struct PolicyAsker {
    runtime: tokio::runtime::Runtime,
    client: daemon::Client,
    node: String,
}

impl PolicyAsker {
    fn new(url: &str, args: &CheckArgs) -> Result<PolicyAsker> {
        let node = args
            .node
            .clone()
            .ok_or_else(|| Error::Refused("--coordinator needs --node".into()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start runtime", "/", e))?;
        let auth = TokenAuth {
            token_file: args.token_file.clone(),
        };
        // The lazy channel needs a runtime to be built in.
        let client = runtime.block_on(async { daemon::client(url, &args.tls, auth) })?;
        Ok(PolicyAsker {
            runtime,
            client,
            node,
        })
    }

    fn ask(&self, facts: &NodeFacts) -> Result<Option<NodePolicy>> {
        let mut client = self.client.clone();
        let req = rota_proto::v1::ReportFactsRequest {
            node: self.node.clone(),
            facts: Some(facts.into()),
        };
        let answer = self
            .runtime
            .block_on(client.report_facts(req))
            .map_err(|s| Error::Rpc(Box::new(s)))?;
        answer
            .into_inner()
            .policy
            .map(|p| rota_proto::convert::node_policy("policy", p))
            .transpose()
            .map_err(|e| Error::parse("the coordinator's policy", e.to_string()))
    }
}

/// The settings part of `check`'s human form.
pub fn render_settings(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let consulted = match (&r.policy, r.policy_consulted) {
        (Some(name), _) => format!("policy {name} from the coordinator"),
        (None, true) => {
            "the coordinator names no policy for this node (no single valid MaintenancePolicy selects it)".into()
        }
        (None, false) => "no policy consulted (pass --coordinator to see the pool's)".into(),
    };
    let _ = writeln!(s, "settings: {consulted}");
    for (name, shown) in [
        ("upgrade", &r.upgrade),
        ("holds", &r.holds),
        ("sentinel files", &r.sentinel_files),
        ("sentinel command", &r.sentinel_command),
        ("reboot command", &r.reboot_command),
        ("reboot mode", &r.reboot_mode),
    ] {
        let value = match &shown.value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Array(items) if items.is_empty() => "-".into(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(" "),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        let _ = writeln!(s, "  {:<17} {value} ({})", format!("{name}:"), shown.source);
    }
    s
}

/// The human form of `check`.
pub fn render_facts(f: &NodeFacts) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let or_none = |v: &str| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    let _ = writeln!(s, "os:              {}", or_none(&f.os_image));
    let _ = writeln!(s, "boot id:         {}", or_none(&f.boot_id));
    let _ = writeln!(s, "kernel running:  {}", or_none(&f.kernel_running));
    let _ = writeln!(
        s,
        "kernels:         {}",
        or_none(&f.kernels_installed.join(", "))
    );
    let _ = writeln!(s, "kubelet:         {}", or_none(&f.kubelet_version));
    let _ = writeln!(
        s,
        "runtime:         {}",
        or_none(&f.container_runtime_version)
    );
    let _ = writeln!(
        s,
        "reboot required: {}",
        if f.reboot_required { "yes" } else { "no" }
    );
    for r in &f.reboot_reasons {
        let _ = writeln!(s, "  - {r}");
    }
    if !f.reboot_packages.is_empty() {
        let _ = writeln!(s, "  requested by: {}", f.reboot_packages.join(", "));
    }
    let security: Vec<_> = f.actionable_upgrades(true).collect();
    let other: Vec<_> = f
        .actionable_upgrades(false)
        .filter(|p| !p.security)
        .collect();
    let kept: Vec<_> = f
        .pending_upgrades
        .iter()
        .filter(|p| p.blocked.is_some())
        .collect();
    let _ = writeln!(
        s,
        "pending upgrades ({}): {} security, {} other, {} kept back",
        or_none(&f.package_backend),
        security.len(),
        other.len(),
        kept.len()
    );
    for (title, list) in [("security", &security), ("other", &other)] {
        if !list.is_empty() {
            let _ = writeln!(s, "  {title}:");
        }
        for p in list.iter() {
            let _ = writeln!(
                s,
                "    {} {} -> {} (impact: {:?})",
                p.name, p.current_version, p.candidate_version, p.impact
            );
        }
    }
    if !kept.is_empty() {
        let _ = writeln!(s, "  kept back:");
    }
    for p in kept {
        let why = match p.blocked {
            Some(Blocked::Held) => "held",
            _ => "moves only in a Kubernetes upgrade",
        };
        let _ = writeln!(
            s,
            "    {} {} -> {} ({why})",
            p.name, p.current_version, p.candidate_version
        );
    }
    let member = match f.etcd.member {
        rota_core::model::EtcdMember::None => "none",
        rota_core::model::EtcdMember::Stacked => "stacked",
        rota_core::model::EtcdMember::External => "external (not backed up by rota)",
    };
    let _ = writeln!(s, "etcd member:     {member}");
    if let Some(snap) = &f.etcd.snapshot {
        let _ = writeln!(
            s,
            "etcd snapshot:   {} ({} bytes, revision {}, hash {}, {} keys, taken {})",
            snap.path, snap.size_bytes, snap.revision, snap.hash, snap.total_keys, snap.taken_at
        );
    }
    if let Some(e) = &f.etcd.snapshot_error {
        let _ = writeln!(s, "etcd snapshot failed: {e}");
    }
    if !f.errors.is_empty() {
        let _ = writeln!(s, "detection errors:");
        for e in &f.errors {
            let _ = writeln!(s, "  - {e}");
        }
    }
    s
}

/// Prints progress of a manual upgrade on the terminal.
struct TerminalReporter;

impl Reporter for TerminalReporter {
    fn progress(&self, _token: u64, step: &str, message: &str) {
        if message.is_empty() {
            eprintln!("==> {step}");
        } else {
            eprintln!("==> {step}: {message}");
        }
    }

    fn complete(&self, _token: u64, c: &Completion) -> Result<CompleteAck> {
        eprintln!(
            "==> {}: {}",
            if c.success { "done" } else { "FAILED" },
            c.message
        );
        for p in &c.changed {
            println!("changed {} {}", p.name, p.version);
        }
        Ok(CompleteAck::Accepted)
    }
}

/// `upgrade`: exit 0 when the upgrade succeeded (or there was nothing to do), 1 when it
/// failed or was not confirmed.
fn upgrade(args: &UpgradeArgs) -> Result<ExitCode> {
    let host = args.host.host();
    let exec = args.exec.config(args.detect.config());
    if state::load(host.as_ref(), &exec.state_path)?.is_some() {
        return Err(Error::Refused(format!(
            "an operation is in progress on this node ({} exists)",
            exec.state_path.display()
        )));
    }
    let pm = host.packages()?;
    if args.detect.refresh {
        pm.refresh()?;
    }
    let scope = if args.security_only {
        UpgradeScope::SecurityOnly
    } else {
        UpgradeScope::All
    };
    let plan: Vec<_> = pm
        .upgradable()?
        .into_iter()
        .filter(|p| scope.selects(p))
        .collect();
    drop(pm);
    if plan.is_empty() {
        println!("nothing to upgrade");
        return Ok(ExitCode::SUCCESS);
    }
    println!("will upgrade {} package(s):", plan.len());
    for p in &plan {
        println!(
            "  {} {} -> {}{}",
            p.name,
            p.current_version,
            p.candidate_version,
            if p.security { " (security)" } else { "" }
        );
    }
    if !args.yes && !confirm()? {
        println!("not confirmed; nothing changed");
        return Ok(ExitCode::FAILURE);
    }
    let reporter = TerminalReporter;
    let op = Operation::PackageUpgrade {
        security_only: args.security_only,
        reboot: UpgradeReboot::from_legacy(args.reboot),
        packages: Vec::new(),
    };
    let mut ex = Executor::start(
        host.as_ref(),
        &exec,
        &reporter,
        0,
        op,
        jiff::Timestamp::now(),
    )?;
    let mut success = false;
    while let Some(effect) = ex.record().next_effect() {
        if let crate::ops::Effect::Complete { success: s, .. } = effect {
            success = s;
        }
        if !ex.step()? {
            break;
        }
    }
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn confirm() -> Result<bool> {
    print!("proceed? [y/N] ");
    std::io::stdout()
        .flush()
        .map_err(|e| Error::io("write", "stdout", e))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("read", "stdin", e))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn run_args(flags: &[&str]) -> RunArgs {
        let flags = [
            "rota-agent",
            "run",
            "--coordinator=https://c:9443",
            "--node=n1",
        ]
        .iter()
        .chain(flags);
        match Cli::try_parse_from(flags).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn every_run_flag_has_an_env_var() {
        Cli::command().debug_assert();
        let command = Cli::command();
        let run = command.find_subcommand("run").unwrap();
        let without: Vec<&str> = run
            .get_arguments()
            .filter(|arg| arg.get_id() != "help")
            .filter(|arg| {
                !arg.get_env()
                    .is_some_and(|env| env.to_string_lossy().starts_with("ROTA_"))
            })
            .map(|arg| arg.get_id().as_str())
            .collect();
        assert!(
            without.is_empty(),
            "flags without a ROTA_ variable: {without:?}"
        );
    }

    #[test]
    fn the_daemon_config_follows_the_flags() {
        let defaults = run_args(&[]).daemon_config();
        assert_eq!(defaults.node, "n1");
        assert_eq!(defaults.upgrade, UpgradePolicy::Security);
        assert_eq!(defaults.refresh_interval, Duration::from_secs(3600));
        assert_eq!(defaults.retry_interval, Duration::from_secs(5));
        assert_eq!(defaults.exec.detect, defaults.detect);

        let set = run_args(&[
            "--upgrade=all",
            "--refresh-interval=10",
            "--retry-interval-ms=250",
            "--sentinel=/run/needs-reboot",
            "--reboot-timeout=7",
        ])
        .daemon_config();
        assert_eq!(set.upgrade, UpgradePolicy::All);
        assert_eq!(
            set.refresh_interval,
            Duration::from_secs(60),
            "refreshes at most every minute"
        );
        assert_eq!(set.retry_interval, Duration::from_millis(250));
        assert_eq!(
            set.detect.sentinel_files,
            [PathBuf::from("/run/needs-reboot")]
        );
        assert_eq!(set.exec.detect, set.detect);
        assert_eq!(set.exec.shutdown_wait, Duration::from_secs(7));

        assert_eq!(defaults.detect.kubernetes, KubernetesConfig::default());
        let k8s = run_args(&[
            "--kubernetes-repository=https://mirror.example/k8s",
            "--apt-kubernetes-list=/etc/apt/sources.list.d/k8s.list",
            "--dnf-kubernetes-repo=/etc/yum.repos.d/k8s.repo",
            "--kubeadm-manifests=/srv/manifests",
            "--etcd-endpoint=https://10.0.0.1:2379",
            "--etcd-cacert=/pki/ca.crt",
            "--etcd-cert=/pki/c.crt",
            "--etcd-key=/pki/c.key",
            "--etcd-snapshot-dir=/backup/etcd",
            "--etcd-snapshot-keep=7",
        ])
        .daemon_config()
        .exec
        .detect
        .kubernetes;
        assert_eq!(
            k8s.repository_base.as_deref(),
            Some("https://mirror.example/k8s")
        );
        assert_eq!(
            k8s.apt_list,
            PathBuf::from("/etc/apt/sources.list.d/k8s.list")
        );
        assert_eq!(k8s.dnf_repo, PathBuf::from("/etc/yum.repos.d/k8s.repo"));
        assert_eq!(k8s.manifests, PathBuf::from("/srv/manifests"));
        assert_eq!(k8s.etcd.endpoint, "https://10.0.0.1:2379");
        assert_eq!(
            (k8s.etcd.cacert, k8s.etcd.cert, k8s.etcd.key),
            (
                "/pki/ca.crt".into(),
                "/pki/c.crt".into(),
                "/pki/c.key".into()
            )
        );
        assert_eq!(k8s.etcd.snapshot_dir, PathBuf::from("/backup/etcd"));
        assert_eq!(k8s.etcd.keep, 7);
        assert!(
            Cli::try_parse_from([
                "rota-agent",
                "run",
                "--coordinator=https://c:9443",
                "--node=n1",
                "--etcd-snapshot-keep=0"
            ])
            .is_err(),
            "at least one snapshot is kept"
        );
    }

    #[test]
    fn check_tells_flags_from_defaults_and_says_when_no_policy_was_consulted() {
        let matches = Cli::command()
            .try_get_matches_from([
                "rota-agent",
                "check",
                "--upgrade=all",
                "--reboot-command=signal",
            ])
            .unwrap();
        let check = matches.subcommand_matches("check").unwrap();
        let sources = agent_sources(check);
        assert_eq!(sources.upgrade, "flag");
        assert_eq!(sources.reboot_command, "flag");
        // Unless the test's environment sets them.
        if std::env::var_os("ROTA_SENTINELS").is_none() {
            assert_eq!(sources.sentinel_files, "default");
        }
        let Command::Check(args) = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("not check");
        };
        let own = Own {
            upgrade: args.upgrade.upgrade,
            sentinel_files: args.detect.config().sentinel_files,
            sentinel_command: None,
            reboot_method: args.reboot.method(),
        };
        let text = render_settings(&Effective::resolve(&own, None).report(&sources, false, None));
        assert!(text.contains("no policy consulted"), "{text}");
        assert!(text.contains("upgrade:          all (flag)"), "{text}");
        assert!(text.contains("reboot command:   signal (flag)"), "{text}");
        assert!(text.contains("holds:            - (default)"), "{text}");
        // --coordinator needs the node's name.
        assert!(
            Cli::try_parse_from(["rota-agent", "check", "--coordinator=https://c:9443"]).is_err()
                || std::env::var_os("ROTA_NODE_NAME").is_some()
        );
    }
}
