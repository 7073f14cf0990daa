//! `rota-sim demo`: roll maintenance through an emulated cluster with rota (or the kured
//! model, or both) and print what happened, measured by the emulator.
//!
//! Exit status: 0 when every invariant held and every node is done, 1 when an invariant broke
//! (a PDB violation, more nodes down than allowed, a node maintained twice, a fencing token on
//! two nodes), 2 when the rollout did not finish.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rota_core::policy::crd::MaintenanceWindow;

use super::coordinator::CoordinatorOptions;
use super::fleet::{Fleet, FleetOptions, Scheduler, demo_policy};
use super::kured::KuredOptions;
use super::nodes::AgentOptions;
use super::progress::Printer;
use super::report::{Report, render_comparison};
use super::{Error, Result};
use crate::cluster::FaultArgs;
use crate::cluster::args::parse_duration;

/// Who maintains the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyChoice {
    /// rota: coordinator, agents, MaintenancePolicy.
    Rota,
    /// The model of kured with its defaults.
    Kured,
}

/// Flags of `rota-sim demo`.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
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
    /// kured's `--period` at the simulation's scale (1 h → 60 s).
    #[clap(long, env = "ROTA_DEMO_KURED_PERIOD", default_value = "60s", value_parser = parse_duration)]
    pub kured_period: Duration,
    /// kured's `--concurrency`.
    #[clap(long, env = "ROTA_DEMO_KURED_CONCURRENCY", default_value_t = 1)]
    pub kured_concurrency: usize,
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
    fn windows(&self) -> Result<Vec<MaintenanceWindow>> {
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

    /// The fleet for `policy`.
    pub fn fleet_options(&self, policy: PolicyChoice) -> Result<FleetOptions> {
        let mut options = FleetOptions::new(self.nodes, self.seed, self.max_unavailable);
        options.faults = self.fault_flags.faults();
        options.keep_blocked_pdb = self.keep_blocked_pdb;
        options.tight_capacity = self.tight_capacity;
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
                }
            }
            PolicyChoice::Kured => Scheduler::Kured(KuredOptions {
                period: self.kured_period,
                concurrency: self.kured_concurrency.max(1),
                drain_timeout: (!self.kured_drain_timeout.is_zero())
                    .then_some(self.kured_drain_timeout),
                lock_release_delay: self.kured_lock_release_delay,
                seed: self.seed,
                ..KuredOptions::default()
            }),
        };
        Ok(options)
    }
}

/// Runs one rollout with live progress and returns its report.
pub async fn run_one(args: &DemoArgs, policy: PolicyChoice) -> Result<Report> {
    let options = args.fleet_options(policy)?;
    println!(
        "{}: {} nodes (seed {}), at most {} down at once — starting the emulated cluster…",
        options.scheduler.name(),
        args.nodes,
        args.seed,
        options.scheduler.max_unavailable(args.nodes)
    );
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
    if args.compare {
        let rota = run_one(&args, PolicyChoice::Rota).await?;
        println!("{}", rota.render());
        let kured = run_one(&args, PolicyChoice::Kured).await?;
        println!("{}", kured.render());
        println!("{}", render_comparison(&rota, &kured));
        if let Some(path) = &args.report {
            let ratio = if rota.makespan_seconds > 0.0 {
                kured.makespan_seconds / rota.makespan_seconds
            } else {
                0.0
            };
            let json = serde_json::json!({
                "rota": rota,
                "kured": kured,
                "kuredOverRotaMakespan": ratio,
            });
            write_report(path, &json)?;
        }
        return Ok(exit_code(&[&rota, &kured]));
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
    fn exit_codes() {
        let report = |done: usize, violations: Vec<String>| Report {
            scheduler: "rota".into(),
            seed: 1,
            nodes: 2,
            max_unavailable: 1,
            time_scale: String::new(),
            stopped: super::super::report::Stopped::AllDone,
            makespan_seconds: 1.0,
            per_node_cycle_seconds: 1.0,
            per_node_cycle_definition: String::new(),
            lower_bound_seconds: 1.0,
            lower_bound_formula: String::new(),
            makespan_over_lower_bound: 1.0,
            max_unavailable_observed: 1,
            max_control_plane_unavailable_observed: 1,
            pdb_violations: 0,
            pdb_violation_details: Vec::new(),
            evictions: 0,
            pods_disrupted: 0,
            nodes_done: done,
            nodes_failed: 0,
            failed_nodes: Vec::new(),
            nodes_not_started: 0,
            maintained_exactly_once: true,
            maintained_more_than_once: Default::default(),
            fencing_tokens_unique: None,
            fencing_tokens_issued: None,
            invariant_violations: violations,
        };
        assert_eq!(exit_code(&[&report(2, vec![])]), 0);
        assert_eq!(exit_code(&[&report(1, vec![])]), 2);
        assert_eq!(exit_code(&[&report(2, vec!["x".into()])]), 1);
    }
}
