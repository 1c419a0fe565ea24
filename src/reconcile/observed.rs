//! What one reconcile pass saw: the batch's child Jobs, reduced to the facts the planner reads.
//! Building these views is pure too, so the planner can be fed arbitrary (even nonsensical) input.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::stragglers::ShardTimes;
use crate::api::{Stage, StageMap};
use crate::labels::OUTCOME_FINALIZER;

/// How a Job ended, as its conditions say. `SuccessCriteriaMet` / `FailureTarget` come before
/// `Complete` / `Failed` (which wait for the pods to be gone) and are the earliest moment to react.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Running,
    Succeeded { at: Option<Timestamp> },
    Failed { reason: String, message: String, at: Option<Timestamp> },
}

/// One child Job as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub name: String,
    pub uid: String,
    /// The Job's controller ownerReference points at this batch (by UID).
    pub owned: bool,
    pub suspended: bool,
    /// The Job controller has acted on the suspension (condition `Suspended=True`): it has
    /// dropped the tracking finalizers of the pods it stopped, so they can no longer change the
    /// completed indexes, even if they never finish terminating.
    pub suspend_confirmed: bool,
    /// The Job has a deletionTimestamp: it is going away.
    pub deleting: bool,
    /// Position of our outcome finalizer in `metadata.finalizers`, while the Job carries it.
    pub outcome_finalizer: Option<usize>,
    pub parallelism: Option<i32>,
    pub active: u32,
    pub terminating: u32,
    pub completed_indexes: Option<String>,
    pub failed_indexes: Option<String>,
    pub outcome: JobOutcome,
    pub created: Option<Timestamp>,
    pub start_time: Option<Timestamp>,
}

impl JobView {
    pub fn from_job(job: &Job, batch_uid: &str) -> Self {
        let meta = &job.metadata;
        let owned = meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == batch_uid);
        let spec = job.spec.as_ref();
        let status = job.status.clone().unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        let is_true = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
        let outcome = if let Some(c) = is_true("Failed").or_else(|| is_true("FailureTarget")) {
            JobOutcome::Failed {
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
                at: c.last_transition_time.as_ref().map(|t| t.0),
            }
        } else if let Some(c) = is_true("Complete").or_else(|| is_true("SuccessCriteriaMet")) {
            let at = status.completion_time.as_ref().map(|t| t.0).or(c.last_transition_time.as_ref().map(|t| t.0));
            JobOutcome::Succeeded { at }
        } else {
            JobOutcome::Running
        };
        let count = |v: Option<i32>| v.unwrap_or(0).max(0) as u32;
        JobView {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            owned,
            suspended: spec.and_then(|s| s.suspend).unwrap_or(false),
            suspend_confirmed: is_true("Suspended").is_some(),
            deleting: meta.deletion_timestamp.is_some(),
            outcome_finalizer: meta.finalizers.iter().flatten().position(|f| f == OUTCOME_FINALIZER),
            parallelism: spec.and_then(|s| s.parallelism),
            active: count(status.active),
            terminating: count(status.terminating),
            completed_indexes: status.completed_indexes,
            failed_indexes: status.failed_indexes,
            outcome,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            start_time: status.start_time.map(|t| t.0),
        }
    }

    /// Pods still running or shutting down.
    pub fn has_pods(&self) -> bool {
        self.active > 0 || self.terminating > 0
    }
}

/// The loader's output: the termination message of the first container of the Job's succeeded
/// pod (the pod named first, should a retry have left two). `None` when there is no such pod, or
/// its container wrote nothing.
pub fn loader_message(pods: &[Pod]) -> Option<String> {
    let succeeded = |p: &&Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
    let pod = pods.iter().filter(succeeded).min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))?;
    let first = pod.spec.as_ref()?.containers.first()?.name.as_str();
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let terminated = statuses.iter().find(|c| c.name == first)?.state.as_ref()?.terminated.as_ref()?;
    terminated.message.clone()
}

/// Default of `--stuck-pod-after`.
pub const DEFAULT_STUCK_AFTER_SECS: i64 = 15;

/// Everything one pass observed about a batch besides the batch itself.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Each stage's Job by its deterministic name, if one exists.
    pub jobs: StageMap<Option<JobView>>,
    /// Creates the apiserver refused as invalid in this pass (e.g. a bad pod template), with its message.
    pub rejected: Vec<(Stage, String)>,
    /// The termination message of the loader's succeeded pod, read once the loader Job succeeded
    /// and until its outcome is recorded (`None`: no such pod or no message).
    pub loader_message: Option<String>,
    /// In an attempt that reruns failed shards, each shard's own Job, by shard index.
    pub shard_jobs: std::collections::BTreeMap<u32, JobView>,
    /// The Jobs of backup runs the status says were started, by shard index.
    pub backup_jobs: std::collections::BTreeMap<u32, JobView>,
    /// Run times of the worker Job's shards, read from its pods only while backups are on and the
    /// stage is near its end (`None` otherwise).
    pub shard_times: Option<ShardTimes>,
    /// The other Jobs this batch owns (earlier attempts', rerun shards', backup runs'), by name
    /// and UID, not being deleted: read only for a finished batch with `ttlSecondsAfterFinished`.
    pub leftover_jobs: Vec<(String, String)>,
    /// Pods of the batch that wait for something that needs someone to act, by stage and shard
    /// (from the pod watch's index), and how long they may wait before the batch says so.
    pub stuck: Vec<super::stuck::StuckPod>,
    pub stuck_after_secs: i64,
    pub now: Timestamp,
}

impl Observed {
    pub fn new(now: Timestamp) -> Self {
        Observed {
            jobs: StageMap::default(),
            rejected: Vec::new(),
            loader_message: None,
            shard_jobs: Default::default(),
            backup_jobs: Default::default(),
            shard_times: None,
            leftover_jobs: Vec::new(),
            stuck: Vec::new(),
            stuck_after_secs: DEFAULT_STUCK_AFTER_SECS,
            now,
        }
    }

    pub fn job(&self, stage: Stage) -> Option<&JobView> {
        self.jobs.get(stage).as_ref()
    }

    pub fn set_job(&mut self, stage: Stage, job: Option<JobView>) {
        *self.jobs.get_mut(stage) = job;
    }

    pub fn rejection(&self, stage: Stage) -> Option<&str> {
        self.rejected.iter().find(|(s, _)| *s == stage).map(|(_, m)| m.as_str())
    }
}
