//! rota's agent on a real machine: a Debian bookworm guest under qemu (systemd, apt, a kernel
//! that really reboots), the agent in its own mount namespace reaching the machine only through
//! PID 1's namespaces, the guest's kubelet stand-in reporting the Node to the emulated API
//! server, and the real `rota-coordinator` binary admitting, draining, granting and verifying.
//! The harness is `rota_tests::vm`; the image's packages are listed in `vm/image.rs`.
//!
//! Needs root, qemu (`qemu-system-x86`, `qemu-utils`), debootstrap and dpkg-dev, and Debian's
//! mirror the first time (the image is cached by its recipe). Without them the suite fails,
//! saying what is missing, unless `ROTA_SKIP_VM_SUITE=1` is set outside CI.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rota_core::model::NodeFacts;
use rota_core::policy::MaintenancePolicySpec;
use rota_core::policy::crd::{DrainSpec, HealthSpec, RebootSpec, UpgradeMode, UpgradeSpec};
use rota_sim::apiserver::GroupResource;
use rota_tests::vm::image::{POSTINST_RELEASE, POSTINST_STARTED, SHARE};
use rota_tests::vm::{NAMESPACE, VmNode, WAIT, WORKLOAD_POD};
use serde_json::Value;

/// The pool's policy: one node at a time, security upgrades, the agent's DaemonSet pod
/// required healthy, and `reboot_command` (empty: the agent's `systemctl reboot`).
fn policy(reboot_command: &[&str]) -> MaintenancePolicySpec {
    MaintenancePolicySpec {
        max_unavailable: Some(IntOrString::Int(1)),
        upgrade: UpgradeSpec {
            mode: UpgradeMode::Security,
            ..UpgradeSpec::default()
        },
        reboot: RebootSpec {
            command: reboot_command.iter().map(|s| (*s).to_owned()).collect(),
            ..RebootSpec::default()
        },
        drain: DrainSpec {
            timeout: Some("120s".into()),
            ..DrainSpec::default()
        },
        health: HealthSpec {
            ready_timeout: Some("240s".into()),
            required_daemon_sets: vec![format!("{NAMESPACE}/rota-agent")],
        },
        max_failures: 3,
        ..MaintenancePolicySpec::default()
    }
}

fn reasons(vm: &VmNode) -> Vec<String> {
    vm.cluster.events().into_iter().map(|(r, _)| r).collect()
}

fn count(reasons: &[String], reason: &str) -> usize {
    reasons.iter().filter(|r| *r == reason).count()
}

/// What every successful maintenance leaves: the record says it succeeded, the workload was
/// evicted, the node uncordoned, one grant.
fn assert_maintained(vm: &VmNode, record: &Value) {
    let text = vm.cluster.diagnostics();
    assert_eq!(record["outcome"], "MaintenanceSucceeded", "{record}{text}");
    assert!(!vm.cluster.cordoned(), "the node is still cordoned{text}");
    assert!(
        vm.cluster
            .get(GroupResource::core("pods"), Some("default"), WORKLOAD_POD)
            .is_none(),
        "the drain did not evict {WORKLOAD_POD}{text}"
    );
    let reasons = reasons(vm);
    assert_eq!(count(&reasons, "Granted"), 1, "{reasons:?}");
    assert_eq!(count(&reasons, "Uncordoned"), 1, "{reasons:?}");
}

/// A security update of the container runtime, whose only consequence is a kubelet restart:
/// the agent upgrades it through apt in PID 1's namespaces, restarts the kubelet through
/// systemd (a new main PID and invocation), the coordinator verifies the kubelet's fresh
/// report and releases the slot; the machine did not reboot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_update_restarts_the_kubelet_through_systemd_without_a_reboot() {
    let began = Instant::now();
    let Some(mut vm) = VmNode::start(policy(&[])).await else {
        return;
    };
    vm.enable_suite("runtime-security").await;
    let boot = vm.guest.boot_id();
    let pid = vm.unit_property("kubelet.service", "MainPID").await;
    let invocation = vm.unit_property("kubelet.service", "InvocationID").await;
    vm.start_agent().await;
    let record = vm.wait_released().await;
    assert_maintained(&vm, &record);
    assert_eq!(vm.installed("containerd").await, "1.0+sec1");
    assert_eq!(vm.installed("linux-image-rota").await, "1.0");
    assert_eq!(vm.installed("kubelet").await, "1.30.1-1.1");
    let (new_pid, new_invocation) = (
        vm.unit_property("kubelet.service", "MainPID").await,
        vm.unit_property("kubelet.service", "InvocationID").await,
    );
    assert_ne!(new_pid, pid, "the kubelet was not restarted");
    assert_ne!(new_pid, "0", "the kubelet does not run");
    assert_ne!(new_invocation, invocation);
    assert_eq!(
        vm.guest.boots(),
        std::slice::from_ref(&boot),
        "the guest rebooted"
    );
    assert_eq!(vm.cluster.ready_boot_id(), Some(boot));
    assert_eq!(
        vm.agent_state().await,
        None,
        "the agent left its state behind"
    );
    println!(
        "kubelet restart scenario: {:.0} s",
        began.elapsed().as_secs_f64()
    );
}

/// A kernel-like update whose postinst asks for a reboot: the agent persists its state,
/// reboots the machine through systemd, resumes after the boot, and reports completion with
/// the new boot id; the coordinator sees the kubelet report that boot id, verifies and
/// uncordons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_update_reboots_and_the_agent_resumes_after_the_boot() {
    let began = Instant::now();
    let Some(mut vm) = VmNode::start(policy(&[])).await else {
        return;
    };
    vm.enable_suite("kernel-security").await;
    let first = vm.guest.boot_id();
    vm.start_agent().await;
    vm.guest.wait_boot(2).await;
    let second = vm.guest.boot_id();
    assert_ne!(second, first);
    let record = vm.wait_released().await;
    assert_maintained(&vm, &record);
    assert_eq!(vm.cluster.ready_boot_id(), Some(second.clone()));
    assert_eq!(vm.guest.boots(), [first, second], "one reboot");
    assert_eq!(vm.installed("linux-image-rota").await, "1.1");
    let sentinel = vm
        .guest
        .sh("test -e /var/run/reboot-required", Duration::from_secs(60))
        .await;
    assert_ne!(sentinel.code, 0, "the reboot sentinel survived the reboot");
    assert_eq!(
        vm.agent_state().await,
        None,
        "the agent left its state behind"
    );
    println!("reboot scenario: {:.0} s", began.elapsed().as_secs_f64());
}

/// The agent killed (SIGKILL) while dpkg runs a package's postinst: systemd restarts it (as the
/// DaemonSet's pod restarts), it finds its persisted operation, repairs the interrupted dpkg
/// run and finishes with the same fencing token; nothing is granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_upgrade_finishes_with_the_same_grant() {
    let began = Instant::now();
    let Some(mut vm) = VmNode::start(policy(&[])).await else {
        return;
    };
    vm.enable_suite("slow-security").await;
    vm.start_agent().await;
    // The postinst started: dpkg runs, under the agent's upgrade.
    let deadline = Instant::now() + WAIT;
    loop {
        let started = vm
            .guest
            .sh(
                &format!("test -e {POSTINST_STARTED}"),
                Duration::from_secs(60),
            )
            .await;
        if started.code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the upgrade never started");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let token = vm.cluster.slot().expect("a slot is held")["token"].clone();
    let state = vm
        .agent_state()
        .await
        .expect("the agent persisted its operation");
    assert_eq!(state["operation"]["token"], token, "{state}");
    let pid = vm.unit_property("rota-agent.service", "MainPID").await;
    vm.guest.ok(&format!("kill -9 {pid}")).await;
    // Systemd restarts it; the postinst died with it (its cgroup is killed), dpkg's run is
    // left unfinished. Let the next run of the postinst finish.
    vm.guest.ok(&format!("touch {POSTINST_RELEASE}")).await;
    let record = vm.wait_released().await;
    assert_maintained(&vm, &record);
    assert_eq!(record["token"], token, "{record}");
    let restarted = vm.unit_property("rota-agent.service", "MainPID").await;
    assert_ne!(restarted, pid);
    let runs = vm.guest.ok(&format!("cat {POSTINST_STARTED}")).await;
    assert_eq!(runs.lines().count(), 2, "the postinst ran {runs:?}");
    assert_eq!(vm.installed("slowpkg").await, "1.0+sec1");
    let audit = vm.guest.ok("dpkg --audit").await;
    assert!(audit.trim().is_empty(), "dpkg is unfinished: {audit}");
    println!(
        "agent killed mid-upgrade scenario: {:.0} s",
        began.elapsed().as_secs_f64()
    );
}

/// `rota-agent check --json` in its own mount namespace, with the host's package database and
/// apt configuration out of sight, reports exactly what the guest has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_exactly_what_the_guest_has() {
    let began = Instant::now();
    let Some(mut vm) = VmNode::start(policy(&[])).await else {
        return;
    };
    vm.enable_suite("runtime-security").await;
    vm.enable_suite("kernel-security").await;
    let check = format!(
        "unshare -m sh -c 'mount -t tmpfs none /var/lib && mount -t tmpfs none /etc/apt && mount -t tmpfs none /srv && exec {SHARE}/rota-agent check --json' 2>/dev/null"
    );
    let facts = |text: &str| -> NodeFacts {
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("check printed no facts ({e}):\n{text}"))
    };
    let before = facts(&vm.guest.ok(&check).await);
    let kernel = vm.guest.ok("uname -r").await.trim().to_owned();
    let installed_kernels: Vec<String> = vm
        .guest
        .ok("cd /boot && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V")
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    let os = vm
        .guest
        .ok(". /etc/os-release && echo \"$PRETTY_NAME\"")
        .await
        .trim()
        .to_owned();
    assert!(before.errors.is_empty(), "{:?}", before.errors);
    assert_eq!(before.boot_id, vm.guest.boot_id());
    assert_eq!(before.kernel_running, kernel);
    assert_eq!(before.kernels_installed, installed_kernels);
    assert!(!before.reboot_required, "{:?}", before.reboot_reasons);
    assert_eq!(before.package_backend, "apt");
    assert_eq!(before.kubelet_version, "1.30.1");
    assert_eq!(before.os_image, os);
    let mut pending: Vec<(String, String, String, bool)> = before
        .pending_upgrades
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.current_version.clone(),
                p.candidate_version.clone(),
                p.security,
            )
        })
        .collect();
    pending.sort();
    // What apt itself says is pending.
    let simulated = vm
        .guest
        .ok("apt-get -s -q dist-upgrade | awk '/^Inst /{print $2}' | sort")
        .await;
    let names: Vec<&str> = pending.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, simulated.lines().collect::<Vec<_>>());
    assert_eq!(
        pending,
        [
            ("containerd".into(), "1.0".into(), "1.0+sec1".into(), true),
            ("linux-image-rota".into(), "1.0".into(), "1.1".into(), true),
        ]
    );

    // The sentinel, as a kernel's postinst leaves it.
    vm.guest.ok("touch /var/run/reboot-required").await;
    let after = facts(&vm.guest.ok(&check).await);
    assert!(after.reboot_required);
    assert!(
        after
            .reboot_reasons
            .iter()
            .any(|r| r.contains("/var/run/reboot-required")),
        "{:?}",
        after.reboot_reasons
    );
    println!("check scenario: {:.0} s", began.elapsed().as_secs_f64());
}

/// A reboot command that fails (the policy's, exiting 7): the operation fails with that in its
/// reason, the slot stays held (capacity is not freed by a broken node), and nothing rebooted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_reboot_command_fails_the_operation_and_keeps_the_slot() {
    let began = Instant::now();
    let Some(mut vm) = VmNode::start(policy(&[
        "/bin/sh",
        "-c",
        "echo reboot refused by the test >&2; exit 7",
    ]))
    .await
    else {
        return;
    };
    vm.enable_suite("kernel-security").await;
    let boot = vm.guest.boot_id();
    vm.start_agent().await;
    let slot = vm
        .cluster
        .wait("the slot to fail, with its Event", |cluster| {
            let failed =
                cluster.has_event("OperationFailed") || cluster.has_event("MaintenanceFailed");
            cluster.slot().filter(|s| s["phase"] == "failed" && failed)
        })
        .await;
    let events = vm.cluster.events();
    let failure = events
        .iter()
        .find(|(reason, _)| reason == "OperationFailed" || reason == "MaintenanceFailed")
        .unwrap_or_else(|| panic!("no failure Event: {events:?}"));
    assert!(failure.1.contains("exit code 7"), "{failure:?}");
    assert!(
        failure.1.contains("reboot refused by the test"),
        "{failure:?}"
    );
    // The slot stays held and the node cordoned: a broken node frees no capacity.
    assert!(vm.cluster.cordoned(), "{slot}");
    assert_eq!(
        vm.guest.boots(),
        std::slice::from_ref(&boot),
        "the guest rebooted"
    );
    // The guest still runs the boot it ran (the channel answers from it).
    let out = vm.guest.ok("cat /proc/sys/kernel/random/boot_id").await;
    assert_eq!(out.trim(), boot);
    assert_eq!(vm.cluster.slot().unwrap()["token"], slot["token"]);
    assert_eq!(vm.cluster.ready_boot_id(), Some(boot));
    println!(
        "failing reboot scenario: {:.0} s",
        began.elapsed().as_secs_f64()
    );
}
