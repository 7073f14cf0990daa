//! A host's file system seen through a directory of the agent's own (`/proc/1/root`, or the
//! root of a chroot).
//!
//! Host paths are resolved component by component with symbolic links interpreted *inside* the
//! host root: on Debian `/var/run` is a link to `/run`, and letting the kernel follow it from
//! `/proc/1/root/var/run` or `DIR/var/run` would land in the agent's own `/run`.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// How many symbolic links one resolution may follow (the kernel's limit is the same).
const MAX_SYMLINKS: usize = 40;

/// A host root directory and the file operations of [`super::Host`] on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootFs {
    root: PathBuf,
}

impl RootFs {
    /// A host whose `/` is `root` in the agent's file system.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootFs { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a host path to the agent's path of the same file, following symbolic links inside
    /// the host root. Components that do not exist are appended as they are.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let mut pending: Vec<OsString> = components(path);
        pending.reverse();
        let mut current: Vec<OsString> = Vec::new();
        let mut followed = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                current.pop();
                continue;
            }
            let mut candidate = self.root.clone();
            candidate.extend(&current);
            candidate.push(&name);
            let is_link = fs::symlink_metadata(&candidate)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            if !is_link {
                current.push(name);
                continue;
            }
            followed += 1;
            if followed > MAX_SYMLINKS {
                return Err(Error::io(
                    "resolve",
                    path,
                    std::io::Error::other("too many levels of symbolic links"),
                ));
            }
            let target =
                fs::read_link(&candidate).map_err(|e| Error::io("readlink", &candidate, e))?;
            if target.is_absolute() {
                current.clear();
            }
            let mut parts = components(&target);
            parts.reverse();
            pending.extend(parts);
        }
        let mut out = self.root.clone();
        out.extend(&current);
        Ok(out)
    }

    /// See [`super::Host::read_file`].
    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let local = self.resolve(path)?;
        fs::read(&local).map_err(|e| Error::io("read", path, e))
    }

    /// See [`super::Host::write_file_atomic`].
    pub fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let local = self.resolve(path)?;
        let (Some(dir), Some(name)) = (local.parent(), local.file_name()) else {
            return Err(Error::io(
                "write",
                path,
                std::io::Error::other("not a file path"),
            ));
        };
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory for", path, e))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".rota-tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(data)?;
            file.sync_all()?;
            fs::rename(&tmp, &local)?;
            // The rename is durable only once the directory entry is.
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            // Best effort: a leftover temporary file is harmless but untidy.
            let _ = fs::remove_file(&tmp);
            Error::io("write", path, e)
        })
    }

    /// See [`super::Host::remove_file`].
    pub fn remove(&self, path: &Path) -> Result<bool> {
        let local = self.resolve(path)?;
        match fs::remove_file(&local) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// See [`super::Host::exists`].
    pub fn exists(&self, path: &Path) -> Result<bool> {
        let local = self.resolve(path)?;
        local.try_exists().map_err(|e| Error::io("stat", path, e))
    }

    /// See [`super::Host::list_dir`].
    pub fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        let local = self.resolve(path)?;
        let entries = match fs::read_dir(&local) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", path, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", path, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

/// The normal components of a path (`/` and `.` dropped, `..` kept).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs::create_dir_all(dir.path().join("run")).unwrap();
        fs::create_dir_all(dir.path().join("var")).unwrap();
        symlink("/run", dir.path().join("var/run")).unwrap();
        fs.write_atomic(
            Path::new("/var/run/reboot-required"),
            b"*** System restart required ***\n",
        )
        .unwrap();
        assert!(dir.path().join("run/reboot-required").exists());
        assert_eq!(
            fs.resolve(Path::new("/var/run/reboot-required")).unwrap(),
            dir.path().join("run/reboot-required")
        );
        assert!(fs.exists(Path::new("/var/run/reboot-required")).unwrap());
        assert!(fs.remove(Path::new("/var/run/reboot-required")).unwrap());
        assert!(!fs.remove(Path::new("/var/run/reboot-required")).unwrap());
    }

    #[test]
    fn relative_links_and_dotdot_are_clamped_at_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        symlink("usr/lib", dir.path().join("lib")).unwrap();
        symlink("../../../../etc", dir.path().join("usr/lib/escape")).unwrap();
        assert_eq!(
            fs.resolve(Path::new("/lib/modules")).unwrap(),
            dir.path().join("usr/lib/modules")
        );
        assert_eq!(
            fs.resolve(Path::new("/lib/escape/passwd")).unwrap(),
            dir.path().join("etc/passwd")
        );
    }

    #[test]
    fn link_loops_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        symlink("/b", dir.path().join("a")).unwrap();
        symlink("/a", dir.path().join("b")).unwrap();
        assert!(fs.resolve(Path::new("/a/x")).is_err());
    }

    #[test]
    fn missing_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        assert!(fs.read(Path::new("/nope")).unwrap_err().is_not_found());
        assert_eq!(
            fs.list_dir(Path::new("/boot")).unwrap(),
            Vec::<String>::new()
        );
        fs.write_atomic(Path::new("/var/lib/rota/state.json"), b"{}")
            .unwrap();
        assert_eq!(
            fs.list_dir(Path::new("/var/lib/rota")).unwrap(),
            vec!["state.json"]
        );
        assert_eq!(
            fs.read(Path::new("/var/lib/rota/state.json")).unwrap(),
            b"{}"
        );
    }
}
