//! What an agent finds on its node and reports to the coordinator: boot, kernels, reboot
//! sentinels, pending package upgrades and versions.

use serde::{Deserialize, Serialize};

/// What installing a package implies for its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Impact {
    /// Nothing beyond the package itself.
    None,
    /// The kubelet (or the container runtime under it) must be restarted.
    #[serde(alias = "service-restart")]
    ServiceRestart,
    /// The node must reboot (kernel, C library, systemd, D-Bus).
    Reboot,
}

impl Impact {
    /// The impact of upgrading the package `name`, by the rules both the agent (to decide what
    /// follows an upgrade) and the coordinator (for an agent that could not tell) apply.
    pub fn of_package(name: &str) -> Impact {
        const REBOOT_EXACT: [&str; 12] = [
            "libc6",
            "libc-bin",
            "glibc",
            "glibc-common",
            "systemd",
            "libsystemd0",
            "systemd-libs",
            "systemd-udev",
            "dbus",
            "dbus-daemon",
            "dbus-broker",
            "kernel",
        ];
        const REBOOT_PREFIXES: [&str; 4] = [
            "linux-image",
            "linux-modules",
            "kernel-core",
            "kernel-modules",
        ];
        const RESTART_EXACT: [&str; 7] = [
            "kubelet",
            "containerd",
            "containerd.io",
            "cri-o",
            "runc",
            "crun",
            "moby-containerd",
        ];
        if REBOOT_EXACT.contains(&name) || REBOOT_PREFIXES.iter().any(|p| name.starts_with(p)) {
            Impact::Reboot
        } else if RESTART_EXACT.contains(&name) {
            Impact::ServiceRestart
        } else {
            Impact::None
        }
    }
}

/// Why a pending upgrade will not be applied by a plain upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Blocked {
    /// The package is held (`apt-mark hold`, dnf versionlock).
    Held,
    /// A Kubernetes package: it moves only in a Kubernetes upgrade.
    #[serde(alias = "kubernetes-pin")]
    KubernetesPin,
}

/// A package at an exact version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PackagePin {
    /// Package name.
    pub name: String,
    /// Exact version (as the package manager spells it).
    pub version: String,
}

/// An OS package upgrade the agent found pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPackage {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub current_version: String,
    /// Version the upgrade would install.
    pub candidate_version: String,
    /// Whether the candidate comes from a security source.
    pub security: bool,
    /// What installing it implies.
    pub impact: Impact,
    /// Set when a plain upgrade leaves it alone (only the agent knows; never sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
}

/// The maintenance-relevant facts an agent finds on its node and reports (`ReportFacts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    /// Current boot id; a change tells that the node rebooted.
    pub boot_id: String,
    /// Release of the running kernel.
    pub kernel_running: String,
    /// Releases of the installed kernels, oldest first.
    pub kernels_installed: Vec<String>,
    /// Whether a reboot is required.
    pub reboot_required: bool,
    /// Why, e.g. `sentinel /var/run/reboot-required`, `kernel 6.1.0-13 installed`.
    pub reboot_reasons: Vec<String>,
    /// Packages that asked for the reboot (`/var/run/reboot-required.pkgs`).
    #[serde(default)]
    pub reboot_packages: Vec<String>,
    /// The package backend (`apt`, `dnf`), empty when none fits the OS.
    #[serde(default)]
    pub package_backend: String,
    /// Every package with a newer candidate; the agent also lists blocked ones.
    pub pending_upgrades: Vec<PendingPackage>,
    /// Kubelet version without the leading `v` (`1.30.1`); empty when there is no kubelet.
    pub kubelet_version: String,
    /// Container runtime and version (`containerd 1.7.2`); empty when none was found.
    pub container_runtime_version: String,
    /// `PRETTY_NAME` of os-release.
    pub os_image: String,
    /// Version of the reporting agent.
    pub agent_version: String,
    /// Detection problems; never read as "maintenance required".
    pub errors: Vec<String>,
    /// The node's etcd member and the agent's latest snapshot of it.
    #[serde(default)]
    pub etcd: EtcdFacts,
}

/// Which etcd a node runs, as kubeadm lays it out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EtcdMember {
    /// No control plane on the node (a worker), or the agent could not tell.
    #[default]
    None,
    /// A kubeadm control-plane node with a stacked etcd member (a static pod
    /// `/etc/kubernetes/manifests/etcd.yaml`).
    Stacked,
    /// A kubeadm control-plane node whose API server uses an external etcd (no etcd manifest):
    /// its snapshots are not rota's to take.
    External,
}

/// A verified `etcdctl snapshot save` the agent took on its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSnapshot {
    /// Where it is on the host.
    pub path: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The etcd revision it holds (`snapshot status`).
    pub revision: u64,
    /// Its hash (`snapshot status`).
    pub hash: u64,
    /// How many keys it holds (`snapshot status`).
    pub total_keys: u64,
    /// When it was saved.
    pub taken_at: jiff::Timestamp,
}

/// The etcd facts of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdFacts {
    /// Which etcd the node runs.
    #[serde(default)]
    pub member: EtcdMember,
    /// The newest verified snapshot the agent keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<EtcdSnapshot>,
    /// Why the last snapshot attempt failed, when it did (after the snapshot above, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_error: Option<String>,
}

impl EtcdFacts {
    /// The verified snapshot, when it was taken at or after `since`.
    pub fn fresh_snapshot(&self, since: jiff::Timestamp) -> Option<&EtcdSnapshot> {
        self.snapshot.as_ref().filter(|s| s.taken_at >= since)
    }
}

impl NodeFacts {
    /// Pending upgrades a plain upgrade would apply (`security_only`: only security ones).
    pub fn actionable_upgrades(
        &self,
        security_only: bool,
    ) -> impl Iterator<Item = &PendingPackage> {
        self.pending_upgrades
            .iter()
            .filter(move |p| p.blocked.is_none() && (!security_only || p.security))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_impacts() {
        for (name, impact) in [
            ("linux-image-6.1.0-13-amd64", Impact::Reboot),
            ("linux-image-amd64", Impact::Reboot),
            ("kernel-core", Impact::Reboot),
            ("libc6", Impact::Reboot),
            ("glibc", Impact::Reboot),
            ("systemd", Impact::Reboot),
            ("dbus", Impact::Reboot),
            ("kubelet", Impact::ServiceRestart),
            ("containerd", Impact::ServiceRestart),
            ("runc", Impact::ServiceRestart),
            ("openssl", Impact::None),
            ("kernelshark", Impact::None),
        ] {
            assert_eq!(Impact::of_package(name), impact, "{name}");
        }
    }
}
