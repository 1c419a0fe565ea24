//! The planner: a pure function from (batch, observed Jobs, now) to the next status and actions.
//! No I/O happens here; this is where the pipeline's rules live and where most tests go.
//!
//! Invariants the rest of the controller relies on (property-tested below):
//! - a stage's Job is planned for creation only while its status says it was never created;
//! - the next stage is planned only once the previous stage's outcome is in the status being
//!   written (the reconciler writes status before acting), so a crash never repeats a stage;
//! - consolidation is never planned before the quorum is met;
//! - phases only move forward (Suspended aside), and counts never shrink;
//! - nothing here panics, whatever the input.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::deadline::{add_secs, parse_complete_by};
use super::observed::{JobOutcome, JobView, Observed};
use super::ranges::IndexSet;
use super::shards::{MAX_SHARDS, ShardLayout};
use super::stage::Stage;
use crate::api::{
    ItemCounts, Phase, PredictionBatch, PredictionBatchStatus, ShardCounts, StageState, StageStatus, StallReason,
};

/// What to do to the cluster after the status has been written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Server-side dry-run create of the consolidation and export Jobs, planned with the worker
    /// Job's create: a template the apiserver refuses fails the batch before any worker runs.
    Validate,
    /// Create the stage's Job (AlreadyExists with our owner counts as success).
    Create(Stage),
    /// Set `spec.suspend` of the stage's Job.
    Suspend { stage: Stage, suspend: bool },
    /// Set `spec.parallelism` of the worker Job.
    Parallelism(i32),
    /// Remove our outcome finalizer (at `index` of `metadata.finalizers`) from the stage's Job
    /// `uid`: its outcome is in the status just written, or it is not the stage's Job.
    Release { stage: Stage, uid: String, index: usize },
    /// The batch finished `ttlSecondsAfterFinished` ago: delete this Job of ours (UID precondition,
    /// so a same-named Job someone else made since is never touched). Never the batch.
    Delete { stage: Stage, uid: String },
}

impl Action {
    /// Actions whose effect depends on our view being current (all but releasing a finalizer
    /// after the outcome is recorded): the reconciler fences them with the batch's resourceVersion.
    pub fn needs_fence(&self) -> bool {
        !matches!(self, Action::Release { .. })
    }
}

/// A Kubernetes Event to publish once the status is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: PredictionBatchStatus,
    pub actions: Vec<Action>,
    /// Wake up again after this long even if nothing changes (grace period, deadline, TTL).
    pub requeue_after: Option<Duration>,
    pub events: Vec<EventNote>,
}

pub use crate::api::{CONDITION_DEGRADED, CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED};

/// How long to wait before looking again at a name conflict (a foreign Job is not watched).
const CONFLICT_RECHECK: Duration = Duration::from_secs(30);
/// Longest wait for the worker Job to confirm an early stop (a node that never confirms its pods'
/// deletion must not hold the batch); `completeBy` cuts it shorter.
pub const STOP_TIMEOUT_SECS: i64 = 60;

/// Why a batch stopped for good (or is stuck until its spec or the cluster changes).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stop {
    reason: StallReason,
    message: String,
    /// Terminal (phase Failed) or only stalled until something changes (invalid spec, name conflict).
    terminal: bool,
}

pub fn plan(batch: &PredictionBatch, observed: &Observed) -> Plan {
    Planner::new(batch, observed).run()
}

struct Planner<'a> {
    batch: &'a PredictionBatch,
    obs: &'a Observed,
    now: Timestamp,
    prev: PredictionBatchStatus,
    st: PredictionBatchStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    stop: Option<Stop>,
}

impl<'a> Planner<'a> {
    fn new(batch: &'a PredictionBatch, obs: &'a Observed) -> Self {
        let prev = batch.status.clone().unwrap_or_default();
        Planner { batch, obs, now: obs.now, st: prev.clone(), prev, actions: Vec::new(), requeue: None, stop: None }
    }

    fn name(&self) -> &str {
        self.batch.metadata.name.as_deref().unwrap_or_default()
    }

    fn run(mut self) -> Plan {
        let spec = &self.batch.spec;
        // A finished batch stays finished, whatever its spec says now.
        if self.st.phase.is_some_and(Phase::is_terminal) {
            let layout = ShardLayout::new(spec.target_count, spec.items_per_shard)
                .unwrap_or(ShardLayout { target: spec.target_count.max(1), per_shard: 1 });
            self.finished_batch(layout);
            return self.finish(layout);
        }
        let layout = ShardLayout::new(spec.target_count, spec.items_per_shard)
            .filter(|l| u64::from(l.shard_count()) <= MAX_SHARDS);
        let complete_by = match spec.completion.complete_by.as_deref().map(parse_complete_by) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => return self.invalid_spec(format!("spec.completion.completeBy is {e}")),
            None => None,
        };
        let Some(layout) = layout else {
            return self.invalid_spec(format!(
                "spec.targetCount {} with spec.itemsPerShard {} does not give 1..{MAX_SHARDS} shards",
                spec.target_count, spec.items_per_shard
            ));
        };

        self.track_suspension();
        self.refuse_rejected_templates();
        if self.stop.is_none() {
            self.deadline_before_start(complete_by);
        }
        if self.stop.is_none() {
            self.workers(layout, complete_by);
        }
        if self.stop.is_none() && stage_done(&self.st.workers) {
            self.single_job_stage(Stage::Consolidation);
            if self.stop.is_none() && self.stage_done_or_skipped(Stage::Consolidation) {
                self.single_job_stage(Stage::Export);
            }
        }
        self.settle_phase();
        self.finish(layout)
    }

    // ---- before the workers ----------------------------------------------------------------

    /// Records when the batch was suspended; on resume, adds the time it spent suspended after
    /// its quorum was met to the grace period (the grace period does not run while suspended).
    fn track_suspension(&mut self) {
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

    /// A consolidation or export template the apiserver refused in the dry run that comes with
    /// the worker Job's create: fail now, before any worker runs (the spec is immutable).
    fn refuse_rejected_templates(&mut self) {
        for stage in [Stage::Consolidation, Stage::Export] {
            let created = stage_status(&self.st, stage).as_ref().is_some_and(|s| s.job_uid.is_some());
            if let Some(message) = self.obs.rejection(stage).filter(|_| !created) {
                let message = format!("the apiserver rejected the {} Job: {message}", stage.label());
                return self.fail(stage, StallReason::JobRejected, message);
            }
        }
    }

    /// A `completeBy` that had already passed before the worker Job was created fails the batch
    /// without creating any Job.
    fn deadline_before_start(&mut self, complete_by: Option<Timestamp>) {
        let Some(t) = complete_by.filter(|t| self.now >= *t) else { return };
        let never_started =
            self.st.workers.as_ref().is_none_or(|w| w.job_uid.is_none()) && self.obs.job(Stage::Workers).is_none();
        if never_started {
            let message = format!("completeBy {t} had passed before any worker started");
            self.fail(Stage::Workers, StallReason::DeadlineExceeded, message);
        }
    }

    // ---- workers -------------------------------------------------------------------------

    fn workers(&mut self, layout: ShardLayout, complete_by: Option<Timestamp>) {
        let n = layout.shard_count();
        self.st.shards.get_or_insert_with(|| ShardCounts { total: n, ..Default::default() }).total = n;
        self.st.items.get_or_insert_with(|| ItemCounts { target: layout.target, ..Default::default() }).target =
            layout.target;

        let Some(job) = self.attach(Stage::Workers) else { return };
        if stage_done(&self.st.workers) {
            return;
        }
        if self.st.start_time.is_none() {
            self.st.start_time = job.created.or(job.start_time).map(Time);
        }

        // Counts never shrink: what status already recorded for this Job stays recorded, also
        // when the Job reports something unreadable.
        let recorded = |s: &Option<String>| IndexSet::parse_opt(s.as_deref()).unwrap_or_default().clamp(n);
        let (prev_succeeded, prev_failed) = (recorded(&self.prev.succeeded_shards), recorded(&self.prev.failed_shards));
        let succeeded = IndexSet::parse_opt(job.completed_indexes.as_deref())
            .map_or_else(|_| prev_succeeded.clone(), |s| s.clamp(n).union(&prev_succeeded));
        let failed = IndexSet::parse_opt(job.failed_indexes.as_deref())
            .map_or_else(|_| prev_failed.clone(), |s| s.clamp(n).union(&prev_failed));
        let failed = IndexSet::from_indexes(failed.iter().filter(|i| !succeeded.contains(*i)));
        self.record_shards(layout, &succeeded, &failed, job.active);

        let stopping = self.st.workers.as_ref().is_some_and(|w| w.state == StageState::Stopping);
        if stopping {
            return self.stopping_workers(layout, &succeeded, job, complete_by);
        }

        match &job.outcome {
            JobOutcome::Succeeded { .. } => return self.finalize_workers(layout, &succeeded, job),
            // Every index finished and some failed: the quorum decides.
            JobOutcome::Failed { reason, .. } if reason == "FailedIndexes" => {
                return self.finalize_workers(layout, &succeeded, job);
            }
            JobOutcome::Failed { reason, message, .. } => {
                let why = if reason == "MaxFailedIndexesExceeded" {
                    StallReason::MaxFailedShardsExceeded
                } else {
                    StallReason::WorkersFailed
                };
                return self.fail(Stage::Workers, why, format!("worker Job {}: {reason}: {message}", job.name));
            }
            JobOutcome::Running => {}
        }
        if succeeded.len() + failed.len() == u64::from(n) && !job.has_pods() {
            return self.finalize_workers(layout, &succeeded, job);
        }

        let spec = &self.batch.spec;
        let pct = spec.completion.min_succeeded_percent;
        let failed_items = layout.items_in(&failed);
        let succeeded_items = layout.items_in(&succeeded);
        if !layout.meets_quorum(u64::from(layout.target).saturating_sub(failed_items), pct) {
            return self.fail(
                Stage::Workers,
                StallReason::QuorumUnreachable,
                format!(
                    "{failed_items} of {} items failed (shards {failed}); {pct}% can no longer succeed",
                    layout.target
                ),
            );
        }
        if layout.meets_quorum(succeeded_items, pct) {
            let since = self.st.quorum_time.get_or_insert(Time(self.now)).0;
            // The grace period is paused while the batch is suspended; completeBy is wall-clock.
            let grace_end = (!spec.suspend).then(|| {
                let paused = self.st.grace_paused_seconds.unwrap_or(0).max(0);
                add_secs(since, spec.completion.grace_seconds.max(0).saturating_add(paused))
            });
            let deadline = match (complete_by, grace_end) {
                (Some(t), Some(g)) if t < g => Some((t, "completeBy reached")),
                (_, Some(g)) => Some((g, "grace period over")),
                (Some(t), None) => Some((t, "completeBy reached")),
                (None, None) => None,
            };
            if let Some((deadline, why)) = deadline {
                if self.now >= deadline {
                    let message = format!("quorum met ({succeeded_items}/{} items), {why}", layout.target);
                    return self.begin_stop(message);
                }
                self.wake_at(deadline);
            }
        } else if let Some(t) = complete_by {
            if self.now >= t {
                return self.fail(
                    Stage::Workers,
                    StallReason::DeadlineExceeded,
                    format!(
                        "completeBy {t} passed with {succeeded_items}/{} items, below the {pct}% quorum",
                        layout.target
                    ),
                );
            }
            self.wake_at(t);
        }
        self.sync_running_job(Stage::Workers, job);
        let want = i32::try_from(spec.parallelism.min(n)).unwrap_or(i32::MAX);
        if job.parallelism != Some(want) && !job.suspended {
            self.actions.push(Action::Parallelism(want));
        }
    }

    fn record_shards(&mut self, layout: ShardLayout, succeeded: &IndexSet, failed: &IndexSet, active: u32) {
        let n = layout.shard_count();
        self.st.shards = Some(ShardCounts {
            total: n,
            succeeded: succeeded.len() as u32,
            failed: failed.len() as u32,
            active: active.min(n),
        });
        let succeeded_items = layout.items_in(succeeded) as u32;
        self.st.items = Some(ItemCounts {
            target: layout.target,
            succeeded: succeeded_items,
            failed: layout.items_in(failed) as u32,
        });
        self.st.progress = Some(format!("{succeeded_items}/{}", layout.target));
        self.st.succeeded_shards = Some(succeeded.to_string()).filter(|s| !s.is_empty());
        self.st.failed_shards = Some(failed.to_string()).filter(|s| !s.is_empty());
    }

    /// End the worker stage early: record it, then suspend the Job so its remaining pods stop and
    /// consolidation sees a fixed set of shards.
    fn begin_stop(&mut self, message: String) {
        let w = self.st.workers.as_mut().expect("attached");
        w.state = StageState::Stopping;
        w.stop_time = Some(Time(self.now));
        w.message = Some(message);
        self.actions.push(Action::Suspend { stage: Stage::Workers, suspend: true });
        self.wake_at(add_secs(self.now, STOP_TIMEOUT_SECS));
    }

    /// The worker stage is ending early. It ends once the Job has no pods left, or once the Job
    /// controller has confirmed the suspension (it then dropped the stopped pods' tracking
    /// finalizers, so pods that never finish terminating, e.g. on a dead node, cannot change the
    /// completed indexes any more), and in any case [`STOP_TIMEOUT_SECS`] after the stop began
    /// or at `completeBy`, whichever comes first.
    fn stopping_workers(
        &mut self,
        layout: ShardLayout,
        succeeded: &IndexSet,
        job: &JobView,
        complete_by: Option<Timestamp>,
    ) {
        let began = self.st.workers.as_mut().expect("attached").stop_time.get_or_insert(Time(self.now)).0;
        let limit = add_secs(began, STOP_TIMEOUT_SECS);
        let limit = complete_by.map_or(limit, |t| t.min(limit));
        let confirmed = job.suspended && job.suspend_confirmed && job.active == 0;
        if !job.has_pods() || job.outcome != JobOutcome::Running || confirmed || job.deleting || self.now >= limit {
            return self.finalize_workers(layout, succeeded, job);
        }
        if !job.suspended {
            self.actions.push(Action::Suspend { stage: Stage::Workers, suspend: true });
        }
        self.wake_at(limit);
    }

    fn finalize_workers(&mut self, layout: ShardLayout, succeeded: &IndexSet, job: &JobView) {
        let n = layout.shard_count();
        // Once the stage is over, a shard that did not succeed counts as failed.
        let failed = succeeded.complement(n);
        self.record_shards(layout, succeeded, &failed, 0);
        let pct = self.batch.spec.completion.min_succeeded_percent;
        let succeeded_items = layout.items_in(succeeded);
        if !layout.meets_quorum(succeeded_items, pct) {
            return self.fail(
                Stage::Workers,
                StallReason::QuorumNotMet,
                format!(
                    "{succeeded_items}/{} items succeeded, below the {pct}% quorum (failed shards: {failed})",
                    layout.target
                ),
            );
        }
        let at = match &job.outcome {
            JobOutcome::Succeeded { at: Some(t) } | JobOutcome::Failed { at: Some(t), .. } => *t,
            _ => self.now,
        };
        let w = self.st.workers.as_mut().expect("attached");
        w.state = StageState::Succeeded;
        w.completion_time = Some(Time(at));
        w.message = Some(format!("{succeeded_items}/{} items succeeded", layout.target));
        if job.has_pods() && !job.suspended {
            // Stragglers of a Job the Job controller already ended (e.g. success policy).
            self.actions.push(Action::Suspend { stage: Stage::Workers, suspend: true });
        }
    }

    // ---- consolidation and export ------------------------------------------------------

    fn stage_spec_present(&self, stage: Stage) -> bool {
        match stage {
            Stage::Workers => true,
            Stage::Consolidation => self.batch.spec.consolidation.is_some(),
            Stage::Export => self.batch.spec.export.is_some(),
        }
    }

    fn stage_done_or_skipped(&self, stage: Stage) -> bool {
        !self.stage_spec_present(stage) || stage_done(stage_status(&self.st, stage))
    }

    fn single_job_stage(&mut self, stage: Stage) {
        if !self.stage_spec_present(stage) {
            return;
        }
        let Some(job) = self.attach(stage) else { return };
        if stage_done(stage_status(&self.st, stage)) {
            return;
        }
        match &job.outcome {
            JobOutcome::Succeeded { at } => {
                let s = stage_status_mut(&mut self.st, stage).as_mut().expect("attached");
                s.state = StageState::Succeeded;
                s.completion_time = Some(Time(at.unwrap_or(self.now)));
                s.message = None;
            }
            JobOutcome::Failed { reason, message, .. } => {
                let why = match stage {
                    Stage::Consolidation => StallReason::ConsolidationFailed,
                    _ => StallReason::ExportFailed,
                };
                self.fail(stage, why, format!("{} Job {}: {reason}: {message}", stage.label(), job.name));
            }
            // A one-shot stage is never suspended for spec.suspend: stopping its pod would run it
            // again from scratch on resume. Suspend holds the next stage instead.
            JobOutcome::Running if job.suspended => self.actions.push(Action::Suspend { stage, suspend: false }),
            JobOutcome::Running => {}
        }
    }

    // ---- shared stage mechanics --------------------------------------------------------

    /// Connects a stage's status to its Job: plans the create when none was ever made, adopts
    /// one we made but did not record (crash between create and status write), and detects a Job
    /// deleted before its outcome was recorded. Returns the Job only once status has its UID.
    fn attach(&mut self, stage: Stage) -> Option<&'a JobView> {
        let obs: &'a Observed = self.obs;
        let job_name = stage.job_name(self.name());
        let job = obs.job(stage);
        let status = stage_status(&self.st, stage).clone();
        match (status.as_ref().and_then(|s| s.job_uid.clone()), job) {
            (Some(_), _) if status.as_ref().is_some_and(|s| s.state.is_finished()) => None,
            // Being deleted while it runs: no outcome will ever come (the stage is not re-run).
            (Some(uid), Some(j))
                if j.uid == uid
                    && j.deleting
                    && j.outcome == JobOutcome::Running
                    && status.as_ref().is_some_and(|s| s.state != StageState::Stopping) =>
            {
                let message = format!("{} Job {job_name} was deleted before it finished", stage.label());
                self.fail(stage, StallReason::JobDeleted, message);
                None
            }
            (Some(uid), Some(j)) if j.uid == uid => Some(j),
            (Some(_), _) => {
                self.fail(
                    stage,
                    StallReason::JobDeleted,
                    format!("{} Job {job_name} was deleted before its outcome was recorded", stage.label()),
                );
                None
            }
            (None, Some(j)) if !j.owned => {
                self.stop = Some(Stop {
                    reason: StallReason::JobNameConflict,
                    message: format!(
                        "a Job named {} exists and is not owned by this batch; it will not be adopted",
                        j.name
                    ),
                    terminal: false,
                });
                self.requeue_in(CONFLICT_RECHECK);
                None
            }
            (None, Some(j)) => {
                let s = stage_status_mut(&mut self.st, stage);
                let entry = s.get_or_insert_with(|| StageStatus { job_name: j.name.clone(), ..Default::default() });
                entry.job_name = j.name.clone();
                entry.job_uid = Some(j.uid.clone());
                entry.state = StageState::Running;
                entry.start_time = j.start_time.or(j.created).map(Time);
                Some(j)
            }
            (None, None) => {
                if let Some(message) = obs.rejection(stage) {
                    let message = format!("the apiserver rejected the {} Job: {message}", stage.label());
                    self.fail(stage, StallReason::JobRejected, message);
                    return None;
                }
                *stage_status_mut(&mut self.st, stage) =
                    Some(StageStatus { job_name, state: StageState::Pending, ..Default::default() });
                if !self.batch.spec.suspend {
                    if stage == Stage::Workers {
                        self.actions.push(Action::Validate);
                    }
                    self.actions.push(Action::Create(stage));
                }
                None
            }
        }
    }

    /// Keep a running Job's suspension in line with `spec.suspend`.
    fn sync_running_job(&mut self, stage: Stage, job: &JobView) {
        let want = self.batch.spec.suspend;
        if job.suspended != want {
            self.actions.push(Action::Suspend { stage, suspend: want });
        }
    }

    fn fail(&mut self, stage: Stage, reason: StallReason, message: String) {
        let s = stage_status_mut(&mut self.st, stage);
        let entry = s.get_or_insert_with(|| StageStatus {
            job_name: stage.job_name(self.batch.metadata.name.as_deref().unwrap_or_default()),
            ..Default::default()
        });
        entry.state = StageState::Failed;
        entry.completion_time.get_or_insert(Time(self.now));
        entry.message = Some(message.clone());
        self.stop = Some(Stop { reason, message, terminal: true });
        self.st.phase = Some(Phase::Failed);
        self.st.completion_time.get_or_insert(Time(self.now));
        self.stop_leftover_pods();
    }

    /// A failed batch must not leave pods running.
    fn stop_leftover_pods(&mut self) {
        for stage in Stage::ALL {
            if let Some(job) = self.obs.job(stage) {
                let action = Action::Suspend { stage, suspend: true };
                if job.owned
                    && !job.deleting
                    && job.has_pods()
                    && !job.suspended
                    && job.outcome == JobOutcome::Running
                    && !self.actions.contains(&action)
                {
                    self.actions.push(action);
                }
            }
        }
    }

    // ---- finished batches ------------------------------------------------------------------

    fn finished_batch(&mut self, layout: ShardLayout) {
        let _ = layout;
        if self.st.phase == Some(Phase::Failed) {
            self.stop_leftover_pods();
        }
        let Some(ttl) = self.batch.spec.ttl_seconds_after_finished else { return };
        let owned: Vec<(Stage, String)> = Stage::ALL
            .into_iter()
            .filter_map(|s| self.obs.job(s).filter(|j| j.owned && !j.deleting).map(|j| (s, j.uid.clone())))
            .collect();
        if owned.is_empty() {
            return;
        }
        let done = self.st.completion_time.as_ref().map_or(self.now, |t| t.0);
        let expiry = add_secs(done, ttl.max(0));
        if self.now >= expiry {
            self.actions.retain(|a| !matches!(a, Action::Suspend { .. }));
            self.actions.extend(owned.into_iter().map(|(stage, uid)| Action::Delete { stage, uid }));
        } else {
            self.wake_at(expiry);
        }
    }

    fn settle_phase(&mut self) {
        if self.st.phase == Some(Phase::Failed) {
            return;
        }
        let all_done = stage_done(&self.st.workers)
            && self.stage_done_or_skipped(Stage::Consolidation)
            && self.stage_done_or_skipped(Stage::Export);
        if all_done {
            self.st.phase = Some(Phase::Succeeded);
            let last = [&self.st.export, &self.st.consolidation, &self.st.workers]
                .into_iter()
                .flatten()
                .find_map(|s| s.completion_time.clone());
            self.st.completion_time = Some(last.unwrap_or(Time(self.now)));
            return;
        }
        let in_flight = |s: &Option<StageStatus>| s.as_ref().is_some_and(|s| !s.state.is_finished());
        let phase = if self.batch.spec.suspend {
            Phase::Suspended
        } else if in_flight(&self.st.export) {
            Phase::Exporting
        } else if in_flight(&self.st.consolidation) {
            Phase::Consolidating
        } else if self.st.workers.as_ref().is_some_and(|w| w.job_uid.is_some()) {
            Phase::Running
        } else {
            Phase::Pending
        };
        // Phases never move backwards (a resumed batch returns to where it was).
        let prev = self.prev.phase.filter(|p| *p != Phase::Suspended);
        self.st.phase = Some(match prev {
            Some(p) if phase != Phase::Suspended && p > phase => p,
            _ => phase,
        });
    }

    fn invalid_spec(mut self, message: String) -> Plan {
        self.stop = Some(Stop { reason: StallReason::InvalidSpec, message, terminal: false });
        if self.st.phase.is_none() {
            self.st.phase = Some(Phase::Pending);
        }
        let layout = ShardLayout { target: self.batch.spec.target_count, per_shard: 1 };
        self.finish(layout)
    }

    fn wake_at(&mut self, t: Timestamp) {
        let wait = t.duration_since(self.now);
        let wait = Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(50);
        self.requeue_in(wait);
    }

    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    // ---- status and conditions -----------------------------------------------------------

    fn finish(mut self, layout: ShardLayout) -> Plan {
        let generation = self.batch.metadata.generation;
        self.st.observed_generation = generation;
        let wanted = self.conditions(layout);
        self.st.conditions = merge_conditions(&self.prev.conditions, wanted, generation, self.now);
        let events = transition_events(&self.prev, &self.st, self.stop.as_ref());
        let mut actions = self.releases();
        actions.append(&mut self.actions);
        Plan { status: self.st, actions, requeue_after: self.requeue, events }
    }

    /// Our outcome finalizer stays on a Job only while that Job is its stage's recorded,
    /// unfinished Job. Once the status being written holds the outcome (or names another Job, or
    /// none), the finalizer goes, so nothing of ours holds up a deletion longer than needed.
    fn releases(&self) -> Vec<Action> {
        Stage::ALL
            .into_iter()
            .filter_map(|stage| {
                let job = self.obs.job(stage).filter(|j| j.owned)?;
                let index = job.outcome_finalizer?;
                let holding = stage_status(&self.st, stage)
                    .as_ref()
                    .is_some_and(|s| s.job_uid.as_deref() == Some(job.uid.as_str()) && !s.state.is_finished());
                (!holding).then(|| Action::Release { stage, uid: job.uid.clone(), index })
            })
            .collect()
    }

    fn conditions(&self, layout: ShardLayout) -> Vec<(&'static str, &'static str, String, String)> {
        let st = &self.st;
        let items = st.items.clone().unwrap_or_default();
        let shards = st.shards.clone().unwrap_or_default();
        let progress = format!("{}/{} items", items.succeeded, layout.target);
        let phase = st.phase.unwrap_or(Phase::Pending);
        // A stored terminal state keeps its reason across passes.
        let stop = self.stop.clone().or_else(|| {
            (phase == Phase::Failed).then(|| {
                let prev = self.prev.conditions.iter().find(|c| c.type_ == CONDITION_STALLED);
                Stop {
                    reason: StallReason::Failed,
                    message: prev.map(|c| c.message.clone()).unwrap_or_default(),
                    terminal: true,
                }
            })
        });
        let stored_reason = self
            .prev
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_STALLED && c.status == "True")
            .map(|c| c.reason.clone());

        let (ready, reconciling, stalled) = match (&stop, phase) {
            (Some(s), _) => {
                let reason = if self.stop.is_none() {
                    stored_reason.unwrap_or_else(|| s.reason.to_string())
                } else {
                    s.reason.to_string()
                };
                (
                    ("False", reason.clone(), s.message.clone()),
                    ("False", reason.clone(), s.message.clone()),
                    ("True", reason, s.message.clone()),
                )
            }
            (None, Phase::Succeeded) => {
                let coverage = if items.succeeded == layout.target {
                    format!("{progress} succeeded")
                } else {
                    format!(
                        "{progress} succeeded ({:.1}% coverage)",
                        f64::from(items.succeeded) * 100.0 / f64::from(layout.target.max(1))
                    )
                };
                (
                    ("True", "Succeeded".to_string(), coverage.clone()),
                    ("False", "Succeeded".to_string(), coverage),
                    ("False", "Succeeded".to_string(), String::new()),
                )
            }
            (None, Phase::Suspended) => (
                ("Unknown", "Suspended".to_string(), format!("suspended at {progress}")),
                ("False", "Suspended".to_string(), format!("suspended at {progress}")),
                ("False", "Suspended".to_string(), String::new()),
            ),
            (None, p) => {
                let message = format!("{}: {progress}, {} shards active", p.as_str(), shards.active);
                (
                    ("Unknown", p.as_str().to_string(), message.clone()),
                    ("True", p.as_str().to_string(), message),
                    ("False", "Progressing".to_string(), String::new()),
                )
            }
        };
        let degraded = if shards.failed > 0 {
            let list = st.failed_shards.clone().unwrap_or_default();
            let list = if list.len() > 200 {
                format!("{}…", &list[..list.char_indices().nth(200).map_or(list.len(), |(i, _)| i)])
            } else {
                list
            };
            (
                "True",
                "ShardsFailed".to_string(),
                format!(
                    "{} of {} shards failed ({} of {} items): {list}",
                    shards.failed, shards.total, items.failed, layout.target
                ),
            )
        } else {
            ("False", "NoFailedShards".to_string(), String::new())
        };
        vec![
            (CONDITION_READY, ready.0, ready.1, ready.2),
            (CONDITION_RECONCILING, reconciling.0, reconciling.1, reconciling.2),
            (CONDITION_STALLED, stalled.0, stalled.1, stalled.2),
            (CONDITION_DEGRADED, degraded.0, degraded.1, degraded.2),
        ]
    }
}

fn stage_done(s: &Option<StageStatus>) -> bool {
    s.as_ref().is_some_and(|s| s.state == StageState::Succeeded)
}

fn stage_status(st: &PredictionBatchStatus, stage: Stage) -> &Option<StageStatus> {
    match stage {
        Stage::Workers => &st.workers,
        Stage::Consolidation => &st.consolidation,
        Stage::Export => &st.export,
    }
}

fn stage_status_mut(st: &mut PredictionBatchStatus, stage: Stage) -> &mut Option<StageStatus> {
    match stage {
        Stage::Workers => &mut st.workers,
        Stage::Consolidation => &mut st.consolidation,
        Stage::Export => &mut st.export,
    }
}

/// Conditions in a fixed order; `lastTransitionTime` moves only when a condition's status does,
/// so an unchanged batch produces a byte-identical status. Conditions we don't own (e.g. the
/// mirror's `MirrorSynced`) are kept as they are.
fn merge_conditions(
    prev: &[Condition],
    wanted: Vec<(&'static str, &'static str, String, String)>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let old = prev.iter().find(|c| c.type_ == type_);
            let last_transition_time = match old {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason,
                message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    let ours = [CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, CONDITION_DEGRADED];
    out.extend(prev.iter().filter(|c| !ours.contains(&c.type_.as_str())).cloned());
    out
}

fn transition_events(
    prev: &PredictionBatchStatus,
    next: &PredictionBatchStatus,
    stop: Option<&Stop>,
) -> Vec<EventNote> {
    let mut events = Vec::new();
    let mut note = |warning, reason, note: String| events.push(EventNote { warning, reason, note });
    for (stage, before, after) in [
        (Stage::Workers, &prev.workers, &next.workers),
        (Stage::Consolidation, &prev.consolidation, &next.consolidation),
        (Stage::Export, &prev.export, &next.export),
    ] {
        let Some(after) = after else { continue };
        let before_state = before.as_ref().map(|b| (b.state, b.job_uid.is_some()));
        let label = stage.label();
        // Reasons name the stage: the event recorder folds events with the same reason together.
        let (started, succeeded, failed) = match stage {
            Stage::Workers => ("WorkersStarted", "WorkersSucceeded", "WorkersFailed"),
            Stage::Consolidation => ("ConsolidationStarted", "ConsolidationSucceeded", "ConsolidationFailed"),
            Stage::Export => ("ExportStarted", "ExportSucceeded", "ExportFailed"),
        };
        if after.job_uid.is_some() && before_state.is_none_or(|(_, had_uid)| !had_uid) {
            note(false, started, format!("{label} Job {} started", after.job_name));
        }
        if before_state.map(|b| b.0) != Some(after.state) {
            let message = after.message.clone().unwrap_or_default();
            match after.state {
                StageState::Stopping => {
                    note(false, "StoppingStragglers", format!("{label}: {message}; stopping the remaining shards"))
                }
                StageState::Succeeded => note(false, succeeded, format!("{label} succeeded")),
                StageState::Failed => note(true, failed, format!("{label} failed: {message}")),
                _ => {}
            }
        }
    }
    if prev.phase != next.phase {
        match next.phase {
            Some(Phase::Succeeded) => {
                note(false, "BatchSucceeded", format!("batch succeeded: {}", next.progress.clone().unwrap_or_default()))
            }
            Some(Phase::Failed) => note(true, "BatchFailed", stop.map(|s| s.message.clone()).unwrap_or_default()),
            _ => {}
        }
    }
    if let Some(s) = stop.filter(|s| !s.terminal) {
        let was =
            prev.conditions.iter().any(|c| c.type_ == CONDITION_STALLED && c.status == "True" && c.reason == s.reason);
        if !was {
            note(true, s.reason.as_str(), s.message.clone());
        }
    }
    events
}
#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
