//! Pods that wait and will not start on their own: an image that cannot be pulled, a container
//! whose configuration is missing, a pod no node can take. The Job controller counts such a pod
//! as active forever; this module finds them so the batch can say so.
//!
//! The controller watches the Pending pods of its Jobs (label- and field-selected,
//! [`POD_WATCH_FIELDS`]) without caching them: each event only updates [`StuckPods`], an index
//! of the pods that look stuck right now, by batch, and a batch is reconciled only when its entry
//! changes, never on an ordinary pod transition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::stragglers::COMPLETION_INDEX_ANNOTATION;
use crate::api::{PredictionBatch, Stage, StuckReason};
use crate::labels::{BATCH_LABEL, STAGE_LABEL};

/// The pod watch's field selector: only a Pending pod can be stuck ([`stuck_signal`]). A pod
/// that leaves Pending arrives as a deletion, which clears it from [`StuckPods`]; the running,
/// finished and deleted pods' events (most of a pod's life) never reach the controller. At
/// 100 batches x 100 shards on two cores the unfiltered watch cost the controller 6 s more CPU
/// and the run 1.060 of the bare-Jobs time against 1.035 (docs/benchmarks.md, Headline).
pub const POD_WATCH_FIELDS: &str = "status.phase=Pending";

/// One pod of a batch that waits for a reason that needs someone to act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckPod {
    pub stage: Stage,
    /// The worker shard (completion index); `None` for the one-pod stages.
    pub shard: Option<u32>,
    pub pod: String,
    pub reason: StuckReason,
    pub message: String,
    /// Since when it has been waiting (the pod's start, or when the scheduler gave up on it).
    pub since: Timestamp,
}

/// Why `pod` waits, if it waits for a reason of [`StuckReason`]; `None` for any other pod.
pub fn stuck_signal(pod: &Pod) -> Option<(StuckReason, String, Timestamp)> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Pending") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    if let Some(c) = unschedulable {
        let since = c.last_transition_time.as_ref().or(pod.metadata.creation_timestamp.as_ref())?.0;
        return Some((StuckReason::Unschedulable, c.message.clone().unwrap_or_default(), since));
    }
    let statuses = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    let waiting = statuses.filter_map(|c| c.state.as_ref()?.waiting.as_ref()).find_map(|w| {
        let reason = StuckReason::from_waiting(w.reason.as_deref()?)?;
        Some((reason, w.message.clone().unwrap_or_default()))
    })?;
    let since = status.start_time.as_ref().or(pod.metadata.creation_timestamp.as_ref())?.0;
    Some((waiting.0, waiting.1, since))
}

/// The stuck pods of every batch, kept from the pod watch's events.
#[derive(Debug, Default)]
pub struct StuckPods {
    inner: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    by_batch: HashMap<ObjectRef<PredictionBatch>, BTreeMap<String, StuckPod>>,
    /// Pod (namespace, name) → its batch, for the pods in `by_batch`.
    batch_of: HashMap<(String, String), ObjectRef<PredictionBatch>>,
    /// Pods seen during a relist, to drop those that went away while the watch was down.
    relist: Option<HashSet<(String, String)>>,
}

impl StuckPods {
    /// The stuck pods of `batch` now, by stage and shard.
    pub fn of(&self, batch: &ObjectRef<PredictionBatch>) -> Vec<StuckPod> {
        let inner = self.inner.lock().expect("poisoned");
        let mut pods: Vec<StuckPod> = inner.by_batch.get(batch).into_iter().flat_map(|m| m.values().cloned()).collect();
        pods.sort_by(|a, b| (a.stage, a.shard, &a.pod).cmp(&(b.stage, b.shard, &b.pod)));
        pods
    }

    /// Applies one event of the pod watch; returns the batches whose stuck pods changed. `jobs`
    /// maps a pod's Job to its batch (the batch label may be a shortened name).
    pub fn on_event(&self, event: &watcher::Event<Pod>, jobs: &Store<Job>) -> Vec<ObjectRef<PredictionBatch>> {
        let mut inner = self.inner.lock().expect("poisoned");
        let mut changed = Vec::new();
        match event {
            watcher::Event::Init => inner.relist = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(seen) = inner.relist.as_mut() {
                    seen.insert(key(pod));
                }
                changed.extend(inner.apply(pod, jobs));
            }
            watcher::Event::InitDone => {
                let seen = inner.relist.take().unwrap_or_default();
                let gone: Vec<(String, String)> =
                    inner.batch_of.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                for k in gone {
                    changed.extend(inner.remove(&k));
                }
            }
            watcher::Event::Apply(pod) => changed.extend(inner.apply(pod, jobs)),
            watcher::Event::Delete(pod) => changed.extend(inner.remove(&key(pod))),
        }
        changed.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        changed.dedup();
        changed
    }

    /// A new term of leadership starts from a new listing.
    pub fn reset(&self) {
        *self.inner.lock().expect("poisoned") = Index::default();
    }
}

fn key(pod: &Pod) -> (String, String) {
    (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default())
}

impl Index {
    fn apply(&mut self, pod: &Pod, jobs: &Store<Job>) -> Option<ObjectRef<PredictionBatch>> {
        let k = key(pod);
        let Some((reason, message, since)) = stuck_signal(pod) else { return self.remove(&k) };
        let Some((batch, stage)) = batch_and_stage(pod, jobs) else { return self.remove(&k) };
        let shard = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMPLETION_INDEX_ANNOTATION))
            .and_then(|i| i.parse().ok());
        let entry = StuckPod { stage, shard, pod: k.1.clone(), reason, message, since };
        let pods = self.by_batch.entry(batch.clone()).or_default();
        if pods.get(&k.1) == Some(&entry) {
            return None;
        }
        pods.insert(k.1.clone(), entry);
        self.batch_of.insert(k, batch.clone());
        Some(batch)
    }

    fn remove(&mut self, k: &(String, String)) -> Option<ObjectRef<PredictionBatch>> {
        let batch = self.batch_of.remove(k)?;
        if let Some(pods) = self.by_batch.get_mut(&batch) {
            pods.remove(&k.1);
            if pods.is_empty() {
                self.by_batch.remove(&batch);
            }
        }
        Some(batch)
    }
}

/// The batch a pod of ours belongs to (through its Job's controller ownerReference, else the
/// batch label) and its stage (the stage label).
fn batch_and_stage(pod: &Pod, jobs: &Store<Job>) -> Option<(ObjectRef<PredictionBatch>, Stage)> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let labels = pod.metadata.labels.as_ref()?;
    let stage = Stage::ALL.into_iter().find(|s| labels.get(STAGE_LABEL).map(String::as_str) == Some(s.label()))?;
    let job = pod.metadata.owner_references.iter().flatten().find(|o| o.kind == "Job" && o.controller == Some(true));
    let from_job = job.and_then(|o| {
        let job = jobs.get(&ObjectRef::new(&o.name).within(&ns))?;
        let owner = job
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "PredictionBatch" && o.controller == Some(true))?;
        Some(owner.name.clone())
    });
    let name = from_job.or_else(|| labels.get(BATCH_LABEL).cloned())?;
    Some((ObjectRef::new(&name).within(&ns), stage))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "ns", "creationTimestamp": "2026-12-01T07:00:00Z",
                "labels": {"predictions.dev/batch": "b", "predictions.dev/stage": "workers"},
                "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
            },
            "status": status,
        }))
        .unwrap()
    }

    fn waiting(reason: &str) -> serde_json::Value {
        json!({"phase": "Pending", "startTime": "2026-12-01T07:00:05Z", "containerStatuses": [
            {"name": "w", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": reason, "message": "Back-off pulling image \"x\""}}}]})
    }

    #[test]
    fn image_config_and_scheduling_problems_are_stuck_anything_else_is_not() {
        for reason in ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"] {
            let (r, message, since) = stuck_signal(&pod("p", waiting(reason))).expect(reason);
            assert_eq!(r.as_str(), reason);
            assert!(message.contains("Back-off"));
            assert_eq!(since, "2026-12-01T07:00:05Z".parse().unwrap());
        }
        assert_eq!(stuck_signal(&pod("p", waiting("ContainerCreating"))), None);
        assert_eq!(stuck_signal(&pod("p", json!({"phase": "Running"}))), None);
        let unschedulable = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/4 nodes are available", "lastTransitionTime": "2026-12-01T07:00:01Z"}]});
        let (r, message, since) = stuck_signal(&pod("p", unschedulable)).unwrap();
        assert_eq!((r, message.as_str()), (StuckReason::Unschedulable, "0/4 nodes are available"));
        assert_eq!(since, "2026-12-01T07:00:01Z".parse().unwrap());
    }

    /// The pod watch sees Pending pods only ([`POD_WATCH_FIELDS`]); that is sound only while no
    /// pod in another phase can be stuck, whatever its containers say.
    #[test]
    fn only_a_pending_pod_can_be_stuck_so_the_watch_asks_for_pending_pods_only() {
        assert_eq!(POD_WATCH_FIELDS, "status.phase=Pending");
        for phase in ["Running", "Succeeded", "Failed", "Unknown"] {
            let mut status = waiting("ImagePullBackOff");
            status["phase"] = phase.into();
            assert_eq!(stuck_signal(&pod("p", status)), None, "{phase}");
        }
        assert!(stuck_signal(&pod("p", waiting("ImagePullBackOff"))).is_some());
    }

    #[test]
    fn a_pod_that_leaves_pending_arrives_as_a_deletion_and_clears() {
        let (jobs, _) = kube::runtime::reflector::store::<Job>();
        let idx = StuckPods::default();
        let b = ObjectRef::<PredictionBatch>::new("b").within("ns");
        let stuck = pod("p", waiting("ImagePullBackOff"));
        assert_eq!(idx.on_event(&watcher::Event::Apply(stuck.clone()), &jobs), vec![b.clone()]);
        // With the field selector the apiserver sends the pod's move to Running as a deletion.
        let mut running = stuck;
        running.status.as_mut().unwrap().phase = Some("Running".into());
        assert_eq!(idx.on_event(&watcher::Event::Delete(running), &jobs), vec![b.clone()]);
        assert!(idx.of(&b).is_empty());
    }

    #[test]
    fn the_index_changes_only_when_a_pods_stuck_state_does() {
        let (jobs, _) = kube::runtime::reflector::store::<Job>();
        let idx = StuckPods::default();
        let b = ObjectRef::<PredictionBatch>::new("b").within("ns");
        let stuck = pod("p", waiting("ImagePullBackOff"));
        assert_eq!(idx.on_event(&watcher::Event::Apply(stuck.clone()), &jobs), vec![b.clone()]);
        assert_eq!(idx.on_event(&watcher::Event::Apply(stuck.clone()), &jobs), vec![], "same state: no pass");
        let of = idx.of(&b);
        assert_eq!((of.len(), of[0].shard, of[0].stage), (1, Some(3), Stage::Workers));
        let running = pod("p", json!({"phase": "Running"}));
        assert_eq!(idx.on_event(&watcher::Event::Apply(running.clone()), &jobs), vec![b.clone()]);
        assert!(idx.of(&b).is_empty());
        assert_eq!(idx.on_event(&watcher::Event::Apply(running), &jobs), vec![], "an ordinary pod: no pass");
        // A relist drops what went away meanwhile.
        idx.on_event(&watcher::Event::Apply(stuck), &jobs);
        idx.on_event(&watcher::Event::Init, &jobs);
        assert_eq!(idx.on_event(&watcher::Event::InitDone, &jobs), vec![b.clone()]);
        assert!(idx.of(&b).is_empty());
    }
}
