//! The controller's Kubernetes upgrade rollout against the emulated API server: the rollout
//! queues every node's next step (control plane first, the first control-plane node applies),
//! a stacked etcd member waits for a fresh verified snapshot from its agent, the phase is kept
//! in the policy's status, and a failed pre-flight holds the whole pool until a pause and resume.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Node, Pod};
use rota_core::clock::SystemClock;
use rota_core::model::{EtcdFacts, EtcdMember, EtcdSnapshot, KubeadmStep, NodeFacts, Operation};
use rota_core::slots::NodeState;
use serde_json::json;

use crate::controller_support::{Cluster, Running, settings, wait_until};

const WITHIN: Duration = Duration::from_secs(20);

/// A kubeadm node of pool `all` at `version`; control-plane nodes with their static
/// kube-apiserver and etcd mirror pods.
fn kubeadm_node(cluster: &Cluster, name: &str, control_plane: bool, version: &str) -> Result<()> {
    let mut labels = vec![("pool", "all")];
    if control_plane {
        labels.push(("node-role.kubernetes.io/control-plane", ""));
    }
    cluster.add_node(name, &labels)?;
    cluster.store.modify_status_as::<Node>(None, name, |n| {
        if let Some(info) = n.status.as_mut().and_then(|s| s.node_info.as_mut()) {
            info.kubelet_version = format!("v{version}");
        }
    })?;
    if control_plane {
        for (component, image) in [
            (
                "kube-apiserver",
                format!("registry.k8s.io/kube-apiserver:v{version}"),
            ),
            ("etcd", "registry.k8s.io/etcd:3.5.15-0".to_owned()),
        ] {
            static_pod(
                cluster,
                &format!("{component}-{name}"),
                name,
                component,
                &image,
                None,
            )?;
        }
    }
    Ok(())
}

fn static_pod(
    cluster: &Cluster,
    pod: &str,
    node: &str,
    component: &str,
    image: &str,
    waiting: Option<&str>,
) -> Result<()> {
    let mut status =
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    if let Some(reason) = waiting {
        status = json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": component, "image": image, "imageID": "", "ready": false,
                "restartCount": 7, "state": {"waiting": {"reason": reason}}}],
        });
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod, "namespace": "kube-system",
            "labels": {"component": component, "tier": "control-plane"},
            "annotations": {"kubernetes.io/config.mirror": "0123", "kubernetes.io/config.source": "file"}},
        "spec": {"nodeName": node, "containers": [{"name": component, "image": image}]},
        "status": status,
    }))?;
    cluster.store.create_as(&pod)?;
    Ok(())
}

async fn cluster() -> Result<Cluster> {
    let cluster = Cluster::start(false).await?;
    kubeadm_node(&cluster, "cp-2", true, "1.30.9")?;
    kubeadm_node(&cluster, "cp-1", true, "1.30.9")?;
    kubeadm_node(&cluster, "w-1", false, "1.30.9")?;
    cluster.create_policy(
        "all",
        serde_json::from_value(json!({
            "nodeSelector": {"matchLabels": {"pool": "all"}},
            "maxUnavailable": 2,
            "maxFailures": 0,
            "controlPlane": {"allowEtcdQuorumLoss": true},
            "upgrade": {"kubernetesVersion": "1.32.4"},
        }))?,
    )?;
    Ok(cluster)
}

fn phase(cluster: &Cluster) -> Option<(String, String)> {
    let status = cluster.policy("all").ok()?.status?.kubernetes_upgrade?;
    Some((status.phase, status.message))
}

fn facts(boot: &str, etcd: EtcdFacts) -> NodeFacts {
    NodeFacts {
        boot_id: boot.into(),
        kubelet_version: "1.30.9".into(),
        etcd,
        ..NodeFacts::default()
    }
}

#[tokio::test]
async fn the_rollout_queues_the_control_plane_first_and_waits_for_a_fresh_etcd_snapshot()
-> Result<()> {
    let cluster = cluster().await?;
    let coordinator = Running::start(&cluster, settings(), Arc::new(SystemClock)).await?;
    let stacked = EtcdFacts {
        member: EtcdMember::Stacked,
        ..EtcdFacts::default()
    };
    coordinator
        .report_facts("cp-1", facts("cp-1-boot-1", stacked.clone()))
        .await?;
    coordinator
        .report_facts("cp-2", facts("cp-2-boot-1", stacked.clone()))
        .await?;
    coordinator.report("w-1", "w-1-boot-1").await?;

    let step = |version: &str, kubeadm| Operation::KubernetesUpgrade {
        version: version.into(),
        kubeadm,
    };
    let queued = coordinator
        .wait_view("cp-1", WITHIN, |v| {
            v.state == NodeState::Queued && !v.waiting_reasons.is_empty()
        })
        .await?;
    assert_eq!(queued.operation, Some(step("1.31", KubeadmStep::Apply)));
    assert!(
        queued
            .waiting_reasons
            .iter()
            .any(|r| r.contains("etcd snapshot")),
        "{:?}",
        queued.waiting_reasons
    );
    let other = coordinator
        .wait_view("cp-2", WITHIN, |v| {
            v.state == NodeState::Queued && !v.waiting_reasons.is_empty()
        })
        .await?;
    assert_eq!(other.operation, Some(step("1.31", KubeadmStep::Node)));
    assert!(
        other
            .waiting_reasons
            .iter()
            .any(|r| r.contains("kubeadm upgrade apply v1.31.0")),
        "{:?}",
        other.waiting_reasons
    );
    let worker = coordinator
        .wait_view("w-1", WITHIN, |v| {
            v.state == NodeState::Queued && !v.waiting_reasons.is_empty()
        })
        .await?;
    assert_eq!(worker.operation, Some(step("1.31", KubeadmStep::Node)));
    assert!(
        worker
            .waiting_reasons
            .iter()
            .any(|r| r.contains("control-plane nodes first")),
        "{:?}",
        worker.waiting_reasons
    );
    let (phase_now, message) =
        wait_until("the rollout's phase", WITHIN, || phase(&cluster)).await?;
    assert_eq!(phase_now, "ControlPlane", "{message}");
    cluster
        .wait_event("all", "KubernetesUpgradePhase", WITHIN)
        .await?;

    // An agent's package upgrade does not replace the rollout's request.
    let refused = coordinator
        .request(
            "w-1",
            Operation::PackageUpgrade {
                security_only: true,
                reboot: rota_core::model::UpgradeReboot::IfRequired,
                packages: Vec::new(),
            },
        )
        .await;
    let refused = format!("{:?}", refused.expect_err("refused"));
    assert!(refused.contains("Kubernetes upgrade rollout"), "{refused}");

    // A snapshot older than etcd.maxSnapshotAge (1h) does not count; a fresh one does.
    let snapshot = |age_minutes: i64| EtcdFacts {
        member: EtcdMember::Stacked,
        snapshot: Some(EtcdSnapshot {
            path: "/var/lib/rota/etcd-snapshots/etcd-snapshot-1.db".into(),
            size_bytes: 4096,
            revision: 42,
            hash: 7,
            total_keys: 12,
            taken_at: jiff::Timestamp::now() - jiff::SignedDuration::from_mins(age_minutes),
        }),
        snapshot_error: None,
    };
    coordinator
        .report_facts("cp-1", facts("cp-1-boot-1", snapshot(90)))
        .await?;
    let stale = coordinator
        .wait_view("cp-1", WITHIN, |v| {
            v.waiting_reasons
                .iter()
                .any(|r| r.contains("older than etcd.maxSnapshotAge"))
        })
        .await?;
    assert_eq!(stale.state, NodeState::Queued);
    coordinator
        .report_facts("cp-1", facts("cp-1-boot-1", snapshot(1)))
        .await?;
    let granted = coordinator.wait_granted("cp-1", WITHIN).await?;
    assert!(granted.0 > 0);
    let cp2 = coordinator.wait_view("cp-2", WITHIN, |_| true).await?;
    assert_eq!(
        cp2.state,
        NodeState::Queued,
        "one control-plane node at a time"
    );
    coordinator.stop().await
}

#[tokio::test]
async fn a_failed_preflight_holds_the_pool_until_it_is_paused_and_resumed() -> Result<()> {
    let cluster = cluster().await?;
    static_pod(
        &cluster,
        "coredns-5d78c9869d-x2x4p",
        "w-1",
        "coredns",
        "registry.k8s.io/coredns/coredns:v1.11.1",
        Some("CrashLoopBackOff"),
    )?;
    let coordinator = Running::start(&cluster, settings(), Arc::new(SystemClock)).await?;
    for node in ["cp-1", "cp-2", "w-1"] {
        coordinator.report(node, &format!("{node}-boot-1")).await?;
    }
    let (phase_now, message) = wait_until("a failed pre-flight", WITHIN, || {
        phase(&cluster).filter(|(p, _)| p == "PreflightFailed")
    })
    .await?;
    assert!(
        message.contains("kube-system/coredns-5d78c9869d-x2x4p is in CrashLoopBackOff"),
        "{phase_now}: {message}"
    );
    cluster
        .wait_event("all", "KubernetesUpgradeStopped", WITHIN)
        .await?;
    // The pool is held: no rollout request, and an agent's request waits with the reason.
    coordinator.request("w-1", Operation::Reboot).await?;
    let held = coordinator
        .wait_view("w-1", WITHIN, |v| !v.waiting_reasons.is_empty())
        .await?;
    assert_eq!(held.operation, Some(Operation::Reboot));
    assert!(
        held.waiting_reasons[0].starts_with("Kubernetes upgrade held: pre-flight failed"),
        "{:?}",
        held.waiting_reasons
    );
    let cp1 = coordinator.wait_view("cp-1", WITHIN, |_| true).await?;
    assert_eq!(cp1.state, NodeState::Idle);

    // Fixed: still held, until a human pauses and resumes.
    cluster.store.delete_as::<Pod>(
        Some("kube-system"),
        "coredns-5d78c9869d-x2x4p",
        // Gone at once: no kubelet runs here to finish a graceful deletion.
        &rota_sim::apiserver::DeleteOptions {
            grace_period_seconds: Some(0),
            ..rota_sim::apiserver::DeleteOptions::default()
        },
    )?;
    cluster.update_policy("all", |spec| spec.paused = true)?;
    wait_until("the pause seen", WITHIN, || {
        cluster
            .condition("all", "Paused")
            .filter(|(status, _)| status == "True")
    })
    .await?;
    assert_eq!(
        phase(&cluster).map(|p| p.0).as_deref(),
        Some("PreflightFailed")
    );
    cluster.update_policy("all", |spec| spec.paused = false)?;
    wait_until("the rollout past its pre-flight", WITHIN, || {
        phase(&cluster).filter(|(p, _)| p == "ControlPlane")
    })
    .await?;
    let cp1 = coordinator
        .wait_view("cp-1", WITHIN, |v| v.state != NodeState::Idle)
        .await?;
    assert_eq!(
        cp1.operation,
        Some(Operation::KubernetesUpgrade {
            version: "1.31".into(),
            kubeadm: KubeadmStep::Apply
        })
    );
    coordinator.stop().await
}

/// The pre-flight asks the API server's `/readyz` already on a term's first pass, when the
/// policy's target was set before this coordinator started (the pass once decided from the last
/// pass's policies, and a term's first pass has none).
#[tokio::test]
async fn an_api_server_that_is_not_ready_fails_the_preflight() -> Result<()> {
    let cluster = cluster().await?;
    let not_ready = |check: Option<&str>| {
        cluster
            .server
            .faults()
            .set(rota_sim::apiserver::FaultConfig {
                not_ready: check.map(str::to_owned),
                ..rota_sim::apiserver::FaultConfig::default()
            });
    };
    not_ready(Some("etcd"));
    let coordinator = Running::start(&cluster, settings(), Arc::new(SystemClock)).await?;
    for node in ["cp-1", "cp-2", "w-1"] {
        coordinator.report(node, &format!("{node}-boot-1")).await?;
    }
    let (_, message) = wait_until("a failed pre-flight", WITHIN, || {
        phase(&cluster).filter(|(p, _)| p == "PreflightFailed")
    })
    .await?;
    assert!(
        message.contains("the API server is not ready (/readyz)") && message.contains("etcd"),
        "{message}"
    );
    let cp1 = coordinator.wait_view("cp-1", WITHIN, |_| true).await?;
    assert_eq!(cp1.state, NodeState::Idle);

    // Ready again, paused and resumed: the rollout starts.
    not_ready(None);
    cluster.update_policy("all", |spec| spec.paused = true)?;
    wait_until("the pause seen", WITHIN, || {
        cluster
            .condition("all", "Paused")
            .filter(|(status, _)| status == "True")
    })
    .await?;
    cluster.update_policy("all", |spec| spec.paused = false)?;
    wait_until("the rollout past its pre-flight", WITHIN, || {
        phase(&cluster).filter(|(p, _)| p == "ControlPlane")
    })
    .await?;
    coordinator.stop().await
}
