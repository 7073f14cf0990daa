//! Real dnf and rpm in a throw-away root: the Debian bookworm base with Debian's `dnf`, `rpm`,
//! `createrepo-c` and `dnf-plugins-core` installed (cached as a tarball under
//! `/var/cache/rota-test/`), and a local repository of rpms built inside the root with
//! `rpmbuild`, in two repositories: `rota` and `rota-security` (with `updateinfo.xml`
//! advisories, so `dnf updateinfo --security` works as on Fedora).
//!
//! The root's `/etc/os-release` says Fedora so the agent picks its dnf backend; the rpm
//! database also holds `rota-base`, which provides `/bin/sh` (installed by dpkg here) for
//! scriptlets. Packages:
//! - `kubelet` 1.30.1-1 → 1.30.2-1 (moves only in a Kubernetes upgrade),
//! - `kernel-core-rota` 1.0-1 → 1.1-1, whose `%post` writes `/var/run/reboot-required`,
//! - `heldpkg` 1.0-1 → 1.1-1, locked with `dnf versionlock`,
//! - `secpkg` 1.0-1 → 1.0-2, the update only in `rota-security`, with a security advisory,
//! - `ordinary` 1.0-1 → 1.1-1.
//!
//! `systemctl` is the same recording test double as in `apt_root.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use rota_core::model::{Blocked, Operation};

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Root, in_root, names};
use jiff::Timestamp;
use rota_agent::detect::{self, DetectConfig};
use rota_agent::host::Host;
use rota_agent::ops::{Executor, ExecutorConfig};
use rota_agent::packages::UpgradeScope;

/// A copy of this run's prepared root, or `None` when the suite is skipped.
fn root() -> Option<Root> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let base = BASE.get_or_init(|| match common::missing_prerequisite() {
        Some(why) => Err(why),
        None => Ok(prepare()),
    });
    common::prepared_or_skip(base).map(Root::copy_of)
}

/// The Debian base with dnf and rpm from Debian's archive, once per machine.
fn dnf_tarball() -> PathBuf {
    let base = common::base_tarball();
    common::cached_tarball("bookworm-dnf.tar", |dir| {
        fs::create_dir_all(dir).unwrap();
        common::sh(
            std::process::Command::new("tar")
                .arg("-C")
                .arg(dir)
                .arg("-xf")
                .arg(&base),
        );
        in_root(
            dir,
            "apt-get -q update >/dev/null && apt-get install -y -q --no-install-recommends \
             dnf rpm createrepo-c dnf-plugins-core >/dev/null && apt-get clean",
        );
    })
}

/// Builds `name-version-release.noarch.rpm` into `/srv/rpm/REPO` inside the root; `body` is
/// the spec after the common preamble.
fn rpm_script(name: &str, version: &str, release: &str, repo: &str, body: &str) -> String {
    format!(
        r#"
mkdir -p /tmp/rpmbuild/SPECS /srv/rpm/{repo}
cat > /tmp/rpmbuild/SPECS/{name}-{version}-{release}.spec <<'SPEC'
Name: {name}
Version: {version}
Release: {release}
Summary: rota test package
License: MIT
BuildArch: noarch
AutoReqProv: no
{body}
SPEC
rpmbuild -bb --quiet --define "_topdir /tmp/rpmbuild" /tmp/rpmbuild/SPECS/{name}-{version}-{release}.spec 2>/dev/null
cp /tmp/rpmbuild/RPMS/noarch/{name}-{version}-{release}.noarch.rpm /srv/rpm/{repo}/
"#
    )
}

/// A spec body: a README, `install` and `files` additions, and scriptlets.
fn body(name: &str, version: &str, install: &str, files: &str, scripts: &str) -> String {
    format!(
        "%description\nrota test package {name}\n%install\nmkdir -p %{{buildroot}}/usr/share/doc/{name}\necho '{name} {version}' > %{{buildroot}}/usr/share/doc/{name}/README\n{install}\n%files\n/usr/share/doc/{name}/README\n{files}\n{scripts}"
    )
}

const UPDATEINFO: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<updates>
  <update from="rota@example.invalid" status="stable" type="security" version="1.4">
    <id>ROTA-2024-0001</id>
    <title>secpkg security update</title>
    <issued date="2024-01-01 00:00:00"/>
    <severity>Important</severity>
    <description>A security fix.</description>
    <pkglist>
      <collection short="rota">
        <name>rota</name>
        <package name="secpkg" version="1.0" release="2" epoch="0" arch="noarch">
          <filename>secpkg-1.0-2.noarch.rpm</filename>
        </package>
      </collection>
    </pkglist>
  </update>
</updates>
"#;

fn prepare() -> PathBuf {
    let root = common::fresh_root("rota-dnf-root", &dnf_tarball());
    let kubelet = |v: &str| {
        body(
            "kubelet",
            v,
            &format!(
                "mkdir -p %{{buildroot}}/usr/bin\nprintf '#!/bin/sh\\necho Kubernetes v{v}\\n' > %{{buildroot}}/usr/bin/kubelet\nchmod 755 %{{buildroot}}/usr/bin/kubelet"
            ),
            "/usr/bin/kubelet",
            "",
        )
    };
    let kernel = |v: &str| {
        body(
            "kernel-core-rota",
            v,
            "",
            "",
            "%post\ntouch /var/run/reboot-required\necho kernel-core-rota >> /var/run/reboot-required.pkgs",
        )
    };
    let plain = |n: &str, v: &str| body(n, v, "", "", "");
    let mut script = String::new();
    script += &rpm_script(
        "rota-base",
        "1",
        "1",
        "rota",
        "Provides: /bin/sh\n%description\nThe shell that dpkg installed.\n%files\n",
    );
    for (name, version, release, repo, spec) in [
        ("kubelet", "1.30.1", "1", "rota", kubelet("1.30.1")),
        ("kubelet", "1.30.2", "1", "rota", kubelet("1.30.2")),
        ("kernel-core-rota", "1.0", "1", "rota", kernel("1.0")),
        ("kernel-core-rota", "1.1", "1", "rota", kernel("1.1")),
        ("heldpkg", "1.0", "1", "rota", plain("heldpkg", "1.0")),
        ("heldpkg", "1.1", "1", "rota", plain("heldpkg", "1.1")),
        ("ordinary", "1.0", "1", "rota", plain("ordinary", "1.0")),
        ("ordinary", "1.1", "1", "rota", plain("ordinary", "1.1")),
        ("secpkg", "1.0", "1", "rota", plain("secpkg", "1.0")),
        ("secpkg", "1.0", "2", "security", plain("secpkg", "1.0")),
    ] {
        script += &rpm_script(name, version, release, repo, &spec);
    }
    fs::write(root.join("tmp/updateinfo.xml"), UPDATEINFO).unwrap();
    script += r#"
createrepo_c -q /srv/rpm/rota
createrepo_c -q /srv/rpm/security
modifyrepo_c --mdtype=updateinfo /tmp/updateinfo.xml /srv/rpm/security/repodata >/dev/null
mkdir -p /etc/yum.repos.d /etc/dnf/vars
echo 39 > /etc/dnf/vars/releasever
sed -i 's/^gpgcheck=.*/gpgcheck=False/' /etc/dnf/dnf.conf
sed -i 's/^enabled.*/enabled=0/' /etc/dnf/plugins/local.conf
cat > /etc/yum.repos.d/rota.repo <<'R'
[rota]
name=rota
baseurl=file:///srv/rpm/rota
gpgcheck=0
[rota-security]
name=rota-security
baseurl=file:///srv/rpm/security
gpgcheck=0
R
dnf -q -y makecache >/dev/null
dnf -q -y install rota-base ordinary-1.0-1 secpkg-1.0-1 kernel-core-rota-1.0-1 kubelet-1.30.1-1 heldpkg-1.0-1 >/dev/null
dnf -q versionlock add heldpkg >/dev/null
rm -f /run/reboot-required /run/reboot-required.pkgs
"#;
    in_root(&root, &script);
    fs::write(
        root.join("etc/os-release"),
        "NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=39\nPRETTY_NAME=\"Fedora Linux 39 (rota test root)\"\n",
    )
    .unwrap();
    common::install_systemctl_double(&root);
    root
}

#[test]
fn check_lists_pending_upgrades_with_the_security_split() {
    let Some(root) = root() else { return };
    let (code, facts) = root.check(&[]);
    assert_eq!(code, 0, "{:?}", facts.errors);
    assert_eq!(facts.package_backend, "dnf");
    assert_eq!(names(facts.actionable_upgrades(true)), ["secpkg"]);
    assert_eq!(
        names(facts.actionable_upgrades(false).filter(|p| !p.security)),
        ["kernel-core-rota", "ordinary"]
    );
    let kept: Vec<(&str, Option<Blocked>)> = facts
        .pending_upgrades
        .iter()
        .filter(|p| p.blocked.is_some())
        .map(|p| (p.name.as_str(), p.blocked))
        .collect();
    assert_eq!(
        kept,
        [
            ("heldpkg", Some(Blocked::Held)),
            ("kubelet", Some(Blocked::KubernetesPin))
        ]
    );
    let sec = facts
        .pending_upgrades
        .iter()
        .find(|p| p.name == "secpkg")
        .unwrap();
    assert_eq!(
        (sec.current_version.as_str(), sec.candidate_version.as_str()),
        ("1.0-1", "1.0-2")
    );
    assert_eq!(facts.kubelet_version, "1.30.1");
    assert_eq!(facts.os_image, "Fedora Linux 39 (rota test root)");
}

#[test]
fn upgrade_security_only_upgrades_only_security_packages() {
    let Some(root) = root() else { return };
    let out = root.agent(&["upgrade", "--security-only", "--yes"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(root.version("secpkg").unwrap(), "1.0-2");
    assert_eq!(root.version("ordinary").unwrap(), "1.0-1");
    assert_eq!(root.version("kernel-core-rota").unwrap(), "1.0-1");
}

#[test]
fn plain_upgrade_keeps_locks_and_kubelet_and_leaves_the_sentinel() {
    let Some(root) = root() else { return };
    let out = root.agent(&["upgrade", "--yes"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(root.version("ordinary").unwrap(), "1.1-1");
    assert_eq!(root.version("secpkg").unwrap(), "1.0-2");
    assert_eq!(root.version("kernel-core-rota").unwrap(), "1.1-1");
    assert_eq!(
        root.version("heldpkg").unwrap(),
        "1.0-1",
        "versionlock is kept"
    );
    assert_eq!(
        root.version("kubelet").unwrap(),
        "1.30.1-1",
        "kubelet is not moved"
    );
    let (_, facts) = root.check(&[]);
    assert!(facts.reboot_required);
    assert_eq!(facts.reboot_reasons, ["sentinel /var/run/reboot-required"]);
    assert_eq!(facts.reboot_packages, ["kernel-core-rota"]);
}

#[test]
fn rollback_restores_the_previous_versions() {
    let Some(root) = root() else { return };
    let host = root.host();
    let pm = host.packages().unwrap();
    let changes = pm.upgrade(&UpgradeScope::All.into()).unwrap();
    let changed: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(changed, ["kernel-core-rota", "ordinary", "secpkg"]);
    pm.rollback(&changes).unwrap();
    assert_eq!(pm.installed_version("ordinary").unwrap().unwrap(), "1.0-1");
    assert_eq!(pm.installed_version("secpkg").unwrap().unwrap(), "1.0-1");
    assert_eq!(
        pm.installed_version("kernel-core-rota").unwrap().unwrap(),
        "1.0-1"
    );
}

#[test]
fn kubernetes_upgrade_moves_kubelet_and_restarts_it_through_systemctl() {
    let Some(root) = root() else { return };
    let host = root.host();
    let config = ExecutorConfig::default();
    let rec = common::Recorder::default();
    let op = Operation::KubernetesUpgrade {
        version: "1.30.2".into(),
        kubeadm: rota_core::model::KubeadmStep::Node,
    };
    Executor::start(&host, &config, &rec, 3, op, Timestamp::now())
        .unwrap()
        .run()
        .unwrap();
    let done = rec.0.lock().unwrap().pop().unwrap();
    assert!(done.success, "{done:?}");
    assert_eq!(root.version("kubelet").unwrap(), "1.30.2-1");
    assert_eq!(root.version("ordinary").unwrap(), "1.0-1");
    assert_eq!(
        root.systemctl_calls(),
        [
            "daemon-reload",
            "restart kubelet",
            "is-active --quiet kubelet"
        ]
    );
    assert_eq!(
        detect::detect(&host, &DetectConfig::default()).kubelet_version,
        "1.30.2"
    );
}
