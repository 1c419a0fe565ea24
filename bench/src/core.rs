//! The measuring core of the benchmark, shared by the `pbc-bench` binary and the CI guard
//! `bench/tests/smoke.rs`.
//!
//! One *mode run* = one workload of B batches × S shards in a fresh namespace, driven either by
//! - `Baseline`: the bench creates one Indexed worker Job per batch and a minimal watch-based
//!   driver ([`baseline_driver`]) creates the consolidation Job when the worker Job finishes and the
//!   export Job when consolidation finishes (no status, no bookkeeping), or
//! - `Ours`: the bench creates PredictionBatches and the release controller binary runs them.
//!
//! The Jobs are built by the controller's own builder (`reconcile::jobs::build`) in both modes, so
//! pods, parallelism, images and retry policy are identical; baseline Jobs differ only in their
//! `app.kubernetes.io/managed-by` label and in having no owner.
//!
//! All latencies come from the receive times of ONE watch on the namespace's Jobs in the bench
//! process (`Instant`, sub-millisecond), never from the second-granular timestamps in objects.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use prediction_batch_controller::api::Stage;
use prediction_batch_controller::api::{PredictionBatch, PredictionBatchStatus};
use prediction_batch_controller::labels::{BATCH_LABEL, MANAGED_BY_LABEL, STAGE_LABEL};
use prediction_batch_controller::reconcile::jobs;
use serde::Serialize;
use serde_json::{Value, json};

/// `app.kubernetes.io/managed-by` of baseline Jobs (so the controller never sees them).
pub const BASELINE_MANAGER: &str = "pbc-bench-baseline";
/// The controller's client identity (`$CLUSTER_DIR/controller.kubeconfig`); the baseline driver
/// uses it too, so the audit log counts both the same way.
pub const CONTROLLER_USER: &str = "pbc-controller";
/// Creates in flight while the bench submits a workload (same in both modes).
const SUBMIT_CONCURRENCY: usize = 16;

// ------------------------------------------------------------------------------------ workload

/// B batches × S shards, each shard one pod of one item; the worker Job runs `parallelism` pods at once.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Workload {
    pub batches: usize,
    pub shards: u32,
    pub parallelism: u32,
}

impl Workload {
    pub fn new(batches: usize, shards: u32, parallelism: u32) -> Self {
        Workload { batches, shards, parallelism }
    }

    /// Pods the workload runs when nothing fails: S workers + 1 consolidation + 1 export per batch.
    pub fn pods(&self) -> usize {
        self.batches * (self.shards as usize + 2)
    }

    pub fn batch_name(i: usize) -> String {
        format!("bench-{i:05}")
    }

    pub fn names(&self) -> Vec<String> {
        (0..self.batches).map(Self::batch_name).collect()
    }

    /// The PredictionBatch of `name` (like examples/batch.yaml, one item per shard).
    pub fn batch_manifest(&self, name: &str, suspend: bool) -> Value {
        json!({
            "apiVersion": "predictions.dev/v1alpha1",
            "kind": "PredictionBatch",
            "metadata": { "name": name },
            "spec": {
                "gameDate": "2026-01-02",
                "targetCount": self.shards,
                "itemsPerShard": 1,
                "parallelism": self.parallelism,
                "suspend": suspend,
                "worker": {
                    "backoffLimitPerShard": 3,
                    "template": {
                        "metadata": { "labels": { "app": "prediction-worker" } },
                        "spec": { "containers": [{
                            "name": "worker",
                            "image": "registry.example.com/nba/prediction-worker:1.4.2",
                            "args": ["predict", "--game-date=$(GAME_DATE)", "--shard=$(SHARD_INDEX)"]
                        }] }
                    }
                },
                "completion": { "minSucceededPercent": 100 },
                "consolidation": { "template": { "spec": { "containers": [{
                    "name": "consolidate", "image": "registry.example.com/nba/prediction-consolidator:1.4.2"
                }] } } },
                "export": { "template": { "spec": { "containers": [{
                    "name": "export", "image": "registry.example.com/nba/phase6-exporter:1.4.2"
                }] } } }
            }
        })
    }

    /// The Job the controller would create for `stage` of batch `name`, built by the controller's
    /// own builder, without owner and labelled as the baseline's.
    pub fn baseline_job(&self, namespace: &str, name: &str, stage: Stage) -> Result<Job> {
        let mut batch: PredictionBatch = serde_json::from_value(self.batch_manifest(name, false))?;
        batch.metadata.namespace = Some(namespace.to_string());
        batch.metadata.uid = Some(format!("00000000-0000-0000-0000-{:012}", name.len()));
        if stage != Stage::Workers {
            // What the controller passes on to consolidation and export: every shard succeeded.
            let all = if self.shards == 1 { "0".to_string() } else { format!("0-{}", self.shards - 1) };
            batch.status = Some(PredictionBatchStatus { succeeded_shards: Some(all), ..Default::default() });
        }
        let mut job = jobs::build(&batch, stage).ok_or_else(|| anyhow!("no {stage:?} Job for {name}"))?;
        job.metadata.owner_references = None;
        // The builder adds the controller's outcome finalizer; with no controller to release it,
        // deleting the baseline's namespace would hang.
        job.metadata.finalizers = None;
        let relabel = |labels: &mut Option<BTreeMap<String, String>>| {
            labels.get_or_insert_with(Default::default).insert(MANAGED_BY_LABEL.into(), BASELINE_MANAGER.into());
        };
        relabel(&mut job.metadata.labels);
        if let Some(spec) = job.spec.as_mut() {
            relabel(&mut spec.template.metadata.get_or_insert_with(Default::default).labels);
        }
        Ok(job)
    }
}

// --------------------------------------------------------------------------------- job states

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Succeeded,
    Failed,
}

/// How a Job ended by its conditions; `SuccessCriteriaMet`/`FailureTarget` (1.35) come before
/// `Complete`/`Failed` and are the earliest moment anyone can react.
pub fn job_finish(job: &Job) -> Option<Finish> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    let is = |t: &str| conds.iter().any(|c| c.type_ == t && c.status == "True");
    if is("SuccessCriteriaMet") || is("Complete") {
        Some(Finish::Succeeded)
    } else if is("FailureTarget") || is("Failed") {
        Some(Finish::Failed)
    } else {
        None
    }
}

/// Index of a stage the bench times (its batches have no loader).
fn stage_index(stage: Stage) -> Option<usize> {
    match stage {
        Stage::Loader => None,
        Stage::Workers => Some(0),
        Stage::Consolidation => Some(1),
        Stage::Export => Some(2),
    }
}

// --------------------------------------------------------------------------------- the record

/// What the bench's watch saw of one batch, by receive time.
#[derive(Clone, Debug, Default)]
pub struct BatchRecord {
    /// When the create call for the batch (ours) or its worker Job (baseline) returned.
    pub submitted: Option<Instant>,
    /// First sight of each stage's Job.
    pub seen: [Option<Instant>; 3],
    /// First sight of each stage's Job finished.
    pub done: [Option<Instant>; 3],
    pub failed: [bool; 3],
    /// Ours: last phase seen, and when a terminal phase (Succeeded/Failed) was first seen.
    pub phase: Option<String>,
    pub terminal: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Record {
    pub batches: HashMap<String, BatchRecord>,
    pub job_events: u64,
    pub batch_events: u64,
}

impl Record {
    fn note_job(&mut self, job: &Job, now: Instant) {
        self.job_events += 1;
        let labels = job.labels();
        let (Some(batch), Some(stage)) =
            (labels.get(BATCH_LABEL), labels.get(STAGE_LABEL).and_then(|s| Stage::from_label(s)))
        else {
            return;
        };
        let Some(i) = stage_index(stage) else { return };
        let r = self.batches.entry(batch.clone()).or_default();
        r.seen[i].get_or_insert(now);
        if let Some(f) = job_finish(job)
            && r.done[i].is_none()
        {
            r.done[i] = Some(now);
            r.failed[i] = f == Finish::Failed;
        }
    }

    fn note_batch(&mut self, batch: &PredictionBatch, now: Instant) {
        self.batch_events += 1;
        let r = self.batches.entry(batch.name_any()).or_default();
        if let Some(phase) = batch.status.as_ref().and_then(|s| s.phase) {
            r.phase = Some(phase.as_str().to_string());
            if phase.is_terminal() {
                r.terminal.get_or_insert(now);
            }
        }
    }

    pub fn count(&self, f: impl Fn(&BatchRecord) -> bool) -> usize {
        self.batches.values().filter(|r| f(r)).count()
    }

    pub fn progress(&self) -> String {
        let c = |i: usize| (self.count(|r| r.seen[i].is_some()), self.count(|r| r.done[i].is_some()));
        let (w, wd) = c(0);
        let (cs, cd) = c(1);
        let (e, ed) = c(2);
        let t = self.count(|r| r.terminal.is_some());
        format!("workers {wd}/{w} done, consolidation {cd}/{cs}, export {ed}/{e}, batches terminal {t}")
    }
}

/// The bench's own watches (admin client) on one namespace, feeding a [`Record`].
pub struct Watches {
    pub record: Arc<Mutex<Record>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watches {
    pub async fn start(client: &Client, ns: &str, batches: bool) -> Result<Self> {
        let record = Arc::new(Mutex::new(Record::default()));
        let mut tasks = Vec::new();
        let mut ready = Vec::new();

        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        let r = record.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut s = watcher(jobs, watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = s.next().await {
                let now = Instant::now();
                match ev {
                    Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => r.lock().unwrap().note_job(&j, now),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        }));
        if batches {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            let api: Api<PredictionBatch> = Api::namespaced(client.clone(), ns);
            let r = record.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = Some(tx);
                let mut s = watcher(api, watcher::Config::default()).default_backoff().boxed();
                while let Some(ev) = s.next().await {
                    let now = Instant::now();
                    match ev {
                        Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b)) => {
                            r.lock().unwrap().note_batch(&b, now)
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        _ => {}
                    }
                }
            }));
        }
        for rx in ready {
            tokio::time::timeout(Duration::from_secs(60), rx).await.context("bench watch did not sync")??;
        }
        Ok(Watches { record, tasks })
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------- statistics

/// Summary of a sample, nearest-rank percentiles.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn stats(values: &[f64]) -> Stats {
    if values.is_empty() {
        return Stats::default();
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        n: v.len(),
        min: v[0],
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

/// The steps of each stage transition the controller logged (`stage Job created stage=…
/// queued_ms=… planned_ms=… status_ms=… create_ms=…`), as stats per `<stage> <step>`, plus
/// `<stage> total` (their sum; a pass no watch change started has no `queued`, counted as 0).
pub fn transition_steps(log: &str) -> BTreeMap<String, Stats> {
    const STEPS: [&str; 4] = ["queued", "planned", "status", "create"];
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("stage Job created")) {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_string())
        };
        let Some(stage) = field("stage") else { continue };
        let mut total = 0.0;
        for step in STEPS {
            let Some(v) = field(&format!("{step}_ms")).and_then(|v| v.parse::<f64>().ok()) else { continue };
            if v >= 0.0 {
                samples.entry(format!("{stage} {step}")).or_default().push(v);
                total += v;
            }
        }
        samples.entry(format!("{stage} total")).or_default().push(total);
    }
    samples.into_iter().map(|(k, v)| (k, stats(&v))).collect()
}

/// Signed milliseconds from `from` to `to`.
pub fn ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1e3
    } else {
        -(from.duration_since(to).as_secs_f64() * 1e3)
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ------------------------------------------------------------------------------- OS and audit

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `VmHWM`/`VmRSS` line of /proc/<pid>/status, in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of each control-plane component (`$CLUSTER_DIR/pids/<component>`).
pub fn control_plane_cpu(cluster_dir: Option<&Path>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(dir) = cluster_dir else { return out };
    let Ok(entries) = std::fs::read_dir(dir.join("pids")) else { return out };
    for e in entries.flatten() {
        let pid = std::fs::read_to_string(e.path()).ok().and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(cpu) = pid.and_then(cpu_seconds) {
            out.insert(e.file_name().to_string_lossy().into_owned(), cpu);
        }
    }
    out
}

fn cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after.iter().filter_map(|(k, a)| before.get(k).map(|b| (k.clone(), ((a - b) * 100.0).round() / 100.0))).collect()
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// API requests of one user counted from an audit log (JSON lines, Metadata level).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiCount {
    pub total: u64,
    pub writes: u64,
    pub by_verb: BTreeMap<String, u64>,
    /// "verb resource[/subresource]".
    pub by_request: BTreeMap<String, u64>,
}

pub fn is_write(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete" | "deletecollection")
}

/// The start of an audit-log window: which file was `audit.log` then, and how long it was. The
/// apiserver rotates the log (at 100 MB: `--audit-log-maxsize=0` means lumberjack's default) by
/// renaming it to `audit-<time>.log`, which keeps the inode.
#[derive(Clone, Debug)]
pub struct AuditMark {
    inode: u64,
    offset: u64,
    at: std::time::SystemTime,
}

pub fn audit_offset(path: Option<&Path>) -> AuditMark {
    use std::os::unix::fs::MetadataExt;
    let meta = path.and_then(|p| std::fs::metadata(p).ok());
    AuditMark {
        inode: meta.as_ref().map_or(0, |m| m.ino()),
        offset: meta.as_ref().map_or(0, |m| m.len()),
        // A little slack: a file rotated in the same instant must not be missed.
        at: std::time::SystemTime::now() - Duration::from_secs(1),
    }
}

/// Calls `f` with every complete line logged since `mark`: the rest of the file that was
/// audit.log at the mark (wherever rotation renamed it), then every file begun after it.
fn audit_lines(path: &Path, mark: &AuditMark, mut f: impl FnMut(&str)) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("audit");
    let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(stem) && name.ends_with(".log")) {
            continue;
        }
        let meta = entry.metadata()?;
        let modified = meta.modified()?;
        let from = if meta.ino() == mark.inode {
            mark.offset
        } else if modified >= mark.at {
            0
        } else {
            continue;
        };
        files.push((modified, entry.path(), from));
    }
    files.sort();
    for (_, file, from) in files {
        let mut fh = File::open(&file).with_context(|| format!("open {}", file.display()))?;
        fh.seek(SeekFrom::Start(from))?;
        let mut reader = BufReader::new(fh);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || !line.ends_with('\n') {
                break;
            }
            f(&line);
        }
    }
    Ok(())
}

/// Requests of `user` logged since `mark`. Each request counts once: long-running ones
/// (watches) at `ResponseStarted`, the others at `ResponseComplete`.
pub fn audit_count(path: &Path, mark: &AuditMark, user: &str) -> Result<ApiCount> {
    let mut count = ApiCount::default();
    let needle = format!("\"username\":\"{user}\"");
    audit_lines(path, mark, |line| {
        if line.contains(&needle)
            && let Ok(e) = serde_json::from_str::<Value>(line)
        {
            count_entry(&mut count, &e, user);
        }
    })?;
    Ok(count)
}

fn count_entry(count: &mut ApiCount, e: &Value, user: &str) {
    if e["user"]["username"] != user {
        return;
    }
    let verb = e["verb"].as_str().unwrap_or("?");
    let counted = match e["stage"].as_str() {
        Some("ResponseStarted") => true,
        Some("ResponseComplete") => verb != "watch",
        Some("Panic") => true,
        _ => false,
    };
    if !counted {
        return;
    }
    let obj = &e["objectRef"];
    let resource = match (obj["resource"].as_str(), obj["subresource"].as_str()) {
        (Some(r), Some(s)) => format!("{r}/{s}"),
        (Some(r), None) => r.to_string(),
        _ => e["requestURI"].as_str().unwrap_or("?").split('?').next().unwrap_or("?").to_string(),
    };
    // A dry run persists nothing, but it is a request the apiserver admits like a write: counted
    // as one, under its own name so the breakdown shows it.
    let dry = e["requestURI"].as_str().is_some_and(|u| u.contains("dryRun="));
    let resource = if dry { format!("{resource} (dry run)") } else { resource };
    count.total += 1;
    if is_write(verb) {
        count.writes += 1;
    }
    *count.by_verb.entry(verb.to_string()).or_default() += 1;
    *count.by_request.entry(format!("{verb} {resource}")).or_default() += 1;
}

// ---------------------------------------------------------------------------------- processes

/// A child process we started (controller or baseline driver); SIGKILLed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// The controller's /metrics address.
    pub http: Option<SocketAddr>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn cpu(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }
    pub fn hwm_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM")
    }
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Scrapes /metrics and sums the samples of `name` (all label sets).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.http?, "/metrics").ok()?.1;
        Some(metric_sum(&body, name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.1 GET (the controller's metrics server), returning (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Where the bench finds the cluster and the binaries.
pub struct Env {
    /// Admin client (the bench's own watches and submissions).
    pub admin: Client,
    /// Kubeconfig of user pbc-controller, for the controller and the baseline driver.
    pub controller_kubeconfig: PathBuf,
    pub controller_bin: PathBuf,
    /// Directory for the controller / driver logs.
    pub logs: PathBuf,
    pub audit_log: Option<PathBuf>,
    /// `$CLUSTER_DIR`: its pids/ name the control-plane processes, whose CPU each run reports.
    pub cluster_dir: Option<PathBuf>,
    pub driver: DriverKind,
    /// Scope controller and driver to the run's namespace (`--namespace`); otherwise they watch
    /// the whole cluster, as deployed.
    pub scope_namespace: bool,
}

impl Env {
    /// The cluster tests/cluster/up made in `dir` (kubeconfig, controller.kubeconfig, logs/).
    pub async fn for_cluster(
        dir: &Path,
        controller_bin: PathBuf,
        driver: DriverKind,
        scope_namespace: bool,
    ) -> Result<Env> {
        if !controller_bin.exists() {
            bail!("no controller binary at {} (cargo build --release)", controller_bin.display());
        }
        Ok(Env {
            admin: client_from(&dir.join("kubeconfig")).await?,
            controller_kubeconfig: dir.join("controller.kubeconfig"),
            controller_bin,
            logs: dir.join("logs"),
            audit_log: Some(dir.join("logs/audit.log")).filter(|p| p.exists()),
            cluster_dir: Some(dir.to_path_buf()),
            driver,
            scope_namespace,
        })
    }
}

/// How the baseline driver runs.
#[derive(Clone, Debug)]
pub enum DriverKind {
    /// A task in the bench process (the CI test; no CPU/RSS figures for it).
    InProcess,
    /// `<program> baseline-driver ...` (the bench binary itself), measured like the controller.
    Subprocess(PathBuf),
}

/// Starts `prediction-batch-controller run --http-addr 127.0.0.1:0` as user pbc-controller and
/// waits until /readyz answers 200 (caches synced).
pub async fn start_controller(env: &Env, ns: Option<&str>, tag: &str) -> Result<Proc> {
    start_controller_with(env, ns, tag, &[]).await
}

/// [`start_controller`] with extra environment variables (`PBC_*` settings) for the process.
pub async fn start_controller_with(env: &Env, ns: Option<&str>, tag: &str, vars: &[(&str, &str)]) -> Result<Proc> {
    let log = env.logs.join(format!("bench-controller-{tag}.log"));
    let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let audit_from = audit_offset(env.audit_log.as_deref());
    let mut cmd = Command::new(&env.controller_bin);
    cmd.args(["run", "--http-addr", "127.0.0.1:0"]);
    if let Some(ns) = ns {
        cmd.args(["--namespace", ns]);
    }
    cmd.envs(vars.iter().copied());
    let child = cmd
        .env("KUBECONFIG", &env.controller_kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {}", env.controller_bin.display()))?;
    let mut proc = Proc { child, log, http: None };
    let start = Instant::now();
    while proc.http.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("controller did not log its HTTP address:\n{}", proc.log_tail(30));
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!("controller exited ({status}):\n{}", proc.log_tail(30));
        }
        let text = std::fs::read_to_string(&proc.log).unwrap_or_default();
        proc.http = text
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.trim_matches('"').parse().ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ready: /readyz says so, or (see `watches_started`) both of its watches are open.
    let addr = proc.http.unwrap();
    let up = Instant::now();
    loop {
        if matches!(http_get(addr, "/readyz"), Ok((200, _))) {
            break;
        }
        match env.audit_log.as_deref() {
            Some(audit) if watches_started(audit, &audit_from) => break,
            None if up.elapsed() > Duration::from_secs(3) => break,
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("controller not ready after 120 s:\n{}", proc.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(proc)
}

/// True once the controller's user has opened a watch on PredictionBatches and one on Jobs since
/// byte `from` of the audit log: a watch starts after its initial list, so the caches are synced.
/// (A fallback for /readyz, which stays 503 when two tasks wait on the same kube-runtime store:
/// its one-shot readiness signal wakes only the last waiter.)
fn watches_started(audit: &Path, from: &AuditMark) -> bool {
    let (mut batches, mut jobs) = (false, false);
    let _ = audit_lines(audit, from, |line| {
        if line.contains(CONTROLLER_USER)
            && line.contains("\"verb\":\"watch\"")
            && line.contains("\"stage\":\"ResponseStarted\"")
        {
            batches |= line.contains("\"resource\":\"predictionbatches\"");
            jobs |= line.contains("\"resource\":\"jobs\"");
        }
    });
    batches && jobs
}

pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

// ----------------------------------------------------------------------------- baseline driver

/// The baseline: a minimal watch-based driver. On a worker Job that finished
/// (SuccessCriteriaMet/Complete) it creates the consolidation Job; on a finished consolidation Job,
/// the export Job. No status, no cache beyond the watch, no retries beyond the watcher's backoff.
/// Signals `ready` once its watch has listed.
pub async fn baseline_driver(
    client: Client,
    namespace: Option<String>,
    workload: Workload,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let api: Api<Job> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let selector = format!("{MANAGED_BY_LABEL}={BASELINE_MANAGER}");
    let mut stream = watcher(api, watcher::Config::default().labels(&selector)).default_backoff().boxed();
    let mut ready = Some(ready);
    // Only to avoid creating the same next Job twice from repeated events.
    let mut started = std::collections::HashSet::new();
    while let Some(ev) = stream.next().await {
        let job = match ev {
            Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => j,
            Ok(watcher::Event::InitDone) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            _ => continue,
        };
        if job_finish(&job) != Some(Finish::Succeeded) {
            continue;
        }
        let labels = job.labels();
        let next = match labels.get(STAGE_LABEL).and_then(|s| Stage::from_label(s)) {
            Some(Stage::Workers) => Stage::Consolidation,
            Some(Stage::Consolidation) => Stage::Export,
            _ => continue,
        };
        let (Some(batch), Some(ns)) = (labels.get(BATCH_LABEL).cloned(), job.namespace()) else { continue };
        if !started.insert((ns.clone(), batch.clone(), next)) {
            continue;
        }
        let next_job = workload.baseline_job(&ns, &batch, next)?;
        let api: Api<Job> = Api::namespaced(client.clone(), &ns);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &next_job).await {
                eprintln!("baseline driver: create {:?} Job of {batch}: {e}", next);
            }
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- mode runs

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Baseline,
    Ours,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Ours => "ours",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModeOptions {
    /// Give up (and keep the namespace for inspection) after this long.
    pub timeout: Duration,
    /// Ours only: after the run, measure the idle controller for this long, then restart it over
    /// the finished batches and measure again.
    pub idle: Option<Duration>,
    /// Delete the namespace afterwards and wait until it is gone (so the next run starts on a quiet cluster).
    pub cleanup: bool,
    /// Free text saved with the result (preset, pair).
    pub tag: String,
}

/// Idle cost over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub api: Option<ApiCount>,
    pub reconciles: f64,
    pub requests_per_min: Option<f64>,
    pub writes_per_min: Option<f64>,
    pub reconciles_per_min: f64,
}

/// A controller restarted over the finished batches: what its start cost, then its idle cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restart {
    pub ready_s: f64,
    pub startup_api: Option<ApiCount>,
    pub startup_reconciles: f64,
    pub peak_rss_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    pub idle: Idle,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModeResult {
    pub tag: String,
    pub mode: Mode,
    pub namespace: String,
    pub workload: Workload,
    pub pods: usize,
    /// Submitting all B creates.
    pub submit_s: f64,
    /// First create call → the last export Job seen finished (the same definition in both modes).
    pub wall_s: f64,
    /// Ours: first create call → the last batch seen in a terminal phase.
    pub terminal_s: Option<f64>,
    /// Worker Job finished → consolidation Job seen; consolidation finished → export seen (ms).
    pub reaction_consolidation_ms: Stats,
    pub reaction_export_ms: Stats,
    /// Create call returned → worker Job seen (ours: the controller's first reaction).
    pub start_ms: Stats,
    /// Ours: where each stage transition's time went, from the controller's `stage Job created`
    /// log lines, keyed `<stage> <step>` (queued, planned, status, create, total), in ms.
    pub transition_ms: BTreeMap<String, Stats>,
    /// Batches whose worker or consolidation Job finished but whose next Job never appeared.
    pub unreacted: usize,
    pub failed_jobs: usize,
    /// Of the controller (ours) or driver subprocess (baseline), from /proc: during the run, and in total.
    pub cpu_s: Option<f64>,
    pub cpu_total_s: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    pub reconciles: Option<f64>,
    pub status_writes: Option<f64>,
    pub cpu_per_reconcile_ms: Option<f64>,
    pub api: Option<ApiCount>,
    pub writes_per_batch: Option<f64>,
    pub idle: Option<Idle>,
    pub restart: Option<Restart>,
    /// CPU seconds each control-plane component spent during the run (first create → done).
    pub control_plane_cpu_s: BTreeMap<String, f64>,
    pub load_before: String,
    pub load_after: String,
}

enum Actor {
    Proc(Proc),
    Task(tokio::task::JoinHandle<()>),
}

impl Actor {
    fn proc(&self) -> Option<&Proc> {
        match self {
            Actor::Proc(p) => Some(p),
            Actor::Task(_) => None,
        }
    }
    fn stop(self) {
        match self {
            Actor::Proc(mut p) => p.stop(Duration::from_secs(25)),
            Actor::Task(t) => t.abort(),
        }
    }
}

pub fn unique_namespace(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!("{prefix}-{:x}", nanos & 0xff_ffff)
}

pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "bench.predictions.dev/run": "true" } }
    }))?;
    api.create(&PostParams::default(), &ns).await.with_context(|| format!("create namespace {name}"))?;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let start = Instant::now();
    while sa.get_opt("default").await?.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no default ServiceAccount in {name} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Deletes a namespace and waits (up to `timeout`) until it is gone; returns how long that took.
pub async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Result<Duration> {
    let api: Api<Namespace> = Api::all(client.clone());
    let start = Instant::now();
    let _ = api.delete(name, &DeleteParams::background()).await;
    while api.get_opt(name).await?.is_some() {
        if start.elapsed() > timeout {
            bail!("namespace {name} still there after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(start.elapsed())
}

async fn start_actor(env: &Env, mode: Mode, w: Workload, ns: &str, tag: &str) -> Result<Actor> {
    let scope = env.scope_namespace.then_some(ns);
    match (mode, &env.driver) {
        (Mode::Ours, _) => Ok(Actor::Proc(start_controller(env, scope, tag).await?)),
        (Mode::Baseline, DriverKind::InProcess) => {
            let client = client_from(&env.controller_kubeconfig).await?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let scope = scope.map(str::to_string);
            let task = tokio::spawn(async move {
                if let Err(e) = baseline_driver(client, scope, w, tx).await {
                    eprintln!("baseline driver failed: {e:#}");
                }
            });
            tokio::time::timeout(Duration::from_secs(60), rx).await.context("baseline driver did not sync")??;
            Ok(Actor::Task(task))
        }
        (Mode::Baseline, DriverKind::Subprocess(program)) => {
            let log = env.logs.join(format!("bench-driver-{tag}.log"));
            let mut cmd = Command::new(program);
            cmd.arg("baseline-driver").arg("--kubeconfig").arg(&env.controller_kubeconfig).args([
                "--shards",
                &w.shards.to_string(),
                "--parallelism",
                &w.parallelism.to_string(),
            ]);
            if let Some(ns) = scope {
                cmd.args(["--namespace", ns]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(File::create(&log)?)
                .spawn()
                .with_context(|| format!("start {} baseline-driver", program.display()))?;
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            let proc = Proc { child, log, http: None };
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.trim() == "ready" => Ok(Actor::Proc(proc)),
                other => bail!("baseline driver not ready ({other:?}):\n{}", proc.log_tail(20)),
            }
        }
    }
}

/// Submits the workload: B creates (batches or worker Jobs), `SUBMIT_CONCURRENCY` at a time.
async fn submit(
    client: &Client,
    mode: Mode,
    w: Workload,
    ns: &str,
    record: &Arc<Mutex<Record>>,
    suspend: bool,
) -> Result<()> {
    let batches: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<PredictionBatch>(&()));
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), ns);
    let results: Vec<Result<()>> = futures::stream::iter(w.names())
        .map(|name| {
            let (batches, jobs_api, record) = (batches.clone(), jobs_api.clone(), record.clone());
            async move {
                match mode {
                    Mode::Ours => {
                        let obj: DynamicObject = serde_json::from_value(w.batch_manifest(&name, suspend))?;
                        batches
                            .create(&PostParams::default(), &obj)
                            .await
                            .with_context(|| format!("create batch {name}"))?;
                    }
                    Mode::Baseline => {
                        let job = w.baseline_job(ns, &name, Stage::Workers)?;
                        jobs_api
                            .create(&PostParams::default(), &job)
                            .await
                            .with_context(|| format!("create Job of {name}"))?;
                    }
                }
                record.lock().unwrap().batches.entry(name).or_default().submitted = Some(Instant::now());
                Ok(())
            }
        })
        .buffer_unordered(SUBMIT_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Runs one workload in one mode in a fresh namespace and measures it.
pub async fn run_mode(env: &Env, mode: Mode, w: Workload, opts: &ModeOptions) -> Result<ModeResult> {
    let ns = unique_namespace(&format!("bench-{}", mode.label()));
    let tag = format!("{}-{ns}", opts.tag.replace([' ', '/'], "-"));
    create_namespace(&env.admin, &ns).await?;
    let watches = Watches::start(&env.admin, &ns, mode == Mode::Ours).await?;
    // The API count includes the actor's start (its initial lists and watches).
    let audit_from = audit_offset(env.audit_log.as_deref());
    let actor = start_actor(env, mode, w, &ns, &tag).await?;
    let load_before = loadavg();
    let cpu_start = actor.proc().and_then(Proc::cpu);
    let cp_start = control_plane_cpu(env.cluster_dir.as_deref());

    let t0 = Instant::now();
    submit(&env.admin, mode, w, &ns, &watches.record, false).await?;
    let submit_s = t0.elapsed().as_secs_f64();

    // Done: every export Job seen finished (and, ours, every batch in a terminal phase).
    let mut last_report = Instant::now();
    loop {
        let (done, progress) = {
            let r = watches.record.lock().unwrap();
            let exported = r.count(|b| b.done[2].is_some());
            let failed = r.count(|b| b.failed.iter().any(|f| *f));
            let terminal = r.count(|b| b.terminal.is_some());
            let done = exported + failed >= w.batches && (mode == Mode::Baseline || terminal >= w.batches);
            (done, r.progress())
        };
        if done {
            break;
        }
        if t0.elapsed() > opts.timeout {
            let tail = actor.proc().map(|p| p.log_tail(30)).unwrap_or_default();
            actor.stop();
            bail!("{} run in {ns} timed out after {:?}: {progress}\n{tail}", mode.label(), opts.timeout);
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!("[bench] {} {ns} {:.0}s: {progress}", mode.label(), t0.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load_after = loadavg();
    let control_plane_cpu_s = cpu_delta(&cp_start, &control_plane_cpu(env.cluster_dir.as_deref()));

    // Figures from the one watch.
    let (wall_s, terminal_s, cons, exp, start, unreacted, failed_jobs) = {
        let r = watches.record.lock().unwrap();
        let last = |f: &dyn Fn(&BatchRecord) -> Option<Instant>| r.batches.values().filter_map(f).max();
        let wall = last(&|b| b.done[2]).map_or(f64::NAN, |t| ms(t0, t) / 1e3);
        let terminal = (mode == Mode::Ours).then(|| last(&|b| b.terminal).map_or(f64::NAN, |t| ms(t0, t) / 1e3));
        let mut cons = Vec::new();
        let mut exp = Vec::new();
        let mut start = Vec::new();
        let mut unreacted = 0;
        for b in r.batches.values() {
            for (from, to, out) in [(0, 1, &mut cons), (1, 2, &mut exp)] {
                match (b.done[from], b.seen[to]) {
                    (Some(d), Some(s)) => out.push(ms(d, s)),
                    (Some(_), None) if !b.failed[from] => unreacted += 1,
                    _ => {}
                }
            }
            if let (Some(s), Some(w)) = (b.submitted, b.seen[0]) {
                start.push(ms(s, w));
            }
        }
        let failed = r.batches.values().map(|b| b.failed.iter().filter(|f| **f).count()).sum::<usize>();
        (wall, terminal, stats(&cons), stats(&exp), stats(&start), unreacted, failed)
    };

    let mut result = ModeResult {
        tag: opts.tag.clone(),
        mode,
        namespace: ns.clone(),
        workload: w,
        pods: w.pods(),
        submit_s,
        wall_s,
        terminal_s,
        reaction_consolidation_ms: cons,
        reaction_export_ms: exp,
        start_ms: start,
        transition_ms: BTreeMap::new(),
        unreacted,
        failed_jobs,
        cpu_s: None,
        cpu_total_s: None,
        peak_rss_kib: None,
        rss_kib: None,
        reconciles: None,
        status_writes: None,
        cpu_per_reconcile_ms: None,
        api: None,
        writes_per_batch: None,
        idle: None,
        restart: None,
        control_plane_cpu_s,
        load_before,
        load_after,
    };
    if let Some(p) = actor.proc() {
        let cpu = p.cpu();
        result.cpu_total_s = cpu;
        result.cpu_s = cpu.zip(cpu_start).map(|(a, b)| a - b);
        result.peak_rss_kib = p.hwm_kib();
        result.rss_kib = p.rss_kib();
        result.reconciles = p.metric("prediction_batch_reconciles_total");
        result.status_writes = p.metric("prediction_batch_status_writes_total");
        result.cpu_per_reconcile_ms =
            result.cpu_total_s.zip(result.reconciles).filter(|(_, r)| *r > 0.0).map(|(c, r)| c * 1e3 / r);
        result.transition_ms = transition_steps(&std::fs::read_to_string(&p.log).unwrap_or_default());
    }
    if let Some(path) = env.audit_log.as_deref() {
        // Requests of the run itself (a watch counts when it starts): the idle windows and the
        // restart below are reported on their own.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let api = audit_count(path, &audit_from, CONTROLLER_USER)?;
        result.writes_per_batch = Some(api.writes as f64 / w.batches as f64);
        result.api = Some(api);
    }

    let mut actor = actor;
    if let (Mode::Ours, Some(window), Actor::Proc(p)) = (mode, opts.idle, &mut actor) {
        // Let the last coalesced writes land, then watch the idle controller.
        tokio::time::sleep(Duration::from_secs(10)).await;
        result.idle = Some(measure_idle(env, p, window).await?);
        // A fresh controller over the finished batches: its start, then its idle cost.
        p.stop(Duration::from_secs(25));
        let from = audit_offset(env.audit_log.as_deref());
        let t = Instant::now();
        let fresh =
            start_controller(env, env.scope_namespace.then_some(ns.as_str()), &format!("{tag}-restart")).await?;
        let ready_s = t.elapsed().as_secs_f64();
        // Until it has looked at every batch once (or 60 s), plus a little.
        let until = Instant::now() + Duration::from_secs(60);
        while fresh.metric("prediction_batch_reconciles_total").unwrap_or(0.0) < w.batches as f64
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let startup_reconciles = fresh.metric("prediction_batch_reconciles_total").unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let startup_api = match env.audit_log.as_deref() {
            Some(path) => Some(audit_count(path, &from, CONTROLLER_USER)?),
            None => None,
        };
        let (peak_rss_kib, rss_kib) = (fresh.hwm_kib(), fresh.rss_kib());
        let mut fresh = fresh;
        let idle = measure_idle(env, &mut fresh, window).await?;
        result.restart = Some(Restart { ready_s, startup_api, startup_reconciles, peak_rss_kib, rss_kib, idle });
        fresh.stop(Duration::from_secs(25));
    }
    actor.stop();
    drop(watches);

    if opts.cleanup {
        delete_namespace(&env.admin, &ns, Duration::from_secs(20 * 60)).await?;
    }
    Ok(result)
}

/// Requests and reconciles of a running controller over `window`.
pub async fn measure_idle(env: &Env, p: &mut Proc, window: Duration) -> Result<Idle> {
    let from = audit_offset(env.audit_log.as_deref());
    let r0 = p.metric("prediction_batch_reconciles_total").unwrap_or(f64::NAN);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let r1 = p.metric("prediction_batch_reconciles_total").unwrap_or(f64::NAN);
    let seconds = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = match env.audit_log.as_deref() {
        Some(path) => Some(audit_count(path, &from, CONTROLLER_USER)?),
        None => None,
    };
    let per_min = 60.0 / seconds;
    Ok(Idle {
        seconds,
        requests_per_min: api.as_ref().map(|a| a.total as f64 * per_min),
        writes_per_min: api.as_ref().map(|a| a.writes as f64 * per_min),
        api,
        reconciles: r1 - r0,
        reconciles_per_min: (r1 - r0) * per_min,
    })
}

// ------------------------------------------------------------------------------ memory at scale

#[derive(Clone, Debug, Serialize)]
pub struct MemoryResult {
    pub batches: usize,
    pub namespace: String,
    /// How many namespaces the batches were spread over (the first is `namespace`).
    pub namespaces: usize,
    /// Creating them all, and until the controller had written a status to every one.
    pub submit_s: f64,
    pub all_reconciled_s: f64,
    pub jobs_created: usize,
    /// The controller that saw them arrive one by one.
    pub peak_rss_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    pub cpu_s: Option<f64>,
    pub reconciles: Option<f64>,
    pub cpu_per_reconcile_ms: Option<f64>,
    pub api: Option<ApiCount>,
    /// A fresh controller with the defaults that lists all of them at start (the first of
    /// `restarts`, repeated here for the summaries that read these fields).
    pub restart_ready_s: f64,
    pub restart_peak_rss_kib: Option<u64>,
    pub restart_rss_kib: Option<u64>,
    pub restart_cpu_s: Option<f64>,
    pub restart_reconciles: Option<f64>,
    pub restart_api: Option<ApiCount>,
    /// One fresh controller per way of filling the caches ([`RESTART_LISTS`]).
    pub restarts: Vec<RestartPoint>,
    pub load_before: String,
    pub load_after: String,
}

/// A fresh controller started over the batches, with one initial-list setting.
#[derive(Clone, Debug, Serialize)]
pub struct RestartPoint {
    pub lists: String,
    /// Until the "caches synced" log line (the audit log's watch requests open at the start of
    /// a streaming list, so they cannot tell when it ended).
    pub ready_s: f64,
    /// Until every batch had a pass (`prediction_batch_reconciles_total`).
    pub all_passed_s: f64,
    pub peak_rss_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    pub cpu_s: Option<f64>,
    pub reconciles: Option<f64>,
    pub cpu_per_reconcile_ms: Option<f64>,
    pub api: Option<ApiCount>,
}

/// The restarts of the memory preset: the defaults (auto: streaming on this apiserver), each
/// initial list forced, kube's default page size, and the unbounded concurrency of old.
pub const RESTART_LISTS: &[RestartList] = &[
    RESTART_DEFAULTS,
    ("streaming", &[("PBC_INITIAL_LIST", "streaming")]),
    ("paged, 100 per page", &[("PBC_INITIAL_LIST", "paged")]),
    ("paged, 500 per page (kube's default)", &[("PBC_INITIAL_LIST", "paged"), ("PBC_LIST_PAGE_SIZE", "500")]),
    ("auto, unbounded concurrency", &[("PBC_CONCURRENCY", "0")]),
    RESTART_ARENAS,
];

/// A restart's label and the environment of its controller.
pub type RestartList = (&'static str, &'static [(&'static str, &'static str)]);

const RESTART_DEFAULTS: RestartList = ("defaults (auto, concurrency 256)", &[]);

/// glibc keeps up to 8 malloc arenas per core, and memory freed into one is not reused by threads
/// on another: the restart's transient allocations (queued passes, decoded pages) can stay
/// resident. This point shows what capping them changes.
const RESTART_ARENAS: RestartList = ("auto, MALLOC_ARENA_MAX=2", &[("MALLOC_ARENA_MAX", "2")]);

/// The restarts of the scale preset: the defaults, and the defaults with capped malloc arenas.
pub const SCALE_RESTARTS: &[RestartList] = &[RESTART_DEFAULTS, RESTART_ARENAS];

/// N suspended batches (no Jobs, no pods) in the controller's cache, spread over `namespaces`:
/// its memory and CPU as they arrive, then a fresh controller over them per [`RESTART_LISTS`]
/// (only the defaults and the capped malloc arenas, [`SCALE_RESTARTS`], when `all_lists` is false).
pub async fn memory_suspended(
    env: &Env,
    w: Workload,
    namespaces: usize,
    all_lists: bool,
    opts: &ModeOptions,
) -> Result<MemoryResult> {
    let namespaces = namespaces.clamp(1, w.batches.max(1));
    let first = unique_namespace("bench-mem");
    let names: Vec<String> =
        if namespaces == 1 { vec![first.clone()] } else { (0..namespaces).map(|i| format!("{first}-{i}")).collect() };
    // A controller scoped to one namespace cannot see batches spread over several.
    let scope = (env.scope_namespace && namespaces == 1).then_some(first.as_str());
    let mut watches = Vec::new();
    for ns in &names {
        create_namespace(&env.admin, ns).await?;
        watches.push(Watches::start(&env.admin, ns, true).await?);
    }
    let audit_from = audit_offset(env.audit_log.as_deref());
    let ctl = start_controller(env, scope, &format!("mem-{first}")).await?;
    let load_before = loadavg();
    let t0 = Instant::now();
    let per = w.batches.div_ceil(namespaces);
    for (i, (ns, watch)) in names.iter().zip(&watches).enumerate() {
        let n = per.min(w.batches.saturating_sub(i * per));
        submit(&env.admin, Mode::Ours, Workload { batches: n, ..w }, ns, &watch.record, true).await?;
    }
    let submit_s = t0.elapsed().as_secs_f64();
    let suspended = || -> usize {
        watches.iter().map(|w| w.record.lock().unwrap().count(|b| b.phase.as_deref() == Some("Suspended"))).sum()
    };
    let mut last_report = Instant::now();
    loop {
        let n = suspended();
        if n >= w.batches {
            break;
        }
        if t0.elapsed() > opts.timeout {
            bail!("only {n}/{} batches Suspended after {:?}\n{}", w.batches, opts.timeout, ctl.log_tail(20));
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!("[bench] mem {first} {:.0}s: {n}/{} suspended", t0.elapsed().as_secs_f64(), w.batches);
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_reconciled_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let jobs_created: usize =
        watches.iter().map(|w| w.record.lock().unwrap().count(|b| b.seen.iter().any(Option::is_some))).sum();
    let Stopped { peak_rss_kib, rss_kib, cpu_s, reconciles, api } = stop_and_count(env, ctl, &audit_from).await?;
    drop(watches);

    let lists = if all_lists { RESTART_LISTS } else { SCALE_RESTARTS };
    let mut restarts = Vec::new();
    for (i, (label, vars)) in lists.iter().enumerate() {
        let point = restart_over(env, scope, &format!("mem-{first}-restart-{i}"), w.batches, label, vars).await?;
        eprintln!(
            "[bench] mem restart ({label}): ready {:.2}s, every batch passed {:.2}s, peak RSS {:.1} MiB",
            point.ready_s,
            point.all_passed_s,
            point.peak_rss_kib.unwrap_or(0) as f64 / 1024.0
        );
        restarts.push(point);
    }
    let load_after = loadavg();
    if opts.cleanup {
        for ns in &names {
            delete_namespace(&env.admin, ns, Duration::from_secs(20 * 60)).await?;
        }
    }
    let defaults = restarts[0].clone();
    Ok(MemoryResult {
        batches: w.batches,
        namespace: first,
        namespaces,
        submit_s,
        all_reconciled_s,
        jobs_created,
        peak_rss_kib,
        rss_kib,
        cpu_s,
        reconciles,
        cpu_per_reconcile_ms: cpu_s.zip(reconciles).filter(|(_, r)| *r > 0.0).map(|(c, r)| c * 1e3 / r),
        api,
        restart_ready_s: defaults.ready_s,
        restart_peak_rss_kib: defaults.peak_rss_kib,
        restart_rss_kib: defaults.rss_kib,
        restart_cpu_s: defaults.cpu_s,
        restart_reconciles: defaults.reconciles,
        restart_api: defaults.api,
        restarts,
        load_before,
        load_after,
    })
}

/// A measured controller's figures, read just before it was stopped.
struct Stopped {
    peak_rss_kib: Option<u64>,
    rss_kib: Option<u64>,
    cpu_s: Option<f64>,
    reconciles: Option<f64>,
    /// Its requests since `from`, from the audit log (once the process is gone).
    api: Option<ApiCount>,
}

/// Reads the controller's memory, CPU and reconciles, stops it, then counts its requests.
async fn stop_and_count(env: &Env, mut ctl: Proc, from: &AuditMark) -> Result<Stopped> {
    let (peak_rss_kib, rss_kib, cpu_s) = (ctl.hwm_kib(), ctl.rss_kib(), ctl.cpu());
    let reconciles = ctl.metric("prediction_batch_reconciles_total");
    ctl.stop(Duration::from_secs(25));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api = match env.audit_log.as_deref() {
        Some(p) => Some(audit_count(p, from, CONTROLLER_USER)?),
        None => None,
    };
    Ok(Stopped { peak_rss_kib, rss_kib, cpu_s, reconciles, api })
}

/// One fresh controller over `batches` batches already in the cluster: until its caches synced,
/// until each batch had its pass, its memory, CPU and API requests (0 writes expected: every
/// batch already carries its status).
async fn restart_over(
    env: &Env,
    scope: Option<&str>,
    tag: &str,
    batches: usize,
    label: &str,
    vars: &[(&str, &str)],
) -> Result<RestartPoint> {
    let from = audit_offset(env.audit_log.as_deref());
    let t = Instant::now();
    let fresh = start_controller_with(env, scope, tag, vars).await?;
    let until = t + Duration::from_secs(600);
    let ready_s = loop {
        if std::fs::read_to_string(&fresh.log).unwrap_or_default().contains("caches synced") {
            break t.elapsed().as_secs_f64();
        }
        if Instant::now() > until {
            bail!("{label}: caches not synced after 600 s\n{}", fresh.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while fresh.metric("prediction_batch_reconciles_total").unwrap_or(0.0) < batches as f64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_passed_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let Stopped { peak_rss_kib, rss_kib, cpu_s, reconciles, api } = stop_and_count(env, fresh, &from).await?;
    Ok(RestartPoint {
        lists: label.to_string(),
        ready_s,
        all_passed_s,
        peak_rss_kib,
        rss_kib,
        cpu_s,
        reconciles,
        cpu_per_reconcile_ms: cpu_s.zip(reconciles).filter(|(_, r)| *r > 0.0).map(|(c, r)| c * 1e3 / r),
        api,
    })
}

// --------------------------------------------------------------------------------- the CI guard

/// Writes per batch of the 3-stage pipeline at the CI preset (10 × 20), from the audit log
/// (controller identity, dry runs included), as measured when the guard was set: 15.0. The guard
/// fails above this + 2.
pub const MEASURED_WRITES_PER_BATCH: f64 = 11.2;

/// The regression guard: ours/baseline within `max_ratio`, every stage reacted to in both modes,
/// and (when the audit log was read) at most `max_writes` API writes per batch.
pub fn ci_check(
    baseline: &ModeResult,
    ours: &ModeResult,
    max_ratio: f64,
    max_writes: Option<f64>,
) -> std::result::Result<f64, String> {
    let ratio = ours.wall_s / baseline.wall_s;
    let mut problems = Vec::new();
    if let Some(max) = max_writes {
        match ours.writes_per_batch {
            Some(w) if w <= max => {}
            Some(w) => problems
                .push(format!("{w:.1} writes per batch > {max:.1}: {:?}", ours.api.as_ref().map(|a| &a.by_request))),
            None => problems.push("writes per batch were not measured (no audit log)".into()),
        }
    }
    if ratio.is_nan() || ratio > max_ratio {
        problems
            .push(format!("ours/baseline = {ratio:.3} > {max_ratio} ({:.1}s vs {:.1}s)", ours.wall_s, baseline.wall_s));
    }
    for r in [baseline, ours] {
        let b = r.workload.batches;
        if r.unreacted > 0 || r.failed_jobs > 0 || r.reaction_consolidation_ms.n < b || r.reaction_export_ms.n < b {
            problems.push(format!(
                "{}: {} of {b} batches reacted to at consolidation, {} at export ({} never reacted to, {} failed Jobs)",
                r.mode.label(),
                r.reaction_consolidation_ms.n,
                r.reaction_export_ms.n,
                r.unreacted,
                r.failed_jobs
            ));
        }
    }
    if problems.is_empty() { Ok(ratio) } else { Err(problems.join("; ")) }
}

/// One line per mode run, for logs.
pub fn summary_line(r: &ModeResult) -> String {
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    format!(
        "{:<8} {}x{} p{}: wall {:.1}s, react cons p50/p99 {:.1}/{:.1} ms, export p50/p99 {:.1}/{:.1} ms, start p50 {:.1} ms, cpu {}, peak RSS {}, API {} ({} writes), unreacted {}, control plane CPU {:.1}s {:?}, load {} -> {}",
        r.mode.label(),
        r.workload.batches,
        r.workload.shards,
        r.workload.parallelism,
        r.wall_s,
        r.reaction_consolidation_ms.p50,
        r.reaction_consolidation_ms.p99,
        r.reaction_export_ms.p50,
        r.reaction_export_ms.p99,
        r.start_ms.p50,
        r.cpu_s.map_or("-".into(), |c| format!("{c:.2}s")),
        mib(r.peak_rss_kib),
        r.api.as_ref().map_or("-".into(), |a| a.total.to_string()),
        r.api.as_ref().map_or("-".into(), |a| a.writes.to_string()),
        r.unreacted,
        r.control_plane_cpu_s.values().sum::<f64>(),
        r.control_plane_cpu_s,
        r.load_before,
        r.load_after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_steps_are_read_from_the_controller_log() {
        let log = "\
2026-12-02T19:00:00Z  INFO reconcile{batch=ns/b1}: prediction_batch_controller::reconcile::clock: stage Job created stage=\"consolidation\" queued_ms=\"0.4\" planned_ms=\"1.0\" status_ms=\"6.5\" create_ms=\"9.1\"
2026-12-02T19:00:01Z  INFO reconcile{batch=ns/b1}: created Job job=\"b1-export\"
2026-12-02T19:00:01Z  INFO reconcile{batch=ns/b1}: prediction_batch_controller::reconcile::clock: stage Job created stage=\"export\" queued_ms=\"-1.0\" planned_ms=\"2.0\" status_ms=\"3.0\" create_ms=\"4.0\"
";
        let t = transition_steps(log);
        assert_eq!(t["consolidation status"].p50, 6.5);
        assert_eq!(t["consolidation total"].p50, 17.0);
        assert!(!t.contains_key("export queued"), "a pass no change started has no queue time");
        assert_eq!(t["export total"].p50, 9.0);
        assert_eq!(t["export create"].n, 1);
    }
}
