//! A whole host in memory: files, boot id, kernel, commands, systemd units, reboots and a
//! package database. For unit tests of detection and operations (every crash point), and as a
//! reference for simulated hosts.
//!
//! Behaviour worth knowing:
//! - a reboot is only *requested* by [`Host::reboot`]; the test decides whether it happens
//!   ([`MemoryHost::boot`]: new boot id, `/run` emptied, newest installed kernel running);
//! - installing a package whose impact is [`Impact::Reboot`] writes `/run/reboot-required`
//!   (and `.pkgs`), as Debian's kernel and libc packages do;
//! - commands are handled by closures registered per program; anything else does not exist;
//! - packages added with [`MemoryHost::add_repository_package`] are offered only while a
//!   file under `/etc/apt/sources.list.d` or `/etc/yum.repos.d` names their repository, as of
//!   the last [`PackageManager::refresh`] (a switched Kubernetes repository needs a refresh).
use rota_core::model::{Blocked, Impact, PackagePin, PendingPackage};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{CommandOutput, ExitStatus, Host, HostCommand, RebootMethod};
use crate::detect::version::VersionScheme;
use crate::packages::{
    InstallPurpose, KUBERNETES_PACKAGES, PackageChange, PackageManager, RepairOutcome,
    UpgradeSelection, check_pins, diff,
};
use crate::{Error, Result};

/// A command handler: gets argv, returns what the command printed and how it ended.
pub type CommandHandler = Arc<dyn Fn(&[String]) -> Result<CommandOutput> + Send + Sync>;

/// A finished command with this exit code and standard output.
pub fn exited(code: i32, stdout: &str) -> CommandOutput {
    CommandOutput {
        status: ExitStatus::Exited(code),
        stdout: stdout.to_string(),
        stderr: String::new(),
    }
}

/// Failures a test can inject into the in-memory package manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackageFaults {
    /// The next upgrade applies its first package, then fails and leaves the database
    /// interrupted (as a killed dpkg does).
    pub fail_next_upgrade: bool,
    /// The database is interrupted; [`PackageManager::repair`] fixes it, changes refuse to run.
    pub interrupted: bool,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, Vec<u8>>,
    boot_id: String,
    boots: u32,
    kernel: String,
    commands: BTreeMap<String, CommandHandler>,
    events: Vec<String>,
    reboot_requests: u32,
    failing_units: Vec<String>,
    installed: BTreeMap<String, String>,
    /// name → versions available from repositories, with "is security".
    available: BTreeMap<String, Vec<(String, bool)>>,
    /// (repository URL, name, version) offered while a source file names the repository.
    repository_packages: Vec<(String, String, String)>,
    /// The repositories the source files named at the last refresh.
    refreshed: Vec<String>,
    holds: Vec<String>,
    faults: PackageFaults,
}

/// An in-memory [`Host`]. Cloning shares the same host.
#[derive(Clone, Default)]
pub struct MemoryHost {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHost").finish_non_exhaustive()
    }
}

impl MemoryHost {
    /// A Debian 12 host with boot id `boot-1` running kernel `6.1.0-13-amd64`.
    pub fn debian() -> Self {
        let host = MemoryHost::default();
        host.put_file(
            "/etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        );
        {
            let mut s = host.lock();
            s.boot_id = "boot-1".into();
            s.boots = 1;
            s.kernel = "6.1.0-13-amd64".into();
        }
        host
    }

    /// A Fedora 39 host with boot id `boot-1`.
    pub fn fedora() -> Self {
        let host = MemoryHost::debian();
        host.put_file(
            "/etc/os-release",
            "PRETTY_NAME=\"Fedora Linux 39 (Server Edition)\"\nID=fedora\nVERSION_ID=39\n",
        );
        host.set_kernel("6.5.6-300.fc39.x86_64");
        host
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces a file.
    pub fn put_file(&self, path: impl Into<PathBuf>, content: impl AsRef<[u8]>) {
        self.lock()
            .files
            .insert(normalize(&path.into()), content.as_ref().to_vec());
    }

    /// The content of a file, if it exists.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.lock().files.get(&normalize(path.as_ref())).cloned()
    }

    /// Sets the running kernel release.
    pub fn set_kernel(&self, release: &str) {
        self.lock().kernel = release.to_string();
    }

    /// Handles commands whose program is `program` (matched on argv\[0\] as given).
    pub fn on_command<F>(&self, program: &str, handler: F)
    where
        F: Fn(&[String]) -> Result<CommandOutput> + Send + Sync + 'static,
    {
        self.lock()
            .commands
            .insert(program.to_string(), Arc::new(handler));
    }

    /// Makes `systemctl restart UNIT` fail.
    pub fn fail_unit(&self, unit: &str) {
        self.lock().failing_units.push(unit.to_string());
    }

    /// Everything that changed the host, in order: `reboot requested`, `daemon-reload`,
    /// `restart kubelet`, `install kubelet=1.30.2`, `boot boot-2`, ...
    pub fn events(&self) -> Vec<String> {
        self.lock().events.clone()
    }

    /// How many times a reboot was requested.
    pub fn reboot_requests(&self) -> u32 {
        self.lock().reboot_requests
    }

    /// How many times the host booted (1 at creation).
    pub fn boots(&self) -> u32 {
        self.lock().boots
    }

    /// The host boots: a new boot id, `/run` (a tmpfs) emptied, the newest installed kernel
    /// running.
    pub fn boot(&self) {
        let newest = crate::detect::installed_kernels(self, VersionScheme::Debian)
            .ok()
            .and_then(|k| k.last().cloned());
        let mut s = self.lock();
        s.boots += 1;
        s.boot_id = format!("boot-{}", s.boots);
        s.files.retain(|p, _| !p.starts_with("/run"));
        if let Some(k) = newest {
            s.kernel = k;
        }
        let ev = format!("boot {}", s.boot_id);
        s.events.push(ev);
    }

    /// Marks `name` installed at `version`.
    pub fn install(&self, name: &str, version: &str) {
        self.lock()
            .installed
            .insert(name.to_string(), version.to_string());
    }

    /// Makes `version` of `name` available from a repository (`security`: a security one).
    pub fn add_available(&self, name: &str, version: &str, security: bool) {
        self.lock()
            .available
            .entry(name.to_string())
            .or_default()
            .push((version.to_string(), security));
    }

    /// Makes `version` of `name` available while a source file (`/etc/apt/sources.list.d/*`,
    /// `/etc/yum.repos.d/*`) names `repository`, as of the last refresh; the current files
    /// count as refreshed.
    pub fn add_repository_package(&self, repository: &str, name: &str, version: &str) {
        self.lock().repository_packages.push((
            repository.to_string(),
            name.to_string(),
            version.to_string(),
        ));
        self.refresh_sources();
    }

    /// Reads the source files: which repositories' packages are offered now.
    fn refresh_sources(&self) {
        let mut s = self.lock();
        let sources: Vec<String> = s
            .files
            .iter()
            .filter(|(p, _)| {
                p.starts_with("/etc/apt/sources.list.d") || p.starts_with("/etc/yum.repos.d")
            })
            .map(|(_, content)| String::from_utf8_lossy(content).into_owned())
            .collect();
        let mut named: Vec<String> = s
            .repository_packages
            .iter()
            .map(|(repo, _, _)| repo.clone())
            .filter(|repo| sources.iter().any(|text| text.contains(repo.as_str())))
            .collect();
        named.sort();
        named.dedup();
        s.refreshed = named;
    }

    /// Whether `holds` lists `name` (held with `apt-mark hold` or versionlock).
    pub fn is_held(&self, name: &str) -> bool {
        self.lock().holds.iter().any(|h| h == name)
    }

    /// Holds `name`.
    pub fn hold(&self, name: &str) {
        self.lock().holds.push(name.to_string());
    }

    /// Injects package faults.
    pub fn set_package_faults(&self, faults: PackageFaults) {
        self.lock().faults = faults;
    }

    /// The installed version of `name`.
    pub fn installed(&self, name: &str) -> Option<String> {
        self.lock().installed.get(name).cloned()
    }
}

/// The versions of `name` offered now, with "is security".
fn offered(s: &State, name: &str) -> Vec<(String, bool)> {
    let mut versions = s.available.get(name).cloned().unwrap_or_default();
    versions.extend(
        s.repository_packages
            .iter()
            .filter(|(repo, n, _)| n == name && s.refreshed.contains(repo))
            .map(|(_, _, v)| (v.clone(), false)),
    );
    versions
}

/// Host paths in memory are kept absolute and without `.`/`..`; `/var/run` is `/run`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    match out.strip_prefix("/var/run") {
        Ok(rest) => Path::new("/run").join(rest),
        Err(_) => out,
    }
}

impl Host for MemoryHost {
    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput> {
        let handler = self.lock().commands.get(cmd.program()).cloned();
        match handler {
            Some(h) => h(&cmd.argv),
            None => Err(Error::CommandNotFound {
                program: cmd.program().to_string(),
            }),
        }
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        self.file(path).ok_or_else(|| {
            Error::io(
                "read",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    fn write_file_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        self.put_file(path, data);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<bool> {
        Ok(self.lock().files.remove(&normalize(path)).is_some())
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        let p = normalize(path);
        Ok(self.lock().files.keys().any(|f| f.starts_with(&p)))
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        let p = normalize(path);
        let mut names: Vec<String> = self
            .lock()
            .files
            .keys()
            .filter_map(|f| f.strip_prefix(&p).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn boot_id(&self) -> Result<String> {
        Ok(self.lock().boot_id.clone())
    }

    fn kernel_release(&self) -> Result<String> {
        Ok(self.lock().kernel.clone())
    }

    fn reboot(&self, method: &RebootMethod) -> Result<()> {
        let mut s = self.lock();
        s.reboot_requests += 1;
        s.events.push(format!("reboot requested ({method:?})"));
        Ok(())
    }

    fn restart_unit(&self, unit: &str) -> Result<()> {
        let mut s = self.lock();
        s.events.push("daemon-reload".into());
        if s.failing_units.iter().any(|u| u == unit) {
            return Err(Error::CommandFailed {
                command: format!("systemctl restart {unit}"),
                status: ExitStatus::Exited(1),
                stderr: format!("Job for {unit}.service failed."),
            });
        }
        s.events.push(format!("restart {unit}"));
        Ok(())
    }

    fn packages(&self) -> Result<Box<dyn PackageManager + '_>> {
        Ok(Box::new(MemoryPackages { host: self }))
    }

    fn local_path(&self, _path: &Path) -> Option<PathBuf> {
        None
    }
}

/// The package manager of a [`MemoryHost`].
#[derive(Debug)]
pub struct MemoryPackages<'a> {
    host: &'a MemoryHost,
}

impl MemoryPackages<'_> {
    /// Installs versions one by one, as dpkg would, honouring injected faults.
    fn apply(&self, pins: &[PackagePin]) -> Result<Vec<PackageChange>> {
        let mut s = self.host.lock();
        if s.faults.interrupted {
            return Err(Error::Refused(
                "dpkg was interrupted, run 'dpkg --configure -a'".into(),
            ));
        }
        let before = s.installed.clone();
        for (i, pin) in pins.iter().enumerate() {
            if i == 1 && s.faults.fail_next_upgrade {
                s.faults.fail_next_upgrade = false;
                s.faults.interrupted = true;
                return Err(Error::CommandFailed {
                    command: "apt-get install".into(),
                    status: ExitStatus::Exited(100),
                    stderr: format!("dpkg: error processing package {}", pin.name),
                });
            }
            let known = offered(&s, &pin.name)
                .iter()
                .any(|(ver, _)| ver == &pin.version);
            if !known {
                return Err(Error::Refused(format!(
                    "{} {} is not available",
                    pin.name, pin.version
                )));
            }
            s.installed.insert(pin.name.clone(), pin.version.clone());
            s.events
                .push(format!("install {}={}", pin.name, pin.version));
            if Impact::of_package(&pin.name) == Impact::Reboot {
                s.files.insert(
                    PathBuf::from("/run/reboot-required"),
                    b"*** System restart required ***\n".to_vec(),
                );
                let list = s
                    .files
                    .entry(PathBuf::from("/run/reboot-required.pkgs"))
                    .or_default();
                list.extend_from_slice(format!("{}\n", pin.name).as_bytes());
            }
        }
        if s.faults.fail_next_upgrade {
            s.faults.fail_next_upgrade = false;
            s.faults.interrupted = true;
            return Err(Error::CommandFailed {
                command: "apt-get install".into(),
                status: ExitStatus::Exited(100),
                stderr: "dpkg: error processing archive".into(),
            });
        }
        Ok(diff(&before, &s.installed))
    }
}

impl PackageManager for MemoryPackages<'_> {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn refresh(&self) -> Result<()> {
        self.host.refresh_sources();
        self.host.lock().events.push("refresh".into());
        Ok(())
    }

    fn upgradable(&self) -> Result<Vec<PendingPackage>> {
        let s = self.host.lock();
        let scheme = VersionScheme::Debian;
        let mut out = Vec::new();
        for (name, current) in &s.installed {
            let versions = offered(&s, name);
            let newest = versions
                .iter()
                .filter(|(v, _)| scheme.compare(v, current).is_gt())
                .max_by(|a, b| scheme.compare(&a.0, &b.0));
            if let Some((candidate, security)) = newest {
                out.push(PendingPackage {
                    name: name.clone(),
                    current_version: current.clone(),
                    candidate_version: candidate.clone(),
                    security: *security,
                    impact: Impact::of_package(name),
                    blocked: if KUBERNETES_PACKAGES.contains(&name.as_str()) {
                        Some(Blocked::KubernetesPin)
                    } else if s.holds.contains(name) {
                        Some(Blocked::Held)
                    } else {
                        None
                    },
                });
            }
        }
        Ok(out)
    }

    fn upgrade(&self, selection: &UpgradeSelection) -> Result<Vec<PackageChange>> {
        let pins: Vec<PackagePin> = self
            .upgradable()?
            .into_iter()
            .filter(|p| selection.selects(p))
            .map(|p| PackagePin {
                name: p.name,
                version: p.candidate_version,
            })
            .collect();
        self.apply(&pins)
    }

    fn install_versions(
        &self,
        pins: &[PackagePin],
        purpose: InstallPurpose,
    ) -> Result<Vec<PackageChange>> {
        check_pins(pins, purpose, &self.holds()?)?;
        self.apply(pins)
    }

    fn installed(&self) -> Result<BTreeMap<String, String>> {
        Ok(self.host.lock().installed.clone())
    }

    fn available_versions(&self, name: &str) -> Result<Vec<String>> {
        let s = self.host.lock();
        Ok(offered(&s, name).into_iter().map(|(v, _)| v).collect())
    }

    fn holds(&self) -> Result<Vec<String>> {
        let mut h = self.host.lock().holds.clone();
        h.sort();
        Ok(h)
    }

    fn repair(&self) -> Result<RepairOutcome> {
        let mut s = self.host.lock();
        if s.faults.interrupted {
            s.faults.interrupted = false;
            s.events.push("repair".into());
            Ok(RepairOutcome::Repaired("interrupted dpkg".into()))
        } else {
            Ok(RepairOutcome::Clean)
        }
    }
}
