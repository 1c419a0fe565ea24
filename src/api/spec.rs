//! The desired state of a `PredictionBatch`: what users `kubectl apply`.
//!
//! Bounds and defaults live on the fields (schemars); cross-field and transition rules (CEL)
//! are added in [`super::crd`], where the whole admission contract can be read in one place.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::PredictionBatchStatus;

/// The most shards one batch may have (one Indexed Job's completions, and the CRD's bound).
pub const MAX_SHARDS: u64 = 10_000;

/// A batch of predictions for one game date: worker shards, then one consolidation, then one export.
/// All progress is kept in `.status`, derived from the Jobs the controller owns, so a controller
/// restart never loses or repeats a stage.
// The printer columns repeat `type_ = ...` keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "predictions.dev",
    version = "v1alpha1",
    kind = "PredictionBatch",
    plural = "predictionbatches",
    shortname = "pb",
    category = "predictions",
    namespaced,
    status = "PredictionBatchStatus",
    derive = "PartialEq",
    doc = "PredictionBatch runs one batch prediction pipeline: an optional loader Job that counts the day's items, an Indexed Job of worker shards, then a consolidation Job, then an export Job. Progress lives in .status.",
    printcolumn(name = "Date", type_ = "string", json_path = ".spec.gameDate", description = "Game date of the batch"),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Loading, Running, Consolidating, Exporting, Succeeded, Failed or Suspended"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress",
        description = "Succeeded items / target items"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.items.failed",
        description = "Items in failed shards"
    ),
    printcolumn(
        name = "Duration",
        type_ = "string",
        json_path = ".status.duration",
        description = "From start to end, once the batch ended"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Shards",
        type_ = "integer",
        json_path = ".status.shards.total",
        priority = "1",
        description = "Number of worker shards"
    ),
    printcolumn(
        name = "ETA",
        type_ = "string",
        json_path = ".status.eta.completionTime",
        priority = "1",
        description = "While the workers run: when the last shard is expected (RFC 3339)"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = "1",
        description = "Message of the Ready condition"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PredictionBatchSpec {
    /// Game date this batch predicts, as YYYY-MM-DD. Immutable.
    pub game_date: String,

    /// Number of work items (e.g. players) to predict, 0..100000 (0: a day with nothing to do, see completion.onNoItems). Exactly one of targetCount and loader. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_count: Option<u32>,

    /// The loader step, run first as one Job when the count is only known on the day: its first container writes {"targetCount": N, "itemsRef": "..."} to its termination message (/dev/termination-log); the controller records status.items.target and status.itemsRef from it, and every later stage gets TARGET_COUNT and ITEMS_REF. Its containers get PREDICTION_BATCH and GAME_DATE. Exactly one of targetCount and loader. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<StageSpec>,

    /// Work items per worker shard (default 1). Shards = ceil(targetCount / itemsPerShard), at most 10000. Immutable.
    #[serde(default = "default_items_per_shard")]
    pub items_per_shard: u32,

    /// How many worker shards may run at once (default 10, 1..1000). May be changed while the batch runs.
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,

    /// The worker shards: one pod per shard, retried per shard by the Job controller. Immutable.
    pub worker: WorkerSpec,

    /// When the worker stage counts as done: quorum, grace period and deadline.
    #[serde(default)]
    pub completion: CompletionSpec,

    /// The consolidation step, run once after the workers (usually set). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidation: Option<StageSpec>,

    /// The export step ("phase 6"), run once after consolidation. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<StageSpec>,

    /// Suspends the batch: running Jobs are suspended (their pods stop) and no new stage starts. Resuming continues where it stopped.
    #[serde(default)]
    pub suspend: bool,

    /// Runs the end of a finished batch again, in place: change rerun.token (any new value) to start a new attempt from rerun.from. Applying the same token again does nothing; a token set when the batch is created, or changed while it runs, starts nothing until it has finished. May be changed at any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun: Option<RerunSpec>,

    /// Once the batch has finished, delete its Jobs (and their pods) after this many seconds. The batch itself is kept. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Worker shards.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Pod template of one worker shard. The controller adds labels and the env PREDICTION_BATCH, GAME_DATE, TARGET_COUNT, SHARD_COUNT, ITEMS_PER_SHARD and SHARD_INDEX to every container.
    #[schemars(schema_with = "super::template_schema::pod_template")]
    pub template: PodTemplate,

    /// Retries of one shard before it counts as failed (default 3).
    #[serde(default = "default_backoff_per_shard")]
    pub backoff_limit_per_shard: i32,

    /// Fail the batch at once when more shards than this have failed. Unset: only the quorum decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_shards: Option<i32>,
}

/// When the worker stage is done.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompletionSpec {
    /// Quorum: the share of items (percent, 1..100, default 100) that must succeed for consolidation to run. Immutable.
    #[serde(default = "default_min_succeeded_percent")]
    pub min_succeeded_percent: u32,

    /// Once the quorum is met, wait at most this many seconds (default 0) for the remaining shards, then stop them and consolidate. Immutable.
    #[serde(default)]
    pub grace_seconds: i64,

    /// RFC 3339 time (e.g. tip-off) at which waiting stops: consolidate if the quorum is met, fail otherwise. May be changed while the batch runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_by: Option<String>,

    /// A day with no items (target count 0): SkipStages (default) ends the batch Succeeded (reason NoItems) without running anything more; RunStages still runs consolidation and export (with no succeeded shards). No worker pod runs either way. Immutable.
    #[serde(default)]
    pub on_no_items: NoItemsPolicy,

    /// Backup runs for stragglers (the MapReduce backup-task idea; default false; needs completeBy). Near the end of the worker stage, before the quorum is met, a shard that has run more than twice the median time of its finished peers (at least 5) gets one backup run, a Job of its own (<batch>-workers-b<shard>, SHARD_INDEX its index); whichever run succeeds first counts, once. A shard's output must be idempotent: the same shard writes the same output to the same place. May be changed while the batch runs.
    #[serde(default)]
    pub backup_stragglers: bool,
}

impl Default for CompletionSpec {
    fn default() -> Self {
        Self {
            min_succeeded_percent: default_min_succeeded_percent(),
            grace_seconds: 0,
            complete_by: None,
            on_no_items: NoItemsPolicy::default(),
            backup_stragglers: false,
        }
    }
}

/// A request to run the end of a finished batch again (a new attempt).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RerunSpec {
    /// Opaque; a value different from the one the latest attempt answered starts a new attempt (e.g. a date, a ticket id, a counter).
    pub token: String,

    /// Where the new attempt starts (default FailedShards): it and every later stage run again, as new Jobs (<batch>-r<attempt>-<stage>; a rerun shard <batch>-r<attempt>-workers-<shard>). Every stage before it must have succeeded.
    #[serde(default)]
    pub from: RerunFrom,
}

/// Where a rerun starts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum RerunFrom {
    /// Only the shards that did not succeed (each as a Job of its own, SHARD_INDEX its real index), then consolidation and export. With no such shard: consolidation and export.
    #[default]
    FailedShards,
    /// Consolidation, then export.
    Consolidation,
    /// Only the export.
    Export,
}

/// What a batch with no items does after the workers (which have nothing to run).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NoItemsPolicy {
    /// Succeed at once (reason NoItems): consolidation and export do not run.
    #[default]
    SkipStages,
    /// Run consolidation and export anyway (e.g. to publish an empty day).
    RunStages,
}

/// A single-pod stage (loader, consolidation or export).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageSpec {
    /// Pod template of the stage. Consolidation and export containers get the worker env (without SHARD_INDEX) plus SUCCEEDED_SHARDS, FAILED_SHARDS and SUCCEEDED_ITEMS; loader containers get PREDICTION_BATCH and GAME_DATE.
    #[schemars(schema_with = "super::template_schema::pod_template")]
    pub template: PodTemplate,

    /// Retries of the stage's pod before the stage (and the batch) fails (default 2).
    #[serde(default = "default_stage_backoff")]
    pub backoff_limit: i32,
}

/// A user's pod template: on the wire always the template itself; in memory boxed, so a batch
/// is about 1 KB rather than 7, and absent from cached copies of idle batches (see
/// [`PodTemplate::drop_cached`]), which reconcile only reads when it builds a Job.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(transparent)]
pub struct PodTemplate(Option<Box<PodTemplateSpec>>);

impl PodTemplate {
    /// The template, or `None` when this copy had it dropped (a cache copy): read the batch anew.
    pub fn get(&self) -> Option<&PodTemplateSpec> {
        self.0.as_deref()
    }

    /// Frees the template in a cached copy of the batch.
    pub fn drop_cached(&mut self) {
        self.0 = None;
    }
}

impl From<PodTemplateSpec> for PodTemplate {
    fn from(t: PodTemplateSpec) -> Self {
        Self(Some(Box::new(t)))
    }
}

fn default_items_per_shard() -> u32 {
    1
}
fn default_parallelism() -> u32 {
    10
}
fn default_backoff_per_shard() -> i32 {
    3
}
fn default_min_succeeded_percent() -> u32 {
    100
}
fn default_stage_backoff() -> i32 {
    2
}
