//! The simulated cluster around the emulated API server: one kubelet per node, the workload
//! controllers (Deployments, ReplicaSets, StatefulSets, DaemonSets, garbage collection), the
//! node-lifecycle controller with its taint-based eviction, a scheduler, seeded scenarios and in-memory hosts that rota's real agent code runs against.
//!
//! Everything talks to the API server's in-process [`Store`](crate::apiserver::Store) and is
//! driven by its change stream plus timers for the simulated delays ([`Timings`]); nothing
//! rescans the cluster on a fixed period.
//!
//! Start one with [`Cluster::start`]; [`ClusterHandle`] gives the per-node hosts
//! ([`SimHost`]), run-time [`Faults`] and "wait until" helpers.

pub mod args;
pub mod faults;
mod handle;
pub mod host;
pub mod kubeadm;
mod kubelet;
pub mod lifecycle;
mod node_api;
mod objects;
pub mod remote;
pub mod scenario;
mod scheduler;
mod workloads;

use std::time::Duration;

pub use args::{ClusterArgs, FaultArgs};
pub use faults::Faults;
pub use handle::{Cluster, ClusterHandle, pods_on, settled, wait_for};
pub use host::{PowerState, SimHost};
pub use kubeadm::{KubeadmCluster, ToolAction, ToolRecord};
pub use node_api::{CallError, CallResult};
pub use remote::{RemoteApi, RemoteNodes};
pub use scenario::{HostSpec, KubernetesSetup, NodeSpec, PdbExpectation, Scenario};

/// Errors of the simulated cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the store failed.
    #[error("API: {0}")]
    Api(#[from] crate::apiserver::Error),
    /// A host operation failed.
    #[error("host: {0}")]
    Host(#[from] rota_agent::Error),
    /// A condition did not hold before its deadline.
    #[error("timed out after {timeout:?} waiting for {what}: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// Why the condition still did not hold at the deadline.
        last: String,
    },
    /// No node of that name is simulated.
    #[error("no simulated node {0:?}")]
    UnknownNode(String),
    /// [`Cluster::start`] was called outside a Tokio runtime.
    #[error("the simulated cluster must be started inside a Tokio runtime")]
    NoRuntime,
    /// A simulated node's call to a real API server failed.
    #[error("node {node}: {source}")]
    Remote {
        /// The node.
        node: String,
        /// What the API server answered.
        source: CallError,
    },
    /// The simulated cluster was shut down.
    #[error("the simulated cluster is shut down")]
    Stopped,
}

/// The result type of the simulated cluster.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long simulated things take. The defaults are small so that a rolling reboot of a
/// 24-node cluster with three nodes at a time finishes in seconds.
///
/// Durations that Kubernetes objects state in seconds (a pod's `terminationGracePeriodSeconds`,
/// a toleration's `tolerationSeconds`, a readiness probe's delay, a `preStop` sleep) run at
/// [`Timings::kube_second`] per second: 1/60 s by default, the scale of the whole simulation
/// (one simulated second stands for one real minute: a 1.5 s reboot for 90 s, the default 300 s
/// of `tolerationSeconds` are 5 s, a 30 s grace period 0.5 s). The node-monitor grace period is
/// 1 s (60 s; upstream's default is 50 s since 1.32, 40 s before) and Lease renewals come every
/// 250 ms (15 s; upstream 10 s): the same four renewals per grace period as upstream, and wide
/// enough that a simulated kubelet delayed by a busy machine (debug builds on two cores) does
/// not go `Unknown`. With 24 nodes that is about 100 Lease writes a second, which the store and
/// its watchers bear easily; the node objects themselves are written only on changes and every
/// [`Timings::node_status_report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    /// From a pod's binding to its Ready condition (containers started, readiness passed) for
    /// a pod without a readiness probe delay; a probe's `initialDelaySeconds` adds to it.
    pub pod_start: Duration,
    /// How long a terminating pod's containers take to stop when nothing holds them (a
    /// `preStop` sleep adds to it); never longer than the pod's grace period.
    pub pod_stop: Duration,
    /// How long a rebooting node is down before its kubelet starts again.
    pub reboot: Duration,
    /// From a kubelet start (boot or restart) to the node's Ready condition.
    pub node_ready: Duration,
    /// From a kubelet start after a boot to its first sync of the pods bound to it (their
    /// restarted status). Until then the API shows their status from before the reboot, and
    /// a node that rebooted within [`Timings::node_monitor_grace`] still has them Ready.
    pub pod_resync: Duration,
    /// Interval of the kubelet's node Lease renewals (upstream: every 10 s, a quarter of the
    /// 40 s lease), the heartbeat the node-lifecycle controller follows.
    pub heartbeat: Duration,
    /// Interval at which a kubelet whose status did not change still refreshes the node's
    /// `lastHeartbeatTime` (upstream `nodeStatusReportFrequency`, 5 min); every change of
    /// the node's status is written at once.
    pub node_status_report: Duration,
    /// How long the node-lifecycle controller waits for a silent kubelet before it marks the
    /// node `Unknown` and taints it unreachable (upstream `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace: Duration,
    /// One second of the durations that objects state in seconds (see above).
    pub kube_second: Duration,
    /// Interval of the kubelet's periodic sync of its pods (upstream `syncFrequency`, 1 min):
    /// it lists them again and starts what it missed or failed to start.
    pub pod_sync: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            pod_start: Duration::from_millis(300),
            pod_stop: Duration::from_millis(200),
            reboot: Duration::from_millis(1500),
            node_ready: Duration::from_millis(300),
            pod_resync: Duration::from_millis(100),
            heartbeat: Duration::from_millis(250),
            node_status_report: Duration::from_secs(5),
            node_monitor_grace: Duration::from_secs(1),
            kube_second: Duration::from_secs(1) / 60,
            pod_sync: Duration::from_secs(1),
        }
    }
}

impl Timings {
    /// Every duration multiplied by `factor` (`2.0`: twice as slow). Negative or non-finite
    /// factors count as 1.
    pub fn scaled(&self, factor: f64) -> Timings {
        let factor = if factor.is_finite() && factor >= 0.0 {
            factor
        } else {
            1.0
        };
        let scale = |d: Duration| d.mul_f64(factor);
        Timings {
            pod_start: scale(self.pod_start),
            pod_stop: scale(self.pod_stop),
            reboot: scale(self.reboot),
            node_ready: scale(self.node_ready),
            pod_resync: scale(self.pod_resync),
            heartbeat: scale(self.heartbeat),
            node_status_report: scale(self.node_status_report),
            node_monitor_grace: scale(self.node_monitor_grace),
            kube_second: scale(self.kube_second),
            pod_sync: scale(self.pod_sync),
        }
    }

    /// `seconds` as an object states them (grace periods, `tolerationSeconds`), in simulated
    /// time; negative counts as 0.
    pub fn kube_seconds(&self, seconds: i64) -> Duration {
        self.kube_second
            .saturating_mul(u32::try_from(seconds.max(0)).unwrap_or(u32::MAX))
    }

    /// How long `pod` takes from its (re)start to Ready: [`Timings::pod_start`] plus the
    /// longest `initialDelaySeconds` of its containers' readiness probes.
    pub fn pod_start_time(&self, pod: &serde_json::Value) -> Duration {
        self.pod_start + self.kube_seconds(pod_seconds(pod, "/readinessProbe/initialDelaySeconds"))
    }

    /// How long `pod`'s containers take to stop once it is deleted with `grace` seconds:
    /// [`Timings::pod_stop`] plus the longest `preStop` sleep of its containers, cut at the
    /// grace period (the kubelet kills what is still running then).
    pub fn pod_stop_time(&self, pod: &serde_json::Value, grace: i64) -> Duration {
        let wants =
            self.pod_stop + self.kube_seconds(pod_seconds(pod, "/lifecycle/preStop/sleep/seconds"));
        wants.min(self.kube_seconds(grace))
    }
}

impl Timings {
    /// The time one node's maintenance cannot go below, whatever the coordinator does, given
    /// the pods bound to it: its slowest evicted pod stops (DaemonSet and mirror pods are not
    /// evicted), the node reboots and its kubelet reports Ready, and the kubelet's first pod
    /// sync restarts the DaemonSet and mirror pods, the slowest of which must be Ready again.
    pub fn node_cycle<'a>(
        &self,
        pods: impl IntoIterator<Item = &'a serde_json::Value>,
    ) -> Duration {
        let mut slowest_stop = Duration::ZERO;
        let mut slowest_restart = Duration::ZERO;
        for pod in pods {
            let stays = crate::apiserver::meta::controller_ref(pod).is_some_and(|r| {
                r.get("kind").and_then(serde_json::Value::as_str) == Some("DaemonSet")
            }) || pod
                .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                .is_some();
            if stays {
                slowest_restart = slowest_restart.max(self.pod_start_time(pod));
            } else {
                let grace = pod
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(30);
                slowest_stop = slowest_stop.max(self.pod_stop_time(pod, grace));
            }
        }
        slowest_stop + self.reboot + self.node_ready.max(self.pod_resync + slowest_restart)
    }
}

/// The largest integer at `pointer` over the pod's containers (0 when none has it).
fn pod_seconds(pod: &serde_json::Value, pointer: &str) -> i64 {
    pod.pointer("/spec/containers")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer(pointer).and_then(serde_json::Value::as_i64))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_cycle_is_its_slowest_drain_the_reboot_and_its_slowest_restart() {
        let t = Timings::default();
        let slow_stop = serde_json::json!({"spec": {
            "terminationGracePeriodSeconds": 60,
            "containers": [{"name": "db", "lifecycle": {"preStop": {"sleep": {"seconds": 30}}}}],
        }});
        let daemon = serde_json::json!({
            "metadata": {"ownerReferences": [{"kind": "DaemonSet", "name": "cni", "controller": true}]},
            "spec": {"containers": [{"name": "cni", "readinessProbe": {"initialDelaySeconds": 30}}]},
        });
        let plain = serde_json::json!({"spec": {"containers": [{"name": "web"}]}});
        let cycle = t.node_cycle([&slow_stop, &daemon, &plain]);
        let expected = t.pod_stop
            + t.kube_seconds(30)
            + t.reboot
            + t.pod_resync
            + t.pod_start
            + t.kube_seconds(30);
        assert_eq!(cycle, expected);
        assert_eq!(t.node_cycle([]), t.reboot + t.node_ready);
    }

    #[test]
    fn scaling_timings() {
        let t = Timings::default().scaled(2.0);
        assert_eq!(t.reboot, Duration::from_secs(3));
        assert_eq!(t.pod_start, Duration::from_millis(600));
        assert_eq!(Timings::default().scaled(f64::NAN), Timings::default());
        assert_eq!(Timings::default().scaled(-1.0), Timings::default());
        // One simulated second per real minute: 300 s of a toleration are 5 s, 10 s at half pace.
        assert!((Timings::default().kube_seconds(300).as_secs_f64() - 5.0).abs() < 1e-3);
        assert!((t.kube_seconds(300).as_secs_f64() - 10.0).abs() < 1e-3);
    }

    #[test]
    fn pod_times_follow_probes_pre_stop_hooks_and_grace() {
        let t = Timings::default();
        let plain = serde_json::json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(t.pod_start_time(&plain), t.pod_start);
        assert_eq!(t.pod_stop_time(&plain, 30), t.pod_stop);
        assert_eq!(t.pod_stop_time(&plain, 0), Duration::ZERO);
        let slow = serde_json::json!({"spec": {"containers": [
            {"name": "a", "readinessProbe": {"initialDelaySeconds": 40}},
            {"name": "b", "lifecycle": {"preStop": {"sleep": {"seconds": 20}}}},
        ]}});
        assert_eq!(t.pod_start_time(&slow), t.pod_start + t.kube_seconds(40));
        assert_eq!(t.pod_stop_time(&slow, 60), t.pod_stop + t.kube_seconds(20));
        assert_eq!(t.pod_stop_time(&slow, 10), t.kube_seconds(10));
    }
}
