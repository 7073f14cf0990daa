//! Every crash point of every operation, on an in-memory host: the agent dies before an
//! effect, or after the effect but before its outcome was persisted, then starts again and
//! resumes from the persisted state.
use rota_core::model::{
    EtcdSnapshotPolicy, KubeadmStep, NodePolicy, Operation, PackagePin, SnapshotBefore,
    UpgradeReboot,
};

use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use super::*;
use crate::host::memory::{PackageFaults, exited};
use crate::host::{Host, MemoryHost};

use crate::state;

#[derive(Default)]
struct Recorder {
    steps: Mutex<Vec<String>>,
    completions: Mutex<Vec<Completion>>,
    /// Answer completions as a coordinator that verifies the node now.
    verifying: bool,
}

impl Reporter for Recorder {
    fn progress(&self, _token: u64, step: &str, _message: &str) {
        self.steps.lock().unwrap().push(step.to_string());
    }
    fn complete(&self, token: u64, completion: &Completion) -> crate::Result<CompleteAck> {
        assert_eq!(token, 42);
        self.completions.lock().unwrap().push(completion.clone());
        Ok(if self.verifying {
            CompleteAck::Verifying
        } else {
            CompleteAck::Accepted
        })
    }
}

fn config() -> ExecutorConfig {
    ExecutorConfig {
        health_command: vec!["health".into()],
        shutdown_wait: Duration::ZERO,
        ..ExecutorConfig::default()
    }
}

/// A Debian host with libc6, containerd, kubelet and kubeadm installed and newer versions
/// available.
fn host(healthy: bool) -> MemoryHost {
    let host = MemoryHost::debian();
    host.put_file("/boot/vmlinuz-6.1.0-13-amd64", "");
    for (name, old, new, security) in [
        ("libc6", "2.36-9", "2.36-9+deb12u4", true),
        ("containerd", "1.6.20~ds1-1", "1.6.20~ds1-1+deb12u1", false),
        ("curl", "7.88.1-10", "7.88.1-10+deb12u5", false),
        ("kubelet", "1.30.1-1.1", "1.30.2-1.1", false),
        ("kubeadm", "1.30.1-1.1", "1.30.2-1.1", false),
    ] {
        host.install(name, old);
        host.add_available(name, old, false);
        host.add_available(name, new, security);
    }
    host.on_command("health", move |_| {
        Ok(exited(if healthy { 0 } else { 3 }, ""))
    });
    let h = host.clone();
    host.on_command("kubelet", move |_| {
        let v = h.installed("kubelet").unwrap_or_default();
        Ok(exited(
            0,
            &format!("Kubernetes v{}\n", crate::detect::upstream_version(&v)),
        ))
    });
    let h = host.clone();
    host.on_command("kubeadm", move |argv| {
        h.put_file("/tmp/kubeadm-called", argv.join(" "));
        Ok(exited(0, ""))
    });
    host
}

#[derive(Clone, Copy, Debug)]
enum Crash {
    /// The agent dies before performing the effect of step `n`.
    Before(usize),
    /// The agent dies after performing the effect of step `n`, before persisting its outcome.
    After(usize),
}

/// Runs `op` to its end, crashing once as told. A reboot request takes the agent down and
/// boots the host when `reboots_work`.
fn run(
    host: &MemoryHost,
    op: Operation,
    crash: Option<Crash>,
    reboots_work: bool,
) -> Vec<Completion> {
    run_under(host, op, None, crash, reboots_work)
}

/// [`run`] under the pool's `policy` of the grant.
fn run_under(
    host: &MemoryHost,
    op: Operation,
    policy: Option<&NodePolicy>,
    crash: Option<Crash>,
    reboots_work: bool,
) -> Vec<Completion> {
    let cfg = config();
    let rec = Recorder::default();
    let mut ex = Executor::start_granted(
        host,
        &cfg,
        &rec,
        42,
        op,
        policy.cloned(),
        Timestamp::UNIX_EPOCH,
    )
    .unwrap();
    let mut step = 0;
    let mut crashed = false;
    let mut guard = 0;
    loop {
        guard += 1;
        assert!(guard < 100, "operation does not end");
        let requests = host.reboot_requests();
        match crash {
            Some(Crash::Before(n)) if n == step && !crashed => {
                crashed = true;
                drop(ex);
                ex = Executor::resume(host, &cfg, &rec).unwrap().unwrap();
                continue;
            }
            Some(Crash::After(n)) if n == step && !crashed => {
                crashed = true;
                if let Some(effect) = ex.record().next_effect() {
                    ex.perform(effect).unwrap();
                }
                drop(ex);
                if reboots_work && host.reboot_requests() > requests {
                    host.boot();
                }
                match Executor::resume(host, &cfg, &rec).unwrap() {
                    Some(e) => ex = e,
                    None => break,
                }
                continue;
            }
            _ => {}
        }
        if !ex.step().unwrap() {
            break;
        }
        step += 1;
        if reboots_work && host.reboot_requests() > requests {
            // The host goes down with the agent, and comes back.
            drop(ex);
            host.boot();
            ex = Executor::resume(host, &cfg, &rec).unwrap().unwrap();
        }
    }
    assert!(
        state::load(host, &cfg.state_path).unwrap().is_none(),
        "state left behind"
    );
    rec.completions.into_inner().unwrap()
}

/// How many steps the operation takes without a crash.
fn steps_of(
    make_host: &dyn Fn() -> MemoryHost,
    op: &Operation,
    policy: Option<&NodePolicy>,
) -> usize {
    let host = make_host();
    let cfg = config();
    let rec = Recorder::default();
    let mut ex = Executor::start_granted(
        &host,
        &cfg,
        &rec,
        42,
        op.clone(),
        policy.cloned(),
        Timestamp::UNIX_EPOCH,
    )
    .unwrap();
    let mut n = 0;
    loop {
        let requests = host.reboot_requests();
        if !ex.step().unwrap() {
            return n + 1;
        }
        n += 1;
        if host.reboot_requests() > requests {
            drop(ex);
            host.boot();
            ex = Executor::resume(&host, &cfg, &rec).unwrap().unwrap();
        }
    }
}

/// Runs `op` with every crash point and checks `verify` plus the invariants: one boot at
/// most, at most two reboot requests, a final completion.
fn every_crash_point(
    make_host: &dyn Fn() -> MemoryHost,
    op: Operation,
    verify: &dyn Fn(&MemoryHost, &Completion, Option<Crash>),
) {
    every_crash_point_under(make_host, op, None, verify);
}

/// [`every_crash_point`] under the pool's `policy` of the grant.
fn every_crash_point_under(
    make_host: &dyn Fn() -> MemoryHost,
    op: Operation,
    policy: Option<&NodePolicy>,
    verify: &dyn Fn(&MemoryHost, &Completion, Option<Crash>),
) {
    let n = steps_of(make_host, &op, policy);
    let crashes = std::iter::once(None)
        .chain((0..n).flat_map(|i| [Some(Crash::Before(i)), Some(Crash::After(i))]));
    for crash in crashes {
        let host = make_host();
        let completions = run_under(&host, op.clone(), policy, crash, true);
        let last = completions
            .last()
            .unwrap_or_else(|| panic!("{crash:?}: no completion"));
        assert!(
            host.boots() <= 2,
            "{crash:?}: rebooted twice: {:?}",
            host.events()
        );
        assert!(
            host.reboot_requests() <= 2,
            "{crash:?}: {:?}",
            host.events()
        );
        verify(&host, last, crash);
    }
}

#[test]
fn package_upgrade_with_reboot_survives_every_crash() {
    let op = Operation::PackageUpgrade {
        security_only: false,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    };
    every_crash_point(&|| host(true), op, &|host, done, crash| {
        assert!(done.success, "{crash:?}: {done:?}");
        assert!(done.rebooted, "{crash:?}");
        assert_eq!(host.boots(), 2, "{crash:?}: {:?}", host.events());
        assert_eq!(host.installed("libc6").unwrap(), "2.36-9+deb12u4");
        assert_eq!(host.installed("curl").unwrap(), "7.88.1-10+deb12u5");
        // Kubernetes packages stay where they are in a plain upgrade.
        assert_eq!(host.installed("kubelet").unwrap(), "1.30.1-1.1");
        let names: Vec<&str> = done.changed.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["containerd", "curl", "libc6"], "{crash:?}");
    });
}

#[test]
fn security_upgrade_without_reboot_restarts_nothing_it_need_not() {
    let op = Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::Never,
        packages: vec![],
    };
    every_crash_point(&|| host(true), op, &|host, done, crash| {
        assert!(done.success && !done.rebooted, "{crash:?}: {done:?}");
        assert_eq!(host.boots(), 1);
        assert_eq!(host.installed("libc6").unwrap(), "2.36-9+deb12u4");
        assert_eq!(host.installed("curl").unwrap(), "7.88.1-10");
        assert!(!host.events().iter().any(|e| e == "restart kubelet"));
    });
}

#[test]
fn reboot_survives_every_crash() {
    every_crash_point(&|| host(true), Operation::Reboot, &|host, done, crash| {
        assert!(done.success && done.rebooted, "{crash:?}: {done:?}");
        assert_eq!(host.boots(), 2, "{crash:?}");
    });
}

#[test]
fn kubelet_restart_survives_every_crash() {
    every_crash_point(
        &|| host(true),
        Operation::KubeletRestart,
        &|host, done, crash| {
            assert!(done.success && !done.rebooted, "{crash:?}: {done:?}");
            assert!(host.events().iter().any(|e| e == "restart kubelet"));
        },
    );
}

/// The source line of kubeadm's installation guide, at `minor`.
fn kubernetes_list(minor: &str) -> String {
    format!(
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v{minor}/deb/ /\n"
    )
}

const KUBEADM_LOG: &str = "/var/log/kubeadm.log";
const ETCDCTL_LOG: &str = "/var/log/etcdctl.log";
/// While this file exists, `kubeadm upgrade apply` fails.
const FAIL_APPLY: &str = "/tmp/fail-apply";

fn append(host: &MemoryHost, path: &str, line: &str) {
    let mut log = host.file(path).unwrap_or_default();
    log.extend_from_slice(format!("{line}\n").as_bytes());
    host.put_file(path, log);
}

fn log_lines(host: &MemoryHost, path: &str) -> Vec<String> {
    String::from_utf8(host.file(path).unwrap_or_default())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// A stacked-etcd control-plane node at 1.30.9 (kubelet, kubeadm, kubectl held), its apt
/// source at v1.30, and per-minor repositories (1.30.9; 1.31.3 and 1.31.4) whose packages are
/// offered only while the source names them. `kubeadm` and `etcdctl` answer as the real ones.
fn control_plane() -> MemoryHost {
    let host = MemoryHost::debian();
    host.put_file("/etc/kubernetes/manifests/etcd.yaml", "kind: Pod\n");
    host.put_file(
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        "kind: Pod\n",
    );
    host.put_file(crate::kubernetes::DEFAULT_APT_LIST, kubernetes_list("1.30"));
    host.install("libc6", "2.36-9");
    for name in ["kubelet", "kubeadm", "kubectl"] {
        host.install(name, "1.30.9-1.1");
        host.hold(name);
        for (minor, version) in [
            ("1.30", "1.30.9-1.1"),
            ("1.31", "1.31.3-1.1"),
            ("1.31", "1.31.4-1.1"),
        ] {
            host.add_repository_package(
                &format!("https://pkgs.k8s.io/core:/stable:/v{minor}/deb/"),
                name,
                version,
            );
        }
    }
    host.on_command("health", |_| Ok(exited(0, "")));
    let h = host.clone();
    host.on_command("kubelet", move |_| {
        let v = h.installed("kubelet").unwrap_or_default();
        Ok(exited(
            0,
            &format!("Kubernetes v{}\n", crate::detect::upstream_version(&v)),
        ))
    });
    let h = host.clone();
    host.on_command("kubeadm", move |argv| {
        append(&h, KUBEADM_LOG, &argv.join(" "));
        let kubeadm = crate::detect::upstream_version(&h.installed("kubeadm").unwrap_or_default());
        match argv.get(2).map(String::as_str) {
            Some("plan") => Ok(exited(
                0,
                &crate::kubernetes::kubeadm::tests::PLAN.replace("1.31.4", &kubeadm),
            )),
            Some("apply") if h.file(FAIL_APPLY).is_some() => Ok(crate::host::CommandOutput {
                status: crate::host::ExitStatus::Exited(1),
                stdout: String::new(),
                stderr: "[ERROR CreateJob]: Job \"upgrade-health-check\" in the namespace \"kube-system\" did not complete in 15s".into(),
            }),
            _ => Ok(exited(0, "")),
        }
    });
    let h = host.clone();
    host.on_command("etcdctl", move |argv| {
        append(&h, ETCDCTL_LOG, &argv.join(" "));
        if argv.iter().any(|a| a == "save") {
            h.put_file(argv.last().unwrap(), "etcd data");
            return Ok(exited(0, ""));
        }
        Ok(exited(
            0,
            r#"{"hash":3700895328,"revision":48213,"totalKey":1187,"totalSize":5357568}"#,
        ))
    });
    host
}

fn control_plane_policy() -> NodePolicy {
    NodePolicy {
        name: "control-plane".into(),
        upgrade_mode: rota_core::policy::crd::UpgradeMode::Security,
        holds: vec![],
        sentinel_files: None,
        sentinel_command: vec![],
        reboot_command: vec![],
        reboot_mode: rota_core::policy::crd::RebootMode::WhenRequired,
        etcd: EtcdSnapshotPolicy {
            before: SnapshotBefore::KubernetesUpgrades,
            max_age_seconds: 3600,
        },
    }
}

fn kubernetes_upgrade(version: &str, kubeadm: KubeadmStep) -> Operation {
    Operation::KubernetesUpgrade {
        version: version.into(),
        kubeadm,
    }
}

/// The first control-plane node, from a minor target: snapshot, repository, kubeadm, plan,
/// apply, kubelet/kubectl, restart, check — at every crash point, each once in effect.
#[test]
fn kubernetes_apply_upgrade_survives_every_crash() {
    let policy = control_plane_policy();
    let op = kubernetes_upgrade("1.31", KubeadmStep::Apply);
    every_crash_point_under(&control_plane, op, Some(&policy), &|host, done, crash| {
        assert!(done.success, "{crash:?}: {done:?}");
        assert!(
            done.message.contains("kubeadm upgrade apply v1.31.4"),
            "{}",
            done.message
        );
        assert!(
            done.message
                .contains("etcd snapshot /var/lib/rota/etcd-snapshots/etcd-snapshot-"),
            "{}",
            done.message
        );
        for name in ["kubelet", "kubeadm", "kubectl"] {
            assert_eq!(host.installed(name).unwrap(), "1.31.4-1.1", "{crash:?}");
            assert!(host.is_held(name), "{crash:?}: {name} held again");
        }
        assert_eq!(
            host.installed("libc6").unwrap(),
            "2.36-9",
            "only Kubernetes packages move"
        );
        assert_eq!(
            String::from_utf8(host.file(crate::kubernetes::DEFAULT_APT_LIST).unwrap()).unwrap(),
            kubernetes_list("1.31"),
            "{crash:?}"
        );
        let saves = log_lines(host, ETCDCTL_LOG)
            .into_iter()
            .filter(|l| l.contains("snapshot save"))
            .count();
        assert_eq!(saves, 1, "{crash:?}: a fresh snapshot is not taken again");
        // Plan, then apply; a crash may repeat either, never apply before plan.
        let kubeadm = log_lines(host, KUBEADM_LOG);
        let mut calls = kubeadm.clone();
        calls.dedup();
        assert_eq!(
            calls,
            [
                "kubeadm upgrade plan v1.31.4",
                "kubeadm upgrade apply v1.31.4 --yes"
            ],
            "{crash:?}"
        );
        let events = host.events();
        let restart = events.iter().rposition(|e| e == "restart kubelet").unwrap();
        let install = events
            .iter()
            .rposition(|e| e.starts_with("install kubelet"))
            .unwrap();
        let kubeadm_install = events
            .iter()
            .position(|e| e.starts_with("install kubeadm"))
            .unwrap();
        let refresh = events.iter().position(|e| e == "refresh").unwrap();
        assert!(
            refresh < kubeadm_install && kubeadm_install < install && install < restart,
            "{crash:?}: {events:?}"
        );
    });
}

/// Another node: `kubeadm upgrade node`, an exact target, no snapshot on a worker.
#[test]
fn kubernetes_node_upgrade_survives_every_crash() {
    let worker = || {
        let host = control_plane();
        host.remove_file(std::path::Path::new("/etc/kubernetes/manifests/etcd.yaml"))
            .unwrap();
        host.remove_file(std::path::Path::new(
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
        ))
        .unwrap();
        host
    };
    let policy = control_plane_policy();
    let op = kubernetes_upgrade("1.31.3", KubeadmStep::Node);
    every_crash_point_under(&worker, op, Some(&policy), &|host, done, crash| {
        assert!(done.success, "{crash:?}: {done:?}");
        for name in ["kubelet", "kubeadm", "kubectl"] {
            assert_eq!(host.installed(name).unwrap(), "1.31.3-1.1", "{crash:?}");
        }
        let mut calls = log_lines(host, KUBEADM_LOG);
        calls.dedup();
        assert_eq!(calls, ["kubeadm upgrade node"], "{crash:?}");
        assert!(
            log_lines(host, ETCDCTL_LOG).is_empty(),
            "no etcd member, no snapshot"
        );
    });
}

/// `kubeadm upgrade apply` fails: nothing is rolled back, at every crash point, and the
/// message says what the node has.
#[test]
fn a_failed_kubeadm_apply_is_not_rolled_back_at_any_crash_point() {
    let failing = || {
        let host = control_plane();
        host.put_file(FAIL_APPLY, "");
        host
    };
    let policy = control_plane_policy();
    let op = kubernetes_upgrade("1.31.4", KubeadmStep::Apply);
    every_crash_point_under(&failing, op, Some(&policy), &|host, done, crash| {
        assert!(!done.success, "{crash:?}");
        assert!(
            done.message
                .starts_with("kubeadm upgrade apply v1.31.4 failed: "),
            "{crash:?}: {}",
            done.message
        );
        assert!(
            done.message.ends_with(
                "kubeadm is 1.31.4-1.1, kubelet/kubectl still 1.30.9-1.1, repository at v1.31: \
                 the control plane may be partly upgraded; nothing was rolled back; the slot stays held"
            ),
            "{crash:?}: {}",
            done.message
        );
        assert!(
            done.message.contains("upgrade-health-check"),
            "{}",
            done.message
        );
        assert_eq!(host.installed("kubeadm").unwrap(), "1.31.4-1.1");
        assert_eq!(host.installed("kubelet").unwrap(), "1.30.9-1.1");
        assert_eq!(
            String::from_utf8(host.file(crate::kubernetes::DEFAULT_APT_LIST).unwrap()).unwrap(),
            kubernetes_list("1.31")
        );
        assert!(!host.events().iter().any(|e| e == "restart kubelet"));
    });
}

/// The plan does not offer the target (kubeadm 1.31.3 was installed by hand as 1.31.4):
/// kubeadm goes back and the repository file is restored, at every crash point.
#[test]
fn a_plan_without_the_target_rolls_back_at_every_crash_point() {
    let policy = control_plane_policy();
    let make = || {
        let host = control_plane();
        let h = host.clone();
        host.on_command("kubeadm", move |argv| {
            append(&h, KUBEADM_LOG, &argv.join(" "));
            Ok(exited(0, "[upgrade/versions] Target version: v1.31.3\n\nYou can now apply the upgrade by executing the following command:\n\n\tkubeadm upgrade apply v1.31.3\n"))
        });
        host
    };
    let op = kubernetes_upgrade("1.31.4", KubeadmStep::Apply);
    every_crash_point_under(&make, op, Some(&policy), &|host, done, crash| {
        assert!(!done.success, "{crash:?}");
        assert!(
            done.message
                .contains("does not offer `kubeadm upgrade apply v1.31.4`"),
            "{crash:?}: {}",
            done.message
        );
        assert!(
            done.message
                .contains("rolled back kubeadm 1.31.4-1.1 to 1.30.9-1.1"),
            "{crash:?}: {}",
            done.message
        );
        for name in ["kubelet", "kubeadm", "kubectl"] {
            assert_eq!(host.installed(name).unwrap(), "1.30.9-1.1", "{crash:?}");
            assert!(host.is_held(name));
        }
        assert_eq!(
            String::from_utf8(host.file(crate::kubernetes::DEFAULT_APT_LIST).unwrap()).unwrap(),
            kubernetes_list("1.30"),
            "{crash:?}"
        );
        assert!(
            !log_lines(host, KUBEADM_LOG)
                .iter()
                .any(|l| l.contains("apply")),
            "{crash:?}"
        );
    });
}

/// A snapshot that cannot be taken stops the operation before anything changed.
#[test]
fn a_failed_etcd_snapshot_changes_nothing() {
    let host = control_plane();
    host.on_command("etcdctl", |_| {
        Ok(crate::host::CommandOutput {
            status: crate::host::ExitStatus::Exited(1),
            stdout: String::new(),
            stderr: "Error: context deadline exceeded".into(),
        })
    });
    let policy = control_plane_policy();
    let done = run_under(
        &host,
        kubernetes_upgrade("1.31", KubeadmStep::Apply),
        Some(&policy),
        None,
        true,
    );
    let done = done.last().unwrap();
    assert!(!done.success);
    assert!(
        done.message.contains("context deadline exceeded")
            && done.message.contains("nothing was changed"),
        "{}",
        done.message
    );
    assert_eq!(host.installed("kubeadm").unwrap(), "1.30.9-1.1");
    assert_eq!(
        String::from_utf8(host.file(crate::kubernetes::DEFAULT_APT_LIST).unwrap()).unwrap(),
        kubernetes_list("1.30")
    );
    let facts = crate::kubernetes::etcd::facts(
        &host,
        std::path::Path::new(crate::kubernetes::DEFAULT_MANIFESTS),
        &Default::default(),
    )
    .unwrap();
    assert!(
        facts
            .snapshot_error
            .unwrap()
            .contains("context deadline exceeded")
    );
}

#[test]
fn failed_health_check_rolls_back_at_every_crash_point() {
    let op = Operation::PackageUpgrade {
        security_only: false,
        reboot: UpgradeReboot::Never,
        packages: vec![],
    };
    every_crash_point(&|| host(false), op, &|host, done, crash| {
        assert!(!done.success, "{crash:?}");
        assert!(
            done.message.contains("rolled back"),
            "{crash:?}: {}",
            done.message
        );
        assert_eq!(host.installed("libc6").unwrap(), "2.36-9", "{crash:?}");
        assert_eq!(host.installed("containerd").unwrap(), "1.6.20~ds1-1");
        assert!(done.changed.is_empty(), "{crash:?}: {:?}", done.changed);
    });
}

#[test]
fn interrupted_dpkg_is_repaired_and_the_partial_upgrade_rolled_back() {
    let make = || {
        let h = host(true);
        h.set_package_faults(PackageFaults {
            fail_next_upgrade: true,
            interrupted: false,
        });
        h
    };
    let op = Operation::PackageUpgrade {
        security_only: false,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    };
    every_crash_point(&make, op, &|host, done, crash| {
        assert!(host.events().iter().any(|e| e == "repair"), "{crash:?}");
        if done.success {
            // The agent died before it recorded the failure; after the restart it repaired
            // dpkg and ran the (idempotent) upgrade again, which went through.
            assert!(
                matches!(crash, Some(Crash::After(1))),
                "{crash:?}: {done:?}"
            );
            assert_eq!(
                host.installed("containerd").unwrap(),
                "1.6.20~ds1-1+deb12u1"
            );
        } else {
            assert!(
                done.message.contains("rolled back"),
                "{crash:?}: {}",
                done.message
            );
            assert_eq!(
                host.installed("containerd").unwrap(),
                "1.6.20~ds1-1",
                "{crash:?}"
            );
            assert_eq!(host.reboot_requests(), 0);
        }
    });
}

#[test]
fn a_reboot_that_never_happens_is_requested_twice_then_reported() {
    let host = host(true);
    let completions = run(&host, Operation::Reboot, None, false);
    assert_eq!(host.reboot_requests(), 2);
    assert_eq!(host.boots(), 1);
    let done = completions.last().unwrap();
    assert!(!done.success && !done.rebooted, "{done:?}");
    // Also when the agent restarts in between.
    let host = self::host(true);
    let completions = run(&host, Operation::Reboot, Some(Crash::After(0)), false);
    assert_eq!(host.reboot_requests(), 2);
    assert!(!completions.last().unwrap().success);
}

#[test]
fn named_upgrades_refuse_kubernetes_packages() {
    let host = host(true);
    let op = Operation::PackageUpgrade {
        security_only: false,
        reboot: UpgradeReboot::Never,
        packages: vec![PackagePin {
            name: "kubelet".into(),
            version: "1.30.2-1.1".into(),
        }],
    };
    let done = run(&host, op, None, true);
    let done = done.last().unwrap();
    assert!(!done.success);
    assert!(
        done.message.contains("Kubernetes upgrade"),
        "{}",
        done.message
    );
    assert_eq!(host.installed("kubelet").unwrap(), "1.30.1-1.1");
}

#[test]
fn progress_is_reported_per_step() {
    let host = host(true);
    let cfg = config();
    let rec = Recorder::default();
    let mut ex = Executor::start(
        &host,
        &cfg,
        &rec,
        42,
        Operation::KubeletRestart,
        Timestamp::UNIX_EPOCH,
    )
    .unwrap();
    ex.run().unwrap();
    assert_eq!(*rec.steps.lock().unwrap(), ["verifying", "completing"]);
    assert!(
        host.exists(std::path::Path::new(&cfg.state_path))
            .map(|e| !e)
            .unwrap()
    );
}

/// After an upgrade without a reboot, the agent keeps its record until the verdict, also
/// across a restart. The rollback the failed verdict starts survives a crash in the middle (it
/// resumes the rollback, not the wait), and once it ended nothing starts it again.
#[test]
fn a_rollback_after_a_failed_verdict_survives_restarts_and_runs_once() {
    let op = Operation::PackageUpgrade {
        security_only: false,
        reboot: UpgradeReboot::Never,
        packages: vec![],
    };
    let path = std::path::Path::new(state::DEFAULT_STATE_PATH);
    for crash in [false, true] {
        let host = host(true);
        let cfg = config();
        let rec = Recorder {
            verifying: true,
            ..Recorder::default()
        };
        let mut ex =
            Executor::start(&host, &cfg, &rec, 42, op.clone(), Timestamp::UNIX_EPOCH).unwrap();
        ex.run().unwrap();
        assert!(ex.record().awaits_verdict());
        assert_eq!(host.installed("curl").unwrap(), "7.88.1-10+deb12u5");
        drop(ex);
        let mut resumed = Executor::resume(&host, &cfg, &rec).unwrap().unwrap();
        resumed.run().unwrap();
        assert!(resumed.record().awaits_verdict() && host.exists(path).unwrap());

        let mut ex = Executor::roll_back_after_gate_failure(&host, &cfg, &rec, 42)
            .unwrap()
            .unwrap();
        if crash {
            let effect = ex.record().next_effect().unwrap();
            ex.perform(effect).unwrap();
            drop(ex);
            assert!(
                Executor::roll_back_after_gate_failure(&host, &cfg, &rec, 42)
                    .unwrap()
                    .is_none(),
                "rolling back already"
            );
            ex = Executor::resume(&host, &cfg, &rec).unwrap().unwrap();
        }
        ex.run().unwrap();
        assert_eq!(
            host.installed("curl").unwrap(),
            "7.88.1-10",
            "crash: {crash}"
        );
        assert_eq!(host.installed("libc6").unwrap(), "2.36-9");
        assert!(!host.exists(path).unwrap(), "state dropped");
        assert!(
            Executor::roll_back_after_gate_failure(&host, &cfg, &rec, 42)
                .unwrap()
                .is_none()
        );
        assert_eq!(rec.completions.lock().unwrap().len(), 1);
        assert!(
            rec.steps
                .lock()
                .unwrap()
                .contains(&"rolled-back".to_string())
        );
    }
}
