//! One reconcile pass: observe (cache reads) → plan (pure) → write status → act, repeated until
//! the plan has nothing left to do. Status is always written before the actions it enables, so
//! a stage's outcome is on record before the next stage's Job is created.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::Action as ControllerAction;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, info, warn};

use super::jobs;
use super::observed::{JobView, Observed};
use super::plan::{Action, Plan, plan};
use super::stage::Stage;
use crate::api::{PredictionBatch, PredictionBatchStatus, StageState};
use crate::cache::trim_batch;
use crate::context::{Context, Written};
use crate::error::{Error, Retry, status_code};
use crate::labels::{FIELD_MANAGER, OUTCOME_FINALIZER};

/// Progress-only status changes (counts, not stage transitions) are written at most this often per batch.
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on plan/act rounds in one pass (a full pipeline needs about six).
const MAX_ROUNDS: usize = 12;
/// A status write that meets a 409 re-reads the batch and plans again, this often per pass,
/// before the pass fails and backs off.
const MAX_CONFLICT_REREADS: u32 = 2;
/// A pass that meets a transient API error (throttling, a server error, a lost request) tries
/// again this often, after these pauses, before the batch goes to the controller's growing
/// backoff: one flaky call should not cost a whole pass and a wait that doubles.
const TRANSIENT_RETRY_PAUSES: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(300), Duration::from_millis(900)];
/// How long a written object stands in for a cache that has not caught up with it.
const WRITTEN_OBJECT_TTL: Duration = Duration::from_secs(60);

pub async fn reconcile(batch: Arc<PredictionBatch>, ctx: Arc<Context>) -> Result<ControllerAction, Error> {
    let started = Instant::now();
    // Boxed: the runner holds one future per batch it has started, thousands at a controller's
    // start, and the pass's own state (~12 KB) should only exist while the pass runs.
    let mut learned = Learned::default();
    let mut result = Box::pin(reconcile_inner(&batch, &ctx, &mut learned)).await;
    for pause in TRANSIENT_RETRY_PAUSES {
        match &result {
            Err(e) if e.is_transient() && ctx.leadership.may_act() => {
                debug!(error = %e, ?pause, "transient API error; trying the pass again");
                ctx.metrics.errors.get_or_create(&crate::metrics::KindLabel { kind: e.kind() }).inc();
                tokio::time::sleep(pause).await;
                result = Box::pin(reconcile_inner(&batch, &ctx, &mut learned)).await;
            }
            _ => break,
        }
    }
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    let key = ObjectRef::from_obj(batch.as_ref());
    match &result {
        Ok(_) => {
            ctx.metrics.reconciles.get_or_create(&crate::metrics::ResultLabel { result: "ok" }).inc();
            ctx.failures.lock().expect("poisoned").remove(&key);
        }
        Err(e) => {
            ctx.metrics.reconciles.get_or_create(&crate::metrics::ResultLabel { result: "error" }).inc();
            ctx.metrics.errors.get_or_create(&crate::metrics::KindLabel { kind: e.kind() }).inc();
        }
    }
    result
}

/// What a pass learned from its own calls, kept when it tries again after a transient error.
#[derive(Default)]
struct Learned {
    /// Jobs as our own writes returned them, newer than the cache.
    overlay: HashMap<Stage, Option<JobView>>,
    /// Templates the apiserver refused, with its message.
    rejected: Vec<(Stage, String)>,
    /// The batch generation whose templates passed the dry run.
    validated: Option<i64>,
}

async fn reconcile_inner(
    batch: &PredictionBatch,
    ctx: &Context,
    learned: &mut Learned,
) -> Result<ControllerAction, Error> {
    if batch.metadata.deletion_timestamp.is_some() {
        // Our outcome finalizers must not hold up the Jobs' deletion (foreground deletion of the
        // batch waits for them), whatever else still runs for the batch.
        let uid = batch.uid().unwrap_or_default();
        release_jobs_of(ctx, &batch.namespace().unwrap_or_default(), &batch.name_any(), Some(&uid)).await?;
    }
    // Firestore mirror: its bounded finalizer. No API call unless the mirror is on, or
    // a batch being deleted still carries the finalizer from a run with the mirror on.
    if let Some(action) = crate::mirror::finalizer::reconcile(batch, ctx).await? {
        return Ok(action);
    }
    if batch.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the Jobs and pods.
        return Ok(ControllerAction::await_change());
    }
    let ns = batch.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = batch.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ObjectRef::from_obj(batch);

    let batches: Api<PredictionBatch> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = latest(ctx, batch, &key);
    let Learned { overlay, rejected, validated } = learned;
    let mut conflicts = 0;

    'rounds: for _round in 0..MAX_ROUNDS {
        let observed = observe(ctx, &jobs_api, &current, &uid, overlay, rejected).await?;
        let plan = plan(&current, &observed);

        let changed = current.status.as_ref() != Some(&plan.status);
        // Acting on a view that did not need a status write: prove the view is current first, by
        // the same resourceVersion-conditional write (a no-op for the apiserver when it is).
        let fence = !changed && plan.actions.iter().any(Action::needs_fence);
        if changed || fence {
            if plan.actions.is_empty() && progress_only(current.status.as_ref(), &plan.status) {
                let last = ctx.written.lock().expect("poisoned").get(&key).map(|w| w.at);
                if let Some(wait) = last.and_then(|t| PROGRESS_WRITE_INTERVAL.checked_sub(t.elapsed())) {
                    debug!(?wait, "coalescing a progress-only status change");
                    return Ok(ControllerAction::requeue(wait));
                }
            }
            match write_status(ctx, &current, &plan, changed).await {
                Ok(written) => current = written,
                // Our view was stale (another writer, or a cache behind a write we did not
                // remember): read the batch and plan again, rather than back off a whole pass.
                Err(e) if e.retry() == Retry::Soon && conflicts < MAX_CONFLICT_REREADS => {
                    conflicts += 1;
                    ctx.metrics.status_conflicts.inc();
                    match read_batch(&batches, batch).await? {
                        Some(fresh) if fresh.uid().as_deref() == Some(uid.as_str()) => {
                            current = fresh;
                            trim_batch(&mut current);
                            continue;
                        }
                        _ => return Ok(ControllerAction::await_change()),
                    }
                }
                Err(e) => return Err(e),
            }
            if changed {
                remember(ctx, &key, &current);
                spawn_events(ctx, &current, &plan);
                ctx.mirror.notify(&current);
            }
        }

        if plan.actions.is_empty() {
            return Ok(match plan.requeue_after {
                Some(d) => ControllerAction::requeue(d),
                None => ControllerAction::await_change(),
            });
        }
        for action in &plan.actions {
            let needs_templates = match action {
                Action::Create(stage) => jobs::template_dropped(&current, *stage),
                Action::Validate => {
                    jobs::template_dropped(&current, Stage::Consolidation)
                        || jobs::template_dropped(&current, Stage::Export)
                }
                _ => false,
            };
            if needs_templates {
                // The cached copy of an idle batch has no templates: read it whole to build the Job.
                match read_batch(&batches, batch).await? {
                    // Same generation, same spec: only the templates were missing.
                    Some(full)
                        if full.uid() == current.uid() && full.metadata.generation == current.metadata.generation =>
                    {
                        current.spec = full.spec
                    }
                    // The spec moved on since we planned: plan again from the batch as it is.
                    Some(full) if full.uid() == current.uid() => {
                        current = full;
                        continue 'rounds;
                    }
                    _ => return Ok(ControllerAction::await_change()),
                }
            }
            if *action == Action::Validate && *validated == current.metadata.generation {
                continue;
            }
            if !ctx.leadership.may_act() {
                return Err(Error::NotLeading);
            }
            act(&jobs_api, &current, &uid, action, overlay, rejected).await?;
            if *action == Action::Validate {
                if !rejected.is_empty() {
                    // A refused template fails the batch: plan again before creating anything.
                    continue 'rounds;
                }
                *validated = current.metadata.generation;
            }
        }
    }
    warn!("plan did not settle within {MAX_ROUNDS} rounds; looking again shortly");
    Ok(ControllerAction::requeue(Duration::from_secs(1)))
}

/// The batch as the apiserver has it now (`None` once it is gone).
async fn read_batch(api: &Api<PredictionBatch>, batch: &PredictionBatch) -> Result<Option<PredictionBatch>, Error> {
    api.get_opt(&batch.name_any()).await.map_err(|e| Error::kube("read batch", e))
}

/// The batch to plan from: the cached copy, or our last status write if the cache has not seen
/// it yet (planning from the older copy would only earn a 409).
fn latest(ctx: &Context, cached: &PredictionBatch, key: &ObjectRef<PredictionBatch>) -> PredictionBatch {
    let mut written = ctx.written.lock().expect("poisoned");
    let Some(entry) = written.get_mut(key) else { return cached.clone() };
    let Some(object) = entry.object.clone() else { return cached.clone() };
    if std::ptr::eq(crate::cache::newer(cached, &object), cached) {
        // Caught up (or a different batch by that name): the cache is the truth again.
        entry.object = None;
        return cached.clone();
    }
    debug!(cached = cached.resource_version(), written = object.resource_version(), "planning from our last write");
    (*object).clone()
}

/// Records a status write: its time (for coalescing) and the object (see [`latest`]).
fn remember(ctx: &Context, key: &ObjectRef<PredictionBatch>, written: &PredictionBatch) {
    let mut object = written.clone();
    trim_batch(&mut object);
    let mut all = ctx.written.lock().expect("poisoned");
    // Entries matter while young or while the cache lags them: forget the rest (deleted batches too).
    if all.len() > 256 {
        all.retain(|_, w| {
            let age = w.at.elapsed();
            age < PROGRESS_WRITE_INTERVAL || (w.object.is_some() && age < WRITTEN_OBJECT_TTL)
        });
    }
    all.insert(key.clone(), Written { at: Instant::now(), object: Some(Arc::new(object)) });
}

/// Reads the batch's Jobs from the cache (or this pass's own writes). A Job that status says
/// exists but the cache lacks is confirmed with a direct read before anyone concludes it was
/// deleted: the cache may simply not have caught up with a Job we just created.
async fn observe(
    ctx: &Context,
    api: &Api<Job>,
    batch: &PredictionBatch,
    uid: &str,
    overlay: &HashMap<Stage, Option<JobView>>,
    rejected: &[(Stage, String)],
) -> Result<Observed, Error> {
    let ns = batch.namespace().unwrap_or_default();
    let name = batch.name_any();
    let status = batch.status.clone().unwrap_or_default();
    let mut observed = Observed::new(Timestamp::now());
    observed.rejected = rejected.to_vec();
    for stage in Stage::ALL {
        let job_name = stage.job_name(&name);
        let view = match overlay.get(&stage) {
            Some(v) => v.clone(),
            None => {
                let cached = ctx.jobs.get(&ObjectRef::new(&job_name).within(&ns)).map(|j| JobView::from_job(&j, uid));
                let recorded =
                    stage_status(&status, stage).filter(|s| !s.state.is_finished()).and_then(|s| s.job_uid.clone());
                match (cached, recorded) {
                    (Some(v), Some(r)) if v.uid == r => Some(v),
                    (_, Some(_)) => {
                        let job =
                            api.get_opt(&job_name).await.map_err(|e| Error::kube(format!("get Job {job_name}"), e))?;
                        job.map(|j| JobView::from_job(&j, uid))
                    }
                    (cached, None) => cached,
                }
            }
        };
        observed.set_job(stage, view);
    }
    Ok(observed)
}

fn stage_status(status: &PredictionBatchStatus, stage: Stage) -> Option<&crate::api::StageStatus> {
    match stage {
        Stage::Workers => status.workers.as_ref(),
        Stage::Consolidation => status.consolidation.as_ref(),
        Stage::Export => status.export.as_ref(),
    }
}

/// True when only counts and messages moved: no phase, stage or condition-status change.
fn progress_only(prev: Option<&PredictionBatchStatus>, next: &PredictionBatchStatus) -> bool {
    let Some(prev) = prev else { return false };
    let shape = |s: &PredictionBatchStatus| {
        let stages: Vec<_> = [&s.workers, &s.consolidation, &s.export]
            .iter()
            .map(|st| st.as_ref().map(|st| (st.state, st.job_uid.clone())))
            .collect();
        let conditions: Vec<_> =
            s.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect();
        (s.phase, stages, s.quorum_time.clone(), s.observed_generation, conditions)
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
    Ok(written)
}

fn observe_stage_durations(ctx: &Context, prev: Option<&PredictionBatchStatus>, next: &PredictionBatchStatus) {
    for stage in Stage::ALL {
        let before = prev.and_then(|p| stage_status(p, stage)).map(|s| s.state);
        let Some(after) = stage_status(next, stage) else { continue };
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

/// The apiserver refuses an Event whose note is longer than 1 KiB (in bytes).
const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    &s[..end]
}

/// Publishes the plan's events in the background: they are best effort, and must not delay
/// the Job create that follows a status write (under load one publish took 700 ms).
fn spawn_events(ctx: &Context, batch: &PredictionBatch, plan: &Plan) {
    if plan.events.is_empty() {
        return;
    }
    let reference = batch.object_ref(&());
    let events: Vec<Event> = plan
        .events
        .iter()
        .map(|e| {
            if e.warning {
                warn!(reason = e.reason, "{}", e.note);
            } else {
                info!(reason = e.reason, "{}", e.note);
            }
            Event {
                type_: if e.warning { EventType::Warning } else { EventType::Normal },
                reason: e.reason.to_string(),
                note: Some(truncate_utf8(&e.note, MAX_EVENT_NOTE_BYTES).to_string()),
                action: "Reconcile".into(),
                secondary: None,
            }
        })
        .collect();
    let recorder = ctx.recorder.clone();
    tokio::spawn(
        async move {
            for event in &events {
                // Losing an event must not fail or repeat the reconcile.
                if let Err(err) = recorder.publish(event, &reference).await {
                    debug!(%err, "could not publish event");
                }
            }
        }
        .in_current_span(),
    );
}

async fn act(
    api: &Api<Job>,
    batch: &PredictionBatch,
    uid: &str,
    action: &Action,
    overlay: &mut HashMap<Stage, Option<JobView>>,
    rejected: &mut Vec<(Stage, String)>,
) -> Result<(), Error> {
    let name = batch.name_any();
    match *action {
        Action::Create(stage) => {
            let Some(job) = jobs::build(batch, stage) else { return Ok(()) };
            let job_name = stage.job_name(&name);
            let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            match api.create(&pp, &job).await {
                Ok(created) => {
                    info!(job = job_name, stage = stage.label(), "created Job");
                    overlay.insert(stage, Some(JobView::from_job(&created, uid)));
                }
                Err(e) if status_code(&e) == Some(409) => {
                    // Deterministic names make a repeated create a no-op; whose Job it is decides.
                    let existing =
                        api.get_opt(&job_name).await.map_err(|e| Error::kube(format!("get Job {job_name}"), e))?;
                    overlay.insert(stage, existing.map(|j| JobView::from_job(&j, uid)));
                }
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                    warn!(job = job_name, message = %s.message, "the apiserver rejected the Job");
                    rejected.push((stage, s.message.clone()));
                }
                Err(e) => return Err(Error::kube(format!("create Job {job_name}"), e)),
            }
        }
        Action::Suspend { stage, suspend } => {
            let job_name = stage.job_name(&name);
            let patch = json!({ "spec": { "suspend": suspend } });
            patch_job(api, uid, stage, &job_name, patch, overlay).await?;
            info!(job = job_name, suspend, "set Job suspension");
        }
        Action::Parallelism(n) => {
            let job_name = Stage::Workers.job_name(&name);
            patch_job(api, uid, Stage::Workers, &job_name, json!({ "spec": { "parallelism": n } }), overlay).await?;
        }
        Action::Validate => {
            for stage in [Stage::Consolidation, Stage::Export] {
                let Some(job) = jobs::build(batch, stage) else { continue };
                let job_name = stage.job_name(&name);
                let pp = PostParams { dry_run: true, field_manager: Some(FIELD_MANAGER.into()) };
                match api.create(&pp, &job).await {
                    Ok(_) => {}
                    // A Job by that name exists already: the real create will say whose it is.
                    Err(e) if status_code(&e) == Some(409) => {}
                    Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                        warn!(job = job_name, message = %s.message, "the apiserver would reject the Job");
                        rejected.push((stage, s.message.clone()));
                    }
                    Err(e) => return Err(Error::kube(format!("validate Job {job_name} (dry run)"), e)),
                }
            }
        }
        Action::Release { stage, uid: ref job_uid, index } => {
            let job_name = stage.job_name(&name);
            let view = release(api, &job_name, job_uid, index).await?;
            overlay.insert(stage, view.map(|j| JobView::from_job(&j, uid)));
        }
        Action::Delete { stage, uid: ref job_uid } => {
            let job_name = stage.job_name(&name);
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: Some(Preconditions { uid: Some(job_uid.clone()), resource_version: None }),
                ..Default::default()
            };
            match api.delete(&job_name, &dp).await {
                Ok(_) => info!(job = job_name, "deleted Job (ttlSecondsAfterFinished)"),
                Err(e) if status_code(&e) == Some(404) => {}
                // The UID precondition failed: the Job by that name is not the one we made.
                Err(e) if status_code(&e) == Some(409) => info!(job = job_name, "Job by that name is not ours; kept"),
                Err(e) => return Err(Error::kube(format!("delete Job {job_name}"), e)),
            }
            overlay.insert(stage, None);
        }
    }
    Ok(())
}

/// Removes our outcome finalizer from Job `job_uid`, expected at `index` of its finalizers (a
/// JSON patch that tests before it removes, so nobody else's finalizer is touched). If the list
/// moved, reads the Job and tries once more. Returns the Job as it now is (`None`: gone).
async fn release(api: &Api<Job>, job_name: &str, job_uid: &str, index: usize) -> Result<Option<Job>, Error> {
    let mut index = index;
    for attempt in 0..2 {
        let patch = json!([
            { "op": "test", "path": "/metadata/uid", "value": job_uid },
            { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": OUTCOME_FINALIZER },
            { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
        ]);
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("a JSON patch");
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match api.patch(job_name, &pp, &Patch::<()>::Json(patch)).await {
            Ok(job) => {
                debug!(job = job_name, "released the outcome finalizer");
                return Ok(Some(job));
            }
            Err(e) if status_code(&e) == Some(404) => return Ok(None),
            // A test failed (the list or the Job changed): look at the Job as it is.
            Err(e) if attempt == 0 && matches!(status_code(&e), Some(409 | 422 | 500)) => {
                let job = api.get_opt(job_name).await.map_err(|e| Error::kube(format!("get Job {job_name}"), e))?;
                let Some(job) = job.filter(|j| j.metadata.uid.as_deref() == Some(job_uid)) else { return Ok(None) };
                match job.metadata.finalizers.iter().flatten().position(|f| f == OUTCOME_FINALIZER) {
                    Some(i) => index = i,
                    None => return Ok(Some(job)),
                }
            }
            Err(e) => return Err(Error::kube(format!("release Job {job_name}"), e)),
        }
    }
    Ok(None)
}

/// Releases our outcome finalizer from cached Jobs of batch `ns/name`: with `owner_uid`, every Job
/// of that batch (it is being deleted); without, the Jobs being deleted whose batch of that name
/// no longer exists (read to be sure: the cache may simply not have caught up).
pub async fn release_jobs_of(ctx: &Context, ns: &str, name: &str, owner_uid: Option<&str>) -> Result<(), Error> {
    let held: Vec<(String, String, usize, String)> = ctx
        .jobs
        .state()
        .iter()
        .filter(|job| job.metadata.namespace.as_deref() == Some(ns))
        .filter(|job| owner_uid.is_some() || job.metadata.deletion_timestamp.is_some())
        .filter_map(|job| {
            let meta = &job.metadata;
            let owner = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true))?;
            if owner.kind != PredictionBatch::kind(&()) || owner.name != name {
                return None;
            }
            let index = meta.finalizers.iter().flatten().position(|f| f == OUTCOME_FINALIZER)?;
            Some((meta.name.clone()?, meta.uid.clone()?, index, owner.uid.clone()))
        })
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    let keep = match owner_uid {
        Some(_) => None,
        None => {
            let batches: Api<PredictionBatch> = Api::namespaced(ctx.client.clone(), ns);
            batches.get_opt(name).await.map_err(|e| Error::kube("read batch", e))?.and_then(|b| b.uid())
        }
    };
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for (job_name, job_uid, index, owner) in held {
        let release_it = match owner_uid {
            Some(uid) => owner == uid,
            None => keep.as_deref() != Some(owner.as_str()),
        };
        if release_it {
            release(&api, &job_name, &job_uid, index).await?;
            info!(job = job_name, "released the outcome finalizer of a Job whose batch is gone or going");
        }
    }
    Ok(())
}

async fn patch_job(
    api: &Api<Job>,
    uid: &str,
    stage: Stage,
    job_name: &str,
    patch: serde_json::Value,
    overlay: &mut HashMap<Stage, Option<JobView>>,
) -> Result<(), Error> {
    match api
        .patch(
            job_name,
            &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(job) => {
            overlay.insert(stage, Some(JobView::from_job(&job, uid)));
            Ok(())
        }
        Err(e) if status_code(&e) == Some(404) => {
            overlay.insert(stage, None);
            Ok(())
        }
        Err(e) => Err(Error::kube(format!("patch Job {job_name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::events::{Recorder, Reporter};

    #[test]
    fn event_notes_are_cut_at_a_character_boundary_within_one_kib() {
        let note = "é".repeat(700); // 1400 bytes
        let cut = truncate_utf8(&note, MAX_EVENT_NOTE_BYTES);
        assert_eq!(cut.len(), 1024);
        assert!(note.starts_with(cut));
        let odd = format!("a{}", "€".repeat(400)); // 1 + 1200 bytes
        let cut = truncate_utf8(&odd, MAX_EVENT_NOTE_BYTES);
        assert!(cut.len() <= 1024 && cut.len() > 1020, "{}", cut.len());
        assert_eq!(truncate_utf8("short", MAX_EVENT_NOTE_BYTES), "short");
    }

    /// The controller holds one of these futures per batch being reconciled: with thousands of
    /// batches starting at once their size is the controller's memory.
    #[tokio::test]
    async fn a_reconcile_pass_is_a_small_future() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let ctx = Arc::new(Context {
            client: client.clone(),
            jobs: kube::runtime::reflector::store().0,
            recorder: Recorder::new(client, Reporter { controller: "test".into(), instance: None }),
            metrics: Default::default(),
            mirror: crate::mirror::MirrorHandle::disabled(),
            leadership: Arc::new(crate::leadership::Leadership::unelected()),
            written: Default::default(),
            failures: Default::default(),
        });
        let batch = Arc::new(PredictionBatch::new(
            "b",
            serde_json::from_value(serde_json::json!({
                "gameDate": "2026-01-02", "targetCount": 4,
                "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
            }))
            .unwrap(),
        ));
        let size = std::mem::size_of_val(&reconcile(batch, ctx));
        eprintln!("reconcile future: {size} bytes");
        assert!(size < 512, "reconcile future is {size} bytes");
    }
}
