//! What the node needs: reboot sentinels, kernel drift, pending package upgrades, versions.
//!
//! Every check reports one of three things: "required" (with a reason), "not required", or a
//! detection *error*. An error is never read as "required": a broken check must not make a
//! fleet reboot in a loop (kured issue #976).

pub mod os;
pub mod version;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rota_core::model::NodeFacts;

use crate::host::{ExitStatus, Host, HostCommand, read_text_opt};
use crate::kubernetes::{KubernetesConfig, etcd};
use crate::packages::read_os_release;
use crate::{Error, Result};
use os::OsFamily;
use version::VersionScheme;

/// The sentinel files kured and Debian's `update-notifier-common` use.
pub const DEFAULT_SENTINELS: [&str; 2] = ["/var/run/reboot-required", "/run/reboot-required"];

/// What detection checks, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectConfig {
    /// Files whose existence means "reboot required".
    pub sentinel_files: Vec<PathBuf>,
    /// A command run in the host: exit 0 = reboot required, 1 = not required, anything else
    /// (missing, killed, timed out, other codes) is a detection error.
    pub sentinel_command: Option<Vec<String>>,
    /// Timeout of the sentinel command (and of version probes).
    pub command_timeout: Duration,
    /// Whether to list pending package upgrades.
    pub packages: bool,
    /// Whether to refresh the package lists first (`apt-get update`).
    pub refresh: bool,
    /// Packages held on top of the package manager's own holds (the pool's policy): reported
    /// as held, like those.
    pub holds: Vec<String>,
    /// Where kubeadm's manifests and the etcd snapshots are (the etcd facts), and how
    /// Kubernetes upgrades reach the package repository.
    pub kubernetes: KubernetesConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            sentinel_files: DEFAULT_SENTINELS.iter().map(PathBuf::from).collect(),
            sentinel_command: None,
            command_timeout: Duration::from_secs(30),
            packages: true,
            refresh: false,
            holds: Vec::new(),
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// Runs every check against `host`. Problems land in [`NodeFacts::errors`]; this function
/// itself does not fail.
pub fn detect(host: &dyn Host, config: &DetectConfig) -> NodeFacts {
    let mut facts = NodeFacts {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        ..NodeFacts::default()
    };
    let mut errors = Vec::new();

    match host.boot_id() {
        Ok(id) => facts.boot_id = id,
        Err(e) => errors.push(format!("boot id: {e}")),
    }
    let os = match read_os_release(host) {
        Ok(os) => Some(os),
        Err(e) => {
            errors.push(format!("os-release: {e}"));
            None
        }
    };
    let family = os.as_ref().and_then(os::OsRelease::family);
    facts.os_image = os.map(|o| o.pretty_name).unwrap_or_default();

    let check = reboot_check(host, config, family);
    facts.reboot_reasons = check.reasons;
    facts.reboot_packages = check.packages;
    facts.kernel_running = check.kernel_running;
    facts.kernels_installed = check.kernels_installed;
    errors.extend(check.errors);
    facts.reboot_required = !facts.reboot_reasons.is_empty();

    let pm = host.packages();
    if config.packages {
        match &pm {
            Ok(pm) => {
                facts.package_backend = pm.name().to_string();
                let refreshed = if config.refresh { pm.refresh() } else { Ok(()) };
                match refreshed.and_then(|()| pm.upgradable()) {
                    Ok(mut p) => {
                        crate::packages::mark_held(&mut p, &config.holds);
                        facts.pending_upgrades = p;
                    }
                    Err(e) => errors.push(format!("pending upgrades: {e}")),
                }
            }
            Err(e) => errors.push(format!("package backend: {e}")),
        }
    }
    facts.kubelet_version = kubelet_version(host, config.command_timeout, pm.as_deref().ok());
    facts.container_runtime_version = runtime_version(host, config.command_timeout);
    let k8s = &config.kubernetes;
    match etcd::facts(host, &k8s.manifests, &k8s.etcd) {
        Ok(e) => facts.etcd = e,
        Err(e) => errors.push(format!("etcd: {e}")),
    }
    facts.errors = errors;
    facts
}

/// The result of the reboot checks alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebootCheck {
    /// Why a reboot is required; empty when it is not.
    pub reasons: Vec<String>,
    /// Packages that asked for it (`.pkgs` companions of sentinel files).
    pub packages: Vec<String>,
    /// Release of the running kernel.
    pub kernel_running: String,
    /// Installed kernel releases, oldest first.
    pub kernels_installed: Vec<String>,
    /// Checks that could not run; never reasons.
    pub errors: Vec<String>,
}

/// Sentinel files, the sentinel command, `needs-restarting` and kernel drift. `family`
/// chooses the version ordering of kernel releases (Debian's when unknown).
pub fn reboot_check(
    host: &dyn Host,
    config: &DetectConfig,
    family: Option<OsFamily>,
) -> RebootCheck {
    let mut check = RebootCheck::default();
    match sentinel_files(host, &config.sentinel_files) {
        Ok((reasons, pkgs)) => {
            check.reasons.extend(reasons);
            check.packages = pkgs;
        }
        Err(e) => check.errors.push(format!("sentinel files: {e}")),
    }
    if let Some(argv) = &config.sentinel_command {
        match sentinel_command(host, argv, config.command_timeout) {
            Ok(Some(reason)) => check.reasons.push(reason),
            Ok(None) => {}
            Err(e) => check.errors.push(format!("sentinel command: {e}")),
        }
    }
    match needs_restarting(host, config.command_timeout) {
        Ok(Some(reason)) => check.reasons.push(reason),
        Ok(None) => {}
        Err(e) => check.errors.push(format!("needs-restarting: {e}")),
    }
    match host.kernel_release() {
        Ok(k) => check.kernel_running = k,
        Err(e) => check.errors.push(format!("running kernel: {e}")),
    }
    let scheme = family.map_or(VersionScheme::Debian, OsFamily::version_scheme);
    match installed_kernels(host, scheme) {
        Ok(kernels) => {
            if let Some(newest) = kernels.last()
                && !check.kernel_running.is_empty()
                && scheme.compare(newest, &check.kernel_running).is_gt()
            {
                check.reasons.push(format!(
                    "kernel {newest} installed, running {}",
                    check.kernel_running
                ));
            }
            check.kernels_installed = kernels;
        }
        Err(e) => check.errors.push(format!("installed kernels: {e}")),
    }
    check
}

/// Reasons from sentinel files, and the packages listed in their `.pkgs` companions.
fn sentinel_files(host: &dyn Host, paths: &[PathBuf]) -> Result<(Vec<String>, Vec<String>)> {
    let mut reasons = Vec::new();
    let mut pkgs = Vec::new();
    let mut seen = Vec::new();
    for path in paths {
        if !host.exists(path)? {
            continue;
        }
        // `/var/run` is a link to `/run` on most hosts: report one file once.
        if let Some(local) = host.local_path(path) {
            if seen.contains(&local) {
                continue;
            }
            seen.push(local);
        }
        reasons.push(format!("sentinel {}", path.display()));
        let mut list = path.clone().into_os_string();
        list.push(".pkgs");
        if let Some(text) = read_text_opt(host, Path::new(&list))? {
            for name in text.split_whitespace() {
                if !pkgs.iter().any(|p| p == name) {
                    pkgs.push(name.to_string());
                }
            }
        }
    }
    Ok((reasons, pkgs))
}

/// Runs the sentinel command: `Some(reason)` when it says "required", `None` when it says "not
/// required", an error for everything else.
pub fn sentinel_command(
    host: &dyn Host,
    argv: &[String],
    timeout: Duration,
) -> Result<Option<String>> {
    let cmd = HostCommand::new(argv.iter().cloned()).timeout(timeout);
    let out = host.run(&cmd)?;
    match out.status {
        ExitStatus::Exited(0) => Ok(Some(format!(
            "sentinel command `{}` exited 0",
            cmd.display()
        ))),
        ExitStatus::Exited(1) => Ok(None),
        status => Err(Error::CommandFailed {
            command: cmd.display(),
            status,
            stderr: crate::host::tail(&out.stderr, 500),
        }),
    }
}

/// `needs-restarting -r` on dnf hosts where it is installed: exit 1 = reboot required.
fn needs_restarting(host: &dyn Host, timeout: Duration) -> Result<Option<String>> {
    const TOOL: &str = "/usr/bin/needs-restarting";
    if !host.exists(Path::new(TOOL))? {
        return Ok(None);
    }
    let cmd = HostCommand::new([TOOL, "-r"]).timeout(timeout);
    let out = host.run(&cmd)?;
    match out.status {
        ExitStatus::Exited(0) => Ok(None),
        ExitStatus::Exited(1) => Ok(Some("needs-restarting -r: reboot required".into())),
        status => Err(Error::CommandFailed {
            command: cmd.display(),
            status,
            stderr: crate::host::tail(&out.stderr, 500),
        }),
    }
}

/// Installed kernel releases, oldest first: `/boot/vmlinuz-*` (Debian, older RHEL) and
/// `/lib/modules/*/vmlinuz` (Fedora, RHEL 9). Rescue images are not kernels one boots into.
pub fn installed_kernels(host: &dyn Host, scheme: VersionScheme) -> Result<Vec<String>> {
    let mut kernels: Vec<String> = host
        .list_dir(Path::new("/boot"))?
        .into_iter()
        .filter_map(|f| f.strip_prefix("vmlinuz-").map(String::from))
        .filter(|k| !k.contains("rescue"))
        .collect();
    for release in host.list_dir(Path::new("/lib/modules"))? {
        if !kernels.contains(&release)
            && host.exists(&Path::new("/lib/modules").join(&release).join("vmlinuz"))?
        {
            kernels.push(release);
        }
    }
    kernels.sort_by(|a, b| scheme.compare(a, b));
    Ok(kernels)
}

/// The kubelet's version: `kubelet --version` in the host, else its package's version.
fn kubelet_version(
    host: &dyn Host,
    timeout: Duration,
    pm: Option<&dyn crate::packages::PackageManager>,
) -> String {
    let cmd = HostCommand::new(["kubelet", "--version"]).timeout(timeout);
    if let Ok(out) = host.run(&cmd)
        && out.success()
        && let Some(v) = out.stdout.split_whitespace().find(|w| w.starts_with('v'))
    {
        return v.trim_start_matches('v').to_string();
    }
    pm.and_then(|pm| pm.installed_version("kubelet").ok().flatten())
        .map(|v| upstream_version(&v))
        .unwrap_or_default()
}

/// The upstream part of a package version: `1:1.30.1-1.1` → `1.30.1`.
pub fn upstream_version(v: &str) -> String {
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    v.split_once('-').map_or(v, |(up, _)| up).to_string()
}

/// The container runtime and its version, from `containerd --version` or `crio --version`.
fn runtime_version(host: &dyn Host, timeout: Duration) -> String {
    for (name, program) in [("containerd", "containerd"), ("cri-o", "crio")] {
        let cmd = HostCommand::new([program, "--version"]).timeout(timeout);
        let Ok(out) = host.run(&cmd) else { continue };
        if !out.success() {
            continue;
        }
        if let Some(v) = parse_runtime_version(&out.stdout) {
            return format!("{name} {v}");
        }
    }
    String::new()
}

/// The first word that looks like a version (`v1.7.2`, `1.6.24`) in a `--version` output.
fn parse_runtime_version(out: &str) -> Option<String> {
    out.split_whitespace()
        .map(|w| w.trim_start_matches('v'))
        .find(|w| {
            w.split('.').count() >= 2
                && w.split('.')
                    .next()
                    .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryHost;

    #[test]
    fn runtime_versions() {
        assert_eq!(
            parse_runtime_version(
                "containerd containerd.io 1.6.24 61f9fd88f79f081d64d6fa3bb1a0dc71ec870523\n"
            ),
            Some("1.6.24".into())
        );
        assert_eq!(
            parse_runtime_version("containerd github.com/containerd/containerd v1.7.2 0cae528d\n"),
            Some("1.7.2".into())
        );
        assert_eq!(
            parse_runtime_version("crio version 1.28.1\n"),
            Some("1.28.1".into())
        );
        assert_eq!(upstream_version("1:1.30.1-1.1"), "1.30.1");
        assert_eq!(upstream_version("1.30.1"), "1.30.1");
    }

    #[test]
    fn kernel_drift_is_a_reason() {
        let host = MemoryHost::debian();
        host.set_kernel("6.1.0-13-amd64");
        host.put_file("/boot/vmlinuz-6.1.0-13-amd64", "");
        host.put_file("/boot/vmlinuz-6.1.0-9-amd64", "");
        host.put_file("/boot/vmlinuz-6.1.0-17-amd64", "");
        let facts = detect(&host, &DetectConfig::default());
        assert_eq!(
            facts.kernels_installed,
            ["6.1.0-9-amd64", "6.1.0-13-amd64", "6.1.0-17-amd64"]
        );
        assert!(facts.reboot_required);
        assert_eq!(
            facts.reboot_reasons,
            ["kernel 6.1.0-17-amd64 installed, running 6.1.0-13-amd64"]
        );
        assert!(facts.errors.is_empty(), "{:?}", facts.errors);
    }

    #[test]
    fn fedora_kernels_live_in_lib_modules() {
        let host = MemoryHost::fedora();
        host.set_kernel("6.5.6-300.fc39.x86_64");
        host.put_file("/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz", "");
        host.put_file("/lib/modules/6.5.12-300.fc39.x86_64/vmlinuz", "");
        host.put_file("/lib/modules/6.2.0-leftover/modules.dep", "");
        host.put_file("/boot/vmlinuz-0-rescue-abc", "");
        let facts = detect(&host, &DetectConfig::default());
        assert_eq!(
            facts.kernels_installed,
            ["6.5.6-300.fc39.x86_64", "6.5.12-300.fc39.x86_64"]
        );
        assert!(facts.reboot_required);
    }

    #[test]
    fn needs_restarting_where_present() {
        let host = MemoryHost::fedora();
        assert!(!detect(&host, &DetectConfig::default()).reboot_required);
        host.put_file("/usr/bin/needs-restarting", "");
        let code = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(1));
        let c = code.clone();
        host.on_command("/usr/bin/needs-restarting", move |_| {
            Ok(crate::host::memory::exited(
                c.load(std::sync::atomic::Ordering::SeqCst),
                "",
            ))
        });
        let facts = detect(&host, &DetectConfig::default());
        assert_eq!(
            facts.reboot_reasons,
            ["needs-restarting -r: reboot required"]
        );
        code.store(0, std::sync::atomic::Ordering::SeqCst);
        assert!(!detect(&host, &DetectConfig::default()).reboot_required);
        code.store(2, std::sync::atomic::Ordering::SeqCst);
        let broken = detect(&host, &DetectConfig::default());
        assert!(!broken.reboot_required);
        assert!(
            broken
                .errors
                .iter()
                .any(|e| e.starts_with("needs-restarting")),
            "{:?}",
            broken.errors
        );
    }

    #[test]
    fn sentinel_file_and_its_package_list() {
        let host = MemoryHost::debian();
        host.put_file("/run/reboot-required", "*** System restart required ***\n");
        host.put_file(
            "/run/reboot-required.pkgs",
            "linux-image-6.1.0-17-amd64\nlibc6\n",
        );
        let config = DetectConfig {
            sentinel_files: vec!["/run/reboot-required".into()],
            ..DetectConfig::default()
        };
        let facts = detect(&host, &config);
        assert!(facts.reboot_required);
        assert_eq!(facts.reboot_reasons, ["sentinel /run/reboot-required"]);
        assert_eq!(
            facts.reboot_packages,
            ["linux-image-6.1.0-17-amd64", "libc6"]
        );
    }

    #[test]
    fn sentinel_command_outcomes() {
        let host = MemoryHost::debian();
        host.on_command("check-reboot", |argv| {
            match argv.get(1).map(String::as_str) {
                Some("yes") => Ok(crate::host::memory::exited(0, "")),
                Some("no") => Ok(crate::host::memory::exited(1, "")),
                Some("weird") => Ok(crate::host::memory::exited(2, "")),
                _ => Ok(crate::host::CommandOutput {
                    status: ExitStatus::Signaled(9),
                    stdout: String::new(),
                    stderr: String::new(),
                }),
            }
        });
        let run = |arg: &str| {
            let config = DetectConfig {
                sentinel_command: Some(vec!["check-reboot".into(), arg.into()]),
                ..DetectConfig::default()
            };
            detect(&host, &config)
        };
        let yes = run("yes");
        assert!(yes.reboot_required && yes.errors.is_empty());
        let no = run("no");
        assert!(!no.reboot_required && no.errors.is_empty());
        for bad in ["weird", "killed"] {
            let f = run(bad);
            assert!(!f.reboot_required, "{bad} must not read as required");
            assert_eq!(f.errors.len(), 1, "{bad}: {:?}", f.errors);
        }
        let missing = detect(
            &host,
            &DetectConfig {
                sentinel_command: Some(vec!["/usr/bin/does-not-exist".into()]),
                ..DetectConfig::default()
            },
        );
        assert!(!missing.reboot_required);
        assert!(
            missing.errors[0].contains("not found"),
            "{:?}",
            missing.errors
        );
    }
}
