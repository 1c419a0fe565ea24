//! Condition types, condition statuses, the reasons of every condition and the reasons of the
//! Events the controller publishes: a public contract (users, `kubectl wait`, alerts and GitOps
//! tools match on them, as on Kubernetes' `batch.JobReason*`), so they live here, typed, in one
//! place. The README's reason table is tested against [`StallReason::ALL`].

use std::fmt;

use super::{Phase, Stage};

/// `True` once the batch has succeeded (`kubectl wait --for=condition=Ready`).
pub const CONDITION_READY: &str = "Ready";
/// `True` while the batch is in progress (kstatus: still reconciling).
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// `True` when the batch failed or is stuck; its reason is a [`StallReason`].
pub const CONDITION_STALLED: &str = "Stalled";
/// `True` (reason `ShardsFailed`) as soon as any shard failed, even if the batch succeeds on quorum.
pub const CONDITION_DEGRADED: &str = "Degraded";
/// While the workers of a batch with a `completeBy` run and an ETA is known: `True` (reason
/// `EtaPastDeadline`) when the quorum is expected after the deadline, `False` (`OnTrack`) when
/// before. Absent otherwise.
pub const CONDITION_AT_RISK: &str = "AtRisk";
/// While the batch has not ended: `True` (reason: a [`StuckReason`]) when pods of it have waited
/// longer than `--stuck-pod-after` for something that needs someone to act, `False`
/// (`NoStuckPods`) once they moved on. Absent for a batch that never had one.
pub const CONDITION_PODS_STUCK: &str = "PodsStuck";

/// Why a pod of a batch is stuck: the container waiting reason the kubelet reports, or the
/// scheduler's `Unschedulable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StuckReason {
    ImagePullBackOff,
    ErrImagePull,
    InvalidImageName,
    CreateContainerConfigError,
    CreateContainerError,
    Unschedulable,
}

impl StuckReason {
    pub const ALL: [StuckReason; 6] = [
        StuckReason::ImagePullBackOff,
        StuckReason::ErrImagePull,
        StuckReason::InvalidImageName,
        StuckReason::CreateContainerConfigError,
        StuckReason::CreateContainerError,
        StuckReason::Unschedulable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            StuckReason::ImagePullBackOff => "ImagePullBackOff",
            StuckReason::ErrImagePull => "ErrImagePull",
            StuckReason::InvalidImageName => "InvalidImageName",
            StuckReason::CreateContainerConfigError => "CreateContainerConfigError",
            StuckReason::CreateContainerError => "CreateContainerError",
            StuckReason::Unschedulable => "Unschedulable",
        }
    }

    /// The reason of a container's `waiting` state, if it is one of ours.
    pub fn from_waiting(reason: &str) -> Option<StuckReason> {
        StuckReason::ALL.into_iter().find(|r| r.as_str() == reason && *r != StuckReason::Unschedulable)
    }
}

/// Why a batch is `Stalled=True`: failed, or (the recoverable ones) stuck until something changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StallReason {
    /// The worker stage ended below `minSucceededPercent`.
    QuorumNotMet,
    /// So many items failed that the quorum can no longer be met.
    QuorumUnreachable,
    /// `completeBy` passed below the quorum.
    DeadlineExceeded,
    /// More than `worker.maxFailedShards` shards failed.
    MaxFailedShardsExceeded,
    /// The loader Job failed (after its retries).
    LoaderFailed,
    /// The loader finished but its termination message is missing, malformed or out of range.
    LoaderOutputInvalid,
    /// The worker Job failed for another reason.
    WorkersFailed,
    /// The consolidation Job failed.
    ConsolidationFailed,
    /// The export Job failed.
    ExportFailed,
    /// The apiserver refused a stage's Job.
    JobRejected,
    /// A stage's Job was deleted before its outcome was recorded.
    JobDeleted,
    /// Failed, with the original reason no longer on record.
    Failed,
    /// A Job with the stage's name exists and is not this batch's (recoverable).
    JobNameConflict,
    /// The spec cannot be planned (recoverable).
    InvalidSpec,
    /// The stored object cannot be read at all (recoverable).
    InvalidObject,
}

impl StallReason {
    pub const ALL: [StallReason; 15] = [
        StallReason::QuorumNotMet,
        StallReason::QuorumUnreachable,
        StallReason::DeadlineExceeded,
        StallReason::MaxFailedShardsExceeded,
        StallReason::LoaderFailed,
        StallReason::LoaderOutputInvalid,
        StallReason::WorkersFailed,
        StallReason::ConsolidationFailed,
        StallReason::ExportFailed,
        StallReason::JobRejected,
        StallReason::JobDeleted,
        StallReason::Failed,
        StallReason::JobNameConflict,
        StallReason::InvalidSpec,
        StallReason::InvalidObject,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            StallReason::QuorumNotMet => "QuorumNotMet",
            StallReason::QuorumUnreachable => "QuorumUnreachable",
            StallReason::DeadlineExceeded => "DeadlineExceeded",
            StallReason::MaxFailedShardsExceeded => "MaxFailedShardsExceeded",
            StallReason::LoaderFailed => "LoaderFailed",
            StallReason::LoaderOutputInvalid => "LoaderOutputInvalid",
            StallReason::WorkersFailed => "WorkersFailed",
            StallReason::ConsolidationFailed => "ConsolidationFailed",
            StallReason::ExportFailed => "ExportFailed",
            StallReason::JobRejected => "JobRejected",
            StallReason::JobDeleted => "JobDeleted",
            StallReason::Failed => "Failed",
            StallReason::JobNameConflict => "JobNameConflict",
            StallReason::InvalidSpec => "InvalidSpec",
            StallReason::InvalidObject => "InvalidObject",
        }
    }

    /// Stuck until something changes, not failed: the batch goes on once the cause is gone.
    pub const fn recoverable(self) -> bool {
        matches!(self, StallReason::JobNameConflict | StallReason::InvalidSpec | StallReason::InvalidObject)
    }
}

impl fmt::Display for StallReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<StallReason> for String {
    fn eq(&self, other: &StallReason) -> bool {
        self == other.as_str()
    }
}

impl StallReason {
    /// The reason of a stage whose Job failed.
    pub const fn stage_failed(stage: Stage) -> StallReason {
        match stage {
            Stage::Loader => StallReason::LoaderFailed,
            Stage::Workers => StallReason::WorkersFailed,
            Stage::Consolidation => StallReason::ConsolidationFailed,
            Stage::Export => StallReason::ExportFailed,
        }
    }
}

/// `status` of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// The reason of one of the batch's own conditions (`Ready`, `Reconciling`, `Stalled`, `Degraded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The batch failed or is stuck (on all of `Ready`, `Reconciling` and `Stalled`).
    Stalled(StallReason),
    /// In progress: the phase's name (`Pending`, `Loading`, `Running`, `Consolidating`, `Exporting`) on
    /// `Ready` and `Reconciling`.
    InProgress(Phase),
    /// `Stalled=False` while the batch is in progress.
    Progressing,
    /// The batch succeeded.
    Succeeded,
    /// The batch succeeded with nothing to do: its target count (from the spec or the loader) was 0.
    NoItems,
    /// `spec.suspend` holds the batch.
    Suspended,
    /// `Degraded=True`: some shards failed.
    ShardsFailed,
    /// `Degraded=False`.
    NoFailedShards,
    /// `AtRisk=True`: at the current throughput the quorum is met after `completeBy`.
    EtaPastDeadline,
    /// `AtRisk=False`: the quorum is expected before `completeBy`.
    OnTrack,
    /// `PodsStuck=True`: the first stuck pod's reason.
    Stuck(StuckReason),
    /// `PodsStuck=False`: the pods that were stuck moved on.
    NoStuckPods,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Stalled(r) => r.as_str(),
            Reason::InProgress(p) => p.as_str(),
            Reason::Progressing => "Progressing",
            Reason::Succeeded => "Succeeded",
            Reason::NoItems => "NoItems",
            Reason::Suspended => "Suspended",
            Reason::ShardsFailed => "ShardsFailed",
            Reason::NoFailedShards => "NoFailedShards",
            Reason::EtaPastDeadline => "EtaPastDeadline",
            Reason::OnTrack => "OnTrack",
            Reason::Stuck(r) => r.as_str(),
            Reason::NoStuckPods => "NoStuckPods",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason of an Event the controller publishes on a batch. Stage reasons name the stage
/// (`WorkersStarted`, `ConsolidationSucceeded`, `ExportFailed`, ...): the event recorder folds
/// events with the same reason together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    StageStarted(Stage),
    StageSucceeded(Stage),
    StageFailed(Stage),
    /// The quorum was met and the grace period or `completeBy` is over: the remaining shards stop.
    StoppingStragglers,
    BatchSucceeded,
    BatchFailed,
    /// The batch became stuck (a recoverable [`StallReason`]).
    Stalled(StallReason),
    /// A new `spec.rerun.token` started an attempt.
    RerunStarted,
    /// A new `spec.rerun.token` asked for a rerun that cannot run (Warning).
    RerunRefused,
    /// A straggling shard got a backup run (`completion.backupStragglers`).
    BackupStarted,
    /// A shard's backup run succeeded before its original run, which is stopped.
    BackupWon,
    /// The quorum's ETA moved past `completeBy` (Warning; once each time `AtRisk` turns `True`).
    AtRisk,
    /// Pods of the batch became stuck (Warning; names the shards or stages and the reasons).
    PodsStuck,
}

impl EventReason {
    pub fn as_string(self) -> String {
        match self {
            EventReason::StageStarted(s) => format!("{}Started", s.title()),
            EventReason::StageSucceeded(s) => format!("{}Succeeded", s.title()),
            EventReason::StageFailed(s) => format!("{}Failed", s.title()),
            EventReason::StoppingStragglers => "StoppingStragglers".into(),
            EventReason::BatchSucceeded => "BatchSucceeded".into(),
            EventReason::BatchFailed => "BatchFailed".into(),
            EventReason::Stalled(r) => r.as_str().into(),
            EventReason::RerunStarted => "RerunStarted".into(),
            EventReason::RerunRefused => "RerunRefused".into(),
            EventReason::BackupStarted => "BackupStarted".into(),
            EventReason::BackupWon => "BackupWon".into(),
            EventReason::AtRisk => "AtRisk".into(),
            EventReason::PodsStuck => "PodsStuck".into(),
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_string())
    }
}

impl PartialEq<&str> for EventReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_string() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_reasons_name_the_stage() {
        let names: Vec<String> = Stage::ALL
            .into_iter()
            .flat_map(|s| [EventReason::StageStarted(s), EventReason::StageSucceeded(s), EventReason::StageFailed(s)])
            .map(EventReason::as_string)
            .collect();
        assert_eq!(
            names,
            [
                "LoaderStarted",
                "LoaderSucceeded",
                "LoaderFailed",
                "WorkersStarted",
                "WorkersSucceeded",
                "WorkersFailed",
                "ConsolidationStarted",
                "ConsolidationSucceeded",
                "ConsolidationFailed",
                "ExportStarted",
                "ExportSucceeded",
                "ExportFailed"
            ]
        );
    }

    #[test]
    fn names_are_distinct_and_the_variants_names() {
        let names: std::collections::HashSet<&str> = StallReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), StallReason::ALL.len());
        for r in StallReason::ALL {
            assert_eq!(format!("{r:?}"), r.as_str(), "the wire name is the variant's name");
        }
    }
}
