//! rota's agents on simulated nodes of a real control plane: one per node, started when the
//! real DaemonSet controller's pod of `deploy/`'s agent DaemonSet runs on the node, with a
//! token bound to that pod that the node itself requested, as a kubelet does; stopped when
//! the node goes down and started again, with a new token, after its boot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Result;
use super::nodes::{self, AgentOptions, DaemonKind, NodeDaemon, RemoteAgentSetup};
use super::process::HostTokenLog;
use crate::cluster::RemoteNodes;

/// The agents of simulated nodes that run against a real API server.
pub struct RemoteAgents {
    daemons: BTreeMap<String, NodeDaemon>,
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    tokens: HostTokenLog,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for RemoteAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgents")
            .field("nodes", &self.daemons.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RemoteAgents {
    /// Supervise an agent on each of `nodes`, reaching the coordinator's gRPC listener at
    /// `coordinator` (TLS, checked against the CA the coordinator publishes). `node_clients`
    /// holds each node's own client (`system:node:<name>`).
    pub fn start(
        nodes: &RemoteNodes,
        node_clients: BTreeMap<String, kube::Client>,
        coordinator: SocketAddr,
        options: AgentOptions,
    ) -> Result<RemoteAgents> {
        let dir = tempfile::tempdir()?;
        let tokens = HostTokenLog::default();
        let setup = Arc::new(RemoteAgentSetup {
            node_clients,
            coordinator,
            options,
            token_dir: dir.path().to_path_buf(),
            tokens: tokens.clone(),
        });
        let cancel = CancellationToken::new();
        let mut daemons = BTreeMap::new();
        let mut tasks = Vec::new();
        for (node, host) in nodes.hosts() {
            let kind = DaemonKind::RemoteAgent(setup.clone());
            let (daemon, task) =
                nodes::start_daemon(node.clone(), host.clone(), kind, cancel.clone());
            daemons.insert(node.clone(), daemon);
            tasks.push(task);
        }
        Ok(RemoteAgents {
            daemons,
            tasks,
            cancel,
            tokens,
            _dir: dir,
        })
    }

    /// Every fencing token an agent acted with on its host, and the nodes it acted on.
    pub fn host_tokens(&self) -> BTreeMap<u64, BTreeSet<String>> {
        self.tokens.tokens()
    }

    /// Stop every agent.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
