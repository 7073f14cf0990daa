//! Whether this coordinator may write to the Kubernetes API now.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::leader::{Leadership, NotLeading};

/// Open while this replica leads and the controller's term that opened it runs; every write of
/// the controller and of its [`super::KubeLedgerStore`] checks it first. Closing it (at the end
/// of a term) or losing leadership stops writes at once, including those an agent's call would
/// cause.
#[derive(Clone, Debug)]
pub struct WriteGate {
    open: Arc<AtomicBool>,
    leadership: Leadership,
}

impl WriteGate {
    /// An open gate that follows `leadership`.
    pub fn new(leadership: Leadership) -> Self {
        WriteGate {
            open: Arc::new(AtomicBool::new(true)),
            leadership,
        }
    }

    /// Closes the gate for good (the term ended).
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Whether writes are allowed now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst) && self.leadership.is_leader()
    }

    /// `Ok` when writes are allowed now.
    pub fn check(&self) -> Result<(), NotLeading> {
        if self.is_open() {
            Ok(())
        } else {
            Err(NotLeading)
        }
    }
}
