//! `kubeadm upgrade plan|apply|node` on the host, the parsing of the plan's answer, and which
//! exact version a minor target means.

use std::time::Duration;

use crate::detect::upstream_version;
use crate::host::{Host, HostCommand, tail};
use crate::{Error, Result};

/// `(major, minor, patch)` of `1.31.4` / `v1.31.4`.
fn patch_of(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let v = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(v)
}

/// The exact version (`1.31.4`) a target means, given the package versions of kubeadm the
/// repository offers (`1.31.4-1.1`, `1.31.4-150500.1.1`): an exact target must be offered; a
/// minor (`1.31`) is the newest patch of it that is.
pub fn resolve(target: &str, available: &[String]) -> Result<String> {
    let offered: Vec<(u64, u64, u64)> = available
        .iter()
        .filter_map(|v| patch_of(&upstream_version(v)))
        .collect();
    let bare = target.trim_start_matches('v');
    let mut want = bare.split('.').map(str::parse::<u64>);
    let found = match (want.next(), want.next(), want.next(), want.next()) {
        (Some(Ok(major)), Some(Ok(minor)), None, None) => offered
            .iter()
            .filter(|v| (v.0, v.1) == (major, minor))
            .max()
            .copied(),
        (Some(Ok(_)), Some(Ok(_)), Some(Ok(_)), None) => offered
            .iter()
            .find(|v| patch_of(bare) == Some(**v))
            .copied(),
        _ => {
            return Err(Error::Refused(format!(
                "{target:?} is not a Kubernetes version like 1.31.4 or 1.31"
            )));
        }
    };
    match found {
        Some((major, minor, patch)) => Ok(format!("{major}.{minor}.{patch}")),
        None => {
            let mut listed: Vec<String> = available.iter().map(|v| upstream_version(v)).collect();
            listed.sort();
            listed.dedup();
            Err(Error::Refused(format!(
                "the Kubernetes repository offers no kubeadm {target} (it offers: {})",
                if listed.is_empty() {
                    "none".to_owned()
                } else {
                    listed.join(", ")
                }
            )))
        }
    }
}

/// Whether the output of `kubeadm upgrade plan` offers the upgrade to `version` (`1.31.4`):
/// it ends with "You can now apply the upgrade by executing the following command:" and the
/// line `kubeadm upgrade apply v1.31.4`. When it does not, the error carries what it said
/// instead: the versions it found and the upgrades it offers.
pub fn plan_offers(plan: &str, version: &str) -> Result<(), String> {
    let want = format!("v{}", version.trim_start_matches('v'));
    let offered: Vec<&str> = plan
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kubeadm upgrade apply"))
        .collect();
    let offers = offered.iter().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.get(3) == Some(&want.as_str())
    });
    if offers {
        return Ok(());
    }
    let mut relevant: Vec<&str> = plan
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("[upgrade/versions]")
                || l.starts_with("[ERROR")
                || l.starts_with("error")
                || l.contains("Awesome, you're up-to-date")
        })
        .collect();
    relevant.extend(offered.iter().copied());
    let said = if relevant.is_empty() {
        tail(plan, 500)
    } else {
        relevant.join("; ")
    };
    Err(format!(
        "kubeadm upgrade plan does not offer `kubeadm upgrade apply {want}`: {said}"
    ))
}

/// `kubeadm upgrade plan vX.Y.Z`: fails unless it offers the upgrade to `version`.
pub fn plan(host: &dyn Host, version: &str, timeout: Duration) -> Result<()> {
    let cmd =
        HostCommand::new(["kubeadm", "upgrade", "plan", &format!("v{version}")]).timeout(timeout);
    let out = host.run(&cmd)?.check(&cmd)?;
    plan_offers(&out.stdout, version).map_err(Error::Refused)
}

/// `kubeadm upgrade apply vX.Y.Z --yes`.
pub fn apply(host: &dyn Host, version: &str, timeout: Duration) -> Result<()> {
    let cmd = HostCommand::new([
        "kubeadm",
        "upgrade",
        "apply",
        &format!("v{version}"),
        "--yes",
    ])
    .timeout(timeout);
    host.run(&cmd)?.check(&cmd).map(drop)
}

/// `kubeadm upgrade node`.
pub fn node(host: &dyn Host, timeout: Duration) -> Result<()> {
    let cmd = HostCommand::new(["kubeadm", "upgrade", "node"]).timeout(timeout);
    host.run(&cmd)?.check(&cmd).map(drop)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What `kubeadm upgrade plan v1.31.4` prints on a 1.30 control plane (kubeadm 1.31).
    pub(crate) const PLAN: &str = "\
[preflight] Running pre-flight checks.
[upgrade/config] Reading configuration from the cluster...
[upgrade/config] FYI: You can look at this config file with 'kubectl -n kube-system get cm kubeadm-config -o yaml'
[upgrade] Running cluster health checks
[upgrade] Fetching available versions to upgrade to
[upgrade/versions] Cluster version: 1.30.9
[upgrade/versions] kubeadm version: v1.31.4
[upgrade/versions] Target version: v1.31.4
[upgrade/versions] Latest version in the v1.30 series: v1.30.9

Components that must be upgraded manually after you have upgraded the control plane with 'kubeadm upgrade apply':
COMPONENT   NODE     CURRENT   TARGET
kubelet     cp-1     v1.30.9   v1.31.4

Upgrade to the latest stable version:

COMPONENT                 NODE     CURRENT    TARGET
kube-apiserver            cp-1     v1.30.9    v1.31.4
kube-controller-manager   cp-1     v1.30.9    v1.31.4
kube-scheduler            cp-1     v1.30.9    v1.31.4
kube-proxy                         1.30.9     v1.31.4
CoreDNS                            v1.11.1    v1.11.3
etcd                      cp-1     3.5.15-0   3.5.15-0

You can now apply the upgrade by executing the following command:

\tkubeadm upgrade apply v1.31.4

_____________________________________________________________________


The table below shows the current state of component configs as understood by this version of kubeadm.
Configs that have a \"yes\" mark in the \"MANUAL UPGRADE REQUIRED\" column require manual config upgrade or
resetting to kubeadm defaults before a successful upgrade can be performed. The version to manually
upgrade to is denoted in the \"PREFERRED VERSION\" column.

API GROUP                 CURRENT VERSION   PREFERRED VERSION   MANUAL UPGRADE REQUIRED
kubeproxy.config.k8s.io   v1alpha1          v1alpha1            no
kubelet.config.k8s.io     v1beta1           v1beta1             no
_____________________________________________________________________

";

    #[test]
    fn the_plan_offers_its_target() {
        assert_eq!(plan_offers(PLAN, "1.31.4"), Ok(()));
        assert_eq!(plan_offers(PLAN, "v1.31.4"), Ok(()));
        let e = plan_offers(PLAN, "1.31.5").unwrap_err();
        assert!(
            e.contains("does not offer `kubeadm upgrade apply v1.31.5`"),
            "{e}"
        );
        assert!(e.contains("Target version: v1.31.4"), "{e}");
        assert!(e.contains("kubeadm upgrade apply v1.31.4"), "{e}");
        // A prefix is not the version.
        assert!(plan_offers(&PLAN.replace("v1.31.4\n\n___", "v1.31.40\n\n___"), "1.31.4").is_err());
    }

    #[test]
    fn an_up_to_date_plan_offers_nothing() {
        let plan = "\
[upgrade/versions] Cluster version: 1.31.4
[upgrade/versions] kubeadm version: v1.31.4
[upgrade/versions] Target version: v1.31.4
[upgrade/versions] Latest version in the v1.31 series: v1.31.4

Awesome, you're up-to-date! Enjoy!
";
        let e = plan_offers(plan, "1.31.4").unwrap_err();
        assert!(e.contains("Awesome, you're up-to-date"), "{e}");
        // Without any line it knows, the tail of the output.
        let e = plan_offers("something else entirely\n", "1.31.4").unwrap_err();
        assert!(e.contains("something else entirely"), "{e}");
    }

    #[test]
    fn a_minor_resolves_to_its_newest_offered_patch() {
        let apt: Vec<String> = [
            "1.31.10-1.1",
            "1.31.4-1.1",
            "1.31.9-1.1",
            "1.30.9-1.1",
            "1.32.0-1.1",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            resolve("1.31", &apt).unwrap(),
            "1.31.10",
            "numeric, not text order"
        );
        assert_eq!(resolve("v1.30", &apt).unwrap(), "1.30.9");
        assert_eq!(resolve("1.31.4", &apt).unwrap(), "1.31.4");
        let dnf: Vec<String> = ["1.31.4-150500.1.1", "1.31.2-150500.1.1"]
            .map(String::from)
            .to_vec();
        assert_eq!(resolve("1.31", &dnf).unwrap(), "1.31.4");
        let e = resolve("1.31.5", &apt).unwrap_err().to_string();
        assert!(e.contains("offers no kubeadm 1.31.5"), "{e}");
        assert!(e.contains("1.31.10, 1.31.4, 1.31.9"), "{e}");
        assert!(resolve("1.33", &apt).is_err());
        assert!(
            resolve("1.33", &[])
                .unwrap_err()
                .to_string()
                .contains("offers: none")
        );
        assert!(resolve("latest", &apt).is_err());
    }
}
