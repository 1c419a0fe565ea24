//! Every manifest in `examples/` does what its leading comment promises (its `# Expect:` lines):
//! each test `kubectl apply -f`s the real file into a namespace of its own (only the namespace is
//! set from outside) with the release controller running, and checks that outcome. Workers that
//! fail or straggle are made so by kwok Stages this file adds for the test's namespace, so the
//! examples stay free of test annotations. The Firestore example runs against the emulator
//! (tests/support/firestore_emulator.rs).
//!
//! [`every_example_has_a_test`] lists `examples/` itself: a new example without a test here fails.

#[path = "support/controller.rs"]
mod controller;
#[path = "support/firestore_emulator.rs"]
mod firestore_emulator;
#[path = "support/kwok_stage.rs"]
mod kwok_stage;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use controller::{Controller, JobWatch, batch_json, condition, phase, wait_batch};
use kwok_stage::TestStage;
use serde_json::{Value, json};
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json, kubectl_output, wait_until};

/// The examples with a test below, by file name.
const TESTED: &[&str] = &[
    "batch.yaml",
    "batch-full.yaml",
    "batch-quorum.yaml",
    "batch-deadline.yaml",
    "batch-suspended.yaml",
    "batch-firestore.yaml",
];

fn examples_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

#[test]
fn every_example_has_a_test() {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).expect("examples/") {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        found.push(file.clone());
        assert!(
            TESTED.contains(&file.as_str()),
            "examples/{file} has no test: add one to tests/examples.rs (and its name to TESTED) that applies it and \
             checks the outcome its `# Expect:` comment promises"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let comment: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
        assert!(
            comment.len() >= 2 && comment.iter().any(|l| l.starts_with("# Expect:")),
            "examples/{file} must start with a comment saying what it shows and, in a `# Expect:` line, what outcome \
             to expect"
        );
    }
    for file in TESTED {
        assert!(found.iter().any(|f| f == file), "TESTED names examples/{file}, which does not exist");
    }
}

/// Applies `examples/<file>` into `ns` with `kubectl apply -f`, returns the batch name.
fn apply_example(ns: &str, file: &str) -> String {
    let path = examples_dir().join(file);
    let out = kubectl(&["apply", "-n", ns, "-f", path.to_str().unwrap(), "-o", "jsonpath={.metadata.name}"]);
    assert!(!out.is_empty(), "kubectl apply -f examples/{file} printed no name");
    out
}

/// The leading comment of an example, to show in a failure.
fn promise(file: &str) -> String {
    let text = std::fs::read_to_string(examples_dir().join(file)).unwrap();
    text.lines().take_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n")
}

fn assert_promise(file: &str, ok: bool, what: &str) {
    assert!(ok, "examples/{file}: {what}\nits comment:\n{}", promise(file));
}

fn jobs_in(ns: &str) -> Vec<String> {
    let out = kubectl(&["get", "jobs", "-n", ns, "-o", "jsonpath={.items[*].metadata.name}"]);
    out.split_whitespace().map(String::from).collect()
}

fn reason(b: &Value, type_: &str) -> String {
    condition(b, type_).map(|c| format!("{}/{}", c.0, c.1)).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_yaml_succeeds_with_every_item() {
    const FILE: &str = "batch.yaml";
    ensure_crd();
    let ns = TestNamespace::new("ex-batch");
    let ctl = Controller::start("ex-batch", ns.name(), &[]);
    let name = apply_example(ns.name(), FILE);
    let out =
        kubectl_output(&["wait", "--for=condition=Ready", &format!("pb/{name}"), "-n", ns.name(), "--timeout=120s"]);
    assert_promise(FILE, out.status.success(), &format!("kubectl wait Ready failed\n{}", ctl.log_tail()));
    let b = batch_json(ns.name(), &name).unwrap();
    assert_promise(FILE, phase(&b) == "Succeeded" && b["status"]["progress"] == "120/120", &format!("{}", b["status"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_full_yaml_fails_at_once_on_its_past_deadline() {
    const FILE: &str = "batch-full.yaml";
    ensure_crd();
    let ns = TestNamespace::new("ex-full");
    let ctl = Controller::start("ex-full", ns.name(), &[]);
    let name = apply_example(ns.name(), FILE);
    let b = wait_batch(ns.name(), &name, &ctl, Duration::from_secs(30), "Failed", |b| phase(b) == "Failed");
    assert_promise(FILE, reason(&b, "Stalled") == "True/DeadlineExceeded", &format!("{}", b["status"]));
    std::thread::sleep(Duration::from_secs(2));
    assert_promise(FILE, jobs_in(ns.name()).is_empty(), "a Job was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_quorum_yaml_succeeds_degraded_with_failed_shards() {
    const FILE: &str = "batch-quorum.yaml";
    ensure_crd();
    let ns = TestNamespace::new("ex-quorum");
    let _fail = TestStage::fail(ns.name(), &["3", "7"]);
    let watch = JobWatch::start(ns.name()).await;
    let ctl = Controller::start("ex-quorum", ns.name(), &[]);
    let name = apply_example(ns.name(), FILE);
    let b = wait_batch(ns.name(), &name, &ctl, Duration::from_secs(150), "Succeeded", |b| {
        phase(b) == "Succeeded" || phase(b) == "Failed"
    });
    assert_promise(FILE, phase(&b) == "Succeeded", &format!("ended {}", b["status"]));
    assert_eq!(reason(&b, "Ready"), "True/Succeeded");
    assert_eq!(reason(&b, "Degraded"), "True/ShardsFailed");
    assert_eq!(b["status"]["failedShards"], "3,7");
    assert_eq!(b["status"]["progress"], "112/120");
    let job = kubectl_json(&["get", "job", &format!("{name}-workers"), "-n", ns.name()]);
    assert!(
        job["status"]["failed"].as_i64().unwrap_or(0) >= 4,
        "each failing shard was retried once: {}",
        job["status"]
    );
    let c = kubectl_json(&["get", "job", &format!("{name}-consolidate"), "-n", ns.name()]);
    let env = c["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let get = |n: &str| env.iter().find(|e| e["name"] == n).map(|e| e["value"].clone()).unwrap_or_default();
    assert_eq!((get("FAILED_SHARDS"), get("SUCCEEDED_ITEMS")), (json!("3,7"), json!("112")));
    let rec = watch.snapshot();
    for stage in ["workers", "consolidation", "export"] {
        assert_eq!(rec.uids(stage), 1, "{stage}: {:?}", rec.uids_by_stage);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_deadline_yaml_stops_stragglers_at_tip_off_and_consolidates() {
    const FILE: &str = "batch-deadline.yaml";
    ensure_crd();
    let ns = TestNamespace::new("ex-deadline");
    let _straggler = TestStage::straggle(ns.name(), &["5"]);
    let ctl = Controller::start("ex-deadline", ns.name(), &[]);
    let name = apply_example(ns.name(), FILE);
    // Every shard but 5 done: the batch waits for shard 5 until completeBy.
    let b = wait_batch(ns.name(), &name, &ctl, Duration::from_secs(90), "29 shards done", |b| {
        b["status"]["shards"]["succeeded"] == 29
    });
    assert_eq!(phase(&b), "Running", "{}", b["status"]);
    // Tip-off moves to 10 s from now, as the example's comment shows.
    let tip_off = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(10);
    let patch = json!({ "spec": { "completion": { "completeBy": tip_off.to_string() } } }).to_string();
    kubectl(&["patch", "pb", &name, "-n", ns.name(), "--type=merge", "-p", &patch]);
    let b = wait_batch(ns.name(), &name, &ctl, Duration::from_secs(120), "Succeeded or Failed", |b| {
        phase(b) == "Succeeded" || phase(b) == "Failed"
    });
    assert_promise(FILE, phase(&b) == "Succeeded", &format!("ended {}", b["status"]));
    assert_eq!(reason(&b, "Degraded"), "True/ShardsFailed");
    assert_eq!(b["status"]["failedShards"], "5");
    assert!(b["status"]["workers"]["stopTime"].is_string(), "the straggler was stopped: {}", b["status"]["workers"]);
    let consolidated = b["status"]["consolidation"]["startTime"].as_str().unwrap_or_default();
    let consolidated: k8s_openapi::jiff::Timestamp = consolidated.parse().expect("consolidation startTime");
    assert!(consolidated >= tip_off - k8s_openapi::jiff::SignedDuration::from_secs(1), "consolidated before tip-off");
    let events = kubectl(&["get", "events", "-n", ns.name(), "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("StoppingStragglers"), "events: {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_suspended_yaml_waits_without_jobs_then_runs_when_resumed() {
    const FILE: &str = "batch-suspended.yaml";
    ensure_crd();
    let ns = TestNamespace::new("ex-suspended");
    let ctl = Controller::start("ex-suspended", ns.name(), &[]);
    let name = apply_example(ns.name(), FILE);
    let b = wait_batch(ns.name(), &name, &ctl, Duration::from_secs(30), "Suspended", |b| phase(b) == "Suspended");
    assert_eq!(
        (reason(&b, "Ready"), reason(&b, "Reconciling")),
        ("Unknown/Suspended".into(), "False/Suspended".into())
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_promise(FILE, jobs_in(ns.name()).is_empty(), "a suspended batch created a Job");
    // The command of the example's comment.
    kubectl(&["patch", "pb", &name, "-n", ns.name(), "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    let b = wait_batch(ns.name(), &name, &ctl, Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    assert_eq!((b["status"]["progress"].clone(), reason(&b, "Ready")), (json!("120/120"), "True/Succeeded".into()));
}

#[test]
fn batch_firestore_yaml_is_mirrored_and_marked_deleted() {
    const FILE: &str = "batch-firestore.yaml";
    const FINALIZER: &str = "predictions.dev/firestore-mirror";
    ensure_crd();
    let emulator = firestore_emulator::Emulator::start(0);
    let docs = firestore_emulator::Docs::new(&emulator.host());
    let ns = TestNamespace::new("ex-firestore");
    let host = emulator.host();
    let ctl = Controller::start_with_env(
        "ex-firestore",
        ns.name(),
        &["--firestore-project", firestore_emulator::PROJECT],
        &[("FIRESTORE_EMULATOR_HOST", &host)],
    );
    let name = apply_example(ns.name(), FILE);
    let id = format!("{}.{name}", ns.name());
    wait_batch(ns.name(), &name, &ctl, Duration::from_secs(120), "Succeeded, MirrorSynced=True", |b| {
        phase(b) == "Succeeded" && reason(b, "MirrorSynced") == "True/Synced"
    });
    let doc = wait_until(
        "the document to show the finished batch",
        Duration::from_secs(30),
        || {
            docs.get(&id).filter(|d| {
                d.str("phase") == Some("Succeeded")
                    && d.int("expected_players") == Some(120)
                    && d.int("completed_players") == Some(120)
                    && ["is_complete", "consolidation_triggered", "consolidation_completed", "export_completed"]
                        .iter()
                        .all(|f| d.bool(f) == Some(true))
            })
        },
        || format!("{:?}\n{}", docs.get(&id).map(|d| d.fields), ctl.log_tail()),
    );
    assert_eq!(doc.bool("deleted"), Some(false));
    let b = batch_json(ns.name(), &name).unwrap();
    let finalizers = b["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    assert_promise(FILE, finalizers.iter().any(|f| f == FINALIZER), &format!("finalizers {finalizers:?}"));
    kubectl(&["delete", "pb", &name, "-n", ns.name(), "--wait=false"]);
    wait_until(
        "the document marked deleted and the batch gone",
        Duration::from_secs(40),
        || (docs.get(&id)?.bool("deleted") == Some(true) && batch_json(ns.name(), &name).is_none()).then_some(()),
        || format!("{:?}\n{}", docs.get(&id).map(|d| d.fields), ctl.log_tail()),
    );
}
