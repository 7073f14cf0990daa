//! Watches the directories of the reboot sentinel files with inotify, so a sentinel written by
//! a package's postinst is seen at once instead of at the next poll.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;

use super::Event;
use crate::host::Host;
use crate::{Error, Result};

/// How long the watcher waits for events before it looks whether it was stopped.
const STOP_CHECK_MS: u16 = 1000;

/// A running watcher of sentinel files; dropping it stops it (within [`STOP_CHECK_MS`]), so
/// that a policy naming other sentinels replaces it with a watcher of those.
pub(super) struct SentinelWatch {
    stop: Arc<AtomicBool>,
}

impl SentinelWatch {
    /// Watches `files` on their own thread.
    pub(super) fn start(
        host: Arc<dyn Host>,
        files: Vec<PathBuf>,
        tx: mpsc::Sender<Event>,
    ) -> Result<SentinelWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("sentinel-watch".into())
            .spawn(move || sentinels(host, files, tx, stopped))
            .map_err(|e| Error::io("start sentinel watcher", "/", e))?;
        Ok(SentinelWatch { stop })
    }
}

impl Drop for SentinelWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends a detection request whenever an entry of a sentinel's directory is created, removed,
/// renamed or written. Runs on its own thread blocked in `poll(2)` on the inotify descriptor
/// (tokio's safe `AsyncFd` constructor is deprecated and the crate denies `unsafe`). Returns
/// when the daemon goes away or `stop` is set, or at once when the host has no local paths or
/// inotify is unavailable (then the refresh timer still catches changes).
fn sentinels(
    host: Arc<dyn Host>,
    files: Vec<PathBuf>,
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
) {
    let inotify = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; sentinels are checked on the refresh timer");
            return;
        }
    };
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CLOSE_WRITE;
    let mut watched = 0;
    for file in &files {
        let Some(dir) = file.parent().and_then(|d| host.local_path(d)) else {
            continue;
        };
        match inotify.add_watch(&dir, flags) {
            Ok(_) => watched += 1,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch sentinel directory")
            }
        }
    }
    if watched == 0 {
        return;
    }
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_owned()))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, STOP_CHECK_MS) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waiting for inotify events failed");
                return;
            }
        }
        match inotify.read_events() {
            Ok(events) => {
                let relevant = events.iter().any(|e| {
                    e.name
                        .as_ref()
                        .is_some_and(|n| names.iter().any(|s| s == n))
                });
                if relevant && tx.blocking_send(Event::Detect { refresh: false }).is_err() {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading inotify events failed");
                return;
            }
        }
    }
}
