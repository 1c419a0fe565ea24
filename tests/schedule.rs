//! PredictionSchedule end to end (issue 17) on the real control plane, in real minutes: a schedule
//! running every minute creates one batch per minute; a controller killed right after a create
//! (before it recorded the run) creates no duplicate; downtime across two run times starts exactly
//! one catch-up batch, or none past `startingDeadlineSeconds`; Forbid holds a run while a batch
//! runs (and starts it when that one ends, inside the deadline), Replace deletes the running one;
//! history limits delete owned batches only. Admission refuses what a run could never create.
//!
//! The minute-bound scenarios run side by side (one thread each, a namespace and a controller
//! each), so the file takes about four minutes rather than ten.

mod support;

use std::time::{Duration, Instant, SystemTime};

use jiff::Timestamp;
use serde_json::{Value, json};
use support::batch::{apply, batch_json, merge, phase};
use support::controller::{Controller, Launch};
use support::watch::BatchUidWatch;
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json, kubectl_output, kubectl_stdin_output, wait_until};

const SCHEDULE_LABEL: &str = "predictions.dev/schedule";
const SCHEDULED_AT: &str = "predictions.dev/scheduled-at";
const ZONE: &str = "America/New_York";

/// A schedule running every minute in New York whose batches finish in seconds on kwok.
fn schedule(name: &str, patch: Value) -> Value {
    let mut s = json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionSchedule",
        "metadata": { "name": name },
        "spec": {
            "schedule": "* * * * *",
            "timeZone": ZONE,
            "completeByAfter": "+10m",
            "batchTemplate": {
                "metadata": { "labels": { "team": "nba" } },
                "spec": {
                    "targetCount": 8,
                    "itemsPerShard": 4,
                    "worker": { "template": { "spec": { "containers": [{ "name": "w", "image": "example.com/w:1" }] } } },
                    "consolidation": { "template": { "spec": { "containers": [{ "name": "c", "image": "example.com/c:1" }] } } },
                    "export": { "template": { "spec": { "containers": [{ "name": "e", "image": "example.com/e:1" }] } } }
                }
            }
        }
    });
    merge(&mut s["spec"], &patch);
    s
}

fn schedule_json(ns: &str, name: &str) -> Value {
    kubectl_json(&["get", "predictionschedule", name, "-n", ns, "-o", "json"])
}

/// The batches `schedule` owns that exist now (by label and owner reference), by name.
fn batches_of(ns: &str, schedule: &str) -> Vec<Value> {
    let list = kubectl_json(&["get", "pb", "-n", ns, "-l", &format!("{SCHEDULE_LABEL}={schedule}"), "-o", "json"]);
    let mut items: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| {
            let owner = &b["metadata"]["ownerReferences"][0];
            owner["kind"] == "PredictionSchedule" && owner["name"] == schedule
        })
        .cloned()
        .collect();
    items.sort_by_key(|b| b["metadata"]["name"].as_str().unwrap_or_default().to_string());
    items
}

/// The run's name from its scheduled time: `<schedule>-<yyyymmdd>-<hhmm>` on New York's clock.
fn run_name(schedule: &str, at: Timestamp) -> String {
    let z = at.to_zoned(jiff::tz::TimeZone::get(ZONE).unwrap());
    format!("{schedule}-{}", z.strftime("%Y%m%d-%H%M"))
}

fn scheduled_at(batch: &Value) -> Timestamp {
    batch["metadata"]["annotations"][SCHEDULED_AT].as_str().expect("scheduled-at annotation").parse().unwrap()
}

fn events(ns: &str, reason: &str) -> Vec<String> {
    let list =
        kubectl_json(&["get", "events", "-n", ns, "--field-selector", &format!("reason={reason}"), "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sleeps until `secs` seconds past the next minute boundary.
fn sleep_until_past_minute(secs: u64) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let into = now.as_secs() % 60;
    let wait = if into < secs { secs - into } else { 60 - into + secs };
    std::thread::sleep(Duration::from_secs(wait) - Duration::from_nanos(u64::from(now.subsec_nanos())));
}

fn wait_batches(ns: &str, schedule: &str, n: usize, timeout: Duration, ctl: &Controller) -> Vec<Value> {
    wait_until(
        &format!("{n} batches of {schedule}"),
        timeout,
        || {
            let b = batches_of(ns, schedule);
            (b.len() >= n).then_some(b)
        },
        || format!("{}\n{}", kubectl(&["get", "pb,pbs", "-n", ns, "-o", "wide"]), ctl.log_tail()),
    )
}

/// Every minute for three minutes: one batch per minute, named from its time, labelled, owned,
/// with its date and deadline; the first create is followed at once by an abort of the
/// controller (before `lastScheduleTime` is written) and still yields one batch; history keeps
/// one succeeded batch and never touches a batch the schedule does not own.
fn every_minute(ns: &str, watch: &BatchUidWatch) {
    // Not the schedule's, though named and labelled like its runs: history must leave them.
    let mut manual = support::batch::batch("every-minute-manual", json!({ "targetCount": 4 }), json!({}));
    manual["metadata"]["labels"] = json!({ SCHEDULE_LABEL: "every-minute" });
    apply(ns, &manual);
    apply(ns, &support::batch::batch("unrelated", json!({ "targetCount": 4 }), json!({})));

    let mut ctl =
        Launch::test("schedule-every-minute-abort", ns).env("PBC_TEST_ABORT_AFTER_SCHEDULE_CREATE", "1").start();
    apply(ns, &schedule("every-minute", json!({ "successfulBatchesHistoryLimit": 1, "failedBatchesHistoryLimit": 0 })));
    let start = Instant::now();
    assert!(
        ctl.wait_exit(Duration::from_secs(75)).is_some(),
        "the controller did not abort after its first create:\n{}",
        ctl.log_tail()
    );
    let first = batches_of(ns, "every-minute");
    assert_eq!(first.len(), 1, "{first:#?}");
    let first_at = scheduled_at(&first[0]);
    assert!(
        schedule_json(ns, "every-minute")["status"]["lastScheduleTime"].is_null(),
        "the abort came before the status write"
    );
    drop(ctl);
    let ctl = Controller::start("schedule-every-minute", ns, &[]);
    wait_until(
        "the restarted controller to record the first run",
        Duration::from_secs(30),
        || {
            let s = schedule_json(ns, "every-minute");
            (s["status"]["lastScheduleTime"].as_str() == Some(&first_at.to_string())).then_some(())
        },
        || ctl.log_tail(),
    );

    // Counted from the test's own watch: history (limit 1) deletes the older runs meanwhile.
    let runs = |rec: &support::watch::BatchUidRecord| -> Vec<String> {
        rec.of_schedule("every-minute").into_iter().filter(|n| n != "every-minute-manual").collect()
    };
    wait_until(
        "3 runs of every-minute",
        Duration::from_secs(200),
        || (runs(&watch.snapshot()).len() >= 3).then_some(()),
        || format!("{:?}\n{}", watch.snapshot().uids, ctl.log_tail()),
    );
    let all = batches_of(ns, "every-minute");
    assert!(!all.is_empty());
    let rec = watch.snapshot();
    let created = runs(&rec);
    assert!(rec.recreated().is_empty(), "a batch was created twice: {:?}", rec.uids);
    // One per minute, consecutive, named from the scheduled time.
    let want: Vec<String> = (0..created.len() as i64)
        .map(|i| run_name("every-minute", first_at.checked_add(jiff::SignedDuration::from_mins(i)).unwrap()))
        .collect();
    assert_eq!(created, want, "one batch per minute");
    assert!(created.len() >= 3 && created.len() <= 4, "{created:?} after {:?}", start.elapsed());
    for b in &all {
        let at = scheduled_at(b);
        assert_eq!(b["metadata"]["name"].as_str().unwrap(), run_name("every-minute", at));
        let local = at.to_zoned(jiff::tz::TimeZone::get(ZONE).unwrap());
        assert_eq!(b["spec"]["gameDate"].as_str().unwrap(), local.date().to_string());
        let complete_by: Timestamp = b["spec"]["completion"]["completeBy"].as_str().unwrap().parse().unwrap();
        assert_eq!(complete_by, at.checked_add(jiff::SignedDuration::from_mins(10)).unwrap());
        assert_eq!(b["metadata"]["labels"]["team"], "nba");
        let owner = &b["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["controller"].as_bool()), (Some("PredictionSchedule"), Some(true)));
    }
    let header = kubectl(&["get", "pbs", "-n", ns]);
    for column in ["SCHEDULE", "TIMEZONE", "SUSPEND", "LAST", "NEXT", "ACTIVE", "AGE"] {
        assert!(header.lines().next().unwrap_or_default().contains(column), "{column} in\n{header}");
    }

    // History: one succeeded batch of the schedule is kept, once the runs have finished.
    wait_until(
        "history to keep one succeeded batch",
        Duration::from_secs(60),
        || {
            let owned: Vec<Value> = batches_of(ns, "every-minute")
                .into_iter()
                .filter(|b| b["metadata"]["deletionTimestamp"].is_null())
                .collect();
            let done = owned.iter().filter(|b| phase(b) == "Succeeded").count();
            (done == 1 && owned.len() <= 2).then_some(())
        },
        || format!("{}\n{}", kubectl(&["get", "pb", "-n", ns]), ctl.log_tail()),
    );
    assert!(batch_json(ns, "every-minute-manual").is_some(), "history deleted a batch it does not own");
    assert!(batch_json(ns, "unrelated").is_some());
    assert!(!events(ns, "BatchDeleted").is_empty());
    let s = schedule_json(ns, "every-minute");
    assert!(s["status"]["lastSuccessfulTime"].is_string(), "{:#}", s["status"]);
    assert!(s["status"]["nextScheduleTime"].is_string(), "{:#}", s["status"]);
    println!("every minute: {} batches in {:?}, 1 UID each", created.len(), start.elapsed());
}

/// The controller stops after the first run and stays down across two run times: the schedule
/// without a deadline starts exactly one catch-up batch (the latest run), the one with a 20 s
/// deadline starts none and records the miss.
fn downtime(ns: &str, watch: &BatchUidWatch) {
    let mut ctl = Controller::start("schedule-downtime", ns, &[]);
    // Allow: the first batch cannot finish while the controller is down, and what is tested
    // here is the catch-up rule, not Forbid.
    apply(ns, &schedule("catch-up", json!({ "concurrencyPolicy": "Allow" })));
    apply(ns, &schedule("too-late", json!({ "concurrencyPolicy": "Allow", "startingDeadlineSeconds": 20 })));
    let first = wait_batches(ns, "catch-up", 1, Duration::from_secs(75), &ctl);
    wait_batches(ns, "too-late", 1, Duration::from_secs(15), &ctl);
    let first_at = scheduled_at(&first[0]);
    ctl.kill();
    // Down across the next two run times, back 30 s after the second.
    let back = first_at.checked_add(jiff::SignedDuration::from_secs(150)).unwrap();
    let wait = back.duration_since(Timestamp::now());
    std::thread::sleep(Duration::try_from(wait).unwrap_or_default());
    assert_eq!(batches_of(ns, "catch-up").len(), 1, "nothing runs while the controller is down");
    ctl.restart();
    let latest = first_at.checked_add(jiff::SignedDuration::from_mins(2)).unwrap();
    let caught = wait_batches(ns, "catch-up", 2, Duration::from_secs(20), &ctl);
    let names: Vec<&str> = caught.iter().map(|b| b["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, [run_name("catch-up", first_at), run_name("catch-up", latest)], "only the latest missed run");
    wait_until(
        "the too-late run to be recorded as missed",
        Duration::from_secs(20),
        || {
            let s = schedule_json(ns, "too-late");
            (s["status"]["lastMissedTime"].as_str() == Some(&latest.to_string())).then_some(())
        },
        || format!("{:#}\n{}", schedule_json(ns, "too-late")["status"], ctl.log_tail()),
    );
    // A few seconds more: still nothing else.
    std::thread::sleep(Duration::from_secs(5));
    let late: Vec<String> =
        batches_of(ns, "too-late").iter().map(|b| b["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(late, [run_name("too-late", first_at)], "past the deadline nothing starts");
    assert!(events(ns, "RunsMissed").iter().any(|m| m.contains("2 runs were due")), "{:?}", events(ns, "RunsMissed"));
    assert!(events(ns, "RunMissed").iter().any(|m| m.contains("startingDeadlineSeconds (20s)")));
    assert_eq!(batches_of(ns, "catch-up").len(), 2);
    assert!(watch.snapshot().recreated().is_empty());
    println!("downtime: 1 catch-up batch ({}), 0 past the deadline", run_name("catch-up", latest));
}

/// Forbid holds the next run while a (suspended, so never finishing) batch runs and starts it
/// once that batch ends inside the deadline; Replace deletes the running batch for the next run.
fn concurrency(ns: &str, watch: &BatchUidWatch) {
    let ctl = Controller::start("schedule-concurrency", ns, &[]);
    let held = json!({ "batchTemplate": { "spec": { "suspend": true } } });
    let mut forbid = held.clone();
    merge(&mut forbid, &json!({ "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 45 }));
    let mut replace = held.clone();
    merge(&mut replace, &json!({ "concurrencyPolicy": "Replace" }));
    apply(ns, &schedule("forbid", forbid));
    apply(ns, &schedule("replace", replace));
    let first = wait_batches(ns, "forbid", 1, Duration::from_secs(75), &ctl);
    let first_replace = wait_batches(ns, "replace", 1, Duration::from_secs(15), &ctl);
    let first_at = scheduled_at(&first[0]);
    let second_at = first_at.checked_add(jiff::SignedDuration::from_mins(1)).unwrap();
    let listed = kubectl(&["get", "predictions", "-n", ns, "-o", "name"]);
    assert!(listed.contains("predictionschedule.predictions.dev/forbid"), "{listed}");
    assert!(listed.contains("predictionbatch.predictions.dev/forbid-"), "{listed}");

    // 10 s after the next run time.
    let at = second_at.checked_add(jiff::SignedDuration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default());
    let f = schedule_json(ns, "forbid");
    assert_eq!(batches_of(ns, "forbid").len(), 1, "Forbid: no second batch while the first runs");
    assert_eq!(f["status"]["active"][0]["name"], first[0]["metadata"]["name"], "{:#}", f["status"]);
    assert_eq!(
        f["status"]["lastScheduleTime"].as_str(),
        Some(first_at.to_string().as_str()),
        "the held run is not recorded"
    );
    let replaced = wait_until(
        "Replace to delete the running batch and start the next",
        Duration::from_secs(20),
        || {
            let live: Vec<Value> = batches_of(ns, "replace")
                .into_iter()
                .filter(|b| b["metadata"]["deletionTimestamp"].is_null())
                .collect();
            (live.len() == 1 && live[0]["metadata"]["name"] != first_replace[0]["metadata"]["name"]).then_some(live)
        },
        || format!("{}\n{}", kubectl(&["get", "pb", "-n", ns]), ctl.log_tail()),
    );
    assert_eq!(replaced[0]["metadata"]["name"].as_str().unwrap(), run_name("replace", second_at));
    assert!(
        events(ns, "BatchReplaced").iter().any(|m| m.contains(first_replace[0]["metadata"]["name"].as_str().unwrap()))
    );

    // The first Forbid batch is let go: it finishes, and the held run starts (inside 45 s).
    let first_name = first[0]["metadata"]["name"].as_str().unwrap().to_string();
    kubectl(&["patch", "pb", &first_name, "-n", ns, "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    let both = wait_batches(ns, "forbid", 2, Duration::from_secs(30), &ctl);
    assert_eq!(both[1]["metadata"]["name"].as_str().unwrap(), run_name("forbid", second_at));
    let started = Timestamp::now();
    assert!(started.duration_since(second_at).as_secs() <= 45, "started inside the deadline");
    assert!(watch.snapshot().recreated().is_empty());
    println!(
        "concurrency: Forbid held {} until {first_name} ended; Replace replaced it",
        run_name("forbid", second_at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_run_once_per_time_through_kills_downtime_and_concurrency() {
    ensure_crd();
    let namespaces =
        [TestNamespace::new("sched-minute"), TestNamespace::new("sched-down"), TestNamespace::new("sched-conc")];
    let mut watches = Vec::new();
    for ns in &namespaces {
        watches.push(BatchUidWatch::start(ns.name()).await);
    }
    // Start just after a minute boundary, so no scenario's first run is a few ms away.
    sleep_until_past_minute(2);
    type Scenario = fn(&str, &BatchUidWatch);
    let scenarios: [(&str, Scenario); 3] =
        [("every minute", every_minute), ("downtime", downtime), ("concurrency", concurrency)];
    std::thread::scope(|s| {
        let handles: Vec<_> = scenarios
            .iter()
            .zip(&namespaces)
            .zip(&watches)
            .map(|(((name, f), ns), watch)| (name, s.spawn(move || f(ns.name(), watch))))
            .collect();
        let failed: Vec<&str> =
            handles.into_iter().filter_map(|(name, h)| h.join().is_err().then_some(*name)).collect();
        assert!(failed.is_empty(), "scenarios failed (see their panics above): {failed:?}");
    });
}

/// What a run could never create is refused when the schedule is applied.
#[test]
fn admission_refuses_schedules_that_could_never_run() {
    ensure_crd();
    let ns = TestNamespace::new("sched-admission");
    let refused = |s: &Value, want: &str| {
        let out = kubectl_stdin_output(&["apply", "-n", ns.name(), "-f", "-"], &s.to_string());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "admitted: {s:#}");
        assert!(err.contains(want), "refused, but without {want:?}: {err}");
    };
    refused(&schedule("mars", json!({ "timeZone": "Mars/Olympus_Mons" })), "not an IANA time zone");
    refused(&schedule("bad-after", json!({ "completeByAfter": "soon" })), "completeByAfter");
    refused(&schedule("with-date", json!({ "batchTemplate": { "spec": { "gameDate": "2026-01-02" } } })), "gameDate");
    refused(
        &schedule(
            "both",
            json!({ "batchTemplate": { "spec": { "loader": { "template": { "spec": { "containers": [{ "name": "l", "image": "l" }] } } } } } }),
        ),
        "exactly one of spec.targetCount and spec.loader",
    );
    let mut backups =
        schedule("backups", json!({ "batchTemplate": { "spec": { "completion": { "backupStragglers": true } } } }));
    backups["spec"].as_object_mut().unwrap().remove("completeByAfter");
    refused(&backups, "backupStragglers needs a deadline");
    refused(&schedule(&"x".repeat(64), json!({})), "at most 63 characters");
    refused(&schedule("dotted.name", json!({})), "must not contain dots");
    refused(&schedule("no-worker", json!({ "batchTemplate": { "spec": { "worker": null } } })), "worker");
    refused(&schedule("offset", json!({ "gameDateOffsetDays": 8 })), "gameDateOffsetDays");

    // A valid one is admitted, and a bad cron expression (which CEL cannot check) stalls it.
    let ctl = Controller::start("schedule-admission", ns.name(), &[]);
    apply(ns.name(), &schedule("fine", json!({ "schedule": "0 7 * * *" })));
    apply(ns.name(), &schedule("bad-cron", json!({ "schedule": "0 7 * *" })));
    let stalled = wait_until(
        "bad-cron to stall",
        Duration::from_secs(30),
        || {
            let s = schedule_json(ns.name(), "bad-cron");
            let c = s["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Stalled")?.clone();
            (c["status"] == "True").then_some(c)
        },
        || ctl.log_tail(),
    );
    assert_eq!(stalled["reason"], "InvalidSchedule");
    let fine = wait_until(
        "fine to be Ready",
        Duration::from_secs(30),
        || {
            let s = schedule_json(ns.name(), "fine");
            s["status"]["nextScheduleTime"].is_string().then_some(s)
        },
        || ctl.log_tail(),
    );
    let next: Timestamp = fine["status"]["nextScheduleTime"].as_str().unwrap().parse().unwrap();
    let local = next.to_zoned(jiff::tz::TimeZone::get(ZONE).unwrap());
    assert_eq!((local.hour(), local.minute()), (7, 0), "7 AM in New York: {next}");
    let out = kubectl_output(&["wait", "--for=condition=Ready", "pbs/fine", "-n", ns.name(), "--timeout=10s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
