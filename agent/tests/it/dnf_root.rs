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
//!
//! The Kubernetes upgrade tests use a second root ([`prepare_kubernetes`]): the pkgs.k8s.io
//! per-minor rpm layout with kubeadm/kubelet/kubectl and etcdctl stand-ins
//! (`common::kubeadm_script`, `common::etcdctl_script`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rota_core::model::{Blocked, KubeadmStep};

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::common::{Root, in_root, names};
use rota_agent::host::Host;
use rota_agent::packages::UpgradeScope;

/// A copy of this run's prepared root, or `None` when the suite is skipped.
fn root() -> Option<Root> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    crate::common::copy_of_prepared(&BASE, prepare)
}

/// The Debian base with dnf and rpm from Debian's archive, once per machine.
fn dnf_tarball() -> PathBuf {
    let base = crate::common::base_tarball();
    crate::common::cached_tarball("bookworm-dnf.tar", |dir| {
        fs::create_dir_all(dir).unwrap();
        crate::common::sh(
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
    let root = crate::common::fresh_root("rota-dnf-root", &dnf_tarball());
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
    crate::common::install_systemctl_double(&root);
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

/// The dnf repository of the Kubernetes packages in the kubeadm guide's form, at `minor`,
/// under `base`.
fn kubernetes_repo(base: &str, minor: &str) -> String {
    format!(
        "[kubernetes]\nname=Kubernetes\nbaseurl={base}/core:/stable:/v{minor}/rpm/\nenabled=1\ngpgcheck=0\ngpgkey={base}/core:/stable:/v{minor}/rpm/repodata/repomd.xml.key\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"
    )
}

/// A copy of this run's prepared Kubernetes node root, or `None` when the suite is skipped.
fn kubernetes_root() -> Option<Root> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    crate::common::copy_of_prepared(&BASE, prepare_kubernetes)
}

/// The dnf twin of the apt suite's Kubernetes node: `/srv/pkgs/core:/stable:/vX.Y/rpm/`
/// repositories (createrepo_c) of kubeadm/kubelet/kubectl `-150500.1.1` rpms built here with the
/// same stand-ins, `/srv/mirror` a link to them, etcdctl from a tools repository,
/// kubeadm/kubelet/kubectl 1.30.9 installed and version-locked, `kubernetes.repo` at v1.30
/// with the guide's `exclude=` line.
fn prepare_kubernetes() -> PathBuf {
    let root = crate::common::fresh_root("rota-dnf-kubernetes-root", &dnf_tarball());
    let stage = root.join("tmp/stage");
    fs::create_dir_all(&stage).unwrap();
    let mut script = String::new();
    let packaged = |name: &str, version: &str, file: &str| {
        body(
            name,
            version,
            &format!(
                "mkdir -p %{{buildroot}}/usr/bin\ncp /tmp/stage/{file} %{{buildroot}}/usr/bin/{name}\nchmod 755 %{{buildroot}}/usr/bin/{name}"
            ),
            &format!("/usr/bin/{name}"),
            "",
        )
    };
    for (minor, version) in crate::common::KUBERNETES_VERSIONS {
        for (name, text) in [
            (
                "kubelet",
                format!("#!/bin/sh\necho 'Kubernetes v{version}'\n"),
            ),
            (
                "kubectl",
                format!("#!/bin/sh\necho 'Client Version: v{version}'\n"),
            ),
            ("kubeadm", crate::common::kubeadm_script(version)),
        ] {
            let file = format!("{name}-{version}");
            fs::write(stage.join(&file), text).unwrap();
            script += &rpm_script(
                name,
                version,
                "150500.1.1",
                &format!("k8s-v{minor}"),
                &packaged(name, version, &file),
            );
        }
    }
    fs::write(stage.join("etcdctl"), crate::common::etcdctl_script()).unwrap();
    script += &rpm_script(
        "etcd",
        "3.5.15",
        "1",
        "tools",
        &packaged("etcdctl", "3.5.15", "etcdctl"),
    );
    script += r#"
for minor in 1.30 1.31 1.32; do
  createrepo_c -q /srv/rpm/k8s-v$minor
  mkdir -p "/srv/pkgs/core:/stable:/v$minor"
  ln -s /srv/rpm/k8s-v$minor "/srv/pkgs/core:/stable:/v$minor/rpm"
done
ln -s /srv/pkgs /srv/mirror
createrepo_c -q /srv/rpm/tools
mkdir -p /etc/yum.repos.d /etc/dnf/vars
echo 39 > /etc/dnf/vars/releasever
sed -i 's/^gpgcheck=.*/gpgcheck=False/' /etc/dnf/dnf.conf
sed -i 's/^enabled.*/enabled=0/' /etc/dnf/plugins/local.conf
cat > /etc/yum.repos.d/tools.repo <<'R'
[tools]
name=tools
baseurl=file:///srv/rpm/tools
gpgcheck=0
R
"#;
    fs::write(
        root.join("tmp/kubernetes.repo"),
        kubernetes_repo("file:///srv/pkgs", "1.30"),
    )
    .unwrap();
    script += r#"
cp /tmp/kubernetes.repo /etc/yum.repos.d/kubernetes.repo
dnf -q -y makecache >/dev/null
dnf -q -y install --disableexcludes=all kubeadm-1.30.9 kubelet-1.30.9 kubectl-1.30.9 etcd >/dev/null
dnf -q versionlock add kubeadm kubelet kubectl >/dev/null
"#;
    in_root(&root, &script);
    fs::write(
        root.join("etc/os-release"),
        "NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=39\nPRETTY_NAME=\"Fedora Linux 39 (rota test root)\"\n",
    )
    .unwrap();
    crate::common::install_systemctl_double(&root);
    root
}

fn kubernetes_repo_now(root: &Root) -> String {
    fs::read_to_string(root.path().join("etc/yum.repos.d/kubernetes.repo")).unwrap()
}

fn locks(root: &Root) -> Vec<String> {
    root.host().packages().unwrap().holds().unwrap()
}

/// The first control-plane node, 1.30 → 1.31 with dnf: snapshot, `baseurl=`/`gpgkey=`
/// switched (to a mirror), kubeadm, plan, apply, kubelet/kubectl, all version-locked again.
#[test]
fn first_control_plane_node_upgrades_the_kubeadm_way() {
    let Some(root) = kubernetes_root() else {
        return;
    };
    crate::common::make_control_plane(&root);
    let done = crate::common::kubernetes_upgrade(
        &root,
        "1.31",
        KubeadmStep::Apply,
        Some("file:///srv/mirror"),
    );
    assert!(done.success, "{done:?}");
    for name in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(root.version(name).unwrap(), "1.31.4-150500.1.1", "{name}");
    }
    assert_eq!(
        locks(&root),
        ["kubeadm", "kubectl", "kubelet"],
        "locked again"
    );
    assert_eq!(
        kubernetes_repo_now(&root),
        kubernetes_repo("file:///srv/mirror", "1.31")
    );
    assert_eq!(
        crate::common::log_lines(root.path(), crate::common::KUBEADM_LOG),
        ["upgrade plan v1.31.4", "upgrade apply v1.31.4 --yes"]
    );
    let etcdctl = crate::common::log_lines(root.path(), crate::common::ETCDCTL_LOG);
    assert!(etcdctl[0].contains("snapshot save"), "{etcdctl:?}");
    assert!(etcdctl[1].contains("snapshot status"), "{etcdctl:?}");
    assert_eq!(
        root.systemctl_calls(),
        [
            "daemon-reload",
            "restart kubelet",
            "is-active --quiet kubelet"
        ]
    );
    let (_, facts) = root.check(&[]);
    assert_eq!(facts.kubelet_version, "1.31.4");
    assert!(facts.etcd.snapshot.is_some());
}

/// `kubeadm upgrade apply` fails: no rollback, the message says what the node has.
#[test]
fn a_failed_kubeadm_apply_leaves_the_node_as_it_says() {
    let Some(root) = kubernetes_root() else {
        return;
    };
    crate::common::make_control_plane(&root);
    fs::write(root.path().join(crate::common::FAIL_APPLY), "").unwrap();
    let done = crate::common::kubernetes_upgrade(&root, "1.31.4", KubeadmStep::Apply, None);
    assert!(!done.success);
    assert!(
        done.message.ends_with(
            "kubeadm is 1.31.4-150500.1.1, kubelet/kubectl still 1.30.9-150500.1.1, repository at v1.31: \
             the control plane may be partly upgraded; nothing was rolled back; the slot stays held"
        ),
        "{}",
        done.message
    );
    assert_eq!(root.version("kubelet").unwrap(), "1.30.9-150500.1.1");
    assert_eq!(
        kubernetes_repo_now(&root),
        kubernetes_repo("file:///srv/pkgs", "1.31")
    );
}

/// The plan does not offer the target: kubeadm is downgraded and locked again, the `.repo`
/// file restored.
#[test]
fn a_failure_before_apply_rolls_packages_and_repository_back() {
    let Some(root) = kubernetes_root() else {
        return;
    };
    crate::common::make_control_plane(&root);
    let before = kubernetes_repo_now(&root);
    fs::write(root.path().join(crate::common::PLAN_OFFERS), "v1.31.3").unwrap();
    let done = crate::common::kubernetes_upgrade(&root, "1.31.4", KubeadmStep::Apply, None);
    assert!(!done.success);
    assert!(
        done.message
            .contains("rolled back kubeadm 1.31.4-150500.1.1 to 1.30.9-150500.1.1"),
        "{}",
        done.message
    );
    for name in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(root.version(name).unwrap(), "1.30.9-150500.1.1", "{name}");
    }
    assert_eq!(locks(&root), ["kubeadm", "kubectl", "kubelet"]);
    assert_eq!(kubernetes_repo_now(&root), before);
}
