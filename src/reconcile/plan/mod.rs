//! The planner: a pure function from (batch, observed Jobs, now) to the next status and actions.
//! No I/O and no clock happen here (the time is in [`Observed`]); this is where the pipeline's
//! rules live and where most tests go.
//!
//! One pass of [`plan`] runs the rules in pipeline order, each in its own module:
//! 0. [`rerun`]: a finished batch stays finished, unless a new `spec.rerun.token` starts an
//!    attempt, which clears the stages it reruns and is then planned like a running batch;
//! 1. [`validate`]: a spec the planner cannot use stalls the batch (`InvalidSpec`); templates the
//!    apiserver refused and a `completeBy` already past before any worker fail it early;
//! 2. [`loader`]: the optional loader Job runs first and its output, read and checked once,
//!    becomes the item count in the status; a count of 0 ends the pipeline early (`NoItems`);
//! 3. [`workers`]: the worker Job's shards are counted and recorded (counts never shrink), and
//!    [`quorum`] decides when the stage ends: quorum, grace period, `completeBy`, early stop;
//!    near its end, [`backups`] races straggling shards with backup runs;
//! 4. [`stages`]: each later stage's Job is created, adopted or found in conflict ([`stages`]'s
//!    `attach`) once the stage before it succeeded, in [`Stage::ALL`] order;
//! 5. [`failure`]: a stage that failed fails the batch and stops the pods left running;
//! 6. [`finish`]: the phase, the TTL of a finished batch's Jobs, the finalizers to release and
//!    when to look again;
//! 7. [`conditions`] and [`events`]: the standard conditions and the Events of what changed.
//!
//! Invariants the rest of the controller relies on (property-tested in `tests`):
//! - a stage's Job is planned for creation only while its status says it was never created;
//! - the next stage is planned only once the previous stage's outcome is in the status being
//!   written (the reconciler writes status before acting), so a crash never repeats a stage;
//! - consolidation is never planned before the quorum is met;
//! - phases only move forward (Suspended aside), and counts never shrink;
//! - nothing here panics, whatever the input.

mod backups;
mod conditions;
mod events;
mod failure;
mod finish;
mod loader;
mod quorum;
mod rerun;
mod rerun_shards;
mod stages;
mod stuck;
mod timing;
mod validate;
mod workers;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::observed::Observed;
use super::shards::ShardLayout;
use crate::api::loader::loaded_count;
use crate::api::{
    EventReason, NoItemsPolicy, PredictionBatch, PredictionBatchStatus, Stage, StageState, StageStatus, StallReason,
};

pub use workers::STOP_TIMEOUT_SECS;

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
    /// Create the Job of one shard rerun alone (a FailedShards attempt).
    CreateShard(u32),
    /// Set `spec.suspend` of a rerun shard's Job (the batch was suspended or resumed).
    SuspendShard { shard: u32, suspend: bool },
    /// Remove our outcome finalizer from a rerun shard's Job: its outcome is in the status.
    ReleaseShard { shard: u32, uid: String, index: usize },
    /// Create the Job of a straggling shard's backup run.
    CreateBackup(u32),
    /// Remove our outcome finalizer from a backup run's Job: its outcome is in the status.
    ReleaseBackup { shard: u32, uid: String, index: usize },
    /// Delete a backup run's Job (UID precondition): its shard was decided without it.
    StopBackup { shard: u32, uid: String },
    /// Remove our outcome finalizer (at `index` of `metadata.finalizers`) from the stage's Job
    /// `uid`: its outcome is in the status just written, or it is not the stage's Job.
    Release { stage: Stage, uid: String, index: usize },
    /// The batch finished `ttlSecondsAfterFinished` ago: delete this other Job it owns (an earlier
    /// attempt's, a rerun shard's, a backup run's), by name, with a UID precondition.
    DeleteJob { name: String, uid: String },
    /// The batch finished `ttlSecondsAfterFinished` ago: delete this Job of ours (UID precondition,
    /// so a same-named Job someone else made since is never touched). Never the batch.
    Delete { stage: Stage, uid: String },
}

impl Action {
    /// Actions whose effect depends on our view being current (all but releasing a finalizer
    /// after the outcome is recorded): the reconciler fences them with the batch's resourceVersion.
    pub fn needs_fence(&self) -> bool {
        !matches!(self, Action::Release { .. } | Action::ReleaseShard { .. } | Action::ReleaseBackup { .. })
    }
}

/// A Kubernetes Event to publish once the status is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: EventReason,
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

/// One planning pass: the batch and what was observed, the status being built (`st`, starting
/// from the stored one, `prev`), and what the rules decided so far.
struct Planner<'a> {
    batch: &'a PredictionBatch,
    obs: &'a Observed,
    now: Timestamp,
    prev: PredictionBatchStatus,
    st: PredictionBatchStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    stop: Option<Stop>,
    /// The item count is known and is 0: no worker runs (see `completion.onNoItems`).
    no_items: bool,
    /// Events beyond the status transitions (a rerun started or refused).
    notes: Vec<EventNote>,
    /// Stuck pods past the threshold, all of them (status lists at most [`stuck::MAX_LISTED`]).
    stuck_total: usize,
}

impl<'a> Planner<'a> {
    fn new(batch: &'a PredictionBatch, obs: &'a Observed) -> Self {
        let prev = batch.status.clone().unwrap_or_default();
        Planner {
            batch,
            obs,
            now: obs.now,
            st: prev.clone(),
            prev,
            actions: Vec::new(),
            requeue: None,
            stop: None,
            no_items: false,
            notes: Vec::new(),
            stuck_total: 0,
        }
    }

    fn name(&self) -> &str {
        self.batch.metadata.name.as_deref().unwrap_or_default()
    }

    /// The name of `stage`'s Job in the attempt being planned.
    fn job_name(&self, stage: Stage) -> String {
        stage.job_name_in(self.name(), self.st.attempt())
    }

    /// The rules in pipeline order (see the module doc).
    fn run(mut self) -> Plan {
        self.record_initial_token();
        // A finished batch stays finished, whatever its spec says now, unless a rerun starts.
        if self.st.phase.is_some_and(crate::api::Phase::is_terminal) && !self.start_requested_attempt() {
            self.finished_batch();
            let layout = self.layout();
            return self.finish(layout);
        }
        let complete_by = match self.usable_spec() {
            Ok(complete_by) => complete_by,
            Err(message) => return self.invalid_spec(message),
        };
        self.track_suspension();
        self.refuse_rejected_templates();
        if self.stop.is_none() {
            self.deadline_before_start(complete_by);
        }
        if self.stop.is_none() {
            self.loader(complete_by);
        }
        let layout = self.layout();
        if self.stop.is_none() && self.done_or_skipped(Stage::Loader) {
            if layout.target == 0 {
                self.no_items(layout);
            } else {
                self.workers(layout, complete_by);
            }
        }
        for stage in Stage::AFTER_WORKERS {
            if self.stop.is_some() || !self.done_or_skipped(previous(stage)) {
                break;
            }
            self.one_shot_stage(stage);
        }
        self.settle_phase();
        self.finish(layout)
    }

    /// The shard layout of the batch's item count (from the spec, or from the loader once its
    /// outcome is recorded; 0 items until then, which nothing acts on before the loader is done).
    fn layout(&self) -> ShardLayout {
        let spec = &self.batch.spec;
        let target = spec.target_count.or_else(|| loaded_count(&self.st)).unwrap_or(0);
        ShardLayout { target, per_shard: spec.items_per_shard.max(1) }
    }

    /// The spec asks for `stage`, and it succeeded.
    fn done(&self, stage: Stage) -> bool {
        stage_done(self.st.stage(stage))
    }

    /// Succeeded, or not asked for, or skipped on a day with no items: the pipeline may go past
    /// `stage`.
    fn done_or_skipped(&self, stage: Stage) -> bool {
        self.skipped_for_no_items(stage) || !self.batch.spec.has_stage(stage) || self.done(stage)
    }

    /// A day with no items runs no worker, and consolidation and export only if asked to.
    fn skipped_for_no_items(&self, stage: Stage) -> bool {
        self.no_items
            && match stage {
                Stage::Loader => false,
                Stage::Workers => true,
                Stage::Consolidation | Stage::Export => {
                    self.batch.spec.completion.on_no_items == NoItemsPolicy::SkipStages
                }
            }
    }

    fn wake_at(&mut self, t: Timestamp) {
        let wait = t.duration_since(self.now);
        let wait = Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(50);
        self.requeue_in(wait);
    }

    fn requeue_in(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
}

/// The stage before `stage` in the pipeline (the workers for the first).
fn previous(stage: Stage) -> Stage {
    let i = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
    Stage::ALL[i.saturating_sub(1)]
}

fn stage_done(s: &Option<Box<StageStatus>>) -> bool {
    s.as_ref().is_some_and(|s| s.state == StageState::Succeeded)
}

#[cfg(test)]
mod tests;
