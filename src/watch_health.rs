//! Whether the controller's watches work: a watch that keeps failing (RBAC, a missing CRD, an
//! apiserver that refuses the list) retries forever with backoff and would otherwise be visible
//! only in the log. Each watch records its errors here; `/readyz` and the metrics read them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

/// A failed attempt older than this (a failing watch retries at least every 30 s plus jitter)
/// ends the streak: the watch recovered, quietly (restarting a watch emits no event).
pub const STREAK_ENDS_AFTER: Duration = Duration::from_secs(90);

/// A replica whose watch has kept failing this long is not ready.
pub const NOT_READY_AFTER: Duration = Duration::from_secs(60);

/// The controller's watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    Batches,
    Jobs,
}

impl Watch {
    pub const ALL: [Watch; 2] = [Watch::Batches, Watch::Jobs];

    /// Value of the `watch` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Watch::Batches => "batches",
            Watch::Jobs => "jobs",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Watch::Batches => "PredictionBatches",
            Watch::Jobs => "Jobs",
        }
    }
}

/// Consecutive failures of one watch.
#[derive(Clone, Debug, Default)]
struct Streak {
    errors: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    error: String,
}

/// A watch that is failing now.
#[derive(Clone, Debug, PartialEq)]
pub struct Failing {
    pub watch: Watch,
    /// Since the first failure of the streak.
    pub for_: Duration,
    pub errors: u64,
    pub error: String,
}

impl std::fmt::Display for Failing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "watch of {} failing for {}s ({} errors in a row): {}",
            self.watch.what(),
            self.for_.as_secs(),
            self.errors,
            self.error
        )
    }
}

#[derive(Debug, Default)]
pub struct WatchHealth {
    batches: Mutex<Streak>,
    jobs: Mutex<Streak>,
}

impl WatchHealth {
    fn streak(&self, watch: Watch) -> std::sync::MutexGuard<'_, Streak> {
        match watch {
            Watch::Batches => &self.batches,
            Watch::Jobs => &self.jobs,
        }
        .lock()
        .expect("poisoned")
    }

    /// An item of the watch's stream: an event ends the streak, an error extends it.
    pub fn record<E: std::fmt::Display>(&self, watch: Watch, result: Result<(), &E>, now: Instant) {
        let mut streak = self.streak(watch);
        match result {
            Ok(()) => {
                if streak.errors > 0 {
                    *streak = Streak::default();
                }
            }
            Err(error) => {
                if streak.last.is_some_and(|last| now.saturating_duration_since(last) > STREAK_ENDS_AFTER) {
                    *streak = Streak::default();
                }
                streak.errors += 1;
                streak.first.get_or_insert(now);
                streak.last = Some(now);
                streak.error = error.to_string();
                warn!(watch = watch.label(), errors = streak.errors, %error, "watch failed; retrying with backoff");
            }
        }
    }

    /// Forgets every streak (a new controller starts its watches afresh).
    pub fn reset(&self) {
        for watch in Watch::ALL {
            *self.streak(watch) = Streak::default();
        }
    }

    /// The watches failing at `now`.
    pub fn failing(&self, now: Instant) -> Vec<Failing> {
        Watch::ALL
            .into_iter()
            .filter_map(|watch| {
                let streak = self.streak(watch).clone();
                let (first, last) = (streak.first?, streak.last?);
                (now.saturating_duration_since(last) <= STREAK_ENDS_AFTER).then(|| Failing {
                    watch,
                    for_: now.saturating_duration_since(first),
                    errors: streak.errors,
                    error: streak.error,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_of_errors_is_failing_until_an_event_or_quiet() {
        let health = WatchHealth::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(health.failing(t0).is_empty());

        health.record(Watch::Batches, Err(&"403 Forbidden"), at(0));
        health.record(Watch::Batches, Err(&"403 Forbidden"), at(30));
        let failing = health.failing(at(61));
        assert_eq!(failing.len(), 1);
        assert_eq!(
            (failing[0].watch, failing[0].errors, failing[0].for_),
            (Watch::Batches, 2, Duration::from_secs(61))
        );
        assert_eq!(
            failing[0].to_string(),
            "watch of PredictionBatches failing for 61s (2 errors in a row): 403 Forbidden"
        );

        // Quiet for longer than a failing watch ever is: it recovered.
        assert!(health.failing(at(30) + STREAK_ENDS_AFTER + Duration::from_secs(1)).is_empty());
        // A new error after such a pause starts a new streak.
        health.record(Watch::Batches, Err(&"boom"), at(200));
        assert_eq!(health.failing(at(200))[0].errors, 1);

        // An event ends it at once.
        health.record::<&str>(Watch::Batches, Ok(()), at(201));
        assert!(health.failing(at(201)).is_empty());

        health.record(Watch::Jobs, Err(&"boom"), at(300));
        health.reset();
        assert!(health.failing(at(300)).is_empty());
    }
}
