//! The benchmark's CI guard: the `ci` preset of `bench/run` — 10 batches × 20 shards, first as
//! bare Jobs driven by a minimal watch-based driver (the baseline), then as PredictionBatches run
//! by the release controller binary — on the suite's cluster. Fails if ours/baseline wall time
//! exceeds 1.5 or a stage is never reacted to.
//!
//! A regression guard, not the headline figures (those come from `bench/run`, on a cluster of its
//! own: docs/benchmarks.md). Up to three pairs: a pair lasts about 15 s, so a neighbour's CPU burst
//! can skew one; a real regression fails every pair.
//! `PBC_BENCH_MAX_RATIO` overrides the 1.5.
//!
//! The bench is a package of its own, so `tests/run-all` runs this with `cargo test --workspace`,
//! which builds the controller binary (`target/release/prediction-batch-controller`, next to this
//! test's directory) in the same run; alone, build it first (`cargo build --release`; the test
//! fails on a binary older than the sources). `PBC_CONTROLLER_BIN` names another one. Like every test of
//! the suite it needs the cluster of `CLUSTER_DIR` (tests/cluster/up) and fails, never skips,
//! without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pbc_bench::core::{self as bench, DriverKind, Env, Mode, ModeOptions, Workload};

/// The repository's root (the controller package).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `CLUSTER_DIR` as tests/support reads it (relative to the repository, default target/test-cluster).
fn cluster_dir() -> PathBuf {
    let dir = std::env::var_os("CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|| "target/test-cluster".into());
    if dir.is_absolute() { dir } else { repo().join(dir) }
}

fn kubectl(dir: &Path, args: &[&str]) -> Output {
    Command::new(dir.join("bin/kubectl"))
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("no running test cluster in {} (cannot run its kubectl: {e}); start one with `tests/cluster/up`, or run `tests/run-all`", dir.display()))
}

/// Fails unless the cluster answers; applies the repository's CRD and waits until it is Established.
fn ensure_cluster_and_crd(dir: &Path) {
    let ready = kubectl(dir, &["get", "--raw=/readyz", "--request-timeout=10s"]);
    assert!(
        ready.status.success(),
        "no running test cluster in {}: start one with `tests/cluster/up`, or run `tests/run-all`\n{}",
        dir.display(),
        String::from_utf8_lossy(&ready.stderr)
    );
    let crds = repo().join("crds");
    let apply = kubectl(dir, &["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().unwrap()]);
    assert!(apply.status.success(), "kubectl apply crds/: {}", String::from_utf8_lossy(&apply.stderr));
    let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
    let start = Instant::now();
    while String::from_utf8_lossy(
        &kubectl(dir, &["get", "crd", "predictionbatches.predictions.dev", "-o", jsonpath]).stdout,
    ) != "True"
    {
        assert!(start.elapsed() < Duration::from_secs(60), "the CRD was not Established within 60 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The controller binary cargo built with this test (same target directory, one level up),
/// checked to be newer than every source of the controller: `cargo test -p pbc-bench` alone does
/// not build it, and an old one would measure old code.
fn controller_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PBC_CONTROLLER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/").join("prediction-batch-controller");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|e| {
        panic!("no controller binary at {} ({e}): run tests/run-all, or `cargo build --release` first", bin.display())
    });
    let newest = newest_source(&repo().join("src"));
    assert!(
        built >= newest,
        "{} is older than the controller's sources: run tests/run-all, or `cargo build --release` first",
        bin.display()
    );
    bin
}

fn newest_source(dir: &Path) -> std::time::SystemTime {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { newest_source(&p) } else { std::fs::metadata(&p).unwrap().modified().unwrap() })
        .max()
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_preset_ours_within_1_5_of_bare_jobs_every_stage_reacted_to_and_writes_per_batch_bounded() {
    let dir = cluster_dir();
    ensure_cluster_and_crd(&dir);
    // The suite's cluster holds other tests' namespaces: keep to our own.
    let env = Env::for_cluster(&dir, controller_bin(), DriverKind::InProcess, true).await.expect("bench environment");
    let max_ratio: f64 = std::env::var("PBC_BENCH_MAX_RATIO").ok().and_then(|v| v.parse().ok()).unwrap_or(1.5);
    // Writes per batch (audit log, controller identity): the figure measured + 2.
    let max_writes: f64 = std::env::var("PBC_BENCH_MAX_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(bench::MEASURED_WRITES_PER_BATCH + 2.0);
    let w = Workload::new(10, 20, 10);
    let opts =
        |tag: &str| ModeOptions { timeout: Duration::from_secs(300), idle: None, cleanup: false, tag: tag.into() };

    let mut failures = Vec::new();
    for attempt in 1..=3 {
        let baseline = bench::run_mode(&env, Mode::Baseline, w, &opts("smoke")).await.expect("baseline run");
        eprintln!("{}", bench::summary_line(&baseline));
        let ours = bench::run_mode(&env, Mode::Ours, w, &opts("smoke")).await.expect("ours run");
        eprintln!("{}", bench::summary_line(&ours));
        if let Some(api) = &ours.api {
            eprintln!("ours: {:?} writes per batch: {:?}", ours.writes_per_batch, api.by_request);
        }
        match bench::ci_check(&baseline, &ours, max_ratio, Some(max_writes)) {
            Ok(ratio) => {
                eprintln!("bench smoke: PASS (attempt {attempt}), ours/baseline = {ratio:.3} <= {max_ratio}");
                for ns in [&baseline.namespace, &ours.namespace] {
                    let _ = kubectl(&dir, &["delete", "namespace", ns, "--wait=false"]);
                }
                return;
            }
            Err(e) => {
                eprintln!(
                    "bench smoke attempt {attempt}: {e} (namespaces {} and {} kept)",
                    baseline.namespace, ours.namespace
                );
                failures.push(e);
            }
        }
    }
    panic!("benchmark guard failed in all three pairs: {}", failures.join(" | "));
}

/// The baseline's Jobs are bare Jobs: no owner, and not the controller's outcome finalizer that
/// its Job builder adds (with no controller to release it, deleting the baseline's namespace hung
/// `bench/run` on the CI preset's first pair).
#[test]
fn baseline_jobs_carry_no_owner_and_no_finalizer_of_ours() {
    use prediction_batch_controller::api::stage::Stage;
    let w = Workload::new(1, 20, 10);
    for stage in [Stage::Workers, Stage::Consolidation, Stage::Export] {
        let job = w.baseline_job("ns", "b-0", stage).expect("a baseline Job");
        assert!(job.metadata.owner_references.is_none(), "{stage:?}: {:?}", job.metadata.owner_references);
        let finalizers = job.metadata.finalizers.unwrap_or_default();
        assert!(
            !finalizers.iter().any(|f| f == prediction_batch_controller::labels::OUTCOME_FINALIZER),
            "{stage:?}: {finalizers:?}"
        );
    }
}
