//! [`Backend`]: what a FleetLock request does to the leader's slot ledger, as
//! [`rota_core::fleetlock`] decides it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;

use rota_core::clock::Clock;
use rota_core::fleetlock::{
    self, ClientParams, Identities, Kind, KubeletReport, LockDecision, Refusal, UnlockDecision,
};
use rota_core::model::{NodeName, Operation, Origin};
use rota_core::node::ready_condition;
use rota_core::slots::{self, Completion, LedgerStore, Release};

use super::HostLocks;
use crate::slot_service::SlotService;
use crate::store::ClusterCache;

/// Locks and unlocks for FleetLock clients; installed by the leader's controller for its term.
pub trait Locks: Send + Sync {
    /// `POST /v1/pre-reboot`: `Ok` once the client's node holds a granted reboot slot.
    fn lock<'a>(&'a self, client: &'a ClientParams) -> BoxFuture<'a, Result<(), Refusal>>;
    /// `POST /v1/steady-state`: `Ok` once the client's node holds nothing of the client's.
    fn unlock<'a>(&'a self, client: &'a ClientParams) -> BoxFuture<'a, Result<(), Refusal>>;
}

/// The leader's slot service and cluster cache, seen by FleetLock clients.
pub struct Backend<S> {
    service: Arc<SlotService<S>>,
    cache: ClusterCache,
    hosts: Arc<HostLocks>,
    clock: Arc<dyn Clock>,
    /// When a client first asked steady-state for a held slot: a kubelet report after it that
    /// still shows the boot id from before proves the host did not reboot.
    asked: Mutex<HashMap<(NodeName, u64), Timestamp>>,
    /// Zincati's id of each machine id seen (an HMAC each: computed once).
    zincati: Mutex<HashMap<String, String>>,
}

impl<S: LedgerStore> Backend<S> {
    /// Serves FleetLock clients from `service`, finding their Nodes in `cache`.
    pub fn new(
        service: Arc<SlotService<S>>,
        cache: ClusterCache,
        hosts: Arc<HostLocks>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Backend {
            service,
            cache,
            hosts,
            clock,
            asked: Mutex::new(HashMap::new()),
            zincati: Mutex::new(HashMap::new()),
        }
    }

    /// The Node the client names, or the listed host it is, in the client's group.
    fn client_of(&self, client: &ClientParams) -> Result<Client, Refusal> {
        let identities = {
            let state = self.cache.read();
            let mut zincati = self.zincati.lock().unwrap_or_else(PoisonError::into_inner);
            state
                .nodes()
                .iter()
                .map(|(name, node)| {
                    let machine_id = machine_id(node);
                    let zincati_id = machine_id.as_ref().and_then(|m| {
                        if let Some(id) = zincati.get(m) {
                            return Some(id.clone());
                        }
                        let id = super::zincati_id(m)?;
                        zincati.insert(m.clone(), id.clone());
                        Some(id)
                    });
                    Identities {
                        name: name.clone(),
                        machine_id,
                        zincati_id,
                    }
                })
                .collect::<Vec<_>>()
        };
        let node = match fleetlock::resolve(&client.id, &identities) {
            Ok(node) => node,
            Err(refusal) if refusal.kind == Kind::UnknownId => {
                let listed: Vec<(String, Vec<String>)> = self
                    .cache
                    .read()
                    .policies()
                    .iter()
                    .map(|(name, policy)| {
                        let hosts = policy.spec.fleet_lock.hosts.iter();
                        (
                            name.clone(),
                            hosts.map(|h| fleetlock::normalize_id(h)).collect(),
                        )
                    })
                    .collect();
                let pool = fleetlock::find_host(
                    &client.id,
                    &client.group,
                    listed.iter().map(|(p, h)| (p.as_str(), h.as_slice())),
                )?;
                return Ok(Client::Host {
                    pool,
                    id: fleetlock::normalize_id(&client.id),
                });
            }
            Err(refusal) => return Err(refusal),
        };
        let pool = self.service.policy(&node).map(|p| p.name);
        fleetlock::check_group(&client.group, &node, pool.as_deref())?;
        Ok(Client::Node(node))
    }

    async fn pre_reboot(&self, client: &ClientParams) -> Result<(), Refusal> {
        let node = match self.client_of(client)? {
            Client::Node(node) => node,
            Client::Host { pool, id } => {
                return self.hosts.ask(&pool, &id).await.map_err(|reasons| {
                    Refusal::new(
                        Kind::Queued,
                        format!(
                            "reboot of host {id} in pool {pool} queued: {}",
                            reasons.join("; ")
                        ),
                    )
                });
            }
        };
        let view = self.service.view(&node).await.map_err(refused)?;
        let view = match fleetlock::pre_reboot(&view) {
            LockDecision::Request => self
                .service
                .request(&node, Operation::Reboot, Origin::FleetLock)
                .await
                .map_err(refused)?,
            LockDecision::Locked => return Ok(()),
            LockDecision::Refuse(refusal) => return Err(refusal),
        };
        match fleetlock::pre_reboot(&view) {
            LockDecision::Locked => Ok(()),
            LockDecision::Refuse(refusal) => Err(refusal),
            LockDecision::Request => Err(Refusal::new(
                Kind::Queued,
                format!("reboot of node {node} requested"),
            )),
        }
    }

    async fn steady_state(&self, client: &ClientParams) -> Result<(), Refusal> {
        let node = match self.client_of(client)? {
            Client::Node(node) => node,
            Client::Host { pool, id } => {
                // Not a Kubernetes node: no health to check beyond the host's word.
                return self
                    .hosts
                    .release(&pool, &id)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        Refusal::new(
                            Kind::Internal,
                            format!("releasing the lock of host {id}: {e}"),
                        )
                    });
            }
        };
        let view = self.service.view(&node).await.map_err(refused)?;
        let (queued, slot) = self
            .service
            .read(|ledger| {
                (
                    ledger.queue().find(|r| r.node == node).cloned(),
                    ledger.slots().find(|s| s.node == node).cloned(),
                )
            })
            .await;
        let kubelet = self
            .cache
            .read()
            .node(&node)
            .map(|n| kubelet_report(n))
            .unwrap_or_default();
        let now = self.clock.now();
        let asked_since = match &slot {
            Some(slot) => *self
                .asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((node.clone(), slot.token.0))
                .or_insert(now),
            None => now,
        };
        let decision =
            fleetlock::steady_state(&view, queued.as_ref(), slot.as_ref(), &kubelet, asked_since);
        match decision {
            UnlockDecision::Unlocked => Ok(()),
            UnlockDecision::Refuse(refusal) => Err(refusal),
            UnlockDecision::Withdraw => {
                self.service
                    .release(
                        &node,
                        Release::Withdraw,
                        "the FleetLock client reached steady state",
                    )
                    .await
                    .map_err(refused)?;
                Ok(())
            }
            UnlockDecision::GiveBack { token } => {
                self.service
                    .release(
                        &node,
                        Release::Holder(token),
                        "the FleetLock client reached steady state without rebooting",
                    )
                    .await
                    .map_err(refused)?;
                self.forget(&node, token.0);
                Ok(())
            }
            UnlockDecision::Complete { token, boot_id } => {
                let completion = Completion {
                    success: true,
                    message: format!(
                        "the FleetLock client reports steady state; the kubelet reports boot {boot_id}"
                    ),
                    boot_id: Some(boot_id),
                    rebooted: true,
                    changed: Vec::new(),
                };
                self.service
                    .complete(&node, token, completion)
                    .await
                    .map_err(refused)?;
                self.forget(&node, token.0);
                Err(Refusal::new(
                    Kind::Verifying,
                    format!(
                        "node {node} rebooted; rota verifies its health and then releases the slot"
                    ),
                ))
            }
        }
    }

    fn forget(&self, node: &str, token: u64) {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(node.to_owned(), token));
    }
}

impl<S: LedgerStore> Locks for Backend<S> {
    fn lock<'a>(&'a self, client: &'a ClientParams) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(self.pre_reboot(client))
    }

    fn unlock<'a>(&'a self, client: &'a ClientParams) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(self.steady_state(client))
    }
}

/// Who a FleetLock client is.
enum Client {
    /// A Kubernetes Node.
    Node(NodeName),
    /// A host that is not a Kubernetes node, listed by `pool`'s policy; its normalized id.
    Host { pool: String, id: String },
}

/// The Node's `status.nodeInfo.machineID`, lower case; `None` when empty.
fn machine_id(node: &Node) -> Option<String> {
    let id = node.status.as_ref()?.node_info.as_ref()?.machine_id.trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// What the kubelet last reported.
fn kubelet_report(node: &Node) -> KubeletReport {
    let boot_id = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .filter(|b| !b.is_empty());
    let heartbeat = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    KubeletReport { boot_id, heartbeat }
}

/// A slot service error as the protocol's error.
fn refused(error: slots::Error) -> Refusal {
    match error {
        slots::Error::NotLeading => Refusal::new(
            Kind::NotLeader,
            "this coordinator replica does not lead; ask again",
        ),
        slots::Error::Ledger(refused) => Refusal::new(Kind::Conflict, refused.to_string()),
        other => Refusal::new(Kind::Internal, other.to_string()),
    }
}
