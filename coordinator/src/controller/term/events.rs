//! The Events of a term: queued by the actor, recorded in order by one task while the write
//! gate is open, so that a slow or failing Events API never holds up a pass.

use super::*;

/// An Event to record (best effort, in order, by the term's event task).
pub(super) enum EventJob {
    Transition(Transition, Option<String>),
    Node {
        node: String,
        uid: Option<String>,
        reason: Reason,
        note: String,
    },
    Policy {
        policy: String,
        uid: Option<String>,
        reason: Reason,
        note: String,
    },
}

/// Records Events in order while the gate is open; failures are logged, never fatal.
pub(super) async fn record_events(
    sink: EventSink,
    gate: WriteGate,
    mut jobs: mpsc::UnboundedReceiver<EventJob>,
) {
    while let Some(job) = jobs.recv().await {
        if !gate.is_open() {
            continue;
        }
        let result = match &job {
            EventJob::Transition(transition, uid) => {
                sink.transition(transition, uid.as_deref()).await
            }
            EventJob::Node {
                node,
                uid,
                reason,
                note,
            } => sink.node(node, uid.as_deref(), *reason, note).await,
            EventJob::Policy {
                policy,
                uid,
                reason,
                note,
            } => sink.policy(policy, uid.as_deref(), *reason, note).await,
        };
        if let Err(error) = result {
            warn!(%error, "event not recorded");
        }
    }
}
