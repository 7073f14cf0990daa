//! `rotactl plan` and `rotactl kubernetes-upgrade`: what each pool's Kubernetes upgrade rollout
//! would do and in which order, computed from the cluster with the coordinator's own pure
//! decisions ([`rota_core::controller::rollout::preview`]); nothing is changed by `plan`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch};
use kube::{Api, Client, ResourceExt};
use rota_core::cluster::{ClusterState, Indexed};
use rota_core::controller::pools::PolicyBook;
use rota_core::controller::rollout::{PoolPlan, preview};
use rota_core::model::NodeName;
use rota_core::policy::{KubeVersion, MaintenancePolicy};
use rota_core::slots::NodeEntry;
use rota_core::slots::persist::decode_entry;
use serde_json::json;

use super::status::{dash, plain_table};
use super::{Error, Output, Result};

async fn list<K>(client: &Client, what: &str) -> Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("listing {what}"), e))?
        .items)
}

/// The cluster as the coordinator's cache would hold it, and the policies.
async fn cluster(client: &Client) -> Result<(ClusterState, Vec<MaintenancePolicy>)> {
    let mut cache = ClusterState::default();
    for node in list::<Node>(client, "nodes").await? {
        Indexed::insert(&mut cache, node);
    }
    for pod in list::<Pod>(client, "pods").await? {
        Indexed::insert(&mut cache, pod);
    }
    for pdb in list::<PodDisruptionBudget>(client, "PodDisruptionBudgets").await? {
        Indexed::insert(&mut cache, pdb);
    }
    let policies = list::<MaintenancePolicy>(client, "MaintenancePolicies").await?;
    for policy in &policies {
        Indexed::insert(&mut cache, policy.clone());
    }
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| Error::kube("reading the API server's version", e))?;
    if let Ok(v) = version.git_version.parse::<KubeVersion>() {
        cache.set_api_server_version(v);
    }
    Ok((cache, policies))
}

/// Every pool's plan, with `targets` overriding pools' `upgrade.kubernetesVersion`.
async fn plans(
    client: &Client,
    targets: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<Vec<PoolPlan>> {
    let (cache, policies) = cluster(client).await?;
    let mut book = PolicyBook::new();
    let policies: BTreeMap<String, Arc<MaintenancePolicy>> = policies
        .into_iter()
        .map(|mut p| {
            if let Some(target) = targets.get(&p.name_any()) {
                p.spec.upgrade.kubernetes_version = Some(target.clone());
            }
            (p.name_any(), Arc::new(p))
        })
        .collect();
    book.update(&policies);
    let entries: BTreeMap<NodeName, NodeEntry> = cache
        .nodes()
        .values()
        .filter_map(|node| {
            let name = node.name_any();
            decode_entry(&name, node.annotations())
                .ok()
                .flatten()
                .map(|entry| (name, entry))
        })
        .collect();
    // How long a budget may refuse one pod before a drain gives up: the plan shows nothing that
    // depends on it, so the default does.
    let blocked_timeout = rota_core::drain::DrainSpec::default().blocked_timeout;
    Ok(preview(&cache, &book, &entries, blocked_timeout, now))
}

/// `rotactl plan [POOL]`.
pub async fn plan(
    client: &Client,
    out: &mut dyn Write,
    pool: Option<&str>,
    output: Output,
    now: Timestamp,
) -> Result<()> {
    let mut plans = plans(client, &BTreeMap::new(), now).await?;
    plans.retain(|p| pool.is_none_or(|name| p.pool == name));
    if plans.is_empty() {
        writeln!(
            out,
            "no pool{} sets upgrade.kubernetesVersion: nothing to plan (`rotactl kubernetes-upgrade --to VERSION [POOL]` sets it)",
            pool.map(|p| format!(" named {p}")).unwrap_or_default()
        )?;
        return Ok(());
    }
    print(out, &plans, output)
}

/// Prints plans as tables or JSON.
fn print(out: &mut dyn Write, plans: &[PoolPlan], output: Output) -> Result<()> {
    if output == Output::Json {
        serde_json::to_writer_pretty(&mut *out, plans)?;
        writeln!(out)?;
        return Ok(());
    }
    for (i, plan) in plans.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "pool {}: Kubernetes {} — {}",
            plan.pool,
            plan.target,
            plan.phase.as_deref().unwrap_or("not started")
        )?;
        for refusal in &plan.refusals {
            writeln!(out, "refused: {refusal}")?;
        }
        let mut table = plain_table(&[
            "#",
            "NODE",
            "ROLE",
            "FROM",
            "TO",
            "KUBEADM",
            "ETCD SNAPSHOT",
            "STATE",
            "BLOCKED BY",
        ]);
        for (k, row) in plan.rows.iter().enumerate() {
            table.add_row(vec![
                (k + 1).to_string(),
                row.node.clone(),
                if row.control_plane {
                    "control-plane"
                } else {
                    "worker"
                }
                .to_owned(),
                row.from.clone().unwrap_or_else(|| "?".to_owned()),
                dash(row.to.clone()),
                dash(row.kubeadm.clone()),
                if row.snapshot { "needed" } else { "-" }.to_owned(),
                row.state.clone(),
                dash(row.blocked.join("; ")),
            ]);
        }
        writeln!(out, "{}", table.trim_fmt())?;
    }
    Ok(())
}

/// `rotactl kubernetes-upgrade --to VERSION [POOL]`: checks the plan with the new target (a
/// downgrade is refused here, before anything changes), then sets the pool's
/// `upgrade.kubernetesVersion` and prints the plan.
pub async fn kubernetes_upgrade(
    client: &Client,
    out: &mut dyn Write,
    pool: Option<&str>,
    to: &str,
    now: Timestamp,
) -> Result<()> {
    let target: KubeVersion = to
        .parse()
        .map_err(|e: rota_core::policy::VersionError| Error::Policy(e.to_string()))?;
    let policies: Api<MaintenancePolicy> = Api::all(client.clone());
    let policy = super::actions::resolve_policy(&policies, pool).await?;
    let name = policy.name_any();
    let targets = BTreeMap::from([(name.clone(), target.to_string())]);
    let mut plans = plans(client, &targets, now).await?;
    plans.retain(|p| p.pool == name);
    if let Some(plan) = plans.first()
        && !plan.refusals.is_empty()
    {
        return Err(Error::Policy(format!(
            "pool {name}: Kubernetes {target} refused, nothing changed: {}",
            plan.refusals.join("; ")
        )));
    }
    policies
        .patch(
            &name,
            &super::actions::params(),
            &Patch::Merge(json!({"spec": {"upgrade": {"kubernetesVersion": target.to_string()}}})),
        )
        .await
        .map_err(|e| Error::kube(format!("patching MaintenancePolicy {name}"), e))?;
    writeln!(
        out,
        "pool {name}: upgrade.kubernetesVersion set to {target}; the coordinator runs the \
         pre-flight, then this plan (`rotactl plan {name}` shows it again, `rotactl watch` \
         follows it):\n"
    )?;
    print(out, &plans, Output::Table)
}
