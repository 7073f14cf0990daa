//! The FleetLock protocol, as rota serves it: the reboot lock that Zincati (Fedora CoreOS) and
//! other image-based hosts ask before they reboot, answered with a rota slot under the same
//! rules as every other node. Pure: the coordinator's HTTP edge (`coordinator/src/fleetlock/`)
//! parses with [`parse`], finds the Node with [`resolve`], and does what [`pre_reboot`] and
//! [`steady_state`] decide.
//!
//! The protocol (Zincati's `docs/development/fleetlock/protocol.md`): `POST /v1/pre-reboot`
//! locks a reboot slot, `POST /v1/steady-state` releases it; both carry the header
//! `fleet-lock-protocol: true` and the body `{"client_params": {"id": …, "group": …}}`; 200
//! means success, anything else failure, with `{"kind": …, "value": …}` where `kind` has a
//! small fixed set of values. Locks are recursive and owned: asking again for a lock one holds
//! succeeds, and releasing one does not hold succeeds.
//!
//! How a host maps onto rota:
//! - the `id` names a Kubernetes Node: its `status.nodeInfo.machineID`, the app-specific id
//!   Zincati derives from that machine id, or the Node's name;
//! - the `group` must name the Node's pool (its `MaintenancePolicy`);
//! - pre-reboot queues a `Reboot` request; the scheduler admits it under the pool's rules, rota
//!   cordons and drains the node, and only the granted slot answers 200;
//! - steady-state after the host rebooted (the kubelet reports a new boot id) completes the
//!   slot: rota verifies the node's health and releases the slot, and answers 200 once it is
//!   released. Steady-state from a host that holds a slot but did not reboot (Zincati restarted
//!   before it finalized) gives the slot back — once a kubelet report from after the call shows
//!   the boot id from before, so that a kubelet slow to report the new boot is not taken for
//!   one that did not reboot.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::{FencingToken, NodeName, Operation, Origin, Slot, SlotPhase, SlotRequest};
use crate::slots::{NodeState, SlotView};

/// The header every request must carry, with the value `true`.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";
/// Locks a reboot slot.
pub const PRE_REBOOT: &str = "/v1/pre-reboot";
/// Releases a reboot slot.
pub const STEADY_STATE: &str = "/v1/steady-state";
/// The largest body accepted (a real one is under 200 bytes).
pub const MAX_BODY: usize = 4096;
/// The longest client id accepted.
pub const MAX_ID: usize = 253;
/// Zincati's application id: it identifies itself by the machine id made app-specific with
/// this id (`sd_id128_get_machine_app_specific`).
pub const ZINCATI_APP_ID: [u8; 16] = [
    0xde, 0x35, 0x10, 0x6b, 0x6e, 0xc2, 0x46, 0x88, 0xb6, 0x3a, 0xfd, 0xda, 0xa1, 0x56, 0x67, 0x9b,
];

/// The client's parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// The client's identifier (Zincati: its app-specific machine id).
    pub id: String,
    /// Its reboot group.
    pub group: String,
}

#[derive(Deserialize)]
struct Body {
    client_params: ClientParams,
}

/// Why a request fails: the error `kind` of the protocol. A small fixed set, as the protocol
/// asks (clients count them in metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// No `fleet-lock-protocol: true` header.
    MissingHeader,
    /// The body is not the protocol's JSON, or a parameter is invalid.
    BadRequest,
    /// No credentials, or not the group's.
    Unauthorized,
    /// No Node has this id.
    UnknownId,
    /// Several Nodes answer to this id.
    AmbiguousId,
    /// The group is not the Node's pool.
    WrongGroup,
    /// This replica does not lead; ask again (the Service routes to the leader).
    NotLeader,
    /// The reboot request waits in the queue.
    Queued,
    /// rota drains the node.
    Draining,
    /// The node holds a slot for another operation.
    HeldByOther,
    /// The node's last maintenance is being verified.
    Verifying,
    /// The node's last maintenance failed; a human must look.
    Failed,
    /// Waiting for the kubelet to report after the host's steady-state.
    WaitingForKubelet,
    /// The node's slot changed meanwhile, or the ledger refused the change: ask again.
    Conflict,
    /// Something went wrong in rota.
    Internal,
}

impl Kind {
    /// The `kind` string on the wire (and the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MissingHeader => "missing_protocol_header",
            Kind::BadRequest => "bad_request",
            Kind::Unauthorized => "unauthorized",
            Kind::UnknownId => "unknown_id",
            Kind::AmbiguousId => "ambiguous_id",
            Kind::WrongGroup => "wrong_group",
            Kind::NotLeader => "not_leader",
            Kind::Queued => "failed_lock_queued",
            Kind::Draining => "failed_lock_draining",
            Kind::HeldByOther => "failed_lock_held_by_other_operation",
            Kind::Verifying => "failed_unlock_verifying",
            Kind::Failed => "failed_maintenance",
            Kind::WaitingForKubelet => "failed_unlock_waiting_for_kubelet",
            Kind::Conflict => "conflict",
            Kind::Internal => "internal",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            Kind::MissingHeader | Kind::BadRequest => 400,
            Kind::Unauthorized => 401,
            Kind::UnknownId => 404,
            Kind::AmbiguousId | Kind::WrongGroup | Kind::Conflict => 409,
            Kind::Queued
            | Kind::Draining
            | Kind::HeldByOther
            | Kind::Verifying
            | Kind::Failed
            | Kind::WaitingForKubelet => 423,
            Kind::NotLeader => 503,
            Kind::Internal => 500,
        }
    }
}

/// A failed request: the protocol's error value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {value}", kind.as_str())]
pub struct Refusal {
    /// What kind of failure.
    pub kind: Kind,
    /// For humans (non-empty).
    pub value: String,
}

impl Refusal {
    /// A refusal of `kind`.
    pub fn new(kind: Kind, value: impl Into<String>) -> Self {
        let value = value.into();
        let value = if value.is_empty() {
            kind.as_str().to_owned()
        } else {
            value
        };
        Refusal { kind, value }
    }

    /// The error body: `{"kind": …, "value": …}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "kind": self.kind.as_str(), "value": self.value })
    }
}

/// Checks the header and parses the body of a request.
pub fn parse(header: Option<&str>, body: &[u8]) -> Result<ClientParams, Refusal> {
    if !header.is_some_and(|h| h.trim().eq_ignore_ascii_case("true")) {
        return Err(Refusal::new(
            Kind::MissingHeader,
            format!("the request must carry the header `{PROTOCOL_HEADER}: true`"),
        ));
    }
    if body.len() > MAX_BODY {
        return Err(Refusal::new(
            Kind::BadRequest,
            format!("the body is larger than {MAX_BODY} bytes"),
        ));
    }
    let Body { client_params } = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            Kind::BadRequest,
            format!("the body must be {{\"client_params\": {{\"id\": …, \"group\": …}}}}: {e}"),
        )
    })?;
    let ClientParams { id, group } = &client_params;
    if let Err(problem) = check_id(id) {
        return Err(Refusal::new(
            Kind::BadRequest,
            format!("client_params.id: {problem}"),
        ));
    }
    if !is_group(group) {
        return Err(Refusal::new(
            Kind::BadRequest,
            "client_params.group must match ^[a-zA-Z0-9.-]+$ (at most 253 characters)",
        ));
    }
    Ok(client_params)
}

/// Whether `id` can be a FleetLock client id: 1 to [`MAX_ID`] printable characters.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        Err(format!("a client id is 1 to {MAX_ID} printable characters"))
    } else {
        Ok(())
    }
}

/// Whether `group` is a valid FleetLock group name.
pub fn is_group(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= 253
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// A Node as a FleetLock id can name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identities {
    /// The Node's name.
    pub name: NodeName,
    /// Its `status.nodeInfo.machineID`, lower case.
    pub machine_id: Option<String>,
    /// Zincati's app-specific id derived from that machine id, lower-case hex.
    pub zincati_id: Option<String>,
}

/// The Node the client `id` names: by machine id (raw or Zincati's app-specific form, case
/// and dashes ignored) or by name.
pub fn resolve<'a>(
    id: &str,
    nodes: impl IntoIterator<Item = &'a Identities>,
) -> Result<NodeName, Refusal> {
    let wanted = normalize_id(id);
    let matches: Vec<&NodeName> = nodes
        .into_iter()
        .filter(|n| {
            let is_wanted = |other: &Option<String>| {
                other.as_deref().is_some_and(|o| normalize_id(o) == wanted)
            };
            n.name == id || is_wanted(&n.machine_id) || is_wanted(&n.zincati_id)
        })
        .map(|n| &n.name)
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Refusal::new(
            Kind::UnknownId,
            format!(
                "no Node has the machine id, Zincati id or name {:?}",
                crate::text::printable(id)
            ),
        )),
        many => Err(Refusal::new(
            Kind::AmbiguousId,
            format!(
                "{} Nodes answer to {:?}: {}",
                many.len(),
                crate::text::printable(id),
                many.iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// An id as rota compares them: lower case, without dashes (Zincati and systemd print
/// machine ids both ways).
pub fn normalize_id(id: &str) -> String {
    id.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Checks that the client's group names the Node's pool.
pub fn check_group(group: &str, node: &str, pool: Option<&str>) -> Result<(), Refusal> {
    match pool {
        Some(pool) if pool == group => Ok(()),
        Some(pool) => Err(Refusal::new(
            Kind::WrongGroup,
            format!("node {node} is in pool {pool}, not {group}: set the client's group to {pool}"),
        )),
        None => Err(Refusal::new(
            Kind::WrongGroup,
            format!(
                "node {node} is in no single pool: no MaintenancePolicy (or more than one) selects it"
            ),
        )),
    }
}

/// What rota knows of one pool's FleetLock hosts that are not Kubernetes nodes (listed in
/// `spec.fleetLock.hosts`), by normalized id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPool {
    /// Hosts holding a reboot lock, since when.
    pub holders: BTreeMap<String, Timestamp>,
    /// Hosts asking for one, since when.
    pub requests: BTreeMap<String, Timestamp>,
}

/// The name a host that is not a Kubernetes node goes by where the scheduler expects a node
/// name: never a valid Node name (a colon), so it cannot collide with one.
pub fn host_key(id: &str) -> String {
    format!("{HOST_KEY_PREFIX}{id}")
}

/// The host id behind a [`host_key`], or `None` for a Node's name.
pub fn host_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(HOST_KEY_PREFIX)
}

const HOST_KEY_PREFIX: &str = "fleetlock-host:";

/// The pool whose policy lists the host `id` (not a Kubernetes node), checked against the
/// client's group.
pub fn find_host<'a>(
    id: &str,
    group: &str,
    listed: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Result<String, Refusal> {
    let wanted = normalize_id(id);
    let pools: Vec<&str> = listed
        .into_iter()
        .filter(|(_, hosts)| hosts.contains(&wanted))
        .map(|(pool, _)| pool)
        .collect();
    match pools.as_slice() {
        [pool] => {
            check_group(group, id, Some(pool))?;
            Ok((*pool).to_owned())
        }
        [] => Err(Refusal::new(
            Kind::UnknownId,
            format!(
                "no Node has the machine id, Zincati id or name {:?}, and no MaintenancePolicy lists it in spec.fleetLock.hosts",
                crate::text::printable(id)
            ),
        )),
        many => Err(Refusal::new(
            Kind::AmbiguousId,
            format!(
                "host {:?} is listed by {} policies: {}",
                crate::text::printable(id),
                many.len(),
                many.join(", ")
            ),
        )),
    }
}

/// What to do for a pre-reboot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockDecision {
    /// Queue a `Reboot` request (origin FleetLock), then answer from the new view.
    Request,
    /// The slot is granted: 200.
    Locked,
    /// Not yet, or not at all.
    Refuse(Refusal),
}

/// Decides a pre-reboot from the node's view.
pub fn pre_reboot(view: &SlotView) -> LockDecision {
    let node = &view.node;
    match view.state {
        NodeState::Idle | NodeState::Done => LockDecision::Request,
        NodeState::Queued => LockDecision::Refuse(Refusal::new(Kind::Queued, queued_note(view))),
        NodeState::Draining => LockDecision::Refuse(Refusal::new(
            Kind::Draining,
            format!("rota is draining node {node}; ask again"),
        )),
        NodeState::Granted if view.operation == Some(Operation::Reboot) => LockDecision::Locked,
        NodeState::Granted => LockDecision::Refuse(Refusal::new(
            Kind::HeldByOther,
            format!(
                "node {node} holds a slot for {}; it may not reboot under it",
                view.operation
                    .as_ref()
                    .map_or("an operation", Operation::name)
            ),
        )),
        NodeState::Verifying => LockDecision::Refuse(Refusal::new(
            Kind::Verifying,
            format!(
                "node {node}'s last maintenance is being verified: {}",
                view.message
            ),
        )),
        NodeState::Failed => LockDecision::Refuse(failed(view)),
    }
}

fn queued_note(view: &SlotView) -> String {
    let position = view
        .queue_position
        .map(|p| format!(" at position {p}"))
        .unwrap_or_default();
    let why = if view.waiting_reasons.is_empty() {
        "waiting for the scheduler".to_owned()
    } else {
        view.waiting_reasons.join("; ")
    };
    format!("reboot of node {} queued{position}: {why}", view.node)
}

fn failed(view: &SlotView) -> Refusal {
    Refusal::new(
        Kind::Failed,
        format!(
            "node {}'s maintenance failed and keeps its slot until it is healthy or a human releases it (rotactl release): {}",
            view.node, view.message
        ),
    )
}

/// What the kubelet last reported of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletReport {
    /// `status.nodeInfo.bootID`.
    pub boot_id: Option<String>,
    /// `lastHeartbeatTime` of the `Ready` condition.
    pub heartbeat: Option<Timestamp>,
}

/// What to do for a steady-state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnlockDecision {
    /// Nothing of the client's is held: 200.
    Unlocked,
    /// Withdraw the client's queued request, then 200.
    Withdraw,
    /// The host rebooted: complete the slot with this boot id (the health gate then runs) and
    /// answer that it is being verified.
    Complete {
        /// The slot's fencing token.
        token: FencingToken,
        /// The kubelet's boot id now.
        boot_id: String,
    },
    /// The host gives the slot back without having rebooted: release it, then 200.
    GiveBack {
        /// The slot's fencing token.
        token: FencingToken,
    },
    /// Not yet.
    Refuse(Refusal),
}

/// Decides a steady-state from the node's view, its queued request or held slot, the
/// kubelet's latest report, and when the client first asked steady-state for this slot.
pub fn steady_state(
    view: &SlotView,
    queued: Option<&SlotRequest>,
    slot: Option<&Slot>,
    kubelet: &KubeletReport,
    asked_since: Timestamp,
) -> UnlockDecision {
    let node = &view.node;
    match view.state {
        NodeState::Idle | NodeState::Done => UnlockDecision::Unlocked,
        NodeState::Queued => match queued {
            Some(request) if request.origin == Origin::FleetLock => UnlockDecision::Withdraw,
            _ => UnlockDecision::Unlocked,
        },
        NodeState::Verifying => UnlockDecision::Refuse(Refusal::new(
            Kind::Verifying,
            format!(
                "node {node} is being verified before its slot is released: {}",
                view.message
            ),
        )),
        NodeState::Failed => UnlockDecision::Refuse(failed(view)),
        NodeState::Draining | NodeState::Granted => {
            let Some(slot) = slot else {
                return UnlockDecision::Refuse(Refusal::new(
                    Kind::Internal,
                    format!("node {node} shows a slot the ledger does not hold; ask again"),
                ));
            };
            unlock_held(slot, kubelet, asked_since)
        }
    }
}

fn unlock_held(slot: &Slot, kubelet: &KubeletReport, asked_since: Timestamp) -> UnlockDecision {
    let node = &slot.node;
    let ours = slot.origin == Origin::FleetLock;
    let rebooted = match (&slot.boot_id_before, &kubelet.boot_id) {
        (Some(before), Some(now)) if before != now => Some(now.clone()),
        _ => None,
    };
    if slot.phase == SlotPhase::Granted
        && slot.operation == Operation::Reboot
        && let Some(boot_id) = rebooted
    {
        // Whoever asked for the reboot, the host performed it.
        return UnlockDecision::Complete {
            token: slot.token,
            boot_id,
        };
    }
    if !ours {
        // A human's or an agent's slot: the client holds nothing to release.
        return UnlockDecision::Unlocked;
    }
    if slot.phase == SlotPhase::Draining {
        return UnlockDecision::GiveBack { token: slot.token };
    }
    let reported_since = kubelet.heartbeat.is_some_and(|h| h > asked_since);
    let same_boot = slot.boot_id_before.is_some() && slot.boot_id_before == kubelet.boot_id;
    if same_boot && reported_since {
        return UnlockDecision::GiveBack { token: slot.token };
    }
    UnlockDecision::Refuse(Refusal::new(
        Kind::WaitingForKubelet,
        format!(
            "node {node} holds reboot slot {}: waiting for its kubelet to report whether it rebooted (boot id before: {})",
            slot.token,
            slot.boot_id_before.as_deref().unwrap_or("unknown")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn view(state: NodeState, operation: Option<Operation>) -> SlotView {
        SlotView {
            node: "n1".to_owned(),
            state,
            operation,
            token: None,
            queue_position: None,
            waiting_reasons: vec!["MaxUnavailable: 1 of 1 unavailable".to_owned()],
            lease_ttl: SignedDuration::from_secs(90),
            message: "kubelet not Ready".to_owned(),
            policy: None,
        }
    }

    fn slot(phase: SlotPhase, origin: Origin, boot: Option<&str>) -> Slot {
        Slot {
            node: "n1".to_owned(),
            operation: Operation::Reboot,
            origin,
            token: FencingToken(7),
            phase,
            admitted_at: at(0),
            phase_since: at(1),
            granted_at: Some(at(1)),
            lease_expires_at: at(91),
            boot_id_before: boot.map(str::to_owned),
            cordoned_by_rota: true,
        }
    }

    fn kubelet(boot: &str, heartbeat: i64) -> KubeletReport {
        KubeletReport {
            boot_id: Some(boot.to_owned()),
            heartbeat: Some(at(heartbeat)),
        }
    }

    #[test]
    fn a_request_needs_the_header_and_the_protocols_body() {
        let body =
            br#"{"client_params": {"id": "c988d2509fdf4cdcbed39037c56406fb", "group": "workers"}}"#;
        assert_eq!(
            parse(Some("true"), body),
            Ok(ClientParams {
                id: "c988d2509fdf4cdcbed39037c56406fb".to_owned(),
                group: "workers".to_owned()
            })
        );
        let kind = |h: Option<&str>, b: &[u8]| parse(h, b).map_err(|r| r.kind);
        assert_eq!(kind(None, body), Err(Kind::MissingHeader));
        assert_eq!(kind(Some("false"), body), Err(Kind::MissingHeader));
        assert_eq!(kind(Some("true"), b"{}"), Err(Kind::BadRequest));
        assert_eq!(kind(Some("true"), b"not json"), Err(Kind::BadRequest));
        let empty_id = br#"{"client_params": {"id": "", "group": "workers"}}"#;
        assert_eq!(kind(Some("true"), empty_id), Err(Kind::BadRequest));
        let bad_group = br#"{"client_params": {"id": "x", "group": "a b"}}"#;
        assert_eq!(kind(Some("true"), bad_group), Err(Kind::BadRequest));
        let control = br#"{"client_params": {"id": "x\u0007", "group": "g"}}"#;
        assert_eq!(kind(Some("true"), control), Err(Kind::BadRequest));
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(kind(Some("true"), &big), Err(Kind::BadRequest));
    }

    #[test]
    fn every_kind_is_short_distinct_and_an_error_status() {
        let all = [
            Kind::MissingHeader,
            Kind::BadRequest,
            Kind::Unauthorized,
            Kind::UnknownId,
            Kind::AmbiguousId,
            Kind::WrongGroup,
            Kind::NotLeader,
            Kind::Queued,
            Kind::Draining,
            Kind::HeldByOther,
            Kind::Verifying,
            Kind::Failed,
            Kind::WaitingForKubelet,
            Kind::Conflict,
            Kind::Internal,
        ];
        let names: std::collections::BTreeSet<_> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), all.len());
        for kind in all {
            assert!((400..600).contains(&kind.status()), "{kind:?}");
        }
        let refusal = Refusal::new(Kind::Queued, "");
        assert_eq!(refusal.body()["kind"], "failed_lock_queued");
        assert_eq!(refusal.body()["value"], "failed_lock_queued");
    }

    #[test]
    fn an_id_names_one_node_by_machine_id_zincati_id_or_name() {
        let nodes = [
            Identities {
                name: "a".to_owned(),
                machine_id: Some("3d1219c7c4c5404aaa1f6d2a48adfda4".to_owned()),
                zincati_id: Some("975228d46dc94622b9bbe16671e2b58d".to_owned()),
            },
            Identities {
                name: "b".to_owned(),
                machine_id: Some("11111111111111111111111111111111".to_owned()),
                zincati_id: None,
            },
            Identities {
                name: "c".to_owned(),
                machine_id: Some("11111111111111111111111111111111".to_owned()),
                zincati_id: None,
            },
        ];
        assert_eq!(
            resolve("975228D4-6DC9-4622-B9BB-E16671E2B58D", &nodes),
            Ok("a".into())
        );
        assert_eq!(
            resolve("3d1219c7c4c5404aaa1f6d2a48adfda4", &nodes),
            Ok("a".into())
        );
        assert_eq!(resolve("a", &nodes), Ok("a".into()));
        assert_eq!(
            resolve("zzz", &nodes).map_err(|r| r.kind),
            Err(Kind::UnknownId)
        );
        let ambiguous = resolve("11111111111111111111111111111111", &nodes).unwrap_err();
        assert_eq!(ambiguous.kind, Kind::AmbiguousId);
        assert!(ambiguous.value.contains("b, c"), "{}", ambiguous.value);
    }

    #[test]
    fn a_host_that_is_no_node_belongs_to_the_one_pool_that_lists_it() {
        let a = vec!["975228d46dc94622b9bbe16671e2b58d".to_owned()];
        let b = vec!["11111111111111111111111111111111".to_owned()];
        let listed = || [("edge", a.as_slice()), ("storage", b.as_slice())];
        assert_eq!(
            find_host("975228D4-6DC9-4622-B9BB-E16671E2B58D", "edge", listed()),
            Ok("edge".to_owned())
        );
        let kind = |id: &str, group: &str| find_host(id, group, listed()).map_err(|r| r.kind);
        assert_eq!(
            kind("975228d46dc94622b9bbe16671e2b58d", "storage"),
            Err(Kind::WrongGroup)
        );
        assert_eq!(
            kind("22222222222222222222222222222222", "edge"),
            Err(Kind::UnknownId)
        );
        let twice = [("edge", a.as_slice()), ("other", a.as_slice())];
        assert_eq!(
            find_host(&a[0], "edge", twice).map_err(|r| r.kind),
            Err(Kind::AmbiguousId)
        );
        let key = host_key(&a[0]);
        assert_eq!(host_of_key(&key), Some(a[0].as_str()));
        assert!(
            !crate::node::is_dns_subdomain(&key),
            "{key} could name a Node"
        );
        assert_eq!(host_of_key("worker-1"), None);
    }

    #[test]
    fn the_group_must_name_the_nodes_pool() {
        assert_eq!(check_group("workers", "n1", Some("workers")), Ok(()));
        let wrong = check_group("default", "n1", Some("workers")).unwrap_err();
        assert_eq!(wrong.kind, Kind::WrongGroup);
        assert!(wrong.value.contains("set the client's group to workers"));
        assert_eq!(
            check_group("workers", "n1", None).map_err(|r| r.kind),
            Err(Kind::WrongGroup)
        );
    }

    #[test]
    fn pre_reboot_succeeds_only_on_a_granted_reboot() {
        use NodeState::*;
        let reboot = Some(Operation::Reboot);
        assert_eq!(pre_reboot(&view(Idle, None)), LockDecision::Request);
        assert_eq!(
            pre_reboot(&view(Done, reboot.clone())),
            LockDecision::Request
        );
        assert_eq!(
            pre_reboot(&view(Granted, reboot.clone())),
            LockDecision::Locked
        );
        let kind = |v: SlotView| match pre_reboot(&v) {
            LockDecision::Refuse(r) => Some(r.kind),
            _ => None,
        };
        assert_eq!(kind(view(Queued, reboot.clone())), Some(Kind::Queued));
        assert_eq!(kind(view(Draining, reboot.clone())), Some(Kind::Draining));
        assert_eq!(kind(view(Verifying, reboot.clone())), Some(Kind::Verifying));
        assert_eq!(kind(view(Failed, reboot.clone())), Some(Kind::Failed));
        assert_eq!(
            kind(view(Granted, Some(Operation::KubeletRestart))),
            Some(Kind::HeldByOther)
        );
        let LockDecision::Refuse(queued) = pre_reboot(&view(Queued, reboot)) else {
            panic!("queued is refused");
        };
        assert!(queued.value.contains("MaxUnavailable"), "{}", queued.value);
    }

    #[test]
    fn steady_state_after_a_reboot_completes_the_slot() {
        let held = slot(SlotPhase::Granted, Origin::FleetLock, Some("boot-1"));
        let v = view(NodeState::Granted, Some(Operation::Reboot));
        assert_eq!(
            steady_state(&v, None, Some(&held), &kubelet("boot-2", 5), at(3)),
            UnlockDecision::Complete {
                token: FencingToken(7),
                boot_id: "boot-2".to_owned()
            }
        );
        // A human's reboot slot, performed by the host, completes too.
        let manual = slot(SlotPhase::Granted, Origin::Manual, Some("boot-1"));
        assert_eq!(
            steady_state(&v, None, Some(&manual), &kubelet("boot-2", 5), at(3)),
            UnlockDecision::Complete {
                token: FencingToken(7),
                boot_id: "boot-2".to_owned()
            }
        );
    }

    #[test]
    fn steady_state_without_a_reboot_gives_the_slot_back_only_on_a_fresh_report() {
        let held = slot(SlotPhase::Granted, Origin::FleetLock, Some("boot-1"));
        let v = view(NodeState::Granted, Some(Operation::Reboot));
        // The kubelet has not reported since the call: it may be the new boot's, not yet up.
        let stale = steady_state(&v, None, Some(&held), &kubelet("boot-1", 2), at(3));
        assert!(
            matches!(&stale, UnlockDecision::Refuse(r) if r.kind == Kind::WaitingForKubelet),
            "{stale:?}"
        );
        assert_eq!(
            steady_state(&v, None, Some(&held), &kubelet("boot-1", 4), at(3)),
            UnlockDecision::GiveBack {
                token: FencingToken(7)
            }
        );
        // A boot id that cannot be compared is never taken for "not rebooted".
        let unknown = slot(SlotPhase::Granted, Origin::FleetLock, None);
        assert!(matches!(
            steady_state(&v, None, Some(&unknown), &kubelet("boot-1", 9), at(3)),
            UnlockDecision::Refuse(_)
        ));
        // A slot still draining goes back at once.
        let draining = slot(SlotPhase::Draining, Origin::FleetLock, Some("boot-1"));
        let v = view(NodeState::Draining, Some(Operation::Reboot));
        assert_eq!(
            steady_state(&v, None, Some(&draining), &kubelet("boot-1", 0), at(3)),
            UnlockDecision::GiveBack {
                token: FencingToken(7)
            }
        );
    }

    #[test]
    fn steady_state_never_releases_what_others_hold() {
        let v = view(NodeState::Granted, Some(Operation::KubeletRestart));
        let mut agents = slot(SlotPhase::Granted, Origin::Agent, Some("boot-1"));
        agents.operation = Operation::KubeletRestart;
        assert_eq!(
            steady_state(&v, None, Some(&agents), &kubelet("boot-2", 9), at(3)),
            UnlockDecision::Unlocked
        );
        let request = |origin| SlotRequest {
            node: "n1".to_owned(),
            operation: Operation::Reboot,
            origin,
            requested_at: at(0),
            not_before: None,
        };
        let queued = view(NodeState::Queued, Some(Operation::Reboot));
        let kubelet = KubeletReport::default();
        assert_eq!(
            steady_state(
                &queued,
                Some(&request(Origin::Manual)),
                None,
                &kubelet,
                at(3)
            ),
            UnlockDecision::Unlocked
        );
        assert_eq!(
            steady_state(
                &queued,
                Some(&request(Origin::FleetLock)),
                None,
                &kubelet,
                at(3)
            ),
            UnlockDecision::Withdraw
        );
        for state in [NodeState::Idle, NodeState::Done] {
            assert_eq!(
                steady_state(&view(state, None), None, None, &kubelet, at(3)),
                UnlockDecision::Unlocked
            );
        }
        for (state, kind) in [
            (NodeState::Verifying, Kind::Verifying),
            (NodeState::Failed, Kind::Failed),
        ] {
            let decision = steady_state(&view(state, None), None, None, &kubelet, at(3));
            assert!(
                matches!(&decision, UnlockDecision::Refuse(r) if r.kind == kind),
                "{decision:?}"
            );
        }
    }
}
