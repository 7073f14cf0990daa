//! The drain engine against the emulated API server (`rota-sim`), through the real kube client
//! over HTTP. The emulator runs its disruption controller, so budgets move as pods come and go,
//! as they do in a cluster; the tests play the kubelet where a pod's deletion needs one.
use rota_core::drain::{
    BlockReason, DrainOutcome, DrainReport, DrainSpec, PdbRef, PodProgress, PodRef, RefusalReason,
    SkipReason,
};

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, Namespace, Node, NodeCondition, NodeSpec, NodeStatus, Pod,
    PodCondition, PodSpec, PodStatus, Volume,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rota_coordinator::controller;
use rota_coordinator::controller::cordon::{Cordoned, cordon, uncordon_own};
use rota_coordinator::drain::{DrainControl, Drainer};
use rota_coordinator::kube_client::Clients;
use rota_coordinator::leader::Leadership;
use rota_coordinator::store::{CacheConfig, CacheTasks, ClusterCache, WriteGate};
use rota_sim::apiserver::{
    ApiServer, DeleteOptions, FaultConfig, ListOptions, ServerHandle, Store,
};
use tokio::time::Instant;

const NS: &str = "shop";

/// An emulated cluster and a drainer talking to it over HTTP.
struct Cluster {
    store: Store,
    server: ServerHandle,
    drainer: Drainer,
    /// The cache whose budgets the drainer follows, as the controller's does.
    _cache: CacheTasks,
}

async fn cluster(nodes: &[&str]) -> Result<Cluster> {
    let store = Store::new();
    let server = ApiServer::start(store.clone(), "127.0.0.1:0".parse()?).await?;
    let config = kube::Config::new(server.url().parse()?);
    let clients = Clients::from_config(config)?;
    let (cache, cache_tasks) = ClusterCache::start(clients.default.clone(), CacheConfig::default());
    let drainer = Drainer::new(&clients, rota_core::clock::system(), cache);
    store.create_as(&Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })?;
    for name in nodes {
        store.create_as(&node(name, false))?;
    }
    Ok(Cluster {
        store,
        server,
        drainer,
        _cache: cache_tasks,
    })
}

fn node(name: &str, unschedulable: bool) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            unschedulable: unschedulable.then_some(true),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A Ready, Running pod on `node`, deleted at once (grace 0) unless the test says otherwise.
fn pod(name: &str, node: &str, app: &str, controller: Option<(&str, &str)>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some(name.into()),
            labels: Some(labels(&[("app", app)])),
            owner_references: controller.map(|(kind, owner)| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: kind.into(),
                    name: owner.into(),
                    uid: format!("uid-{owner}"),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            termination_grace_period_seconds: Some(0),
            containers: vec![Container {
                name: "app".into(),
                image: Some(format!("registry.example/{app}:1")),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// A pod of the `web` ReplicaSet.
fn web(name: &str, node: &str) -> Pod {
    pod(name, node, "web", Some(("ReplicaSet", "web-7d4b9")))
}

fn min_available(name: &str, app: &str, min: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min)),
            selector: Some(LabelSelector {
                match_labels: Some(labels(&[("app", app)])),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

fn pdb_ref(name: &str) -> PdbRef {
    PdbRef {
        namespace: NS.into(),
        name: name.into(),
    }
}

/// Waits until the emulator's disruption controller reports `allowed` for a budget.
async fn wait_allowed(store: &Store, pdb: &str, allowed: i32) -> Result<()> {
    wait_until(Duration::from_secs(10), || {
        let pdb: PodDisruptionBudget = store.get_as(Some(NS), pdb).ok()?;
        let status = pdb.status?;
        (status.disruptions_allowed == allowed
            && status.observed_generation == pdb.metadata.generation)
            .then_some(())
    })
    .await
    .with_context(|| format!("budget {pdb} never allowed {allowed}"))
}

/// Polls a condition every few milliseconds until it holds or `within` passes.
async fn wait_until<T>(within: Duration, mut condition: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("condition not met within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pod_names(store: &Store, node: &str) -> Result<Vec<String>> {
    let pods: Vec<Pod> = store.list_as(
        Some(NS),
        &ListOptions::fields(&format!("spec.nodeName={node}")),
    )?;
    Ok(pods
        .into_iter()
        .filter_map(|pod| pod.metadata.name)
        .collect())
}

fn names(pods: &[PodRef]) -> Vec<&str> {
    pods.iter().map(|pod| pod.name.as_str()).collect()
}

fn within(secs: u64) -> DrainControl {
    DrainControl::new(Instant::now() + Duration::from_secs(secs))
}

async fn drain(
    cluster: &Cluster,
    node: &str,
    spec: &DrainSpec,
    control: DrainControl,
) -> Result<DrainReport> {
    Ok(cluster.drainer.drain(node, spec, control).await?)
}

/// rota has one cordon path, the controller's: the cordon and rota's mark are one write, so an
/// uncordon undoes only rota's own cordons and a human's stays.
#[tokio::test]
async fn cordon_marks_rotas_own_and_uncordon_keeps_a_humans() -> Result<()> {
    let cluster = cluster(&["n1"]).await?;
    cluster.store.create_as(&node("n2", true))?;
    let client = kube::Client::try_from(kube::Config::new(cluster.server.url().parse()?))?;
    let nodes = kube::Api::<Node>::all(client);
    let gate = WriteGate::new(Leadership::unconditional());
    let unschedulable = |name: &str| -> Result<bool> {
        let node: Node = cluster.store.get_as(None, name)?;
        Ok(rota_core::node::is_unschedulable(&node))
    };

    assert_eq!(cordon(&nodes, &gate, "n1").await?, Cordoned::Now);
    assert!(unschedulable("n1")?);
    assert_eq!(cordon(&nodes, &gate, "n1").await?, Cordoned::Earlier);
    assert_eq!(cordon(&nodes, &gate, "n2").await?, Cordoned::BySomeoneElse);

    assert!(uncordon_own(&nodes, &gate, "n1").await?);
    assert!(!unschedulable("n1")?);
    assert!(
        !uncordon_own(&nodes, &gate, "n2").await?,
        "a human's cordon stays"
    );
    assert!(unschedulable("n2")?);

    let missing = cordon(&nodes, &gate, "n9").await;
    assert!(matches!(missing, Err(controller::Error::NodeNotFound(name)) if name == "n9"));
    assert!(!uncordon_own(&nodes, &gate, "n9").await?);

    gate.close();
    assert!(
        cordon(&nodes, &gate, "n1").await.is_err(),
        "a closed write gate cordons nothing"
    );
    assert!(!unschedulable("n1")?);
    Ok(())
}

/// A node with a DaemonSet pod, a mirror pod, an emptyDir pod, a bare pod, a finished bare pod
/// and two Deployment pods under a budget that allows two disruptions.
async fn mixed_node(cluster: &Cluster) -> Result<()> {
    let store = &cluster.store;
    store.create_as(&pod(
        "agent-x1",
        "n1",
        "agent",
        Some(("DaemonSet", "agent")),
    ))?;
    let mut mirror = pod("etcd-n1", "n1", "etcd", None);
    mirror.metadata.annotations = Some(labels(&[("kubernetes.io/config.mirror", "3f2a")]));
    store.create_as(&mirror)?;
    let mut cache = pod("cache-0", "n1", "cache", Some(("ReplicaSet", "cache-5c8")));
    if let Some(spec) = cache.spec.as_mut() {
        spec.volumes = Some(vec![Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]);
    }
    store.create_as(&cache)?;
    store.create_as(&pod("debug", "n1", "debug", None))?;
    let mut done = pod("migrate", "n1", "migrate", None);
    if let Some(status) = done.status.as_mut() {
        status.phase = Some("Succeeded".into());
    }
    store.create_as(&done)?;
    for (name, node) in [
        ("web-1", "n1"),
        ("web-2", "n1"),
        ("web-3", "n2"),
        ("web-4", "n2"),
    ] {
        store.create_as(&web(name, node))?;
    }
    store.create_as(&min_available("web", "web", 2))?;
    wait_allowed(store, "web", 2).await
}

#[tokio::test]
async fn policy_refusals_stop_the_drain_before_any_eviction() -> Result<()> {
    let cluster = cluster(&["n1", "n2"]).await?;
    mixed_node(&cluster).await?;

    let report = drain(&cluster, "n1", &DrainSpec::default(), within(30)).await?;
    let DrainOutcome::Refused { errors } = &report.outcome else {
        bail!("expected a refusal, got {:?}", report.outcome);
    };
    let refused: Vec<(&str, &RefusalReason)> = errors
        .iter()
        .map(|error| (error.pod.name.as_str(), &error.reason))
        .collect();
    assert_eq!(
        refused,
        [
            (
                "cache-0",
                &RefusalReason::LocalStorage {
                    volumes: vec!["scratch".into()]
                }
            ),
            ("debug", &RefusalReason::NoController),
        ]
    );
    assert_eq!(report.stats.evictions_attempted, 0);
    assert!(cluster.store.evictions().is_empty());
    assert!(cluster.store.pod_deletions().is_empty());
    Ok(())
}

#[tokio::test]
async fn drain_evicts_exactly_the_evictable_pods() -> Result<()> {
    let cluster = cluster(&["n1", "n2"]).await?;
    mixed_node(&cluster).await?;
    let spec = DrainSpec {
        force: true,
        delete_empty_dir_data: true,
        ..DrainSpec::default()
    };

    let report = drain(&cluster, "n1", &spec, within(30)).await?;
    let DrainOutcome::Drained { evicted, skipped } = &report.outcome else {
        bail!("expected a drained node, got {:?}", report.outcome);
    };
    assert_eq!(
        names(evicted),
        ["cache-0", "debug", "migrate", "web-1", "web-2"]
    );
    let skipped: Vec<(&str, &SkipReason)> = skipped
        .iter()
        .map(|s| (s.pod.name.as_str(), &s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                "agent-x1",
                &SkipReason::DaemonSet {
                    name: "agent".into()
                }
            ),
            ("etcd-n1", &SkipReason::MirrorPod),
        ]
    );
    assert_eq!(pod_names(&cluster.store, "n1")?, ["agent-x1", "etcd-n1"]);
    assert_eq!(pod_names(&cluster.store, "n2")?, ["web-3", "web-4"]);
    assert!(cluster.store.pdb_violations().is_empty());
    assert_eq!(report.stats.evictions_succeeded, 5);
    assert_eq!(report.stats.evictions_blocked_by_pdb, 0);
    Ok(())
}

#[tokio::test]
async fn budget_allowing_nothing_blocks_and_names_the_budget() -> Result<()> {
    let cluster = cluster(&["n1", "n2"]).await?;
    let store = &cluster.store;
    store.create_as(&web("web-1", "n1"))?;
    store.create_as(&web("web-2", "n2"))?;
    store.create_as(&pod("api-1", "n1", "api", Some(("ReplicaSet", "api-6f1"))))?;
    store.create_as(&min_available("web", "web", 2))?;
    wait_allowed(store, "web", 0).await?;
    let spec = DrainSpec {
        blocked_timeout: Duration::from_secs(1),
        retry_fallback: Duration::from_millis(200),
        ..DrainSpec::default()
    };

    let deadline = Duration::from_secs(60);
    let report = drain(
        &cluster,
        "n1",
        &spec,
        DrainControl::new(Instant::now() + deadline),
    )
    .await?;
    let DrainOutcome::Blocked { by, evicted_so_far } = &report.outcome else {
        bail!("expected a blocked drain, got {:?}", report.outcome);
    };
    assert_eq!(names(evicted_so_far), ["api-1"]);
    assert_eq!(by.len(), 1);
    assert_eq!(by[0].pod.name, "web-1");
    assert_eq!(by[0].pdbs, [pdb_ref("web")]);
    assert_eq!(by[0].reason, BlockReason::DisruptionBudget);
    assert!(
        by[0].message.contains("disruption budget"),
        "{}",
        by[0].message
    );
    assert_eq!(report.outcome.blocking_pdbs(), [pdb_ref("web")]);
    assert!(report.elapsed < deadline / 2, "took {:?}", report.elapsed);
    assert!(report.stats.evictions_blocked_by_pdb >= 1);
    assert_eq!(pod_names(store, "n1")?, ["web-1"]);
    assert!(store.pdb_violations().is_empty());
    Ok(())
}

#[tokio::test]
async fn rising_budget_resumes_the_drain_without_waiting_the_fallback() -> Result<()> {
    let cluster = cluster(&["n1", "n2", "n3"]).await?;
    let store = &cluster.store;
    store.create_as(&web("web-1", "n1"))?;
    store.create_as(&web("web-2", "n2"))?;
    store.create_as(&min_available("web", "web", 2))?;
    wait_allowed(store, "web", 0).await?;
    // A fallback this long would show in the drain's duration, and no second retry fits in it.
    let fallback = Duration::from_secs(30);
    let spec = DrainSpec {
        retry_fallback: fallback,
        blocked_timeout: Duration::from_secs(120),
        ..DrainSpec::default()
    };
    let mut control = within(120);
    let mut progress = control.progress();
    let drainer = cluster.drainer.clone();
    let running = tokio::spawn(async move { drainer.drain("n1", &spec, control).await });

    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.stats.evictions_blocked_by_pdb == 1),
    )
    .await
    .context("the first eviction was never refused")??;
    // The replacement pod becomes Ready elsewhere: the budget now allows one disruption.
    store.create_as(&web("web-3", "n3"))?;

    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .context("drain did not finish")???;
    let DrainOutcome::Drained { evicted, .. } = &report.outcome else {
        bail!("expected a drained node, got {:?}", report.outcome);
    };
    assert_eq!(names(evicted), ["web-1"]);
    assert_eq!(report.stats.evictions_attempted, 2);
    assert_eq!(report.stats.evictions_blocked_by_pdb, 1);
    assert_eq!(report.stats.evictions_succeeded, 1);
    assert!(report.elapsed < fallback / 2, "took {:?}", report.elapsed);
    assert!(store.pdb_violations().is_empty());
    Ok(())
}

#[tokio::test]
async fn two_budgets_on_one_pod_refuse_the_drain() -> Result<()> {
    let cluster = cluster(&["n1", "n2"]).await?;
    let store = &cluster.store;
    store.create_as(&web("web-1", "n1"))?;
    store.create_as(&web("web-2", "n2"))?;
    store.create_as(&min_available("web", "web", 1))?;
    store.create_as(&min_available("web-strict", "web", 1))?;
    wait_allowed(store, "web", 1).await?;
    wait_allowed(store, "web-strict", 1).await?;

    let report = drain(&cluster, "n1", &DrainSpec::default(), within(30)).await?;
    let DrainOutcome::Refused { errors } = &report.outcome else {
        bail!("expected a refusal, got {:?}", report.outcome);
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].pod.name, "web-1");
    assert_eq!(
        errors[0].reason,
        RefusalReason::MultiplePdbs {
            pdbs: vec![pdb_ref("web"), pdb_ref("web-strict")]
        }
    );
    assert!(
        errors[0]
            .to_string()
            .contains("more than one PodDisruptionBudget"),
        "{}",
        errors[0]
    );
    assert!(store.evictions().is_empty());
    Ok(())
}

#[tokio::test]
async fn second_budget_appearing_mid_drain_blocks_with_the_servers_refusal() -> Result<()> {
    let cluster = cluster(&["n1", "n2"]).await?;
    let store = &cluster.store;
    store.create_as(&web("web-1", "n1"))?;
    store.create_as(&web("web-2", "n2"))?;
    store.create_as(&min_available("web", "web", 2))?;
    wait_allowed(store, "web", 0).await?;
    let spec = DrainSpec {
        retry_fallback: Duration::from_millis(100),
        blocked_timeout: Duration::from_secs(60),
        ..DrainSpec::default()
    };
    let mut control = within(60);
    let mut progress = control.progress();
    let drainer = cluster.drainer.clone();
    let running = tokio::spawn(async move { drainer.drain("n1", &spec, control).await });

    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.stats.evictions_blocked_by_pdb >= 1),
    )
    .await
    .context("the first eviction was never refused")??;
    // The plan saw one budget; the API server now sees two and refuses with a 500.
    store.create_as(&min_available("web-strict", "web", 1))?;

    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .context("drain did not finish")???;
    let DrainOutcome::Blocked { by, .. } = &report.outcome else {
        bail!("expected a blocked drain, got {:?}", report.outcome);
    };
    assert_eq!(by.len(), 1);
    assert_eq!(by[0].reason, BlockReason::MultiplePdbs);
    assert_eq!(by[0].pdbs, [pdb_ref("web"), pdb_ref("web-strict")]);
    assert!(
        by[0].message.contains("more than one PodDisruptionBudget"),
        "{}",
        by[0].message
    );
    assert_eq!(report.stats.eviction_errors, 1);
    assert_eq!(pod_names(store, "n1")?, ["web-1"]);
    Ok(())
}

#[tokio::test]
async fn graceful_deletion_is_waited_for_and_pods_bound_meanwhile_are_evicted_too() -> Result<()> {
    let cluster = cluster(&["n1"]).await?;
    let store = &cluster.store;
    let mut slow = pod("slow-1", "n1", "slow", Some(("ReplicaSet", "slow-9a")));
    if let Some(spec) = slow.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(30);
    }
    store.create_as(&slow)?;
    let mut control = within(60);
    let mut progress = control.progress();
    let drainer = cluster.drainer.clone();
    let running =
        tokio::spawn(async move { drainer.drain("n1", &DrainSpec::default(), control).await });

    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| {
            p.pods
                .values()
                .any(|pod| *pod == PodProgress::WaitingForDeletion)
        }),
    )
    .await
    .context("eviction never accepted")??;
    let terminating: Pod = store.get_as(Some(NS), "slow-1")?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert!(
        !running.is_finished(),
        "drain finished before the pod was gone"
    );

    // Meanwhile a pod is bound to the node (a scheduler that had not seen the cordon yet):
    // not in the first plan, but evicted before the drain says the node is empty.
    store.create_as(&web("late-1", "n1"))?;
    // The kubelet stops the containers and finishes the deletion.
    store.delete_as::<Pod>(
        Some(NS),
        "slow-1",
        &DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        },
    )?;
    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .context("drain did not finish")???;
    let DrainOutcome::Drained { evicted, .. } = &report.outcome else {
        bail!("expected a drained node, got {:?}", report.outcome);
    };
    assert_eq!(names(evicted), ["late-1", "slow-1"]);
    assert!(pod_names(store, "n1")?.is_empty());
    Ok(())
}

#[tokio::test]
async fn deadline_reports_remaining_pods_and_blocking_budgets() -> Result<()> {
    let cluster = cluster(&["n1", "n2"]).await?;
    let store = &cluster.store;
    let mut slow = pod("slow-1", "n1", "slow", Some(("ReplicaSet", "slow-9a")));
    if let Some(spec) = slow.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(300);
    }
    store.create_as(&slow)?;
    store.create_as(&web("web-1", "n1"))?;
    store.create_as(&web("web-2", "n2"))?;
    store.create_as(&pod("api-1", "n1", "api", Some(("ReplicaSet", "api-6f1"))))?;
    store.create_as(&min_available("web", "web", 2))?;
    wait_allowed(store, "web", 0).await?;
    let spec = DrainSpec {
        retry_fallback: Duration::from_millis(200),
        ..DrainSpec::default()
    };

    let pod_ref = |name: &str| -> Result<PodRef> { Ok(PodRef::of(&store.get_as(Some(NS), name)?)) };
    let (slow, web_1, api_1) = (pod_ref("slow-1")?, pod_ref("web-1")?, pod_ref("api-1")?);

    let report = drain(&cluster, "n1", &spec, within(3)).await?;
    assert_eq!(
        report.outcome,
        DrainOutcome::TimedOut {
            remaining: vec![slow, web_1],
            blocking_pdbs: vec![pdb_ref("web")],
            evicted_so_far: vec![api_1],
        }
    );
    Ok(())
}

#[tokio::test]
async fn cancellation_stops_a_blocked_drain() -> Result<()> {
    let cluster = cluster(&["n1", "n2"]).await?;
    let store = &cluster.store;
    store.create_as(&web("web-1", "n1"))?;
    store.create_as(&web("web-2", "n2"))?;
    store.create_as(&min_available("web", "web", 2))?;
    wait_allowed(store, "web", 0).await?;
    let mut control = within(120);
    let cancel = control.cancel.clone();
    let mut progress = control.progress();
    let drainer = cluster.drainer.clone();
    let running =
        tokio::spawn(async move { drainer.drain("n1", &DrainSpec::default(), control).await });

    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.stats.evictions_blocked_by_pdb >= 1),
    )
    .await
    .context("the eviction was never refused")??;
    cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .context("cancelled drain did not stop")???;
    let DrainOutcome::Cancelled {
        remaining,
        evicted_so_far,
    } = &report.outcome
    else {
        bail!("expected a cancelled drain, got {:?}", report.outcome);
    };
    assert_eq!(names(remaining), ["web-1"]);
    assert!(evicted_so_far.is_empty());
    Ok(())
}

#[tokio::test]
async fn drain_rides_out_a_flaky_api_server() -> Result<()> {
    let cluster = cluster(&["n1"]).await?;
    let store = &cluster.store;
    for i in 0..8 {
        store.create_as(&pod(
            &format!("api-{i}"),
            "n1",
            "api",
            Some(("ReplicaSet", "api-6f1")),
        ))?;
    }
    // A third of all requests (lists, watches, evictions) fail with 500, 429 or 503.
    cluster.server.faults().set(FaultConfig {
        error_rate: 0.33,
        ..FaultConfig::default()
    });
    let spec = DrainSpec {
        retry_fallback: Duration::from_millis(300),
        ..DrainSpec::default()
    };

    let report = drain(&cluster, "n1", &spec, within(60)).await?;
    cluster.server.faults().clear();
    assert!(report.outcome.is_drained(), "{:?}", report.outcome);
    assert!(pod_names(store, "n1")?.is_empty());
    assert_eq!(report.stats.evictions_succeeded, 8);
    Ok(())
}
