//! Reruns: a finished batch whose `spec.rerun.token` differs from the one its latest attempt
//! answered starts a new attempt from `spec.rerun.from`. The attempt is started by one status
//! write (the attempt recorded, the stages it reruns cleared and the first of them Pending), and
//! its Jobs have names of their own (`<batch>-r<attempt>-<stage>`), so it is exactly-once under
//! restarts like the first run: the same status-before-create order, the same adoption by name.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{EventNote, Planner};
use crate::api::{
    AttemptStatus, CONDITION_READY, CONDITION_STALLED, EventReason, Phase, PredictionBatchStatus, RerunFrom, Stage,
};
use crate::reconcile::ranges::IndexSet;

/// Attempts kept in `status.attempts` (the oldest go first).
pub const MAX_ATTEMPTS: usize = 10;

/// The stage a rerun starts from.
pub fn first_rerun_stage(from: RerunFrom) -> Stage {
    match from {
        RerunFrom::FailedShards => Stage::Workers,
        RerunFrom::Consolidation => Stage::Consolidation,
        RerunFrom::Export => Stage::Export,
    }
}

impl Planner<'_> {
    /// A new batch answers the token it was created with: only a later change reruns it.
    pub(super) fn record_initial_token(&mut self) {
        if self.prev.phase.is_none() && self.st.rerun_token.is_none() {
            self.st.rerun_token = self.batch.spec.rerun.as_ref().map(|r| r.token.clone());
        }
    }

    /// On a finished batch: starts the attempt a new `spec.rerun.token` asks for. True when one
    /// started (the pass then plans it like any running batch). A rerun that cannot run (a stage
    /// before its start did not succeed) is refused with a Warning event; its token counts as
    /// answered either way, so applying it again does nothing.
    pub(super) fn start_requested_attempt(&mut self) -> bool {
        let Some(rerun) = self.batch.spec.rerun.clone() else { return false };
        if self.st.rerun_token.as_deref() == Some(rerun.token.as_str()) {
            return false;
        }
        let answered = self.st.rerun_token.replace(rerun.token.clone());
        let layout = self.layout();
        // The shards to run again: every one that did not succeed (all, if the workers never ran).
        let shards = if rerun.from == RerunFrom::FailedShards && (layout.target > 0 || self.batch.spec.loader.is_none())
        {
            let succeeded = IndexSet::parse_opt(self.st.succeeded_shards.as_deref()).unwrap_or_default();
            succeeded.clamp(layout.shard_count()).complement(layout.shard_count())
        } else {
            IndexSet::new()
        };
        let from = match first_rerun_stage(rerun.from) {
            // Nothing failed: consolidation and export run again.
            Stage::Workers if shards.is_empty() => {
                Stage::AFTER_WORKERS.into_iter().find(|s| self.batch.spec.has_stage(*s)).unwrap_or(Stage::Export)
            }
            stage => stage,
        };
        let before = Stage::ALL.into_iter().filter(|s| *s < from);
        if let Some(missing) = before.clone().find(|s| !self.done_or_skipped(*s)) {
            let note = format!(
                "rerun {:?} refused: it starts at {}, but {} did not succeed (create a new batch instead)",
                rerun.token,
                from.label(),
                missing.label()
            );
            self.notes.push(EventNote { warning: true, reason: EventReason::RerunRefused, note });
            return false;
        }
        if !self.batch.spec.has_stage(from) {
            let note = format!("rerun {:?} refused: the batch has no {} stage", rerun.token, from.label());
            self.notes.push(EventNote { warning: true, reason: EventReason::RerunRefused, note });
            return false;
        }
        if self.st.attempts.is_empty() {
            let first = closed_attempt(&self.st, AttemptStatus { attempt: 1, token: answered, ..Default::default() });
            self.st.attempts.push(first);
        }
        let attempt = self.st.attempt() + 1;
        self.st.attempts.push(AttemptStatus {
            attempt,
            token: Some(rerun.token.clone()),
            from: Some(rerun.from),
            start_time: Some(Time(self.now)),
            shards: Some(shards.to_string()).filter(|s| !s.is_empty()),
            ..Default::default()
        });
        let excess = self.st.attempts.len().saturating_sub(MAX_ATTEMPTS);
        self.st.attempts.drain(..excess);
        for stage in Stage::ALL.into_iter().filter(|s| *s >= from) {
            *self.st.stage_mut(stage) = None;
        }
        self.st.phase = None;
        self.st.completion_time = None;
        self.st.duration = None;
        self.st.eta = None;
        let what =
            if shards.is_empty() { from.label().to_string() } else { format!("shards {shards} and what follows") };
        let note = format!("attempt {attempt} (token {:?}): running {what} again", rerun.token);
        self.notes.push(EventNote { warning: false, reason: EventReason::RerunStarted, note });
        true
    }

    /// The attempt that just ended gets its outcome, once.
    pub(super) fn close_attempt(&mut self) {
        let ended = self.st.phase.is_some_and(Phase::is_terminal);
        let Some(last) = self.st.attempts.last().filter(|a| ended && a.outcome.is_none()).cloned() else { return };
        let closed = closed_attempt(&self.st, last);
        if let Some(slot) = self.st.attempts.last_mut() {
            *slot = closed;
        }
    }
}

/// `attempt` with the outcome, end and figures of the batch as `st` has them.
fn closed_attempt(st: &PredictionBatchStatus, attempt: AttemptStatus) -> AttemptStatus {
    let outcome = st.phase.filter(|p| p.is_terminal());
    let kind = if outcome == Some(Phase::Failed) { CONDITION_STALLED } else { CONDITION_READY };
    let reason = st.conditions.iter().find(|c| c.type_ == kind).map(|c| c.reason.clone());
    let items = st.items.clone().unwrap_or_default();
    AttemptStatus {
        start_time: attempt.start_time.or_else(|| st.start_time.clone()),
        completion_time: st.completion_time.clone(),
        outcome,
        reason,
        succeeded_items: items.succeeded,
        failed_items: items.failed,
        ..attempt
    }
}
