//! After each complete listing of the batches (the controller's start, or a watch that had to
//! list again), every batch gets a pass: the sweep. The swept batches are handed to
//! kube-runtime's queue a window at a time, not all as they are listed: its scheduler keeps two
//! copies of every queued pass and holds them all until the listing is complete, and a restart
//! over 100,000 batches queued all of them at once (about 40 MiB at the peak;
//! docs/benchmarks.md, issue 19).
//!
//! A batch that changes during the sweep still triggers its pass at once, beside the sweep.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, future};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::{Notify, mpsc};
use tracing::warn;

use crate::api::PredictionBatch;
use crate::controller::Shared;
use crate::metrics::batch_key;

/// Swept batches queued in kube-runtime at once, beyond the passes already running: several
/// times the default `--concurrency` (256), so the runner never waits for the sweep.
pub const SWEEP_WINDOW: usize = 1024;

/// When no swept batch's pass has started for this long with the window full, the window is
/// emptied: a sweep must never stop because a pass it counted on was lost.
pub const SWEEP_STALL: Duration = Duration::from_secs(10);

/// A batch's key for the controller's queue: namespace and name, nothing else.
pub fn lean_ref(batch: &PredictionBatch) -> ObjectRef<PredictionBatch> {
    ObjectRef::new(&batch.name_any()).within(batch.namespace().as_deref().unwrap_or_default())
}

/// Swept batches handed to kube-runtime whose pass has not started yet, at most a window of them.
#[derive(Debug)]
pub struct SweepGate {
    window: usize,
    stall: Duration,
    queued: Mutex<HashSet<u64>>,
    progress: Notify,
    /// Batches of the current sweep not handed to kube-runtime yet.
    pending: AtomicUsize,
}

impl Default for SweepGate {
    fn default() -> Self {
        Self::new(SWEEP_WINDOW, SWEEP_STALL)
    }
}

impl SweepGate {
    pub fn new(window: usize, stall: Duration) -> Self {
        Self {
            window: window.max(1),
            stall,
            queued: Mutex::default(),
            progress: Notify::new(),
            pending: AtomicUsize::new(0),
        }
    }

    /// Waits for room in the window, then counts the batch `key` in it.
    async fn admit(&self, key: u64) {
        loop {
            {
                let mut queued = self.queued.lock().expect("poisoned");
                if queued.len() < self.window || queued.contains(&key) {
                    queued.insert(key);
                    return;
                }
            }
            if tokio::time::timeout(self.stall, self.progress.notified()).await.is_err() {
                let mut queued = self.queued.lock().expect("poisoned");
                warn!(
                    waiting = queued.len(),
                    stall = ?self.stall,
                    "no swept batch's pass started for a while; the sweep goes on with a new window"
                );
                queued.clear();
            }
        }
    }

    /// A pass of the batch `key` started (or the batch is gone): it leaves the window.
    pub fn started(&self, key: u64) {
        if self.queued.lock().expect("poisoned").remove(&key) {
            self.progress.notify_one();
        }
    }

    pub fn waiting(&self) -> usize {
        self.queued.lock().expect("poisoned").len()
    }

    /// Batches of the current sweep still to be handed to kube-runtime (they wait for their pass
    /// too, but are not on the queue clock yet).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// A new term of leadership starts with no sweep.
    pub fn reset(&self) {
        self.queued.lock().expect("poisoned").clear();
        self.pending.store(0, Ordering::Relaxed);
    }
}

/// What the batch watch's events trigger: a changed batch its own pass at once (and the queue
/// clock's start of its wait); a complete listing a sweep (`listed` tells [`sweeps`] when the
/// listing ended). Errors of the watch are counted by `watch_health` and retried by its backoff.
pub fn batch_triggers(
    shared: Arc<Shared>,
    listed: mpsc::UnboundedSender<Instant>,
) -> impl FnMut(Result<watcher::Event<PredictionBatch>, watcher::Error>) -> future::Ready<Option<ObjectRef<PredictionBatch>>>
{
    move |item| {
        future::ready(match item {
            Ok(watcher::Event::Apply(batch)) => {
                let batch = lean_ref(&batch);
                shared.queue.arrived(batch.clone(), Instant::now());
                Some(batch)
            }
            Ok(watcher::Event::InitDone) => {
                // The receiver ends only with the controller.
                let _ = listed.send(Instant::now());
                None
            }
            // A listed batch waits for the sweep; it is clocked from the listing's end (100,000
            // clock entries at a restart would cost more than the window saves).
            Ok(watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::Delete(_)) | Err(_) => None,
        })
    }
}

/// Every batch of the store, after each complete listing (`listed` says when each ended),
/// admitted through the shared [`SweepGate`] and clocked from the listing's end. A newer listing
/// supersedes what is left of an older sweep.
pub fn sweeps(
    listed: mpsc::UnboundedReceiver<Instant>,
    store: Store<PredictionBatch>,
    shared: Arc<Shared>,
) -> impl Stream<Item = ObjectRef<PredictionBatch>> {
    struct Sweep {
        listed: mpsc::UnboundedReceiver<Instant>,
        todo: std::vec::IntoIter<Arc<PredictionBatch>>,
        at: Instant,
    }
    let start = Sweep { listed, todo: Vec::new().into_iter(), at: Instant::now() };
    futures::stream::unfold(start, move |mut sweep| {
        let (store, shared) = (store.clone(), shared.clone());
        async move {
            loop {
                let mut relisted = None;
                while let Ok(at) = sweep.listed.try_recv() {
                    relisted = Some(at);
                }
                if relisted.is_none() && sweep.todo.len() == 0 {
                    relisted = Some(sweep.listed.recv().await?);
                }
                if let Some(at) = relisted {
                    sweep.todo = store.state().into_iter();
                    sweep.at = at;
                    shared.sweep.pending.store(sweep.todo.len(), Ordering::Relaxed);
                }
                if let Some(batch) = sweep.todo.next() {
                    let batch = lean_ref(&batch);
                    shared.sweep.admit(batch_key(&batch)).await;
                    shared.queue.arrived(batch.clone(), sweep.at);
                    shared.sweep.pending.store(sweep.todo.len(), Ordering::Relaxed);
                    return Some((batch, sweep));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};
    use kube::runtime::reflector;

    use super::*;

    fn batch(name: &str) -> PredictionBatch {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"), "resourceVersion": "1"},
            "spec": {"gameDate": "2026-12-03", "targetCount": 1, "worker": {"template": {"spec": {"containers": []}}}},
        }))
        .expect("a batch")
    }

    #[tokio::test]
    async fn a_full_window_waits_for_a_pass_to_start() {
        let gate = SweepGate::new(2, Duration::from_secs(3600));
        gate.admit(1).await;
        gate.admit(2).await;
        gate.admit(2).await;
        assert_eq!(gate.waiting(), 2, "a batch already in the window takes no more room");
        let mut third = Box::pin(gate.admit(3));
        assert!((&mut third).now_or_never().is_none(), "the window is full");
        gate.started(1);
        third.await;
        assert_eq!(gate.waiting(), 2);
        gate.started(99);
        assert_eq!(gate.waiting(), 2, "a pass of a batch not in the window frees nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_whose_passes_never_start_is_emptied_after_the_stall() {
        let gate = SweepGate::new(1, Duration::from_secs(10));
        gate.admit(1).await;
        let before = tokio::time::Instant::now();
        gate.admit(2).await;
        assert!(before.elapsed() >= Duration::from_secs(10));
        assert_eq!(gate.waiting(), 1);
    }

    #[tokio::test]
    async fn a_listing_sweeps_every_batch_a_window_at_a_time_and_changes_pass_at_once() {
        let (store, mut writer) = reflector::store::<PredictionBatch>();
        let shared = Arc::new(Shared::with_sweep(SweepGate::new(2, Duration::from_secs(3600))));
        let (listed_tx, listed_rx) = mpsc::unbounded_channel();
        let mut trigger = batch_triggers(shared.clone(), listed_tx);
        let mut swept = Box::pin(sweeps(listed_rx, store, shared.clone()));

        for event in [watcher::Event::Init]
            .into_iter()
            .chain(["a", "b", "c"].map(|n| watcher::Event::InitApply(batch(n))))
            .chain([watcher::Event::InitDone])
        {
            writer.apply_watcher_event(&event);
            assert_eq!(trigger(Ok(event)).await, None, "a listed batch waits for the sweep");
        }
        assert_eq!(shared.queue.depth(), 0, "a listed batch is clocked once handed on");

        let mut names = Vec::new();
        for _ in 0..2 {
            names.push(swept.next().await.expect("swept").name);
        }
        assert!(swept.next().now_or_never().is_none(), "the window of 2 is full");
        assert_eq!((shared.sweep.pending(), shared.queue.depth()), (1, 2), "one to hand on, two clocked");
        let first = ObjectRef::new(&names[0]).within("ns");
        shared.sweep.started(batch_key(&first));
        assert!(shared.queue.started(&first, Instant::now()).is_some(), "its wait runs from the listing's end");
        names.push(swept.next().await.expect("swept").name);
        assert_eq!(shared.sweep.pending(), 0);
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(swept.next().now_or_never().is_none(), "nothing more until the next listing");

        let changed = trigger(Ok(watcher::Event::Apply(batch("c")))).await;
        assert_eq!(changed, Some(ObjectRef::new("c").within("ns")), "a change triggers its pass at once");
    }
}
