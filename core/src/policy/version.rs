//! Kubernetes versions as the skew policy needs them: major, minor, patch.

use std::fmt;
use std::str::FromStr;

/// A Kubernetes version such as `v1.33.2`. Pre-release and build suffixes (`-eks-1234`,
/// `+k3s1`) are accepted and ignored: the skew policy only looks at major, minor and patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    /// Major version (1 for every Kubernetes release so far).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version (0 when the text had none, e.g. `1.33`).
    pub patch: u32,
}

impl KubeVersion {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// The version without its patch, for minor-level comparisons.
    pub fn minor_version(self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// Renders `major.minor` (the skew policy speaks in minors).
    pub fn short(self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

/// Why a text is not a Kubernetes version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes version (expected e.g. v1.33.2 or 1.33)")]
pub struct VersionError(pub String);

impl FromStr for KubeVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionError(s.to_owned());
        let trimmed = s.strip_prefix('v').unwrap_or(s);
        let core = trimmed
            .split(['-', '+'])
            .next()
            .filter(|c| !c.is_empty())
            .ok_or_else(err)?;
        let mut parts = core.split('.');
        let mut number = |required: bool| -> Result<u32, VersionError> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| err())
                }
                None if !required => Ok(0),
                _ => Err(err()),
            }
        };
        let major = number(true)?;
        let minor = number(true)?;
        let patch = number(false)?;
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self::new(major, minor, patch))
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}
