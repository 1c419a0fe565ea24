//! Optional mirror of batch state to an external store (Firestore) for readers that predate the
//! controller. Off by default; when off, nothing is contacted and no finalizer is added.
//!
//! - [`document`]: the pure mapping from a batch to its document (what the old coordinator's
//!   readers expect, plus `uid`, `generation`, the `status_version` watermark and `deleted`).
//! - [`firestore`]: the store: one transaction per write that reads the stored watermark and
//!   skips the write unless ours is newer (BeginTransaction + BatchGetDocuments + Commit).
//! - [`worker`]: off the reconcile's critical path: a per-batch coalescing queue, retries with
//!   exponential backoff, the `MirrorSynced` condition (own field manager) and the failure metric.
//! - [`finalizer`]: the bounded finalizer that marks a deleted batch's document `deleted: true`.

use std::sync::Arc;
use std::time::Duration;

use crate::api::PredictionBatch;

pub mod document;
pub mod finalizer;
pub mod firestore;
pub mod worker;

/// Condition the mirror maintains on each batch (written under its own field manager).
pub const CONDITION_MIRROR_SYNCED: &str = "MirrorSynced";

/// Field manager of everything the mirror writes to a batch: its finalizer and its condition.
pub const MIRROR_FIELD_MANAGER: &str = "prediction-batch-controller-mirror";

/// Finalizer that holds a deleted batch until its document is marked deleted (bounded).
pub const MIRROR_FINALIZER: &str = "predictions.dev/firestore-mirror";

/// Default bound on how long a deletion waits for the document to be marked deleted.
pub const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where marking a deleted batch's document stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The document says `deleted: true` (or a newer writer has replaced it): let the batch go.
    Done,
    /// Not yet: how long this process has been trying, and the last error, if an attempt failed.
    Pending { waiting: Duration, last_error: Option<String> },
}

/// Receives every batch whose status the controller has just written.
pub trait MirrorSink: Send + Sync {
    /// Called right after each status write with the batch as written. Must return at once.
    fn notify(&self, batch: &PredictionBatch);

    /// Called for a batch being deleted (repeatedly, until it returns `Done` or the deletion times
    /// out): queues the `deleted: true` write and says whether it has landed. Must return at once.
    fn deletion(&self, _batch: &PredictionBatch) -> Deletion {
        Deletion::Done
    }

    /// The batch is gone (its finalizer was removed): forget it once nothing is left to write.
    fn release(&self, _batch: &PredictionBatch) {}

    /// How long a deletion waits for [`MirrorSink::deletion`] before going through anyway (counted
    /// from the later of the deletion and this process's first attempt, so a controller that
    /// starts long after a deletion still tries before giving up).
    fn delete_timeout(&self) -> Duration {
        DEFAULT_DELETE_TIMEOUT
    }
}

/// Cheap handle the reconciler calls after each status write.
#[derive(Clone, Default)]
pub struct MirrorHandle(Option<Arc<dyn MirrorSink>>);

impl MirrorHandle {
    pub fn disabled() -> Self {
        MirrorHandle(None)
    }

    pub fn new(sink: Arc<dyn MirrorSink>) -> Self {
        MirrorHandle(Some(sink))
    }

    pub fn notify(&self, batch: &PredictionBatch) {
        if let Some(sink) = &self.0 {
            sink.notify(batch);
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The sink, when the mirror is on.
    pub fn sink(&self) -> Option<&Arc<dyn MirrorSink>> {
        self.0.as_ref()
    }
}
