//! [`KubeLedgerStore`]: the slot ledger persisted in the Kubernetes API.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tracing::instrument;

use super::gate::WriteGate;
use rota_core::slots::persist::{
    COUNTER_CONFIGMAP, COUNTER_KEY, NodeAnnotations, decode_counter, encode_counter,
};
use rota_core::slots::{LedgerStore, StoreError, StoredState};

/// Nodes listed per request when the ledger is loaded.
const LIST_PAGE: u32 = 500;

/// The ledger's [`LedgerStore`] over the Kubernetes API: node annotations written with merge
/// patches, and the fencing counter in the ConfigMap
/// [`COUNTER_CONFIGMAP`](rota_core::slots::persist::COUNTER_CONFIGMAP) of the coordinator's
/// namespace, created or replaced only at the `resourceVersion` last read (a 409 is a
/// [`StoreError::Conflict`]: another coordinator issued tokens, so this one must re-read before
/// it issues any).
#[derive(Clone, Debug)]
pub struct KubeLedgerStore {
    nodes: Api<Node>,
    config_maps: Api<ConfigMap>,
    namespace: String,
    gate: WriteGate,
}

impl KubeLedgerStore {
    /// A store writing through `client`, with the counter in `namespace`, while `gate` is open.
    pub fn new(client: Client, namespace: &str, gate: WriteGate) -> Self {
        KubeLedgerStore {
            nodes: Api::all(client.clone()),
            config_maps: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            gate,
        }
    }

    /// The gate every write checks.
    pub fn gate(&self) -> &WriteGate {
        &self.gate
    }

    fn counter_name(&self) -> String {
        format!("{}/{COUNTER_CONFIGMAP}", self.namespace)
    }

    /// The counter as it is now, for the message of a conflict.
    async fn describe_counter(&self) -> String {
        match self.config_maps.get_opt(COUNTER_CONFIGMAP).await {
            Ok(Some(cm)) => format!(
                "fencing counter {} (now {COUNTER_KEY}={} at resourceVersion {})",
                self.counter_name(),
                counter_value(&cm).unwrap_or("<missing>"),
                cm.resource_version().unwrap_or_default()
            ),
            Ok(None) => format!("fencing counter {} (now deleted)", self.counter_name()),
            Err(e) => format!(
                "fencing counter {} (re-read failed: {e})",
                self.counter_name()
            ),
        }
    }
}

fn counter_value(cm: &ConfigMap) -> Option<&str> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(COUNTER_KEY))
        .map(String::as_str)
}

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(error))
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

impl LedgerStore for KubeLedgerStore {
    #[instrument(level = "debug", skip(self))]
    async fn load(&self) -> Result<StoredState, StoreError> {
        let mut state = StoredState::default();
        let mut params = ListParams::default().limit(LIST_PAGE);
        loop {
            let page = self.nodes.list(&params).await.map_err(backend)?;
            for node in &page.items {
                state
                    .nodes
                    .insert(node.name_any(), node.annotations().clone());
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        if let Some(cm) = self
            .config_maps
            .get_opt(COUNTER_CONFIGMAP)
            .await
            .map_err(backend)?
        {
            state.last_token = match counter_value(&cm) {
                Some(value) => decode_counter(value).map_err(backend)?,
                None => 0,
            };
            state.counter_version = cm.resource_version();
        }
        Ok(state)
    }

    #[instrument(level = "debug", skip(self))]
    async fn store_counter(
        &self,
        last_token: u64,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.gate.check().map_err(|_| StoreError::NotLeading)?;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(COUNTER_CONFIGMAP.to_owned()),
                namespace: Some(self.namespace.clone()),
                resource_version: expected.map(str::to_owned),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                COUNTER_KEY.to_owned(),
                encode_counter(last_token),
            )])),
            ..ConfigMap::default()
        };
        let written = match expected {
            None => self.config_maps.create(&PostParams::default(), &cm).await,
            Some(_) => {
                self.config_maps
                    .replace(COUNTER_CONFIGMAP, &PostParams::default(), &cm)
                    .await
            }
        };
        match written {
            Ok(cm) => cm.resource_version().ok_or_else(|| {
                backend(std::io::Error::other(
                    "the API server returned the counter without a resourceVersion",
                ))
            }),
            // 409: created or replaced by someone else since we read it. 404 on replace: deleted
            // since. Either way this coordinator's view of the counter is stale.
            Err(e) if is_status(&e, 409) || (expected.is_some() && is_status(&e, 404)) => {
                Err(StoreError::Conflict {
                    what: self.describe_counter().await,
                    expected: expected.map(str::to_owned),
                })
            }
            Err(e) => Err(backend(e)),
        }
    }

    #[instrument(level = "debug", skip(self, annotations))]
    async fn store_node(
        &self,
        node: &str,
        annotations: &NodeAnnotations,
    ) -> Result<(), StoreError> {
        self.gate.check().map_err(|_| StoreError::NotLeading)?;
        self.nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(annotations.merge_patch()),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }
}
