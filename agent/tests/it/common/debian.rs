//! The prepared Debian root of the apt suites: real apt and dpkg in a throw-away Debian
//! bookworm root (chroot), with a local `file://` repository of packages built here with
//! `dpkg-deb`.
//!
//! The repository has two suites, `rota` and `rota-security`:
//! - `kubelet` 1.30.1-1.1 → 1.30.2-1.1 (moves only in a Kubernetes upgrade),
//! - `linux-image-rota` 1.0 → 1.1, whose postinst writes `/var/run/reboot-required`,
//! - `heldpkg` 1.0 → 1.1, held with `apt-mark hold`,
//! - `secpkg` 1.0 → 1.0+sec1, the update only in `rota-security`,
//! - `ordinary` 1.0 → 1.1.
//!
//! There is no systemd in a chroot: the root gets a `systemctl` in `/usr/local/sbin` that
//! records its arguments in `/var/log/rota-systemctl.log` and succeeds — a test double of the
//! host's systemd, the only one in these suites.
//!
//! The Debian base (`debootstrap --variant=minbase`) is cached as a tarball under
//! `/var/cache/rota-test/`; the prepared root (repository, packages installed) is built once
//! per test run, and every test works on its own copy.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::debs::{self, PackageFile as File, deb};
use super::{Root, sh};

/// A copy of this run's prepared root, or `None` when the suite is skipped.
pub fn root() -> Option<Root> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    super::copy_of_prepared(&BASE, prepare)
}

fn kubelet_files(version: &str) -> Vec<(&'static str, String, u32)> {
    vec![(
        "usr/bin/kubelet",
        format!("#!/bin/sh\necho 'Kubernetes v{version}'\n"),
        0o755,
    )]
}

/// Builds the prepared root of this run: the base, the repository, the initial packages.
fn prepare() -> PathBuf {
    let root = super::fresh_root("rota-apt-root", &super::base_tarball());

    let repo = root.join("srv/repo");
    let work = tempfile::tempdir().unwrap();
    let rota = repo.join("pool/rota");
    let security = repo.join("pool/security");
    deb(
        work.path(),
        &rota,
        "kubelet",
        "1.30.1-1.1",
        &kubelet_files("1.30.1"),
        None,
    );
    deb(
        work.path(),
        &rota,
        "kubelet",
        "1.30.2-1.1",
        &kubelet_files("1.30.2"),
        None,
    );
    for (version, release) in [("1.0", "6.1.0-rota1"), ("1.1", "6.1.0-rota2")] {
        let vmlinuz = format!("boot/vmlinuz-{release}");
        let files: Vec<File> = vec![(vmlinuz.as_str(), "kernel\n".into(), 0o644)];
        deb(
            work.path(),
            &rota,
            "linux-image-rota",
            version,
            &files,
            Some(&debs::kernel_postinst("linux-image-rota")),
        );
    }
    for v in ["1.0", "1.1"] {
        deb(work.path(), &rota, "heldpkg", v, &[], None);
        deb(work.path(), &rota, "ordinary", v, &[], None);
    }
    deb(work.path(), &rota, "secpkg", "1.0", &[], None);
    deb(work.path(), &security, "secpkg", "1.0+sec1", &[], None);
    debs::index(
        &repo,
        &[("rota", "pool/rota"), ("rota-security", "pool/security")],
    );
    // Only the local repository: the tests must not depend on the network after bootstrap.
    fs::write(root.join("etc/apt/sources.list"), "").unwrap();
    fs::write(
        root.join("etc/apt/sources.list.d/rota.list"),
        debs::source_line("/srv/repo", "rota") + &debs::source_line("/srv/repo", "rota-security"),
    )
    .unwrap();
    super::install_systemctl_double(&root);

    let chroot = |args: &[&str]| {
        sh(Command::new("chroot")
            .arg(&root)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ))
    };
    chroot(&["apt-get", "-q", "update"]);
    chroot(&[
        "apt-get",
        "-q",
        "-y",
        "install",
        "kubelet=1.30.1-1.1",
        "linux-image-rota=1.0",
        "heldpkg=1.0",
        "secpkg=1.0",
        "ordinary=1.0",
    ]);
    chroot(&["apt-mark", "hold", "heldpkg"]);
    // The initial kernel's postinst asked for a reboot; the node has "rebooted" since.
    let _ = fs::remove_file(root.join("run/reboot-required"));
    let _ = fs::remove_file(root.join("run/reboot-required.pkgs"));
    let _ = fs::remove_file(root.join("var/log/rota-systemctl.log"));
    root
}

/// The apt source of the Kubernetes packages in the kubeadm guide's form, at `minor`, under
/// `base`.
pub fn kubernetes_list(base: &str, minor: &str) -> String {
    format!(
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg trusted=yes] {base}/core:/stable:/v{minor}/deb/ /\n"
    )
}

/// A copy of this run's prepared Kubernetes node root (see [`prepare_kubernetes`]), or `None`
/// when the suite is skipped.
pub fn kubernetes_root() -> Option<Root> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    super::copy_of_prepared(&BASE, prepare_kubernetes)
}

/// A kubeadm node at 1.30.9: the pkgs.k8s.io layout served from `/srv/pkgs`
/// (`core:/stable:/v1.30/deb/` with 1.30.9, `v1.31` with 1.31.3 and 1.31.4, `v1.32` with
/// 1.32.0: kubeadm, kubelet, kubectl, each `-1.1`), `/srv/mirror` the same (a link, to point
/// `--kubernetes-repository` at), `etcdctl` from a tools repository, kubeadm/kubelet/kubectl
/// 1.30.9-1.1 installed and held as the kubeadm guide does, `kubernetes.list` at v1.30.
fn prepare_kubernetes() -> PathBuf {
    let root = super::fresh_root("rota-apt-kubernetes-root", &super::base_tarball());
    let work = tempfile::tempdir().unwrap();
    let flat_repo = |dir: &Path| {
        let packages = sh(Command::new("dpkg-scanpackages")
            .args(["-m", ".", "/dev/null"])
            .current_dir(dir));
        fs::write(dir.join("Packages"), packages).unwrap();
        fs::write(
            dir.join("Release"),
            "Origin: rota-test\nLabel: rota-test\nArchitectures: amd64 all\nDescription: rota test flat repository\n",
        )
        .unwrap();
    };
    for (minor, version) in super::KUBERNETES_VERSIONS {
        let dir = root.join(format!("srv/pkgs/core:/stable:/v{minor}/deb"));
        let full = format!("{version}-1.1");
        let kubelet = format!("#!/bin/sh\necho 'Kubernetes v{version}'\n");
        let kubectl = format!("#!/bin/sh\necho 'Client Version: v{version}'\n");
        let kubeadm = super::kubeadm_script(version);
        for (name, script) in [
            ("kubelet", kubelet),
            ("kubectl", kubectl),
            ("kubeadm", kubeadm),
        ] {
            let bin = format!("usr/bin/{name}");
            deb(
                work.path(),
                &dir,
                name,
                &full,
                &[(bin.as_str(), script, 0o755)],
                None,
            );
        }
    }
    for dir in ["v1.30", "v1.31", "v1.32"] {
        flat_repo(&root.join(format!("srv/pkgs/core:/stable:/{dir}/deb")));
    }
    std::os::unix::fs::symlink("/srv/pkgs", root.join("srv/mirror")).unwrap();
    let tools = root.join("srv/tools");
    deb(
        work.path(),
        &tools,
        "etcd-client",
        "3.5.15-1",
        &[("usr/bin/etcdctl", super::etcdctl_script(), 0o755)],
        None,
    );
    flat_repo(&tools);

    fs::write(root.join("etc/apt/sources.list"), "").unwrap();
    fs::create_dir_all(root.join("etc/apt/keyrings")).unwrap();
    fs::write(root.join("etc/apt/keyrings/kubernetes-apt-keyring.gpg"), "").unwrap();
    fs::write(
        root.join("etc/apt/sources.list.d/kubernetes.list"),
        kubernetes_list("file:///srv/pkgs", "1.30"),
    )
    .unwrap();
    fs::write(
        root.join("etc/apt/sources.list.d/tools.list"),
        "deb [trusted=yes] file:///srv/tools/ /\n",
    )
    .unwrap();
    super::install_systemctl_double(&root);
    super::in_root(
        &root,
        "apt-get -q update >/dev/null\n\
         apt-get -q -y install kubeadm=1.30.9-1.1 kubelet=1.30.9-1.1 kubectl=1.30.9-1.1 etcd-client >/dev/null\n\
         apt-mark hold kubelet kubeadm kubectl >/dev/null\n\
         rm -f /var/log/rota-systemctl.log\n",
    );
    root
}
