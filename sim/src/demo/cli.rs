//! `rota-sim demo`: roll maintenance through an emulated cluster with rota (or the kured
//! model, or both) and print what happened, measured by the emulator.
//!
//! Exit status: 0 when every invariant held and every node is done, 1 when an invariant broke
//! (a PDB violation, more nodes down than allowed, a node maintained twice, a fencing token on
//! two nodes), 2 when the rollout did not finish. With `--compare` the status is rota's; what
//! the kured model breaks is printed as a finding.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rota_core::policy::crd::MaintenanceWindow;

use super::coordinator::CoordinatorOptions;
use super::fleet::{Fleet, FleetOptions, KubernetesUpgrade, Scheduler, demo_policy};
use super::kured::KuredOptions;
use super::nodes::AgentOptions;
use super::progress::Printer;
use super::report::{Report, Stopped, makespan_ratio, render_comparison};
use super::{Error, Result};
use crate::cluster::FaultArgs;
use crate::cluster::KubernetesSetup;
use crate::cluster::args::parse_duration;
use rota_core::policy::KubeVersion;

/// The version of the cluster `--kubernetes-upgrade` starts from.
pub const DEMO_KUBERNETES_FROM: KubeVersion = KubeVersion::new(1, 30, 10);

/// Who maintains the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyChoice {
    /// rota: coordinator, agents, MaintenancePolicy.
    Rota,
    /// The model of kured with its defaults.
    Kured,
}

/// Which API server the demo runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ControlPlaneChoice {
    /// The embedded emulator (in this process, nothing to build).
    Emulated,
    /// A real kube-apiserver, etcd, controller-manager and scheduler, built from Go modules
    /// by `tests/control-plane/build.sh` (rota only; no faults, no comparison).
    Real,
}

/// Flags of `rota-sim demo`.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// The API server to run against.
    #[clap(long, env = "ROTA_DEMO_CONTROL_PLANE", value_enum, default_value_t = ControlPlaneChoice::Emulated)]
    pub control_plane: ControlPlaneChoice,
    /// Nodes of the generated cluster (3 control-plane nodes from 6 on, 3 zones).
    #[clap(long, env = "ROTA_DEMO_NODES", default_value_t = 24)]
    pub nodes: usize,
    /// Most nodes down at once (rota's maxUnavailable).
    #[clap(long, env = "ROTA_DEMO_MAX_UNAVAILABLE", default_value_t = 3)]
    pub max_unavailable: u32,
    /// Seed of the generated cluster: the same seed gives the same cluster.
    #[clap(long, env = "ROTA_DEMO_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Who maintains the cluster.
    #[clap(long, env = "ROTA_DEMO_POLICY", value_enum, default_value_t = PolicyChoice::Rota)]
    pub policy: PolicyChoice,
    /// Run rota and the kured model on the same seed and print them side by side.
    #[clap(long, env = "ROTA_DEMO_COMPARE")]
    pub compare: bool,
    /// Write the summary as JSON to this file.
    #[clap(long, env = "ROTA_DEMO_REPORT")]
    pub report: Option<PathBuf>,
    /// Coordinator replicas (one leads, the others stand by).
    #[clap(long, env = "ROTA_DEMO_COORDINATORS", default_value_t = 2)]
    pub coordinators: usize,
    /// Serve the agents without TLS.
    #[clap(long, env = "ROTA_DEMO_PLAINTEXT")]
    pub plaintext: bool,
    /// A maintenance window `HH:MM-HH:MM` (UTC, every day); repeatable. Default: always open.
    #[clap(long = "window", env = "ROTA_DEMO_WINDOWS", value_delimiter = ',')]
    pub windows: Vec<String>,
    /// Keep the workload whose PodDisruptionBudget allows no disruption (its node can never be
    /// drained).
    #[clap(long, env = "ROTA_DEMO_KEEP_BLOCKED_PDB")]
    pub keep_blocked_pdb: bool,
    /// Leave the workers only this share of spare CPU (e.g. `0.15`), so that the nodes a
    /// rollout drains can leave pods Pending.
    #[clap(long, env = "ROTA_DEMO_TIGHT_CAPACITY")]
    pub tight_capacity: Option<f64>,
    /// How many workers are image-based hosts that run Zincati instead of rota's agent and ask
    /// the coordinator's FleetLock endpoint before they reboot (rota only).
    #[clap(long, env = "ROTA_DEMO_FLEETLOCK_HOSTS", default_value_t = 0)]
    pub fleetlock_hosts: usize,
    /// Upgrade Kubernetes instead of patching packages: the cluster is a kubeadm cluster at
    /// 1.30 (stacked etcd on its control-plane nodes, pkgs.k8s.io repositories up to this
    /// minor) and the policy targets this minor's newest patch (or this exact version), one
    /// minor at a time (rota only).
    #[clap(long, env = "ROTA_DEMO_KUBERNETES_UPGRADE")]
    pub kubernetes_upgrade: Option<String>,
    /// kured's `--period` at the simulation's scale (1 h → 60 s).
    #[clap(long, env = "ROTA_DEMO_KURED_PERIOD", default_value = "60s", value_parser = parse_duration)]
    pub kured_period: Duration,
    /// kured's `--concurrency` (default: rota's `--max-unavailable`, so that a comparison
    /// measures how nodes are scheduled, not how many go at once; kured's own default is 1).
    #[clap(long, env = "ROTA_DEMO_KURED_CONCURRENCY")]
    pub kured_concurrency: Option<usize>,
    /// kured's `--drain-timeout` at the simulation's scale (0: wait forever, kured's default).
    #[clap(long, env = "ROTA_DEMO_KURED_DRAIN_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub kured_drain_timeout: Duration,
    /// kured's `--lock-release-delay` at the simulation's scale.
    #[clap(long, env = "ROTA_DEMO_KURED_LOCK_RELEASE_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub kured_lock_release_delay: Duration,
    /// Give up after this long.
    #[clap(long, env = "ROTA_DEMO_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Stop when no node changed state for this long.
    #[clap(long, env = "ROTA_DEMO_STALL_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// The faults to inject.
    #[clap(flatten)]
    pub fault_flags: FaultArgs,
}

impl DemoArgs {
    /// The `--window` flags as the policy's maintenance windows.
    pub(crate) fn windows(&self) -> Result<Vec<MaintenanceWindow>> {
        self.windows
            .iter()
            .map(|w| {
                let (start, end) = w
                    .split_once('-')
                    .ok_or_else(|| Error::Invalid(format!("window {w:?} is not HH:MM-HH:MM")))?;
                Ok(MaintenanceWindow {
                    days: Vec::new(),
                    start: start.trim().to_string(),
                    end: end.trim().to_string(),
                    time_zone: None,
                })
            })
            .collect()
    }

    /// The Kubernetes upgrade `--kubernetes-upgrade` asks for: from [`DEMO_KUBERNETES_FROM`] to
    /// the minor's newest patch (or the exact version given).
    pub fn kubernetes(&self) -> Result<Option<KubernetesUpgrade>> {
        let Some(text) = &self.kubernetes_upgrade else {
            return Ok(None);
        };
        let asked: KubeVersion = text
            .parse()
            .map_err(|e| Error::Invalid(format!("--kubernetes-upgrade: {e}")))?;
        let from = DEMO_KUBERNETES_FROM;
        if asked.major != from.major || asked.minor <= from.minor {
            return Err(Error::Invalid(format!(
                "--kubernetes-upgrade {text}: the demo's cluster runs {from}; name a newer minor"
            )));
        }
        let setup = KubernetesSetup {
            version: from,
            newest_minor: asked,
        };
        // `1.32` is a minor: its newest patch; `1.32.3` is exact.
        let exact = !rota_core::upgrade::is_minor_only(text);
        let target = if exact { asked } else { setup.newest() };
        if target > setup.newest() {
            return Err(Error::Invalid(format!(
                "--kubernetes-upgrade {text}: the repositories' newest {} is {}",
                target.short(),
                setup.newest()
            )));
        }
        Ok(Some(KubernetesUpgrade { setup, target }))
    }

    /// The fleet for `policy`.
    pub fn fleet_options(&self, policy: PolicyChoice) -> Result<FleetOptions> {
        let mut options = FleetOptions::new(self.nodes, self.seed, self.max_unavailable);
        options.faults = self.fault_flags.faults();
        options.keep_blocked_pdb = self.keep_blocked_pdb;
        options.tight_capacity = self.tight_capacity;
        if policy == PolicyChoice::Rota {
            options.fleetlock_hosts = self.fleetlock_hosts;
        }
        options.scheduler = match policy {
            PolicyChoice::Rota => {
                let mut spec = demo_policy(self.max_unavailable);
                spec.windows = self.windows()?;
                Scheduler::Rota {
                    coordinators: CoordinatorOptions {
                        replicas: self.coordinators.max(1),
                        tls: !self.plaintext,
                        ..CoordinatorOptions::default()
                    },
                    agents: AgentOptions::default(),
                    policy: Some(Box::new(spec)),
                    pools: Vec::new(),
                }
            }
            PolicyChoice::Kured => Scheduler::Kured(self.kured()),
        };
        if let Some(kubernetes) = self.kubernetes()? {
            if policy != PolicyChoice::Rota {
                return Err(Error::Invalid(
                    "--kubernetes-upgrade runs rota only (kured does not upgrade Kubernetes)"
                        .into(),
                ));
            }
            options = options.with_kubernetes_upgrade(kubernetes.setup, kubernetes.target);
        }
        Ok(options)
    }

    /// The kured model as the flags set it: `--kured-concurrency` defaults to
    /// `--max-unavailable`.
    fn kured(&self) -> KuredOptions {
        let concurrency = self
            .kured_concurrency
            .unwrap_or(usize::try_from(self.max_unavailable).unwrap_or(1));
        KuredOptions {
            period: self.kured_period,
            concurrency: concurrency.max(1),
            drain_timeout: (!self.kured_drain_timeout.is_zero())
                .then_some(self.kured_drain_timeout),
            lock_release_delay: self.kured_lock_release_delay,
            seed: self.seed,
            ..KuredOptions::default()
        }
    }

    /// What `--compare` runs against rota: the kured model as the flags set it (by default at
    /// rota's concurrency), and, when that differs, the model at kured's default concurrency of
    /// one node, the way most clusters run it. Both use `--kured-period` (by default kured's
    /// own 1 h, scaled).
    pub fn kured_comparisons(&self) -> Vec<KuredOptions> {
        let configured = self.kured();
        if configured.concurrency == 1 {
            return vec![configured];
        }
        let defaults = KuredOptions {
            concurrency: 1,
            ..configured.clone()
        };
        vec![configured, defaults]
    }
}

/// The name a kured run goes by in a comparison: its concurrency and period, which decide its
/// makespan more than anything else.
fn kured_label(options: &KuredOptions) -> String {
    format!(
        "kured (concurrency {}, period {:.0} s)",
        options.concurrency,
        options.period.as_secs_f64()
    )
}

/// Runs one rollout with live progress and returns its report.
pub async fn run_one(args: &DemoArgs, policy: PolicyChoice) -> Result<Report> {
    run_fleet(args, args.fleet_options(policy)?).await
}

/// Runs the rollout of `options` with live progress and returns its report.
async fn run_fleet(args: &DemoArgs, options: FleetOptions) -> Result<Report> {
    println!(
        "{}: {} nodes (seed {}), at most {} down at once — starting the emulated cluster…",
        options.scheduler.name(),
        args.nodes,
        args.seed,
        options.scheduler.max_unavailable(args.nodes)
    );
    let rota = matches!(options.scheduler, Scheduler::Rota { .. });
    if let Some(kubernetes) = &options.kubernetes {
        println!(
            "a kubeadm cluster at {} (stacked etcd), upgraded to {} one minor at a time: control plane first",
            kubernetes.setup.version, kubernetes.target
        );
    }
    let fleet = Fleet::start(options).await?;
    let mut printer = Printer::stdout(Duration::from_secs(2));
    let stopped = fleet
        .run_to_end(
            args.timeout,
            args.stall_timeout,
            Duration::from_millis(250),
            |s| printer.show(s),
        )
        .await;
    printer.show(&fleet.snapshot());
    printer.finish();
    if stopped == Stopped::AllDone && rota {
        // The report counts a maintenance without its record as a broken invariant: give the
        // leader's record task a moment to write the last ones.
        if let Err(error) = fleet.wait_records_settled(Duration::from_secs(10)).await {
            tracing::warn!(%error, "maintenance records not settled");
        }
    }
    let report = fleet.report(stopped);
    fleet.shutdown().await;
    Ok(report)
}

/// The exit status for these reports (see the module docs).
pub fn exit_code(reports: &[&Report]) -> u8 {
    if reports.iter().any(|r| !r.invariants_hold()) {
        1
    } else if reports.iter().any(|r| !r.complete()) {
        2
    } else {
        0
    }
}

/// `rota-sim demo`.
pub async fn run(args: DemoArgs) -> Result<u8> {
    if args.control_plane == ControlPlaneChoice::Real {
        return crate::real::demo::run(&args).await;
    }
    if args.compare && args.kubernetes_upgrade.is_some() {
        return Err(Error::Invalid(
            "--kubernetes-upgrade cannot be compared with kured (kured does not upgrade Kubernetes)"
                .into(),
        ));
    }
    if args.compare {
        let rota = run_one(&args, PolicyChoice::Rota).await?;
        println!("{}", rota.render());
        let mut others = Vec::new();
        for kured in args.kured_comparisons() {
            let label = kured_label(&kured);
            let mut options = args.fleet_options(PolicyChoice::Kured)?;
            options.scheduler = Scheduler::Kured(kured);
            let mut report = run_fleet(&args, options).await?;
            report.scheduler = label;
            println!("{}", report.render());
            others.push(report);
        }
        let others: Vec<&Report> = others.iter().collect();
        println!("{}", render_comparison(&rota, &others));
        if let Some(path) = &args.report {
            let json = serde_json::json!({
                "rota": rota,
                "kured": others
                    .iter()
                    .map(|other| serde_json::json!({
                        "report": other,
                        "overRotaMakespan": makespan_ratio(&rota, other),
                    }))
                    .collect::<Vec<_>>(),
            });
            write_report(path, &json)?;
        }
        // The status is rota's: an invariant the kured model breaks (it knows nothing of
        // control-plane nodes, for one) is a finding of the comparison, printed above.
        return Ok(exit_code(&[&rota]));
    }
    let report = run_one(&args, args.policy).await?;
    println!("{}", report.render());
    if let Some(path) = &args.report {
        let json =
            serde_json::to_value(&report).map_err(|e| Error::Invalid(format!("report: {e}")))?;
        write_report(path, &json)?;
    }
    Ok(exit_code(&[&report]))
}

fn write_report(path: &std::path::Path, json: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(json).map_err(|e| Error::Invalid(format!("report: {e}")))?;
    std::fs::write(path, text + "\n")?;
    println!("report written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[clap(flatten)]
        demo: DemoArgs,
    }

    #[test]
    fn flags_build_the_fleet() {
        let cli = Cli::try_parse_from([
            "x",
            "--nodes",
            "9",
            "--max-unavailable",
            "2",
            "--api-error-rate",
            "0.1",
            "--fault-never-return",
            "worker-01",
            "--window",
            "22:00-04:00",
        ])
        .unwrap();
        let options = cli.demo.fleet_options(PolicyChoice::Rota).unwrap();
        assert_eq!(options.nodes, 9);
        assert_eq!(options.scheduler.max_unavailable(9), 2);
        assert!(options.faults.never_returns("worker-01"));
        assert_eq!(options.faults.api.error_rate, 0.1);
        let Scheduler::Rota {
            policy,
            coordinators,
            ..
        } = &options.scheduler
        else {
            panic!("not rota");
        };
        assert_eq!(policy.as_ref().unwrap().windows[0].start, "22:00");
        assert_eq!(coordinators.replicas, 2);
        let kured = cli.demo.fleet_options(PolicyChoice::Kured).unwrap();
        let Scheduler::Kured(k) = &kured.scheduler else {
            panic!("not kured");
        };
        assert_eq!(k.drain_timeout, None, "kured's default: no drain timeout");
        assert_eq!(k.period, Duration::from_secs(60));
        assert_eq!(k.concurrency, 2, "by default at rota's concurrency");
        let compared = cli.demo.kured_comparisons();
        assert_eq!(
            compared.len(),
            2,
            "at rota's concurrency and at kured's defaults"
        );
        assert_eq!(compared[1].concurrency, 1);
        assert_eq!(compared[1].period, Duration::from_secs(60));
        assert_eq!(
            kured_label(&compared[0]),
            "kured (concurrency 2, period 60 s)"
        );
        let faster = Cli::try_parse_from(["x", "--kured-period", "5s"]).unwrap();
        let compared = faster.demo.kured_comparisons();
        assert_eq!(compared[0].concurrency, 3);
        assert_eq!(compared[1].concurrency, 1);
        assert!(compared.iter().all(|k| k.period == Duration::from_secs(5)));
        let defaults = Cli::try_parse_from(["x", "--kured-concurrency", "1"]).unwrap();
        assert_eq!(defaults.demo.kured_comparisons().len(), 1);
        let timed = Cli::try_parse_from(["x", "--kured-drain-timeout", "15s"]).unwrap();
        let Scheduler::Kured(k) = timed
            .demo
            .fleet_options(PolicyChoice::Kured)
            .unwrap()
            .scheduler
        else {
            panic!("not kured");
        };
        assert_eq!(k.drain_timeout, Some(Duration::from_secs(15)));
        assert!(Cli::try_parse_from(["x", "--api-error-rate", "2"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "--window", "soon"])
                .unwrap()
                .demo
                .fleet_options(PolicyChoice::Rota)
                .is_err()
        );
    }

    #[test]
    fn kubernetes_upgrade_flag() {
        let cli = Cli::try_parse_from(["x", "--kubernetes-upgrade", "1.32"]).unwrap();
        let options = cli.demo.fleet_options(PolicyChoice::Rota).unwrap();
        let kubernetes = options.kubernetes.clone().unwrap();
        assert_eq!(kubernetes.setup.version, DEMO_KUBERNETES_FROM);
        assert_eq!(kubernetes.target, kubernetes.setup.newest());
        assert_eq!(kubernetes.target.minor, 32);
        assert_eq!(options.expected_maintenances(), 2);
        let Scheduler::Rota { policy, .. } = &options.scheduler else {
            panic!("not rota");
        };
        let upgrade = &policy.as_ref().unwrap().upgrade;
        assert_eq!(
            upgrade.kubernetes_version.as_deref(),
            Some(kubernetes.target.to_string().as_str())
        );
        assert_eq!(upgrade.mode, rota_core::policy::crd::UpgradeMode::None);
        let exact = Cli::try_parse_from(["x", "--kubernetes-upgrade", "v1.31.2"]).unwrap();
        let exact = exact.demo.kubernetes().unwrap().unwrap();
        assert_eq!(exact.target, KubeVersion::new(1, 31, 2));
        for bad in ["1.30", "1.29", "1.31.99", "soon"] {
            let cli = Cli::try_parse_from(["x", "--kubernetes-upgrade", bad]).unwrap();
            assert!(cli.demo.kubernetes().is_err(), "{bad}");
        }
        assert!(cli.demo.fleet_options(PolicyChoice::Kured).is_err());
    }

    #[test]
    fn exit_codes() {
        let report = |done: usize, violations: Vec<String>| Report {
            nodes_done: done,
            invariant_violations: violations,
            ..Report::example()
        };
        assert_eq!(exit_code(&[&report(2, vec![])]), 0);
        assert_eq!(exit_code(&[&report(1, vec![])]), 2);
        assert_eq!(exit_code(&[&report(2, vec!["x".into()])]), 1);
    }
}
