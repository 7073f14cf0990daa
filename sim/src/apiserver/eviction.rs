//! The pod eviction subresource, following `pkg/registry/core/pod/storage/eviction.go`.
//!
//! The check of the PDB, the update of its status and the pod deletion happen under one store
//! lock, which gives the effect of upstream's conflict retries without the races.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::audit::EvictionRecord;
use super::error::{Cause, Error, Result, success_status};
use super::meta;
use super::resources::GroupResource;
use super::selector::LabelSelector;
use super::store::{DeleteOptions, Part, ResourceKey, State, Store};

/// Upstream `MaxDisruptedPodSize`.
const MAX_DISRUPTED_PODS: usize = 2000;

/// Parse an `Eviction` body's `deleteOptions`; `dry_run` comes from the query (`dryRun=All`)
/// or the body.
pub fn delete_options_of(eviction: &Value, query_dry_run: bool) -> DeleteOptions {
    let opts = eviction.get("deleteOptions").unwrap_or(&Value::Null);
    DeleteOptions::from_json(opts, query_dry_run)
}

fn too_many_requests(message: String, retry_after_seconds: u32) -> Error {
    Error::TooManyRequests {
        message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        retry_after_seconds,
        causes: vec![Cause {
            reason: "DisruptionBudget".into(),
            message,
            field: None,
        }],
    }
}

fn forbidden(pdb: &str, detail: &str) -> Error {
    Error::Forbidden {
        qualified: "poddisruptionbudget.policy".into(),
        name: pdb.to_string(),
        detail: detail.to_string(),
    }
}

impl Store {
    /// Evict a pod (`POST .../pods/{name}/eviction`). Returns the `Status` body of the 201.
    pub fn evict(
        &self,
        namespace: &str,
        name: &str,
        eviction: &Value,
        query_dry_run: bool,
    ) -> Result<Value> {
        let now = self.now();
        let mut state = self.lock();
        state.evict(namespace, name, eviction, query_dry_run, now)
    }
}

impl State {
    fn evict(
        &mut self,
        namespace: &str,
        name: &str,
        eviction: &Value,
        query_dry_run: bool,
        now: Timestamp,
    ) -> Result<Value> {
        if meta::name(eviction) != name {
            return Err(Error::BadRequest(
                "name in URL does not match name in Eviction object".into(),
            ));
        }
        let opts = delete_options_of(eviction, query_dry_run);
        let pod_key = ResourceKey::new(GroupResource::core("pods"), Some(namespace), name);
        let pod = self.get(&pod_key)?;

        let can_ignore_pdb = meta::pod_terminal(&pod)
            || meta::pod_phase(&pod) == "Pending"
            || meta::is_terminating(&pod);
        if can_ignore_pdb {
            self.add_condition_and_delete(&pod_key, &pod, &opts, now, None)?;
            return Ok(success_status(201));
        }

        let pdbs = self.matching_pdbs(&pod);
        if pdbs.len() > 1 {
            return Err(Error::Failure {
                code: 500,
                message: "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
                    .into(),
            });
        }
        let Some(pdb) = pdbs.into_iter().next() else {
            self.add_condition_and_delete(&pod_key, &pod, &opts, now, None)?;
            return Ok(success_status(201));
        };
        let int = |f: &str| {
            pdb.pointer(&format!("/status/{f}"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let ready = meta::pod_ready(&pod);
        let always_allow = pdb
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            == Some("AlwaysAllow");
        let unhealthy_ok = !ready
            && (always_allow
                || (int("currentHealthy") >= int("desiredHealthy") && int("desiredHealthy") > 0));
        if !unhealthy_ok {
            self.check_and_decrement(&pdb, name, opts.dry_run, now)?;
        }
        self.add_condition_and_delete(&pod_key, &pod, &opts, now, Some(&pdb))?;
        Ok(success_status(201))
    }

    fn matching_pdbs(&self, pod: &Value) -> Vec<Arc<Value>> {
        let pdbs = GroupResource::new("policy", "poddisruptionbudgets");
        self.iter_objects(&pdbs, Some(meta::namespace(pod)))
            .filter(|pdb| {
                LabelSelector::from_json(pdb.pointer("/spec/selector"))
                    .is_ok_and(|s| !s.is_empty() && s.matches(pod))
            })
            .cloned()
            .collect()
    }

    /// Upstream `checkAndDecrement`.
    fn check_and_decrement(
        &mut self,
        pdb: &Value,
        pod_name: &str,
        dry_run: bool,
        now: Timestamp,
    ) -> Result<()> {
        let name = meta::name(pdb);
        let status = pdb.get("status").cloned().unwrap_or_else(|| json!({}));
        let int = |f: &str| status.get(f).and_then(Value::as_i64).unwrap_or(0);
        let generation = pdb
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if int("observedGeneration") < generation {
            return Err(too_many_requests(
                format!("The disruption budget {name} is still being processed by the server."),
                10,
            ));
        }
        let allowed = int("disruptionsAllowed");
        if allowed < 0 {
            return Err(forbidden(name, "pdb disruptions allowed is negative"));
        }
        let disrupted = status
            .get("disruptedPods")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        if disrupted > MAX_DISRUPTED_PODS {
            return Err(forbidden(
                name,
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(too_many_requests(
                format!(
                    "The disruption budget {name} needs {} healthy pods and has {} currently",
                    int("desiredHealthy"),
                    int("currentHealthy")
                ),
                0,
            ));
        }
        if dry_run {
            return Ok(());
        }
        let mut updated = pdb.clone();
        updated["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if allowed - 1 == 0 {
            super::disruption::update_disruption_allowed_condition(&mut updated, now);
        }
        let entry = updated["status"]
            .as_object_mut()
            .map(|s| s.entry("disruptedPods").or_insert_with(|| json!({})));
        if let Some(Value::Object(disrupted)) = entry {
            disrupted.insert(pod_name.to_string(), json!(meta::format_time(now)));
        }
        let key = ResourceKey::new(
            GroupResource::new("policy", "poddisruptionbudgets"),
            Some(meta::namespace(pdb)),
            name,
        );
        self.update(&key, updated, Part::Status, now)?;
        Ok(())
    }

    /// Upstream `addConditionAndDeletePod`, plus the audit record.
    fn add_condition_and_delete(
        &mut self,
        key: &ResourceKey,
        pod: &Value,
        opts: &DeleteOptions,
        now: Timestamp,
        pdb: Option<&Arc<Value>>,
    ) -> Result<()> {
        if opts.dry_run {
            self.delete(key, opts, now, true)?;
            return Ok(());
        }
        let mut opts = opts.clone();
        opts.preconditions.check("pods", &key.name, pod)?;
        let was_healthy = pdb.is_some_and(|pdb| {
            meta::pod_ready(pod)
                && !meta::is_terminating(pod)
                && pdb
                    .pointer(&format!("/status/disruptedPods/{}", meta::name(pod)))
                    .is_none()
        });
        let mut with_condition = pod.clone();
        let condition = json!({
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting",
            "lastTransitionTime": meta::format_time(now),
        });
        if let Some(status) = with_condition
            .get_mut("status")
            .and_then(Value::as_object_mut)
        {
            let conditions = status.entry("conditions").or_insert_with(|| json!([]));
            if let Value::Array(list) = conditions {
                list.retain(|c| c.get("type").and_then(Value::as_str) != Some("DisruptionTarget"));
                list.push(condition);
            }
        }
        let updated = self.update(key, with_condition, Part::Status, now)?;
        if opts.preconditions.resource_version.is_some() {
            opts.preconditions.resource_version =
                Some(meta::str_at(&updated, "/metadata/resourceVersion").to_string());
        }
        self.delete(key, &opts, now, true)?;
        let (current_healthy, desired_healthy) = match pdb {
            Some(pdb) => {
                let pdb_key = ResourceKey::new(
                    GroupResource::new("policy", "poddisruptionbudgets"),
                    Some(meta::namespace(pdb)),
                    meta::name(pdb),
                );
                match self.get(&pdb_key).map(|p| self.compute_pdb(&p, now)) {
                    Ok(Ok(c)) => (Some(c.current_healthy), Some(c.desired_healthy)),
                    _ => (None, None),
                }
            }
            None => (None, None),
        };
        self.audit.evictions.push(EvictionRecord {
            time: now,
            resource_version: self.rv,
            namespace: key.namespace.clone().unwrap_or_default(),
            pod: key.name.clone(),
            node: Some(meta::str_at(pod, "/spec/nodeName").to_string()).filter(|n| !n.is_empty()),
            pdb: pdb.map(|p| meta::name(p).to_string()),
            pod_was_healthy: was_healthy,
            current_healthy,
            desired_healthy,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::store::Store;

    fn setup(pdb_spec: Value, pods: &[(&str, bool)]) -> Store {
        let store = Store::new();
        let rs = store
            .create(
                &GroupResource::new("apps", "replicasets"),
                Some("default"),
                json!({"metadata": {"name": "rs"}, "spec": {"replicas": pods.len(), "selector": {"matchLabels": {"app": "web"}}}}),
            )
            .unwrap();
        for (name, ready) in pods {
            store
                .create(
                    &GroupResource::core("pods"),
                    Some("default"),
                    json!({
                        "metadata": {"name": name, "labels": {"app": "web"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": meta::uid(&rs), "controller": true}]},
                        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
                        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if *ready { "True" } else { "False" }}]}
                    }),
                )
                .unwrap();
        }
        let mut spec = pdb_spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        let pdb = store
            .create(
                &GroupResource::new("policy", "poddisruptionbudgets"),
                Some("default"),
                json!({"metadata": {"name": "pdb"}, "spec": spec}),
            )
            .unwrap();
        let key = ResourceKey::new(
            GroupResource::new("policy", "poddisruptionbudgets"),
            Some("default"),
            meta::name(&pdb),
        );
        let now = store.now();
        store.lock().sync_pdb(&key, now);
        store
    }

    fn eviction(name: &str) -> Value {
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "default"}})
    }

    fn pdb_status(store: &Store) -> Value {
        store
            .get(&ResourceKey::new(
                GroupResource::new("policy", "poddisruptionbudgets"),
                Some("default"),
                "pdb",
            ))
            .unwrap()["status"]
            .clone()
    }

    #[test]
    fn evicts_within_budget_then_429() {
        let store = setup(
            json!({"maxUnavailable": 1}),
            &[("a", true), ("b", true), ("c", true)],
        );
        assert_eq!(pdb_status(&store)["disruptionsAllowed"], 1);
        let ok = store.evict("default", "a", &eviction("a"), false).unwrap();
        assert_eq!(ok["status"], "Success");
        assert_eq!(ok["code"], 201);
        let status = pdb_status(&store);
        assert_eq!(status["disruptionsAllowed"], 0);
        assert!(status["disruptedPods"]["a"].is_string());
        let pod = store
            .get(&ResourceKey::new(
                GroupResource::core("pods"),
                Some("default"),
                "a",
            ))
            .unwrap();
        assert!(meta::is_terminating(&pod));
        assert!(meta::condition_true(&pod, "DisruptionTarget"));
        let err = store
            .evict("default", "b", &eviction("b"), false)
            .unwrap_err();
        assert_eq!(err.code(), 429);
        let s = err.to_status();
        assert_eq!(s["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert_eq!(
            s["message"],
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert!(store.pdb_violations().is_empty());
        assert_eq!(store.evictions().len(), 1);
    }

    #[test]
    fn dry_run_changes_nothing() {
        let store = setup(json!({"maxUnavailable": 1}), &[("a", true), ("b", true)]);
        let rv = store.resource_version();
        store.evict("default", "a", &eviction("a"), true).unwrap();
        assert_eq!(store.resource_version(), rv);
        assert!(store.evictions().is_empty());
    }

    #[test]
    fn name_mismatch_missing_pod_and_two_pdbs() {
        let store = setup(json!({"maxUnavailable": 1}), &[("a", true)]);
        assert_eq!(
            store
                .evict("default", "a", &eviction("b"), false)
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(
            store
                .evict("default", "zz", &eviction("zz"), false)
                .unwrap_err()
                .code(),
            404
        );
        store
            .create(
                &GroupResource::new("policy", "poddisruptionbudgets"),
                Some("default"),
                json!({"metadata": {"name": "second"}, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
            )
            .unwrap();
        let err = store
            .evict("default", "a", &eviction("a"), false)
            .unwrap_err();
        assert_eq!(err.code(), 500);
        assert!(
            err.to_string()
                .contains("more than one PodDisruptionBudget")
        );
    }

    #[test]
    fn unprocessed_generation_and_negative_allowance() {
        let store = setup(json!({"maxUnavailable": 1}), &[("a", true), ("b", true)]);
        let key = ResourceKey::new(
            GroupResource::new("policy", "poddisruptionbudgets"),
            Some("default"),
            "pdb",
        );
        store
            .patch(
                &key,
                &crate::apiserver::PatchKind::Merge,
                &json!({"spec": {"maxUnavailable": 2}}),
            )
            .unwrap();
        let err = store
            .evict("default", "a", &eviction("a"), false)
            .unwrap_err();
        assert_eq!(err.code(), 429);
        assert!(
            err.to_status()["details"]["causes"][0]["message"]
                .as_str()
                .unwrap()
                .contains("still being processed")
        );
        let now = store.now();
        store.lock().sync_pdb(&key, now);
        store
            .patch_status(
                &key,
                &crate::apiserver::PatchKind::Merge,
                &json!({"status": {"disruptionsAllowed": -1}}),
            )
            .unwrap();
        assert_eq!(
            store
                .evict("default", "a", &eviction("a"), false)
                .unwrap_err()
                .code(),
            403
        );
    }

    #[test]
    fn unhealthy_pods() {
        // Default policy: an unready pod may go when the budget is otherwise satisfied.
        let store = setup(
            json!({"minAvailable": 2}),
            &[("a", true), ("b", true), ("c", false)],
        );
        store.evict("default", "c", &eviction("c"), false).unwrap();
        // ... but not when the budget is not met.
        let store = setup(
            json!({"minAvailable": 3}),
            &[("a", true), ("b", true), ("c", false)],
        );
        assert_eq!(
            store
                .evict("default", "c", &eviction("c"), false)
                .unwrap_err()
                .code(),
            429
        );
        // AlwaysAllow lets it go regardless.
        let store = setup(
            json!({"minAvailable": 3, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
            &[("a", true), ("b", true), ("c", false)],
        );
        store.evict("default", "c", &eviction("c"), false).unwrap();
    }

    #[test]
    fn terminal_and_pending_pods_skip_the_budget() {
        let store = setup(json!({"maxUnavailable": 0}), &[("a", true)]);
        let key = ResourceKey::new(GroupResource::core("pods"), Some("default"), "a");
        store
            .patch_status(
                &key,
                &crate::apiserver::PatchKind::Merge,
                &json!({"status": {"phase": "Succeeded"}}),
            )
            .unwrap();
        store.evict("default", "a", &eviction("a"), false).unwrap();
        assert_eq!(store.get(&key).unwrap_err().code(), 404);
    }

    #[test]
    fn stale_status_lets_the_audit_see_a_violation() {
        // The PDB status says 1 allowed but a pod became unready since: the eviction passes
        // (as it would upstream) and the audit flags the broken budget.
        let store = setup(
            json!({"minAvailable": 2}),
            &[("a", true), ("b", true), ("c", true)],
        );
        let key = ResourceKey::new(GroupResource::core("pods"), Some("default"), "c");
        store
            .patch_status(
                &key,
                &crate::apiserver::PatchKind::Merge,
                &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            )
            .unwrap();
        store.evict("default", "a", &eviction("a"), false).unwrap();
        let v = store.pdb_violations();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].current_healthy, v[0].desired_healthy),
            (Some(1), Some(2))
        );
    }
}
