//! `rota-agent run` against a fake coordinator (`common/coordinator.rs`) that grants every
//! request at once and records what the agent says. The node is an in-memory host.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use rota_core::model::{Operation, UpgradeReboot};

use std::sync::Arc;
use std::time::Duration;

use crate::common::coordinator::{FakeCoordinator, Script};
use rota_agent::daemon::{DaemonConfig, TokenAuth, machine::UpgradePolicy};
use rota_agent::detect::DetectConfig;
use rota_agent::host::memory::exited;
use rota_agent::host::{Host, MemoryHost};
use rota_agent::ops::{ExecutorConfig, OperationRecord, Outcome};
use rota_agent::state;
use rota_proto::v1 as pb;

fn config(policy: UpgradePolicy) -> DaemonConfig {
    DaemonConfig {
        node: "node-a".into(),
        upgrade: policy,
        detect: DetectConfig::default(),
        exec: ExecutorConfig {
            health_command: vec!["health".into()],
            shutdown_wait: Duration::ZERO,
            ..ExecutorConfig::default()
        },
        refresh_interval: Duration::from_secs(3600),
        retry_interval: Duration::from_millis(100),
    }
}

fn node() -> MemoryHost {
    let host = MemoryHost::debian();
    host.install("curl", "7.88.1-10");
    host.add_available("curl", "7.88.1-10", false);
    host.add_available("curl", "7.88.1-10+deb12u5", true);
    host.on_command("health", |_| Ok(exited(0, "")));
    host
}

#[tokio::test]
async fn a_security_upgrade_is_requested_granted_performed_and_completed() {
    let harness = FakeCoordinator::start("node-a", Script::default()).await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "t0ken\n").unwrap();
    let host = node();
    harness
        .run_until_complete(
            Arc::new(host.clone()),
            config(UpgradePolicy::Security),
            TokenAuth {
                token_file: Some(token_file.path().to_path_buf()),
            },
        )
        .await;
    let seen = harness.seen();
    let facts = &seen.facts[0];
    assert_eq!(facts.boot_id, "boot-1");
    assert_eq!(facts.pending_upgrades.len(), 1);
    assert!(facts.pending_upgrades[0].security);
    let expected = pb::Operation::from(&Operation::PackageUpgrade {
        security_only: true,
        reboot: UpgradeReboot::IfRequired,
        packages: vec![],
    });
    // The watch may deliver the initial IDLE after the request went out; the agent then asks
    // again, which the protocol makes idempotent. Never for anything else, never started twice.
    assert!(!seen.requests.is_empty());
    assert!(
        seen.requests.iter().all(|r| r == &expected),
        "{:?}",
        seen.requests
    );
    assert_eq!(seen.completes.len(), 1);
    let done = &seen.completes[0];
    assert!(done.success, "{done:?}");
    assert_eq!(done.token, 7);
    assert!(!done.rebooted);
    assert_eq!(done.changed.len(), 1);
    assert_eq!(done.changed[0].version, "7.88.1-10+deb12u5");
    assert!(
        seen.progress.contains(&"completing".to_string()),
        "{:?}",
        seen.progress
    );
    assert!(
        seen.tokens.iter().all(|t| t == "Bearer t0ken"),
        "{:?}",
        seen.tokens
    );
    assert_eq!(host.installed("curl").unwrap(), "7.88.1-10+deb12u5");
    assert!(
        !host
            .exists(std::path::Path::new(state::DEFAULT_STATE_PATH))
            .unwrap()
    );
}

#[tokio::test]
async fn after_a_reboot_the_agent_resumes_and_completes_with_the_persisted_token() {
    let harness = FakeCoordinator::start(
        "node-a",
        Script {
            token: 99,
            ..Script::default()
        },
    )
    .await;
    let host = node();
    // The previous boot persisted a reboot in flight under token 5.
    let mut record = OperationRecord::new(
        5,
        Operation::Reboot,
        "boot-0".into(),
        jiff::Timestamp::UNIX_EPOCH,
    );
    record.on(Outcome::Done);
    state::save(
        &host,
        std::path::Path::new(state::DEFAULT_STATE_PATH),
        &record,
    )
    .unwrap();
    harness
        .run_until_complete(
            Arc::new(host.clone()),
            config(UpgradePolicy::None),
            TokenAuth::default(),
        )
        .await;
    let seen = harness.seen();
    assert_eq!(seen.completes.len(), 1);
    let done = &seen.completes[0];
    assert_eq!(done.token, 5);
    assert!(done.success && done.rebooted, "{done:?}");
    assert_eq!(done.boot_id, "boot-1");
    assert_eq!(host.reboot_requests(), 0, "no second reboot");
    assert!(seen.requests.is_empty(), "{:?}", seen.requests);
}

/// The coordinator takes the completion of an upgrade that needed no reboot, then its health
/// gate fails the slot (VERIFYING, then FAILED on WatchSlot): the agent rolls the package back
/// to the version before, says so in its progress reports, completes nothing twice and drops
/// its state.
#[tokio::test]
async fn a_failed_health_gate_after_an_upgrade_without_reboot_rolls_the_packages_back() {
    let harness = FakeCoordinator::start(
        "node-a",
        Script {
            token: 8,
            gate_fails: true,
            ..Script::default()
        },
    )
    .await;
    let host = node();
    harness
        .run_until_complete(
            Arc::new(host.clone()),
            config(UpgradePolicy::Security),
            TokenAuth::default(),
        )
        .await;
    assert_eq!(host.installed("curl").unwrap(), "7.88.1-10", "rolled back");
    let seen = harness.seen();
    assert_eq!(
        seen.completes.len(),
        1,
        "one completion, before the verdict"
    );
    assert!(seen.completes[0].success && !seen.completes[0].rebooted);
    let steps = &seen.progress;
    let at = |step: &str| steps.iter().position(|s| s == step);
    assert!(
        at("completing") < at("rolling-back") && at("rolling-back") < at("rolled-back"),
        "{steps:?}"
    );
    assert_eq!(
        steps.iter().filter(|s| *s == "rolling-back").count(),
        1,
        "{steps:?}"
    );
    let report = seen.progress_messages.last().unwrap();
    assert!(
        report.contains("health gate failed slot 8")
            && report.contains("curl 7.88.1-10+deb12u5 to 7.88.1-10"),
        "{report}"
    );
}
