//! The benchmark's CI guard (issue 9): the `ci` preset of `bench/run` — 10 batches × 20 shards,
//! first as bare Jobs driven by a minimal watch-based driver (the baseline), then as
//! PredictionBatches run by the release controller binary — on the suite's cluster. Fails if
//! ours/baseline wall time exceeds 1.5 or a stage is never reacted to.
//!
//! A regression guard, not the headline figures (those come from `bench/run`, on a cluster of its
//! own: docs/benchmarks.md). Up to three pairs: a pair lasts about 15 s, so a neighbour's CPU burst
//! can skew one; a real regression fails every pair.
//! `PBC_BENCH_MAX_RATIO` overrides the 1.5.

#[path = "../bench/src/core.rs"]
mod bench;
#[path = "support/controller.rs"]
mod controller;
mod support;

use std::time::Duration;

use bench::{DriverKind, Env, Mode, ModeOptions, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_preset_ours_within_1_5_of_bare_jobs_and_every_stage_reacted_to() {
    support::ensure_crd();
    let c = support::cluster();
    let env = Env {
        admin: support::client().await,
        controller_kubeconfig: c.controller_kubeconfig.clone(),
        controller_bin: env!("CARGO_BIN_EXE_prediction-batch-controller").into(),
        logs: c.logs.clone(),
        audit_log: Some(c.audit_log.clone()).filter(|p| p.exists()),
        cluster_dir: Some(c.dir.clone()),
        driver: DriverKind::InProcess,
        // The suite's cluster holds other tests' namespaces: keep to our own.
        scope_namespace: true,
    };
    let max_ratio: f64 = std::env::var("PBC_BENCH_MAX_RATIO").ok().and_then(|v| v.parse().ok()).unwrap_or(1.5);
    let w = Workload::new(10, 20, 10);
    let opts =
        |tag: &str| ModeOptions { timeout: Duration::from_secs(300), idle: None, cleanup: false, tag: tag.into() };

    let mut failures = Vec::new();
    for attempt in 1..=3 {
        let baseline = bench::run_mode(&env, Mode::Baseline, w, &opts("smoke")).await.expect("baseline run");
        eprintln!("{}", bench::summary_line(&baseline));
        let ours = bench::run_mode(&env, Mode::Ours, w, &opts("smoke")).await.expect("ours run");
        eprintln!("{}", bench::summary_line(&ours));
        match bench::ci_check(&baseline, &ours, max_ratio) {
            Ok(ratio) => {
                eprintln!("bench smoke: PASS (attempt {attempt}), ours/baseline = {ratio:.3} <= {max_ratio}");
                for ns in [&baseline.namespace, &ours.namespace] {
                    let _ = support::kubectl_output(&["delete", "namespace", ns, "--wait=false"]);
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
