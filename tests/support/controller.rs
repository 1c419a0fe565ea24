//! Runs the controller binary (the one cargo built for this test run: release under
//! `cargo test --release`) as a child process against the test cluster, so tests can kill and
//! restart it like a crashing pod. Included by tests with `#[path = "support/controller.rs"]`.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::support::{cluster, kubectl, kubectl_output, wait_until};

/// Applies the checked-in CRD once per test binary and waits until it is Established.
pub fn ensure_crd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
        kubectl(&["wait", "--for=condition=Established", "crd/predictionbatches.predictions.dev", "--timeout=60s"]);
    });
}

/// One controller process; SIGKILLed when dropped.
pub struct Controller {
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<String>,
    starts: u32,
    name: String,
}

impl Controller {
    /// Starts `prediction-batch-controller run --namespace <ns>` as user pbc-controller.
    pub fn start(name: &str, namespace: &str, extra: &[&str]) -> Self {
        let mut args: Vec<String> =
            ["run", "--namespace", namespace, "--http-addr", "127.0.0.1:0"].iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut c = Controller { child: None, log: PathBuf::new(), args, starts: 0, name: name.to_string() };
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
        use futures::StreamExt;
        use k8s_openapi::api::batch::v1::Job;
        use kube::runtime::{WatchStreamExt, watcher};
        let client = super::support::client().await;
        let api: kube::Api<Job> = kube::Api::namespaced(client, ns);
        let record = std::sync::Arc::new(std::sync::Mutex::new(JobRecord::default()));
        let r = record.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let jobs = match ev {
                    Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => vec![j],
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                        vec![]
                    }
                    _ => vec![],
                };
                let now = std::time::Instant::now();
                let mut rec = r.lock().unwrap();
                for job in jobs {
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
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
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
