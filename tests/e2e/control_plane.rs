//! End to end: the control-plane quorum guard with the real coordinator and agents on an
//! emulated kubeadm cluster (three control-plane nodes, each publishing its etcd,
//! kube-apiserver, controller-manager and scheduler mirror pods), checked from the emulator's
//! record.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use rota_coordinator::rotactl::Output;
use rota_coordinator::rotactl::status::{self, Filter};
use rota_core::policy::MaintenancePolicy;
use rota_core::scheduler::ControlPlanePod;
use rota_sim::apiserver::{GroupResource, ListOptions};
use rota_sim::demo::Fleet;
use rota_tests::e2e::{
    WAIT, assert_complete, first_unavailable, options, policy, print_timing, rota_settings, run,
    set_paused, start, waiting_reason, workers,
};

fn policies() -> GroupResource {
    GroupResource::new("rota.dev", "maintenancepolicies")
}

/// The label of the pod that holds the sick node's own maintenance back.
const HOLD: &str = "e2e.rota.dev/hold";

/// Whether the static pod `name` in kube-system is Ready.
fn static_pod_ready(fleet: &Fleet, name: &str) -> Option<bool> {
    let pod: Pod = fleet
        .store()
        .list_as::<Pod>(Some("kube-system"), &ListOptions::default())
        .ok()?
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))?;
    Some(
        pod.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
    )
}

/// `rotactl status` as the binary prints it, from the emulator's objects.
fn rotactl_status(fleet: &Fleet) -> String {
    let store = fleet.store();
    let nodes = store.list_as(None, &ListOptions::default()).unwrap();
    let policies: Vec<MaintenancePolicy> = store
        .list(&policies(), None, &ListOptions::default())
        .unwrap()
        .items
        .iter()
        .map(|p| serde_json::from_value((**p).clone()).unwrap())
        .collect();
    let now = jiff::Timestamp::now();
    let view = status::build(&nodes, &policies, now).filtered(&Filter::default());
    let mut out = Vec::new();
    status::print(&mut out, &view, Output::Table, now).unwrap();
    String::from_utf8(out).unwrap()
}

/// An etcd member that is not healthy holds the other control-plane nodes back (workers go on),
/// with the reason in the policy's status and in `rotactl status`; once it is healthy again,
/// the control-plane nodes go one at a time and the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_etcd_member_holds_the_control_plane_until_it_recovers() {
    let mut options = options(9, 21, 3, 1);
    let (_, spec) = rota_settings(&mut options);
    spec.paused = true;
    spec.blockers.pod_selectors = vec![LabelSelector {
        match_labels: Some(BTreeMap::from([(HOLD.to_owned(), "true".to_owned())])),
        ..LabelSelector::default()
    }];
    let fleet = start(options).await;
    let control_plane = fleet.scenario().control_plane_names();
    assert_eq!(control_plane.len(), 3, "{control_plane:?}");
    let sick = control_plane[1].clone();
    let etcd = format!("etcd-{sick}");

    // The kubelets publish and start the static pods.
    fleet
        .wait_for(
            "every control-plane node's static pods Ready",
            WAIT,
            |fleet| {
                let missing: Vec<String> = control_plane
                    .iter()
                    .flat_map(|node| ControlPlanePod::COMPONENTS.map(|c| format!("{c}-{node}")))
                    .filter(|name| static_pod_ready(fleet, name) != Some(true))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not Ready: {missing:?}"))
                }
            },
        )
        .await
        .unwrap();

    // A pod that blocks the sick node's own maintenance, and its etcd member down.
    let store = fleet.store();
    store
        .create_as(&Pod {
            metadata: ObjectMeta {
                name: Some("hold".into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(HOLD.to_owned(), "true".to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(sick.clone()),
                containers: vec![Container {
                    name: "hold".into(),
                    image: Some("registry.local/hold:1".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        })
        .unwrap();
    store
        .modify_status_as::<Pod>(Some("kube-system"), &etcd, |pod| {
            let status = pod.status.get_or_insert_with(Default::default);
            for condition in status.conditions.iter_mut().flatten() {
                if condition.type_ == "Ready" || condition.type_ == "ContainersReady" {
                    condition.status = "False".into();
                    condition.reason = Some("ContainersNotReady".into());
                    condition.last_transition_time = Some(Time(jiff::Timestamp::now()));
                }
            }
        })
        .unwrap();
    set_paused(&fleet, false);

    // Workers are maintained; the healthy control-plane nodes wait for the sick member.
    let workers = workers(&fleet);
    let healthy: Vec<String> = control_plane
        .iter()
        .filter(|n| **n != sick)
        .cloned()
        .collect();
    fleet
        .wait_for(
            "workers done, the control plane waiting on etcd",
            WAIT,
            |fleet| {
                let done = fleet.done_nodes();
                let pending: Vec<&String> = workers.iter().filter(|w| !done.contains(*w)).collect();
                let policy = policy(fleet);
                let quorum = waiting_reason(&policy, "EtcdQuorum").map(|(_, e)| e);
                let unhealthy = waiting_reason(&policy, "ControlPlaneUnhealthy").map(|(_, e)| e);
                let waiting = |examples: &Option<BTreeMap<String, String>>| {
                    healthy
                        .iter()
                        .all(|n| examples.as_ref().is_some_and(|e| e.contains_key(n)))
                };
                if pending.is_empty() && waiting(&quorum) && waiting(&unhealthy) {
                    Ok((quorum, unhealthy))
                } else {
                    Err(format!(
                        "workers not done: {pending:?}; EtcdQuorum {quorum:?}; \
                     ControlPlaneUnhealthy {unhealthy:?}"
                    ))
                }
            },
        )
        .await
        .map(|(quorum, unhealthy)| {
            let quorum = quorum.unwrap();
            let text = &quorum[&healthy[0]];
            assert!(
                text.contains("etcd quorum: at most 1 of 3 members down")
                    && text.contains(&format!("{sick} (etcd pod not Ready)")),
                "{text}"
            );
            let text = &unhealthy.unwrap()[&healthy[0]];
            assert!(text.contains(&format!("{etcd} not Ready")), "{text}");
        })
        .unwrap();
    let first = first_unavailable(&fleet);
    for node in &control_plane {
        assert!(
            !first.contains_key(node),
            "{node} was taken down: {first:?}"
        );
    }
    let shown = rotactl_status(&fleet);
    assert!(
        shown.contains("etcd quorum") || shown.contains("EtcdQuorum"),
        "rotactl status does not say why:\n{shown}"
    );

    // The member recovers and the hold goes: the control plane goes, one node at a time.
    let healed = store.now();
    store
        .modify_status_as::<Pod>(Some("kube-system"), &etcd, |pod| {
            let status = pod.status.get_or_insert_with(Default::default);
            for condition in status.conditions.iter_mut().flatten() {
                if condition.type_ == "Ready" || condition.type_ == "ContainersReady" {
                    condition.status = "True".into();
                    condition.reason = None;
                }
            }
        })
        .unwrap();
    store
        .delete_as::<Pod>(Some("default"), "hold", &Default::default())
        .unwrap();
    let (report, took) = run(&fleet, Duration::from_secs(240), Duration::from_secs(60)).await;
    print_timing("control plane behind a sick etcd member", took, &report);
    println!("{}", report.render());
    assert_complete(&fleet, &report);
    assert_eq!(report.max_control_plane_unavailable_observed, 1);
    let first = first_unavailable(&fleet);
    for node in &control_plane {
        assert!(
            first[node] >= healed,
            "{node} went down before etcd recovered"
        );
    }
    fleet.shutdown().await;
}

/// The default 24-node demo cluster's three control-plane nodes, each with a stacked etcd
/// member: they are maintained one after the other — from the emulator's record, never two
/// unavailable at once, and each one's unavailability ends before the next one's begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_rollout_takes_control_plane_nodes_one_at_a_time() {
    let fleet = start(options(24, 1, 3, 1)).await;
    let (report, took) = run(&fleet, Duration::from_secs(300), Duration::from_secs(60)).await;
    print_timing("default rollout, control plane", took, &report);
    assert_complete(&fleet, &report);
    let control_plane = fleet.scenario().control_plane_names();
    assert_eq!(control_plane.len(), 3);
    assert_eq!(report.max_control_plane_unavailable_observed, 1);
    // Each control-plane node's unavailable intervals, from the emulator's node records.
    let mut intervals: Vec<(jiff::Timestamp, jiff::Timestamp, String)> = Vec::new();
    let mut open: BTreeMap<String, jiff::Timestamp> = BTreeMap::new();
    for record in fleet.audit().nodes {
        if !control_plane.contains(&record.node) {
            continue;
        }
        match (record.unavailable(), open.get(&record.node).copied()) {
            (true, None) => {
                open.insert(record.node.clone(), record.time);
            }
            (false, Some(since)) => {
                open.remove(&record.node);
                intervals.push((since, record.time, record.node.clone()));
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "still unavailable at the end: {open:?}");
    intervals.sort();
    let nodes: std::collections::BTreeSet<&String> = intervals.iter().map(|i| &i.2).collect();
    assert_eq!(nodes.len(), 3, "{intervals:?}");
    for pair in intervals.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} and {} unavailable at once: {intervals:?}",
            pair[0].2,
            pair[1].2
        );
    }
    fleet.shutdown().await;
}
