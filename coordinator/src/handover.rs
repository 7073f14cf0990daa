//! The leader hands its Lease over when its own node is cordoned, so that the node can drain.
//!
//! Only the leader is Ready, and the coordinator's PodDisruptionBudget never lets the only
//! Ready replica go; a leader that kept leading on a cordoned node would block that node's
//! drain (rota's own or `kubectl drain`) forever. So a leader whose node becomes unschedulable
//! releases the Lease as on shutdown; a standby takes the free Lease on its next poll, the old
//! leader turns unready, and the budget (unhealthy pods always evictable) lets it be evicted.
//! The new leader resumes the drain from the state persisted in the API.
//!
//! # The rule when nobody else is there
//!
//! The Lease does not list candidates, so a leader cannot know whether a standby exists. It
//! releases anyway, and a cordoned replica stands by only: it takes a free or expired Lease
//! only once that Lease has stayed free for one more lease duration than an uncordoned
//! replica would wait (every uncordoned standby polls every retry period, so it has had many
//! chances by then). If nobody took it, the cordoned replica leads again (a single replica
//! must not stop the rollout) and tries the handover again every `retry` (default 1 min)
//! while its node stays cordoned: a standby that appears later (say, rescheduled after the
//! drain evicted it) still gets the Lease. Each attempt that finds no taker costs at most one
//! lease duration plus one retry period without a leader; agents retry meanwhile. An
//! uncordoned node resets the rule: the next cordon hands over at once.
//!
//! The rule is the pure function [`decide`]; the [`crate::leader::LeaderElector`] applies it
//! each round, and [`follow_node`] feeds it the node's `spec.unschedulable`.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader::{Decision, Timings, View};

/// Default time between two handover attempts of a cordoned replica that found no taker.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(60);

/// What an elector knows about its own node and its past handovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Whether this replica's node is cordoned (`spec.unschedulable`).
    pub cordoned: bool,
    /// While cordoned: when this replica last released the Lease to hand it over, or took it
    /// back because nobody else did; `None` after an uncordon.
    pub last_attempt: Option<Instant>,
}

/// Applies the handover rule to the plain election `decision` of one round: a leader on a
/// cordoned node releases (at most once per `retry`), and a cordoned follower takes a free or
/// expired lease one lease duration later than the plain rule would.
pub fn decide(
    decision: Decision,
    view: &View<'_>,
    standing: Standing,
    now: Instant,
    timings: &Timings,
    retry: Duration,
) -> Decision {
    if !standing.cordoned {
        return decision;
    }
    match decision {
        Decision::Renew => match standing.last_attempt {
            Some(last) if now < last + retry => Decision::Renew,
            _ => Decision::Release,
        },
        Decision::Acquire => {
            let until = acquirable_since(view) + timings.lease_duration;
            if now >= until {
                Decision::Acquire
            } else {
                Decision::Wait { until }
            }
        }
        other => other,
    }
}

/// When the lease became free for the taking, by our clock: when we first saw it absent or
/// free, or when a foreign holder's lease expired.
fn acquirable_since(view: &View<'_>) -> Instant {
    match view.lease {
        Some(lease) if lease.holder.is_some() => view.seen_at + lease.lease_duration,
        _ => view.seen_at,
    }
}

/// Whether a Node is cordoned.
pub fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// What the elector needs to hand over: whether its node is cordoned, kept current by
/// [`follow_node`], and the time between attempts.
#[derive(Clone, Debug)]
pub struct Handover {
    /// `true` while this replica's node is cordoned.
    pub cordoned: watch::Receiver<bool>,
    /// Time between two handover attempts that found no taker.
    pub retry: Duration,
}

/// Keeps `cordoned` equal to `spec.unschedulable` of the Node `name`, through a watch of that
/// one object (field selector `metadata.name`). A missing Node counts as not cordoned. Watch
/// errors are logged and retried with backoff, keeping the last known value meanwhile; this
/// runs until the stream ends, which it does not on its own.
#[tracing::instrument(skip(api, cordoned))]
pub async fn follow_node(api: Api<Node>, name: String, cordoned: watch::Sender<bool>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, config).default_backoff();
    futures::pin_mut!(events);
    // Whether the current (re)list has shown the node yet.
    let mut listed = false;
    while let Some(event) = events.next().await {
        let next = match event {
            Ok(watcher::Event::Init) => {
                listed = false;
                None
            }
            Ok(watcher::Event::InitApply(node)) => {
                listed = true;
                Some(is_cordoned(&node))
            }
            Ok(watcher::Event::InitDone) => (!listed).then_some(false),
            Ok(watcher::Event::Apply(node)) => Some(is_cordoned(&node)),
            Ok(watcher::Event::Delete(_)) => Some(false),
            Err(e) => {
                tracing::warn!(error = %e, "watching this replica's node failed; retrying");
                None
            }
        };
        if let Some(next) = next {
            let changed = cordoned.send_if_modified(|c| std::mem::replace(c, next) != next);
            if changed {
                tracing::info!(node = %name, cordoned = next, "this replica's node changed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;

    use super::*;
    use crate::leader::LeaseRecord;

    fn record(holder: Option<&str>, secs: u64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            lease_duration: Duration::from_secs(secs),
            transitions: 1,
        }
    }

    #[test]
    fn decision_table() {
        let t = Timings::default();
        let retry = Duration::from_secs(60);
        let base = Instant::now();
        let s = Duration::from_secs;
        let theirs = record(Some("other"), 10);
        let mine = record(Some("me"), 10);
        let free = record(None, 1);
        // (what, plain decision, lease, seen_at offset, cordoned, last attempt offset, now
        // offset, expected)
        type Case<'a> = (
            &'a str,
            Decision,
            Option<&'a LeaseRecord>,
            u64,
            bool,
            Option<u64>,
            u64,
            Decision,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "uncordoned leader renews",
                Decision::Renew,
                Some(&mine),
                0,
                false,
                None,
                3,
                Decision::Renew,
            ),
            (
                "uncordoned follower takes a free lease at once",
                Decision::Acquire,
                Some(&free),
                0,
                false,
                None,
                0,
                Decision::Acquire,
            ),
            (
                "cordoned leader hands over",
                Decision::Renew,
                Some(&mine),
                0,
                true,
                None,
                3,
                Decision::Release,
            ),
            (
                "cordoned leader that took the lease back keeps it until the retry",
                Decision::Renew,
                Some(&mine),
                0,
                true,
                Some(10),
                69,
                Decision::Renew,
            ),
            (
                "cordoned leader tries again after the retry",
                Decision::Renew,
                Some(&mine),
                0,
                true,
                Some(10),
                70,
                Decision::Release,
            ),
            (
                "cordoned follower leaves a just-released lease to the others",
                Decision::Acquire,
                Some(&free),
                5,
                true,
                Some(5),
                6,
                Decision::Wait {
                    until: base + s(15),
                },
            ),
            (
                "cordoned follower takes a lease nobody took for a lease duration",
                Decision::Acquire,
                Some(&free),
                5,
                true,
                Some(5),
                15,
                Decision::Acquire,
            ),
            (
                "cordoned follower waits a lease duration past a foreign expiry",
                Decision::Acquire,
                Some(&theirs),
                0,
                true,
                None,
                12,
                Decision::Wait {
                    until: base + s(20),
                },
            ),
            (
                "cordoned follower takes an expired lease nobody took",
                Decision::Acquire,
                Some(&theirs),
                0,
                true,
                None,
                20,
                Decision::Acquire,
            ),
            (
                "cordoned follower does not create a missing lease at once",
                Decision::Acquire,
                None,
                0,
                true,
                None,
                9,
                Decision::Wait {
                    until: base + s(10),
                },
            ),
            (
                "cordoned follower waits on a valid foreign lease as usual",
                Decision::Wait { until: base + s(8) },
                Some(&theirs),
                0,
                true,
                None,
                3,
                Decision::Wait { until: base + s(8) },
            ),
            (
                "a cordoned leader that lost the lease has lost it",
                Decision::Lost,
                Some(&theirs),
                0,
                true,
                None,
                3,
                Decision::Lost,
            ),
        ];
        for (what, plain, lease, seen, cordoned, last, now, expected) in cases {
            let view = View {
                lease,
                seen_at: base + s(seen),
                renewed_at: None,
            };
            let standing = Standing {
                cordoned,
                last_attempt: last.map(|l| base + s(l)),
            };
            assert_eq!(
                decide(plain, &view, standing, base + s(now), &t, retry),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn cordon_is_read_from_unschedulable() {
        let node = |unschedulable| Node {
            spec: Some(NodeSpec {
                unschedulable,
                ..NodeSpec::default()
            }),
            ..Node::default()
        };
        assert!(is_cordoned(&node(Some(true))));
        assert!(!is_cordoned(&node(Some(false))));
        assert!(!is_cordoned(&node(None)));
        assert!(!is_cordoned(&Node::default()));
    }
}
