//! End-to-end tests of the controller (issue 5) against the real control plane: the release
//! binary runs as a child process scoped to each test's namespace, Jobs run on kwok nodes
//! through the real Job controller, and each test keeps its own watch of the Jobs to count
//! them by UID.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::batch::{apply, batch, batch_json, condition, phase, wait_batch};
use support::controller::Controller;
use support::watch::JobWatch;
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json, kubectl_output, kubectl_stdin, stages, wait_until};

fn get_pb_row(ns: &str, name: &str) -> String {
    kubectl(&["get", "pb", name, "-n", ns, "--no-headers"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_runs_each_stage_once_in_order() {
    ensure_crd();
    let ns = TestNamespace::new("happy");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("happy", ns.name(), &[]);
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/batch.yaml")).unwrap();
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &manifest);

    let out =
        kubectl_output(&["wait", "--for=condition=Ready", "pb/nba-2026-01-02", "-n", ns.name(), "--timeout=120s"]);
    assert!(out.status.success(), "kubectl wait failed: {}\n{}", String::from_utf8_lossy(&out.stderr), ctl.log_tail());
    let row = get_pb_row(ns.name(), "nba-2026-01-02");
    assert!(row.contains("Succeeded") && row.contains("120/120"), "kubectl get pb: {row}");

    let rec = watch.snapshot();
    for stage in ["workers", "consolidation", "export"] {
        assert_eq!(rec.uids(stage), 1, "{stage} Jobs seen: {:?}", rec.uids_by_stage);
    }
    let order: Vec<&str> = rec.created.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(order, ["workers", "consolidation", "export"]);
    // Each stage starts only after the previous one finished.
    assert!(rec.finished_at("workers").unwrap() <= rec.created_at("consolidation").unwrap());
    assert!(rec.finished_at("consolidation").unwrap() <= rec.created_at("export").unwrap());

    let b = batch_json(ns.name(), "nba-2026-01-02").unwrap();
    assert_eq!(b["status"]["shards"]["total"], 30);
    assert_eq!(b["status"]["succeededShards"], "0-29");
    assert_eq!(b["status"]["observedGeneration"], b["metadata"]["generation"]);
    assert_eq!(condition(&b, "Degraded").unwrap().0, "False");
    assert_eq!(condition(&b, "Reconciling").unwrap().0, "False");

    // The worker env contract reached the pods' Job template.
    let job = kubectl_json(&["get", "job", "nba-2026-01-02-workers", "-n", ns.name()]);
    let env: Vec<String> = job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    for var in ["PREDICTION_BATCH", "GAME_DATE", "TARGET_COUNT", "SHARD_COUNT", "ITEMS_PER_SHARD", "SHARD_INDEX"] {
        assert!(env.contains(&var.to_string()), "{var} missing from {env:?}");
    }
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["metadata"]["labels"]["predictions.dev/stage"], "workers");
    assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);

    // An idle finished batch costs no writes: its resourceVersion stays put.
    let rv = b["metadata"]["resourceVersion"].clone();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(batch_json(ns.name(), "nba-2026-01-02").unwrap()["metadata"]["resourceVersion"], rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_shards_within_quorum_end_degraded() {
    ensure_crd();
    let ns = TestNamespace::new("quorum90");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("quorum90", ns.name(), &[]);
    let b = batch(
        "partial",
        json!({ "worker": { "backoffLimitPerShard": 1 }, "completion": { "minSucceededPercent": 90, "graceSeconds": 120 } }),
        json!({ "labels": { stages::FAIL_LABEL: stages::FAIL_SHARDS_3_7 } }),
    );
    apply(ns.name(), &b);
    let done =
        wait_batch(ns.name(), "partial", &ctl, Duration::from_secs(150), "Succeeded", |b| phase(b) == "Succeeded");
    assert_eq!(condition(&done, "Ready").unwrap().0, "True");
    assert_eq!(condition(&done, "Degraded").unwrap(), ("True".into(), "ShardsFailed".into()));
    assert_eq!(done["status"]["failedShards"], "3,7");
    assert_eq!(done["status"]["items"]["failed"], 8);
    assert_eq!(done["status"]["progress"], "112/120");
    let row = get_pb_row(ns.name(), "partial");
    assert!(row.split_whitespace().nth(4) == Some("8"), "FAILED column should be 8: {row}");
    // Each failing shard was retried once by the Job controller before it counted as failed.
    let job = kubectl_json(&["get", "job", "partial-workers", "-n", ns.name()]);
    assert_eq!(job["status"]["failedIndexes"], "3,7");
    assert!(job["status"]["failed"].as_i64().unwrap() >= 4, "{}", job["status"]);
    // Consolidation got the fixed result.
    let c = kubectl_json(&["get", "job", "partial-consolidate", "-n", ns.name()]);
    let env = c["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let get = |n: &str| env.iter().find(|e| e["name"] == n).map(|e| e["value"].clone()).unwrap();
    assert_eq!(get("FAILED_SHARDS"), "3,7");
    assert_eq!(get("SUCCEEDED_ITEMS"), "112");
    assert_eq!(watch.snapshot().uids("consolidation"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_shards_below_quorum_fail_without_consolidation() {
    ensure_crd();
    let ns = TestNamespace::new("quorum100");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("quorum100", ns.name(), &[]);
    let b = batch("strict", json!({}), json!({ "labels": { stages::FAIL_LABEL: stages::FAIL_SHARDS_3_7 } }));
    apply(ns.name(), &b);
    let done = wait_batch(ns.name(), "strict", &ctl, Duration::from_secs(90), "Failed", |b| phase(b) == "Failed");
    assert_eq!(condition(&done, "Stalled").unwrap().0, "True");
    assert_eq!(condition(&done, "Ready").unwrap().0, "False");
    // Give a wrong controller time to do the wrong thing before checking it didn't.
    std::thread::sleep(Duration::from_secs(3));
    let rec = watch.snapshot();
    assert_eq!(rec.uids("consolidation"), 0, "no consolidation Job may ever exist: {rec:?}");
    assert_eq!(rec.uids("export"), 0);
    let out = kubectl_output(&["wait", "--for=condition=Ready", "pb/strict", "-n", ns.name(), "--timeout=1s"]);
    assert!(!out.status.success(), "a failed batch must not be Ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_then_stragglers_are_stopped() {
    ensure_crd();
    let ns = TestNamespace::new("grace");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("grace", ns.name(), &[]);
    let b = batch(
        "grace",
        json!({ "completion": { "minSucceededPercent": 90, "graceSeconds": 6 } }),
        json!({ "annotations": { stages::STRAGGLE_INDEXES: "5", stages::STRAGGLE_FOR: "10m" } }),
    );
    apply(ns.name(), &b);
    let quorum = wait_batch(ns.name(), "grace", &ctl, Duration::from_secs(90), "quorum reached", |b| {
        b["status"]["quorumTime"].is_string()
    });
    let quorum_seen = Instant::now();
    assert_eq!(phase(&quorum), "Running", "consolidation must wait for the grace period");
    let done = wait_batch(ns.name(), "grace", &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    let rec = watch.snapshot();
    let waited = rec.created_at("consolidation").unwrap().saturating_duration_since(quorum_seen);
    assert!(waited >= Duration::from_secs(4), "consolidation started {waited:?} after the quorum; grace is 6 s");
    assert_eq!(done["status"]["failedShards"], "5", "the straggler counts as failed");
    assert_eq!(done["status"]["workers"]["state"], "Succeeded");
    assert_eq!(condition(&done, "Degraded").unwrap().0, "True");
    let job = kubectl_json(&["get", "job", "grace-workers", "-n", ns.name()]);
    assert_eq!(job["spec"]["suspend"], true, "the straggler's Job is suspended");
    assert_eq!(job["status"]["active"].as_i64().unwrap_or(0), 0, "no straggler pod left running");
    assert_eq!(rec.uids("consolidation"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_by_consolidates_with_quorum_and_fails_without() {
    ensure_crd();
    let ns = TestNamespace::new("deadline");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("deadline", ns.name(), &[]);
    // Quorum met (one straggler), long grace: only the deadline can end the wait.
    apply(
        ns.name(),
        &batch(
            "met",
            json!({ "completion": { "minSucceededPercent": 90, "graceSeconds": 3600, "completeBy": "2099-01-01T00:00:00Z" } }),
            json!({ "annotations": { stages::STRAGGLE_INDEXES: "5", stages::STRAGGLE_FOR: "10m" } }),
        ),
    );
    // Quorum never met: every pod runs for 10 minutes.
    apply(
        ns.name(),
        &batch(
            "unmet",
            json!({ "completion": { "minSucceededPercent": 90, "completeBy": "2099-01-01T00:00:00Z" } }),
            json!({ "annotations": { stages::RUN_FOR: "10m" } }),
        ),
    );
    wait_batch(ns.name(), "met", &ctl, Duration::from_secs(90), "quorum reached", |b| {
        b["status"]["quorumTime"].is_string()
    });
    wait_batch(ns.name(), "unmet", &ctl, Duration::from_secs(60), "running", |b| phase(b) == "Running");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(phase(&batch_json(ns.name(), "met").unwrap()), "Running", "waiting for the grace period");

    // completeBy is mutable: move tip-off to now.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    for name in ["met", "unmet"] {
        let patch = json!({ "spec": { "completion": { "completeBy": now } } }).to_string();
        kubectl(&["patch", "pb", name, "-n", ns.name(), "--type=merge", "-p", &patch]);
    }
    let met = wait_batch(ns.name(), "met", &ctl, Duration::from_secs(60), "Succeeded", |b| phase(b) == "Succeeded");
    assert_eq!(met["status"]["failedShards"], "5");
    let unmet = wait_batch(ns.name(), "unmet", &ctl, Duration::from_secs(60), "Failed", |b| phase(b) == "Failed");
    assert_eq!(condition(&unmet, "Stalled").unwrap(), ("True".into(), "DeadlineExceeded".into()));
    let rec = watch.snapshot();
    assert_eq!(rec.uids("consolidation"), 1, "only the batch with quorum consolidates: {:?}", rec.uids_by_stage);
    let job = kubectl_json(&["get", "job", "unmet-workers", "-n", ns.name()]);
    assert_eq!(job["spec"]["suspend"], true, "a failed batch leaves no pods running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_controller_never_repeats_a_stage() {
    ensure_crd();
    let ns = TestNamespace::new("restart");
    let watch = JobWatch::start(ns.name()).await;
    let mut ctl = Controller::start("restart", ns.name(), &[]);
    // Slow enough workers to kill the controller mid-stage: 3 waves of ~3 s.
    apply(ns.name(), &batch("restart", json!({}), json!({ "annotations": { stages::RUN_FOR: "3s" } })));
    wait_batch(ns.name(), "restart", &ctl, Duration::from_secs(60), "workers running", |b| {
        b["status"]["shards"]["active"].as_u64().unwrap_or(0) > 0
    });
    ctl.kill();
    std::thread::sleep(Duration::from_secs(2));
    ctl.restart();
    // Kill again the moment the consolidation Job appears (before its UID may be in status).
    wait_until(
        "the consolidation Job",
        Duration::from_secs(90),
        || watch.snapshot().created_at("consolidation").map(|_| ()),
        || ctl.log_tail(),
    );
    ctl.kill();
    std::thread::sleep(Duration::from_secs(1));
    ctl.restart();
    let done =
        wait_batch(ns.name(), "restart", &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    assert_eq!(done["status"]["progress"], "120/120");
    let rec = watch.snapshot();
    for stage in ["workers", "consolidation", "export"] {
        assert_eq!(rec.uids(stage), 1, "{stage}: Jobs by UID {:?}", rec.uids_by_stage);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_continue_where_they_stopped() {
    ensure_crd();
    let ns = TestNamespace::new("suspend");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("suspend", ns.name(), &[]);
    apply(ns.name(), &batch("pause", json!({}), json!({ "annotations": { stages::RUN_FOR: "3s" } })));
    wait_batch(ns.name(), "pause", &ctl, Duration::from_secs(60), "some shards done", |b| {
        b["status"]["shards"]["succeeded"].as_u64().unwrap_or(0) >= 10
    });
    kubectl(&["patch", "pb", "pause", "-n", ns.name(), "--type=merge", "-p", r#"{"spec":{"suspend":true}}"#]);
    let suspended =
        wait_batch(ns.name(), "pause", &ctl, Duration::from_secs(30), "Suspended", |b| phase(b) == "Suspended");
    let at = suspended["status"]["shards"]["succeeded"].as_u64().unwrap();
    wait_until(
        "the worker Job to have no active pods",
        Duration::from_secs(30),
        || {
            let j = kubectl_json(&["get", "job", "pause-workers", "-n", ns.name()]);
            (j["spec"]["suspend"] == true && j["status"]["active"].as_i64().unwrap_or(0) == 0).then_some(())
        },
        || ctl.log_tail(),
    );
    std::thread::sleep(Duration::from_secs(4));
    let still = batch_json(ns.name(), "pause").unwrap();
    assert_eq!(phase(&still), "Suspended");
    assert!(still["status"]["shards"]["succeeded"].as_u64().unwrap() >= at);
    kubectl(&["patch", "pb", "pause", "-n", ns.name(), "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    let done = wait_batch(ns.name(), "pause", &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    assert_eq!(done["status"]["progress"], "120/120");
    assert_eq!(watch.snapshot().uids("workers"), 1, "resuming reuses the same Job");
}

/// The cache drops the pod templates of suspended batches (memory, issue 9): a batch created
/// suspended must still run from its own templates once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_created_suspended_runs_from_its_templates_when_resumed() {
    ensure_crd();
    let ns = TestNamespace::new("coldstart");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("coldstart", ns.name(), &[]);
    apply(ns.name(), &batch("cold", json!({ "suspend": true, "targetCount": 8 }), json!({})));
    wait_batch(ns.name(), "cold", &ctl, Duration::from_secs(30), "Suspended", |b| phase(b) == "Suspended");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(watch.snapshot().uids("workers"), 0, "a suspended batch creates no Job");
    kubectl(&["patch", "pb", "cold", "-n", ns.name(), "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    wait_batch(ns.name(), "cold", &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    for (job, image) in [
        ("cold-workers", "example.com/worker:1"),
        ("cold-consolidate", "example.com/consolidate:1"),
        ("cold-export", "example.com/export:1"),
    ] {
        let j = kubectl_json(&["get", "job", job, "-n", ns.name()]);
        assert_eq!(j["spec"]["template"]["spec"]["containers"][0]["image"], image, "{job} is built from the spec");
    }
    let workers = kubectl_json(&["get", "job", "cold-workers", "-n", ns.name()]);
    assert_eq!(workers["spec"]["template"]["metadata"]["labels"]["app"], "prediction-worker");
}

/// Issue 19: the caches are filled by streaming lists where the apiserver serves them and by pages
/// otherwise (`--initial-list`). Whichever way a restarted controller lists, it must see every
/// batch, including those changed while it was down, and run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_fill_their_caches_by_streaming_or_paged_lists_and_miss_no_batch() {
    ensure_crd();
    let ns = TestNamespace::new("lists");
    let names = ["l-1", "l-2", "l-3", "l-4", "l-5"];
    for name in names {
        apply(ns.name(), &batch(name, json!({ "suspend": true, "targetCount": 4 }), json!({})));
    }
    let resume = |name: &str| {
        kubectl(&["patch", "pb", name, "-n", ns.name(), "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    };
    let t = Instant::now();

    // Pages of 2: three pages, and every batch gets its pass.
    let mut ctl = Controller::start("lists-paged", ns.name(), &["--initial-list", "paged", "--list-page-size", "2"]);
    ctl.wait_for_log("initial_list=paged (2 per page)", Duration::from_secs(30));
    for name in names {
        wait_batch(ns.name(), name, &ctl, Duration::from_secs(30), "Suspended", |b| phase(b) == "Suspended");
    }
    assert!(ctl.terminate(Duration::from_secs(30)).success());

    // Two batches resumed while no controller runs; `auto` chooses streaming lists on this
    // apiserver (v1.35 serves them) and the restarted controller runs both.
    resume("l-1");
    resume("l-2");
    let mut ctl = Controller::start("lists-auto", ns.name(), &[]);
    ctl.wait_for_log("initial_list=streaming", Duration::from_secs(30));
    for name in ["l-1", "l-2"] {
        wait_batch(ns.name(), name, &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    }
    assert!(ctl.terminate(Duration::from_secs(30)).success());

    // An apiserver without WatchList refuses the probe: `auto` falls back to pages of 100 and
    // says why, and the caches still fill (a batch resumed after the start runs).
    let mut ctl = Controller::start("lists-refused", ns.name(), &["--inject-no-streaming-lists"]);
    ctl.wait_for_log("initial_list=paged (100 per page)", Duration::from_secs(30));
    ctl.wait_for_log("caches synced", Duration::from_secs(30));
    let log = ctl.log_text();
    assert!(log.contains("sendInitialEvents is forbidden"), "the fallback names the refusal:\n{}", ctl.log_tail());
    assert!(log.contains("using paged lists"), "{}", ctl.log_tail());
    resume("l-3");
    wait_batch(ns.name(), "l-3", &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    for name in ["l-4", "l-5"] {
        assert_eq!(phase(&batch_json(ns.name(), name).unwrap()), "Suspended", "{name}");
    }
    println!("three restarts (paged 2, auto → streaming, auto → paged 100) in {:.1?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_batch_collects_its_jobs_and_pods() {
    ensure_crd();
    let ns = TestNamespace::new("delete");
    let ctl = Controller::start("delete", ns.name(), &[]);
    apply(ns.name(), &batch("gone", json!({}), json!({ "annotations": { stages::RUN_FOR: "30s" } })));
    wait_batch(ns.name(), "gone", &ctl, Duration::from_secs(60), "workers running", |b| {
        b["status"]["shards"]["active"].as_u64().unwrap_or(0) > 0
    });
    kubectl(&["delete", "pb", "gone", "-n", ns.name(), "--wait=true", "--timeout=60s"]);
    wait_until(
        "the garbage collector to remove the batch's Jobs and pods",
        Duration::from_secs(90),
        || {
            let jobs = kubectl(&["get", "jobs", "-n", ns.name(), "-o", "name"]);
            let pods = kubectl(&["get", "pods", "-n", ns.name(), "-o", "name"]);
            (jobs.trim().is_empty() && pods.trim().is_empty()).then_some(())
        },
        || String::from_utf8_lossy(&kubectl_output(&["get", "jobs,pods", "-n", ns.name()]).stdout).into_owned(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_deleted_worker_job_fails_the_batch_instead_of_rerunning() {
    ensure_crd();
    let ns = TestNamespace::new("jobdeleted");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("jobdeleted", ns.name(), &[]);
    apply(ns.name(), &batch("victim", json!({}), json!({ "annotations": { stages::RUN_FOR: "30s" } })));
    wait_batch(ns.name(), "victim", &ctl, Duration::from_secs(60), "workers recorded", |b| {
        b["status"]["workers"]["jobUid"].is_string()
    });
    kubectl(&["delete", "job", "victim-workers", "-n", ns.name(), "--wait=false"]);
    let failed = wait_batch(ns.name(), "victim", &ctl, Duration::from_secs(60), "Failed", |b| phase(b) == "Failed");
    assert_eq!(condition(&failed, "Stalled").unwrap(), ("True".into(), "JobDeleted".into()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(watch.snapshot().uids("workers"), 1, "the worker stage must not be re-run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_template_and_foreign_job_stall_the_batch() {
    ensure_crd();
    let ns = TestNamespace::new("stall");
    let ctl = Controller::start("stall", ns.name(), &[]);
    // Passes the CRD schema, refused by the Job's validation: a container name must be a DNS label.
    let mut bad = batch("badtemplate", json!({}), json!({}));
    bad["spec"]["worker"]["template"]["spec"]["containers"][0]["name"] = json!("Not_A_DNS_Label");
    apply(ns.name(), &bad);
    let b = wait_batch(ns.name(), "badtemplate", &ctl, Duration::from_secs(60), "Stalled", |b| {
        condition(b, "Stalled").is_some_and(|c| c.0 == "True")
    });
    assert_eq!(condition(&b, "Stalled").unwrap().1, "JobRejected");
    let msg = b["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Stalled").unwrap()["message"]
        .clone();
    assert!(msg.as_str().unwrap().contains("Not_A_DNS_Label"), "apiserver message in the condition: {msg}");
    let events = kubectl(&["get", "events", "-n", ns.name(), "--field-selector", "involvedObject.name=badtemplate"]);
    assert!(events.contains("WorkersFailed") || events.contains("BatchFailed"), "{events}");

    // A Job with our name that someone else owns is never adopted.
    kubectl_stdin(
        &["apply", "-n", ns.name(), "-f", "-"],
        &json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "taken-workers" },
            "spec": { "suspend": true, "template": { "spec": { "restartPolicy": "Never", "containers": [{ "name": "x", "image": "x" }] } } }
        })
        .to_string(),
    );
    apply(ns.name(), &batch("taken", json!({}), json!({})));
    let t = wait_batch(ns.name(), "taken", &ctl, Duration::from_secs(60), "Stalled", |b| {
        condition(b, "Stalled").is_some_and(|c| c.0 == "True")
    });
    assert_eq!(condition(&t, "Stalled").unwrap().1, "JobNameConflict");
    let job = kubectl_json(&["get", "job", "taken-workers", "-n", ns.name()]);
    assert!(job["metadata"]["ownerReferences"].is_null(), "the foreign Job was adopted: {}", job["metadata"]);
}
