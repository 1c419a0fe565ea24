//! The mirror's finalizer: a deleted batch's document is marked `deleted: true` (phase and counts
//! kept) before the batch goes — bounded: if Firestore stays down for the delete timeout, the
//! finalizer is removed anyway and a Warning event says so.
//!
//! Called by the mirror's reconciler ([`super::controller`]) for each change of a batch, never by
//! the batch reconciler. With the mirror on, a live batch gets the finalizer
//! (JSON patch guarded by `test` operations, as kube-runtime's finalizer helper does, so a
//! concurrent change is retried, never overwritten). With the mirror off, nothing is added and
//! nothing touches Firestore; a finalizer left by an earlier run with the mirror on is removed
//! when its batch is deleted, so turning the mirror off never wedges deletions.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::controller::MirrorContext;
use super::{Deletion, MIRROR_FIELD_MANAGER, MIRROR_FINALIZER};
use crate::api::PredictionBatch;
use crate::error::{Error, status_code};

/// How often a deletion waiting for Firestore looks again.
const DELETION_POLL: Duration = Duration::from_millis(500);

/// Adds or releases the finalizer as the batch needs; what the mirror's reconciler does next.
pub async fn reconcile(batch: &PredictionBatch, ctx: &MirrorContext) -> Result<Action, Error> {
    let has_finalizer = batch.finalizers().iter().any(|f| f == MIRROR_FINALIZER);
    let deleting = batch.metadata.deletion_timestamp.is_some();
    let Some(sink) = ctx.mirror.sink() else {
        if deleting && has_finalizer {
            info!("the Firestore mirror is off; removing its finalizer left from an earlier run");
            remove_finalizer(ctx, batch).await?;
        }
        return Ok(Action::await_change());
    };
    if !deleting {
        if !has_finalizer {
            add_finalizer(ctx, batch).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        return Ok(Action::await_change());
    }
    let id = super::document::document_id(&batch.namespace().unwrap_or_default(), &batch.name_any());
    match sink.deletion(batch) {
        Deletion::Done => {
            remove_finalizer(ctx, batch).await?;
            sink.release(batch);
            info!(document = id, "marked the Firestore document deleted; released the batch");
            Ok(Action::await_change())
        }
        Deletion::Pending { waiting, last_error } => {
            let timeout = sink.delete_timeout();
            let since_deletion = batch
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            // From the later of the deletion and our first attempt: a controller started long
            // after the deletion still gets its full chance to write.
            let waited = since_deletion.min(waiting);
            if waited < timeout {
                debug!(document = id, ?waited, "waiting for the Firestore document to be marked deleted");
                return Ok(Action::requeue(DELETION_POLL.min(timeout - waited)));
            }
            let note = format!(
                "Firestore document {id} could not be marked deleted within {}s ({}); removed finalizer {MIRROR_FINALIZER} so the deletion goes through",
                timeout.as_secs(),
                last_error.as_deref().unwrap_or("no answer yet"),
            );
            warn!(document = id, "{note}");
            let event = Event {
                type_: EventType::Warning,
                reason: "MirrorDeleteTimedOut".into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Delete".into(),
                secondary: None,
            };
            if let Err(err) = ctx.recorder.publish(&event, &batch.object_ref(&())).await {
                debug!(%err, "could not publish event");
            }
            remove_finalizer(ctx, batch).await?;
            // The worker keeps retrying the deleted marker in the background; forget the batch
            // once it lands.
            sink.release(batch);
            Ok(Action::await_change())
        }
    }
}

/// The batch's API, to patch it: only while this replica may act.
fn api(ctx: &MirrorContext, batch: &PredictionBatch) -> Result<Api<PredictionBatch>, Error> {
    if !ctx.leadership.may_act() {
        return Err(Error::NotLeading);
    }
    Ok(Api::namespaced(ctx.client.clone(), &batch.namespace().unwrap_or_default()))
}

fn params() -> PatchParams {
    PatchParams { field_manager: Some(MIRROR_FIELD_MANAGER.into()), ..Default::default() }
}

async fn add_finalizer(ctx: &MirrorContext, batch: &PredictionBatch) -> Result<(), Error> {
    let uid = batch.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let finalizers = batch.finalizers();
    let ops = if finalizers.is_empty() {
        json!([
            { "op": "test", "path": "/metadata/uid", "value": uid },
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [MIRROR_FINALIZER] },
        ])
    } else {
        json!([
            { "op": "test", "path": "/metadata/uid", "value": uid },
            { "op": "test", "path": "/metadata/finalizers", "value": finalizers },
            { "op": "add", "path": "/metadata/finalizers/-", "value": MIRROR_FINALIZER },
        ])
    };
    let patch = Patch::<()>::Json(serde_json::from_value(ops).expect("a valid JSON patch"));
    api(ctx, batch)?
        .patch(&batch.name_any(), &params(), &patch)
        .await
        .map_err(|e| Error::kube("add the Firestore mirror finalizer", e))?;
    debug!("added the Firestore mirror finalizer");
    Ok(())
}

async fn remove_finalizer(ctx: &MirrorContext, batch: &PredictionBatch) -> Result<(), Error> {
    let uid = batch.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let Some(i) = batch.finalizers().iter().position(|f| f == MIRROR_FINALIZER) else { return Ok(()) };
    let ops = json!([
        { "op": "test", "path": "/metadata/uid", "value": uid },
        { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": MIRROR_FINALIZER },
        { "op": "remove", "path": format!("/metadata/finalizers/{i}") },
    ]);
    let patch = Patch::<()>::Json(serde_json::from_value(ops).expect("a valid JSON patch"));
    match api(ctx, batch)?.patch(&batch.name_any(), &params(), &patch).await {
        Ok(_) => Ok(()),
        // Already gone: nothing holds it any more.
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(Error::kube("remove the Firestore mirror finalizer", e)),
    }
}
