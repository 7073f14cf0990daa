//! Maintenance windows and blackouts: midnight crossing, time zones, DST days, blackout edges.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use jiff::Timestamp;
use rota_core::policy::window::{ClosedReason, WindowState};
use rota_core::policy::{MaintenancePolicySpec, ValidatedPolicy, validate};
use serde_json::json;

fn policy(value: serde_json::Value) -> ValidatedPolicy {
    let spec: MaintenancePolicySpec = serde_json::from_value(value).expect("spec deserializes");
    validate(&spec).expect("spec is valid")
}

fn ts(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn open_at(p: &ValidatedPolicy, at: &str) -> bool {
    p.window_state(ts(at)).open
}

#[test]
fn no_windows_means_always_open() {
    let p = policy(json!({}));
    assert_eq!(
        p.window_state(ts("2025-06-01T12:00:00Z")),
        WindowState {
            open: true,
            reason: None,
            next_open: None
        }
    );
}

#[test]
fn window_crossing_midnight_belongs_to_its_start_day() {
    // 2025-06-06 is a Friday.
    let p = policy(json!({"windows": [{"days": ["Fri"], "start": "22:00", "end": "02:00"}]}));
    let table = [
        ("2025-06-06T21:59:59Z", false),
        ("2025-06-06T22:00:00Z", true),
        ("2025-06-06T23:59:59Z", true),
        ("2025-06-07T01:00:00Z", true),
        ("2025-06-07T01:59:59Z", true),
        ("2025-06-07T02:00:00Z", false),
        ("2025-06-07T22:30:00Z", false),
        ("2025-06-08T01:00:00Z", false),
        ("2025-06-05T23:00:00Z", false),
    ];
    for (at, want) in table {
        assert_eq!(open_at(&p, at), want, "{at}");
    }
    let state = p.window_state(ts("2025-06-09T10:00:00Z"));
    assert_eq!(state.reason, Some(ClosedReason::OutsideWindows));
    assert_eq!(state.next_open, Some(ts("2025-06-13T22:00:00Z")));
}

#[test]
fn end_at_midnight_crosses_midnight_and_days_default_to_every_day() {
    let p = policy(json!({"windows": [{"start": "20:00", "end": "00:00"}]}));
    assert!(open_at(&p, "2025-06-03T23:59:00Z"));
    assert!(!open_at(&p, "2025-06-04T00:00:00Z"));
    assert_eq!(
        p.window_state(ts("2025-06-04T00:00:00Z")).next_open,
        Some(ts("2025-06-04T20:00:00Z"))
    );
}

#[test]
fn days_are_evaluated_in_the_window_time_zone() {
    // 23:30 UTC on Monday 2025-06-02 is 08:30 on Tuesday in Tokyo.
    let p = policy(json!({"windows": [
        {"days": ["Tue"], "start": "08:00", "end": "09:00", "timeZone": "Asia/Tokyo"},
    ]}));
    assert!(open_at(&p, "2025-06-02T23:30:00Z"));
    assert!(!open_at(&p, "2025-06-03T08:30:00Z"));
    // New York in summer is UTC-4: Mon 09:00-17:00 local is 13:00-21:00 UTC.
    let p = policy(json!({"windows": [
        {"days": ["Mon"], "start": "09:00", "end": "17:00", "timeZone": "America/New_York"},
    ]}));
    assert!(!open_at(&p, "2025-06-02T12:59:00Z"));
    assert!(open_at(&p, "2025-06-02T13:00:00Z"));
    assert!(open_at(&p, "2025-06-02T20:59:00Z"));
    assert!(!open_at(&p, "2025-06-02T21:00:00Z"));
    // ... and UTC-5 in winter.
    assert!(!open_at(&p, "2025-12-01T13:30:00Z"));
    assert!(open_at(&p, "2025-12-01T14:00:00Z"));
}

#[test]
fn spring_forward_skipped_hour_shortens_the_window() {
    // Berlin, 2025-03-30: clocks jump from 02:00 CET to 03:00 CEST (01:00 UTC).
    let p = policy(json!({"windows": [
        {"start": "02:00", "end": "04:00", "timeZone": "Europe/Berlin"},
    ]}));
    // The day before: 02:00-04:00 CET = 01:00-03:00 UTC.
    assert!(open_at(&p, "2025-03-29T01:00:00Z"));
    assert!(open_at(&p, "2025-03-29T02:59:00Z"));
    // On the DST day, 02:00 does not exist; the window runs 03:00-04:00 CEST = 01:00-02:00 UTC.
    assert!(!open_at(&p, "2025-03-30T00:59:00Z"));
    assert!(open_at(&p, "2025-03-30T01:00:00Z"));
    assert!(open_at(&p, "2025-03-30T01:59:00Z"));
    assert!(!open_at(&p, "2025-03-30T02:00:00Z"));
    assert_eq!(
        p.window_state(ts("2025-03-29T23:00:00Z")).next_open,
        Some(ts("2025-03-30T01:00:00Z"))
    );
    // A window lying entirely in the skipped hour moves with the clock: 03:15-03:45 CEST.
    let p = policy(json!({"windows": [
        {"start": "02:15", "end": "02:45", "timeZone": "Europe/Berlin"},
    ]}));
    let state = p.window_state(ts("2025-03-29T23:00:00Z"));
    assert!(!state.open);
    assert_eq!(state.next_open, Some(ts("2025-03-30T01:15:00Z")));
    assert!(open_at(&p, "2025-03-30T01:44:00Z"));
    assert!(!open_at(&p, "2025-03-30T01:45:00Z"));
}

#[test]
fn fall_back_repeated_hour_lengthens_the_window() {
    // Berlin, 2025-10-26: clocks go from 03:00 CEST back to 02:00 CET (01:00 UTC).
    let p = policy(json!({"windows": [
        {"start": "02:00", "end": "04:00", "timeZone": "Europe/Berlin"},
    ]}));
    // 02:00 CEST = 00:00 UTC; 04:00 CET = 03:00 UTC: three real hours.
    assert!(!open_at(&p, "2025-10-25T23:59:00Z"));
    assert!(open_at(&p, "2025-10-26T00:00:00Z"));
    assert!(open_at(&p, "2025-10-26T02:59:00Z"));
    assert!(!open_at(&p, "2025-10-26T03:00:00Z"));
}

#[test]
fn blackout_edges_chains_and_reopening() {
    let p = policy(json!({
        "windows": [{"start": "00:00", "end": "12:00"}],
        "blackouts": [
            {"start": "2025-12-20T00:00:00Z", "end": "2025-12-24T06:00:00Z", "reason": "freeze"},
            {"start": "2025-12-24T00:00:00Z", "end": "2025-12-27T00:00:00Z", "reason": "holidays"},
        ],
    }));
    assert!(open_at(&p, "2025-12-19T11:59:59Z"));
    let state = p.window_state(ts("2025-12-20T00:00:00Z"));
    assert!(!state.open, "start is inclusive");
    assert_eq!(
        state.reason,
        Some(ClosedReason::Blackout {
            reason: "freeze".into(),
            until: ts("2025-12-27T00:00:00Z")
        }),
        "until is the end of the chain of overlapping blackouts"
    );
    assert_eq!(state.next_open, Some(ts("2025-12-27T00:00:00Z")));
    assert!(open_at(&p, "2025-12-27T00:00:00Z"), "end is exclusive");

    // A blackout ending outside the window: the next opening is the next window start.
    let p = policy(json!({
        "windows": [{"start": "22:00", "end": "02:00"}],
        "blackouts": [{"start": "2025-12-01T00:00:00Z", "end": "2025-12-02T03:00:00Z"}],
    }));
    let state = p.window_state(ts("2025-12-01T23:00:00Z"));
    assert_eq!(state.next_open, Some(ts("2025-12-02T22:00:00Z")));
    // A blackout ending inside a window reopens at its end.
    let state = p.window_state(ts("2025-12-02T01:00:00Z"));
    assert!(!state.open);
    let p2 = policy(json!({
        "windows": [{"start": "22:00", "end": "02:00"}],
        "blackouts": [{"start": "2025-12-01T00:00:00Z", "end": "2025-12-01T23:00:00Z"}],
    }));
    assert_eq!(
        p2.window_state(ts("2025-12-01T12:00:00Z")).next_open,
        Some(ts("2025-12-01T23:00:00Z"))
    );
}

#[test]
fn long_blackout_pushes_next_open_past_it() {
    let p = policy(json!({
        "windows": [{"days": ["Sat"], "start": "01:00", "end": "05:00"}],
        "blackouts": [{"start": "2025-07-01T00:00:00Z", "end": "2025-09-01T00:00:00Z"}],
    }));
    let state = p.window_state(ts("2025-07-15T00:00:00Z"));
    // 2025-09-06 is the first Saturday after the blackout.
    assert_eq!(state.next_open, Some(ts("2025-09-06T01:00:00Z")));
}
