//! The host the agent maintains, behind a trait.
//!
//! The agent runs in a privileged pod; everything it does to the node (run `apt-get`, read the
//! reboot sentinel, restart the kubelet, reboot) goes through [`Host`]. Real implementations:
//! [`NamespaceHost`] (the node itself, entered through PID 1's namespaces) and [`ChrootHost`] (a
//! root file system in a directory, for tests and image builds). [`MemoryHost`] keeps a whole
//! host in memory for unit tests and simulations. Package management sits behind its own
//! [`PackageManager`] trait so an in-memory host need not emulate shell commands.

mod exec;
mod local;
pub mod memory;
mod rootfs;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use exec::{HOST_EXEC_SUBCOMMAND, HostExecArgs, host_exec_main};
pub use local::{ChrootHost, NamespaceHost};
pub use memory::{MemoryHost, MemoryPackages};
pub use rootfs::RootFs;

use crate::Result;
use crate::packages::manager::PackageManager;

/// The `PATH` commands get in the host: the agent's own environment never leaks into the host.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command to run in the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCommand {
    /// Program and arguments; the program is looked up in [`HOST_PATH`] inside the host.
    pub argv: Vec<String>,
    /// Extra environment variables. The command starts from a clean environment holding only
    /// `PATH` ([`HOST_PATH`]), `LC_ALL=C` (parsable output) and these.
    pub env: BTreeMap<String, String>,
    /// The command (and its process group) is killed when it runs longer.
    pub timeout: Duration,
}

impl HostCommand {
    /// A command with the default timeout of 60 seconds and no extra environment.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HostCommand {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The program name (argv\[0\]), or an empty string for an empty argv.
    pub fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or_default()
    }

    /// The command line for logs and error messages.
    pub fn display(&self) -> String {
        self.argv.join(" ")
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal number.
    Signaled(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// What a finished command left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output (lossily decoded as UTF-8).
    pub stdout: String,
    /// Its standard error (lossily decoded as UTF-8).
    pub stderr: String,
}

impl CommandOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Exited(0)
    }

    /// Turns a non-zero exit into [`crate::Error::CommandFailed`].
    pub fn check(self, cmd: &HostCommand) -> Result<CommandOutput> {
        if self.success() {
            Ok(self)
        } else {
            Err(crate::Error::CommandFailed {
                command: cmd.display(),
                status: self.status,
                stderr: tail(&self.stderr, 2000),
            })
        }
    }
}

/// The last `max` bytes of `s` (on a character boundary): enough for error messages.
pub(crate) fn tail(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// How the node is rebooted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RebootMethod {
    /// `systemctl reboot` in the host (a clean shutdown through systemd).
    #[default]
    Systemctl,
    /// A configured command in the host, e.g. `["/sbin/shutdown", "-r", "now"]`.
    Command(Vec<String>),
    /// `SIGINT` to the host's PID 1: systemd and sysvinit treat it as ctrl-alt-del, which reboots
    /// by default. For hosts whose `systemctl` cannot be used.
    SignalInit,
}

/// The node the agent maintains.
///
/// Object-safe, synchronous and `Send + Sync`: the daemon calls it from `spawn_blocking`.
/// Paths are absolute paths *on the host* (`/var/run/reboot-required`), whatever the
/// implementation maps them to. Symbolic links are resolved inside the host's root.
pub trait Host: Send + Sync {
    /// Runs a command in the host and waits for it (at most `cmd.timeout`).
    ///
    /// Contract: a program that does not exist is [`crate::Error::CommandNotFound`]; a timeout
    /// is [`crate::Error::CommandTimedOut`] (the command is killed); otherwise the command ran and
    /// `Ok` carries its exit status, which may be non-zero ([`CommandOutput::check`] turns that
    /// into an error).
    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput>;

    /// Reads a whole file. A missing file is an [`crate::Error::Io`] for which
    /// [`crate::Error::is_not_found`] holds.
    fn read_file(&self, path: &Path) -> Result<Vec<u8>>;

    /// Replaces a file atomically: readers see the old or the new content, never a mix, also
    /// after a crash (temporary file, fsync, rename, fsync of the directory). Missing parent
    /// directories are created.
    fn write_file_atomic(&self, path: &Path, data: &[u8]) -> Result<()>;

    /// Removes a file. Returns whether it existed.
    fn remove_file(&self, path: &Path) -> Result<bool>;

    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> Result<bool>;

    /// Names of the entries of a directory, sorted. A missing directory is an empty list.
    fn list_dir(&self, path: &Path) -> Result<Vec<String>>;

    /// The host's current boot id (`/proc/sys/kernel/random/boot_id`); it changes at every boot.
    fn boot_id(&self) -> Result<String>;

    /// The release of the running kernel (`uname -r`).
    fn kernel_release(&self) -> Result<String>;

    /// Starts a reboot of the host with `method`. Returns once the reboot was *requested*; the
    /// caller must not assume it happened until the boot id changes.
    fn reboot(&self, method: &RebootMethod) -> Result<()>;

    /// Restarts a systemd unit of the host (`systemctl daemon-reload` first, so changed unit
    /// files and drop-ins take effect).
    fn restart_unit(&self, unit: &str) -> Result<()>;

    /// The host's package manager, chosen from its `/etc/os-release`.
    fn packages(&self) -> Result<Box<dyn PackageManager + '_>>;

    /// A path in the agent's own file system that refers to the host's `path`, for watching it
    /// with inotify. `None` when the host has no such path (in-memory hosts).
    fn local_path(&self, path: &Path) -> Option<PathBuf>;
}

/// Reads a file of the host as UTF-8 text; `None` when it does not exist.
pub fn read_text_opt(host: &dyn Host, path: &Path) -> Result<Option<String>> {
    match host.read_file(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}
