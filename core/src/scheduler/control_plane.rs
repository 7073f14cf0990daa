//! The control-plane quorum guard: whatever the pools' `maxUnavailable` say, a kubeadm
//! control-plane node runs a stacked etcd member and an API server that no PDB covers, so
//! maintaining several at once can lose etcd quorum and take the API down.
//!
//! A control-plane node is admitted only when
//! - the control-plane nodes unavailable in the whole cluster (holding a slot, NotReady, or
//!   cordoned by anyone, plus those admitted earlier in the plan), with this one, number at most
//!   the cluster's limit: the smallest `controlPlane.maxUnavailable` of the policies that select
//!   control-plane nodes, so that two pools cannot together break it;
//! - every *other* control-plane node is Ready and so are its static control-plane pods;
//! - if it runs an etcd member, the members down (holding a slot, on a NotReady node, or whose
//!   etcd pod is not Ready, plus those admitted earlier in the plan), with this one, number at
//!   most ⌊(m−1)/2⌋ of the m members: quorum stays up. An etcd of one or two members has no
//!   member to spare; its members wait unless every policy selecting control-plane nodes sets
//!   `controlPlane.allowEtcdQuorumLoss`, and then go one at a time.

use std::collections::{BTreeMap, HashMap};

use crate::model::NodeName;
use crate::policy::DEFAULT_CONTROL_PLANE_MAX_UNAVAILABLE;

use super::plan::{Unavailability, WaitReason};
use super::snapshot::NodeState;
use super::{PoolState, distinct_pools};

/// The guard's state during one decision.
pub(super) struct Guard<'a> {
    /// Most control-plane nodes unavailable at once.
    max: usize,
    /// Whether a one- or two-member etcd may lose quorum for a maintenance.
    allow_quorum_loss: bool,
    /// Control-plane nodes unavailable, and why.
    unavailable: BTreeMap<&'a str, Unavailability>,
    /// Control-plane nodes that are not healthy, with what is wrong.
    unhealthy: BTreeMap<&'a str, Vec<String>>,
    /// Etcd members.
    members: usize,
    /// Etcd members down, and why.
    etcd_down: BTreeMap<&'a str, &'static str>,
}

impl<'a> Guard<'a> {
    /// The guard for `nodes` in `pools`; `unavailable` says why a node is unavailable, if it
    /// is.
    pub(super) fn new(
        nodes: &'a [NodeState],
        pools: &HashMap<&str, PoolState<'_>>,
        unavailable: impl Fn(&NodeState) -> Option<Unavailability>,
    ) -> Self {
        let mut guard = Guard {
            max: DEFAULT_CONTROL_PLANE_MAX_UNAVAILABLE as usize,
            allow_quorum_loss: false,
            unavailable: BTreeMap::new(),
            unhealthy: BTreeMap::new(),
            members: 0,
            etcd_down: BTreeMap::new(),
        };
        let mut limits: Vec<(u32, bool)> = Vec::new();
        for node in nodes.iter().filter(|n| n.control_plane) {
            let why = unavailable(node);
            if let Some(why) = why {
                guard.unavailable.insert(node.name.as_str(), why);
            }
            let problems = problems(node);
            if node.etcd_member() {
                guard.members += 1;
                let down = match why {
                    Some(Unavailability::HoldsSlot) => Some("holds a slot"),
                    _ if !node.ready => Some("node NotReady"),
                    _ if etcd_unready(node) => Some("etcd pod not Ready"),
                    _ => None,
                };
                if let Some(down) = down {
                    guard.etcd_down.insert(node.name.as_str(), down);
                }
            }
            if !problems.is_empty() {
                guard.unhealthy.insert(node.name.as_str(), problems);
            }
            limits.extend(distinct_pools(node).into_iter().filter_map(|pool| {
                let policy = &pools.get(pool)?.pool.policy.control_plane;
                Some((policy.max_unavailable, policy.allow_etcd_quorum_loss))
            }));
        }
        if let Some(max) = limits.iter().map(|(max, _)| *max).min() {
            guard.max = max.max(1) as usize;
        }
        guard.allow_quorum_loss = !limits.is_empty() && limits.iter().all(|(_, allow)| *allow);
        guard
    }

    /// Most etcd members down at once.
    fn max_down(&self) -> usize {
        let spare = self.members.saturating_sub(1) / 2;
        if spare == 0 && self.allow_quorum_loss {
            1
        } else {
            spare
        }
    }

    /// Adds the reasons the guard holds `node` back for.
    pub(super) fn check(&self, node: &NodeState, reasons: &mut Vec<WaitReason>) {
        if !node.control_plane {
            return;
        }
        let name = node.name.as_str();
        let already = self.unavailable.contains_key(name);
        if self.unavailable.len() + usize::from(!already) > self.max {
            reasons.push(WaitReason::ControlPlaneUnavailable {
                max: self.max,
                unavailable: others(&self.unavailable, name, |why| *why),
            });
        }
        let unhealthy = others(&self.unhealthy, name, Clone::clone);
        if !unhealthy.is_empty() {
            reasons.push(WaitReason::ControlPlaneUnhealthy { nodes: unhealthy });
        }
        if node.etcd_member() {
            let already = self.etcd_down.contains_key(name);
            let max_down = self.max_down();
            if self.etcd_down.len() + usize::from(!already) > max_down {
                reasons.push(WaitReason::EtcdQuorum {
                    members: self.members,
                    max_down,
                    down: others(&self.etcd_down, name, |why| (*why).to_owned()),
                });
            }
        }
    }

    /// Takes what admitting `node` uses.
    pub(super) fn commit(&mut self, node: &'a NodeState) {
        if !node.control_plane {
            return;
        }
        let name = node.name.as_str();
        self.unavailable
            .entry(name)
            .or_insert(Unavailability::AdmittedNow);
        if node.etcd_member() {
            self.etcd_down.entry(name).or_insert("admitted now");
        }
    }
}

/// The entries of `map` other than `name`'s, owned.
fn others<V, T>(map: &BTreeMap<&str, V>, name: &str, f: impl Fn(&V) -> T) -> Vec<(NodeName, T)> {
    map.iter()
        .filter(|(other, _)| **other != name)
        .map(|(other, v)| ((*other).to_owned(), f(v)))
        .collect()
}

fn etcd_unready(node: &NodeState) -> bool {
    node.control_plane_pods
        .iter()
        .any(|p| p.component == super::ControlPlanePod::ETCD && !p.ready)
}

/// What is wrong with a control-plane node: NotReady, static pods not Ready.
fn problems(node: &NodeState) -> Vec<String> {
    let mut problems = Vec::new();
    if !node.ready {
        problems.push("NotReady".to_owned());
    }
    problems.extend(
        node.control_plane_pods
            .iter()
            .filter(|p| !p.ready)
            .map(|p| format!("{} not Ready", p.pod.name)),
    );
    problems
}
