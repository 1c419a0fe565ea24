//! The loader stage end to end (issue 16) on the real control plane: a kwok stage writes the
//! loader pod's termination message, the controller reads it once, records the count and
//! `itemsRef` in status and fans out; a day with no items, a garbled message, and a controller
//! killed between the loader and the workers.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::batch::{apply, batch, batch_json, condition, phase, wait_batch};
use support::controller::Controller;
use support::watch::JobWatch;
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json, kubectl_stdin, stages, wait_until};

/// A batch like examples/batch.yaml whose count comes from a loader that reports `message`.
fn loaded_batch(name: &str, message: &str, spec_patch: Value) -> Value {
    let mut b = batch(name, spec_patch, json!({}));
    let spec = b["spec"].as_object_mut().unwrap();
    spec.remove("targetCount");
    spec.insert(
        "loader".into(),
        json!({
            "template": {
                "metadata": { "annotations": { stages::TERMINATION_MESSAGE: message } },
                "spec": { "containers": [{ "name": "load", "image": "example.com/loader:1" }] }
            }
        }),
    );
    b
}

/// The env of the first container of Job `name`, as name → value.
fn job_env(ns: &str, name: &str) -> std::collections::BTreeMap<String, String> {
    let job = kubectl_json(&["get", "job", name, "-n", ns]);
    job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            // An empty value is omitted on the wire.
            let from = if e["valueFrom"].is_object() { "<from field>" } else { "" };
            (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap_or(from).to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_s_count_and_list_reach_every_stage() {
    ensure_crd();
    let ns = TestNamespace::new("loader-38");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("loader-38", ns.name(), &[]);
    let message = r#"{"targetCount": 38, "itemsRef": "gs://bucket/2026-01-01/players.json"}"#;
    apply(ns.name(), &loaded_batch("holiday", message, json!({})));

    let done =
        wait_batch(ns.name(), "holiday", &ctl, Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    let st = &done["status"];
    assert_eq!(st["items"]["target"], 38, "{st:#}");
    assert_eq!(st["progress"], "38/38");
    assert_eq!(st["shards"]["total"], 10, "38 items in shards of 4");
    assert_eq!(st["itemsRef"], "gs://bucket/2026-01-01/players.json");
    assert_eq!(st["loader"]["state"], "Succeeded");
    assert_eq!(st["loader"]["message"], "38 items");
    assert_eq!(condition(&done, "Ready").unwrap().0, "True");

    let rec = watch.snapshot();
    for stage in ["loader", "workers", "consolidation", "export"] {
        assert_eq!(rec.uids(stage), 1, "{stage} Jobs seen: {:?}", rec.uids_by_stage);
    }
    let order: Vec<&str> = rec.created.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(order, ["loader", "workers", "consolidation", "export"]);
    assert!(rec.finished_at("loader").unwrap() <= rec.created_at("workers").unwrap());

    let workers = job_env(ns.name(), "holiday-workers");
    assert_eq!(workers["TARGET_COUNT"], "38");
    assert_eq!(workers["SHARD_COUNT"], "10");
    assert_eq!(workers["ITEMS_REF"], "gs://bucket/2026-01-01/players.json");
    assert!(workers.contains_key("SHARD_INDEX"));
    let job = kubectl_json(&["get", "job", "holiday-workers", "-n", ns.name()]);
    assert_eq!(job["spec"]["completions"], 10);
    for stage_job in ["holiday-consolidate", "holiday-export"] {
        let env = job_env(ns.name(), stage_job);
        assert_eq!(env["ITEMS_REF"], "gs://bucket/2026-01-01/players.json", "{stage_job}");
        assert_eq!(env["TARGET_COUNT"], "38", "{stage_job}");
        assert_eq!(env["SUCCEEDED_ITEMS"], "38", "{stage_job}");
    }
    let loader = job_env(ns.name(), "holiday-loader");
    assert_eq!(loader.keys().collect::<Vec<_>>(), ["GAME_DATE", "PREDICTION_BATCH"], "the loader gets no count");
    let row = kubectl(&["get", "pb", "holiday", "-n", ns.name(), "--no-headers"]);
    assert!(row.contains("Succeeded") && row.contains("38/38"), "kubectl get pb: {row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_with_no_items_succeeds_without_a_worker_pod() {
    ensure_crd();
    let ns = TestNamespace::new("loader-empty");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("loader-empty", ns.name(), &[]);
    // From the loader, default policy: nothing after it runs.
    apply(ns.name(), &loaded_batch("empty", r#"{"targetCount": 0}"#, json!({})));
    // From the spec, with consolidation and export asked for on an empty day.
    apply(
        ns.name(),
        &batch("empty-run", json!({ "targetCount": 0, "completion": { "onNoItems": "RunStages" } }), json!({})),
    );

    for name in ["empty", "empty-run"] {
        let b = wait_batch(ns.name(), name, &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
        let (status, reason) = condition(&b, "Ready").unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("True", "NoItems"), "{name}: {:#}", b["status"]);
        assert_eq!(b["status"]["progress"], "0/0", "{name}");
        assert!(b["status"]["workers"].is_null(), "{name}: no worker stage: {:#}", b["status"]);
    }
    // kubectl wait works on an empty day like on any other.
    let out = support::kubectl_output(&["wait", "--for=condition=Ready", "pb/empty", "-n", ns.name(), "--timeout=5s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rec = watch.snapshot();
    assert_eq!(rec.uids("workers"), 0, "no worker Job on an empty day: {:?}", rec.uids_by_stage);
    assert_eq!(rec.uids("loader"), 1);
    assert_eq!(rec.uids("consolidation"), 1, "only empty-run consolidates: {:?}", rec.uids_by_stage);
    assert_eq!(rec.uids("export"), 1, "only empty-run exports: {:?}", rec.uids_by_stage);
    let env = job_env(ns.name(), "empty-run-consolidate");
    assert_eq!((env["TARGET_COUNT"].as_str(), env["SUCCEEDED_SHARDS"].as_str()), ("0", ""));
    let pods = kubectl_json(&["get", "pods", "-n", ns.name(), "-l", "predictions.dev/stage=workers"]);
    assert_eq!(pods["items"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_loader_fails_the_batch_with_the_message_quoted() {
    ensure_crd();
    let ns = TestNamespace::new("loader-garbage");
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("loader-garbage", ns.name(), &[]);
    apply(ns.name(), &loaded_batch("garbled", "38 players, probably", json!({})));
    apply(ns.name(), &loaded_batch("too-many", r#"{"targetCount": 100001}"#, json!({})));
    // A valid count whose shards would be too many: 100000 items, 1 per shard.
    apply(ns.name(), &loaded_batch("too-many-shards", r#"{"targetCount": 100000}"#, json!({ "itemsPerShard": 1 })));

    for (name, quoted) in [
        ("garbled", "not a JSON object: \"38 players, probably\""),
        ("too-many", "not a whole number"),
        ("too-many-shards", "more than 10000"),
    ] {
        let b = wait_batch(ns.name(), name, &ctl, Duration::from_secs(90), "Failed", |b| phase(b) == "Failed");
        let stalled = support::batch::condition_object(&b, "Stalled").unwrap();
        assert_eq!(stalled["reason"], "LoaderOutputInvalid", "{name}: {stalled:#}");
        let message = stalled["message"].as_str().unwrap();
        assert!(message.contains(quoted), "{name}: {message}");
        assert_eq!(b["status"]["loader"]["state"], "Failed", "{name}");
    }
    assert_eq!(watch.snapshot().uids("workers"), 0, "no worker Job after a bad loader output");
}

/// The controller is killed after it recorded the loader's count and before the worker Job
/// exists (a Job quota holds the create back), and the loader's Job and pod are then deleted:
/// the restarted controller creates one worker Job with the recorded count, without reading the
/// loader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_loader_and_the_workers_keeps_one_worker_job_and_the_count() {
    ensure_crd();
    let ns = TestNamespace::new("loader-kill");
    let watch = JobWatch::start(ns.name()).await;
    let quota = json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": { "name": "one-job" },
        "spec": { "hard": { "count/jobs.batch": "1" } }
    });
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &quota.to_string());
    wait_until(
        "the quota to be counted",
        Duration::from_secs(30),
        || {
            let q = kubectl_json(&["get", "resourcequota", "one-job", "-n", ns.name()]);
            q["status"]["hard"]["count/jobs.batch"].is_string().then_some(())
        },
        String::new,
    );
    let mut ctl = Controller::start("loader-kill", ns.name(), &[]);
    apply(ns.name(), &loaded_batch("killed", r#"{"targetCount": 38, "itemsRef": "ref-1"}"#, json!({})));
    let loaded = wait_batch(ns.name(), "killed", &ctl, Duration::from_secs(90), "the count recorded", |b| {
        b["status"]["loader"]["state"] == "Succeeded"
    });
    assert_eq!(loaded["status"]["items"]["target"], 38);
    // The quota refuses the worker Job for now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(watch.snapshot().uids("workers"), 0, "the quota held the worker Job back");
    ctl.kill();
    kubectl(&["delete", "job", "killed-loader", "-n", ns.name(), "--wait=false"]);
    kubectl(&["delete", "resourcequota", "one-job", "-n", ns.name()]);
    ctl.restart();

    let done =
        wait_batch(ns.name(), "killed", &ctl, Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    assert_eq!(done["status"]["progress"], "38/38");
    assert_eq!(done["status"]["itemsRef"], "ref-1");
    let rec = watch.snapshot();
    for stage in ["loader", "workers", "consolidation", "export"] {
        assert_eq!(rec.uids(stage), 1, "{stage}: Jobs by UID {:?}", rec.uids_by_stage);
    }
    assert_eq!(job_env(ns.name(), "killed-workers")["TARGET_COUNT"], "38");
    let final_status = batch_json(ns.name(), "killed").unwrap();
    assert_eq!(final_status["status"]["loader"]["state"], "Succeeded");
}
