//! Prometheus metrics, documented in the README's metrics table (which a test checks against
//! `/metrics`). Labels are bounded (result, error kind, phase, stage, outcome, reason), with one
//! exception: the gauges of batches that have not ended yet and of schedules carry `namespace`
//! and `batch` / `schedule`, so an alert can name the batch; they are rebuilt from the caches on
//! each scrape, so a batch that ended or went away leaves them at once.

mod process;
mod queue;
mod snapshot;

pub use process::{ProcessCollector, ProcessSample};
pub use queue::{QueueClock, batch_key};
pub use snapshot::{BatchGauges, batch_gauges, schedule_last_success};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub stage: &'static str,
    /// A [`TransitionStep`](crate::reconcile::TransitionStep)'s name.
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Succeeded or Failed.
    pub outcome: &'static str,
    /// The reason of the Ready (succeeded) or Stalled (failed) condition.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub namespace: String,
    pub batch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub namespace: String,
    pub schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// The reconciler: batches (the mirror and the schedules have their own passes, not counted).
    pub controller: &'static str,
}

/// Value of the `controller` label of the batch reconciler's queue metrics.
pub const BATCH_CONTROLLER: &str = "batches";

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
    pub completions: Family<OutcomeLabels, Counter>,
    pub in_flight: Gauge,
    pub progress: Family<BatchLabels, Gauge<f64, AtomicU64>>,
    pub eta: Family<BatchLabels, Gauge>,
    pub complete_by: Family<BatchLabels, Gauge>,
    pub schedule_last_success: Family<ScheduleLabels, Gauge>,
    pub mirror_out_of_sync: Gauge,
    pub queue_depth: Family<ControllerLabel, Gauge>,
    pub queue_wait: Family<ControllerLabel, Histogram>,
    pub transition: Family<TransitionLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        // The standard, unprefixed process_* metrics.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("prediction_batch");
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
        let completions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "completions",
            "Batches that ended, by outcome (Succeeded, Failed) and reason, counted by the replica that wrote the outcome",
            completions.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Batches in the cache that have not ended (Pending, Loading, Running, Consolidating, Exporting)",
            in_flight.clone(),
        );
        let progress = Family::<BatchLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "progress_ratio",
            "Succeeded items / target items of each batch that has not ended",
            progress.clone(),
        );
        let eta = Family::<BatchLabels, Gauge>::default();
        registry.register(
            "eta_timestamp_seconds",
            "When the quorum of each running batch is expected (status.eta.quorumTime), until it is met",
            eta.clone(),
        );
        let complete_by = Family::<BatchLabels, Gauge>::default();
        registry.register(
            "complete_by_timestamp_seconds",
            "The completeBy deadline of each batch that has not ended and has one",
            complete_by.clone(),
        );
        let schedule_last_success = Family::<ScheduleLabels, Gauge>::default();
        registry.register(
            "schedule_last_success_timestamp_seconds",
            "Each schedule's status.lastSuccessfulTime, or its creation time while none of its batches succeeded",
            schedule_last_success.clone(),
        );
        let mirror_out_of_sync = Gauge::default();
        registry.register(
            "mirror_out_of_sync",
            "Batches whose Firestore document lags their status (a write pending or failing)",
            mirror_out_of_sync.clone(),
        );
        let queue_depth = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Batches with a change (or listed) the reconciler has not started a pass on yet",
            queue_depth.clone(),
        );
        let queue_wait = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "queue_wait_seconds",
            "From a batch's change (or its Job's) arriving on the watch, or its listing's end, to the start of the pass that handles it",
            queue_wait.clone(),
        );
        let transition = Family::<TransitionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "transition_seconds",
            "The steps from a change arriving on the watch to a stage's Job created, for each Job create: queued, planned, status, create",
            transition.clone(),
        );
        let label = ControllerLabel { controller: BATCH_CONTROLLER };
        let _ = queue_depth.get_or_create(&label);
        let _ = queue_wait.get_or_create(&label);
        // Counters an alert takes increase() of are exported at 0 from the start, so the first
        // error or outcome of a fresh process counts too.
        for kind in crate::error::Error::KINDS {
            let _ = errors.get_or_create(&KindLabel { kind });
        }
        for result in ["ok", "error"] {
            let _ = reconciles.get_or_create(&ResultLabel { result });
        }
        for (outcome, reason) in completion_outcomes() {
            let _ = completions.get_or_create(&OutcomeLabels { outcome, reason: reason.to_string() });
        }
        Metrics {
            registry: root,
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
            completions,
            in_flight,
            progress,
            eta,
            complete_by,
            schedule_last_success,
            mirror_out_of_sync,
            queue_depth,
            queue_wait,
            transition,
        }
    }
}

/// Every (outcome, reason) a batch can end with.
pub fn completion_outcomes() -> Vec<(&'static str, &'static str)> {
    let succeeded = [crate::api::Reason::Succeeded, crate::api::Reason::NoItems].map(|r| ("Succeeded", r.as_str()));
    let failed = crate::api::StallReason::ALL.into_iter().filter(|r| !r.recoverable()).map(|r| ("Failed", r.as_str()));
    succeeded.into_iter().chain(failed).collect()
}

impl Metrics {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every family with one series (the exhaustive pattern breaks the build when a field is
    /// added, so a new metric cannot skip this test), encoded as `/metrics` serves it.
    fn every_family_encoded() -> String {
        let m = Metrics::default();
        let Metrics {
            registry: _,
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
            completions,
            in_flight,
            progress,
            eta,
            complete_by,
            schedule_last_success,
            mirror_out_of_sync,
            queue_depth,
            queue_wait,
            transition,
        } = &m;
        let batch = BatchLabels { namespace: "ns".into(), batch: "b".into() };
        reconciles.get_or_create(&ResultLabel { result: "ok" }).inc();
        errors.get_or_create(&KindLabel { kind: "kube" }).inc();
        reconcile_duration.observe(0.1);
        batches.get_or_create(&PhaseLabel { phase: "Running" }).set(1);
        stage_duration.get_or_create(&StageLabel { stage: "workers" }).observe(1.0);
        status_writes.inc();
        status_conflicts.inc();
        mirror_failures.inc();
        mirror_reconciles.get_or_create(&ResultLabel { result: "ok" }).inc();
        mirror_errors.get_or_create(&KindLabel { kind: "client" }).inc();
        is_leader.set(1);
        invalid_objects.set(0);
        watch_errors.get_or_create(&WatchLabel { watch: "batches" }).inc();
        watch_failing.get_or_create(&WatchLabel { watch: "batches" }).set(0);
        completions.get_or_create(&OutcomeLabels { outcome: "Succeeded", reason: "Succeeded".into() }).inc();
        in_flight.set(1);
        progress.get_or_create(&batch).set(0.5);
        eta.get_or_create(&batch).set(1);
        complete_by.get_or_create(&batch).set(1);
        schedule_last_success.get_or_create(&ScheduleLabels { namespace: "ns".into(), schedule: "s".into() }).set(1);
        mirror_out_of_sync.set(0);
        queue_depth.get_or_create(&ControllerLabel { controller: BATCH_CONTROLLER }).set(0);
        queue_wait.get_or_create(&ControllerLabel { controller: BATCH_CONTROLLER }).observe(0.01);
        transition.get_or_create(&TransitionLabels { stage: "export", step: "create" }).observe(0.01);
        m.encode()
    }

    /// Sample names of the families (a counter as `<name>_total`, an info as `<name>_info`).
    fn families(exposition: &str) -> BTreeSet<String> {
        exposition
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let (name, kind) = (parts.next()?, parts.next()?);
                Some(match kind {
                    "counter" => format!("{name}_total"),
                    "info" => format!("{name}_info"),
                    _ => name.to_string(),
                })
            })
            .collect()
    }

    #[test]
    fn the_readme_metrics_table_lists_every_family_and_nothing_else() {
        let readme = include_str!("../../README.md");
        let section = readme.split("\n### Metrics\n").nth(1).expect("README has '### Metrics'");
        let section = section.split("\n#").next().unwrap_or_default();
        let documented: BTreeSet<String> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('`').nth(1))
            .map(|n| n.split('{').next().unwrap_or(n).to_string())
            .collect();
        let served = families(&every_family_encoded());
        assert!(served.len() >= 30, "{served:?}");
        assert_eq!(documented, served, "README's metrics table vs the registered families");
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for name in families(&every_family_encoded()) {
            assert!(name.starts_with("prediction_batch_") || name.starts_with("process_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
            assert!(!name.ends_with("_total_total") && !name.contains("__"), "{name}");
        }
    }
}
