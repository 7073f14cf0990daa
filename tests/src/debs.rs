//! Debian packages and a local apt repository built with `dpkg-deb` and `dpkg-scanpackages`, for
//! the suites that run real apt: the agent's root suites (`agent/tests/it/common/debian.rs`, a
//! chroot) and the VM suite ([`crate::vm`], a booted guest).
//!
//! Only `std`: the agent's suites include this file by path, as they do `prerequisites.rs`.

// These helpers run only inside tests, and fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A file of a package: its path in the package, its content and its mode.
pub type PackageFile<'a> = (&'a str, String, u32);

/// Runs `cmd` and returns its standard output; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds `pool/NAME_VERSION_all.deb` in `work`: `files` (and a README under
/// `/usr/share/doc/NAME`), with `postinst` as its maintainer script when given.
pub fn deb(
    work: &Path,
    pool: &Path,
    name: &str,
    version: &str,
    files: &[PackageFile],
    postinst: Option<&str>,
) {
    let dir = work.join(format!("{name}_{version}"));
    fs::create_dir_all(dir.join("DEBIAN")).unwrap();
    fs::write(
        dir.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: rota tests <rota@example.invalid>\nSection: misc\nPriority: optional\nDescription: rota test package {name}\n"
        ),
    )
    .unwrap();
    if let Some(script) = postinst {
        let p = dir.join("DEBIAN/postinst");
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let doc = format!("usr/share/doc/{name}/README");
    let readme: PackageFile = (doc.as_str(), format!("{name} {version}\n"), 0o644);
    for (path, content, mode) in files.iter().chain(std::iter::once(&readme)) {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
    }
    fs::create_dir_all(pool).unwrap();
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&dir)
        .arg(pool.join(format!("{name}_{version}_all.deb"))));
}

/// Writes the indexes of a flat apt repository in `repo`: one suite per `(suite, pool)`, the
/// pool a directory under `repo`, served as `deb [trusted=yes] file://REPO SUITE main`. A suite
/// whose name contains `security` is a security suite to the agent.
pub fn index(repo: &Path, suites: &[(&str, &str)]) {
    for (suite, pool) in suites {
        let packages = run(Command::new("dpkg-scanpackages")
            .args(["-m", pool, "/dev/null"])
            .current_dir(repo));
        // With the indexes' hashes and a date in the Release file: without them, a later
        // `apt-get update` that adds another suite drops this one's lists.
        let mut hashes = String::new();
        for arch in ["binary-amd64", "binary-all"] {
            let dir = repo.join(format!("dists/{suite}/main/{arch}"));
            fs::create_dir_all(&dir).unwrap();
            let index = dir.join("Packages");
            fs::write(&index, &packages).unwrap();
            let sum = run(Command::new("sha256sum").arg(&index));
            let sum = sum.split_whitespace().next().unwrap_or_default();
            hashes.push_str(&format!(" {sum} {} main/{arch}/Packages\n", packages.len()));
        }
        let date = run(Command::new("date").args(["-Ru"]));
        fs::write(
            repo.join(format!("dists/{suite}/Release")),
            format!(
                "Origin: rota-test\nLabel: {suite}\nSuite: {suite}\nCodename: {suite}\nDate: {}\nArchitectures: amd64 all\nComponents: main\nDescription: rota test suite {suite}\nSHA256:\n{hashes}",
                date.trim()
            ),
        )
        .unwrap();
    }
}

/// The `sources.list` line of suite `suite` of a repository at `repo` (a path in the root).
pub fn source_line(repo: &str, suite: &str) -> String {
    format!("deb [trusted=yes] file://{repo} {suite} main\n")
}

/// The postinst of a kernel-like package: asks for a reboot, as Debian's kernel packages do.
pub fn kernel_postinst(package: &str) -> String {
    format!(
        "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n  touch /var/run/reboot-required\n  echo {package} >> /var/run/reboot-required.pkgs\nfi\n"
    )
}
