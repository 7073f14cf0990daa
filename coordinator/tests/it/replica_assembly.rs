//! What the demo and the end-to-end suites run is the coordinator that ships: two replicas of
//! the simulator's demo (built by `rota_coordinator::replica` from the flags a Deployment
//! would pass) and two `rota-coordinator` processes pass one and the same check — `/healthz`,
//! `/readyz` ready only on the leader, `/metrics` with `rota_leader` and the metered gRPC
//! calls, the `rota.v1.Agent` service over TLS with the bootstrapped CA, and the leader
//! handing its Lease over when its node is cordoned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use rota_sim::cluster::Scenario;
use rota_sim::demo::{AgentOptions, CoordinatorOptions, Fleet, FleetOptions, Scheduler};
use serde_json::json;
use tonic::Code;

use crate::binary_support::{
    agent_channel, coordinator_store, emulator, eventually, get, start_binary, until,
};

/// The coordinators' namespace, the demo's and the binary's default.
const NS: &str = "rota-system";
const LEASE: &str = "rota-coordinator";

/// One coordinator replica as the check sees it from outside.
struct Member {
    identity: String,
    node: String,
    http: SocketAddr,
    grpc: SocketAddr,
}

fn client(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

/// Waits until one of `members` holds the Lease; its index.
async fn leader_of(client: &kube::Client, members: &[Member]) -> usize {
    eventually("no leader", || async {
        let held = holder(client).await;
        members
            .iter()
            .position(|m| Some(&m.identity) == held.as_ref())
            .ok_or_else(|| format!("the Lease says {held:?}"))
    })
    .await
}

/// Asks the agents' service at `grpc`, over TLS as an agent reaches it, to take facts
/// without a token: UNAUTHENTICATED shows the service and its authentication.
async fn call_without_token(client: &kube::Client, grpc: SocketAddr) -> tonic::Status {
    let channel = agent_channel(client, NS, grpc).await;
    AgentClient::new(channel)
        .report_facts(pb::ReportFactsRequest {
            node: "anyone".into(),
            facts: Some(pb::NodeFacts::default()),
        })
        .await
        .unwrap_err()
}

/// The check, the same for every way of running two replicas.
async fn check(client: &kube::Client, members: &[Member; 2]) {
    let first = leader_of(client, members).await;
    let (leader, standby) = (&members[first], &members[1 - first]);
    for member in members {
        until(member.http, "/healthz", 200, "ok").await;
    }
    until(leader.http, "/readyz", 200, "ready").await;
    until(
        standby.http,
        "/readyz",
        503,
        &format!("not the leader (leader: {})", leader.identity),
    )
    .await;
    until(leader.http, "/metrics", 200, "\nrota_leader 1\n").await;
    until(standby.http, "/metrics", 200, "\nrota_leader 0\n").await;

    let refused = call_without_token(client, leader.grpc).await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    until(
        leader.http,
        "/metrics",
        200,
        "rota_grpc_requests_total{method=\"ReportFacts\",code=\"Unauthenticated\"}",
    )
    .await;

    // Cordoning the leader's node hands the Lease to the other replica, which turns ready.
    Api::<Node>::all(client.clone())
        .patch(
            &leader.node,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    eventually("the Lease was not handed over", || async {
        match holder(client).await {
            Some(held) if held == standby.identity => Ok(()),
            held => Err(format!("the Lease says {held:?}")),
        }
    })
    .await;
    until(standby.http, "/readyz", 200, "ready").await;
    until(standby.http, "/metrics", 200, "\nrota_leader 1\n").await;
    until(leader.http, "/readyz", 503, "not the leader").await;
    let (status, _) = get(leader.http, "/healthz").await.unwrap();
    assert_eq!(status, 200, "the cordoned replica stays alive as a standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_replicas_pass_the_check() {
    let (nodes, seed) = (3, 11);
    let names: Vec<String> = Scenario::generate(nodes, seed)
        .nodes
        .into_iter()
        .take(2)
        .map(|n| n.name)
        .collect();
    let mut options = FleetOptions::new(nodes, seed, 1);
    options.scheduler = Scheduler::Rota {
        coordinators: CoordinatorOptions {
            replicas: 2,
            nodes: names.clone(),
            ..CoordinatorOptions::default()
        },
        agents: AgentOptions::default(),
        // No policy: nothing is maintained, the check alone acts on the cluster.
        policy: None,
        pools: Vec::new(),
    };
    let fleet = Fleet::start(options).await.unwrap();
    // The fleet starts once one replica leads; the other may still be starting.
    let addrs = eventually("the replicas did not start", || async {
        match [0, 1].map(|i| fleet.coordinator_replica_addrs(i)) {
            [Some(first), Some(second)] => Ok([first, second]),
            started => Err(format!("{started:?}")),
        }
    })
    .await;
    let members = [0, 1].map(|index| Member {
        identity: format!("rota-coordinator-{index}"),
        node: names[index].clone(),
        http: addrs[index].http,
        grpc: addrs[index].grpc,
    });
    check(&client(&fleet.api_url().unwrap()), &members).await;
    fleet.shutdown().await;
}

#[tokio::test]
async fn the_binarys_replicas_pass_the_check() {
    let emulator = emulator(coordinator_store(NS, &["node-a", "node-b"])).await;
    let replicas = [("coord-0", "node-a"), ("coord-1", "node-b")];
    let binaries = replicas.map(|(name, node)| {
        start_binary(
            &emulator.kubeconfig,
            name,
            &[("ROTA_NAMESPACE", NS), ("ROTA_NODE_NAME", node)],
        )
    });
    let members = [0, 1].map(|index| Member {
        identity: replicas[index].0.to_owned(),
        node: replicas[index].1.to_owned(),
        http: binaries[index].http,
        grpc: binaries[index].grpc,
    });
    check(&client(&emulator.server.url()), &members).await;
}
