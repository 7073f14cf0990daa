//! The slot ledger lives in ledger objects of the coordinator's namespace; the `rota.dev/`
//! annotations on Nodes only mirror it. Anyone who may patch a Node (its own kubelet) can write
//! those annotations: after a restart, a forged or replayed slot annotation is not adopted, is
//! reported (Event and metric) and repaired, and the fencing counter never moves because of it.
//! Genuine state survives restarts, and a cluster left by a version that kept the ledger only in
//! annotations migrates once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rota_core::agent_api::AgentCore;
use rota_core::clock::OffsetClock;
use rota_core::model::{FencingToken, Operation};
use rota_core::slots::NodeState;
use rota_core::slots::persist::{LAST_ANNOTATION, SLOT_ANNOTATION};

use crate::controller_support::{Cluster, Running, SYSTEM_NS, settings, spec, wait_until};

const WITHIN: Duration = Duration::from_secs(20);

async fn start(cluster: &Cluster) -> Result<Running> {
    Running::start(cluster, settings(), Arc::new(OffsetClock::default())).await
}

/// A granted slot as `kubectl annotate` would write it.
fn slot_annotation(token: u64) -> String {
    format!(
        r#"{{"token":{token},"phase":"granted","operation":{{"kind":"reboot"}},"origin":"agent","requestedAt":"2024-01-01T00:00:00Z","admittedAt":"2024-01-01T00:00:00Z","since":"2024-01-01T00:00:00Z","grantedAt":"2024-01-01T00:00:00Z","leaseExpiresAt":"2099-01-01T00:00:00Z","cordonedByRota":false}}"#
    )
}

/// The node's ledger object in the coordinator's namespace.
fn ledger_object(cluster: &Cluster, node: &str) -> Option<ConfigMap> {
    cluster
        .store
        .get_as(Some(SYSTEM_NS), &format!("rota-slot-{node}"))
        .ok()
}

/// The node's view as the coordinator serves it now (once it serves).
async fn view_now(running: &Running, node: &str) -> Result<rota_core::slots::SlotView> {
    running.wait_view(node, WITHIN, |_| true).await
}

/// `rota_ledger_mismatches_total{reason}` as exported.
fn mismatches(running: &Running, reason: &str) -> Result<u64> {
    let text = running.metrics.encode()?;
    let prefix = format!("rota_ledger_mismatches_total{{reason=\"{reason}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn mismatch_events(cluster: &Cluster, node: &str) -> usize {
    cluster
        .events_about(node)
        .iter()
        .filter(|(reason, _)| reason == "LedgerMismatch")
        .count()
}

/// Workers `nodes` under one policy, one node at a time.
async fn cluster_with(nodes: &[&str]) -> Result<Cluster> {
    let cluster = Cluster::start(true).await?;
    for node in nodes {
        cluster.add_node(node, &[("pool", "workers")])?;
    }
    cluster.create_policy("workers", spec("workers"))?;
    Ok(cluster)
}

#[tokio::test]
async fn a_forged_slot_annotation_is_not_adopted_after_a_restart() -> Result<()> {
    let cluster = cluster_with(&["idle"]).await?;
    let first = start(&cluster).await?;
    first.report("idle", "idle-boot-1").await?;
    first.stop().await?;

    // Someone with Node patch rights forges a granted slot with token 777.
    cluster.annotate("idle", SLOT_ANNOTATION, Some(&slot_annotation(777)))?;
    let second = start(&cluster).await?;
    second.report("idle", "idle-boot-1").await?;
    let view = view_now(&second, "idle").await?;
    assert_eq!(view.state, NodeState::Idle, "{view:?}");
    assert_eq!(view.token, None);
    assert!(
        second
            .agents
            .renew("idle", FencingToken(777))
            .await
            .is_err(),
        "the forged token is no token"
    );

    let note = cluster.wait_event("idle", "LedgerMismatch", WITHIN).await?;
    assert!(note.contains("777"), "{note}");
    assert_eq!(mismatches(&second, "differs")?, 1);
    wait_until("the forged annotation is removed", WITHIN, || {
        let annotations = cluster.annotations("idle").ok()?;
        (!annotations.contains_key(SLOT_ANNOTATION)).then_some(())
    })
    .await?;
    assert!(
        cluster.counter().is_none_or(|c| c < 777),
        "the counter never follows an annotation"
    );

    // The first real admission gets the first token the counter issues.
    second.request("idle", Operation::Reboot).await?;
    let token = second.wait_granted("idle", WITHIN).await?;
    assert_eq!(token, FencingToken(1));
    assert_eq!(cluster.counter(), Some(1));
    second.stop().await
}

#[tokio::test]
async fn a_replayed_genuine_slot_annotation_is_not_adopted_after_a_restart() -> Result<()> {
    let cluster = cluster_with(&["a"]).await?;
    let first = start(&cluster).await?;
    first.report("a", "a-boot-1").await?;
    first.request("a", Operation::Reboot).await?;
    let token = first.wait_granted("a", WITHIN).await?;
    let genuine = wait_until("the granted slot's mirror", WITHIN, || {
        let annotations = cluster.annotations("a").ok()?;
        (cluster.slot("a")? == (token.0, "granted".to_owned()))
            .then(|| annotations.get(SLOT_ANNOTATION).cloned())
            .flatten()
    })
    .await?;
    cluster.set_boot_id("a", "a-boot-2")?;
    first.complete("a", token, true, Some("a-boot-2")).await?;
    first
        .wait_view("a", WITHIN, |v| v.state == NodeState::Done)
        .await?;
    first.stop().await?;
    let last = cluster
        .annotations("a")?
        .get(LAST_ANNOTATION)
        .cloned()
        .context("the outcome is mirrored")?;

    // The node's earlier, genuine granted slot is written back.
    cluster.annotate("a", SLOT_ANNOTATION, Some(&genuine))?;
    let second = start(&cluster).await?;
    second.report("a", "a-boot-2").await?;
    let view = view_now(&second, "a").await?;
    assert_eq!(view.state, NodeState::Done, "{view:?}");
    assert!(
        second.agents.renew("a", token).await.is_err(),
        "the replayed slot is not held"
    );
    cluster.wait_event("a", "LedgerMismatch", WITHIN).await?;
    assert_eq!(mismatches(&second, "differs")?, 1);
    wait_until("the mirror is repaired", WITHIN, || {
        let annotations = cluster.annotations("a").ok()?;
        (!annotations.contains_key(SLOT_ANNOTATION)
            && annotations.get(LAST_ANNOTATION) == Some(&last))
        .then_some(())
    })
    .await?;

    second.request("a", Operation::Reboot).await?;
    let next = second.wait_granted("a", WITHIN).await?;
    assert_eq!(next, FencingToken(token.0 + 1));
    second.stop().await
}

#[tokio::test]
async fn genuine_state_survives_restarts_and_tokens_continue() -> Result<()> {
    let cluster = cluster_with(&["a", "b", "c"]).await?;
    let first = start(&cluster).await?;
    first.report("a", "a-boot-1").await?;
    first.request("a", Operation::Reboot).await?;
    let token = first.wait_granted("a", WITHIN).await?;
    first.stop().await?;

    // The truth is in the coordinator's namespace, labelled, naming its node.
    let object = ledger_object(&cluster, "a").context("a's ledger object")?;
    let labels = object.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("rota")
    );
    let data = object.data.clone().unwrap_or_default();
    assert_eq!(data.get("node").map(String::as_str), Some("a"));
    assert_eq!(
        data.get("slot"),
        cluster.annotations("a")?.get(SLOT_ANNOTATION),
        "the annotation mirrors the ledger object"
    );
    assert!(
        ledger_object(&cluster, "b").is_none(),
        "no state, no object"
    );

    let second = start(&cluster).await?;
    second.report("a", "a-boot-1").await?;
    let view = second
        .wait_view("a", WITHIN, |v| v.state == NodeState::Granted)
        .await?;
    assert_eq!(view.token, Some(token));
    second.agents.renew("a", token).await?;
    cluster.set_boot_id("a", "a-boot-2")?;
    second.complete("a", token, true, Some("a-boot-2")).await?;
    second
        .wait_view("a", WITHIN, |v| v.state == NodeState::Done)
        .await?;
    // Events are recorded in order: none about a mismatch came before this one.
    cluster
        .wait_event("a", "MaintenanceSucceeded", WITHIN)
        .await?;
    assert_eq!(mismatch_events(&cluster, "a"), 0);
    assert!(
        !second
            .metrics
            .encode()?
            .contains("rota_ledger_mismatches_total{")
    );

    second.report("b", "b-boot-1").await?;
    second.request("b", Operation::Reboot).await?;
    assert_eq!(
        second.wait_granted("b", WITHIN).await?,
        FencingToken(token.0 + 1)
    );
    second.report("c", "c-boot-1").await?;
    second.request("c", Operation::Reboot).await?;
    wait_until("c's queued request is persisted", WITHIN, || {
        ledger_object(&cluster, "c").map(|_| ())
    })
    .await?;
    second.stop().await?;

    // A Node deleted while no coordinator leads leaves its ledger object behind: the next
    // load deletes it, so that a new Node of that name starts clean. One deleted while the
    // coordinator runs takes its ledger object with it at once.
    delete_node(&cluster, "c")?;
    let third = start(&cluster).await?;
    third.report("a", "a-boot-2").await?;
    wait_until("c's ledger object is deleted", WITHIN, || {
        ledger_object(&cluster, "c").is_none().then_some(())
    })
    .await?;
    assert!(ledger_object(&cluster, "b").is_some());
    delete_node(&cluster, "b")?;
    wait_until("b's ledger object is deleted", WITHIN, || {
        ledger_object(&cluster, "b").is_none().then_some(())
    })
    .await?;
    assert!(ledger_object(&cluster, "a").is_some());
    third.stop().await
}

fn delete_node(cluster: &Cluster, node: &str) -> Result<()> {
    cluster
        .store
        .delete_as::<k8s_openapi::api::core::v1::Node>(
            None,
            node,
            &rota_sim::apiserver::DeleteOptions::default(),
        )?;
    Ok(())
}

#[tokio::test]
async fn a_cluster_left_by_the_annotation_ledger_migrates_once() -> Result<()> {
    let cluster = cluster_with(&["a", "b", "c"]).await?;
    // What the previous version left: a counter without the ledger marker, slots in
    // annotations only. a's slot is one the counter issued; b's names a token it never issued.
    cluster.store.create_as(&ConfigMap {
        metadata: ObjectMeta {
            name: Some("rota-fencing".into()),
            namespace: Some(SYSTEM_NS.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("lastToken".to_owned(), "5".to_owned())])),
        ..ConfigMap::default()
    })?;
    cluster.annotate("a", SLOT_ANNOTATION, Some(&slot_annotation(4)))?;
    cluster.annotate("b", SLOT_ANNOTATION, Some(&slot_annotation(9)))?;

    let first = start(&cluster).await?;
    first.report("a", "a-boot-1").await?;
    first.report("b", "b-boot-1").await?;
    let a = view_now(&first, "a").await?;
    assert_eq!(
        (a.state, a.token),
        (NodeState::Granted, Some(FencingToken(4)))
    );
    first.agents.renew("a", FencingToken(4)).await?;
    assert_eq!(view_now(&first, "b").await?.state, NodeState::Idle);
    let note = cluster.wait_event("b", "LedgerMismatch", WITHIN).await?;
    assert!(note.contains("never issued"), "{note}");
    assert_eq!(mismatches(&first, "not_issued")?, 1);
    wait_until("b's annotation is removed", WITHIN, || {
        (!cluster.annotations("b").ok()?.contains_key(SLOT_ANNOTATION)).then_some(())
    })
    .await?;
    assert!(ledger_object(&cluster, "a").is_some(), "the adopted slot");
    let counter: ConfigMap = cluster.store.get_as(Some(SYSTEM_NS), "rota-fencing")?;
    let data = counter.data.unwrap_or_default();
    assert_eq!(data.get("lastToken").map(String::as_str), Some("5"));
    assert_eq!(data.get("ledger").map(String::as_str), Some("objects"));
    first.stop().await?;

    // Migrated once: even a token the counter did issue is not adopted from an annotation now.
    cluster.annotate("b", SLOT_ANNOTATION, Some(&slot_annotation(3)))?;
    let second = start(&cluster).await?;
    second.report("b", "b-boot-1").await?;
    assert_eq!(view_now(&second, "b").await?.state, NodeState::Idle);
    wait_until("a second mismatch on b", WITHIN, || {
        (mismatch_events(&cluster, "b") >= 2).then_some(())
    })
    .await?;
    assert_eq!(mismatches(&second, "differs")?, 1);
    let a = view_now(&second, "a").await?;
    assert_eq!(a.token, Some(FencingToken(4)), "the migrated slot is kept");
    second.report("c", "c-boot-1").await?;
    second
        .agents
        .release(
            "a",
            rota_core::slots::Release::Holder(FencingToken(4)),
            "done".into(),
        )
        .await?;
    second.request("c", Operation::Reboot).await?;
    assert_eq!(second.wait_granted("c", WITHIN).await?, FencingToken(6));
    second.stop().await
}

#[tokio::test]
async fn another_writer_of_a_ledger_object_makes_the_leader_reload() -> Result<()> {
    let cluster = cluster_with(&["a"]).await?;
    let running = start(&cluster).await?;
    running.report("a", "a-boot-1").await?;
    running.request("a", Operation::Reboot).await?;
    let token = running.wait_granted("a", WITHIN).await?;
    running.agents.renew("a", token).await?;

    // Someone else writes a's ledger object (another coordinator that believes it leads).
    cluster
        .store
        .modify_as::<ConfigMap>(Some(SYSTEM_NS), "rota-slot-a", |cm| {
            cm.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert("touched".into(), "yes".into());
        })?;
    let refused = running.agents.renew("a", token).await;
    assert!(
        matches!(
            refused,
            Err(rota_core::slots::Error::Store(
                rota_core::slots::StoreError::Conflict { .. }
            ))
        ),
        "{refused:?}"
    );
    // The term ends, the ledger is read again, and the slot is served from what it holds.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while let Err(error) = running.agents.renew("a", token).await {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "renewals still refused after the conflict: {error}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = view_now(&running, "a").await?;
    assert_eq!((view.state, view.token), (NodeState::Granted, Some(token)));
    running.stop().await
}

/// The mirror is repaired while the coordinator runs, not only at its next start: a forged slot
/// on an idle node is removed, and a granted slot's mirror that someone deleted (or a patch
/// that failed, or a Node registered again without its annotations) is written back; each with
/// a `LedgerMismatch` Event.
#[tokio::test]
async fn a_drifted_mirror_is_repaired_while_running() -> Result<()> {
    let cluster = cluster_with(&["idle", "busy"]).await?;
    let running = start(&cluster).await?;
    running.report("idle", "idle-boot-1").await?;
    running.report("busy", "busy-boot-1").await?;
    running.request("busy", Operation::Reboot).await?;
    let token = running.wait_granted("busy", WITHIN).await?;
    let genuine = wait_until("the granted slot's mirror", WITHIN, || {
        cluster
            .annotations("busy")
            .ok()?
            .get(SLOT_ANNOTATION)
            .cloned()
    })
    .await?;

    cluster.annotate("idle", SLOT_ANNOTATION, Some(&slot_annotation(777)))?;
    cluster.annotate("busy", SLOT_ANNOTATION, None)?;
    wait_until("the forged slot removed", WITHIN, || {
        let annotations = cluster.annotations("idle").ok()?;
        (!annotations.contains_key(SLOT_ANNOTATION)).then_some(())
    })
    .await?;
    wait_until("the granted slot's mirror written back", WITHIN, || {
        let annotations = cluster.annotations("busy").ok()?;
        (annotations.get(SLOT_ANNOTATION) == Some(&genuine)).then_some(())
    })
    .await?;
    cluster.wait_event("idle", "LedgerMismatch", WITHIN).await?;
    cluster.wait_event("busy", "LedgerMismatch", WITHIN).await?;
    assert_eq!(mismatches(&running, "differs")?, 2);
    let view = view_now(&running, "busy").await?;
    assert_eq!(view.token, Some(token), "{view:?}");
    assert!(cluster.counter().is_none_or(|c| c < 777));
    running.stop().await
}
