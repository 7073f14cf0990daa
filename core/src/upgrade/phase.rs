//! Where a pool's Kubernetes upgrade rollout is, kept in the policy's
//! `status.kubernetesUpgrade` so that a restart or a failover resumes it.
//!
//! ```text
//!  (new target) → PreFlight ──checks pass──→ ControlPlane → Workers → Verifying → Verified
//!                    │  ↑                         (back to ControlPlane/Workers when a node
//!       checks fail  ↓  │ pause + resume           below the target appears)
//!              PreflightFailed  (holds the whole pool)
//!  a node newer than the target, or on another major: Refused (re-checked every pass)
//! ```

use std::fmt;
use std::str::FromStr;

use crate::policy::KubeVersion;

/// The phase of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The checks before the first node run.
    PreFlight,
    /// The checks before the first node failed: the pool is held until a human pauses and
    /// resumes it.
    PreflightFailed,
    /// The target cannot be rolled out (a downgrade, another major).
    Refused,
    /// Control-plane nodes are below the target.
    ControlPlane,
    /// The control plane is at the target; workers are not.
    Workers,
    /// Every node reports the target; the cluster checks after the rollout run.
    Verifying,
    /// Every node, static pod and `kube-system` pod checked at the target.
    Verified,
}

impl Phase {
    /// Every phase, for parsing.
    pub const ALL: [Phase; 7] = [
        Phase::PreFlight,
        Phase::PreflightFailed,
        Phase::Refused,
        Phase::ControlPlane,
        Phase::Workers,
        Phase::Verifying,
        Phase::Verified,
    ];

    /// The name written to the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreFlight => "PreFlight",
            Phase::PreflightFailed => "PreflightFailed",
            Phase::Refused => "Refused",
            Phase::ControlPlane => "ControlPlane",
            Phase::Workers => "Workers",
            Phase::Verifying => "Verifying",
            Phase::Verified => "Verified",
        }
    }

    /// Whether the pre-flight runs next from this phase: before a rollout starts, and when a
    /// refused target becomes possible (it never passed a pre-flight).
    pub fn runs_preflight(self) -> bool {
        matches!(self, Phase::PreFlight | Phase::Refused)
    }

    /// Whether nodes are asked for their next step in this phase.
    pub fn requests(self) -> bool {
        matches!(
            self,
            Phase::ControlPlane | Phase::Workers | Phase::Verifying | Phase::Verified
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a rollout phase"))
    }
}

/// A pool's rollout: its target and phase, and what the phase is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutState {
    /// The target.
    pub target: KubeVersion,
    /// The phase.
    pub phase: Phase,
    /// For humans: what the phase waits for, or why it stopped.
    pub message: String,
}

/// What one pass found, for [`advance`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Why the target cannot be rolled out (empty: it can).
    pub refusals: Vec<String>,
    /// Pre-flight problems (empty: none).
    pub preflight: Vec<String>,
    /// Control-plane nodes of the pool below the target.
    pub control_plane_behind: usize,
    /// Workers of the pool below the target.
    pub workers_behind: usize,
    /// Problems after every node reached the target (empty: verified).
    pub verification: Vec<String>,
}

/// The phase a rollout towards `target` is in before this pass: the last pass's, or `PreFlight`
/// when there was none or it went towards another version.
pub fn phase_before(previous: Option<&RolloutState>, target: KubeVersion) -> Phase {
    previous
        .filter(|p| p.target == target)
        .map_or(Phase::PreFlight, |p| p.phase)
}

/// The next state of a pool's rollout, from the last one (`previous`) and what this pass found.
/// (A human's resume turns a `PreflightFailed` back into `PreFlight` before it gets here.)
pub fn advance(
    previous: Option<&RolloutState>,
    target: KubeVersion,
    found: &Findings,
) -> RolloutState {
    let state = |phase, message: String| RolloutState {
        target,
        phase,
        message,
    };
    if !found.refusals.is_empty() {
        return state(Phase::Refused, found.refusals.join("; "));
    }
    match phase_before(previous, target) {
        Phase::PreflightFailed => previous
            .cloned()
            .unwrap_or_else(|| state(Phase::PreflightFailed, String::new())),
        phase if phase.runs_preflight() && !found.preflight.is_empty() => state(
            Phase::PreflightFailed,
            format!(
                "pre-flight failed: {}; fix it, then pause and resume the pool",
                found.preflight.join("; ")
            ),
        ),
        _ => progress(target, found),
    }
}

fn progress(target: KubeVersion, found: &Findings) -> RolloutState {
    let (phase, message) = if found.control_plane_behind > 0 {
        (
            Phase::ControlPlane,
            format!(
                "{} control-plane node(s) and {} worker(s) below {target}",
                found.control_plane_behind, found.workers_behind
            ),
        )
    } else if found.workers_behind > 0 {
        (
            Phase::Workers,
            format!(
                "control plane at {target}; {} worker(s) below it",
                found.workers_behind
            ),
        )
    } else if found.verification.is_empty() {
        (
            Phase::Verified,
            format!("every node, static pod and kube-system pod checked at {target}"),
        )
    } else {
        (
            Phase::Verifying,
            format!(
                "every node reports {target}; waiting for: {}",
                found.verification.join("; ")
            ),
        )
    };
    RolloutState {
        target,
        phase,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: KubeVersion = KubeVersion::new(1, 32, 4);

    #[test]
    fn a_rollout_goes_through_its_phases() {
        let mut found = Findings {
            control_plane_behind: 3,
            workers_behind: 6,
            ..Findings::default()
        };
        let s = advance(None, T, &found);
        assert_eq!(s.phase, Phase::ControlPlane, "{s:?}");
        found.control_plane_behind = 0;
        let s = advance(Some(&s), T, &found);
        assert_eq!(s.phase, Phase::Workers);
        found.workers_behind = 0;
        found.verification = vec!["kube-system/coredns-1 is not Ready".into()];
        let s = advance(Some(&s), T, &found);
        assert_eq!(s.phase, Phase::Verifying);
        assert!(s.message.contains("coredns"), "{}", s.message);
        found.verification.clear();
        let s = advance(Some(&s), T, &found);
        assert_eq!(s.phase, Phase::Verified);
        // A pre-flight problem later does not stop a rollout that passed it.
        found.preflight = vec!["node cp-2 is not Ready".into()];
        found.workers_behind = 1;
        assert_eq!(advance(Some(&s), T, &found).phase, Phase::Workers);
    }

    #[test]
    fn a_failed_preflight_holds_until_a_resume() {
        let found = Findings {
            preflight: vec!["kube-system/etcd-cp-1 is in CrashLoopBackOff".into()],
            workers_behind: 2,
            ..Findings::default()
        };
        let s = advance(None, T, &found);
        assert_eq!(s.phase, Phase::PreflightFailed);
        assert!(s.message.contains("CrashLoopBackOff"), "{}", s.message);
        let healthy = Findings {
            workers_behind: 2,
            ..Findings::default()
        };
        let held = advance(Some(&s), T, &healthy);
        assert_eq!(
            held, s,
            "fixed problems do not release the hold on their own"
        );
        let resumed = RolloutState {
            phase: Phase::PreFlight,
            ..held.clone()
        };
        assert_eq!(advance(Some(&resumed), T, &healthy).phase, Phase::Workers);
        // A new target starts over with a pre-flight.
        let next = KubeVersion::new(1, 33, 0);
        assert_eq!(
            advance(Some(&held), next, &found).phase,
            Phase::PreflightFailed
        );
        assert_eq!(advance(Some(&held), next, &healthy).phase, Phase::Workers);
    }

    #[test]
    fn a_cleared_refusal_runs_the_preflight_first() {
        let refused = advance(
            None,
            T,
            &Findings {
                refusals: vec!["w1 runs 1.33.0, newer than the target 1.32.4".into()],
                ..Findings::default()
            },
        );
        assert!(refused.phase.runs_preflight());
        let found = Findings {
            preflight: vec!["control-plane node cp-1 is not Ready".into()],
            workers_behind: 1,
            ..Findings::default()
        };
        assert_eq!(
            advance(Some(&refused), T, &found).phase,
            Phase::PreflightFailed
        );
    }

    #[test]
    fn refusals_win_and_clear() {
        let found = Findings {
            refusals: vec!["w1 runs 1.33.0, newer than the target 1.32.4".into()],
            ..Findings::default()
        };
        let s = advance(None, T, &found);
        assert_eq!(s.phase, Phase::Refused);
        let s = advance(Some(&s), T, &Findings::default());
        assert_eq!(s.phase, Phase::Verified);
        for phase in Phase::ALL {
            assert_eq!(phase.as_str().parse::<Phase>(), Ok(phase));
        }
    }
}
