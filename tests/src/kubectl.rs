//! The real `kubectl` — the one built with the control plane, at its pinned version — pointed at
//! an API server (emulated or real), in a throw-away home of its own (its kubeconfig and
//! discovery cache), as the kubectl suites and an on-call engineer's commands in the e2e suites
//! run it.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::control_plane::{Binaries, binaries_for_test};

/// A `kubectl` home: a kubeconfig for one API server and a discovery cache.
#[derive(Debug)]
pub struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    binary: PathBuf,
}

impl Kubectl {
    /// A home whose kubeconfig is `kubeconfig` (the API server's own, e.g.
    /// `ServerHandle::kubeconfig`). Panics, saying how to build it, when the pinned `kubectl`
    /// is not built (`tests/control-plane/build.sh`).
    pub fn new(kubeconfig: &str) -> Self {
        let binary = match Binaries::find() {
            Ok(binaries) => binaries.kubectl(),
            Err(e) => panic!("kubectl: {e}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();
        Kubectl {
            dir,
            kubeconfig: path,
            binary,
        }
    }

    /// For a suite: [`Kubectl::new`], or `None` when the pinned kubectl is not built and the
    /// developer asked to skip such suites ([`Binaries::for_test`]).
    pub fn for_test(kubeconfig: &str) -> Option<Self> {
        binaries_for_test().map(|_| Kubectl::new(kubeconfig))
    }

    /// The same kubectl and home as the set-up steps the demo shares with the suites take it.
    pub fn shared(&self) -> rota_sim::real::rollout::Kubectl {
        rota_sim::real::rollout::Kubectl::new(&self.binary, &self.kubeconfig, self.dir.path())
    }

    /// The home's directory (for manifests the test writes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl ARGS`, not started; killed when dropped.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        // Keep kubectl's discovery cache inside the test's directory.
        cmd.env("HOME", self.dir.path())
            .env("KUBECACHEDIR", self.dir.path().join("cache"));
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl ARGS` within a minute, requiring success; its stdout.
    pub async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("kubectl timed out")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `kubectl wait --for=condition=Established` on the CustomResourceDefinitions `crds`
    /// (their names, e.g. `maintenancepolicies.rota.dev`), for up to a minute.
    pub async fn wait_established(&self, crds: &[&str]) -> String {
        let names: Vec<String> = crds.iter().map(|crd| format!("crd/{crd}")).collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        self.run(&args).await
    }
}
