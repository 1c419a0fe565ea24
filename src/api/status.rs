//! The observed state of a `PredictionBatch`, written only by the controller through the
//! status subresource. Everything here is derived from the cluster and is deterministic:
//! no field changes on a pass that observed nothing new.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Reason of `Stalled=True` (and of `Ready=False`, `Reconciling=False`) on a batch whose stored
/// object the controller cannot read: a value that does not fit the Rust types, stored under an
/// older CRD or one without bounds. The controller does not reconcile such a batch.
pub const REASON_INVALID_OBJECT: &str = super::StallReason::InvalidObject.as_str();

/// Observed state of a PredictionBatch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictionBatchStatus {
    /// The .metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pending, Loading, Running, Consolidating, Exporting, Succeeded, Failed or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Shard counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardCounts>,

    /// Item counts (items of succeeded / failed shards). With a loader, target is the count it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemCounts>,

    /// The opaque reference to the list of items the loader wrote (its itemsRef), passed to every later stage as ITEMS_REF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_ref: Option<String>,

    /// Succeeded items / target items, e.g. "112/120".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// Indexes of succeeded shards as compressed ranges, e.g. "0-2,4-6,8-29".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_shards: Option<String>,

    /// Indexes of failed shards as compressed ranges, e.g. "3,7". Once the worker stage has ended, every shard that did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_shards: Option<String>,

    /// When the quorum (completion.minSucceededPercent) was first met; the grace period counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_time: Option<Time>,

    // The stage, ETA and backup parts are boxed: the controller caches every batch, most batches
    // have only some of them, and an absent boxed part costs 8 bytes instead of its inline size
    // (about 700 bytes a batch in all; measured with bench/src/bin/cache-cost.rs).
    /// The loader stage (one Job), when spec.loader is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<Box<StageStatus>>,

    /// The worker stage (one Indexed Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Box<StageStatus>>,

    /// The consolidation stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidation: Option<Box<StageStatus>>,

    /// The export stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<Box<StageStatus>>,

    /// When the batch was last suspended (cleared when it resumes). The grace period does not run while suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_time: Option<Time>,

    /// Seconds the batch spent suspended after its quorum was met; the grace period ends this much later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_paused_seconds: Option<i64>,

    /// When the batch started: the worker Job's creation was put on record (the create follows at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the batch reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// From startTime to completionTime once the batch ended, e.g. "4m12s" (the DURATION column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,

    /// Pods of the batch that have waited longer than the controller's --stuck-pod-after for something that needs someone to act (an image that cannot be pulled, a missing Secret or ConfigMap, no node that fits), by stage and shard; at most 10. Cleared when they move on and when the batch ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub stuck_pods: Vec<StuckPodStatus>,

    /// While the workers run: their throughput and when the quorum and the last shard are expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<Box<EtaStatus>>,

    /// The spec.rerun.token the latest attempt answers (the one the batch was created with, then each rerun's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_token: Option<String>,

    /// Backup runs of straggling shards (completion.backupStragglers), as shard index ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Box<BackupStatus>>,

    /// The batch's attempts, oldest first, once it has been rerun (the last is the current one; at most 10 are kept). The counts and stages above always describe the whole batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub attempts: Vec<AttemptStatus>,

    /// Ready, Reconciling, Stalled and Degraded (the conditions kstatus, Argo CD and kubectl wait read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::crd::conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Backup runs of straggling shards (completion.backupStragglers): each shard gets at most one, a
/// Job named <batch>-workers-b<shard>.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Shards a backup was started for, e.g. "3,7" (recorded before the backup Job is created, so no shard gets two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Shards whose backup succeeded before the original run: they count as succeeded once, and the original run is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub won: Option<String>,
    /// Shards whose backup failed or was stopped (the original run decides those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

/// The worker stage's throughput and expected end, estimated from the shards that finished in the
/// last few minutes. Updated only when a shard finishes (with the progress it comes with), so an
/// idle batch writes nothing; once the workers are done it is removed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtaStatus {
    /// When the quorum (completion.minSucceededPercent) is expected to be met; absent once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_time: Option<Time>,
    /// When every shard is expected to have finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Shards finished per minute over the window, 3 significant digits, e.g. "12.5".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards_per_minute: Option<String>,
    /// Start of the throughput window (between 2 and 4 minutes long once the stage has run that long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start_time: Option<Time>,
    /// Shards finished (succeeded or failed) at windowStartTime.
    #[serde(default)]
    pub window_finished_shards: u32,
}

/// One stuck pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StuckPodStatus {
    /// loader, workers, consolidation or export.
    pub stage: String,
    /// The worker shard (its completion index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    pub pod: String,
    /// ImagePullBackOff, ErrImagePull, InvalidImageName, CreateContainerConfigError, CreateContainerError or Unschedulable.
    pub reason: String,
    /// The kubelet's or the scheduler's message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Since when it has been waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// One attempt of a batch: the first run, or a rerun.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptStatus {
    /// 1 for the first run, then 2, 3, ... Rerun Jobs are named <batch>-r<attempt>-<stage>.
    pub attempt: u32,
    /// The spec.rerun.token this attempt answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The stage it started from (absent for the first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<super::RerunFrom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The shards a FailedShards attempt runs again, as ranges (fixed when it starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<String>,
    /// Those of them that failed again, as ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_shards: Option<String>,
    /// Succeeded or Failed once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Phase>,
    /// The reason of the batch's Ready (succeeded) or Stalled (failed) condition when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Items of succeeded shards when it ended.
    #[serde(default)]
    pub succeeded_items: u32,
    /// Items of failed shards when it ended.
    #[serde(default)]
    pub failed_items: u32,
}

impl PredictionBatchStatus {
    /// The current attempt: 1 until the batch is rerun.
    pub fn attempt(&self) -> u32 {
        self.attempts.last().map_or(1, |a| a.attempt.max(1))
    }
}

/// Lifecycle phase of a batch (Loading only with a loader). Phases only move forward, except Suspended, which returns to the phase it interrupted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum Phase {
    Pending,
    Loading,
    Running,
    Consolidating,
    Exporting,
    Succeeded,
    Failed,
    Suspended,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Loading => "Loading",
            Phase::Running => "Running",
            Phase::Consolidating => "Consolidating",
            Phase::Exporting => "Exporting",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Suspended => "Suspended",
        }
    }
}

/// Shard counts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ShardCounts {
    /// ceil(targetCount / itemsPerShard).
    pub total: u32,
    /// Shards whose pod succeeded.
    pub succeeded: u32,
    /// Shards that failed (after their retries), or that were stopped unfinished.
    pub failed: u32,
    /// Shards with a running pod.
    pub active: u32,
}

/// Item counts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ItemCounts {
    /// spec.targetCount, or the count the loader reported.
    pub target: u32,
    /// Items of succeeded shards.
    pub succeeded: u32,
    /// Items of failed shards.
    pub failed: u32,
}

/// One stage and the Job that runs it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Name of the stage's Job (deterministic).
    pub job_name: String,
    /// UID of the stage's Job once the controller has seen it. It rides on the stage's next status
    /// write (its Job is found by `jobName` meanwhile), so it can be absent while the stage runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_uid: Option<String>,
    /// Pending (planned while the batch is suspended, no Job yet), Running (its Job is created, or its
    /// create is on record and follows this write), Stopping (ending early, pods being stopped),
    /// Succeeded or Failed.
    pub state: StageState,
    /// When the stage started: its Job's creation was put on record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the stage began ending early (state Stopping): it ends once its Job confirms the stop, and at the latest a minute later or at completeBy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_time: Option<Time>,
    /// When the stage ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// From startTime to completionTime once the stage ended, e.g. "1m5s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Why the stage ended the way it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of one stage.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum StageState {
    #[default]
    Pending,
    Running,
    Stopping,
    Succeeded,
    Failed,
}

impl StageState {
    pub fn is_finished(self) -> bool {
        matches!(self, StageState::Succeeded | StageState::Failed)
    }
}
