//! Optional mirror of batch state to an external store (Firestore) for readers that predate the
//! controller. Off by default; when off, nothing is contacted and no finalizer is added.
//!
//! The mirror is a reconciler of its own, next to the batch reconciler and never inside it: a
//! second kube-runtime `Controller` over the same batch watch and cache (one watch, shared), with
//! its own queue, backoff, metrics and tracing span. The batch path (observe → plan → write
//! status → act) calls no mirror code, so a mirror that cannot work (Firestore unreachable, its
//! finalizer refused by RBAC) never holds up a batch. It runs while this replica leads, as the
//! batch reconciler does.
//!
//! - [`controller`]: the mirror's reconciler: for each change of a batch, hand the batch to the
//!   worker, and keep the finalizer (add it to live batches, release deleted ones).
//! - [`finalizer`]: the bounded finalizer that marks a deleted batch's document `deleted: true`.
//! - [`document`]: the pure mapping from a batch to its document (what the old coordinator's
//!   readers expect, plus `uid`, `generation`, the `status_version` watermark and `deleted`).
//! - [`worker`]: the Firestore writes, off every reconcile's critical path: a per-batch coalescing
//!   queue, retries with exponential backoff, the `MirrorSynced` condition (own field manager)
//!   and the failure metric.
//! - [`firestore`]: the store: one transaction per write that reads the stored watermark and
//!   skips the write unless ours is newer (BeginTransaction + BatchGetDocuments + Commit).

use std::sync::Arc;
use std::time::Duration;

use crate::api::PredictionBatch;
use crate::leadership::Leadership;

pub mod controller;
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

/// What the mirror's reconciler hands batches to (the worker).
pub trait MirrorSink: Send + Sync {
    /// Called for each change of a live batch, with the batch as cached. Must return at once.
    fn notify(&self, batch: &PredictionBatch);

    /// Writes go on only while `leadership` allows acting (called when a term of leadership
    /// starts; a replica that no longer leads leaves the writes to the one that does).
    fn follow(&self, _leadership: Arc<Leadership>) {}

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

    /// Batches whose document lags their status: a write pending, or the last one failed.
    fn out_of_sync(&self) -> usize {
        0
    }
}

/// The mirror of the `run` command, or none (off).
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

    /// See [`MirrorSink::out_of_sync`]; 0 when the mirror is off.
    pub fn out_of_sync(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.out_of_sync())
    }

    /// The sink, when the mirror is on.
    pub fn sink(&self) -> Option<&Arc<dyn MirrorSink>> {
        self.0.as_ref()
    }
}
