//! The worker stage of an attempt that reruns failed shards: each shard runs as a Job of its own
//! (`<batch>-r<attempt>-workers-<shard>`), so its pod gets its real index as `SHARD_INDEX`. The
//! set of shards is fixed in the status write that starts the attempt, before any of these Jobs
//! exists; a shard's outcome is recorded (succeeded into `succeededShards`, failed into the
//! attempt's `failedShards`) before its Job's outcome finalizer is released, so no shard runs
//! twice in one attempt. At most `parallelism` shard Jobs run at once.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Action, Planner};
use crate::api::{RerunFrom, Stage, StageState, StageStatus};
use crate::reconcile::observed::JobOutcome;
use crate::reconcile::ranges::IndexSet;
use crate::reconcile::shards::ShardLayout;

impl Planner<'_> {
    /// The shards the current attempt reruns, when it is a FailedShards attempt with some.
    pub(super) fn rerun_shards(&self) -> Option<IndexSet> {
        let attempt = self.st.attempts.last().filter(|a| a.from == Some(RerunFrom::FailedShards))?;
        IndexSet::parse_opt(attempt.shards.as_deref()).ok().filter(|s| !s.is_empty())
    }

    pub(super) fn rerun_workers(&mut self, layout: ShardLayout, shards: IndexSet) {
        let name = self.name().to_string();
        let attempt = self.st.attempt();
        let now = Time(self.now);
        let workers = self.st.workers.get_or_insert_with(|| {
            Box::new(StageStatus {
                job_name: Stage::Workers.job_name_in(&name, attempt),
                state: StageState::Running,
                start_time: Some(now),
                ..Default::default()
            })
        });
        if workers.state.is_finished() {
            return;
        }
        let n = layout.shard_count();
        let recorded = |s: Option<&str>| IndexSet::parse_opt(s).unwrap_or_default().clamp(n);
        let mut succeeded = recorded(self.st.succeeded_shards.as_deref());
        let mut failed = recorded(self.st.attempts.last().and_then(|a| a.failed_shards.as_deref()));
        let mut running = Vec::new();
        for (&i, job) in self.obs.shard_jobs.iter().filter(|(i, j)| shards.contains(**i) && j.owned) {
            match &job.outcome {
                JobOutcome::Succeeded { .. } => succeeded.insert_range(i, i),
                JobOutcome::Failed { .. } => failed.insert_range(i, i),
                // Deleted while it runs: it can never report, and is not run again.
                JobOutcome::Running if job.deleting => failed.insert_range(i, i),
                JobOutcome::Running => running.push(i),
            }
        }
        let failed = IndexSet::from_indexes(failed.iter().filter(|i| !succeeded.contains(*i)));
        let running: Vec<u32> =
            running.into_iter().filter(|i| !succeeded.contains(*i) && !failed.contains(*i)).collect();
        let pending: Vec<u32> =
            shards.iter().filter(|i| !succeeded.contains(*i) && !failed.contains(*i) && !running.contains(i)).collect();
        if let Some(a) = self.st.attempts.last_mut() {
            a.failed_shards = Some(failed.to_string()).filter(|s| !s.is_empty());
        }
        if pending.is_empty() && running.is_empty() {
            // Every rerun shard has an outcome: the stage ends, by the same quorum as the first run.
            self.end_workers(layout, &succeeded, self.now);
            return;
        }
        self.record_shards(layout, &succeeded, &failed, running.len() as u32);
        // A suspended batch runs no pod: its running shard Jobs are suspended (and resumed with it).
        let suspend = self.batch.spec.suspend;
        let obs = self.obs;
        let out_of_step = running.iter().filter(|i| obs.shard_jobs.get(*i).is_some_and(|j| j.suspended != suspend));
        let syncs: Vec<Action> = out_of_step.map(|&shard| Action::SuspendShard { shard, suspend }).collect();
        self.actions.extend(syncs);
        if suspend {
            return;
        }
        let room = (self.batch.spec.parallelism as usize).saturating_sub(running.len());
        let missing = pending.into_iter().filter(|i| !self.obs.shard_jobs.contains_key(i));
        self.actions.extend(missing.take(room).map(Action::CreateShard));
    }

    /// Our outcome finalizer leaves a shard's Job once the shard's outcome is in the status.
    pub(super) fn shard_releases(&self) -> Vec<Action> {
        let succeeded = IndexSet::parse_opt(self.st.succeeded_shards.as_deref()).unwrap_or_default();
        let attempt = self.st.attempts.last();
        let failed = IndexSet::parse_opt(attempt.and_then(|a| a.failed_shards.as_deref())).unwrap_or_default();
        let ended = self.st.workers.as_ref().is_some_and(|w| w.state.is_finished());
        self.obs
            .shard_jobs
            .iter()
            .filter(|(i, j)| j.owned && (ended || succeeded.contains(**i) || failed.contains(**i)))
            .filter_map(|(&shard, j)| {
                Some(Action::ReleaseShard { shard, uid: j.uid.clone(), index: j.outcome_finalizer? })
            })
            .collect()
    }
}
