//! Maintenance windows and blackouts: may maintenance start at a given instant, and if not, when?
//!
//! Windows follow the wall clock of their time zone. A window belongs to the day it starts on,
//! evaluated in its own zone: `Fri 22:00-02:00` is open on Saturday at 01:00. On DST days the
//! wall clock decides too, with jiff's `compatible` disambiguation: a time inside a skipped hour
//! moves forward by the length of the gap (on a night where 02:00-03:00 does not exist, 02:30
//! means 03:30), so a window 02:00-04:00 is open 03:00-04:00 that night and a window lying
//! entirely in the gap is shifted, not lost; a window spanning a repeated hour lasts an hour
//! longer in real time, and one lying entirely within a repeated hour opens for the first pass
//! only.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

/// A validated weekly window.
#[derive(Clone, Debug)]
pub struct Window {
    /// Bit `n` set: the window starts on the weekday `n` days after Monday. 0: every day.
    days: u8,
    start: Time,
    end: Time,
    tz: TimeZone,
    zone_name: String,
}

impl Window {
    /// Callers guarantee `start != end` (validation rejects it).
    pub(crate) fn new(
        days: Vec<Weekday>,
        start: Time,
        end: Time,
        tz: TimeZone,
        zone_name: String,
    ) -> Self {
        let days = days
            .into_iter()
            .fold(0u8, |bits, d| bits | (1 << d.to_monday_zero_offset()));
        Self {
            days,
            start,
            end,
            tz,
            zone_name,
        }
    }

    /// The window's IANA time zone name.
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// Whether the window is open at `t`.
    pub fn contains(&self, t: Timestamp) -> bool {
        let today = self.tz.to_datetime(t).date();
        [today.yesterday().ok(), Some(today)]
            .into_iter()
            .flatten()
            .filter_map(|d| self.occurrence(d))
            .any(|(start, end)| start <= t && t < end)
    }

    /// The `[start, end)` instants of the window starting on civil date `day`, if it starts on
    /// that weekday and is not empty (it can be, inside a DST gap).
    fn occurrence(&self, day: Date) -> Option<(Timestamp, Timestamp)> {
        if self.days != 0 && self.days & (1 << day.weekday().to_monday_zero_offset()) == 0 {
            return None;
        }
        let start = self
            .tz
            .to_ambiguous_timestamp(day.to_datetime(self.start))
            .compatible()
            .ok()?;
        let end_day = if self.end <= self.start {
            day.tomorrow().ok()?
        } else {
            day
        };
        let end = self
            .tz
            .to_ambiguous_timestamp(end_day.to_datetime(self.end))
            .compatible()
            .ok()?;
        (start < end).then_some((start, end))
    }
}

/// A validated blackout: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlackoutPeriod {
    /// First instant of the blackout.
    pub start: Timestamp,
    /// First instant after it.
    pub end: Timestamp,
    /// Why, for humans.
    pub reason: String,
}

impl BlackoutPeriod {
    fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }
}

/// Whether maintenance may start now, and if not, why and when it may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowState {
    /// Inside a window (or no windows) and outside every blackout.
    pub open: bool,
    /// Why it is closed; `None` when open.
    pub reason: Option<ClosedReason>,
    /// When closed: the first instant at which it is open again, if that is within eight days
    /// after the last blackout that matters. `None` when open.
    pub next_open: Option<Timestamp>,
}

/// Why maintenance may not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClosedReason {
    /// Outside every maintenance window.
    OutsideWindows,
    /// Inside a blackout (which takes precedence when both apply).
    Blackout {
        /// The blackout's reason.
        reason: String,
        /// When it ends (the end of the chain of overlapping blackouts).
        until: Timestamp,
    },
}

/// Whether `windows` (none: always) and `blackouts` allow maintenance to start at `now`.
pub fn is_open(windows: &[Window], blackouts: &[BlackoutPeriod], now: Timestamp) -> WindowState {
    let in_window = |t: Timestamp| windows.is_empty() || windows.iter().any(|w| w.contains(t));
    let blacked_out = |t: Timestamp| blackouts.iter().any(|b| b.contains(t));
    let blackout = blackouts.iter().find(|b| b.contains(now));
    let reason = match blackout {
        Some(b) => Some(ClosedReason::Blackout {
            reason: b.reason.clone(),
            until: blackout_chain_end(blackouts, b.end),
        }),
        None if !in_window(now) => Some(ClosedReason::OutsideWindows),
        None => None,
    };
    if reason.is_none() {
        return WindowState {
            open: true,
            reason: None,
            next_open: None,
        };
    }

    // Candidates for the next opening: blackout ends and window starts around `now` and around
    // every later blackout end (a long blackout pushes the next opening past it).
    let mut anchors = vec![now];
    anchors.extend(blackouts.iter().map(|b| b.end).filter(|&e| e > now));
    let mut candidates: Vec<Timestamp> = anchors.iter().copied().filter(|&a| a > now).collect();
    for &anchor in &anchors {
        for window in windows {
            let day = window.tz.to_datetime(anchor).date();
            for offset in -1..=8 {
                let Ok(d) = day.checked_add(Span::new().days(offset)) else {
                    continue;
                };
                if let Some((start, _)) = window.occurrence(d)
                    && start > now
                {
                    candidates.push(start);
                }
            }
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    let next_open = candidates
        .into_iter()
        .find(|&t| in_window(t) && !blacked_out(t));
    WindowState {
        open: false,
        reason,
        next_open,
    }
}

/// The end of the run of blackouts that overlap or touch, starting from one ending at `end`.
fn blackout_chain_end(blackouts: &[BlackoutPeriod], mut end: Timestamp) -> Timestamp {
    loop {
        let extended = blackouts
            .iter()
            .filter(|b| b.start <= end && b.end > end)
            .map(|b| b.end)
            .max();
        match extended {
            Some(e) => end = e,
            None => return end,
        }
    }
}
