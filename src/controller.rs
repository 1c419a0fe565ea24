//! Wiring: watches (batches, and only our labelled Jobs, trimmed), the kube-runtime Controllers
//! (the batch reconciler, and the Firestore mirror's and the schedules' next to it, over the same
//! batch watch),
//! error policy, and leader election.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::api::{PredictionBatch, PredictionSchedule};
use crate::cache::{trim_batch, trim_job};
use crate::context::Context;
use crate::decode::{Decoder, Listed, Marker};
use crate::error::{Error, count_failure, retry_after};
use crate::initial_list::ListStrategy;
use crate::labels::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::leadership::Leadership;
use crate::metrics::{BATCH_CONTROLLER, ControllerLabel, Metrics, QueueClock, WatchLabel, batch_key};
use crate::mirror::MirrorHandle;
use crate::mirror::controller::MirrorContext;
use crate::reconcile::stuck::StuckPods;
use crate::reconcile::{reconcile_queued, release_jobs_of};
use crate::sweep::{SweepGate, batch_triggers, sweeps};
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
    /// How long after its last successful Lease renewal a leader may still act; shorter than the
    /// lease duration, so a leader cut off from the apiserver stops before a standby can take over.
    pub lease_renew_deadline: Duration,
    /// Passes run at once (0 = unbounded; see `--concurrency`).
    pub concurrency: u16,
    /// How the watches fill their caches (`--initial-list`, resolved at start).
    pub initial_list: ListStrategy,
    /// See `--stuck-pod-after`.
    pub stuck_pod_after_secs: i64,
    /// See `--dry-run-verdict-ttl`.
    pub dry_run_verdict_ttl: Duration,
}

/// What the HTTP server reads: readiness, the health of the watches, and the batch cache (for
/// per-phase gauges).
#[derive(Default)]
pub struct Shared {
    pub ready: AtomicBool,
    pub batches: Mutex<Option<Store<PredictionBatch>>>,
    pub schedules: Mutex<Option<Store<PredictionSchedule>>>,
    pub mirror: Mutex<MirrorHandle>,
    /// Changes of batches waiting for their pass (`prediction_batch_queue_*`).
    pub queue: QueueClock,
    /// Batches of the sweep after a complete listing handed to kube-runtime's queue.
    pub sweep: Arc<SweepGate>,
    pub watches: WatchHealth,
    batches_synced: AtomicBool,
    jobs_synced: AtomicBool,
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn with_sweep(gate: SweepGate) -> Self {
        Self { sweep: Arc::new(gate), ..Default::default() }
    }

    /// A new controller (a new term of leadership) starts with empty caches.
    fn reset_synced(&self) {
        self.batches_synced.store(false, Ordering::SeqCst);
        self.jobs_synced.store(false, Ordering::SeqCst);
    }
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

/// Clocks a change of one of our Jobs as a change of the batch that controls it.
fn job_arrived(shared: Arc<Shared>) -> impl FnMut(&Result<Job, watcher::Error>) {
    move |item| {
        let Ok(job) = item else { return };
        let Some(owner) = job
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "PredictionBatch")
        else {
            return;
        };
        let batch = ObjectRef::new(&owner.name).within(job.metadata.namespace.as_deref().unwrap_or_default());
        shared.queue.arrived(batch, Instant::now());
    }
}

/// Default of `--concurrency`: passes at once. Unbounded, kube-runtime starts every queued pass
/// together, and a restart over 10,000 batches held about 18 MiB more at its peak
/// (docs/benchmarks.md, issue 19); 256 in flight is far more than the apiserver serves at once.
pub const DEFAULT_CONCURRENCY: u16 = 256;

/// Value of the `watch` label of the pod watch's error counter.
pub const PODS_WATCH_LABEL: &str = "pods";

/// How long a shutdown lets in-flight reconciles finish before it drops them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a shutdown waits for the Lease to be released.
pub const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a running controller was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The process is shutting down: drain, then exit.
    Shutdown,
    /// The Lease went to someone else, or was not renewed within the renew deadline: stop at once.
    NotLeading,
    /// The controller stream ended by itself (its watches closed).
    Ended,
}

/// Runs until `shutdown` resolves; with leader election, reconciles only while holding the lease
/// and renewing it within the renew deadline.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    mirror: MirrorHandle,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut shutdown_rx = shutdown;
    if !settings.leader_elect {
        metrics.is_leader.set(1);
        let leadership = Arc::new(Leadership::unelected());
        let controller =
            run_controller(client, &settings, metrics, mirror, shared.clone(), leadership, shutdown_rx.clone());
        tokio::pin!(controller);
        tokio::select! {
            _ = &mut controller => warn!("controller stopped by itself"),
            _ = shutdown_rx.wait_for(|s| *s) => drain(controller, &shared, None).await,
        }
        return Ok(());
    }

    let lease_duration = Duration::from_secs(settings.lease_duration_secs);
    let renew_every = renew_period(settings.lease_renew_deadline);
    let builder = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_duration_secs)
        // The holder renews `grace` seconds before the lease would expire, i.e. every `renew_every`.
        .with_grace(settings.lease_duration_secs - renew_every.as_secs())
        .build();
    let manager = tokio::select! {
        manager = builder => manager?,
        _ = shutdown_rx.wait_for(|s| *s) => return Ok(()),
    };
    // kube-lease-manager reports only changes of holder, and keeps reporting "leader" while its
    // renewals fail: a leader cut off from the apiserver would never hear that it lost. So the
    // right to act comes from reading the Lease ourselves: each renewal we see allows acting
    // until its renewTime plus the renew deadline.
    let leadership = Arc::new(Leadership::elected());
    let (deadline_tx, mut deadline_rx) = watch::channel(None);
    let follower = tokio::spawn(crate::leadership::follow_lease(
        Api::namespaced(client.clone(), &settings.lease_namespace),
        settings.lease_name.clone(),
        settings.identity.clone(),
        settings.lease_renew_deadline,
        lease_read_period(renew_every),
        leadership.clone(),
        deadline_tx,
    ));
    let (mut leader_rx, lease_task) = manager.watch().await;
    info!(
        identity = settings.identity,
        lease = settings.lease_name,
        lease_duration_s = lease_duration.as_secs(),
        renew_deadline_ms = settings.lease_renew_deadline.as_millis() as u64,
        renew_every_s = renew_every.as_secs(),
        "leader election: standing by for the Lease"
    );
    // Standbys are ready (they serve probes); they just don't reconcile.
    shared.ready.store(true, Ordering::SeqCst);
    'elections: loop {
        // Wait until the lease manager holds the Lease and we have seen a renewal we may act on.
        loop {
            let holds = *leader_rx.borrow_and_update();
            let until = *deadline_rx.borrow_and_update();
            if holds && until.is_some_and(|u| u > Instant::now()) {
                break;
            }
            tokio::select! {
                changed = leader_rx.changed() => if changed.is_err() {
                    warn!("the lease manager stopped");
                    break 'elections;
                },
                changed = deadline_rx.changed() => if changed.is_err() {
                    warn!("the Lease reader stopped");
                    break 'elections;
                },
                _ = shutdown_rx.wait_for(|s| *s) => break 'elections,
            }
        }
        info!(identity = settings.identity, lease = settings.lease_name, "acquired leadership; starting to reconcile");
        metrics.is_leader.set(1);
        shared.reset_synced();
        let (stop_tx, stop_rx) = watch::channel(false);
        let controller = run_controller(
            client.clone(),
            &settings,
            metrics.clone(),
            mirror.clone(),
            shared.clone(),
            leadership.clone(),
            stop_rx,
        );
        tokio::pin!(controller);
        let stop = loop {
            let Some(until) = deadline_rx.borrow_and_update().filter(|u| *u > Instant::now()) else {
                break Stop::NotLeading;
            };
            tokio::select! {
                _ = &mut controller => break Stop::Ended,
                _ = shutdown_rx.wait_for(|s| *s) => break Stop::Shutdown,
                _ = leader_rx.wait_for(|l| !*l) => break Stop::NotLeading,
                changed = deadline_rx.changed() => if changed.is_err() { break Stop::NotLeading },
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        };
        match stop {
            Stop::NotLeading => {
                // Stop writing at once: the controller, pinned in this iteration, is dropped by the
                // `continue` below, cancelling in-flight passes instead of waiting for them.
                metrics.is_leader.set(0);
                if *leader_rx.borrow() {
                    warn!(
                        identity = settings.identity,
                        renew_deadline_ms = settings.lease_renew_deadline.as_millis() as u64,
                        "the Lease was not renewed within the renew deadline; stopped reconciling"
                    );
                } else {
                    warn!(identity = settings.identity, "lost leadership; stopped reconciling");
                }
                continue 'elections;
            }
            Stop::Shutdown => {
                // Let in-flight reconciles finish (bounded, and never past the renew deadline).
                let _ = stop_tx.send(true);
                drain(controller, &shared, Some(&mut deadline_rx)).await;
            }
            Stop::Ended => warn!("controller stopped by itself"),
        }
        metrics.is_leader.set(0);
        break;
    }
    leadership.revoke();
    follower.abort();
    drop(leader_rx);
    match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "lease task failed"),
        Err(_) => warn!("timed out releasing the leader lease"),
    }
    Ok(())
}

/// How often the holder renews the Lease: a third of the renew deadline in whole seconds (at
/// least one), so a couple of failed renewals still fit in the deadline.
pub fn renew_period(renew_deadline: Duration) -> Duration {
    Duration::from_secs((renew_deadline.as_secs() / 3).max(1))
}

/// How often [`crate::leadership::follow_lease`] reads the Lease: twice per renewal, so a
/// renewal is seen at most half a renewal period late (it then has that much less time to act).
pub fn lease_read_period(renew_every: Duration) -> Duration {
    renew_every / 2
}

/// After a shutdown was requested: waits for the controller's in-flight reconciles, at most
/// [`DRAIN_TIMEOUT`] and, when elected, no longer than the renew deadline. A controller whose
/// batch cache never synced has nothing in flight (kube's runner starts no reconcile before it),
/// and its graceful shutdown would wait for a sync that can no longer happen: it is dropped.
async fn drain(
    controller: std::pin::Pin<&mut impl Future<Output = ()>>,
    shared: &Shared,
    deadline_rx: Option<&mut watch::Receiver<Option<Instant>>>,
) {
    if !shared.batches_synced.load(Ordering::SeqCst) {
        info!("shutting down before the caches synced: nothing in flight");
        return;
    }
    let renew_deadline = async {
        match deadline_rx {
            None => std::future::pending().await,
            Some(rx) => loop {
                let until = *rx.borrow_and_update();
                let Some(until) = until.filter(|u| *u > Instant::now()) else { return };
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            },
        }
    };
    tokio::select! {
        _ = controller => info!("in-flight reconciles finished"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            warn!("in-flight reconciles did not finish within {DRAIN_TIMEOUT:?}; stopping anyway")
        }
        _ = renew_deadline => warn!("the renew deadline passed while draining; stopping at once"),
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// How many changes of batches the shared batch watch buffers for a reconciler that has not read
/// them yet (each reconciler reads its own continuously, whatever its passes do).
const SHARED_WATCH_BUFFER: usize = 1024;

/// The two reconcilers of one term, until `shutdown` turns true (graceful) or the watches end.
async fn run_controller(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    mirror: MirrorHandle,
    shared: Arc<Shared>,
    leadership: Arc<Leadership>,
    shutdown: watch::Receiver<bool>,
) {
    let (listed, jobs): (Api<Listed>, Api<Job>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    shared.watches.reset();
    shared.queue.reset();
    shared.sweep.reset();
    let stuck = Arc::new(StuckPods::default());
    *shared.mirror.lock().expect("poisoned") = mirror.clone();
    let (job_store, job_writer) = reflector::store();
    let job_stream =
        watcher(jobs, settings.initial_list.config().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")))
            .default_backoff()
            .inspect(watch_health(shared.clone(), metrics.clone(), Watch::Jobs))
            .modify(trim_job)
            .reflect(job_writer)
            .inspect(synced(shared.clone(), Cache::Jobs, settings.leader_elect))
            .touched_objects()
            .inspect(job_arrived(shared.clone()));
    // Pods of our Jobs, not cached: each event only updates the index of stuck pods, and a batch
    // is reconciled only when its stuck pods change. Not part of /readyz (a controller without
    // the right to watch pods still runs batches); its errors are counted as watch="pods".
    let pods: Api<Pod> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pod_trigger = {
        let (stuck, jobs, metrics) = (stuck.clone(), job_store.clone(), metrics.clone());
        let config = settings
            .initial_list
            .config()
            .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"))
            .fields(crate::reconcile::stuck::POD_WATCH_FIELDS);
        watcher(pods, config)
            .default_backoff()
            .filter_map(move |item| {
                let changed = match item {
                    Ok(event) => stuck.on_event(&event, &jobs),
                    Err(e) => {
                        metrics.watch_errors.get_or_create(&WatchLabel { watch: PODS_WATCH_LABEL }).inc();
                        warn!(error = %e, "cannot watch the pods of our Jobs (may the controller watch pods?)");
                        Vec::new()
                    }
                };
                future::ready((!changed.is_empty()).then(|| futures::stream::iter(changed)))
            })
            .flatten()
    };
    // Batches are listed and watched as `Listed` and decoded one by one: one that does not decode
    // is left out of the cache, counted and marked (see `decode`), and never fails the list.
    // One watch for both reconcilers: the batch reconciler drives it, and the mirror's follows
    // through a subscription to the same cache.
    let (batch_store, batch_writer) = reflector::store_shared(SHARED_WATCH_BUFFER);
    let mirror_trigger = batch_writer.subscribe().expect("a shared store takes subscribers");
    let schedule_trigger = batch_writer.subscribe().expect("a shared store takes subscribers");
    let (marks, marks_rx) = mpsc::unbounded_channel();
    let mut decoder = Decoder::new(metrics.clone(), marks);
    let batch_stream = watcher(listed, settings.initial_list.config())
        .default_backoff()
        .inspect(watch_health(shared.clone(), metrics.clone(), Watch::Batches))
        .filter_map(move |item| future::ready(item.map(|event| decoder.on_event(event)).transpose()))
        .modify(trim_batch)
        .reflect_shared(batch_writer)
        .inspect(synced(shared.clone(), Cache::Batches, settings.leader_elect));

    let reporter =
        Reporter { controller: "prediction-batch-controller".into(), instance: Some(settings.identity.clone()) };
    let recorder = Recorder::new(client.clone(), reporter);
    let mirror_ctx =
        Arc::new(MirrorContext::new(client.clone(), recorder.clone(), metrics.clone(), mirror, leadership.clone()));
    let mirror_controller =
        crate::mirror::controller::run(mirror_ctx, mirror_trigger, batch_store.clone(), wait_for(shutdown.clone()));
    let schedule_controller = crate::schedule::controller::run(
        client.clone(),
        settings,
        metrics.clone(),
        recorder.clone(),
        leadership.clone(),
        shared.clone(),
        batch_store.clone(),
        schedule_trigger,
        wait_for(shutdown.clone()),
    );
    let ctx = Arc::new(Context {
        client,
        jobs: job_store.clone(),
        recorder,
        events: Default::default(),
        metrics,
        leadership,
        written: Mutex::new(HashMap::new()),
        job_writes: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        stuck,
        stuck_after_secs: settings.stuck_pod_after_secs,
        dry_runs: crate::reconcile::verdicts::DryRunVerdicts::new(settings.dry_run_verdict_ttl),
    });
    *shared.batches.lock().expect("poisoned") = Some(batch_store.clone());
    let marker = Marker { client: ctx.client.clone(), recorder: ctx.recorder.clone() };

    let ctx_for_orphans = ctx.clone();
    let (queue, queue_for_orphans) = (shared.clone(), shared.clone());
    // The batches trigger their own passes by name only: kube's own trigger keys each queued pass
    // by an `ObjectRef` that also carries the resourceVersion and UID (two more strings, kept
    // twice by its scheduler). A complete listing is swept a window at a time (see `sweep`).
    let (listed_tx, listed_rx) = mpsc::unbounded_channel();
    let batch_refs = futures::stream::select(
        batch_stream.filter_map(batch_triggers(shared.clone(), listed_tx)),
        sweeps(listed_rx, batch_store.clone(), shared.clone()),
    );
    let controller = Controller::for_stream(futures::stream::pending(), batch_store)
        .reconcile_on(batch_refs)
        .owns_stream(job_stream)
        .reconcile_on(pod_trigger)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(wait_for(shutdown))
        .run(
            move |batch, ctx| {
                let key = ObjectRef::from_obj(batch.as_ref());
                queue.sweep.started(batch_key(&key));
                let waited = queue.queue.started(&key, Instant::now());
                if let Some(wait) = waited {
                    let label = ControllerLabel { controller: BATCH_CONTROLLER };
                    ctx.metrics.queue_wait.get_or_create(&label).observe(wait.as_secs_f64());
                }
                let span = info_span!("reconcile", batch = %batch_name(&batch));
                reconcile_queued(batch, ctx, waited).instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|result| {
            let ctx = ctx_for_orphans.clone();
            if let Err(kube::runtime::controller::Error::ObjectNotFound(batch)) = &result {
                let key = ObjectRef::<PredictionBatch>::new(&batch.name);
                let key = key.within(batch.namespace.as_deref().unwrap_or_default());
                queue_for_orphans.sweep.started(batch_key(&key));
                queue_for_orphans.queue.forget(&key);
            }
            async move {
                // A Job of ours changed whose batch is gone (e.g. the garbage collector deletes the
                // Jobs of a deleted batch): our outcome finalizer must not keep it.
                if let Err(kube::runtime::controller::Error::ObjectNotFound(batch)) = result {
                    let ns = batch.namespace.clone().unwrap_or_default();
                    if let Err(e) = release_jobs_of(&ctx, &ns, &batch.name, None).await {
                        warn!(batch = %batch, error = %e, "could not release the Jobs of a deleted batch");
                    }
                }
            }
        });
    // The marker ends with the batch controller (it owns the decoder that sends the marks). The
    // mirror's and the schedules' controllers end with it too (their triggers include the batch
    // controller's watch), and are given the same graceful shutdown.
    tokio::select! {
        _ = future::join3(controller, mirror_controller, schedule_controller) => {},
        _ = marker.run(marks_rx) => {},
    }
    info!("controller stopped");
}

fn error_policy(batch: Arc<PredictionBatch>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_after_failure(&ctx.failures, &batch, error, "reconcile failed; backing off")
}

/// `namespace/name`: how logs and spans name a batch.
pub fn batch_name(batch: &PredictionBatch) -> String {
    format!("{}/{}", batch.namespace().unwrap_or_default(), batch.name_any())
}

/// The error policy of both reconcilers: counts one more consecutive failed pass of `batch` in
/// `failures` (reset by its next successful pass), logs `what`, and requeues it after the backoff.
pub fn requeue_after_failure(
    failures: &Mutex<HashMap<ObjectRef<PredictionBatch>, u32>>,
    batch: &PredictionBatch,
    error: &Error,
    what: &str,
) -> Action {
    let attempt = count_failure(failures, ObjectRef::from_obj(batch));
    let wait = retry_after(error, attempt);
    warn!(batch = batch_name(batch), %error, attempt, backoff_ms = wait.as_millis() as u64, "{what}");
    Action::requeue(wait)
}
