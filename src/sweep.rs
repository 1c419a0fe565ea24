//! After each complete listing of the batches (the controller's start, or a watch that had to
//! list again), every batch gets a pass: the sweep. The swept batches are handed to
//! kube-runtime's queue a window at a time, not all as they are listed: its scheduler keeps two
//! copies of every queued pass and holds them all until the listing is complete, and a restart
//! over 100,000 batches queued all of them at once (about 40 MiB at the peak;
//! docs/benchmarks.md, issue 19).
//!
//! A batch that changes during the sweep still triggers its pass at once, beside the sweep.

use std::collections::HashSet;
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
}

impl Default for SweepGate {
    fn default() -> Self {
        Self::new(SWEEP_WINDOW, SWEEP_STALL)
    }
}

impl SweepGate {
    pub fn new(window: usize, stall: Duration) -> Self {
        Self { window: window.max(1), stall, queued: Mutex::default(), progress: Notify::new() }
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

    /// A new term of leadership starts with no sweep.
    pub fn reset(&self) {
        self.queued.lock().expect("poisoned").clear();
    }
}

/// What the batch watch's events trigger: a changed batch its own pass at once (and the queue
/// clock's start of its wait); a complete listing a sweep (`listed` tells [`sweeps`]). A listed
/// batch's wait is clocked from when it was listed; its pass comes with the sweep.
/// Errors of the watch are counted by `watch_health` and retried by its backoff.
pub fn batch_triggers(
    shared: Arc<Shared>,
    listed: mpsc::UnboundedSender<()>,
) -> impl FnMut(Result<watcher::Event<PredictionBatch>, watcher::Error>) -> future::Ready<Option<ObjectRef<PredictionBatch>>>
{
    move |item| {
        future::ready(match item {
            Ok(watcher::Event::Apply(batch)) => {
                let batch = lean_ref(&batch);
                shared.queue.arrived(batch.clone(), Instant::now());
                Some(batch)
            }
            Ok(watcher::Event::InitApply(batch)) => {
                shared.queue.arrived(lean_ref(&batch), Instant::now());
                None
            }
            Ok(watcher::Event::InitDone) => {
                // The receiver ends only with the controller.
                let _ = listed.send(());
                None
            }
            Ok(watcher::Event::Init | watcher::Event::Delete(_)) | Err(_) => None,
        })
    }
}

/// Every batch of the store, after each complete listing (one message on `listed` each), admitted
/// through `gate`. A newer listing supersedes what is left of an older sweep.
pub fn sweeps(
    listed: mpsc::UnboundedReceiver<()>,
    store: Store<PredictionBatch>,
    gate: Arc<SweepGate>,
) -> impl Stream<Item = ObjectRef<PredictionBatch>> {
    let todo: std::vec::IntoIter<Arc<PredictionBatch>> = Vec::new().into_iter();
    futures::stream::unfold((listed, todo), move |(mut listed, mut todo)| {
        let (store, gate) = (store.clone(), gate.clone());
        async move {
            loop {
                let mut relisted = false;
                while listed.try_recv().is_ok() {
                    relisted = true;
                }
                if relisted {
                    todo = store.state().into_iter();
                }
                if let Some(batch) = todo.next() {
                    let batch = lean_ref(&batch);
                    gate.admit(batch_key(&batch)).await;
                    return Some((batch, (listed, todo)));
                }
                listed.recv().await?;
                todo = store.state().into_iter();
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
        let shared = Arc::new(Shared::default());
        let (listed_tx, listed_rx) = mpsc::unbounded_channel();
        let mut trigger = batch_triggers(shared.clone(), listed_tx);
        let gate = Arc::new(SweepGate::new(2, Duration::from_secs(3600)));
        let mut swept = Box::pin(sweeps(listed_rx, store, gate.clone()));

        for event in [watcher::Event::Init]
            .into_iter()
            .chain(["a", "b", "c"].map(|n| watcher::Event::InitApply(batch(n))))
            .chain([watcher::Event::InitDone])
        {
            writer.apply_watcher_event(&event);
            assert_eq!(trigger(Ok(event)).await, None, "a listed batch waits for the sweep");
        }
        assert_eq!(shared.queue.depth(), 3, "each listed batch's wait is clocked from its listing");
        let changed = trigger(Ok(watcher::Event::Apply(batch("c")))).await;
        assert_eq!(changed, Some(ObjectRef::new("c").within("ns")), "a change triggers its pass at once");

        let mut names = Vec::new();
        for _ in 0..2 {
            names.push(swept.next().await.expect("swept").name);
        }
        assert!(swept.next().now_or_never().is_none(), "the window of 2 is full");
        gate.started(batch_key(&ObjectRef::new(&names[0]).within("ns")));
        names.push(swept.next().await.expect("swept").name);
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(swept.next().now_or_never().is_none(), "nothing more until the next listing");
    }
}
