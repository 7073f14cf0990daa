//! The daemon's decisions, apart from I/O: what to report, which slot to ask for, when to
//! start an operation, and which settings hold: the agent's own, overridden by its pool's policy
//! ([`crate::settings`]). The runner feeds it inputs and performs the actions it returns.
use std::path::PathBuf;

use rota_core::model::{EtcdMember, EtcdSnapshot, NodeFacts, NodePolicy, Operation, UpgradeReboot};

use super::proto::{SlotPhase, SlotView};
use crate::detect::DetectConfig;
pub use crate::settings::UpgradePolicy;
use crate::settings::{self, Effective, Own};

/// The operation the node needs, if any: pending upgrades (per `upgrade`) first, with a reboot
/// afterwards if required and `reboots`, else a reboot when one is required and `reboots`.
pub fn desired_operation(
    facts: &NodeFacts,
    upgrade: UpgradePolicy,
    reboots: bool,
) -> Option<Operation> {
    let upgrades = match upgrade {
        UpgradePolicy::None => false,
        UpgradePolicy::Security => facts.actionable_upgrades(true).next().is_some(),
        UpgradePolicy::All => facts.actionable_upgrades(false).next().is_some(),
    };
    if upgrades {
        Some(Operation::PackageUpgrade {
            security_only: upgrade == UpgradePolicy::Security,
            reboot: if reboots {
                UpgradeReboot::IfRequired
            } else {
                UpgradeReboot::Never
            },
            packages: Vec::new(),
        })
    } else if facts.reboot_required && reboots {
        Some(Operation::Reboot)
    } else {
        None
    }
}

/// Why a granted operation is given back instead of performed: a package upgrade under a policy
/// that allows none (`upgrade.mode: none`).
pub fn refusal(operation: &Operation, settings: &Effective) -> Option<String> {
    let upgrade = matches!(operation, Operation::PackageUpgrade { .. });
    (upgrade && settings.upgrade.value == UpgradePolicy::None).then(|| {
        format!(
            "{} allows no package upgrades (upgrade.mode none)",
            settings.upgrade.source
        )
    })
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
    /// The coordinator answered a facts report with the node's policy (`None`: no pool's).
    Policy(Option<NodePolicy>),
    /// An [`Action::EnsureEtcdSnapshot`] ended (`ok`: a fresh verified snapshot exists).
    SnapshotEnded {
        /// Whether it worked.
        ok: bool,
        /// The fresh snapshot it found or took.
        snapshot: Option<EtcdSnapshot>,
    },
    /// Time to try a failed snapshot again.
    SnapshotRetry,
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
        /// The pool's policy of the grant; it wins over the agent's flags.
        policy: Option<NodePolicy>,
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
    /// Give a granted slot back without performing its operation.
    Decline {
        /// Fencing token.
        token: u64,
        /// Why.
        reason: String,
    },
    /// Detect again: the settings detection follows changed, so the facts are stale.
    Detect,
    /// Watch these sentinel files from now on.
    WatchSentinels(Vec<PathBuf>),
    /// The node is queued for an operation whose admission waits for a fresh etcd snapshot:
    /// make sure one younger than this exists (take it when not), then report the facts (ends
    /// with [`Input::SnapshotEnded`]).
    EnsureEtcdSnapshot {
        /// Younger than this, in seconds: half the policy's `etcd.maxSnapshotAge`, so the
        /// snapshot is still fresh enough when the slot comes.
        max_age_seconds: u64,
    },
}

/// The daemon's memory.
#[derive(Clone, Debug)]
pub struct Daemon {
    own: Own,
    /// The pool's policy from the latest facts answer; `None` until the first answer.
    policy: Option<Option<NodePolicy>>,
    facts: Option<Box<NodeFacts>>,
    requested: Option<Operation>,
    slot: Option<SlotPhase>,
    /// Token of the latest slot view (0 when it has none).
    slot_token: u64,
    running: Option<u64>,
    finished: Vec<u64>,
    awaiting_verdict: Option<u64>,
    /// The queued request's operation and policy, from the latest QUEUED slot view.
    queued: Option<(Operation, Option<NodePolicy>)>,
    /// A snapshot check is under way.
    snapshotting: bool,
    /// The queued request's snapshot was checked (or failed; then a retry is scheduled): new
    /// facts alone do not check again, the periodic resend and the retry do.
    snapshot_checked: bool,
}

impl Daemon {
    /// A daemon with the agent's own settings `own`. `resumed` is the token of an operation
    /// resumed from the persisted state at start.
    pub fn new(own: Own, resumed: Option<u64>) -> Self {
        Daemon {
            own,
            policy: None,
            facts: None,
            requested: None,
            slot: None,
            slot_token: 0,
            running: resumed,
            finished: Vec::new(),
            awaiting_verdict: None,
            queued: None,
            snapshotting: false,
            snapshot_checked: false,
        }
    }

    /// Whether an operation is running.
    pub fn running(&self) -> Option<u64> {
        self.running
    }

    /// The settings in force: the agent's own under the pool's latest policy.
    pub fn settings(&self) -> Effective {
        Effective::resolve(&self.own, self.latest_policy())
    }

    /// Detection as `base` configures it under the pool's latest policy.
    pub fn detect_config(&self, base: &DetectConfig) -> DetectConfig {
        settings::detect_config(base, self.latest_policy())
    }

    fn latest_policy(&self) -> Option<&NodePolicy> {
        self.policy.as_ref().and_then(Option::as_ref)
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
                self.ensure_snapshot(false, &mut actions);
            }
            Input::Slot(slot) => {
                let queued = match (&slot.phase, &slot.operation) {
                    (SlotPhase::Queued, Some(op)) => Some((op.clone(), slot.policy.clone())),
                    _ => None,
                };
                if queued != self.queued {
                    self.snapshot_checked = false;
                }
                self.queued = queued;
                self.slot = Some(slot.phase);
                self.slot_token = slot.token;
                self.follow_verdict(&mut actions);
                match slot.phase {
                    SlotPhase::Granted => {
                        let fresh = self.running.is_none() && !self.finished.contains(&slot.token);
                        if fresh && let Some(operation) = slot.operation {
                            actions.push(self.grant(slot.token, operation, slot.policy));
                        }
                    }
                    SlotPhase::Idle | SlotPhase::Done => {
                        // The coordinator holds no request of ours (any more).
                        self.requested = None;
                        self.reconcile(&mut actions);
                    }
                    SlotPhase::Queued => self.ensure_snapshot(false, &mut actions),
                    SlotPhase::Draining | SlotPhase::Verifying | SlotPhase::Failed => {}
                }
            }
            Input::ResendFacts => {
                if let Some(facts) = &self.facts {
                    actions.push(Action::ReportFacts(facts.clone()));
                }
                self.reconcile(&mut actions);
                // A node queued for long needs its snapshot renewed before it gets too old.
                self.ensure_snapshot(true, &mut actions);
            }
            Input::SnapshotEnded { ok, snapshot } => {
                self.snapshotting = false;
                self.snapshot_checked = true;
                // The facts say whether it worked (a snapshot or an error): detect again when
                // they would change, not every time a fresh snapshot is found still fresh.
                let reported = self.facts.as_ref().and_then(|f| f.etcd.snapshot.as_ref());
                if !ok || snapshot.as_ref() != reported {
                    actions.push(Action::Detect);
                }
            }
            Input::SnapshotRetry => self.ensure_snapshot(true, &mut actions),
            Input::RequestFailed => self.requested = None,
            Input::AwaitingVerdict(token) => {
                self.awaiting_verdict = Some(token);
                self.follow_verdict(&mut actions);
            }
            Input::Policy(policy) => self.on_policy(policy, &mut actions),
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

    /// While the node is queued for an operation its policy's `etcd.snapshotBefore` covers and
    /// it runs a stacked etcd member, asks for a snapshot check (one at a time; `again`: also
    /// when this request was checked already).
    fn ensure_snapshot(&mut self, again: bool, actions: &mut Vec<Action>) {
        if self.snapshotting || (self.snapshot_checked && !again) || self.running.is_some() {
            return;
        }
        let Some((operation, policy)) = &self.queued else {
            return;
        };
        let stacked = self
            .facts
            .as_ref()
            .is_some_and(|f| f.etcd.member == EtcdMember::Stacked);
        let rule = policy
            .as_ref()
            .or(self.latest_policy())
            .map_or_else(Default::default, |p| p.etcd);
        if !stacked || !rule.covers(operation) {
            return;
        }
        self.snapshotting = true;
        actions.push(Action::EnsureEtcdSnapshot {
            max_age_seconds: (rule.max_age_seconds / 2).max(1),
        });
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

    /// Starts a granted operation under the grant's policy (the latest known one when the
    /// grant carries none), or declines it when that policy does not allow it.
    fn grant(&mut self, token: u64, operation: Operation, policy: Option<NodePolicy>) -> Action {
        let policy = policy.or_else(|| self.latest_policy().cloned());
        let settings = Effective::resolve(&self.own, policy.as_ref());
        match refusal(&operation, &settings) {
            Some(reason) => {
                self.finished.push(token);
                self.requested = None;
                Action::Decline { token, reason }
            }
            None => {
                self.running = Some(token);
                Action::Start {
                    token,
                    operation,
                    policy,
                }
            }
        }
    }

    /// A facts answer: a changed policy that changes what detection looks at makes the facts
    /// stale (detect again, then decide); otherwise decide on the facts at hand.
    fn on_policy(&mut self, policy: Option<NodePolicy>, actions: &mut Vec<Action>) {
        if self.policy.as_ref() == Some(&policy) {
            return;
        }
        let before = self.settings();
        self.policy = Some(policy);
        let after = self.settings();
        if after.sentinel_files.value != before.sentinel_files.value {
            actions.push(Action::WatchSentinels(after.sentinel_files.value.clone()));
        }
        let detection_changed = after.sentinel_files.value != before.sentinel_files.value
            || after.sentinel_command.value != before.sentinel_command.value
            || after.holds.value != before.holds.value;
        if detection_changed {
            self.facts = None;
            actions.push(Action::Detect);
        } else {
            self.reconcile(actions);
        }
    }

    /// Asks for what the node needs, or withdraws what it no longer needs, while nothing is
    /// admitted yet — and only once the coordinator said which policy holds (so that nothing is
    /// asked for that the policy forbids).
    fn reconcile(&mut self, actions: &mut Vec<Action>) {
        if self.running.is_some() || self.policy.is_none() {
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
        let settings = self.settings();
        let desired = desired_operation(facts, settings.upgrade.value, settings.reboots());
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
    use crate::host::RebootMethod;
    use rota_core::model::{Impact, PendingPackage};
    use rota_core::policy::crd::{RebootMode, UpgradeMode};

    fn own(upgrade: UpgradePolicy) -> Own {
        Own {
            upgrade,
            sentinel_files: vec![PathBuf::from("/var/run/reboot-required")],
            sentinel_command: None,
            reboot_method: RebootMethod::Systemctl,
        }
    }

    /// A daemon that has heard from the coordinator that no pool's policy applies.
    fn daemon(upgrade: UpgradePolicy, resumed: Option<u64>) -> Daemon {
        let mut d = Daemon::new(own(upgrade), resumed);
        assert!(d.on(Input::Policy(None)).is_empty());
        d
    }

    fn pool(upgrade_mode: UpgradeMode, reboot_mode: RebootMode) -> NodePolicy {
        NodePolicy {
            name: "workers".into(),
            upgrade_mode,
            holds: vec![],
            sentinel_files: None,
            sentinel_command: vec![],
            reboot_command: vec![],
            reboot_mode,
            etcd: Default::default(),
        }
    }

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
            policy: None,
        }
    }

    fn ensure(actions: &[Action]) -> Option<u64> {
        actions.iter().find_map(|a| match a {
            Action::EnsureEtcdSnapshot { max_age_seconds } => Some(*max_age_seconds),
            _ => None,
        })
    }

    /// Queued for an operation the policy covers on a stacked etcd member: a snapshot younger
    /// than half the allowed age is made sure of, once per request, again at every periodic
    /// resend and after a failure's retry; never elsewhere.
    #[test]
    fn a_queued_stacked_member_gets_its_snapshot_first() {
        use rota_core::model::{EtcdMember, EtcdSnapshotPolicy, SnapshotBefore};
        let policy = |before| NodePolicy {
            etcd: EtcdSnapshotPolicy {
                before,
                max_age_seconds: 1800,
            },
            ..pool(UpgradeMode::None, RebootMode::WhenRequired)
        };
        let stacked = |member| NodeFacts {
            reboot_required: true,
            etcd: rota_core::model::EtcdFacts {
                member,
                ..Default::default()
            },
            ..NodeFacts::default()
        };
        let mut d = Daemon::new(own(UpgradePolicy::None), None);
        d.on(Input::Policy(Some(policy(SnapshotBefore::AllOperations))));
        // Queued before any facts: nothing known about etcd yet.
        assert_eq!(
            ensure(&d.on(Input::Slot(slot(
                SlotPhase::Queued,
                0,
                Some(Operation::Reboot)
            )))),
            None
        );
        assert_eq!(
            ensure(&d.on(Input::Facts(Box::new(stacked(EtcdMember::Stacked))))),
            Some(900)
        );
        // One at a time.
        assert_eq!(
            ensure(&d.on(Input::Slot(slot(
                SlotPhase::Queued,
                0,
                Some(Operation::Reboot)
            )))),
            None
        );
        assert!(
            d.on(Input::SnapshotEnded {
                ok: true,
                snapshot: None,
            })
            .is_empty()
        );
        // The facts it makes the runner report do not start another.
        let mut fresh = stacked(EtcdMember::Stacked);
        fresh.boot_id = "with-snapshot".into();
        assert_eq!(ensure(&d.on(Input::Facts(Box::new(fresh)))), None);
        assert_eq!(
            ensure(&d.on(Input::ResendFacts)),
            Some(900),
            "renewed while queued"
        );
        d.on(Input::SnapshotEnded {
            ok: false,
            snapshot: None,
        });
        assert_eq!(ensure(&d.on(Input::SnapshotRetry)), Some(900));
        d.on(Input::SnapshotEnded {
            ok: true,
            snapshot: None,
        });
        // Admitted: nothing more.
        d.on(Input::Slot(slot(
            SlotPhase::Draining,
            3,
            Some(Operation::Reboot),
        )));
        assert_eq!(ensure(&d.on(Input::ResendFacts)), None);

        // Not covered, not stacked: never.
        for (before, member) in [
            (SnapshotBefore::KubernetesUpgrades, EtcdMember::Stacked),
            (SnapshotBefore::Never, EtcdMember::Stacked),
            (SnapshotBefore::AllOperations, EtcdMember::External),
            (SnapshotBefore::AllOperations, EtcdMember::None),
        ] {
            let mut d = Daemon::new(own(UpgradePolicy::None), None);
            d.on(Input::Policy(Some(policy(before))));
            d.on(Input::Facts(Box::new(stacked(member))));
            let a = d.on(Input::Slot(slot(
                SlotPhase::Queued,
                0,
                Some(Operation::Reboot),
            )));
            assert_eq!(ensure(&a), None, "{before:?} {member:?}");
            assert_eq!(ensure(&d.on(Input::ResendFacts)), None);
        }
        // The policy the slot carries wins over the latest facts answer.
        let mut d = Daemon::new(own(UpgradePolicy::None), None);
        d.on(Input::Policy(Some(policy(SnapshotBefore::Never))));
        d.on(Input::Facts(Box::new(stacked(EtcdMember::Stacked))));
        let mut queued = slot(SlotPhase::Queued, 0, Some(Operation::Reboot));
        queued.policy = Some(policy(SnapshotBefore::AllOperations));
        assert_eq!(ensure(&d.on(Input::Slot(queued))), Some(900));
    }

    /// A snapshot check has the runner detect again only when the facts would change: a
    /// snapshot they do not report yet, or a failure; not one they report already.
    #[test]
    fn a_snapshot_check_detects_again_only_when_the_facts_would_change() {
        let snapshot = EtcdSnapshot {
            path: "/var/lib/rota/etcd/etcd-snapshot-1.db".into(),
            size_bytes: 4096,
            revision: 42,
            hash: 7,
            total_keys: 12,
            taken_at: jiff::Timestamp::UNIX_EPOCH,
        };
        let mut facts = NodeFacts::default();
        facts.etcd.member = EtcdMember::Stacked;
        let mut d = Daemon::new(own(UpgradePolicy::None), None);
        d.on(Input::Facts(Box::new(facts.clone())));
        let detects = |actions: Vec<Action>| {
            actions
                .iter()
                .filter(|a| matches!(a, Action::Detect))
                .count()
        };
        let ended = |ok, snapshot| Input::SnapshotEnded { ok, snapshot };
        assert_eq!(detects(d.on(ended(true, Some(snapshot.clone())))), 1, "new");
        facts.etcd.snapshot = Some(snapshot.clone());
        d.on(Input::Facts(Box::new(facts)));
        assert_eq!(detects(d.on(ended(true, Some(snapshot)))), 0, "reported");
        assert_eq!(detects(d.on(ended(false, None))), 1, "failed");
    }

    #[test]
    fn policy_decides_the_operation() {
        assert_eq!(
            desired_operation(&facts(false, false), UpgradePolicy::Security, true),
            None
        );
        assert_eq!(
            desired_operation(&facts(true, false), UpgradePolicy::Security, true),
            Some(Operation::Reboot)
        );
        assert!(matches!(
            desired_operation(&facts(false, true), UpgradePolicy::Security, true),
            Some(Operation::PackageUpgrade {
                security_only: true,
                reboot: UpgradeReboot::IfRequired,
                ..
            })
        ));
        assert_eq!(
            desired_operation(&facts(false, true), UpgradePolicy::None, true),
            None
        );
    }

    #[test]
    fn request_grant_start_once() {
        let mut d = daemon(UpgradePolicy::None, None);
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
                operation: Operation::Reboot,
                policy: None,
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
        let mut d = daemon(UpgradePolicy::None, None);
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
        let mut d = daemon(UpgradePolicy::None, None);
        d.on(Input::Facts(Box::new(facts(true, false))));
        d.on(Input::Slot(slot(
            SlotPhase::Queued,
            0,
            Some(Operation::Reboot),
        )));
        let a = d.on(Input::Facts(Box::new(facts(false, false))));
        assert_eq!(a.last(), Some(&Action::Withdraw));
        // But never once admitted.
        let mut d = daemon(UpgradePolicy::None, None);
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
        let mut d = daemon(UpgradePolicy::All, None);
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
        let mut d = daemon(UpgradePolicy::All, Some(5));
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
            let mut d = daemon(UpgradePolicy::All, Some(6));
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
        let mut d = daemon(UpgradePolicy::All, Some(9));
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

    fn requests(actions: &[Action]) -> Vec<&Operation> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RequestSlot(op) => Some(op),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nothing_is_requested_before_the_coordinator_names_the_policy() {
        let mut d = Daemon::new(own(UpgradePolicy::All), None);
        let a = d.on(Input::Facts(Box::new(facts(false, true))));
        assert_eq!(a.len(), 1, "only the report: {a:?}");
        // The answer says the pool upgrades nothing: still nothing to ask for.
        let a = d.on(Input::Policy(Some(pool(
            UpgradeMode::None,
            RebootMode::WhenRequired,
        ))));
        assert!(requests(&a).is_empty(), "{a:?}");
        // Answers without a policy leave the agent's own flags in force.
        let a = d.on(Input::Policy(None));
        assert_eq!(
            requests(&a),
            [&Operation::PackageUpgrade {
                security_only: false,
                reboot: UpgradeReboot::IfRequired,
                packages: vec![],
            }]
        );
    }

    #[test]
    fn the_policys_upgrade_mode_decides_which_upgrades_are_asked_for() {
        for (mode, pending_security, want) in [
            (UpgradeMode::None, true, None),
            (UpgradeMode::Security, false, None),
            (UpgradeMode::Security, true, Some(true)),
            (UpgradeMode::All, false, Some(false)),
        ] {
            // The flags say the opposite of the policy each time; the policy wins.
            let flag = match mode {
                UpgradeMode::All => UpgradePolicy::None,
                _ => UpgradePolicy::All,
            };
            let mut d = Daemon::new(own(flag), None);
            d.on(Input::Facts(Box::new(facts(false, pending_security))));
            let a = d.on(Input::Policy(Some(pool(mode, RebootMode::WhenRequired))));
            let asked: Vec<bool> = requests(&a)
                .into_iter()
                .map(|op| match op {
                    Operation::PackageUpgrade { security_only, .. } => *security_only,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(asked, want.into_iter().collect::<Vec<_>>(), "{mode:?}");
        }
    }

    #[test]
    fn under_reboot_mode_never_no_reboot_is_asked_for() {
        let never = pool(UpgradeMode::All, RebootMode::Never);
        let mut d = Daemon::new(own(UpgradePolicy::All), None);
        d.on(Input::Facts(Box::new(NodeFacts {
            reboot_required: true,
            ..NodeFacts::default()
        })));
        let a = d.on(Input::Policy(Some(never.clone())));
        assert!(requests(&a).is_empty(), "{a:?}");
        // An upgrade is asked for, without the reboot.
        let a = d.on(Input::Facts(Box::new(facts(true, false))));
        assert_eq!(
            requests(&a),
            [&Operation::PackageUpgrade {
                security_only: false,
                reboot: UpgradeReboot::Never,
                packages: vec![],
            }]
        );
        assert_eq!(
            desired_operation(&facts(true, false), UpgradePolicy::None, false),
            None
        );
    }

    #[test]
    fn a_grant_runs_under_its_own_policy_or_is_declined() {
        let upgrade = Operation::PackageUpgrade {
            security_only: false,
            reboot: UpgradeReboot::IfRequired,
            packages: vec![],
        };
        let latest = pool(UpgradeMode::All, RebootMode::WhenRequired);
        let at_grant = pool(UpgradeMode::Security, RebootMode::Never);
        let mut d = Daemon::new(own(UpgradePolicy::All), None);
        d.on(Input::Policy(Some(latest.clone())));
        let a = d.on(Input::Slot(SlotView {
            policy: Some(at_grant.clone()),
            ..slot(SlotPhase::Granted, 4, Some(upgrade.clone()))
        }));
        assert_eq!(
            a,
            [Action::Start {
                token: 4,
                operation: upgrade.clone(),
                policy: Some(at_grant),
            }]
        );
        d.on(Input::OperationEnded(4));
        // A grant without a policy runs under the latest one known.
        let a = d.on(Input::Slot(slot(
            SlotPhase::Granted,
            5,
            Some(upgrade.clone()),
        )));
        assert!(
            matches!(&a[..], [Action::Start { policy: Some(p), .. }] if *p == latest),
            "{a:?}"
        );
        d.on(Input::OperationEnded(5));
        // A package upgrade under a policy that allows none is given back, once.
        let none = pool(UpgradeMode::None, RebootMode::WhenRequired);
        let grant = SlotView {
            policy: Some(none),
            ..slot(SlotPhase::Granted, 6, Some(upgrade))
        };
        let a = d.on(Input::Slot(grant.clone()));
        assert!(
            matches!(&a[..], [Action::Decline { token: 6, reason }] if reason.contains("policy workers allows no package upgrades")),
            "{a:?}"
        );
        assert_eq!(d.running(), None);
        assert!(d.on(Input::Slot(grant)).is_empty());
    }

    #[test]
    fn a_policy_that_changes_detection_makes_the_facts_stale() {
        let mut d = daemon(UpgradePolicy::All, None);
        d.on(Input::Facts(Box::new(facts(false, false))));
        let sentinels = NodePolicy {
            sentinel_files: Some(vec!["/run/needs-reboot".into()]),
            ..pool(UpgradeMode::All, RebootMode::WhenRequired)
        };
        let a = d.on(Input::Policy(Some(sentinels.clone())));
        assert_eq!(
            a,
            [
                Action::WatchSentinels(vec![PathBuf::from("/run/needs-reboot")]),
                Action::Detect
            ]
        );
        // The stale facts are neither sent again nor decided on; fresh ones are reported.
        assert!(d.on(Input::ResendFacts).is_empty());
        let a = d.on(Input::Facts(Box::new(facts(false, false))));
        assert!(matches!(&a[..], [Action::ReportFacts(_)]), "{a:?}");
        // Holds and the sentinel command change detection too; the same policy again changes
        // nothing.
        assert!(d.on(Input::Policy(Some(sentinels.clone()))).is_empty());
        let holds = NodePolicy {
            holds: vec!["curl".into()],
            ..sentinels.clone()
        };
        assert_eq!(d.on(Input::Policy(Some(holds))), [Action::Detect]);
        let command = NodePolicy {
            sentinel_command: vec!["needs-reboot".into()],
            ..sentinels
        };
        assert_eq!(d.on(Input::Policy(Some(command))), [Action::Detect]);
        assert_eq!(
            d.settings().sentinel_command.value,
            Some(vec!["needs-reboot".to_string()])
        );
    }
}
