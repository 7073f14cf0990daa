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
//!   (`/boot/vmlinuz-RELEASE`) and writes the reboot sentinel, as Debian's packages do.
//!
//! The agent calls these from blocking threads; the kubelet is told through a channel.
use rota_core::model::{PackagePin, PendingPackage};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rota_agent::host::memory::exited;
use rota_agent::host::{CommandOutput, Host, HostCommand, MemoryHost, RebootMethod};
use rota_agent::packages::{
    InstallPurpose, PackageChange, PackageManager, RepairOutcome, UpgradeSelection,
};
use tokio::sync::{mpsc, watch};

use super::scenario::HostSpec;

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
}

struct Inner {
    node: String,
    memory: MemoryHost,
    commands: mpsc::UnboundedSender<KubeletCommand>,
    power: watch::Sender<PowerState>,
    /// `linux-image-amd64` version → the kernel release it installs.
    kernel_releases: Mutex<BTreeMap<String, String>>,
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
    /// A host for `node` as `spec` describes it, and the receiving end of its kubelet's
    /// command channel.
    pub(crate) fn new(
        node: &str,
        spec: &HostSpec,
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
    /// database and the running kernel, as the binaries on a host do; other commands go to
    /// the handlers registered on [`SimHost::memory`].
    fn run(&self, cmd: &HostCommand) -> rota_agent::Result<CommandOutput> {
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
        self.inner.memory.write_file_atomic(path, data)
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

    fn refresh(&self) -> rota_agent::Result<()> {
        self.inner.refresh()
    }

    fn upgradable(&self) -> rota_agent::Result<Vec<PendingPackage>> {
        self.inner.upgradable()
    }

    fn upgrade(&self, selection: &UpgradeSelection) -> rota_agent::Result<Vec<PackageChange>> {
        let mut changes = self.inner.upgrade(selection)?;
        self.host.install_kernel_images(&mut changes);
        Ok(changes)
    }

    fn install_versions(
        &self,
        pins: &[PackagePin],
        purpose: InstallPurpose,
    ) -> rota_agent::Result<Vec<PackageChange>> {
        let mut changes = self.inner.install_versions(pins, purpose)?;
        self.host.install_kernel_images(&mut changes);
        Ok(changes)
    }

    fn installed(&self) -> rota_agent::Result<BTreeMap<String, String>> {
        self.inner.installed()
    }

    fn available_versions(&self, name: &str) -> rota_agent::Result<Vec<String>> {
        self.inner.available_versions(name)
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
fn install_systemctl(host: &SimHost) {
    let probe = host.clone();
    host.memory().on_command("systemctl", move |argv| {
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
    use crate::cluster::scenario::AvailablePackage;
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
        }
    }

    #[test]
    fn kernel_upgrade_installs_the_image_and_the_sentinel() {
        let (host, _rx) = SimHost::new("w1", &spec());
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
        let (host, _rx) = SimHost::new("w1", &spec());
        assert_eq!(host.kubelet_version().as_deref(), Some("v1.33.0"));
        assert_eq!(host.container_runtime_version(), "containerd://1.7.24");
        assert_eq!(host.os_image(), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(host.machine_id(), "0123456789abcdef0123456789abcdef");
        assert_eq!(host.packages().unwrap().holds().unwrap(), vec!["curl"]);
    }

    #[test]
    fn version_commands_answer_like_the_binaries() {
        let (host, _rx) = SimHost::new("w1", &spec());
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
        let (host, mut rx) = SimHost::new("w1", &spec());
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
        let (host, _rx) = SimHost::new("w1", &spec());
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
}
