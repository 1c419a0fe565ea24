//! Table and property tests of the planner.
//!
//! The builders describe the example batch of the issue: 120 items, 4 per shard (30 shards), with
//! consolidation and export templates. `Sim` plays the reconciler: it writes each plan's status
//! back into the batch (before acting, as the reconciler does) and executes `Create` by inserting
//! an owned, running Job.

#![allow(clippy::cloned_ref_to_slice_refs)] // `&[job.clone()]` reads better in the tables

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::api::{
    CONDITION_DEGRADED, CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, CompletionSpec, EventReason, Phase,
    PredictionBatch, PredictionBatchSpec, PredictionBatchStatus, Stage, StageSpec, StageState, StageStatus, WorkerSpec,
};
use crate::reconcile::observed::{JobOutcome, JobView, Observed};

const NAME: &str = "nba-2026-01-02";
const GENERATION: i64 = 3;
const T0: i64 = 1_780_000_000;
/// Every shard of the example batch but 3 and 7.
const ALL_BUT_3_7: &str = "0-2,4-6,8-29";

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn stage_spec() -> StageSpec {
    StageSpec { template: PodTemplateSpec::default().into(), backoff_limit: 2 }
}

fn spec() -> PredictionBatchSpec {
    PredictionBatchSpec {
        game_date: "2026-01-02".into(),
        target_count: Some(120),
        loader: None,
        items_per_shard: 4,
        parallelism: 10,
        worker: WorkerSpec {
            template: PodTemplateSpec::default().into(),
            backoff_limit_per_shard: 3,
            max_failed_shards: None,
        },
        completion: CompletionSpec::default(),
        consolidation: Some(stage_spec()),
        export: Some(stage_spec()),
        suspend: false,
        rerun: None,
        ttl_seconds_after_finished: None,
    }
}

fn spec_with(f: impl FnOnce(&mut PredictionBatchSpec)) -> PredictionBatchSpec {
    let mut s = spec();
    f(&mut s);
    s
}

fn batch(spec: PredictionBatchSpec, status: Option<PredictionBatchStatus>) -> PredictionBatch {
    let mut b = PredictionBatch::new(NAME, spec);
    b.metadata.namespace = Some("default".into());
    b.metadata.uid = Some("batch-uid".into());
    b.metadata.generation = Some(GENERATION);
    b.status = status;
    b
}

fn uid(stage: Stage) -> String {
    format!("uid-{}", stage.label())
}

/// An owned Job of `stage`, running, no pods yet.
fn job(stage: Stage) -> JobView {
    JobView {
        name: stage.job_name(NAME),
        uid: uid(stage),
        owned: true,
        suspended: false,
        suspend_confirmed: false,
        deleting: false,
        outcome_finalizer: None,
        parallelism: Some(if stage == Stage::Workers { 10 } else { 1 }),
        active: 0,
        terminating: 0,
        completed_indexes: None,
        failed_indexes: None,
        outcome: JobOutcome::Running,
        created: Some(t(0)),
        start_time: Some(t(1)),
    }
}

fn workers_job(completed: &str, failed: &str, active: u32) -> JobView {
    JobView {
        completed_indexes: Some(completed.to_string()).filter(|s| !s.is_empty()),
        failed_indexes: Some(failed.to_string()).filter(|s| !s.is_empty()),
        active,
        ..job(Stage::Workers)
    }
}

fn succeeded(mut j: JobView, at: i64) -> JobView {
    j.outcome = JobOutcome::Succeeded { at: Some(t(at)) };
    j.active = 0;
    j
}

fn failed(mut j: JobView, reason: &str, at: i64) -> JobView {
    j.outcome = JobOutcome::Failed { reason: reason.into(), message: "boom".into(), at: Some(t(at)) };
    j.active = 0;
    j
}

fn observed(now: i64) -> Observed {
    Observed::new(t(now))
}

fn obs_with(now: i64, jobs: &[JobView]) -> Observed {
    let mut o = observed(now);
    for j in jobs {
        let stage = Stage::ALL.into_iter().find(|s| s.job_name(NAME) == j.name).expect("a stage's Job");
        o.set_job(stage, Some(j.clone()));
    }
    o
}

fn cond<'a>(st: &'a PredictionBatchStatus, type_: &str) -> &'a Condition {
    st.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition in {st:#?}"))
}

fn creates(p: &Plan) -> Vec<Stage> {
    p.actions.iter().filter_map(|a| if let Action::Create(s) = a { Some(*s) } else { None }).collect()
}

fn stage_of(st: &PredictionBatchStatus, stage: Stage) -> Option<&StageStatus> {
    st.stage(stage).as_deref()
}

fn stage_state(st: &PredictionBatchStatus, stage: Stage) -> Option<StageState> {
    stage_of(st, stage).map(|s| s.state)
}

/// Plans once and returns the plan plus the batch with the plan's status written back.
fn step(b: &PredictionBatch, obs: &Observed) -> (Plan, PredictionBatch) {
    let p = plan(b, obs);
    let mut next = b.clone();
    next.status = Some(p.status.clone());
    (p, next)
}

/// Status after a first pass and the adoption of the created workers Job: the batch is Running.
fn running_status(spec: &PredictionBatchSpec) -> PredictionBatchStatus {
    // The intent (and so the stage's start) is written at t(1), when the Job then starts.
    let (_, b) = step(&batch(spec.clone(), None), &observed(1));
    let (p, _) = step(&b, &obs_with(2, &[job(Stage::Workers)]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    p.status
}

/// The example batch after its workers `w` succeeded (at 100) and its consolidation Job started
/// (at 102): the last plan and the batch with its status.
fn consolidating(w: &JobView) -> (Plan, PredictionBatch) {
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[w.clone()]));
    let (_, b) = step(&b, &obs_with(101, &[w.clone()]));
    step(&b, &obs_with(102, &[w.clone(), job(Stage::Consolidation)]))
}

/// The reconciler loop: writes status, executes `Create` with an owned running Job whose pods
/// succeed (single-pod stages) at the next pass. Stops when nothing is left to do.
struct Sim {
    batch: PredictionBatch,
    obs: Observed,
    plans: Vec<Plan>,
    /// Outcome given to each single-pod stage Job the pass after it is created.
    stage_outcome: JobOutcome,
}

impl Sim {
    fn new(spec: PredictionBatchSpec, workers: JobView, now: i64) -> Self {
        let mut s = Sim {
            batch: batch(spec.clone(), Some(running_status(&spec))),
            obs: observed(now),
            plans: Vec::new(),
            stage_outcome: JobOutcome::Succeeded { at: Some(t(now)) },
        };
        s.obs.set_job(Stage::Workers, Some(workers));
        s
    }

    fn run(&mut self, max: usize) {
        for _ in 0..max {
            // Single-pod stages created earlier finish now.
            for stage in [Stage::Consolidation, Stage::Export] {
                let out = self.stage_outcome.clone();
                if let Some(j) = self.obs.jobs.get_mut(stage).as_mut() {
                    j.outcome = out;
                }
            }
            let (p, b) = step(&self.batch, &self.obs);
            self.batch = b;
            for a in &p.actions {
                match a {
                    Action::Create(s) => self.obs.set_job(*s, Some(JobView { outcome_finalizer: Some(0), ..job(*s) })),
                    Action::Suspend { stage, suspend } => {
                        if let Some(j) = self.obs.job(*stage).cloned() {
                            self.obs.set_job(*stage, Some(JobView { suspended: *suspend, active: 0, ..j }));
                        }
                    }
                    Action::Release { stage, .. } => {
                        if let Some(j) = self.obs.job(*stage).cloned() {
                            self.obs.set_job(*stage, Some(JobView { outcome_finalizer: None, ..j }));
                        }
                    }
                    Action::Parallelism(_)
                    | Action::Delete { .. }
                    | Action::Validate
                    | Action::CreateShard(_)
                    | Action::ReleaseShard { .. }
                    | Action::CreateBackup(_)
                    | Action::ReleaseBackup { .. }
                    | Action::StopBackup { .. }
                    | Action::DeleteJob { .. }
                    | Action::SuspendShard { .. } => {}
                }
            }
            self.obs.now = self.obs.now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(1)).unwrap();
            let done = p.actions.is_empty() && p.status.phase.is_some_and(Phase::is_terminal);
            self.plans.push(p);
            if done {
                break;
            }
        }
    }

    fn status(&self) -> &PredictionBatchStatus {
        self.batch.status.as_ref().unwrap()
    }

    fn all_creates(&self) -> Vec<Stage> {
        self.plans.iter().flat_map(creates).collect()
    }
}

fn assert_condition_generations(st: &PredictionBatchStatus) {
    assert_eq!(st.observed_generation, Some(GENERATION));
    for type_ in [CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, CONDITION_DEGRADED] {
        assert_eq!(cond(st, type_).observed_generation, Some(GENERATION), "{type_}");
    }
}

mod backups;
mod determinism;
mod loader;
mod lost_jobs;
mod pipeline;
mod properties;
mod quorum;
mod rerun;
mod simulation;
mod stuck;
mod suspend_ttl;
mod timing;

/// The planner is a pure function: no API client, no clock (the time comes in `Observed`).
#[test]
fn the_planner_imports_no_client_and_no_clock() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/reconcile/plan");
    let forbidden = ["kube::", "Timestamp::now", "Instant", "SystemTime", "tokio", "crate::context"];
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
    {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        read += 1;
        for word in forbidden {
            assert!(!text.contains(word), "{} uses {word}", entry.path().display());
        }
    }
    assert!(read >= 8, "read only {read} planner files in {}", dir.display());
}
