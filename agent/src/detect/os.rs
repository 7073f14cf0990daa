//! The host's operating system, from `os-release(5)`.

use super::version::VersionScheme;

/// The fields of `/etc/os-release` the agent uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. `debian`, `ubuntu`, `fedora`, `rhel`.
    pub id: String,
    /// `ID_LIKE`, e.g. `["rhel", "centos", "fedora"]`.
    pub id_like: Vec<String>,
    /// `VERSION_ID`, e.g. `12`.
    pub version_id: String,
    /// `PRETTY_NAME`, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub pretty_name: String,
}

/// Families of distributions that share a package manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsFamily {
    /// Debian, Ubuntu and derivatives: apt and dpkg.
    Debian,
    /// Fedora, RHEL, CentOS Stream, Rocky, Alma, Amazon Linux 2023: dnf and rpm.
    RedHat,
}

impl OsFamily {
    /// How this family orders versions.
    pub fn version_scheme(self) -> VersionScheme {
        match self {
            OsFamily::Debian => VersionScheme::Debian,
            OsFamily::RedHat => VersionScheme::Rpm,
        }
    }
}

impl OsRelease {
    /// Parses the `KEY=value` lines of os-release (values optionally quoted).
    pub fn parse(text: &str) -> Self {
        let mut os = OsRelease::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key.trim() {
                "ID" => os.id = value.to_ascii_lowercase(),
                "ID_LIKE" => {
                    os.id_like = value
                        .split_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect()
                }
                "VERSION_ID" => os.version_id = value,
                "PRETTY_NAME" => os.pretty_name = value,
                _ => {}
            }
        }
        os
    }

    /// The family, from `ID` first, then `ID_LIKE`.
    pub fn family(&self) -> Option<OsFamily> {
        std::iter::once(&self.id)
            .chain(&self.id_like)
            .find_map(|id| match id.as_str() {
                "debian" | "ubuntu" => Some(OsFamily::Debian),
                "fedora" | "rhel" | "centos" | "rocky" | "almalinux" | "amzn" | "ol" => {
                    Some(OsFamily::RedHat)
                }
                _ => None,
            })
    }
}

/// Removes shell-style quotes and backslash escapes from an os-release value.
fn unquote(v: &str) -> String {
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_ubuntu_and_rhel_likes() {
        let debian = OsRelease::parse(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        );
        assert_eq!(debian.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(debian.version_id, "12");
        assert_eq!(debian.family(), Some(OsFamily::Debian));
        let mint = OsRelease::parse("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n");
        assert_eq!(mint.family(), Some(OsFamily::Debian));
        let rocky = OsRelease::parse("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n");
        assert_eq!(rocky.family(), Some(OsFamily::RedHat));
        let alma = OsRelease::parse("ID=\"almalinux\"\nID_LIKE='rhel centos fedora'\n");
        assert_eq!(alma.id_like, ["rhel", "centos", "fedora"]);
        assert_eq!(OsRelease::parse("ID=alpine\n").family(), None);
        assert_eq!(
            OsRelease::parse("# c\nPRETTY_NAME=\"a \\\"b\\\"\"\n").pretty_name,
            "a \"b\""
        );
    }
}
