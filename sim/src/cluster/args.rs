//! Command-line flags of the simulated cluster (`rota-sim serve --nodes 24 --seed 7 ...`), and
//! the fault-injection flags that `rota-sim serve` and `rota-sim demo` share ([`FaultArgs`]).

use std::time::Duration;

use crate::apiserver::FaultConfig;

use super::{Faults, Scenario, Timings};

/// A duration in jiff's friendly (`300ms`, `1.5s`, `2m`) or ISO 8601 (`PT1.5S`) form; the
/// value parser of every duration flag of `rota-sim`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{s:?} is negative"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

fn parse_scale(s: &str) -> Result<f64, String> {
    let scale: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if scale.is_finite() && scale > 0.0 {
        Ok(scale)
    } else {
        Err(format!("{s} is not a positive number"))
    }
}

/// The simulated cluster's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Simulate a cluster of this many nodes around the API server (0: none).
    #[clap(long, env = "ROTA_SIM_NODES", default_value_t = 0)]
    pub nodes: usize,
    /// Seed of the generated scenario: the same seed gives the same cluster.
    #[clap(long, env = "ROTA_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Multiply every simulated duration by this factor (2 = twice as slow).
    #[clap(long, env = "ROTA_SIM_TIME_SCALE", default_value = "1", value_parser = parse_scale)]
    pub time_scale: f64,
    /// Time from a pod's binding to its readiness (e.g. `300ms`).
    #[clap(long, env = "ROTA_SIM_POD_START", value_parser = parse_duration)]
    pub pod_start: Option<Duration>,
    /// Longest time a terminating pod takes to stop.
    #[clap(long, env = "ROTA_SIM_POD_STOP", value_parser = parse_duration)]
    pub pod_stop: Option<Duration>,
    /// Time a rebooting node is down.
    #[clap(long, env = "ROTA_SIM_REBOOT", value_parser = parse_duration)]
    pub reboot: Option<Duration>,
    /// Time from a kubelet start to the node's readiness.
    #[clap(long, env = "ROTA_SIM_NODE_READY", value_parser = parse_duration)]
    pub node_ready: Option<Duration>,
    /// Interval of kubelet heartbeats (node Lease renewals).
    #[clap(long, env = "ROTA_SIM_HEARTBEAT", value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// How long the node-lifecycle controller waits for a silent kubelet before the node
    /// turns `Unknown` (the node-monitor grace period).
    #[clap(long, env = "ROTA_SIM_NODE_MONITOR_GRACE", value_parser = parse_duration)]
    pub node_monitor_grace: Option<Duration>,
    /// Simulated length of one second that objects state (grace periods,
    /// `tolerationSeconds`, probe delays).
    #[clap(long, env = "ROTA_SIM_KUBE_SECOND", value_parser = parse_duration)]
    pub kube_second: Option<Duration>,
    /// Leave only this share of spare CPU on the workers (e.g. `0.15`), so that draining a
    /// few of them can leave pods Pending (see `Scenario::tighten_capacity`).
    #[clap(long, env = "ROTA_SIM_TIGHT_CAPACITY")]
    pub tight_capacity: Option<f64>,
    /// The faults to inject.
    #[clap(flatten)]
    pub fault_flags: FaultArgs,
}

impl ClusterArgs {
    /// The scenario these flags ask for.
    pub fn scenario(&self) -> Scenario {
        let mut scenario = Scenario::generate(self.nodes, self.seed);
        if let Some(headroom) = self.tight_capacity {
            scenario.tighten_capacity(headroom);
        }
        scenario
    }

    /// The timings: defaults, overridden per flag, then scaled.
    pub fn timings(&self) -> Timings {
        let defaults = Timings::default();
        Timings {
            pod_start: self.pod_start.unwrap_or(defaults.pod_start),
            pod_stop: self.pod_stop.unwrap_or(defaults.pod_stop),
            reboot: self.reboot.unwrap_or(defaults.reboot),
            node_ready: self.node_ready.unwrap_or(defaults.node_ready),
            heartbeat: self.heartbeat.unwrap_or(defaults.heartbeat),
            node_monitor_grace: self
                .node_monitor_grace
                .unwrap_or(defaults.node_monitor_grace),
            kube_second: self.kube_second.unwrap_or(defaults.kube_second),
            ..defaults
        }
        .scaled(self.time_scale)
    }

    /// The faults.
    pub fn faults(&self) -> Faults {
        self.fault_flags.faults()
    }
}

/// The fault-injection flags, declared once for every command that runs a simulated cluster
/// (`rota-sim serve` and `rota-sim demo` flatten them), so both read the same `ROTA_SIM_*`
/// environment variables.
#[derive(Clone, Debug, clap::Args)]
pub struct FaultArgs {
    /// Nodes that never come back from a reboot (comma-separated).
    #[clap(long, env = "ROTA_SIM_FAULT_NEVER_RETURN", value_delimiter = ',')]
    pub fault_never_return: Vec<String>,
    /// Nodes whose kubelet stays NotReady after a kubelet upgrade (comma-separated).
    #[clap(long, env = "ROTA_SIM_FAULT_KUBELET_FAILS", value_delimiter = ',')]
    pub fault_kubelet_fails: Vec<String>,
    /// Nodes whose kubelet stays NotReady once the node has rebooted (comma-separated).
    #[clap(
        long,
        env = "ROTA_SIM_FAULT_KUBELET_FAILS_AFTER_REBOOT",
        value_delimiter = ','
    )]
    pub fault_kubelet_fails_after_reboot: Vec<String>,
    /// Nodes on which `kubeadm upgrade apply` fails (comma-separated).
    #[clap(
        long,
        env = "ROTA_SIM_FAULT_KUBEADM_APPLY_FAILS",
        value_delimiter = ','
    )]
    pub fault_kubeadm_apply_fails: Vec<String>,
    /// Share of API requests answered with an error (0..=1).
    #[clap(long, env = "ROTA_SIM_API_ERROR_RATE", default_value = "0", value_parser = parse_rate)]
    pub api_error_rate: f64,
    /// Status codes of injected API errors (500, 429, 503; default all three).
    #[clap(long, env = "ROTA_SIM_API_ERROR_CODES", value_delimiter = ',')]
    pub api_error_codes: Vec<u16>,
    /// Latency added to every API request (e.g. `20ms`).
    #[clap(long, env = "ROTA_SIM_API_LATENCY", value_parser = parse_duration)]
    pub api_latency: Option<Duration>,
    /// Close every open watch this often.
    #[clap(long, env = "ROTA_SIM_DROP_WATCHES_EVERY", value_parser = parse_duration)]
    pub drop_watches_every: Option<Duration>,
}

impl FaultArgs {
    /// The faults these flags ask for.
    pub fn faults(&self) -> Faults {
        Faults {
            never_return: self.fault_never_return.iter().cloned().collect(),
            kubelet_fails_after_upgrade: self.fault_kubelet_fails.iter().cloned().collect(),
            kubelet_fails_after_reboot: self
                .fault_kubelet_fails_after_reboot
                .iter()
                .cloned()
                .collect(),
            kubeadm_apply_fails: self.fault_kubeadm_apply_fails.iter().cloned().collect(),
            api: FaultConfig {
                error_rate: self.api_error_rate,
                error_codes: self.api_error_codes.clone(),
                latency: self.api_latency.unwrap_or_default(),
                not_ready: None,
            },
            drop_watches_every: self.drop_watches_every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[clap(flatten)]
        cluster: ClusterArgs,
    }

    #[test]
    fn flags_build_timings_and_faults() {
        let cli = Cli::try_parse_from([
            "x",
            "--nodes",
            "6",
            "--seed",
            "9",
            "--reboot",
            "2s",
            "--pod-start",
            "100ms",
            "--time-scale",
            "0.5",
            "--fault-never-return",
            "worker-01,worker-02",
            "--api-error-rate",
            "0.1",
            "--api-latency",
            "20ms",
            "--api-error-codes",
            "429,503",
            "--fault-kubelet-fails",
            "worker-03",
            "--fault-kubelet-fails-after-reboot",
            "worker-04",
            "--drop-watches-every",
            "5s",
            "--fault-kubeadm-apply-fails",
            "cp-1",
        ])
        .unwrap();
        let t = cli.cluster.timings();
        assert_eq!(t.reboot, Duration::from_secs(1));
        assert_eq!(t.pod_start, Duration::from_millis(50));
        assert_eq!(t.pod_stop, Timings::default().pod_stop / 2);
        let f = cli.cluster.faults();
        assert!(f.never_returns("worker-02"));
        assert_eq!(f.api.error_rate, 0.1);
        assert_eq!(f.api.latency, Duration::from_millis(20));
        assert_eq!(f.api.error_codes, vec![429, 503]);
        assert!(f.kubelet_fails("worker-03"));
        assert!(f.kubelet_fails_after_reboot("worker-04") && !f.kubelet_fails("worker-04"));
        assert_eq!(f.drop_watches_every, Some(Duration::from_secs(5)));
        assert!(f.kubeadm_apply_fails("cp-1"));
        assert_eq!(cli.cluster.scenario(), Scenario::generate(6, 9));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["x", "--api-error-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["x", "--time-scale", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--reboot", "-1s"]).is_err());
        assert!(Cli::try_parse_from(["x", "--reboot", "soon"]).is_err());
    }
}
