//! `validate` rejects every invalid input with its field path and a reason, and applies defaults.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use jiff::SignedDuration;
use rota_core::policy::{
    KubeVersion, MaintenancePolicySpec, MaxUnavailable, NamespacedName, PolicyError, validate,
};
use serde_json::json;

fn spec(value: serde_json::Value) -> MaintenancePolicySpec {
    serde_json::from_value(value).expect("spec deserializes")
}

fn errors(value: serde_json::Value) -> Vec<PolicyError> {
    match validate(&spec(value.clone())) {
        Ok(_) => panic!("accepted invalid spec {value}"),
        Err(errors) => errors,
    }
}

#[test]
fn every_invalid_input_is_reported_with_field_and_reason() {
    let cases = [
        (
            json!({"maxUnavailable": 0}),
            "spec.maxUnavailable",
            "at least 1",
        ),
        (
            json!({"maxUnavailable": -2}),
            "spec.maxUnavailable",
            "at least 1",
        ),
        (
            json!({"maxUnavailable": "0%"}),
            "spec.maxUnavailable",
            "between 1% and 100%",
        ),
        (
            json!({"maxUnavailable": "150%"}),
            "spec.maxUnavailable",
            "between 1% and 100%",
        ),
        (
            json!({"maxUnavailable": "ten"}),
            "spec.maxUnavailable",
            "percentage",
        ),
        (
            json!({"maxUnavailable": "5"}),
            "spec.maxUnavailable",
            "percentage",
        ),
        (
            json!({"maxUnavailable": "%"}),
            "spec.maxUnavailable",
            "percentage",
        ),
        (json!({"maxFailures": -1}), "spec.maxFailures", "negative"),
        (
            json!({"controlPlane": {"maxUnavailable": 0}}),
            "spec.controlPlane.maxUnavailable",
            "at least 1",
        ),
        (
            json!({"windows": [{"start": "25:00", "end": "02:00"}]}),
            "spec.windows[0].start",
            "HH:MM",
        ),
        (
            json!({"windows": [{"start": "22:00", "end": "2:5"}]}),
            "spec.windows[0].end",
            "HH:MM",
        ),
        (
            json!({"windows": [{"start": "22:60", "end": "02:00"}]}),
            "spec.windows[0].start",
            "HH:MM",
        ),
        (
            json!({"windows": [{"start": "noon", "end": "02:00"}]}),
            "spec.windows[0].start",
            "HH:MM",
        ),
        (
            json!({"windows": [{"start": "22:00", "end": "22:00"}]}),
            "spec.windows[0].end",
            "equals start",
        ),
        (
            json!({"windows": [{"start": "22:00", "end": "02:00", "timeZone": "Mars/Olympus"}]}),
            "spec.windows[0].timeZone",
            "unknown time zone",
        ),
        (
            json!({"blackouts": [{"start": "2025-12-24T00:00:00Z", "end": "2025-12-20T00:00:00Z"}]}),
            "spec.blackouts[0].end",
            "must be after start",
        ),
        (
            json!({"blackouts": [{"start": "2025-12-24T00:00:00Z", "end": "2025-12-24T00:00:00Z"}]}),
            "spec.blackouts[0].end",
            "must be after start",
        ),
        (
            json!({"blackouts": [{"start": "Christmas", "end": "2025-12-27T00:00:00Z"}]}),
            "spec.blackouts[0].start",
            "RFC 3339",
        ),
        (
            json!({"drain": {"timeout": "ten minutes"}}),
            "spec.drain.timeout",
            "duration",
        ),
        (
            json!({"drain": {"timeout": "0s"}}),
            "spec.drain.timeout",
            "longer than zero",
        ),
        (
            json!({"drain": {"timeout": "-5m"}}),
            "spec.drain.timeout",
            "longer than zero",
        ),
        (
            json!({"drain": {"gracePeriodSeconds": -5}}),
            "spec.drain.gracePeriodSeconds",
            "negative",
        ),
        (
            json!({"drain": {"backoff": {"initial": "10m", "max": "1m"}}}),
            "spec.drain.backoff.max",
            "shorter than initial",
        ),
        (
            json!({"drain": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Like"}]}}}),
            "spec.drain.podSelector.matchExpressions[0].operator",
            "unknown operator",
        ),
        (
            json!({"health": {"readyTimeout": "soon"}}),
            "spec.health.readyTimeout",
            "duration",
        ),
        (
            json!({"health": {"requiredDaemonSets": ["kube-proxy"]}}),
            "spec.health.requiredDaemonSets[0]",
            "namespace/name",
        ),
        (
            json!({"nodeSelector": {"matchLabels": {"bad key!": "x"}}}),
            "spec.nodeSelector.matchLabels[bad key!]",
            "label key",
        ),
        (
            json!({"nodeSelector": {"matchExpressions": [{"key": "zone", "operator": "In", "values": []}]}}),
            "spec.nodeSelector.matchExpressions[0].values",
            "at least one value",
        ),
        (
            json!({"blockers": {"podSelectors": [{}]}}),
            "spec.blockers.podSelectors[0]",
            "every pod",
        ),
        (
            json!({"blockers": {"prometheus": {"url": "prometheus:9090"}}}),
            "spec.blockers.prometheus.url",
            "http(s) URL",
        ),
        (
            json!({"blockers": {"prometheus": {"url": "http://p:9090", "alertFilter": "(unclosed"}}}),
            "spec.blockers.prometheus.alertFilter",
            "regular expression",
        ),
        (
            json!({"blockers": {"prometheus": {"url": "http://p:9090", "alertFilterMatchOnly": true}}}),
            "spec.blockers.prometheus.alertFilterMatchOnly",
            "needs alertFilter",
        ),
        (
            json!({"upgrade": {"kubernetesVersion": "latest"}}),
            "spec.upgrade.kubernetesVersion",
            "not a Kubernetes version",
        ),
        (
            json!({"upgrade": {"holds": [""]}}),
            "spec.upgrade.holds[0]",
            "empty",
        ),
        (
            json!({"upgrade": {"holds": ["openssl libssl3"]}}),
            "spec.upgrade.holds[0]",
            "whitespace",
        ),
        (
            json!({"reboot": {"sentinelFiles": ["var/run/reboot-required"]}}),
            "spec.reboot.sentinelFiles[0]",
            "absolute",
        ),
        (
            json!({"reboot": {"command": [""]}}),
            "spec.reboot.command[0]",
            "empty",
        ),
    ];
    for (input, field, why) in cases {
        let errors = errors(input.clone());
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.message.contains(why)),
            "{input}: expected {field}: ...{why}..., got {errors:?}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let errors = errors(json!({
        "maxUnavailable": "0%",
        "windows": [{"start": "24:00", "end": "01:00", "timeZone": "Nowhere"}],
        "drain": {"timeout": "x"},
        "maxFailures": -3,
    }));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.maxUnavailable",
            "spec.windows[0].start",
            "spec.windows[0].timeZone",
            "spec.drain.timeout",
            "spec.maxFailures",
        ]
    );
    assert_eq!(
        errors[1].to_string(),
        "spec.windows[0].start: \"24:00\" is not a time of day HH:MM (00:00 to 23:59)"
    );
}

#[test]
fn defaults_and_parsed_values() {
    let p = validate(&MaintenancePolicySpec::default()).expect("defaults are valid");
    assert_eq!(p.max_unavailable, MaxUnavailable::Count(1));
    assert_eq!(p.max_failures, 1);
    assert_eq!(p.drain.timeout, SignedDuration::from_mins(15));
    assert_eq!(p.drain.grace_period_seconds, None);
    assert_eq!(p.reboot.sentinel_files, None, "unset: the agent's own");
    assert!(p.reboot.command.is_empty(), "unset: the agent's own");
    assert!(p.windows.is_empty() && p.blackouts.is_empty());
    assert_eq!(p.control_plane.max_unavailable, 1);
    assert!(!p.control_plane.allow_etcd_quorum_loss);

    let p = validate(&spec(json!({
        "controlPlane": {"maxUnavailable": 2, "allowEtcdQuorumLoss": true},
    })))
    .expect("valid");
    assert_eq!(p.control_plane.max_unavailable, 2);
    assert!(p.control_plane.allow_etcd_quorum_loss);

    let p = validate(&spec(json!({
        "maxUnavailable": "25%",
        "maxFailures": 0,
        "drain": {"timeout": "1h30m", "gracePeriodSeconds": -1, "backoff": {"initial": "30s", "max": "4m"}},
        "upgrade": {"kubernetesVersion": "v1.33.2"},
        "reboot": {"sentinelFiles": []},
        "health": {"requiredDaemonSets": ["kube-system/kube-proxy"]},
        "windows": [{"days": ["Fri"], "start": "22:00", "end": "02:00", "timeZone": "Europe/Berlin"}],
    })))
    .expect("valid");
    assert_eq!(p.max_unavailable, MaxUnavailable::Percent(25));
    assert_eq!(p.max_failures, 0);
    assert!(!p.circuit_open(100), "maxFailures 0 turns the breaker off");
    assert_eq!(p.drain.timeout, SignedDuration::from_mins(90));
    assert_eq!(p.drain.grace_period_seconds, None);
    assert_eq!(
        p.upgrade.kubernetes_version,
        Some(KubeVersion::new(1, 33, 2))
    );
    assert_eq!(p.reboot.sentinel_files, Some(vec![]), "explicitly off");
    assert_eq!(
        p.health.required_daemon_sets,
        [NamespacedName::new("kube-system", "kube-proxy")]
    );
    assert_eq!(p.windows[0].zone_name(), "Europe/Berlin");
    let backoff = p.drain.backoff;
    let delays: Vec<i64> = (0..5).map(|a| backoff.delay(a).as_secs()).collect();
    assert_eq!(delays, [30, 60, 120, 240, 240]);
    assert_eq!(backoff.delay(u32::MAX).as_secs(), 240);
}

#[test]
fn max_unavailable_percent_rounds_down_but_never_below_one() {
    let pct = MaxUnavailable::Percent(25);
    assert_eq!(pct.resolve(10), 2);
    assert_eq!(pct.resolve(3), 1);
    assert_eq!(pct.resolve(0), 1);
    assert_eq!(pct.resolve(5000), 1250);
    assert_eq!(MaxUnavailable::Percent(100).resolve(7), 7);
    assert_eq!(MaxUnavailable::Count(3).resolve(1), 3);
}

#[test]
fn circuit_breaker_and_alert_filter() {
    let p = validate(&spec(json!({
        "maxFailures": 2,
        "blockers": {"prometheus": {"url": "https://prom.example:9090", "alertFilter": "^Watchdog$"}},
    })))
    .expect("valid");
    assert!(!p.circuit_open(1));
    assert!(p.circuit_open(2));
    let filter = &p.blockers.prometheus.as_ref().expect("configured").filter;
    assert!(!filter.blocks("Watchdog"), "filtered alerts are ignored");
    assert!(filter.blocks("NodeDown"));

    let p = validate(&spec(json!({
        "blockers": {
            "prometheus": {"url": "http://p:9090", "alertFilter": "^Critical", "alertFilterMatchOnly": true},
            "podSelectors": [{"matchLabels": {"rota.dev/block": "true"}}],
        },
    })))
    .expect("valid");
    let filter = &p.blockers.prometheus.as_ref().expect("configured").filter;
    assert!(filter.blocks("CriticalDiskFull"));
    assert!(!filter.blocks("Watchdog"));
    let blocking = [("rota.dev/block".to_owned(), "true".to_owned())].into();
    assert!(p.blockers.blocks_pod(&blocking));
    assert!(!p.blockers.blocks_pod(&Default::default()));
}
