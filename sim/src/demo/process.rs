//! Processes of the simulation: a coordinator replica, a node's agent or kured daemon.
//!
//! Each one runs on its own thread with its own Tokio runtime, so that killing it drops
//! *everything* it started — spawned tasks, timers, gRPC and HTTP connections, the tasks a
//! library spawned and forgot — the way a process dying does. Nothing of a killed process keeps
//! acting: [`ProcessHost`] refuses the host calls of a blocking thread that outlived its process
//! (a thread cannot be stopped from outside; its next host call fails instead).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rota_agent::host::{CommandOutput, Host, HostCommand, RebootMethod};
use rota_agent::packages::PackageManager;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Error, Result};
use crate::cluster::{PowerState, SimHost};

/// A running simulated process. Dropping the handle kills the process.
#[derive(Debug)]
pub(crate) struct Process {
    name: String,
    stop: Option<oneshot::Sender<()>>,
    exited: watch::Receiver<bool>,
}

impl Process {
    /// Starts `main` on a new thread in a fresh current-thread runtime. The process ends when
    /// `main` returns or when it is killed.
    pub(crate) fn spawn<F, Fut>(name: &str, main: F) -> Result<Process>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let (exit_tx, exited) = watch::channel(false);
        let thread_name = name.to_string();
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(process = %thread_name, error = %e, "cannot start a runtime");
                        exit_tx.send_replace(true);
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = main() => {}
                    }
                });
                // Everything the process started is dropped here, without waiting on it.
                runtime.shutdown_background();
                exit_tx.send_replace(true);
            })
            .map_err(Error::Io)?;
        Ok(Process {
            name: name.to_string(),
            stop: Some(stop),
            exited,
        })
    }

    /// The process's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Resolves when the process has ended (by itself or killed).
    pub(crate) async fn exited(&self) {
        let mut exited = self.exited.clone();
        // A closed channel means the thread is gone too.
        let _ = exited.wait_for(|e| *e).await;
    }

    /// Kills the process and waits until its runtime is gone.
    pub(crate) async fn kill(mut self) {
        self.stop.take();
        self.exited().await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Dropping the sender ends the process's `select!`.
        self.stop.take();
    }
}

/// Which fencing tokens each node's agent started or resumed an operation with, read from the
/// state file the agent persists on its host: what actually acted on the hosts.
#[derive(Clone, Debug, Default)]
pub struct HostTokenLog {
    inner: Arc<Mutex<BTreeMap<u64, BTreeSet<String>>>>,
}

impl HostTokenLog {
    fn record(&self, token: u64, node: &str) {
        self.inner
            .lock()
            .entry(token)
            .or_default()
            .insert(node.to_string());
    }

    /// Every token and the nodes whose agent acted with it.
    pub fn tokens(&self) -> BTreeMap<u64, BTreeSet<String>> {
        self.inner.lock().clone()
    }
}

/// Longest a reboot request waits for the host to take its process down.
const REBOOT_TAKES_PROCESS_DOWN: std::time::Duration = std::time::Duration::from_secs(60);

/// The host as one process sees it: calls pass through while the process lives and the host
/// still runs the boot the process started in; afterwards they fail, as nothing of a dead
/// process reaches the machine. A reboot request does not return while the process lives: the
/// host going down kills it.
pub(crate) struct ProcessHost {
    host: SimHost,
    boot_id: String,
    alive: Arc<AtomicBool>,
    state_path: Option<PathBuf>,
    tokens: HostTokenLog,
}

impl ProcessHost {
    /// A view of `host` for a process started in the host's current boot; `state_path` is the
    /// agent's state file, whose tokens go to `tokens`.
    pub(crate) fn new(
        host: SimHost,
        alive: Arc<AtomicBool>,
        state_path: Option<PathBuf>,
        tokens: HostTokenLog,
    ) -> Result<ProcessHost> {
        let boot_id = match host.power_state() {
            PowerState::Up { boot_id } => boot_id,
            PowerState::Down => {
                return Err(Error::Invalid(format!(
                    "host {} is down; no process can start on it",
                    host.node()
                )));
            }
        };
        Ok(ProcessHost {
            host,
            boot_id,
            alive,
            state_path,
            tokens,
        })
    }

    fn check(&self) -> rota_agent::Result<()> {
        let same_boot = matches!(self.host.power_state(), PowerState::Up { ref boot_id } if *boot_id == self.boot_id);
        if self.alive.load(Ordering::SeqCst) && same_boot {
            Ok(())
        } else {
            Err(rota_agent::Error::Refused(format!(
                "the process on {} is gone (killed or its host rebooted)",
                self.host.node()
            )))
        }
    }
}

/// The token of an agent state file (`{"format":1,"operation":{"token":N,...}}`).
fn state_token(data: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    value.pointer("/operation/token")?.as_u64()
}

impl Host for ProcessHost {
    fn run(&self, cmd: &HostCommand) -> rota_agent::Result<CommandOutput> {
        self.check()?;
        self.host.run(cmd)
    }

    fn read_file(&self, path: &Path) -> rota_agent::Result<Vec<u8>> {
        self.check()?;
        self.host.read_file(path)
    }

    fn write_file_atomic(&self, path: &Path, data: &[u8]) -> rota_agent::Result<()> {
        self.check()?;
        self.host.write_file_atomic(path, data)?;
        if self.state_path.as_deref() == Some(path)
            && let Some(token) = state_token(data)
        {
            self.tokens.record(token, self.host.node());
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> rota_agent::Result<bool> {
        self.check()?;
        self.host.remove_file(path)
    }

    fn exists(&self, path: &Path) -> rota_agent::Result<bool> {
        self.check()?;
        self.host.exists(path)
    }

    fn list_dir(&self, path: &Path) -> rota_agent::Result<Vec<String>> {
        self.check()?;
        self.host.list_dir(path)
    }

    fn boot_id(&self) -> rota_agent::Result<String> {
        self.check()?;
        self.host.boot_id()
    }

    fn kernel_release(&self) -> rota_agent::Result<String> {
        self.check()?;
        self.host.kernel_release()
    }

    fn reboot(&self, method: &RebootMethod) -> rota_agent::Result<()> {
        self.check()?;
        self.host.reboot(method)?;
        // The host goes down and takes this process with it: the call returns once the process
        // is dead (nobody is left to see the answer). Should the host stay up, the caller goes
        // on as after any reboot request that did not happen.
        let deadline = std::time::Instant::now() + REBOOT_TAKES_PROCESS_DOWN;
        while std::time::Instant::now() < deadline {
            if !self.alive.load(Ordering::SeqCst) {
                return Err(rota_agent::Error::Refused(format!(
                    "{} rebooted under this process",
                    self.host.node()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }

    fn restart_unit(&self, unit: &str) -> rota_agent::Result<()> {
        self.check()?;
        self.host.restart_unit(unit)
    }

    fn packages(&self) -> rota_agent::Result<Box<dyn PackageManager + '_>> {
        self.check()?;
        self.host.packages()
    }

    fn local_path(&self, _path: &Path) -> Option<PathBuf> {
        None
    }
}

/// How long a supervised process that ended by itself stays down before it is started again.
pub(crate) const CRASH_BACKOFF: Duration = Duration::from_secs(1);

/// What the harness asks of a process's supervisor (a Deployment's or a DaemonSet's controller,
/// in a real cluster).
#[derive(Debug)]
pub(crate) enum Control {
    /// Kill the process and keep it down; answered once it is dead.
    Kill(oneshot::Sender<()>),
    /// Let it run again, killing it first if it runs; when the answer comes is the supervisor's
    /// to say.
    Restart(oneshot::Sender<()>),
}

/// The harness's handle on one supervisor: the coordinator replicas' and the node daemons'.
#[derive(Debug)]
pub(crate) struct Supervisor {
    control: mpsc::Sender<Control>,
}

impl Supervisor {
    /// A handle and the receiver its supervisor task reads.
    pub(crate) fn channel() -> (Supervisor, mpsc::Receiver<Control>) {
        let (control, rx) = mpsc::channel(4);
        (Supervisor { control }, rx)
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<()>) -> Control) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Kills the process (as a process dies: no graceful step) and keeps it down.
    pub(crate) async fn kill(&self) -> Result<()> {
        self.ask(Control::Kill).await
    }

    /// Lets the process run again (killing it first if it runs).
    pub(crate) async fn restart(&self) -> Result<()> {
        self.ask(Control::Restart).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_state_file() {
        assert_eq!(
            state_token(br#"{"format":1,"operation":{"token":42,"phase":"reboot"}}"#),
            Some(42)
        );
        assert_eq!(state_token(b"{}"), None);
        assert_eq!(state_token(b"not json"), None);
    }

    #[tokio::test]
    async fn a_killed_process_drops_its_tasks() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let process = Process::spawn("test-process", move || async move {
            // A task the process spawned and forgot: it must not outlive the process.
            tokio::spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
            std::future::pending::<()>().await;
        })
        .unwrap();
        assert_eq!(process.name(), "test-process");
        process.kill().await;
        // The forgotten task held the only sender: the channel closes once it is dropped.
        assert!(rx.recv().await.is_none());
    }
}
