//! The post-maintenance health check, table by table (pure: no API server).

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Node, NodeCondition, NodeStatus,
    NodeSystemInfo, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use rota_core::controller::verify::{Verdict, abandoned, recovered, verify};
use rota_core::model::{FencingToken, Operation, Origin, Slot, SlotPhase, UpgradeReboot};
use rota_core::policy::{Health, NamespacedName};
use rota_core::slots::{CompletionReport, HeldSlot};

const REQUESTED: Timestamp = Timestamp::constant(1_748_772_000, 0);
const ADMITTED: Timestamp = Timestamp::constant(1_748_775_600, 0);
/// The drain finished and the slot was granted (half a second into the second).
const GRANTED: Timestamp = Timestamp::constant(1_748_777_400, 500_000_000);
/// Reported by the kubelet in the second of the grant, after it.
const GRANT_SECOND: Timestamp = Timestamp::constant(1_748_777_400, 0);
/// Before the maintenance began.
const STALE: Timestamp = Timestamp::constant(1_748_770_000, 0);
/// The agent reported completion at 2025-06-01T12:00:00Z.
const COMPLETED: Timestamp = Timestamp::constant(1_748_779_200, 0);
const EARLY: Timestamp = Timestamp::constant(1_748_779_260, 0);
const LEASE_END: Timestamp = Timestamp::constant(1_748_779_500, 0);
/// Completion plus the ten-minute ready timeout.
const DEADLINE: Timestamp = Timestamp::constant(1_748_779_800, 0);

fn held(operation: Operation, boot_before: Option<&str>, completion: CompletionReport) -> HeldSlot {
    HeldSlot {
        slot: Slot {
            node: "n".into(),
            operation,
            origin: Origin::Agent,
            token: FencingToken(7),
            phase: SlotPhase::Verifying,
            admitted_at: ADMITTED,
            phase_since: COMPLETED,
            granted_at: Some(GRANTED),
            lease_expires_at: LEASE_END,
            boot_id_before: boot_before.map(str::to_owned),
            cordoned_by_rota: true,
        },
        requested_at: REQUESTED,
        note: String::new(),
        progress: None,
        completion: Some(completion),
    }
}

fn completion(success: bool, boot_after: Option<&str>) -> CompletionReport {
    CompletionReport {
        success,
        message: String::new(),
        boot_id: boot_after.map(str::to_owned),
        rebooted: boot_after.is_some(),
        changed_packages: 0,
        changed: vec![],
        at: COMPLETED,
    }
}

fn node(ready: bool, boot_id: &str, kubelet: &str) -> Node {
    node_reported(ready, boot_id, kubelet, COMPLETED)
}

/// A node whose kubelet last reported its Ready condition at `reported`.
fn node_reported(ready: bool, boot_id: &str, kubelet: &str, reported: Timestamp) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some("n".into()),
            labels: Some(BTreeMap::from([("pool".into(), "workers".into())])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: Some(
                    if ready {
                        "KubeletReady"
                    } else {
                        "KubeletNotReady"
                    }
                    .into(),
                ),
                last_heartbeat_time: Some(Time(reported)),
                last_transition_time: Some(Time(STALE)),
                ..NodeCondition::default()
            }]),
            node_info: Some(NodeSystemInfo {
                boot_id: boot_id.into(),
                kubelet_version: kubelet.into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

fn ds_pod(name: &str, daemon_set: &str, ready: bool) -> Pod {
    ds_pod_at(name, daemon_set, ready, COMPLETED, COMPLETED)
}

/// A DaemonSet pod created long ago whose Ready condition changed at `ready_at` and whose
/// container started at `started`.
fn ds_pod_at(
    name: &str,
    daemon_set: &str,
    ready: bool,
    ready_at: Timestamp,
    started: Timestamp,
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("kube-system".into()),
            name: Some(name.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: daemon_set.into(),
                uid: format!("uid-{daemon_set}"),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            creation_timestamp: Some(Time(STALE)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n".into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(ready_at)),
                ..PodCondition::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "main".into(),
                ready,
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(started)),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn daemon_set(name: &str, node_selector: &[(&str, &str)]) -> (NamespacedName, Arc<DaemonSet>) {
    let ds = DaemonSet {
        metadata: ObjectMeta {
            namespace: Some("kube-system".into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector::default(),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    node_selector: Some(
                        node_selector
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    };
    (NamespacedName::new("kube-system", name), Arc::new(ds))
}

fn health(required: &[&str]) -> Health {
    Health {
        ready_timeout: SignedDuration::from_mins(10),
        required_daemon_sets: required
            .iter()
            .map(|n| NamespacedName::new("kube-system", *n))
            .collect(),
    }
}

/// A name, the slot, the node, its pods, the health settings, now, and the verdict wanted.
type Case = (
    &'static str,
    HeldSlot,
    Node,
    Vec<Pod>,
    Health,
    Timestamp,
    Want,
);

enum Want {
    Healthy,
    Pending(&'static str),
    Failed(&'static str),
}

#[test]
fn verdicts() {
    let before = Some("boot-1");
    let reboot_done = completion(true, Some("boot-2"));
    let daemon_sets: BTreeMap<_, _> = [
        daemon_set("cni", &[]),
        daemon_set("gpu-driver", &[("gpu", "true")]),
    ]
    .into_iter()
    .collect();
    let (early, late) = (EARLY, DEADLINE);
    let cases: Vec<Case> = vec![
        (
            "rebooted, kubelet agrees, Ready",
            held(Operation::Reboot, before, reboot_done.clone()),
            node(true, "boot-2", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Healthy,
        ),
        (
            "the agent claims a reboot but its boot id did not change",
            held(Operation::Reboot, before, completion(true, Some("boot-1"))),
            node(true, "boot-1", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Failed("boot id is still boot-1"),
        ),
        (
            "a reboot operation that did not reboot",
            held(Operation::Reboot, before, completion(true, None)),
            node(true, "boot-1", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Failed("reboot did not happen"),
        ),
        (
            "the kubelet still reports the old boot id: wait",
            held(Operation::Reboot, before, reboot_done.clone()),
            node(true, "boot-1", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Pending("still reports boot id boot-1"),
        ),
        (
            "no boot id before: the reboot cannot be verified",
            held(Operation::Reboot, None, reboot_done.clone()),
            node(true, "boot-2", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Failed("boot id before it is unknown"),
        ),
        (
            "NotReady within the timeout: wait",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node(false, "boot-1", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Pending("not Ready"),
        ),
        (
            "NotReady past the timeout: failed",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node(false, "boot-1", "v1.33.1"),
            vec![],
            health(&[]),
            late,
            Want::Failed("not healthy within 10m"),
        ),
        (
            "Kubernetes upgrade to the version the kubelet runs",
            held(
                Operation::KubernetesUpgrade {
                    version: "1.34.0".into(),
                    kubeadm: rota_core::model::KubeadmStep::Node,
                },
                before,
                completion(true, None),
            ),
            node(true, "boot-1", "v1.34.0"),
            vec![],
            health(&[]),
            early,
            Want::Healthy,
        ),
        (
            "Kubernetes upgrade, kubelet still old",
            held(
                Operation::KubernetesUpgrade {
                    version: "1.34.0".into(),
                    kubeadm: rota_core::model::KubeadmStep::Node,
                },
                before,
                completion(true, None),
            ),
            node(true, "boot-1", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Pending("kubelet runs v1.33.1, expected 1.34.0"),
        ),
        (
            "a step of a longer walk: any patch of the minor",
            held(
                Operation::KubernetesUpgrade {
                    version: "1.34".into(),
                    kubeadm: rota_core::model::KubeadmStep::Apply,
                },
                before,
                completion(true, None),
            ),
            node(true, "boot-1", "v1.34.5"),
            vec![],
            health(&[]),
            early,
            Want::Healthy,
        ),
        (
            "a step of a longer walk, kubelet still on the minor before",
            held(
                Operation::KubernetesUpgrade {
                    version: "1.34".into(),
                    kubeadm: rota_core::model::KubeadmStep::Node,
                },
                before,
                completion(true, None),
            ),
            node(true, "boot-1", "v1.33.1"),
            vec![],
            health(&[]),
            early,
            Want::Pending("kubelet runs v1.33.1, expected 1.34"),
        ),
        (
            "default: every DaemonSet pod on the node must be Ready",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node(true, "boot-1", "v1.33.1"),
            vec![ds_pod("cni-x", "cni", true), ds_pod("log-x", "logs", false)],
            health(&[]),
            early,
            Want::Pending("DaemonSet pod kube-system/log-x is not Ready"),
        ),
        (
            "required DaemonSets only; one not targeting the node is not required",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node(true, "boot-1", "v1.33.1"),
            vec![ds_pod("cni-x", "cni", true), ds_pod("log-x", "logs", false)],
            health(&["cni", "gpu-driver"]),
            early,
            Want::Healthy,
        ),
        (
            "a required DaemonSet without its pod on the node",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node(true, "boot-1", "v1.33.1"),
            vec![],
            health(&["cni"]),
            early,
            Want::Pending("no pod of DaemonSet kube-system/cni"),
        ),
        (
            "rebooted, but a DaemonSet pod is Ready only as reported before the reboot",
            held(Operation::Reboot, before, reboot_done.clone()),
            node(true, "boot-2", "v1.33.1"),
            vec![ds_pod_at("cni-x", "cni", true, STALE, STALE)],
            health(&[]),
            early,
            Want::Pending(
                "DaemonSet pod kube-system/cni-x is Ready only as reported before the reboot",
            ),
        ),
        (
            "rebooted, a required DaemonSet's pod is Ready only from before",
            held(Operation::Reboot, before, reboot_done.clone()),
            node(true, "boot-2", "v1.33.1"),
            vec![ds_pod_at("cni-x", "cni", true, STALE, STALE)],
            health(&["cni"]),
            early,
            Want::Pending("kube-system/cni-x is Ready only as reported before the reboot"),
        ),
        (
            "rebooted, the pod's containers restarted in the grant's second (Ready kept its time)",
            held(Operation::Reboot, before, reboot_done.clone()),
            node(true, "boot-2", "v1.33.1"),
            vec![ds_pod_at("cni-x", "cni", true, STALE, GRANT_SECOND)],
            health(&["cni"]),
            early,
            Want::Healthy,
        ),
        (
            "rebooted, the pod became Ready again since the grant",
            held(Operation::Reboot, before, reboot_done.clone()),
            node(true, "boot-2", "v1.33.1"),
            vec![ds_pod_at("cni-x", "cni", true, COMPLETED, STALE)],
            health(&[]),
            early,
            Want::Healthy,
        ),
        (
            "rebooted, the kubelet's last Ready report is from before the grant",
            held(Operation::Reboot, before, reboot_done.clone()),
            node_reported(true, "boot-2", "v1.33.1", STALE),
            vec![],
            health(&[]),
            early,
            Want::Pending("has not reported the node Ready since the maintenance began"),
        ),
        (
            "kubelet restarted, but no Ready report since the grant",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node_reported(true, "boot-1", "v1.33.1", STALE),
            vec![],
            health(&[]),
            early,
            Want::Pending("has not reported the node Ready since the maintenance began"),
        ),
        (
            "kubelet restarted: its containers kept running, so old pods are fine",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node(true, "boot-1", "v1.33.1"),
            vec![ds_pod_at("cni-x", "cni", true, STALE, STALE)],
            health(&[]),
            early,
            Want::Healthy,
        ),
        (
            "a package upgrade that restarted nothing: Ready is enough",
            held(
                Operation::PackageUpgrade {
                    security_only: true,
                    reboot: UpgradeReboot::IfRequired,
                    packages: Vec::new(),
                },
                before,
                completion(true, None),
            ),
            node_reported(true, "boot-1", "v1.33.1", STALE),
            vec![ds_pod_at("cni-x", "cni", true, STALE, STALE)],
            health(&[]),
            early,
            Want::Healthy,
        ),
        (
            "a required DaemonSet that does not exist",
            held(Operation::KubeletRestart, before, completion(true, None)),
            node(true, "boot-1", "v1.33.1"),
            vec![],
            health(&["cni", "ghost"]),
            early,
            Want::Pending(
                "no pod of DaemonSet kube-system/cni on the node; required DaemonSet kube-system/ghost does not exist",
            ),
        ),
    ];
    for (case, held, node, pods, health, now, want) in cases {
        let got = verify(&held, Some(&node), &pods, &daemon_sets, &health, now);
        match (&got, want) {
            (Verdict::Healthy, Want::Healthy) => {}
            (Verdict::Pending { problems, deadline }, Want::Pending(text)) => {
                assert!(problems.join("; ").contains(text), "{case}: {problems:?}");
                assert_eq!(*deadline, DEADLINE, "{case}");
            }
            (Verdict::Failed { reason }, Want::Failed(text)) => {
                assert!(reason.contains(text), "{case}: {reason}");
            }
            (got, _) => panic!("{case}: unexpected {got:?}"),
        }
    }
}

#[test]
fn a_missing_node_is_not_healthy() {
    let held = held(Operation::KubeletRestart, Some("b"), completion(true, None));
    let got = verify(&held, None, &[], &BTreeMap::new(), &health(&[]), EARLY);
    assert!(matches!(got, Verdict::Pending { .. }), "{got:?}");
}

#[test]
fn only_a_failed_verification_of_a_node_that_did_its_work_recovers() {
    let ds = BTreeMap::new();
    let healthy = node(true, "boot-2", "v1.33.1");
    let cases = [
        (
            "verification timed out, node healthy now",
            held(
                Operation::Reboot,
                Some("boot-1"),
                completion(true, Some("boot-2")),
            ),
            true,
        ),
        (
            "the agent reported failure",
            held(
                Operation::Reboot,
                Some("boot-1"),
                completion(false, Some("boot-2")),
            ),
            false,
        ),
        (
            "the reboot did not happen",
            held(
                Operation::Reboot,
                Some("boot-1"),
                completion(true, Some("boot-1")),
            ),
            false,
        ),
    ];
    for (case, mut held, want) in cases {
        held.slot.phase = SlotPhase::Failed;
        assert_eq!(
            recovered(&held, Some(&healthy), &[], &ds, &health(&[])),
            want,
            "{case}"
        );
    }
    let still_down = node(false, "boot-2", "v1.33.1");
    let held = held(
        Operation::Reboot,
        Some("boot-1"),
        completion(true, Some("boot-2")),
    );
    assert!(!recovered(&held, Some(&still_down), &[], &ds, &health(&[])));
}

#[test]
fn a_granted_slot_whose_agent_went_silent_fails_only_if_its_node_stays_down() {
    let mut held = held(Operation::Reboot, Some("boot-1"), completion(true, None));
    held.slot.phase = SlotPhase::Granted;
    held.completion = None;
    let down = node(false, "boot-1", "v1.33.1");
    let up = node(true, "boot-1", "v1.33.1");
    let ten_minutes = SignedDuration::from_mins(10);
    let after_expiry = LEASE_END.checked_add(SignedDuration::from_mins(1)).unwrap();
    let past_timeout = LEASE_END.checked_add(ten_minutes).unwrap();
    let h = health(&[]);

    assert_eq!(
        abandoned(&held, Some(&down), &h, EARLY),
        None,
        "lease running"
    );
    assert_eq!(
        abandoned(&held, Some(&up), &h, past_timeout),
        None,
        "node Ready"
    );
    assert_eq!(
        abandoned(&held, None, &h, past_timeout),
        None,
        "Node deleted"
    );
    match abandoned(&held, Some(&down), &h, after_expiry) {
        Some(Verdict::Pending { problems, deadline }) => {
            assert_eq!(deadline, past_timeout);
            assert!(problems[0].contains("not Ready"), "{problems:?}");
        }
        other => panic!("within the ready timeout: {other:?}"),
    }
    match abandoned(&held, Some(&down), &h, past_timeout) {
        Some(Verdict::Failed { reason }) => {
            assert!(reason.contains("stopped renewing its lease"), "{reason}");
            assert!(reason.contains("10m later"), "{reason}");
            assert!(reason.contains("KubeletNotReady"), "{reason}");
        }
        other => panic!("past the ready timeout: {other:?}"),
    }
}
