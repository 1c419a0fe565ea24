//! Watches of a test's own (independent of the controller) on the Jobs and PredictionBatches of
//! its namespace, recording what they saw until dropped: every Job UID per stage (did a stage run
//! twice?), and every status version (did anything move backwards?).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;

/// A watch of our own (independent of the controller) folding what it sees into a record `T`,
/// until dropped.
pub struct Watch<T> {
    pub record: Arc<Mutex<T>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Default + Clone + Send + 'static> Watch<T> {
    /// Watches `api`: `on_apply` folds every object seen into the record, `on_init` runs at every
    /// completed (re)list. Returns once the first listing is done (or after 30 s).
    async fn spawn<K>(
        api: kube::Api<K>,
        mut on_apply: impl FnMut(&mut T, K) + Send + 'static,
        mut on_init: impl FnMut(&mut T) + Send + 'static,
    ) -> Self
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let record = Arc::new(Mutex::new(T::default()));
        let r = record.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on_apply(&mut r.lock().unwrap(), o),
                    Ok(watcher::Event::InitDone) => {
                        on_init(&mut r.lock().unwrap());
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        Watch { record, task }
    }

    /// What the watch has seen so far.
    pub fn snapshot(&self) -> T {
        self.record.lock().unwrap().clone()
    }
}

impl<T> Drop for Watch<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jobs_api(ns: &str) -> kube::Api<Job> {
    kube::Api::namespaced(super::client().await, ns)
}

/// What a test's own watch saw of the Jobs in its namespace: every UID per stage, and when (by
/// receive time) each was first seen and first seen finished.
#[derive(Default, Debug, Clone)]
pub struct JobRecord {
    pub uids_by_stage: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    /// (stage, first seen) in the order seen.
    pub created: Vec<(String, std::time::Instant)>,
    /// (stage, first seen with SuccessCriteriaMet/Complete or FailureTarget/Failed).
    pub finished: Vec<(String, std::time::Instant)>,
}

impl JobRecord {
    pub fn uids(&self, stage: &str) -> usize {
        self.uids_by_stage.get(stage).map_or(0, |s| s.len())
    }
    /// Exactly one Job (by UID) of each of the three stages was ever seen.
    pub fn assert_each_stage_once(&self) {
        for stage in ["workers", "consolidation", "export"] {
            assert_eq!(self.uids(stage), 1, "{stage} Jobs seen: {:?}", self.uids_by_stage);
        }
    }

    pub fn created_at(&self, stage: &str) -> Option<std::time::Instant> {
        self.created.iter().find(|(s, _)| s == stage).map(|(_, t)| *t)
    }
    pub fn finished_at(&self, stage: &str) -> Option<std::time::Instant> {
        self.finished.iter().find(|(s, _)| s == stage).map(|(_, t)| *t)
    }
}

/// Watches the Jobs of `ns` until dropped, recording every UID per stage.
pub type JobWatch = Watch<JobRecord>;

impl Watch<JobRecord> {
    pub async fn start(ns: &str) -> Self {
        let observe = |rec: &mut JobRecord, job: Job| {
            let now = std::time::Instant::now();
            let stage = job
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("predictions.dev/stage").cloned())
                .unwrap_or_else(|| "unlabelled".into());
            let uid = job.metadata.uid.clone().unwrap_or_default();
            if rec.uids_by_stage.entry(stage.clone()).or_default().insert(uid) {
                rec.created.push((stage.clone(), now));
            }
            let done = job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.status == "True"
                        && ["SuccessCriteriaMet", "Complete", "FailureTarget", "Failed"].contains(&c.type_.as_str())
                })
            });
            if done && rec.finished_at(&stage).is_none() {
                rec.finished.push((stage, now));
            }
        };
        Watch::spawn(jobs_api(ns).await, observe, |_| {}).await
    }
}

/// Every status version of every PredictionBatch in a namespace, as a watch of our own saw them,
/// checked on arrival for anything that moved backwards.
#[derive(Default, Debug, Clone)]
pub struct StatusRecord {
    /// Status versions seen per batch.
    pub versions: std::collections::BTreeMap<String, usize>,
    /// Human-readable descriptions of regressions.
    pub regressions: Vec<String>,
    /// How many times the watch (re)listed: more than one means it expired and recovered.
    pub inits: usize,
    /// Per batch, the most succeeded shards and items any status version showed.
    pub max_succeeded: std::collections::BTreeMap<String, (u64, u64)>,
    last: std::collections::BTreeMap<String, serde_json::Value>,
}

fn phase_rank(p: &str) -> Option<u8> {
    Some(match p {
        "Pending" => 0,
        "Loading" => 1,
        "Running" => 2,
        "Consolidating" => 3,
        "Exporting" => 4,
        "Succeeded" | "Failed" => 5,
        _ => return None,
    })
}

fn stage_rank(s: &str) -> u8 {
    match s {
        "Pending" => 0,
        "Running" => 1,
        "Stopping" => 2,
        "Succeeded" | "Failed" => 3,
        _ => 0,
    }
}

impl StatusRecord {
    fn observe(&mut self, name: &str, status: &serde_json::Value) {
        if status.is_null() {
            return;
        }
        *self.versions.entry(name.to_string()).or_default() += 1;
        let max = self.max_succeeded.entry(name.to_string()).or_default();
        max.0 = max.0.max(status["shards"]["succeeded"].as_u64().unwrap_or(0));
        max.1 = max.1.max(status["items"]["succeeded"].as_u64().unwrap_or(0));
        // A rerun starts a new attempt: its phases and stages start over.
        let attempt = |s: &serde_json::Value| {
            s["attempts"].as_array().and_then(|a| a.last()).and_then(|a| a["attempt"].as_u64()).unwrap_or(1)
        };
        if let Some(prev) = self.last.get(name).filter(|prev| attempt(prev) == attempt(status)) {
            let mut bad = |what: String| self.regressions.push(format!("{name}: {what}"));
            let (pp, np) = (prev["phase"].as_str().unwrap_or(""), status["phase"].as_str().unwrap_or(""));
            if let (Some(a), Some(b)) = (phase_rank(pp), phase_rank(np))
                && (b < a || (a == 5 && pp != np))
            {
                bad(format!("phase {pp} -> {np}"));
            }
            for path in [["shards", "succeeded"], ["items", "succeeded"]] {
                let (a, b) = (prev[path[0]][path[1]].as_u64(), status[path[0]][path[1]].as_u64());
                if let (Some(a), Some(b)) = (a, b)
                    && b < a
                {
                    bad(format!("{}.{} {a} -> {b}", path[0], path[1]));
                }
            }
            for stage in ["loader", "workers", "consolidation", "export"] {
                let (a, b) = (&prev[stage], &status[stage]);
                if a.is_object() && !b.is_object() {
                    bad(format!("{stage} status disappeared"));
                    continue;
                }
                let (ra, rb) =
                    (stage_rank(a["state"].as_str().unwrap_or("")), stage_rank(b["state"].as_str().unwrap_or("")));
                if a.is_object() && rb < ra {
                    bad(format!("{stage}.state {} -> {}", a["state"], b["state"]));
                }
                if a["jobUid"].is_string() && a["jobUid"] != b["jobUid"] {
                    bad(format!("{stage}.jobUid {} -> {}", a["jobUid"], b["jobUid"]));
                }
            }
        }
        self.last.insert(name.to_string(), status.clone());
    }

    pub fn last(&self, name: &str) -> Option<&serde_json::Value> {
        self.last.get(name)
    }
}

/// The PredictionBatches of `ns`, untyped (a test's watch must read what the typed client cannot).
async fn batches_api(ns: &str) -> kube::Api<kube::api::DynamicObject> {
    let resource = kube::api::ApiResource {
        group: "predictions.dev".into(),
        version: "v1alpha1".into(),
        api_version: "predictions.dev/v1alpha1".into(),
        kind: "PredictionBatch".into(),
        plural: "predictionbatches".into(),
    };
    kube::Api::namespaced_with(super::client().await, ns, &resource)
}

/// Watches the PredictionBatches of `ns` until dropped, recording and checking every status.
pub type StatusWatch = Watch<StatusRecord>;

impl Watch<StatusRecord> {
    pub async fn start(ns: &str) -> Self {
        let api = batches_api(ns).await;
        let observe = |rec: &mut StatusRecord, o: kube::api::DynamicObject| {
            let name = o.metadata.name.clone().unwrap_or_default();
            rec.observe(&name, &o.data["status"]);
        };
        Watch::spawn(api, observe, |rec| rec.inits += 1).await
    }
}

/// Batch name → stage → Job UIDs, from a [`JobRecord`]-like watch keyed by the batch label.
pub type UidsByBatch = std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>>;

/// Like [`JobWatch`], but keyed by (batch, stage) for many batches in one namespace.
pub type MultiJobWatch = Watch<UidsByBatch>;

impl Watch<UidsByBatch> {
    pub async fn start(ns: &str) -> Self {
        let observe = |uids: &mut UidsByBatch, j: Job| {
            let labels = j.metadata.labels.clone().unwrap_or_default();
            let batch = labels.get("predictions.dev/batch").cloned().unwrap_or_default();
            let stage = labels.get("predictions.dev/stage").cloned().unwrap_or_default();
            uids.entry((batch, stage)).or_default().insert(j.metadata.uid.unwrap_or_default());
        };
        Watch::spawn(jobs_api(ns).await, observe, |_| {}).await
    }

    pub fn count(&self, batch: &str, stage: &str) -> usize {
        self.record.lock().unwrap().get(&(batch.to_string(), stage.to_string())).map_or(0, |s| s.len())
    }

    pub fn max_per_stage(&self) -> usize {
        self.record.lock().unwrap().values().map(|s| s.len()).max().unwrap_or(0)
    }
}

/// PredictionBatch name → every UID seen under it (a batch created twice, even if the first was
/// deleted before the test looked, has two), with the labels of the first copy seen.
#[derive(Clone, Debug, Default)]
pub struct BatchUidRecord {
    pub uids: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    pub labels: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// Watches the PredictionBatches of `ns` until dropped, recording every UID per name.
pub type BatchUidWatch = Watch<BatchUidRecord>;

impl Watch<BatchUidRecord> {
    pub async fn start(ns: &str) -> Self {
        let api = batches_api(ns).await;
        let observe = |rec: &mut BatchUidRecord, o: kube::api::DynamicObject| {
            let name = o.metadata.name.clone().unwrap_or_default();
            rec.labels.entry(name.clone()).or_insert_with(|| o.metadata.labels.clone().unwrap_or_default());
            rec.uids.entry(name).or_default().insert(o.metadata.uid.unwrap_or_default());
        };
        Watch::spawn(api, observe, |_| {}).await
    }
}

impl BatchUidRecord {
    /// Names of the batches labelled `predictions.dev/schedule=<schedule>`, in order.
    pub fn of_schedule(&self, schedule: &str) -> Vec<String> {
        self.labels
            .iter()
            .filter(|(_, l)| l.get("predictions.dev/schedule").map(String::as_str) == Some(schedule))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Names seen with more than one UID.
    pub fn recreated(&self) -> Vec<String> {
        self.uids.iter().filter(|(_, u)| u.len() > 1).map(|(n, _)| n.clone()).collect()
    }
}
