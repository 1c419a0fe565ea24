//! When a PredictionSchedule runs (issue 17), as pure functions: its cron expression read in its
//! IANA time zone, the run to start after downtime (CronJob's catch-up rule), and the
//! deterministic name, game date and deadline of each run's batch.
//!
//! Cron and time zones come from maintained crates: `croner` (POSIX/Vixie five-field cron; day of
//! month and day of week both restricted means either, as in Vixie cron and CronJob) on `jiff`
//! (the IANA database, bundled, so the image needs no zoneinfo). Daylight-saving changes, for a
//! fixed-time expression such as `30 2 * * *` or `30 1 * * *`:
//! - a wall time the spring-forward night skips runs at the first instant after the gap (02:30 in
//!   New York on 2026-03-08 runs at 03:00 EDT): the day's run is not lost;
//! - a wall time the fall-back night repeats runs once, at its first occurrence (01:30 EDT on
//!   2026-11-01, not again at 01:30 EST); the batch name, from the wall time, is the same for both
//!   anyway, so a second create would be AlreadyExists.
//!
//! Interval expressions (`*/15 * * * *`) run on both instants of a repeated hour, as croner does;
//! their names differ only if their wall times do, so the second is still AlreadyExists.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// How far back the catch-up rule looks without a starting deadline (CronJob lists at most 100
/// missed runs; we count at most this many and start only the latest).
pub const MAX_MISSED: u32 = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("schedule {0:?} is not a five-field cron expression: {1}")]
    Cron(String, String),
    #[error("timeZone {0:?} is not an IANA time zone name (e.g. America/New_York)")]
    TimeZone(String),
    #[error("{0:?} is not a duration like +5h30m: {1}")]
    Offset(String, String),
}

/// A schedule's cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    tz: TimeZone,
}

impl Timing {
    /// `schedule`: five fields (minute hour day-of-month month day-of-week), or a nickname such as
    /// `@daily`; `time_zone`: an IANA name.
    pub fn parse(schedule: &str, time_zone: &str) -> Result<Self, TimingError> {
        let fields = schedule.split_whitespace().count();
        if !(fields == 5 || (fields == 1 && schedule.trim_start().starts_with('@'))) {
            return Err(TimingError::Cron(schedule.into(), format!("{fields} fields, want 5")));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(schedule).map_err(|e| TimingError::Cron(schedule.into(), e.to_string()))?;
        let tz = TimeZone::get(time_zone).map_err(|_| TimingError::TimeZone(time_zone.into()))?;
        Ok(Timing { cron, tz })
    }

    /// The first run strictly after `t` (`None`: the expression never matches again, e.g. 30 Feb).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(self.tz.clone());
        self.cron.find_next_occurrence(&start, false).ok().map(|z| z.timestamp())
    }

    /// The latest run at or before `t`.
    pub fn at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(self.tz.clone());
        self.cron.find_previous_occurrence(&start, true).ok().map(|z| z.timestamp())
    }

    /// `t` on the schedule's wall clock.
    pub fn local(&self, t: Timestamp) -> Zoned {
        t.to_zoned(self.tz.clone())
    }
}

/// What the schedule should do at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The run to start now: the latest scheduled time in `(since, now]`, if any, and if it is
    /// still inside the starting deadline.
    pub run: Option<Timestamp>,
    /// The latest scheduled time that is due but past the starting deadline (not started).
    pub too_late: Option<Timestamp>,
    /// Scheduled times in `(since, now]` (at most [`MAX_MISSED`]): more than 1 means runs were
    /// missed while the controller was down; only the latest may start.
    pub due_count: u32,
    /// The next scheduled time after `now`: when to look again.
    pub next: Option<Timestamp>,
}

/// CronJob's rule: of the runs scheduled after `since` (the last scheduled run, or the schedule's
/// creation) up to `now`, at most the latest starts, and only within `starting_deadline` seconds
/// of its scheduled time; a latest run past it is reported (`too_late`), never started.
pub fn due(timing: &Timing, since: Timestamp, now: Timestamp, starting_deadline: Option<i64>) -> Due {
    let mut latest = None;
    let mut count = 0;
    let mut cursor = since;
    while let Some(t) = timing.next_after(cursor).filter(|t| *t <= now) {
        latest = Some(t);
        count += 1;
        cursor = t;
        if count >= MAX_MISSED {
            // Only the latest matters: step back from now instead of walking every missed run.
            latest = timing.at_or_before(now).or(latest);
            break;
        }
    }
    let late = |t: Timestamp| starting_deadline.is_some_and(|d| now.duration_since(t).as_secs() > d.max(0));
    let (run, too_late) = match latest {
        Some(t) if late(t) => (None, Some(t)),
        other => (other, None),
    };
    Due { run, too_late, due_count: count, next: timing.next_after(now) }
}

/// The batch of the run scheduled at `t`: `<schedule>-<yyyymmdd>-<hhmm>` on the schedule's wall
/// clock (so both instants of a repeated wall time name the same batch).
pub fn batch_name(schedule: &str, timing: &Timing, t: Timestamp) -> String {
    let z = timing.local(t);
    format!("{schedule}-{:04}{:02}{:02}-{:02}{:02}", z.year(), z.month(), z.day(), z.hour(), z.minute())
}

/// The game date of the run scheduled at `t`: its date on the schedule's wall clock, plus
/// `offset_days`.
pub fn game_date(timing: &Timing, t: Timestamp, offset_days: i32) -> Option<String> {
    let date = timing.local(t).date().checked_add(jiff::Span::new().days(offset_days)).ok()?;
    Some(date.to_string())
}

/// A `completeBy` relative to the scheduled time (`+5h30m`, `5h`, `90m`), as RFC 3339 UTC.
pub fn complete_by(t: Timestamp, relative: &str) -> Result<String, TimingError> {
    let text = relative.trim().trim_start_matches('+');
    let d = SignedDuration::from_str(text).map_err(|e| TimingError::Offset(relative.into(), e.to_string()))?;
    let at = t.checked_add(d).map_err(|e| TimingError::Offset(relative.into(), e.to_string()))?;
    Ok(at.to_string())
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
