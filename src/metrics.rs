//! Prometheus metrics. Labels are bounded (result, error kind, phase, stage): never per object.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::Phase;
use crate::watch_health::{Failing, Watch};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabel {
    pub watch: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub errors: Family<KindLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub batches: Family<PhaseLabel, Gauge>,
    pub stage_duration: Family<StageLabel, Histogram>,
    pub status_writes: Counter,
    pub status_conflicts: Counter,
    pub mirror_failures: Counter,
    pub mirror_reconciles: Family<ResultLabel, Counter>,
    pub mirror_errors: Family<KindLabel, Counter>,
    pub is_leader: Gauge,
    pub invalid_objects: Gauge,
    pub watch_errors: Family<WatchLabel, Counter>,
    pub watch_failing: Family<WatchLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("prediction_batch");
        // The usual `_build_info` gauge: always 1, the version and revision in its labels.
        let build_info = prometheus_client::metrics::info::Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", crate::REVISION),
        ]);
        registry.register("build", "Version and git revision of the running binary", build_info);
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register("reconciles", "Reconcile passes by result (ok, error)", reconciles.clone());
        let errors = Family::<KindLabel, Counter>::default();
        registry.register("reconcile_errors", "Reconcile errors by kind", errors.clone());
        let reconcile_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register("reconcile_duration_seconds", "Duration of one reconcile pass", reconcile_duration.clone());
        let batches = Family::<PhaseLabel, Gauge>::default();
        registry.register("batches", "PredictionBatches in the cache by phase", batches.clone());
        let stage_duration =
            Family::<StageLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 16)));
        registry.register(
            "stage_duration_seconds",
            "Duration of finished stages (Job start to end)",
            stage_duration.clone(),
        );
        let status_writes = Counter::default();
        registry.register("status_writes", "Status patches written", status_writes.clone());
        let status_conflicts = Counter::default();
        registry.register(
            "status_conflicts",
            "Status writes refused as stale (409), each followed by a fresh read and a new plan",
            status_conflicts.clone(),
        );
        let mirror_failures = Counter::default();
        registry.register("mirror_failures", "Failed writes to the Firestore mirror", mirror_failures.clone());
        let mirror_reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "mirror_reconciles",
            "Passes of the Firestore mirror's reconciler (finalizer, hand-over to its writer) by result (ok, error)",
            mirror_reconciles.clone(),
        );
        let mirror_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "mirror_reconcile_errors",
            "Errors of the Firestore mirror's reconciler by kind (e.g. client: its finalizer patch refused)",
            mirror_errors.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (or runs without election)",
            is_leader.clone(),
        );
        let invalid_objects = Gauge::default();
        registry.register(
            "invalid_objects",
            "PredictionBatches whose stored object cannot be read (not reconciled; marked Stalled, reason InvalidObject)",
            invalid_objects.clone(),
        );
        let watch_errors = Family::<WatchLabel, Counter>::default();
        registry.register("watch_errors", "Failed list or watch calls by watch (batches, jobs)", watch_errors.clone());
        let watch_failing = Family::<WatchLabel, Gauge>::default();
        registry.register(
            "watch_failing_seconds",
            "How long a watch has been failing without a success in between (0 while it works)",
            watch_failing.clone(),
        );
        for watch in Watch::ALL {
            // Exported from the start, at 0.
            let _ = watch_errors.get_or_create(&WatchLabel { watch: watch.label() });
            let _ = watch_failing.get_or_create(&WatchLabel { watch: watch.label() });
        }
        Metrics {
            registry,
            reconciles,
            errors,
            reconcile_duration,
            batches,
            stage_duration,
            status_writes,
            status_conflicts,
            mirror_failures,
            mirror_reconciles,
            mirror_errors,
            is_leader,
            invalid_objects,
            watch_errors,
            watch_failing,
        }
    }
}

impl Metrics {
    /// Sets the per-phase gauges from a full count (called at scrape time from the cache).
    pub fn set_phases(&self, counts: &[(Phase, i64)]) {
        for phase in [
            Phase::Pending,
            Phase::Loading,
            Phase::Running,
            Phase::Consolidating,
            Phase::Exporting,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Suspended,
        ] {
            let n = counts.iter().filter(|(p, _)| *p == phase).map(|(_, n)| n).sum();
            self.batches.get_or_create(&PhaseLabel { phase: phase.as_str() }).set(n);
        }
    }

    /// Sets the per-watch failure gauges (called at scrape time).
    pub fn set_watch_failing(&self, failing: &[Failing]) {
        for watch in Watch::ALL {
            let secs = failing.iter().find(|f| f.watch == watch).map_or(0, |f| f.for_.as_secs());
            self.watch_failing.get_or_create(&WatchLabel { watch: watch.label() }).set(secs as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
