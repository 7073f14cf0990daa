//! The `rota-sim` binary: `demo --compare` on a small cluster prints rota's numbers beside the
//! kured model's (at rota's concurrency and at one node) and the ratios, writes the same numbers as JSON, and exits 0 when every invariant held.

use std::process::Command;

#[test]
fn demo_compare_prints_both_makespans_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_rota-sim"))
        .args(["demo", "--nodes", "6", "--seed", "3", "--compare"])
        .args(["--kured-period", "3s", "--timeout", "5m", "--report"])
        .arg(&report)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("makespan: rota"), "{stdout}");
    assert!(stdout.contains("× as long as rota"), "{stdout}");
    assert!(
        stdout.contains("lower bound: max(longest cycle"),
        "{stdout}"
    );
    assert!(
        stdout.contains("measured-cycle bound") && stdout.contains("= ceil(6 / 3) × "),
        "{stdout}"
    );
    // Not a terminal: plain progress lines, no cursor movement.
    assert!(stdout.contains("[rota "), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "{stdout}");

    // kured at rota's concurrency (3) and at its own default (1), each named with its period.
    assert!(
        stdout.contains("kured (concurrency 3, period 3 s)")
            && stdout.contains("kured (concurrency 1, period 3 s)"),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["rota"]["scheduler"], "rota");
    let kured = json["kured"].as_array().unwrap();
    assert_eq!(kured.len(), 2, "{json}");
    for report in std::iter::once(&json["rota"]).chain(kured.iter().map(|k| &k["report"])) {
        assert_eq!(report["nodesDone"], 6, "{json}");
        assert_eq!(report["pdbViolations"], 0, "{json}");
    }
    for k in kured {
        let ratio = k["overRotaMakespan"].as_f64().unwrap();
        let expected = k["report"]["makespanSeconds"].as_f64().unwrap()
            / json["rota"]["makespanSeconds"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9, "{json}");
    }
}

#[test]
fn bad_flags_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_rota-sim"))
        .args(["demo", "--api-error-rate", "3"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("between 0 and 1"));
}
