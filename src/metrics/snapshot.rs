//! The gauges that describe what the caches hold, rebuilt on each scrape: batches by phase and in
//! flight, and per batch that has not ended its progress, ETA and deadline; per schedule the time
//! of its last success. Computed by a pure function so the rules are tested without a cache.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use super::{BatchLabels, Metrics, PhaseLabel, ScheduleLabels};
use crate::api::{Phase, PredictionBatch, PredictionSchedule};
use crate::reconcile::deadline::parse_complete_by;

/// What one scrape reports about the batches.
#[derive(Debug, Default, PartialEq)]
pub struct BatchGauges {
    pub phases: Vec<(Phase, i64)>,
    pub in_flight: i64,
    pub progress: Vec<(BatchLabels, f64)>,
    pub eta: Vec<(BatchLabels, i64)>,
    pub complete_by: Vec<(BatchLabels, i64)>,
}

const PHASES: [Phase; 8] = [
    Phase::Pending,
    Phase::Loading,
    Phase::Running,
    Phase::Consolidating,
    Phase::Exporting,
    Phase::Succeeded,
    Phase::Failed,
    Phase::Suspended,
];

/// The gauges of `batches`. A batch without a phase yet counts as Pending; Suspended batches are
/// neither in flight nor at risk (their clock is stopped by the user).
pub fn batch_gauges<'a>(batches: impl IntoIterator<Item = &'a PredictionBatch>) -> BatchGauges {
    let mut g = BatchGauges { phases: PHASES.iter().map(|p| (*p, 0)).collect(), ..Default::default() };
    for b in batches {
        let status = b.status.as_ref();
        let phase = status.and_then(|s| s.phase).unwrap_or(Phase::Pending);
        if let Some(slot) = g.phases.iter_mut().find(|(p, _)| *p == phase) {
            slot.1 += 1;
        }
        if phase.is_terminal() || phase == Phase::Suspended || b.metadata.deletion_timestamp.is_some() {
            continue;
        }
        g.in_flight += 1;
        let labels = BatchLabels {
            namespace: b.metadata.namespace.clone().unwrap_or_default(),
            batch: b.metadata.name.clone().unwrap_or_default(),
        };
        let items = status.and_then(|s| s.items.as_ref());
        let ratio = items.filter(|i| i.target > 0).map_or(0.0, |i| f64::from(i.succeeded) / f64::from(i.target));
        g.progress.push((labels.clone(), ratio.clamp(0.0, 1.0)));
        if let Some(t) = status.and_then(|s| s.eta.as_ref()).and_then(|e| e.quorum_time.as_ref()) {
            g.eta.push((labels.clone(), t.0.as_second()));
        }
        if let Some(t) = b.spec.completion.complete_by.as_deref().and_then(|s| parse_complete_by(s).ok()) {
            g.complete_by.push((labels, t.as_second()));
        }
    }
    g
}

/// Each schedule's last success, or its creation while it has none (so "no success for a day"
/// also fires for a schedule that never had one).
pub fn schedule_last_success<'a>(
    schedules: impl IntoIterator<Item = &'a PredictionSchedule>,
) -> Vec<(ScheduleLabels, i64)> {
    schedules
        .into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter_map(|s| {
            let last = s.status.as_ref().and_then(|st| st.last_successful_time.as_ref()).map(|t| t.0);
            let since: Timestamp = last.or_else(|| s.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
            let labels = ScheduleLabels {
                namespace: s.metadata.namespace.clone().unwrap_or_default(),
                schedule: s.metadata.name.clone().unwrap_or_default(),
            };
            Some((labels, since.as_second()))
        })
        .collect()
}

impl Metrics {
    /// Sets the batch gauges from the cache (called at scrape time).
    pub fn set_batches(&self, batches: &[Arc<PredictionBatch>]) {
        let g = batch_gauges(batches.iter().map(|b| b.as_ref()));
        for (phase, n) in &g.phases {
            self.batches.get_or_create(&PhaseLabel { phase: phase.as_str() }).set(*n);
        }
        self.in_flight.set(g.in_flight);
        self.progress.clear();
        for (labels, v) in g.progress {
            self.progress.get_or_create(&labels).set(v);
        }
        self.eta.clear();
        for (labels, v) in g.eta {
            self.eta.get_or_create(&labels).set(v);
        }
        self.complete_by.clear();
        for (labels, v) in g.complete_by {
            self.complete_by.get_or_create(&labels).set(v);
        }
    }

    /// Sets the per-schedule gauges from the schedule cache (called at scrape time).
    pub fn set_schedules(&self, schedules: &[Arc<PredictionSchedule>]) {
        self.schedule_last_success.clear();
        for (labels, v) in schedule_last_success(schedules.iter().map(|s| s.as_ref())) {
            self.schedule_last_success.get_or_create(&labels).set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::api::{EtaStatus, ItemCounts, PredictionBatchStatus};

    fn batch(name: &str, phase: Option<Phase>, complete_by: Option<&str>) -> PredictionBatch {
        let mut b: PredictionBatch = serde_json::from_value(json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"gameDate": "2026-12-01", "targetCount": 10, "worker": {"template": {"spec": {"containers": []}}}},
        }))
        .unwrap();
        b.spec.completion.complete_by = complete_by.map(str::to_string);
        b.status = phase.map(|p| PredictionBatchStatus { phase: Some(p), ..Default::default() });
        b
    }

    fn labels(name: &str) -> BatchLabels {
        BatchLabels { namespace: "ns".into(), batch: name.into() }
    }

    #[test]
    fn counts_every_phase_and_only_unfinished_batches_are_in_flight() {
        let batches = [
            batch("new", None, None),
            batch("run", Some(Phase::Running), None),
            batch("ok", Some(Phase::Succeeded), Some("2026-12-01T19:00:00Z")),
            batch("bad", Some(Phase::Failed), None),
            batch("held", Some(Phase::Suspended), Some("2026-12-01T19:00:00Z")),
        ];
        let g = batch_gauges(&batches);
        assert_eq!(g.in_flight, 2);
        let count = |p| g.phases.iter().find(|(q, _)| *q == p).unwrap().1;
        assert_eq!((count(Phase::Pending), count(Phase::Running), count(Phase::Succeeded)), (1, 1, 1));
        assert_eq!((count(Phase::Failed), count(Phase::Suspended), count(Phase::Exporting)), (1, 1, 0));
        assert_eq!(g.phases.len(), 8, "every phase is exported, at 0 when empty");
        assert_eq!(g.progress.iter().map(|(l, _)| l.batch.as_str()).collect::<Vec<_>>(), ["new", "run"]);
        assert!(g.complete_by.is_empty(), "finished and suspended batches are not at risk");
    }

    #[test]
    fn progress_eta_and_deadline_of_a_running_batch() {
        let mut b = batch("run", Some(Phase::Running), Some("2026-12-01T19:00:00Z"));
        let st = b.status.as_mut().unwrap();
        st.items = Some(ItemCounts { target: 120, succeeded: 30, failed: 0 });
        let eta: Timestamp = "2026-12-01T18:30:00Z".parse().unwrap();
        st.eta = Some(Box::new(EtaStatus { quorum_time: Some(Time(eta)), ..Default::default() }));
        let g = batch_gauges([&b]);
        assert_eq!(g.progress, vec![(labels("run"), 0.25)]);
        assert_eq!(g.eta, vec![(labels("run"), eta.as_second())]);
        let deadline: Timestamp = "2026-12-01T19:00:00Z".parse().unwrap();
        assert_eq!(g.complete_by, vec![(labels("run"), deadline.as_second())]);
    }

    #[test]
    fn a_schedule_without_a_success_counts_from_its_creation() {
        let mut s: PredictionSchedule = serde_json::from_value(json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionSchedule",
            "metadata": {"name": "daily", "namespace": "ns", "creationTimestamp": "2026-11-30T12:00:00Z"},
            "spec": {"schedule": "0 7 * * *", "timeZone": "America/New_York", "batchTemplate": {"spec": {}}},
        }))
        .unwrap();
        let created: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let got = schedule_last_success([&s]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, created.as_second());
        let success: Timestamp = "2026-12-01T13:00:00Z".parse().unwrap();
        s.status.get_or_insert_with(Default::default).last_successful_time = Some(Time(success));
        assert_eq!(schedule_last_success([&s])[0].1, success.as_second());
    }
}
