//! The mirror's reconciler: a second kube-runtime `Controller`, next to the batch reconciler, over
//! the same batch watch and cache (one watch, fanned out by a shared reflector: see
//! [`crate::controller`]). It has its own queue and backoff, its own metrics
//! (`prediction_batch_mirror_reconciles_total{result}`,
//! `prediction_batch_mirror_reconcile_errors_total{kind}`, next to the worker's
//! `prediction_batch_mirror_failures_total`) and its own tracing span, `mirror`, naming the batch.
//!
//! A pass never waits for Firestore: it hands a live batch to the worker (which coalesces, writes
//! in the background and maintains `MirrorSynced`), then keeps the finalizer ([`super::finalizer`]).
//! The hand-over comes first, so a finalizer that cannot be added (a missing RBAC rule) costs only
//! the `deleted` marker of a batch deleted meanwhile, not its mirroring; the refusal is retried
//! with backoff, logged and counted. Whatever fails here, the batch reconciler does not see it.
//!
//! With the mirror off it still runs, for the batches that carry its finalizer from an earlier
//! run with the mirror on and only for those: it releases them when they are deleted, touching no
//! Firestore, so turning the mirror off never wedges deletions.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tracing::{Instrument, info, info_span};

use super::{MIRROR_FINALIZER, MirrorHandle, finalizer};
use crate::api::PredictionBatch;
use crate::controller::{batch_name, requeue_after_failure};
use crate::error::Error;
use crate::leadership::Leadership;
use crate::metrics::{KindLabel, Metrics, ResultLabel};

/// What the mirror's passes share.
pub struct MirrorContext {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub mirror: MirrorHandle,
    /// Asked before every patch of a batch, and by the worker before every write.
    pub leadership: Arc<Leadership>,
    /// Per batch: consecutive failed passes, for this controller's own backoff.
    failures: Mutex<HashMap<ObjectRef<PredictionBatch>, u32>>,
}

impl MirrorContext {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        mirror: MirrorHandle,
        leadership: Arc<Leadership>,
    ) -> Self {
        MirrorContext { client, recorder, metrics, mirror, leadership, failures: Mutex::new(HashMap::new()) }
    }
}

/// Whether the mirror's reconciler looks at `batch`: every batch with the mirror on; with it off,
/// only one still carrying its finalizer.
pub fn wants(mirror_on: bool, batch: &PredictionBatch) -> bool {
    mirror_on || batch.finalizers().iter().any(|f| f == MIRROR_FINALIZER)
}

/// Runs the mirror's reconciler until `shutdown` (graceful: passes in flight finish) or until
/// `trigger` ends. `trigger` must be drained by nobody else; this controller reads it whatever
/// its passes do, so it never holds up the shared watch.
pub async fn run(
    ctx: Arc<MirrorContext>,
    trigger: impl Stream<Item = Arc<PredictionBatch>> + Send + 'static,
    store: Store<PredictionBatch>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let on = ctx.mirror.is_enabled();
    if let Some(sink) = ctx.mirror.sink() {
        sink.follow(ctx.leadership.clone());
    }
    let trigger = trigger.filter(move |batch| ready(wants(on, batch)));
    Controller::for_shared_stream(trigger, store)
        .graceful_shutdown_on(shutdown)
        .run(
            |batch, ctx| {
                let span = info_span!("mirror", batch = %batch_name(&batch));
                reconcile(batch, ctx).instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|_| ready(()))
        .await;
    info!("mirror controller stopped");
}

async fn reconcile(batch: Arc<PredictionBatch>, ctx: Arc<MirrorContext>) -> Result<Action, Error> {
    let result = pass(&batch, &ctx).await;
    let outcome = match &result {
        Ok(_) => {
            ctx.failures.lock().expect("poisoned").remove(&ObjectRef::from_obj(batch.as_ref()));
            "ok"
        }
        Err(e) => {
            ctx.metrics.mirror_errors.get_or_create(&KindLabel { kind: e.kind() }).inc();
            "error"
        }
    };
    ctx.metrics.mirror_reconciles.get_or_create(&ResultLabel { result: outcome }).inc();
    result
}

/// One pass: hand a live batch to the worker, then add or release the finalizer.
async fn pass(batch: &PredictionBatch, ctx: &MirrorContext) -> Result<Action, Error> {
    if !ctx.leadership.may_act() {
        return Err(Error::NotLeading);
    }
    if batch.metadata.deletion_timestamp.is_none() {
        ctx.mirror.notify(batch);
    }
    finalizer::reconcile(batch, ctx).await
}

fn error_policy(batch: Arc<PredictionBatch>, error: &Error, ctx: Arc<MirrorContext>) -> Action {
    requeue_after_failure(&ctx.failures, &batch, error, "mirror pass failed; backing off")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(finalizers: &[&str]) -> PredictionBatch {
        let mut b: PredictionBatch = serde_json::from_value(serde_json::json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
            "metadata": {"name": "b", "namespace": "ns"},
            "spec": {"gameDate": "2026-01-02", "targetCount": 4,
                     "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}},
        }))
        .unwrap();
        b.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        b
    }

    #[test]
    fn with_the_mirror_off_only_batches_holding_its_finalizer_are_looked_at() {
        assert!(wants(true, &batch(&[])));
        assert!(!wants(false, &batch(&[])));
        assert!(!wants(false, &batch(&["example.com/other"])));
        assert!(wants(false, &batch(&["example.com/other", MIRROR_FINALIZER])));
    }
}
