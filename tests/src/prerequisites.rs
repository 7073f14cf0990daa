//! What a suite does when this machine lacks what it needs (root, `debootstrap`, the built
//! control plane or helm): it fails, saying what is missing and how to get it. A developer may
//! skip such suites on purpose by setting the suite's variable to `1` (`ROTA_SKIP_ROOT_SUITES`,
//! `ROTA_SKIP_CONTROL_PLANE`, `ROTA_SKIP_VM_SUITE`); the skip is then written straight to the terminal, past the
//! test harness's output capture, so `cargo test` shows it. Under `CI` nothing is skipped.
//!
//! The agent's root suites include this file by path (`agent/tests/it/common`), so both crates
//! decide the same way.

use std::io::Write;

/// The variable that skips the suites needing root and a Debian bootstrap.
pub const SKIP_ROOT_SUITES: &str = "ROTA_SKIP_ROOT_SUITES";
/// The variable that skips the VM suite (root, qemu, debootstrap).
pub const SKIP_VM_SUITE: &str = "ROTA_SKIP_VM_SUITE";
/// The variable that skips the suites needing what `tests/control-plane/build.sh` builds: the
/// real control plane, `kubectl` and `helm`.
pub const SKIP_CONTROL_PLANE: &str = "ROTA_SKIP_CONTROL_PLANE";

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| means_ci(&v))
}

fn means_ci(value: &str) -> bool {
    !matches!(value.trim(), "" | "0" | "false")
}

/// `suite` cannot run here because of `why`: returns (the caller skips) only when the
/// developer asked for the skip with `skip_var=1` outside CI; panics, saying so, otherwise.
pub fn skip_or_fail(suite: &str, why: &str, skip_var: &str) {
    let asked = std::env::var(skip_var).is_ok_and(|v| v == "1");
    if in_ci() {
        panic!("{suite} cannot run: {why}. CI runs every suite (`{skip_var}` is ignored).");
    }
    if !asked {
        panic!("{suite} cannot run: {why}. Fix that, or set {skip_var}=1 to skip it.");
    }
    // Straight to the terminal: libtest captures only `print!`/`eprint!`.
    let _ = writeln!(std::io::stderr(), "SKIPPED {suite}: {why} ({skip_var}=1)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_counts_as_ci() {
        for (value, ci) in [
            ("true", true),
            ("1", true),
            ("", false),
            ("false", false),
            ("0", false),
        ] {
            assert_eq!(means_ci(value), ci, "CI={value:?}");
        }
    }
}
