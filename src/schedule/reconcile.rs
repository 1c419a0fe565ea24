//! A schedule's pass: observe (the schedule, the batches it owns from the shared batch cache, the
//! clock) → [`super::plan::plan`] → act (delete, then create; AlreadyExists of our own batch is
//! success) → status (server-side apply conditional on the resourceVersion planned from, so a
//! stale pass gets 409 and looks again instead of writing over newer state) → events.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::plan::{self, DeleteReason, Observed, Outcome, OwnedBatch, Plan};
use crate::api::{
    ActiveBatch, CONDITION_READY, Phase, PredictionBatch, PredictionSchedule, PredictionScheduleStatus,
    ScheduleEventReason,
};
use crate::error::{Error, count_failure, retry_after, status_code};
use crate::labels::{FIELD_MANAGER, SCHEDULED_AT_ANNOTATION};
use crate::leadership::Leadership;
use crate::reconcile::publish::{MAX_EVENT_NOTE_BYTES, truncate_utf8};

/// What the schedule reconciler's passes share.
pub struct ScheduleContext {
    pub client: Client,
    /// The batch reconciler's cache (shared reflector): where a schedule finds its batches.
    pub batches: Store<PredictionBatch>,
    pub recorder: Recorder,
    pub leadership: Arc<Leadership>,
    pub failures: Mutex<HashMap<ObjectRef<PredictionSchedule>, u32>>,
}

/// `namespace/name`: how logs and spans name a schedule.
pub fn schedule_name(s: &PredictionSchedule) -> String {
    format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())
}

pub async fn reconcile(schedule: Arc<PredictionSchedule>, ctx: Arc<ScheduleContext>) -> Result<Action, Error> {
    let result = pass(&schedule, &ctx).await;
    if result.is_ok() {
        ctx.failures.lock().expect("poisoned").remove(&ObjectRef::from_obj(&*schedule));
    }
    result
}

pub fn error_policy(schedule: Arc<PredictionSchedule>, error: &Error, ctx: Arc<ScheduleContext>) -> Action {
    let attempt = count_failure(&ctx.failures, ObjectRef::from_obj(&*schedule));
    let wait = retry_after(error, attempt);
    warn!(schedule = schedule_name(&schedule), %error, attempt, backoff_ms = wait.as_millis() as u64, "schedule pass failed; backing off");
    Action::requeue(wait)
}

async fn pass(schedule: &PredictionSchedule, ctx: &ScheduleContext) -> Result<Action, Error> {
    // Owned batches come from the batch cache: plan only from a complete one (and never wait for
    // it without bound: a pass that cannot start is retried).
    if tokio::time::timeout(std::time::Duration::from_secs(5), ctx.batches.wait_until_ready()).await.is_err() {
        warn!(schedule = schedule_name(schedule), "the batch cache is not ready yet; retrying");
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    if schedule.metadata.deletion_timestamp.is_some() {
        // Its batches go with it (owner references, garbage collector).
        return Ok(Action::await_change());
    }
    let name = schedule.metadata.name.as_deref().ok_or(Error::MissingObjectKey("metadata.name"))?;
    let ns = schedule.metadata.namespace.as_deref().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = schedule.metadata.uid.as_deref().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let created = schedule.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
    let status = schedule.status.clone().unwrap_or_default();
    let api: Api<PredictionBatch> = Api::namespaced(ctx.client.clone(), ns);
    let (batches, foreign) = observe(ctx, &api, ns, name, uid, &status).await?;
    let observed = Observed {
        name,
        namespace: ns,
        uid,
        generation: schedule.metadata.generation,
        created,
        spec: &schedule.spec,
        status: &status,
        batches,
        foreign,
        now: Timestamp::now(),
    };
    let mut plan = plan::plan(&observed);
    let mut events = std::mem::take(&mut plan.events);
    if !plan.delete.is_empty() || plan.create.is_some() {
        if !ctx.leadership.may_act() {
            return Err(Error::NotLeading);
        }
        delete(&api, &plan).await?;
    }
    if let Some(run) = &plan.create {
        let (active, created) = create(&api, &run.batch, uid).await?;
        #[cfg(feature = "test-faults")]
        if created && std::env::var_os(crate::faults::ABORT_AFTER_SCHEDULE_CREATE).is_some() {
            // The worst moment to die: the run's batch exists, lastScheduleTime does not say so.
            warn!(batch = active.name, "test fault: aborting right after creating a run's batch");
            std::process::abort();
        }
        if created {
            info!(batch = active.name, scheduled_at = %run.scheduled_at, "run started");
            events.push((
                ScheduleEventReason::BatchCreated,
                format!("Created {} for the run of {}", active.name, run.scheduled_at),
            ));
            if run.due_count > 1 {
                events.push((
                    ScheduleEventReason::RunsMissed,
                    format!(
                        "{} runs were due at once (missed while the controller was down, the schedule was suspended or an earlier batch held them): started only the latest, {}",
                        run.due_count, run.scheduled_at
                    ),
                ));
            }
        }
        plan.status.active.push(active);
        plan.status.active.sort();
        plan.status.active.dedup();
    }
    if schedule.status.as_ref() != Some(&plan.status) {
        if !ctx.leadership.may_act() {
            return Err(Error::NotLeading);
        }
        write_status(ctx, schedule, &plan.status).await?;
    }
    publish(ctx, schedule, events).await;
    Ok(plan.requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The batches the schedule owns (by controller owner reference UID), from the cache; an
/// `active` batch the cache does not show yet (just created) is read, so a lagging cache never
/// drops it from `active` (and never lets Forbid start a second run).
async fn observe(
    ctx: &ScheduleContext,
    api: &Api<PredictionBatch>,
    ns: &str,
    name: &str,
    uid: &str,
    status: &PredictionScheduleStatus,
) -> Result<(Vec<OwnedBatch>, BTreeSet<String>), Error> {
    let prefix = format!("{name}-");
    let mut owned = Vec::new();
    let mut foreign = BTreeSet::new();
    for b in ctx.batches.state() {
        if b.namespace().as_deref() != Some(ns) || !b.name_any().starts_with(&prefix) {
            continue;
        }
        if owner_uid(&b) == Some(uid) {
            owned.push(owned_batch(&b));
        } else {
            foreign.insert(b.name_any());
        }
    }
    for a in &status.active {
        if owned.iter().any(|b| b.uid == a.uid) {
            continue;
        }
        match api.get_opt(&a.name).await.map_err(|e| Error::kube("read an active batch", e))? {
            Some(b) if owner_uid(&b) == Some(uid) && b.uid().as_deref() == Some(a.uid.as_str()) => {
                owned.push(owned_batch(&b))
            }
            _ => debug!(batch = a.name, "an active batch is gone"),
        }
    }
    Ok((owned, foreign))
}

fn owner_uid(b: &PredictionBatch) -> Option<&str> {
    b.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == PredictionSchedule::kind(&()))
        .map(|o| o.uid.as_str())
}

fn owned_batch(b: &PredictionBatch) -> OwnedBatch {
    let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
    let scheduled_at =
        b.annotations().get(SCHEDULED_AT_ANNOTATION).and_then(|a| a.parse::<Timestamp>().ok()).unwrap_or(created);
    let status = b.status.as_ref();
    let outcome = match status.and_then(|s| s.phase) {
        Some(Phase::Succeeded) => Outcome::Succeeded(
            status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY && c.status == "True"))
                .map(|c| c.last_transition_time.0),
        ),
        Some(Phase::Failed) => Outcome::Failed,
        _ => Outcome::Running,
    };
    OwnedBatch {
        name: b.name_any(),
        uid: b.uid().unwrap_or_default(),
        scheduled_at,
        outcome,
        deleting: b.metadata.deletion_timestamp.is_some(),
    }
}

/// Deletes by UID precondition: a batch recreated under the same name by someone else is never
/// touched. Gone already is success.
async fn delete(api: &Api<PredictionBatch>, plan: &Plan) -> Result<(), Error> {
    for d in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(d.uid.clone()), resource_version: None }),
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match api.delete(&d.name, &params).await {
            Ok(_) => info!(batch = d.name, reason = ?d.reason, "batch deleted"),
            Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => {}
            Err(e) => {
                let what = if d.reason == DeleteReason::Replaced {
                    "delete the replaced batch"
                } else {
                    "delete an old batch"
                };
                return Err(Error::kube(what, e));
            }
        }
    }
    Ok(())
}

/// Creates the run's batch; AlreadyExists is success when the batch is ours (a pass stopped after
/// the create and before the status write). Returns the reference and whether this call created it.
async fn create(api: &Api<PredictionBatch>, batch: &PredictionBatch, uid: &str) -> Result<(ActiveBatch, bool), Error> {
    let name = batch.name_any();
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let (b, created) = match api.create(&params, batch).await {
        Ok(b) => (b, true),
        Err(e) if status_code(&e) == Some(409) => {
            let b = api.get(&name).await.map_err(|e| Error::kube("read the existing batch", e))?;
            if owner_uid(&b) != Some(uid) {
                // The cache had not shown it yet: the next pass sees it as foreign.
                return Err(Error::kube("create the run's batch (the name is taken)", e));
            }
            (b, false)
        }
        Err(e) => return Err(Error::kube("create the run's batch", e)),
    };
    Ok((ActiveBatch { name, uid: b.uid().unwrap_or_default() }, created))
}

async fn write_status(
    ctx: &ScheduleContext,
    schedule: &PredictionSchedule,
    status: &PredictionScheduleStatus,
) -> Result<(), Error> {
    let api: Api<PredictionSchedule> = Api::namespaced(ctx.client.clone(), &schedule.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": PredictionSchedule::api_version(&()),
        "kind": PredictionSchedule::kind(&()),
        "metadata": { "name": schedule.name_any(), "resourceVersion": schedule.resource_version() },
        "status": status,
    });
    api.patch_status(&schedule.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube("write the schedule's status", e))?;
    debug!(
        last = ?status.last_schedule_time.as_ref().map(|t| t.0.to_string()),
        next = ?status.next_schedule_time.as_ref().map(|t| t.0.to_string()),
        "schedule status written"
    );
    Ok(())
}

/// Best effort: a lost Event never fails or repeats a pass.
async fn publish(ctx: &ScheduleContext, schedule: &PredictionSchedule, events: Vec<(ScheduleEventReason, String)>) {
    let reference = schedule.object_ref(&());
    for (reason, note) in events {
        if reason.is_warning() {
            warn!(reason = reason.as_str(), "{note}");
        } else {
            info!(reason = reason.as_str(), "{note}");
        }
        let event = Event {
            type_: if reason.is_warning() { EventType::Warning } else { EventType::Normal },
            reason: reason.as_str().into(),
            note: Some(truncate_utf8(&note, MAX_EVENT_NOTE_BYTES).to_string()),
            action: "Schedule".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            debug!(%err, "could not publish event");
        }
    }
}
