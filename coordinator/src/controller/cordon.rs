//! rota's cordons: the cordon and the [`CORDONED`] mark are one write, so that rota undoes only
//! its own cordons, also after a restart (a node a human had cordoned stays cordoned).
use rota_core::node::is_unschedulable;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, instrument};

use super::{Error, Result};
use rota_core::controller::annotations::CORDONED;

use crate::store::WriteGate;

/// Attempts when another writer changes the node between our read and our patch.
const CONFLICT_RETRIES: usize = 5;

/// Who cordoned a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cordoned {
    /// rota, just now.
    Now,
    /// rota, earlier (a resumed drain).
    Earlier,
    /// Someone else: rota leaves the cordon in place afterwards.
    BySomeoneElse,
}

/// Cordons the node (idempotent), and tells whose cordon it is.
#[instrument(skip(api, gate))]
pub async fn cordon(api: &Api<Node>, gate: &WriteGate, node: &str) -> Result<Cordoned> {
    for _ in 0..CONFLICT_RETRIES {
        let current = api
            .get_opt(node)
            .await?
            .ok_or_else(|| Error::NodeNotFound(node.to_owned()))?;
        if is_unschedulable(&current) {
            return Ok(if current.annotations().contains_key(CORDONED) {
                Cordoned::Earlier
            } else {
                Cordoned::BySomeoneElse
            });
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "annotations": {CORDONED: "true"},
            },
            "spec": {"unschedulable": true},
        });
        gate.check()?;
        match api
            .patch(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {
                info!("node cordoned");
                return Ok(Cordoned::Now);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(Error::NodeNotFound(node.to_owned()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!(
        "node {node} kept changing while rota cordoned it"
    )))
}

/// Uncordons the node if rota cordoned it (it carries [`CORDONED`]); returns whether it did.
#[instrument(skip(api, gate))]
pub async fn uncordon_own(api: &Api<Node>, gate: &WriteGate, node: &str) -> Result<bool> {
    for _ in 0..CONFLICT_RETRIES {
        let Some(current) = api.get_opt(node).await? else {
            return Ok(false);
        };
        if !current.annotations().contains_key(CORDONED) {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "annotations": {CORDONED: null},
            },
            "spec": {"unschedulable": null},
        });
        gate.check()?;
        match api
            .patch(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {
                info!("node uncordoned");
                return Ok(true);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!(
        "node {node} kept changing while rota uncordoned it"
    )))
}
