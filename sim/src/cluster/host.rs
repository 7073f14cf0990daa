//! Simulated hosts: rota-agent's [`Host`] and [`PackageManager`] in memory, wired to the node's
//! simulated kubelet.
//!
//! The files, package database, holds, boot id and running kernel live in an agent
//! [`MemoryHost`]; this layer adds what ties the host to the cluster:
//! - [`Host::reboot`] takes the node through its reboot cycle (the kubelet falls silent, the
//!   node turns `Unknown` once the node-monitor grace period passed, its pods stay bound; boot
//!   with a new boot id and the newest installed kernel, pods restarted in place, Ready again);
//!   `/run` is a tmpfs and is emptied, every other file survives, as a host path does;
//! - [`Host::restart_unit`] of `kubelet` restarts the simulated kubelet, which then reports the
//!   installed kubelet package's version;
//! - installing a kernel package (`linux-image-amd64`) installs the kernel image it depends on
//!   (`/boot/vmlinuz-RELEASE`) and writes the reboot sentinel, as Debian's packages do;
//! - a kubeadm host ([`HostSpec::control_plane`], [`HostSpec::kubernetes`]) has kubeadm's static
//!   pod manifests, etcd tools and certificates, and per-minor Kubernetes package repositories
//!   that follow its apt source list; `kubeadm`, `etcdctl` and `etcdutl` answer as
//!   [`super::kubeadm`] describes, and a changed manifest reaches the kubelet, which restarts
//!   the static pod.
//!
//! The agent calls these from blocking threads; the kubelet is told through a channel.
use rota_core::model::{Blocked, Impact, PackagePin, PendingPackage};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rota_agent::detect::version::VersionScheme;
use rota_agent::host::memory::exited;
use rota_agent::host::{CommandOutput, ExitStatus, Host, HostCommand, MemoryHost, RebootMethod};
use rota_agent::packages::{
    InstallPurpose, PackageChange, PackageManager, RepairOutcome, UpgradeSelection,
};
use tokio::sync::{mpsc, watch};

use super::faults::Faults;
use super::kubeadm::{
    self, ETCD_PKI, ETCDCTL, ETCDUTL, EtcdLayout, KEYRING, KUBERNETES_PACKAGES, KubeadmCluster,
    KubernetesSources, MANIFESTS, SOURCES_LIST, StaticPod, ToolAction, ToolRecord,
};
use super::scenario::HostSpec;
use rota_core::policy::KubeVersion;

/// The Debian metapackage that pulls in the current kernel image.
pub const KERNEL_PACKAGE: &str = "linux-image-amd64";
/// The kubelet package.
pub const KUBELET_PACKAGE: &str = "kubelet";
/// The container runtime package.
pub const CONTAINERD_PACKAGE: &str = "containerd.io";

/// Whether a simulated host is running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Running with this boot id.
    Up {
        /// `/proc/sys/kernel/random/boot_id` of this boot.
        boot_id: String,
    },
    /// Rebooting (or never coming back).
    Down,
}

impl PowerState {
    /// Whether the host runs.
    pub fn is_up(&self) -> bool {
        matches!(self, PowerState::Up { .. })
    }
}

/// What the host asks of its node's kubelet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KubeletCommand {
    /// The host reboots.
    Reboot,
    /// `systemctl restart kubelet`.
    RestartKubelet,
    /// Power a host that stayed down back on.
    PowerOn,
    /// The node leaves the cluster (scale-down): its Node object and pods go away.
    Remove,
    /// A static pod manifest changed: the kubelet runs what the manifests say now.
    StaticPodsChanged,
}

struct Inner {
    node: String,
    memory: MemoryHost,
    commands: mpsc::UnboundedSender<KubeletCommand>,
    power: watch::Sender<PowerState>,
    /// `linux-image-amd64` version → the kernel release it installs.
    kernel_releases: Mutex<BTreeMap<String, String>>,
    /// What kubeadm keeps in the cluster, shared with the cluster's other hosts.
    kubeadm: KubeadmCluster,
    /// The cluster's faults (`kubeadm upgrade apply` failing here).
    faults: watch::Receiver<Faults>,
    /// The Kubernetes package repositories, when the host installs from them.
    sources: Option<KubernetesSources>,
    /// The minors whose repositories the last refresh indexed.
    indexed: Mutex<BTreeSet<String>>,
    /// Every call of kubeadm and the etcd tools.
    tools: Mutex<Vec<ToolRecord>>,
}

/// A simulated node's host. Clones share the host; `Arc::new(host.clone())` is an
/// `Arc<dyn Host>` for the agent.
#[derive(Clone)]
pub struct SimHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHost")
            .field("node", &self.inner.node)
            .field("power", &*self.inner.power.borrow())
            .finish()
    }
}

impl SimHost {
    /// A host for `node` as `spec` describes it, in the kubeadm cluster `kubeadm` with the
    /// cluster's `faults`, and the receiving end of its kubelet's command channel.
    pub(crate) fn new(
        node: &str,
        spec: &HostSpec,
        kubeadm: &KubeadmCluster,
        faults: watch::Receiver<Faults>,
    ) -> (SimHost, mpsc::UnboundedReceiver<KubeletCommand>) {
        let memory = MemoryHost::debian();
        memory.put_file("/etc/os-release", &spec.os_release);
        memory.put_file("/etc/hostname", format!("{node}\n"));
        memory.put_file("/etc/machine-id", format!("{}\n", spec.machine_id));
        memory.set_kernel(&spec.kernel);
        memory.put_file(format!("/boot/vmlinuz-{}", spec.kernel), "");
        memory.put_file(format!("/lib/modules/{}/modules.dep", spec.kernel), "");
        for (name, version) in &spec.installed {
            memory.install(name, version);
        }
        for update in &spec.available {
            memory.add_available(&update.name, &update.version, update.security);
        }
        for (name, version) in &spec.installed {
            // The installed version is also what the repositories offer (for rollbacks).
            memory.add_available(name, version, false);
        }
        for hold in &spec.holds {
            memory.hold(hold);
        }
        if let Some(cp) = &spec.control_plane {
            for (path, text) in kubeadm::initial_manifests(cp) {
                memory.put_file(path, text);
            }
            memory.put_file(
                kubeadm::ADMIN_CONF,
                format!("apiVersion: v1\nkind: Config\n# kubeadm's admin kubeconfig on {node}\n"),
            );
            if cp.etcd == EtcdLayout::Stacked {
                for file in ETCD_PKI {
                    memory.put_file(file, format!("{file} of {node}\n"));
                }
                memory.put_file(ETCDCTL, "");
                if cp.etcdutl {
                    memory.put_file(ETCDUTL, "");
                }
            }
        }
        let mut indexed = BTreeSet::new();
        if let Some(sources) = &spec.kubernetes {
            let list = sources.sources_list(&sources.minor);
            memory.put_file(SOURCES_LIST, &list);
            memory.put_file(KEYRING, "");
            for version in sources.releases.values().flatten() {
                for name in KUBERNETES_PACKAGES {
                    memory.add_available(name, version, false);
                }
            }
            // As after the `apt-get update` that installed the packages.
            indexed = sources.indexed(&list).unwrap_or_default();
        }
        let boot_id = memory.boot_id().unwrap_or_default();
        let (commands, rx) = mpsc::unbounded_channel();
        let (power, _) = watch::channel(PowerState::Up { boot_id });
        let host = SimHost {
            inner: Arc::new(Inner {
                node: node.to_string(),
                memory,
                commands,
                power,
                kernel_releases: Mutex::new(spec.kernel_releases.clone()),
                kubeadm: kubeadm.clone(),
                faults,
                sources: spec.kubernetes.clone(),
                indexed: Mutex::new(indexed),
                tools: Mutex::new(Vec::new()),
            }),
        };
        install_systemctl(&host);
        (host, rx)
    }

    /// The node this host runs.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The in-memory host underneath, for test set-up: extra files, command handlers,
    /// package faults, the event log (`reboot requested`, `restart kubelet`, `boot boot-2`).
    pub fn memory(&self) -> &MemoryHost {
        &self.inner.memory
    }

    /// The current power state.
    pub fn power_state(&self) -> PowerState {
        self.inner.power.borrow().clone()
    }

    /// Changes of the power state: a harness restarts the agent it runs for this node when the
    /// host comes back up, as a DaemonSet pod would be.
    pub fn power(&self) -> watch::Receiver<PowerState> {
        self.inner.power.subscribe()
    }

    /// The installed kubelet package's version as the kubelet reports it (`v1.33.0`).
    pub fn kubelet_version(&self) -> Option<String> {
        self.inner
            .memory
            .installed(KUBELET_PACKAGE)
            .map(|v| format!("v{}", rota_agent::detect::upstream_version(&v)))
    }

    /// The static pods kubeadm's manifests describe, by component (none on a worker).
    pub fn static_pods(&self) -> BTreeMap<String, StaticPod> {
        let memory = &self.inner.memory;
        let names = memory.list_dir(Path::new(MANIFESTS)).unwrap_or_default();
        names
            .iter()
            .filter(|n| n.ends_with(".yaml"))
            .filter_map(|n| memory.file(format!("{MANIFESTS}/{n}")))
            .filter_map(|text| kubeadm::parse_manifest(&String::from_utf8_lossy(&text)))
            .map(|pod| (pod.component.clone(), pod))
            .collect()
    }

    /// Every call of kubeadm and the etcd tools on this host, oldest first.
    pub fn tool_log(&self) -> Vec<ToolRecord> {
        self.inner.tools.lock().clone()
    }

    /// The minors whose Kubernetes package repositories the host's last refresh indexed.
    pub fn kubernetes_minors(&self) -> BTreeSet<String> {
        self.inner.indexed.lock().clone()
    }

    pub(crate) fn kubeadm_cluster(&self) -> &KubeadmCluster {
        &self.inner.kubeadm
    }

    pub(crate) fn faults(&self) -> Faults {
        self.inner.faults.borrow().clone()
    }

    pub(crate) fn record(&self, action: ToolAction, success: bool) {
        self.inner.tools.lock().push(ToolRecord {
            time: jiff::Timestamp::now(),
            action,
            success,
        });
    }

    /// kubeadm moves the node's control-plane components to `version`: it rewrites their
    /// manifests, and the kubelet restarts them.
    pub(crate) fn write_static_pods(&self, version: KubeVersion) {
        for (path, text) in kubeadm::upgraded_manifests(&self.static_pods(), version) {
            self.inner.memory.put_file(path, text);
        }
        self.static_pods_changed();
    }

    fn static_pods_changed(&self) {
        // A host whose kubelet is gone (a removed node) has nobody to tell.
        let _ = self.send(KubeletCommand::StaticPodsChanged);
    }

    /// The Kubernetes package versions the indexed repositories offer (`None`: `name` is not
    /// one of theirs, or the host does not install from them).
    fn offered(&self, name: &str) -> Option<BTreeSet<String>> {
        let sources = self.inner.sources.as_ref()?;
        KUBERNETES_PACKAGES
            .contains(&name)
            .then(|| sources.offered(&self.inner.indexed.lock()))
    }

    /// The container runtime as a node reports it (`containerd://1.7.24`).
    pub fn container_runtime_version(&self) -> String {
        let version = self
            .inner
            .memory
            .installed(CONTAINERD_PACKAGE)
            .map(|v| rota_agent::detect::upstream_version(&v))
            .unwrap_or_else(|| "unknown".into());
        format!("containerd://{version}")
    }

    /// `PRETTY_NAME` of the host's os-release.
    pub fn os_image(&self) -> String {
        let text = self
            .inner
            .memory
            .file("/etc/os-release")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into())
    }

    /// `/etc/machine-id`.
    pub fn machine_id(&self) -> String {
        self.inner
            .memory
            .file("/etc/machine-id")
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    }

    pub(crate) fn set_power(&self, state: PowerState) {
        self.inner.power.send_replace(state);
    }

    /// The host boots: new boot id, `/run` emptied, the newest installed kernel running.
    pub(crate) fn boot(&self) -> String {
        self.inner.memory.boot();
        self.inner.memory.boot_id().unwrap_or_default()
    }

    pub(crate) fn send(&self, command: KubeletCommand) -> rota_agent::Result<()> {
        self.inner.commands.send(command).map_err(|_| {
            rota_agent::Error::Refused(format!(
                "the simulated node {} is shut down",
                self.inner.node
            ))
        })
    }

    /// Installs what a kernel metapackage change pulls in: the kernel image of the new version.
    fn install_kernel_images(&self, changes: &mut Vec<PackageChange>) {
        let releases = self.inner.kernel_releases.lock().clone();
        let mut extra = Vec::new();
        for change in changes.iter() {
            if change.name != KERNEL_PACKAGE {
                continue;
            }
            let Some(release) = change.after.as_ref().and_then(|v| releases.get(v)) else {
                continue;
            };
            let image = format!("linux-image-{release}");
            let memory = &self.inner.memory;
            if memory.installed(&image).is_some() {
                continue;
            }
            memory.put_file(format!("/boot/vmlinuz-{release}"), "");
            memory.put_file(format!("/lib/modules/{release}/modules.dep"), "");
            let version = change.after.clone().unwrap_or_default();
            memory.install(&image, &version);
            extra.push(PackageChange {
                name: image,
                before: None,
                after: Some(version),
            });
        }
        changes.extend(extra);
        changes.sort();
    }
}

impl Host for SimHost {
    /// `kubelet --version`, `containerd --version` and `uname -r` answer from the package
    /// database and the running kernel, as the binaries on a host do; `kubeadm`, `etcdctl`
    /// and `etcdutl` as [`super::kubeadm`] describes; other commands go to the handlers
    /// registered on [`SimHost::memory`].
    fn run(&self, cmd: &HostCommand) -> rota_agent::Result<CommandOutput> {
        if let Some(output) = kubeadm::run(self, &cmd.argv) {
            return Ok(output);
        }
        let args: Vec<&str> = cmd.argv.iter().map(String::as_str).collect();
        let memory = &self.inner.memory;
        let installed = |name: &str| {
            memory
                .installed(name)
                .map(|v| rota_agent::detect::upstream_version(&v))
        };
        let output = match args.as_slice() {
            ["kubelet", "--version"] => {
                installed(KUBELET_PACKAGE).map(|v| format!("Kubernetes v{v}\n"))
            }
            ["containerd", "--version"] => installed(CONTAINERD_PACKAGE).map(|v| {
                format!("containerd containerd.io {v} 88c3d9bc5b5a193f40b7c14fa996d23532d6f956\n")
            }),
            ["uname", "-r"] => Some(format!("{}\n", memory.kernel_release()?)),
            _ => None,
        };
        match output {
            Some(stdout) => Ok(exited(0, &stdout)),
            None => memory.run(cmd),
        }
    }

    fn read_file(&self, path: &Path) -> rota_agent::Result<Vec<u8>> {
        self.inner.memory.read_file(path)
    }

    fn write_file_atomic(&self, path: &Path, data: &[u8]) -> rota_agent::Result<()> {
        self.inner.memory.write_file_atomic(path, data)?;
        if path.starts_with(MANIFESTS) {
            // The kubelet watches its manifest directory.
            self.static_pods_changed();
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> rota_agent::Result<bool> {
        self.inner.memory.remove_file(path)
    }

    fn exists(&self, path: &Path) -> rota_agent::Result<bool> {
        self.inner.memory.exists(path)
    }

    fn list_dir(&self, path: &Path) -> rota_agent::Result<Vec<String>> {
        self.inner.memory.list_dir(path)
    }

    fn boot_id(&self) -> rota_agent::Result<String> {
        self.inner.memory.boot_id()
    }

    fn kernel_release(&self) -> rota_agent::Result<String> {
        self.inner.memory.kernel_release()
    }

    fn reboot(&self, method: &RebootMethod) -> rota_agent::Result<()> {
        self.inner.memory.reboot(method)?;
        self.send(KubeletCommand::Reboot)
    }

    fn restart_unit(&self, unit: &str) -> rota_agent::Result<()> {
        self.inner.memory.restart_unit(unit)?;
        if unit.trim_end_matches(".service") == "kubelet" {
            self.send(KubeletCommand::RestartKubelet)?;
        }
        Ok(())
    }

    fn packages(&self) -> rota_agent::Result<Box<dyn PackageManager + '_>> {
        Ok(Box::new(SimPackages {
            inner: self.inner.memory.packages()?,
            host: self,
        }))
    }

    fn local_path(&self, _path: &Path) -> Option<PathBuf> {
        None
    }
}

/// The package manager of a [`SimHost`]: the in-memory one, plus kernel images.
struct SimPackages<'a> {
    inner: Box<dyn PackageManager + 'a>,
    host: &'a SimHost,
}

impl PackageManager for SimPackages<'_> {
    fn name(&self) -> &'static str {
        "sim-apt"
    }

    /// `apt-get update`: the Kubernetes repositories the source list names now are indexed
    /// (one that does not exist, or another base than the host's, fails the update).
    fn refresh(&self) -> rota_agent::Result<()> {
        self.inner.refresh()?;
        let Some(sources) = &self.host.inner.sources else {
            return Ok(());
        };
        let list = self
            .host
            .inner
            .memory
            .file(SOURCES_LIST)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match sources.indexed(&list) {
            Ok(minors) => {
                *self.host.inner.indexed.lock() = minors;
                Ok(())
            }
            Err(stderr) => Err(rota_agent::Error::CommandFailed {
                command: "apt-get update".into(),
                status: ExitStatus::Exited(100),
                stderr,
            }),
        }
    }

    /// What the in-memory manager finds, with the Kubernetes packages' candidates taken from
    /// the indexed repositories only.
    fn upgradable(&self) -> rota_agent::Result<Vec<PendingPackage>> {
        let mut pending = self.inner.upgradable()?;
        if self.host.inner.sources.is_none() {
            return Ok(pending);
        }
        pending.retain(|p| !KUBERNETES_PACKAGES.contains(&p.name.as_str()));
        let installed = self.inner.installed()?;
        let scheme = VersionScheme::Debian;
        for name in KUBERNETES_PACKAGES {
            let (Some(current), Some(offered)) = (installed.get(name), self.host.offered(name))
            else {
                continue;
            };
            let newest = offered
                .into_iter()
                .filter(|v| scheme.compare(v, current).is_gt())
                .max_by(|a, b| scheme.compare(a, b));
            if let Some(candidate) = newest {
                pending.push(PendingPackage {
                    name: name.to_owned(),
                    current_version: current.clone(),
                    candidate_version: candidate,
                    security: false,
                    impact: Impact::of_package(name),
                    blocked: Some(Blocked::KubernetesPin),
                });
            }
        }
        pending.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pending)
    }

    fn upgrade(&self, selection: &UpgradeSelection) -> rota_agent::Result<Vec<PackageChange>> {
        let mut changes = self.inner.upgrade(selection)?;
        self.host.install_kernel_images(&mut changes);
        Ok(changes)
    }

    /// Installs the pinned versions; a Kubernetes package version the indexed repositories do
    /// not offer fails as apt does.
    fn install_versions(
        &self,
        pins: &[PackagePin],
        purpose: InstallPurpose,
    ) -> rota_agent::Result<Vec<PackageChange>> {
        for pin in pins {
            if self
                .host
                .offered(&pin.name)
                .is_some_and(|offered| !offered.contains(&pin.version))
            {
                return Err(rota_agent::Error::CommandFailed {
                    command: format!("apt-get install {}={}", pin.name, pin.version),
                    status: ExitStatus::Exited(100),
                    stderr: format!(
                        "E: Version '{}' for '{}' was not found",
                        pin.version, pin.name
                    ),
                });
            }
        }
        let mut changes = self.inner.install_versions(pins, purpose)?;
        self.host.install_kernel_images(&mut changes);
        Ok(changes)
    }

    fn installed(&self) -> rota_agent::Result<BTreeMap<String, String>> {
        self.inner.installed()
    }

    fn available_versions(&self, name: &str) -> rota_agent::Result<Vec<String>> {
        let versions = self.inner.available_versions(name)?;
        Ok(match self.host.offered(name) {
            // Each version once: the installed one is also listed as available (rollbacks).
            Some(offered) => {
                let mut seen = BTreeSet::new();
                versions
                    .into_iter()
                    .filter(|v| offered.contains(v) && seen.insert(v.clone()))
                    .collect()
            }
            None => versions,
        })
    }

    fn holds(&self) -> rota_agent::Result<Vec<String>> {
        self.inner.holds()
    }

    fn repair(&self) -> rota_agent::Result<RepairOutcome> {
        self.inner.repair()
    }
}

/// `systemctl is-active --quiet kubelet` on a simulated host: the kubelet runs whenever the
/// host does (a kubelet that is up but unhealthy is the coordinator's to notice).
/// `systemctl daemon-reload` succeeds (unit files take effect at the next restart).
fn install_systemctl(host: &SimHost) {
    let probe = host.clone();
    host.memory().on_command("systemctl", move |argv| {
        if argv.get(1).map(String::as_str) == Some("daemon-reload") {
            return Ok(rota_agent::host::memory::exited(0, ""));
        }
        let active = argv.get(1).map(String::as_str) == Some("is-active")
            && argv
                .last()
                .is_some_and(|u| u.trim_end_matches(".service") == "kubelet")
            && probe.power_state().is_up();
        Ok(rota_agent::host::CommandOutput {
            status: rota_agent::host::ExitStatus::Exited(if active { 0 } else { 3 }),
            stdout: String::new(),
            stderr: String::new(),
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::kubeadm::{ControlPlaneHost, ETCD_IMAGE};
    use crate::cluster::scenario::{AvailablePackage, KubernetesSetup};
    use rota_agent::packages::UpgradeScope;

    fn spec() -> HostSpec {
        HostSpec {
            os_release:
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n"
                    .into(),
            kernel: "6.1.0-28-amd64".into(),
            installed: BTreeMap::from([
                (KERNEL_PACKAGE.to_string(), "6.1.119-1".to_string()),
                (
                    "linux-image-6.1.0-28-amd64".to_string(),
                    "6.1.119-1".to_string(),
                ),
                (KUBELET_PACKAGE.to_string(), "1.33.0-1.1".to_string()),
                (CONTAINERD_PACKAGE.to_string(), "1.7.24-1".to_string()),
                ("curl".to_string(), "7.88.1-10+deb12u8".to_string()),
            ]),
            available: vec![
                AvailablePackage {
                    name: KERNEL_PACKAGE.into(),
                    version: "6.1.129-1".into(),
                    security: true,
                },
                AvailablePackage {
                    name: KUBELET_PACKAGE.into(),
                    version: "1.33.1-1.1".into(),
                    security: false,
                },
            ],
            holds: vec!["curl".into()],
            kernel_releases: BTreeMap::from([
                ("6.1.119-1".to_string(), "6.1.0-28-amd64".to_string()),
                ("6.1.129-1".to_string(), "6.1.0-31-amd64".to_string()),
            ]),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            control_plane: None,
            kubernetes: None,
        }
    }

    fn new_host(node: &str, spec: &HostSpec) -> (SimHost, mpsc::UnboundedReceiver<KubeletCommand>) {
        let (_, faults) = watch::channel(Faults::none());
        SimHost::new(node, spec, &KubeadmCluster::default(), faults)
    }

    #[test]
    fn kernel_upgrade_installs_the_image_and_the_sentinel() {
        let (host, _rx) = new_host("w1", &spec());
        let pm = host.packages().unwrap();
        let pending = pm.upgradable().unwrap();
        assert_eq!(pending.len(), 2);
        let changes = pm.upgrade(&UpgradeScope::SecurityOnly.into()).unwrap();
        let names: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["linux-image-6.1.0-31-amd64", KERNEL_PACKAGE]);
        assert!(
            host.exists(Path::new("/boot/vmlinuz-6.1.0-31-amd64"))
                .unwrap()
        );
        assert!(host.exists(Path::new("/var/run/reboot-required")).unwrap());
        assert_eq!(host.kernel_release().unwrap(), "6.1.0-28-amd64");
        host.boot();
        assert_eq!(host.kernel_release().unwrap(), "6.1.0-31-amd64");
        assert!(!host.exists(Path::new("/var/run/reboot-required")).unwrap());
    }

    #[test]
    fn facts_for_the_node_status() {
        let (host, _rx) = new_host("w1", &spec());
        assert_eq!(host.kubelet_version().as_deref(), Some("v1.33.0"));
        assert_eq!(host.container_runtime_version(), "containerd://1.7.24");
        assert_eq!(host.os_image(), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(host.machine_id(), "0123456789abcdef0123456789abcdef");
        assert_eq!(host.packages().unwrap().holds().unwrap(), vec!["curl"]);
    }

    #[test]
    fn version_commands_answer_like_the_binaries() {
        let (host, _rx) = new_host("w1", &spec());
        let run = |argv: &[&str]| {
            host.run(&HostCommand::new(argv.iter().copied()))
                .unwrap()
                .stdout
        };
        assert_eq!(run(&["kubelet", "--version"]), "Kubernetes v1.33.0\n");
        assert!(run(&["containerd", "--version"]).contains(" 1.7.24 "));
        assert_eq!(run(&["uname", "-r"]), "6.1.0-28-amd64\n");
        assert!(matches!(
            host.run(&HostCommand::new(["apt-get", "update"])),
            Err(rota_agent::Error::CommandNotFound { .. })
        ));
        let facts = rota_agent::detect::detect(&host, &rota_agent::detect::DetectConfig::default());
        assert!(facts.errors.is_empty(), "{:?}", facts.errors);
        assert_eq!(facts.kubelet_version, "1.33.0");
        assert_eq!(facts.container_runtime_version, "containerd 1.7.24");
        assert_eq!(facts.os_image, "Debian GNU/Linux 12 (bookworm)");
        assert!(!facts.reboot_required);
        assert_eq!(facts.pending_upgrades.len(), 2);
        host.packages()
            .unwrap()
            .upgrade(&UpgradeScope::SecurityOnly.into())
            .unwrap();
        let facts = rota_agent::detect::detect(&host, &rota_agent::detect::DetectConfig::default());
        assert!(facts.reboot_required, "{facts:?}");
        assert_eq!(
            facts.kernels_installed,
            vec!["6.1.0-28-amd64", "6.1.0-31-amd64"]
        );
    }

    #[test]
    fn reboot_and_kubelet_restart_reach_the_kubelet() {
        let (host, mut rx) = new_host("w1", &spec());
        host.restart_unit("containerd").unwrap();
        host.restart_unit("kubelet.service").unwrap();
        host.reboot(&RebootMethod::Systemctl).unwrap();
        assert_eq!(rx.try_recv().ok(), Some(KubeletCommand::RestartKubelet));
        assert_eq!(rx.try_recv().ok(), Some(KubeletCommand::Reboot));
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(host.reboot(&RebootMethod::Systemctl).is_err());
    }

    #[test]
    fn files_survive_boot_except_run() {
        let (host, _rx) = new_host("w1", &spec());
        host.write_file_atomic(Path::new("/var/lib/rota/state.json"), b"{}")
            .unwrap();
        host.write_file_atomic(Path::new("/run/lock/x"), b"1")
            .unwrap();
        let before = host.boot_id().unwrap();
        let after = host.boot();
        assert_ne!(before, after);
        assert_eq!(
            host.read_file(Path::new("/var/lib/rota/state.json"))
                .unwrap(),
            b"{}"
        );
        assert!(!host.exists(Path::new("/run/lock/x")).unwrap());
    }

    const SETUP: KubernetesSetup = KubernetesSetup {
        version: KubeVersion::new(1, 30, 10),
        newest_minor: KubeVersion::new(1, 32, 0),
    };

    /// A kubeadm host at 1.30.10 installing from the 1.30 to 1.32 repositories: a stacked-etcd
    /// control-plane node when `control_plane`, else a worker.
    fn kubeadm_spec(control_plane: bool, etcdutl: bool) -> HostSpec {
        let mut spec = spec();
        spec.available.retain(|a| a.name != KUBELET_PACKAGE);
        for name in KUBERNETES_PACKAGES {
            spec.installed.insert(name.into(), "1.30.10-1.1".into());
            spec.holds.push(name.into());
        }
        spec.kubernetes = Some(SETUP.sources());
        spec.control_plane = control_plane.then(|| ControlPlaneHost {
            version: "v1.30.10".into(),
            etcd: EtcdLayout::Stacked,
            etcdutl,
        });
        spec
    }

    fn run(host: &SimHost, argv: &str) -> CommandOutput {
        host.run(&HostCommand::new(argv.split_whitespace()))
            .unwrap()
    }

    fn pin(name: &str, version: &str) -> PackagePin {
        PackagePin {
            name: name.into(),
            version: version.into(),
        }
    }

    /// Switches the host's Kubernetes repository to `minor` as an operator (or the agent)
    /// does, refreshes, and installs kubeadm `version`.
    fn install_kubeadm(host: &SimHost, minor: &str, version: &str) {
        let list = SETUP.sources().sources_list(minor);
        host.write_file_atomic(Path::new(SOURCES_LIST), list.as_bytes())
            .unwrap();
        let pm = host.packages().unwrap();
        pm.refresh().unwrap();
        pm.install_versions(&[pin("kubeadm", version)], InstallPurpose::Kubernetes)
            .unwrap();
    }

    fn images(host: &SimHost) -> BTreeMap<String, String> {
        host.static_pods()
            .into_values()
            .map(|p| (p.component, p.image))
            .collect()
    }

    #[test]
    fn kubernetes_packages_follow_the_source_list() {
        let (host, _rx) = new_host("w1", &kubeadm_spec(false, false));
        let pm = host.packages().unwrap();
        let offered = pm.available_versions("kubeadm").unwrap();
        assert_eq!(offered.len(), 15, "{offered:?}");
        assert!(
            offered.iter().all(|v| v.starts_with("1.30.")),
            "{offered:?}"
        );
        let pending = pm.upgradable().unwrap();
        let kubelet = pending.iter().find(|p| p.name == "kubelet").unwrap();
        assert_eq!(kubelet.candidate_version, "1.30.14-1.1");
        assert_eq!(kubelet.blocked, Some(Blocked::KubernetesPin));
        assert_eq!(
            pm.holds().unwrap(),
            vec!["curl", "kubeadm", "kubectl", "kubelet"]
        );

        // Another minor's packages need the source list switched and the index refreshed.
        let err = pm
            .install_versions(&[pin("kubeadm", "1.31.4-1.1")], InstallPurpose::Kubernetes)
            .unwrap_err();
        assert!(err.to_string().contains("was not found"), "{err}");
        let list = host.read_file(Path::new(SOURCES_LIST)).unwrap();
        let list = String::from_utf8(list)
            .unwrap()
            .replace("/v1.30/", "/v1.31/");
        host.write_file_atomic(Path::new(SOURCES_LIST), list.as_bytes())
            .unwrap();
        assert!(pm.available_versions("kubeadm").unwrap()[0].starts_with("1.30."));
        pm.refresh().unwrap();
        assert_eq!(
            host.kubernetes_minors(),
            BTreeSet::from(["1.31".to_string()])
        );
        let offered = pm.available_versions("kubelet").unwrap();
        assert!(
            offered.iter().all(|v| v.starts_with("1.31.")),
            "{offered:?}"
        );
        assert_eq!(
            pm.upgradable()
                .unwrap()
                .iter()
                .find(|p| p.name == "kubeadm")
                .unwrap()
                .candidate_version,
            "1.31.11-1.1"
        );
        let changes = pm
            .install_versions(&[pin("kubeadm", "1.31.4-1.1")], InstallPurpose::Kubernetes)
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(host.memory().installed("kubeadm").unwrap(), "1.31.4-1.1");
        assert!(
            pm.install_versions(&[pin("kubelet", "1.32.0-1.1")], InstallPurpose::Kubernetes)
                .is_err()
        );

        // A minor the repositories do not carry, or another base, fails the refresh and keeps
        // the index.
        for bad in [
            list.replace("/v1.31/", "/v1.33/"),
            list.replace("https://pkgs.k8s.io", "https://mirror.example.com"),
        ] {
            host.write_file_atomic(Path::new(SOURCES_LIST), bad.as_bytes())
                .unwrap();
            let err = pm.refresh().unwrap_err();
            assert!(err.to_string().contains("apt-get update"), "{err}");
            assert_eq!(
                host.kubernetes_minors(),
                BTreeSet::from(["1.31".to_string()])
            );
        }
    }

    #[test]
    fn kubeadm_upgrades_the_control_plane_one_minor_at_a_time() {
        let cluster = KubeadmCluster::new(Some(KubeVersion::new(1, 30, 10)), None);
        let (_, faults) = watch::channel(Faults::none());
        let (first, mut first_rx) =
            SimHost::new("cp-1", &kubeadm_spec(true, true), &cluster, faults.clone());
        let (second, _second_rx) =
            SimHost::new("cp-2", &kubeadm_spec(true, true), &cluster, faults.clone());
        let (worker, _worker_rx) = SimHost::new("w1", &kubeadm_spec(false, true), &cluster, faults);
        let at = |v: &str| {
            BTreeMap::from([
                ("etcd".to_string(), ETCD_IMAGE.to_string()),
                (
                    "kube-apiserver".to_string(),
                    format!("registry.k8s.io/kube-apiserver:{v}"),
                ),
                (
                    "kube-controller-manager".to_string(),
                    format!("registry.k8s.io/kube-controller-manager:{v}"),
                ),
                (
                    "kube-scheduler".to_string(),
                    format!("registry.k8s.io/kube-scheduler:{v}"),
                ),
            ])
        };
        assert_eq!(images(&first), at("v1.30.10"));
        assert!(images(&worker).is_empty());
        assert_eq!(run(&first, "kubeadm version -o short").stdout, "v1.30.10\n");

        // kubeadm first: the plan refuses a target past the installed kubeadm.
        let plan = run(&first, "kubeadm upgrade plan v1.31.4");
        assert!(!plan.success());
        assert!(
            plan.stderr.contains("higher than the kubeadm version"),
            "{}",
            plan.stderr
        );
        install_kubeadm(&first, "1.31", "1.31.4-1.1");
        let plan = run(&first, "kubeadm upgrade plan v1.31.4");
        assert!(plan.success(), "{}", plan.stderr);
        assert!(
            plan.stdout.contains("kubeadm upgrade apply v1.31.4"),
            "{}",
            plan.stdout
        );
        assert!(
            plan.stdout
                .contains("kube-apiserver            cp-1      v1.30.10   v1.31.4")
        );
        // Never two minors at once, never down.
        for (target, why) in [
            ("v1.32.0", "too high"),
            ("v1.29.3", "lower than the cluster"),
        ] {
            let out = run(&first, &format!("kubeadm upgrade plan {target}"));
            assert!(
                !out.success() && out.stderr.contains(why),
                "{target}: {}",
                out.stderr
            );
        }
        // A worker has no admin kubeconfig to plan with.
        install_kubeadm(&worker, "1.31", "1.31.4-1.1");
        assert!(!run(&worker, "kubeadm upgrade plan v1.31.4").success());

        let unconfirmed = run(&first, "kubeadm upgrade apply v1.31.4");
        assert!(!unconfirmed.success());
        assert!(unconfirmed.stderr.contains("didn't answer"));
        assert_eq!(images(&first), at("v1.30.10"));
        while first_rx.try_recv().is_ok() {}
        let apply = run(&first, "kubeadm upgrade apply v1.31.4 --yes");
        assert!(apply.success(), "{}", apply.stderr);
        assert!(
            apply
                .stdout
                .contains("SUCCESS! Your cluster was upgraded to \"v1.31.4\"")
        );
        assert_eq!(images(&first), at("v1.31.4"));
        assert_eq!(
            first_rx.try_recv().ok(),
            Some(KubeletCommand::StaticPodsChanged)
        );
        assert_eq!(cluster.version(), Some(KubeVersion::new(1, 31, 4)));
        assert_eq!(images(&second), at("v1.30.10"));

        // The other control-plane node: kubeadm must have caught up with the cluster.
        let stale = run(&second, "kubeadm upgrade node");
        assert!(!stale.success());
        assert!(
            stale.stderr.contains("older than the cluster version"),
            "{}",
            stale.stderr
        );
        assert_eq!(images(&second), at("v1.30.10"));
        install_kubeadm(&second, "1.31", "1.31.4-1.1");
        let node = run(&second, "kubeadm upgrade node");
        assert!(node.success(), "{}", node.stderr);
        assert_eq!(images(&second), at("v1.31.4"));
        // A worker lags behind as the skew policy allows: its kubeadm may be older.
        let node = run(&worker, "kubeadm upgrade node");
        assert!(node.success(), "{}", node.stderr);
        assert!(node.stdout.contains("Not a control plane node"));
        let (_, faults) = watch::channel(Faults::none());
        let (lagging, _lagging_rx) =
            SimHost::new("w2", &kubeadm_spec(false, true), &cluster, faults);
        assert!(run(&lagging, "kubeadm upgrade node").success());
        assert!(images(&worker).is_empty());
        assert!(worker.exists(Path::new(kubeadm::KUBELET_CONFIG)).unwrap());

        let log: Vec<(ToolAction, bool)> = second
            .tool_log()
            .into_iter()
            .map(|r| (r.action, r.success))
            .collect();
        assert_eq!(
            log,
            vec![
                (
                    ToolAction::UpgradeNode {
                        control_plane: None
                    },
                    false
                ),
                (
                    ToolAction::UpgradeNode {
                        control_plane: Some("v1.31.4".into())
                    },
                    true
                ),
            ]
        );
        let applies = first
            .tool_log()
            .iter()
            .filter(|r| matches!(r.action, ToolAction::UpgradeApply { .. }) && r.success)
            .count();
        assert_eq!(applies, 1);
    }

    #[test]
    fn a_failing_apply_leaves_the_control_plane_as_it_was() {
        let cluster = KubeadmCluster::new(Some(KubeVersion::new(1, 30, 10)), None);
        let (_, faults) = watch::channel(Faults::none().with_kubeadm_apply_failure("cp-1"));
        let (host, mut rx) = SimHost::new("cp-1", &kubeadm_spec(true, true), &cluster, faults);
        install_kubeadm(&host, "1.31", "1.31.4-1.1");
        while rx.try_recv().is_ok() {}
        assert!(run(&host, "kubeadm upgrade plan v1.31.4").success());
        let apply = run(&host, "kubeadm upgrade apply v1.31.4 --yes");
        assert_eq!(apply.status, ExitStatus::Exited(1));
        assert!(
            apply
                .stderr
                .contains("[upgrade/apply] FATAL: couldn't upgrade control plane"),
            "{}",
            apply.stderr
        );
        assert_eq!(cluster.version(), Some(KubeVersion::new(1, 30, 10)));
        assert!(
            images(&host)
                .values()
                .filter(|i| !i.contains("etcd"))
                .all(|i| i.ends_with(":v1.30.10"))
        );
        assert!(rx.try_recv().is_err(), "the kubelet was told of a change");
    }

    #[test]
    fn etcd_snapshots_are_saved_and_verified() {
        let (host, _rx) = new_host("cp-1", &kubeadm_spec(true, true));
        let save = "etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key snapshot save /var/lib/rota/etcd/etcd-snapshot-1.db";
        let out = run(&host, save);
        assert!(out.success(), "{}", out.stderr);
        assert_eq!(
            out.stdout,
            "Snapshot saved at /var/lib/rota/etcd/etcd-snapshot-1.db\n"
        );
        let file = host
            .read_file(Path::new("/var/lib/rota/etcd/etcd-snapshot-1.db"))
            .unwrap();
        assert!(!file.is_empty());
        let status = run(
            &host,
            "etcdutl --write-out=json snapshot status /var/lib/rota/etcd/etcd-snapshot-1.db",
        );
        assert!(status.success(), "{}", status.stderr);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["hash", "revision", "totalKey", "totalSize"]);
        assert_eq!(json["totalSize"], file.len());
        assert!(json["revision"].as_u64().unwrap() > 0);
        // A second snapshot sees a later revision.
        let out = run(&host, &save.replace("-1.db", "-2.db"));
        assert!(out.success());
        let second = run(
            &host,
            "etcdutl --write-out=json snapshot status /var/lib/rota/etcd/etcd-snapshot-2.db",
        );
        let second: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
        assert!(second["revision"].as_u64() > json["revision"].as_u64());

        // What fails: a missing certificate, another endpoint, a missing or broken file.
        let no_cert = run(&host, &save.replace("healthcheck-client.key", "nope.key"));
        assert!(!no_cert.success());
        assert!(no_cert.stderr.contains("no such file or directory"));
        assert!(!run(&host, &save.replace("127.0.0.1", "10.0.0.9")).success());
        assert!(!run(&host, "etcdutl snapshot status /var/lib/rota/etcd/none.db").success());
        host.write_file_atomic(Path::new("/tmp/junk.db"), b"junk")
            .unwrap();
        let junk = run(
            &host,
            "etcdutl --write-out=json snapshot status /tmp/junk.db",
        );
        assert!(!junk.success() && junk.stderr.contains("invalid database"));
        let log = host.tool_log();
        assert_eq!(log.len(), 8, "{log:?}");
        assert_eq!(log.iter().filter(|r| r.success).count(), 4);

        // Without etcdutl, etcdctl's deprecated status answers the same.
        let (old, _rx) = new_host("cp-2", &kubeadm_spec(true, false));
        assert!(run(&old, save).success());
        assert!(matches!(
            old.run(&HostCommand::new(["etcdutl", "version"])),
            Err(rota_agent::Error::CommandNotFound { .. })
        ));
        let status = run(
            &old,
            "etcdctl --write-out=json snapshot status /var/lib/rota/etcd/etcd-snapshot-1.db",
        );
        assert!(status.success() && status.stderr.contains("Deprecated"));
        assert!(serde_json::from_str::<serde_json::Value>(&status.stdout).is_ok());

        // A worker has no etcd member and no etcd tools.
        let (worker, _rx) = new_host("w1", &kubeadm_spec(false, true));
        assert!(matches!(
            worker.run(&HostCommand::new(["etcdctl", "version"])),
            Err(rota_agent::Error::CommandNotFound { .. })
        ));
        assert!(
            !worker
                .exists(Path::new("/etc/kubernetes/manifests/etcd.yaml"))
                .unwrap()
        );
        assert!(
            !worker
                .exists(Path::new("/etc/kubernetes/manifests/kube-apiserver.yaml"))
                .unwrap()
        );
        assert!(
            host.exists(Path::new("/etc/kubernetes/manifests/etcd.yaml"))
                .unwrap()
        );
    }

    #[test]
    fn daemon_reload_succeeds() {
        let (host, _rx) = new_host("w1", &spec());
        assert!(run(&host, "systemctl daemon-reload").success());
    }
}
