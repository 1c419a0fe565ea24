//! Time in status: the durations of the batch and its stages once they end, and while the workers
//! run their throughput, when the quorum and the last shard are expected (`status.eta`), and
//! whether the quorum is expected after `completeBy` (`AtRisk`).
//!
//! The estimate moves only when a shard finishes: a pass that saw nothing new plans the status it
//! read, so an idle or stuck batch writes nothing (its ETA stays where the last finished shard put
//! it, and `completeBy` itself still ends the stage on time). Times are whole seconds, as the
//! apiserver stores them, so an estimate never differs from what is on record by a fraction.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::Planner;
use super::conditions::{Wanted, wanted};
use crate::api::{CONDITION_AT_RISK, ConditionStatus, EtaStatus, Phase, Reason, Stage, StageState};
use crate::reconcile::deadline::parse_complete_by;
use crate::reconcile::ranges::IndexSet;
use crate::reconcile::shards::ShardLayout;

/// The throughput window is kept between this and twice this long.
pub const ETA_WINDOW_SECS: i64 = 120;

impl Planner<'_> {
    /// Re-estimates `status.eta` when the count of finished shards moved since the status on
    /// record (or none was made yet); otherwise keeps the recorded one.
    pub(super) fn estimate_eta(&mut self, layout: ShardLayout, succeeded: &IndexSet, failed: &IndexSet) {
        let finished = u32::try_from(succeeded.len() + failed.len()).unwrap_or(u32::MAX);
        let recorded = self.prev.shards.as_ref().map(|s| s.succeeded.saturating_add(s.failed));
        if let Some(eta) = &self.prev.eta
            && recorded == Some(finished)
        {
            self.st.eta = Some(eta.clone());
            return;
        }
        let Some(started) = self.st.workers.as_ref().and_then(|w| w.start_time.clone()).or(self.st.start_time.clone())
        else {
            return;
        };
        let (window_start, window_finished) = match self.prev.eta.as_deref() {
            Some(EtaStatus { window_start_time: Some(t), window_finished_shards, .. })
                if *window_finished_shards <= finished =>
            {
                (t.0, *window_finished_shards)
            }
            _ => (started.0, 0),
        };
        let now = whole_seconds(self.now);
        let elapsed = now.as_second() - window_start.as_second();
        let mut eta = EtaStatus {
            window_start_time: Some(Time(whole_seconds(window_start))),
            window_finished_shards: window_finished,
            ..Default::default()
        };
        let done = finished - window_finished;
        if elapsed <= 0 || done == 0 {
            self.st.eta = Some(Box::new(eta));
            return;
        }
        let per_sec = f64::from(done) / elapsed as f64;
        let total = layout.shard_count();
        let at = |shards: u64| Time(add_secs_f(now, shards as f64 / per_sec));
        eta.completion_time = Some(at(u64::from(total.saturating_sub(finished))));
        let pct = u64::from(self.batch.spec.completion.min_succeeded_percent.min(100));
        let needed_items = (u64::from(layout.target) * pct).div_ceil(100);
        let have_items = layout.items_in(succeeded);
        if have_items < needed_items {
            let per_shard = u64::from(layout.per_shard.max(1));
            eta.quorum_time = Some(at((needed_items - have_items).div_ceil(per_shard)));
        }
        eta.shards_per_minute = Some(three_digits(per_sec * 60.0));
        if elapsed > 2 * ETA_WINDOW_SECS {
            // Slide the window to the last ETA_WINDOW_SECS, assuming the rate held over it.
            let slid = (per_sec * ETA_WINDOW_SECS as f64).round() as u32;
            eta.window_start_time = Some(Time(add_secs_f(now, -(ETA_WINDOW_SECS as f64))));
            eta.window_finished_shards = finished.saturating_sub(slid).max(window_finished);
        }
        self.st.eta = Some(Box::new(eta));
    }

    /// The durations of what ended in this pass, and no ETA once the workers are not running.
    pub(super) fn settle_timing(&mut self) {
        let running = self.st.workers.as_ref().is_some_and(|w| w.state == StageState::Running);
        if !running || self.st.phase.is_some_and(Phase::is_terminal) {
            self.st.eta = None;
        }
        for stage in Stage::ALL {
            let ended_now = self.prev.stage(stage).as_ref().is_none_or(|s| s.completion_time.is_none());
            let Some(s) = self.st.stage_mut(stage).as_mut() else { continue };
            if ended_now && let (Some(a), Some(b)) = (&s.start_time, &s.completion_time) {
                s.duration = Some(human_duration(b.0.as_second() - a.0.as_second()));
            }
        }
        if self.prev.completion_time.is_none()
            && let Some(end) = &self.st.completion_time
        {
            let start =
                self.st.loader.as_ref().and_then(|l| l.start_time.clone()).or(self.st.start_time.clone()).or(self
                    .batch
                    .metadata
                    .creation_timestamp
                    .clone());
            self.st.duration = start.map(|s| human_duration(end.0.as_second() - s.0.as_second()));
        }
    }

    /// `AtRisk` while the workers run with a quorum ETA and a `completeBy`; `None`: no such condition.
    pub(super) fn at_risk(&self) -> Option<Wanted> {
        let eta = self.st.eta.as_ref()?.quorum_time.as_ref()?;
        let deadline = parse_complete_by(self.batch.spec.completion.complete_by.as_deref()?).ok()?;
        let rate = self.st.eta.as_ref().and_then(|e| e.shards_per_minute.clone()).unwrap_or_default();
        Some(if eta.0 > deadline {
            wanted(
                CONDITION_AT_RISK,
                ConditionStatus::True,
                Reason::EtaPastDeadline,
                format!("at {rate} shards/min the quorum is expected at {}, after completeBy {deadline}", eta.0),
            )
        } else {
            wanted(
                CONDITION_AT_RISK,
                ConditionStatus::False,
                Reason::OnTrack,
                format!("at {rate} shards/min the quorum is expected at {}, before completeBy {deadline}", eta.0),
            )
        })
    }
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// `t` plus `secs` (rounded up to a whole second), saturating at the representable range.
fn add_secs_f(t: Timestamp, secs: f64) -> Timestamp {
    let secs = if secs.is_finite() { secs.ceil().clamp(-1e12, 1e12) as i64 } else { 0 };
    crate::reconcile::deadline::add_secs(whole_seconds(t), secs)
}

/// 3 significant digits, e.g. "12.5", "0.333", "1250".
pub fn three_digits(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        return "0".into();
    }
    let decimals = (2 - v.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// Like kubectl's durations: "45s", "4m12s", "1h5m", "2d3h".
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(-3), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(252), "4m12s");
        assert_eq!(human_duration(3900), "1h5m");
        assert_eq!(human_duration(183_600), "2d3h");
    }

    #[test]
    fn rates_have_three_significant_digits() {
        assert_eq!(three_digits(12.5), "12.5");
        assert_eq!(three_digits(1.0 / 3.0), "0.333");
        assert_eq!(three_digits(1249.7), "1250");
        assert_eq!(three_digits(100.0), "100");
        assert_eq!(three_digits(0.0), "0");
        assert_eq!(three_digits(f64::NAN), "0");
    }
}
