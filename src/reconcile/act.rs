//! Acting on the cluster: the Job calls a plan's actions stand for, each idempotent, and the
//! release of our outcome finalizer from Jobs whose batch is gone or going.

use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::fresh::Learned;
use super::jobs;
use super::observed::JobView;
use super::plan::Action;
use super::record::Cleared;
use super::verdicts::DryRunVerdicts;
use crate::api::stage::{backup_job_name, shard_job_name};
use crate::api::{PredictionBatch, Stage};
use crate::context::Context;
use crate::error::{Error, call_twice, status_code};
use crate::labels::{FIELD_MANAGER, OUTCOME_FINALIZER};

/// Carries out one action of a plan whose status is on record. Every call is idempotent:
/// deterministic names, AlreadyExists resolved by whose Job it is, UID preconditions, 404 on a
/// patch meaning the Job is gone. What a write returns is remembered in `learned`.
pub async fn act(
    api: &Api<Job>,
    batch: &PredictionBatch,
    uid: &str,
    action: Cleared<'_>,
    learned: &mut Learned,
    verdicts: &DryRunVerdicts,
) -> Result<(), Error> {
    match *action {
        Action::Create(stage) => {
            let Some(job) = jobs::build(batch, stage) else { return Ok(()) };
            let job_name = batch.job_name(stage);
            let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            match call_twice(|| api.create(&pp, &job)).await {
                Ok(created) => {
                    info!(job = job_name, stage = stage.label(), "created Job");
                    learned.created = Some(stage);
                    learned.job_returned(&created);
                    learned.job_written(stage, Some(JobView::from_job(&created, uid)));
                }
                Err(e) if status_code(&e) == Some(409) => {
                    // Deterministic names make a repeated create a no-op; whose Job it is decides.
                    let existing =
                        api.get_opt(&job_name).await.map_err(|e| Error::kube(format!("get Job {job_name}"), e))?;
                    learned.job_written(stage, existing.map(|j| JobView::from_job(&j, uid)));
                }
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                    warn!(job = job_name, message = %s.message, "the apiserver rejected the Job");
                    learned.rejected.push((stage, s.message.clone()));
                }
                Err(e) => return Err(Error::kube(format!("create Job {job_name}"), e)),
            }
        }
        Action::CreateShard(shard) => create_shard_job(api, jobs::build_shard(batch, shard), "a rerun shard").await?,
        Action::CreateBackup(shard) => {
            create_shard_job(api, jobs::build_backup(batch, shard), "a straggling shard's backup run").await?
        }
        Action::ReleaseBackup { shard, uid: ref job_uid, index } => {
            release(api, &backup_job_name(&batch.name_any(), shard), job_uid, index).await?;
        }
        Action::StopBackup { shard, uid: ref job_uid } => {
            let job_name = backup_job_name(&batch.name_any(), shard);
            match api.delete(&job_name, &delete_params(job_uid)).await {
                Ok(_) => info!(job = job_name, shard, "stopped a backup run: its shard was decided without it"),
                Err(e) if matches!(status_code(&e), Some(404 | 409)) => {}
                Err(e) => return Err(Error::kube(format!("delete Job {job_name}"), e)),
            }
        }
        Action::DeleteJob { ref name, uid: ref job_uid } => match api.delete(name, &delete_params(job_uid)).await {
            Ok(_) => info!(job = name, "deleted Job (ttlSecondsAfterFinished)"),
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => {}
            Err(e) => return Err(Error::kube(format!("delete Job {name}"), e)),
        },
        Action::SuspendShard { shard, suspend } => {
            let attempt = batch.status.as_ref().map_or(1, |s| s.attempt());
            let job_name = shard_job_name(&batch.name_any(), attempt, shard);
            let patch = json!({ "spec": { "suspend": suspend } });
            let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            match api.patch(&job_name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => info!(job = job_name, suspend, "set the suspension of a rerun shard's Job"),
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => return Err(Error::kube(format!("patch Job {job_name}"), e)),
            }
        }
        Action::ReleaseShard { shard, uid: ref job_uid, index } => {
            let attempt = batch.status.as_ref().map_or(1, |s| s.attempt());
            let job_name = shard_job_name(&batch.name_any(), attempt, shard);
            release(api, &job_name, job_uid, index).await?;
        }
        Action::Suspend { stage, suspend } => {
            let job_name = batch.job_name(stage);
            let patch = json!({ "spec": { "suspend": suspend } });
            patch_job(api, uid, stage, &job_name, patch, learned).await?;
            info!(job = job_name, suspend, "set Job suspension");
        }
        Action::Parallelism(n) => {
            let job_name = batch.job_name(Stage::Workers);
            let patch = json!({ "spec": { "parallelism": n } });
            patch_job(api, uid, Stage::Workers, &job_name, patch, learned).await?;
        }
        Action::Validate => {
            // The later stages' templates are checked side by side: a batch's first Job waits
            // for the slower of the two dry runs, not for both in turn.
            let checks = batch.spec.later_stages().into_iter().map(|stage| dry_run(api, batch, stage, verdicts));
            for refusal in futures::future::try_join_all(checks).await?.into_iter().flatten() {
                learned.rejected.push(refusal);
            }
        }
        Action::Release { stage, uid: ref job_uid, index } => {
            let job_name = batch.job_name(stage);
            let view = release(api, &job_name, job_uid, index).await?;
            if let Some(job) = &view {
                learned.job_returned(job);
            }
            learned.job_written(stage, view.map(|j| JobView::from_job(&j, uid)));
        }
        Action::Delete { stage, uid: ref job_uid } => {
            let job_name = batch.job_name(stage);
            match api.delete(&job_name, &delete_params(job_uid)).await {
                Ok(_) => info!(job = job_name, "deleted Job (ttlSecondsAfterFinished)"),
                Err(e) if status_code(&e) == Some(404) => {}
                // The UID precondition failed: the Job by that name is not the one we made.
                Err(e) if status_code(&e) == Some(409) => info!(job = job_name, "Job by that name is not ours; kept"),
                Err(e) => return Err(Error::kube(format!("delete Job {job_name}"), e)),
            }
            learned.job_written(stage, None);
        }
    }
    Ok(())
}

/// Creates the Job of one shard alone (`None`: nothing to build). Its deterministic name makes a
/// repeated create a no-op; the Job watch brings it to the next pass.
async fn create_shard_job(api: &Api<Job>, job: Option<Job>, what: &str) -> Result<(), Error> {
    let Some(job) = job else { return Ok(()) };
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match call_twice(|| api.create(&pp, &job)).await {
        Ok(_) => info!(job = job_name, "created the Job of {what}"),
        Err(e) if status_code(&e) == Some(409) => {}
        Err(e) => return Err(Error::kube(format!("create Job {job_name}"), e)),
    }
    Ok(())
}

/// Deletes Job `job_uid` only (a same-named Job someone else made since is never touched); the
/// garbage collector removes its pods.
fn delete_params(job_uid: &str) -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions { uid: Some(job_uid.to_string()), resource_version: None }),
        ..Default::default()
    }
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
        let patch = Patch::<()>::Json(patch);
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match call_twice(|| api.patch(job_name, &pp, &patch)).await {
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
    learned: &mut Learned,
) -> Result<(), Error> {
    let (params, patch) =
        (PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, Patch::Merge(&patch));
    match call_twice(|| api.patch(job_name, &params, &patch)).await {
        Ok(job) => {
            learned.job_returned(&job);
            learned.job_written(stage, Some(JobView::from_job(&job, uid)));
            Ok(())
        }
        Err(e) if status_code(&e) == Some(404) => {
            learned.job_written(stage, None);
            Ok(())
        }
        Err(e) => Err(Error::kube(format!("patch Job {job_name}"), e)),
    }
}

/// The apiserver's verdict on `stage`'s Job for `batch` (a dry-run create), unless a Job of
/// that shape was accepted lately: `Some(message)` when it would refuse it.
async fn dry_run(
    api: &Api<Job>,
    batch: &PredictionBatch,
    stage: Stage,
    verdicts: &DryRunVerdicts,
) -> Result<Option<(Stage, String)>, Error> {
    let Some(job) = jobs::build_for_dry_run(batch, stage) else { return Ok(None) };
    let job_name = batch.job_name(stage);
    let _gate = verdicts.gate(&job).await;
    if verdicts.accepted(&job, Instant::now()) {
        debug!(job = job_name, "a Job of this template was accepted in this namespace lately; no dry run");
        return Ok(None);
    }
    let pp = PostParams { dry_run: true, field_manager: Some(FIELD_MANAGER.into()) };
    match call_twice(|| api.create(&pp, &job)).await {
        Ok(_) => {
            verdicts.accept(&job, Instant::now());
            Ok(None)
        }
        // A Job by that name exists already: the real create will say whose it is.
        Err(e) if status_code(&e) == Some(409) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            warn!(job = job_name, message = %s.message, "the apiserver would reject the Job");
            Ok(Some((stage, s.message)))
        }
        Err(e) => Err(Error::kube(format!("validate Job {job_name} (dry run)"), e)),
    }
}
