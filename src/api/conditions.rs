//! Condition types and the reasons of `Stalled=True`: a public contract (users, `kubectl wait`,
//! alerts and GitOps tools match on them, as on Kubernetes' `batch.JobReason*`), so they live here,
//! typed, in one place. The README's reason table is tested against [`StallReason::ALL`].

use std::fmt;

/// `True` once the batch has succeeded (`kubectl wait --for=condition=Ready`).
pub const CONDITION_READY: &str = "Ready";
/// `True` while the batch is in progress (kstatus: still reconciling).
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// `True` when the batch failed or is stuck; its reason is a [`StallReason`].
pub const CONDITION_STALLED: &str = "Stalled";
/// `True` (reason `ShardsFailed`) as soon as any shard failed, even if the batch succeeds on quorum.
pub const CONDITION_DEGRADED: &str = "Degraded";

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
    pub const ALL: [StallReason; 13] = [
        StallReason::QuorumNotMet,
        StallReason::QuorumUnreachable,
        StallReason::DeadlineExceeded,
        StallReason::MaxFailedShardsExceeded,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_the_variants_names() {
        let names: std::collections::HashSet<&str> = StallReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), StallReason::ALL.len());
        for r in StallReason::ALL {
            assert_eq!(format!("{r:?}"), r.as_str(), "the wire name is the variant's name");
        }
    }
}
