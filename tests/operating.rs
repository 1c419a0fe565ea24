//! Operating it (issue 18) on the real control plane: the ETA of a steady batch, `AtRisk` for a
//! deadline that cannot be met, stuck pods (a kwok stage holds a shard in ImagePullBackOff; a
//! nodeSelector no node matches makes the real scheduler report Unschedulable), the DURATION and
//! ETA columns, and the README's metrics table checked against what `/metrics` serves.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use support::batch::{apply, batch, batch_json, condition, wait_batch, wait_for_phase};
use support::controller::Controller;
use support::kwok_stage::TestStage;
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json};

fn ts(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

/// 200 shards of 1 item, 10 at a time, each pod running exactly `run_for`: a steady stage.
fn steady_batch(name: &str, run_for: &str, parallelism: u32, extra: Value) -> Value {
    let mut spec = json!({ "targetCount": 200, "itemsPerShard": 1, "parallelism": parallelism });
    support::batch::merge(&mut spec, &extra);
    batch(name, spec, json!({ "annotations": { "test.predictions.dev/run-for": run_for } }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_of_a_steady_200_shard_batch_is_within_30_percent_after_a_quarter() {
    ensure_crd();
    let ns = TestNamespace::new("eta");
    let ctl = Controller::start("eta", ns.name(), &[]);
    apply(ns.name(), &steady_batch("steady", "3s", 10, json!({})));

    // At 25 % (50 of 200 shards), read the estimate the status carries.
    let quarter = wait_batch(ns.name(), "steady", &ctl, Duration::from_secs(180), "a quarter of the shards", |b| {
        b["status"]["shards"]["succeeded"].as_u64().unwrap_or(0) >= 50
            && ts(&b["status"]["eta"]["completionTime"]).is_some()
    });
    let measured_at = Timestamp::now();
    let eta = ts(&quarter["status"]["eta"]["completionTime"]).unwrap();
    let rate = quarter["status"]["eta"]["shardsPerMinute"].as_str().unwrap_or_default().to_string();
    let wide = kubectl(&["get", "pb", "steady", "-n", ns.name(), "-o", "wide"]);
    assert!(wide.lines().next().is_some_and(|h| h.contains("ETA")), "ETA column under -o wide:\n{wide}");

    let done = wait_for_phase(ns.name(), "steady", "Succeeded", Duration::from_secs(300), &ctl);
    let workers_end = ts(&done["status"]["workers"]["completionTime"]).expect("workers.completionTime");
    let remaining = workers_end.duration_since(measured_at).as_secs_f64();
    let error = eta.duration_since(workers_end).as_secs_f64();
    eprintln!(
        "eta figures: at {} shards ({rate}/min) ETA {eta}, actual end {workers_end}: off by {error:+.1} s of {remaining:.1} s remaining ({:+.0} %)",
        quarter["status"]["shards"]["succeeded"],
        error * 100.0 / remaining
    );
    assert!(remaining > 10.0, "the batch ended too soon after the quarter to judge the ETA: {remaining} s");
    assert!(error.abs() <= 0.30 * remaining, "ETA {eta} vs actual {workers_end}: {error:+.1} s of {remaining:.1} s");

    // Once ended: durations in place, no ETA left, and the DURATION column shows it.
    assert!(done["status"]["eta"].is_null(), "{:#}", done["status"]);
    let duration = done["status"]["duration"].as_str().expect("status.duration").to_string();
    for stage in ["workers", "consolidation", "export"] {
        assert!(done["status"][stage]["duration"].is_string(), "{stage}: {:#}", done["status"]);
    }
    let table = kubectl(&["get", "pb", "steady", "-n", ns.name()]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("DURATION"), "{table}");
    assert!(table.lines().nth(1).is_some_and(|row| row.contains(&duration)), "{table}");

    // Everything /metrics serves is in the README's metrics table (families without a series yet
    // are not served; the unit test `metrics::tests` checks the table against all of them).
    let (code, exposition) = support::http::get(&ctl.http_addr(), "/metrics");
    assert_eq!(code, 200);
    let served = served_metric_names(&exposition);
    let documented = readme_metric_names();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(undocumented.is_empty(), "served but not in the README's metrics table: {undocumented:?}");
    for name in [
        "prediction_batch_completions_total",
        "prediction_batch_stage_duration_seconds",
        "prediction_batch_queue_wait_seconds",
        "prediction_batch_in_flight",
        "process_cpu_seconds_total",
    ] {
        assert!(served.contains(name), "{name} not served after a batch ran:\n{exposition}");
    }
    let waits = support::http::metric(&exposition, "prediction_batch_queue_wait_seconds_count{controller=\"batches\"}");
    assert!(waits.is_some_and(|n| n >= 10.0), "passes started by changes were clocked: {waits:?}");
    assert_eq!(
        support::http::metric(
            &exposition,
            "prediction_batch_completions_total{outcome=\"Succeeded\",reason=\"Succeeded\"}"
        ),
        Some(1.0),
        "{exposition}"
    );
    assert!(support::http::metric(&exposition, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_cannot_be_met_raises_at_risk_once_then_fails_and_is_counted() {
    ensure_crd();
    let ns = TestNamespace::new("atrisk");
    let ctl = Controller::start("atrisk", ns.name(), &[]);
    // 200 shards, 5 at a time, 3 s each: about two minutes; the deadline is 40 s away.
    let deadline = Timestamp::now() + Duration::from_secs(40);
    let deadline = Timestamp::from_second(deadline.as_second()).unwrap();
    let b = steady_batch("late", "3s", 5, json!({ "completion": { "completeBy": deadline.to_string() } }));
    apply(ns.name(), &b);
    let started = Instant::now();
    let risky = wait_batch(ns.name(), "late", &ctl, Duration::from_secs(60), "AtRisk=True", |b| {
        condition(b, "AtRisk").is_some_and(|(status, _)| status == "True")
    });
    let raised_after = started.elapsed();
    let (_, reason) = condition(&risky, "AtRisk").unwrap();
    assert_eq!(reason, "EtaPastDeadline");
    assert!(raised_after < Duration::from_secs(30), "AtRisk took {raised_after:?}");
    assert!(ts(&risky["status"]["eta"]["quorumTime"]).is_some_and(|t| t > deadline), "{:#}", risky["status"]);

    // While it runs, the gauges an alert needs name it.
    let (_, exposition) = support::http::get(&ctl.http_addr(), "/metrics");
    let labels = format!("{{namespace=\"{}\",batch=\"late\"}}", ns.name());
    let complete_by =
        support::http::metric(&exposition, &format!("prediction_batch_complete_by_timestamp_seconds{labels}"));
    assert_eq!(complete_by, Some(deadline.as_second() as f64), "{exposition}");
    let eta = support::http::metric(&exposition, &format!("prediction_batch_eta_timestamp_seconds{labels}"));
    assert!(eta.is_some_and(|e| e > deadline.as_second() as f64), "{exposition}");
    assert!(support::http::metric(&exposition, "prediction_batch_in_flight").is_some_and(|n| n >= 1.0));

    let failed = wait_for_phase(ns.name(), "late", "Failed", Duration::from_secs(120), &ctl);
    assert_eq!(condition(&failed, "Stalled").unwrap().1, "DeadlineExceeded");
    assert!(condition(&failed, "AtRisk").is_none(), "AtRisk goes with the workers: {:#}", failed["status"]);
    let events =
        kubectl_json(&["get", "events", "-n", ns.name(), "--field-selector", "involvedObject.name=late,reason=AtRisk"]);
    let warnings: Vec<&Value> = events["items"].as_array().unwrap().iter().collect();
    assert_eq!(warnings.len(), 1, "one AtRisk event: {warnings:#?}");
    assert_eq!(warnings[0]["type"], "Warning");
    assert_eq!(warnings[0]["count"].as_u64().unwrap_or(1), 1, "{:#}", warnings[0]);

    let (_, exposition) = support::http::get(&ctl.http_addr(), "/metrics");
    let failed_count = support::http::metric(
        &exposition,
        "prediction_batch_completions_total{outcome=\"Failed\",reason=\"DeadlineExceeded\"}",
    );
    assert_eq!(failed_count, Some(1.0), "{exposition}");
    assert!(
        support::http::metric(&exposition, &format!("prediction_batch_complete_by_timestamp_seconds{labels}"))
            .is_none(),
        "an ended batch leaves the per-batch gauges"
    );
    assert!(batch_json(ns.name(), "late").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_stuck_on_its_image_shows_on_the_batch_within_30s_and_clears_when_it_moves_on() {
    ensure_crd();
    let ns = TestNamespace::new("stuck");
    let ctl = Controller::start("stuck", ns.name(), &[]);
    let hold = TestStage::waiting(ns.name(), &["3"], "ImagePullBackOff");
    // 30 shards of 3 s, 10 at a time: shard 3 starts in the first wave and never runs.
    // A retry per shard: the held pod is deleted below, which the Job controller counts as a failure.
    let retry = json!({ "worker": { "backoffLimitPerShard": 2 } });
    apply(ns.name(), &batch("img", retry, json!({ "annotations": { "test.predictions.dev/run-for": "3s" } })));
    let started = Instant::now();
    let stuck = wait_batch(ns.name(), "img", &ctl, Duration::from_secs(60), "PodsStuck=True", |b| {
        condition(b, "PodsStuck").is_some_and(|(status, _)| status == "True")
    });
    let shown_after = started.elapsed();
    eprintln!("stuck figures: shard 3 in ImagePullBackOff shown on the batch {shown_after:.1?} after the apply");
    assert!(shown_after < Duration::from_secs(30), "shown after {shown_after:?}");
    let (_, reason) = condition(&stuck, "PodsStuck").unwrap();
    assert_eq!(reason, "ImagePullBackOff");
    let message =
        support::batch::condition_object(&stuck, "PodsStuck").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("shard 3: ImagePullBackOff"), "{message}");
    let listed = &stuck["status"]["stuckPods"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert_eq!((listed[0]["shard"].as_u64(), listed[0]["stage"].as_str()), (Some(3), Some("workers")));
    let events = kubectl_json(&[
        "get",
        "events",
        "-n",
        ns.name(),
        "--field-selector",
        "involvedObject.name=img,reason=PodsStuck",
    ]);
    let events = events["items"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0]["message"].as_str().unwrap_or_default().contains("shard 3"), "{:#}", events[0]);

    // The image is fixed: the held pod is replaced by one that runs, and the batch moves on.
    let pod = listed[0]["pod"].as_str().unwrap().to_string();
    drop(hold);
    kubectl(&["delete", "pod", &pod, "-n", ns.name(), "--wait=false"]);
    let cleared = wait_batch(ns.name(), "img", &ctl, Duration::from_secs(60), "PodsStuck=False", |b| {
        condition(b, "PodsStuck").is_some_and(|(status, _)| status == "False")
    });
    assert!(cleared["status"]["stuckPods"].is_null(), "{:#}", cleared["status"]);
    let done = wait_for_phase(ns.name(), "img", "Succeeded", Duration::from_secs(120), &ctl);
    assert!(condition(&done, "PodsStuck").is_none(), "an ended batch has no PodsStuck: {:#}", done["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_no_node_can_take_shows_unschedulable_pods() {
    ensure_crd();
    let ns = TestNamespace::new("unsched");
    let ctl = Controller::start("unsched", ns.name(), &[]);
    let mut b = batch("nowhere", json!({ "targetCount": 8 }), json!({}));
    b["spec"]["worker"]["template"]["spec"]["nodeSelector"] = json!({ "example.com/no-such-node": "true" });
    apply(ns.name(), &b);
    let stuck = wait_batch(ns.name(), "nowhere", &ctl, Duration::from_secs(60), "PodsStuck=True", |b| {
        condition(b, "PodsStuck").is_some_and(|(status, _)| status == "True")
    });
    assert_eq!(condition(&stuck, "PodsStuck").unwrap().1, "Unschedulable");
    let pods = stuck["status"]["stuckPods"].as_array().unwrap();
    assert_eq!(pods.len(), 2, "both shards: {pods:#?}");
    assert!(
        pods.iter()
            .all(|p| p["reason"] == "Unschedulable" && p["message"].as_str().is_some_and(|m| m.contains("node"))),
        "{pods:#?}"
    );
}

/// Sample names of every family `/metrics` serves (a counter as `<name>_total`, an info metric as
/// `<name>_info`, a histogram by its family name).
fn served_metric_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, kind) = (parts.next()?, parts.next()?);
            Some(match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            })
        })
        .collect()
}

/// The first column of the README's metrics table (under "### Metrics").
fn readme_metric_names() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n### Metrics\n").nth(1).expect("README has a '### Metrics' section");
    let section = section.split("\n#").next().unwrap_or_default();
    let names: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1))
        .map(|n| n.split('{').next().unwrap_or(n).to_string())
        .collect();
    assert!(names.len() >= 20, "the metrics table lists only {names:?}");
    names
}
