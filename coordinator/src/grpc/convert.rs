//! The slot layer's messages to proto and back; the domain model's own conversions and the
//! validation rules are `rota_proto::convert`'s, shared with the agent.

use rota_proto::convert::{Invalid, MAX_PACKAGES, MAX_TEXT_BYTES, ident, list, pin, text};
use rota_proto::v1 as pb;

use rota_core::slots::{Completion, NodeState, SlotView};

/// The completion report of a `Complete` (node and token are validated separately).
pub fn completion(req: pb::CompleteRequest) -> Result<Completion, Invalid> {
    let boot_id = ident("boot_id", req.boot_id)?;
    Ok(Completion {
        success: req.success,
        message: text("message", req.message, MAX_TEXT_BYTES)?,
        boot_id: Some(boot_id).filter(|b| !b.is_empty()),
        rebooted: req.rebooted,
        changed: list("changed", req.changed, MAX_PACKAGES, pin)?,
    })
}

fn phase_to_proto(state: NodeState) -> pb::SlotPhase {
    match state {
        NodeState::Idle => pb::SlotPhase::Idle,
        NodeState::Queued => pb::SlotPhase::Queued,
        NodeState::Draining => pb::SlotPhase::Draining,
        NodeState::Granted => pb::SlotPhase::Granted,
        NodeState::Verifying => pb::SlotPhase::Verifying,
        NodeState::Failed => pb::SlotPhase::Failed,
        NodeState::Done => pb::SlotPhase::Done,
    }
}

/// Lease TTL in whole seconds for the proto (rounded down, saturating).
pub fn ttl_seconds(ttl: jiff::SignedDuration) -> u32 {
    u32::try_from(ttl.as_secs().max(0)).unwrap_or(u32::MAX)
}

/// A node's view as the `SlotStatus` the agent receives.
pub fn slot_status(view: &SlotView) -> pb::SlotStatus {
    pb::SlotStatus {
        node: view.node.clone(),
        phase: phase_to_proto(view.state).into(),
        operation: view.operation.as_ref().map(pb::Operation::from),
        token: view.token.map_or(0, |t| t.0),
        queue_position: view.queue_position.map_or(0, |p| p.get()),
        waiting_reasons: view.waiting_reasons.clone(),
        lease_ttl_seconds: ttl_seconds(view.lease_ttl),
        message: view.message.clone(),
        policy: view.policy.as_ref().map(pb::NodePolicy::from),
    }
}
