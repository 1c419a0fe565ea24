//! Reruns end to end (issue 16) on the real control plane: a batch whose export failed (the
//! front end was down) is rerun in place by a new `spec.rerun.token`, from the export only; the
//! same token applied again does nothing; the controller killed at each step of the rerun
//! changes nothing.

mod support;

use std::time::Duration;

use serde_json::json;
use support::batch::{apply, batch, batch_json, condition, phase, wait_batch};
use support::controller::Controller;
use support::kwok_stage::TestStage;
use support::watch::JobWatch;
use support::{TestNamespace, ensure_crd, kubectl, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_reruns_in_place_exactly_once_through_kills() {
    ensure_crd();
    let ns = TestNamespace::new("rerun-export");
    let watch = JobWatch::start(ns.name()).await;
    let mut ctl = Controller::start("rerun-export", ns.name(), &[]);
    let down = TestStage::fail_stage(ns.name(), "export");
    let manifest = batch("daily", json!({ "export": { "backoffLimit": 0 } }), json!({}));
    apply(ns.name(), &manifest);
    let failed = wait_batch(ns.name(), "daily", &ctl, Duration::from_secs(120), "Failed", |b| phase(b) == "Failed");
    assert_eq!(condition(&failed, "Stalled").unwrap().1, "ExportFailed", "{:#}", failed["status"]);
    assert_eq!(failed["status"]["progress"], "120/120");

    // The front end is back; GitOps applies the manifest with a rerun token.
    drop(down);
    let mut rerun = manifest.clone();
    rerun["spec"]["rerun"] = json!({ "token": "2026-01-02-front-end-back", "from": "Export" });
    apply(ns.name(), &rerun);
    // Killed right after the apply, and again the moment the rerun's export Job exists.
    ctl.kill();
    ctl.restart();
    wait_until(
        "the rerun's export Job",
        Duration::from_secs(60),
        || (watch.snapshot().uids("export") == 2).then_some(()),
        || ctl.log_tail(),
    );
    ctl.kill();
    ctl.restart();
    let done = wait_batch(ns.name(), "daily", &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    let st = &done["status"];
    assert_eq!(condition(&done, "Ready").unwrap(), ("True".to_string(), "Succeeded".to_string()), "{st:#}");
    assert_eq!(st["progress"], "120/120");
    assert_eq!(st["export"]["jobName"], "daily-r2-export");
    let attempts = st["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{st:#}");
    assert_eq!(
        (attempts[0]["outcome"].as_str(), attempts[0]["reason"].as_str()),
        (Some("Failed"), Some("ExportFailed"))
    );
    assert_eq!(attempts[1]["token"], "2026-01-02-front-end-back");
    assert_eq!((attempts[1]["outcome"].as_str(), attempts[1]["from"].as_str()), (Some("Succeeded"), Some("Export")));
    let rec = watch.snapshot();
    for (stage, jobs) in [("workers", 1), ("consolidation", 1), ("export", 2)] {
        assert_eq!(rec.uids(stage), jobs, "{stage}: Jobs by UID {:?}", rec.uids_by_stage);
    }
    kubectl(&["get", "job", "daily-r2-export", "-n", ns.name()]);

    // The same manifest again: nothing runs, nothing is written.
    let rv = batch_json(ns.name(), "daily").unwrap()["metadata"]["resourceVersion"].clone();
    apply(ns.name(), &rerun);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(batch_json(ns.name(), "daily").unwrap()["metadata"]["resourceVersion"], rv);
    assert_eq!(watch.snapshot().uids("export"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_from_consolidation_runs_consolidation_and_export_again() {
    ensure_crd();
    let ns = TestNamespace::new("rerun-consolidation");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("rerun-consolidation", ns.name(), &[]);
    let manifest = batch(
        "daily",
        json!({ "rerun": { "token": "created-with", "from": "Consolidation" }, "ttlSecondsAfterFinished": 15 }),
        json!({}),
    );
    apply(ns.name(), &manifest);
    let first =
        wait_batch(ns.name(), "daily", &ctl, Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    assert!(first["status"]["attempts"].is_null(), "a token the batch was created with reruns nothing");
    assert_eq!(first["status"]["rerunToken"], "created-with");

    let mut rerun = manifest.clone();
    rerun["spec"]["rerun"]["token"] = json!("model-fix-1");
    apply(ns.name(), &rerun);
    let done = wait_batch(ns.name(), "daily", &ctl, Duration::from_secs(90), "attempt 2 Succeeded", |b| {
        phase(b) == "Succeeded" && b["status"]["attempts"][1]["outcome"] == "Succeeded"
    });
    assert_eq!(done["status"]["consolidation"]["jobName"], "daily-r2-consolidate");
    let rec = watch.snapshot();
    for (stage, jobs) in [("workers", 1), ("consolidation", 2), ("export", 2)] {
        assert_eq!(rec.uids(stage), jobs, "{stage}: Jobs by UID {:?}", rec.uids_by_stage);
    }

    // 15 s after attempt 2, the TTL deletes the Jobs of every attempt, not only the last one's
    // (attempt 2 started within seconds of attempt 1's end, long before attempt 1's TTL).
    wait_until(
        "no Job left in the namespace",
        Duration::from_secs(60),
        || kubectl(&["get", "jobs", "-n", ns.name(), "-o", "name"]).trim().is_empty().then_some(()),
        || format!("{}\n{}", kubectl(&["get", "jobs", "-n", ns.name()]), ctl.log_tail()),
    );
    assert!(batch_json(ns.name(), "daily").is_some(), "the batch itself stays");
}

/// The acceptance's main case: a batch ends Succeeded and Degraded with shards 3 and 7 failed; the
/// stage that fails them is removed and the token changes; only shards 3 and 7 run again (each
/// as its own Job, SHARD_INDEX its real index), then consolidation and export; the batch ends
/// Succeeded at 100 % with two attempts, through a controller kill at each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_shards_rerun_alone_and_the_batch_ends_whole() {
    ensure_crd();
    let ns = TestNamespace::new("rerun-shards");
    let watch = JobWatch::start(ns.name()).await;
    let mut ctl = Controller::start("rerun-shards", ns.name(), &[]);
    let failing = TestStage::fail(ns.name(), &["3", "7"]);
    let manifest = batch("daily", json!({ "completion": { "minSucceededPercent": 90 } }), json!({}));
    apply(ns.name(), &manifest);
    let first =
        wait_batch(ns.name(), "daily", &ctl, Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    assert_eq!(first["status"]["failedShards"], "3,7", "{:#}", first["status"]);
    assert_eq!(condition(&first, "Degraded").unwrap().0, "True");

    drop(failing);
    let mut rerun = manifest.clone();
    rerun["spec"]["rerun"] = json!({ "token": "fix-3-7" });
    apply(ns.name(), &rerun);
    ctl.kill();
    ctl.restart();
    wait_until(
        "the rerun's consolidation Job",
        Duration::from_secs(90),
        || (watch.snapshot().uids("consolidation") == 2).then_some(()),
        || ctl.log_tail(),
    );
    ctl.kill();
    ctl.restart();
    let done = wait_batch(ns.name(), "daily", &ctl, Duration::from_secs(90), "attempt 2 Succeeded", |b| {
        phase(b) == "Succeeded" && b["status"]["attempts"][1]["outcome"] == "Succeeded"
    });
    let st = &done["status"];
    assert_eq!(st["progress"], "120/120", "{st:#}");
    assert!(st["failedShards"].is_null(), "{st:#}");
    assert_eq!(condition(&done, "Degraded").unwrap().0, "False");
    assert_eq!(st["attempts"][1]["shards"], "3,7");
    let rec = watch.snapshot();
    // Workers: the first Indexed Job and one Job per rerun shard.
    let mut shard_jobs: Vec<String> = support::kubectl(&["get", "jobs", "-n", ns.name(), "-o", "name"])
        .lines()
        .filter(|l| l.contains("-r2-workers-"))
        .map(String::from)
        .collect();
    shard_jobs.sort();
    assert_eq!(shard_jobs, ["job.batch/daily-r2-workers-3", "job.batch/daily-r2-workers-7"]);
    for (stage, jobs) in [("workers", 3), ("consolidation", 2), ("export", 2)] {
        assert_eq!(rec.uids(stage), jobs, "{stage}: Jobs by UID {:?}", rec.uids_by_stage);
    }
    for shard in [3, 7] {
        let job = support::kubectl_json(&["get", "job", &format!("daily-r2-workers-{shard}"), "-n", ns.name()]);
        let env = job["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
        let index = env.iter().find(|e| e["name"] == "SHARD_INDEX").unwrap();
        assert_eq!(index["value"], shard.to_string(), "shard {shard}: {index}");
    }
}
