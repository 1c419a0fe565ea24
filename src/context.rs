//! State shared by every reconcile: API client, caches, event recorder, metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::PredictionBatch;
use crate::leadership::Leadership;
use crate::metrics::Metrics;

pub struct Context {
    pub client: Client,
    /// Our child Jobs (label-selected, trimmed), kept by the controller's Job watch.
    pub jobs: Store<Job>,
    pub recorder: Recorder,
    /// Paces each batch's routine Events (`reconcile::publish`).
    pub events: Arc<crate::reconcile::publish::EventPacer>,
    pub metrics: Arc<Metrics>,
    /// Asked before every action on a Job: a replica that may no longer lead must not act.
    pub leadership: Arc<Leadership>,
    /// Per batch: our last status write, to coalesce progress-only writes and to plan from it
    /// while the batch cache has not caught up with it.
    pub written: Mutex<HashMap<ObjectRef<PredictionBatch>, Written>>,
    /// Our Job writes (creates, patches) as they returned the Job, until the Job cache has
    /// caught up with them (`reconcile::fresh`).
    pub job_writes: Mutex<HashMap<ObjectRef<Job>, JobWritten>>,
    /// Per batch: consecutive failed reconciles, for exponential backoff.
    pub failures: Mutex<HashMap<ObjectRef<PredictionBatch>, u32>>,
    /// Stuck pods by batch, kept by the pod watch.
    pub stuck: Arc<crate::reconcile::stuck::StuckPods>,
    /// See `--stuck-pod-after`.
    pub stuck_after_secs: i64,
    /// Templates the apiserver accepted in a dry run lately (`--dry-run-verdict-ttl`).
    pub dry_runs: crate::reconcile::verdicts::DryRunVerdicts,
}

/// A Job write of ours: when, and the Job it returned (trimmed like the cache's copies).
pub struct JobWritten {
    pub at: Instant,
    pub job: Arc<Job>,
}

/// A status write of ours: when, and the object it returned until the cache has caught up.
pub struct Written {
    pub at: Instant,
    pub object: Option<Arc<PredictionBatch>>,
}

#[cfg(test)]
impl Context {
    /// A context for in-process tests: `client` (a mock or an unreachable address), the Job cache
    /// `jobs`, no leader election.
    pub fn for_tests(client: Client, jobs: Store<Job>) -> Self {
        use kube::runtime::events::Reporter;
        Context {
            client: client.clone(),
            jobs,
            recorder: Recorder::new(client, Reporter { controller: "test".into(), instance: None }),
            events: Default::default(),
            metrics: Default::default(),
            leadership: Arc::new(Leadership::unelected()),
            written: Default::default(),
            job_writes: Default::default(),
            failures: Default::default(),
            stuck: Default::default(),
            stuck_after_secs: crate::reconcile::observed::DEFAULT_STUCK_AFTER_SECS,
            dry_runs: Default::default(),
        }
    }
}
