//! Putting a plan's status on record, which is what makes its actions safe: the status (with a
//! stage's outcome) is written before the actions it enables, so a crash between the two never
//! repeats a stage. The compiler keeps that order: the only way to reach a plan's actions is the
//! [`StatusRecorded`] that [`record`] returns, and [`act`](super::act::act) takes a
//! [`Cleared`] action that only [`StatusRecorded::actions`] hands out.

use std::ops::Deref;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use super::fresh::{PROGRESS_WRITE_INTERVAL, last_write, remember};
use super::plan::{Action, Plan};
use super::publish::spawn_events;
use crate::api::{
    CONDITION_READY, CONDITION_STALLED, Phase, PredictionBatch, PredictionBatchStatus, Stage, StageState,
};
use crate::context::Context;
use crate::error::{Error, Retry};
use crate::labels::FIELD_MANAGER;
use crate::metrics::OutcomeLabels;

/// Proof that a plan's status is on record: written, confirmed current, or unchanged with
/// nothing to fence. Holds the plan's actions; nothing else gives them out.
pub struct StatusRecorded {
    actions: Vec<Action>,
    requeue_after: Option<Duration>,
}

/// One action of a plan whose status is on record.
#[derive(Clone, Copy, Debug)]
pub struct Cleared<'r>(&'r Action);

impl Deref for Cleared<'_> {
    type Target = Action;
    fn deref(&self) -> &Action {
        self.0
    }
}

impl StatusRecorded {
    pub fn actions(&self) -> impl Iterator<Item = Cleared<'_>> {
        self.actions.iter().map(Cleared)
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// How putting a status on record came out.
pub enum Recording {
    Recorded(StatusRecorded),
    /// Only counts moved and the last write was less than [`PROGRESS_WRITE_INTERVAL`] ago:
    /// write (and act) after this long instead.
    Coalesced(Duration),
    /// The apiserver refused the write as stale (409): re-read and plan again.
    Stale(Error),
}

/// Writes the plan's status to `batch` (which becomes the object as written) when it changed,
/// or confirms `batch` is current when an action depends on it (a no-op write conditional on
/// its resourceVersion).
pub async fn record(ctx: &Context, batch: &mut PredictionBatch, plan: Plan) -> Result<Recording, Error> {
    let changed = batch.status.as_ref() != Some(&plan.status);
    // Acting on a view that did not need a status write: prove the view is current first, by
    // the same resourceVersion-conditional write (a no-op for the apiserver when it is).
    let fence = !changed && plan.actions.iter().any(Action::needs_fence);
    if changed || fence {
        if plan.actions.is_empty() && progress_only(batch.status.as_ref(), &plan.status) {
            let since = last_write(ctx, batch).and_then(|t| PROGRESS_WRITE_INTERVAL.checked_sub(t.elapsed()));
            if let Some(wait) = since {
                debug!(?wait, "coalescing a progress-only status change");
                return Ok(Recording::Coalesced(wait));
            }
        }
        match write_status(ctx, batch, &plan, changed).await {
            Ok(written) => *batch = written,
            Err(e) if e.retry() == Retry::Soon => return Ok(Recording::Stale(e)),
            Err(e) => return Err(e),
        }
        if changed {
            remember(ctx, batch);
            spawn_events(ctx, batch, &plan.events);
        }
    }
    Ok(Recording::Recorded(StatusRecorded { actions: plan.actions, requeue_after: plan.requeue_after }))
}

/// True when only counts and messages moved: no phase, stage, condition-status or backup change.
fn progress_only(prev: Option<&PredictionBatchStatus>, next: &PredictionBatchStatus) -> bool {
    let Some(prev) = prev else { return false };
    let shape = |s: &PredictionBatchStatus| {
        let stages: Vec<_> =
            Stage::ALL.iter().map(|st| s.stage(*st).as_ref().map(|st| (st.state, st.job_uid.clone()))).collect();
        let conditions: Vec<_> =
            s.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect();
        (s.phase, stages, s.quorum_time.clone(), s.observed_generation, conditions, s.backups.clone())
    };
    shape(prev) == shape(next)
}

/// Server-side apply of the whole status, conditional on the resourceVersion we planned from:
/// a stale view (another replica, a lagging cache) gets 409 and is retried, never written over
/// newer state.
async fn write_status(
    ctx: &Context,
    batch: &PredictionBatch,
    plan: &Plan,
    changed: bool,
) -> Result<PredictionBatch, Error> {
    let api: Api<PredictionBatch> = Api::namespaced(ctx.client.clone(), &batch.namespace().unwrap_or_default());
    let mut status = serde_json::to_value(&plan.status).expect("status serializes");
    // Conditions owned by other writers (the mirror's MirrorSynced) are theirs to apply.
    if let Some(conds) = status.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        conds.retain(|c| c["type"] != crate::mirror::CONDITION_MIRROR_SYNCED);
    }
    let patch = json!({
        "apiVersion": PredictionBatch::api_version(&()),
        "kind": PredictionBatch::kind(&()),
        "metadata": { "name": batch.name_any(), "resourceVersion": batch.resource_version() },
        "status": status,
    });
    let written = api
        .patch_status(&batch.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(if changed { "write status" } else { "confirm status is current" }, e))?;
    if !changed {
        debug!(resource_version = written.resource_version(), "status is current; acting");
        return Ok(written);
    }
    ctx.metrics.status_writes.inc();
    let phase = plan.status.phase.map(|p| p.as_str()).unwrap_or("-");
    info!(phase, progress = plan.status.progress.as_deref().unwrap_or("-"), "status written");
    observe_stage_durations(ctx, batch.status.as_ref(), &plan.status);
    count_completion(ctx, batch.status.as_ref(), &plan.status);
    Ok(written)
}

/// One more `prediction_batch_completions_total` when this write ends the batch.
fn count_completion(ctx: &Context, prev: Option<&PredictionBatchStatus>, next: &PredictionBatchStatus) {
    let Some(outcome) = next.phase.filter(|p| p.is_terminal()) else { return };
    if prev.and_then(|p| p.phase) == Some(outcome) {
        return;
    }
    let kind = if outcome == Phase::Failed { CONDITION_STALLED } else { CONDITION_READY };
    let reason = next.conditions.iter().find(|c| c.type_ == kind).map(|c| c.reason.clone()).unwrap_or_default();
    ctx.metrics.completions.get_or_create(&OutcomeLabels { outcome: outcome.as_str(), reason }).inc();
}

fn observe_stage_durations(ctx: &Context, prev: Option<&PredictionBatchStatus>, next: &PredictionBatchStatus) {
    for stage in Stage::ALL {
        let before = prev.and_then(|p| p.stage(stage).as_ref()).map(|s| s.state);
        let Some(after) = next.stage(stage) else { continue };
        if after.state == StageState::Succeeded
            && before != Some(StageState::Succeeded)
            && let (Some(a), Some(b)) = (&after.start_time, &after.completion_time)
        {
            let secs = b.0.duration_since(a.0).as_secs_f64().max(0.0);
            ctx.metrics
                .stage_duration
                .get_or_create(&crate::metrics::StageLabel { stage: stage.label() })
                .observe(secs);
        }
    }
}
