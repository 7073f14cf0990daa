//! The dnf/rpm backend (Fedora, RHEL and its rebuilds, Amazon Linux 2023).
//!
//! Pending upgrades come from `dnf check-update` (exit 100 when there are some), the security
//! split from `dnf updateinfo list --security --updates`, holds from `dnf versionlock list`.
//! Upgrades name exact versions, so nothing outside the selection moves.
use rota_core::model::{Blocked, Impact, PackagePin, PendingPackage};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{
    InstallPurpose, KUBERNETES_PACKAGES, PackageChange, PackageManager, RepairOutcome,
    UpgradeSelection, check_pins, diff,
};
use crate::detect::version::VersionScheme;
use crate::host::{ExitStatus, Host, HostCommand};
use crate::{Error, Result};

/// How long one transaction may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a query may take (metadata downloads included).
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

/// dnf/rpm on a [`Host`].
pub struct Dnf<'a> {
    host: &'a dyn Host,
}

impl<'a> Dnf<'a> {
    /// The backend for `host`.
    pub fn new(host: &'a dyn Host) -> Self {
        Dnf { host }
    }

    fn run(&self, argv: &[&str], timeout: Duration) -> Result<crate::host::CommandOutput> {
        self.host
            .run(&HostCommand::new(argv.iter().copied()).timeout(timeout))
    }

    fn run_ok(&self, argv: &[&str], timeout: Duration) -> Result<String> {
        let cmd = HostCommand::new(argv.iter().copied()).timeout(timeout);
        Ok(self.host.run(&cmd)?.check(&cmd)?.stdout)
    }

    /// Runs a transaction and returns what changed.
    fn transaction(&self, argv: &[&str]) -> Result<Vec<PackageChange>> {
        let before = self.installed()?;
        let result = self.run_ok(argv, INSTALL_TIMEOUT);
        let after = self.installed()?;
        result?;
        Ok(diff(&before, &after))
    }

    fn security_names(&self) -> Result<BTreeSet<String>> {
        let out = self.run_ok(
            &["dnf", "-q", "updateinfo", "list", "--security", "--updates"],
            QUERY_TIMEOUT,
        )?;
        Ok(parse_updateinfo(&out))
    }
}

impl PackageManager for Dnf<'_> {
    fn name(&self) -> &'static str {
        "dnf"
    }

    fn refresh(&self) -> Result<()> {
        self.run_ok(&["dnf", "-q", "-y", "makecache"], QUERY_TIMEOUT)
            .map(drop)
    }

    fn upgradable(&self) -> Result<Vec<PendingPackage>> {
        // Locked and excluded packages are listed too (and marked blocked below), so `check`
        // can say what is kept back and why.
        let cmd = HostCommand::new([
            "dnf",
            "-q",
            "check-update",
            "--disableplugin=versionlock",
            "--disableexcludes=all",
        ])
        .timeout(QUERY_TIMEOUT);
        let out = self.host.run(&cmd)?;
        let candidates = match out.status {
            ExitStatus::Exited(0) => return Ok(Vec::new()),
            ExitStatus::Exited(100) => parse_check_update(&out.stdout),
            _ => {
                return Err(out
                    .check(&cmd)
                    .err()
                    .unwrap_or(Error::parse("dnf check-update", "failed")));
            }
        };
        let installed = self.installed()?;
        let security = self.security_names()?;
        let holds = self.holds()?;
        let mut pending: Vec<PendingPackage> = candidates
            .into_iter()
            .filter_map(|(name, candidate)| {
                let current = installed.get(&name)?.clone();
                Some(PendingPackage {
                    security: security.contains(&name),
                    impact: Impact::of_package(&name),
                    blocked: if KUBERNETES_PACKAGES.contains(&name.as_str()) {
                        Some(Blocked::KubernetesPin)
                    } else if holds.contains(&name) {
                        Some(Blocked::Held)
                    } else {
                        None
                    },
                    name,
                    current_version: current,
                    candidate_version: candidate,
                })
            })
            .collect();
        pending.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pending)
    }

    fn upgrade(&self, selection: &UpgradeSelection) -> Result<Vec<PackageChange>> {
        let specs: Vec<String> = self
            .upgradable()?
            .into_iter()
            .filter(|p| selection.selects(p))
            .map(|p| format!("{}-{}", p.name, p.candidate_version))
            .collect();
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let mut argv = vec!["dnf", "-y", "upgrade"];
        argv.extend(specs.iter().map(String::as_str));
        self.transaction(&argv)
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
        let specs: Vec<String> = pins
            .iter()
            .map(|p| format!("{}-{}", p.name, p.version))
            .collect();
        let mut argv = match purpose {
            InstallPurpose::Named => vec!["dnf", "-y", "install"],
            // The Kubernetes repository's `exclude=kubelet kubeadm kubectl` (its documented
            // setup) keeps them out of plain upgrades; a Kubernetes upgrade lifts it.
            InstallPurpose::Kubernetes => vec!["dnf", "-y", "install", "--disableexcludes=all"],
            InstallPurpose::Rollback => vec!["dnf", "-y", "downgrade", "--disableexcludes=all"],
        };
        argv.extend(specs.iter().map(String::as_str));
        let locked: Vec<&str> = pins
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| purpose != InstallPurpose::Named && holds.iter().any(|h| h == n))
            .collect();
        if !locked.is_empty() {
            let mut unlock = vec!["dnf", "-q", "versionlock", "delete"];
            unlock.extend(&locked);
            self.run_ok(&unlock, QUERY_TIMEOUT)?;
        }
        let result = self.transaction(&argv);
        if !locked.is_empty() {
            let mut relock = vec!["dnf", "-q", "versionlock", "add"];
            relock.extend(&locked);
            self.run_ok(&relock, QUERY_TIMEOUT)?;
        }
        result
    }

    fn installed(&self) -> Result<BTreeMap<String, String>> {
        let out = self.run_ok(
            &[
                "rpm",
                "-qa",
                "--qf",
                "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n",
            ],
            QUERY_TIMEOUT,
        )?;
        Ok(parse_rpm_qa(&out))
    }

    fn available_versions(&self, name: &str) -> Result<Vec<String>> {
        let out = self.run_ok(
            &[
                "dnf",
                "-q",
                "list",
                "--available",
                "--showduplicates",
                "--disableexcludes=all",
                name,
            ],
            QUERY_TIMEOUT,
        )?;
        Ok(parse_check_update(&out)
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect())
    }

    fn holds(&self) -> Result<Vec<String>> {
        let out = self.run(&["dnf", "-q", "versionlock", "list"], QUERY_TIMEOUT)?;
        if !out.success() {
            // Without the versionlock plugin nothing can be locked.
            if out.stderr.contains("No such command") {
                return Ok(Vec::new());
            }
            let cmd = HostCommand::new(["dnf", "-q", "versionlock", "list"]);
            return Err(out
                .check(&cmd)
                .err()
                .unwrap_or(Error::parse("dnf versionlock", "failed")));
        }
        Ok(parse_versionlock(&out.stdout))
    }

    fn repair(&self) -> Result<RepairOutcome> {
        // An interrupted rpm transaction leaves both the old and the new package installed.
        let dups = self.run(&["dnf", "-q", "check", "--duplicates"], QUERY_TIMEOUT)?;
        let found = format!("{}{}", dups.stdout, dups.stderr);
        if dups.success() && found.trim().is_empty() {
            return Ok(RepairOutcome::Clean);
        }
        self.run_ok(&["dnf", "-y", "remove", "--duplicates"], INSTALL_TIMEOUT)?;
        Ok(RepairOutcome::Repaired(found.trim().to_string()))
    }
}

/// Splits `name-[epoch:]version-release` into the name and the rest.
fn split_nevr(nevr: &str) -> Option<(&str, &str)> {
    let (rest, _release) = nevr.rsplit_once('-')?;
    let (name, _version) = rest.rsplit_once('-')?;
    Some((name, &nevr[name.len() + 1..]))
}

/// Strips `.arch` from `name.arch` or a NEVRA.
fn strip_arch(s: &str) -> &str {
    s.rsplit_once('.').map_or(s, |(n, _)| n)
}

/// `dnf check-update` lines `name.arch  [epoch:]version-release  repo` → (name, version).
/// Stops at the "Obsoleting Packages" section, whose lines are not upgrades.
fn parse_check_update(out: &str) -> Vec<(String, String)> {
    let mut result = Vec::new();
    for line in out.lines() {
        if line.starts_with("Obsoleting") {
            break;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 3 || !fields[0].contains('.') {
            continue;
        }
        result.push((strip_arch(fields[0]).to_string(), fields[1].to_string()));
    }
    result
}

/// `dnf updateinfo list --security` lines `ADVISORY  SEVERITY/Sec.  NEVRA` → package names.
fn parse_updateinfo(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let nevra = fields.get(2)?;
            split_nevr(strip_arch(nevra)).map(|(n, _)| n.to_string())
        })
        .collect()
}

/// `dnf versionlock list` lines `kubelet-0:1.30.1-150500.1.1.*` → names.
fn parse_versionlock(out: &str) -> Vec<String> {
    let mut names: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| split_nevr(l.trim_end_matches(".*")).map(|(n, _)| n.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `rpm -qa --qf '%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n'`; the newest of install-only
/// packages (kernels), epoch 0 left out as rpm prints it.
fn parse_rpm_qa(out: &str) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for line in out.lines() {
        let Some((name, evr)) = line.split_once('\t') else {
            continue;
        };
        let evr = evr.strip_prefix("0:").unwrap_or(evr).to_string();
        match map.get(name) {
            Some(old) if VersionScheme::Rpm.compare(old, &evr).is_ge() => {}
            _ => {
                map.insert(name.to_string(), evr);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from Debian bookworm's dnf 4.14 on a local createrepo_c repository (the
    /// fixture of `tests/dnf_root.rs`).
    #[test]
    fn recorded_outputs_of_dnf_4_14() {
        let check_update = "\n\
kernel-core-rota.noarch                  1.1-1                     rota         \n\
kubelet.noarch                           1.30.2-1                  rota         \n\
ordinary.noarch                          1.1-1                     rota         \n\
secpkg.noarch                            1.0-2                     rota-security\n";
        assert_eq!(
            parse_check_update(check_update),
            [
                ("kernel-core-rota", "1.1-1"),
                ("kubelet", "1.30.2-1"),
                ("ordinary", "1.1-1"),
                ("secpkg", "1.0-2"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        let updateinfo = "ROTA-2024-0001 Important/Sec. secpkg-1.0-2.noarch\n";
        assert_eq!(
            parse_updateinfo(updateinfo),
            BTreeSet::from(["secpkg".to_string()])
        );
        assert_eq!(parse_versionlock("heldpkg-0:1.0-1.*\n"), ["heldpkg"]);
        let list = "Available Packages\n\
kubelet.noarch                          1.30.1-1                           rota \n\
kubelet.noarch                          1.30.2-1                           rota \n";
        let versions: Vec<String> = parse_check_update(list)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(versions, ["1.30.1-1", "1.30.2-1"]);
    }

    #[test]
    fn check_update_output() {
        let out = "\n\
kernel.x86_64                         6.5.12-300.fc39              updates\n\
kubelet.x86_64                        1.30.2-150500.1.1            kubernetes\n\
openssl-libs.x86_64                   1:3.1.1-4.fc39               updates\n\
Obsoleting Packages\n\
grub2-tools.x86_64                    1:2.06-100.fc39              updates\n";
        assert_eq!(
            parse_check_update(out),
            vec![
                ("kernel".to_string(), "6.5.12-300.fc39".to_string()),
                ("kubelet".to_string(), "1.30.2-150500.1.1".to_string()),
                ("openssl-libs".to_string(), "1:3.1.1-4.fc39".to_string()),
            ]
        );
    }

    #[test]
    fn updateinfo_versionlock_and_rpm_qa() {
        let info = "FEDORA-2023-1a2b3c4d5e Moderate/Sec.  openssl-libs-1:3.1.1-4.fc39.x86_64\n\
FEDORA-2023-9f8e7d6c5b Important/Sec. kernel-6.5.12-300.fc39.x86_64\n";
        let names = parse_updateinfo(info);
        assert!(names.contains("openssl-libs"));
        assert!(names.contains("kernel"));
        assert_eq!(names.len(), 2);
        let locks = "kubelet-0:1.30.1-150500.1.1.*\nmy-app-2.0-1.fc39.*\n";
        assert_eq!(parse_versionlock(locks), ["kubelet", "my-app"]);
        let qa =
            "kernel\t0:6.5.6-300.fc39\nkernel\t0:6.5.12-300.fc39\nopenssl-libs\t1:3.1.1-1.fc39\n";
        let m = parse_rpm_qa(qa);
        assert_eq!(m["kernel"], "6.5.12-300.fc39");
        assert_eq!(m["openssl-libs"], "1:3.1.1-1.fc39");
    }
}
