//! State shared by every reconcile: API client, caches, event recorder, metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::PredictionBatch;
use crate::metrics::Metrics;
use crate::mirror::MirrorHandle;

pub struct Context {
    pub client: Client,
    /// Our child Jobs (label-selected, trimmed), kept by the controller's Job watch.
    pub jobs: Store<Job>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub mirror: MirrorHandle,
    /// Per batch: when we last wrote its status, to coalesce progress-only writes.
    pub last_write: Mutex<HashMap<ObjectRef<PredictionBatch>, Instant>>,
    /// Per batch: consecutive failed reconciles, for exponential backoff.
    pub failures: Mutex<HashMap<ObjectRef<PredictionBatch>, u32>>,
}
