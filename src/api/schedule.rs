//! The `predictions.dev/v1alpha1` `PredictionSchedule` API: a PredictionBatch made every time a
//! cron expression fires in an IANA time zone (issue 17), as CronJob makes Jobs.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Runs a PredictionBatch pipeline on a schedule: each time `schedule` fires in `timeZone`, one
/// PredictionBatch `<schedule>-<yyyymmdd>-<hhmm>` is created from `batchTemplate`, with the game
/// date of that day. The name is deterministic, so a restart can never create a run twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "predictions.dev",
    version = "v1alpha1",
    kind = "PredictionSchedule",
    plural = "predictionschedules",
    shortname = "pbs",
    category = "predictions",
    namespaced,
    status = "PredictionScheduleStatus",
    derive = "PartialEq",
    doc = "PredictionSchedule creates a PredictionBatch each time its cron schedule fires in its time zone (as CronJob creates Jobs), named <schedule>-<yyyymmdd>-<hhmm> after the scheduled wall time, so a run is created once whatever restarts.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule", description = "Cron expression"),
    printcolumn(name = "TimeZone", type_ = "string", json_path = ".spec.timeZone", description = "IANA time zone"),
    printcolumn(
        name = "Suspend",
        type_ = "boolean",
        json_path = ".spec.suspend",
        description = "No new runs while true"
    ),
    printcolumn(
        name = "Last",
        type_ = "date",
        json_path = ".status.lastScheduleTime",
        description = "When the latest batch was scheduled"
    ),
    printcolumn(
        name = "Next",
        type_ = "string",
        json_path = ".status.nextScheduleTime",
        description = "When the next batch is scheduled (UTC)"
    ),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.active[*].name",
        description = "Batches of this schedule still running"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = "1",
        description = "Message of the Ready condition"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PredictionScheduleSpec {
    /// Cron expression, five fields (minute hour day-of-month month day-of-week) or a nickname such as @daily, read on the wall clock of timeZone. Day of month and day of week both restricted means either, as in CronJob.
    pub schedule: String,

    /// IANA time zone name the schedule is read in (e.g. America/New_York); an unknown name is refused. Daylight saving: a run whose wall time a spring-forward night skips runs at the first instant after the gap (02:30 runs at 03:00); one whose wall time a fall-back night repeats runs once, at its first occurrence.
    pub time_zone: String,

    /// Days added to the scheduled date (on timeZone's wall clock) to make the batch's gameDate (-7..7, default 0: the day of the run).
    #[serde(default)]
    pub game_date_offset_days: i32,

    /// The created batch's completion.completeBy, relative to the scheduled time: a duration such as +5h30m (tip-off for a 7 AM run), 90m or 2h. Overrides a completeBy in batchTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_by_after: Option<String>,

    /// What to do when a run is due while an earlier batch of this schedule is still running: Forbid (default) skips the run until the earlier one has finished (it starts then if still inside startingDeadlineSeconds), Allow runs both, Replace deletes the running batch and starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// A run that could not start on time (the controller was down, or Forbid held it) starts only if at most this many seconds late; later, it is skipped (event RunMissed). Unset: no limit. Of several missed runs only the latest ever starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<i64>,

    /// Succeeded batches of this schedule to keep (default 3); older ones are deleted.
    #[serde(default = "default_successful_history")]
    pub successful_batches_history_limit: i32,

    /// Failed batches of this schedule to keep (default 1); older ones are deleted.
    #[serde(default = "default_failed_history")]
    pub failed_batches_history_limit: i32,

    /// No new runs while true (batches already running go on). Runs missed meanwhile follow startingDeadlineSeconds when it is set back to false.
    #[serde(default)]
    pub suspend: bool,

    /// The batch each run creates.
    pub batch_template: BatchTemplate,
}

/// What a run creates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchTemplate {
    /// Labels and annotations of the created batch (the controller adds the label predictions.dev/schedule and the annotation predictions.dev/scheduled-at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BatchTemplateMeta>,

    /// A PredictionBatch spec without gameDate (each run sets it from its scheduled date) and without rerun. Validated like a batch's spec.
    // The schema is the batch's, built in `schedule_crd` from the batch CRD; here it stays JSON,
    // decoded as a `PredictionBatchSpec` only once a run has set its gameDate.
    pub spec: serde_json::Map<String, serde_json::Value>,
}

/// Labels and annotations for created batches.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BatchTemplateMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A due run while an earlier batch of the schedule still runs.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start it anyway.
    Allow,
    /// Wait for the running one (within startingDeadlineSeconds), as CronJob's Forbid.
    #[default]
    Forbid,
    /// Delete the running one, then start it.
    Replace,
}

/// Observed state of a PredictionSchedule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictionScheduleStatus {
    /// The .metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The scheduled time of the latest run that created its batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the latest batch of this schedule succeeded (its Ready condition's transition time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,

    /// The scheduled time of the latest run skipped because it could not start inside startingDeadlineSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_missed_time: Option<Time>,

    /// The next scheduled time (unset while suspended or when the expression never fires again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// Batches of this schedule that have not finished, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ActiveBatch>,

    /// Ready (the schedule is valid and running, or suspended) and Stalled (it cannot run: InvalidSchedule, InvalidTemplate, BatchNameTaken).
    #[serde(default)]
    #[schemars(schema_with = "super::crd::conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A reference to a batch of the schedule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct ActiveBatch {
    pub name: String,
    pub uid: String,
}

/// Why a schedule is not `Ready`, and its Ready reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleReason {
    /// Ready=True: runs will be created on time.
    Scheduled,
    /// Ready=True: spec.suspend holds new runs.
    Suspended,
    /// Stalled=True: the cron expression or time zone cannot be read, or the expression never fires again (e.g. 30 February).
    InvalidSchedule,
    /// Stalled=True: batchTemplate (with a date and completeBy filled in) is not a valid batch spec, or completeByAfter is not a duration.
    InvalidTemplate,
    /// Stalled=True: a batch with the run's name exists and is not this schedule's.
    BatchNameTaken,
}

impl ScheduleReason {
    pub const ALL: [ScheduleReason; 5] = [
        ScheduleReason::Scheduled,
        ScheduleReason::Suspended,
        ScheduleReason::InvalidSchedule,
        ScheduleReason::InvalidTemplate,
        ScheduleReason::BatchNameTaken,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ScheduleReason::Scheduled => "Scheduled",
            ScheduleReason::Suspended => "Suspended",
            ScheduleReason::InvalidSchedule => "InvalidSchedule",
            ScheduleReason::InvalidTemplate => "InvalidTemplate",
            ScheduleReason::BatchNameTaken => "BatchNameTaken",
        }
    }

    pub const fn stalls(self) -> bool {
        !matches!(self, ScheduleReason::Scheduled | ScheduleReason::Suspended)
    }
}

/// Reasons of the Events a schedule gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleEventReason {
    /// A run created its batch.
    BatchCreated,
    /// More than one run was due at once (the controller was down): only the latest started (Warning).
    RunsMissed,
    /// A due run was not started inside startingDeadlineSeconds (Warning).
    RunMissed,
    /// concurrencyPolicy Replace deleted a running batch for a new run.
    BatchReplaced,
    /// A finished batch beyond the history limits was deleted.
    BatchDeleted,
    /// The schedule cannot run (a [`ScheduleReason`] that stalls; Warning).
    Stalled(ScheduleReason),
}

impl ScheduleEventReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleEventReason::BatchCreated => "BatchCreated",
            ScheduleEventReason::RunsMissed => "RunsMissed",
            ScheduleEventReason::RunMissed => "RunMissed",
            ScheduleEventReason::BatchReplaced => "BatchReplaced",
            ScheduleEventReason::BatchDeleted => "BatchDeleted",
            ScheduleEventReason::Stalled(r) => r.as_str(),
        }
    }

    pub fn is_warning(self) -> bool {
        matches!(
            self,
            ScheduleEventReason::RunsMissed | ScheduleEventReason::RunMissed | ScheduleEventReason::Stalled(_)
        )
    }
}

fn default_successful_history() -> i32 {
    3
}
fn default_failed_history() -> i32 {
    1
}
