//! Keeping a pass's view current: the one mechanism between the caches and the planner.
//!
//! The planner is only as good as what it is shown, and every cache lags: the batch cache
//! behind our own status writes, the Job cache behind our own creates and patches, and the batch
//! cache holds copies with the pod templates dropped (to keep memory flat). A [`View`] is what a
//! pass plans from, and each way it can be behind has exactly one remedy here:
//!
//! | behind                                   | remedy                                             |
//! |------------------------------------------|----------------------------------------------------|
//! | the batch cache, after our status write  | plan from our last write until the cache has it    |
//! |                                          | ([`View::start`], [`remember`])                    |
//! | the Job cache, after our own Job writes  | what our writes returned overlays the cache for    |
//! |                                          | the rest of the pass ([`Learned::job_written`]),   |
//! |                                          | and for later passes until the cache has caught up |
//! |                                          | (by resourceVersion, [`remember_jobs`])            |
//! | the Job cache, for a Job status names    | a direct read before concluding it was deleted     |
//! | (by UID, or by an intent to create it)   | or was never made ([`View::observe`])              |
//! | anything, as the apiserver proves by 409 | read the batch and plan again, [`MAX_CONFLICT_REREADS`]  |
//! | on a status write                        | times a pass ([`View::reread_after_conflict`])     |
//! | a copy without its templates (a trimmed  | read the batch in full before a Job is built       |
//! | cache copy, unless a status write since  | ([`View::fill_templates`])                         |
//! | returned the whole object)               |                                                    |
//!
//! What a pass learned from its own calls ([`Learned`]) survives the pass's retries after a
//! transient error, so a retry neither forgets a Job it made nor repeats a dry run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;
use tracing::debug;

use super::jobs;
use super::observed::{JobOutcome, JobView, Observed, loader_message};
use super::ranges::IndexSet;
use super::stragglers::{BackupPolicy, ShardTimes, shard_times};
use crate::api::stage::{backup_job_name, shard_job_name};
use crate::api::{PredictionBatch, RerunFrom, Stage, StageMap, StageState};
use crate::cache::trim_batch;
use crate::context::{Context, Written};
use crate::error::{Error, call_twice};

/// The label the Job controller puts on a Job's pods: the Job's UID, so a list finds this Job's
/// pods only, not those of a same-named Job before it.
const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// A status write that meets a 409 re-reads the batch and plans again, this often per pass,
/// before the pass fails and backs off.
pub const MAX_CONFLICT_REREADS: u32 = 2;
/// Progress-only status changes (counts, not stage transitions) are written at most this often
/// per batch; [`remember`] keeps the time of the last write for that.
/// Five seconds: a worker stage's counts still move visibly, and a 10-second stage costs two
/// writes for them rather than eight (at 1 s) while the apiserver is busy with its pods.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a written object stands in for a cache that has not caught up with it.
const WRITTEN_OBJECT_TTL: Duration = Duration::from_secs(60);

/// What a pass learned from its own calls, kept when it tries again after a transient error.
#[derive(Default)]
pub struct Learned {
    /// Per stage, the Job as our own last write returned it (`Some(None)`: gone), newer than the
    /// cache; `None` where this pass wrote nothing.
    overlay: StageMap<Option<Option<JobView>>>,
    /// Templates the apiserver refused, with its message.
    pub rejected: Vec<(Stage, String)>,
    /// The batch generation whose templates passed the dry run.
    pub validated: Option<i64>,
    /// Jobs as our writes returned them, for [`remember_jobs`] to keep beyond this pass.
    returned: Vec<Job>,
    /// The stage whose Job the last action created (for the transition's clock).
    pub created: Option<Stage>,
}

impl Learned {
    /// Our write returned this Job (`None`: it is gone): trust it over the cache for this pass.
    pub fn job_written(&mut self, stage: Stage, job: Option<JobView>) {
        *self.overlay.get_mut(stage) = Some(job);
    }

    /// Our write returned `job`: later passes trust it over a cache that has not caught up.
    pub fn job_returned(&mut self, job: &Job) {
        self.returned.push(job.clone());
    }
}

/// How long a Job our write returned stands in for a Job cache that has not caught up with it.
/// The cache normally does within milliseconds; a Job deleted meanwhile looks present this long
/// at most, and is then found gone by a direct read.
const WRITTEN_JOB_TTL: Duration = Duration::from_secs(10);

/// Keeps the Jobs this pass's writes returned for later passes: the pass that our own status
/// write wakes runs before the Job watch has delivered the Job we created (or released) just
/// after it, and would otherwise read it directly, or release it a second time.
pub fn remember_jobs(ctx: &Context, learned: &mut Learned) {
    if learned.returned.is_empty() {
        return;
    }
    let mut all = ctx.job_writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if all.len() > 256 {
        all.retain(|_, w| w.at.elapsed() < WRITTEN_JOB_TTL);
    }
    for mut job in learned.returned.drain(..) {
        crate::cache::trim_job(&mut job);
        all.insert(ObjectRef::from_obj(&job), crate::context::JobWritten { at: Instant::now(), job: Arc::new(job) });
    }
}

/// The Job by that name as the cache has it, or as our last write returned it while the cache
/// lacks it or holds an older copy (by resourceVersion; unparsable ones leave the cache the truth).
fn cached_job(ctx: &Context, key: &ObjectRef<Job>) -> Option<Arc<Job>> {
    let cached = ctx.jobs.get(key);
    let mut all = ctx.job_writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(written) = all.get(key) else { return cached };
    let rv = |j: &Job| j.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
    let stale = |c: &Job| matches!((rv(c), rv(&written.job)), (Some(c), Some(w)) if w > c);
    if written.at.elapsed() >= WRITTEN_JOB_TTL || cached.as_deref().is_some_and(|c| !stale(c)) {
        all.remove(key);
        return cached;
    }
    debug!(job = key.name, "planning from our last write of the Job");
    Some(written.job.clone())
}

/// How a re-read came out.
pub enum Reread {
    /// Nothing changed that the plan depends on: go on.
    Current,
    /// The batch moved on: plan again from it.
    Replan,
    /// The batch is gone (or is another batch by the same name): nothing more to do.
    Gone,
}

/// The batch a pass plans from, and what the pass learned.
pub struct View<'l> {
    pub batch: PredictionBatch,
    pub learned: &'l mut Learned,
    conflicts: u32,
}

impl<'l> View<'l> {
    /// The cached copy, or our last status write if the cache has not seen it yet (planning from
    /// the older copy would only earn a 409).
    pub fn start(ctx: &Context, cached: &PredictionBatch, learned: &'l mut Learned) -> Self {
        let batch = latest(ctx, cached);
        View { batch, learned, conflicts: 0 }
    }

    /// The batch's Jobs from the cache, overlaid by this pass's own writes. A Job that status
    /// says exists but the cache lacks is confirmed with a direct read before anyone concludes it
    /// was deleted: the cache may simply not have caught up with a Job we just created.
    pub async fn observe(&self, ctx: &Context, api: &Api<Job>, uid: &str) -> Result<Observed, Error> {
        let ns = self.batch.namespace().unwrap_or_default();
        let status = self.batch.status.clone().unwrap_or_default();
        let mut observed = Observed::new(Timestamp::now());
        observed.rejected = self.learned.rejected.clone();
        for stage in Stage::ALL {
            let job_name = self.batch.job_name(stage);
            let view = match self.learned.overlay.get(stage) {
                Some(written) => written.clone(),
                None => {
                    let cached =
                        cached_job(ctx, &ObjectRef::new(&job_name).within(&ns)).map(|j| JobView::from_job(&j, uid));
                    let recorded = status.stage(stage).as_ref().filter(|s| !s.state.is_finished());
                    match (cached, recorded.and_then(|s| s.job_uid.as_deref())) {
                        (Some(v), Some(r)) if v.uid == r => Some(v),
                        (_, Some(_)) => {
                            let job = call_twice(|| api.get_opt(&job_name))
                                .await
                                .map_err(|e| Error::kube(format!("get Job {job_name}"), e))?;
                            job.map(|j| JobView::from_job(&j, uid))
                        }
                        // The intent to create is on record but the cache has no Job: it may
                        // lag our own create (a read, not a second create, tells).
                        (None, None) if recorded.is_some_and(|s| s.state == StageState::Running) => {
                            call_twice(|| api.get_opt(&job_name))
                                .await
                                .map_err(|e| Error::kube(format!("get Job {job_name}"), e))?
                                .map(|j| JobView::from_job(&j, uid))
                        }
                        (cached, None) => cached,
                    }
                }
            };
            observed.set_job(stage, view);
        }
        observed.loader_message = self.read_loader_output(ctx, &observed).await?;
        observed.shard_jobs = self.shard_jobs(ctx, uid);
        observed.backup_jobs = self.backup_jobs(ctx, uid);
        observed.shard_times = self.read_shard_times(ctx, &observed).await?;
        observed.leftover_jobs = self.leftover_jobs(ctx, uid);
        observed.stuck = ctx.stuck.of(&ObjectRef::from_obj(&self.batch));
        observed.stuck_after_secs = ctx.stuck_after_secs;
        Ok(observed)
    }

    /// For a finished batch whose `ttlSecondsAfterFinished` is up, every Job it owns (by controller
    /// ownerReference UID) from the cache, so the TTL deletes earlier attempts' Jobs too.
    fn leftover_jobs(&self, ctx: &Context, uid: &str) -> Vec<(String, String)> {
        let Some(status) = self.batch.status.as_ref().filter(|s| s.phase.is_some_and(crate::api::Phase::is_terminal))
        else {
            return Vec::new();
        };
        let Some(ttl) = self.batch.spec.ttl_seconds_after_finished else { return Vec::new() };
        // Only once the TTL is up (a scan of the Job cache is not for every pass).
        let done = status.completion_time.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        if Timestamp::now() < super::deadline::add_secs(done, ttl.max(0)) {
            return Vec::new();
        }
        let ns = self.batch.namespace();
        ctx.jobs
            .state()
            .iter()
            .filter(|j| j.metadata.namespace == ns && j.metadata.deletion_timestamp.is_none())
            .filter(|j| {
                j.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
            })
            .filter_map(|j| Some((j.metadata.name.clone()?, j.metadata.uid.clone()?)))
            .collect()
    }

    /// The Jobs of the backup runs the status says were started, from the cache.
    fn backup_jobs(&self, ctx: &Context, uid: &str) -> std::collections::BTreeMap<u32, JobView> {
        let Some(backups) = self.batch.status.as_ref().and_then(|s| s.backups.as_ref()) else {
            return Default::default();
        };
        let (ns, name) = (self.batch.namespace().unwrap_or_default(), self.batch.name_any());
        let total = self.batch.status.as_ref().and_then(|s| s.shards.as_ref()).map_or(0, |s| s.total);
        let started = IndexSet::parse_opt(backups.started.as_deref())
            .unwrap_or_default()
            .clamp(total.min(crate::api::MAX_SHARDS as u32));
        started
            .iter()
            .filter_map(|i| {
                let job = ctx.jobs.get(&ObjectRef::new(&backup_job_name(&name, i)).within(&ns))?;
                Some((i, JobView::from_job(&job, uid)))
            })
            .collect()
    }

    /// The worker Job's shard run times, from its pods (a direct list): only with backups on,
    /// while the first run's worker stage runs and is near its end, so large batches are not
    /// listed on every pass.
    async fn read_shard_times(&self, ctx: &Context, observed: &Observed) -> Result<Option<ShardTimes>, Error> {
        let spec = &self.batch.spec;
        let Some(status) = self.batch.status.as_ref() else { return Ok(None) };
        let running = status.workers.as_ref().is_some_and(|w| w.state == StageState::Running);
        if !spec.completion.backup_stragglers || spec.suspend || !running || status.attempt() > 1 {
            return Ok(None);
        }
        let Some(job) = observed.job(Stage::Workers).filter(|j| j.owned && j.outcome == JobOutcome::Running) else {
            return Ok(None);
        };
        let Some(total) = status.shards.as_ref().map(|s| s.total) else { return Ok(None) };
        let parse = |s: Option<&str>| IndexSet::parse_opt(s).unwrap_or_default();
        let recorded = parse(status.succeeded_shards.as_deref());
        let finished =
            parse(job.completed_indexes.as_deref()).union(&recorded).len() + parse(job.failed_indexes.as_deref()).len();
        if !BackupPolicy::default().near_end(total, finished as usize) {
            return Ok(None);
        }
        Ok(Some(shard_times(&self.job_pods(ctx, job).await?)))
    }

    /// In an attempt that reruns failed shards, their Jobs from the cache (a Job created this
    /// pass and not cached yet is planned again: its create then finds it, by its name).
    fn shard_jobs(&self, ctx: &Context, uid: &str) -> std::collections::BTreeMap<u32, JobView> {
        let Some(status) = self.batch.status.as_ref() else { return Default::default() };
        let Some(attempt) = status.attempts.last().filter(|a| a.from == Some(RerunFrom::FailedShards)) else {
            return Default::default();
        };
        let (ns, name) = (self.batch.namespace().unwrap_or_default(), self.batch.name_any());
        let shards = IndexSet::parse_opt(attempt.shards.as_deref()).unwrap_or_default();
        shards
            .iter()
            .filter_map(|i| {
                let job = ctx.jobs.get(&ObjectRef::new(&shard_job_name(&name, attempt.attempt, i)).within(&ns))?;
                Some((i, JobView::from_job(&job, uid)))
            })
            .collect()
    }

    /// The loader's termination message, read from its pods (a direct list, not a cache: it is
    /// read once per batch) only between the loader Job's success and the status recording it.
    async fn read_loader_output(&self, ctx: &Context, observed: &Observed) -> Result<Option<String>, Error> {
        let unrecorded =
            self.batch.status.as_ref().and_then(|s| s.loader.as_ref()).is_none_or(|l| !l.state.is_finished());
        let Some(job) = observed.job(Stage::Loader).filter(|j| j.owned && unrecorded) else { return Ok(None) };
        if !matches!(job.outcome, JobOutcome::Succeeded { .. }) {
            return Ok(None);
        }
        Ok(loader_message(&self.job_pods(ctx, job).await?))
    }

    /// The pods of Job `job` (a direct list by its UID label, not a cache: read rarely).
    async fn job_pods(&self, ctx: &Context, job: &JobView) -> Result<Vec<Pod>, Error> {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &self.batch.namespace().unwrap_or_default());
        let selector = format!("{JOB_UID_LABEL}={}", job.uid);
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::kube(format!("list pods of Job {}", job.name), e))?;
        Ok(list.items)
    }

    /// A status write met 409: our view was stale (another writer, or a cache behind a write we
    /// did not remember). Reads the batch to plan again, rather than back off a whole pass;
    /// `Err(conflict)` once this pass has re-read [`MAX_CONFLICT_REREADS`] times.
    pub async fn reread_after_conflict(
        &mut self,
        ctx: &Context,
        api: &Api<PredictionBatch>,
        uid: &str,
        conflict: Error,
    ) -> Result<Reread, Error> {
        if self.conflicts >= MAX_CONFLICT_REREADS {
            return Err(conflict);
        }
        self.conflicts += 1;
        ctx.metrics.status_conflicts.inc();
        match read_batch(api, &self.batch.name_any()).await? {
            Some(mut fresh) if fresh.uid().as_deref() == Some(uid) => {
                trim_batch(&mut fresh);
                self.batch = fresh;
                Ok(Reread::Replan)
            }
            _ => Ok(Reread::Gone),
        }
    }

    /// Before acting on `actions`: if one builds a Job from a template this cached copy lacks,
    /// reads the batch whole. Same generation: the templates fill in; a newer one: plan again.
    pub async fn fill_templates(
        &mut self,
        api: &Api<PredictionBatch>,
        needs: impl IntoIterator<Item = Stage>,
    ) -> Result<Reread, Error> {
        if !needs.into_iter().any(|stage| jobs::template_dropped(&self.batch, stage)) {
            return Ok(Reread::Current);
        }
        match read_batch(api, &self.batch.name_any()).await? {
            Some(full)
                if full.uid() == self.batch.uid() && full.metadata.generation == self.batch.metadata.generation =>
            {
                self.batch.spec = full.spec;
                Ok(Reread::Current)
            }
            Some(full) if full.uid() == self.batch.uid() => {
                self.batch = full;
                Ok(Reread::Replan)
            }
            _ => Ok(Reread::Gone),
        }
    }
}

/// The batch as the apiserver has it now (`None` once it is gone).
async fn read_batch(api: &Api<PredictionBatch>, name: &str) -> Result<Option<PredictionBatch>, Error> {
    call_twice(|| api.get_opt(name)).await.map_err(|e| Error::kube("read batch", e))
}

fn latest(ctx: &Context, cached: &PredictionBatch) -> PredictionBatch {
    let key = ObjectRef::from_obj(cached);
    let mut written = ctx.written.lock().expect("poisoned");
    let Some(entry) = written.get_mut(&key) else { return cached.clone() };
    let Some(object) = entry.object.clone() else { return cached.clone() };
    if std::ptr::eq(crate::cache::newer(cached, &object), cached) {
        // Caught up (or a different batch by that name): the cache is the truth again.
        entry.object = None;
        return cached.clone();
    }
    debug!(cached = cached.resource_version(), written = object.resource_version(), "planning from our last write");
    (*object).clone()
}

/// Records a status write: its time (to coalesce progress-only writes) and the object (see
/// [`View::start`]).
pub fn remember(ctx: &Context, written: &PredictionBatch) {
    let key = ObjectRef::from_obj(written);
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
    all.insert(key, Written { at: Instant::now(), object: Some(Arc::new(object)) });
}

/// When our last status write of `batch` was made, if we remember it.
pub fn last_write(ctx: &Context, batch: &PredictionBatch) -> Option<Instant> {
    ctx.written.lock().expect("poisoned").get(&ObjectRef::from_obj(batch)).map(|w| w.at)
}
