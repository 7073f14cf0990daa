//! What the agent's suites share: prerequisites, the cached Debian base, per-test copies of a
//! prepared root, running the agent binary on it, and a fake coordinator for the daemon.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod coordinator;
pub mod debian;
#[path = "../../../../tests/src/debs.rs"]
pub mod debs;
#[path = "../../../../tests/src/prerequisites.rs"]
pub mod prerequisites;
use rota_core::model::NodeFacts;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rota_agent::host::{ChrootHost, Host};
use rota_agent::ops::{CompleteAck, Completion, Reporter};

pub const AGENT: &str = env!("CARGO_BIN_EXE_rota-agent");
const CACHE_DIR: &str = "/var/cache/rota-test";
const BASE_TARBALL: &str = "/var/cache/rota-test/bookworm-minbase.tar";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Runs a command and returns its standard output; panics with its output on failure.
pub use debs::run as sh;

/// Runs `script` with `sh -e` inside `root` (chroot) with a plain environment. The script is
/// written to the root's `/tmp` so a failure message names the file, not its whole text.
pub fn in_root(root: &Path, script: &str) -> String {
    let path = root.join("tmp/rota-setup.sh");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, script).unwrap();
    sh(Command::new("chroot")
        .arg(root)
        .args(["sh", "-e", "/tmp/rota-setup.sh"])
        .env_clear()
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .env("HOME", "/root")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why the suites cannot run here, if they cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    [
        "debootstrap",
        "dpkg-deb",
        "dpkg-scanpackages",
        "tar",
        "cp",
        "chroot",
    ]
    .into_iter()
    .find(|t| !have(t))
    .map(|t| format!("{t} is not installed"))
}

/// Resolves a prepared root: `None` when the root suites cannot run here and the developer
/// asked to skip them ([`prerequisites::SKIP_ROOT_SUITES`]); otherwise a failure saying why.
pub fn prepared_or_skip(base: &Result<PathBuf, String>) -> Option<&Path> {
    match base {
        Ok(p) => Some(p.as_path()),
        Err(why) => {
            prerequisites::skip_or_fail(
                "the real-package suite",
                why,
                prerequisites::SKIP_ROOT_SUITES,
            );
            None
        }
    }
}

/// A copy of the root `prepare` builds once per run (kept in `base`), or `None` when the root
/// suites cannot run here and the developer asked to skip them.
pub fn copy_of_prepared(
    base: &'static std::sync::OnceLock<Result<PathBuf, String>>,
    prepare: fn() -> PathBuf,
) -> Option<Root> {
    let base = base.get_or_init(|| match missing_prerequisite() {
        Some(why) => Err(why),
        None => Ok(prepare()),
    });
    prepared_or_skip(base).map(Root::copy_of)
}

/// A cached tarball of a root: built by `build(dir)` the first time on this machine.
pub fn cached_tarball(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let tarball = PathBuf::from(format!("{CACHE_DIR}/{name}"));
    if tarball.exists() {
        return tarball;
    }
    fs::create_dir_all(CACHE_DIR).unwrap();
    let dir = PathBuf::from(format!("{CACHE_DIR}/build-{name}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    build(&dir);
    let tmp = PathBuf::from(format!("{}.{}", tarball.display(), std::process::id()));
    sh(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tmp)
        .arg("."));
    fs::rename(&tmp, &tarball).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    tarball
}

/// The Debian bookworm minbase, bootstrapped once per machine.
pub fn base_tarball() -> PathBuf {
    let tarball = PathBuf::from(BASE_TARBALL);
    let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    cached_tarball(&name, |dir| {
        sh(Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(dir)
            .arg(MIRROR));
    })
}

/// A fresh directory for this run's prepared root (`/var/tmp/PREFIX.PID`), with those of
/// earlier runs whose process is gone removed, and `tarball` extracted into it.
pub fn fresh_root(prefix: &str, tarball: &Path) -> PathBuf {
    if let Ok(entries) = fs::read_dir("/var/tmp") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(&format!("{prefix}."))
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let root = PathBuf::from(format!("/var/tmp/{prefix}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xf")
        .arg(tarball));
    root
}

/// Installs the test double of the host's systemd: records its arguments, succeeds.
pub fn install_systemctl_double(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let systemctl = root.join("usr/local/sbin/systemctl");
    fs::create_dir_all(systemctl.parent().unwrap()).unwrap();
    fs::write(
        &systemctl,
        "#!/bin/sh\n# Test double of the host's systemd: records the call, succeeds.\necho \"$*\" >> /var/log/rota-systemctl.log\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A test's own copy of a prepared root; removed when dropped.
pub struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    /// Copies `base`.
    pub fn copy_of(base: &Path) -> Root {
        let dir = tempfile::Builder::new()
            .prefix("rota-root-test.")
            .tempdir_in("/var/tmp")
            .unwrap();
        sh(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", base.display()))
            .arg(dir.path()));
        Root { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn host(&self) -> ChrootHost {
        ChrootHost::with_helper(self.path(), PathBuf::from(AGENT))
    }

    /// Runs the agent binary on this root.
    pub fn agent(&self, args: &[&str]) -> std::process::Output {
        Command::new(AGENT)
            .args(args)
            .arg("--host-root")
            .arg(self.path())
            .env_remove("ROTA_HOST_ROOT")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// `check --json`: exit code and facts.
    pub fn check(&self, extra: &[&str]) -> (i32, NodeFacts) {
        let mut args = vec!["check", "--json"];
        args.extend_from_slice(extra);
        let out = self.agent(&args);
        let facts: NodeFacts = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "check printed no facts ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), facts)
    }

    pub fn version(&self, name: &str) -> Option<String> {
        self.host()
            .packages()
            .unwrap()
            .installed_version(name)
            .unwrap()
    }

    pub fn systemctl_calls(&self) -> Vec<String> {
        fs::read_to_string(self.path().join("var/log/rota-systemctl.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Sorted names of pending upgrades.
pub fn names<'a>(it: impl Iterator<Item = &'a rota_core::model::PendingPackage>) -> Vec<&'a str> {
    let mut v: Vec<&str> = it.map(|p| p.name.as_str()).collect();
    v.sort();
    v
}

/// Records the completions an executor reports.
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Completion>>);

impl Reporter for Recorder {
    fn progress(&self, _token: u64, _step: &str, _message: &str) {}
    fn complete(&self, _token: u64, c: &Completion) -> rota_agent::Result<CompleteAck> {
        self.0.lock().unwrap().push(c.clone());
        Ok(CompleteAck::Accepted)
    }
}

/// The Kubernetes package versions of the per-minor repositories (`core:/stable:/vX.Y`), as
/// (minor, upstream version).
pub const KUBERNETES_VERSIONS: [(&str, &str); 4] = [
    ("1.30", "1.30.9"),
    ("1.31", "1.31.3"),
    ("1.31", "1.31.4"),
    ("1.32", "1.32.0"),
];

/// Where the stand-ins record their arguments (in the root).
pub const KUBEADM_LOG: &str = "var/log/rota-kubeadm.log";
pub const ETCDCTL_LOG: &str = "var/log/rota-etcdctl.log";
/// While this file exists in the root, `kubeadm upgrade apply` fails as a real one does.
pub const FAIL_APPLY: &str = "etc/kubernetes/rota-fail-apply";
/// When this file exists in the root, `kubeadm upgrade plan` offers the version it holds
/// (e.g. `v1.31.3`) instead of its own.
pub const PLAN_OFFERS: &str = "etc/kubernetes/rota-plan-offers";

/// The stand-in of `kubeadm` VERSION: records its arguments; `upgrade plan` prints what the
/// real one prints on a cluster one minor behind (component tables, then the apply command);
/// `upgrade apply` and `upgrade node` say they succeeded, or fail while [`FAIL_APPLY`] exists.
pub fn kubeadm_script(version: &str) -> String {
    format!(
        r#"#!/bin/sh
# Test stand-in of kubeadm v{version}.
echo "$*" >> /{KUBEADM_LOG}
offer=v{version}
[ -f /{PLAN_OFFERS} ] && offer=$(cat /{PLAN_OFFERS})
case "$1 $2" in
"upgrade plan")
  cat <<PLAN
[preflight] Running pre-flight checks.
[upgrade/config] Reading configuration from the cluster...
[upgrade] Running cluster health checks
[upgrade] Fetching available versions to upgrade to
[upgrade/versions] Cluster version: 1.30.9
[upgrade/versions] kubeadm version: v{version}
[upgrade/versions] Target version: $offer
[upgrade/versions] Latest version in the v1.30 series: v1.30.9

Components that must be upgraded manually after you have upgraded the control plane with 'kubeadm upgrade apply':
COMPONENT   NODE     CURRENT   TARGET
kubelet     cp-1     v1.30.9   $offer

Upgrade to the latest stable version:

COMPONENT                 NODE     CURRENT    TARGET
kube-apiserver            cp-1     v1.30.9    $offer
kube-controller-manager   cp-1     v1.30.9    $offer
kube-scheduler            cp-1     v1.30.9    $offer
kube-proxy                         1.30.9     $offer
CoreDNS                            v1.11.1    v1.11.3
etcd                      cp-1     3.5.15-0   3.5.15-0

You can now apply the upgrade by executing the following command:

	kubeadm upgrade apply $offer

_____________________________________________________________________
PLAN
  ;;
"upgrade apply")
  if [ -f /{FAIL_APPLY} ]; then
    echo '[upgrade/apply] FATAL: couldn'"'"'t upgrade control plane. kubeadm has tried to recover everything into the earlier state. Errors faced: timed out waiting for the condition' >&2
    exit 1
  fi
  echo "[upgrade/successful] SUCCESS! Your cluster was upgraded to \"$3\". Enjoy!"
  ;;
"upgrade node")
  echo "[upgrade] The configuration for this node was successfully updated!"
  ;;
*)
  echo "kubeadm stand-in: unexpected $*" >&2
  exit 2
  ;;
esac
"#
    )
}

/// The stand-in of `etcdctl`: records its arguments; `snapshot save FILE` writes a non-empty
/// file; `--write-out=json snapshot status FILE` prints etcd's JSON status of it (with the
/// deprecation warning etcdctl 3.5 prints, on standard error).
pub fn etcdctl_script() -> String {
    format!(
        r#"#!/bin/sh
# Test stand-in of etcdctl 3.5.
echo "$*" >> /{ETCDCTL_LOG}
for file; do :; done
case "$*" in
*"snapshot save"*)
  mkdir -p "$(dirname "$file")"
  printf 'etcd snapshot of revision 48213\n' > "$file.part" && mv "$file.part" "$file"
  echo "Snapshot saved at $file"
  ;;
*"snapshot status"*)
  echo 'Deprecated: Use `etcdutl snapshot status` instead.' >&2
  [ -s "$file" ] || {{ echo "Error: stat $file: no such file or directory" >&2; exit 1; }}
  size=$(wc -c < "$file")
  echo "{{\"hash\":3700895328,\"revision\":48213,\"totalKey\":1187,\"totalSize\":$size}}"
  ;;
*)
  echo "etcdctl stand-in: unexpected $*" >&2
  exit 2
  ;;
esac
"#
    )
}

/// Lines of a stand-in's log in `root`.
pub fn log_lines(root: &Path, log: &str) -> Vec<String> {
    fs::read_to_string(root.join(log))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A pool whose Kubernetes upgrades wait for an etcd snapshot of at most an hour.
pub fn kubernetes_policy() -> rota_core::model::NodePolicy {
    rota_core::model::NodePolicy {
        name: "control-plane".into(),
        upgrade_mode: rota_core::policy::crd::UpgradeMode::Security,
        holds: vec![],
        sentinel_files: None,
        sentinel_command: vec![],
        reboot_command: vec![],
        reboot_mode: rota_core::policy::crd::RebootMode::WhenRequired,
        etcd: rota_core::model::EtcdSnapshotPolicy {
            before: rota_core::model::SnapshotBefore::KubernetesUpgrades,
            max_age_seconds: 3600,
        },
    }
}

/// Runs a granted Kubernetes upgrade to `version` with `step` on `root` under
/// [`kubernetes_policy`], with the repository base `base` (`None`: the file's), and returns
/// its completion.
pub fn kubernetes_upgrade(
    root: &Root,
    version: &str,
    step: rota_core::model::KubeadmStep,
    base: Option<&str>,
) -> Completion {
    let host = root.host();
    let mut config = rota_agent::ops::ExecutorConfig::default();
    config.detect.kubernetes.repository_base = base.map(String::from);
    let rec = Recorder::default();
    let op = rota_core::model::Operation::KubernetesUpgrade {
        version: version.into(),
        kubeadm: step,
    };
    rota_agent::ops::Executor::start_granted(
        &host,
        &config,
        &rec,
        11,
        op,
        Some(kubernetes_policy()),
        jiff::Timestamp::now(),
    )
    .unwrap()
    .run()
    .unwrap();
    assert!(
        !host.exists(&config.state_path).unwrap(),
        "state is cleared"
    );
    rec.0.lock().unwrap().pop().expect("a completion")
}

/// Makes the root a stacked-etcd control-plane node (kubeadm's static pod manifests).
pub fn make_control_plane(root: &Root) {
    let manifests = root.path().join("etc/kubernetes/manifests");
    fs::create_dir_all(&manifests).unwrap();
    fs::write(manifests.join("etcd.yaml"), "kind: Pod\n").unwrap();
    fs::write(manifests.join("kube-apiserver.yaml"), "kind: Pod\n").unwrap();
}
