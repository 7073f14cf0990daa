//! What humans ask through Node annotations: a manual maintenance request
//! (`rota.dev/maintenance-requested`) and a force release (`rota.dev/release`), each
//! acknowledged by removing the annotation, or explained on the Node when refused.

use super::*;

impl Term<'_> {
    /// `rota.dev/release=true`: force-release, then acknowledge.
    pub(super) async fn force_release(&mut self, action: ReleaseAction) {
        let ReleaseAction {
            node,
            value,
            resource_version,
            valid,
        } = action;
        if let Err(problem) = valid {
            self.explain(&node, RELEASE, &value, &problem.to_string());
            return;
        }
        match self
            .service
            .release(&node, Release::Force, "rota.dev/release annotation")
            .await
        {
            Ok(_) => {}
            Err(slots::Error::Ledger(LedgerError::WrongState { .. })) => {
                self.event(EventJob::Node {
                    node: node.clone(),
                    uid: self.node_uid(&node),
                    reason: Reason::SlotForceReleased,
                    note: "rota.dev/release: the node holds no slot and has no request; nothing to release".into(),
                });
            }
            Err(error) => {
                warn!(%node, %error, "force release failed; retrying on the next pass");
                return;
            }
        }
        self.remove_annotation(&node, RELEASE, resource_version)
            .await;
    }

    /// `rota.dev/maintenance-requested`: queue a manual request, then acknowledge.
    pub(super) async fn manual_request(&mut self, action: ManualAction) {
        let ManualAction {
            node,
            value,
            resource_version,
            operation,
        } = action;
        let operation = match operation {
            Ok(operation) => operation,
            Err(problem) => {
                self.explain(&node, MAINTENANCE_REQUESTED, &value, &problem.to_string());
                return;
            }
        };
        match self
            .service
            .request(&node, operation.clone(), rota_core::model::Origin::Manual)
            .await
        {
            Ok(_) => {
                self.remember_requester(&node).await;
                self.noticed.remove(&(node.clone(), MAINTENANCE_REQUESTED));
                if self
                    .remove_annotation(&node, MAINTENANCE_REQUESTED, resource_version)
                    .await
                {
                    self.event(EventJob::Node {
                        node: node.clone(),
                        uid: self.node_uid(&node),
                        reason: Reason::MaintenanceRequested,
                        note: format!(
                            "{MAINTENANCE_REQUESTED}={value}: manual {} queued with priority",
                            operation.name()
                        ),
                    });
                }
            }
            Err(slots::Error::Ledger(refusal)) => {
                let note = format!(
                    "{MAINTENANCE_REQUESTED}={value} is not queued yet: {refusal}; it is retried when the node's state changes"
                );
                self.explain(
                    &node,
                    MAINTENANCE_REQUESTED,
                    &format!("{value}\n{refusal}"),
                    &note,
                );
            }
            Err(error) => {
                warn!(%node, %error, "manual request not queued; retrying on the next pass")
            }
        }
    }

    /// Records a Warning Event about an annotation once per distinct value (or refusal).
    pub(super) fn explain(&mut self, node: &str, key: &'static str, value: &str, note: &str) {
        let seen = self
            .noticed
            .get(&(node.to_owned(), key))
            .map(String::as_str);
        if seen == Some(value) {
            return;
        }
        self.noticed
            .insert((node.to_owned(), key), value.to_owned());
        warn!(node, annotation = key, note, "annotation not acted upon");
        self.event(EventJob::Node {
            node: node.to_owned(),
            uid: self.node_uid(node),
            reason: Reason::InvalidRequest,
            note: note.to_owned(),
        });
    }

    /// Removes an annotation if the Node is still at `resource_version` (else a human changed
    /// it meanwhile, and the next pass looks again). Returns whether it was removed.
    pub(super) async fn remove_annotation(
        &self,
        node: &str,
        key: &str,
        resource_version: Option<String>,
    ) -> bool {
        if self.gate.check().is_err() {
            return false;
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": {key: null},
            }
        });
        match self
            .nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(
                    node,
                    key, "node changed before the annotation was removed; retrying"
                );
                false
            }
            Err(error) => {
                warn!(node, key, %error, "removing the annotation failed; retrying");
                false
            }
        }
    }
}
