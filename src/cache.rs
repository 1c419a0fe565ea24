//! What the controller's caches keep of an object: only what reconcile reads, since the watch
//! caches are most of the controller's memory.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use crate::api::PredictionBatch;

/// Cached Jobs lose their managed fields and pod template (reconcile reads counts and conditions).
pub fn trim_job(job: &mut Job) {
    job.managed_fields_mut().clear();
    job.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
    if let Some(spec) = job.spec.as_mut() {
        spec.template = Default::default();
        spec.selector = None;
        spec.pod_failure_policy = None;
    }
    if let Some(status) = job.status.as_mut() {
        status.uncounted_terminated_pods = None;
    }
}

/// Cached batches lose their managed fields always, and their pod templates while idle
/// (suspended or finished): no Job is built then, and an idle batch is what a cluster holds
/// thousands of. A reconcile that does need a template reads the batch anew
/// ([`crate::reconcile::jobs::template_dropped`]).
pub fn trim_batch(batch: &mut PredictionBatch) {
    batch.managed_fields_mut().clear();
    batch.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
    let finished = batch.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal());
    if batch.spec.suspend || finished {
        let spec = &mut batch.spec;
        spec.worker.template.drop_cached();
        for stage in [spec.consolidation.as_mut(), spec.export.as_mut()].into_iter().flatten() {
            stage.template.drop_cached();
        }
    }
}

/// Of two copies of one batch, the later write. Resource versions are opaque to clients in
/// general, but they are etcd revisions in every apiserver this runs on; when one does not parse
/// as a number the cached copy wins (a stale one then costs a 409 and a fresh read, no more).
pub fn newer<'a>(cached: &'a PredictionBatch, written: &'a PredictionBatch) -> &'a PredictionBatch {
    if cached.uid() != written.uid() {
        return cached;
    }
    let rv = |b: &PredictionBatch| b.resource_version().and_then(|v| v.parse::<u64>().ok());
    match (rv(cached), rv(written)) {
        (Some(c), Some(w)) if w > c => written,
        _ => cached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Phase, PredictionBatchStatus};

    fn batch(rv: &str, uid: &str) -> PredictionBatch {
        let mut b: PredictionBatch = serde_json::from_value(serde_json::json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
            "metadata": {"name": "b", "namespace": "ns", "uid": uid, "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"gameDate": "2026-01-02", "targetCount": 4,
                     "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
                     "consolidation": {"template": {"spec": {"containers": [{"name": "c", "image": "c"}]}}}},
        }))
        .unwrap();
        b.status = Some(PredictionBatchStatus { phase: Some(Phase::Running), ..Default::default() });
        b
    }

    #[test]
    fn running_batches_keep_templates_idle_ones_drop_them() {
        let mut running = batch("1", "u");
        trim_batch(&mut running);
        assert!(running.metadata.managed_fields.as_ref().is_none_or(|m| m.is_empty()));
        assert!(running.spec.worker.template.get().is_some());

        let mut suspended = batch("1", "u");
        suspended.spec.suspend = true;
        trim_batch(&mut suspended);
        assert!(suspended.spec.worker.template.get().is_none());
        assert!(suspended.spec.consolidation.as_ref().unwrap().template.get().is_none());

        let mut done = batch("1", "u");
        done.status.as_mut().unwrap().phase = Some(Phase::Succeeded);
        trim_batch(&mut done);
        assert!(done.spec.worker.template.get().is_none());
        // Only the templates go: what status and the planner read stays.
        assert_eq!(done.spec.target_count, Some(4));
        assert_eq!(done.status.unwrap().phase, Some(Phase::Succeeded));
    }

    #[test]
    fn the_later_write_wins_and_unknown_versions_trust_the_cache() {
        let (cached, written) = (batch("10", "u"), batch("12", "u"));
        assert_eq!(newer(&cached, &written).resource_version().as_deref(), Some("12"));
        assert_eq!(newer(&written, &cached).resource_version().as_deref(), Some("12"));
        // A recreated batch (other UID) is never confused with the old one.
        assert_eq!(newer(&cached, &batch("99", "other")).uid().as_deref(), Some("u"));
        // Opaque versions: keep the cache.
        assert_eq!(newer(&batch("a", "u"), &batch("b", "u")).resource_version().as_deref(), Some("a"));
    }
}
