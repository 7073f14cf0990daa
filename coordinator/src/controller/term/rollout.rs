//! Performs the pass's Kubernetes upgrade rollout decisions: queues the `KubernetesUpgrade`
//! requests of each pool's rollout, withdraws those no rollout wants any more, records an Event
//! when a rollout changes phase, and asks the API server's `/readyz` for the pre-flight.

use http::Request;
use rota_core::controller::rollout::RolloutDecision;
use std::collections::BTreeMap;

use rota_core::model::{EtcdFacts, EtcdMember, NodeName, Origin};
use rota_core::slots::Release;
use rota_core::upgrade::{self, Phase};
use tracing::{info, warn};

use super::Term;
use super::events::EventJob;
use crate::events::Reason;

impl Term<'_> {
    /// Why the API server's `/readyz` does not answer `ok`, when it does not. Asked only while a
    /// pool's rollout is before or at its pre-flight.
    pub(super) async fn api_not_ready(&self) -> Option<String> {
        let preflight = self.book.pools().iter().any(|pool| {
            pool.policy
                .upgrade
                .kubernetes_version
                .is_some_and(|target| {
                    upgrade::phase_before(self.book.rollout(&pool.name).as_ref(), target)
                        .runs_preflight()
                })
        });
        if !preflight {
            return None;
        }
        let request = match Request::get("/readyz").body(Vec::new()) {
            Ok(request) => request,
            Err(e) => return Some(e.to_string()),
        };
        match self.coordinator.clients.default.request_text(request).await {
            Ok(body) if body.trim() == "ok" => None,
            Ok(body) => Some(body.trim().chars().take(200).collect()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Queues and withdraws rollout requests; Events for phase changes.
    pub(super) async fn perform_rollouts(
        &mut self,
        rollouts: Vec<RolloutDecision>,
        withdraw: Vec<NodeName>,
    ) {
        for decided in rollouts {
            let before = self.book.rollout(&decided.pool);
            let changed = before
                .as_ref()
                .is_none_or(|b| b.phase != decided.state.phase || b.target != decided.state.target);
            if changed {
                let stopped =
                    matches!(decided.state.phase, Phase::PreflightFailed | Phase::Refused);
                info!(
                    pool = %decided.pool,
                    target = %decided.state.target,
                    phase = decided.state.phase.as_str(),
                    message = %decided.state.message,
                    "Kubernetes upgrade rollout"
                );
                self.event(EventJob::Policy {
                    uid: self.book.uid(&decided.pool).map(str::to_owned),
                    policy: decided.pool.clone(),
                    reason: if stopped {
                        Reason::KubernetesUpgradeStopped
                    } else {
                        Reason::KubernetesUpgradePhase
                    },
                    note: format!(
                        "Kubernetes upgrade to {}: {}: {}",
                        decided.state.target, decided.state.phase, decided.state.message
                    ),
                });
            }
            for (node, operation) in decided.requests {
                if let Err(e) = self
                    .service
                    .request(&node, operation.clone(), Origin::Rollout)
                    .await
                {
                    warn!(%node, operation = operation.name(), error = %e, "queueing the rollout's request failed");
                }
            }
        }
        for node in withdraw {
            if let Err(e) = self
                .service
                .release(
                    &node,
                    Release::Withdraw,
                    "the Kubernetes upgrade rollout no longer wants it (the target changed)",
                )
                .await
            {
                warn!(%node, error = %e, "withdrawing a rollout request failed");
            }
        }
    }

    /// One Event per control-plane node whose agent reports an external etcd (from the pass's
    /// map of the agents' etcd facts): rota takes no snapshot of it.
    pub(super) fn note_external_etcd(&mut self, etcd: &BTreeMap<NodeName, EtcdFacts>) {
        for (node, facts) in etcd {
            if facts.member == EtcdMember::External && self.external_etcd_noted.insert(node.clone())
            {
                self.event(EventJob::Node {
                    uid: self.node_uid(node),
                    node: node.clone(),
                    reason: Reason::EtcdSnapshotSkipped,
                    note: "this control-plane node's API server uses an external etcd: rota \
                           takes no etcd snapshot before its maintenance; back that etcd up \
                           yourself"
                        .to_owned(),
                });
            }
        }
    }
}
