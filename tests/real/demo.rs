//! `rota-sim demo --control-plane real`, as a user runs it: the `rota-sim` binary of this build
//! on six nodes (three control-plane nodes) of the real control plane, judged by its exit
//! status and what it prints (the independent monitor's verdict). Fails under `CI=true` when
//! `tests/control-plane/build.sh` has not been run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;

use rota_tests::control_plane::binaries_for_test;
use rota_tests::shipped::workspace_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_the_real_control_plane() {
    if binaries_for_test().is_none() {
        return;
    }
    let run = tokio::process::Command::new(workspace_binary("rota-sim", "rota-sim"))
        .args(["demo", "--control-plane", "real"])
        .args(["--nodes", "6", "--max-unavailable", "2", "--timeout", "10m"])
        .env_remove("ROTA_DEMO_CONTROL_PLANE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{stderr}");
    for expected in [
        "rota installed from deploy/",
        "6 nodes registered",
        "PDB violations: 0",
        "most control-plane nodes unavailable at once: 1",
        "reboots seen: 6 on 6 nodes",
        "lost track: no",
        "all 6 nodes done in",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }

    // What the emulator alone can do is refused with a clear message, and nothing runs.
    let refused = tokio::process::Command::new(workspace_binary("rota-sim", "rota-sim"))
        .args(["demo", "--control-plane", "real", "--compare"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("runs rota only"), "{stderr}");
}
