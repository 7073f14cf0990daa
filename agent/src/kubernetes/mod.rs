//! What a Kubernetes upgrade the kubeadm way does on the node, and the etcd snapshots taken
//! before a stacked-etcd control-plane node is touched: the host commands, their parsing, and
//! the pure pieces (repository lines, `kubeadm upgrade plan` output, snapshot status) apart.
//! The operation machine ([`crate::ops`]) sequences them; this module performs one step each.
//!
//! # The command contract
//!
//! Everything runs on the host through [`crate::host::Host`]; the simulator's hosts implement
//! exactly these commands and files, so nothing here may change without them:
//!
//! 1. **etcd member** ([`etcd::member`]): `<manifests>/etcd.yaml` exists → stacked; else
//!    `<manifests>/kube-apiserver.yaml` exists → external; else none. `<manifests>` is
//!    `/etc/kubernetes/manifests` (`--kubeadm-manifests`).
//! 2. **Snapshot** ([`etcd::take_snapshot`]): `etcdctl --endpoints=<endpoint> --cacert=<ca>
//!    --cert=<cert> --key=<key> snapshot save <dir>/etcd-snapshot-<YYYYMMDDTHHMMSSZ>.db`
//!    (defaults: `https://127.0.0.1:2379`, `/etc/kubernetes/pki/etcd/ca.crt`,
//!    `/etc/kubernetes/pki/etcd/healthcheck-client.crt`, `.../healthcheck-client.key`,
//!    `/var/lib/rota/etcd-snapshots`). **Verify**: `etcdutl --write-out=json snapshot status
//!    <file>`; when etcdutl does not exist ([`crate::Error::CommandNotFound`]), `etcdctl
//!    --write-out=json snapshot status <file>`. Its output is
//!    `{"hash":N,"revision":N,"totalKey":N,"totalSize":N}`; the snapshot is verified when that
//!    parses, `totalSize` > 0 and the file exists. The reported size is `totalSize`. The newest
//!    N (`--etcd-snapshot-keep`, 3) snapshot files stay in the directory, older ones are deleted.
//!    The agent keeps each verified snapshot's status beside it (`<file>.json`) and the last
//!    failure in `<dir>/last-error.json`, so its facts survive its restarts.
//! 3. **Repository switch** ([`repository`]): apt: every line of
//!    `/etc/apt/sources.list.d/kubernetes.list` of the form `deb [opts] <base>/core:/stable:/vX.Y/deb/ /`
//!    gets the target minor, and `<base>` replaced when `--kubernetes-repository` is set
//!    (options such as `signed-by=` are kept: pkgs.k8s.io signs every minor with one key). dnf:
//!    the `baseurl=` and `gpgkey=` lines of `/etc/yum.repos.d/kubernetes.repo` likewise
//!    (`.../core:/stable:/vX.Y/rpm/...`). A missing file or no matching line is an error. Then
//!    the package index is refreshed. The original content is kept in the operation record, so
//!    a rollback restores it.
//! 4. kubeadm: unhold, install the exact version, hold again (what was held stays held:
//!    [`crate::packages::InstallPurpose::Kubernetes`]). A minor target (`1.31`) is the newest
//!    patch of that minor the switched repository offers for kubeadm ([`kubeadm::resolve`]).
//! 5. The first control-plane node: `kubeadm upgrade plan vX.Y.Z`, whose output must offer
//!    `kubeadm upgrade apply vX.Y.Z` ([`kubeadm::plan_offers`]), then `kubeadm upgrade apply
//!    vX.Y.Z --yes`. Every other node: `kubeadm upgrade node`.
//! 6. kubelet and kubectl to the exact version (held again), `systemctl daemon-reload`, restart
//!    the kubelet unit, check the kubelet runs the version.

pub mod etcd;
pub mod kubeadm;
pub mod repository;

use std::path::PathBuf;
use std::time::Duration;

/// The default upstream package repository base (pkgs.k8s.io), for documentation and help.
pub const UPSTREAM_REPOSITORY: &str = "https://pkgs.k8s.io";
/// Where kubeadm puts the static pod manifests.
pub const DEFAULT_MANIFESTS: &str = "/etc/kubernetes/manifests";
/// The apt source file of kubeadm's installation guide.
pub const DEFAULT_APT_LIST: &str = "/etc/apt/sources.list.d/kubernetes.list";
/// The dnf repository file of kubeadm's installation guide.
pub const DEFAULT_DNF_REPO: &str = "/etc/yum.repos.d/kubernetes.repo";

/// How the node's Kubernetes packages and etcd are found and handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The package repository base replacing the one in the source files (a mirror), e.g.
    /// `https://pkgs.k8s.io`; `None` keeps the base each line has.
    pub repository_base: Option<String>,
    /// The apt source file of the Kubernetes packages.
    pub apt_list: PathBuf,
    /// The dnf repository file of the Kubernetes packages.
    pub dnf_repo: PathBuf,
    /// The directory of kubeadm's static pod manifests.
    pub manifests: PathBuf,
    /// etcd snapshots.
    pub etcd: etcd::EtcdConfig,
    /// Timeout of `kubeadm upgrade plan|apply|node`.
    pub kubeadm_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            repository_base: None,
            apt_list: PathBuf::from(DEFAULT_APT_LIST),
            dnf_repo: PathBuf::from(DEFAULT_DNF_REPO),
            manifests: PathBuf::from(DEFAULT_MANIFESTS),
            etcd: etcd::EtcdConfig::default(),
            kubeadm_timeout: Duration::from_secs(1800),
        }
    }
}
