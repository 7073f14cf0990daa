//! `rotactl status`: what every node is doing, read from the API.
//!
//! [`build`] is pure: Nodes (their `rota.dev/` annotations, readiness and cordon) and
//! MaintenancePolicies (selectors, `spec.paused`, status) at an explicit `now` in, a [`View`]
//! out. Queue positions are not stored anywhere; they are recomputed with the scheduler's order
//! (manual requests first, then control-plane nodes, then first come first served, then name),
//! and why a node waits comes from its policy's `status.waitingReasons`, its request's back-off
//! and note, and the pool's pause and circuit breaker.

use rota_core::text::printable;
use std::collections::BTreeMap;
use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use super::{Error, Output, Result, age};
use rota_core::controller::annotations::{MAINTENANCE_REQUESTED, RELEASE};
use rota_core::model::{Operation, Origin};
use rota_core::node::{is_control_plane, is_ready, is_unschedulable};
use rota_core::policy::{MaintenancePolicy, Selector, conditions};
use rota_core::scheduler::QueueKey;
use rota_core::slots::persist::decode_entry;
use rota_core::slots::{Holding, NodeEntry, NodeState};

/// A pool's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// The MaintenancePolicy.
    pub name: String,
    /// `spec.paused`.
    pub paused: bool,
    /// The circuit breaker holds the pool (condition `CircuitOpen`).
    pub circuit_open: bool,
    /// The current spec is invalid (condition `Valid` is `False`): the coordinator acts on the
    /// last valid one.
    pub invalid: Option<String>,
    /// Nodes the policy selects.
    pub nodes: u32,
    /// Nodes whose last maintenance succeeded.
    pub done: u32,
    /// Nodes holding a slot (not failed).
    pub in_progress: u32,
    /// Queued nodes.
    pub waiting: u32,
    /// Nodes whose maintenance failed (they keep their slot).
    pub failed: u32,
    /// Why queued nodes wait, as the coordinator last wrote it: `reason: count`.
    pub waiting_reasons: Vec<String>,
    /// The Kubernetes upgrade rollout's target and phase (`1.32.4 ControlPlane`), when the
    /// policy sets a target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_upgrade: Option<String>,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node.
    pub node: String,
    /// The MaintenancePolicy that selects it (several: they overlap, and none acts).
    pub pools: Vec<String>,
    /// Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub cordoned: bool,
    /// `idle`, `queued`, `draining`, `granted`, `verifying`, `failed`, `done`, or `invalid`
    /// when its annotations cannot be read.
    pub state: String,
    /// The operation queued or in progress (or last done).
    pub operation: Option<String>,
    /// The slot's fencing token.
    pub token: Option<u64>,
    /// Since when it is in this state.
    pub since: Option<Timestamp>,
    /// 1-based position among the queued nodes of its pool.
    pub queue_position: Option<u32>,
    /// Why it waits (queued), or what is happening (slot), or how it last ended (idle, done).
    pub detail: Vec<String>,
    /// A `rota.dev/maintenance-requested` value the coordinator has not taken in yet.
    pub requested: Option<String>,
    /// A `rota.dev/release` the coordinator has not carried out yet.
    pub release_requested: bool,
}

impl NodeView {
    /// Whether the node is queued, holds a slot, or has something pending.
    pub fn is_active(&self) -> bool {
        !matches!(self.state.as_str(), "idle" | "done")
            || self.requested.is_some()
            || self.release_requested
    }
}

/// Everything `status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct View {
    /// Pools by name.
    pub pools: Vec<PoolView>,
    /// Nodes by name.
    pub nodes: Vec<NodeView>,
}

/// Which nodes to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only nodes of this pool (and only this pool).
    pub pool: Option<String>,
    /// Only active nodes ([`NodeView::is_active`]).
    pub active: bool,
}

impl View {
    /// The part of the view `filter` selects.
    pub fn filtered(&self, filter: &Filter) -> View {
        let in_pool = |pools: &[String]| {
            filter
                .pool
                .as_ref()
                .is_none_or(|p| pools.iter().any(|q| q == p))
        };
        View {
            pools: self
                .pools
                .iter()
                .filter(|p| in_pool(std::slice::from_ref(&p.name)))
                .cloned()
                .collect(),
            nodes: self
                .nodes
                .iter()
                .filter(|n| in_pool(&n.pools) && (!filter.active || n.is_active()))
                .cloned()
                .collect(),
        }
    }

    /// Whether no node is queued or holds a slot (failed ones included), and nothing is pending.
    pub fn is_settled(&self) -> bool {
        self.nodes.iter().all(|n| !n.is_active())
    }
}

/// Lists Nodes and MaintenancePolicies and builds the view.
pub async fn fetch(client: &Client, now: Timestamp) -> Result<View> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing nodes", e))?;
    let policies = Api::<MaintenancePolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing MaintenancePolicies", e))?;
    Ok(build(&nodes.items, &policies.items, now))
}

/// The view of `nodes` and `policies` at `now`.
pub fn build(nodes: &[Node], policies: &[MaintenancePolicy], now: Timestamp) -> View {
    let selectors: Vec<(String, Option<Selector>)> = policies
        .iter()
        .map(|p| (p.name_any(), Selector::parse(&p.spec.node_selector).ok()))
        .collect();
    let mut views = Vec::with_capacity(nodes.len());
    // Per pool: (queue key, index into views) of queued nodes.
    let mut queues: BTreeMap<String, Vec<(QueueKey, usize)>> = BTreeMap::new();
    for node in nodes {
        let name = node.name_any();
        let labels = node.labels();
        let pools: Vec<String> = selectors
            .iter()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.matches(labels)))
            .map(|(n, _)| n.clone())
            .collect();
        let annotations = node.annotations();
        let mut view = NodeView {
            node: name.clone(),
            pools,
            ready: is_ready(node),
            cordoned: is_unschedulable(node),
            state: NodeState::Idle.as_str().to_owned(),
            operation: None,
            token: None,
            since: None,
            queue_position: None,
            detail: Vec::new(),
            requested: annotations.get(MAINTENANCE_REQUESTED).cloned(),
            release_requested: annotations.contains_key(RELEASE),
        };
        match decode_entry(&name, annotations) {
            Ok(Some(entry)) => {
                if let Some(key) = describe(&mut view, &entry, is_control_plane(node), now)
                    && let [pool] = view.pools.as_slice()
                {
                    queues
                        .entry(pool.clone())
                        .or_default()
                        .push((key, views.len()));
                }
            }
            Ok(None) => {}
            Err(e) => {
                view.state = "invalid".to_owned();
                view.detail.push(e.to_string());
            }
        }
        views.push(view);
    }
    for queue in queues.values_mut() {
        queue.sort();
        for (position, (_, index)) in queue.iter().enumerate() {
            views[*index].queue_position = u32::try_from(position + 1).ok();
        }
    }
    let pools: Vec<PoolView> = policies.iter().map(|p| pool_view(p, &views)).collect();
    for view in &mut views {
        explain_wait(view, policies);
        // Annotations are anyone's with Node patch rights, and agents' text reaches them:
        // nothing from there drives the terminal or forges a line.
        for detail in &mut view.detail {
            *detail = printable(detail);
        }
        view.requested = view.requested.as_deref().map(printable);
    }
    views.sort_by(|a, b| a.node.cmp(&b.node));
    let mut pools = pools;
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    View {
        pools,
        nodes: views,
    }
}

/// Fills in what the ledger entry says; returns the queue key of a queued node.
fn describe(
    view: &mut NodeView,
    entry: &NodeEntry,
    control_plane: bool,
    now: Timestamp,
) -> Option<QueueKey> {
    view.state = entry.state().as_str().to_owned();
    match &entry.holding {
        Holding::Queued(queued) => {
            let request = &queued.request;
            view.operation = Some(operation_label(&request.operation));
            view.since = Some(request.requested_at);
            if request.origin == Origin::Manual {
                view.detail.push("manual request".to_owned());
            }
            if let Some(until) = request.not_before.filter(|t| *t > now) {
                view.detail
                    .push(format!("backing off for {} more", age(now, until)));
            }
            if !queued.note.is_empty() {
                view.detail.push(queued.note.clone());
            }
            Some(QueueKey::of(request, control_plane))
        }
        Holding::Held(held) => {
            let slot = &held.slot;
            view.operation = Some(operation_label(&slot.operation));
            view.token = Some(slot.token.0);
            view.since = Some(slot.phase_since);
            if let Some(progress) = &held.progress {
                let mut note = progress.step.clone();
                if !progress.message.is_empty() {
                    note = format!("{note}: {}", progress.message);
                }
                view.detail.push(note);
            }
            if !held.note.is_empty() {
                view.detail.push(held.note.clone());
            }
            if slot.lease_expires_at < now {
                view.detail.push(format!(
                    "agent lease expired {} ago",
                    age(slot.lease_expires_at, now)
                ));
            }
            None
        }
        Holding::Idle => {
            if let Some(last) = &entry.last {
                view.operation = Some(operation_label(&last.operation));
                view.token = last.token.map(|t| t.0);
                view.since = Some(last.at);
                let mut note = last.reason.as_str().to_owned();
                if !last.message.is_empty() {
                    note = format!("{note}: {}", last.message);
                }
                view.detail.push(note);
            }
            None
        }
    }
}

/// Adds the pool-level reasons a queued node waits.
fn explain_wait(view: &mut NodeView, policies: &[MaintenancePolicy]) {
    if view.state != NodeState::Queued.as_str() {
        return;
    }
    let policy = match view.pools.as_slice() {
        [] => {
            view.detail
                .push("no MaintenancePolicy selects this node".to_owned());
            return;
        }
        [pool] => policies.iter().find(|p| p.name_any() == *pool),
        pools => {
            view.detail.push(format!(
                "selected by several MaintenancePolicies ({}); fix the overlap",
                pools.join(", ")
            ));
            return;
        }
    };
    let Some(policy) = policy else {
        return;
    };
    if policy.spec.paused {
        view.detail.push("pool paused".to_owned());
    }
    if condition_true(policy, conditions::CIRCUIT_OPEN) {
        view.detail.push("circuit breaker open".to_owned());
    }
    let reasons = policy
        .status
        .iter()
        .flat_map(|s| &s.waiting_reasons)
        .filter_map(|summary| summary.examples.get(&view.node));
    for reason in reasons {
        if !view.detail.contains(reason) {
            view.detail.push(reason.clone());
        }
    }
}

fn pool_view(policy: &MaintenancePolicy, nodes: &[NodeView]) -> PoolView {
    let name = policy.name_any();
    let members = nodes
        .iter()
        .filter(|n| n.pools.as_slice() == [name.clone()]);
    let mut view = PoolView {
        name: name.clone(),
        paused: policy.spec.paused,
        circuit_open: condition_true(policy, conditions::CIRCUIT_OPEN),
        invalid: policy
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .find(|c| c.type_ == conditions::VALID && c.status == "False")
            .map(|c| c.message.clone()),
        nodes: 0,
        done: 0,
        in_progress: 0,
        waiting: 0,
        failed: 0,
        waiting_reasons: policy
            .status
            .iter()
            .flat_map(|s| &s.waiting_reasons)
            .map(|r| format!("{}: {}", r.reason, r.count))
            .collect(),
        kubernetes_upgrade: policy
            .status
            .as_ref()
            .and_then(|s| s.kubernetes_upgrade.as_ref())
            .map(|k| format!("{} {}", k.target, k.phase))
            .or_else(|| {
                policy
                    .spec
                    .upgrade
                    .kubernetes_version
                    .as_ref()
                    .map(|t| format!("{t} PreFlight"))
            }),
    };
    for node in members {
        view.nodes += 1;
        match node.state.as_str() {
            "done" => view.done += 1,
            "queued" => view.waiting += 1,
            "failed" => view.failed += 1,
            "draining" | "granted" | "verifying" => view.in_progress += 1,
            _ => {}
        }
    }
    view
}

fn condition_true(policy: &MaintenancePolicy, kind: &str) -> bool {
    policy
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == kind && c.status == "True")
}

/// The operation as humans name it (the `maintenance-requested` values where one fits).
pub fn operation_label(operation: &Operation) -> String {
    match operation {
        Operation::PackageUpgrade {
            security_only: true,
            ..
        } => "security-upgrade".to_owned(),
        Operation::PackageUpgrade { .. } => "upgrade".to_owned(),
        Operation::KubernetesUpgrade { version, .. } => format!("kubernetes-upgrade {version}"),
        other => other.name().to_owned(),
    }
}

/// Prints the view as tables or JSON.
pub fn print(out: &mut dyn Write, view: &View, output: Output, now: Timestamp) -> Result<()> {
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, view)?;
            writeln!(out)?;
        }
        Output::Table => {
            if !view.pools.is_empty() {
                writeln!(out, "{}", pools_table(&view.pools).trim_fmt())?;
                writeln!(out)?;
            }
            writeln!(out, "{}", nodes_table(&view.nodes, now).trim_fmt())?;
        }
    }
    Ok(())
}

/// A borderless table like kubectl's.
pub fn plain_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
}

/// The pools' progress; with a Kubernetes upgrade column when a pool has a target.
pub fn pools_table(pools: &[PoolView]) -> Table {
    let upgrades = pools.iter().any(|p| p.kubernetes_upgrade.is_some());
    let mut header = vec![
        "POOL",
        "STATE",
        "NODES",
        "DONE",
        "IN PROGRESS",
        "WAITING",
        "FAILED",
        "WHY WAITING",
    ];
    if upgrades {
        header.push("KUBERNETES UPGRADE");
    }
    let mut table = plain_table(&header);
    for pool in pools {
        let state = match (pool.circuit_open, pool.paused, &pool.invalid) {
            (true, _, _) => "circuit open",
            (false, true, _) => "paused",
            (false, false, Some(_)) => "invalid spec",
            (false, false, None) => "active",
        };
        table.add_row(
            vec![
                pool.name.clone(),
                state.to_owned(),
                pool.nodes.to_string(),
                pool.done.to_string(),
                pool.in_progress.to_string(),
                pool.waiting.to_string(),
                pool.failed.to_string(),
                dash(pool.waiting_reasons.join(", ")),
            ]
            .into_iter()
            .chain(upgrades.then(|| dash(pool.kubernetes_upgrade.clone().unwrap_or_default())))
            .collect::<Vec<_>>(),
        );
    }
    table
}

/// The nodes.
pub fn nodes_table(nodes: &[NodeView], now: Timestamp) -> Table {
    let mut table = plain_table(&[
        "NODE",
        "POOL",
        "STATUS",
        "STATE",
        "OPERATION",
        "TOKEN",
        "SINCE",
        "QUEUE",
        "DETAIL",
    ]);
    for node in nodes {
        let mut status = vec![if node.ready { "Ready" } else { "NotReady" }];
        if node.cordoned {
            status.push("SchedulingDisabled");
        }
        let mut detail = node.detail.clone();
        if let Some(requested) = &node.requested {
            detail.insert(0, format!("{requested} requested, not yet queued"));
        }
        if node.release_requested {
            detail.insert(0, "release requested".to_owned());
        }
        table.add_row(vec![
            node.node.clone(),
            dash(node.pools.join(",")),
            status.join(","),
            node.state.clone(),
            dash(node.operation.clone().unwrap_or_default()),
            node.token.map_or_else(|| "-".to_owned(), |t| t.to_string()),
            node.since.map_or_else(|| "-".to_owned(), |t| age(t, now)),
            node.queue_position
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            dash(detail.join("; ")),
        ]);
    }
    table
}

/// `-` for an empty cell.
pub(super) fn dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}
