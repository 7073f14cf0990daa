//! Kubernetes Events (`events.k8s.io/v1`) on Nodes and MaintenancePolicies: the audit trail
//! humans read with `kubectl describe` / `kubectl events`.
//!
//! [`EventSink`] wraps kube-runtime's [`Recorder`] (which also folds repeats into an event
//! series) with rota's reporter and typed [`Reason`]s, so the controller calls one method per
//! transition. Events are best effort: a failure to record one is returned for logging and
//! must never stop maintenance.

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use rota_core::text::printable_within;

use rota_core::policy::MaintenancePolicy;
use rota_core::slots::{Transition, TransitionReason};

/// `reportingController` of every Event rota records.
pub const REPORTING_CONTROLLER: &str = "rota-coordinator";

/// Why an Event could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("recording event {reason} failed: {source}")]
pub struct Error {
    reason: &'static str,
    #[source]
    source: kube::Error,
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every reason rota records. `Warning` reasons are listed in [`Reason::is_warning`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A node's request for maintenance was queued.
    SlotQueued,
    /// A queued request was replaced by another operation or raised to manual priority.
    SlotRequestReplaced,
    /// The scheduler admitted the node; a fencing token was issued.
    SlotAdmitted,
    /// rota cordoned the node.
    Cordoned,
    /// An eviction is held back by a PodDisruptionBudget (the drain waits).
    DrainBlocked,
    /// Every pod that had to go is gone.
    Drained,
    /// The drain could not finish: the slot was given back and the request re-queued.
    DrainFailed,
    /// The agent may perform the operation.
    Granted,
    /// The agent reported success; the node's health is being verified.
    Verifying,
    /// The agent reported that the operation failed.
    OperationFailed,
    /// The node is healthy after the operation; the slot was released.
    MaintenanceSucceeded,
    /// The maintenance failed (e.g. the node did not become healthy in time); the slot stays held.
    MaintenanceFailed,
    /// A failed node is healthy again; its slot was released.
    NodeRecovered,
    /// rota uncordoned the node (only when rota cordoned it).
    Uncordoned,
    /// The agent gave its slot back.
    SlotReleased,
    /// The agent withdrew a request before it was admitted.
    SlotRequestWithdrawn,
    /// A human released the slot or request.
    SlotForceReleased,
    /// The Node object was deleted; its slot no longer counts.
    NodeDeleted,
    /// The slot's lease expired while held (the agent stopped renewing); capacity stays taken.
    LeaseExpired,
    /// The pool's rollout was paused.
    PoolPaused,
    /// The pool's rollout was resumed.
    PoolResumed,
    /// Too many failures: the circuit breaker paused the pool.
    CircuitOpen,
    /// A human's `rota.dev/maintenance-requested` annotation was queued (and removed).
    MaintenanceRequested,
    /// A human's annotation could not be acted upon (unknown value, or refused by the ledger).
    InvalidRequest,
    /// A MaintenancePolicy's spec is invalid; the last valid one stays in force.
    PolicyInvalid,
    /// The node's `rota.dev/` slot annotations disagreed with its ledger object when the leader
    /// loaded the ledger (forged, replayed or stale): not adopted, rewritten from the ledger.
    LedgerMismatch,
    /// A FleetLock host that is not a Kubernetes node was given its pool's reboot lock
    /// (recorded on the pool's MaintenancePolicy).
    HostLocked,
    /// A FleetLock host that is not a Kubernetes node gave its reboot lock back.
    HostUnlocked,
    /// A pool's Kubernetes upgrade rollout moved to another phase (on its MaintenancePolicy).
    KubernetesUpgradePhase,
    /// A pool's Kubernetes upgrade pre-flight failed, or its target was refused: the pool is
    /// held (pre-flight) or nothing is upgraded (refused).
    KubernetesUpgradeStopped,
    /// A control-plane node uses an external etcd: rota takes no snapshot of it.
    EtcdSnapshotSkipped,
}

impl Reason {
    /// The Event's `reason` (CamelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SlotQueued => "SlotQueued",
            Reason::SlotRequestReplaced => "SlotRequestReplaced",
            Reason::SlotAdmitted => "SlotAdmitted",
            Reason::Cordoned => "Cordoned",
            Reason::DrainBlocked => "DrainBlocked",
            Reason::Drained => "Drained",
            Reason::DrainFailed => "DrainFailed",
            Reason::Granted => "Granted",
            Reason::Verifying => "Verifying",
            Reason::OperationFailed => "OperationFailed",
            Reason::MaintenanceSucceeded => "MaintenanceSucceeded",
            Reason::MaintenanceFailed => "MaintenanceFailed",
            Reason::NodeRecovered => "NodeRecovered",
            Reason::Uncordoned => "Uncordoned",
            Reason::SlotReleased => "SlotReleased",
            Reason::SlotRequestWithdrawn => "SlotRequestWithdrawn",
            Reason::SlotForceReleased => "SlotForceReleased",
            Reason::NodeDeleted => "NodeDeleted",
            Reason::LeaseExpired => "LeaseExpired",
            Reason::PoolPaused => "PoolPaused",
            Reason::PoolResumed => "PoolResumed",
            Reason::CircuitOpen => "CircuitOpen",
            Reason::MaintenanceRequested => "MaintenanceRequested",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::PolicyInvalid => "PolicyInvalid",
            Reason::LedgerMismatch => "LedgerMismatch",
            Reason::HostLocked => "FleetLockHostLocked",
            Reason::HostUnlocked => "FleetLockHostUnlocked",
            Reason::KubernetesUpgradePhase => "KubernetesUpgradePhase",
            Reason::KubernetesUpgradeStopped => "KubernetesUpgradeStopped",
            Reason::EtcdSnapshotSkipped => "EtcdSnapshotSkipped",
        }
    }

    /// Whether humans should look (Event type `Warning`).
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Reason::DrainBlocked
                | Reason::DrainFailed
                | Reason::OperationFailed
                | Reason::MaintenanceFailed
                | Reason::SlotForceReleased
                | Reason::LeaseExpired
                | Reason::CircuitOpen
                | Reason::InvalidRequest
                | Reason::PolicyInvalid
                | Reason::LedgerMismatch
                | Reason::KubernetesUpgradeStopped
        )
    }

    /// The Event's `action`: what rota was doing.
    pub fn action(self) -> &'static str {
        match self {
            Reason::SlotQueued
            | Reason::SlotRequestReplaced
            | Reason::SlotRequestWithdrawn
            | Reason::MaintenanceRequested
            | Reason::InvalidRequest => "Queue",
            Reason::SlotAdmitted | Reason::Granted => "Admit",
            Reason::Cordoned => "Cordon",
            Reason::DrainBlocked | Reason::Drained | Reason::DrainFailed => "Drain",
            Reason::Verifying
            | Reason::OperationFailed
            | Reason::MaintenanceSucceeded
            | Reason::MaintenanceFailed
            | Reason::NodeRecovered => "Verify",
            Reason::Uncordoned => "Uncordon",
            Reason::SlotReleased
            | Reason::SlotForceReleased
            | Reason::NodeDeleted
            | Reason::LeaseExpired => "Release",
            Reason::PoolPaused
            | Reason::PoolResumed
            | Reason::CircuitOpen
            | Reason::PolicyInvalid => "Rollout",
            Reason::LedgerMismatch => "Restore",
            Reason::HostLocked => "Admit",
            Reason::HostUnlocked => "Release",
            Reason::KubernetesUpgradePhase | Reason::KubernetesUpgradeStopped => "Rollout",
            Reason::EtcdSnapshotSkipped => "Snapshot",
        }
    }
}

impl From<TransitionReason> for Reason {
    fn from(reason: TransitionReason) -> Self {
        match reason {
            TransitionReason::Requested => Reason::SlotQueued,
            TransitionReason::RequestReplaced => Reason::SlotRequestReplaced,
            TransitionReason::Admitted => Reason::SlotAdmitted,
            TransitionReason::Drained => Reason::Granted,
            TransitionReason::Completed => Reason::Verifying,
            TransitionReason::OperationFailed => Reason::OperationFailed,
            TransitionReason::Verified => Reason::MaintenanceSucceeded,
            TransitionReason::Failed => Reason::MaintenanceFailed,
            TransitionReason::Recovered => Reason::NodeRecovered,
            TransitionReason::Released => Reason::SlotReleased,
            TransitionReason::Withdrawn => Reason::SlotRequestWithdrawn,
            TransitionReason::ForceReleased => Reason::SlotForceReleased,
            TransitionReason::DrainFailed => Reason::DrainFailed,
            TransitionReason::NodeDeleted => Reason::NodeDeleted,
        }
    }
}

/// The object an Event is about.
#[derive(Clone, Debug, PartialEq)]
pub struct Regarding(ObjectReference);

impl Regarding {
    /// A Node. Pass its `uid` when known: `kubectl describe node` matches Events by it.
    pub fn node(name: &str, uid: Option<&str>) -> Self {
        Self::of::<Node>(name, uid)
    }

    /// A MaintenancePolicy.
    pub fn policy(name: &str, uid: Option<&str>) -> Self {
        Self::of::<MaintenancePolicy>(name, uid)
    }

    fn of<K: Resource<DynamicType = ()>>(name: &str, uid: Option<&str>) -> Self {
        Regarding(ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name.to_owned()),
            uid: uid.map(str::to_owned),
            ..ObjectReference::default()
        })
    }

    /// The reference.
    pub fn reference(&self) -> &ObjectReference {
        &self.0
    }
}

/// Records rota's Events. Clones share the recorder and its series cache.
#[derive(Clone)]
pub struct EventSink {
    recorder: Recorder,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl EventSink {
    /// A sink reporting as [`REPORTING_CONTROLLER`], instance `pod_name` (this replica).
    pub fn new(client: kube::Client, pod_name: &str) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(pod_name.to_owned()),
        };
        EventSink {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Records `reason` on `regarding` with a human-readable `note`. Cluster-scoped objects'
    /// Events live in the `default` namespace (as the API server's own do).
    pub async fn record(&self, regarding: &Regarding, reason: Reason, note: &str) -> Result<()> {
        let event = Event {
            type_: if reason.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.as_str().to_owned(),
            note: Some(truncate_note(note)),
            action: reason.action().to_owned(),
            secondary: None,
        };
        self.recorder
            .publish(&event, regarding.reference())
            .await
            .map_err(|source| Error {
                reason: reason.as_str(),
                source,
            })
    }

    /// Records `reason` on the Node `node`.
    pub async fn node(
        &self,
        node: &str,
        uid: Option<&str>,
        reason: Reason,
        note: &str,
    ) -> Result<()> {
        self.record(&Regarding::node(node, uid), reason, note).await
    }

    /// Records `reason` on the MaintenancePolicy `policy`.
    pub async fn policy(
        &self,
        policy: &str,
        uid: Option<&str>,
        reason: Reason,
        note: &str,
    ) -> Result<()> {
        self.record(&Regarding::policy(policy, uid), reason, note)
            .await
    }

    /// Records a ledger [`Transition`] on its Node (reason from the transition, note from its
    /// message).
    pub async fn transition(&self, transition: &Transition, node_uid: Option<&str>) -> Result<()> {
        let note = if transition.message.is_empty() {
            format!(
                "{}: {} -> {}",
                transition.operation.name(),
                transition.from.as_str(),
                transition.to.as_str()
            )
        } else {
            transition.message.clone()
        };
        self.node(
            &transition.node,
            node_uid,
            Reason::from(transition.reason),
            &note,
        )
        .await
    }
}

/// The API server refuses notes over 1 kB: keep the start, on a character boundary, with
/// control characters escaped (a note can quote an agent or an annotation).
fn truncate_note(note: &str) -> String {
    printable_within(note, 1024)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::Api;
    use rota_sim::apiserver::{ApiServer, Store};

    use super::*;

    #[test]
    fn warnings_and_transition_reasons() {
        assert!(Reason::DrainBlocked.is_warning());
        assert!(!Reason::Granted.is_warning());
        assert_eq!(
            Reason::from(TransitionReason::Verified).as_str(),
            "MaintenanceSucceeded"
        );
        assert_eq!(Reason::from(TransitionReason::Drained), Reason::Granted);
        // Every warning transition of the ledger stays a warning as an Event.
        for reason in [
            TransitionReason::OperationFailed,
            TransitionReason::Failed,
            TransitionReason::DrainFailed,
            TransitionReason::ForceReleased,
        ] {
            assert!(reason.is_warning());
            assert!(Reason::from(reason).is_warning(), "{reason:?}");
        }
    }

    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        let note = "é".repeat(800);
        let cut = truncate_note(&note);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_note("a\nb\u{1b}"), "a\\nb\\u{1b}");
        assert_eq!(truncate_note("short"), "short");
    }

    #[tokio::test]
    async fn events_appear_on_the_node_and_the_policy() {
        let store = Store::new();
        let server = ApiServer::start(store, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let config = kube::Config::new(server.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let sink = EventSink::new(client.clone(), "rota-coordinator-0");

        sink.node(
            "n1",
            Some("uid-n1"),
            Reason::Cordoned,
            "cordoned for reboot",
        )
        .await
        .unwrap();
        sink.node(
            "n1",
            Some("uid-n1"),
            Reason::DrainBlocked,
            "pdb web allows 0",
        )
        .await
        .unwrap();
        // A repeat becomes a series on the same Event instead of a new object.
        sink.node(
            "n1",
            Some("uid-n1"),
            Reason::DrainBlocked,
            "pdb web allows 0",
        )
        .await
        .unwrap();
        sink.policy("workers", None, Reason::PoolPaused, "paused by an operator")
            .await
            .unwrap();

        let events: Api<K8sEvent> = Api::namespaced(client, "default");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let list = loop {
            let list = events.list(&Default::default()).await.unwrap();
            if list.items.len() >= 3 || tokio::time::Instant::now() > deadline {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(list.items.len(), 3, "{:#?}", list.items);
        let find = |reason: &str| {
            list.items
                .iter()
                .find(|e| e.reason.as_deref() == Some(reason))
                .unwrap_or_else(|| panic!("no {reason} event"))
        };
        let cordoned = find("Cordoned");
        let regarding = cordoned.regarding.as_ref().unwrap();
        assert_eq!(regarding.kind.as_deref(), Some("Node"));
        assert_eq!(regarding.name.as_deref(), Some("n1"));
        assert_eq!(regarding.uid.as_deref(), Some("uid-n1"));
        assert_eq!(cordoned.type_.as_deref(), Some("Normal"));
        assert_eq!(cordoned.action.as_deref(), Some("Cordon"));
        assert_eq!(
            cordoned.reporting_controller.as_deref(),
            Some(REPORTING_CONTROLLER)
        );
        assert_eq!(
            cordoned.reporting_instance.as_deref(),
            Some("rota-coordinator-0")
        );
        let blocked = find("DrainBlocked");
        assert_eq!(blocked.type_.as_deref(), Some("Warning"));
        assert_eq!(blocked.series.as_ref().map(|s| s.count), Some(2));
        let paused = find("PoolPaused");
        let regarding = paused.regarding.as_ref().unwrap();
        assert_eq!(regarding.kind.as_deref(), Some("MaintenancePolicy"));
        assert_eq!(regarding.api_version.as_deref(), Some("rota.dev/v1alpha1"));
        assert_eq!(paused.note.as_deref(), Some("paused by an operator"));
        server.shutdown().await;
    }
}
