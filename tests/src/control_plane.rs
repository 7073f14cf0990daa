//! The real control plane ([`rota_sim::real::control_plane`]) as the suites use it: a missing
//! build fails the suite (or skips it when the developer asked), and conditions are awaited
//! with a deadline that fails the test.

pub use rota_sim::real::control_plane::*;

use std::time::Duration;

use crate::prerequisites;

/// The built binaries, or `None` when they are missing and the developer asked to skip such
/// suites ([`prerequisites::SKIP_CONTROL_PLANE`]); otherwise a missing control plane fails the
/// test, saying how to build it.
pub fn binaries_for_test() -> Option<Binaries> {
    match Binaries::find() {
        Ok(binaries) => Some(binaries),
        Err(e) => {
            prerequisites::skip_or_fail(
                "the real control plane's suite",
                &e.to_string(),
                prerequisites::SKIP_CONTROL_PLANE,
            );
            None
        }
    }
}

/// How long [`eventually`] waits for one condition.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// Polls `check` every 200 ms until it returns `Some` ([`rota_sim::real::rollout::poll`]);
/// panics with `what` after [`EVENTUALLY`]. For tests: state in the real API server, read with
/// its clients.
#[allow(clippy::panic)]
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> F,
) -> T {
    match rota_sim::real::rollout::poll(what, EVENTUALLY, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}
