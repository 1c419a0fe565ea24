//! The schedules' reconciler: a third kube-runtime `Controller` of the same term, over a watch of
//! PredictionSchedules and the batch reconciler's shared batch watch (a batch that changes wakes
//! the schedule that owns it: Forbid waits for it, history limits count it).
//!
//! Its watch is not part of `/readyz`: a controller installed without the PredictionSchedule CRD
//! or without the rights to read schedules still runs batches; the failing watch is logged and
//! counted in `prediction_batch_watch_errors_total{watch="schedules"}`.

use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{Instrument, info, info_span, warn};

use super::reconcile::{ScheduleContext, error_policy, reconcile, schedule_name};
use crate::api::{PredictionBatch, PredictionSchedule};
use crate::controller::{Settings, Shared};
use crate::leadership::Leadership;
use crate::metrics::{Metrics, WatchLabel};

/// Schedule passes at once: they are few and short, and must not crowd the batches' passes
/// (a `--concurrency` of 0, kube's "unbounded", would make `min` no cap at all).
const SCHEDULE_CONCURRENCY: u16 = 4;

/// How often every schedule gets a pass regardless of triggers.
pub const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Value of the `watch` label of the schedule watch's error counter.
pub const WATCH_LABEL: &str = "schedules";

#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    leadership: Arc<Leadership>,
    shared: Arc<Shared>,
    batches: Store<PredictionBatch>,
    batch_trigger: impl Stream<Item = Arc<PredictionBatch>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<PredictionSchedule> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    *shared.schedules.lock().expect("poisoned") = Some(store.clone());
    let stream = watcher(api, settings.initial_list.config())
        .default_backoff()
        .inspect(move |item| {
            if let Err(e) = item {
                metrics.watch_errors.get_or_create(&WatchLabel { watch: WATCH_LABEL }).inc();
                warn!(error = %e, "cannot watch PredictionSchedules (is the CRD installed, and may the controller read them?)");
            }
        })
        .modify(|s: &mut PredictionSchedule| {
            s.metadata.managed_fields = None;
        })
        .reflect(writer)
        .applied_objects();
    let ctx = Arc::new(ScheduleContext { client, batches, recorder, leadership, failures: Default::default() });
    // A schedule cares about its batches ending (Forbid, history, lastSuccessfulTime) and going
    // away, not about their progress: a running batch's progress writes wake no schedule.
    let batch_trigger = batch_trigger.filter(|b| {
        let ended = b.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal());
        futures::future::ready(ended || b.metadata.deletion_timestamp.is_some())
    });
    // A wake-up of every schedule now and then, whatever the triggers did: a pass with nothing
    // due writes nothing, and a lost trigger (seen once in a 60-day soak: a new leader that never
    // ran a schedule's first pass) then costs at most this long, not the day's run.
    let tick = futures::stream::unfold((), |()| async {
        tokio::time::sleep(RESYNC_EVERY).await;
        Some(((), ()))
    });
    Controller::for_stream(stream, store)
        .owns_shared_stream(batch_trigger)
        .reconcile_all_on(tick)
        .with_config(ControllerConfig::default().concurrency(SCHEDULE_CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(
            |schedule, ctx| {
                let span = info_span!("schedule", schedule = %schedule_name(&schedule));
                reconcile(schedule, ctx).instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("schedule controller stopped");
}
