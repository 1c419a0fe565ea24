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
use crate::error::{Error, Retry, call_twice};
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
    /// Only counts moved and the last write was less than [`PROGRESS_WRITE_INTERVAL`] ago
    /// ([`ACTIVITY_WRITE_INTERVAL`] when only the running count moved,
    /// [`TRANSITION_PENDING_HOLD`] while the stage's outcome is due): write (and act) after this
    /// long instead.
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
        if plan.actions.is_empty() {
            match worth(batch.status.as_ref(), &plan.status) {
                Worth::Transition => {}
                Worth::Incidental => {
                    debug!("only a new Job's UID to record; it rides on the stage's next write");
                    return Ok(Recording::Recorded(StatusRecorded {
                        actions: vec![],
                        requeue_after: plan.requeue_after,
                    }));
                }
                worth @ (Worth::Progress | Worth::Activity) => {
                    let interval =
                        coalescing_interval(worth, batch.status.as_ref(), &plan.status, jiff::Timestamp::now());
                    let since = last_write(ctx, batch).and_then(|t| interval.checked_sub(t.elapsed()));
                    if let Some(wait) = since {
                        debug!(?wait, "coalescing a progress-only status change");
                        return Ok(Recording::Coalesced(wait));
                    }
                }
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

/// While every shard has finished, or the stage's ETA says the rest will have within a
/// [`PROGRESS_WRITE_INTERVAL`], the worker stage's outcome is due within moments and will carry
/// the counts: a progress write then only competes with that transition (and is one more write
/// for the batch). Held this long since the last write, it goes out if the estimate was wrong.
pub const TRANSITION_PENDING_HOLD: Duration = Duration::from_secs(10);

/// What a status change is worth writing for, with no action waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Worth {
    /// Only a new Job's UID: every pass re-derives it from the Job (by its deterministic name),
    /// so it waits for the stage's next write.
    Incidental,
    /// No shard finished, only how many run (and what follows from it): written at most every
    /// [`ACTIVITY_WRITE_INTERVAL`]; a short stage's outcome carries it.
    Activity,
    /// Counts, messages, the ETA: written at most every [`PROGRESS_WRITE_INTERVAL`].
    Progress,
    /// A phase, stage state, condition or backup changed: written now.
    Transition,
}

fn worth(prev: Option<&PredictionBatchStatus>, next: &PredictionBatchStatus) -> Worth {
    let Some(prev) = prev else { return Worth::Transition };
    // A UID newly learned is not a transition; one replaced or dropped is.
    let mut next_known = next.clone();
    for stage in Stage::ALL {
        let had = prev.stage(stage).as_ref().and_then(|s| s.job_uid.clone());
        if let Some(s) = next_known.stage_mut(stage).as_mut()
            && had.is_none()
        {
            s.job_uid = None;
        }
    }
    if &next_known == prev {
        return Worth::Incidental;
    }
    // The quorum met by every shard is the stage's outcome, moments away: that write records it.
    let all_succeeded = next.shards.as_ref().is_some_and(|s| s.total > 0 && s.succeeded == s.total);
    let shape = |s: &PredictionBatchStatus| {
        let stages: Vec<_> =
            Stage::ALL.iter().map(|st| s.stage(*st).as_ref().map(|st| (st.state, st.job_uid.clone()))).collect();
        let conditions: Vec<_> =
            s.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect();
        let quorum = if all_succeeded { None } else { s.quorum_time.clone() };
        (s.phase, stages, quorum, s.observed_generation, conditions, s.backups.clone())
    };
    if shape(prev) != shape(&next_known) {
        return Worth::Transition;
    }
    // Pods starting or ending, the Job's counts seen for the first time, with no shard finished
    // since the last write: what changed (the running count, the `0/20` progress, the ETA's
    // window, the messages quoting them) follows from the finished shards, which did not move.
    if finished_shards(Some(prev)) == finished_shards(Some(&next_known)) && prev.stuck_pods == next_known.stuck_pods {
        Worth::Activity
    } else {
        Worth::Progress
    }
}

/// How long after the last write a status change worth `worth` (progress or activity) waits.
fn coalescing_interval(
    worth: Worth,
    prev: Option<&PredictionBatchStatus>,
    next: &PredictionBatchStatus,
    now: jiff::Timestamp,
) -> Duration {
    if transition_pending(next, now) {
        TRANSITION_PENDING_HOLD
    } else if worth == Worth::Activity {
        ACTIVITY_WRITE_INTERVAL
    } else if finished_shards(prev) == (0, 0) {
        FIRST_PROGRESS_AFTER
    } else {
        PROGRESS_WRITE_INTERVAL
    }
}

/// Shards succeeded and failed as `status` has them (none when it has no counts yet).
fn finished_shards(status: Option<&PredictionBatchStatus>) -> (u32, u32) {
    status.and_then(|s| s.shards.as_ref()).map_or((0, 0), |c| (c.succeeded, c.failed))
}

/// The first shards finishing are written this long after the last write (the stage's start,
/// as a rule), then progress every [`PROGRESS_WRITE_INTERVAL`]: a stage that ends within it
/// (most of a short batch's) writes no progress of its own, its outcome carries the counts.
pub const FIRST_PROGRESS_AFTER: Duration = Duration::from_secs(10);

/// A change of only the running shards' count is written when the last write is this old: a
/// stage of long shards still shows its pods running within seconds, and a short stage (the
/// running count moves as its pods start, seconds before they finish) writes none of its own.
pub const ACTIVITY_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// The worker stage runs and every shard has finished, or is expected to (by `status.eta`)
/// before another progress write would be due at `now`: its outcome is the next write.
fn transition_pending(next: &PredictionBatchStatus, now: jiff::Timestamp) -> bool {
    let running = next.workers.as_ref().is_some_and(|w| w.state == StageState::Running);
    let shards = next.shards.as_ref();
    let all_finished = shards.is_some_and(|s| s.total > 0 && s.succeeded + s.failed >= s.total);
    let soon = next
        .eta
        .as_ref()
        .and_then(|e| e.completion_time.as_ref())
        .is_some_and(|t| t.0.duration_since(now).as_secs_f64() <= PROGRESS_WRITE_INTERVAL.as_secs_f64());
    running && (all_finished || soon)
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
    let (name, params, apply) = (batch.name_any(), PatchParams::apply(FIELD_MANAGER).force(), Patch::Apply(&patch));
    let written = call_twice(|| api.patch_status(&name, &params, &apply))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ShardCounts, StageStatus};

    fn running(uid: Option<&str>, succeeded: u32, failed: u32) -> PredictionBatchStatus {
        PredictionBatchStatus {
            workers: Some(Box::new(StageStatus {
                job_name: "b-workers".into(),
                job_uid: uid.map(str::to_string),
                state: StageState::Running,
                ..Default::default()
            })),
            shards: Some(ShardCounts { total: 4, succeeded, failed, active: 4 - succeeded - failed }),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_uid_alone_is_incidental_but_a_replaced_one_is_a_transition() {
        let intent = running(None, 0, 0);
        assert_eq!(worth(Some(&intent), &running(Some("u1"), 0, 0)), Worth::Incidental);
        assert_eq!(worth(Some(&intent), &running(Some("u1"), 1, 0)), Worth::Progress, "it rides on progress");
        assert_eq!(worth(Some(&running(Some("u1"), 0, 0)), &running(Some("u2"), 0, 0)), Worth::Transition);
        assert_eq!(worth(Some(&running(Some("u1"), 0, 0)), &running(None, 0, 0)), Worth::Transition);
        assert_eq!(worth(None, &intent), Worth::Transition, "the first status is always written");
    }

    #[test]
    fn the_first_finished_shards_wait_longer_than_later_progress() {
        let (none, some) = (running(Some("u"), 0, 0), running(Some("u"), 1, 0));
        let far = |mut st: PredictionBatchStatus| {
            st.eta = Some(Box::new(crate::api::EtaStatus {
                completion_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    now().checked_add(jiff::SignedDuration::from_secs(60)).unwrap(),
                )),
                ..Default::default()
            }));
            st
        };
        let interval =
            |prev: &PredictionBatchStatus, next| coalescing_interval(Worth::Progress, Some(prev), next, now());
        let (first, later) = (far(some.clone()), far(running(Some("u"), 2, 0)));
        assert_eq!(interval(&none, &first), FIRST_PROGRESS_AFTER);
        assert_eq!(interval(&some, &later), PROGRESS_WRITE_INTERVAL);
        assert_eq!(interval(&some, &running(Some("u"), 3, 1)), TRANSITION_PENDING_HOLD, "every shard finished");
        assert_eq!(
            coalescing_interval(Worth::Activity, Some(&none), &far(none.clone()), now()),
            ACTIVITY_WRITE_INTERVAL
        );
    }

    #[test]
    fn pods_starting_without_a_shard_finishing_is_activity_not_progress() {
        let with_active = |active: u32, succeeded: u32| {
            let mut st = running(Some("u1"), succeeded, 0);
            st.shards.as_mut().unwrap().active = active;
            st.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Reconciling".into(),
                status: "True".into(),
                reason: "Workers".into(),
                message: format!("workers: {succeeded}/4, {active} shards active"),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-12-03T08:00:00Z".parse().unwrap(),
                ),
                observed_generation: Some(1),
            }];
            st
        };
        assert_eq!(worth(Some(&with_active(0, 0)), &with_active(4, 0)), Worth::Activity);
        assert_eq!(worth(Some(&with_active(4, 0)), &with_active(3, 1)), Worth::Progress, "a shard finished");
        let mut first_counts = with_active(4, 0);
        first_counts.progress = Some("0/4".into());
        first_counts.eta = Some(Box::new(crate::api::EtaStatus { window_finished_shards: 0, ..Default::default() }));
        let mut intent = with_active(0, 0);
        intent.shards = None;
        assert_eq!(worth(Some(&intent), &first_counts), Worth::Activity, "the Job's first counts, none finished");
        let mut stuck = with_active(4, 0);
        stuck.stuck_pods = vec![crate::api::StuckPodStatus { pod: "p".into(), ..Default::default() }];
        assert_eq!(worth(Some(&with_active(4, 0)), &stuck), Worth::Progress, "a stuck pod is news");
    }

    fn now() -> jiff::Timestamp {
        "2026-12-03T08:00:00Z".parse().unwrap()
    }

    #[test]
    fn every_shard_finished_holds_progress_for_the_outcome() {
        assert!(!transition_pending(&running(Some("u"), 3, 0), now()));
        assert!(transition_pending(&running(Some("u"), 3, 1), now()));
        let mut done = running(Some("u"), 4, 0);
        assert!(transition_pending(&done, now()));
        done.workers.as_mut().unwrap().state = StageState::Succeeded;
        assert!(!transition_pending(&done, now()), "the outcome is written");
    }

    #[test]
    fn an_outcome_expected_within_the_progress_interval_holds_progress_too() {
        let with_eta = |secs: i64| {
            let mut st = running(Some("u"), 2, 0);
            let at = now().checked_add(jiff::SignedDuration::from_secs(secs)).unwrap();
            st.eta = Some(Box::new(crate::api::EtaStatus {
                completion_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at)),
                ..Default::default()
            }));
            st
        };
        assert!(transition_pending(&with_eta(1), now()), "the rest is expected within a second");
        assert!(transition_pending(&with_eta(5), now()));
        assert!(!transition_pending(&with_eta(6), now()), "progress is worth a write when the end is further");
        assert!(transition_pending(&with_eta(-30), now()), "overdue: the hold still caps the wait");
        let mut finished = with_eta(1);
        finished.workers.as_mut().unwrap().state = StageState::Succeeded;
        assert!(!transition_pending(&finished, now()));
    }
}
