//! The chaos test (issue 6): 20 concurrent batches, two leader-elected controller replicas
//! SIGKILLed at random moments, kube-apiserver restarted twice (etcd keeps the data) and etcd
//! compacted so watches expire and relist. Asserts, from the cluster and watches of its own,
//! that every batch ends as expected, no stage ever ran twice, and no status ever moved back.
//!
//! It runs on a cluster of its own (restarting the apiserver must not disturb other tests).
//! `CHAOS_LONG=1` runs the long version (100 kills) by hand; `CHAOS_SEED` replays a run.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::batch::{apply, batch};
use support::controller::Controller;
use support::watch::{MultiJobWatch, StatusWatch};
use support::{TestNamespace, ensure_crd, stages};

struct OwnCluster(PathBuf);

impl OwnCluster {
    fn up(dir: PathBuf) -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let _ = Command::new(format!("{root}/tests/cluster/down")).env("CLUSTER_DIR", &dir).output();
        let out = Command::new(format!("{root}/tests/cluster/up"))
            .env("CLUSTER_DIR", &dir)
            .output()
            .expect("run tests/cluster/up");
        assert!(
            out.status.success(),
            "tests/cluster/up failed for the chaos cluster:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        OwnCluster(dir)
    }

    fn restart_apiserver(&self) {
        let root = env!("CARGO_MANIFEST_DIR");
        let out = Command::new(format!("{root}/tests/cluster/restart"))
            .args(["kube-apiserver", "1"])
            .env("CLUSTER_DIR", &self.0)
            .output()
            .expect("run tests/cluster/restart");
        assert!(out.status.success(), "apiserver restart failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Compacts etcd to its current revision: every watch resuming from an older resourceVersion
    /// now gets 410 Gone and must relist.
    fn compact_etcd(&self) -> u64 {
        let ports = std::fs::read_to_string(self.0.join("ports")).expect("ports file");
        let port = ports.lines().find_map(|l| l.strip_prefix("ETCD_PORT=")).expect("ETCD_PORT").trim().to_string();
        let url = format!("http://127.0.0.1:{port}/v3/kv");
        let range = Command::new("curl")
            .args(["-sf", "-X", "POST", &format!("{url}/range"), "-d", r#"{"key":"AA=="}"#])
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&range.stdout).expect("etcd range answer");
        let rev: u64 = body["header"]["revision"].as_str().and_then(|r| r.parse().ok()).expect("etcd revision");
        let c = Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                &format!("{url}/compaction"),
                "-d",
                &format!(r#"{{"revision":"{rev}","physical":true}}"#),
            ])
            .output()
            .unwrap();
        assert!(c.status.success(), "etcd compaction failed");
        rev
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("chaos cluster kept for inspection: CLUSTER_DIR={} (logs in logs/)", self.0.display());
            return;
        }
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/down"))
            .env("CLUSTER_DIR", &self.0)
            .output();
    }
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_restarts_never_lose_or_repeat_a_stage() {
    let long = std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1");
    let target_kills = if long { 100 } else { 30 };
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("chaos: seed {seed} (CHAOS_SEED={seed} replays the kill schedule), target kills {target_kills}");
    let mut rng = Rng(seed);

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/chaos-cluster");
    let cluster = OwnCluster::up(dir.clone());
    // The only test in this binary: point the shared helpers at the chaos cluster before first use.
    unsafe { std::env::set_var("CLUSTER_DIR", &dir) };
    ensure_crd();
    let ns = TestNamespace::new("chaos");
    let jobs = MultiJobWatch::start(ns.name()).await;
    let statuses = StatusWatch::start(ns.name()).await;
    let elect = ["--leader-elect", "--lease-namespace", ns.name(), "--lease-duration", "3"];
    let mut replicas =
        [Controller::start("chaos-a", ns.name(), &elect), Controller::start("chaos-b", ns.name(), &elect)];

    // 20 batches: varied sizes, quorum settings, stragglers, failing shards.
    let mut expected = Vec::new();
    for i in 0..20u32 {
        let name = format!("chaos-{i:02}");
        let run_for = format!("{}s", 1 + i % 3);
        let (spec, meta, outcome) = match i {
            3 => (json!({}), json!({ "labels": { stages::FAIL_LABEL: stages::FAIL_SHARDS_3_7 } }), "Failed"),
            7 => (
                json!({ "targetCount": 100, "itemsPerShard": 1, "completion": { "minSucceededPercent": 90, "graceSeconds": 120 } }),
                json!({ "labels": { stages::FAIL_LABEL: stages::FAIL_SHARDS_3_7 } }),
                "Succeeded",
            ),
            11 => (
                json!({ "targetCount": 40, "itemsPerShard": 2, "completion": { "minSucceededPercent": 90, "graceSeconds": 2 } }),
                json!({ "annotations": { stages::STRAGGLE_INDEXES: "2", stages::STRAGGLE_FOR: "10m" } }),
                "Succeeded",
            ),
            _ => (
                json!({ "targetCount": 20 + (i * 13) % 60, "itemsPerShard": 1 + i % 4, "parallelism": 4 + i % 6 }),
                json!({ "annotations": { stages::RUN_FOR: run_for } }),
                "Succeeded",
            ),
        };
        apply(ns.name(), &batch(&name, spec, meta));
        expected.push((name, outcome));
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs(if long { 1500 } else { 480 });
    let (mut kills, mut api_restarts) = (0u32, 0u32);
    let all_terminal = |statuses: &StatusWatch| {
        let rec = statuses.snapshot();
        expected
            .iter()
            .all(|(n, _)| rec.last(n).is_some_and(|s| matches!(s["phase"].as_str(), Some("Succeeded" | "Failed"))))
    };
    while !(kills >= target_kills && api_restarts >= 2 && all_terminal(&statuses)) {
        assert!(
            Instant::now() < deadline,
            "chaos: batches not finished after {:?} ({kills} kills, {api_restarts} apiserver restarts): {:?}\n{}\n{}",
            start.elapsed(),
            expected
                .iter()
                .map(|(n, _)| (n.clone(), statuses.snapshot().last(n).map(|s| s["phase"].clone())))
                .collect::<Vec<_>>(),
            replicas[0].log_tail(),
            replicas[1].log_tail()
        );
        std::thread::sleep(Duration::from_millis(300 + rng.next(1200)));
        if kills < target_kills {
            let r = rng.next(2) as usize;
            replicas[r].kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng.next(500)));
            replicas[r].restart();
        }
        if api_restarts < 2 && kills >= (api_restarts + 1) * target_kills / 3 {
            if api_restarts == 1 {
                let rev = cluster.compact_etcd();
                println!("chaos: compacted etcd at revision {rev}");
            }
            cluster.restart_apiserver();
            api_restarts += 1;
            println!("chaos: restarted kube-apiserver ({api_restarts}) after {kills} kills, t={:?}", start.elapsed());
        }
    }
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_secs(2));

    let rec = statuses.snapshot();
    let uids = jobs.snapshot();
    let duplicates: Vec<_> = uids.iter().filter(|(_, u)| u.len() > 1).map(|(k, u)| (k.clone(), u.len())).collect();
    println!(
        "chaos figures: {kills} controller kills, {api_restarts} kube-apiserver restarts, {} batches, {} duplicate stage runs, {} status regressions, {} status versions checked, {} relists of the test's own watch, {elapsed:?}",
        expected.len(),
        duplicates.len(),
        rec.regressions.len(),
        rec.versions.values().sum::<usize>(),
        rec.inits.saturating_sub(1),
    );
    assert!(duplicates.is_empty(), "stages ran twice: {duplicates:?}");
    assert!(rec.regressions.is_empty(), "status moved backwards: {:#?}", rec.regressions);
    for (name, outcome) in &expected {
        let status = rec.last(name).unwrap();
        assert_eq!(status["phase"], *outcome, "{name}: {status}");
        let ran = |stage: &str| uids.get(&(name.clone(), stage.to_string())).map_or(0, |u| u.len());
        let want = usize::from(*outcome == "Succeeded");
        assert_eq!(ran("consolidation"), want, "{name}: consolidation runs");
        assert_eq!(ran("export"), want, "{name}: export runs");
        assert_eq!(ran("workers"), 1, "{name}: worker Jobs");
    }
    assert!(rec.inits >= 2, "the watch never expired/relisted (inits {})", rec.inits);
}
