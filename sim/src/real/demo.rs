//! `rota-sim demo --control-plane real`: the demo's rollout on a real control plane
//! (kube-apiserver, etcd, kube-controller-manager and kube-scheduler, as
//! `tests/control-plane/build.sh` builds them) instead of the embedded emulator.
//!
//! rota is installed from `deploy/` with the built `kubectl`; the scenario's nodes are simulated
//! kubelets and hosts that are real API clients (`system:node:<name>`, under the Node authorizer
//! and NodeRestriction); the real scheduler and controllers run the workloads and budgets; the
//! coordinator replicas are built by the binary's own code, in this process, and reach the API
//! server with a token of the ServiceAccount `deploy/` makes, so they have exactly its RBAC;
//! each node's agent starts for the pod the real DaemonSet controller made there, with a token
//! bound to that pod. The independent monitor judges the rollout from the API's objects.
//!
//! Exit status as the emulated demo's: 0 when the monitor saw no violation and every node is
//! done, 1 on a violation, 2 when the rollout did not finish in time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use rota_monitor::{Monitor, MonitorConfig, Verdict};

use super::control_plane::{Binaries, ControlPlane, NODE_MONITOR_GRACE_PERIOD, pinned_versions};
use super::rollout::{self, COORDINATOR_ACCOUNT, Kubectl, SLOT_ANNOTATION};
use crate::cluster::Scenario;
use crate::demo::cli::DemoArgs;
use crate::demo::coordinator::{self, CoordinatorOptions};
use crate::demo::{
    AgentOptions, Error, RemoteAgents, Result, demo_policy, remove_blocked_workload,
};

/// How long each set-up step may take.
const STEP: Duration = Duration::from_secs(180);

/// Runs the demo on the real control plane; the exit status (see the module docs).
pub async fn run(args: &DemoArgs) -> Result<u8> {
    if args.compare || args.policy != crate::demo::cli::PolicyChoice::Rota {
        return Err(Error::Invalid(
            "--control-plane real runs rota only (the kured model and --compare need the \
             emulator)"
                .into(),
        ));
    }
    if args.fleetlock_hosts > 0 {
        return Err(Error::Invalid(
            "--control-plane real runs rota's agent on every node (--fleetlock-hosts needs the \
             emulator)"
                .into(),
        ));
    }
    if args.fault_flags.faults() != crate::cluster::Faults::default() {
        return Err(Error::Invalid(
            "--control-plane real injects no faults (the real-control-plane suites do)".into(),
        ));
    }
    let binaries = Binaries::find().map_err(rollout::Error::from)?;
    let (kubernetes, etcd) = pinned_versions().map_err(rollout::Error::from)?;
    let started = Instant::now();
    println!(
        "rota on a real control plane: {} nodes (seed {}), at most {} down at once — starting \
         etcd, kube-apiserver, kube-controller-manager and kube-scheduler…",
        args.nodes, args.seed, args.max_unavailable
    );
    let cp = ControlPlane::start(binaries.clone())
        .await
        .map_err(rollout::Error::from)?;
    let admin = cp.admin_client().await.map_err(rollout::Error::from)?;
    let kubectl = Kubectl::new(&binaries.kubectl(), &cp.admin_kubeconfig(), cp.dir());
    rollout::install(&kubectl).await?;
    println!("rota installed from deploy/ (kubectl apply -k)");

    let mut scenario = Scenario::generate(args.nodes, args.seed);
    if !args.keep_blocked_pdb {
        remove_blocked_workload(&mut scenario);
    }
    let timings = rollout::node_timings(NODE_MONITOR_GRACE_PERIOD);
    let nodes = rollout::start_nodes(&cp, &admin, &scenario, timings).await?;
    rollout::create_workloads(&admin, &scenario, STEP).await?;
    let monitor = Monitor::start(admin.clone(), MonitorConfig::default()).await?;
    rollout::wait_workloads_ready(&admin, &monitor, &scenario, STEP).await?;
    println!(
        "{} nodes registered, {} pods running under {} PodDisruptionBudgets ({:.0} s)",
        scenario.nodes.len(),
        scenario.expected_pod_count(),
        scenario.pdbs.len(),
        started.elapsed().as_secs_f64()
    );

    let kubeconfig = rollout::service_account_kubeconfig(&cp, &admin, COORDINATOR_ACCOUNT).await?;
    let options = kube::config::KubeConfigOptions::default();
    let kube_config = kube::config::Kubeconfig::read_from(&kubeconfig)
        .map_err(|e| Error::Invalid(format!("{}: {e}", kubeconfig.display())))?;
    let kube_config = kube::Config::from_custom_kubeconfig(kube_config, &options)
        .await
        .map_err(|e| Error::Invalid(format!("{}: {e}", kubeconfig.display())))?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let coordinators = CoordinatorOptions {
        replicas: args.coordinators.max(1),
        tls: !args.plaintext,
        ..CoordinatorOptions::default()
    };
    let replicas = coordinator::start_replicas(kube_config, &coordinators, &cancel).await?;
    let mut routes = replicas.routes.clone();
    tokio::time::timeout(STEP, routes.wait_for(|r| r.leader().is_some()))
        .await
        .map_err(|_| Error::Coordinator("no coordinator replica became the leader".into()))?
        .map_err(|_| Error::Stopped)?;

    let mut spec = demo_policy(args.max_unavailable);
    spec.windows = args.windows()?;
    rollout::create_policy(&admin, spec).await?;
    let agents = RemoteAgents::start(
        &nodes.sim,
        nodes.clients.clone(),
        replicas.service,
        AgentOptions::default(),
    )?;
    let began = Instant::now();
    println!("MaintenancePolicy created, agents started: the rollout begins");

    let except: BTreeSet<String> = if args.keep_blocked_pdb {
        scenario.blocked_node.iter().cloned().collect()
    } else {
        BTreeSet::new()
    };
    let outcome = follow(&admin, &monitor, &except, args.timeout).await;
    let makespan = began.elapsed();
    let verdict = monitor.stop().await;
    agents.shutdown().await;
    cancel.cancel();
    nodes.sim.shutdown().await;
    println!("{}", verdict.render());
    let code = exit_code(&verdict, args.max_unavailable, outcome.as_ref().err());
    match outcome {
        Ok(()) => println!(
            "all {} nodes done in {:.1} s on the real control plane (kube-apiserver {kubernetes}, \
             etcd {etcd})",
            scenario.nodes.len() - except.len(),
            makespan.as_secs_f64(),
        ),
        Err(pending) => println!(
            "not done after {:.0} s: {}",
            makespan.as_secs_f64(),
            pending.join("; ")
        ),
    }
    Ok(code)
}

/// Prints the rollout's progress every two seconds until every node but `except` is done
/// (`Ok`) or `timeout` passed (the pending nodes).
async fn follow(
    admin: &kube::Client,
    monitor: &Monitor,
    except: &BTreeSet<String>,
    timeout: Duration,
) -> Result<(), Vec<String>> {
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(admin.clone());
    let mut last = Vec::new();
    while started.elapsed() < timeout {
        match rollout::pending(admin, monitor, except).await {
            Ok(pending) if pending.is_empty() => return Ok(()),
            Ok(pending) => last = pending,
            Err(e) => last = vec![e.to_string()],
        }
        if let Ok(list) = nodes.list(&ListParams::default()).await {
            let verdict = monitor.verdict();
            println!(
                "{:>5.0} s  {}",
                started.elapsed().as_secs_f64(),
                progress_line(&list.items, &verdict.reboots, except, last.len())
            );
            let _ = std::io::stdout().flush();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Err(last)
}

/// One line of progress: nodes done, and each node holding a slot with its phase.
fn progress_line(
    nodes: &[Node],
    reboots: &BTreeMap<String, u32>,
    except: &BTreeSet<String>,
    pending: usize,
) -> String {
    let total = nodes.len().saturating_sub(except.len());
    let in_maintenance: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let slot = n.annotations().get(SLOT_ANNOTATION)?;
            let phase = serde_json::from_str::<serde_json::Value>(slot)
                .ok()?
                .get("phase")?
                .as_str()?
                .to_owned();
            Some(format!("{} {phase}", n.name_any()))
        })
        .collect();
    let rebooted = reboots.values().filter(|&&r| r > 0).count();
    format!(
        "done {}/{total}, rebooted {rebooted}; in maintenance: {}",
        total.saturating_sub(pending),
        if in_maintenance.is_empty() {
            "-".to_owned()
        } else {
            in_maintenance.join(", ")
        }
    )
}

/// The exit status: 1 when the monitor saw a violation (a budget broken, more than
/// `max_unavailable` nodes or more than one control-plane node unavailable, or it lost track),
/// else 2 when the rollout did not finish, else 0.
fn exit_code(verdict: &Verdict, max_unavailable: u32, unfinished: Option<&Vec<String>>) -> u8 {
    let too_many = verdict.max_unavailable.overall.count
        > usize::try_from(max_unavailable).unwrap_or(usize::MAX);
    if !verdict.violations.is_empty()
        || verdict.lost_track
        || too_many
        || verdict.max_unavailable.control_plane.count > 1
    {
        1
    } else if unfinished.is_some() {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn the_exit_status_follows_the_monitor() {
        let clean = Verdict::default();
        assert_eq!(exit_code(&clean, 3, None), 0);
        assert_eq!(exit_code(&clean, 3, Some(&vec!["a".into()])), 2);
        let lost = Verdict {
            lost_track: true,
            ..Verdict::default()
        };
        assert_eq!(exit_code(&lost, 3, None), 1);
        let peak = |count| rota_monitor::Peak {
            count,
            ..rota_monitor::Peak::default()
        };
        let too_many = Verdict {
            max_unavailable: rota_monitor::MaxUnavailable {
                overall: peak(4),
                ..Default::default()
            },
            ..Verdict::default()
        };
        assert_eq!(exit_code(&too_many, 3, None), 1);
        assert_eq!(exit_code(&too_many, 4, None), 0);
        let control_plane = Verdict {
            max_unavailable: rota_monitor::MaxUnavailable {
                control_plane: peak(2),
                ..Default::default()
            },
            ..Verdict::default()
        };
        assert_eq!(exit_code(&control_plane, 3, Some(&Vec::new())), 1);
    }

    #[test]
    fn progress_names_the_nodes_in_maintenance() {
        let node = |name: &str, slot: Option<&str>| Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: slot.map(|s| [(SLOT_ANNOTATION.to_owned(), s.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        let nodes = [
            node("a", None),
            node("b", Some(r#"{"token":1,"phase":"draining"}"#)),
            node("c", Some("not json")),
            node("d", None),
        ];
        let reboots = [("a".to_owned(), 1)].into();
        let except = ["d".to_owned()].into();
        assert_eq!(
            progress_line(&nodes, &reboots, &except, 2),
            "done 1/3, rebooted 1; in maintenance: b draining"
        );
        assert_eq!(
            progress_line(&nodes[..1], &BTreeMap::new(), &BTreeSet::new(), 1),
            "done 0/1, rebooted 0; in maintenance: -"
        );
    }
}
