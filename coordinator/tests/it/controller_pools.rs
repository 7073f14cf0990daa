//! Policies in force, the circuit breaker's count and the policy status (pure: no API server).

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use rota_core::controller::pools::{PolicyBook, PolicyChange, PoolCounts};
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec, MaintenancePolicyStatus};
use serde_json::json;

/// 2025-06-01T12:00:00.123456Z.
const NOW: Timestamp = Timestamp::constant(1_748_779_200, 123_456_000);
/// [`NOW`] in whole seconds, as condition times are written.
const NOW_SECONDS: Timestamp = Timestamp::constant(1_748_779_200, 0);

fn now() -> Timestamp {
    NOW
}

fn policy(generation: i64, spec: serde_json::Value) -> MaintenancePolicy {
    let spec: MaintenancePolicySpec = serde_json::from_value(spec).unwrap_or_else(|e| {
        panic!("test spec does not decode: {e}");
    });
    let mut policy = MaintenancePolicy::new("workers", spec);
    policy.metadata.generation = Some(generation);
    policy.metadata.uid = Some("uid-workers".into());
    policy.metadata.resource_version = Some(format!("{generation}"));
    policy
}

fn cached(policy: MaintenancePolicy) -> BTreeMap<String, Arc<MaintenancePolicy>> {
    BTreeMap::from([("workers".to_string(), Arc::new(policy))])
}

fn condition<'a>(status: &'a MaintenancePolicyStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

#[test]
fn an_invalid_spec_keeps_the_last_valid_one_in_force_but_pauses_at_once() {
    let mut book = PolicyBook::new();
    let valid = policy(1, json!({"maxUnavailable": 2, "maxFailures": 1}));
    assert!(book.update(&cached(valid)).is_empty());
    assert_eq!(book.pools().len(), 1);

    let invalid = policy(
        2,
        json!({"maxUnavailable": "150%", "paused": true, "drain": {"timeout": "soon"}}),
    );
    let changes = book.update(&cached(invalid.clone()));
    assert!(
        changes.contains(&PolicyChange::Paused {
            policy: "workers".into()
        }),
        "{changes:?}"
    );
    let message = changes
        .iter()
        .find_map(|c| match c {
            PolicyChange::Invalid { message, .. } => Some(message.clone()),
            _ => None,
        })
        .expect("an Invalid change");
    assert!(message.contains("spec.maxUnavailable"), "{message}");
    assert!(message.contains("spec.drain.timeout"), "{message}");
    assert!(
        message.contains("generation 1) stays in force"),
        "{message}"
    );

    let pools = book.pools();
    let in_force = &pools[0].policy;
    assert_eq!(
        in_force.max_unavailable.resolve(10),
        2,
        "the valid spec's limit"
    );
    assert!(in_force.paused, "a pause in an invalid spec still pauses");

    let status = book
        .status_update("workers", PoolCounts::default(), Vec::new(), None, now())
        .expect("a first status");
    assert_eq!(status.observed_generation, Some(2));
    let valid = condition(&status, "Valid");
    assert_eq!(
        (valid.status.as_str(), valid.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(valid.message.contains("spec.maxUnavailable"));
    assert_eq!(condition(&status, "Paused").status, "True");
    assert_eq!(
        valid.last_transition_time.0, NOW_SECONDS,
        "condition times are whole seconds, so they survive the round trip"
    );
}

#[test]
fn a_policy_never_valid_defines_no_pool() {
    let mut book = PolicyBook::new();
    book.update(&cached(policy(1, json!({"maxUnavailable": 0}))));
    assert!(book.pools().is_empty());
    let status = book
        .status_update("workers", PoolCounts::default(), Vec::new(), None, now())
        .unwrap();
    assert!(
        condition(&status, "Valid")
            .message
            .contains("no valid spec is known: the pool is not maintained")
    );
}

#[test]
fn failures_open_the_breaker_and_a_pause_and_resume_resets_it() {
    let mut book = PolicyBook::new();
    let spec = json!({"maxFailures": 2});
    book.update(&cached(policy(1, spec.clone())));
    assert!(!book.record_failure("workers"));
    assert!(
        book.record_failure("workers"),
        "the second failure opens it"
    );
    assert!(!book.record_failure("workers"), "already open");
    let pool = &book.pools()[0];
    assert!(pool.policy.circuit_open(pool.failures));
    let status = book
        .status_update("workers", PoolCounts::default(), Vec::new(), None, now())
        .unwrap();
    assert_eq!(status.failed, 3);
    assert_eq!(condition(&status, "CircuitOpen").status, "True");

    book.update(&cached(policy(
        2,
        json!({"maxFailures": 2, "paused": true}),
    )));
    assert_eq!(book.failures("workers"), 3, "pausing alone keeps the count");
    let changes = book.update(&cached(policy(3, spec)));
    assert_eq!(
        changes,
        vec![PolicyChange::Resumed {
            policy: "workers".into()
        }]
    );
    assert_eq!(book.failures("workers"), 0);
}

#[test]
fn the_count_survives_a_restart_through_the_status() {
    let mut written = policy(1, json!({"maxFailures": 3}));
    written.status = Some(MaintenancePolicyStatus {
        failed: 2,
        ..MaintenancePolicyStatus::default()
    });
    let mut book = PolicyBook::new();
    book.update(&cached(written.clone()));
    assert_eq!(book.failures("workers"), 2);

    // A resume that happened while no coordinator ran: the last status said Paused.
    let mut status = book
        .status_update("workers", PoolCounts::default(), Vec::new(), None, now())
        .unwrap();
    status.conditions.retain(|c| c.type_ != "Paused");
    status.conditions.push(Condition {
        type_: "Paused".into(),
        status: "True".into(),
        reason: "PausedByUser".into(),
        message: String::new(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()),
        observed_generation: Some(1),
    });
    written.status = Some(status);
    let mut restarted = PolicyBook::new();
    let changes = restarted.update(&cached(written));
    assert_eq!(
        changes,
        vec![PolicyChange::Resumed {
            policy: "workers".into()
        }]
    );
    assert_eq!(restarted.failures("workers"), 0);
}

#[test]
fn a_status_is_written_only_when_it_changes() {
    let mut book = PolicyBook::new();
    let mut object = policy(1, json!({}));
    book.update(&cached(object.clone()));
    let counts = PoolCounts {
        nodes: 3,
        done: 1,
        in_progress: 1,
        waiting: 1,
    };
    let status = book
        .status_update("workers", counts, Vec::new(), None, now())
        .unwrap();
    book.mark_written("workers", status.clone());
    assert_eq!(
        book.status_update("workers", counts, Vec::new(), None, now()),
        None,
        "written, and the watch has not delivered it yet"
    );

    // The watch delivers the write (through JSON, as the API server would).
    object.status = Some(serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap());
    object.metadata.resource_version = Some("2".into());
    book.update(&cached(object));
    let later = now()
        .checked_add(jiff::SignedDuration::from_mins(5))
        .unwrap();
    assert_eq!(
        book.status_update("workers", counts, Vec::new(), None, later),
        None
    );

    let changed = PoolCounts {
        done: 2,
        in_progress: 0,
        ..counts
    };
    let status = book
        .status_update("workers", changed, Vec::new(), None, later)
        .expect("a change");
    assert_eq!(status.done, 2);
    assert_eq!(
        condition(&status, "Valid").last_transition_time.0,
        NOW_SECONDS,
        "a condition whose status did not change keeps its time"
    );
}
