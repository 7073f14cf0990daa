//! kubeadm clusters on the simulated hosts: the tools an operator (and rota's agent) runs to
//! upgrade Kubernetes, and the files they read and write.
//!
//! - **Static pods.** A control-plane host has kubeadm's manifests in
//!   `/etc/kubernetes/manifests` (`kube-apiserver.yaml`, `kube-controller-manager.yaml`,
//!   `kube-scheduler.yaml`, and `etcd.yaml` when its etcd member is stacked). The simulated
//!   kubelet runs what they say ([`StaticPod`]): the control plane's images move only when
//!   kubeadm rewrites a manifest, never with the kubelet package.
//! - **Package sources.** `/etc/apt/sources.list.d/kubernetes.list` names one `pkgs.k8s.io`
//!   repository per minor (`deb [signed-by=...] <base>/core:/stable:/v1.30/deb/ /`); after a
//!   refresh (`apt-get update`) the host offers the kubeadm, kubelet and kubectl versions of the
//!   minors it names, and only those ([`KubernetesSources`]).
//! - **kubeadm.** `kubeadm version`, `kubeadm upgrade plan [vX.Y.Z]`, `kubeadm upgrade apply
//!   vX.Y.Z --yes` and `kubeadm upgrade node`, with kubeadm's version rules (one minor at a
//!   time, never past the installed kubeadm, no downgrade) against the cluster's configuration
//!   ([`KubeadmCluster`], kubeadm's `ClusterConfiguration`, shared by the cluster's hosts).
//!   `apply` moves the cluster's version and the node's control plane; `node` moves a
//!   control-plane node's static pods to the cluster's version and only rewrites the kubelet's
//!   configuration on a worker. `apply` fails on the nodes [`super::Faults::kubeadm_apply_fails`]
//!   names, leaving everything as it was (kubeadm rolls its manifests back).
//! - **etcd.** `etcdctl ... snapshot save FILE` on a stacked member (the endpoint is the local
//!   member, the client certificates must exist) writes a snapshot of the cluster's data, whose
//!   revision and key count are the emulated API server's; `etcdutl` (or the deprecated
//!   `etcdctl`) `snapshot status FILE` reads it back (`--write-out=json`: hash, revision, total
//!   keys and size).
//!
//! Every call of these tools is recorded on the host ([`ToolRecord`], see
//! [`super::SimHost::tool_log`]) so that tests can check what ran where and when, from the
//! simulation's side.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use parking_lot::Mutex;
use rota_agent::host::{CommandOutput, ExitStatus};
use rota_core::policy::KubeVersion;
use rota_core::upgrade::image_version;
use serde_json::{Value, json};

use super::host::SimHost;

/// Where kubeadm keeps the static pod manifests.
pub const MANIFESTS: &str = "/etc/kubernetes/manifests";
/// The apt source list of the Kubernetes packages.
pub const SOURCES_LIST: &str = "/etc/apt/sources.list.d/kubernetes.list";
/// The keyring the source list names.
pub const KEYRING: &str = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg";
/// The base URL of the Kubernetes package repositories.
pub const PACKAGES_BASE: &str = "https://pkgs.k8s.io";
/// The kubeconfig kubeadm's `upgrade plan` and `apply` use (control-plane nodes only).
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// The kubelet's configuration, which `kubeadm upgrade` rewrites.
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// Where `etcdctl` is installed on a control-plane host (copied from etcd's release, as
/// kubeadm installs none).
pub const ETCDCTL: &str = "/usr/local/bin/etcdctl";
/// Where `etcdutl` is installed, when it is.
pub const ETCDUTL: &str = "/usr/local/bin/etcdutl";
/// The etcd client certificates kubeadm creates on a stacked-etcd control-plane node.
pub const ETCD_PKI: [&str; 6] = [
    "/etc/kubernetes/pki/etcd/ca.crt",
    "/etc/kubernetes/pki/etcd/ca.key",
    "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
    "/etc/kubernetes/pki/etcd/healthcheck-client.key",
    "/etc/kubernetes/pki/etcd/server.crt",
    "/etc/kubernetes/pki/etcd/server.key",
];
/// The Kubernetes packages the repositories carry.
pub const KUBERNETES_PACKAGES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];
/// The etcd image of the stacked members. kubeadm moves etcd only when its minor ships a newer
/// one; the simulated kubeadm leaves it, as nothing rota checks depends on etcd's version.
pub const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.5.21-0";
/// The etcd release the simulated etcd tools report.
const ETCD_VERSION: &str = "3.5.21";
/// The control-plane components whose image kubeadm upgrades.
const UPGRADED: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
/// First bytes of a simulated snapshot file.
const SNAPSHOT_MAGIC: &str = "rota-sim etcd snapshot\n";

/// The Kubernetes package repositories a host is set up with: one per minor under `base`, the
/// source list naming `minor` at first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesSources {
    /// The repositories' base URL (`https://pkgs.k8s.io`, or a mirror).
    pub base: String,
    /// The minor the source list names at first (`1.30`).
    pub minor: String,
    /// Per minor (`1.31`), the package versions its repository offers for kubeadm, kubelet and
    /// kubectl (`1.31.4-1.1`), oldest first.
    pub releases: BTreeMap<String, Vec<String>>,
}

impl KubernetesSources {
    /// The source list kubeadm's install instructions write for `minor`.
    pub fn sources_list(&self, minor: &str) -> String {
        format!(
            "deb [signed-by={KEYRING}] {}/core:/stable:/v{minor}/deb/ /\n",
            self.base.trim_end_matches('/')
        )
    }

    /// The repositories that `text` (a source list) names and that exist: their minors, or what
    /// `apt-get update` would fail with.
    pub fn indexed(&self, text: &str) -> Result<BTreeSet<String>, String> {
        let mut minors = BTreeSet::new();
        let base = self.base.trim_end_matches('/');
        for line in text.lines().map(str::trim) {
            if !line.starts_with("deb ") {
                continue;
            }
            // `deb [options] URI SUITE`: the URI is the first word after the options.
            let rest = line.trim_start_matches("deb ").trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']').map_or("", |(_, r)| r),
                None => rest,
            };
            let Some(uri) = rest.split_whitespace().next() else {
                continue;
            };
            let Some((line_base, path)) = uri.split_once("/core:/stable:/v") else {
                continue;
            };
            let minor = path.trim_end_matches('/').trim_end_matches("/deb");
            if line_base.trim_end_matches('/') != base {
                return Err(format!(
                    "E: Failed to fetch {uri}InRelease  Could not resolve host: {}\n\
                     E: Some index files failed to download. They have been ignored, or old ones used instead.",
                    line_base
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                ));
            }
            if !self.releases.contains_key(minor) {
                return Err(format!(
                    "E: Failed to fetch {uri}InRelease  404  Not Found\n\
                     E: The repository '{uri} InRelease' does not have a Release file."
                ));
            }
            minors.insert(minor.to_owned());
        }
        Ok(minors)
    }

    /// The package versions the repositories of `minors` offer.
    pub fn offered(&self, minors: &BTreeSet<String>) -> BTreeSet<String> {
        minors
            .iter()
            .filter_map(|m| self.releases.get(m))
            .flatten()
            .cloned()
            .collect()
    }
}

/// The etcd member of a control-plane host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdLayout {
    /// A stacked member: kubeadm's `etcd.yaml` static pod, the etcd tools and certificates.
    Stacked,
    /// An external etcd: no etcd static pod on the node.
    External,
}

/// A kubeadm control-plane host: its static pods' Kubernetes version and etcd layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneHost {
    /// The control plane's version (`v1.30.10`).
    pub version: String,
    /// Its etcd.
    pub etcd: EtcdLayout,
    /// Whether `etcdutl` is installed beside `etcdctl` (etcd 3.5 ships both; older set-ups
    /// have only `etcdctl`).
    pub etcdutl: bool,
}

/// One static pod as its manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPod {
    /// Its component (`kube-apiserver`); the mirror pod is `<component>-<node>`.
    pub component: String,
    /// The image it runs.
    pub image: String,
    /// A hash of the manifest (the kubelet's `kubernetes.io/config.hash`): a change restarts
    /// the pod.
    pub hash: String,
}

/// The manifest kubeadm writes for `component` running `image`.
pub fn manifest(component: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    component: {component}\n    tier: control-plane\n  name: {component}\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n    - {component}\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    name: {component}\n  hostNetwork: true\n  priority: 2000001000\n  priorityClassName: system-node-critical\n"
    )
}

/// The image of `component` at `version` (`v1.31.4`).
fn image(component: &str, version: KubeVersion) -> String {
    format!("registry.k8s.io/{component}:v{version}")
}

/// Reads a manifest: its component (the `component` label, or its name) and image.
pub fn parse_manifest(text: &str) -> Option<StaticPod> {
    let pod: Value = serde_saphyr::from_str(text).ok()?;
    let component = pod
        .pointer("/metadata/labels/component")
        .or_else(|| pod.pointer("/metadata/name"))
        .and_then(Value::as_str)?
        .to_owned();
    let image = pod
        .pointer("/spec/containers/0/image")
        .and_then(Value::as_str)?
        .to_owned();
    Some(StaticPod {
        component,
        image,
        hash: format!("{:016x}", fnv1a(text.as_bytes())),
    })
}

/// FNV-1a, 64 bits: a stable content hash for manifests and snapshots.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Revision and key count of the cluster's data, as an etcd snapshot would hold them.
pub type EtcdView = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

#[derive(Default)]
struct ClusterState {
    /// `ClusterConfiguration.kubernetesVersion`: what the last `kubeadm upgrade apply` (or
    /// `kubeadm init`) set.
    version: Option<KubeVersion>,
    /// Snapshots taken without an [`EtcdView`]: each sees one more revision.
    revision: u64,
}

/// What kubeadm keeps in the cluster (its `ClusterConfiguration`) and the etcd data the
/// snapshots hold; shared by every host of one cluster.
#[derive(Clone, Default)]
pub struct KubeadmCluster {
    state: Arc<Mutex<ClusterState>>,
    etcd: Option<EtcdView>,
}

impl std::fmt::Debug for KubeadmCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeadmCluster")
            .field("version", &self.state.lock().version)
            .finish_non_exhaustive()
    }
}

impl KubeadmCluster {
    /// A cluster that kubeadm initialised at `version` (`None`: no kubeadm control plane),
    /// whose etcd holds what `etcd` reports (`None`: a revision counter).
    pub fn new(version: Option<KubeVersion>, etcd: Option<EtcdView>) -> KubeadmCluster {
        KubeadmCluster {
            state: Arc::new(Mutex::new(ClusterState {
                version,
                revision: 1,
            })),
            etcd,
        }
    }

    /// The cluster's version (`ClusterConfiguration.kubernetesVersion`).
    pub fn version(&self) -> Option<KubeVersion> {
        self.state.lock().version
    }

    fn etcd_data(&self) -> (u64, u64) {
        match &self.etcd {
            Some(view) => view(),
            None => {
                let mut state = self.state.lock();
                state.revision += 1;
                (state.revision, state.revision)
            }
        }
    }
}

/// What one of the tools did on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolAction {
    /// `etcdctl snapshot save PATH`.
    SnapshotSave {
        /// The snapshot file.
        path: String,
    },
    /// `etcdutl`/`etcdctl snapshot status PATH`.
    SnapshotStatus {
        /// The snapshot file.
        path: String,
    },
    /// `kubeadm upgrade plan VERSION`.
    UpgradePlan {
        /// The version planned for.
        version: String,
    },
    /// `kubeadm upgrade apply VERSION`.
    UpgradeApply {
        /// The version applied.
        version: String,
    },
    /// `kubeadm upgrade node`.
    UpgradeNode {
        /// The version the node's control plane moved to (`None` on a worker).
        control_plane: Option<String>,
    },
}

/// One call of a tool on a host, when it ran and whether it succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolRecord {
    /// When it finished (the same wall clock as the emulator's).
    pub time: Timestamp,
    /// What it did.
    pub action: ToolAction,
    /// Whether it exited 0.
    pub success: bool,
}

/// A command's arguments: positional words and `--flag[=value]`s.
struct Args<'a> {
    words: Vec<&'a str>,
    flags: BTreeMap<&'a str, &'a str>,
}

/// Flags that take the next argument as their value when written without `=`.
const VALUE_FLAGS: [&str; 8] = [
    "endpoints",
    "cacert",
    "cert",
    "key",
    "write-out",
    "w",
    "o",
    "output",
];

fn parse_args(argv: &[String]) -> Args<'_> {
    let mut words = Vec::new();
    let mut flags = BTreeMap::new();
    let mut rest = argv.iter().skip(1).map(String::as_str);
    while let Some(arg) = rest.next() {
        match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(flag) if !flag.is_empty() => match flag.split_once('=') {
                Some((name, value)) => {
                    flags.insert(name, value);
                }
                None if VALUE_FLAGS.contains(&flag) => {
                    flags.insert(flag, rest.next().unwrap_or_default());
                }
                None => {
                    flags.insert(flag, "");
                }
            },
            _ => words.push(arg),
        }
    }
    Args { words, flags }
}

fn output(code: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> CommandOutput {
    CommandOutput {
        status: ExitStatus::Exited(code),
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

/// kubeadm's way of failing: the message, how to see more, exit 1.
fn fatal(phase: &str, message: &str) -> CommandOutput {
    output(
        1,
        "",
        format!(
            "[{phase}] FATAL: {message}\nTo see the stack trace of this error execute with --v=5 or higher\n"
        ),
    )
}

/// Runs `argv` when it is one of the tools this module simulates and the host has it;
/// `None` otherwise (the host looks elsewhere).
pub(crate) fn run(host: &SimHost, argv: &[String]) -> Option<CommandOutput> {
    let program = argv.first()?.rsplit('/').next()?;
    let memory = host.memory();
    match program {
        "kubeadm" => {
            let installed = memory.installed("kubeadm")?;
            let version = rota_agent::detect::upstream_version(&installed)
                .parse::<KubeVersion>()
                .ok()?;
            Some(kubeadm(host, version, &parse_args(argv)))
        }
        "etcdctl" if memory.file(ETCDCTL).is_some() => Some(etcd_tool(host, true, argv)),
        "etcdutl" if memory.file(ETCDUTL).is_some() => Some(etcd_tool(host, false, argv)),
        _ => None,
    }
}

fn kubeadm(host: &SimHost, kubeadm: KubeVersion, args: &Args<'_>) -> CommandOutput {
    match args.words.as_slice() {
        ["version"] => match args.flags.get("o").or_else(|| args.flags.get("output")) {
            Some(&"short") => output(0, format!("v{kubeadm}\n"), ""),
            Some(&"json") => output(
                0,
                format!(
                    "{}\n",
                    json!({"clientVersion": {
                        "major": kubeadm.major.to_string(),
                        "minor": kubeadm.minor.to_string(),
                        "gitVersion": format!("v{kubeadm}"),
                        "gitTreeState": "clean",
                        "goVersion": "go1.23.4",
                        "compiler": "gc",
                        "platform": "linux/amd64",
                    }})
                ),
                "",
            ),
            _ => output(
                0,
                format!(
                    "kubeadm version: &version.Info{{Major:\"{}\", Minor:\"{}\", GitVersion:\"v{kubeadm}\", GitTreeState:\"clean\", GoVersion:\"go1.23.4\", Compiler:\"gc\", Platform:\"linux/amd64\"}}\n",
                    kubeadm.major, kubeadm.minor
                ),
                "",
            ),
        },
        ["upgrade", "plan"] => upgrade_plan(host, kubeadm, kubeadm),
        ["upgrade", "plan", version] => match version.parse() {
            Ok(target) => upgrade_plan(host, kubeadm, target),
            Err(_) => bad_version(version),
        },
        ["upgrade", "apply", version] => match version.parse() {
            Ok(target) => upgrade_apply(host, kubeadm, target, args),
            Err(_) => bad_version(version),
        },
        ["upgrade", "node"] => upgrade_node(host, kubeadm),
        words => output(
            1,
            "",
            format!(
                "error: unknown command \"{}\" for \"kubeadm\"\nRun 'kubeadm --help' for usage.\n",
                words.join(" ")
            ),
        ),
    }
}

fn bad_version(version: &str) -> CommandOutput {
    fatal(
        "upgrade/version",
        &format!("unable to parse version {version:?}: could not parse pre-release/metadata"),
    )
}

/// Why kubeadm `kubeadm` refuses to take a cluster at `cluster` to `target`, as kubeadm's
/// version policy says it.
fn version_errors(kubeadm: KubeVersion, cluster: KubeVersion, target: KubeVersion) -> Vec<String> {
    let mut errors = Vec::new();
    if target.minor_version() < cluster.minor_version() {
        errors.push(format!(
            "Specified version to upgrade to \"v{target}\" is equal to or lower than the cluster version \"v{cluster}\". Downgrades are not supported yet"
        ));
    }
    if target.minor > cluster.minor + 1 || target.major != cluster.major {
        errors.push(format!(
            "Specified version to upgrade to \"v{target}\" is too high; kubeadm can upgrade only 1 minor version at a time"
        ));
    }
    if target > kubeadm {
        errors.push(format!(
            "Specified version to upgrade to \"v{target}\" is higher than the kubeadm version \"v{kubeadm}\". Upgrade kubeadm first using the tool you used to install kubeadm"
        ));
    }
    if kubeadm.minor_version() > target.minor_version() {
        errors.push(format!(
            "Kubeadm version \"v{kubeadm}\" can only be used to upgrade to Kubernetes version \"v{}\"",
            kubeadm.short()
        ));
    }
    errors
}

/// The node's control plane and the cluster's version, or kubeadm's failure to read them.
fn control_plane(host: &SimHost) -> Result<(KubeVersion, BTreeMap<String, StaticPod>), String> {
    let memory = host.memory();
    if memory.file(ADMIN_CONF).is_none() {
        return Err(format!(
            "couldn't create a Kubernetes client from file \"{ADMIN_CONF}\": failed to load admin kubeconfig: open {ADMIN_CONF}: no such file or directory"
        ));
    }
    let cluster = host.kubeadm_cluster().version().ok_or_else(|| {
        "unable to fetch the kubeadm-config ConfigMap: configmaps \"kubeadm-config\" not found"
            .to_owned()
    })?;
    Ok((cluster, host.static_pods()))
}

fn upgrade_plan(host: &SimHost, kubeadm: KubeVersion, target: KubeVersion) -> CommandOutput {
    let result = (|| {
        let (cluster, pods) = control_plane(host).map_err(|e| fatal("upgrade/config", &e))?;
        let errors = version_errors(kubeadm, cluster, target);
        if !errors.is_empty() {
            return Err(version_fatal(&errors));
        }
        let node = host.node();
        let mut out = format!(
            "[preflight] Running pre-flight checks.\n\
             [upgrade/config] Reading configuration from the cluster...\n\
             [upgrade/config] FYI: You can look at this config file with 'kubectl -n kube-system get cm kubeadm-config -o yaml'\n\
             [upgrade] Running cluster health checks\n\
             [upgrade] Fetching available versions to upgrade to\n\
             [upgrade/versions] Cluster version: {cluster}\n\
             [upgrade/versions] kubeadm version: v{kubeadm}\n\
             [upgrade/versions] Target version: v{target}\n\
             [upgrade/versions] Latest version in the v{} series: v{target}\n\n\
             Upgrade to the latest version in the v{} series:\n\n\
             COMPONENT                 NODE      CURRENT    TARGET\n",
            cluster.short(),
            target.short(),
        );
        for component in UPGRADED {
            let current = pods
                .get(component)
                .and_then(|p| image_version(&p.image))
                .map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
            out.push_str(&format!(
                "{component:<25} {node:<9} {current:<10} v{target}\n"
            ));
        }
        out.push_str(&format!(
            "\nYou can now apply the upgrade by executing the following command:\n\n\tkubeadm upgrade apply v{target}\n\n_____________________________________________________________________\n"
        ));
        Ok(output(0, out, ""))
    })();
    let out = result.unwrap_or_else(|e| e);
    host.record(
        ToolAction::UpgradePlan {
            version: format!("v{target}"),
        },
        out.success(),
    );
    out
}

fn version_fatal(errors: &[String]) -> CommandOutput {
    let list: String = errors.iter().map(|e| format!("\t- {e}\n")).collect();
    fatal(
        "upgrade/version",
        &format!(
            "the --version argument is invalid due to these errors:\n\n{list}\nCan be bypassed if you pass the --force flag"
        ),
    )
}

fn upgrade_apply(
    host: &SimHost,
    kubeadm: KubeVersion,
    target: KubeVersion,
    args: &Args<'_>,
) -> CommandOutput {
    let result = (|| {
        let (cluster, pods) = control_plane(host).map_err(|e| fatal("upgrade/config", &e))?;
        let errors = version_errors(kubeadm, cluster, target);
        if !errors.is_empty() {
            return Err(version_fatal(&errors));
        }
        if !pods.contains_key("kube-apiserver") {
            return Err(fatal(
                "upgrade/apply",
                &format!(
                    "couldn't upgrade control plane: the static Pod manifest {MANIFESTS}/kube-apiserver.yaml is missing"
                ),
            ));
        }
        if !args.flags.contains_key("yes") && !args.flags.contains_key("y") {
            // kubeadm asks, and reads no answer from a command without a terminal.
            return Err(output(
                1,
                "[upgrade/confirm] Are you sure you want to proceed? [y/N]: ",
                "won't proceed; the user didn't answer (Y|y) in order to continue\nTo see the stack trace of this error execute with --v=5 or higher\n",
            ));
        }
        let node = host.node().to_owned();
        if host.faults().kubeadm_apply_fails(&node) {
            return Err(fatal(
                "upgrade/apply",
                &format!(
                    "couldn't upgrade control plane. kubeadm has tried to recover everything into the earlier state. Errors faced: failed to obtain static Pod hash for component kube-apiserver on Node {node}: Get \"https://{node}:6443/api/v1/namespaces/kube-system/pods/kube-apiserver-{node}?timeout=10s\": context deadline exceeded"
                ),
            ));
        }
        host.kubeadm_cluster().state.lock().version = Some(target);
        host.write_static_pods(target);
        host.memory()
            .put_file(KUBELET_CONFIG, kubelet_config(target));
        Ok(output(
            0,
            format!(
                "[preflight] Running pre-flight checks.\n\
                 [upgrade/config] Reading configuration from the cluster...\n\
                 [upgrade] Running cluster health checks\n\
                 [upgrade/version] You have chosen to change the cluster version to \"v{target}\"\n\
                 [upgrade/versions] Cluster version: v{cluster}\n\
                 [upgrade/versions] kubeadm version: v{kubeadm}\n\
                 [upgrade/staticpods] Writing new Static Pod manifests to \"{MANIFESTS}\"\n\
                 [upgrade/staticpods] Component \"kube-apiserver\" upgraded successfully!\n\
                 [upgrade/staticpods] Component \"kube-controller-manager\" upgraded successfully!\n\
                 [upgrade/staticpods] Component \"kube-scheduler\" upgraded successfully!\n\
                 [upgrade] Backing up kubelet config file to /etc/kubernetes/tmp/kubeadm-kubelet-config.yaml\n\
                 [kubelet-start] Writing kubelet configuration to file \"{KUBELET_CONFIG}\"\n\n\
                 [upgrade/successful] SUCCESS! Your cluster was upgraded to \"v{target}\". Enjoy!\n\n\
                 [upgrade/kubelet] Now that your control plane is upgraded, please proceed with upgrading your kubelets if you haven't already done so.\n"
            ),
            "",
        ))
    })();
    let out = result.unwrap_or_else(|e| e);
    host.record(
        ToolAction::UpgradeApply {
            version: format!("v{target}"),
        },
        out.success(),
    );
    out
}

fn kubelet_config(version: KubeVersion) -> String {
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n# written by kubeadm v{version}\ncgroupDriver: systemd\n"
    )
}

fn upgrade_node(host: &SimHost, kubeadm: KubeVersion) -> CommandOutput {
    let memory = host.memory();
    let control_plane_node = memory
        .file(format!("{MANIFESTS}/kube-apiserver.yaml"))
        .is_some();
    let cluster = host.kubeadm_cluster().version();
    let mut moved = None;
    let out = match cluster {
        None => fatal(
            "upgrade/config",
            "unable to fetch the kubeadm-config ConfigMap: configmaps \"kubeadm-config\" not found",
        ),
        // A control-plane node's kubeadm writes the cluster's control plane with its own
        // templates: it must have caught up. A worker's only rewrites the kubelet's
        // configuration, which a kubelet up to three minors older than the control plane runs.
        Some(cluster)
            if control_plane_node && kubeadm.minor_version() < cluster.minor_version() =>
        {
            fatal(
                "upgrade/version",
                &format!(
                    "the kubeadm version \"v{kubeadm}\" is older than the cluster version \"v{cluster}\"; upgrade kubeadm first"
                ),
            )
        }
        Some(cluster) => {
            let mut out = String::from(
                "[upgrade] Reading configuration from the cluster...\n\
                 [upgrade] FYI: You can look at this config file with 'kubectl -n kube-system get cm kubeadm-config -o yaml'\n\
                 [preflight] Running pre-flight checks\n",
            );
            if control_plane_node {
                host.write_static_pods(cluster);
                moved = Some(format!("v{cluster}"));
                out.push_str(&format!(
                    "[upgrade/staticpods] Writing new Static Pod manifests to \"{MANIFESTS}\"\n\
                     [upgrade] The control plane instance for this node was successfully updated!\n"
                ));
            } else {
                out.push_str(
                    "[preflight] Skipping prepull. Not a control plane node.\n\
                     [upgrade] Skipping phase. Not a control plane node.\n",
                );
            }
            memory.put_file(KUBELET_CONFIG, kubelet_config(cluster));
            out.push_str(&format!(
                "[kubelet-start] Writing kubelet configuration to file \"{KUBELET_CONFIG}\"\n\
                 [upgrade] The configuration for this node was successfully updated!\n\
                 [upgrade] Now you should go ahead and upgrade the kubelet package using your package manager.\n"
            ));
            output(0, out, "")
        }
    };
    host.record(
        ToolAction::UpgradeNode {
            control_plane: moved,
        },
        out.success(),
    );
    out
}

/// Writes the manifests of the node's upgraded components (those it has) at `version`.
pub(crate) fn upgraded_manifests(
    pods: &BTreeMap<String, StaticPod>,
    version: KubeVersion,
) -> Vec<(String, String)> {
    UPGRADED
        .iter()
        .filter(|c| pods.contains_key(**c))
        .map(|c| {
            (
                format!("{MANIFESTS}/{c}.yaml"),
                manifest(c, &image(c, version)),
            )
        })
        .collect()
}

/// The manifests a control-plane host starts with.
pub(crate) fn initial_manifests(spec: &ControlPlaneHost) -> Vec<(String, String)> {
    let version = spec.version.trim_start_matches('v');
    let mut files: Vec<(String, String)> = UPGRADED
        .iter()
        .map(|c| {
            (
                format!("{MANIFESTS}/{c}.yaml"),
                manifest(c, &format!("registry.k8s.io/{c}:v{version}")),
            )
        })
        .collect();
    if spec.etcd == EtcdLayout::Stacked {
        files.push((
            format!("{MANIFESTS}/etcd.yaml"),
            manifest("etcd", ETCD_IMAGE),
        ));
    }
    files
}

fn etcd_tool(host: &SimHost, etcdctl: bool, argv: &[String]) -> CommandOutput {
    let args = parse_args(argv);
    let name = if etcdctl { "etcdctl" } else { "etcdutl" };
    match args.words.as_slice() {
        ["version"] => output(
            0,
            format!(
                "{name} version: {ETCD_VERSION}\nAPI version: {}\n",
                &ETCD_VERSION[..3]
            ),
            "",
        ),
        ["snapshot", "save", path] if etcdctl => snapshot_save(host, path, &args),
        ["snapshot", "status", path] => {
            let out = snapshot_status(host, path, &args);
            host.record(
                ToolAction::SnapshotStatus {
                    path: (*path).to_owned(),
                },
                out.success(),
            );
            if etcdctl && out.success() {
                CommandOutput {
                    stderr: format!(
                        "Deprecated: Use `etcdutl snapshot status` instead.\n\n{}",
                        out.stderr
                    ),
                    ..out
                }
            } else {
                out
            }
        }
        words => output(
            1,
            "",
            format!(
                "Error: unknown command \"{}\" for \"{name}\"\n",
                words.join(" ")
            ),
        ),
    }
}

fn snapshot_save(host: &SimHost, path: &str, args: &Args<'_>) -> CommandOutput {
    let memory = host.memory();
    let out = (|| {
        let endpoint = args
            .flags
            .get("endpoints")
            .copied()
            .unwrap_or("127.0.0.1:2379");
        let local = ["https://127.0.0.1:2379", "https://localhost:2379"];
        let stacked = memory.file(format!("{MANIFESTS}/etcd.yaml")).is_some();
        if !stacked || !local.contains(&endpoint) {
            return Err(output(
                1,
                "",
                format!(
                    "{{\"level\":\"warn\",\"msg\":\"retrying of unary invoker failed\",\"target\":\"etcd-endpoints://{endpoint}\",\"error\":\"rpc error: code = DeadlineExceeded desc = latest balancer error: last connection error: connection error: desc = \\\"transport: Error while dialing: dial tcp {}: connect: connection refused\\\"\"}}\nError: context deadline exceeded\n",
                    endpoint.trim_start_matches("https://")
                ),
            ));
        }
        for flag in ["cacert", "cert", "key"] {
            let Some(file) = args.flags.get(flag).filter(|f| !f.is_empty()) else {
                // The member requires client certificates (kubeadm's `--client-cert-auth`).
                return Err(output(
                    1,
                    "",
                    "Error: rpc error: code = Unavailable desc = connection error: desc = \"transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority\"\n",
                ));
            };
            if memory.file(file).is_none() {
                return Err(output(
                    1,
                    "",
                    format!("Error: open {file}: no such file or directory\n"),
                ));
            }
        }
        let (revision, keys) = host.kubeadm_cluster().etcd_data();
        let mut data = format!(
            "{SNAPSHOT_MAGIC}{}\n",
            json!({"member": host.node(), "revision": revision, "totalKey": keys})
        )
        .into_bytes();
        // A bolt database grows in pages; its size follows the keys it holds.
        let pages = usize::try_from(keys / 16 + 4).unwrap_or(4);
        data.resize(data.len().max(pages * 4096), 0);
        memory.put_file(path, &data);
        Ok(output(
            0,
            format!("Snapshot saved at {path}\n"),
            format!(
                "{{\"level\":\"info\",\"msg\":\"created temporary db file\",\"path\":\"{path}.part\"}}\n{{\"level\":\"info\",\"msg\":\"fetched snapshot\",\"endpoint\":\"{endpoint}\",\"size\":\"{} kB\"}}\n{{\"level\":\"info\",\"msg\":\"saved\",\"path\":\"{path}\"}}\n",
                data.len() / 1000
            ),
        ))
    })();
    let out = out.unwrap_or_else(|e| e);
    host.record(
        ToolAction::SnapshotSave {
            path: path.to_owned(),
        },
        out.success(),
    );
    out
}

fn snapshot_status(host: &SimHost, path: &str, args: &Args<'_>) -> CommandOutput {
    let Some(data) = host.memory().file(path) else {
        return output(
            1,
            "",
            format!("Error: stat {path}: no such file or directory\n"),
        );
    };
    let header = data
        .strip_prefix(SNAPSHOT_MAGIC.as_bytes())
        .and_then(|rest| rest.split(|b| *b == b'\n').next())
        .and_then(|line| serde_json::from_slice::<Value>(line).ok());
    let Some(header) = header else {
        return output(1, "", "Error: invalid database\n");
    };
    let revision = header.get("revision").and_then(Value::as_u64).unwrap_or(0);
    let keys = header.get("totalKey").and_then(Value::as_u64).unwrap_or(0);
    let hash = fnv1a(&data) & 0xffff_ffff;
    let size = data.len();
    let json_out = args
        .flags
        .get("write-out")
        .or_else(|| args.flags.get("w"))
        .is_some_and(|w| *w == "json");
    if json_out {
        output(
            0,
            format!(
                "{}\n",
                json!({"hash": hash, "revision": revision, "totalKey": keys, "totalSize": size})
            ),
            "",
        )
    } else {
        let line = "+----------+----------+------------+------------+";
        output(
            0,
            format!(
                "{line}\n|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n{line}\n| {hash:08x} | {revision:>8} | {keys:>10} | {:>7} kB |\n{line}\n",
                size / 1000
            ),
            "",
        )
    }
}
