//! The disruption controller: keeps every PodDisruptionBudget's status current, as
//! `pkg/controller/disruption/disruption.go` does.
//!
//! [`compute`] and [`next_status`] are pure functions of the PDB, its namespace's pods, the
//! owning controllers' scales and `now`; [`spawn`] runs them whenever the store reports a change
//! to pods, PDBs or workload controllers (and when a `disruptedPods` entry expires).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::meta;
use super::resources::GroupResource;
use super::selector::LabelSelector;
use super::store::{Part, ResourceKey, State, Store, StoreEvent};

/// How long an evicted pod stays in `disruptedPods` waiting for its deletion (upstream
/// `DeletionTimeout`).
pub const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);

/// The numbers the controller derives for one PDB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Computed {
    /// `status.expectedPods`.
    pub expected_pods: i32,
    /// `status.desiredHealthy`.
    pub desired_healthy: i32,
    /// `status.currentHealthy`.
    pub current_healthy: i32,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
    /// `status.disruptedPods` after dropping deleted, terminating and expired entries.
    pub disrupted_pods: BTreeMap<String, String>,
    /// When the earliest remaining `disruptedPods` entry expires (recompute then).
    pub recheck: Option<Timestamp>,
}

/// The pods a PDB selects in its namespace (an empty or invalid selector selects none).
pub fn matching_pods<'a>(pdb: &Value, pods: &'a [Arc<Value>]) -> Vec<&'a Value> {
    let Ok(selector) = LabelSelector::from_json(pdb.pointer("/spec/selector")) else {
        return Vec::new();
    };
    if selector.is_empty() {
        return Vec::new();
    }
    pods.iter()
        .map(|p| &**p)
        .filter(|p| selector.matches(p))
        .collect()
}

/// `intstr.GetScaledValueFromIntOrPercent` with rounding up.
pub fn scaled_value(value: &Value, total: i32) -> Result<i32, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| format!("invalid value for IntOrString: {n}")),
        Value::String(s) => {
            let percent = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let scaled = (percent * i64::from(total) + 99).div_euclid(100);
            i32::try_from(scaled).map_err(|e| e.to_string())
        }
        other => Err(format!("invalid value for IntOrString: {other}")),
    }
}

/// The scale of the controller owning a pod: `Ok(Some((controller uid, replicas)))`,
/// `Ok(None)` for a pod without a controller, `Err` when the controller cannot be found or has
/// no scale (upstream: "found no controllers for pod").
pub type ScaleLookup<'a> = dyn Fn(&Value) -> Result<Option<(String, i32)>, String> + 'a;

fn expected_scale(pods: &[&Value], scale: &ScaleLookup<'_>) -> Result<i32, String> {
    let mut controllers: HashMap<String, i32> = HashMap::new();
    for pod in pods {
        if let Some((uid, replicas)) = scale(pod)? {
            controllers.insert(uid, replicas);
        }
    }
    Ok(controllers.values().sum())
}

/// Compute a PDB's status numbers from its matching pods.
pub fn compute(
    pdb: &Value,
    pods: &[&Value],
    scale: &ScaleLookup<'_>,
    now: Timestamp,
) -> Result<Computed, String> {
    let spec = pdb.get("spec").cloned().unwrap_or(Value::Null);
    let max_unavailable = spec.get("maxUnavailable").filter(|v| !v.is_null());
    let min_available = spec.get("minAvailable").filter(|v| !v.is_null());
    let (expected_pods, desired_healthy) = if let Some(max_unavailable) = max_unavailable {
        let expected = expected_scale(pods, scale)?;
        let max = scaled_value(max_unavailable, expected)?;
        (expected, (expected - max).max(0))
    } else if let Some(min_available) = min_available {
        match min_available {
            Value::Number(_) => (
                i32::try_from(pods.len()).unwrap_or(i32::MAX),
                scaled_value(min_available, 0)?,
            ),
            _ => {
                let expected = expected_scale(pods, scale)?;
                (expected, scaled_value(min_available, expected)?)
            }
        }
    } else {
        (0, 0)
    };

    let recorded = pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object);
    let mut disrupted_pods = BTreeMap::new();
    let mut recheck: Option<Timestamp> = None;
    if let Some(recorded) = recorded {
        for pod in pods {
            if meta::is_terminating(pod) {
                continue;
            }
            let Some(at) = recorded.get(meta::name(pod)).and_then(Value::as_str) else {
                continue;
            };
            let Some(expires) = meta::parse_time(at).map(|t| t + DELETION_TIMEOUT) else {
                continue;
            };
            if expires >= now {
                recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
                disrupted_pods.insert(meta::name(pod).to_string(), at.to_string());
            }
        }
    }
    let current_healthy = pods
        .iter()
        .filter(|p| {
            !meta::is_terminating(p)
                && !disrupted_pods.contains_key(meta::name(p))
                && meta::pod_ready(p)
        })
        .count();
    let current_healthy = i32::try_from(current_healthy).unwrap_or(i32::MAX);
    let mut disruptions_allowed = current_healthy - desired_healthy;
    if expected_pods <= 0 || disruptions_allowed <= 0 {
        disruptions_allowed = 0;
    }
    Ok(Computed {
        expected_pods,
        desired_healthy,
        current_healthy,
        disruptions_allowed,
        disrupted_pods,
        recheck,
    })
}

fn condition_for(
    allowed: bool,
    reason: &str,
    message: &str,
    observed: i64,
    previous: Option<&Value>,
    now: Timestamp,
) -> Value {
    let status = if allowed { "True" } else { "False" };
    let transition = previous
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(meta::format_time(now)));
    json!({
        "type": "DisruptionAllowed",
        "status": status,
        "observedGeneration": observed,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    })
}

fn with_condition(status: &mut Map<String, Value>, condition: Value) {
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    if let Value::Array(list) = conditions {
        list.retain(|c| c.get("type").and_then(Value::as_str) != Some("DisruptionAllowed"));
        list.push(condition);
    }
}

fn previous_condition(pdb: &Value) -> Option<&Value> {
    pdb.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("DisruptionAllowed"))
}

/// Set the `DisruptionAllowed` condition from `status.disruptionsAllowed`
/// (upstream `UpdateDisruptionAllowedCondition`).
pub fn update_disruption_allowed_condition(pdb: &mut Value, now: Timestamp) {
    let allowed = pdb
        .pointer("/status/disruptionsAllowed")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0;
    let observed = pdb
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let reason = if allowed {
        "SufficientPods"
    } else {
        "InsufficientPods"
    };
    let condition = condition_for(allowed, reason, "", observed, previous_condition(pdb), now);
    if let Some(status) = pdb.get_mut("status").and_then(Value::as_object_mut) {
        with_condition(status, condition);
    }
}

/// The PDB's new status, or `None` when the stored one is already current.
pub fn next_status(
    pdb: &Value,
    computed: &Result<Computed, String>,
    now: Timestamp,
) -> Option<Value> {
    let generation = pdb
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let old = pdb.get("status").cloned().unwrap_or_else(|| json!({}));
    let int = |f: &str| old.get(f).and_then(Value::as_i64).unwrap_or(0);
    match computed {
        Ok(c) => {
            let disrupted: Map<String, Value> = c
                .disrupted_pods
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let old_disrupted = old
                .get("disruptedPods")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let allowed = c.disruptions_allowed > 0;
            let condition_current = previous_condition(pdb).is_some_and(|cond| {
                cond.get("observedGeneration").and_then(Value::as_i64)
                    == Some(int("observedGeneration"))
                    && cond.get("status").and_then(Value::as_str)
                        == Some(if allowed { "True" } else { "False" })
                    && cond.get("reason").and_then(Value::as_str)
                        == Some(if allowed {
                            "SufficientPods"
                        } else {
                            "InsufficientPods"
                        })
            });
            if int("currentHealthy") == i64::from(c.current_healthy)
                && int("desiredHealthy") == i64::from(c.desired_healthy)
                && int("expectedPods") == i64::from(c.expected_pods)
                && int("disruptionsAllowed") == i64::from(c.disruptions_allowed)
                && old_disrupted == disrupted
                && int("observedGeneration") == generation
                && condition_current
            {
                return None;
            }
            let mut status = Map::new();
            if !disrupted.is_empty() {
                status.insert("disruptedPods".into(), Value::Object(disrupted));
            }
            status.insert("disruptionsAllowed".into(), json!(c.disruptions_allowed));
            status.insert("currentHealthy".into(), json!(c.current_healthy));
            status.insert("desiredHealthy".into(), json!(c.desired_healthy));
            status.insert("expectedPods".into(), json!(c.expected_pods));
            status.insert("observedGeneration".into(), json!(generation));
            if let Some(conds) = old.get("conditions") {
                status.insert("conditions".into(), conds.clone());
            }
            let reason = if allowed {
                "SufficientPods"
            } else {
                "InsufficientPods"
            };
            with_condition(
                &mut status,
                condition_for(
                    allowed,
                    reason,
                    "",
                    generation,
                    previous_condition(pdb),
                    now,
                ),
            );
            Some(Value::Object(status))
        }
        Err(message) => {
            // Upstream failSafe: no disruptions, a SyncFailed condition, observedGeneration kept.
            let observed = int("observedGeneration");
            let mut status = old.as_object().cloned().unwrap_or_default();
            status.insert("disruptionsAllowed".into(), json!(0));
            with_condition(
                &mut status,
                condition_for(
                    false,
                    "SyncFailed",
                    message,
                    observed,
                    previous_condition(pdb),
                    now,
                ),
            );
            let status = Value::Object(status);
            (status != old).then_some(status)
        }
    }
}

impl State {
    /// The scale of the controller owning `pod`, read from the store.
    fn controller_scale(&self, pod: &Value) -> Result<Option<(String, i32)>, String> {
        let Some(owner) = meta::controller_ref(pod) else {
            return Ok(None);
        };
        let ns = meta::namespace(pod);
        let kind = owner
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = owner
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let uid = owner.get("uid").and_then(Value::as_str).unwrap_or_default();
        let not_found = || format!("found no controllers for pod {:?}", meta::name(pod));
        let lookup = |resource: &str, name: &str, uid: &str| -> Option<Arc<Value>> {
            self.get(&ResourceKey::new(
                GroupResource::new("apps", resource),
                Some(ns),
                name,
            ))
            .ok()
            .filter(|o| meta::uid(o) == uid)
        };
        let replicas = |o: &Value| {
            o.pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1) as i32
        };
        match kind {
            "ReplicaSet" => {
                let rs = lookup("replicasets", name, uid).ok_or_else(not_found)?;
                if let Some(dep_ref) = meta::controller_ref(&rs)
                    .filter(|r| r.get("kind") == Some(&json!("Deployment")))
                {
                    let dep_name = dep_ref
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let dep_uid = dep_ref
                        .get("uid")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if let Some(dep) = lookup("deployments", dep_name, dep_uid) {
                        return Ok(Some((dep_uid.to_string(), replicas(&dep))));
                    }
                }
                Ok(Some((uid.to_string(), replicas(&rs))))
            }
            "StatefulSet" => {
                let sts = lookup("statefulsets", name, uid).ok_or_else(not_found)?;
                Ok(Some((uid.to_string(), replicas(&sts))))
            }
            _ => Err(not_found()),
        }
    }

    /// Compute a PDB's status from the current pods (for the controller and the audit log).
    pub(crate) fn compute_pdb(&self, pdb: &Value, now: Timestamp) -> Result<Computed, String> {
        let pods = self.pods_in(meta::namespace(pdb));
        let matching = matching_pods(pdb, &pods);
        compute(pdb, &matching, &|p| self.controller_scale(p), now)
    }

    /// Bring one PDB's status up to date. Returns when its `disruptedPods` next expire.
    pub(crate) fn sync_pdb(&mut self, key: &ResourceKey, now: Timestamp) -> Option<Timestamp> {
        let pdb = self.get(key).ok()?;
        let computed = self.compute_pdb(&pdb, now);
        let recheck = computed.as_ref().ok().and_then(|c| c.recheck);
        if let Some(status) = next_status(&pdb, &computed, now) {
            let mut updated = (*pdb).clone();
            if let Some(m) = updated.as_object_mut() {
                m.insert("status".into(), status);
            }
            if let Err(e) = self.update(key, updated, Part::Status, now) {
                tracing::warn!(pdb = %key.name, error = %e, "updating PodDisruptionBudget status failed");
            }
        }
        recheck
    }
}

fn pdbs() -> GroupResource {
    GroupResource::new("policy", "poddisruptionbudgets")
}

/// The PDBs an event may affect.
fn affected(store: &Store, event: &StoreEvent) -> Vec<ResourceKey> {
    let resource = &event.resource;
    let ns = meta::namespace(&event.object).to_string();
    let state = store.lock();
    let in_ns = || -> Vec<Arc<Value>> { state.iter_objects(&pdbs(), Some(&ns)).cloned().collect() };
    let key_of =
        |pdb: &Value| ResourceKey::new(pdbs(), Some(meta::namespace(pdb)), meta::name(pdb));
    match (resource.group.as_str(), resource.resource.as_str()) {
        ("policy", "poddisruptionbudgets") => vec![key_of(&event.object)],
        ("", "pods") => {
            let mut pods: Vec<Arc<Value>> = vec![event.object.clone()];
            pods.extend(event.previous.clone());
            in_ns()
                .iter()
                .filter(|pdb| !matching_pods(pdb, &pods).is_empty())
                .map(|pdb| key_of(pdb))
                .collect()
        }
        ("apps", "replicasets" | "deployments" | "statefulsets") => {
            in_ns().iter().map(|p| key_of(p)).collect()
        }
        _ => Vec::new(),
    }
}

fn all_pdbs(store: &Store) -> BTreeSet<ResourceKey> {
    let state = store.lock();
    state
        .iter_objects(&pdbs(), None)
        .map(|p| ResourceKey::new(pdbs(), Some(meta::namespace(p)), meta::name(p)))
        .collect()
}

/// Run the disruption controller until the store is dropped. The HTTP server starts one; an
/// in-process setup without the server spawns its own.
pub fn spawn(store: Store) -> JoinHandle<()> {
    tokio::spawn(run(store))
}

async fn run(store: Store) {
    let mut rx = store.subscribe_all();
    let mut dirty = all_pdbs(&store);
    let mut rechecks: BTreeMap<ResourceKey, Timestamp> = BTreeMap::new();
    loop {
        let now = store.now();
        for key in std::mem::take(&mut dirty) {
            let recheck = store.lock().sync_pdb(&key, now);
            match recheck {
                Some(t) => rechecks.insert(key, t),
                None => rechecks.remove(&key),
            };
        }
        let next = rechecks.values().min().copied();
        let wait = next.map(|t| {
            let d = t.duration_since(store.now()) + SignedDuration::from_millis(10);
            std::time::Duration::try_from(d).unwrap_or_default()
        });
        let event = match wait {
            Some(wait) => tokio::time::timeout(wait, rx.recv()).await.ok(),
            None => Some(rx.recv().await),
        };
        match event {
            None => {
                let now = store.now();
                let due: Vec<ResourceKey> = rechecks
                    .iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                dirty.extend(due);
            }
            Some(Ok(event)) => {
                dirty.extend(affected(&store, &event));
                // Batch whatever else is already queued.
                loop {
                    match rx.try_recv() {
                        Ok(event) => dirty.extend(affected(&store, &event)),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                            dirty.extend(all_pdbs(&store))
                        }
                        Err(_) => break,
                    }
                }
            }
            Some(Err(RecvError::Lagged(_))) => dirty.extend(all_pdbs(&store)),
            Some(Err(RecvError::Closed)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pod(name: &str, ready: bool, owner: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        });
        if let Some(uid) = owner {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]);
        }
        p
    }

    fn pdb(spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": "p", "namespace": "ns", "generation": 1}, "spec": spec})
    }

    /// Every pod owned by `rs-uid`, whose controller wants `replicas`.
    fn scale_of(replicas: i32) -> impl Fn(&Value) -> Result<Option<(String, i32)>, String> {
        move |p: &Value| {
            Ok(meta::controller_ref(p)
                .map(|r| (r["uid"].as_str().unwrap_or_default().to_string(), replicas)))
        }
    }

    struct Case {
        name: &'static str,
        spec: Value,
        ready: usize,
        unready: usize,
        owned: bool,
        replicas: i32,
        want: (i32, i32, i32, i32),
    }

    #[test]
    fn pdb_forms_table() {
        // want = (expectedPods, desiredHealthy, currentHealthy, disruptionsAllowed)
        let cases = vec![
            Case {
                name: "minAvailable int",
                spec: json!({"minAvailable": 2}),
                ready: 3,
                unready: 0,
                owned: true,
                replicas: 3,
                want: (3, 2, 3, 1),
            },
            Case {
                name: "minAvailable int counts pods, not replicas",
                spec: json!({"minAvailable": 2}),
                ready: 2,
                unready: 1,
                owned: true,
                replicas: 5,
                want: (3, 2, 2, 0),
            },
            Case {
                name: "minAvailable int over bare pods",
                spec: json!({"minAvailable": 1}),
                ready: 3,
                unready: 0,
                owned: false,
                replicas: 0,
                want: (3, 1, 3, 2),
            },
            Case {
                name: "minAvailable percent rounds up",
                spec: json!({"minAvailable": "50%"}),
                ready: 3,
                unready: 0,
                owned: true,
                replicas: 3,
                want: (3, 2, 3, 1),
            },
            Case {
                name: "minAvailable 100%",
                spec: json!({"minAvailable": "100%"}),
                ready: 3,
                unready: 0,
                owned: true,
                replicas: 3,
                want: (3, 3, 3, 0),
            },
            Case {
                name: "minAvailable percent bare pods",
                spec: json!({"minAvailable": "50%"}),
                ready: 3,
                unready: 0,
                owned: false,
                replicas: 0,
                want: (0, 0, 3, 0),
            },
            Case {
                name: "maxUnavailable int",
                spec: json!({"maxUnavailable": 1}),
                ready: 3,
                unready: 0,
                owned: true,
                replicas: 3,
                want: (3, 2, 3, 1),
            },
            Case {
                name: "maxUnavailable int uses replicas",
                spec: json!({"maxUnavailable": 1}),
                ready: 3,
                unready: 0,
                owned: true,
                replicas: 4,
                want: (4, 3, 3, 0),
            },
            Case {
                name: "maxUnavailable percent rounds up",
                spec: json!({"maxUnavailable": "30%"}),
                ready: 5,
                unready: 0,
                owned: true,
                replicas: 5,
                want: (5, 3, 5, 2),
            },
            Case {
                name: "maxUnavailable 0",
                spec: json!({"maxUnavailable": 0}),
                ready: 3,
                unready: 0,
                owned: true,
                replicas: 3,
                want: (3, 3, 3, 0),
            },
            Case {
                name: "maxUnavailable bare pods allows nothing",
                spec: json!({"maxUnavailable": 1}),
                ready: 3,
                unready: 0,
                owned: false,
                replicas: 0,
                want: (0, 0, 3, 0),
            },
            Case {
                name: "maxUnavailable larger than replicas",
                spec: json!({"maxUnavailable": 5}),
                ready: 2,
                unready: 0,
                owned: true,
                replicas: 2,
                want: (2, 0, 2, 2),
            },
            Case {
                name: "unready pods are not healthy",
                spec: json!({"maxUnavailable": 1}),
                ready: 2,
                unready: 1,
                owned: true,
                replicas: 3,
                want: (3, 2, 2, 0),
            },
            Case {
                name: "neither field",
                spec: json!({}),
                ready: 2,
                unready: 0,
                owned: true,
                replicas: 2,
                want: (0, 0, 2, 0),
            },
        ];
        for c in cases {
            let mut pods = Vec::new();
            for i in 0..c.ready {
                pods.push(pod(&format!("r{i}"), true, c.owned.then_some("rs-uid")));
            }
            for i in 0..c.unready {
                pods.push(pod(&format!("u{i}"), false, c.owned.then_some("rs-uid")));
            }
            let refs: Vec<&Value> = pods.iter().collect();
            let got = compute(&pdb(c.spec), &refs, &scale_of(c.replicas), t(0)).unwrap();
            assert_eq!(
                (
                    got.expected_pods,
                    got.desired_healthy,
                    got.current_healthy,
                    got.disruptions_allowed
                ),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn disrupted_pods_do_not_count_until_they_expire() {
        let pods = [
            pod("a", true, Some("u")),
            pod("b", true, Some("u")),
            pod("c", true, Some("u")),
        ];
        let refs: Vec<&Value> = pods.iter().collect();
        let mut p = pdb(json!({"minAvailable": 1}));
        p["status"] = json!({"disruptedPods": {"a": meta::format_time(t(0)), "gone": meta::format_time(t(0))}});
        let fresh = compute(&p, &refs, &scale_of(3), t(60)).unwrap();
        assert_eq!(fresh.current_healthy, 2);
        assert_eq!(fresh.disrupted_pods.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(fresh.recheck, Some(t(120)));
        let expired = compute(&p, &refs, &scale_of(3), t(121)).unwrap();
        assert_eq!(expired.current_healthy, 3);
        assert!(expired.disrupted_pods.is_empty());
    }

    #[test]
    fn terminating_pods_are_not_healthy() {
        let mut a = pod("a", true, Some("u"));
        a["metadata"]["deletionTimestamp"] = json!(meta::format_time(t(0)));
        let pods = [a, pod("b", true, Some("u"))];
        let refs: Vec<&Value> = pods.iter().collect();
        let got = compute(
            &pdb(json!({"maxUnavailable": 1})),
            &refs,
            &scale_of(2),
            t(1),
        )
        .unwrap();
        assert_eq!((got.current_healthy, got.disruptions_allowed), (1, 0));
    }

    #[test]
    fn controller_errors_fail_safe() {
        let pods = [pod("a", true, Some("u"))];
        let refs: Vec<&Value> = pods.iter().collect();
        let err = compute(
            &pdb(json!({"maxUnavailable": 1})),
            &refs,
            &|_| Err("found no controllers for pod \"a\"".into()),
            t(0),
        );
        let mut p = pdb(json!({"maxUnavailable": 1}));
        p["status"] = json!({"disruptionsAllowed": 1, "observedGeneration": 1});
        let status = next_status(&p, &err, t(0)).unwrap();
        assert_eq!(status["disruptionsAllowed"], 0);
        assert_eq!(status["conditions"][0]["reason"], "SyncFailed");
        assert_eq!(status["conditions"][0]["status"], "False");
    }

    #[test]
    fn status_and_condition() {
        let pods = [pod("a", true, Some("u")), pod("b", true, Some("u"))];
        let refs: Vec<&Value> = pods.iter().collect();
        let mut p = pdb(json!({"maxUnavailable": 1}));
        let computed = compute(&p, &refs, &scale_of(2), t(0));
        let status = next_status(&p, &computed, t(0)).unwrap();
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["disruptionsAllowed"], 1);
        assert_eq!(status["conditions"][0]["type"], "DisruptionAllowed");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["conditions"][0]["reason"], "SufficientPods");
        assert!(status.get("disruptedPods").is_none());
        p["status"] = status;
        assert!(
            next_status(&p, &computed, t(5)).is_none(),
            "no change, no write"
        );
    }

    #[test]
    fn percentages() {
        assert_eq!(scaled_value(&json!("50%"), 3), Ok(2));
        assert_eq!(scaled_value(&json!("10%"), 1), Ok(1));
        assert_eq!(scaled_value(&json!("0%"), 5), Ok(0));
        assert_eq!(scaled_value(&json!(4), 10), Ok(4));
        assert!(scaled_value(&json!("4"), 10).is_err());
    }
}
