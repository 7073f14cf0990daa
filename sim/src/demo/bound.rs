//! The lower bound of a rollout's makespan from the scenario's own timings, not from the run:
//! what no scheduler could beat on this cluster.
//!
//! Each node that must reboot is unavailable for at least its intrinsic cycle: its slowest pod's
//! termination (the drain cannot end before), the reboot, and then the later of the kubelet
//! reporting Ready and the node's slowest DaemonSet pod Ready again after the kubelet resyncs
//! it (the health gate waits for them). Nodes that need no reboot add nothing. With at most
//! `k` nodes down at once and at most one control-plane node, the makespan is at least the
//! longest cycle, the sum of cycles over `k`, and the sum of the control-plane nodes' cycles.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One node's intrinsic cycle ([`crate::cluster::Timings::node_cycle`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCycle {
    /// The node.
    pub node: String,
    /// Whether it is a control-plane node (one at a time).
    pub control_plane: bool,
    /// The cycle, seconds.
    pub seconds: f64,
}

impl NodeCycle {
    /// `node`'s cycle of `cycle`.
    pub fn new(node: &str, control_plane: bool, cycle: Duration) -> NodeCycle {
        NodeCycle {
            node: node.to_string(),
            control_plane,
            seconds: cycle.as_secs_f64(),
        }
    }

    /// The whole cycle, seconds.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }
}

/// The lower bound and how it was reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    /// Seconds.
    pub seconds: f64,
    /// The terms with their numbers, the largest being the bound.
    pub formula: String,
}

/// The makespan's lower bound for `cycles` with `k` nodes and one control-plane node at once.
pub fn lower_bound(cycles: &[NodeCycle], k: usize) -> Bound {
    let k = k.max(1);
    let longest = cycles
        .iter()
        .max_by(|a, b| a.seconds().total_cmp(&b.seconds()));
    let total: f64 = cycles.iter().map(NodeCycle::seconds).sum();
    let control_plane: f64 = cycles
        .iter()
        .filter(|c| c.control_plane)
        .map(NodeCycle::seconds)
        .sum();
    let spread = total / k as f64;
    let longest_seconds = longest.map_or(0.0, NodeCycle::seconds);
    let seconds = longest_seconds.max(spread).max(control_plane);
    let mut formula = format!(
        "max(longest cycle {longest_seconds:.2} s, sum of {} cycles / maxUnavailable = {total:.2} s / {k} = {spread:.2} s, control-plane cycles one at a time {control_plane:.2} s) = {seconds:.2} s",
        cycles.len()
    );
    if let Some(longest) = longest {
        let _ = write!(
            formula,
            "; a node's cycle is its slowest pod's termination + reboot + kubelet and DaemonSet pods Ready again, from the scenario's timings (longest: {})",
            longest.node
        );
    }
    Bound { seconds, formula }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_largest_of_its_three_terms() {
        let node =
            |name: &str, cp: bool, secs: u64| NodeCycle::new(name, cp, Duration::from_secs(secs));
        // Spread over k dominates.
        let workers: Vec<NodeCycle> = (0..6).map(|i| node(&format!("w{i}"), false, 2)).collect();
        assert_eq!(lower_bound(&workers, 3).seconds, 4.0);
        // One long node dominates.
        let mut skewed = workers.clone();
        skewed.push(node("slow", false, 10));
        assert_eq!(lower_bound(&skewed, 3).seconds, 10.0);
        // Control-plane nodes go one at a time.
        let mut cps = workers;
        cps.extend((0..3).map(|i| node(&format!("cp{i}"), true, 3)));
        let bound = lower_bound(&cps, 6);
        assert_eq!(bound.seconds, 9.0, "{}", bound.formula);
        assert!(
            bound
                .formula
                .contains("control-plane cycles one at a time 9.00 s")
        );
        assert_eq!(lower_bound(&[], 3).seconds, 0.0);
    }
}
