//! Backup runs for straggling shards (`completion.backupStragglers`, the MapReduce backup-task
//! idea). Near the end of the worker stage and before the quorum, a shard that has run far longer
//! than its finished peers ([`stragglers`]) gets one backup run, a Job of its own
//! (`<batch>-workers-b<shard>`). The two race; the first to succeed counts, once:
//! - the backup first: the shard joins `succeededShards` and `backups.won`; once every shard has
//!   succeeded, the worker Job is stopped at once (its original run with it), otherwise the
//!   original stops with the worker Job when the stage ends (a Job cannot stop one index alone);
//! - the original first (or the backup fails): the shard joins `backups.lost` and the backup Job
//!   is deleted.
//!
//! Exactly once under restarts, like every other child: a shard is recorded in `backups.started`
//! in the status write that precedes its Job's create (so it never gets a second backup), and a
//! backup's outcome is recorded before its Job's outcome finalizer is released.

use std::time::Duration;

use super::{Action, EventNote, Planner};
use crate::api::{BackupStatus, EventReason, MAX_SHARDS, PredictionBatchStatus};
use crate::reconcile::observed::JobOutcome;
use crate::reconcile::ranges::IndexSet;
use crate::reconcile::shards::ShardLayout;
use crate::reconcile::stragglers::{BackupPolicy, stragglers};

/// The backup sets of a status: started, won, lost.
struct Sets {
    started: IndexSet,
    won: IndexSet,
    lost: IndexSet,
}

impl Sets {
    /// The sets of a status, clamped to the `n` shards there are (whatever the status says, and
    /// never beyond [`MAX_SHARDS`], as an invalid spec may claim more).
    fn of(st: &PredictionBatchStatus, n: u32) -> Self {
        let n = n.min(MAX_SHARDS as u32);
        let b = st.backups.clone().unwrap_or_default();
        let parse = |s: Option<String>| IndexSet::parse_opt(s.as_deref()).unwrap_or_default().clamp(n);
        Sets { started: parse(b.started), won: parse(b.won), lost: parse(b.lost) }
    }

    /// Racing: started, no outcome yet.
    fn racing(&self, shard: u32) -> bool {
        self.started.contains(shard) && !self.won.contains(shard) && !self.lost.contains(shard)
    }

    fn status(&self) -> Option<Box<BackupStatus>> {
        let text = |s: &IndexSet| Some(s.to_string()).filter(|s| !s.is_empty());
        (!self.started.is_empty()).then(|| {
            Box::new(BackupStatus { started: text(&self.started), won: text(&self.won), lost: text(&self.lost) })
        })
    }
}

fn add(set: &mut IndexSet, shard: u32) {
    set.insert_range(shard, shard);
}

impl Planner<'_> {
    /// The backups' outcomes, merged into the worker Job's shard sets: a backup that succeeded
    /// before the original counts its shard as succeeded (won); one that failed, was deleted, or
    /// whose original succeeded first has lost.
    pub(super) fn settle_backups(&mut self, mut succeeded: IndexSet, failed: IndexSet) -> (IndexSet, IndexSet) {
        if self.st.backups.is_none() {
            return (succeeded, failed);
        }
        let mut sets = Sets::of(&self.st, self.layout().shard_count());
        let obs = self.obs;
        for (&shard, job) in obs.backup_jobs.iter().filter(|(_, j)| j.owned) {
            if !sets.racing(shard) {
                continue;
            }
            match &job.outcome {
                JobOutcome::Succeeded { .. } if !succeeded.contains(shard) => {
                    add(&mut succeeded, shard);
                    add(&mut sets.won, shard);
                    let note = format!("shard {shard}: its backup run {} succeeded first; it counts once", job.name);
                    self.notes.push(EventNote { warning: false, reason: EventReason::BackupWon, note });
                }
                JobOutcome::Running if !job.deleting => {}
                _ => add(&mut sets.lost, shard),
            }
        }
        let original_won: Vec<u32> =
            sets.started.iter().filter(|s| sets.racing(*s) && succeeded.contains(*s)).collect();
        for shard in original_won {
            add(&mut sets.lost, shard);
        }
        self.st.backups = sets.status();
        let failed = IndexSet::from_indexes(failed.iter().filter(|i| !succeeded.contains(*i)));
        (succeeded, failed)
    }

    /// Some shard counts as succeeded by its backup run.
    pub(super) fn any_backup_won(&self) -> bool {
        self.st.backups.as_ref().is_some_and(|b| b.won.is_some())
    }

    /// Starts a backup for each new straggler (before the quorum is met), creates the Jobs of
    /// backups recorded but not yet seen (a crash between the status write and the create, or a
    /// cache behind it: the create is idempotent), and wakes when the next shard would become a
    /// straggler.
    pub(super) fn start_backups(&mut self, layout: ShardLayout, succeeded: &IndexSet, failed: &IndexSet) {
        let spec = &self.batch.spec;
        if !spec.completion.backup_stragglers || spec.suspend {
            return;
        }
        let n = layout.shard_count();
        let mut sets = Sets::of(&self.st, n);
        let missing: Vec<u32> = sets
            .started
            .iter()
            .filter(|s| sets.racing(*s) && !succeeded.contains(*s) && !self.obs.backup_jobs.contains_key(s))
            .collect();
        self.actions.extend(missing.into_iter().map(Action::CreateBackup));

        let Some(times) = &self.obs.shard_times else { return };
        if layout.meets_quorum(layout.items_in(succeeded), spec.completion.min_succeeded_percent) {
            return;
        }
        let policy = BackupPolicy::default();
        let unfinished = u32::try_from(u64::from(n).saturating_sub(succeeded.len() + failed.len())).unwrap_or(0);
        let now = self.now;
        let ran =
            |start: &k8s_openapi::jiff::Timestamp| Duration::try_from(now.duration_since(*start)).unwrap_or_default();
        let running: Vec<(u32, Duration)> = times
            .running
            .iter()
            .filter(|(s, _)| !sets.started.contains(**s) && !succeeded.contains(**s) && !failed.contains(**s))
            .map(|(s, start)| (*s, ran(start)))
            .collect();
        let picks = stragglers(&policy, &times.finished, &running, n, unfinished, sets.started.len() as usize);
        let limit = policy.limit(&times.finished).unwrap_or_default();
        for &shard in &picks {
            add(&mut sets.started, shard);
            self.actions.push(Action::CreateBackup(shard));
            let secs = running.iter().find(|(s, _)| *s == shard).map_or(0, |(_, d)| d.as_secs());
            let note = format!(
                "shard {shard} has run {secs}s, over {}s (twice the median of {} finished shards): started a backup run",
                limit.as_secs(),
                times.finished.len()
            );
            self.notes.push(EventNote { warning: false, reason: EventReason::BackupStarted, note });
        }
        self.st.backups = sets.status();
        // Look again when the next running shard would pass the limit.
        let budget_left = policy.budget(n) > sets.started.len() as usize;
        if budget_left && policy.limit(&times.finished).is_some() {
            let next = running.iter().filter(|(s, _)| !picks.contains(s)).map(|(_, d)| limit.saturating_sub(*d)).min();
            if let Some(wait) = next {
                self.requeue_in(wait + Duration::from_secs(1));
            }
        }
    }

    /// Outcome finalizers to release and backup runs to stop: a backup whose outcome is recorded
    /// (or whose stage is over) is released, and one still running after its shard was decided,
    /// its stage ended or the batch was suspended is deleted (a suspended batch runs no pod; the
    /// shard's original run, suspended with the worker Job, decides it).
    pub(super) fn backup_actions(&mut self) -> Vec<Action> {
        if self.obs.backup_jobs.is_empty() && self.st.backups.is_none() {
            return Vec::new();
        }
        let stage_over = self.stop.is_some()
            || self.st.phase.is_some_and(crate::api::Phase::is_terminal)
            || self.st.workers.as_ref().is_none_or(|w| w.state.is_finished());
        let mut sets = Sets::of(&self.st, self.layout().shard_count());
        if stage_over || self.batch.spec.suspend {
            // The stage's outcome is fixed (or the batch holds still): a racing backup is over.
            let racing: Vec<u32> = sets.started.iter().filter(|s| sets.racing(*s)).collect();
            for shard in racing {
                add(&mut sets.lost, shard);
            }
            self.st.backups = sets.status();
        }
        let mut actions = Vec::new();
        for (&shard, job) in self.obs.backup_jobs.iter().filter(|(_, j)| j.owned) {
            let decided = !sets.racing(shard);
            if let Some(index) = job.outcome_finalizer.filter(|_| decided) {
                actions.push(Action::ReleaseBackup { shard, uid: job.uid.clone(), index });
            }
            if decided && job.outcome == JobOutcome::Running && !job.deleting {
                actions.push(Action::StopBackup { shard, uid: job.uid.clone() });
            }
        }
        actions
    }
}
