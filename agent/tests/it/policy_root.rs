//! Every field of a MaintenancePolicy that the agent follows, end to end: a policy spec is
//! validated and sent the way the coordinator sends it (`NodePolicy` over gRPC, in the answers
//! to facts reports and with the grant) by a fake coordinator on loopback
//! (`common/coordinator.rs`), and the agent daemon runs on a `ChrootHost` over the prepared
//! Debian root (`common/debian.rs`) with real apt and dpkg. Each test fails when its field is
//! ignored: the assertions are on what dpkg installed, which sentinel was honoured and which
//! reboot command ran. The agent's own flags say the opposite of the policy wherever they can.
//!
//! Needs what `apt_root.rs` needs; failing (or skipped on request) the same way.

// Test helpers outside `#[test]` functions: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::common::coordinator::{FakeCoordinator, RunningAgent, Script, Seen};
use crate::common::debian::root;
use crate::common::{AGENT, Root};
use rota_agent::daemon::{DaemonConfig, TokenAuth, machine::UpgradePolicy};
use rota_agent::detect::DetectConfig;
use rota_agent::host::Host;
use rota_agent::ops::ExecutorConfig;
use rota_core::model::{NodePolicy, Operation, UpgradeReboot};
use rota_core::policy::{MaintenancePolicySpec, validate};
use rota_proto::v1 as pb;

const WITHIN: Duration = Duration::from_secs(90);

/// The `NodePolicy` the coordinator sends for a pool `workers` with this spec.
fn policy(spec: serde_json::Value) -> pb::NodePolicy {
    let spec: MaintenancePolicySpec = serde_json::from_value(spec).unwrap();
    let valid = validate(&spec).unwrap();
    pb::NodePolicy::from(&NodePolicy::of("workers", &valid))
}

/// The daemon's flags: `upgrade`, the default sentinels, `systemctl reboot`.
fn config(upgrade: UpgradePolicy) -> DaemonConfig {
    DaemonConfig {
        node: "node-a".into(),
        upgrade,
        detect: DetectConfig::default(),
        exec: ExecutorConfig {
            shutdown_wait: Duration::from_millis(200),
            ..ExecutorConfig::default()
        },
        refresh_interval: Duration::from_secs(3600),
        retry_interval: Duration::from_millis(100),
    }
}

fn host(root: &Root) -> Arc<dyn Host> {
    Arc::new(root.host())
}

/// A fake coordinator for the pool `workers` with this spec, answering as `script` says.
async fn serving(spec: serde_json::Value, script: Script) -> FakeCoordinator {
    let script = Script {
        policy: Some(policy(spec)),
        ..script
    };
    FakeCoordinator::start("node-a", script).await
}

/// Grants "every upgrade, then reboot if required" whatever the agent asked for (as when a
/// human's request replaced the agent's).
fn granting_every_upgrade() -> Script {
    Script {
        grant: Some(op(&all_upgrades(true))),
        ..Script::default()
    }
}

/// [`serving`] with requests kept queued.
async fn queuing(spec: serde_json::Value) -> FakeCoordinator {
    let script = Script {
        grant_requests: false,
        ..Script::default()
    };
    serving(spec, script).await
}

/// Runs the daemon on `root` with `--upgrade=upgrade` until it completed its operation.
async fn run_to_completion(coordinator: &FakeCoordinator, root: &Root, upgrade: UpgradePolicy) {
    coordinator
        .run_until_complete(host(root), config(upgrade), TokenAuth::default())
        .await;
}

/// The daemon on `root` against `coordinator`, with `--upgrade=upgrade`.
fn run(coordinator: &FakeCoordinator, root: &Root, upgrade: UpgradePolicy) -> RunningAgent {
    coordinator.run_agent(host(root), config(upgrade), TokenAuth::default())
}

fn op(operation: &Operation) -> pb::Operation {
    pb::Operation::from(operation)
}

fn all_upgrades(reboot_if_required: bool) -> Operation {
    Operation::PackageUpgrade {
        security_only: false,
        reboot: if reboot_if_required {
            UpgradeReboot::IfRequired
        } else {
            UpgradeReboot::Never
        },
        packages: vec![],
    }
}

/// An executable script at `path` in the root.
fn script(root: &Root, path: &str, body: &str) {
    let file = root.path().join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Creates an empty file at the host path `path` (links resolved inside the root: the root's
/// `/var/run` links to `/run`).
fn touch(root: &Root, path: &str) {
    root.host()
        .write_file_atomic(std::path::Path::new(path), b"")
        .unwrap();
}

fn lines(root: &Root, path: &str) -> Vec<String> {
    fs::read_to_string(root.path().join(path.trim_start_matches('/')))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The flags' reboot method (`systemctl reboot`) was never used.
fn assert_systemd_never_rebooted(root: &Root) {
    let calls = root.systemctl_calls();
    assert!(!calls.iter().any(|c| c.contains("reboot")), "{calls:?}");
}

fn requested_reboot(seen: &Seen) -> bool {
    seen.requests.contains(&op(&Operation::Reboot))
}

fn pending(facts: &pb::NodeFacts) -> Vec<&str> {
    let mut names: Vec<&str> = facts
        .pending_upgrades
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_mode_security_upgrades_only_security_packages() {
    let Some(root) = root() else { return };
    // Whatever the grant says, its policy narrows it.
    let spec = serde_json::json!({"upgrade": {"mode": "security"}});
    let coordinator = serving(spec, granting_every_upgrade()).await;
    run_to_completion(&coordinator, &root, UpgradePolicy::All).await;
    let seen = coordinator.seen();
    let asked = op(&Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    });
    assert!(!seen.requests.is_empty());
    assert!(
        seen.requests.iter().all(|r| *r == asked),
        "{:?}",
        seen.requests
    );
    assert!(seen.completes[0].success, "{:?}", seen.completes[0]);
    assert_eq!(root.version("secpkg").unwrap(), "1.0+sec1");
    assert_eq!(root.version("ordinary").unwrap(), "1.0");
    assert_eq!(root.version("linux-image-rota").unwrap(), "1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_mode_none_asks_for_no_upgrade_and_gives_a_granted_one_back() {
    let Some(root) = root() else { return };
    let none = policy(serde_json::json!({"upgrade": {"mode": "none"}}));
    let coordinator = FakeCoordinator::start(
        "node-a",
        Script {
            policy: Some(none.clone()),
            grant_requests: false,
            ..Script::default()
        },
    )
    .await;
    // A package upgrade granted under the policy (a human's request, say).
    coordinator.push(pb::SlotStatus {
        node: "node-a".into(),
        phase: pb::SlotPhase::Granted as i32,
        operation: Some(op(&all_upgrades(true))),
        token: 42,
        lease_ttl_seconds: 30,
        policy: Some(none),
        ..Default::default()
    });
    let agent = run(&coordinator, &root, UpgradePolicy::All);
    coordinator
        .wait("the grant given back", WITHIN, |s| !s.releases.is_empty())
        .await;
    // A reboot is still asked for (the policy does not forbid those): once it is, every
    // decision on the earlier facts has been made.
    touch(&root, "/var/run/reboot-required");
    coordinator
        .wait("a reboot request", WITHIN, requested_reboot)
        .await;
    agent.stop().await;
    let seen = coordinator.seen();
    assert_eq!(seen.releases[0].token, 42);
    assert!(
        seen.releases[0].reason.contains("upgrade.mode none"),
        "{:?}",
        seen.releases[0]
    );
    assert_eq!(
        seen.requests,
        [op(&Operation::Reboot)],
        "no upgrade asked for"
    );
    assert!(seen.completes.is_empty());
    for name in ["secpkg", "ordinary", "linux-image-rota"] {
        assert_eq!(root.version(name).unwrap(), "1.0", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policys_holds_are_never_upgraded() {
    let Some(root) = root() else { return };
    let coordinator = serving(
        serde_json::json!({
            "upgrade": {"mode": "all", "holds": ["ordinary", "linux-image-rota"]},
        }),
        Script::default(),
    )
    .await;
    run_to_completion(&coordinator, &root, UpgradePolicy::None).await;
    let seen = coordinator.seen();
    assert!(seen.completes[0].success, "{:?}", seen.completes[0]);
    assert_eq!(root.version("secpkg").unwrap(), "1.0+sec1");
    assert_eq!(
        root.version("ordinary").unwrap(),
        "1.0",
        "held by the policy"
    );
    assert_eq!(
        root.version("linux-image-rota").unwrap(),
        "1.0",
        "held by the policy"
    );
    assert_eq!(root.version("heldpkg").unwrap(), "1.0", "held by dpkg");
    // The policy's holds are the agent's business: dpkg's own holds are left as they were, and
    // the facts the coordinator got (once the policy was known) list no held package.
    assert_eq!(
        root.host().packages().unwrap().holds().unwrap(),
        ["heldpkg"]
    );
    assert!(
        seen.facts
            .iter()
            .any(|f| pending(f) == ["linux-image-rota", "ordinary", "secpkg"]),
        "before the policy"
    );
    assert!(
        seen.facts.iter().any(|f| pending(f) == ["secpkg"]),
        "under the policy: {:?}",
        seen.facts.iter().map(pending).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_mode_never_upgrades_without_rebooting_and_reports_the_reboot_still_required() {
    let Some(root) = root() else { return };
    // Even a grant that says "reboot if required" does not reboot.
    let spec = serde_json::json!({"upgrade": {"mode": "all"}, "reboot": {"mode": "never"}});
    let coordinator = serving(spec, granting_every_upgrade()).await;
    let agent = run(&coordinator, &root, UpgradePolicy::All);
    tokio::time::timeout(WITHIN, coordinator.completed.notified())
        .await
        .expect("no completion");
    coordinator
        .wait("facts saying the reboot is still required", WITHIN, |s| {
            !s.completes.is_empty() && s.facts.last().is_some_and(|f| f.reboot_required)
        })
        .await;
    agent.stop().await;
    let seen = coordinator.seen();
    assert_eq!(
        seen.requests[0],
        op(&all_upgrades(false)),
        "asked without a reboot"
    );
    assert!(!requested_reboot(&seen), "{:?}", seen.requests);
    let done = &seen.completes[0];
    assert!(done.success && !done.rebooted, "{done:?}");
    assert!(done.message.contains("reboot still required"), "{done:?}");
    assert_eq!(root.version("linux-image-rota").unwrap(), "1.1");
    assert!(root.path().join("run/reboot-required").exists());
    assert_systemd_never_rebooted(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policys_reboot_command_reboots() {
    let Some(root) = root() else { return };
    script(
        &root,
        "/usr/local/sbin/rota-reboot",
        "echo \"$*\" >> /var/log/rota-reboot.log",
    );
    touch(&root, "/var/run/reboot-required");
    let spec = serde_json::json!({
        "upgrade": {"mode": "none"},
        "reboot": {"command": ["/usr/local/sbin/rota-reboot", "--now"]},
    });
    let coordinator = serving(spec, Script::default()).await;
    // The flag names another command; the policy's wins.
    let mut cfg = config(UpgradePolicy::None);
    cfg.exec.reboot_method =
        rota_agent::host::RebootMethod::Command(vec!["/usr/local/sbin/flag-reboot".into()]);
    // The chroot does not go down: the agent asks twice, then reports the failure.
    coordinator
        .run_until_complete(host(&root), cfg, TokenAuth::default())
        .await;
    let seen = coordinator.seen();
    assert_eq!(seen.requests, [op(&Operation::Reboot)]);
    assert_eq!(lines(&root, "/var/log/rota-reboot.log"), ["--now", "--now"]);
    assert!(!seen.completes[0].success, "{:?}", seen.completes[0]);
    assert_systemd_never_rebooted(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policys_sentinel_files_replace_the_flags() {
    let Some(root) = root() else { return };
    // The flags' sentinel says "reboot"; the policy's sentinel does not exist yet.
    touch(&root, "/var/run/reboot-required");
    let coordinator = queuing(serde_json::json!({
        "upgrade": {"mode": "none"},
        "reboot": {"sentinelFiles": ["/run/rota-policy-sentinel"]},
    }))
    .await;
    let agent = run(&coordinator, &root, UpgradePolicy::None);
    coordinator
        .wait("facts under the policy's sentinels", WITHIN, |s| {
            s.facts.iter().any(|f| !f.reboot_required)
        })
        .await;
    assert!(!requested_reboot(&coordinator.seen()));
    // The policy's sentinel appears: the watcher of the policy's files sees it.
    touch(&root, "/run/rota-policy-sentinel");
    coordinator
        .wait("a reboot request", WITHIN, requested_reboot)
        .await;
    agent.stop().await;
    let seen = coordinator.seen();
    assert_eq!(
        seen.requests,
        [op(&Operation::Reboot)],
        "asked once, after the policy"
    );
    assert_eq!(
        seen.facts.last().unwrap().reboot_reasons,
        ["sentinel /run/rota-policy-sentinel"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policys_sentinel_command_is_run() {
    let Some(root) = root() else { return };
    script(
        &root,
        "/usr/local/bin/rota-needs-reboot",
        "touch /var/log/rota-needs-reboot.ran\nexit 0",
    );
    let coordinator = queuing(serde_json::json!({
        "upgrade": {"mode": "none"},
        "reboot": {"sentinelCommand": ["/usr/local/bin/rota-needs-reboot"]},
    }))
    .await;
    let agent = run(&coordinator, &root, UpgradePolicy::None);
    coordinator
        .wait("a reboot request", WITHIN, requested_reboot)
        .await;
    agent.stop().await;
    let seen = coordinator.seen();
    assert_eq!(
        seen.facts.last().unwrap().reboot_reasons,
        ["sentinel command `/usr/local/bin/rota-needs-reboot` exited 0"]
    );
    assert!(root.path().join("var/log/rota-needs-reboot.ran").exists());
}

/// Runs `rota-agent check --json` on the root with `args` and `env`; returns the JSON.
async fn check(root: &Root, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(AGENT);
    cmd.args(["check", "--json", "--host-root"])
        .arg(root.path())
        .args(args)
        .env_remove("ROTA_HOST_ROOT")
        .envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_each_value_with_its_source() {
    let Some(root) = root() else { return };
    let spec = serde_json::json!({
        "upgrade": {"mode": "all", "holds": ["ordinary"]},
        "reboot": {"command": ["/usr/local/sbin/rota-reboot"]},
    });
    let coordinator = serving(spec, Script::default()).await;
    let flags = ["--sentinel", "/run/flag-sentinel"];
    let env = [("ROTA_UPGRADE", "none")];
    let local = check(&root, &flags, &env).await;
    let settings = &local["settings"];
    assert_eq!(settings["policyConsulted"], false);
    assert_eq!(settings["upgrade"]["value"], "none");
    assert_eq!(settings["upgrade"]["source"], "env");
    assert_eq!(settings["sentinelFiles"]["source"], "flag");
    assert_eq!(settings["rebootCommand"]["source"], "default");

    let mut with = flags.to_vec();
    with.extend([
        "--coordinator",
        &coordinator.url,
        "--node",
        "node-a",
        "--insecure-plaintext",
    ]);
    let asked = check(&root, &with, &env).await;
    let settings = &asked["settings"];
    assert_eq!(settings["policyConsulted"], true);
    assert_eq!(settings["policy"], "workers");
    assert_eq!(settings["upgrade"]["value"], "all");
    assert_eq!(settings["upgrade"]["source"], "policy workers");
    assert_eq!(settings["holds"]["value"], serde_json::json!(["ordinary"]));
    assert_eq!(settings["holds"]["source"], "policy workers");
    assert_eq!(
        settings["sentinelFiles"]["value"],
        serde_json::json!(["/run/flag-sentinel"])
    );
    assert_eq!(settings["sentinelFiles"]["source"], "flag");
    assert_eq!(settings["sentinelCommand"]["source"], "default");
    assert_eq!(
        settings["rebootCommand"]["value"],
        serde_json::json!(["/usr/local/sbin/rota-reboot"])
    );
    assert_eq!(settings["rebootCommand"]["source"], "policy workers");
    assert_eq!(settings["rebootMode"]["source"], "policy workers");
    // The facts are detected under the policy: its hold is kept back.
    let ordinary = asked["pendingUpgrades"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ordinary")
        .unwrap();
    assert_eq!(ordinary["blocked"], "held");
    assert!(
        !coordinator.seen().facts.is_empty(),
        "check reported its facts"
    );
}
