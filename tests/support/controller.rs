//! Runs the controller binary (the one cargo built for this test run: release under
//! `cargo test --release`) as a child process against the test cluster, so tests can kill and
//! restart it like a crashing pod. Included by tests with `#[path = "support/controller.rs"]`.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::support::{cluster, kubectl_output, kubectl_stdin, wait_until};

/// One controller process; SIGKILLed when dropped.
pub struct Controller {
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<String>,
    /// Extra environment of the process (e.g. FIRESTORE_EMULATOR_HOST).
    env: Vec<(String, String)>,
    starts: u32,
    name: String,
}

impl Controller {
    /// Starts `prediction-batch-controller run --namespace <ns>` as user pbc-controller.
    pub fn start(name: &str, namespace: &str, extra: &[&str]) -> Self {
        Self::start_with_env(name, namespace, extra, &[])
    }

    /// Like [`Controller::start`], with extra environment variables for the process.
    pub fn start_with_env(name: &str, namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args: Vec<String> =
            ["run", "--namespace", namespace, "--http-addr", "127.0.0.1:0"].iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut c = Controller { child: None, log: PathBuf::new(), args, env, starts: 0, name: name.to_string() };
        c.restart();
        c
    }

    /// (Re)starts the process; each start logs to its own file under the cluster's logs dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "controller {} is still running", self.name);
        self.starts += 1;
        self.log = cluster().logs.join(format!("controller-{}-{}.log", self.name, self.starts));
        let out = File::create(&self.log).expect("controller log file");
        let child = Command::new(env!("CARGO_BIN_EXE_prediction-batch-controller"))
            .args(&self.args)
            .env("KUBECONFIG", &cluster().controller_kubeconfig)
            .env("RUST_LOG", "info,prediction_batch_controller=debug,kube=warn")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the controller binary");
        self.child = Some(child);
    }

    /// SIGKILL, like an OOM kill or a node loss: no cleanup, no lease release.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("controller is running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let pid = child.id();
        wait_until(
            &format!("controller {} (pid {pid}) to exit after SIGTERM", self.name),
            timeout,
            || child.try_wait().ok().flatten(),
            || self.log_tail(),
        )
    }

    /// Sends `signal` ("TERM", "INT", ...) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("controller is running");
        let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit; its exit status, or None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole log of the current start.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- last lines of {} ---\n{tail}", self.log.display())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Holder of the controller's default leader-election Lease in `ns`, if it has one.
pub fn lease_holder(ns: &str) -> Option<String> {
    let args = ["get", "lease", "prediction-batch-controller", "-n", ns, "-o", "jsonpath={.spec.holderIdentity}"];
    let out = kubectl_output(&args);
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !holder.is_empty()).then_some(holder)
}

/// The time of a controller log line (text format: it starts with an RFC 3339 UTC timestamp).
pub fn log_time(line: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    line.split_whitespace().next()?.parse().ok()
}

/// `kubectl get pb <name> -o json` in `ns`, if it exists.
pub fn batch_json(ns: &str, name: &str) -> Option<serde_json::Value> {
    let out = kubectl_output(&["get", "pb", name, "-n", ns, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("batch JSON"))
}

/// Status of condition `type_` of a batch ("True"/"False"/"Unknown"), with its reason.
pub fn condition(batch: &serde_json::Value, type_: &str) -> Option<(String, String)> {
    batch["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
    })
}

/// Runs a watch of our own (independent of the controller) until the returned task is aborted:
/// `on_apply` gets every object seen, `on_init` runs at every completed (re)list. Returns once
/// the first listing is done (or after 30 s).
async fn spawn_watch<K>(
    api: kube::Api<K>,
    mut on_apply: impl FnMut(K) + Send + 'static,
    mut on_init: impl FnMut() + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on_apply(o),
                Ok(watcher::Event::InitDone) => {
                    on_init();
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
    task
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

/// Watches the Jobs of `ns` (a raw watch of our own, independent of the controller) until dropped.
pub struct JobWatch {
    pub record: std::sync::Arc<std::sync::Mutex<JobRecord>>,
    task: tokio::task::JoinHandle<()>,
}

impl JobWatch {
    pub async fn start(ns: &str) -> Self {
        let api: kube::Api<k8s_openapi::api::batch::v1::Job> =
            kube::Api::namespaced(super::support::client().await, ns);
        let record = std::sync::Arc::new(std::sync::Mutex::new(JobRecord::default()));
        let r = record.clone();
        let task = spawn_watch(
            api,
            move |job| {
                let now = std::time::Instant::now();
                let mut rec = r.lock().unwrap();
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
            },
            || {},
        )
        .await;
        JobWatch { record, task }
    }

    pub fn snapshot(&self) -> JobRecord {
        self.record.lock().unwrap().clone()
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        self.task.abort();
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
    last: std::collections::BTreeMap<String, serde_json::Value>,
}

fn phase_rank(p: &str) -> Option<u8> {
    Some(match p {
        "Pending" => 0,
        "Running" => 1,
        "Consolidating" => 2,
        "Exporting" => 3,
        "Succeeded" | "Failed" => 4,
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
        if let Some(prev) = self.last.get(name) {
            let mut bad = |what: String| self.regressions.push(format!("{name}: {what}"));
            let (pp, np) = (prev["phase"].as_str().unwrap_or(""), status["phase"].as_str().unwrap_or(""));
            if let (Some(a), Some(b)) = (phase_rank(pp), phase_rank(np))
                && (b < a || (a == 4 && pp != np))
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
            for stage in ["workers", "consolidation", "export"] {
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

/// Watches the PredictionBatches of `ns` until dropped, recording and checking every status.
pub struct StatusWatch {
    pub record: std::sync::Arc<std::sync::Mutex<StatusRecord>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusWatch {
    pub async fn start(ns: &str) -> Self {
        let resource = kube::api::ApiResource {
            group: "predictions.dev".into(),
            version: "v1alpha1".into(),
            api_version: "predictions.dev/v1alpha1".into(),
            kind: "PredictionBatch".into(),
            plural: "predictionbatches".into(),
        };
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(super::support::client().await, ns, &resource);
        let record = std::sync::Arc::new(std::sync::Mutex::new(StatusRecord::default()));
        let (r, r2) = (record.clone(), record.clone());
        let task = spawn_watch(
            api,
            move |o| {
                let name = o.metadata.name.clone().unwrap_or_default();
                r.lock().unwrap().observe(&name, &o.data["status"]);
            },
            move || r2.lock().unwrap().inits += 1,
        )
        .await;
        StatusWatch { record, task }
    }

    pub fn snapshot(&self) -> StatusRecord {
        self.record.lock().unwrap().clone()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Batch name → stage → Job UIDs, from a [`JobRecord`]-like watch keyed by the batch label.
pub type UidsByBatch = std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>>;

/// Like [`JobWatch`], but keyed by (batch, stage) for many batches in one namespace.
pub struct MultiJobWatch {
    pub uids: std::sync::Arc<std::sync::Mutex<UidsByBatch>>,
    task: tokio::task::JoinHandle<()>,
}

impl MultiJobWatch {
    pub async fn start(ns: &str) -> Self {
        let api: kube::Api<k8s_openapi::api::batch::v1::Job> =
            kube::Api::namespaced(super::support::client().await, ns);
        let uids = std::sync::Arc::new(std::sync::Mutex::new(UidsByBatch::new()));
        let u = uids.clone();
        let task = spawn_watch(
            api,
            move |j| {
                let labels = j.metadata.labels.clone().unwrap_or_default();
                let batch = labels.get("predictions.dev/batch").cloned().unwrap_or_default();
                let stage = labels.get("predictions.dev/stage").cloned().unwrap_or_default();
                u.lock().unwrap().entry((batch, stage)).or_default().insert(j.metadata.uid.unwrap_or_default());
            },
            || {},
        )
        .await;
        MultiJobWatch { uids, task }
    }

    pub fn count(&self, batch: &str, stage: &str) -> usize {
        self.uids.lock().unwrap().get(&(batch.to_string(), stage.to_string())).map_or(0, |s| s.len())
    }

    pub fn max_per_stage(&self) -> usize {
        self.uids.lock().unwrap().values().map(|s| s.len()).max().unwrap_or(0)
    }
}

impl Drop for MultiJobWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A batch like examples/batch.yaml (120 items, 4 per shard = 30 shards, all three stages),
/// with `patch` merged into its spec and `worker_meta` merged into the worker template metadata.
pub fn batch(name: &str, spec_patch: Value, worker_meta: Value) -> Value {
    let mut b = json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionBatch",
        "metadata": { "name": name },
        "spec": {
            "gameDate": "2026-01-02",
            "targetCount": 120,
            "itemsPerShard": 4,
            "parallelism": 10,
            "worker": {
                "backoffLimitPerShard": 0,
                "template": {
                    "metadata": { "labels": { "app": "prediction-worker" } },
                    "spec": { "containers": [{ "name": "worker", "image": "example.com/worker:1" }] }
                }
            },
            "consolidation": { "template": { "spec": { "containers": [{ "name": "c", "image": "example.com/consolidate:1" }] } } },
            "export": { "template": { "spec": { "containers": [{ "name": "e", "image": "example.com/export:1" }] } } }
        }
    });
    merge(&mut b["spec"], &spec_patch);
    merge(&mut b["spec"]["worker"]["template"]["metadata"], &worker_meta);
    b
}

pub fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

pub fn apply(ns: &str, obj: &Value) {
    kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &obj.to_string());
}

pub fn phase(b: &Value) -> &str {
    b["status"]["phase"].as_str().unwrap_or("")
}

/// Waits until the batch satisfies `pred`, printing the batch, its Jobs and the controller log on timeout.
pub fn wait_batch(
    ns: &str,
    name: &str,
    ctl: &Controller,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(
        &format!("batch {ns}/{name}: {what}"),
        timeout,
        || batch_json(ns, name).filter(|b| pred(b)),
        || {
            format!(
                "{}\n{}\n{}",
                kubectl_output(&["get", "pb", name, "-n", ns, "-o", "yaml"])
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                String::from_utf8_lossy(&kubectl_output(&["get", "jobs,pods", "-n", ns, "-o", "wide"]).stdout),
                ctl.log_tail()
            )
        },
    )
}
