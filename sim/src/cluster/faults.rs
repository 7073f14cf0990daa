//! Every fault the simulation can inject, in one configuration for the CLI, the demo and the
//! end-to-end tests: nodes that never come back from a reboot, kubelets that fail after an
//! upgrade or after a reboot, `kubeadm upgrade apply` failing on a node, and (applied to the
//! HTTP layer) API errors, latency and dropped watches.
//!
//! The configuration can change while the cluster runs ([`crate::cluster::ClusterHandle::set_faults`]);
//! node faults are read when the node reboots or its kubelet starts.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::apiserver::{FaultConfig, Faults as ApiFaults};

/// The faults to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Nodes that stay down after a reboot (until
    /// [`crate::cluster::ClusterHandle::power_on`]).
    pub never_return: BTreeSet<String>,
    /// Nodes whose kubelet stays NotReady once it starts with a kubelet version other than the
    /// one the node started with (a broken kubelet upgrade).
    pub kubelet_fails_after_upgrade: BTreeSet<String>,
    /// Nodes whose kubelet stays NotReady once the node has rebooted (a kernel or a
    /// configuration the boot picks up breaks it), whatever its version.
    pub kubelet_fails_after_reboot: BTreeSet<String>,
    /// Nodes on which `kubeadm upgrade apply` fails (exit 1, the control plane left as it was,
    /// as kubeadm rolls its static pod manifests back).
    pub kubeadm_apply_fails: BTreeSet<String>,
    /// Errors and latency of the API server's HTTP layer.
    pub api: FaultConfig,
    /// Close every open watch stream this often.
    pub drop_watches_every: Option<Duration>,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether `node` stays down after a reboot.
    pub fn never_returns(&self, node: &str) -> bool {
        self.never_return.contains(node)
    }

    /// Whether `node`'s kubelet fails after an upgrade.
    pub fn kubelet_fails(&self, node: &str) -> bool {
        self.kubelet_fails_after_upgrade.contains(node)
    }

    /// Whether `node`'s kubelet fails once the node has rebooted.
    pub fn kubelet_fails_after_reboot(&self, node: &str) -> bool {
        self.kubelet_fails_after_reboot.contains(node)
    }

    /// Whether `kubeadm upgrade apply` fails on `node`.
    pub fn kubeadm_apply_fails(&self, node: &str) -> bool {
        self.kubeadm_apply_fails.contains(node)
    }

    /// Sets `kubeadm upgrade apply` to fail on `node`.
    pub fn with_kubeadm_apply_failure(mut self, node: &str) -> Self {
        self.kubeadm_apply_fails.insert(node.to_string());
        self
    }

    /// Sets `node`'s kubelet to fail after the node's next reboot.
    pub fn with_kubelet_failure_after_reboot(mut self, node: &str) -> Self {
        self.kubelet_fails_after_reboot.insert(node.to_string());
        self
    }

    /// Sets `node` to stay down after its next reboot.
    pub fn with_never_return(mut self, node: &str) -> Self {
        self.never_return.insert(node.to_string());
        self
    }

    /// Sets `node`'s kubelet to fail after an upgrade.
    pub fn with_kubelet_failure(mut self, node: &str) -> Self {
        self.kubelet_fails_after_upgrade.insert(node.to_string());
        self
    }
}

/// Keeps the API server's fault configuration in step with `faults` and drops its watches
/// periodically when asked, until `cancel`.
pub(crate) async fn drive_api_faults(
    mut faults: watch::Receiver<Faults>,
    api: ApiFaults,
    cancel: CancellationToken,
) {
    loop {
        let current = faults.borrow_and_update().clone();
        api.set(current.api.clone());
        let period = current.drop_watches_every.filter(|d| !d.is_zero());
        let tick = async {
            match period {
                Some(period) => tokio::time::sleep(period).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick => api.drop_watches(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_faults() {
        let f = Faults::none()
            .with_never_return("w1")
            .with_kubelet_failure("w2")
            .with_kubelet_failure_after_reboot("w3")
            .with_kubeadm_apply_failure("cp-1");
        assert!(f.kubeadm_apply_fails("cp-1") && !f.kubeadm_apply_fails("w1"));
        assert!(f.kubelet_fails_after_reboot("w3"));
        assert!(!f.kubelet_fails("w3") && !f.kubelet_fails_after_reboot("w2"));
        assert!(f.never_returns("w1"));
        assert!(!f.never_returns("w2"));
        assert!(f.kubelet_fails("w2"));
        assert!(!f.kubelet_fails("w1"));
    }

    #[tokio::test]
    async fn api_faults_follow_the_configuration() {
        let (tx, rx) = watch::channel(Faults::none());
        let api = ApiFaults::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(drive_api_faults(rx, api.clone(), cancel.clone()));
        let wanted = FaultConfig {
            error_rate: 0.5,
            ..FaultConfig::default()
        };
        tx.send_modify(|f| f.api = wanted.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while api.config() != wanted {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fault config not applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        task.await.unwrap();
    }
}
