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
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::{Root, sh};

#[path = "../../../tests/src/debs.rs"]
mod debs;
use debs::{PackageFile as File, deb};

/// A copy of this run's prepared root, or `None` when the suite is skipped.
pub fn root() -> Option<Root> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let base = BASE.get_or_init(|| match super::missing_prerequisite() {
        Some(why) => Err(why),
        None => Ok(prepare()),
    });
    super::prepared_or_skip(base).map(Root::copy_of)
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
