//! Watches the directories of the reboot sentinel files with inotify, so a sentinel written by
//! a package's postinst is seen at once instead of at the next poll.

use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;

use super::Event;
use crate::host::Host;

/// Sends a detection request whenever an entry of a sentinel's directory is created, removed,
/// renamed or written. Runs on its own thread blocked in `read(2)` on the inotify descriptor
/// (tokio's safe `AsyncFd` constructor is deprecated and the crate denies `unsafe`). Returns
/// when the daemon goes away, or at once when the host has no local paths or inotify is
/// unavailable (then the refresh timer still catches changes).
pub(super) fn sentinels(host: Arc<dyn Host>, files: Vec<PathBuf>, tx: mpsc::Sender<Event>) {
    let inotify = match Inotify::init(InitFlags::IN_CLOEXEC) {
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
    loop {
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
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading inotify events failed");
                return;
            }
        }
    }
}
