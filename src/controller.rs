//! Wiring: watches (batches, and only our labelled Jobs, trimmed), the kube-runtime Controller,
//! error policy, and leader election.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::api::PredictionBatch;
use crate::cache::{trim_batch, trim_job};
use crate::context::Context;
use crate::decode::{Decoder, Listed, Marker};
use crate::error::{Error, Retry, backoff};
use crate::labels::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::metrics::{Metrics, WatchLabel};
use crate::mirror::MirrorHandle;
use crate::reconcile::reconcile;
use crate::watch_health::{Watch, WatchHealth};

/// Settings of the `run` command that shape the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace only; all when `None`.
    pub namespace: Option<String>,
    pub leader_elect: bool,
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    pub lease_duration_secs: u64,
    pub concurrency: u16,
}

/// What the HTTP server reads: readiness, the health of the watches, and the batch cache (for
/// per-phase gauges).
#[derive(Default)]
pub struct Shared {
    pub ready: AtomicBool,
    pub batches: Mutex<Option<Store<PredictionBatch>>>,
    pub watches: WatchHealth,
    batches_synced: AtomicBool,
    jobs_synced: AtomicBool,
}

#[derive(Clone, Copy)]
enum Cache {
    Batches,
    Jobs,
}

/// Marks a cache synced on its watch's first complete listing; once both are, the replica is
/// ready (a leader-elected standby is ready from the start: it serves probes, not reconciles).
fn synced<K>(
    shared: Arc<Shared>,
    cache: Cache,
    leader_elect: bool,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    move |event| {
        if !matches!(event, Ok(watcher::Event::InitDone)) {
            return;
        }
        let flag = match cache {
            Cache::Batches => &shared.batches_synced,
            Cache::Jobs => &shared.jobs_synced,
        };
        if !flag.swap(true, Ordering::SeqCst) {
            let both = shared.batches_synced.load(Ordering::SeqCst) && shared.jobs_synced.load(Ordering::SeqCst);
            if both {
                info!("caches synced");
                if !leader_elect {
                    shared.ready.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Records each item of a watch's stream: errors are counted, and a run of them that does not end
/// shows on `/readyz` and in `prediction_batch_watch_failing_seconds`.
fn watch_health<K>(
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    watch: Watch,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    move |item| {
        if item.is_err() {
            metrics.watch_errors.get_or_create(&WatchLabel { watch: watch.label() }).inc();
        }
        shared.watches.record(watch, item.as_ref().map(|_| ()), Instant::now());
    }
}

/// Runs until `shutdown` resolves; with leader election, reconciles only while holding the lease.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    mirror: MirrorHandle,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if !settings.leader_elect {
        metrics.is_leader.set(1);
        run_controller(client, &settings, metrics, mirror, shared, wait_for(shutdown)).await;
        return Ok(());
    }

    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_duration_secs)
        .with_grace((settings.lease_duration_secs / 3).max(1))
        .build()
        .await?;
    let (mut leader_rx, lease_task) = manager.watch().await;
    // Standbys are ready (they serve probes); they just don't reconcile.
    shared.ready.store(true, Ordering::SeqCst);
    let mut shutdown_rx = shutdown.clone();
    loop {
        // Wait to become leader (or shut down).
        while !*leader_rx.borrow_and_update() {
            tokio::select! {
                changed = leader_rx.changed() => if changed.is_err() { break },
                _ = shutdown_rx.wait_for(|s| *s) => break,
            }
        }
        if *shutdown_rx.borrow() || !*leader_rx.borrow() {
            break;
        }
        info!(identity = settings.identity, lease = settings.lease_name, "acquired leadership; starting to reconcile");
        metrics.is_leader.set(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let controller = run_controller(
            client.clone(),
            &settings,
            metrics.clone(),
            mirror.clone(),
            shared.clone(),
            wait_for(stop_rx),
        );
        tokio::pin!(controller);
        let lost = tokio::select! {
            _ = &mut controller => false,
            _ = leader_rx.wait_for(|l| !*l) => true,
            _ = shutdown_rx.wait_for(|s| *s) => false,
        };
        metrics.is_leader.set(0);
        if lost {
            // Stop writing at once: drop the controller without waiting for in-flight work.
            warn!(identity = settings.identity, "lost leadership; stopped reconciling");
            continue;
        }
        // Graceful shutdown: let in-flight reconciles finish (bounded), then release the lease.
        let _ = stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(20), &mut controller).await.is_err() {
            warn!("in-flight reconciles did not finish within 20s; stopping anyway");
        }
        break;
    }
    drop(leader_rx);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "lease task failed"),
        Err(_) => warn!("timed out releasing the leader lease"),
    }
    Ok(())
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn run_controller(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    mirror: MirrorHandle,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (listed, jobs): (Api<Listed>, Api<Job>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    shared.watches.reset();
    let (job_store, job_writer) = reflector::store();
    let job_stream =
        watcher(jobs, watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")))
            .default_backoff()
            .inspect(watch_health(shared.clone(), metrics.clone(), Watch::Jobs))
            .modify(trim_job)
            .reflect(job_writer)
            .inspect(synced(shared.clone(), Cache::Jobs, settings.leader_elect))
            .touched_objects();
    // Batches are listed and watched as `Listed` and decoded one by one: one that does not decode
    // is left out of the cache, counted and marked (see `decode`), and never fails the list.
    let (batch_store, batch_writer) = reflector::store();
    let (marks, marks_rx) = mpsc::unbounded_channel();
    let mut decoder = Decoder::new(metrics.clone(), marks);
    let batch_stream = watcher(listed, watcher::Config::default())
        .default_backoff()
        .inspect(watch_health(shared.clone(), metrics.clone(), Watch::Batches))
        .filter_map(move |item| future::ready(item.map(|event| decoder.on_event(event)).transpose()))
        .modify(trim_batch)
        .reflect(batch_writer)
        .inspect(synced(shared.clone(), Cache::Batches, settings.leader_elect))
        .applied_objects();

    let reporter =
        Reporter { controller: "prediction-batch-controller".into(), instance: Some(settings.identity.clone()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs: job_store.clone(),
        recorder: Recorder::new(client, reporter),
        metrics,
        mirror,
        leadership: Arc::new(crate::leadership::Leadership::unelected()),
        written: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
    });
    *shared.batches.lock().expect("poisoned") = Some(batch_store.clone());
    let marker = Marker { client: ctx.client.clone(), recorder: ctx.recorder.clone() };

    let controller = Controller::for_stream(batch_stream, batch_store)
        .owns_stream(job_stream)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(
            |batch, ctx| {
                let span = info_span!("reconcile", batch = %format!("{}/{}", batch.namespace().unwrap_or_default(), batch.name_any()));
                reconcile(batch, ctx).instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|_| async {});
    // The marker ends with the controller (it owns the decoder that sends the marks).
    tokio::select! {
        _ = controller => {},
        _ = marker.run(marks_rx) => {},
    }
    info!("controller stopped");
}

fn error_policy(batch: Arc<PredictionBatch>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(batch.as_ref());
    let name = format!("{}/{}", batch.namespace().unwrap_or_default(), batch.name_any());
    // Consecutive failures of this batch; reset by the next successful reconcile.
    let attempt = {
        let mut failures = ctx.failures.lock().expect("poisoned");
        let n = failures.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    let wait = match error.retry() {
        // A stale view (409): look again soon, growing only if it keeps happening.
        Retry::Soon => (backoff(attempt - 1) / 5).max(Duration::from_millis(50)),
        Retry::Backoff => backoff(attempt - 1),
    };
    warn!(batch = name, %error, attempt, backoff_ms = wait.as_millis() as u64, "reconcile failed; backing off");
    Action::requeue(wait)
}
