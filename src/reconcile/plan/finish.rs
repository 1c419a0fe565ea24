//! The end of a pass: the batch's phase, the TTL of a finished batch's Jobs, the outcome
//! finalizers to release, and the [`Plan`] itself (status with conditions, actions, events,
//! when to look again).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::merge_conditions;
use super::events::transition_events;
use super::{Action, Plan, Planner};
use crate::api::{CONDITION_AT_RISK, CONDITION_PODS_STUCK, Phase, Stage, StageState, StageStatus};
use crate::reconcile::deadline::add_secs;
use crate::reconcile::shards::ShardLayout;

impl Planner<'_> {
    /// A finished batch: a failed one keeps no pod running; once `ttlSecondsAfterFinished` has
    /// passed, its Jobs (ours only) are deleted.
    pub(super) fn finished_batch(&mut self) {
        if self.st.phase == Some(Phase::Failed) {
            self.stop_leftover_pods();
        }
        let Some(ttl) = self.batch.spec.ttl_seconds_after_finished else { return };
        let owned: Vec<(Stage, String)> = Stage::ALL
            .into_iter()
            .filter_map(|s| self.obs.job(s).filter(|j| j.owned && !j.deleting).map(|j| (s, j.uid.clone())))
            .collect();
        // Every other Job it owns goes too: earlier attempts', rerun shards', backup runs'.
        let current: Vec<&str> = Stage::ALL.into_iter().filter_map(|s| Some(self.obs.job(s)?.name.as_str())).collect();
        let mut others: Vec<(String, String)> =
            self.obs.leftover_jobs.iter().filter(|(name, _)| !current.contains(&name.as_str())).cloned().collect();
        let typed = self.obs.shard_jobs.values().chain(self.obs.backup_jobs.values());
        others.extend(typed.filter(|j| j.owned && !j.deleting).map(|j| (j.name.clone(), j.uid.clone())));
        others.sort();
        others.dedup();
        if owned.is_empty() && others.is_empty() {
            return;
        }
        let done = self.st.completion_time.as_ref().map_or(self.now, |t| t.0);
        let expiry = add_secs(done, ttl.max(0));
        if self.now >= expiry {
            self.actions.retain(|a| !matches!(a, Action::Suspend { .. }));
            self.actions.extend(owned.into_iter().map(|(stage, uid)| Action::Delete { stage, uid }));
            self.actions.extend(others.into_iter().map(|(name, uid)| Action::DeleteJob { name, uid }));
        } else {
            self.wake_at(expiry);
        }
    }

    /// The phase from the stages' states. Phases never move backwards (a resumed batch returns
    /// to where it was).
    pub(super) fn settle_phase(&mut self) {
        if self.st.phase == Some(Phase::Failed) {
            return;
        }
        if Stage::ALL.into_iter().all(|s| self.done_or_skipped(s)) {
            self.st.phase = Some(Phase::Succeeded);
            let last = Stage::ALL.into_iter().rev().find_map(|s| self.st.stage(s).as_ref()?.completion_time.clone());
            self.st.completion_time = Some(last.unwrap_or(Time(self.now)));
            return;
        }
        let in_flight = |s: &Option<Box<StageStatus>>| s.as_ref().is_some_and(|s| !s.state.is_finished());
        let phase = if self.batch.spec.suspend {
            Phase::Suspended
        } else if in_flight(&self.st.export) {
            Phase::Exporting
        } else if in_flight(&self.st.consolidation) {
            Phase::Consolidating
        } else if self.st.workers.as_ref().is_some_and(|w| w.job_uid.is_some() || w.state == StageState::Running) {
            Phase::Running
        } else if self.st.loader.as_ref().is_some_and(|l| l.job_uid.is_some() || l.state == StageState::Running) {
            Phase::Loading
        } else {
            Phase::Pending
        };
        // A stored terminal phase means a rerun just started: its phases start over.
        let prev = self.prev.phase.filter(|p| *p != Phase::Suspended && !p.is_terminal());
        self.st.phase = Some(match prev {
            Some(p) if phase != Phase::Suspended && p > phase => p,
            _ => phase,
        });
    }

    pub(super) fn finish(mut self, layout: ShardLayout) -> Plan {
        let generation = self.batch.metadata.generation;
        self.st.observed_generation = generation;
        self.settle_timing();
        self.stuck_pods();
        let wanted = self.conditions(layout);
        // Conditions that are there only while they have something to say.
        let absent: Vec<&str> =
            [CONDITION_AT_RISK, CONDITION_PODS_STUCK].into_iter().filter(|t| !wanted.iter().any(|w| w.is(t))).collect();
        self.st.conditions = merge_conditions(&self.prev.conditions, wanted, generation, self.now);
        self.st.conditions.retain(|c| !absent.contains(&c.type_.as_str()));
        self.close_attempt();
        let mut events = std::mem::take(&mut self.notes);
        events.extend(transition_events(&self.prev, &self.st, self.stop.as_ref()));
        let backups = self.backup_actions();
        // The next stage's Job (and the dry run that must precede it) first: it is what the
        // batch waits for, and releasing finalizers can wait one round trip longer.
        let (urgent, rest): (Vec<Action>, Vec<Action>) = std::mem::take(&mut self.actions)
            .into_iter()
            .partition(|a| matches!(a, Action::Validate | Action::Create(_)));
        let mut actions = Vec::new();
        let releases = self.releases().into_iter().chain(self.shard_releases()).chain(backups);
        for a in urgent.into_iter().chain(releases.collect::<Vec<_>>()).chain(rest) {
            // A rule may plan what another already did: once is enough.
            if !actions.contains(&a) {
                actions.push(a);
            }
        }
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
                let holding = self
                    .st
                    .stage(stage)
                    .as_ref()
                    .is_some_and(|s| s.job_uid.as_deref() == Some(job.uid.as_str()) && !s.state.is_finished());
                (!holding).then(|| Action::Release { stage, uid: job.uid.clone(), index })
            })
            .collect()
    }
}
