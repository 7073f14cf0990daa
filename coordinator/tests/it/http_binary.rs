//! The `rota-coordinator` binary against the emulated API server: two replicas elect one
//! leader, the probes and metrics say who leads, agents reach the leader's controller over TLS
//! (bootstrapped CA) through the TokenReview-checked gRPC edge, and SIGTERM hands leadership
//! over at once and exits cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use nix::sys::signal::Signal;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::apiserver::GroupResource;
use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::binary_support::{
    Binary, WITHIN, agent_channel, coordinator_store, emulator, free_addr, start_binary, until,
};

const NS: &str = "kube-system";

fn start(kubeconfig: &std::path::Path, name: &str) -> Binary {
    start_binary(kubeconfig, name, &[("ROTA_NAMESPACE", NS)])
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get_opt("rota-coordinator")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn two_replicas_elect_serve_and_hand_over_on_sigterm() {
    let store = coordinator_store(NS, &["n1"]);
    store
        .create(
            &GroupResource::core("pods"),
            Some(NS),
            json!({"metadata": {"name": "agent-n1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "rota-agent", "uid": "ds-uid", "controller": true}]}, "spec": {"nodeName": "n1", "serviceAccountName": "rota-agent", "containers": [{"name": "agent", "image": "rota-agent"}]}}),
        )
        .unwrap();
    let token = store
        .issue_service_account_token(NS, "agent-n1", "rota", Duration::from_secs(3600))
        .unwrap();
    let emulator = emulator(store).await;
    let kubeconfig = &emulator.kubeconfig;
    let client =
        kube::Client::try_from(kube::Config::new(emulator.server.url().parse().unwrap())).unwrap();

    let mut first = start(kubeconfig, "coord-0");
    until(first.http, "/healthz", 200, "ok").await;
    until(first.http, "/metrics", 200, "\nrota_leader 1\n").await;
    assert_eq!(holder(&client).await.as_deref(), Some("coord-0"));
    // Leading, with the controller's caches synced: ready for agents.
    until(first.http, "/readyz", 200, "ready").await;

    let mut second = start(kubeconfig, "coord-1");
    until(second.http, "/healthz", 200, "ok").await;
    until(
        second.http,
        "/readyz",
        503,
        "not the leader (leader: coord-0)",
    )
    .await;
    until(second.http, "/metrics", 200, "\nrota_leader 0\n").await;

    // Agents reach the leader over TLS with the CA the coordinator bootstrapped and published.
    let channel = agent_channel(&client, NS, first.grpc).await;
    let mut agent = AgentClient::new(channel);
    let facts = |token: Option<&str>| {
        let mut request = tonic::Request::new(pb::ReportFactsRequest {
            node: "n1".into(),
            facts: Some(pb::NodeFacts {
                boot_id: "boot-1".into(),
                ..pb::NodeFacts::default()
            }),
        });
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
            );
        }
        request
    };
    let anonymous = agent.report_facts(facts(None)).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    // The controller's term opens the gate shortly after leadership is acquired.
    let deadline = Instant::now() + WITHIN;
    loop {
        match agent.report_facts(facts(Some(&token))).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the agent's call failed: {status:?}"),
        }
    }
    // The standby keeps agents out.
    let standby = agent_channel(&client, NS, second.grpc).await;
    let refused = AgentClient::new(standby)
        .report_facts(facts(Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    drop(agent);
    until(
        first.http,
        "/metrics",
        200,
        "rota_grpc_requests_total{method=\"ReportFacts\",code=\"Ok\"} 1",
    )
    .await;

    // SIGTERM: the leader releases its lease and exits 0; the standby takes over well within
    // one lease duration.
    let sent = Instant::now();
    first.signal(Signal::SIGTERM);
    assert!(first.exit().await.success());
    until(second.http, "/metrics", 200, "\nrota_leader 1\n").await;
    let handover = sent.elapsed();
    println!("handover after SIGTERM: {handover:?}");
    assert!(handover < Duration::from_secs(2), "{handover:?}");
    assert_eq!(holder(&client).await.as_deref(), Some("coord-1"));

    second.signal(Signal::SIGINT);
    assert!(second.exit().await.success());
    assert_eq!(holder(&client).await, None);
}

#[tokio::test]
async fn bad_configuration_fails_fast() {
    let output = Command::new(env!("CARGO_BIN_EXE_rota-coordinator"))
        .env("ROTA_POD_NAME", "coord-0")
        .env("ROTA_LEASE_DURATION", "1s")
        .env("ROTA_RENEW_DEADLINE", "2s")
        .env("ROTA_KUBECONFIG", "/nonexistent/kubeconfig")
        .env("ROTA_HTTP_ADDR", free_addr().to_string())
        .env("ROTA_GRPC_ADDR", free_addr().to_string())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kubeconfig"), "{stderr}");
}
