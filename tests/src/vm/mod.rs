//! The VM suite's harness (`tests/vm/`): rota's agent on a real Debian machine.
//!
//! A guest ([`guest`]) boots the cached image ([`image`]) under qemu; the `rota-agent` binary
//! of this build, its service-account token and the coordinator's CA reach it over a 9p share,
//! and it runs there as a systemd service in its own mount namespace, in which the host's
//! `/var/lib`, `/srv` and `/etc/apt` are empty: the agent reaches the machine only by entering
//! PID 1's namespaces ([`rota_agent::host::NamespaceHost`]), as from a privileged pod. The
//! guest's kubelet stand-in reports the Node (and the agent's pod) to the emulated API server
//! running in the test, which the real `rota-coordinator` binary, started by the test, watches
//! and drives: it admits, drains, grants and verifies through that view.

// These helpers run only inside tests, and fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod guest;
pub mod image;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use kube::CustomResourceExt;
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec};
use rota_core::slots::persist::{LAST_ANNOTATION, SLOT_ANNOTATION};
use rota_sim::apiserver::{ApiServer, GroupResource, ResourceKey, ServerHandle, Store};
use serde_json::{Value, json};

pub use guest::{Guest, Output};
pub use image::Image;

use crate::e2e::annotation;
use crate::prerequisites;
use crate::shipped::{Coordinator, workspace_binary};

/// The guest's node name.
pub const NODE: &str = "vm-node";
/// The namespace of rota (the coordinator, the agent's DaemonSet).
pub const NAMESPACE: &str = "rota-system";
/// The agent's pod, bound to [`NODE`], whose token the agent sends.
pub const AGENT_POD: &str = "rota-agent-vm";
/// A workload pod on the node, which the drain evicts.
pub const WORKLOAD_POD: &str = "web-0";
/// The pool's MaintenancePolicy.
pub const POLICY: &str = "vm";
/// The agent's state file on the guest.
pub const STATE_PATH: &str = rota_agent::state::DEFAULT_STATE_PATH;
/// Longest any one wait on the cluster or the guest may take (TCG on two busy cores).
pub const WAIT: Duration = Duration::from_secs(240);

/// The tools the suite runs on the host.
const TOOLS: [&str; 9] = [
    "qemu-system-x86_64",
    "qemu-img",
    "debootstrap",
    "mkfs.ext4",
    "dpkg-deb",
    "dpkg-scanpackages",
    "setpriv",
    "sha256sum",
    "chroot",
];

/// Why the suite cannot run here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (debootstrap and chroot build the image)".into());
    }
    TOOLS
        .into_iter()
        .find(|tool| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|tool| {
            format!("{tool} is not installed (apt-get install qemu-system-x86 qemu-utils debootstrap dpkg-dev)")
        })
}

/// The image, built on first use; `None` when the suite cannot run here and the developer
/// asked to skip it ([`prerequisites::SKIP_VM_SUITE`]), a failure saying why otherwise.
pub fn image_or_skip() -> Option<Image> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    // One build at a time in this process; the tests that wait for it reuse it.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let image = IMAGE.get_or_init(|| match missing_prerequisite() {
        Some(why) => Err(why),
        None => Ok(image::image()),
    });
    match image {
        Ok(image) => Some(image.clone()),
        Err(why) => {
            prerequisites::skip_or_fail("the VM suite", why, prerequisites::SKIP_VM_SUITE);
            None
        }
    }
}

/// The cluster side: the emulated API server (on the host's loopback, which is 10.0.2.2 to the
/// guest) with the node's objects, and the `rota-coordinator` binary driving it.
pub struct Cluster {
    /// The emulator's store.
    pub store: Store,
    server: ServerHandle,
    /// The coordinator process.
    pub coordinator: Coordinator,
    /// Where the coordinator logs; removed with the cluster.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Serves the node's objects and `policy`, and starts the coordinator.
    pub async fn start(policy: MaintenancePolicySpec) -> Cluster {
        let store = Store::new();
        store.create_as(&MaintenancePolicy::crd()).unwrap();
        let create = |resource: GroupResource, namespace: Option<&str>, object: Value| {
            if let Err(e) = store.create(&resource, namespace, object) {
                // The store starts with the well-known namespaces.
                assert_eq!(e.code(), 409, "{e}");
            }
        };
        create(
            GroupResource::core("namespaces"),
            None,
            json!({"metadata": {"name": NAMESPACE}}),
        );
        // Registered when the node joined; its kubelet reports its status from the guest.
        create(
            GroupResource::core("nodes"),
            None,
            json!({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}}),
        );
        create(
            GroupResource::new("apps", "daemonsets"),
            Some(NAMESPACE),
            json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "rota-agent", "namespace": NAMESPACE},
                "spec": {
                    "selector": {"matchLabels": {"app": "rota-agent"}},
                    "template": {
                        "metadata": {"labels": {"app": "rota-agent"}},
                        "spec": {"serviceAccountName": "rota-agent",
                                 "containers": [{"name": "agent", "image": "rota-agent"}]}
                    }
                }
            }),
        );
        let daemon_set = store
            .get(&ResourceKey::new(
                GroupResource::new("apps", "daemonsets"),
                Some(NAMESPACE),
                "rota-agent",
            ))
            .unwrap();
        let ds_uid = daemon_set.pointer("/metadata/uid").cloned().unwrap();
        create(
            GroupResource::core("pods"),
            Some(NAMESPACE),
            json!({
                "metadata": {"name": AGENT_POD, "labels": {"app": "rota-agent"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "name": "rota-agent", "uid": ds_uid, "controller": true}]},
                "spec": {"nodeName": NODE, "serviceAccountName": "rota-agent",
                    "containers": [{"name": "agent", "image": "rota-agent"}]}
            }),
        );
        create(
            GroupResource::core("pods"),
            Some("default"),
            json!({
                "metadata": {"name": WORKLOAD_POD, "labels": {"app": "web"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "web-5d8f", "uid": "web-5d8f-uid", "controller": true}]},
                "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "web", "image": "nginx"}]},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}]}
            }),
        );
        create(
            GroupResource::new("rota.dev", "maintenancepolicies"),
            None,
            serde_json::to_value(MaintenancePolicy::new(POLICY, policy)).unwrap(),
        );
        let server = ApiServer::start(store.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("rota-vm-cluster.")
            .tempdir()
            .unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
        let coordinator =
            Coordinator::start_logging_to(dir.path(), &kubeconfig, "rota-coordinator-0");
        Cluster {
            store,
            server,
            coordinator,
            _dir: dir,
        }
    }

    /// The emulator's port on the host's loopback.
    pub fn api_port(&self) -> u16 {
        self.server.addr().port()
    }

    /// The object `name` of `resource`, if it exists.
    pub fn get(
        &self,
        resource: GroupResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.store
            .get(&ResourceKey::new(resource, namespace, name))
            .ok()
            .map(|v| (*v).clone())
    }

    /// The Node.
    pub fn node(&self) -> Value {
        self.get(GroupResource::core("nodes"), None, NODE).unwrap()
    }

    /// The node's slot (`rota.dev/slot`), if it holds one.
    pub fn slot(&self) -> Option<Value> {
        annotation(&self.node(), SLOT_ANNOTATION).and_then(|s| serde_json::from_str(&s).ok())
    }

    /// The node's last maintenance (`rota.dev/last-maintenance`), if any.
    pub fn last_maintenance(&self) -> Option<Value> {
        annotation(&self.node(), LAST_ANNOTATION).and_then(|s| serde_json::from_str(&s).ok())
    }

    /// The Events about the node: (reason, note), oldest first.
    pub fn events(&self) -> Vec<(String, String)> {
        crate::e2e::events_about_in(&self.store, NODE)
    }

    /// Whether an Event with this reason about the node was recorded.
    pub fn has_event(&self, reason: &str) -> bool {
        self.events().iter().any(|(r, _)| r == reason)
    }

    /// Whether the node is cordoned.
    pub fn cordoned(&self) -> bool {
        self.node().pointer("/spec/unschedulable") == Some(&json!(true))
    }

    /// The boot id the kubelet reports, when the node is Ready.
    pub fn ready_boot_id(&self) -> Option<String> {
        let node = self.node();
        let ready = node
            .pointer("/status/conditions")?
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let boot = node.pointer("/status/nodeInfo/bootID")?.as_str()?;
        ready.then(|| boot.to_owned())
    }

    /// A token for the agent's pod (audience `rota`), as the kubelet projects it.
    pub fn agent_token(&self) -> String {
        self.store
            .issue_service_account_token(NAMESPACE, AGENT_POD, "rota", Duration::from_secs(3600))
            .unwrap()
    }

    /// Waits (woken by the store's writes) until `check` answers, for [`WAIT`] at most.
    pub async fn wait<T>(&self, what: &str, mut check: impl FnMut(&Cluster) -> Option<T>) -> T {
        rota_sim::cluster::wait_for(&self.store, what, WAIT, |_| {
            check(self).ok_or_else(|| "not yet".to_owned())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The CA bundle the coordinator published (ConfigMap `rota-ca`), once it did.
    pub async fn ca(&self) -> String {
        self.wait("the coordinator to publish its CA", |cluster| {
            cluster
                .get(
                    GroupResource::core("configmaps"),
                    Some(NAMESPACE),
                    "rota-ca",
                )
                .and_then(|cm| cm.pointer("/data/ca.crt")?.as_str().map(str::to_owned))
        })
        .await
    }

    /// What a failure shows of the cluster side: the node, the Events, the coordinator's log.
    pub fn diagnostics(&self) -> String {
        let log = self.coordinator.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "\n--- node ---\n{}\n--- events ---\n{:#?}\n--- coordinator log (last 80 lines) ---\n{}\n",
            serde_json::to_string_pretty(&self.node()).unwrap_or_default(),
            self.events(),
            lines[lines.len().saturating_sub(80)..].join("\n")
        )
    }
}

/// A guest that is a node of the cluster: its kubelet reports to the emulator; its agent (once
/// started) talks to the coordinator. When a test fails, dropping it prints the cluster's side
/// and the guest's console (where the agent and the kubelet log too).
pub struct VmNode {
    /// The guest.
    pub guest: Guest,
    /// The cluster.
    pub cluster: Cluster,
    /// The 9p share's directory on the host; removed with the node.
    _share: tempfile::TempDir,
}

impl VmNode {
    /// Boots a guest as [`NODE`] of a cluster with `policy`, its kubelet Ready with the guest's
    /// boot id; `None` when the suite is skipped.
    pub async fn start(policy: MaintenancePolicySpec) -> Option<VmNode> {
        let image = tokio::task::spawn_blocking(image_or_skip).await.unwrap()?;
        let cluster = Cluster::start(policy).await;
        let share = tempfile::Builder::new()
            .prefix("rota-vm-share.")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::copy(
            workspace_binary("rota-agent", "rota-agent"),
            share.path().join("rota-agent"),
        )
        .unwrap();
        std::fs::write(share.path().join("token"), cluster.agent_token()).unwrap();
        std::fs::write(share.path().join("ca.crt"), cluster.ca().await).unwrap();
        let guest = Guest::boot(&image, share.path()).await;
        let mut node = VmNode {
            guest,
            cluster,
            _share: share,
        };
        let port = node.cluster.api_port();
        node.guest
            .ok(&format!(
                "cat > /etc/default/kubelet <<EOF\nKUBELET_APISERVER=http://10.0.2.2:{port}\nKUBELET_NODE_NAME={NODE}\nKUBELET_POD={NAMESPACE}/{AGENT_POD}\nKUBELET_POD_UNIT=rota-agent.service\nEOF\nsystemctl start kubelet"
            ))
            .await;
        node.wait_ready(&node.guest.boot_id()).await;
        Some(node)
    }

    /// Waits until the kubelet reports the node Ready with boot id `boot`.
    pub async fn wait_ready(&self, boot: &str) {
        self.cluster
            .wait(&format!("the node Ready in boot {boot}"), |cluster| {
                (cluster.ready_boot_id().as_deref() == Some(boot)).then_some(())
            })
            .await;
    }

    /// Enables the update suite `suite` in the guest's apt sources.
    pub async fn enable_suite(&mut self, suite: &str) {
        self.guest.ok(&image::enable_suite_script(suite)).await;
    }

    /// Installs and starts the agent's unit: `rota-agent run` from the share, as the DaemonSet's
    /// pod runs it — its own mount namespace with the host's package database, state and apt
    /// configuration out of sight, restarted when it dies.
    pub async fn start_agent(&mut self) {
        let grpc = self.cluster.coordinator.grpc.port();
        let share = image::SHARE;
        let unit = format!(
            "[Unit]
Description=rota-agent, as its DaemonSet's pod runs it
After=network.target kubelet.service
RequiresMountsFor={share}

[Service]
ExecStart={share}/rota-agent run
Environment=ROTA_COORDINATOR=https://10.0.2.2:{grpc}
Environment=ROTA_NODE_NAME={NODE}
Environment=ROTA_TOKEN_FILE={share}/token
Environment=ROTA_CA_FILE={share}/ca.crt
Environment=ROTA_RETRY_INTERVAL_MS=1000
Environment=ROTA_LOG=info
PrivateMounts=yes
PrivateTmp=yes
TemporaryFileSystem=/var/lib /srv /etc/apt
Restart=always
RestartSec=2
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"
        );
        self.guest
            .ok(&format!(
                "cat > /etc/systemd/system/rota-agent.service <<'EOF'\n{unit}EOF\nsystemctl daemon-reload\nsystemctl enable --now rota-agent.service"
            ))
            .await;
    }

    /// A systemd property of a unit in the guest (`systemctl show -P`).
    pub async fn unit_property(&mut self, unit: &str, property: &str) -> String {
        self.guest
            .ok(&format!("systemctl show -P {property} {unit}"))
            .await
            .trim()
            .to_owned()
    }

    /// The agent's state file on the guest, if it has one.
    pub async fn agent_state(&mut self) -> Option<Value> {
        let out = self
            .guest
            .sh(&format!("cat {STATE_PATH}"), Duration::from_secs(60))
            .await;
        (out.code == 0).then(|| serde_json::from_str(&out.text).ok())?
    }

    /// The installed version of `package` in the guest.
    pub async fn installed(&mut self, package: &str) -> String {
        self.guest
            .ok(&format!("dpkg-query -W -f='${{Version}}' {package}"))
            .await
    }

    /// Waits until the node's slot is gone, its last maintenance recorded and the node
    /// uncordoned (a write of its own, after the release) with its Event (written after the
    /// uncordon, on the coordinator's Event task), and returns that record.
    pub async fn wait_released(&self) -> Value {
        self.cluster
            .wait(
                "the slot released, the maintenance recorded and the node uncordoned",
                |cluster| match cluster.slot() {
                    None if !cluster.cordoned() && cluster.has_event("Uncordoned") => {
                        cluster.last_maintenance()
                    }
                    _ => None,
                },
            )
            .await
    }
}

impl Drop for VmNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The guest prints its console as it is dropped, after this.
            eprintln!("{}", self.cluster.diagnostics());
        }
    }
}
