//! Every manifest in `examples/` does what its leading comment promises (its `# Expect:` lines):
//! each test `kubectl apply -f`s the real file into a namespace of its own (only the namespace is
//! set from outside) with the release controller running, and checks that outcome. Workers that
//! fail or straggle are made so by kwok Stages this file adds for the test's namespace, so the
//! examples stay free of test annotations. The Firestore example runs against the emulator
//! (tests/support/firestore_emulator.rs). The schedule example's 7 AM run is moved, once its
//! promise as applied is checked, to the next minute (still on New York's wall clock), so the test
//! need not wait for 7 AM.
//!
//! [`every_example_has_a_test`] lists `examples/` itself: a new example without a test here fails.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::batch::{batch_json, condition, phase, wait_batch};
use support::controller::Controller;
use support::firestore_emulator;
use support::kwok_stage::TestStage;
use support::watch::JobWatch;
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json, kubectl_output, wait_until};

/// The examples with a test below, by file name.
const TESTED: &[&str] = &[
    "batch.yaml",
    "batch-full.yaml",
    "batch-quorum.yaml",
    "batch-deadline.yaml",
    "batch-suspended.yaml",
    "batch-firestore.yaml",
    "batch-loader.yaml",
    "batch-rerun.yaml",
    "batch-backups.yaml",
    "schedule.yaml",
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

/// One example applied into a namespace of its own, with a controller watching it.
struct Example {
    // Field order is drop order: stop the controller, then drop the namespace and the Stage.
    ctl: Controller,
    name: String,
    ns: TestNamespace,
    _stage: Option<TestStage>,
}

impl Example {
    /// Creates the namespace, `stage(namespace)` (kwok Stages for its pods), the controller, and
    /// applies `examples/<file>`.
    fn start(prefix: &str, file: &str, stage: impl FnOnce(&str) -> Option<TestStage>) -> Example {
        ensure_crd();
        let ns = TestNamespace::new(prefix);
        let _stage = stage(ns.name());
        let ctl = Controller::start(prefix, ns.name(), &[]);
        let name = apply_example(ns.name(), file);
        Example { ctl, name, ns, _stage }
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    fn wait(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_batch(self.ns(), &self.name, &self.ctl, timeout, what, pred)
    }

    /// No Job exists, a few seconds after the batch settled (time for a wrong controller to act).
    fn assert_no_job(&self, file: &str) {
        std::thread::sleep(Duration::from_secs(3));
        assert_promise(file, jobs_in(self.ns()).is_empty(), "a Job was created");
    }
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
    let ex = Example::start("ex-batch", FILE, |_| None);
    let pb = format!("pb/{}", ex.name);
    let out = kubectl_output(&["wait", "--for=condition=Ready", &pb, "-n", ex.ns(), "--timeout=120s"]);
    assert_promise(FILE, out.status.success(), &format!("kubectl wait Ready failed\n{}", ex.ctl.log_tail()));
    let b = batch_json(ex.ns(), &ex.name).unwrap();
    assert_promise(FILE, phase(&b) == "Succeeded" && b["status"]["progress"] == "120/120", &format!("{}", b["status"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_loader_yaml_runs_the_count_the_loader_reports() {
    const FILE: &str = "batch-loader.yaml";
    let message = r#"{"targetCount": 38, "itemsRef": "gs://nba-predictions/2026-01-01/players.json"}"#;
    let ex = Example::start("ex-loader", FILE, |ns| Some(TestStage::loader_output(ns, message)));
    let b = ex.wait(Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    let st = &b["status"];
    assert_promise(
        FILE,
        st["progress"] == "38/38" && st["items"]["target"] == 38 && st["shards"]["total"] == 10,
        &format!("{st:#}"),
    );
    assert_promise(FILE, st["itemsRef"] == "gs://nba-predictions/2026-01-01/players.json", &format!("{st:#}"));

    let empty =
        Example::start("ex-loader-empty", FILE, |ns| Some(TestStage::loader_output(ns, r#"{"targetCount": 0}"#)));
    let b = empty.wait(Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    assert_promise(FILE, reason(&b, "Ready") == "True/NoItems", &format!("{:#}", b["status"]));
    assert_promise(FILE, jobs_in(empty.ns()) == [format!("{}-loader", empty.name)], "only the loader ran");

    let bad = Example::start("ex-loader-bad", FILE, |ns| Some(TestStage::loader_output(ns, "38")));
    let b = bad.wait(Duration::from_secs(90), "Failed", |b| phase(b) == "Failed");
    assert_promise(FILE, reason(&b, "Stalled") == "True/LoaderOutputInvalid", &format!("{:#}", b["status"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rerun_yaml_runs_the_export_again_on_a_new_token() {
    const FILE: &str = "batch-rerun.yaml";
    let ex = Example::start("ex-rerun", FILE, |_| None);
    let b = ex.wait(Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    assert_promise(
        FILE,
        b["status"]["attempts"].is_null() && b["status"]["rerunToken"] == "1",
        &format!("{:#}", b["status"]),
    );
    let patch = r#"{"spec":{"rerun":{"token":"2"}}}"#;
    kubectl(&["patch", "pb", &ex.name, "-n", ex.ns(), "--type=merge", "-p", patch]);
    let b = ex.wait(Duration::from_secs(90), "attempt 2 Succeeded", |b| {
        phase(b) == "Succeeded" && b["status"]["attempts"][1]["outcome"] == "Succeeded"
    });
    let st = &b["status"];
    assert_promise(
        FILE,
        st["export"]["jobName"] == format!("{}-r2-export", ex.name) && st["progress"] == "120/120",
        &format!("{st:#}"),
    );
    let mut jobs = jobs_in(ex.ns());
    jobs.sort();
    let want: Vec<String> =
        ["consolidate", "export", "r2-export", "workers"].iter().map(|s| format!("{}-{s}", ex.name)).collect();
    assert_promise(FILE, jobs == want, &format!("Jobs {jobs:?}"));
    // The same token again: nothing.
    kubectl(&["patch", "pb", &ex.name, "-n", ex.ns(), "--type=merge", "-p", patch]);
    std::thread::sleep(Duration::from_secs(3));
    assert_promise(FILE, jobs_in(ex.ns()).len() == 4, "the same token ran something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_backups_yaml_finishes_whole_despite_a_stuck_shard() {
    const FILE: &str = "batch-backups.yaml";
    let ex = Example::start("ex-backups", FILE, |ns| Some(TestStage::straggle(ns, &["3"])));
    let b = ex.wait(Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded" || phase(b) == "Failed");
    let st = &b["status"];
    assert_promise(
        FILE,
        phase(&b) == "Succeeded" && st["progress"] == "120/120" && reason(&b, "Degraded") == "False/NoFailedShards",
        &format!("ended {st:#}"),
    );
    assert_promise(
        FILE,
        st["backups"]["started"] == "3" && st["backups"]["won"] == "3",
        &format!("backups {:#}", st["backups"]),
    );
    let events = kubectl(&["get", "events", "-n", ex.ns(), "-o", "jsonpath={.items[*].reason}"]);
    assert_promise(
        FILE,
        events.contains("BackupStarted") && events.contains("BackupWon"),
        &format!("events: {events}"),
    );
    let job = kubectl_json(&["get", "job", &format!("{}-workers", ex.name), "-n", ex.ns()]);
    assert_promise(FILE, job["spec"]["suspend"] == true, &format!("worker Job {}", job["spec"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_full_yaml_fails_at_once_on_its_past_deadline() {
    const FILE: &str = "batch-full.yaml";
    let ex = Example::start("ex-full", FILE, |_| None);
    let b = ex.wait(Duration::from_secs(30), "Failed", |b| phase(b) == "Failed");
    assert_promise(FILE, reason(&b, "Stalled") == "True/DeadlineExceeded", &format!("{}", b["status"]));
    ex.assert_no_job(FILE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_quorum_yaml_succeeds_degraded_with_failed_shards() {
    const FILE: &str = "batch-quorum.yaml";
    let ex = Example::start("ex-quorum", FILE, |ns| Some(TestStage::fail(ns, &["3", "7"])));
    // A watch lists what exists first, so it sees every Job even when started after the apply.
    let watch = JobWatch::start(ex.ns()).await;
    let (ns, name) = (ex.ns(), &ex.name);
    let b = ex.wait(Duration::from_secs(150), "Succeeded", |b| phase(b) == "Succeeded" || phase(b) == "Failed");
    assert_promise(FILE, phase(&b) == "Succeeded", &format!("ended {}", b["status"]));
    assert_eq!(reason(&b, "Ready"), "True/Succeeded");
    assert_eq!(reason(&b, "Degraded"), "True/ShardsFailed");
    assert_eq!(b["status"]["failedShards"], "3,7");
    assert_eq!(b["status"]["progress"], "112/120");
    let job = kubectl_json(&["get", "job", &format!("{name}-workers"), "-n", ns]);
    assert!(
        job["status"]["failed"].as_i64().unwrap_or(0) >= 4,
        "each failing shard was retried once: {}",
        job["status"]
    );
    let c = kubectl_json(&["get", "job", &format!("{name}-consolidate"), "-n", ns]);
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
    let ex = Example::start("ex-deadline", FILE, |ns| Some(TestStage::straggle(ns, &["5"])));
    // Every shard but 5 done: the batch waits for shard 5 until completeBy.
    let b = ex.wait(Duration::from_secs(90), "29 shards done", |b| b["status"]["shards"]["succeeded"] == 29);
    assert_eq!(phase(&b), "Running", "{}", b["status"]);
    // Tip-off moves to 10 s from now, as the example's comment shows.
    let tip_off = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(10);
    let patch = json!({ "spec": { "completion": { "completeBy": tip_off.to_string() } } }).to_string();
    kubectl(&["patch", "pb", &ex.name, "-n", ex.ns(), "--type=merge", "-p", &patch]);
    let b =
        ex.wait(Duration::from_secs(120), "Succeeded or Failed", |b| phase(b) == "Succeeded" || phase(b) == "Failed");
    assert_promise(FILE, phase(&b) == "Succeeded", &format!("ended {}", b["status"]));
    assert_eq!(reason(&b, "Degraded"), "True/ShardsFailed");
    assert_eq!(b["status"]["failedShards"], "5");
    assert!(b["status"]["workers"]["stopTime"].is_string(), "the straggler was stopped: {}", b["status"]["workers"]);
    let consolidated = b["status"]["consolidation"]["startTime"].as_str().unwrap_or_default();
    let consolidated: k8s_openapi::jiff::Timestamp = consolidated.parse().expect("consolidation startTime");
    assert!(consolidated >= tip_off - k8s_openapi::jiff::SignedDuration::from_secs(1), "consolidated before tip-off");
    let events = kubectl(&["get", "events", "-n", ex.ns(), "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("StoppingStragglers"), "events: {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_suspended_yaml_waits_without_jobs_then_runs_when_resumed() {
    const FILE: &str = "batch-suspended.yaml";
    let ex = Example::start("ex-suspended", FILE, |_| None);
    let b = ex.wait(Duration::from_secs(30), "Suspended", |b| phase(b) == "Suspended");
    assert_eq!(
        (reason(&b, "Ready"), reason(&b, "Reconciling")),
        ("Unknown/Suspended".into(), "False/Suspended".into())
    );
    ex.assert_no_job(FILE);
    // The command of the example's comment.
    kubectl(&["patch", "pb", &ex.name, "-n", ex.ns(), "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    let b = ex.wait(Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
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

/// `status.<field>` of an object (a time, as RFC 3339), parsed.
fn time_field(obj: &Value, field: &str) -> Option<jiff::Timestamp> {
    obj["status"][field].as_str()?.parse().ok()
}

fn schedule_json(ns: &str, name: &str) -> Value {
    kubectl_json(&["get", "predictionschedule", name, "-n", ns])
}

/// The schedule, its batches, their events and the controller's log: what a failed wait prints.
fn describe_schedule(ns: &str, name: &str, ctl: &Controller) -> String {
    let show = |args: &[&str]| String::from_utf8_lossy(&kubectl_output(args).stdout).into_owned();
    format!(
        "{}\n{}\n{}\n{}",
        show(&["get", "predictionschedule", name, "-n", ns, "-o", "yaml"]),
        show(&["get", "predictionbatches,jobs", "-n", ns, "-o", "wide"]),
        show(&["get", "events", "-n", ns]),
        ctl.log_tail()
    )
}

/// examples/schedule.yaml as it stands: admitted, Ready, its next run at 7:00 New York time. 7 AM
/// in New York is hours away, so its `schedule` is then patched from `0 7 * * *` to the next whole
/// minute, as `<minute> <hour> * * *` on New York's wall clock (rather than `* * * * *`, so the
/// run also proves the hour is read in America/New_York, not in UTC). That run creates exactly
/// one batch with the promised name, label, owner, gameDate (the date in New York, which differs
/// from UTC's in the evening there) and completeBy (+12h), and it runs to Succeeded with the
/// count a kwok Stage makes its loader report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_yaml_creates_the_days_batch_at_its_time_in_new_york() {
    const FILE: &str = "schedule.yaml";
    const NY: &str = "America/New_York";
    let message = r#"{"targetCount": 38, "itemsRef": "gs://nba-predictions/today/players.json"}"#;
    let ex = Example::start("ex-schedule", FILE, |ns| Some(TestStage::loader_output(ns, message)));
    let (ns, name) = (ex.ns(), ex.name.as_str());
    assert_eq!(name, "nba-daily");
    let describe = || describe_schedule(ns, name, &ex.ctl);

    // As applied: admitted, Ready=True/Scheduled, next run at the next 7:00 in New York.
    let s = wait_until(
        "the schedule to be Ready",
        Duration::from_secs(30),
        || Some(schedule_json(ns, name)).filter(|s| reason(s, "Ready") == "True/Scheduled"),
        describe,
    );
    assert_eq!(reason(&s, "Stalled"), "False/Scheduled", "{:#}", s["status"]);
    let now = jiff::Timestamp::now().in_tz(NY).unwrap();
    let mut seven = now.date().at(7, 0, 0, 0).in_tz(NY).unwrap();
    if seven <= now {
        seven = now.date().tomorrow().unwrap().at(7, 0, 0, 0).in_tz(NY).unwrap();
    }
    assert_promise(
        FILE,
        time_field(&s, "nextScheduleTime") == Some(seven.timestamp()),
        &format!("nextScheduleTime {} is not 7:00 in New York ({seven})", s["status"]["nextScheduleTime"]),
    );
    assert!(s["status"]["lastScheduleTime"].is_null() && s["status"]["active"].is_null(), "{:#}", s["status"]);
    let header = kubectl(&["get", "pbs", name, "-n", ns]);
    let columns: Vec<&str> = header.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(columns, ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "LAST", "NEXT", "ACTIVE", "AGE"], "{header}");

    // The run moved to the next whole minute at least 15 s away (New York's offset is whole hours,
    // so its minutes start with UTC's).
    let soon = jiff::Timestamp::now().as_second() + 15;
    let at = jiff::Timestamp::from_second((soon / 60 + 1) * 60).unwrap();
    let local = at.in_tz(NY).unwrap();
    let cron = format!("{} {} * * *", local.minute(), local.hour());
    let patch = json!({ "spec": { "schedule": cron } }).to_string();
    kubectl(&["patch", "pbs", name, "-n", ns, "--type=merge", "-p", &patch]);
    let batch = format!("{name}-{}", local.strftime("%Y%m%d-%H%M"));
    eprintln!("schedule {cron:?} in {NY}: batch {batch} due at {at} ({local})");
    let b = wait_until(
        &format!("batch {batch}, due at {at}"),
        Duration::from_secs(90),
        || batch_json(ns, &batch),
        describe,
    );
    assert!(jiff::Timestamp::now() >= at, "{batch} was created before its time {at}");
    let meta = &b["metadata"];
    assert_promise(
        FILE,
        meta["labels"]["predictions.dev/schedule"] == name
            && meta["labels"]["app.kubernetes.io/part-of"] == "nba-predictions",
        &format!("labels {}", meta["labels"]),
    );
    let scheduled_at: Option<jiff::Timestamp> =
        meta["annotations"]["predictions.dev/scheduled-at"].as_str().and_then(|a| a.parse().ok());
    assert_eq!(scheduled_at, Some(at), "annotations {}", meta["annotations"]);
    let owners = meta["ownerReferences"].as_array().cloned().unwrap_or_default();
    let uid = s["metadata"]["uid"].clone();
    assert_promise(
        FILE,
        owners.len() == 1
            && owners[0]["kind"] == "PredictionSchedule"
            && owners[0]["name"] == name
            && owners[0]["uid"] == uid
            && owners[0]["controller"] == true
            && owners[0]["blockOwnerDeletion"] == true,
        &format!("ownerReferences {owners:?}"),
    );
    let spec = &b["spec"];
    assert_promise(
        FILE,
        spec["gameDate"] == local.date().to_string(),
        &format!("gameDate {} is not the run's date in New York ({})", spec["gameDate"], local.date()),
    );
    let complete_by: Option<jiff::Timestamp> = spec["completion"]["completeBy"].as_str().and_then(|c| c.parse().ok());
    assert_promise(
        FILE,
        complete_by == Some(at + jiff::SignedDuration::from_hours(12)),
        &format!("completeBy {} is not the scheduled time {at} + 12h", spec["completion"]["completeBy"]),
    );
    assert_eq!(
        (spec["completion"]["minSucceededPercent"].clone(), spec["loader"]["backoffLimit"].clone()),
        (json!(95), json!(2)),
        "the template's spec: {spec:#}"
    );
    let s = wait_until(
        "lastScheduleTime to record the run",
        Duration::from_secs(20),
        || Some(schedule_json(ns, name)).filter(|s| time_field(s, "lastScheduleTime") == Some(at)),
        describe,
    );
    assert_eq!(
        time_field(&s, "nextScheduleTime"),
        Some(at + jiff::SignedDuration::from_hours(24)),
        "{:#}",
        s["status"]
    );

    // The day's pipeline runs to the end with the loader's count.
    let b = wait_batch(ns, &batch, &ex.ctl, Duration::from_secs(120), "Succeeded", |b| {
        phase(b) == "Succeeded" || phase(b) == "Failed"
    });
    let st = &b["status"];
    assert_promise(
        FILE,
        phase(&b) == "Succeeded"
            && st["progress"] == "38/38"
            && st["itemsRef"] == "gs://nba-predictions/today/players.json",
        &format!("ended {st:#}"),
    );
    let s = wait_until(
        "the schedule to see its batch succeed",
        Duration::from_secs(30),
        || {
            Some(schedule_json(ns, name))
                .filter(|s| s["status"]["lastSuccessfulTime"].is_string() && s["status"]["active"].is_null())
        },
        describe,
    );
    assert_eq!(reason(&s, "Ready"), "True/Scheduled", "{:#}", s["status"]);
    let selector = format!("predictions.dev/schedule={name}");
    let runs = kubectl(&["get", "pb", "-n", ns, "-l", &selector, "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(runs, batch, "one run, one batch");
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.kind=PredictionSchedule",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert_promise(FILE, events.split_whitespace().any(|e| e == "BatchCreated"), &format!("events: {events}"));
    // The category lists both kinds.
    let all = kubectl(&["get", "predictions", "-n", ns, "-o", "name"]);
    assert!(
        all.lines().any(|l| l == format!("predictionschedule.predictions.dev/{name}"))
            && all.lines().any(|l| l == format!("predictionbatch.predictions.dev/{batch}")),
        "kubectl get predictions: {all}"
    );
}
