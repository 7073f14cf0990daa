//! The apt/dpkg backend (Debian, Ubuntu).
//!
//! Pending upgrades come from `apt-get -s --ignore-hold dist-upgrade` (a simulation that also
//! shows held packages), whose `Inst` lines name the candidate's sources; a candidate is a
//! security upgrade when one of them is a security suite (`bookworm-security`,
//! `jammy-security`, `Debian-Security:12/stable-security`). Upgrades install exact candidate
//! versions of the selected packages, so nothing outside the selection (holds, Kubernetes
//! packages) can move.
use rota_core::model::{Blocked, Impact, PackagePin, PendingPackage};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{
    InstallPurpose, KUBERNETES_PACKAGES, PackageChange, PackageManager, RepairOutcome,
    UpgradeSelection, check_pins, diff,
};
use crate::host::{Host, HostCommand, tail};
use crate::{Error, Result};

/// How long apt waits for another process's dpkg lock before giving up.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one package transaction may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Where apt keeps downloaded packages; a rollback can install an old version from here when no
/// repository has it any more.
const ARCHIVES: &str = "/var/cache/apt/archives";

/// apt/dpkg on a [`Host`].
pub struct Apt<'a> {
    host: &'a dyn Host,
    lock_timeout: Duration,
}

impl<'a> Apt<'a> {
    /// The backend for `host`, waiting up to 5 minutes for the dpkg lock.
    pub fn new(host: &'a dyn Host) -> Self {
        Apt {
            host,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// Sets how long to wait for the dpkg lock (`DPkg::Lock::Timeout`).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// A non-interactive apt/dpkg command.
    fn command(&self, argv: &[&str], timeout: Duration) -> HostCommand {
        let mut cmd = HostCommand::new(argv.iter().copied())
            .timeout(timeout + self.lock_timeout)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("APT_LISTCHANGES_FRONTEND", "none")
            // Ubuntu's needrestart would otherwise restart services on its own.
            .env("NEEDRESTART_MODE", "l")
            .env("UCF_FORCE_CONFFOLD", "1");
        if argv.first().is_some_and(|p| p.starts_with("apt")) {
            let lock = format!("DPkg::Lock::Timeout={}", self.lock_timeout.as_secs());
            let extra = [
                "-q",
                "-o",
                lock.as_str(),
                "-o",
                "Dpkg::Options::=--force-confold",
                "-o",
                "Dpkg::Options::=--force-confdef",
            ];
            cmd.argv.splice(1..1, extra.iter().map(|s| s.to_string()));
        }
        cmd
    }

    /// Runs a command and fails on a non-zero exit.
    fn run_ok(&self, argv: &[&str], timeout: Duration) -> Result<String> {
        let cmd = self.command(argv, timeout);
        Ok(self.host.run(&cmd)?.check(&cmd)?.stdout)
    }

    /// Installs `specs` (`name=version` or `.deb` paths) with `apt-get install`, keeping the
    /// auto-installed marks as they were, and returns what changed.
    fn install(&self, specs: &[String], extra: &[&str]) -> Result<Vec<PackageChange>> {
        self.repair()?;
        let before = self.installed()?;
        let auto = self.run_ok(&["apt-mark", "showauto"], QUERY_TIMEOUT)?;
        let mut argv = vec!["apt-get", "install", "-y"];
        argv.extend_from_slice(extra);
        argv.extend(specs.iter().map(String::as_str));
        let result = self.run_ok(&argv, INSTALL_TIMEOUT);
        let after = self.installed()?;
        // `apt-get install` marks what it names as manually installed; restore the marks so
        // `apt-get autoremove` keeps working as the node's owners expect.
        let auto: Vec<&str> = auto
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty() && after.contains_key(*n))
            .collect();
        if !auto.is_empty() {
            let mut mark = vec!["apt-mark", "auto"];
            mark.extend(auto);
            self.run_ok(&mark, QUERY_TIMEOUT)?;
        }
        result?;
        Ok(diff(&before, &after))
    }

    /// The `apt-get install` argument for `pin`: `name=version` when a repository has the
    /// version, else the cached `.deb`, else an error.
    fn rollback_spec(&self, pin: &PackagePin) -> Result<String> {
        let spec = format!("{}={}", pin.name, pin.version);
        let cmd = self.command(&["apt-cache", "show", &spec], QUERY_TIMEOUT);
        if self.host.run(&cmd)?.success() {
            return Ok(spec);
        }
        let prefix = format!("{}_{}_", pin.name, pin.version.replace(':', "%3a"));
        let cached = self
            .host
            .list_dir(Path::new(ARCHIVES))?
            .into_iter()
            .find(|f| f.starts_with(&prefix) && f.ends_with(".deb"));
        match cached {
            Some(file) => Ok(format!("{ARCHIVES}/{file}")),
            None => Err(Error::Refused(format!(
                "{} {} is neither in a repository nor in {ARCHIVES}",
                pin.name, pin.version
            ))),
        }
    }
}

impl PackageManager for Apt<'_> {
    fn name(&self) -> &'static str {
        "apt"
    }

    fn refresh(&self) -> Result<()> {
        self.run_ok(&["apt-get", "update"], QUERY_TIMEOUT).map(drop)
    }

    fn upgradable(&self) -> Result<Vec<PendingPackage>> {
        let out = self.run_ok(
            &[
                "apt-get",
                "-s",
                "--ignore-hold",
                "-o",
                "Debug::NoLocking=true",
                "dist-upgrade",
            ],
            QUERY_TIMEOUT,
        )?;
        let holds = self.holds()?;
        let mut pending = parse_simulation(&out);
        for p in &mut pending {
            p.blocked = if KUBERNETES_PACKAGES.contains(&p.name.as_str()) {
                Some(Blocked::KubernetesPin)
            } else if holds.contains(&p.name) {
                Some(Blocked::Held)
            } else {
                None
            };
        }
        Ok(pending)
    }

    fn upgrade(&self, selection: &UpgradeSelection) -> Result<Vec<PackageChange>> {
        let specs: Vec<String> = self
            .upgradable()?
            .into_iter()
            .filter(|p| selection.selects(p))
            .map(|p| format!("{}={}", p.name, p.candidate_version))
            .collect();
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        self.install(&specs, &["--only-upgrade"])
    }

    fn install_versions(
        &self,
        pins: &[PackagePin],
        purpose: InstallPurpose,
    ) -> Result<Vec<PackageChange>> {
        let holds = self.holds()?;
        check_pins(pins, purpose, &holds)?;
        if pins.is_empty() {
            return Ok(Vec::new());
        }
        match purpose {
            InstallPurpose::Named => {
                let specs: Vec<String> = pins
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.version))
                    .collect();
                self.install(&specs, &[])
            }
            InstallPurpose::Kubernetes | InstallPurpose::Rollback => {
                let specs = match purpose {
                    InstallPurpose::Rollback => pins
                        .iter()
                        .map(|p| self.rollback_spec(p))
                        .collect::<Result<Vec<_>>>()?,
                    _ => pins
                        .iter()
                        .map(|p| format!("{}={}", p.name, p.version))
                        .collect(),
                };
                let changes = self.install(
                    &specs,
                    &["--allow-downgrades", "--allow-change-held-packages"],
                )?;
                let rehold: Vec<&str> = pins
                    .iter()
                    .map(|p| p.name.as_str())
                    .filter(|n| holds.iter().any(|h| h == n))
                    .collect();
                if !rehold.is_empty() {
                    let mut argv = vec!["apt-mark", "hold"];
                    argv.extend(rehold);
                    self.run_ok(&argv, QUERY_TIMEOUT)?;
                }
                Ok(changes)
            }
        }
    }

    fn installed(&self) -> Result<BTreeMap<String, String>> {
        let out = self.run_ok(
            &[
                "dpkg-query",
                "-W",
                "-f",
                "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n",
            ],
            QUERY_TIMEOUT,
        )?;
        Ok(parse_dpkg_query(&out))
    }

    fn available_versions(&self, name: &str) -> Result<Vec<String>> {
        let out = self.run_ok(&["apt-cache", "madison", name], QUERY_TIMEOUT)?;
        Ok(parse_madison(&out, name))
    }

    fn holds(&self) -> Result<Vec<String>> {
        let out = self.run_ok(&["apt-mark", "showhold"], QUERY_TIMEOUT)?;
        let mut holds: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        holds.sort();
        Ok(holds)
    }

    fn repair(&self) -> Result<RepairOutcome> {
        let audit = self.run_ok(&["dpkg", "--audit"], QUERY_TIMEOUT)?;
        let journal = self
            .host
            .list_dir(Path::new("/var/lib/dpkg/updates"))?
            .into_iter()
            .any(|f| !f.starts_with("tmp."));
        if audit.trim().is_empty() && !journal {
            return Ok(RepairOutcome::Clean);
        }
        let found = if audit.trim().is_empty() {
            "pending dpkg journal in /var/lib/dpkg/updates".to_string()
        } else {
            tail(audit.trim(), 1000)
        };
        self.run_ok(
            &[
                "dpkg",
                "--configure",
                "-a",
                "--force-confold",
                "--force-confdef",
            ],
            INSTALL_TIMEOUT,
        )?;
        // Unpacked packages whose dependencies were missing need apt to finish them.
        if !self
            .run_ok(&["dpkg", "--audit"], QUERY_TIMEOUT)?
            .trim()
            .is_empty()
        {
            self.run_ok(&["apt-get", "install", "-f", "-y"], INSTALL_TIMEOUT)?;
        }
        let left = self.run_ok(&["dpkg", "--audit"], QUERY_TIMEOUT)?;
        if left.trim().is_empty() {
            Ok(RepairOutcome::Repaired(found))
        } else {
            Err(Error::Refused(format!(
                "dpkg is still broken after repair: {}",
                tail(left.trim(), 1000)
            )))
        }
    }
}

/// Parses the `Inst` lines of `apt-get -s dist-upgrade` into pending upgrades (of installed
/// packages; new dependencies are not upgrades). `blocked` is left unset. Sorted by name.
pub(crate) fn parse_simulation(out: &str) -> Vec<PendingPackage> {
    let mut pending: Vec<PendingPackage> = out.lines().filter_map(parse_inst).collect();
    pending.sort_by(|a, b| a.name.cmp(&b.name));
    pending
}

/// `Inst NAME [OLD] (NEW LABEL:SUITE, LABEL:VERSION/SUITE [ARCH])`.
fn parse_inst(line: &str) -> Option<PendingPackage> {
    let rest = line.strip_prefix("Inst ")?;
    let (name, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('[')?;
    let (current, rest) = rest.split_once(']')?;
    let open = rest.find('(')?;
    let close = rest[open..].find(')')? + open;
    let inner = &rest[open + 1..close];
    let (candidate, releases) = inner.split_once(' ').unwrap_or((inner, ""));
    let releases = releases.rsplit_once('[').map_or(releases, |(r, _)| r);
    let name = name.split(':').next().unwrap_or(name);
    Some(PendingPackage {
        name: name.to_string(),
        current_version: current.to_string(),
        candidate_version: candidate.to_string(),
        security: releases
            .split(',')
            .any(|r| r.to_ascii_lowercase().contains("security")),
        impact: Impact::of_package(name),
        blocked: None,
    })
}

/// Parses `dpkg-query -W -f '${Package}\t${Version}\t${db:Status-Abbrev}\n'`: packages whose
/// files are on disk (installed, unpacked, half-configured, awaiting triggers), not those
/// removed or only leaving configuration files.
fn parse_dpkg_query(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (name, version, status) = (f.next()?, f.next()?, f.next()?);
            let state = status.chars().nth(1)?;
            (!version.is_empty() && !matches!(state, 'n' | 'c'))
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect()
}

/// `apt-cache madison NAME` lines `NAME | VERSION | SOURCE` → versions, deduplicated.
fn parse_madison(out: &str, name: &str) -> Vec<String> {
    let mut versions: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            (f.next()? == name).then(|| f.next().map(String::from))?
        })
        .collect();
    versions.dedup();
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from `apt-get -s --ignore-hold dist-upgrade` on Debian bookworm with the
    /// security archive and a local repository.
    const SIMULATION: &str = "\
Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
The following held packages will be changed:
  foo
The following packages will be upgraded:
  both foo libc6 secpkg
4 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.
Inst both [1.0] (1.1 rota:rota, rota-security:rota-security [all])
Inst foo [1.0] (1.1 rota:rota [all])
Inst libc6 [2.36-9+deb12u3] (2.36-9+deb12u4 Debian:12.5/stable, Debian-Security:12/stable-security [amd64])
Inst newdep (2.0 Debian:12.5/stable [amd64])
Inst secpkg [1.0] (1.0+sec1 rota-security:rota-security [all])
Inst kubelet:amd64 [1.30.1] (1.30.2 kubernetes:kubernetes [amd64]) []
Conf both (1.1 rota:rota, rota-security:rota-security [all])
";

    #[test]
    fn simulation_lines_become_pending_upgrades() {
        let p = parse_simulation(SIMULATION);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["both", "foo", "kubelet", "libc6", "secpkg"]);
        let get = |n: &str| p.iter().find(|p| p.name == n).unwrap();
        assert!(get("both").security);
        assert!(!get("foo").security);
        assert!(get("secpkg").security);
        assert_eq!(get("libc6").current_version, "2.36-9+deb12u3");
        assert_eq!(get("libc6").candidate_version, "2.36-9+deb12u4");
        assert!(get("libc6").security);
        assert_eq!(get("libc6").impact, Impact::Reboot);
        assert_eq!(get("kubelet").candidate_version, "1.30.2");
        assert!(!get("kubelet").security);
        assert_eq!(get("kubelet").impact, Impact::ServiceRestart);
    }

    #[test]
    fn madison_versions() {
        let out = "   kubelet |   1.30.2-1.1 | file:/srv/repo rota/main amd64 Packages\n   kubelet |   1.30.1-1.1 | file:/srv/repo rota/main amd64 Packages\n";
        assert_eq!(parse_madison(out, "kubelet"), ["1.30.2-1.1", "1.30.1-1.1"]);
    }

    #[test]
    fn dpkg_query_keeps_what_is_on_disk() {
        let out =
            "adduser\t3.134\tii \nold\t1.0\trc \nhalf\t2.0\tiF \nunpacked\t3.0\tiU \ngone\t\tun \n";
        let m = parse_dpkg_query(out);
        assert_eq!(m.len(), 3);
        assert_eq!(m["adduser"], "3.134");
        assert_eq!(m["half"], "2.0");
        assert_eq!(m["unpacked"], "3.0");
    }
}
