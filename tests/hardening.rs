//! What a user, a node or a restart may do to a running batch, on the real control plane: pods
//! that never finish terminating, stage Jobs deleted early, hand-made Jobs with our names,
//! suspending a one-shot stage, templates the apiserver refuses, deadlines at both ends of the
//! admitted range. Each test names the behaviour it pins down.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::batch::{apply, batch, batch_json, condition, phase, wait_batch};
use support::controller::Controller;
use support::watch::JobWatch;
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json, kubectl_output, kubectl_stdin, stages, wait_until};

fn stalled_reason(b: &serde_json::Value) -> String {
    condition(b, "Stalled").filter(|(s, _)| s == "True").map(|(_, r)| r).unwrap_or_default()
}

/// Waits until the Job `name` exists and returns it.
fn wait_job(ns: &str, name: &str, ctl: &Controller) -> serde_json::Value {
    wait_until(
        &format!("Job {ns}/{name} to exist"),
        Duration::from_secs(60),
        || {
            let out = kubectl_output(&["get", "job", name, "-n", ns, "-o", "json"]);
            out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
        },
        || ctl.log_tail(),
    )
}

fn job_exists(ns: &str, name: &str) -> bool {
    kubectl_output(&["get", "job", name, "-n", ns]).status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_stop_ends_even_when_stopped_pods_never_finish_terminating() {
    ensure_crd();
    let ns = TestNamespace::new("dead-node");
    let ctl = Controller::start("dead-node", ns.name(), &[]);
    // 10 shards; 8 finish, shards 8 and 9 straggle for 10 minutes. Quorum 50 %, 2 s grace: then
    // the stragglers are stopped, and their node never confirms the deletion.
    let b = batch(
        "dead-node",
        json!({ "targetCount": 10, "itemsPerShard": 1, "completion": { "minSucceededPercent": 50, "graceSeconds": 2 } }),
        json!({ "annotations": {
            stages::STRAGGLE_INDEXES: "8,9", stages::STRAGGLE_FOR: "10m", stages::NEVER_TERMINATE: "yes"
        } }),
    );
    apply(ns.name(), &b);
    let since = Instant::now();
    let done = wait_batch(ns.name(), "dead-node", &ctl, Duration::from_secs(120), "Succeeded", |b| {
        matches!(phase(b), "Succeeded" | "Failed")
    });
    eprintln!("batch finished {:.1} s after it was applied", since.elapsed().as_secs_f64());
    assert_eq!(phase(&done), "Succeeded", "{}", done["status"]);
    assert!(
        done["status"]["workers"]["stopTime"].is_string(),
        "the workers were not stopped early: {}",
        done["status"]
    );
    assert_eq!(done["status"]["failedShards"], "8-9");
    assert_eq!(done["status"]["items"]["succeeded"], 8);
    // The stopped pods are still there, terminating: the batch did not wait for them.
    let pods = kubectl_json(&["get", "pods", "-n", ns.name(), "-l", "predictions.dev/stage=workers"]);
    let terminating =
        pods["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["deletionTimestamp"].is_string()).count();
    assert!(terminating >= 1, "expected pods stuck terminating: {pods}");
    let _ = kubectl_output(&["delete", "pods", "--all", "-n", ns.name(), "--grace-period=0", "--force"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_job_deleted_by_a_zero_ttl_before_its_outcome_was_recorded_still_counts_once() {
    ensure_crd();
    let ns = TestNamespace::new("ttl-zero");
    let watch = JobWatch::start(ns.name()).await;
    let mut ctl = Controller::start("ttl-zero", ns.name(), &[]);
    let b = batch("ttl-zero", json!({ "targetCount": 8, "itemsPerShard": 2 }), json!({}));
    apply(ns.name(), &b);
    let workers = "ttl-zero-workers";
    wait_job(ns.name(), workers, &ctl);
    // The controller is down while a policy sets a 0 s TTL on the worker Job: the TTL controller
    // deletes the Job the moment it finishes, before anyone recorded its outcome.
    ctl.kill();
    kubectl(&[
        "patch",
        "job",
        workers,
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"spec":{"ttlSecondsAfterFinished":0}}"#,
    ]);
    wait_until(
        "the TTL controller to delete the finished worker Job",
        Duration::from_secs(60),
        || {
            let out = kubectl_output(&["get", "job", workers, "-n", ns.name(), "-o", "json"]);
            if !out.status.success() {
                return Some("gone");
            }
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            j["metadata"]["deletionTimestamp"].is_string().then_some("held by our finalizer")
        },
        || kubectl(&["get", "jobs,pods", "-n", ns.name()]),
    );
    ctl.restart();
    // The consolidation Job gets the same treatment right after it is created, controller running.
    let consolidate = "ttl-zero-consolidate";
    wait_job(ns.name(), consolidate, &ctl);
    let _ = kubectl_output(&[
        "patch",
        "job",
        consolidate,
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"spec":{"ttlSecondsAfterFinished":0}}"#,
    ]);
    let done = wait_batch(ns.name(), "ttl-zero", &ctl, Duration::from_secs(90), "finished", |b| {
        matches!(phase(b), "Succeeded" | "Failed")
    });
    assert_eq!(phase(&done), "Succeeded", "reason {}: {}", stalled_reason(&done), done["status"]);
    assert_eq!(done["status"]["progress"], "8/8");
    watch.snapshot().assert_each_stage_once();
    // Once recorded, the finalizer goes and the TTL deletions complete.
    wait_until(
        "the TTL-deleted Jobs to be gone",
        Duration::from_secs(30),
        || (!job_exists(ns.name(), workers) && !job_exists(ns.name(), consolidate)).then_some(()),
        || kubectl(&["get", "jobs", "-n", ns.name(), "-o", "yaml"]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_after_finished_deletes_only_the_jobs_the_batch_owns() {
    ensure_crd();
    let ns = TestNamespace::new("ttl-owned");
    let ctl = Controller::start("ttl-owned", ns.name(), &[]);
    let b =
        batch("ttl-owned", json!({ "targetCount": 4, "itemsPerShard": 2, "ttlSecondsAfterFinished": 6 }), json!({}));
    apply(ns.name(), &b);
    wait_batch(ns.name(), "ttl-owned", &ctl, Duration::from_secs(60), "Succeeded", |b| phase(b) == "Succeeded");
    // Someone replaces the export Job by a hand-made rerun of the same name before the TTL.
    kubectl(&["delete", "job", "ttl-owned-export", "-n", ns.name(), "--wait=true"]);
    let hand_made = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "ttl-owned-export" },
        "spec": { "suspend": true, "template": { "spec": {
            "restartPolicy": "Never", "containers": [{ "name": "e", "image": "example.com/export:1" }] } } }
    });
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &hand_made.to_string());
    wait_until(
        "the TTL to delete the batch's own Jobs",
        Duration::from_secs(60),
        || {
            (!job_exists(ns.name(), "ttl-owned-workers") && !job_exists(ns.name(), "ttl-owned-consolidate"))
                .then_some(())
        },
        || format!("{}\n{}", kubectl(&["get", "jobs", "-n", ns.name()]), ctl.log_tail()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let job = kubectl_json(&["get", "job", "ttl-owned-export", "-n", ns.name()]);
    assert!(job["metadata"]["deletionTimestamp"].is_null(), "the hand-made Job was deleted: {job}");
    assert!(job["metadata"]["ownerReferences"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_during_consolidation_holds_the_export_and_consolidation_runs_once() {
    ensure_crd();
    let ns = TestNamespace::new("suspend-cons");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("suspend-cons", ns.name(), &[]);
    let mut b = batch("suspend-cons", json!({ "targetCount": 4, "itemsPerShard": 2 }), json!({}));
    b["spec"]["consolidation"]["template"]["metadata"] = json!({ "annotations": { stages::RUN_FOR: "8s" } });
    apply(ns.name(), &b);
    wait_job(ns.name(), "suspend-cons-consolidate", &ctl);
    kubectl(&["patch", "pb", "suspend-cons", "-n", ns.name(), "--type=merge", "-p", r#"{"spec":{"suspend":true}}"#]);
    let held = wait_batch(ns.name(), "suspend-cons", &ctl, Duration::from_secs(60), "consolidation done, held", |b| {
        b["status"]["consolidation"]["state"] == "Succeeded"
    });
    assert_eq!(phase(&held), "Suspended");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!job_exists(ns.name(), "suspend-cons-export"), "export started while suspended");
    let cons = kubectl_json(&["get", "job", "suspend-cons-consolidate", "-n", ns.name()]);
    assert_eq!(cons["status"]["succeeded"], 1, "{}", cons["status"]);
    assert!(cons["status"]["failed"].is_null() || cons["status"]["failed"] == 0, "pod was stopped: {}", cons["status"]);
    assert_ne!(cons["spec"]["suspend"], true, "the one-shot stage was suspended");
    kubectl(&["patch", "pb", "suspend-cons", "-n", ns.name(), "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    wait_batch(ns.name(), "suspend-cons", &ctl, Duration::from_secs(60), "Succeeded", |b| phase(b) == "Succeeded");
    watch.snapshot().assert_each_stage_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_template_the_apiserver_refuses_fails_the_batch_before_any_worker_runs() {
    ensure_crd();
    let ns = TestNamespace::new("dry-run");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("dry-run", ns.name(), &[]);
    let mut b = batch("dry-run", json!({ "targetCount": 4, "itemsPerShard": 2 }), json!({}));
    // Admitted by the CRD schema (a string), refused by the apiserver (not a DNS label).
    b["spec"]["export"]["template"]["spec"]["containers"][0]["name"] = json!("Not_A_DNS_Label");
    apply(ns.name(), &b);
    let failed = wait_batch(ns.name(), "dry-run", &ctl, Duration::from_secs(60), "Failed", |b| phase(b) == "Failed");
    assert_eq!(stalled_reason(&failed), "JobRejected");
    let message = condition_message(&failed, "Stalled");
    assert!(message.contains("export Job") && message.contains("Not_A_DNS_Label"), "{message}");
    std::thread::sleep(Duration::from_secs(1));
    let rec = watch.snapshot();
    assert_eq!(rec.uids("workers"), 0, "a worker Job was created: {:?}", rec.uids_by_stage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_already_past_at_creation_fails_without_any_job() {
    ensure_crd();
    let ns = TestNamespace::new("past-deadline");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("past-deadline", ns.name(), &[]);
    let b = batch("past-deadline", json!({ "completion": { "completeBy": "2020-01-01T00:00:00Z" } }), json!({}));
    apply(ns.name(), &b);
    let failed =
        wait_batch(ns.name(), "past-deadline", &ctl, Duration::from_secs(60), "Failed", |b| phase(b) == "Failed");
    assert_eq!(stalled_reason(&failed), "DeadlineExceeded");
    std::thread::sleep(Duration::from_secs(1));
    assert!(watch.snapshot().uids_by_stage.is_empty(), "Jobs were created: {:?}", watch.snapshot().uids_by_stage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_complete_by_the_crd_admits_is_understood_up_to_the_end_of_year_9999() {
    ensure_crd();
    let ns = TestNamespace::new("far-deadline");
    let ctl = Controller::start("far-deadline", ns.name(), &[]);
    let far = ["9999-12-31T23:59:59.999999999-23:59", "9999-12-31t23:59:59z"];
    for (i, t) in far.iter().enumerate() {
        let name = format!("far-{i}");
        let b =
            batch(&name, json!({ "targetCount": 2, "itemsPerShard": 1, "completion": { "completeBy": t } }), json!({}));
        apply(ns.name(), &b);
    }
    for (i, t) in far.iter().enumerate() {
        let name = format!("far-{i}");
        let done = wait_batch(ns.name(), &name, &ctl, Duration::from_secs(90), "finished", |b| {
            matches!(phase(b), "Succeeded" | "Failed") || stalled_reason(b) == "InvalidSpec"
        });
        assert_eq!(phase(&done), "Succeeded", "{t}: {}", done["status"]);
    }
    assert!(batch_json(ns.name(), "far-0").is_some());
}

fn condition_message(b: &serde_json::Value, type_: &str) -> String {
    b["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}
