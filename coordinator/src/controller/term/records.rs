//! What each slot transition adds to its MaintenanceRecord: the transition, with what the term
//! knows about the node when it happens (pool, facts, `status.nodeInfo`, the pods the drain
//! evicted, who asked). The writing is the record task's (`crate::records`).

use super::*;

use crate::records::RecordJob;
use rota_core::drain::DrainOutcome;
use rota_core::model::Origin;
use rota_core::records::origin::annotation_manager;
use rota_core::records::{NodeVersions, RecordContext};

impl Term<'_> {
    /// Queues the record update of a slot's transition (those of requests have no record).
    pub(super) fn record(&mut self, transition: &Transition) {
        let node = &transition.node;
        let Some(token) = transition.token else {
            if matches!(
                transition.reason,
                TransitionReason::Withdrawn | TransitionReason::ForceReleased
            ) {
                self.requesters.remove(node);
            }
            return;
        };
        let manual = transition
            .held
            .as_ref()
            .is_some_and(|h| h.slot.origin == Origin::Manual);
        let requested_by = match transition.reason {
            TransitionReason::Admitted => self.requesters.remove(node).filter(|_| manual),
            _ => None,
        };
        let (evicted, drained_at) = match transition.reason {
            TransitionReason::Drained => self
                .evicted
                .remove(&(node.clone(), token))
                .map_or((None, None), |(pods, at)| (Some(pods), Some(at))),
            _ => (None, None),
        };
        if transition.frees_capacity() || transition.reason == TransitionReason::DrainFailed {
            self.evicted.retain(|(n, _), _| n != node);
        }
        let context = RecordContext {
            pool: self.pool_of(node),
            requested_by,
            facts: self.service.facts(node).map(|f| (*f).clone()),
            node: self.node_versions(node),
            evicted,
            drained_at,
        };
        // The record task ends only with the term.
        let _ = self.records.send(RecordJob {
            transition: transition.clone(),
            context,
        });
    }

    /// What the Node's `status.nodeInfo` says it runs.
    fn node_versions(&self, node: &str) -> Option<NodeVersions> {
        let cache = self.cache.read();
        let info = cache.node(node)?.status.as_ref()?.node_info.as_ref()?;
        Some(NodeVersions {
            kernel: info.kernel_version.clone(),
            kubelet: info.kubelet_version.clone(),
            os_image: info.os_image.clone(),
        })
    }

    /// Remembers the pods a drain of the slot `token` evicted, for its record.
    pub(super) fn remember_evicted(
        &mut self,
        node: &str,
        token: FencingToken,
        report: &DrainReport,
    ) {
        let pods = match &report.outcome {
            DrainOutcome::Drained { evicted, .. } => evicted,
            DrainOutcome::Blocked { evicted_so_far, .. } => evicted_so_far,
            _ => return,
        };
        let now = self.now();
        let entry = self
            .evicted
            .entry((node.to_owned(), token))
            .or_insert_with(|| (Vec::new(), now));
        entry.0.extend(pods.iter().map(ToString::to_string));
        entry.1 = now;
    }

    /// Reads who set the node's `rota.dev/maintenance-requested` annotation (its field
    /// manager in `managedFields`, which the cache does not keep), for the record of the
    /// manual maintenance it starts. Best effort: without it the record says `manual` only.
    pub(super) async fn remember_requester(&mut self, node: &str) {
        match self.nodes.get_opt(node).await {
            Ok(Some(found)) => {
                let managed = found.metadata.managed_fields.unwrap_or_default();
                match annotation_manager(&managed, MAINTENANCE_REQUESTED) {
                    Some(manager) => {
                        self.requesters.insert(node.to_owned(), manager);
                    }
                    None => {
                        self.requesters.remove(node);
                    }
                }
            }
            Ok(None) => {}
            Err(error) => {
                debug!(node, %error, "who asked for the manual maintenance could not be read");
            }
        }
    }
}
