//! Real apt and dpkg in a throw-away Debian bookworm root (chroot): the prepared root and its
//! repository are described in `common/debian.rs`; the Kubernetes upgrade tests use its
//! second root, a kubeadm node with the pkgs.k8s.io per-minor layout (`kubernetes_root`).
//!
//! Needs root, `debootstrap`, `dpkg-deb` and `dpkg-scanpackages` (and, for the first run on a
//! machine, Debian's mirror). Without them the tests fail, saying what is missing, unless
//! `ROTA_SKIP_ROOT_SUITES=1` is set outside CI (`common::prerequisites`).

// Test helpers outside `#[test]` functions: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rota_core::model::{Blocked, KubeadmStep, Operation, PackagePin, UpgradeReboot};

use crate::common::debian::{kubernetes_list, kubernetes_root, root};
use crate::common::names;
use jiff::Timestamp;
use rota_agent::detect;
use rota_agent::host::{Host, HostCommand};
use rota_agent::ops::{Executor, ExecutorConfig};
use rota_agent::packages::{InstallPurpose, RepairOutcome, UpgradeScope};

#[test]
fn check_lists_pending_upgrades_with_the_security_split() {
    let Some(root) = root() else { return };
    let (code, facts) = root.check(&[]);
    assert_eq!(code, 0, "{:?}", facts.errors);
    assert!(facts.errors.is_empty(), "{:?}", facts.errors);
    assert_eq!(facts.package_backend, "apt");
    assert_eq!(names(facts.actionable_upgrades(true)), ["secpkg"]);
    assert_eq!(
        names(facts.actionable_upgrades(false).filter(|p| !p.security)),
        ["linux-image-rota", "ordinary"]
    );
    let kept: Vec<(&str, Option<Blocked>)> = facts
        .pending_upgrades
        .iter()
        .filter(|p| p.blocked.is_some())
        .map(|p| (p.name.as_str(), p.blocked))
        .collect();
    assert_eq!(
        kept,
        [
            ("heldpkg", Some(Blocked::Held)),
            ("kubelet", Some(Blocked::KubernetesPin))
        ]
    );
    let sec = facts
        .pending_upgrades
        .iter()
        .find(|p| p.name == "secpkg")
        .unwrap();
    assert_eq!(
        (sec.current_version.as_str(), sec.candidate_version.as_str()),
        ("1.0", "1.0+sec1")
    );
    assert_eq!(facts.kubelet_version, "1.30.1");
    assert_eq!(facts.kernels_installed, ["6.1.0-rota1"]);
    assert!(!facts.reboot_required, "{:?}", facts.reboot_reasons);
    assert_eq!(facts.os_image, "Debian GNU/Linux 12 (bookworm)");
    // The proto facts carry only what a plain upgrade would do.
    let pb = rota_proto::v1::NodeFacts::from(&facts);
    let mut pb_names: Vec<&str> = pb
        .pending_upgrades
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    pb_names.sort();
    assert_eq!(pb_names, ["linux-image-rota", "ordinary", "secpkg"]);

    // The human form says the same.
    let out = root.agent(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 security, 2 other, 2 kept back"), "{text}");
    assert!(text.contains("secpkg 1.0 -> 1.0+sec1"), "{text}");
    assert!(text.contains("heldpkg 1.0 -> 1.1 (held)"), "{text}");
    assert!(
        text.contains("kubelet 1.30.1-1.1 -> 1.30.2-1.1 (moves only in a Kubernetes upgrade)"),
        "{text}"
    );
}

#[test]
fn upgrade_security_only_upgrades_only_security_packages() {
    let Some(root) = root() else { return };
    let out = root.agent(&["upgrade", "--security-only", "--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("will upgrade 1 package(s)"), "{stdout}");
    assert!(stdout.contains("changed secpkg 1.0+sec1"), "{stdout}");
    assert_eq!(root.version("secpkg").unwrap(), "1.0+sec1");
    assert_eq!(root.version("ordinary").unwrap(), "1.0");
    assert_eq!(root.version("linux-image-rota").unwrap(), "1.0");
    assert_eq!(root.version("heldpkg").unwrap(), "1.0");
    assert_eq!(root.version("kubelet").unwrap(), "1.30.1-1.1");
    // Nothing asked for a reboot, and the kubelet was not restarted.
    let (_, facts) = root.check(&[]);
    assert!(!facts.reboot_required);
    assert!(
        !root
            .systemctl_calls()
            .iter()
            .any(|c| c.starts_with("restart"))
    );
}

#[test]
fn upgrade_without_confirmation_changes_nothing() {
    let Some(root) = root() else { return };
    let out = root.agent(&["upgrade"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not confirmed"));
    assert_eq!(root.version("ordinary").unwrap(), "1.0");
}

#[test]
fn plain_upgrade_keeps_holds_and_kubelet_and_leaves_the_sentinel() {
    let Some(root) = root() else { return };
    let out = root.agent(&["upgrade", "--yes"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(root.version("ordinary").unwrap(), "1.1");
    assert_eq!(root.version("secpkg").unwrap(), "1.0+sec1");
    assert_eq!(root.version("linux-image-rota").unwrap(), "1.1");
    assert_eq!(root.version("heldpkg").unwrap(), "1.0", "holds are kept");
    assert_eq!(
        root.version("kubelet").unwrap(),
        "1.30.1-1.1",
        "kubelet is not moved"
    );
    assert_eq!(
        root.host().packages().unwrap().holds().unwrap(),
        ["heldpkg"]
    );
    // apt-get install marks what it names manual; the agent restores the auto marks.
    let (code, facts) = root.check(&[]);
    assert_eq!(code, 0);
    assert!(facts.reboot_required);
    assert_eq!(facts.reboot_reasons, ["sentinel /var/run/reboot-required"]);
    assert_eq!(facts.reboot_packages, ["linux-image-rota"]);
    // The package replaced its kernel image (Debian installs each ABI as its own package).
    assert_eq!(facts.kernels_installed, ["6.1.0-rota2"]);
    assert_eq!(
        names(facts.pending_upgrades.iter()),
        ["heldpkg", "kubelet"],
        "only the held and the pinned package are left"
    );
}

fn kubernetes_list_now(root: &crate::common::Root) -> String {
    std::fs::read_to_string(root.path().join("etc/apt/sources.list.d/kubernetes.list")).unwrap()
}

fn holds(root: &crate::common::Root) -> Vec<String> {
    root.host().packages().unwrap().holds().unwrap()
}

/// The first control-plane node, 1.30 → 1.31 (a minor target): a verified etcd snapshot
/// first, the repository switched (to a mirror base, `signed-by` kept), kubeadm, plan, apply,
/// kubelet and kubectl at 1.31.4 and held, the kubelet restarted; `check` reports the snapshot.
#[test]
fn first_control_plane_node_upgrades_the_kubeadm_way() {
    let Some(root) = kubernetes_root() else {
        return;
    };
    crate::common::make_control_plane(&root);
    let started = std::time::Instant::now();
    let done = crate::common::kubernetes_upgrade(
        &root,
        "1.31",
        KubeadmStep::Apply,
        Some("file:///srv/mirror"),
    );
    assert!(done.success, "{done:?}");
    assert!(
        done.message
            .contains("Kubernetes v1.31.4 (kubeadm upgrade apply v1.31.4)"),
        "{}",
        done.message
    );
    for name in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(root.version(name).unwrap(), "1.31.4-1.1", "{name}");
    }
    assert_eq!(
        holds(&root),
        ["kubeadm", "kubectl", "kubelet"],
        "held again"
    );
    assert_eq!(
        kubernetes_list_now(&root),
        kubernetes_list("file:///srv/mirror", "1.31")
    );
    // The snapshot came first, then its verification (etcdctl's: no etcdutl here).
    let etcdctl = crate::common::log_lines(root.path(), crate::common::ETCDCTL_LOG);
    assert_eq!(etcdctl.len(), 2, "{etcdctl:?}");
    assert!(
        etcdctl[0].starts_with(
            "--endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
         --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
         --key=/etc/kubernetes/pki/etcd/healthcheck-client.key snapshot save \
         /var/lib/rota/etcd-snapshots/etcd-snapshot-"
        ),
        "{etcdctl:?}"
    );
    assert!(
        etcdctl[1].starts_with(
            "--write-out=json snapshot status /var/lib/rota/etcd-snapshots/etcd-snapshot-"
        ),
        "{etcdctl:?}"
    );
    assert_eq!(
        crate::common::log_lines(root.path(), crate::common::KUBEADM_LOG),
        ["upgrade plan v1.31.4", "upgrade apply v1.31.4 --yes"]
    );
    assert_eq!(
        root.systemctl_calls(),
        [
            "daemon-reload",
            "restart kubelet",
            "is-active --quiet kubelet"
        ]
    );
    let (_, facts) = root.check(&[]);
    assert_eq!(facts.kubelet_version, "1.31.4");
    assert_eq!(facts.etcd.member, rota_core::model::EtcdMember::Stacked);
    let snapshot = facts.etcd.snapshot.expect("the snapshot is reported");
    assert_eq!(
        (snapshot.revision, snapshot.hash, snapshot.total_keys),
        (48213, 3_700_895_328, 1187)
    );
    let on_disk =
        std::fs::metadata(root.path().join(snapshot.path.trim_start_matches('/'))).unwrap();
    assert_eq!(snapshot.size_bytes, on_disk.len());
    assert_eq!(facts.etcd.snapshot_error, None);
    eprintln!("apply upgrade took {:?}", started.elapsed());
}

/// Another node: an exact target, `kubeadm upgrade node`, no snapshot (no etcd member), the
/// base of the file kept.
#[test]
fn other_nodes_upgrade_with_kubeadm_upgrade_node() {
    let Some(root) = kubernetes_root() else {
        return;
    };
    let done = crate::common::kubernetes_upgrade(&root, "1.31.3", KubeadmStep::Node, None);
    assert!(done.success, "{done:?}");
    for name in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(root.version(name).unwrap(), "1.31.3-1.1", "{name}");
    }
    assert_eq!(holds(&root), ["kubeadm", "kubectl", "kubelet"]);
    assert_eq!(
        kubernetes_list_now(&root),
        kubernetes_list("file:///srv/pkgs", "1.31")
    );
    assert_eq!(
        crate::common::log_lines(root.path(), crate::common::KUBEADM_LOG),
        ["upgrade node"]
    );
    assert!(crate::common::log_lines(root.path(), crate::common::ETCDCTL_LOG).is_empty());
    assert_eq!(
        root.systemctl_calls(),
        [
            "daemon-reload",
            "restart kubelet",
            "is-active --quiet kubelet"
        ]
    );
}

/// `kubeadm upgrade apply` fails: nothing is rolled back, the kubelet is not touched, and the
/// message says what the node has.
#[test]
fn a_failed_kubeadm_apply_leaves_the_node_as_it_says() {
    let Some(root) = kubernetes_root() else {
        return;
    };
    crate::common::make_control_plane(&root);
    std::fs::write(root.path().join(crate::common::FAIL_APPLY), "").unwrap();
    let done = crate::common::kubernetes_upgrade(&root, "1.31.4", KubeadmStep::Apply, None);
    assert!(!done.success);
    assert!(
        done.message
            .starts_with("kubeadm upgrade apply v1.31.4 failed: "),
        "{}",
        done.message
    );
    assert!(
        done.message.contains("couldn't upgrade control plane"),
        "{}",
        done.message
    );
    assert!(
        done.message.ends_with(
            "kubeadm is 1.31.4-1.1, kubelet/kubectl still 1.30.9-1.1, repository at v1.31: \
             the control plane may be partly upgraded; nothing was rolled back; the slot stays held"
        ),
        "{}",
        done.message
    );
    assert_eq!(root.version("kubeadm").unwrap(), "1.31.4-1.1");
    assert_eq!(root.version("kubelet").unwrap(), "1.30.9-1.1");
    assert_eq!(
        kubernetes_list_now(&root),
        kubernetes_list("file:///srv/pkgs", "1.31")
    );
    assert!(
        root.systemctl_calls().is_empty(),
        "{:?}",
        root.systemctl_calls()
    );
}

/// The plan does not offer the target: before apply, so kubeadm goes back to 1.30.9 (held)
/// and the repository file is restored.
#[test]
fn a_failure_before_apply_rolls_packages_and_repository_back() {
    let Some(root) = kubernetes_root() else {
        return;
    };
    crate::common::make_control_plane(&root);
    let before = kubernetes_list_now(&root);
    std::fs::write(root.path().join(crate::common::PLAN_OFFERS), "v1.31.3").unwrap();
    let done = crate::common::kubernetes_upgrade(&root, "1.31.4", KubeadmStep::Apply, None);
    assert!(!done.success);
    assert!(
        done.message
            .contains("does not offer `kubeadm upgrade apply v1.31.4`"),
        "{}",
        done.message
    );
    assert!(
        done.message
            .contains("rolled back kubeadm 1.31.4-1.1 to 1.30.9-1.1"),
        "{}",
        done.message
    );
    for name in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(root.version(name).unwrap(), "1.30.9-1.1", "{name}");
    }
    assert_eq!(holds(&root), ["kubeadm", "kubectl", "kubelet"]);
    assert_eq!(kubernetes_list_now(&root), before);
    assert_eq!(
        crate::common::log_lines(root.path(), crate::common::KUBEADM_LOG),
        ["upgrade plan v1.31.4"]
    );
    assert!(done.changed.is_empty(), "{:?}", done.changed);
}

#[test]
fn rollback_restores_the_previous_versions() {
    let Some(root) = root() else { return };
    let host = root.host();
    let pm = host.packages().unwrap();
    let changes = pm.upgrade(&UpgradeScope::All.into()).unwrap();
    let changed: Vec<(&str, Option<&str>, Option<&str>)> = changes
        .iter()
        .map(|c| (c.name.as_str(), c.before.as_deref(), c.after.as_deref()))
        .collect();
    assert_eq!(
        changed,
        [
            ("linux-image-rota", Some("1.0"), Some("1.1")),
            ("ordinary", Some("1.0"), Some("1.1")),
            ("secpkg", Some("1.0"), Some("1.0+sec1")),
        ]
    );
    let rolled = pm.rollback(&changes).unwrap();
    assert_eq!(rolled.len(), 3, "{rolled:?}");
    assert_eq!(pm.installed_version("ordinary").unwrap().unwrap(), "1.0");
    assert_eq!(pm.installed_version("secpkg").unwrap().unwrap(), "1.0");
    assert_eq!(
        pm.installed_version("linux-image-rota").unwrap().unwrap(),
        "1.0"
    );
    // Held packages stay held through a rollback of a Kubernetes upgrade too.
    let k = pm
        .install_versions(
            &[PackagePin {
                name: "kubelet".into(),
                version: "1.30.2-1.1".into(),
            }],
            InstallPurpose::Kubernetes,
        )
        .unwrap();
    pm.rollback(&k).unwrap();
    assert_eq!(
        pm.installed_version("kubelet").unwrap().unwrap(),
        "1.30.1-1.1"
    );
}

/// A coordinator that takes a completion and verifies the node (its health gate may still
/// fail the slot).
#[derive(Default)]
struct Verifying(crate::common::Recorder);

impl rota_agent::ops::Reporter for Verifying {
    fn progress(&self, token: u64, step: &str, message: &str) {
        self.0.progress(token, step, message);
    }
    fn complete(
        &self,
        token: u64,
        c: &rota_agent::ops::Completion,
    ) -> rota_agent::Result<rota_agent::ops::CompleteAck> {
        self.0.complete(token, c)?;
        Ok(rota_agent::ops::CompleteAck::Verifying)
    }
}

/// The coordinator's health gate fails the slot of a security upgrade that needed no reboot,
/// after the agent completed: the agent's rollback really puts the version from before back.
#[test]
fn a_failed_health_gate_after_completion_really_rolls_the_upgrade_back() {
    let Some(root) = root() else { return };
    let host = root.host();
    let config = ExecutorConfig::default();
    let rec = Verifying::default();
    let op = Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::Never,
        packages: vec![],
    };
    let mut ex = Executor::start(&host, &config, &rec, 12, op, Timestamp::now()).unwrap();
    ex.run().unwrap();
    assert!(ex.record().awaits_verdict(), "{:?}", ex.record().phase);
    assert_eq!(root.version("secpkg").unwrap(), "1.0+sec1");
    assert!(host.exists(&config.state_path).unwrap(), "versions kept");

    Executor::roll_back_after_gate_failure(&host, &config, &rec, 12)
        .unwrap()
        .expect("a rollback starts")
        .run()
        .unwrap();
    assert_eq!(root.version("secpkg").unwrap(), "1.0", "rolled back");
    assert_eq!(root.version("ordinary").unwrap(), "1.0", "untouched");
    assert_eq!(rec.0.0.lock().unwrap().len(), 1, "one completion");
    assert!(
        !host.exists(&config.state_path).unwrap(),
        "state is cleared"
    );
    assert!(
        Executor::roll_back_after_gate_failure(&host, &config, &rec, 12)
            .unwrap()
            .is_none(),
        "never twice"
    );
}

#[test]
fn plain_rules_refuse_held_and_kubernetes_packages() {
    let Some(root) = root() else { return };
    let host = root.host();
    let pm = host.packages().unwrap();
    let pin = |n: &str, v: &str| PackagePin {
        name: n.into(),
        version: v.into(),
    };
    assert!(
        pm.install_versions(&[pin("heldpkg", "1.1")], InstallPurpose::Named)
            .is_err()
    );
    assert!(
        pm.install_versions(&[pin("kubelet", "1.30.2-1.1")], InstallPurpose::Named)
            .is_err()
    );
    let named = pm
        .install_versions(&[pin("ordinary", "1.1")], InstallPurpose::Named)
        .unwrap();
    assert_eq!(named.len(), 1);
    assert_eq!(root.version("heldpkg").unwrap(), "1.0");
    assert_eq!(root.version("kubelet").unwrap(), "1.30.1-1.1");
}

#[test]
fn an_interrupted_dpkg_is_repaired() {
    let Some(root) = root() else { return };
    let host = root.host();
    // Unpacked but never configured: what a dpkg killed mid-run leaves.
    let unpack = HostCommand::new([
        "dpkg",
        "--unpack",
        "/srv/repo/pool/rota/ordinary_1.1_all.deb",
    ]);
    host.run(&unpack).unwrap().check(&unpack).unwrap();
    let audit = HostCommand::new(["dpkg", "--audit"]);
    let before = host.run(&audit).unwrap();
    assert!(before.stdout.contains("ordinary"), "{before:?}");
    // apt refuses to work on a database in this state; the agent repairs it first.
    let pm = host.packages().unwrap();
    match pm.repair().unwrap() {
        RepairOutcome::Repaired(what) => assert!(what.contains("ordinary"), "{what}"),
        RepairOutcome::Clean => panic!("the interrupted state was not detected"),
    }
    assert!(host.run(&audit).unwrap().stdout.trim().is_empty());
    assert_eq!(pm.repair().unwrap(), RepairOutcome::Clean);
    assert_eq!(root.version("ordinary").unwrap(), "1.1");
    // And an upgrade after the repair works.
    let changes = pm.upgrade(&UpgradeScope::SecurityOnly.into()).unwrap();
    assert_eq!(changes.len(), 1);
}

#[test]
fn a_missing_sentinel_command_is_an_error_not_a_reboot() {
    let Some(root) = root() else { return };
    let (code, facts) = root.check(&["--sentinel-command", "/usr/bin/rota-no-such-check"]);
    assert_ne!(code, 0, "detection errors make check fail");
    assert!(!facts.reboot_required);
    assert_eq!(facts.errors.len(), 1, "{:?}", facts.errors);
    assert!(facts.errors[0].contains("not found"), "{:?}", facts.errors);
    // A sentinel command that exists and says "required" does make it required.
    let (code, facts) = root.check(&["--sentinel-command", "true"]);
    assert_eq!(code, 0);
    assert!(facts.reboot_required);
    let (_, facts) = root.check(&["--sentinel-command", "false"]);
    assert!(!facts.reboot_required && facts.errors.is_empty());
    // Through the library: a distinct error.
    let err = detect::sentinel_command(
        &root.host(),
        &["/usr/bin/rota-no-such-check".to_string()],
        std::time::Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(
        matches!(err, rota_agent::Error::CommandNotFound { .. }),
        "{err}"
    );
}
