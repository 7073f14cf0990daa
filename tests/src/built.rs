//! What `tests/control-plane/build.sh` built from Go modules at pinned versions: the real control
//! plane and helm, each in its own directory of the cache, `<root>/<versions>/bin`, complete
//! once the script wrote `<root>/<versions>/complete`. The root is `$ROTA_CONTROL_PLANE_DIR`, else
//! `/var/cache/rota-test/control-plane`.
//!
//! Only `std`: the chart's suite in `rota-coordinator` includes this file by path.

use std::path::PathBuf;

/// A build that is missing or incomplete.
#[derive(Debug)]
pub struct NotBuilt {
    /// Where the binaries were looked for.
    pub dir: PathBuf,
    /// What is missing.
    pub missing: String,
}

/// The bin directory of the build `versions` (e.g. `v1.34.4-v3.6.16`, `helm-v3.21.4`) when
/// it holds every one of `names` and the build is complete.
pub fn find(versions: &str, names: &[&str]) -> Result<PathBuf, NotBuilt> {
    let root = root().join(versions);
    let dir = root.join("bin");
    let mut missing: Vec<String> = names
        .iter()
        .filter(|name| !dir.join(name).is_file())
        .map(|name| (*name).to_owned())
        .collect();
    if !root.join("complete").is_file() {
        missing.push("the stamp of a complete build".to_owned());
    }
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(NotBuilt {
            dir,
            missing: missing.join(", "),
        })
    }
}

/// The cache root: `$ROTA_CONTROL_PLANE_DIR`, else `/var/cache/rota-test/control-plane`.
fn root() -> PathBuf {
    std::env::var_os("ROTA_CONTROL_PLANE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/rota-test/control-plane"))
}

/// The version a go.mod requires of `module` (in a one-line `require` or a `require` block).
pub fn go_mod_pin(go_mod: &str, module: &str) -> Option<String> {
    go_mod
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//"))
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["require", m, version, ..] | [m, version, ..] if *m == module => {
                    Some((*version).to_owned())
                }
                _ => None,
            }
        })
}

/// The cache directory name of the pinned control plane, `<kubernetes>-<etcd>` (e.g.
/// `v1.34.4-v3.6.16`), from the wrapper modules' go.mod files.
pub fn control_plane_versions() -> Result<String, String> {
    let kubernetes = go_mod_pin(
        include_str!("../control-plane/kubernetes/go.mod"),
        "k8s.io/kubernetes",
    )
    .ok_or("tests/control-plane/kubernetes/go.mod pins no version of k8s.io/kubernetes")?;
    let etcd = go_mod_pin(
        include_str!("../control-plane/etcd/go.mod"),
        "go.etcd.io/etcd/server/v3",
    )
    .ok_or("tests/control-plane/etcd/go.mod pins no version of go.etcd.io/etcd/server/v3")?;
    Ok(format!("{kubernetes}-{etcd}"))
}

/// The `kubectl` of the pinned control plane (not one the machine happens to have), or why it
/// cannot be used and how to build it.
pub fn kubectl() -> Result<PathBuf, String> {
    let versions = control_plane_versions()?;
    match find(&versions, &["kubectl"]) {
        Ok(dir) => Ok(dir.join("kubectl")),
        Err(NotBuilt { dir, missing }) => Err(format!(
            "kubectl {versions} is not built ({missing} missing in {}): run              tests/control-plane/build.sh",
            dir.display()
        )),
    }
}

/// The `helm` that `tests/control-plane/helm/go.mod` pins, or why it cannot be used and how
/// to build it.
pub fn helm() -> Result<PathBuf, String> {
    let version = go_mod_pin(
        include_str!("../control-plane/helm/go.mod"),
        "helm.sh/helm/v3",
    )
    .ok_or("tests/control-plane/helm/go.mod pins no version of helm.sh/helm/v3")?;
    match find(&format!("helm-{version}"), &["helm"]) {
        Ok(dir) => Ok(dir.join("helm")),
        Err(NotBuilt { dir, missing }) => Err(format!(
            "helm {version} is not built ({missing} missing in {}): run \
             tests/control-plane/build.sh (it builds helm from its Go module once, into that \
             cache; set ROTA_CONTROL_PLANE_DIR to use another cache root)",
            dir.display()
        )),
    }
}

/// The directory holding the Prometheus operator's CRDs for ServiceMonitor and PrometheusRule
/// (the kinds of `deploy/monitoring`) at the version `tests/control-plane/prometheus-operator.version`
/// pins, or why it cannot be used and how to fetch them. (The chart's suite in
/// `rota-coordinator`, which includes this file, does not need them.)
#[allow(dead_code)]
pub fn monitoring_crds() -> Result<PathBuf, String> {
    let version = include_str!("../control-plane/prometheus-operator.version").trim();
    let name = format!("prometheus-operator-crds-{version}");
    let files = [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ];
    let dir = root().join(&name);
    if dir.join("complete").is_file() && files.iter().all(|f| dir.join(f).is_file()) {
        Ok(dir)
    } else {
        Err(format!(
            "the Prometheus operator's CRDs {version} are not in {}: run \
             tests/control-plane/build.sh (it fetches them from their Go module once)",
            dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pin_from_a_require_block() {
        let go_mod = "module x\n\nrequire (\n\tk8s.io/kubernetes v1.34.4\n\tfoo v1\n)\n";
        assert_eq!(
            go_mod_pin(go_mod, "k8s.io/kubernetes").as_deref(),
            Some("v1.34.4")
        );
        assert_eq!(go_mod_pin(go_mod, "bar"), None);
    }

    #[test]
    fn reads_a_one_line_require() {
        let go_mod = "module x\n\nrequire helm.sh/helm/v3 v3.21.4 // indirect\n";
        assert_eq!(
            go_mod_pin(go_mod, "helm.sh/helm/v3").as_deref(),
            Some("v3.21.4")
        );
    }
}
