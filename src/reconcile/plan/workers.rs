//! The worker stage: one Indexed Job of shards. Its completed and failed indexes are counted and
//! recorded (counts never shrink), the [`Quorum`] decides when the stage may end, and an early end
//! suspends the Job and waits (bounded) for it to confirm, so consolidation sees a fixed set.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::quorum::Quorum;
use super::{Action, Planner};
use crate::api::{ItemCounts, ShardCounts, Stage, StageState, StallReason};
use crate::reconcile::deadline::add_secs;
use crate::reconcile::observed::{JobOutcome, JobView};
use crate::reconcile::ranges::IndexSet;
use crate::reconcile::shards::ShardLayout;

/// Longest wait for the worker Job to confirm an early stop (a node that never confirms its pods'
/// deletion must not hold the batch); `completeBy` cuts it shorter.
pub const STOP_TIMEOUT_SECS: i64 = 60;

impl Planner<'_> {
    pub(super) fn workers(&mut self, layout: ShardLayout, complete_by: Option<Timestamp>) {
        let n = layout.shard_count();
        self.st.shards.get_or_insert_with(|| ShardCounts { total: n, ..Default::default() }).total = n;
        self.st.items.get_or_insert_with(|| ItemCounts { target: layout.target, ..Default::default() }).target =
            layout.target;
        if let Some(shards) = self.rerun_shards() {
            return self.rerun_workers(layout, shards);
        }

        let Some(job) = self.attach(Stage::Workers) else { return };
        if self.done(Stage::Workers) {
            return;
        }
        if self.st.start_time.is_none() {
            self.st.start_time = job.created.or(job.start_time).map(Time);
        }
        let (succeeded, failed) = self.shards_of(job, n);
        let (succeeded, failed) = self.settle_backups(succeeded, failed);
        self.record_shards(layout, &succeeded, &failed, job.active);
        self.estimate_eta(layout, &succeeded, &failed);

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
        if self.judge_quorum(layout, &succeeded, &failed, complete_by) {
            return;
        }
        self.start_backups(layout, &succeeded, &failed);
        self.sync_running_job(Stage::Workers, job);
        let want = i32::try_from(self.batch.spec.parallelism.min(n)).unwrap_or(i32::MAX);
        if job.parallelism != Some(want) && !job.suspended {
            self.actions.push(Action::Parallelism(want));
        }
    }

    /// The Job's succeeded and failed shards, merged with what status already recorded (also
    /// when the Job reports something unreadable); a shard that succeeded is not failed.
    fn shards_of(&self, job: &JobView, n: u32) -> (IndexSet, IndexSet) {
        let recorded = |s: &Option<String>| IndexSet::parse_opt(s.as_deref()).unwrap_or_default().clamp(n);
        let (prev_succeeded, prev_failed) = (recorded(&self.prev.succeeded_shards), recorded(&self.prev.failed_shards));
        let succeeded = IndexSet::parse_opt(job.completed_indexes.as_deref())
            .map_or_else(|_| prev_succeeded.clone(), |s| s.clamp(n).union(&prev_succeeded));
        let failed = IndexSet::parse_opt(job.failed_indexes.as_deref())
            .map_or_else(|_| prev_failed.clone(), |s| s.clamp(n).union(&prev_failed));
        let failed = IndexSet::from_indexes(failed.iter().filter(|i| !succeeded.contains(*i)));
        (succeeded, failed)
    }

    /// Applies the [`Quorum`] to a running worker stage; true when it ended or failed the stage.
    fn judge_quorum(
        &mut self,
        layout: ShardLayout,
        succeeded: &IndexSet,
        failed: &IndexSet,
        complete_by: Option<Timestamp>,
    ) -> bool {
        let quorum = Quorum::new(&self.batch.spec, layout, self.st.grace_paused_seconds, complete_by);
        let pct = quorum.percent;
        let (failed_items, succeeded_items) = (layout.items_in(failed), layout.items_in(succeeded));
        if !quorum.reachable(failed_items) {
            let message = format!(
                "{failed_items} of {} items failed (shards {failed}); {pct}% can no longer succeed",
                layout.target
            );
            self.fail(Stage::Workers, StallReason::QuorumUnreachable, message);
            return true;
        }
        if quorum.met(succeeded_items) {
            let since = self.st.quorum_time.get_or_insert(Time(self.now)).0;
            if succeeded.len() == u64::from(layout.shard_count()) && self.any_backup_won() {
                // Only the original runs of shards their backups won are left: nothing to wait for.
                self.begin_stop(format!(
                    "every shard succeeded ({succeeded_items}/{} items), some by a backup run",
                    layout.target
                ));
                return true;
            }
            if let Some((end, why)) = quorum.stage_end(since) {
                if self.now >= end {
                    self.begin_stop(format!("quorum met ({succeeded_items}/{} items), {why}", layout.target));
                    return true;
                }
                self.wake_at(end);
            }
        } else if let Some(t) = complete_by {
            if self.now >= t {
                let message = format!(
                    "completeBy {t} passed with {succeeded_items}/{} items, below the {pct}% quorum",
                    layout.target
                );
                self.fail(Stage::Workers, StallReason::DeadlineExceeded, message);
                return true;
            }
            self.wake_at(t);
        }
        false
    }

    pub(super) fn record_shards(&mut self, layout: ShardLayout, succeeded: &IndexSet, failed: &IndexSet, active: u32) {
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
        let Some(w) = self.st.workers.as_mut() else { return };
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
        let now = Time(self.now);
        let Some(w) = self.st.workers.as_mut() else { return };
        let began = w.stop_time.get_or_insert(now).0;
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
        let at = match &job.outcome {
            JobOutcome::Succeeded { at: Some(t) } | JobOutcome::Failed { at: Some(t), .. } => *t,
            _ => self.now,
        };
        if self.end_workers(layout, succeeded, at) && job.has_pods() && !job.suspended {
            // Stragglers of a Job the Job controller already ended (e.g. success policy).
            self.actions.push(Action::Suspend { stage: Stage::Workers, suspend: true });
        }
    }

    /// The worker stage is over: a shard that did not succeed counts as failed, and the quorum
    /// decides whether the stage succeeded (true) or failed the batch.
    pub(super) fn end_workers(&mut self, layout: ShardLayout, succeeded: &IndexSet, at: Timestamp) -> bool {
        let failed = succeeded.complement(layout.shard_count());
        self.record_shards(layout, succeeded, &failed, 0);
        let pct = self.batch.spec.completion.min_succeeded_percent;
        let succeeded_items = layout.items_in(succeeded);
        if !layout.meets_quorum(succeeded_items, pct) {
            let message = format!(
                "{succeeded_items}/{} items succeeded, below the {pct}% quorum (failed shards: {failed})",
                layout.target
            );
            self.fail(Stage::Workers, StallReason::QuorumNotMet, message);
            return false;
        }
        let Some(w) = self.st.workers.as_mut() else { return false };
        w.state = StageState::Succeeded;
        w.completion_time = Some(Time(at));
        w.message = Some(format!("{succeeded_items}/{} items succeeded", layout.target));
        true
    }
}
