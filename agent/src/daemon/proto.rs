//! The gRPC edge: protobuf messages to domain types and back. Invalid messages are refused
//! here, nowhere else.

use rota_proto::v1 as pb;

use crate::ops::Operation;
use crate::packages::PackagePin;
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
        let operation = s.operation.as_ref().map(Operation::try_from).transpose()?;
        if phase == SlotPhase::Granted && (s.token == 0 || operation.is_none()) {
            return Err(Error::parse(
                "slot status",
                "a grant without a token or an operation",
            ));
        }
        Ok(SlotView {
            phase,
            token: s.token,
            operation,
            lease_ttl_seconds: s.lease_ttl_seconds,
            waiting_reasons: s.waiting_reasons.clone(),
        })
    }
}

impl TryFrom<&pb::Operation> for Operation {
    type Error = Error;

    fn try_from(op: &pb::Operation) -> Result<Self> {
        use pb::operation::Kind;
        match &op.kind {
            Some(Kind::Reboot(_)) => Ok(Operation::Reboot),
            Some(Kind::KubeletRestart(_)) => Ok(Operation::KubeletRestart),
            Some(Kind::PackageUpgrade(u)) => Ok(Operation::PackageUpgrade {
                security_only: u.security_only,
                reboot_if_required: u.reboot_if_required,
                packages: u
                    .packages
                    .iter()
                    .map(|p| {
                        if p.name.is_empty() || p.version.is_empty() {
                            Err(Error::parse(
                                "operation",
                                "a package pin without name or version",
                            ))
                        } else {
                            Ok(PackagePin {
                                name: p.name.clone(),
                                version: p.version.clone(),
                            })
                        }
                    })
                    .collect::<Result<_>>()?,
            }),
            Some(Kind::KubernetesUpgrade(k)) => {
                let v = k.version.trim_start_matches('v');
                let valid = v.split('.').count() == 3
                    && v.split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                if !valid {
                    return Err(Error::parse(
                        "operation",
                        format!(
                            "Kubernetes version {:?} is not MAJOR.MINOR.PATCH",
                            k.version
                        ),
                    ));
                }
                Ok(Operation::KubernetesUpgrade {
                    version: v.to_string(),
                })
            }
            None => Err(Error::parse("operation", "no kind")),
        }
    }
}

impl From<&Operation> for pb::Operation {
    fn from(op: &Operation) -> Self {
        use pb::operation::Kind;
        let kind = match op {
            Operation::Reboot => Kind::Reboot(pb::Reboot {}),
            Operation::KubeletRestart => Kind::KubeletRestart(pb::KubeletRestart {}),
            Operation::PackageUpgrade {
                security_only,
                reboot_if_required,
                packages,
            } => Kind::PackageUpgrade(pb::PackageUpgrade {
                security_only: *security_only,
                reboot_if_required: *reboot_if_required,
                packages: packages.iter().map(pin_to_pb).collect(),
            }),
            Operation::KubernetesUpgrade { version } => {
                Kind::KubernetesUpgrade(pb::KubernetesUpgrade {
                    version: version.clone(),
                })
            }
        };
        pb::Operation { kind: Some(kind) }
    }
}

/// A package pin as protobuf.
pub fn pin_to_pb(p: &PackagePin) -> pb::PackagePin {
    pb::PackagePin {
        name: p.name.clone(),
        version: p.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_and_bad_ones_are_refused() {
        let ops = [
            Operation::Reboot,
            Operation::KubeletRestart,
            Operation::PackageUpgrade {
                security_only: true,
                reboot_if_required: true,
                packages: vec![PackagePin {
                    name: "curl".into(),
                    version: "1".into(),
                }],
            },
            Operation::KubernetesUpgrade {
                version: "1.30.2".into(),
            },
        ];
        for op in ops {
            let pb = pb::Operation::from(&op);
            assert_eq!(Operation::try_from(&pb).unwrap(), op);
        }
        assert!(Operation::try_from(&pb::Operation { kind: None }).is_err());
        let bad = pb::Operation {
            kind: Some(pb::operation::Kind::KubernetesUpgrade(
                pb::KubernetesUpgrade {
                    version: "1.30; rm -rf /".into(),
                },
            )),
        };
        assert!(Operation::try_from(&bad).is_err());
        let grant_without_token = pb::SlotStatus {
            phase: pb::SlotPhase::Granted as i32,
            operation: Some(pb::Operation::from(&Operation::Reboot)),
            ..Default::default()
        };
        assert!(SlotView::try_from(&grant_without_token).is_err());
    }
}
