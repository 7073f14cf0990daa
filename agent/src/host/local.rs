//! The real hosts: the node itself (through PID 1's namespaces) and a chroot directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::exec::{Helper, current_exe};
use super::{CommandOutput, Host, HostCommand, RebootMethod, RootFs};
use crate::packages::{self, PackageManager};
use crate::{Error, Result};

/// The kernel's boot id; not namespaced, so the agent's own `/proc` tells the host's.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// How long `systemctl` may take for a daemon-reload, a restart or a reboot request.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(180);

/// What the two real hosts share: a root directory for files and a helper for commands.
#[derive(Clone, Debug)]
struct LocalHost {
    fs: RootFs,
    helper: Helper,
    /// The host's init process, when the agent can signal it.
    init_pid: Option<u32>,
}

impl LocalHost {
    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput> {
        self.helper.run(cmd)
    }

    fn boot_id(&self) -> Result<String> {
        let raw = std::fs::read_to_string(BOOT_ID).map_err(|e| Error::io("read", BOOT_ID, e))?;
        Ok(raw.trim().to_string())
    }

    fn kernel_release(&self) -> Result<String> {
        let uts = nix::sys::utsname::uname()
            .map_err(|e| Error::io("uname", "/", std::io::Error::from(e)))?;
        Ok(uts.release().to_string_lossy().into_owned())
    }

    fn reboot(&self, method: &RebootMethod) -> Result<()> {
        match method {
            RebootMethod::Systemctl => {
                let cmd = HostCommand::new(["systemctl", "reboot"]).timeout(SYSTEMCTL_TIMEOUT);
                self.run(&cmd)?.check(&cmd).map(drop)
            }
            RebootMethod::Command(argv) => {
                let cmd = HostCommand::new(argv.clone()).timeout(SYSTEMCTL_TIMEOUT);
                self.run(&cmd)?.check(&cmd).map(drop)
            }
            RebootMethod::SignalInit => {
                let Some(pid) = self.init_pid.and_then(|p| i32::try_from(p).ok()) else {
                    return Err(Error::Refused(
                        "this host has no init process the agent may signal".into(),
                    ));
                };
                kill(Pid::from_raw(pid), Signal::SIGINT)
                    .map_err(|e| Error::io("signal init of", "/", std::io::Error::from(e)))
            }
        }
    }

    fn restart_unit(&self, unit: &str) -> Result<()> {
        let reload = HostCommand::new(["systemctl", "daemon-reload"]).timeout(SYSTEMCTL_TIMEOUT);
        self.run(&reload)?.check(&reload)?;
        let restart = HostCommand::new(["systemctl", "restart", unit]).timeout(SYSTEMCTL_TIMEOUT);
        self.run(&restart)?.check(&restart).map(drop)
    }
}

/// Implements [`Host`] for a wrapper of [`LocalHost`].
macro_rules! local_host_impl {
    ($ty:ty) => {
        impl Host for $ty {
            fn run(&self, cmd: &HostCommand) -> Result<CommandOutput> {
                self.0.run(cmd)
            }
            fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
                self.0.fs.read(path)
            }
            fn write_file_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
                self.0.fs.write_atomic(path, data)
            }
            fn remove_file(&self, path: &Path) -> Result<bool> {
                self.0.fs.remove(path)
            }
            fn exists(&self, path: &Path) -> Result<bool> {
                self.0.fs.exists(path)
            }
            fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
                self.0.fs.list_dir(path)
            }
            fn boot_id(&self) -> Result<String> {
                self.0.boot_id()
            }
            fn kernel_release(&self) -> Result<String> {
                self.0.kernel_release()
            }
            fn reboot(&self, method: &RebootMethod) -> Result<()> {
                self.0.reboot(method)
            }
            fn restart_unit(&self, unit: &str) -> Result<()> {
                self.0.restart_unit(unit)
            }
            fn packages(&self) -> Result<Box<dyn PackageManager + '_>> {
                packages::for_host(self)
            }
            fn local_path(&self, path: &Path) -> Option<PathBuf> {
                self.0.fs.resolve(path).ok()
            }
        }
    };
}

/// The node itself, seen from a privileged pod with `hostPID`: commands run in the namespaces
/// of the host's PID 1 (the `nsenter` equivalent), files are reached through
/// `/proc/1/root`.
#[derive(Clone, Debug)]
pub struct NamespaceHost(LocalHost);

impl NamespaceHost {
    /// The host of PID 1, using this executable as the helper.
    pub fn new() -> Self {
        Self::with_target(1, current_exe())
    }

    /// The host whose namespaces and root are those of `pid`, with `helper_exe` (a
    /// `rota-agent` binary) as the helper. Unit tests use their own PID; the VM suite
    /// (`tests/vm/`) runs [`NamespaceHost::new`] against PID 1 of a booted guest.
    pub fn with_target(pid: u32, helper_exe: PathBuf) -> Self {
        NamespaceHost(LocalHost {
            fs: RootFs::new(format!("/proc/{pid}/root")),
            helper: Helper {
                exe: helper_exe,
                args: vec![
                    OsString::from("--target-pid"),
                    OsString::from(pid.to_string()),
                ],
            },
            init_pid: Some(pid),
        })
    }
}

impl Default for NamespaceHost {
    fn default() -> Self {
        Self::new()
    }
}

local_host_impl!(NamespaceHost);

/// A root file system in a directory (`--host-root DIR`): commands run `chroot`ed into it,
/// files are under it. For tests and image builds; it cannot be rebooted by signal, and its
/// boot id and kernel are those of the machine the agent runs on.
#[derive(Clone, Debug)]
pub struct ChrootHost(LocalHost);

impl ChrootHost {
    /// A host rooted at `root`, using this executable as the helper.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_helper(root, current_exe())
    }

    /// A host rooted at `root` with `helper_exe` (a `rota-agent` binary) as the helper; tests
    /// pass `env!("CARGO_BIN_EXE_rota-agent")`.
    pub fn with_helper(root: impl Into<PathBuf>, helper_exe: PathBuf) -> Self {
        let root = root.into();
        ChrootHost(LocalHost {
            fs: RootFs::new(root.clone()),
            helper: Helper {
                exe: helper_exe,
                args: vec![OsString::from("--chroot"), root.into_os_string()],
            },
            init_pid: None,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.0.fs.root()
    }
}

local_host_impl!(ChrootHost);
