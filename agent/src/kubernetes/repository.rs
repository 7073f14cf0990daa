//! The Kubernetes package repository of the node, switched to the target minor (pkgs.k8s.io
//! publishes one repository per minor: `<base>/core:/stable:/v1.31/deb/` and `.../rpm/`).
//! The rewriting is pure ([`switch_apt`], [`switch_dnf`]); [`save`], [`switch`] and [`restore`]
//! read and write the file on the host.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::KubernetesConfig;
use crate::detect::os::OsFamily;
use crate::host::{Host, read_text_opt};
use crate::packages::read_os_release;
use crate::{Error, Result};

/// Which package manager's repository file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepositoryKind {
    /// An apt source list (`deb [opts] URI /` lines).
    Apt,
    /// A dnf `.repo` file (`baseurl=`, `gpgkey=`).
    Dnf,
}

/// The repository file as it was before the switch, kept in the operation record so that a
/// rollback restores it (also after a crash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryBackup {
    /// Which kind of file.
    pub kind: RepositoryKind,
    /// Its host path.
    pub path: PathBuf,
    /// Its content before the switch.
    pub content: String,
}

/// `1.31` of `1.31`, `1.31.4` or `v1.31.4`; `None` when it is no version.
pub fn minor_of(version: &str) -> Option<String> {
    let mut parts = version.trim_start_matches('v').split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("{major}.{minor}"))
}

/// `url` with its `/core:/stable:/vX.Y/<kind>/` at `minor` and, when given, its base (what
/// comes before `/core:/stable:`) replaced; `None` when it is no such URL.
fn rewrite_url(url: &str, segment: &str, minor: &str, base: Option<&str>) -> Option<String> {
    const STABLE: &str = "/core:/stable:/v";
    let at = url.find(STABLE)?;
    let rest = &url[at + STABLE.len()..];
    let (old_minor, tail) = rest.split_once('/')?;
    minor_of(old_minor).filter(|m| m == old_minor)?;
    let tail = tail.strip_prefix(segment)?;
    if !(tail.is_empty() || tail.starts_with('/')) {
        return None;
    }
    let base = base.map_or(&url[..at], |b| b.trim_end_matches('/'));
    Some(format!("{base}/core:/stable:/v{minor}/{segment}{tail}"))
}

fn check_minor(minor: &str) -> Result<()> {
    match minor_of(minor) {
        Some(m) if m == minor => Ok(()),
        _ => Err(Error::Refused(format!(
            "{minor:?} is not a Kubernetes minor version like 1.31"
        ))),
    }
}

/// The apt source list `content` with every `deb [opts] <base>/core:/stable:/vX.Y/deb/ /` line
/// moved to `minor` (and `base`, when given); options, comments and other lines are kept.
/// Fails when no line matches.
pub fn switch_apt(content: &str, minor: &str, base: Option<&str>) -> Result<String> {
    check_minor(minor)?;
    let mut matched = false;
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        match apt_line(line, minor, base) {
            Some(new) => {
                matched = true;
                out.push_str(&new);
            }
            None => out.push_str(line),
        }
    }
    if matched {
        Ok(out)
    } else {
        Err(Error::Refused(
            "no `deb [...] <base>/core:/stable:/vX.Y/deb/ /` line (the pkgs.k8s.io layout) to switch"
                .into(),
        ))
    }
}

/// One `deb` line rewritten, `None` when it is not a pkgs.k8s.io-style line.
fn apt_line(line: &str, minor: &str, base: Option<&str>) -> Option<String> {
    let body = line.trim_start();
    let rest = body.strip_prefix("deb")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let rest = rest.trim_start();
    // Options may hold spaces: `[arch=amd64 signed-by=/etc/apt/keyrings/k.gpg]`.
    let after_opts = match rest.strip_prefix('[') {
        Some(opts) => opts.split_once(']')?.1.trim_start(),
        None => rest,
    };
    let uri = after_opts.split_whitespace().next()?;
    let suite = after_opts[uri.len()..].split_whitespace().next()?;
    if suite != "/" {
        return None;
    }
    let new_uri = rewrite_url(uri, "deb", minor, base)?;
    let start = line.len() - after_opts.len();
    Some(format!(
        "{}{new_uri}{}",
        &line[..start],
        &line[start + uri.len()..]
    ))
}

/// The dnf repository `content` with its `baseurl=` and `gpgkey=` URLs of the form
/// `<base>/core:/stable:/vX.Y/rpm/...` moved to `minor` (and `base`, when given). Fails when no
/// `baseurl=` matches.
pub fn switch_dnf(content: &str, minor: &str, base: Option<&str>) -> Result<String> {
    check_minor(minor)?;
    let mut matched = false;
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        let Some((key, value)) = line.split_once('=') else {
            out.push_str(line);
            continue;
        };
        let name = key.trim();
        if name != "baseurl" && name != "gpgkey" {
            out.push_str(line);
            continue;
        }
        // `gpgkey` may list several URLs; each of the layout moves.
        let (value, newline) = match value.strip_suffix('\n') {
            Some(v) => (v, "\n"),
            None => (value, ""),
        };
        let mut changed = false;
        let urls: Vec<String> = value
            .split_whitespace()
            .map(|url| match rewrite_url(url, "rpm", minor, base) {
                Some(new) => {
                    changed = true;
                    new
                }
                None => url.to_owned(),
            })
            .collect();
        if changed {
            matched |= name == "baseurl";
            let indent = &value[..value.len() - value.trim_start().len()];
            out.push_str(&format!("{key}={indent}{}{newline}", urls.join(" ")));
        } else {
            out.push_str(line);
        }
    }
    if matched {
        Ok(out)
    } else {
        Err(Error::Refused(
            "no `baseurl=<base>/core:/stable:/vX.Y/rpm/` line (the pkgs.k8s.io layout) to switch"
                .into(),
        ))
    }
}

/// Which repository file the host's package manager reads.
fn file_of(host: &dyn Host, config: &KubernetesConfig) -> Result<(RepositoryKind, PathBuf)> {
    let os = read_os_release(host)?;
    match os.family() {
        Some(OsFamily::Debian) => Ok((RepositoryKind::Apt, config.apt_list.clone())),
        Some(OsFamily::RedHat) => Ok((RepositoryKind::Dnf, config.dnf_repo.clone())),
        None => Err(Error::Refused(format!(
            "no Kubernetes package repository known for OS id {:?}",
            os.id
        ))),
    }
}

/// Reads the repository file as it is now; a missing file is an error.
pub fn save(host: &dyn Host, config: &KubernetesConfig) -> Result<RepositoryBackup> {
    let (kind, path) = file_of(host, config)?;
    match read_text_opt(host, &path)? {
        Some(content) => Ok(RepositoryBackup {
            kind,
            path,
            content,
        }),
        None => Err(Error::Refused(format!(
            "no Kubernetes package repository file {} (see --apt-kubernetes-list / --dnf-kubernetes-repo)",
            path.display()
        ))),
    }
}

/// Writes the repository file of `backup` switched to `minor` (rewritten from the content
/// before, so a repeated switch writes the same) and refreshes the package index.
pub fn switch(
    host: &dyn Host,
    config: &KubernetesConfig,
    backup: &RepositoryBackup,
    minor: &str,
) -> Result<()> {
    let base = config.repository_base.as_deref();
    let content = match backup.kind {
        RepositoryKind::Apt => switch_apt(&backup.content, minor, base),
        RepositoryKind::Dnf => switch_dnf(&backup.content, minor, base),
    }
    .map_err(|e| Error::Refused(format!("{}: {e}", backup.path.display())))?;
    host.write_file_atomic(&backup.path, content.as_bytes())?;
    tracing::info!(path = %backup.path.display(), minor, base, "Kubernetes repository switched");
    host.packages()?.refresh()
}

/// Writes the content before back and refreshes the package index.
pub fn restore(host: &dyn Host, backup: &RepositoryBackup) -> Result<()> {
    host.write_file_atomic(&backup.path, backup.content.as_bytes())?;
    tracing::info!(path = %backup.path.display(), "Kubernetes repository restored");
    host.packages()?.refresh()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYRING: &str = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg";

    #[test]
    fn apt_lines_move_to_the_minor_and_keep_their_options() {
        let list = format!(
            "# kubeadm's guide\ndeb [signed-by={KEYRING}] https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n"
        );
        assert_eq!(
            switch_apt(&list, "1.31", None).unwrap(),
            format!(
                "# kubeadm's guide\ndeb [signed-by={KEYRING}] https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /\n"
            )
        );
        // Options with spaces, no trailing newline, a mirror base.
        let list =
            "deb [arch=amd64 signed-by=/k.gpg]   https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /";
        assert_eq!(
            switch_apt(list, "1.31", Some("https://mirror.example/k8s/")).unwrap(),
            "deb [arch=amd64 signed-by=/k.gpg]   https://mirror.example/k8s/core:/stable:/v1.31/deb/ /"
        );
        // No options; other sources stay as they are.
        let list = "deb http://deb.debian.org/debian bookworm main\ndeb file:///srv/k8s/core:/stable:/v1.29/deb/ /\n";
        assert_eq!(
            switch_apt(list, "1.30", None).unwrap(),
            "deb http://deb.debian.org/debian bookworm main\ndeb file:///srv/k8s/core:/stable:/v1.30/deb/ /\n"
        );
    }

    #[test]
    fn apt_lists_without_a_layout_line_are_refused() {
        for list in [
            "",
            "# deb https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n",
            "deb-src https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n",
            "deb https://apt.kubernetes.io/ kubernetes-xenial main\n",
            "deb https://pkgs.k8s.io/core:/stable:/v1.30/rpm/ /\n",
            "deb https://pkgs.k8s.io/core:/stable:/vlatest/deb/ /\n",
        ] {
            let e = switch_apt(list, "1.31", None).unwrap_err();
            assert!(e.to_string().contains("no `deb"), "{list:?}: {e}");
        }
        assert!(
            switch_apt(
                "deb https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /",
                "1.31.4",
                None
            )
            .is_err(),
            "a patch version is no minor"
        );
    }

    #[test]
    fn dnf_baseurl_and_gpgkey_move_to_the_minor() {
        let repo = "[kubernetes]\nname=Kubernetes\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\nenabled=1\ngpgcheck=1\ngpgkey=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/repodata/repomd.xml.key\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n";
        assert_eq!(
            switch_dnf(repo, "1.31", None).unwrap(),
            repo.replace("v1.30", "v1.31")
        );
        assert_eq!(
            switch_dnf(repo, "1.31", Some("file:///srv/mirror")).unwrap(),
            repo.replace(
                "https://pkgs.k8s.io/core:/stable:/v1.30",
                "file:///srv/mirror/core:/stable:/v1.31"
            )
        );
        // Spaces around `=` are dnf's too.
        let spaced = "baseurl = https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\n";
        assert_eq!(
            switch_dnf(spaced, "1.31", None).unwrap(),
            "baseurl = https://pkgs.k8s.io/core:/stable:/v1.31/rpm/\n"
        );
    }

    #[test]
    fn dnf_repos_without_a_layout_baseurl_are_refused() {
        for repo in [
            "",
            "[kubernetes]\nbaseurl=https://packages.cloud.google.com/yum/repos/kubernetes-el7-x86_64\n",
            "[kubernetes]\ngpgkey=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/repodata/repomd.xml.key\n",
            "[kubernetes]\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.30/deb/\n",
        ] {
            let e = switch_dnf(repo, "1.31", None).unwrap_err();
            assert!(e.to_string().contains("no `baseurl"), "{repo:?}: {e}");
        }
    }

    #[test]
    fn minors() {
        assert_eq!(minor_of("1.31.4").as_deref(), Some("1.31"));
        assert_eq!(minor_of("v1.31").as_deref(), Some("1.31"));
        assert_eq!(minor_of("1"), None);
        assert_eq!(minor_of("1.x"), None);
    }
}
