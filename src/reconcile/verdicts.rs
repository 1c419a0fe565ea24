//! Verdicts of the dry runs that check a batch's later Job templates before its first Job: the
//! apiserver's "accepted" for a Job is remembered per namespace and Job shape for
//! `--dry-run-verdict-ttl`, so batches created together from the same templates (a schedule's
//! runs, a backfill) cost one dry run per template, not one each: a dry run is a create for the
//! apiserver's admission chain and the audit log, and two of them per batch were the largest
//! avoidable share of the controller's writes.
//!
//! What makes two Jobs "the same shape": everything the apiserver sees except what only names
//! the batch (the Job's name, its owner reference, the batch label and `PREDICTION_BATCH`). Those
//! are the same kind of value for every batch (names are cut to valid lengths before they reach
//! a Job), so admission that accepted one accepts the other. A refusal is never remembered: each
//! batch with a refused template sees its own refusal. Batches that arrive together (a burst
//! of batches from one template reach their first pass at once) wait at one gate per shape for
//! the first one's dry run instead of each sending its own. A verdict that went stale within the TTL
//! (a policy added since) costs what it cost before dry runs existed: the real create is refused
//! and the batch fails at that stage.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use tokio::sync::OwnedMutexGuard;

use crate::api::env;
use crate::labels::BATCH_LABEL;

/// Default of `--dry-run-verdict-ttl`.
pub const DEFAULT_VERDICT_TTL: Duration = Duration::from_secs(600);
/// Verdicts kept at most; expired ones are dropped first, then all.
const MAX_VERDICTS: usize = 4096;

/// Accepted Job shapes, each with when the apiserver accepted it.
pub struct DryRunVerdicts {
    ttl: Duration,
    accepted: Mutex<HashMap<u64, Instant>>,
    /// One per shape being checked: the first pass holds it through its dry run.
    gates: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for DryRunVerdicts {
    fn default() -> Self {
        Self::new(DEFAULT_VERDICT_TTL)
    }
}

impl DryRunVerdicts {
    /// `ttl` zero: nothing is remembered, every batch has its own dry runs.
    pub fn new(ttl: Duration) -> Self {
        DryRunVerdicts { ttl, accepted: Mutex::new(HashMap::new()), gates: Mutex::new(HashMap::new()) }
    }

    /// Waits until no other pass is dry-running a Job of `job`'s shape, and holds the gate for
    /// this one's check: the passes waiting behind it then find its verdict.
    pub async fn gate(&self, job: &Job) -> Option<OwnedMutexGuard<()>> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = shape(job);
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Gates nobody holds or waits for are only ours: dropped before the map grows.
            if gates.len() >= MAX_VERDICTS {
                gates.retain(|_, g| Arc::strong_count(g) > 1);
            }
            gates.entry(key).or_default().clone()
        };
        Some(gate.lock_owned().await)
    }

    /// True when a Job of `job`'s shape was accepted in its namespace less than the TTL ago.
    pub fn accepted(&self, job: &Job, now: Instant) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let key = shape(job);
        let all = self.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.get(&key).is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Remembers that the apiserver accepted `job` (in a dry run) at `now`.
    pub fn accept(&self, job: &Job, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let key = shape(job);
        let mut all = self.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() >= MAX_VERDICTS {
            all.retain(|_, at| now.saturating_duration_since(*at) < self.ttl);
            if all.len() >= MAX_VERDICTS {
                all.clear();
            }
        }
        all.insert(key, now);
    }
}

/// A hash of what the apiserver sees of `job`, its namespace included, without what only names
/// its batch.
fn shape(job: &Job) -> u64 {
    let mut job = job.clone();
    job.metadata.name = None;
    job.metadata.owner_references = None;
    if let Some(labels) = job.metadata.labels.as_mut() {
        labels.remove(BATCH_LABEL);
    }
    if let Some(spec) = job.spec.as_mut() {
        if let Some(labels) = spec.template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(BATCH_LABEL);
        }
        if let Some(pod) = spec.template.spec.as_mut() {
            let init = pod.init_containers.iter_mut().flatten();
            for c in pod.containers.iter_mut().chain(init) {
                for var in c.env.iter_mut().flatten().filter(|v| v.name == env::PREDICTION_BATCH) {
                    var.value = None;
                }
            }
        }
    }
    let mut hasher = DefaultHasher::new();
    // Serialization is deterministic: struct fields in order, maps sorted.
    serde_json::to_string(&job).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PredictionBatch, Stage};
    use crate::reconcile::jobs::build_for_dry_run;
    use kube::Resource;

    fn batch(name: &str, ns: &str, image: &str) -> PredictionBatch {
        let mut b = PredictionBatch::new(
            name,
            serde_json::from_value(serde_json::json!({
                "gameDate": "2026-01-02", "targetCount": 40,
                "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
                "consolidation": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}},
            }))
            .unwrap(),
        );
        b.meta_mut().namespace = Some(ns.into());
        b.meta_mut().uid = Some(format!("uid-{name}"));
        b
    }

    fn job(name: &str, ns: &str, image: &str) -> Job {
        build_for_dry_run(&batch(name, ns, image), Stage::Consolidation).expect("a consolidation Job")
    }

    #[test]
    fn a_verdict_covers_other_batches_of_the_same_template_in_the_namespace_until_it_expires() {
        let (v, t0) = (DryRunVerdicts::new(Duration::from_secs(60)), Instant::now());
        assert!(!v.accepted(&job("a", "ns", "c:1"), t0), "nothing is known at first");
        v.accept(&job("a", "ns", "c:1"), t0);
        assert!(v.accepted(&job("b-with-a-longer-name", "ns", "c:1"), t0 + Duration::from_secs(59)));
        assert!(!v.accepted(&job("b", "ns", "c:1"), t0 + Duration::from_secs(60)), "expired");
        assert!(!v.accepted(&job("b", "other", "c:1"), t0), "another namespace has its own admission");
        assert!(!v.accepted(&job("b", "ns", "c:2"), t0), "another template is checked again");
    }

    #[tokio::test]
    async fn passes_of_one_shape_wait_for_the_first_ones_verdict() {
        let v = Arc::new(DryRunVerdicts::new(Duration::from_secs(60)));
        let first = v.gate(&job("a", "ns", "c:1")).await.expect("a gate");
        let waiter = tokio::spawn({
            let v = v.clone();
            async move {
                let _gate = v.gate(&job("b", "ns", "c:1")).await;
                v.accepted(&job("b", "ns", "c:1"), Instant::now())
            }
        });
        // Another shape is not held up by this one.
        let other = tokio::time::timeout(Duration::from_secs(1), v.gate(&job("a", "ns", "c:2"))).await;
        assert!(other.is_ok(), "another template has its own gate");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second pass waits for the first one's dry run");
        v.accept(&job("a", "ns", "c:1"), Instant::now());
        drop(first);
        assert!(waiter.await.expect("the waiter"), "and then finds its verdict");
    }

    #[test]
    fn no_ttl_remembers_nothing() {
        let (v, t0) = (DryRunVerdicts::new(Duration::ZERO), Instant::now());
        v.accept(&job("a", "ns", "c:1"), t0);
        assert!(!v.accepted(&job("a", "ns", "c:1"), t0));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let (v, t0) = (DryRunVerdicts::new(Duration::from_secs(60)), Instant::now());
        for i in 0..MAX_VERDICTS + 10 {
            v.accept(&job("a", "ns", &format!("c:{i}")), t0);
        }
        assert!(v.accepted.lock().unwrap().len() <= MAX_VERDICTS);
    }
}
