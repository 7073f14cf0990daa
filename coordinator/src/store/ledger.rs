//! [`KubeLedgerStore`]: the slot ledger persisted in the Kubernetes API.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use tracing::{instrument, warn};

use super::gate::WriteGate;
use rota_core::slots::persist::{
    COUNTER_CONFIGMAP, COUNTER_KEY, COUNTER_LEDGER_KEY, COUNTER_LEDGER_VALUE, LEDGER_COMPONENT,
    LEDGER_COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NodeAnnotations, decode_counter,
    encode_counter, ledger_object_name,
};
use rota_core::slots::{LedgerStore, StoreError, StoredState};

/// Objects listed per request when the ledger is loaded.
const LIST_PAGE: u32 = 500;

/// The ledger's [`LedgerStore`] over the Kubernetes API:
/// - each node's records in its ledger object, a ConfigMap
///   ([`ledger_object_name`](rota_core::slots::persist::ledger_object_name)) of the
///   coordinator's namespace, where only the coordinator may write: created, replaced at the
///   `resourceVersion` last read or written, deleted when the node has no entry; then mirrored
///   as node annotations with merge patches (best effort: the mirror is never trusted, and the
///   next load repairs it);
/// - the fencing counter in the ConfigMap
///   [`COUNTER_CONFIGMAP`](rota_core::slots::persist::COUNTER_CONFIGMAP), created or replaced
///   only at the `resourceVersion` last read.
///
/// A 409 on either is a [`StoreError::Conflict`]: another coordinator wrote, so this one must
/// re-read before it writes again.
#[derive(Debug)]
pub struct KubeLedgerStore {
    nodes: Api<Node>,
    config_maps: Api<ConfigMap>,
    namespace: String,
    gate: WriteGate,
    /// The `resourceVersion` of every ledger object, as last read or written.
    versions: Mutex<HashMap<String, String>>,
}

impl KubeLedgerStore {
    /// A store writing through `client`, with the counter and the ledger objects in
    /// `namespace`, while `gate` is open.
    pub fn new(client: Client, namespace: &str, gate: WriteGate) -> Self {
        KubeLedgerStore {
            nodes: Api::all(client.clone()),
            config_maps: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            gate,
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// The label selector of the ledger objects.
    pub fn ledger_selector() -> String {
        format!("{MANAGED_BY_LABEL}={MANAGED_BY},{LEDGER_COMPONENT_LABEL}={LEDGER_COMPONENT}")
    }

    fn versions(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.versions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists every page of `api` matching `params`.
    async fn list_all<K>(api: &Api<K>, mut params: ListParams) -> Result<Vec<K>, StoreError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut items = Vec::new();
        loop {
            let page = api.list(&params).await.map_err(backend)?;
            items.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(items),
            }
        }
    }

    /// Writes (or deletes, when empty) `node`'s ledger object at the version last seen.
    async fn store_object(&self, node: &str, records: &NodeAnnotations) -> Result<(), StoreError> {
        let name = ledger_object_name(node);
        let expected = self.versions().get(node).cloned();
        let conflict =
            |e: &kube::Error| is_status(e, 409) || (expected.is_some() && is_status(e, 404));
        let conflicted = || StoreError::Conflict {
            what: format!("ledger object {}/{name} of node {node}", self.namespace),
            expected: expected.clone(),
        };
        if records.is_empty() {
            let Some(version) = expected.clone() else {
                return Ok(());
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(version),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            return match self.config_maps.delete(&name, &params).await {
                Ok(_) => {
                    self.versions().remove(node);
                    Ok(())
                }
                Err(e) if conflict(&e) => Err(conflicted()),
                Err(e) => Err(backend(e)),
            };
        }
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: expected.clone(),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (
                        LEDGER_COMPONENT_LABEL.to_owned(),
                        LEDGER_COMPONENT.to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(records.to_ledger_data(node)),
            ..ConfigMap::default()
        };
        let written = match &expected {
            None => {
                self.config_maps
                    .create(&PostParams::default(), &object)
                    .await
            }
            Some(_) => {
                self.config_maps
                    .replace(&name, &PostParams::default(), &object)
                    .await
            }
        };
        match written {
            Ok(object) => {
                let version = object.resource_version().ok_or_else(|| {
                    backend(std::io::Error::other(format!(
                        "the API server returned ledger object {name} without a resourceVersion"
                    )))
                })?;
                self.versions().insert(node.to_owned(), version);
                Ok(())
            }
            Err(e) if conflict(&e) => Err(conflicted()),
            Err(e) => Err(backend(e)),
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
        let params = ListParams::default().limit(LIST_PAGE);
        for node in Self::list_all(&self.nodes, params.clone()).await? {
            state
                .nodes
                .insert(node.name_any(), node.annotations().clone());
        }
        let objects =
            Self::list_all(&self.config_maps, params.labels(&Self::ledger_selector())).await?;
        let mut versions = HashMap::new();
        for object in objects {
            let name = object.name_any();
            let data = object.data.unwrap_or_default();
            let (node, records) =
                NodeAnnotations::from_ledger_data(&name, &data).map_err(backend)?;
            if let Some(version) = object.metadata.resource_version {
                versions.insert(node.clone(), version);
            }
            state.ledger.insert(node, records);
        }
        *self.versions() = versions;
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
            state.legacy = cm
                .data
                .as_ref()
                .and_then(|d| d.get(COUNTER_LEDGER_KEY))
                .is_none_or(|v| v != COUNTER_LEDGER_VALUE);
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
            data: Some(BTreeMap::from([
                (COUNTER_KEY.to_owned(), encode_counter(last_token)),
                (
                    COUNTER_LEDGER_KEY.to_owned(),
                    COUNTER_LEDGER_VALUE.to_owned(),
                ),
            ])),
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
        self.store_object(node, annotations).await?;
        // The ledger object is the truth and is written: a mirror that cannot follow is stale
        // until the node's next write or the next load, which repairs it.
        if let Err(error) = self.store_mirror(node, annotations).await {
            warn!(node, %error, "the node's annotation mirror of its slot was not updated");
        }
        Ok(())
    }

    #[instrument(level = "debug", skip(self, annotations))]
    async fn store_mirror(
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

    #[instrument(level = "debug", skip(self))]
    async fn forget_node(&self, node: &str) -> Result<(), StoreError> {
        self.gate.check().map_err(|_| StoreError::NotLeading)?;
        self.store_object(node, &NodeAnnotations::default()).await
    }
}
