//! When the worker stage may end: the quorum (`minSucceededPercent` of the items), the grace
//! period after it (paused while the batch is suspended) and `completeBy` (wall-clock). Kept
//! apart from the shard accounting, with its own table test, as the Kubernetes Job controller
//! keeps its success policy apart.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::Planner;
use crate::api::PredictionBatchSpec;
use crate::reconcile::deadline::add_secs;
use crate::reconcile::shards::ShardLayout;

/// The completion rules of one batch, as they stand on this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Quorum {
    pub layout: ShardLayout,
    pub percent: u32,
    pub grace_seconds: i64,
    /// Seconds the grace period was paused (suspended after the quorum was met).
    pub grace_paused: i64,
    pub suspended: bool,
    pub complete_by: Option<Timestamp>,
}

/// Why the worker stage ends at a given time once the quorum is met.
pub(super) const GRACE_OVER: &str = "grace period over";
pub(super) const COMPLETE_BY_REACHED: &str = "completeBy reached";

impl Quorum {
    pub fn new(
        spec: &PredictionBatchSpec,
        layout: ShardLayout,
        grace_paused: Option<i64>,
        complete_by: Option<Timestamp>,
    ) -> Self {
        Quorum {
            layout,
            percent: spec.completion.min_succeeded_percent,
            grace_seconds: spec.completion.grace_seconds,
            grace_paused: grace_paused.unwrap_or(0),
            suspended: spec.suspend,
            complete_by,
        }
    }

    /// `succeeded_items` are enough.
    pub fn met(&self, succeeded_items: u64) -> bool {
        self.layout.meets_quorum(succeeded_items, self.percent)
    }

    /// With `failed_items` failed for good, the quorum can still be met.
    pub fn reachable(&self, failed_items: u64) -> bool {
        self.met(u64::from(self.layout.target).saturating_sub(failed_items))
    }

    /// When a stage whose quorum was met at `since` ends, and why: the grace period's end (not
    /// while suspended: it is paused) or `completeBy`, whichever is first; `None` while
    /// suspended without a `completeBy`.
    pub fn stage_end(&self, since: Timestamp) -> Option<(Timestamp, &'static str)> {
        let grace_end = (!self.suspended)
            .then(|| add_secs(since, self.grace_seconds.max(0).saturating_add(self.grace_paused.max(0))));
        match (self.complete_by, grace_end) {
            (Some(t), Some(g)) if t < g => Some((t, COMPLETE_BY_REACHED)),
            (_, Some(g)) => Some((g, GRACE_OVER)),
            (Some(t), None) => Some((t, COMPLETE_BY_REACHED)),
            (None, None) => None,
        }
    }
}

impl Planner<'_> {
    /// Records when the batch was suspended; on resume, adds the time it spent suspended after
    /// its quorum was met to the grace period (the grace period does not run while suspended).
    pub(super) fn track_suspension(&mut self) {
        if self.batch.spec.suspend {
            self.st.suspend_time.get_or_insert(Time(self.now));
            return;
        }
        let Some(since) = self.st.suspend_time.take() else { return };
        let Some(quorum) = &self.st.quorum_time else { return };
        let paused = self.now.duration_since(since.0.max(quorum.0)).as_secs();
        if paused > 0 {
            *self.st.grace_paused_seconds.get_or_insert(0) += paused;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_780_000_000;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn quorum(percent: u32, grace: i64, paused: i64, suspended: bool, complete_by: Option<i64>) -> Quorum {
        Quorum {
            layout: ShardLayout { target: 120, per_shard: 4 },
            percent,
            grace_seconds: grace,
            grace_paused: paused,
            suspended,
            complete_by: complete_by.map(t),
        }
    }

    #[test]
    fn quorum_is_a_share_of_the_items() {
        // (percent, succeeded items, met)
        for (percent, succeeded, met) in [(100, 120, true), (100, 119, false), (90, 108, true), (90, 107, false)] {
            assert_eq!(quorum(percent, 0, 0, false, None).met(succeeded), met, "{percent}% with {succeeded}");
        }
    }

    #[test]
    fn quorum_is_unreachable_once_too_many_items_failed() {
        // (percent, failed items, reachable)
        for (percent, failed, reachable) in [(100, 0, true), (100, 1, false), (90, 12, true), (90, 13, false)] {
            assert_eq!(quorum(percent, 0, 0, false, None).reachable(failed), reachable, "{percent}% with {failed}");
        }
    }

    #[test]
    fn the_stage_ends_at_the_grace_end_or_complete_by_whichever_is_first() {
        // (grace seconds, paused seconds, suspended, completeBy, expected end)
        type Row = (i64, i64, bool, Option<i64>, Option<(i64, &'static str)>);
        let table: [Row; 8] = [
            (0, 0, false, None, Some((10, GRACE_OVER))),
            (300, 0, false, None, Some((310, GRACE_OVER))),
            (300, 60, false, None, Some((370, GRACE_OVER))),
            (300, 0, false, Some(100), Some((100, COMPLETE_BY_REACHED))),
            (300, 0, false, Some(310), Some((310, GRACE_OVER))),
            (300, 0, true, None, None),
            (300, 0, true, Some(1000), Some((1000, COMPLETE_BY_REACHED))),
            (-5, -7, false, None, Some((10, GRACE_OVER))),
        ];
        for (grace, paused, suspended, complete_by, want) in table {
            let q = quorum(100, grace, paused, suspended, complete_by);
            assert_eq!(
                q.stage_end(t(10)),
                want.map(|(s, why)| (t(s), why)),
                "grace {grace}, paused {paused}, suspended {suspended}, completeBy {complete_by:?}"
            );
        }
    }
}
