//! Property test of Kubernetes upgrade rollouts: for random clusters and targets, the rollout's
//! requests ([`rota_core::upgrade::plan`]) admitted by the scheduler never break the version skew
//! policy or the control-plane-first rule at any instant, never take two control-plane nodes at
//! once, never skip a minor, and bring every node to the target.
//!
//! Each round plans, schedules, then performs every admitted upgrade the kubeadm way in a random
//! interleaving of its steps: on a control-plane node its static kube-apiserver,
//! controller-manager and scheduler move first (`kubeadm upgrade apply`/`node`), then its
//! kubelet; on a worker only the kubelet moves. The cluster is checked after every single step.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use jiff::Timestamp;
use proptest::prelude::*;
use rota_core::model::{KubeadmStep, Operation, Origin, SlotRequest};
use rota_core::policy::{KubeVersion, MaintenancePolicySpec, NamespacedName, validate};
use rota_core::scheduler::{ControlPlanePod, NodeState, Pool, Snapshot, schedule};
use rota_core::upgrade::{self, ClusterVersions, is_minor_only};

const POOL: &str = "all";

fn now() -> Timestamp {
    "2025-06-04T12:00:00Z".parse().unwrap()
}

/// The patch the package sources offer as the newest of a minor (what a minor-only step
/// resolves to on the node).
fn newest_patch(minor: u32) -> u32 {
    minor % 7 + 1
}

#[derive(Clone, Debug)]
struct Case {
    /// Control-plane nodes' starting patch (all on the control plane's minor).
    control_plane: Vec<u32>,
    /// Workers: (minors behind the control plane, patch).
    workers: Vec<(u32, u32)>,
    /// The control plane's minor.
    minor: u32,
    /// Minors the target is ahead, and its patch.
    ahead: u32,
    target_patch: u32,
    max_unavailable: u32,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(0u32..4, 1..=5),
        prop::collection::vec((0u32..=3, 0u32..4), 0..=8),
        28u32..32,
        0u32..=3,
        0u32..9,
        1u32..4,
    )
        .prop_map(
            |(control_plane, workers, minor, ahead, target_patch, max_unavailable)| Case {
                control_plane,
                workers,
                minor,
                ahead,
                target_patch,
                max_unavailable,
            },
        )
}

fn static_pod(node: &str, component: &str, version: Option<KubeVersion>) -> ControlPlanePod {
    ControlPlanePod {
        pod: NamespacedName::new("kube-system", format!("{component}-{node}")),
        component: component.to_owned(),
        ready: true,
        version,
    }
}

fn node(name: String, control_plane: bool, version: KubeVersion) -> NodeState {
    let control_plane_pods = if control_plane {
        vec![
            static_pod(&name, ControlPlanePod::ETCD, None),
            static_pod(&name, upgrade::API_SERVER, Some(version)),
            static_pod(&name, upgrade::CONTROLLER_MANAGER, Some(version)),
            static_pod(&name, upgrade::SCHEDULER, Some(version)),
        ]
    } else {
        Vec::new()
    };
    NodeState {
        name,
        pools: vec![POOL.to_owned()],
        ready: true,
        control_plane,
        control_plane_pods,
        kubelet_version: Some(version),
        ..NodeState::default()
    }
}

/// The version a step's text resolves to on the node.
fn resolve(version: &str) -> KubeVersion {
    let v: KubeVersion = version.parse().unwrap();
    if is_minor_only(version) {
        KubeVersion::new(v.major, v.minor, newest_patch(v.minor))
    } else {
        v
    }
}

/// The cluster keeps the skew policy and the control-plane-first rule.
fn check(nodes: &[NodeState], what: &str) -> Result<(), TestCaseError> {
    let versions = ClusterVersions::of(nodes, None);
    let problems = versions.problems();
    prop_assert!(problems.is_empty(), "{what}: {problems:?}");
    let control_plane_oldest = nodes
        .iter()
        .filter(|n| n.control_plane)
        .filter_map(|n| n.kubelet_version)
        .min()
        .unwrap();
    for worker in nodes.iter().filter(|n| !n.control_plane) {
        let kubelet = worker.kubelet_version.unwrap();
        prop_assert!(
            kubelet.minor_version() <= control_plane_oldest.minor_version(),
            "{what}: worker {} at {kubelet} ahead of control-plane kubelet {control_plane_oldest}",
            worker.name
        );
    }
    Ok(())
}

fn set_components(node: &mut NodeState, version: KubeVersion) {
    for pod in &mut node.control_plane_pods {
        if pod.component != ControlPlanePod::ETCD {
            pod.version = Some(version);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn rollouts_keep_the_skew_policy_at_every_step(case in cases(), seed in any::<u64>()) {
        let mut rng = seed;
        let mut next = move |n: usize| {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(rng >> 33).unwrap() % n.max(1)
        };
        let mut nodes: Vec<NodeState> = Vec::new();
        for (i, patch) in case.control_plane.iter().enumerate() {
            nodes.push(node(format!("cp-{i}"), true, KubeVersion::new(1, case.minor, *patch)));
        }
        for (i, (behind, patch)) in case.workers.iter().enumerate() {
            nodes.push(node(
                format!("w-{i}"),
                false,
                KubeVersion::new(1, case.minor - behind, *patch),
            ));
        }
        // The control plane's patches may differ; a target below one of them is a downgrade.
        let target = KubeVersion::new(1, case.minor + case.ahead, case.target_patch);
        check(&nodes, "start")?;
        let spec: MaintenancePolicySpec = serde_json::from_value(serde_json::json!({
            "maxUnavailable": case.max_unavailable,
            // One- and two-member etcds are upgraded too, one member at a time.
            "controlPlane": {"allowEtcdQuorumLoss": true},
            "upgrade": {"kubernetesVersion": target.to_string()},
        })).unwrap();
        let pool = Pool {
            name: POOL.to_owned(),
            policy: Arc::new(validate(&spec).unwrap()),
            failures: 0,
            firing_alerts: Vec::new(),
            alerts_unknown: None,
            rollout_held: None,
        };
        let mut rounds = 0;
        loop {
            let versions = ClusterVersions::of(&nodes, None);
            let rollout = match upgrade::plan(POOL, target, &nodes, &versions) {
                Ok(rollout) => rollout,
                Err(refusals) => {
                    // Only a real downgrade is refused, and nothing moved.
                    prop_assert_eq!(rounds, 0);
                    prop_assert!(nodes.iter().any(|n| n.kubelet_version.unwrap() > target), "{:?}", refusals);
                    return Ok(());
                }
            };
            if rollout.steps.is_empty() {
                break;
            }
            rounds += 1;
            prop_assert!(rounds <= 200, "no progress: {:?}", rollout.steps);
            let applies = rollout.steps.iter().filter(|s| s.applies()).count();
            prop_assert!(applies <= 1, "two nodes apply at once: {:?}", rollout.steps);
            let queue: Vec<SlotRequest> = rollout
                .steps
                .iter()
                .map(|s| SlotRequest {
                    node: s.node.clone(),
                    operation: s.operation.clone(),
                    origin: Origin::Rollout,
                    requested_at: now(),
                    not_before: None,
                })
                .collect();
            let snapshot = Snapshot {
                pools: vec![pool.clone()],
                nodes: nodes.clone(),
                api_server_version: None,
                slots: Vec::new(),
                queue,
                pdbs: Vec::new(),
            };
            let plan = schedule(&snapshot, now());
            prop_assert!(!plan.admit.is_empty(), "stuck: {:?}", plan.waiting);
            let control_plane_admitted = plan
                .admit
                .iter()
                .filter(|a| nodes.iter().any(|n| n.name == a.node && n.control_plane))
                .count();
            prop_assert!(control_plane_admitted <= 1, "{:?}", plan.admit);
            // Each admitted upgrade as its steps: (node index, step 0 = components, 1 = kubelet).
            let mut pending: Vec<(usize, u8, KubeVersion, bool)> = Vec::new();
            for admission in &plan.admit {
                let Operation::KubernetesUpgrade { version, kubeadm } = &admission.request.operation else {
                    prop_assert!(false, "not a Kubernetes upgrade: {:?}", admission);
                    unreachable!()
                };
                let i = nodes.iter().position(|n| n.name == admission.node).unwrap();
                let to = resolve(version);
                let from = nodes[i].kubelet_version.unwrap();
                prop_assert!(to > from && to.minor <= from.minor + 1, "{from} to {to}");
                if *kubeadm == KubeadmStep::Apply {
                    prop_assert!(nodes[i].control_plane);
                }
                pending.push((i, u8::from(!nodes[i].control_plane), to, nodes[i].control_plane));
            }
            while !pending.is_empty() {
                let k = next(pending.len());
                let (i, step, to, control_plane) = pending[k];
                if step == 0 {
                    set_components(&mut nodes[i], to);
                    pending[k].1 = 1;
                } else {
                    nodes[i].kubelet_version = Some(to);
                    pending.swap_remove(k);
                }
                check(&nodes, &format!("round {rounds}, {} step {step} to {to} (control plane: {control_plane})", nodes[i].name))?;
            }
        }
        for n in &nodes {
            prop_assert_eq!(n.kubelet_version, Some(target), "{}", n.name);
        }
    }
}
