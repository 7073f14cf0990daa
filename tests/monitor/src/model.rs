//! The facts the monitor judges by, and the budget maths: plain data and plain functions, no
//! I/O. The watch layer turns API objects into these facts ([`crate::facts`]); the
//! [`tracker`](crate::tracker) keeps them and draws the verdict.
//!
//! The maths follows the documented semantics of the disruption controller
//! (`pkg/controller/disruption`), written from its documentation, not from rota's or the
//! emulator's code:
//! - `minAvailable` integer: desiredHealthy is that number;
//! - `minAvailable` percent: desiredHealthy = ceil(percent × expected / 100);
//! - `maxUnavailable` (integer or percent): desiredHealthy = max(0, expected − scaled), the
//!   percent scaled rounding up;
//! - expected = the sum of the `spec.replicas` of the matched pods' controllers, each counted
//!   once (a ReplicaSet that a Deployment controls counts with the Deployment's scale).

use std::collections::{BTreeMap, BTreeSet};

/// A controller reference (`metadata.ownerReferences` entry with `controller: true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRef {
    /// `kind` of the owner.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
}

/// What the monitor knows of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`, when bound.
    pub node: Option<String>,
    /// `status.phase` (empty when unset).
    pub phase: String,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The reason of condition `DisruptionTarget=True`, when set.
    pub disruption_target: Option<String>,
    /// The controller, if any.
    pub controller: Option<OwnerRef>,
    /// A mirror pod of a static pod (annotation `kubernetes.io/config.mirror`).
    pub mirror: bool,
    /// `metadata.resourceVersion` as a number, when it is one.
    pub resource_version: Option<u64>,
}

impl PodFacts {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Owned by a DaemonSet.
    pub fn daemon_set(&self) -> bool {
        self.controller
            .as_ref()
            .is_some_and(|c| c.kind == "DaemonSet")
    }

    /// Succeeded or Failed: its containers are done for good.
    pub fn terminal(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }

    /// Healthy as a budget counts it: Running, Ready, and not being deleted.
    pub fn healthy(&self) -> bool {
        self.phase == "Running" && self.ready && !self.deleting
    }

    /// A pod whose loss to a node outage matters: neither a DaemonSet's (it belongs to the
    /// node) nor a static pod's mirror, and not finished.
    pub fn workload(&self) -> bool {
        !self.daemon_set() && !self.mirror && !self.terminal()
    }
}

/// The `Ready` condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// `True`.
    Ready,
    /// `False`.
    NotReady,
    /// `Unknown` or no condition at all.
    Unknown,
}

/// What the monitor knows of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The `Ready` condition.
    pub readiness: Readiness,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Carries the `node.kubernetes.io/unreachable` taint.
    pub unreachable: bool,
    /// `status.nodeInfo.bootID` (empty when unreported).
    pub boot_id: String,
    /// `metadata.resourceVersion` as a number, when it is one.
    pub resource_version: Option<u64>,
}

/// The label that marks a control-plane node.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

impl NodeFacts {
    /// Down: its pods cannot be serving. Ready is not `True`, or the node is unreachable.
    pub fn down(&self) -> bool {
        self.readiness != Readiness::Ready || self.unreachable
    }

    /// Unavailable for maintenance accounting: down, or cordoned.
    pub fn unavailable(&self) -> bool {
        self.down() || self.unschedulable
    }

    /// Carries the control-plane role label.
    pub fn control_plane(&self) -> bool {
        self.labels.contains_key(CONTROL_PLANE_LABEL)
    }
}

/// One `matchExpressions` requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `In`.
    In(String, BTreeSet<String>),
    /// `NotIn`.
    NotIn(String, BTreeSet<String>),
    /// `Exists`.
    Exists(String),
    /// `DoesNotExist`.
    DoesNotExist(String),
    /// An operator the monitor does not know: matches nothing (and is reported by the edge).
    Invalid,
}

/// A label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// `matchLabels`.
    pub labels: BTreeMap<String, String>,
    /// `matchExpressions`.
    pub expressions: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` satisfy the selector (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| match r {
                Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
                Requirement::Invalid => false,
            })
    }
}

/// An integer or a percentage (`"25%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    /// A count.
    Int(i32),
    /// A percentage of the expected pods.
    Percent(i32),
}

impl IntOrPercent {
    /// This value against `total`; a percentage rounds **up**, as the disruption controller
    /// scales both `minAvailable` and `maxUnavailable`.
    pub fn scaled(self, total: i32) -> i32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let product = i64::from(p) * i64::from(total);
                i32::try_from(product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0))
                    .unwrap_or(i32::MAX)
            }
        }
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What a budget asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetRule {
    /// `minAvailable`.
    MinAvailable(IntOrPercent),
    /// `maxUnavailable`.
    MaxUnavailable(IntOrPercent),
    /// Neither is set: nothing is required.
    Unset,
}

/// What the monitor knows of a PodDisruptionBudget (its spec only; never its status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetFacts {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.selector`; `None` selects no pod.
    pub selector: Option<Selector>,
    /// `minAvailable` or `maxUnavailable`.
    pub rule: BudgetRule,
}

impl BudgetFacts {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the budget covers `pod`.
    pub fn covers(&self, pod: &PodFacts) -> bool {
        pod.namespace == self.namespace
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&pod.labels))
    }
}

/// What the monitor knows of a scalable controller (Deployment, ReplicaSet, StatefulSet,
/// ReplicationController).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerFacts {
    /// `kind`.
    pub kind: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.replicas` (the API's default 1 when unset).
    pub replicas: i32,
    /// Its own controller (a ReplicaSet's Deployment).
    pub controller: Option<OwnerRef>,
}

/// Why a budget's desired healthy count cannot be computed from the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotComputable {
    /// A percentage or `maxUnavailable` needs the controllers' scale, and this pod has none.
    Unmanaged(String),
    /// The pod's controller has no scale the monitor knows (a DaemonSet, a custom kind).
    UnsupportedController {
        /// The pod.
        pod: String,
        /// The controller's kind.
        kind: String,
    },
    /// The pod's controller is not (yet) seen.
    ControllerMissing {
        /// The pod.
        pod: String,
        /// `kind/name` of the controller.
        controller: String,
    },
}

impl std::fmt::Display for NotComputable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotComputable::Unmanaged(pod) => write!(
                f,
                "pod {pod} has no controller, so the expected count (needed by a percentage or maxUnavailable) is unknown"
            ),
            NotComputable::UnsupportedController { pod, kind } => {
                write!(f, "pod {pod} is controlled by a {kind}, which has no scale")
            }
            NotComputable::ControllerMissing { pod, controller } => {
                write!(f, "pod {pod}'s controller {controller} is not seen")
            }
        }
    }
}

/// The expected pod count: the sum of the scale of the pods' controllers, each once. A
/// ReplicaSet controlled by a Deployment counts with the Deployment's `spec.replicas` (during
/// a rollout the ReplicaSets' sum differs from what the owner wants).
pub fn expected_count(
    pods: &[&PodFacts],
    controllers: &BTreeMap<String, ControllerFacts>,
) -> Result<i32, NotComputable> {
    let mut counted: BTreeMap<&str, i32> = BTreeMap::new();
    for pod in pods {
        let Some(owner) = &pod.controller else {
            return Err(NotComputable::Unmanaged(pod.id()));
        };
        if !matches!(
            owner.kind.as_str(),
            "ReplicaSet" | "StatefulSet" | "ReplicationController"
        ) {
            return Err(NotComputable::UnsupportedController {
                pod: pod.id(),
                kind: owner.kind.clone(),
            });
        }
        let missing = |kind: &str, name: &str| NotComputable::ControllerMissing {
            pod: pod.id(),
            controller: format!("{kind}/{name}"),
        };
        let direct = controllers
            .get(&owner.uid)
            .filter(|c| c.kind == owner.kind)
            .ok_or_else(|| missing(&owner.kind, &owner.name))?;
        let scaled = match &direct.controller {
            Some(parent) if direct.kind == "ReplicaSet" && parent.kind == "Deployment" => {
                controllers
                    .get(&parent.uid)
                    .filter(|c| c.kind == "Deployment")
                    .ok_or_else(|| missing(&parent.kind, &parent.name))?
            }
            _ => direct,
        };
        counted.insert(scaled.uid.as_str(), scaled.replicas);
    }
    Ok(counted.values().map(|r| (*r).max(0)).sum())
}

/// The healthy pods the budget asks for, given the pods it matches.
pub fn desired_healthy(
    rule: BudgetRule,
    pods: &[&PodFacts],
    controllers: &BTreeMap<String, ControllerFacts>,
) -> Result<i32, NotComputable> {
    match rule {
        BudgetRule::Unset => Ok(0),
        BudgetRule::MinAvailable(IntOrPercent::Int(n)) => Ok(n),
        BudgetRule::MinAvailable(p @ IntOrPercent::Percent(_)) => {
            Ok(p.scaled(expected_count(pods, controllers)?))
        }
        BudgetRule::MaxUnavailable(value) => {
            let expected = expected_count(pods, controllers)?;
            Ok((expected - value.scaled(expected)).max(0))
        }
    }
}

/// How a pod left a budget's healthy set when that is a disruption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    /// Through the Eviction API (condition `DisruptionTarget`, reason `EvictionByEvictionAPI`).
    Eviction,
    /// Deleted without an eviction.
    Deletion,
    /// Its node went down (not Ready, or unreachable) with the pod bound.
    NodeDown,
    /// Its node rebooted (a new `bootID`) with the pod bound.
    Reboot,
    /// Deleted by the taint manager (`DisruptionTarget` reason `DeletionByTaintManager`).
    TaintManager,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Eviction => "eviction",
            Cause::Deletion => "deletion",
            Cause::NodeDown => "node down",
            Cause::Reboot => "node rebooted",
            Cause::TaintManager => "taint-manager deletion",
        })
    }
}

/// Why a pod left the healthy set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Departure {
    /// A disruption: it counts against the budget.
    Disruption(Cause),
    /// Not a disruption (the pod crashed or went unready on a healthy node, or the kubelet or
    /// scheduler took it for its own reasons); the reason in words.
    Other(String),
}

/// Why `pod` (its last known state; `gone`: it was deleted from the API) left the healthy set,
/// given its node now and the boot it was bound under.
pub fn classify(
    pod: &PodFacts,
    gone: bool,
    node: Option<&NodeFacts>,
    bound_boot: Option<&str>,
) -> Departure {
    match pod.disruption_target.as_deref() {
        Some("EvictionByEvictionAPI") => return Departure::Disruption(Cause::Eviction),
        Some("DeletionByTaintManager") => return Departure::Disruption(Cause::TaintManager),
        _ => {}
    }
    if let Some(node) = node {
        if node.down() {
            return Departure::Disruption(Cause::NodeDown);
        }
        if bound_boot
            .is_some_and(|b| !b.is_empty() && !node.boot_id.is_empty() && b != node.boot_id)
        {
            return Departure::Disruption(Cause::Reboot);
        }
    }
    match pod.disruption_target.as_deref() {
        // The scheduler's preemption, the kubelet's node-pressure eviction, pod GC: not a
        // voluntary disruption a budget governs.
        Some(reason) => Departure::Other(format!("DisruptionTarget {reason}")),
        None if pod.deleting || gone => Departure::Disruption(Cause::Deletion),
        None if pod.terminal() => {
            Departure::Other(format!("phase {} on a healthy node", pod.phase))
        }
        None => Departure::Other("not Ready on a healthy node".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn pod(name: &str, controller: Option<(&str, &str)>) -> PodFacts {
        PodFacts {
            uid: format!("uid-{name}"),
            namespace: "ns".into(),
            name: name.into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            node: Some("n1".into()),
            phase: "Running".into(),
            ready: true,
            deleting: false,
            disruption_target: None,
            controller: controller.map(|(kind, uid)| OwnerRef {
                kind: kind.into(),
                name: format!("{kind}-{uid}").to_lowercase(),
                uid: uid.into(),
            }),
            mirror: false,
            resource_version: None,
        }
    }

    fn controller(kind: &str, uid: &str, replicas: i32, parent: Option<&str>) -> ControllerFacts {
        ControllerFacts {
            kind: kind.into(),
            namespace: "ns".into(),
            name: format!("{kind}-{uid}").to_lowercase(),
            uid: uid.into(),
            replicas,
            controller: parent.map(|p| OwnerRef {
                kind: "Deployment".into(),
                name: format!("deployment-{p}"),
                uid: p.into(),
            }),
        }
    }

    fn node(readiness: Readiness, boot: &str) -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            labels: BTreeMap::new(),
            readiness,
            unschedulable: false,
            unreachable: false,
            boot_id: boot.into(),
            resource_version: None,
        }
    }

    proptest::proptest! {
        #[test]
        fn a_percentage_is_the_least_count_covering_it(p in 0i32..=100, total in 0i32..100_000) {
            let scaled = IntOrPercent::Percent(p).scaled(total);
            // ceil(p × total / 100), in integers: scaled covers the share, one less would not.
            proptest::prop_assert!(i64::from(scaled) * 100 >= i64::from(p) * i64::from(total));
            proptest::prop_assert!((i64::from(scaled) - 1) * 100 < i64::from(p) * i64::from(total));
            proptest::prop_assert!(scaled <= total);
        }
    }

    #[test]
    fn percentages_round_up() {
        let p = IntOrPercent::Percent;
        assert_eq!(p(50).scaled(3), 2);
        assert_eq!(p(25).scaled(4), 1);
        assert_eq!(p(25).scaled(5), 2);
        assert_eq!(p(10).scaled(1), 1);
        assert_eq!(p(0).scaled(7), 0);
        assert_eq!(p(100).scaled(7), 7);
        assert_eq!(p(33).scaled(0), 0);
        assert_eq!(IntOrPercent::Int(2).scaled(100), 2);
    }

    #[test]
    fn expected_count_sums_each_controller_once_with_the_deployments_scale() {
        let controllers: BTreeMap<String, ControllerFacts> = [
            // A Deployment of 3 mid-rollout: two ReplicaSets whose replicas add up to 4.
            controller("Deployment", "d", 3, None),
            controller("ReplicaSet", "rs-old", 1, Some("d")),
            controller("ReplicaSet", "rs-new", 3, Some("d")),
            controller("StatefulSet", "sts", 2, None),
            controller("ReplicaSet", "bare-rs", 5, None),
        ]
        .into_iter()
        .map(|c| (c.uid.clone(), c))
        .collect();
        let pods = [
            pod("a", Some(("ReplicaSet", "rs-old"))),
            pod("b", Some(("ReplicaSet", "rs-new"))),
            pod("c", Some(("ReplicaSet", "rs-new"))),
            pod("d", Some(("StatefulSet", "sts"))),
            pod("e", Some(("ReplicaSet", "bare-rs"))),
        ];
        let refs: Vec<&PodFacts> = pods.iter().collect();
        assert_eq!(expected_count(&refs, &controllers), Ok(3 + 2 + 5));
        assert_eq!(expected_count(&[], &controllers), Ok(0));

        let bare = pod("x", None);
        assert_eq!(
            expected_count(&[&bare], &controllers),
            Err(NotComputable::Unmanaged("ns/x".into()))
        );
        let ds = pod("y", Some(("DaemonSet", "ds")));
        assert!(matches!(
            expected_count(&[&ds], &controllers),
            Err(NotComputable::UnsupportedController { .. })
        ));
        let unseen = pod("z", Some(("StatefulSet", "other")));
        assert!(matches!(
            expected_count(&[&unseen], &controllers),
            Err(NotComputable::ControllerMissing { .. })
        ));
    }

    #[test]
    fn desired_healthy_for_each_spec_shape() {
        let controllers: BTreeMap<String, ControllerFacts> =
            [controller("StatefulSet", "s", 5, None)]
                .into_iter()
                .map(|c| (c.uid.clone(), c))
                .collect();
        // Two of the five replicas exist right now: the scale, not the pod count, is expected.
        let pods = [
            pod("a", Some(("StatefulSet", "s"))),
            pod("b", Some(("StatefulSet", "s"))),
        ];
        let refs: Vec<&PodFacts> = pods.iter().collect();
        let desired = |rule| desired_healthy(rule, &refs, &controllers);
        use BudgetRule::*;
        use IntOrPercent::*;
        assert_eq!(desired(MinAvailable(Int(4))), Ok(4));
        assert_eq!(desired(MinAvailable(Percent(50))), Ok(3)); // ceil(2.5)
        assert_eq!(desired(MinAvailable(Percent(100))), Ok(5));
        assert_eq!(desired(MaxUnavailable(Int(1))), Ok(4));
        assert_eq!(desired(MaxUnavailable(Int(9))), Ok(0));
        assert_eq!(desired(MaxUnavailable(Percent(30))), Ok(3)); // 5 − ceil(1.5)
        assert_eq!(desired(MaxUnavailable(Percent(0))), Ok(5));
        assert_eq!(desired(Unset), Ok(0));

        // Bare pods: an integer minAvailable still works, the rest cannot be computed.
        let bare = [pod("x", None)];
        let bare: Vec<&PodFacts> = bare.iter().collect();
        assert_eq!(
            desired_healthy(MinAvailable(Int(1)), &bare, &controllers),
            Ok(1)
        );
        for rule in [MinAvailable(Percent(50)), MaxUnavailable(Int(1))] {
            assert!(desired_healthy(rule, &bare, &controllers).is_err());
        }
    }

    #[test]
    fn healthy_means_running_ready_and_not_deleting() {
        let ok = pod("a", None);
        assert!(ok.healthy());
        assert!(
            !PodFacts {
                ready: false,
                ..ok.clone()
            }
            .healthy()
        );
        assert!(
            !PodFacts {
                deleting: true,
                ..ok.clone()
            }
            .healthy()
        );
        assert!(
            !PodFacts {
                phase: "Pending".into(),
                ..ok.clone()
            }
            .healthy()
        );
        assert!(
            !PodFacts {
                phase: "Succeeded".into(),
                ..ok.clone()
            }
            .healthy()
        );
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let sel = |labels: &[(&str, &str)], expressions: Vec<Requirement>| Selector {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            expressions,
        };
        assert!(sel(&[], vec![]).matches(&labels));
        assert!(sel(&[("app", "web")], vec![]).matches(&labels));
        assert!(!sel(&[("app", "db")], vec![]).matches(&labels));
        assert!(
            sel(
                &[],
                vec![Requirement::In("tier".into(), set(&["front", "x"]))]
            )
            .matches(&labels)
        );
        assert!(
            !sel(
                &[],
                vec![Requirement::NotIn("tier".into(), set(&["front"]))]
            )
            .matches(&labels)
        );
        assert!(sel(&[], vec![Requirement::NotIn("zone".into(), set(&["a"]))]).matches(&labels));
        assert!(sel(&[], vec![Requirement::Exists("app".into())]).matches(&labels));
        assert!(!sel(&[], vec![Requirement::DoesNotExist("app".into())]).matches(&labels));
        assert!(!sel(&[], vec![Requirement::Invalid]).matches(&labels));
        let budget = BudgetFacts {
            namespace: "ns".into(),
            name: "b".into(),
            selector: None,
            rule: BudgetRule::Unset,
        };
        assert!(
            !budget.covers(&pod("a", None)),
            "a null selector selects nothing"
        );
    }

    #[test]
    fn cause_attribution() {
        let up = node(Readiness::Ready, "boot-1");
        let evicted = PodFacts {
            deleting: true,
            disruption_target: Some("EvictionByEvictionAPI".into()),
            ..pod("a", None)
        };
        let d = |c| Departure::Disruption(c);
        assert_eq!(
            classify(&evicted, false, Some(&up), Some("boot-1")),
            d(Cause::Eviction)
        );
        // Evicted, even if its node then went down: the eviction came first.
        let down = node(Readiness::Unknown, "boot-1");
        assert_eq!(
            classify(&evicted, true, Some(&down), None),
            d(Cause::Eviction)
        );
        let tainted = PodFacts {
            disruption_target: Some("DeletionByTaintManager".into()),
            ..evicted.clone()
        };
        assert_eq!(
            classify(&tainted, true, Some(&up), None),
            d(Cause::TaintManager)
        );
        let deleted = PodFacts {
            deleting: true,
            ..pod("a", None)
        };
        assert_eq!(
            classify(&deleted, false, Some(&up), Some("boot-1")),
            d(Cause::Deletion)
        );
        assert_eq!(
            classify(&pod("a", None), true, Some(&up), None),
            d(Cause::Deletion)
        );
        assert_eq!(
            classify(&deleted, true, Some(&down), None),
            d(Cause::NodeDown)
        );
        let unreachable = NodeFacts {
            unreachable: true,
            ..up.clone()
        };
        assert_eq!(
            classify(&pod("a", None), false, Some(&unreachable), None),
            d(Cause::NodeDown)
        );
        let rebooted = node(Readiness::Ready, "boot-2");
        assert_eq!(
            classify(&pod("a", None), false, Some(&rebooted), Some("boot-1")),
            d(Cause::Reboot)
        );
        // A crash on a healthy node is not a disruption.
        let crashed = PodFacts {
            ready: false,
            ..pod("a", None)
        };
        assert!(matches!(
            classify(&crashed, false, Some(&up), Some("boot-1")),
            Departure::Other(_)
        ));
        let failed = PodFacts {
            phase: "Failed".into(),
            ..pod("a", None)
        };
        assert!(matches!(
            classify(&failed, false, Some(&up), None),
            Departure::Other(_)
        ));
        let preempted = PodFacts {
            deleting: true,
            disruption_target: Some("PreemptionByScheduler".into()),
            ..pod("a", None)
        };
        assert!(matches!(
            classify(&preempted, false, Some(&up), None),
            Departure::Other(_)
        ));
    }

    #[test]
    fn node_availability() {
        let up = node(Readiness::Ready, "b");
        assert!(!up.unavailable());
        assert!(
            NodeFacts {
                unschedulable: true,
                ..up.clone()
            }
            .unavailable()
        );
        assert!(
            !NodeFacts {
                unschedulable: true,
                ..up.clone()
            }
            .down()
        );
        assert!(node(Readiness::NotReady, "b").down());
        assert!(node(Readiness::Unknown, "b").down());
        assert!(
            NodeFacts {
                unreachable: true,
                ..up.clone()
            }
            .down()
        );
        let mut cp = up.clone();
        cp.labels.insert(CONTROL_PLANE_LABEL.into(), String::new());
        assert!(cp.control_plane());
    }
}
