//! A stage's Job and its status: `attach` connects them (plans the create, adopts a Job we made
//! but did not record, refuses a Job we do not own, notices a Job deleted before its outcome was
//! recorded), and the one-shot stages (loader, consolidation, export) record their Job's outcome.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Action, Planner, Stop};
use crate::api::{Stage, StageState, StageStatus, StallReason};
use crate::reconcile::observed::{JobOutcome, JobView, Observed};

/// How long to wait before looking again at a name conflict (a foreign Job is not watched).
const CONFLICT_RECHECK: Duration = Duration::from_secs(30);

impl<'a> Planner<'a> {
    /// A stage that runs one pod once, after the stage before it succeeded.
    pub(super) fn one_shot_stage(&mut self, stage: Stage) {
        if !self.batch.spec.has_stage(stage) || self.skipped_for_no_items(stage) {
            return;
        }
        let Some(job) = self.attach(stage) else { return };
        if self.done(stage) {
            return;
        }
        match &job.outcome {
            JobOutcome::Succeeded { at } => {
                if stage == Stage::Loader && !self.record_loader_output() {
                    return;
                }
                let at = Time(at.unwrap_or(self.now));
                if let Some(s) = self.st.stage_mut(stage).as_mut() {
                    s.state = StageState::Succeeded;
                    s.completion_time = Some(at);
                    if stage != Stage::Loader {
                        s.message = None;
                    }
                }
            }
            JobOutcome::Failed { reason, message, .. } => {
                self.fail(
                    stage,
                    StallReason::stage_failed(stage),
                    format!("{} Job {}: {reason}: {message}", stage.label(), job.name),
                );
            }
            // A one-shot stage is never suspended for spec.suspend: stopping its pod would run it
            // again from scratch on resume. Suspend holds the next stage instead.
            JobOutcome::Running if job.suspended => self.actions.push(Action::Suspend { stage, suspend: false }),
            JobOutcome::Running => {}
        }
    }

    /// Connects a stage's status to its Job: plans the create when none was ever made, adopts
    /// one we made but did not record (crash between create and status write), and detects a Job
    /// deleted before its outcome was recorded. Returns the Job only once status has its UID.
    pub(super) fn attach(&mut self, stage: Stage) -> Option<&'a JobView> {
        let obs: &'a Observed = self.obs;
        // Only this attempt's Job: a rerun's first pass still sees the previous attempt's.
        let job = obs.job(stage).filter(|j| j.name == self.job_name(stage));
        let status = self.st.stage(stage).clone();
        let recorded = status.as_ref().and_then(|s| s.job_uid.clone());
        match (recorded, job) {
            (Some(_), _) if status.as_ref().is_some_and(|s| s.state.is_finished()) => None,
            // Being deleted while it runs: no outcome will ever come (the stage is not re-run).
            (Some(uid), Some(j))
                if j.uid == uid
                    && j.deleting
                    && j.outcome == JobOutcome::Running
                    && status.as_ref().is_some_and(|s| s.state != StageState::Stopping) =>
            {
                self.job_deleted(stage, "before it finished");
                None
            }
            (Some(uid), Some(j)) if j.uid == uid => Some(j),
            (Some(_), _) => {
                self.job_deleted(stage, "before its outcome was recorded");
                None
            }
            (None, Some(j)) if !j.owned => {
                self.name_conflict(j);
                None
            }
            (None, Some(j)) => {
                self.adopt(stage, j);
                Some(j)
            }
            (None, None) => {
                self.plan_create(stage);
                None
            }
        }
    }

    fn job_deleted(&mut self, stage: Stage, when: &str) {
        let message = format!("{} Job {} was deleted {when}", stage.label(), self.job_name(stage));
        self.fail(stage, StallReason::JobDeleted, message);
    }

    fn name_conflict(&mut self, job: &JobView) {
        let message = format!("a Job named {} exists and is not owned by this batch; it will not be adopted", job.name);
        self.stop = Some(Stop { reason: StallReason::JobNameConflict, message, terminal: false });
        self.requeue_in(CONFLICT_RECHECK);
    }

    /// A Job of ours that status does not name yet (we crashed between its create and the status
    /// write): it is the stage's Job.
    fn adopt(&mut self, stage: Stage, job: &JobView) {
        let entry = self
            .st
            .stage_mut(stage)
            .get_or_insert_with(|| Box::new(StageStatus { job_name: job.name.clone(), ..Default::default() }));
        entry.job_name = job.name.clone();
        entry.job_uid = Some(job.uid.clone());
        entry.state = StageState::Running;
        // The intent written before the create already says when the stage started; keeping it
        // leaves the UID the only change, which rides on the stage's next write.
        if entry.start_time.is_none() {
            entry.start_time = job.start_time.or(job.created).map(Time);
        }
    }

    /// No Job yet: record the stage as Running (written before the create, so a restart finds
    /// the intent and never plans a second Job under another name) and plan the create, unless
    /// the apiserver already refused it or the batch is suspended (then Pending). The new Job's
    /// UID is not worth a write of its own: it rides on the stage's next write.
    fn plan_create(&mut self, stage: Stage) {
        if let Some(message) = self.obs.rejection(stage) {
            let message = format!("the apiserver rejected the {} Job: {message}", stage.label());
            return self.fail(stage, StallReason::JobRejected, message);
        }
        let job_name = self.job_name(stage);
        let suspended = self.batch.spec.suspend;
        let state = if suspended { StageState::Pending } else { StageState::Running };
        // An intent already on record (the create did not happen, or its Job is not seen yet)
        // keeps its start time: planning it again changes nothing, so costs no write.
        let recorded = self.st.stage(stage).as_ref().filter(|s| s.job_name == job_name && s.job_uid.is_none());
        let start_time = match recorded {
            Some(s) if s.state == state => s.start_time.clone(),
            _ => (!suspended).then_some(Time(self.now)),
        };
        *self.st.stage_mut(stage) = Some(Box::new(StageStatus { job_name, state, start_time, ..Default::default() }));
        if suspended {
            return;
        }
        if stage == Stage::Workers && self.st.start_time.is_none() {
            self.st.start_time = Some(Time(self.now));
        }
        if stage == self.batch.spec.first_stage() {
            self.actions.push(Action::Validate);
        }
        self.actions.push(Action::Create(stage));
    }

    /// Keep a running Job's suspension in line with `spec.suspend`.
    pub(super) fn sync_running_job(&mut self, stage: Stage, job: &JobView) {
        let want = self.batch.spec.suspend;
        if job.suspended != want {
            self.actions.push(Action::Suspend { stage, suspend: want });
        }
    }
}
