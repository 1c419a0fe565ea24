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
    CompletionSpec, Phase, PredictionBatch, PredictionBatchSpec, PredictionBatchStatus, Stage, StageSpec, StageState,
    StageStatus, WorkerSpec,
};
use crate::reconcile::observed::{JobOutcome, JobView, Observed};

// ---- builders ------------------------------------------------------------------------------

const NAME: &str = "nba-2026-01-02";
const GENERATION: i64 = 3;
const T0: i64 = 1_780_000_000;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn stage_spec() -> StageSpec {
    StageSpec { template: PodTemplateSpec::default().into(), backoff_limit: 2 }
}

fn spec() -> PredictionBatchSpec {
    PredictionBatchSpec {
        game_date: "2026-01-02".into(),
        target_count: 120,
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
    st.stage(stage).as_ref()
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
    let (_, b) = step(&batch(spec.clone(), None), &observed(0));
    let (p, _) = step(&b, &obs_with(2, &[job(Stage::Workers)]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    p.status
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
                    Action::Parallelism(_) | Action::Delete { .. } | Action::Validate => {}
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

// ---- table tests: happy path ------------------------------------------------------------------

#[test]
fn first_pass_writes_pending_and_creates_workers() {
    let p = plan(&batch(spec(), None), &observed(0));
    assert_eq!(p.status.phase, Some(Phase::Pending));
    assert_eq!(p.actions, vec![Action::Validate, Action::Create(Stage::Workers)]);
    let w = p.status.workers.as_ref().unwrap();
    assert_eq!(w.state, StageState::Pending);
    assert_eq!(w.job_name, "nba-2026-01-02-workers");
    assert_eq!(w.job_uid, None);
    assert_eq!(p.status.shards.as_ref().unwrap().total, 30);
    assert_eq!(p.status.items.as_ref().unwrap().target, 120);
    assert_eq!(cond(&p.status, CONDITION_READY).status, "Unknown");
    assert_eq!(cond(&p.status, CONDITION_RECONCILING).status, "True");
    assert_eq!(cond(&p.status, CONDITION_STALLED).status, "False");
    assert_eq!(cond(&p.status, CONDITION_DEGRADED).status, "False");
    assert_condition_generations(&p.status);
}

#[test]
fn owned_job_without_uid_in_status_is_adopted_not_recreated() {
    // Crash between the create and the status write: the status has no UID yet.
    for prev in [None, Some(plan(&batch(spec(), None), &observed(0)).status)] {
        let p = plan(&batch(spec(), prev), &obs_with(5, &[job(Stage::Workers)]));
        assert!(creates(&p).is_empty(), "{:?}", p.actions);
        let w = p.status.workers.as_ref().unwrap();
        assert_eq!(w.job_uid.as_deref(), Some("uid-workers"));
        assert_eq!(w.state, StageState::Running);
        assert_eq!(p.status.phase, Some(Phase::Running));
        assert!(p.events.iter().any(|e| e.reason == "WorkersStarted"));
    }
}

#[test]
fn foreign_job_stalls_with_name_conflict_and_is_never_adopted() {
    let foreign = JobView { owned: false, uid: "someone-else".into(), ..job(Stage::Workers) };
    let p = plan(&batch(spec(), None), &obs_with(0, &[foreign.clone()]));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let stalled = cond(&p.status, CONDITION_STALLED);
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "JobNameConflict"));
    assert_ne!(p.status.workers.as_ref().and_then(|w| w.job_uid.as_deref()), Some("someone-else"));
    assert!(p.requeue_after.is_some());
    assert!(p.events.iter().any(|e| e.warning && e.reason == "JobNameConflict"));
    // Still not adopted on the next pass, and the event is not repeated.
    let (_, b) = step(&batch(spec(), None), &obs_with(0, &[foreign.clone()]));
    let p2 = plan(&b, &obs_with(10, &[foreign]));
    assert!(creates(&p2).is_empty());
    assert_eq!(cond(&p2.status, CONDITION_STALLED).reason, "JobNameConflict");
    assert!(p2.events.is_empty(), "{:?}", p2.events);
}

#[test]
fn workers_succeeded_is_recorded_before_consolidation_is_planned() {
    let b = batch(spec(), Some(running_status(&spec())));
    let obs = obs_with(100, &[succeeded(workers_job("0-29", "", 0), 90)]);
    let p = plan(&b, &obs);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 30);
    assert_eq!(p.status.progress.as_deref(), Some("120/120"));
    // The reconciler writes this status (workers Succeeded) before it runs any action, so the
    // consolidation create that may follow in the same plan only happens once the outcome is on record.
    assert!(creates(&p).iter().all(|s| *s == Stage::Consolidation), "{:?}", p.actions);
}

#[test]
fn status_with_workers_succeeded_plans_consolidation() {
    let b = batch(spec(), Some(running_status(&spec())));
    let jobs = [succeeded(workers_job("0-29", "", 0), 90)];
    let (_, b) = step(&b, &obs_with(100, &jobs));
    assert_eq!(stage_state(b.status.as_ref().unwrap(), Stage::Workers), Some(StageState::Succeeded));
    let p = plan(&b, &obs_with(101, &jobs));
    assert_eq!(creates(&p), vec![Stage::Consolidation]);
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Pending));
    assert_eq!(p.status.phase, Some(Phase::Consolidating));
}

#[test]
fn consolidation_succeeded_then_export() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[w.clone()]));
    let (_, b) = step(&b, &obs_with(101, &[w.clone()]));
    let (p, b) = step(&b, &obs_with(102, &[w.clone(), job(Stage::Consolidation)]));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Running));
    assert!(creates(&p).is_empty());
    let jobs = [w.clone(), succeeded(job(Stage::Consolidation), 150)];
    let (p, b) = step(&b, &obs_with(160, &jobs));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Succeeded));
    assert!(!creates(&p).contains(&Stage::Consolidation));
    let (p, b) = step(&b, &obs_with(161, &jobs));
    assert_eq!(creates(&p), vec![Stage::Export]);
    assert_eq!(p.status.phase, Some(Phase::Exporting));
    let jobs = [w, succeeded(job(Stage::Consolidation), 150), succeeded(job(Stage::Export), 200)];
    let (_, b) = step(&b, &obs_with(170, &jobs[..2].iter().cloned().chain([job(Stage::Export)]).collect::<Vec<_>>()));
    let (p, b) = step(&b, &obs_with(210, &jobs));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&p.status, CONDITION_READY).status, "True");
    assert_eq!(cond(&p.status, CONDITION_RECONCILING).status, "False");
    assert_eq!(cond(&p.status, CONDITION_DEGRADED).status, "False");
    assert_eq!(p.status.completion_time, Some(Time(t(200))));
    assert!(p.events.iter().any(|e| e.reason == "BatchSucceeded"));
    // Finished, no TTL: nothing more to do.
    let p = plan(&b, &obs_with(300, &jobs));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.status, *b.status.as_ref().unwrap());
}

#[test]
fn without_consolidation_export_follows_workers() {
    let s = spec_with(|s| s.consolidation = None);
    let mut sim = Sim::new(s, succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.run(10);
    assert_eq!(sim.all_creates(), vec![Stage::Export]);
    assert_eq!(sim.status().consolidation, None);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    assert!(sim.plans.iter().all(|p| p.status.phase != Some(Phase::Consolidating)));
}

#[test]
fn without_consolidation_or_export_workers_finish_the_batch() {
    let s = spec_with(|s| {
        s.consolidation = None;
        s.export = None;
    });
    let mut sim = Sim::new(s, succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.run(5);
    assert!(sim.all_creates().is_empty());
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
}

// ---- table tests: failed shards and the quorum ------------------------------------------------

const ALL_BUT_3_7: &str = "0-2,4-6,8-29";

#[test]
fn failed_indexes_above_quorum_succeed_degraded() {
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let mut sim = Sim::new(s, failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(10);
    let st = sim.status();
    assert_eq!(st.phase, Some(Phase::Succeeded), "{st:#?}");
    assert_eq!(cond(st, CONDITION_READY).status, "True");
    assert_eq!(cond(st, CONDITION_STALLED).status, "False");
    let degraded = cond(st, CONDITION_DEGRADED);
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains("3,7"), "{}", degraded.message);
    assert!(cond(st, CONDITION_READY).message.contains("coverage"), "{}", cond(st, CONDITION_READY).message);
    let items = st.items.as_ref().unwrap();
    assert_eq!((items.target, items.succeeded, items.failed), (120, 112, 8));
    assert_eq!(st.failed_shards.as_deref(), Some("3,7"));
    assert_eq!(st.succeeded_shards.as_deref(), Some(ALL_BUT_3_7));
    assert_eq!(st.progress.as_deref(), Some("112/120"));
    assert_eq!(sim.all_creates(), vec![Stage::Consolidation, Stage::Export]);
}

#[test]
fn failed_indexes_below_quorum_fail_without_consolidation() {
    let mut sim = Sim::new(spec(), failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(10);
    let st = sim.status();
    assert_eq!(st.phase, Some(Phase::Failed));
    let stalled = cond(st, CONDITION_STALLED);
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, "QuorumNotMet");
    assert_eq!(cond(st, CONDITION_READY).status, "False");
    assert_eq!(cond(st, CONDITION_DEGRADED).status, "True");
    assert_eq!(st.failed_shards.as_deref(), Some("3,7"));
    assert_eq!(st.items.as_ref().unwrap().failed, 8);
    assert_eq!(stage_state(st, Stage::Workers), Some(StageState::Failed));
    assert!(sim.all_creates().is_empty(), "{:?}", sim.all_creates());
    assert_eq!(st.consolidation, None);
    // Later passes keep it that way.
    for now in [200, 5000] {
        let mut obs = sim.obs.clone();
        obs.now = t(now);
        let p = plan(&sim.batch, &obs);
        assert!(creates(&p).is_empty());
        assert_eq!(p.status.phase, Some(Phase::Failed));
        assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "QuorumNotMet");
    }
}

#[test]
fn max_failed_indexes_exceeded_fails() {
    let b = batch(spec(), Some(running_status(&spec())));
    let p = plan(&b, &obs_with(100, &[failed(workers_job("0-20", "21-25", 0), "MaxFailedIndexesExceeded", 90)]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "MaxFailedShardsExceeded");
    assert!(creates(&p).is_empty());
}

#[test]
fn quorum_unreachable_while_running_fails_and_suspends_workers() {
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let b = batch(s.clone(), Some(running_status(&s)));
    // 4 shards = 16 items failed > the 12 items (10 %) that may fail.
    let p = plan(&b, &obs_with(100, &[workers_job("10-12", "0-3", 10)]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "QuorumUnreachable");
    assert_eq!(cond(&p.status, CONDITION_STALLED).status, "True");
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
    assert!(p.events.iter().any(|e| e.warning && e.reason == "BatchFailed"));
    // 3 shards = 12 items failed is still reachable.
    let p = plan(&b, &obs_with(100, &[workers_job("10-12", "0-2", 10)]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Suspend { .. })));
}

#[test]
fn grace_period_then_stop_stragglers_then_consolidate() {
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 30;
    });
    let b = batch(s.clone(), Some(running_status(&s)));
    // 29 of 30 shards done (116 items), one straggler running.
    let straggling = workers_job("0-28", "", 1);
    let (p, b) = step(&b, &obs_with(100, &[straggling.clone()]));
    assert_eq!(p.status.quorum_time, Some(Time(t(100))));
    let wait = p.requeue_after.expect("wakes up at the end of the grace period");
    assert!(wait >= Duration::from_secs(30) && wait <= Duration::from_secs(31), "{wait:?}");
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Suspend { .. })), "{:?}", p.actions);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running));
    assert!(creates(&p).is_empty());

    // Still within the grace period: quorum time stays, the wait shrinks.
    let (p, b) = step(&b, &obs_with(110, &[straggling.clone()]));
    assert_eq!(p.status.quorum_time, Some(Time(t(100))));
    let wait = p.requeue_after.unwrap();
    assert!(wait >= Duration::from_secs(20) && wait <= Duration::from_secs(21), "{wait:?}");

    // 31 s after the quorum: stop the straggler.
    let (p, b) = step(&b, &obs_with(131, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
    assert!(p.events.iter().any(|e| e.reason == "StoppingStragglers"));

    // Suspended but its pod is still terminating: wait.
    let terminating = JobView { suspended: true, active: 0, terminating: 1, ..straggling.clone() };
    let (p, b) = step(&b, &obs_with(132, &[terminating]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.actions.is_empty(), "{:?}", p.actions);

    // No pods left: the stage is over and every unfinished shard counts as failed.
    let stopped = JobView { suspended: true, active: 0, ..straggling };
    let (p, b) = step(&b, &obs_with(135, &[stopped.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.failed_shards.as_deref(), Some("29"));
    assert_eq!(p.status.succeeded_shards.as_deref(), Some("0-28"));
    let items = p.status.items.as_ref().unwrap();
    assert_eq!((items.succeeded, items.failed), (116, 4));
    assert_eq!(p.status.shards.as_ref().unwrap().failed, 1);
    let p = plan(&b, &obs_with(136, &[stopped]));
    assert_eq!(creates(&p), vec![Stage::Consolidation]);
}

#[test]
fn stopping_complement_counts_unstarted_shards_as_failed() {
    // Stop while several shards never ran: failedShards is the complement of succeeded.
    let s = spec_with(|s| s.completion.min_succeeded_percent = 50);
    let mut st = running_status(&s);
    st.workers.as_mut().unwrap().state = StageState::Stopping;
    let b = batch(s, Some(st));
    let j = JobView { suspended: true, ..workers_job("0-19", "25", 0) };
    let p = plan(&b, &obs_with(100, &[j]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.failed_shards.as_deref(), Some("20-29"));
    assert_eq!(p.status.items.as_ref().unwrap().failed, 40);
}

#[test]
fn all_shards_finished_without_pods_ends_the_stage() {
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let b = batch(s.clone(), Some(running_status(&s)));
    let p = plan(&b, &obs_with(100, &[workers_job(ALL_BUT_3_7, "3,7", 0)]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.failed_shards.as_deref(), Some("3,7"));
}

#[test]
fn complete_by_without_quorum_fails_with_deadline_exceeded() {
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.complete_by = Some(t(500).to_string());
    });
    let b = batch(s.clone(), Some(running_status(&s)));
    let running = workers_job("0-9", "", 10);
    let p = plan(&b, &obs_with(400, &[running.clone()]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    let wait = p.requeue_after.unwrap();
    assert!(wait >= Duration::from_secs(100) && wait <= Duration::from_secs(101), "{wait:?}");
    let p = plan(&b, &obs_with(501, &[running]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "DeadlineExceeded");
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
}

#[test]
fn complete_by_with_quorum_stops_before_grace_end() {
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 3600;
        s.completion.complete_by = Some(t(200).to_string());
    });
    let b = batch(s.clone(), Some(running_status(&s)));
    let (p, b) = step(&b, &obs_with(100, &[workers_job("0-28", "", 1)]));
    let wait = p.requeue_after.unwrap();
    assert!(wait >= Duration::from_secs(100) && wait <= Duration::from_secs(101), "{wait:?}");
    let p = plan(&b, &obs_with(200, &[workers_job("0-28", "", 1)]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }));
}

// ---- table tests: lost Jobs, rejections, suspend, TTL -------------------------------------------

#[test]
fn job_missing_after_uid_recorded_fails_with_job_deleted() {
    let b = batch(spec(), Some(running_status(&spec())));
    let p = plan(&b, &observed(100));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    // A different Job under the same name (recreated by someone) is not the recorded one either.
    let other = JobView { uid: "another".into(), ..job(Stage::Workers) };
    let p = plan(&b, &obs_with(100, &[other]));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
}

#[test]
fn consolidation_job_deleted_fails_but_finished_workers_job_may_go() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[w.clone()]));
    let (_, b) = step(&b, &obs_with(101, &[w.clone()]));
    let (_, b) = step(&b, &obs_with(102, &[w, job(Stage::Consolidation)]));
    // The workers Job is gone too, but its outcome is recorded: only consolidation matters.
    let p = plan(&b, &observed(103));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Failed));
    assert!(creates(&p).is_empty());
}

#[test]
fn rejected_create_fails_with_job_rejected() {
    let (_, b) = step(&batch(spec(), None), &observed(0));
    let mut obs = observed(1);
    obs.rejected.push((Stage::Workers, "spec.template.spec.containers: Required value".into()));
    let p = plan(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let stalled = cond(&p.status, CONDITION_STALLED);
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "JobRejected"));
    assert!(stalled.message.contains("containers: Required value"), "{}", stalled.message);
    assert!(creates(&p).is_empty());
    assert!(p.events.iter().any(|e| e.warning && e.note.contains("Required value")));
}

#[test]
fn suspend_running_batch() {
    let s = spec_with(|s| s.suspend = true);
    let b = batch(s, Some(running_status(&spec())));
    let p = plan(&b, &obs_with(100, &[workers_job("0-3", "", 10)]));
    assert_eq!(p.status.phase, Some(Phase::Suspended));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
    assert_eq!(cond(&p.status, CONDITION_READY).status, "Unknown");
    assert_eq!(cond(&p.status, CONDITION_RECONCILING).reason, "Suspended");
    // Resume: the Job is unsuspended and the phase returns to Running.
    let (_, suspended) = step(&b, &obs_with(100, &[workers_job("0-3", "", 10)]));
    let mut resumed = suspended.clone();
    resumed.spec.suspend = false;
    let sj = JobView { suspended: true, ..workers_job("0-3", "", 0) };
    let p = plan(&resumed, &obs_with(200, &[sj]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: false }), "{:?}", p.actions);
}

#[test]
fn suspended_first_pass_creates_nothing() {
    let p = plan(&batch(spec_with(|s| s.suspend = true), None), &observed(0));
    assert_eq!(p.status.phase, Some(Phase::Suspended));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn suspend_blocks_the_next_stage() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, mut b) = step(&b, &obs_with(100, &[w.clone()]));
    b.spec.suspend = true;
    let p = plan(&b, &obs_with(101, &[w]));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.status.phase, Some(Phase::Suspended));
}

fn finished_sim(ttl: Option<i64>) -> Sim {
    let s = spec_with(|s| s.ttl_seconds_after_finished = ttl);
    let mut sim = Sim::new(s, succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.run(10);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    sim
}

#[test]
fn ttl_deletes_jobs_after_expiry() {
    let sim = finished_sim(Some(60));
    let done = sim.status().completion_time.clone().unwrap().0;
    let mut obs = sim.obs.clone();
    obs.now = done.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(30)).unwrap();
    let p = plan(&sim.batch, &obs);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let wait = p.requeue_after.expect("wakes up at expiry");
    assert!(wait >= Duration::from_secs(30) && wait <= Duration::from_secs(31), "{wait:?}");
    obs.now = done.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(61)).unwrap();
    let p = plan(&sim.batch, &obs);
    let owned: Vec<Action> = Stage::ALL.into_iter().map(|stage| Action::Delete { stage, uid: uid(stage) }).collect();
    assert_eq!(p.actions, owned, "each owned Job by its UID");
    assert_eq!(p.status, *sim.status(), "deleting Jobs does not change the status");
    // Jobs gone: nothing left to do, status unchanged.
    let gone = Observed::new(obs.now);
    let p = plan(&sim.batch, &gone);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.status, *sim.status());
    assert!(p.events.is_empty());
}

#[test]
fn finished_batch_without_jobs_has_no_actions() {
    for ttl in [None, Some(0), Some(60)] {
        let sim = finished_sim(ttl);
        let p = plan(&sim.batch, &observed(100_000));
        assert!(p.actions.is_empty(), "{ttl:?}: {:?}", p.actions);
        assert_eq!(p.requeue_after, None);
        assert_eq!(p.status, *sim.status());
    }
}

#[test]
fn failed_batch_stops_leftover_pods_then_ttl_deletes() {
    let s = spec_with(|s| s.ttl_seconds_after_finished = Some(10));
    let b = batch(s.clone(), Some(running_status(&s)));
    let (p, b) = step(&b, &obs_with(100, &[failed(workers_job("0-5", "6", 0), "BackoffLimitExceeded", 99)]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "WorkersFailed");
    let p = plan(&b, &obs_with(200, &[failed(workers_job("0-5", "6", 0), "BackoffLimitExceeded", 99)]));
    assert_eq!(p.actions, vec![Action::Delete { stage: Stage::Workers, uid: uid(Stage::Workers) }]);
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "WorkersFailed");
}

#[test]
fn unreadable_completed_indexes_do_not_shrink_counts() {
    // "counts never shrink": a Job whose completedIndexes can't be read (nothing panics on any
    // cluster object) must not wipe the shards already recorded.
    let b = batch(spec(), Some(running_status(&spec())));
    let (p, b) = step(&b, &obs_with(100, &[workers_job("0-9", "", 10)]));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 10);
    let p = plan(&b, &obs_with(101, &[workers_job("0-9,x", "", 10)]));
    assert!(
        p.status.shards.as_ref().unwrap().succeeded >= 10,
        "shards.succeeded shrank from 10 to {:?} (succeededShards {:?})",
        p.status.shards,
        p.status.succeeded_shards
    );
}

#[test]
fn terminal_reason_survives_a_transiently_invalid_spec() {
    // completeBy stays mutable after the batch ended; an unreadable value (admission bypassed)
    // and then a fixed one must leave the failed batch's reason as it was.
    let mut sim = Sim::new(spec(), failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(5);
    assert_eq!(cond(sim.status(), CONDITION_STALLED).reason, "QuorumNotMet");
    let mut b = sim.batch.clone();
    b.spec.completion.complete_by = Some("tomorrow".into());
    let (p, mut b) = step(&b, &sim.obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    b.spec.completion.complete_by = None;
    let p = plan(&b, &sim.obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(
        cond(&p.status, CONDITION_STALLED).reason,
        "QuorumNotMet",
        "the terminal reason was replaced: {:#?}",
        cond(&p.status, CONDITION_STALLED)
    );
}

// ---- determinism and generations ---------------------------------------------------------------

/// Replans every pass of `sim` from its own output with the same observation a bit later.
fn assert_fixpoints(b0: PredictionBatch, passes: &[Observed]) {
    let mut b = b0;
    for obs in passes {
        let (p, next) = step(&b, obs);
        let mut later = obs.clone();
        later.now = obs.now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5)).unwrap();
        let again = plan(&next, &later);
        assert_eq!(again.status, p.status, "status moved on an idle re-plan at {}", obs.now);
        assert!(again.events.is_empty(), "events on an idle re-plan at {}: {:?}", obs.now, again.events);
        assert_condition_generations(&again.status);
        b = next;
    }
}

#[test]
fn replanning_own_status_is_a_fixpoint() {
    let w_done = succeeded(workers_job("0-29", "", 0), 90);
    let c_done = succeeded(job(Stage::Consolidation), 150);
    assert_fixpoints(
        batch(spec(), None),
        &[
            observed(0),
            obs_with(2, &[job(Stage::Workers)]),
            obs_with(50, &[workers_job("0-9", "", 10)]),
            obs_with(100, &[w_done.clone()]),
            obs_with(101, &[w_done.clone()]),
            obs_with(102, &[w_done.clone(), job(Stage::Consolidation)]),
            obs_with(160, &[w_done.clone(), c_done.clone()]),
            obs_with(161, &[w_done.clone(), c_done.clone()]),
            obs_with(162, &[w_done.clone(), c_done.clone(), job(Stage::Export)]),
            obs_with(210, &[w_done, c_done, succeeded(job(Stage::Export), 200)]),
        ],
    );
}

#[test]
fn replanning_failed_and_stalled_batches_is_a_fixpoint() {
    // Quorum not met.
    assert_fixpoints(
        batch(spec(), Some(running_status(&spec()))),
        &vec![obs_with(100, &[failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90)]); 2],
    );
    // Job deleted.
    assert_fixpoints(batch(spec(), Some(running_status(&spec()))), &[observed(100), observed(200)]);
    // Name conflict.
    let foreign = JobView { owned: false, ..job(Stage::Workers) };
    assert_fixpoints(batch(spec(), None), &[obs_with(0, &[foreign.clone()]), obs_with(10, &[foreign])]);
    // Invalid spec.
    assert_fixpoints(batch(spec_with(|s| s.target_count = 0), None), &[observed(0), observed(10)]);
    // Degraded success.
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let mut sim = Sim::new(s, failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(10);
    assert_fixpoints(sim.batch.clone(), &[sim.obs.clone()]);
    // Grace period (re-planned well within it) and stopping.
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 300;
    });
    assert_fixpoints(
        batch(s.clone(), Some(running_status(&s))),
        &[obs_with(100, &[workers_job("0-28", "", 1)]), obs_with(150, &[workers_job("0-28", "", 1)])],
    );
    // Suspended.
    assert_fixpoints(
        batch(spec_with(|s| s.suspend = true), Some(running_status(&spec()))),
        &[
            obs_with(100, &[workers_job("0-3", "", 4)]),
            obs_with(150, &[JobView { suspended: true, ..workers_job("0-3", "", 0) }]),
        ],
    );
}

#[test]
fn observed_generation_is_on_status_and_every_condition() {
    let mut b = batch(spec(), None);
    b.metadata.generation = Some(7);
    let p = plan(&b, &observed(0));
    assert_eq!(p.status.observed_generation, Some(7));
    assert_eq!(p.status.conditions.len(), 4);
    for c in &p.status.conditions {
        assert_eq!(c.observed_generation, Some(7), "{}", c.type_);
    }
    // A new generation updates it without moving unchanged conditions' transition times.
    let mut b2 = b.clone();
    b2.status = Some(p.status.clone());
    b2.metadata.generation = Some(8);
    let p2 = plan(&b2, &observed(60));
    assert_eq!(p2.status.observed_generation, Some(8));
    for c in &p2.status.conditions {
        assert_eq!(c.observed_generation, Some(8), "{}", c.type_);
        assert_eq!(c.last_transition_time, Time(t(0)), "{}", c.type_);
    }
    // Invalid spec too.
    let mut bad = batch(spec_with(|s| s.target_count = 0), None);
    bad.metadata.generation = Some(9);
    let p = plan(&bad, &observed(0));
    assert_eq!(p.status.observed_generation, Some(9));
    assert!(p.status.conditions.iter().all(|c| c.observed_generation == Some(9)));
}

#[test]
fn foreign_conditions_are_kept() {
    let mut st = running_status(&spec());
    st.conditions.push(Condition {
        type_: "MirrorSynced".into(),
        status: "True".into(),
        reason: "Synced".into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(t(5)),
    });
    let p = plan(&batch(spec(), Some(st)), &obs_with(100, &[workers_job("0-3", "", 10)]));
    assert_eq!(cond(&p.status, "MirrorSynced").reason, "Synced");
}

#[test]
fn invalid_spec_stalls_without_actions() {
    let cases = [
        spec_with(|s| s.target_count = 0),
        spec_with(|s| s.items_per_shard = 0),
        spec_with(|s| {
            s.target_count = 100_000;
            s.items_per_shard = 1;
        }),
        spec_with(|s| s.completion.complete_by = Some("tomorrow".into())),
    ];
    for s in cases {
        for prev in [None, Some(running_status(&spec()))] {
            let was_running = prev.is_some();
            let b = batch(s.clone(), prev);
            let p = plan(&b, &obs_with(10, &[workers_job("0-3", "", 10)]));
            assert!(p.actions.is_empty(), "{s:?}: {:?}", p.actions);
            let stalled = cond(&p.status, CONDITION_STALLED);
            assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "InvalidSpec"), "{s:?}");
            assert_eq!(cond(&p.status, CONDITION_READY).status, "False");
            let want = if was_running { Phase::Running } else { Phase::Pending };
            assert_eq!(p.status.phase, Some(want));
            assert!(p.events.iter().any(|e| e.warning && e.reason == "InvalidSpec"));
        }
    }
}

// ---- property tests -----------------------------------------------------------------------------

fn arb_time() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        8 => (T0 - 1000..T0 + 100_000).prop_map(|s| Timestamp::from_second(s).unwrap()),
        1 => Just(Timestamp::MIN),
        1 => Just(Timestamp::MAX),
    ]
}

fn arb_indexes() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        4 => "([0-9]{1,2}(-[0-9]{1,2})?,){0,4}[0-9]{1,2}".prop_map(Some),
        1 => ".{0,20}".prop_map(Some),
        1 => Just(Some("0-4294967295".to_string())),
        1 => Just(Some("4294967295".to_string())),
        1 => Just(Some("99999999999".to_string())),
    ]
}

fn arb_outcome() -> impl Strategy<Value = JobOutcome> {
    let reason = prop_oneof![
        Just("FailedIndexes".to_string()),
        Just("MaxFailedIndexesExceeded".to_string()),
        Just("BackoffLimitExceeded".to_string()),
        Just("DeadlineExceeded".to_string()),
        ".{0,8}",
    ];
    prop_oneof![
        Just(JobOutcome::Running),
        proptest::option::of(arb_time()).prop_map(|at| JobOutcome::Succeeded { at }),
        (reason, ".{0,8}", proptest::option::of(arb_time())).prop_map(|(reason, message, at)| JobOutcome::Failed {
            reason,
            message,
            at
        }),
    ]
}

fn arb_job(stage: Stage) -> impl Strategy<Value = JobView> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(uid(stage)), Just("other".to_string()), Just(String::new())],
            (any::<bool>(), any::<bool>(), proptest::option::of(0usize..3)),
        ),
        (proptest::option::of(any::<i32>()), prop_oneof![0u32..20, any::<u32>()], 0u32..3),
        (arb_indexes(), arb_indexes(), arb_outcome()),
        (proptest::option::of(arb_time()), proptest::option::of(arb_time())),
    )
        .prop_map(
            move |(
                (owned, suspended, uid, (suspend_confirmed, deleting, fin)),
                (parallelism, active, terminating),
                (ci, fi, outcome),
                (created, start),
            )| {
                JobView {
                    name: stage.job_name(NAME),
                    uid,
                    owned,
                    suspended,
                    suspend_confirmed,
                    deleting,
                    outcome_finalizer: fin,
                    parallelism,
                    active,
                    terminating,
                    completed_indexes: ci,
                    failed_indexes: fi,
                    outcome,
                    created,
                    start_time: start,
                }
            },
        )
}

fn arb_phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Pending),
        Just(Phase::Running),
        Just(Phase::Consolidating),
        Just(Phase::Exporting),
        Just(Phase::Succeeded),
        Just(Phase::Failed),
        Just(Phase::Suspended),
    ]
}

fn arb_stage_status(stage: Stage) -> impl Strategy<Value = Option<StageStatus>> {
    let state = prop_oneof![
        Just(StageState::Pending),
        Just(StageState::Running),
        Just(StageState::Stopping),
        Just(StageState::Succeeded),
        Just(StageState::Failed),
    ];
    proptest::option::of(
        (
            state,
            proptest::option::of(prop_oneof![Just(uid(stage)), Just("other".to_string())]),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_time()),
        )
            .prop_map(move |(state, job_uid, start, stop, done)| StageStatus {
                job_name: stage.job_name(NAME),
                job_uid,
                state,
                start_time: start.map(Time),
                stop_time: stop.map(Time),
                completion_time: done.map(Time),
                message: None,
            }),
    )
}

fn arb_condition() -> impl Strategy<Value = Condition> {
    (
        prop_oneof![Just(CONDITION_READY), Just(CONDITION_STALLED), Just(CONDITION_DEGRADED), Just("Other")],
        prop_oneof![Just("True"), Just("False"), Just("Unknown")],
        ".{0,10}",
        arb_time(),
    )
        .prop_map(|(type_, status, reason, at)| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.clone(),
            message: reason,
            observed_generation: Some(1),
            last_transition_time: Time(at),
        })
}

fn arb_status() -> impl Strategy<Value = Option<PredictionBatchStatus>> {
    proptest::option::of(
        (
            proptest::option::of(arb_phase()),
            (arb_stage_status(Stage::Workers), arb_stage_status(Stage::Consolidation), arb_stage_status(Stage::Export)),
            (proptest::option::of(arb_time()), proptest::option::of(arb_time()), proptest::option::of(arb_time())),
            (proptest::option::of((any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>())), arb_indexes()),
            proptest::collection::vec(arb_condition(), 0..4),
            (proptest::option::of(arb_time()), proptest::option::of(prop_oneof![0i64..1000, Just(i64::MAX)])),
        )
            .prop_map(
                |(
                    phase,
                    (workers, consolidation, export),
                    (quorum, start, done),
                    (shards, failed),
                    conditions,
                    (suspended, paused),
                )| {
                    PredictionBatchStatus {
                        suspend_time: suspended.map(Time),
                        grace_paused_seconds: paused,
                        observed_generation: Some(1),
                        phase,
                        shards: shards.map(|(total, succeeded, failed, active)| crate::api::ShardCounts {
                            total,
                            succeeded,
                            failed,
                            active,
                        }),
                        items: None,
                        progress: None,
                        succeeded_shards: None,
                        failed_shards: failed,
                        quorum_time: quorum.map(Time),
                        workers,
                        consolidation,
                        export,
                        start_time: start.map(Time),
                        completion_time: done.map(Time),
                        conditions,
                    }
                },
            ),
    )
}

fn arb_spec() -> impl Strategy<Value = PredictionBatchSpec> {
    (
        (prop_oneof![0u32..200, Just(100_000u32), Just(u32::MAX)], prop_oneof![0u32..10, Just(u32::MAX)], any::<u32>()),
        (0u32..=120, prop_oneof![-10i64..100, Just(i64::MAX), Just(i64::MIN)]),
        prop_oneof![
            Just(None),
            Just(Some("tomorrow".to_string())),
            Just(Some(String::new())),
            arb_time().prop_map(|t| Some(t.to_string())),
        ],
        (any::<bool>(), any::<bool>(), any::<bool>()),
        proptest::option::of(prop_oneof![-10i64..100, Just(i64::MAX), Just(i64::MIN)]),
    )
        .prop_map(|((target, per, par), (pct, grace), complete_by, (cons, exp, suspend), ttl)| {
            spec_with(|s| {
                s.target_count = target;
                s.items_per_shard = per;
                s.parallelism = par;
                s.completion = CompletionSpec { min_succeeded_percent: pct, grace_seconds: grace, complete_by };
                if !cons {
                    s.consolidation = None;
                }
                if !exp {
                    s.export = None;
                }
                s.suspend = suspend;
                s.ttl_seconds_after_finished = ttl;
            })
        })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        proptest::option::of(arb_job(Stage::Workers)),
        proptest::option::of(arb_job(Stage::Consolidation)),
        proptest::option::of(arb_job(Stage::Export)),
        proptest::collection::vec(
            (prop_oneof![Just(Stage::Workers), Just(Stage::Consolidation), Just(Stage::Export)], ".{0,10}"),
            0..2,
        ),
        arb_time(),
    )
        .prop_map(|(workers, consolidation, export, rejected, now)| Observed {
            jobs: crate::api::StageMap { workers, consolidation, export },
            rejected,
            now,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn never_panics(spec in arb_spec(), status in arb_status(), obs in arb_observed(), generation in proptest::option::of(any::<i64>())) {
        let mut b = batch(spec, status);
        b.metadata.generation = generation;
        let p = plan(&b, &obs);
        // And its own output is acceptable input.
        b.status = Some(p.status.clone());
        let p2 = plan(&b, &obs);
        prop_assert_eq!(p2.status.observed_generation, generation);
        prop_assert!(p2.status.conditions.iter().filter(|c| c.type_ == CONDITION_STALLED).count() == 1);
    }
}

// ---- simulation -------------------------------------------------------------------------------

/// One random thing that happens to the cluster between two passes.
#[derive(Clone, Debug)]
enum Event {
    Nothing,
    CompleteShard(u32),
    FailShard(u32),
    /// The Job controller ends the worker Job: Complete when every index succeeded, else FailedIndexes.
    FinishWorkers,
    FailWorkers,
    /// Pods of the workers start or stop.
    Active(u32),
    FinishStage(Stage, bool),
    /// The apiserver rejects the next create.
    Reject,
    ToggleSuspend,
    Advance(i64),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => Just(Event::Nothing),
        12 => (0u32..40).prop_map(Event::CompleteShard),
        1 => (0u32..40).prop_map(Event::FailShard),
        1 => Just(Event::FinishWorkers),
        1 => Just(Event::FailWorkers),
        2 => (0u32..12).prop_map(Event::Active),
        3 => (prop_oneof![Just(Stage::Consolidation), Just(Stage::Export)], prop::bool::weighted(0.85))
            .prop_map(|(s, ok)| Event::FinishStage(s, ok)),
        1 => Just(Event::Reject),
        1 => Just(Event::ToggleSuspend),
        4 => (0i64..90).prop_map(Event::Advance),
    ]
}

fn rank(p: Phase) -> Option<u8> {
    match p {
        Phase::Pending => Some(0),
        Phase::Running => Some(1),
        Phase::Consolidating => Some(2),
        Phase::Exporting => Some(3),
        Phase::Succeeded | Phase::Failed => Some(4),
        Phase::Suspended => None,
    }
}

fn stage_succeeded(st: Option<&PredictionBatchStatus>, stage: Stage) -> bool {
    st.and_then(|s| stage_state(s, stage)) == Some(StageState::Succeeded)
}

/// Indexes as the Job controller lists them (`1,3-5`), `None` for none.
fn index_list(s: &std::collections::BTreeSet<u32>) -> Option<String> {
    Some(crate::reconcile::ranges::IndexSet::from_indexes(s.iter().copied()).to_string()).filter(|s| !s.is_empty())
}

/// Runs the reconciler against a simulated cluster. `strict`: the next stage may only be planned
/// from a status that already recorded the previous stage's success (the brief's reading);
/// otherwise the status being written is enough (plan.rs's documented invariant).
fn simulate(
    spec: PredictionBatchSpec,
    (chaos, events): (bool, Vec<Vec<Event>>),
    strict: bool,
) -> Result<(), TestCaseError> {
    let layout = crate::reconcile::shards::ShardLayout::new(spec.target_count, spec.items_per_shard).unwrap();
    let n = layout.shard_count();
    let pct = spec.completion.min_succeeded_percent;
    let mut b = batch(spec, None);
    let mut obs = observed(0);
    let mut created: BTreeMap<Stage, u32> = BTreeMap::new();
    let mut next_uid = 0;
    let mut completed: std::collections::BTreeSet<u32> = Default::default();
    let mut failed_set: std::collections::BTreeSet<u32> = Default::default();
    let mut max_phase: Option<u8> = None;
    let mut terminal: Option<Phase> = None;
    let mut max_succeeded = 0u32;
    let mut trace: Vec<String> = Vec::new();

    for (i, step_events) in events.into_iter().enumerate() {
        let prev = b.status.clone();
        let p = plan(&b, &obs);
        let st = &p.status;
        trace.push(format!(
            "step {i}: phase {:?} workers {:?} cons {:?} export {:?} actions {:?}",
            st.phase,
            stage_state(st, Stage::Workers),
            stage_state(st, Stage::Consolidation),
            stage_state(st, Stage::Export),
            p.actions
        ));
        let ctx = || trace.join("\n");

        // Stage ordering.
        for s in creates(&p) {
            let basis = if strict { prev.as_ref() } else { Some(st) };
            match s {
                Stage::Workers => {}
                Stage::Consolidation => {
                    prop_assert!(
                        stage_succeeded(basis, Stage::Workers),
                        "consolidation before workers succeeded\n{}",
                        ctx()
                    );
                    let items = st.items.clone().unwrap_or_default();
                    prop_assert!(
                        u64::from(items.succeeded) * 100 >= u64::from(pct) * u64::from(layout.target),
                        "consolidation below quorum: {items:?}\n{}",
                        ctx()
                    );
                    if strict {
                        let items = prev.as_ref().and_then(|s| s.items.clone()).unwrap_or_default();
                        prop_assert!(u64::from(items.succeeded) * 100 >= u64::from(pct) * u64::from(layout.target));
                    }
                }
                Stage::Export => {
                    let ok = if b.spec.consolidation.is_some() {
                        stage_succeeded(basis, Stage::Consolidation)
                    } else {
                        stage_succeeded(basis, Stage::Workers)
                    };
                    prop_assert!(ok, "export before the previous stage succeeded\n{}", ctx());
                }
            }
        }
        // Phases.
        let phase = st.phase.expect("a phase is always written");
        if let Some(t) = terminal {
            prop_assert_eq!(phase, t, "terminal phase changed\n{}", ctx());
        }
        if let Some(r) = rank(phase) {
            prop_assert!(max_phase.is_none_or(|m| r >= m), "phase moved backwards to {:?}\n{}", phase, ctx());
            max_phase = Some(max_phase.map_or(r, |m| m.max(r)));
        }
        if phase.is_terminal() {
            terminal = Some(phase);
        }
        // Counts.
        if let Some(sh) = &st.shards {
            prop_assert!(sh.succeeded >= max_succeeded, "shards.succeeded shrank\n{}", ctx());
            max_succeeded = sh.succeeded;
            prop_assert!(sh.succeeded + sh.failed <= sh.total);
        }

        // The reconciler writes status, then acts.
        b.status = Some(p.status.clone());
        // Determinism: with nothing left to do, the same observation again changes nothing and says
        // nothing. (A plan with actions may write an intermediate status, e.g. Stopping before the
        // Suspend, that the next pass moves on from.)
        if p.actions.is_empty() {
            let again = plan(&b, &obs);
            prop_assert_eq!(&again.status, &p.status, "status not a fixpoint\n{}", ctx());
            prop_assert!(again.events.is_empty(), "events on a re-plan: {:?}\n{}", again.events, ctx());
        }
        obs.rejected.clear();
        let reject = chaos && step_events.iter().any(|e| matches!(e, Event::Reject));
        for a in &p.actions {
            match a {
                Action::Create(s) => {
                    if reject {
                        obs.rejected.push((*s, "invalid template".into()));
                        continue;
                    }
                    let count = created.entry(*s).or_default();
                    *count += 1;
                    prop_assert!(*count == 1, "{:?} Job created twice\n{}", s, ctx());
                    next_uid += 1;
                    let j = JobView {
                        uid: format!("uid-{next_uid}"),
                        outcome_finalizer: Some(0),
                        created: Some(obs.now),
                        start_time: Some(obs.now),
                        parallelism: None,
                        ..job(*s)
                    };
                    obs.set_job(*s, Some(j));
                }
                Action::Suspend { stage, suspend } => {
                    if let Some(mut j) = obs.job(*stage).cloned() {
                        j.suspended = *suspend;
                        if *suspend {
                            j.active = 0;
                        }
                        obs.set_job(*stage, Some(j));
                    }
                }
                Action::Parallelism(par) => {
                    if let Some(j) = obs.jobs.workers.as_mut() {
                        j.parallelism = Some(*par);
                    }
                }
                Action::Delete { stage, .. } => obs.set_job(*stage, None),
                Action::Release { stage, .. } => {
                    if let Some(mut j) = obs.job(*stage).cloned() {
                        j.outcome_finalizer = None;
                        obs.set_job(*stage, Some(j));
                    }
                }
                Action::Validate => {}
            }
        }

        // The cluster moves on; without chaos, only shards fail.
        let harsh = |e: &Event| {
            matches!(e, Event::FailWorkers | Event::Reject | Event::FinishStage(_, false) | Event::ToggleSuspend)
        };
        for e in step_events.into_iter().filter(|e| chaos || !harsh(e)) {
            let running = |j: &Option<JobView>| j.as_ref().is_some_and(|j| j.outcome == JobOutcome::Running);
            match e {
                Event::Nothing | Event::Reject => {}
                Event::CompleteShard(k) | Event::FailShard(k) if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    if j.suspended {
                        continue;
                    }
                    // A shard already done: the lowest unfinished one instead.
                    let mut k = k % n;
                    if completed.contains(&k) || failed_set.contains(&k) {
                        k = (0..n).find(|i| !completed.contains(i) && !failed_set.contains(i)).unwrap_or(k);
                    }
                    if !completed.contains(&k) && !failed_set.contains(&k) {
                        if matches!(e, Event::CompleteShard(_)) {
                            completed.insert(k);
                        } else {
                            failed_set.insert(k);
                        }
                    }
                    j.completed_indexes = index_list(&completed);
                    j.failed_indexes = index_list(&failed_set);
                    let left = n - completed.len() as u32 - failed_set.len() as u32;
                    j.active = j.active.min(left);
                }
                Event::FinishWorkers if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    let all_done = completed.len() + failed_set.len() == n as usize;
                    if j.suspended || (!chaos && !all_done) {
                        continue;
                    }
                    // Every index ends: the remaining ones fail.
                    for k in 0..n {
                        if !completed.contains(&k) {
                            failed_set.insert(k);
                        }
                    }
                    j.completed_indexes = index_list(&completed);
                    j.failed_indexes = index_list(&failed_set);
                    j.active = 0;
                    j.outcome = if failed_set.is_empty() {
                        JobOutcome::Succeeded { at: Some(obs.now) }
                    } else {
                        JobOutcome::Failed { reason: "FailedIndexes".into(), message: String::new(), at: Some(obs.now) }
                    };
                }
                Event::FailWorkers if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    j.active = 0;
                    j.outcome = JobOutcome::Failed {
                        reason: "BackoffLimitExceeded".into(),
                        message: String::new(),
                        at: Some(obs.now),
                    };
                }
                Event::Active(a) if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    if !j.suspended {
                        let left = n - completed.len() as u32 - failed_set.len() as u32;
                        j.active = a.min(left);
                    }
                }
                Event::FinishStage(s, ok) => {
                    let now = obs.now;
                    let j = match s {
                        Stage::Consolidation => obs.jobs.consolidation.as_mut(),
                        _ => obs.jobs.export.as_mut(),
                    };
                    if let Some(j) = j.filter(|j| j.outcome == JobOutcome::Running && !j.suspended) {
                        j.outcome = if ok {
                            JobOutcome::Succeeded { at: Some(now) }
                        } else {
                            JobOutcome::Failed {
                                reason: "BackoffLimitExceeded".into(),
                                message: String::new(),
                                at: Some(now),
                            }
                        };
                    }
                }
                Event::ToggleSuspend => b.spec.suspend = !b.spec.suspend,
                Event::Advance(s) => {
                    obs.now = obs.now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(s)).unwrap();
                }
                _ => {}
            }
        }
    }
    if std::env::var_os("PLAN_SIM_STATS").is_some() {
        eprintln!("SIMSTAT strict={strict} final={:?} created={:?}", b.status.as_ref().and_then(|s| s.phase), created);
    }
    Ok(())
}

fn arb_sim_spec() -> impl Strategy<Value = PredictionBatchSpec> {
    (
        prop_oneof![Just((120u32, 4u32)), (1u32..40, 1u32..5)],
        prop_oneof![Just(100u32), Just(90), 1u32..=100],
        prop_oneof![Just(0i64), 0i64..120],
        prop_oneof![3 => Just(None), 1 => (0i64..4000).prop_map(Some)],
        (prop::bool::weighted(0.8), prop::bool::weighted(0.8)),
        proptest::option::of(0i64..100),
        1u32..12,
    )
        .prop_map(|((target, per), pct, grace, complete_by, (cons, exp), ttl, par)| {
            spec_with(|s| {
                s.target_count = target;
                s.items_per_shard = per;
                s.parallelism = par;
                s.completion = CompletionSpec {
                    min_succeeded_percent: pct,
                    grace_seconds: grace,
                    complete_by: complete_by.map(|c| t(c).to_string()),
                };
                if !cons {
                    s.consolidation = None;
                }
                if !exp {
                    s.export = None;
                }
                s.ttl_seconds_after_finished = ttl;
            })
        })
}

fn arb_sim_events() -> impl Strategy<Value = (bool, Vec<Vec<Event>>)> {
    (prop::bool::weighted(0.25), proptest::collection::vec(proptest::collection::vec(arb_event(), 0..5), 1..=40))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// plan.rs's invariants, with "the previous stage's outcome is in the status being written".
    #[test]
    fn simulation_keeps_the_invariants(spec in arb_sim_spec(), events in arb_sim_events()) {
        simulate(spec, events, false)?;
    }
}

// ---- hardening: what a user, a node or a restart may do -------------------------------------

/// A batch in its grace period with one straggler, stopped at `now`: the plan, and the batch
/// with that plan's status (workers Stopping since `now`).
fn stopping_batch(s: &PredictionBatchSpec, now: i64) -> (Plan, PredictionBatch, JobView) {
    let b = batch(s.clone(), Some(running_status(s)));
    let straggling = workers_job("0-28", "", 1);
    let (_, b) = step(&b, &obs_with(now - 31, &[straggling.clone()]));
    let (p, b) = step(&b, &obs_with(now, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping), "{:?}", p.status);
    assert_eq!(stage_of(&p.status, Stage::Workers).unwrap().stop_time, Some(Time(t(now))));
    (p, b, straggling)
}

fn grace_spec() -> PredictionBatchSpec {
    spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 30;
    })
}

#[test]
fn stopping_ends_once_the_job_confirms_the_suspension_even_with_pods_that_never_terminate() {
    let (_, b, straggling) = stopping_batch(&grace_spec(), 131);
    // The Job controller suspended the Job and deleted the pod; the node never confirms it.
    let stuck = JobView { suspended: true, suspend_confirmed: true, active: 0, terminating: 1, ..straggling };
    let p = plan(&b, &obs_with(133, &[stuck]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
    assert_eq!(p.status.failed_shards.as_deref(), Some("29"));
    assert_eq!(creates(&p), vec![Stage::Consolidation], "consolidation follows, after this status is written");
}

#[test]
fn stopping_ends_at_the_stop_timeout_when_the_job_never_confirms() {
    let (p, b, straggling) = stopping_batch(&grace_spec(), 131);
    let wait = p.requeue_after.expect("wakes up at the stop timeout");
    assert!(wait <= Duration::from_secs(STOP_TIMEOUT_SECS as u64 + 1), "{wait:?}");
    // Suspended, but nobody confirms (kube-controller-manager down) and the pod hangs on.
    let hanging = JobView { suspended: true, active: 1, terminating: 1, ..straggling };
    let p = plan(&b, &obs_with(131 + STOP_TIMEOUT_SECS - 1, &[hanging.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.requeue_after.unwrap() <= Duration::from_secs(2));
    let p = plan(&b, &obs_with(131 + STOP_TIMEOUT_SECS, &[hanging]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
}

#[test]
fn stopping_never_outlasts_complete_by() {
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 30;
        s.completion.complete_by = Some(t(140).to_string());
    });
    let (_, b, straggling) = stopping_batch(&s, 131);
    let hanging = JobView { suspended: true, active: 1, terminating: 1, ..straggling };
    let p = plan(&b, &obs_with(139, &[hanging.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    let p = plan(&b, &obs_with(140, &[hanging]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
}

#[test]
fn a_finished_job_deleted_before_its_outcome_was_recorded_still_counts_and_is_then_released() {
    let b = batch(spec(), Some(running_status(&spec())));
    // TTL 0 (or a person) deleted the finished worker Job; our finalizer keeps it readable.
    let gone = JobView { deleting: true, outcome_finalizer: Some(1), ..succeeded(workers_job("0-29", "", 0), 90) };
    let p = plan(&b, &obs_with(100, &[gone.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
    assert_ne!(p.status.phase, Some(Phase::Failed));
    let release = Action::Release { stage: Stage::Workers, uid: uid(Stage::Workers), index: 1 };
    assert!(p.actions.contains(&release), "{:?}", p.actions);
    assert_eq!(creates(&p), vec![Stage::Consolidation]);
}

#[test]
fn a_running_job_keeps_our_finalizer_and_a_deleted_running_job_fails_the_batch_once() {
    let b = batch(spec(), Some(running_status(&spec())));
    let held = JobView { outcome_finalizer: Some(0), ..workers_job("0-3", "", 10) };
    let p = plan(&b, &obs_with(100, &[held.clone()]));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Release { .. })), "{:?}", p.actions);
    // Deleted while it runs: its outcome never comes; fail (JobDeleted), then let it go.
    let deleting = JobView { deleting: true, ..held };
    let (p, b) = step(&b, &obs_with(101, &[deleting.clone()]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
    assert!(p.actions.contains(&Action::Release { stage: Stage::Workers, uid: uid(Stage::Workers), index: 0 }));
    assert!(creates(&p).is_empty());
    let p = plan(&b, &obs_with(102, &[JobView { outcome_finalizer: None, ..deleting }]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
}

#[test]
fn every_stage_job_is_released_after_the_pipeline_and_nothing_else_is_touched() {
    let mut sim = Sim::new(spec(), JobView { outcome_finalizer: Some(0), ..job(Stage::Workers) }, 10);
    sim.obs.jobs.workers = Some(JobView { outcome_finalizer: Some(0), ..succeeded(workers_job("0-29", "", 0), 9) });
    sim.run(20);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    for stage in Stage::ALL {
        assert_eq!(sim.obs.job(stage).unwrap().outcome_finalizer, None, "{stage:?} still held");
    }
    // A foreign Job with our finalizer (someone copied a manifest) is not ours to release.
    let foreign = JobView { owned: false, outcome_finalizer: Some(0), ..job(Stage::Export) };
    let p = plan(&sim.batch, &obs_with(1000, &[foreign]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn ttl_never_deletes_a_same_named_job_it_does_not_own() {
    let sim = finished_sim(Some(0));
    // The export Job was replaced by a hand-made one with the same name.
    let mine = sim.obs.job(Stage::Workers).cloned().unwrap();
    let theirs = JobView { owned: false, uid: "hand-made".into(), ..job(Stage::Export) };
    let p = plan(&sim.batch, &obs_with(100_000, &[mine, theirs]));
    assert_eq!(p.actions, vec![Action::Delete { stage: Stage::Workers, uid: uid(Stage::Workers) }]);
}

#[test]
fn suspending_during_consolidation_holds_the_export_and_never_stops_the_consolidation_pod() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[w.clone()]));
    let (_, mut b) = step(&b, &obs_with(101, &[w.clone(), job(Stage::Consolidation)]));
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Consolidating));
    b.spec.suspend = true;
    let cons = JobView { active: 1, ..job(Stage::Consolidation) };
    let (p, b) = step(&b, &obs_with(102, &[w.clone(), cons.clone()]));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Suspend { .. })), "{:?}", p.actions);
    assert_eq!(p.status.phase, Some(Phase::Suspended));
    // It finishes while suspended: recorded, but the export waits.
    let (p, mut b) = step(&b, &obs_with(110, &[w.clone(), succeeded(cons, 109)]));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Succeeded));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    b.spec.suspend = false;
    let p = plan(&b, &obs_with(120, &[w, succeeded(job(Stage::Consolidation), 109)]));
    assert_eq!(creates(&p), vec![Stage::Export]);
}

#[test]
fn a_one_shot_stage_suspended_by_an_older_controller_is_resumed() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec_with(|s| s.suspend = true), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[w.clone()]));
    let mut st = b.status.clone().unwrap();
    st.consolidation = Some(StageStatus {
        job_name: Stage::Consolidation.job_name(NAME),
        job_uid: Some(uid(Stage::Consolidation)),
        state: StageState::Running,
        ..Default::default()
    });
    let b = batch(spec_with(|s| s.suspend = true), Some(st));
    let p = plan(&b, &obs_with(101, &[w, JobView { suspended: true, ..job(Stage::Consolidation) }]));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Consolidation, suspend: false }), "{:?}", p.actions);
}

#[test]
fn the_grace_period_does_not_run_while_suspended_but_complete_by_does() {
    let s = grace_spec();
    let b = batch(s.clone(), Some(running_status(&s)));
    let straggling = workers_job("0-28", "", 1);
    let (_, mut b) = step(&b, &obs_with(100, &[straggling.clone()])); // quorum at 100, grace to 130
    b.spec.suspend = true;
    let (p, b) = step(&b, &obs_with(110, &[straggling.clone()]));
    assert_eq!(p.status.suspend_time, Some(Time(t(110))));
    // Long past the grace period, still suspended: nothing stops.
    let quiet = JobView { suspended: true, active: 0, ..straggling.clone() };
    let (p, mut b) = step(&b, &obs_with(500, &[quiet.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running), "{:?}", p.status);
    // Resumed at 600 after 490 s suspended: 20 s of grace are left (until 620).
    b.spec.suspend = false;
    let (p, b) = step(&b, &obs_with(600, &[quiet]));
    assert_eq!(p.status.grace_paused_seconds, Some(490));
    assert_eq!(p.status.suspend_time, None);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running));
    let p = plan(&b, &obs_with(619, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running));
    let p = plan(&b, &obs_with(620, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));

    // completeBy is wall-clock: it ends the wait even while suspended.
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 30;
        s.completion.complete_by = Some(t(300).to_string());
        s.suspend = true;
    });
    let b = batch(s.clone(), Some(running_status(&grace_spec())));
    let (_, b) = step(&b, &obs_with(100, &[straggling.clone()]));
    let p = plan(&b, &obs_with(300, &[JobView { suspended: true, active: 0, ..straggling }]));
    assert_ne!(stage_state(&p.status, Stage::Workers), Some(StageState::Running), "{:?}", p.status);
}

#[test]
fn a_template_the_apiserver_refuses_in_the_dry_run_fails_the_batch_before_any_worker() {
    let b = batch(spec(), None);
    let (p, b) = step(&b, &observed(0));
    assert_eq!(p.actions, vec![Action::Validate, Action::Create(Stage::Workers)]);
    // The dry run of the export Job was refused: the reconciler plans again before creating.
    let mut obs = observed(0);
    obs.rejected.push((Stage::Export, "spec.template.spec.containers[0].image: Required value".into()));
    let p = plan(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let stalled = cond(&p.status, CONDITION_STALLED);
    assert_eq!(stalled.reason, "JobRejected");
    assert!(
        stalled.message.contains("export Job") && stalled.message.contains("Required value"),
        "{}",
        stalled.message
    );
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
}

#[test]
fn a_deadline_already_past_at_creation_fails_without_creating_any_job() {
    let s = spec_with(|s| s.completion.complete_by = Some(t(-60).to_string()));
    let p = plan(&batch(s, None), &observed(0));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "DeadlineExceeded");
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn a_far_future_deadline_the_crd_admits_is_no_deadline_at_all() {
    for far in ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999999-23:59"] {
        let s = spec_with(|s| s.completion.complete_by = Some(far.into()));
        let p = plan(&batch(s, None), &observed(0));
        assert_eq!(p.status.phase, Some(Phase::Pending), "{far}: {:?}", p.status);
        assert_ne!(cond(&p.status, CONDITION_STALLED).reason, "InvalidSpec", "{far}");
        assert_eq!(creates(&p), vec![Stage::Workers], "{far}");
    }
}
