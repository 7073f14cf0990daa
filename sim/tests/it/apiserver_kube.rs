//! The emulated API server driven by the real kube-rs client over HTTP.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use kube::{Client, Config};
use rota_sim::apiserver::{ApiServer, FaultConfig, GroupResource, ServerHandle, Store, meta};
use serde_json::{Value, json};

async fn start(store: &Store) -> ServerHandle {
    ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

fn client(server: &ServerHandle, retry: bool) -> Client {
    let mut config = Config::new(server.url().parse().unwrap());
    config.default_retry = retry;
    Client::try_from(config).unwrap()
}

/// Poll `check` until it holds, failing after a deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn api_error(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn pods() -> GroupResource {
    GroupResource::core("pods")
}

fn node(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn pod(
    name: &str,
    node: &str,
    labels: Value,
    ready: bool,
    owner: Option<(&str, &str, &str)>,
) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    });
    if let Some((kind, name, uid)) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
    }
    p
}

/// A ReplicaSet (its uid) owning `ready` ready and `unready` unready pods labelled `app=<app>`.
fn seed_workload(store: &Store, app: &str, replicas: i64, ready: usize, unready: usize) -> String {
    let rs = store
        .create(
            &GroupResource::new("apps", "replicasets"),
            Some("default"),
            json!({"metadata": {"name": app}, "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}}}}),
        )
        .unwrap();
    let uid = meta::uid(&rs).to_string();
    for i in 0..ready + unready {
        let name = format!("{app}-{i}");
        let p = pod(
            &name,
            "n1",
            json!({"app": app}),
            i < ready,
            Some(("ReplicaSet", app, &uid)),
        );
        store.create(&pods(), Some("default"), p).unwrap();
    }
    uid
}

#[tokio::test]
async fn list_and_watch_with_selectors() {
    let store = Store::new();
    store
        .create(&GroupResource::core("nodes"), None, node("n1", true))
        .unwrap();
    store
        .create(&GroupResource::core("nodes"), None, node("n2", false))
        .unwrap();
    for (name, n, app) in [("a", "n1", "web"), ("b", "n2", "web"), ("c", "n1", "db")] {
        store
            .create(
                &pods(),
                Some("default"),
                pod(name, n, json!({"app": app}), true, None),
            )
            .unwrap();
    }
    let server = start(&store).await;
    let client = client(&server, true);
    let api: Api<Pod> = Api::default_namespaced(client.clone());

    let names = |l: kube::core::ObjectList<Pod>| -> Vec<String> {
        l.items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        vec!["a", "b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("spec.nodeName=n1"))
                .await
                .unwrap()
        ),
        vec!["a", "c"]
    );
    assert_eq!(
        names(
            api.list(
                &ListParams::default()
                    .labels("app in (web,db),app!=db")
                    .fields("spec.nodeName==n2")
            )
            .await
            .unwrap()
        ),
        vec!["b"]
    );
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default().fields("status.phase=Running"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let paged = all.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(paged.items.len(), 2);
    let token = paged.metadata.continue_.clone().unwrap();
    let rest = all
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest), vec!["c"]);

    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut stream = api
        .watch(
            &WatchParams::default()
                .labels("app=web")
                .fields("spec.nodeName=n1"),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    store
        .create(
            &pods(),
            Some("default"),
            pod("d", "n2", json!({"app": "web"}), true, None),
        )
        .unwrap();
    store
        .create(
            &pods(),
            Some("default"),
            pod("e", "n1", json!({"app": "db"}), true, None),
        )
        .unwrap();
    store
        .create(
            &pods(),
            Some("default"),
            pod("f", "n1", json!({"app": "web"}), true, None),
        )
        .unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("f")),
        other => panic!("unexpected {other:?}"),
    }
    let nodes: Api<Node> = Api::all(client);
    let ready = nodes
        .list(&ListParams::default().fields("metadata.name=n2"))
        .await
        .unwrap();
    assert_eq!(ready.items.len(), 1);
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_expires() {
    let store = Store::with_config(20, rota_core::clock::system());
    let server = start(&store).await;
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server, true));
    let first = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "first"}})).unwrap(),
        )
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "second"}})).unwrap(),
    )
    .await
    .unwrap();
    let events: Vec<_> = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let added: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Added(c) => c.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        added,
        vec!["second"],
        "only events after the resourceVersion; the stream ended at timeoutSeconds"
    );

    for i in 0..30 {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn streaming_list_watch_ends_initial_events_with_a_bookmark() {
    let store = Store::new();
    store
        .create(&GroupResource::core("nodes"), None, node("n1", true))
        .unwrap();
    let server = start(&store).await;
    let api: Api<Node> = Api::all(client(&server, true));
    let mut stream = api
        .watch(&WatchParams::default().initial_events(), "")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(stream.try_next().await.unwrap().unwrap(), WatchEvent::Added(n) if n.metadata.name.as_deref() == Some("n1"))
    );
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
}

/// Run a kube-runtime watcher, checking it sees `late` after its watch was dropped and its
/// resourceVersion expired (so it must relist).
async fn watcher_survives_drops_and_expiry(config: watcher::Config) {
    let store = Store::with_config(30, rota_core::clock::system());
    store
        .create(
            &pods(),
            Some("default"),
            pod("early", "n1", json!({"app": "x"}), true, None),
        )
        .unwrap();
    let server = start(&store).await;
    let api: Api<Pod> = Api::default_namespaced(client(&server, false));
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen2, inits2) = (seen.clone(), inits.clone());
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    seen2.lock().push(p.metadata.name.unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => {
                    inits2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    eventually("initial list", || {
        let done = inits.load(std::sync::atomic::Ordering::SeqCst) >= 1
            && seen.lock().contains(&"early".to_string());
        async move { done }
    })
    .await;
    // Make re-watches fail while the history moves past the watcher's resourceVersion.
    server.faults().set(FaultConfig {
        error_rate: 1.0,
        error_codes: vec![503],
        ..Default::default()
    });
    server.faults().drop_watches();
    for i in 0..40 {
        store
            .create(
                &GroupResource::core("configmaps"),
                Some("default"),
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .unwrap();
    }
    store
        .create(
            &pods(),
            Some("default"),
            pod("late", "n1", json!({"app": "x"}), true, None),
        )
        .unwrap();
    for i in 40..80 {
        store
            .create(
                &GroupResource::core("configmaps"),
                Some("default"),
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .unwrap();
    }
    server.faults().clear();
    eventually("the watcher to relist and see the late pod", || {
        let ok = seen.lock().contains(&"late".to_string())
            && inits.load(std::sync::atomic::Ordering::SeqCst) >= 2;
        async move { ok }
    })
    .await;
    task.abort();
    // The late pod arrived through a fresh list (the history it was in had expired), which saw
    // the early one again: the relist replaced the watcher's view rather than patching it.
    let seen = seen.lock().clone();
    let early = seen.iter().filter(|p| *p == "early").count();
    assert!(
        early >= 2,
        "the relist did not list the early pod again: {seen:?}"
    );
    let late_at = seen.iter().position(|p| p == "late").unwrap();
    assert!(
        seen[..late_at].iter().filter(|p| *p == "early").count() >= 2,
        "the late pod came before the relist: {seen:?}"
    );
}

#[tokio::test]
async fn runtime_watcher_relists_after_410() {
    watcher_survives_drops_and_expiry(watcher::Config::default()).await;
}

#[tokio::test]
async fn runtime_watcher_with_streaming_lists() {
    watcher_survives_drops_and_expiry(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn conflicts() {
    let store = Store::new();
    let server = start(&store).await;
    let api: Api<ConfigMap> = Api::default_namespaced(client(&server, true));
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}})).unwrap();
    let created = api.create(&PostParams::default(), &cm).await.unwrap();
    let (code, reason, message) =
        api_error(api.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (409, "AlreadyExists", "configmaps \"c\" already exists")
    );
    let mut newer = created.clone();
    newer.data = Some([("a".to_string(), "2".to_string())].into());
    api.replace("c", &PostParams::default(), &newer)
        .await
        .unwrap();
    let (code, reason, message) = api_error(
        api.replace("c", &PostParams::default(), &newer)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.ends_with("the object has been modified; please apply your changes to the latest version and try again"));
}

#[tokio::test]
async fn eviction_codes() {
    let store = Store::new();
    seed_workload(&store, "web", 3, 3, 0);
    store
        .create(
            &GroupResource::new("policy", "poddisruptionbudgets"),
            Some("default"),
            json!({"metadata": {"name": "web"}, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        )
        .unwrap();
    store
        .create(
            &pods(),
            Some("default"),
            pod("loner", "n1", json!({"app": "loner"}), true, None),
        )
        .unwrap();
    let server = start(&store).await;
    let client = client(&server, false);
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    eventually("PDB status", || {
        let pdbs = pdbs.clone();
        async move {
            let pdb = pdbs.get("web").await.unwrap();
            pdb.status
                .is_some_and(|s| s.observed_generation == Some(1) && s.disruptions_allowed == 1)
        }
    })
    .await;

    // dryRun: accepted, nothing changes.
    let rv = store.resource_version();
    let dry = client
        .request_status::<Value>(
            http::Request::post("/api/v1/namespaces/default/pods/web-0/eviction?dryRun=All")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web-0"}})).unwrap())
                .unwrap(),
        )
        .await;
    assert!(dry.is_ok());
    assert_eq!(store.resource_version(), rv);

    let status = api.evict("web-0", &EvictParams::default()).await.unwrap();
    assert_eq!(status.code, 201);
    let (code, reason, message) = api_error(
        api.evict("web-1", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(
        message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let (code, ..) = api_error(
        api.evict("nope", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
    // A pod without a PDB goes at once.
    assert_eq!(
        api.evict("loner", &EvictParams::default())
            .await
            .unwrap()
            .code,
        201
    );
    // Two PDBs over one pod: 500.
    store
        .create(
            &GroupResource::new("policy", "poddisruptionbudgets"),
            Some("default"),
            json!({"metadata": {"name": "web2"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        )
        .unwrap();
    let (code, _, message) = api_error(
        api.evict("web-2", &EvictParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500);
    assert!(message.contains("more than one PodDisruptionBudget"));
    let evicted = api.get("web-0").await.unwrap();
    assert!(evicted.metadata.deletion_timestamp.is_some());
    let conditions = evicted.status.unwrap().conditions.unwrap();
    assert!(
        conditions.iter().any(|c| c.type_ == "DisruptionTarget"
            && c.reason.as_deref() == Some("EvictionByEvictionAPI"))
    );
    assert!(store.pdb_violations().is_empty());
}

struct PdbCase {
    spec: Value,
    replicas: i64,
    ready: usize,
    unready: usize,
    owned: bool,
    /// (expectedPods, desiredHealthy, currentHealthy, disruptionsAllowed)
    want: (i32, i32, i32, i32),
}

#[tokio::test]
async fn pdb_status_for_every_form() {
    let cases = [
        PdbCase {
            spec: json!({"minAvailable": 2}),
            replicas: 3,
            ready: 3,
            unready: 0,
            owned: true,
            want: (3, 2, 3, 1),
        },
        PdbCase {
            spec: json!({"minAvailable": "50%"}),
            replicas: 3,
            ready: 3,
            unready: 0,
            owned: true,
            want: (3, 2, 3, 1),
        },
        PdbCase {
            spec: json!({"maxUnavailable": 1}),
            replicas: 4,
            ready: 3,
            unready: 1,
            owned: true,
            want: (4, 3, 3, 0),
        },
        PdbCase {
            spec: json!({"maxUnavailable": "25%"}),
            replicas: 5,
            ready: 5,
            unready: 0,
            owned: true,
            want: (5, 3, 5, 2),
        },
        PdbCase {
            spec: json!({"maxUnavailable": 1}),
            replicas: 0,
            ready: 2,
            unready: 0,
            owned: false,
            want: (0, 0, 2, 0),
        },
        PdbCase {
            spec: json!({"minAvailable": 1}),
            replicas: 0,
            ready: 2,
            unready: 0,
            owned: false,
            want: (2, 1, 2, 1),
        },
    ];
    let store = Store::new();
    for (i, c) in cases.iter().enumerate() {
        let app = format!("app{i}");
        if c.owned {
            seed_workload(&store, &app, c.replicas, c.ready, c.unready);
        } else {
            for j in 0..c.ready {
                store
                    .create(
                        &pods(),
                        Some("default"),
                        pod(&format!("{app}-{j}"), "n1", json!({"app": app}), true, None),
                    )
                    .unwrap();
            }
        }
    }
    let server = start(&store).await;
    let client = client(&server, true);
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client);
    for (i, c) in cases.iter().enumerate() {
        let mut spec = c.spec.clone();
        spec["selector"] = json!({"matchLabels": {"app": format!("app{i}")}});
        let pdb: PodDisruptionBudget =
            serde_json::from_value(json!({"metadata": {"name": format!("pdb{i}")}, "spec": spec}))
                .unwrap();
        pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    }
    for (i, c) in cases.iter().enumerate() {
        let name = format!("pdb{i}");
        eventually(&name, || {
            let pdbs = pdbs.clone();
            let name = name.clone();
            async move {
                let s = pdbs.get(&name).await.unwrap().status.unwrap_or_default();
                s.observed_generation == Some(1)
                    && (
                        s.expected_pods,
                        s.desired_healthy,
                        s.current_healthy,
                        s.disruptions_allowed,
                    ) == c.want
            }
        })
        .await;
        let cond = pdbs
            .get(&name)
            .await
            .unwrap()
            .status
            .unwrap()
            .conditions
            .unwrap();
        let allowed = cond
            .iter()
            .find(|c| c.type_ == "DisruptionAllowed")
            .unwrap();
        assert_eq!(allowed.status, if c.want.3 > 0 { "True" } else { "False" });
    }
    // The controller reacts to pod changes: a ready pod going unready lowers the allowance.
    let key = rota_sim::apiserver::ResourceKey::new(pods(), Some("default"), "app0-0");
    store
        .patch_status(
            &key,
            &rota_sim::apiserver::PatchKind::Merge,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        )
        .unwrap();
    eventually("pdb0 to react", || {
        let pdbs = pdbs.clone();
        async move {
            pdbs.get("pdb0")
                .await
                .unwrap()
                .status
                .unwrap()
                .disruptions_allowed
                == 0
        }
    })
    .await;
}

#[tokio::test]
async fn custom_resources_from_a_crd() {
    let store = Store::new();
    let server = start(&store).await;
    let client = client(&server, true);
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "maintenancepolicies.rota.dev"},
        "spec": {
            "group": "rota.dev", "scope": "Cluster",
            "names": {"plural": "maintenancepolicies", "singular": "maintenancepolicy", "kind": "MaintenancePolicy", "shortNames": ["mp"]},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, _caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "rota.dev",
            "v1alpha1",
            "MaintenancePolicy",
        ))
        .expect("the CRD's kind is discoverable");
    assert_eq!(ar.plural, "maintenancepolicies");
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mp: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rota.dev/v1alpha1", "kind": "MaintenancePolicy",
        "metadata": {"name": "workers"}, "spec": {"maxUnavailable": 1}, "status": {"ignored": true}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &mp).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is reset on create when /status exists"
    );
    assert_eq!(created.metadata.generation, Some(1));
    let patched = api
        .patch_status(
            "workers",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodesDone": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["nodesDone"], 3);
    assert_eq!(patched.metadata.generation, Some(1));
    let respec = api
        .patch(
            "workers",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxUnavailable": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(respec.metadata.generation, Some(2));
    assert_eq!(respec.data["status"]["nodesDone"], 3);
    let applied = api
        .patch("workers", &PatchParams::apply("rota").force(), &Patch::Apply(json!({
            "apiVersion": "rota.dev/v1alpha1", "kind": "MaintenancePolicy", "metadata": {"name": "workers"}, "spec": {"paused": true}
        })))
        .await
        .unwrap();
    assert_eq!(
        applied.data["spec"],
        json!({"maxUnavailable": 2, "paused": true})
    );
    let got = api.get("workers").await.unwrap();
    assert_eq!(got.data["spec"]["paused"], true);
    let (code, ..) = api_error(
        api.patch(
            "workers",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        code, 415,
        "strategic merge is not supported for custom resources"
    );
}

#[tokio::test]
async fn token_review() {
    let store = Store::new();
    store
        .create(&GroupResource::core("nodes"), None, node("n1", true))
        .unwrap();
    let mut agent = pod("agent", "n1", json!({"app": "agent"}), true, None);
    agent["spec"]["serviceAccountName"] = json!("rota-agent");
    store.create(&pods(), Some("default"), agent).unwrap();
    let token = store
        .issue_service_account_token("default", "agent", "rota", Duration::from_secs(600))
        .unwrap();
    let server = start(&store).await;
    let reviews: Api<TokenReview> = Api::all(client(&server, true));
    let review = |token: &str, aud: &str| -> TokenReview {
        serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": [aud]}})).unwrap()
    };
    let ok = reviews
        .create(&PostParams::default(), &review(&token, "rota"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:rota-agent")
    );
    let extra = user.extra.unwrap();
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        vec!["n1".to_string()]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        vec!["agent".to_string()]
    );
    let wrong = reviews
        .create(&PostParams::default(), &review(&token, "other"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(wrong.authenticated, Some(true));
    assert!(wrong.error.is_some());
    let (code, ..) = api_error(reviews.get("x").await.unwrap_err());
    assert_eq!(code, 405);
}

async fn raw(
    client: &Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn errors_are_status_objects_with_real_codes() {
    let store = Store::new();
    store
        .create(&GroupResource::core("nodes"), None, node("n1", true))
        .unwrap();
    let server = start(&store).await;
    let client = client(&server, false);
    let j = "application/json";
    let cases: Vec<(&str, &str, &str, &str, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            j,
            "{not json",
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            j,
            r#"{"metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            j,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            j,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "text/plain",
            "x",
            415,
            "UnsupportedMediaType",
        ),
        (
            "PATCH",
            "/api/v1/nodes/n1",
            "text/plain",
            "{}",
            415,
            "UnsupportedMediaType",
        ),
        (
            "PATCH",
            "/api/v1/nodes/n1",
            "application/merge-patch+json",
            "{oops",
            400,
            "BadRequest",
        ),
        ("GET", "/api/v1/widgets", j, "", 404, "NotFound"),
        (
            "GET",
            "/apis/nope.example/v1/things",
            j,
            "",
            404,
            "NotFound",
        ),
        ("GET", "/api/v1/nodes/missing", j, "", 404, "NotFound"),
        (
            "GET",
            "/api/v1/pods?labelSelector=a%20b",
            j,
            "",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/pods?fieldSelector=spec.bogus%3Dx",
            j,
            "",
            400,
            "BadRequest",
        ),
        ("PUT", "/api/v1/nodes", j, "{}", 405, "MethodNotAllowed"),
        ("POST", "/api/v1/nodes/n1", j, "{}", 405, "MethodNotAllowed"),
        (
            "POST",
            "/api/v1/namespaces/nope/configmaps",
            j,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            404,
            "NotFound",
        ),
    ];
    for (method, uri, ct, body, code, reason) in cases {
        let (got, status) = raw(&client, method, uri, ct, body).await;
        assert_eq!(got, code, "{method} {uri}: {status}");
        assert_eq!(status["kind"], "Status", "{method} {uri}");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["code"], code);
        assert_eq!(status["reason"], reason, "{method} {uri}: {status}");
    }
    let (_, invalid) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        j,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#,
    )
    .await;
    assert_eq!(invalid["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(
        invalid["message"],
        "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required"
    );
    let (code, _) = raw(&client, "GET", "/healthz", j, "").await;
    assert_eq!(code, 200);
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
}

#[tokio::test]
async fn node_strategic_merge_patches() {
    let store = Store::new();
    let mut n = node("n1", true);
    n["metadata"]["labels"]["keep"] = json!("yes");
    n["spec"] = json!({"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]});
    store
        .create(&GroupResource::core("nodes"), None, n)
        .unwrap();
    let server = start(&store).await;
    let nodes: Api<Node> = Api::all(client(&server, true));
    let pp = PatchParams::default();
    nodes
        .patch(
            "n1",
            &pp,
            &Patch::Strategic(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let patched = nodes
        .patch("n1", &pp, &Patch::Strategic(json!({
            "metadata": {"labels": {"keep": null, "new": "1"}, "annotations": {"rota.dev/x": "y"}},
            "spec": {"taints": [{"key": "c", "effect": "NoExecute"}]}
        })))
        .await
        .unwrap();
    let spec = patched.spec.unwrap();
    assert_eq!(spec.unschedulable, Some(true));
    assert_eq!(
        spec.taints
            .unwrap()
            .iter()
            .map(|t| t.key.as_str())
            .collect::<Vec<_>>(),
        vec!["c"]
    );
    let labels = patched.metadata.labels.unwrap();
    assert!(!labels.contains_key("keep"));
    assert_eq!(labels["new"], "1");
    let uncordoned = nodes
        .patch(
            "n1",
            &pp,
            &Patch::Strategic(json!({"spec": {"unschedulable": null}})),
        )
        .await
        .unwrap();
    assert_eq!(uncordoned.spec.unwrap().unschedulable, None);
    let json_patched = nodes
        .patch(
            "n1",
            &pp,
            &Patch::<()>::Json(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/metadata/labels/jp", "value": "1"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(json_patched.metadata.labels.unwrap()["jp"], "1");
    assert_eq!(store.max_unavailable_nodes(), 1);
}

#[tokio::test]
async fn pod_deletion_is_graceful_when_scheduled() {
    let store = Store::new();
    store
        .create(
            &pods(),
            Some("default"),
            pod("a", "n1", json!({}), true, None),
        )
        .unwrap();
    let server = start(&store).await;
    let api: Api<Pod> = Api::default_namespaced(client(&server, true));
    let deleted = api.delete("a", &DeleteParams::default()).await.unwrap();
    let pending = deleted
        .left()
        .expect("the pod is returned while its deletion is pending");
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(30));
    api.delete(
        "a",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (code, ..) = api_error(api.get("a").await.unwrap_err());
    assert_eq!(code, 404);
}

#[tokio::test]
async fn injected_faults() {
    let store = Store::new();
    let server = start(&store).await;
    let nodes: Api<Node> = Api::all(client(&server, false));
    server.faults().set(FaultConfig {
        error_rate: 1.0,
        error_codes: vec![500],
        ..Default::default()
    });
    let (code, reason, _) = api_error(nodes.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    server.faults().set(FaultConfig {
        error_rate: 1.0,
        error_codes: vec![429],
        ..Default::default()
    });
    assert_eq!(
        api_error(nodes.list(&ListParams::default()).await.unwrap_err()).0,
        429
    );
    server.faults().set(FaultConfig {
        latency: Duration::from_millis(200),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    nodes.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    server.faults().clear();
    // An open watch is cut abruptly: the stream ends with an error or simply ends, never with
    // an injected status.
    let mut stream = nodes
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    server.faults().drop_watches();
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    assert!(matches!(next, None | Some(Err(_))), "{next:?}");
}

#[tokio::test]
async fn idle_watches_get_bookmarks() {
    let store = Store::new();
    let config = rota_sim::apiserver::ServerConfig {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let server = ApiServer::start_with(
        store.clone(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        config,
    )
    .await
    .unwrap();
    let nodes: Api<Node> = Api::all(client(&server, true));
    let rv = store.resource_version();
    let mut stream = nodes
        .watch(&WatchParams::default(), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    // Writes to other resources advance the bookmark's resourceVersion.
    store
        .create(
            &GroupResource::core("configmaps"),
            Some("default"),
            json!({"metadata": {"name": "c"}}),
        )
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Bookmark(b) => {
            assert!(b.metadata.resource_version.parse::<u64>().unwrap() > rv)
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
}
