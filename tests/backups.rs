//! Backup runs for stragglers end to end (issue 16, part 4) on the real control plane: two
//! batches alike, each with shard 3 straggling (kwok's pod-complete stage holds completion index 3
//! for 45 s), one with `completion.backupStragglers`. The one with backups reaches its quorum
//! well before the one without, counts no shard twice, stops the straggler's original run, and
//! keeps to one backup through a controller kill.

mod support;

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use support::batch::{apply, batch, phase, wait_batch};
use support::controller::Controller;
use support::watch::{MultiJobWatch, StatusWatch};
use support::{TestNamespace, ensure_crd, kubectl_json, wait_until};

const STRAGGLE_FOR_SECS: i64 = 45;

/// Seconds from the batch's creation to its quorum: `quorumTime` when the quorum was met while
/// shards still ran, else the worker stage's end (a stage that ran to the end meets it then).
fn time_to_quorum(b: &Value) -> i64 {
    let at = |v: &Value| v.as_str().and_then(|s| s.parse::<Timestamp>().ok());
    let met = at(&b["status"]["quorumTime"]).or_else(|| at(&b["status"]["workers"]["completionTime"]));
    let created = at(&b["metadata"]["creationTimestamp"]).expect("creationTimestamp");
    met.unwrap_or_else(|| panic!("no quorumTime nor workers.completionTime: {:#}", b["status"]))
        .duration_since(created)
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_reach_the_quorum_sooner_and_count_no_shard_twice() {
    ensure_crd();
    let ns = TestNamespace::new("backups");
    let statuses = StatusWatch::start(ns.name()).await;
    let jobs = MultiJobWatch::start(ns.name()).await;
    let mut ctl = Controller::start("backups", ns.name(), &[]);
    let complete_by = (Timestamp::now() + SignedDuration::from_secs(600)).to_string();
    let slow = json!({ "annotations": {
        "test.predictions.dev/straggle-indexes": "3",
        "test.predictions.dev/straggle-for": format!("{STRAGGLE_FOR_SECS}s"),
    }});
    let spec = |backups: bool| json!({ "parallelism": 30, "completion": { "completeBy": complete_by, "backupStragglers": backups } });
    apply(ns.name(), &batch("with-backups", spec(true), slow.clone()));
    apply(ns.name(), &batch("without-backups", spec(false), slow));

    // The backup Job appears; the controller is killed right then and restarted: still one backup.
    wait_until(
        "the backup Job of shard 3",
        Duration::from_secs(60),
        || (jobs.count("with-backups", "workers") == 2).then_some(()),
        || ctl.log_tail(),
    );
    ctl.kill();
    ctl.restart();

    let with =
        wait_batch(ns.name(), "with-backups", &ctl, Duration::from_secs(90), "Succeeded", |b| phase(b) == "Succeeded");
    // The straggler's original run was stopped with the worker Job, long before its 45 s.
    let pods = kubectl_json(&[
        "get",
        "pods",
        "-n",
        ns.name(),
        "-l",
        "batch.kubernetes.io/job-name=with-backups-workers",
        "-o",
        "json",
    ]);
    let index_3_succeeded = pods["items"].as_array().unwrap().iter().any(|p| {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "3"
            && p["status"]["phase"] == "Succeeded"
    });
    let without = wait_batch(
        ns.name(),
        "without-backups",
        &ctl,
        Duration::from_secs(STRAGGLE_FOR_SECS as u64 + 60),
        "Succeeded",
        |b| phase(b) == "Succeeded",
    );

    let (t_with, t_without) = (time_to_quorum(&with), time_to_quorum(&without));
    println!("time to quorum with a 45 s straggler: with backups {t_with} s, without {t_without} s");
    assert!(t_with < t_without, "with backups {t_with} s, without {t_without} s");
    assert!(t_with < 30 && t_without >= STRAGGLE_FOR_SECS - 2, "with {t_with} s, without {t_without} s");

    let st = &with["status"];
    assert_eq!((st["backups"]["started"].as_str(), st["backups"]["won"].as_str()), (Some("3"), Some("3")), "{st:#}");
    assert_eq!((st["shards"]["succeeded"].as_u64(), st["shards"]["total"].as_u64()), (Some(30), Some(30)), "{st:#}");
    assert_eq!(st["progress"], "120/120");
    assert!(without["status"]["backups"].is_null(), "{:#}", without["status"]);
    assert!(!index_3_succeeded, "shard 3's original run finished: it was not stopped");

    // No shard counted twice: no status version ever showed more than there are.
    let rec = statuses.snapshot();
    assert!(rec.regressions.is_empty(), "{:?}", rec.regressions);
    assert_eq!(rec.max_succeeded.get("with-backups"), Some(&(30, 120)), "{:?}", rec.max_succeeded);
    // One Indexed Job and one backup Job; the consolidation saw every shard once.
    assert_eq!(jobs.count("with-backups", "workers"), 2);
    assert_eq!(jobs.count("without-backups", "workers"), 1);
    let consolidation = kubectl_json(&["get", "job", "with-backups-consolidate", "-n", ns.name(), "-o", "json"]);
    let env = consolidation["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(var("SUCCEEDED_SHARDS"), Some(json!("0-29")));
    assert_eq!(var("SUCCEEDED_ITEMS"), Some(json!("120")));
    let backup = kubectl_json(&["get", "job", "with-backups-workers-b3", "-n", ns.name(), "-o", "json"]);
    let benv = backup["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let shard_index = benv.iter().find(|e| e["name"] == "SHARD_INDEX").map(|e| e["value"].clone());
    assert_eq!(shard_index, Some(json!("3")), "the backup sees the shard's real index");
}
