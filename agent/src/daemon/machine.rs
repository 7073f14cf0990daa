//! The daemon's decisions, apart from I/O: what to report, which slot to ask for, when to
//! start an operation. The runner feeds it inputs and performs the actions it returns.
use rota_core::model::NodeFacts;

use rota_core::model::{Operation, UpgradeReboot};

use super::proto::{SlotPhase, SlotView};

/// Which package upgrades the agent asks slots for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpgradePolicy {
    /// None: only reboots when the node needs one.
    None,
    /// Security upgrades.
    Security,
    /// Every upgrade.
    All,
}

/// The operation the node needs, if any: pending upgrades (per policy) first, with a reboot
/// afterwards if required, else a reboot when one is required.
pub fn desired_operation(facts: &NodeFacts, policy: UpgradePolicy) -> Option<Operation> {
    let upgrades = match policy {
        UpgradePolicy::None => false,
        UpgradePolicy::Security => facts.actionable_upgrades(true).next().is_some(),
        UpgradePolicy::All => facts.actionable_upgrades(false).next().is_some(),
    };
    if upgrades {
        Some(Operation::PackageUpgrade {
            security_only: policy == UpgradePolicy::Security,
            reboot: UpgradeReboot::IfRequired,
            packages: Vec::new(),
        })
    } else if facts.reboot_required {
        Some(Operation::Reboot)
    } else {
        None
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Fresh detection results.
    Facts(Box<NodeFacts>),
    /// The coordinator's view of the slot changed.
    Slot(SlotView),
    /// The operation under this token ended (completion reported or given up).
    OperationEnded(u64),
    /// The operation under this token completed and keeps its versions before until the
    /// coordinator's verdict (a package upgrade without a reboot).
    AwaitingVerdict(u64),
    /// Time to tell the coordinator the facts again (a restarted coordinator learns them);
    /// also retries a request that did not get through.
    ResendFacts,
    /// A slot request did not reach the coordinator.
    RequestFailed,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send the facts.
    ReportFacts(Box<NodeFacts>),
    /// Ask for (or replace the queued request with) a slot for this operation.
    RequestSlot(Operation),
    /// Withdraw a queued request that is no longer needed.
    Withdraw,
    /// Perform the granted operation.
    Start {
        /// Fencing token.
        token: u64,
        /// The operation.
        operation: Operation,
    },
    /// The coordinator's health gate failed the slot after the operation completed: roll its
    /// packages back (ends with [`Input::OperationEnded`]).
    RollBack {
        /// Fencing token of the failed slot.
        token: u64,
    },
    /// The slot ended without that failure: forget the versions kept for a rollback.
    AcceptVerdict {
        /// Fencing token of the slot.
        token: u64,
    },
}

/// The daemon's memory.
#[derive(Clone, Debug)]
pub struct Daemon {
    policy: UpgradePolicy,
    facts: Option<Box<NodeFacts>>,
    requested: Option<Operation>,
    slot: Option<SlotPhase>,
    /// Token of the latest slot view (0 when it has none).
    slot_token: u64,
    running: Option<u64>,
    finished: Vec<u64>,
    awaiting_verdict: Option<u64>,
}

impl Daemon {
    /// A daemon asking for upgrades per `policy`. `resumed` is the token of an operation
    /// resumed from the persisted state at start.
    pub fn new(policy: UpgradePolicy, resumed: Option<u64>) -> Self {
        Daemon {
            policy,
            facts: None,
            requested: None,
            slot: None,
            slot_token: 0,
            running: resumed,
            finished: Vec::new(),
            awaiting_verdict: None,
        }
    }

    /// Whether an operation is running.
    pub fn running(&self) -> Option<u64> {
        self.running
    }

    /// Takes an input, returns the actions.
    pub fn on(&mut self, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Facts(facts) => {
                if self.facts.as_ref() != Some(&facts) {
                    actions.push(Action::ReportFacts(facts.clone()));
                }
                self.facts = Some(facts);
                self.reconcile(&mut actions);
            }
            Input::Slot(slot) => {
                self.slot = Some(slot.phase);
                self.slot_token = slot.token;
                self.follow_verdict(&mut actions);
                match slot.phase {
                    SlotPhase::Granted => {
                        let fresh = self.running.is_none() && !self.finished.contains(&slot.token);
                        if fresh && let Some(operation) = slot.operation {
                            self.running = Some(slot.token);
                            actions.push(Action::Start {
                                token: slot.token,
                                operation,
                            });
                        }
                    }
                    SlotPhase::Idle | SlotPhase::Done => {
                        // The coordinator holds no request of ours (any more).
                        self.requested = None;
                        self.reconcile(&mut actions);
                    }
                    SlotPhase::Queued
                    | SlotPhase::Draining
                    | SlotPhase::Verifying
                    | SlotPhase::Failed => {}
                }
            }
            Input::ResendFacts => {
                if let Some(facts) = &self.facts {
                    actions.push(Action::ReportFacts(facts.clone()));
                }
                self.reconcile(&mut actions);
            }
            Input::RequestFailed => self.requested = None,
            Input::AwaitingVerdict(token) => {
                self.awaiting_verdict = Some(token);
                self.follow_verdict(&mut actions);
            }
            Input::OperationEnded(token) => {
                if self.running == Some(token) {
                    self.running = None;
                }
                self.finished.push(token);
                self.requested = None;
                // Facts from before the operation are stale (the sentinel that asked for the
                // reboot is gone now): decide again only on fresh ones.
                self.facts = None;
            }
        }
        actions
    }

    /// Acts on the coordinator's verdict on a completed operation that kept its versions
    /// before: its slot FAILED (the health gate) means roll back, once; any other end of the
    /// slot means forget them. Still held and not failed: wait.
    fn follow_verdict(&mut self, actions: &mut Vec<Action>) {
        let (Some(token), Some(phase)) = (self.awaiting_verdict, self.slot) else {
            return;
        };
        let same_slot = self.slot_token == token;
        if same_slot
            && matches!(
                phase,
                SlotPhase::Draining | SlotPhase::Granted | SlotPhase::Verifying
            )
        {
            return;
        }
        self.awaiting_verdict = None;
        if same_slot && phase == SlotPhase::Failed {
            self.running = Some(token);
            actions.push(Action::RollBack { token });
        } else {
            actions.push(Action::AcceptVerdict { token });
        }
    }

    /// Asks for what the node needs, or withdraws what it no longer needs, while nothing is
    /// admitted yet.
    fn reconcile(&mut self, actions: &mut Vec<Action>) {
        if self.running.is_some() {
            return;
        }
        let admitted = matches!(
            self.slot,
            Some(
                SlotPhase::Draining | SlotPhase::Granted | SlotPhase::Verifying | SlotPhase::Failed
            )
        );
        if admitted {
            return;
        }
        let Some(facts) = &self.facts else {
            return;
        };
        let desired = desired_operation(facts, self.policy);
        if desired == self.requested {
            return;
        }
        match &desired {
            Some(op) => actions.push(Action::RequestSlot(op.clone())),
            None => actions.push(Action::Withdraw),
        }
        self.requested = desired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_core::model::{Impact, PendingPackage};

    fn facts(reboot: bool, security: bool) -> NodeFacts {
        NodeFacts {
            reboot_required: reboot,
            pending_upgrades: vec![PendingPackage {
                name: "curl".into(),
                current_version: "1".into(),
                candidate_version: "2".into(),
                security,
                impact: Impact::None,
                blocked: None,
            }],
            ..NodeFacts::default()
        }
    }

    fn slot(phase: SlotPhase, token: u64, op: Option<Operation>) -> SlotView {
        SlotView {
            phase,
            token,
            operation: op,
            lease_ttl_seconds: 60,
            waiting_reasons: vec![],
        }
    }

    #[test]
    fn policy_decides_the_operation() {
        assert_eq!(
            desired_operation(&facts(false, false), UpgradePolicy::Security),
            None
        );
        assert_eq!(
            desired_operation(&facts(true, false), UpgradePolicy::Security),
            Some(Operation::Reboot)
        );
        assert!(matches!(
            desired_operation(&facts(false, true), UpgradePolicy::Security),
            Some(Operation::PackageUpgrade {
                security_only: true,
                reboot: UpgradeReboot::IfRequired,
                ..
            })
        ));
        assert_eq!(
            desired_operation(&facts(false, true), UpgradePolicy::None),
            None
        );
    }

    #[test]
    fn request_grant_start_once() {
        let mut d = Daemon::new(UpgradePolicy::None, None);
        let a = d.on(Input::Facts(Box::new(facts(true, false))));
        assert!(matches!(a[0], Action::ReportFacts(_)));
        assert_eq!(a[1], Action::RequestSlot(Operation::Reboot));
        // The same facts again: nothing to say, until it is time to repeat them.
        assert!(d.on(Input::Facts(Box::new(facts(true, false)))).is_empty());
        assert_eq!(
            d.on(Input::ResendFacts),
            vec![Action::ReportFacts(Box::new(facts(true, false)))]
        );
        assert!(
            d.on(Input::Slot(slot(
                SlotPhase::Queued,
                0,
                Some(Operation::Reboot)
            )))
            .is_empty()
        );
        let a = d.on(Input::Slot(slot(
            SlotPhase::Granted,
            5,
            Some(Operation::Reboot),
        )));
        assert_eq!(
            a,
            vec![Action::Start {
                token: 5,
                operation: Operation::Reboot
            }]
        );
        // A repeated GRANTED (stream reconnect) does not start it twice.
        assert!(
            d.on(Input::Slot(slot(
                SlotPhase::Granted,
                5,
                Some(Operation::Reboot)
            )))
            .is_empty()
        );
        d.on(Input::OperationEnded(5));
        assert!(
            d.on(Input::Slot(slot(
                SlotPhase::Granted,
                5,
                Some(Operation::Reboot)
            )))
            .is_empty()
        );
        // A new grant under a new token does.
        let a = d.on(Input::Slot(slot(
            SlotPhase::Granted,
            6,
            Some(Operation::Reboot),
        )));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn a_failed_request_is_retried_with_the_next_resend() {
        let mut d = Daemon::new(UpgradePolicy::None, None);
        d.on(Input::Facts(Box::new(facts(true, false))));
        assert!(d.on(Input::RequestFailed).is_empty());
        let a = d.on(Input::ResendFacts);
        assert_eq!(a.last(), Some(&Action::RequestSlot(Operation::Reboot)));
        // Once it got through, resending does not ask again.
        let a = d.on(Input::ResendFacts);
        assert!(
            !a.iter().any(|a| matches!(a, Action::RequestSlot(_))),
            "{a:?}"
        );
    }

    #[test]
    fn a_queued_request_that_is_no_longer_needed_is_withdrawn() {
        let mut d = Daemon::new(UpgradePolicy::None, None);
        d.on(Input::Facts(Box::new(facts(true, false))));
        d.on(Input::Slot(slot(
            SlotPhase::Queued,
            0,
            Some(Operation::Reboot),
        )));
        let a = d.on(Input::Facts(Box::new(facts(false, false))));
        assert_eq!(a.last(), Some(&Action::Withdraw));
        // But never once admitted.
        let mut d = Daemon::new(UpgradePolicy::None, None);
        d.on(Input::Facts(Box::new(facts(true, false))));
        d.on(Input::Slot(slot(
            SlotPhase::Draining,
            3,
            Some(Operation::Reboot),
        )));
        let a = d.on(Input::Facts(Box::new(facts(false, false))));
        assert!(!a.contains(&Action::Withdraw));
    }

    /// A completed upgrade waits for the verdict: its slot FAILED (the coordinator's health
    /// gate) rolls it back, once, whichever of the verdict and the operation's end comes first;
    /// any other end of the slot forgets the versions kept.
    #[test]
    fn a_failed_verdict_rolls_back_once_and_any_other_end_forgets() {
        let up = || {
            Some(Operation::PackageUpgrade {
                security_only: false,
                reboot: UpgradeReboot::IfRequired,
                packages: vec![],
            })
        };
        let mut d = Daemon::new(UpgradePolicy::All, None);
        d.on(Input::Slot(slot(SlotPhase::Granted, 4, up())));
        d.on(Input::OperationEnded(4));
        assert!(d.on(Input::AwaitingVerdict(4)).is_empty(), "granted: wait");
        assert!(
            d.on(Input::Slot(slot(SlotPhase::Verifying, 4, up())))
                .is_empty()
        );
        assert_eq!(
            d.on(Input::Slot(slot(SlotPhase::Failed, 4, up()))),
            vec![Action::RollBack { token: 4 }]
        );
        assert_eq!(d.running(), Some(4), "no new request while rolling back");
        assert!(
            d.on(Input::Slot(slot(SlotPhase::Failed, 4, up())))
                .is_empty()
        );
        d.on(Input::OperationEnded(4));
        assert!(
            d.on(Input::Slot(slot(SlotPhase::Failed, 4, up())))
                .is_empty()
        );

        // The verdict seen before the operation's end (and after an agent restart).
        let mut d = Daemon::new(UpgradePolicy::All, Some(5));
        d.on(Input::Slot(slot(SlotPhase::Failed, 5, up())));
        d.on(Input::OperationEnded(5));
        assert_eq!(
            d.on(Input::AwaitingVerdict(5)),
            vec![Action::RollBack { token: 5 }]
        );

        // Verified and released, or released by a human, or a newer slot: forget.
        for (phase, token) in [
            (SlotPhase::Done, 6),
            (SlotPhase::Idle, 0),
            (SlotPhase::Failed, 7),
        ] {
            let mut d = Daemon::new(UpgradePolicy::All, Some(6));
            d.on(Input::OperationEnded(6));
            d.on(Input::AwaitingVerdict(6));
            assert_eq!(
                d.on(Input::Slot(slot(phase, token, up()))),
                vec![Action::AcceptVerdict { token: 6 }],
                "{phase:?} {token}"
            );
        }
    }

    #[test]
    fn a_resumed_operation_blocks_new_requests() {
        let mut d = Daemon::new(UpgradePolicy::All, Some(9));
        let a = d.on(Input::Facts(Box::new(facts(true, true))));
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            d.on(Input::Slot(slot(
                SlotPhase::Granted,
                9,
                Some(Operation::Reboot)
            )))
            .is_empty()
        );
        d.on(Input::OperationEnded(9));
        assert_eq!(d.running(), None);
        // The slot is released before fresh facts arrive: stale facts ask for nothing.
        assert!(d.on(Input::Slot(slot(SlotPhase::Done, 9, None))).is_empty());
        let a = d.on(Input::Facts(Box::default()));
        assert!(
            !a.iter().any(|a| matches!(a, Action::RequestSlot(_))),
            "{a:?}"
        );
    }
}
