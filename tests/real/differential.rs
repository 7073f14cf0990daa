//! Differential tests of the emulator: the same API calls sent to the emulated API server and
//! to the real kube-apiserver (with the real controller-manager), and their answers compared —
//! status codes, reasons, causes and the fields rota reads, never the wording of messages.
//!
//! The calls cover what rota relies on: CRUD with resourceVersion conflicts and preconditions,
//! validation, label and field selectors, watches from a resourceVersion and from one that was
//! compacted away, merge, strategic-merge and JSON patches, server-side apply, Lease updates,
//! eviction under each PodDisruptionBudget shape (and several budgets, and
//! `unhealthyPodEvictionPolicy`), and TokenReview. Every difference found is either fixed in
//! the emulator or listed in [`KNOWN_DIFFERENCES`] — the table in `tests/README.md` says the
//! same, and a test keeps the two in step — with why it does not matter to rota. A difference
//! not listed fails the suite, and so does a listed one that went away.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{
    DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, Preconditions,
    WatchEvent, WatchParams,
};
use rota_sim::apiserver::{ApiServer, ServerHandle, Store};
use rota_tests::control_plane::{ControlPlane, binaries_for_test, client_from_kubeconfig_file};
use serde::Serialize;
use serde_json::{Value, json};

/// The namespace every call works in.
const NS: &str = "diff";
/// How long a PDB's status may take to count its pods.
const DEADLINE: Duration = Duration::from_secs(20);

/// Differences between the emulator and kube-apiserver that stay, by step, with why they do
/// not matter to rota. `tests/README.md` has the same table.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "apply: another manager's field",
        "server-side apply merges without field ownership, so no conflicts: rota never applies server-side",
    ),
    (
        "apply: forced",
        "no managedFields are kept: rota reads none",
    ),
    (
        "watch from a compacted resourceVersion",
        "the real watch cache keeps at least 75 s of events and replays them, so version 1 cannot be made too old quickly; the emulator is compacted on demand and answers 410 Expired, which the real server also does once its window moved on, and rota's watchers relist on it (the campaign's watch-drop fault compacts the emulator's history)",
    ),
];

/// One API server under test.
struct Side {
    /// Which server, for messages.
    name: &'static str,
    client: kube::Client,
    /// The emulator's store, for what only it can do (compaction, minting tokens).
    store: Option<Store>,
    /// Outcomes by step, in order.
    outcomes: Vec<(String, Value)>,
}

/// What a call's answer comes to: the object's fields that matter, or the refusal's code,
/// reason and causes.
fn outcome<T: Serialize>(result: kube::Result<T>, pick: impl FnOnce(Value) -> Value) -> Value {
    match result {
        Ok(value) => json!({"ok": pick(serde_json::to_value(value).unwrap())}),
        Err(kube::Error::Api(status)) => refusal(&serde_json::to_value(&*status).unwrap()),
        Err(other) => json!({"error": other.to_string()}),
    }
}

/// A `Status`'s code, reason and causes (reason or type, and field), sorted.
fn refusal(status: &Value) -> Value {
    let mut causes: Vec<Value> = status
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .map(|causes| {
            causes
                .iter()
                .map(|c| json!([c.get("reason").or(c.get("type")), c.get("field")]))
                .collect()
        })
        .unwrap_or_default();
    causes.sort_by_key(ToString::to_string);
    json!({"code": status.get("code"), "reason": status.get("reason"), "causes": causes})
}

fn name_and(fields: &[&str]) -> impl FnOnce(Value) -> Value {
    let fields: Vec<String> = fields.iter().map(|f| (*f).to_string()).collect();
    move |v| {
        let mut out = json!({"name": v.pointer("/metadata/name")});
        for f in fields {
            out[f.as_str()] = v.pointer(&f).cloned().unwrap_or(Value::Null);
        }
        out
    }
}

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn pod(name: &str, labels: Value, node: Option<&str>) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [
                {"name": "c1", "image": "registry.k8s.io/pause:3.10"},
                {"name": "c2", "image": "registry.k8s.io/pause:3.10"},
            ],
            // No scheduler by that name exists: the real scheduler leaves the pod alone.
            "schedulerName": "nobody",
        },
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    from_json(pod)
}

impl Side {
    fn record(&mut self, step: &str, value: Value) {
        self.outcomes.push((step.to_string(), value));
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Runs every step on this side.
    async fn run(&mut self) {
        let pp = PostParams::default();
        Api::<Namespace>::all(self.client.clone())
            .create(&pp, &from_json(json!({"metadata": {"name": NS}})))
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(self.client.clone());
        for name in ["n1", "n2"] {
            nodes
                .create(&pp, &from_json(json!({"metadata": {"name": name}})))
                .await
                .unwrap();
        }
        self.crud().await;
        self.selectors().await;
        self.watches().await;
        self.patches().await;
        self.apply().await;
        self.leases().await;
        self.evictions().await;
        self.token_reviews().await;
        eprintln!("{}: {} steps run", self.name, self.outcomes.len());
    }

    async fn crud(&mut self) {
        let cms: Api<ConfigMap> = self.api();
        let pp = PostParams::default();
        let cm = |name: &str, data: Value| -> ConfigMap {
            from_json(json!({"metadata": {"name": name}, "data": data}))
        };
        let data = name_and(&["/data"]);
        let r = cms.create(&pp, &cm("a", json!({"k": "1"}))).await;
        let created = r.as_ref().ok().cloned();
        self.record("create", outcome(r, data));
        let r = cms.create(&pp, &cm("a", json!({"k": "2"}))).await;
        self.record("create an existing name", outcome(r, name_and(&[])));
        let r = cms.get("missing").await;
        self.record("get a missing object", outcome(r, name_and(&[])));
        let mut stale = created.expect("created");
        stale.data = Some([("k".to_string(), "3".to_string())].into());
        let r = cms.replace("a", &pp, &stale).await;
        self.record(
            "replace with the current resourceVersion",
            outcome(r, name_and(&["/data"])),
        );
        let r = cms.replace("a", &pp, &stale).await;
        self.record(
            "replace with a stale resourceVersion",
            outcome(r, name_and(&[])),
        );
        let mut unconditional = stale.clone();
        unconditional.metadata.resource_version = None;
        unconditional.data = Some([("k".to_string(), "4".to_string())].into());
        let r = cms.replace("a", &pp, &unconditional).await;
        self.record(
            "replace without a resourceVersion",
            outcome(r, name_and(&["/data"])),
        );
        let wrong_uid = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some("00000000-0000-0000-0000-000000000000".into()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let r = cms.delete("a", &wrong_uid).await.map(|_| ());
        self.record(
            "delete with a wrong uid precondition",
            outcome(r, |_| json!("deleted")),
        );
        let r = cms.delete("a", &DeleteParams::default()).await.map(|_| ());
        self.record("delete", outcome(r, |_| json!("deleted")));
        let r = cms.get("a").await;
        self.record("get a deleted object", outcome(r, name_and(&[])));
        let r = cms.create(&pp, &cm("Bad_Name", json!({}))).await;
        self.record("create with an invalid name", outcome(r, name_and(&[])));
        let pods: Api<Pod> = self.api();
        let r = pods
            .create(
                &pp,
                &from_json(json!({"metadata": {"name": "empty"}, "spec": {"containers": []}})),
            )
            .await;
        self.record("create a pod without containers", outcome(r, name_and(&[])));
    }

    async fn selectors(&mut self) {
        let pods: Api<Pod> = self.api();
        let pp = PostParams::default();
        for (name, labels, node) in [
            ("p1", json!({"app": "a", "tier": "web"}), Some("n1")),
            ("p2", json!({"app": "b"}), Some("n2")),
            ("p3", json!({"app": "a", "tier": "db"}), None),
        ] {
            pods.create(&pp, &pod(name, labels, node)).await.unwrap();
        }
        let cases: &[(&str, &str)] = &[
            ("app=a", ""),
            ("app!=a", ""),
            ("app==a,tier=web", ""),
            ("app in (a,b)", ""),
            ("app notin (a)", ""),
            ("tier", ""),
            ("!tier", ""),
            ("", "spec.nodeName=n1"),
            ("", "spec.nodeName="),
            ("", "metadata.name=p2"),
            ("", "status.phase=Pending,spec.nodeName!=n2"),
            ("app=a", "spec.nodeName=n1"),
            ("app in a", ""),
            ("", "spec.unknownField=x"),
        ];
        for (labels, fields) in cases {
            let mut lp = ListParams::default();
            if !labels.is_empty() {
                lp = lp.labels(labels);
            }
            if !fields.is_empty() {
                lp = lp.fields(fields);
            }
            let r = pods.list(&lp).await.map(|list| {
                let mut names: Vec<String> = list
                    .items
                    .into_iter()
                    .filter_map(|p| p.metadata.name)
                    .filter(|n| n.starts_with('p'))
                    .collect();
                names.sort();
                names
            });
            self.record(
                &format!("list labels {labels:?} fields {fields:?}"),
                outcome(r, |v| v),
            );
        }
    }

    async fn watches(&mut self) {
        let cms: Api<ConfigMap> = self.api();
        let pp = PostParams::default();
        let from = cms
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        cms.create(
            &pp,
            &from_json(json!({"metadata": {"name": "w"}, "data": {"k": "1"}})),
        )
        .await
        .unwrap();
        cms.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "2"}})),
        )
        .await
        .unwrap();
        cms.delete("w", &DeleteParams::default()).await.unwrap();
        let events = watch_events(&cms, &from).await;
        self.record("watch from a resourceVersion", json!(events));
        // A resourceVersion the history no longer holds, where the emulator can make it so.
        if let Some(store) = &self.store {
            store.compact();
        }
        let events = watch_events(&cms, "1").await;
        self.record("watch from a compacted resourceVersion", json!(events));
    }

    async fn patches(&mut self) {
        let pods: Api<Pod> = self.api();
        let pp = PostParams::default();
        pods.create(&pp, &pod("patched", json!({"app": "x", "keep": "y"}), None))
            .await
            .unwrap();
        let labels = name_and(&["/metadata/labels"]);
        let r = pods
            .patch(
                "patched",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": null, "new": "1"}}})),
            )
            .await;
        self.record("merge patch: add and remove labels", outcome(r, labels));
        let r = pods
            .patch(
                "patched",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"containers": [{"name": "c2", "image": "registry.k8s.io/pause:3.9"}]}})),
            )
            .await;
        self.record(
            "strategic merge patch: a container by name",
            outcome(r, |v| {
                json!(
                    v.pointer("/spec/containers")
                        .and_then(Value::as_array)
                        .map(|cs| cs
                            .iter()
                            .map(|c| json!([c.get("name"), c.get("image")]))
                            .collect::<Vec<_>>())
                )
            }),
        );
        let json_patch = |ops: Value| Patch::<()>::Json(from_json(ops));
        let r = pods
            .patch(
                "patched",
                &PatchParams::default(),
                &json_patch(json!([
                    {"op": "test", "path": "/metadata/labels/keep", "value": "y"},
                    {"op": "replace", "path": "/metadata/labels/keep", "value": "z"},
                ])),
            )
            .await;
        self.record(
            "JSON patch: test then replace",
            outcome(r, name_and(&["/metadata/labels"])),
        );
        let r = pods
            .patch(
                "patched",
                &PatchParams::default(),
                &json_patch(
                    json!([{"op": "test", "path": "/metadata/labels/keep", "value": "nope"}]),
                ),
            )
            .await;
        self.record("JSON patch: a failing test", outcome(r, name_and(&[])));
        let r = pods
            .patch(
                "patched",
                &PatchParams::default(),
                &json_patch(json!([{"op": "remove", "path": "/metadata/labels/absent"}])),
            )
            .await;
        self.record(
            "JSON patch: removing a missing path",
            outcome(r, name_and(&[])),
        );
        let r = pods
            .patch(
                "patched",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"schedulerName": "someone"}})),
            )
            .await;
        self.record(
            "merge patch of an immutable pod field",
            outcome(r, name_and(&[])),
        );
        let r = pods
            .patch(
                "p1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"nodeName": "n2"}})),
            )
            .await;
        self.record("merge patch moving a bound pod", outcome(r, name_and(&[])));
        let r = pods
            .patch(
                "patched",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": 600}})),
            )
            .await;
        self.record(
            "merge patch of a mutable pod field",
            outcome(r, name_and(&["/spec/activeDeadlineSeconds"])),
        );
    }

    async fn apply(&mut self) {
        let cms: Api<ConfigMap> = self.api();
        let applied = |value: &str| -> Value {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"k": value}})
        };
        let r = cms
            .patch(
                "applied",
                &PatchParams::apply("manager-a"),
                &Patch::Apply(applied("1")),
            )
            .await;
        self.record("apply: create", outcome(r, name_and(&["/data"])));
        let r = cms
            .patch(
                "applied",
                &PatchParams::apply("manager-b"),
                &Patch::Apply(applied("2")),
            )
            .await;
        self.record(
            "apply: another manager's field",
            outcome(r, name_and(&["/data"])),
        );
        let r = cms
            .patch(
                "applied",
                &PatchParams::apply("manager-b").force(),
                &Patch::Apply(applied("2")),
            )
            .await;
        self.record(
            "apply: forced",
            outcome(r, |v| {
                let mut managers: Vec<Value> = v
                    .pointer("/metadata/managedFields")
                    .and_then(Value::as_array)
                    .map(|m| m.iter().map(|f| f["manager"].clone()).collect())
                    .unwrap_or_default();
                managers.sort_by_key(ToString::to_string);
                json!({"data": v.pointer("/data"), "managers": managers})
            }),
        );
    }

    async fn leases(&mut self) {
        let leases: Api<Lease> = self.api();
        let pp = PostParams::default();
        let lease: Lease = from_json(json!({
            "metadata": {"name": "lock"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        }));
        let created = leases.create(&pp, &lease).await.unwrap();
        let mut next = created.clone();
        next.spec.as_mut().unwrap().holder_identity = Some("b".into());
        let holder = name_and(&["/spec/holderIdentity"]);
        let r = leases.replace("lock", &pp, &next).await;
        self.record("lease: take over", outcome(r, holder));
        let r = leases.replace("lock", &pp, &next).await;
        self.record(
            "lease: take over with a stale resourceVersion",
            outcome(r, name_and(&[])),
        );
    }

    /// Creates pods named `names` with `app: group`, bound to n1, and sets `ready` ones Ready
    /// as a kubelet would.
    async fn ready_pods(&self, group: &str, names: &[(&str, bool)]) {
        let pods: Api<Pod> = self.api();
        for (name, ready) in names {
            pods.create(
                &PostParams::default(),
                &pod(name, json!({"app": group}), Some("n1")),
            )
            .await
            .unwrap();
            let status = json!({"status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if *ready { "True" } else { "False" }}],
            }});
            pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
        }
    }

    /// Creates the PDB, waits (up to [`DEADLINE`]) until its status counts `healthy` of
    /// `expected` pods, and records the status it came to.
    async fn budget(&mut self, name: &str, group: &str, spec: Value, expected: i32, healthy: i32) {
        let pdbs: Api<PodDisruptionBudget> = self.api();
        let mut body = json!({
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": group}}},
        });
        for (k, v) in spec.as_object().unwrap() {
            body["spec"][k] = v.clone();
        }
        pdbs.create(&PostParams::default(), &from_json(body))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let status = loop {
            let status = pdbs.get(name).await.unwrap().status.unwrap_or_default();
            let counted = status.observed_generation == Some(1)
                && status.expected_pods == expected
                && status.current_healthy == healthy;
            if counted || tokio::time::Instant::now() >= deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let allowed = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "DisruptionAllowed")
            .map(|c| json!([c.status, c.reason]));
        self.record(
            &format!("budget {name}: status"),
            json!({
                "expected": status.expected_pods,
                "healthy": status.current_healthy,
                "desired": status.desired_healthy,
                "allowed": status.disruptions_allowed,
                "condition": allowed,
            }),
        );
    }

    async fn evict(&mut self, step: &str, pod: &str) {
        let pods: Api<Pod> = self.api();
        let r = pods.evict(pod, &EvictParams::default()).await.map(|_| ());
        self.record(step, outcome(r, |_| json!("evicted")));
    }

    async fn evictions(&mut self) {
        self.ready_pods("e", &[("e-0", true), ("e-1", true), ("e-2", true)])
            .await;
        self.budget("e", "e", json!({"minAvailable": 2}), 3, 3)
            .await;
        self.evict("evict within the budget", "e-0").await;
        self.evict("evict past the budget", "e-1").await;
        let pods: Api<Pod> = self.api();
        let evicted = pods.get("e-0").await;
        self.record(
            "an evicted pod",
            outcome(evicted, |v| {
                let target = v
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget"))
                    .map(|c| json!([c["status"], c["reason"]]));
                json!({"terminating": v.pointer("/metadata/deletionTimestamp").is_some(), "disruptionTarget": target})
            }),
        );

        self.ready_pods("m", &[("m-0", true), ("m-1", true)]).await;
        self.budget("m1", "m", json!({"minAvailable": 1}), 2, 2)
            .await;
        self.budget("m2", "m", json!({"minAvailable": 1}), 2, 2)
            .await;
        self.evict("evict under two budgets", "m-0").await;

        for (group, policy) in [("u", "AlwaysAllow"), ("v", "IfHealthyBudget")] {
            let ready = format!("{group}-0");
            let unready = format!("{group}-1");
            self.ready_pods(group, &[(&ready, true), (&unready, false)])
                .await;
            self.budget(
                group,
                group,
                json!({"minAvailable": 2, "unhealthyPodEvictionPolicy": policy}),
                2,
                1,
            )
            .await;
            self.evict(
                &format!("evict an unready pod of a disrupted budget, {policy}"),
                &unready,
            )
            .await;
            self.evict(
                &format!("evict a ready pod of a disrupted budget, {policy}"),
                &ready,
            )
            .await;
        }

        // maxUnavailable needs the pods' controller for the expected count: bare pods have none.
        self.ready_pods("s", &[("s-0", true), ("s-1", true)]).await;
        self.budget("s", "s", json!({"maxUnavailable": 1}), 2, 2)
            .await;
        self.evict("evict under maxUnavailable over bare pods", "s-0")
            .await;

        self.ready_pods("x", &[("x-0", true)]).await;
        self.evict("evict a pod no budget covers", "x-0").await;
        self.evict("evict a missing pod", "nobody").await;
    }

    /// A token for pod `pod`'s service account with `audience`, minted the way each side can.
    async fn token(&self, pod: &str, audience: &str) -> String {
        if let Some(store) = &self.store {
            return store
                .issue_service_account_token(NS, pod, audience, Duration::from_secs(600))
                .unwrap();
        }
        let pods: Api<Pod> = self.api();
        let uid = pods.get(pod).await.unwrap().metadata.uid;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(pod.to_owned()),
                    uid,
                }),
            },
            ..TokenRequest::default()
        };
        let accounts: Api<ServiceAccount> = self.api();
        accounts
            .create_token_request("agent", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
    }

    async fn token_reviews(&mut self) {
        let pp = PostParams::default();
        let accounts: Api<ServiceAccount> = self.api();
        accounts
            .create(&pp, &from_json(json!({"metadata": {"name": "agent"}})))
            .await
            .unwrap();
        let pods: Api<Pod> = self.api();
        let mut agent = pod("agent", json!({}), Some("n1"));
        agent.spec.as_mut().unwrap().service_account_name = Some("agent".into());
        pods.create(&pp, &agent).await.unwrap();
        let token = self.token("agent", "rota").await;
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = |token: String, audience: &str| TokenReview {
            spec: TokenReviewSpec {
                token: Some(token),
                audiences: Some(vec![audience.to_owned()]),
            },
            ..TokenReview::default()
        };
        let summary = |v: Value| {
            let mut groups: Vec<Value> = v
                .pointer("/status/user/groups")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            groups.sort_by_key(ToString::to_string);
            json!({
                "authenticated": v.pointer("/status/authenticated"),
                "username": v.pointer("/status/user/username"),
                "groups": groups,
                "node": v.pointer("/status/user/extra/authentication.kubernetes.io~1node-name"),
                "pod": v.pointer("/status/user/extra/authentication.kubernetes.io~1pod-name"),
                "audiences": v.pointer("/status/audiences"),
            })
        };
        let r = reviews.create(&pp, &review(token.clone(), "rota")).await;
        self.record("token review", outcome(r, summary));
        let r = reviews.create(&pp, &review(token, "someone-else")).await;
        self.record(
            "token review for another audience",
            outcome(
                r,
                |v| json!({"authenticated": v.pointer("/status/authenticated")}),
            ),
        );
        let r = reviews
            .create(&pp, &review("not-a-token".into(), "rota"))
            .await;
        self.record(
            "token review of garbage",
            outcome(
                r,
                |v| json!({"authenticated": v.pointer("/status/authenticated")}),
            ),
        );
        pods.delete("agent", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
}

/// The events of a watch of `cms` from `from`, until the stream ends (a 2 s watch) or errs:
/// `[type, name]`, or `[ERROR, code, reason]`.
async fn watch_events(cms: &Api<ConfigMap>, from: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let stream = match cms.watch(&WatchParams::default().timeout(2), from).await {
        Ok(stream) => stream,
        Err(kube::Error::Api(status)) => {
            return vec![json!(["REFUSED", status.code, status.reason])];
        }
        Err(e) => panic!("watch: {e}"),
    };
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(WatchEvent::Added(o)) => out.push(json!(["ADDED", o.metadata.name])),
            Ok(WatchEvent::Modified(o)) => out.push(json!(["MODIFIED", o.metadata.name])),
            Ok(WatchEvent::Deleted(o)) => out.push(json!(["DELETED", o.metadata.name])),
            Ok(WatchEvent::Bookmark(_)) => {}
            Ok(WatchEvent::Error(status)) => {
                out.push(json!(["ERROR", status.code, status.reason]));
                break;
            }
            Err(e) => {
                out.push(json!(["STREAM ERROR", e.to_string()]));
                break;
            }
        }
    }
    out
}

/// The steps whose outcomes differ: step → (emulator, real).
fn differences(emulated: &Side, real: &Side) -> BTreeMap<String, (Value, Value)> {
    let real_by_step: BTreeMap<&str, &Value> =
        real.outcomes.iter().map(|(s, v)| (s.as_str(), v)).collect();
    let mut out = BTreeMap::new();
    for (step, ours) in &emulated.outcomes {
        let theirs = real_by_step
            .get(step.as_str())
            .copied()
            .unwrap_or(&Value::Null);
        if ours != theirs {
            out.insert(step.clone(), (ours.clone(), theirs.clone()));
        }
    }
    out
}

async fn emulator() -> (ServerHandle, Side) {
    let store = Store::new();
    let server = ApiServer::start(
        store.clone(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, server.kubeconfig()).unwrap();
    let client = client_from_kubeconfig_file(&path).await.unwrap();
    let side = Side {
        name: "emulator",
        client,
        store: Some(store),
        outcomes: Vec::new(),
    };
    (server, side)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_as_kube_apiserver_does() {
    let Some(binaries) = binaries_for_test() else {
        return;
    };
    let cp = ControlPlane::start(binaries).await.unwrap();
    let mut real = Side {
        name: "kube-apiserver",
        client: cp.admin_client().await.unwrap(),
        store: None,
        outcomes: Vec::new(),
    };
    let (_server, mut emulated) = emulator().await;
    emulated.run().await;
    real.run().await;
    assert_eq!(
        emulated.outcomes.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        real.outcomes.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        "both sides ran the same steps"
    );
    // Positive evidence that the steps did something on the real server.
    let real_by_step: BTreeMap<&str, &Value> =
        real.outcomes.iter().map(|(s, v)| (s.as_str(), v)).collect();
    assert_eq!(real_by_step["evict past the budget"]["code"], 429);
    assert_eq!(real_by_step["get a missing object"]["code"], 404);

    for (step, theirs) in &real.outcomes {
        eprintln!("{step}: {theirs}");
    }
    let found = differences(&emulated, &real);
    let mut report = String::new();
    for (step, (ours, theirs)) in &found {
        report.push_str(&format!(
            "\n- {step}\n    emulator:       {ours}\n    kube-apiserver: {theirs}"
        ));
    }
    eprintln!(
        "{} steps compared, {} differ:{report}",
        real.outcomes.len(),
        found.len()
    );
    let known: BTreeMap<&str, &str> = KNOWN_DIFFERENCES.iter().copied().collect();
    let unknown: Vec<&String> = found
        .keys()
        .filter(|s| !known.contains_key(s.as_str()))
        .collect();
    let gone: Vec<&&str> = known.keys().filter(|s| !found.contains_key(**s)).collect();
    assert!(
        unknown.is_empty(),
        "differences not in KNOWN_DIFFERENCES (fix the emulator or list them): {unknown:?}{report}"
    );
    assert!(
        gone.is_empty(),
        "listed differences that no longer occur (remove them): {gone:?}"
    );
}

/// `tests/README.md` lists exactly the known differences.
#[test]
fn the_readme_lists_the_known_differences() {
    let readme = include_str!("../README.md");
    for (step, _) in KNOWN_DIFFERENCES {
        assert!(
            readme.contains(&format!("| {step} |")),
            "tests/README.md does not list the difference in {step:?}"
        );
    }
}
