//! The levers: request maintenance, pause and resume a pool, release a node's slot. Each is one
//! write the coordinator reads (an annotation on the Node, or `spec.paused`), made with the
//! user's credentials.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::status::operation_label;
use super::{Error, Result, age};
use rota_core::controller::annotations::{MAINTENANCE_REQUESTED, ManualRequest, RELEASE};
use rota_core::policy::{MaintenancePolicy, conditions};
use rota_core::slots::Holding;
use rota_core::slots::persist::decode_entry;

/// Field manager of rotactl's writes (shown in `managedFields`, so audits tell who did it).
const FIELD_MANAGER: &str = "rotactl";

/// Whether `release` may go ahead without asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// `--yes`.
    Yes,
    /// Ask on the terminal; refuse when stdin is not one.
    Ask,
}

pub(super) fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

async fn get_node(nodes: &Api<Node>, node: &str) -> Result<Node> {
    nodes
        .get_opt(node)
        .await
        .map_err(|e| Error::kube(format!("reading node {node}"), e))?
        .ok_or_else(|| Error::NodeNotFound(node.to_owned()))
}

/// Writes `rota.dev/maintenance-requested=<request>` on `node`.
pub async fn request(
    client: &Client,
    out: &mut dyn Write,
    node: &str,
    request: ManualRequest,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    get_node(&nodes, node).await?;
    let patch = json!({"metadata": {"annotations": {MAINTENANCE_REQUESTED: request.as_str()}}});
    nodes
        .patch(node, &params(), &Patch::Merge(patch))
        .await
        .map_err(|e| Error::kube(format!("annotating node {node}"), e))?;
    writeln!(
        out,
        "node {node}: {request} requested. It goes ahead of automatic maintenance (inside or \
         outside windows, never in a blackout), once its pool's capacity and \
         PodDisruptionBudgets allow.\nFollow it with `rotactl status --active` or `rotactl \
         watch`."
    )?;
    Ok(())
}

/// The policy named, or the only one; a clear error otherwise.
pub(super) async fn resolve_policy(
    policies: &Api<MaintenancePolicy>,
    name: Option<&str>,
) -> Result<MaintenancePolicy> {
    if let Some(name) = name
        && let Some(policy) = policies
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("reading MaintenancePolicy {name}"), e))?
    {
        return Ok(policy);
    }
    let all = policies
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing MaintenancePolicies", e))?
        .items;
    let names: Vec<String> = all.iter().map(|p| p.name_any()).collect();
    match (name, all.as_slice()) {
        (None, [only]) => Ok(only.clone()),
        (None, []) | (Some(_), []) => Err(Error::Policy(
            "there is no MaintenancePolicy; create one first".to_owned(),
        )),
        (None, _) => Err(Error::Policy(format!(
            "there are several MaintenancePolicies ({}); name one",
            names.join(", ")
        ))),
        (Some(name), _) => Err(Error::Policy(format!(
            "MaintenancePolicy {name} not found; there are: {}",
            names.join(", ")
        ))),
    }
}

async fn set_paused(
    policies: &Api<MaintenancePolicy>,
    name: &str,
    paused: bool,
) -> Result<MaintenancePolicy> {
    policies
        .patch(
            name,
            &params(),
            &Patch::Merge(json!({"spec": {"paused": paused}})),
        )
        .await
        .map_err(|e| Error::kube(format!("patching MaintenancePolicy {name}"), e))
}

/// Sets `spec.paused: true`.
pub async fn pause(client: &Client, out: &mut dyn Write, name: Option<&str>) -> Result<()> {
    let policies: Api<MaintenancePolicy> = Api::all(client.clone());
    let policy = resolve_policy(&policies, name).await?;
    let name = policy.name_any();
    if policy.spec.paused {
        writeln!(out, "pool {name} is already paused")?;
        return Ok(());
    }
    set_paused(&policies, &name, true).await?;
    writeln!(
        out,
        "pool {name} paused: no new node starts; nodes in maintenance finish. `rotactl resume \
         {name}` to continue."
    )?;
    Ok(())
}

/// Sets `spec.paused: false`. An open circuit breaker closes only when the coordinator has
/// seen the pool paused, so then the pool is paused first, and resumed once the coordinator
/// reports the pause (within `timeout`).
pub async fn resume(
    client: &Client,
    out: &mut dyn Write,
    name: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let policies: Api<MaintenancePolicy> = Api::all(client.clone());
    let policy = resolve_policy(&policies, name).await?;
    let name = policy.name_any();
    let circuit_open = has_condition(&policy, conditions::CIRCUIT_OPEN);
    let preflight_failed = policy
        .status
        .as_ref()
        .and_then(|s| s.kubernetes_upgrade.as_ref())
        .is_some_and(|k| k.phase == rota_core::upgrade::Phase::PreflightFailed.as_str());
    if (circuit_open || preflight_failed) && !has_condition(&policy, conditions::PAUSED) {
        let why = if circuit_open {
            "the circuit breaker is open; pausing first so that the coordinator resets its \
             failure count"
        } else {
            "the Kubernetes upgrade's pre-flight failed; pausing first so that the coordinator \
             runs it again"
        };
        writeln!(out, "pool {name}: {why}")?;
        let paused = set_paused(&policies, &name, true).await?;
        wait_for_pause_seen(&policies, &name, paused.metadata.generation, timeout).await?;
    } else if !policy.spec.paused {
        writeln!(out, "pool {name} is not paused")?;
        return Ok(());
    }
    set_paused(&policies, &name, false).await?;
    writeln!(out, "pool {name} resumed")?;
    Ok(())
}

fn has_condition(policy: &MaintenancePolicy, kind: &str) -> bool {
    policy
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == kind && c.status == "True")
}

/// Waits until the policy's status reports `Paused` for `generation` or later.
async fn wait_for_pause_seen(
    policies: &Api<MaintenancePolicy>,
    name: &str,
    generation: Option<i64>,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let policy = policies
            .get(name)
            .await
            .map_err(|e| Error::kube(format!("reading MaintenancePolicy {name}"), e))?;
        let observed = policy.status.as_ref().and_then(|s| s.observed_generation);
        if has_condition(&policy, conditions::PAUSED) && observed >= generation {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Policy(format!(
                "the coordinator did not report pool {name} paused within {timeout:?}; it stays \
                 paused. Check that a coordinator leads (`kubectl -n rota-system get lease`), \
                 then run `rotactl resume {name}` again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes `rota.dev/release=true` on `node`, after confirmation.
pub async fn release(
    client: &Client,
    out: &mut dyn Write,
    node: &str,
    confirm: Confirm,
    now: Timestamp,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = get_node(&nodes, node).await?;
    let holding = match decode_entry(node, current.annotations()) {
        Ok(Some(entry)) => entry.holding,
        Ok(None) => Holding::Idle,
        // Unreadable annotations: the coordinator will say so; releasing is still meaningful.
        Err(e) => {
            writeln!(out, "warning: {e}")?;
            Holding::Idle
        }
    };
    let what = match &holding {
        Holding::Held(held) => format!(
            "the {} slot of node {node} ({}, token {}, since {} ago)",
            operation_label(&held.slot.operation),
            held.slot.phase.as_str(),
            held.slot.token,
            age(held.slot.phase_since, now)
        ),
        Holding::Queued(queued) => format!(
            "the queued {} request of node {node}",
            operation_label(&queued.request.operation)
        ),
        Holding::Idle => {
            writeln!(out, "node {node} holds no slot and has no queued request")?;
            return Ok(());
        }
    };
    if confirm == Confirm::Ask {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(Error::NotConfirmed);
        }
        write!(
            out,
            "Release {what}? Its capacity is freed at once; the node is uncordoned only if rota \
             cordoned it. [y/N] "
        )?;
        out.flush()?;
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Err(Error::NotConfirmed);
        }
    }
    let patch = json!({"metadata": {"annotations": {RELEASE: "true"}}});
    nodes
        .patch(node, &params(), &Patch::Merge(patch))
        .await
        .map_err(|e| Error::kube(format!("annotating node {node}"), e))?;
    writeln!(
        out,
        "release of {what} requested; the coordinator carries it out and removes {RELEASE}"
    )?;
    Ok(())
}
