//! Optional mirror of batch state to an external store (Firestore) for readers that predate the
//! controller. Off by default; when off, nothing is contacted.

use std::sync::Arc;

use crate::api::PredictionBatch;

/// Condition the mirror maintains on each batch (written under its own field manager).
pub const CONDITION_MIRROR_SYNCED: &str = "MirrorSynced";

/// Receives every batch whose status the controller has just written.
pub trait MirrorSink: Send + Sync {
    fn notify(&self, batch: &PredictionBatch);
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
}
