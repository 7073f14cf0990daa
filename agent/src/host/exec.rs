//! Running commands in the host through a re-executed helper.
//!
//! `setns(2)` into a mount namespace is refused in a multi-threaded process, and the agent's
//! daemon is a tokio program with many threads. So the agent re-executes itself
//! (`rota-agent __host-exec ... -- CMD ARGS`); that fresh, single-threaded process enters the
//! host (the namespaces of a target PID, or a chroot) and then `execvp`s the command, which
//! keeps the helper's PID. No `pre_exec` hook and no `unsafe` code are needed.
//!
//! PID namespace: `setns` of a PID namespace only applies to *children* of the caller, so the
//! exec'd command itself stays in the agent's PID namespace. The agent runs with `hostPID`, where
//! that already is the host's, so the helper does not fork a second time; commands that fork
//! (`apt-get` → `dpkg` → maintainer scripts) put their children in the target's namespace.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{CommandOutput, ExitStatus, HOST_PATH, HostCommand};
use crate::{Error, Result};

/// The hidden subcommand of the `rota-agent` binary that runs one command in the host.
pub const HOST_EXEC_SUBCOMMAND: &str = "__host-exec";

/// Prefix of the helper's own diagnostics on standard error, so they cannot be confused with
/// the command's output.
const MARKER: &str = "rota-host-exec:";
/// Exit code of the helper when the program does not exist (the shell's convention).
const EXIT_NOT_FOUND: i32 = 127;
/// Exit code of the helper when the program exists but cannot be executed.
const EXIT_EXEC_FAILED: i32 = 126;
/// Exit code of the helper when it could not enter the host.
const EXIT_SETUP_FAILED: i32 = 125;

/// Arguments of the `__host-exec` helper.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct HostExecArgs {
    /// Enter the mount, UTS, IPC, network and PID namespaces of this process.
    #[arg(long, conflicts_with = "chroot")]
    pub target_pid: Option<u32>,
    /// Change the root directory to this one.
    #[arg(long)]
    pub chroot: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<OsString>,
}

/// The helper's `main`: enters the host, then replaces itself with the command. Returns only on
/// failure, with the exit code the process should end with.
pub fn host_exec_main(args: &HostExecArgs) -> i32 {
    if let Err(msg) = enter(args) {
        eprintln!("{MARKER} setup-failed {msg}");
        return EXIT_SETUP_FAILED;
    }
    let argv: Result<Vec<CString>, _> = args
        .argv
        .iter()
        .map(|a| CString::new(a.as_encoded_bytes()))
        .collect();
    let argv = match argv {
        Ok(argv) if !argv.is_empty() => argv,
        _ => {
            eprintln!("{MARKER} setup-failed invalid command line");
            return EXIT_SETUP_FAILED;
        }
    };
    let program = argv[0].to_string_lossy().into_owned();
    let err = match nix::unistd::execvp(&argv[0], &argv) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    if err == nix::errno::Errno::ENOENT {
        eprintln!("{MARKER} not-found {program}");
        EXIT_NOT_FOUND
    } else {
        eprintln!("{MARKER} exec-failed {program}: {err}");
        EXIT_EXEC_FAILED
    }
}

fn enter(args: &HostExecArgs) -> std::result::Result<(), String> {
    if let Some(pid) = args.target_pid {
        // Open every namespace before entering any: once in the target's mount namespace,
        // `/proc/PID` may name something else.
        let kinds = [
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ];
        let mut files = Vec::new();
        for (name, flag) in kinds {
            let path = format!("/proc/{pid}/ns/{name}");
            let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            files.push((path, file, flag));
        }
        for (path, file, flag) in &files {
            nix::sched::setns(file, *flag).map_err(|e| format!("setns {path}: {e}"))?;
        }
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    }
    if let Some(root) = &args.chroot {
        nix::unistd::chroot(root).map_err(|e| format!("chroot {}: {e}", root.display()))?;
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    }
    Ok(())
}

/// Where the helper is and how it enters the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Helper {
    /// The `rota-agent` binary (normally `/proc/self/exe`).
    pub exe: PathBuf,
    /// Arguments placed before `--` (`--target-pid 1` or `--chroot DIR`).
    pub args: Vec<OsString>,
}

impl Helper {
    /// Runs `cmd` through the helper, with the timeout, and collects its output.
    pub fn run(&self, cmd: &HostCommand) -> Result<CommandOutput> {
        let program = cmd.program().to_string();
        if program.is_empty() {
            return Err(Error::Refused("empty command".into()));
        }
        let mut child = Command::new(&self.exe)
            .arg(HOST_EXEC_SUBCOMMAND)
            .args(&self.args)
            .arg("--")
            .args(&cmd.argv)
            .env_clear()
            .env("PATH", HOST_PATH)
            .env("LC_ALL", "C")
            .envs(&cmd.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills dpkg and maintainer scripts too.
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;
        let pid = child.id();
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            // The receiver outlives this thread unless the caller is gone, then nobody cares.
            let _ = tx.send(child.wait());
        });
        let (status, timed_out) = match rx.recv_timeout(cmd.timeout) {
            Ok(status) => (status, false),
            Err(_) => {
                if let Ok(pgid) = i32::try_from(pid) {
                    // The group may already be gone; then there is nothing to kill.
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                let status = rx
                    .recv()
                    .map_err(|_| Error::Spawn {
                        program: program.clone(),
                        source: std::io::Error::other("waiter thread vanished"),
                    })
                    .and_then(|s| {
                        s.map_err(|source| Error::Spawn {
                            program: program.clone(),
                            source,
                        })
                    })?;
                (Ok(status), true)
            }
        };
        // The waiter has sent, so it is finishing; a panic there cannot happen.
        let _ = waiter.join();
        let status = status.map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        let stdout = stdout.map(join_output).unwrap_or_default();
        let stderr = stderr.map(join_output).unwrap_or_default();
        if timed_out {
            return Err(Error::CommandTimedOut {
                program,
                timeout: cmd.timeout,
            });
        }
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Exited(code),
            (None, Some(sig)) => ExitStatus::Signaled(sig),
            (None, None) => ExitStatus::Exited(-1),
        };
        interpret(program, status, stdout, stderr)
    }
}

/// Separates the helper's own failures from the command's result.
fn interpret(
    program: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
) -> Result<CommandOutput> {
    let marker = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with(MARKER))
        .map(|l| l[MARKER.len()..].trim().to_string());
    match (status, marker) {
        (ExitStatus::Exited(EXIT_NOT_FOUND), Some(m)) if m.starts_with("not-found") => {
            Err(Error::CommandNotFound { program })
        }
        (ExitStatus::Exited(EXIT_EXEC_FAILED | EXIT_SETUP_FAILED), Some(m)) => Err(Error::Spawn {
            program,
            source: std::io::Error::other(m),
        }),
        _ => Ok(CommandOutput {
            status,
            stdout,
            stderr,
        }),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the capture; what was read so far is still useful.
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_output(handle: thread::JoinHandle<Vec<u8>>) -> String {
    handle
        .join()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The path of the running executable, for re-executing it as the helper.
pub(crate) fn current_exe() -> PathBuf {
    Path::new("/proc/self/exe").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helpers_markers_become_errors() {
        let nf = interpret(
            "x".into(),
            ExitStatus::Exited(127),
            String::new(),
            format!("{MARKER} not-found x\n"),
        );
        assert!(matches!(nf, Err(Error::CommandNotFound { .. })));
        // A command that itself exits 127 without the marker is just a failed command.
        let plain = interpret(
            "x".into(),
            ExitStatus::Exited(127),
            String::new(),
            "x: something\n".into(),
        )
        .unwrap();
        assert_eq!(plain.status, ExitStatus::Exited(127));
        let setup = interpret(
            "x".into(),
            ExitStatus::Exited(125),
            String::new(),
            format!("{MARKER} setup-failed setns: EPERM\n"),
        );
        assert!(matches!(setup, Err(Error::Spawn { .. })));
    }
}
