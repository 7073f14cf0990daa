//! Which maintenance records to delete: the retention decision the leading coordinator applies
//! now and then.

use jiff::{SignedDuration, Timestamp};

/// How many records to keep, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Most records kept (the newest by admission); 0: no limit by count.
    pub keep: usize,
    /// Records that ended longer ago than this go; zero: no limit by age.
    pub max_age: SignedDuration,
}

impl Default for Retention {
    /// 5000 records, 180 days.
    fn default() -> Self {
        Retention {
            keep: 5000,
            max_age: SignedDuration::from_hours(180 * 24),
        }
    }
}

/// What retention looks at in one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The object's name.
    pub name: String,
    /// When the maintenance started (admission; else the object's creation).
    pub started: Timestamp,
    /// When it ended; `None` while the slot is held (such a record is never deleted).
    pub ended: Option<Timestamp>,
}

/// The names of the records to delete: those that ended more than `max_age` before `now`, and
/// every ended one beyond the `keep` newest. A record whose maintenance has not ended is never
/// deleted (it still counts towards `keep`). Sorted by name.
pub fn to_prune(records: &[Kept], retention: Retention, now: Timestamp) -> Vec<String> {
    let mut newest_first: Vec<&Kept> = records.iter().collect();
    newest_first.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.name.cmp(&a.name)));
    let oldest_kept = (!retention.max_age.is_zero())
        .then(|| now.checked_sub(retention.max_age).ok())
        .flatten();
    let mut names: Vec<String> = newest_first
        .iter()
        .enumerate()
        .filter(|(rank, record)| {
            let Some(ended) = record.ended else {
                return false;
            };
            let too_many = retention.keep > 0 && *rank >= retention.keep;
            let too_old = oldest_kept.is_some_and(|limit| ended < limit);
            too_many || too_old
        })
        .map(|(_, record)| record.name.clone())
        .collect();
    names.sort();
    names
}
