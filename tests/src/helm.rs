//! The real `helm`, the one `tests/control-plane/build.sh` builds at its pinned version, run on
//! rota's chart (`deploy/helm/rota`) as the release `rota` in `rota-system`, with a throw-away
//! home of its own. Only `std` and `tempfile`, with [`crate::built`] and
//! [`crate::prerequisites`]: the chart's suite in `rota-coordinator` includes these three files
//! by path.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{built, prerequisites};

/// The namespace the chart is rendered for.
pub const NAMESPACE: &str = "rota-system";

/// rota's chart.
pub fn chart() -> PathBuf {
    // Both crates that use this file sit one level below the repository's root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/rota")
}

/// The built helm, in a home of its own (its cache, configuration and data directories).
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    /// The built helm; `None` when it is not built and the developer asked to skip such suites
    /// (`ROTA_SKIP_CONTROL_PLANE=1`, outside CI); otherwise a missing helm fails the test,
    /// saying how to build it.
    pub fn for_test() -> Option<Helm> {
        match built::helm() {
            Ok(binary) => Some(Helm {
                binary,
                home: tempfile::tempdir().unwrap(),
            }),
            Err(why) => {
                prerequisites::skip_or_fail(
                    "the Helm chart's checks",
                    &why,
                    prerequisites::SKIP_CONTROL_PLANE,
                );
                None
            }
        }
    }

    /// The built helm with its own cache, configuration and data directories.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"));
        command
    }

    /// `helm COMMAND <chart>` with `values` (YAML or JSON, over the chart's defaults) on stdin:
    /// its stdout when it succeeds, else its stdout and stderr (`helm lint` reports on stdout).
    pub fn run(&self, command: &[&str], values: &str) -> Result<String, String> {
        let mut child = self
            .command()
            .args(command)
            .arg(chart())
            .args(["--namespace", NAMESPACE, "--values", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(values.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if output.status.success() {
            Ok(String::from_utf8(output.stdout).unwrap())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `helm ARGS` on the release in the cluster of `kubeconfig` (no chart, no values: `status`,
    /// `uninstall`): its stdout, or its error. (The chart's suite in `rota-coordinator`, which
    /// includes this file, renders only.)
    #[allow(dead_code)]
    pub fn on_cluster(&self, args: &[&str], kubeconfig: &Path) -> Result<String, String> {
        let output = self
            .command()
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", NAMESPACE])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if output.status.success() {
            Ok(String::from_utf8(output.stdout).unwrap())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `helm template --include-crds` (the CRDs too, as `helm install` applies them): the
    /// manifests, or helm's error.
    pub fn template(&self, values: &str) -> Result<String, String> {
        self.run(&["template", "rota", "--include-crds"], values)
    }

    /// `helm lint --strict`: its report, or its error.
    pub fn lint(&self, values: &str) -> Result<String, String> {
        self.run(&["lint", "--strict"], values)
    }
}
