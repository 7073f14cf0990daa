//! The one source of wall-clock time for decisions.
//!
//! Decisions take `now` as an argument; the I/O shells read it from a [`Clock`], so that a test
//! or the simulator can run them on a clock of its own.

use std::sync::{Arc, Mutex, PoisonError};

use jiff::{SignedDuration, Timestamp};

/// Where the current time comes from.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A shared clock, as the shells pass it around.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that stands still until told to move: for simulations and tests that must control
/// time exactly.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: Timestamp) -> Self {
        ManualClock {
            now: Mutex::new(at),
        }
    }

    /// Moves the clock to `at` (backwards too: clocks do jump).
    pub fn set(&self, at: Timestamp) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Moves the clock by `by`.
    pub fn advance(&self, by: SignedDuration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.saturating_add(by).unwrap_or(Timestamp::MAX);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The system clock shifted by an offset that can change: a node whose clock runs ahead or
/// behind, in simulations and tests.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset: Mutex<SignedDuration>,
}

impl OffsetClock {
    /// The system clock shifted by `offset`.
    pub fn new(offset: SignedDuration) -> Self {
        OffsetClock {
            offset: Mutex::new(offset),
        }
    }

    /// A clock that reads `at` now, and runs on from there with the system clock.
    pub fn reading(at: Timestamp) -> Self {
        OffsetClock::new(at.duration_since(Timestamp::now()))
    }

    /// Changes the offset.
    pub fn set_offset(&self, offset: SignedDuration) {
        *self.offset.lock().unwrap_or_else(PoisonError::into_inner) = offset;
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        let offset = *self.offset.lock().unwrap_or_else(PoisonError::into_inner);
        Timestamp::now()
            .saturating_add(offset)
            .unwrap_or(Timestamp::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_and_offset_clocks() {
        let start = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let manual = ManualClock::new(start);
        manual.advance(SignedDuration::from_secs(90));
        assert_eq!(manual.now().duration_since(start).as_secs(), 90);
        manual.set(start);
        assert_eq!(manual.now(), start);

        let ahead = OffsetClock::new(SignedDuration::from_hours(1));
        let skew = ahead.now().duration_since(Timestamp::now());
        assert!(skew > SignedDuration::from_mins(59), "{skew:?}");
        ahead.set_offset(SignedDuration::ZERO);
        assert!(ahead.now().duration_since(Timestamp::now()).abs() < SignedDuration::from_mins(1));
        let past = OffsetClock::reading(start);
        assert!(past.now().duration_since(start).abs() < SignedDuration::from_mins(1));
    }
}
