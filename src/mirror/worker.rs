//! The mirror's background worker: keeps Firestore writes off every reconcile's critical path,
//! the mirror's own reconciler's included.
//!
//! [`Mirror::notify`] only maps the batch to its document and records it as the batch's pending
//! snapshot (newest watermark wins, so a burst of status writes coalesces into one Firestore
//! write); it never waits. Per batch, at most one task writes, taking the newest pending snapshot
//! each time round, retrying failures with exponential backoff (capped low, so the document
//! catches up within seconds of Firestore's return), and at most `concurrency` writes are in
//! flight at once.
//!
//! The tracking table holds one entry per batch and never drops an update: when it reaches
//! `max_batches`, the least recently used *idle* entries (nothing pending, nothing failing, no
//! deletion under way) are evicted, which only costs their de-duplication (the next update of
//! such a batch is written even if its content did not change). Entries with work outstanding are
//! never evicted or refused, so while more than `max_batches` batches wait for Firestore the table
//! holds one entry for each of them (at most one per batch the controller watches).
//!
//! The `MirrorSynced` condition is applied (server-side apply, field manager
//! [`MIRROR_FIELD_MANAGER`], only that condition) when its status or reason would change: `False`
//! with the error's reason on the first failure, `False` with reason `DocumentOfAnotherBatch`
//! when the document belongs to another batch of the same name that keeps it (retried on the
//! batch's next update that changes the document, not on a timer), `True` once nothing is
//! pending. Idle batches cost nothing, and a snapshot whose document content equals the last one
//! written is not re-sent. Every failed attempt counts in `prediction_batch_mirror_failures`.
//!
//! Writes (documents and conditions) go on only while the replica may act
//! ([`MirrorSink::follow`]): a task that finds it may not stops, keeping its pending snapshot
//! for the next term of leadership, whose reconciler hands every batch over again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::document::{BatchDocument, MappingError};
use super::firestore::{DocumentStore, FirestoreOptions, FirestoreStore, MirrorError, WriteOutcome};
use super::{
    CONDITION_MIRROR_SYNCED, DEFAULT_DELETE_TIMEOUT, Deletion, MIRROR_FIELD_MANAGER, MirrorHandle, MirrorSink,
};
use crate::api::PredictionBatch;
use crate::leadership::Leadership;
use crate::metrics::Metrics;

/// Tuning of the worker.
#[derive(Clone, Debug)]
pub struct MirrorConfig {
    /// Wait after the first failed attempt; doubles per further failure...
    pub initial_backoff: Duration,
    /// ...up to this (small: after an outage the document is at most this late).
    pub max_backoff: Duration,
    /// One attempt (connect, transaction, commit) gives up after this.
    pub attempt_timeout: Duration,
    /// Firestore writes in flight at once.
    pub concurrency: usize,
    /// Idle batches remembered (for de-duplication) at most; the least recently used idle ones are
    /// evicted beyond it. Batches with work outstanding are always tracked, whatever their number.
    pub max_batches: usize,
    /// How long a deletion waits for the document to be marked deleted.
    pub delete_timeout: Duration,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(10),
            concurrency: 8,
            max_batches: 10_000,
            delete_timeout: DEFAULT_DELETE_TIMEOUT,
        }
    }
}

impl MirrorConfig {
    /// Wait before the attempt after `failures` consecutive failures (at least one).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// `MirrorSynced` as far as it decides whether to write: status and reason (not the message,
/// which carries error detail that changes from attempt to attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncedState {
    pub status: bool,
    pub reason: String,
}

impl SyncedState {
    fn synced() -> Self {
        SyncedState { status: true, reason: "Synced".into() }
    }
}

/// The condition to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncedCondition {
    pub state: SyncedState,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// Why a condition write failed.
#[derive(Debug)]
pub enum ConditionError {
    /// The batch no longer exists.
    Gone,
    Other(String),
}

/// Writes the `MirrorSynced` condition (the apiserver, or a fake in tests).
#[async_trait]
pub trait ConditionWriter: Send + Sync {
    async fn apply(&self, namespace: &str, name: &str, condition: &SyncedCondition) -> Result<(), ConditionError>;
}

/// Server-side apply of the status subresource with only `MirrorSynced`, under the mirror's own
/// field manager (the reconciler strips the condition from its applies, so they never conflict).
pub struct KubeConditions {
    client: kube::Client,
}

impl KubeConditions {
    pub fn new(client: kube::Client) -> Self {
        KubeConditions { client }
    }
}

#[async_trait]
impl ConditionWriter for KubeConditions {
    async fn apply(&self, namespace: &str, name: &str, c: &SyncedCondition) -> Result<(), ConditionError> {
        let api: Api<PredictionBatch> = Api::namespaced(self.client.clone(), namespace);
        let mut condition = json!({
            "type": CONDITION_MIRROR_SYNCED,
            "status": if c.state.status { "True" } else { "False" },
            "reason": c.state.reason,
            "message": c.message.chars().take(1000).collect::<String>(),
            "lastTransitionTime": Timestamp::now().to_string(),
        });
        if let Some(g) = c.observed_generation {
            condition["observedGeneration"] = json!(g);
        }
        let patch = json!({
            "apiVersion": PredictionBatch::api_version(&()),
            "kind": PredictionBatch::kind(&()),
            "metadata": { "name": name },
            "status": { "conditions": [condition] },
        });
        match api.patch_status(name, &PatchParams::apply(MIRROR_FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(ConditionError::Gone),
            Err(e) => Err(ConditionError::Other(e.to_string())),
        }
    }
}

type Key = (String, String);

#[derive(Default)]
struct Entry {
    /// Newest snapshot not yet confirmed in Firestore.
    pending: Option<BatchDocument>,
    /// A task is writing this batch.
    running: bool,
    /// Last document this process confirmed written (to skip re-sending identical content).
    written: Option<BatchDocument>,
    /// Highest watermark confirmed in Firestore (written, or found newer there).
    confirmed: u64,
    /// UID whose `deleted: true` document has landed.
    confirmed_deleted: Option<String>,
    /// UID being deleted, and when this process first tried to mark it.
    deletion_started: Option<(String, Instant)>,
    /// The newest snapshot is a deletion: no condition writes any more.
    deleting: bool,
    /// `MirrorSynced` as last known on the object (seen on it, or applied by us).
    condition: Option<SyncedState>,
    generation: Option<i64>,
    /// Consecutive failed attempts, and the last error.
    failures: u32,
    last_error: Option<MirrorError>,
    /// The last write found the document owned by another batch (reason and message).
    other_batch: Option<MirrorError>,
    /// The document that write carried: the same content is not tried again.
    refused: Option<BatchDocument>,
    /// The batch is gone: drop the entry once nothing is left to write.
    gone: bool,
    /// Last notification or deletion call (least recently used idle entries are evicted first).
    touched: Option<Instant>,
}

impl Entry {
    /// Nothing to write, nothing failing, no deletion under way: forgetting the entry loses only
    /// the de-duplication of the batch's next update.
    fn idle(&self) -> bool {
        !self.running && self.pending.is_none() && self.last_error.is_none() && self.deletion_started.is_none()
    }
}

/// Makes room for a new entry in a table at `max` entries: evicts the least recently used idle
/// entries, a tenth of the table at once (so a full table is swept once per `max / 10` new
/// batches, not once per batch). Entries with work outstanding stay, whatever their number.
fn evict_idle(entries: &mut HashMap<Key, Entry>, max: usize) {
    let mut idle: Vec<(Option<Instant>, Key)> =
        entries.iter().filter(|(_, e)| e.idle()).map(|(k, e)| (e.touched, k.clone())).collect();
    if idle.is_empty() {
        debug!(tracked = entries.len(), limit = max, "mirror table over its bound: every entry has work outstanding");
        return;
    }
    let excess = (entries.len() + 1).saturating_sub(max);
    let evict = excess.max(max / 10).clamp(1, idle.len());
    idle.select_nth_unstable_by_key(evict - 1, |(t, _)| *t);
    for (_, key) in idle.into_iter().take(evict) {
        entries.remove(&key);
    }
    debug!(evicted = evict, tracked = entries.len(), "evicted idle mirror entries");
}

struct Inner {
    store: Arc<dyn DocumentStore>,
    conditions: Arc<dyn ConditionWriter>,
    metrics: Arc<Metrics>,
    config: MirrorConfig,
    entries: Mutex<HashMap<Key, Entry>>,
    permits: Semaphore,
    /// Writes only while this allows acting; `None` (no controller yet, or a test): always.
    leadership: Mutex<Option<Arc<Leadership>>>,
}

/// The mirror: a [`MirrorSink`] that writes documents in the background.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

/// The Firestore mirror of the `run` command: writes to `options`, conditions through `client`.
pub fn firestore_mirror(
    options: FirestoreOptions,
    client: kube::Client,
    metrics: Arc<Metrics>,
    config: MirrorConfig,
) -> MirrorHandle {
    let mirror =
        Mirror::new(Arc::new(FirestoreStore::new(options)), Arc::new(KubeConditions::new(client)), metrics, config);
    MirrorHandle::new(Arc::new(mirror))
}

fn observed_condition(batch: &PredictionBatch) -> Option<SyncedState> {
    let c = batch.status.as_ref()?.conditions.iter().find(|c| c.type_ == CONDITION_MIRROR_SYNCED)?;
    Some(SyncedState { status: c.status == "True", reason: c.reason.clone() })
}

impl Mirror {
    pub fn new(
        store: Arc<dyn DocumentStore>,
        conditions: Arc<dyn ConditionWriter>,
        metrics: Arc<Metrics>,
        config: MirrorConfig,
    ) -> Self {
        let permits = Semaphore::new(config.concurrency.max(1));
        Mirror {
            inner: Arc::new(Inner {
                store,
                conditions,
                metrics,
                config,
                entries: Mutex::new(HashMap::new()),
                permits,
                leadership: Mutex::new(None),
            }),
        }
    }

    /// Batches tracked (pending, failing or remembered for de-duplication).
    pub fn tracked(&self) -> usize {
        self.inner.entries.lock().expect("poisoned").len()
    }

    /// Records the snapshot; starts the batch's task unless one runs. Never waits, never drops
    /// the snapshot (fails only when the batch cannot be mapped to a document).
    fn enqueue(&self, batch: &PredictionBatch, deleted: bool) -> Result<(), MappingError> {
        let doc = BatchDocument::from_batch(batch, Timestamp::now(), deleted)?;
        let key = (doc.namespace.clone(), doc.name.clone());
        let start = {
            let mut entries = self.inner.entries.lock().expect("poisoned");
            if !entries.contains_key(&key) && entries.len() >= self.inner.config.max_batches {
                evict_idle(&mut entries, self.inner.config.max_batches);
            }
            let e = entries.entry(key.clone()).or_default();
            e.touched = Some(Instant::now());
            if e.condition.is_none() {
                e.condition = observed_condition(batch);
            }
            e.generation = batch.metadata.generation;
            e.deleting = deleted;
            if !deleted {
                e.gone = false;
            }
            // Every change of the batch comes here (the mirror's own condition writes too): one
            // whose document another batch refused is tried again only with new content.
            let refused_again = e.refused.as_ref().is_some_and(|r| r.same_content(&doc));
            if !refused_again
                && doc.status_version > e.confirmed
                && e.pending.as_ref().is_none_or(|p| p.status_version < doc.status_version)
            {
                e.pending = Some(doc);
            }
            let start = e.pending.is_some() && !e.running;
            if start {
                e.running = true;
            }
            start
        };
        if start {
            tokio::spawn(self.inner.clone().run(key));
        }
        Ok(())
    }
}

impl MirrorSink for Mirror {
    fn out_of_sync(&self) -> usize {
        let entries = self.inner.entries.lock().expect("poisoned");
        entries.values().filter(|e| !e.gone && (e.pending.is_some() || e.last_error.is_some())).count()
    }

    fn notify(&self, batch: &PredictionBatch) {
        if let Err(e) = self.enqueue(batch, false) {
            self.inner.metrics.mirror_failures.inc();
            warn!(error = %e, "cannot mirror this batch");
        }
    }

    fn deletion(&self, batch: &PredictionBatch) -> Deletion {
        let key = (batch.namespace().unwrap_or_default(), batch.name_any());
        {
            let entries = self.inner.entries.lock().expect("poisoned");
            if let Some(e) = entries.get(&key)
                && e.confirmed_deleted.is_some()
                && e.confirmed_deleted == batch.metadata.uid
            {
                return Deletion::Done;
            }
        }
        let unmappable = self.enqueue(batch, true).err();
        // Whether or not a write could be queued, the deletion's clock runs from the first call,
        // so the finalizer's timeout holds for every batch.
        let mut entries = self.inner.entries.lock().expect("poisoned");
        let e = entries.entry(key).or_default();
        let uid = batch.metadata.uid.clone().unwrap_or_default();
        let started = match &e.deletion_started {
            Some((u, t)) if *u == uid => *t,
            _ => {
                if let Some(err) = &unmappable {
                    self.inner.metrics.mirror_failures.inc();
                    warn!(error = %err, "cannot mark this batch's document deleted");
                }
                let now = Instant::now();
                e.deletion_started = Some((uid, now));
                e.touched = Some(now);
                now
            }
        };
        let last_error = e.last_error.as_ref().map(|e| e.to_string()).or(unmappable.map(|e| e.to_string()));
        Deletion::Pending { waiting: started.elapsed(), last_error }
    }

    fn release(&self, batch: &PredictionBatch) {
        let key = (batch.namespace().unwrap_or_default(), batch.name_any());
        let mut entries = self.inner.entries.lock().expect("poisoned");
        if let Some(e) = entries.get_mut(&key) {
            if e.running {
                e.gone = true;
            } else {
                entries.remove(&key);
            }
        }
    }

    fn delete_timeout(&self) -> Duration {
        self.inner.config.delete_timeout
    }

    fn follow(&self, leadership: Arc<Leadership>) {
        *self.inner.leadership.lock().expect("poisoned") = Some(leadership);
    }
}

impl Inner {
    /// Whether this replica may write; if not, the batch's task stops (its pending snapshot kept,
    /// for the next term's reconciler to restart it).
    fn stand_down(&self, key: &Key) -> bool {
        let may_act = self.leadership.lock().expect("poisoned").as_ref().is_none_or(|l| l.may_act());
        if !may_act {
            if let Some(e) = self.entries.lock().expect("poisoned").get_mut(key) {
                e.running = false;
            }
            debug!(batch = %format!("{}.{}", key.0, key.1), "not leading; leaving the mirror's writes to the leader");
        }
        !may_act
    }

    /// The task of one batch: write the newest pending snapshot until none is left, then bring
    /// `MirrorSynced` up to date; back off after failures.
    async fn run(self: Arc<Self>, key: Key) {
        let id = format!("{}.{}", key.0, key.1);
        loop {
            if self.stand_down(&key) {
                return;
            }
            // 1. The newest pending snapshot, unless it says nothing new.
            let work = {
                let entries = self.entries.lock().expect("poisoned");
                let Some(e) = entries.get(&key) else { return };
                e.pending.clone().map(|doc| {
                    let unchanged = e.written.as_ref().is_some_and(|w| w.same_content(&doc));
                    (doc, unchanged)
                })
            };
            let mut failed = false;
            if let Some((doc, unchanged)) = work {
                let result = if unchanged { Ok(None) } else { self.write(&doc).await.map(Some) };
                let mut entries = self.entries.lock().expect("poisoned");
                let Some(e) = entries.get_mut(&key) else { return };
                match result {
                    Ok(outcome) => {
                        if e.failures > 0 {
                            info!(batch = id, failed_attempts = e.failures, "Firestore mirror caught up");
                        }
                        e.failures = 0;
                        e.last_error = None;
                        if e.pending.as_ref().is_some_and(|p| p.status_version <= doc.status_version) {
                            e.pending = None;
                        }
                        if !matches!(outcome, Some(WriteOutcome::OtherBatch { .. })) {
                            e.confirmed = e.confirmed.max(doc.status_version);
                            e.other_batch = None;
                            e.refused = None;
                        }
                        match outcome {
                            Some(WriteOutcome::Written) => {
                                debug!(batch = id, status_version = doc.status_version, phase = doc.phase, "mirrored");
                                e.written = Some(doc.clone());
                            }
                            Some(WriteOutcome::Stale { stored }) => {
                                info!(
                                    batch = id,
                                    ours = doc.status_version,
                                    stored,
                                    "Firestore holds a newer document; not overwriting it"
                                );
                            }
                            Some(WriteOutcome::OtherBatch { uid, .. }) if doc.deleted => {
                                info!(
                                    batch = id,
                                    owner = uid,
                                    "the Firestore document belongs to another batch; nothing to mark deleted"
                                );
                            }
                            Some(WriteOutcome::OtherBatch { uid, created_at }) => {
                                self.metrics.mirror_failures.inc();
                                let when = |t: Option<Timestamp>| t.map_or_else(|| "unknown".into(), |t| t.to_string());
                                let message = format!(
                                    "the Firestore document {id} belongs to another batch of this name (uid {uid}, \
                                     created {}), which keeps it: this batch (uid {}, created {}) is not the newer one; \
                                     nothing written. Does a second cluster or controller write to the same collection? \
                                     Tried again at this batch's next status change",
                                    when(created_at),
                                    doc.uid,
                                    when(doc.created_at),
                                );
                                if e.other_batch.is_none() {
                                    warn!(batch = id, owner = uid, "{message}");
                                }
                                e.other_batch = Some(MirrorError::new("DocumentOfAnotherBatch", message));
                                e.refused = Some(doc.clone());
                            }
                            None => {}
                        }
                        if doc.deleted {
                            e.confirmed_deleted = Some(doc.uid.clone());
                        }
                    }
                    Err(err) => {
                        self.metrics.mirror_failures.inc();
                        e.failures += 1;
                        if e.failures == 1 || e.failures.is_multiple_of(20) {
                            warn!(batch = id, attempt = e.failures, error = %err, "Firestore mirror write failed; retrying with backoff");
                        }
                        e.last_error = Some(err);
                        failed = true;
                    }
                }
            }

            // 2. MirrorSynced, when its status or reason changes (never for a batch being deleted).
            let change = {
                let entries = self.entries.lock().expect("poisoned");
                let Some(e) = entries.get(&key) else { return };
                let want = match (&e.last_error, &e.pending, &e.other_batch) {
                    (Some(err), _, _) => Some(SyncedCondition {
                        state: SyncedState { status: false, reason: err.reason.clone() },
                        message: format!(
                            "writing the Firestore document {id} failed; retrying with backoff: {}",
                            err.message
                        ),
                        observed_generation: e.generation,
                    }),
                    (None, None, Some(other)) => Some(SyncedCondition {
                        state: SyncedState { status: false, reason: other.reason.clone() },
                        message: other.message.clone(),
                        observed_generation: e.generation,
                    }),
                    (None, None, None) => Some(SyncedCondition {
                        state: SyncedState::synced(),
                        message: format!("the Firestore document {id} is up to date"),
                        observed_generation: e.generation,
                    }),
                    (None, Some(_), _) => None,
                };
                want.filter(|w| !e.deleting && e.condition.as_ref() != Some(&w.state))
            };
            let mut condition_failed = false;
            if let Some(c) = change {
                if self.stand_down(&key) {
                    return;
                }
                let result = self.conditions.apply(&key.0, &key.1, &c).await;
                let mut entries = self.entries.lock().expect("poisoned");
                let Some(e) = entries.get_mut(&key) else { return };
                match result {
                    Ok(()) => {
                        debug!(batch = id, status = c.state.status, reason = c.state.reason, "applied MirrorSynced");
                        e.condition = Some(c.state);
                    }
                    // The batch is gone: nothing to tell.
                    Err(ConditionError::Gone) => e.condition = Some(c.state),
                    Err(ConditionError::Other(msg)) => {
                        debug!(batch = id, error = msg, "could not apply MirrorSynced; will retry");
                        condition_failed = true;
                    }
                }
            }

            // 3. Done, or wait and go round again.
            let wait = {
                let mut entries = self.entries.lock().expect("poisoned");
                let Some(e) = entries.get_mut(&key) else { return };
                if e.pending.is_none() && !condition_failed {
                    e.running = false;
                    if e.gone {
                        entries.remove(&key);
                    }
                    return;
                }
                if failed {
                    Some(self.config.backoff(e.failures))
                } else if condition_failed {
                    Some(self.config.max_backoff)
                } else {
                    None
                }
            };
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
        }
    }

    async fn write(&self, doc: &BatchDocument) -> Result<WriteOutcome, MirrorError> {
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        match tokio::time::timeout(self.config.attempt_timeout, self.store.write(doc)).await {
            Ok(result) => result,
            Err(_) => Err(MirrorError::new(
                "FirestoreTimeout",
                format!("no answer from Firestore within {:?}", self.config.attempt_timeout),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    /// A store that records writes, fails while `down`, and can hold writes at a gate. `stored`
    /// is the watermark of batch `b` (the only one most tests use); `names` records which
    /// batches were written.
    #[derive(Default)]
    struct FakeStore {
        writes: Mutex<Vec<(u64, bool)>>,
        stored: Mutex<u64>,
        others: Mutex<HashMap<String, u64>>,
        names: Mutex<Vec<String>>,
        /// Batch `b`'s document belongs to a batch of this UID, which keeps it.
        owner: Mutex<Option<String>>,
        down: AtomicBool,
        gate: Mutex<Option<Arc<Notify>>>,
    }

    #[async_trait]
    impl DocumentStore for FakeStore {
        async fn write(&self, doc: &BatchDocument) -> Result<WriteOutcome, MirrorError> {
            let gate = self.gate.lock().unwrap().clone();
            if let Some(g) = gate {
                g.notified().await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(MirrorError::new("FirestoreUnavailable", "connection refused"));
            }
            if doc.name != "b" {
                let mut others = self.others.lock().unwrap();
                let stored = others.entry(doc.name.clone()).or_default();
                if *stored >= doc.status_version {
                    return Ok(WriteOutcome::Stale { stored: *stored });
                }
                *stored = doc.status_version;
                self.names.lock().unwrap().push(doc.name.clone());
                return Ok(WriteOutcome::Written);
            }
            if let Some(uid) = self.owner.lock().unwrap().clone() {
                return Ok(WriteOutcome::OtherBatch { uid, created_at: None });
            }
            let mut stored = self.stored.lock().unwrap();
            if *stored >= doc.status_version {
                return Ok(WriteOutcome::Stale { stored: *stored });
            }
            *stored = doc.status_version;
            self.writes.lock().unwrap().push((doc.status_version, doc.deleted));
            self.names.lock().unwrap().push(doc.name.clone());
            Ok(WriteOutcome::Written)
        }
    }

    #[derive(Default)]
    struct FakeConditions {
        applied: Mutex<Vec<(bool, String)>>,
    }

    #[async_trait]
    impl ConditionWriter for FakeConditions {
        async fn apply(&self, _ns: &str, _name: &str, c: &SyncedCondition) -> Result<(), ConditionError> {
            self.applied.lock().unwrap().push((c.state.status, c.state.reason.clone()));
            Ok(())
        }
    }

    fn config() -> MirrorConfig {
        MirrorConfig {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            attempt_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    fn setup() -> (Mirror, Arc<FakeStore>, Arc<FakeConditions>, Arc<Metrics>) {
        setup_with(config())
    }

    fn setup_with(config: MirrorConfig) -> (Mirror, Arc<FakeStore>, Arc<FakeConditions>, Arc<Metrics>) {
        let store = Arc::new(FakeStore::default());
        let conds = Arc::new(FakeConditions::default());
        let metrics = Arc::new(Metrics::default());
        (Mirror::new(store.clone(), conds.clone(), metrics.clone(), config), store, conds, metrics)
    }

    /// Batch `name` (uid `uid-<name>`) at resourceVersion `rv`.
    fn named(name: &str, rv: u64, succeeded: u32) -> PredictionBatch {
        let mut b = batch(rv, succeeded);
        b.metadata.name = Some(name.into());
        b.metadata.uid = Some(format!("uid-{name}"));
        b
    }

    fn batch(rv: u64, succeeded: u32) -> PredictionBatch {
        let mut b: PredictionBatch = serde_yaml::from_str(&format!(
            r#"
apiVersion: predictions.dev/v1alpha1
kind: PredictionBatch
metadata: {{name: b, namespace: ns, uid: u1, generation: 1, resourceVersion: "{rv}"}}
spec:
  gameDate: "2026-01-02"
  targetCount: 10
  worker: {{template: {{spec: {{containers: [{{name: w, image: w}}]}}}}}}
status:
  phase: Running
  items: {{target: 10, succeeded: {succeeded}, failed: 0}}
"#
        ))
        .unwrap();
        b.metadata.resource_version = Some(rv.to_string());
        b
    }

    fn with_condition(mut b: PredictionBatch, status: &str, reason: &str) -> PredictionBatch {
        b.status.as_mut().unwrap().conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: CONDITION_MIRROR_SYNCED.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        });
        b
    }

    async fn settle(m: &Mirror) {
        for _ in 0..500 {
            let idle = m.inner.entries.lock().unwrap().values().all(|e| !e.running);
            if idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the mirror did not settle");
    }

    #[tokio::test]
    async fn a_burst_of_updates_coalesces() {
        let (m, store, conds, _) = setup();
        let gate = Arc::new(Notify::new());
        *store.gate.lock().unwrap() = Some(gate.clone());
        m.notify(&batch(10, 1));
        tokio::time::sleep(Duration::from_millis(20)).await; // the first write waits at the gate
        for rv in 11..=15 {
            m.notify(&batch(rv, rv as u32 - 9));
        }
        *store.gate.lock().unwrap() = None;
        gate.notify_one();
        settle(&m).await;
        assert_eq!(*store.writes.lock().unwrap(), vec![(10, false), (15, false)], "the middle snapshots coalesce");
        assert_eq!(*conds.applied.lock().unwrap(), vec![(true, "Synced".to_string())], "True once, when caught up");
    }

    #[tokio::test]
    async fn idle_batches_cost_no_writes() {
        let (m, store, conds, _) = setup();
        m.notify(&batch(10, 1));
        settle(&m).await;
        // Same content at a newer resourceVersion (e.g. a message-only status change), condition already True.
        m.notify(&with_condition(batch(11, 1), "True", "Synced"));
        settle(&m).await;
        assert_eq!(store.writes.lock().unwrap().len(), 1);
        assert_eq!(conds.applied.lock().unwrap().len(), 1);
        // An older snapshot than the one confirmed is ignored outright.
        m.notify(&batch(9, 0));
        settle(&m).await;
        assert_eq!(store.writes.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_batch_already_marked_synced_gets_no_condition_write() {
        let (m, store, conds, _) = setup();
        m.notify(&with_condition(batch(10, 1), "True", "Synced"));
        settle(&m).await;
        assert_eq!(store.writes.lock().unwrap().len(), 1);
        assert!(conds.applied.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn failures_set_false_once_then_true_on_recovery() {
        let (m, store, conds, metrics) = setup();
        store.down.store(true, Ordering::SeqCst);
        m.notify(&batch(10, 1));
        tokio::time::sleep(Duration::from_millis(150)).await;
        m.notify(&batch(11, 2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let failures = metrics.mirror_failures.get();
        assert!(failures >= 3, "retried with backoff ({failures} failures)");
        assert_eq!(*conds.applied.lock().unwrap(), vec![(false, "FirestoreUnavailable".to_string())], "False once");
        store.down.store(false, Ordering::SeqCst);
        settle(&m).await;
        assert_eq!(*store.writes.lock().unwrap(), vec![(11, false)], "only the newest snapshot is written");
        assert_eq!(
            *conds.applied.lock().unwrap(),
            vec![(false, "FirestoreUnavailable".to_string()), (true, "Synced".to_string())]
        );
    }

    #[tokio::test]
    async fn a_newer_stored_document_is_not_overwritten() {
        let (m, store, conds, _) = setup();
        *store.stored.lock().unwrap() = 100;
        m.notify(&batch(10, 1));
        settle(&m).await;
        assert!(store.writes.lock().unwrap().is_empty());
        assert_eq!(conds.applied.lock().unwrap().len(), 1, "caught up: nothing newer to write");
    }

    #[tokio::test]
    async fn deletion_waits_for_the_deleted_document() {
        let (m, store, conds, _) = setup();
        m.notify(&batch(10, 1));
        settle(&m).await;
        store.down.store(true, Ordering::SeqCst);
        let deleting = batch(12, 1);
        assert!(matches!(m.deletion(&deleting), Deletion::Pending { last_error: None, .. }));
        tokio::time::sleep(Duration::from_millis(30)).await;
        match m.deletion(&deleting) {
            Deletion::Pending { waiting, last_error: Some(_) } => assert!(waiting >= Duration::from_millis(30)),
            other => panic!("{other:?}"),
        }
        store.down.store(false, Ordering::SeqCst);
        settle(&m).await;
        assert_eq!(m.deletion(&deleting), Deletion::Done);
        assert_eq!(store.writes.lock().unwrap().last(), Some(&(12, true)));
        assert_eq!(conds.applied.lock().unwrap().len(), 1, "no condition writes for a batch being deleted");
        m.release(&deleting);
        assert_eq!(m.tracked(), 0);
    }

    #[tokio::test]
    async fn a_full_table_evicts_an_idle_entry_rather_than_drop_a_new_batch() {
        let (m, store, _, metrics) = setup_with(MirrorConfig { max_batches: 2, ..config() });
        m.notify(&named("a", 10, 1));
        m.notify(&named("c", 11, 1));
        settle(&m).await;
        // Both are written and idle; a third batch arrives at a full table.
        m.notify(&named("d", 12, 1));
        settle(&m).await;
        assert_eq!(*store.names.lock().unwrap(), ["a", "c", "d"], "the new batch's update was dropped");
        assert!(m.tracked() <= 2, "the table keeps its bound by evicting idle entries ({} tracked)", m.tracked());
        assert_eq!(metrics.mirror_failures.get(), 0);
        // An evicted batch is mirrored again on its next update.
        m.notify(&named("a", 13, 2));
        settle(&m).await;
        assert_eq!(*store.names.lock().unwrap(), ["a", "c", "d", "a"]);
    }

    #[tokio::test]
    async fn a_table_full_of_pending_work_still_takes_a_new_batch() {
        let (m, store, _, metrics) = setup_with(MirrorConfig { max_batches: 2, ..config() });
        store.down.store(true, Ordering::SeqCst);
        m.notify(&named("a", 10, 1));
        m.notify(&named("c", 11, 1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Nothing is idle: both batches wait for Firestore. A third still gets its turn.
        m.notify(&named("d", 12, 1));
        store.down.store(false, Ordering::SeqCst);
        settle(&m).await;
        let mut names = store.names.lock().unwrap().clone();
        names.sort();
        assert_eq!(
            names,
            ["a", "c", "d"],
            "an update was dropped ({} failures counted)",
            metrics.mirror_failures.get()
        );
    }

    #[tokio::test]
    async fn a_document_of_another_batch_is_not_synced() {
        let (m, store, conds, metrics) = setup();
        *store.owner.lock().unwrap() = Some("uid-elsewhere".into());
        m.notify(&batch(10, 1));
        settle(&m).await;
        assert!(store.writes.lock().unwrap().is_empty());
        assert_eq!(*conds.applied.lock().unwrap(), [(false, "DocumentOfAnotherBatch".to_string())]);
        assert_eq!(metrics.mirror_failures.get(), 1);
        // No timer retries it; the next update does, and writes once the name is free.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metrics.mirror_failures.get(), 1);
        *store.owner.lock().unwrap() = None;
        m.notify(&batch(11, 2));
        settle(&m).await;
        assert_eq!(*store.writes.lock().unwrap(), [(11, false)]);
        assert_eq!(conds.applied.lock().unwrap().last(), Some(&(true, "Synced".to_string())));
        // A deletion never marks another batch's document: nothing to wait for.
        *store.owner.lock().unwrap() = Some("uid-elsewhere".into());
        let deleting = batch(12, 2);
        assert!(matches!(m.deletion(&deleting), Deletion::Pending { .. }));
        settle(&m).await;
        assert_eq!(m.deletion(&deleting), Deletion::Done);
        assert_eq!(*store.writes.lock().unwrap(), [(11, false)]);
    }

    /// What the finalizer does with [`Mirror::deletion`]: poll until `Done` or until it has
    /// waited the delete timeout. Returns how long that took, or `None` after `give_up`.
    async fn finalize(m: &Mirror, b: &PredictionBatch, give_up: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < give_up {
            match m.deletion(b) {
                Deletion::Done => return Some(start.elapsed()),
                Deletion::Pending { waiting, .. } if waiting >= m.delete_timeout() => return Some(start.elapsed()),
                Deletion::Pending { .. } => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        None
    }

    #[tokio::test]
    async fn deleting_an_untracked_batch_still_ends_within_the_timeout() {
        let timeout = Duration::from_millis(100);
        let (m, store, _, _) = setup_with(MirrorConfig { max_batches: 1, delete_timeout: timeout, ..config() });
        store.down.store(true, Ordering::SeqCst);
        // The table's one slot is busy with another batch, and Firestore is down.
        m.notify(&named("a", 10, 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let full = finalize(&m, &named("d", 12, 1), timeout * 10).await;
        // A batch that cannot be mapped to a document (no integer resourceVersion) has nothing to
        // write, yet its deletion is bounded too.
        let mut odd = named("e", 0, 1);
        odd.metadata.resource_version = Some("not-a-number".into());
        let unmappable = finalize(&m, &odd, timeout * 10).await;
        let bounded = |t: Option<Duration>| t.is_some_and(|t| t >= timeout && t < timeout * 3);
        assert!(
            bounded(full) && bounded(unmappable),
            "deletions with a {timeout:?} timeout took {full:?} (full table) and {unmappable:?} (unmappable batch); \
             None: still waiting after {:?}",
            timeout * 10
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = MirrorConfig::default();
        assert_eq!(c.backoff(1), Duration::from_millis(250));
        assert_eq!(c.backoff(2), Duration::from_millis(500));
        assert_eq!(c.backoff(3), Duration::from_secs(1));
        assert_eq!(c.backoff(4), Duration::from_secs(2));
        assert_eq!(c.backoff(40), Duration::from_secs(2));
    }
}
