//! The gRPC edge: protobuf messages to domain types and back. Invalid messages are refused
//! here, nowhere else.

use rota_proto::v1 as pb;

use rota_core::model::{NodePolicy, Operation};
use rota_proto::convert as wire;

use crate::{Error, Result};

/// The phase of the node's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotPhase {
    /// No request, no slot.
    Idle,
    /// Waiting in the queue.
    Queued,
    /// Being cordoned and drained.
    Draining,
    /// The agent may perform the operation.
    Granted,
    /// The coordinator checks the node.
    Verifying,
    /// Verified and released.
    Done,
    /// Failed; a human releases it.
    Failed,
}

/// What the coordinator says about the node's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// The phase.
    pub phase: SlotPhase,
    /// The fencing token (non-zero from admission on).
    pub token: u64,
    /// The operation the slot is for.
    pub operation: Option<Operation>,
    /// Lease time-to-live in seconds.
    pub lease_ttl_seconds: u32,
    /// Why it waits, for logs.
    pub waiting_reasons: Vec<String>,
    /// The pool's policy; with a grant, the one the operation runs under.
    pub policy: Option<NodePolicy>,
}

impl TryFrom<&pb::SlotStatus> for SlotView {
    type Error = Error;

    fn try_from(s: &pb::SlotStatus) -> Result<Self> {
        let phase = match pb::SlotPhase::try_from(s.phase) {
            Ok(pb::SlotPhase::Idle) => SlotPhase::Idle,
            Ok(pb::SlotPhase::Queued) => SlotPhase::Queued,
            Ok(pb::SlotPhase::Draining) => SlotPhase::Draining,
            Ok(pb::SlotPhase::Granted) => SlotPhase::Granted,
            Ok(pb::SlotPhase::Verifying) => SlotPhase::Verifying,
            Ok(pb::SlotPhase::Done) => SlotPhase::Done,
            Ok(pb::SlotPhase::Failed) => SlotPhase::Failed,
            Ok(pb::SlotPhase::Unspecified) | Err(_) => {
                return Err(Error::parse("slot status", format!("phase {}", s.phase)));
            }
        };
        let operation = s
            .operation
            .clone()
            .map(|op| wire::operation(Some(op)))
            .transpose()
            .map_err(|e| Error::parse("slot status", e.to_string()))?;
        if phase == SlotPhase::Granted && (s.token == 0 || operation.is_none()) {
            return Err(Error::parse(
                "slot status",
                "a grant without a token or an operation",
            ));
        }
        let policy = s
            .policy
            .clone()
            .map(|p| wire::node_policy("policy", p))
            .transpose()
            .map_err(|e| Error::parse("slot status", e.to_string()))?;
        Ok(SlotView {
            phase,
            token: s.token,
            operation,
            lease_ttl_seconds: s.lease_ttl_seconds,
            waiting_reasons: s.waiting_reasons.clone(),
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_core::model::{PackagePin, UpgradeReboot};

    #[test]
    fn operations_round_trip_and_bad_ones_are_refused() {
        let ops = [
            Operation::Reboot,
            Operation::KubeletRestart,
            Operation::PackageUpgrade {
                security_only: true,
                reboot: UpgradeReboot::IfRequired,
                packages: vec![PackagePin {
                    name: "curl".into(),
                    version: "1".into(),
                }],
            },
            Operation::KubernetesUpgrade {
                version: "1.30.2".into(),
                kubeadm: rota_core::model::KubeadmStep::Node,
            },
        ];
        for op in ops {
            let pb = pb::Operation::from(&op);
            assert_eq!(wire::operation(Some(pb)).unwrap(), op);
        }
        assert!(wire::operation(Some(pb::Operation { kind: None })).is_err());
        let bad = pb::Operation {
            kind: Some(pb::operation::Kind::KubernetesUpgrade(
                pb::KubernetesUpgrade {
                    version: "1.30; rm -rf /".into(),
                    kubeadm: 0,
                },
            )),
        };
        assert!(wire::operation(Some(bad)).is_err());
        let grant_without_token = pb::SlotStatus {
            phase: pb::SlotPhase::Granted as i32,
            operation: Some(pb::Operation::from(&Operation::Reboot)),
            ..Default::default()
        };
        assert!(SlotView::try_from(&grant_without_token).is_err());
    }
}
