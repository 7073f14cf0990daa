//! Cordoning and uncordoning a node (kubectl's strategic merge patches on `spec.unschedulable`).

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, instrument};

use super::{Error, Result};

/// How often a cordon retries after another writer changed the node between our read and our
/// patch.
const CONFLICT_RETRIES: usize = 5;

/// The result of a cordon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cordon {
    /// Someone else had cordoned the node already; rota must not uncordon it afterwards.
    pub already_cordoned: bool,
}

/// Marks the node unschedulable and tells whether it already was.
///
/// The patch carries the resourceVersion that was read, so a cordon by someone else between the
/// read and the patch fails with a conflict and is seen on the next read, instead of being
/// mistaken for rota's own.
#[instrument(skip(client), fields(node = %node))]
pub async fn cordon(client: &Client, node: &str) -> Result<Cordon> {
    let api: Api<Node> = Api::all(client.clone());
    for _ in 0..CONFLICT_RETRIES {
        let current = api
            .get_opt(node)
            .await?
            .ok_or_else(|| Error::NodeNotFound(node.to_owned()))?;
        if is_unschedulable(&current) {
            info!("node already cordoned by someone else");
            return Ok(Cordon {
                already_cordoned: true,
            });
        }
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "spec": {"unschedulable": true},
        });
        match api
            .patch(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {
                info!("node cordoned");
                return Ok(Cordon {
                    already_cordoned: false,
                });
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => return Err(not_found_or(error, node)),
        }
    }
    Err(Error::Conflict(node.to_owned()))
}

/// Marks the node schedulable again. Call it only for nodes rota cordoned itself.
#[instrument(skip(client), fields(node = %node))]
pub async fn uncordon(client: &Client, node: &str) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = json!({"spec": {"unschedulable": null}});
    api.patch(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|error| not_found_or(error, node))?;
    info!("node uncordoned");
    Ok(())
}

/// Whether the node is cordoned.
pub fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

fn not_found_or(error: kube::Error, node: &str) -> Error {
    match error {
        kube::Error::Api(status) if status.code == 404 => Error::NodeNotFound(node.to_owned()),
        other => Error::Kube(other),
    }
}
