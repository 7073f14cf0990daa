//! The real hosts' command runner: the re-executed `__host-exec` helper entering a process's
//! namespaces (`NamespaceHost`, here aimed at this test's own process, since PID 1 of a sandbox
//! may not be enterable) and a chroot (`ChrootHost` with the machine's own `/` as its root).
//! The production path, `NamespaceHost` entering PID 1 of a booted machine from the agent's own
//! mount namespace, runs in the VM suite (`tests/vm/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rota_agent::Error;
use rota_agent::host::{ChrootHost, ExitStatus, Host, HostCommand, NamespaceHost};

const AGENT: &str = env!("CARGO_BIN_EXE_rota-agent");

/// Root is needed for setns and chroot: without it the suite fails, unless the developer asked
/// to skip the root suites (`ROTA_SKIP_ROOT_SUITES=1`, outside CI).
fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    crate::common::prerequisites::skip_or_fail(
        "the host execution suite",
        "not running as root",
        crate::common::prerequisites::SKIP_ROOT_SUITES,
    );
    false
}

fn hosts() -> Vec<(&'static str, Box<dyn Host>)> {
    vec![
        (
            "namespaces",
            Box::new(NamespaceHost::with_target(
                std::process::id(),
                PathBuf::from(AGENT),
            )),
        ),
        (
            "chroot",
            Box::new(ChrootHost::with_helper("/", PathBuf::from(AGENT))),
        ),
    ]
}

#[test]
fn commands_report_output_exit_codes_signals_missing_programs_and_timeouts() {
    if !root_or_skip() {
        return;
    }
    for (name, host) in hosts() {
        let out = host
            .run(&HostCommand::new([
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ]))
            .unwrap();
        assert_eq!(out.status, ExitStatus::Exited(3), "{name}");
        assert_eq!(out.stdout, "out\n", "{name}");
        assert_eq!(out.stderr, "err\n", "{name}");

        let env = host
            .run(&HostCommand::new(["sh", "-c", "echo $ROTA_X:$LC_ALL:$HOME"]).env("ROTA_X", "y"))
            .unwrap();
        assert_eq!(
            env.stdout, "y:C:\n",
            "{name}: only PATH, LC_ALL and given variables"
        );

        let killed = host
            .run(&HostCommand::new(["sh", "-c", "kill -9 $$"]))
            .unwrap();
        assert_eq!(killed.status, ExitStatus::Signaled(9), "{name}");

        let missing = host.run(&HostCommand::new(["rota-no-such-program"]));
        assert!(
            matches!(missing, Err(Error::CommandNotFound { .. })),
            "{name}: {missing:?}"
        );

        let slow = host.run(
            &HostCommand::new(["sh", "-c", "sleep 30 & wait"]).timeout(Duration::from_millis(300)),
        );
        assert!(
            matches!(slow, Err(Error::CommandTimedOut { .. })),
            "{name}: {slow:?}"
        );
    }
}

#[test]
fn the_namespace_helper_runs_in_the_target_namespaces() {
    if !root_or_skip() {
        return;
    }
    let host = NamespaceHost::with_target(std::process::id(), PathBuf::from(AGENT));
    let out = host
        .run(&HostCommand::new([
            "readlink",
            "/proc/self/ns/mnt",
            "/proc/self/ns/uts",
        ]))
        .unwrap();
    let mine: Vec<String> = ["mnt", "uts"]
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/self/ns/{n}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), mine);
    // Files go through /proc/PID/root.
    assert!(
        host.exists(Path::new("/proc/sys/kernel/random/boot_id"))
            .unwrap()
    );
    assert_eq!(host.boot_id().unwrap().len(), 36);
    assert!(!host.kernel_release().unwrap().is_empty());
}
