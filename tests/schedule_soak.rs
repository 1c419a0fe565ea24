//! The schedule soak (issue 17), a preset of the chaos suite: a PredictionSchedule firing every
//! minute (a compressed "day": loader, workers, consolidation and export each run), for
//! `SOAK_DAYS` minutes (default 5, the `tests/run-all` version; `SOAK_DAYS=60` by hand for the
//! figure of the issue's closing note), while two leader-elected controller replicas are
//! SIGKILLed at random moments (every minute boundary, when runs are created, among them), the
//! kube-apiserver and etcd are each restarted once on different days, and Firestore (the real
//! emulator) is down for 30-40 s. `SOAK_SEED` replays a run's disruption schedule.
//!
//! From the cluster, the emulator and watches of its own, it asserts that every scheduled minute
//! got exactly one batch (one name, one UID, none outside the window), each ended Succeeded with
//! each stage's Job created once (the export's included), each is mirrored in Firestore (one
//! document per batch, of that batch, final), and no batch status ever moved backwards.
//!
//! The Firestore emulator keeps its documents in memory: its restart (the outage's end) loses every
//! document, which real Firestore never does. So "mirrored" is checked as: after the outage, the
//! batches that finished during it get their final document from the mirror's retries (within
//! seconds of Firestore's return), and at the end every day has exactly one document in the
//! collection, of its batch's UID, showing it Succeeded and exported (see the loop's comment on
//! how the documents written before the outage come back).
//!
//! It runs on a cluster of its own (restarting the apiserver and etcd must not disturb other
//! tests), in `target/soak-cluster`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use prediction_batch_controller::mirror::firestore::{FirestoreOptions, FirestoreStore, StoredDocument};
use serde_json::{Value, json};
use support::controller::{Controller, Launch, lease_holder};
use support::firestore_emulator::{COLLECTION, Emulator, PROJECT, install_crypto_provider};
use support::kwok_stage::TestStage;
use support::watch::{BatchUidWatch, MultiJobWatch, StatusWatch};
use support::{TestNamespace, ensure_crd, kubectl_output, kubectl_stdin, stages};

const SCHEDULE: &str = "soak";
const TIME_ZONE: &str = "America/New_York";
/// What every day's loader reports, in shards of 3: 4 worker shards.
const ITEMS: i64 = 12;
const PER_SHARD: i64 = 3;
/// How late a run may still start (Forbid holds a run while the previous day's batch runs).
const STARTING_DEADLINE_SECS: i64 = 50;
/// Every pod of every stage runs this long on kwok: a day takes about 10 s of its minute.
const POD_RUN_FOR: &str = "1s";
const STAGES: [&str; 4] = ["loader", "workers", "consolidation", "export"];

struct OwnCluster(PathBuf);

impl OwnCluster {
    fn up(dir: PathBuf) -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let _ = Command::new(format!("{root}/tests/cluster/down")).env("CLUSTER_DIR", &dir).output();
        let out = Command::new(format!("{root}/tests/cluster/up"))
            .env("CLUSTER_DIR", &dir)
            .output()
            .expect("run tests/cluster/up");
        assert!(
            out.status.success(),
            "tests/cluster/up failed for the soak cluster:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        OwnCluster(dir)
    }

    /// `tests/cluster/restart <component> 1`: stopped, down 1 s, started with the same command
    /// line and data (etcd keeps its data), waited for until ready.
    fn restart(&self, component: &str) -> Duration {
        let started = Instant::now();
        let root = env!("CARGO_MANIFEST_DIR");
        let out = Command::new(format!("{root}/tests/cluster/restart"))
            .args([component, "1"])
            .env("CLUSTER_DIR", &self.0)
            .output()
            .expect("run tests/cluster/restart");
        assert!(out.status.success(), "{component} restart failed: {}", String::from_utf8_lossy(&out.stderr));
        started.elapsed()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("soak cluster kept for inspection: CLUSTER_DIR={} (logs in logs/)", self.0.display());
            return;
        }
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/down"))
            .env("CLUSTER_DIR", &self.0)
            .output();
    }
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A disruption of the soak, at a wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// SIGKILL a replica (the lease holder when `leader`, else either), restart it after < 0.5 s.
    Kill {
        leader: bool,
        boundary: bool,
    },
    Restart(&'static str),
    FirestoreDown,
    FirestoreUp,
}

fn after(t: Timestamp, ms: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_millis(ms)).expect("a time in range")
}

/// The batch of the run scheduled at `t`: `<schedule>-<yyyymmdd>-<hhmm>` on New York's wall clock.
fn run_name(t: Timestamp) -> String {
    let z = t.to_zoned(TimeZone::get(TIME_ZONE).expect("the bundled tz database has New York"));
    format!("{SCHEDULE}-{:04}{:02}{:02}-{:02}{:02}", z.year(), z.month(), z.day(), z.hour(), z.minute())
}

fn game_date(t: Timestamp) -> String {
    t.to_zoned(TimeZone::get(TIME_ZONE).unwrap()).date().to_string()
}

/// The schedule: every minute in New York, Forbid, history limits that keep every day's batch.
fn schedule_manifest(ns: &str) -> Value {
    let run_for = json!({ "annotations": { stages::RUN_FOR: POD_RUN_FOR } });
    let container = |name: &str| json!([{ "name": name, "image": format!("example.com/{name}:1") }]);
    json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionSchedule",
        "metadata": { "name": SCHEDULE, "namespace": ns },
        "spec": {
            "schedule": "* * * * *",
            "timeZone": TIME_ZONE,
            "completeByAfter": "+5h30m",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECS,
            "successfulBatchesHistoryLimit": 1000,
            "failedBatchesHistoryLimit": 1000,
            "batchTemplate": {
                "metadata": { "labels": { "app": "soak" } },
                "spec": {
                    "loader": { "template": { "metadata": run_for, "spec": { "containers": container("load") } } },
                    "itemsPerShard": PER_SHARD,
                    "parallelism": 4,
                    "worker": {
                        "backoffLimitPerShard": 0,
                        "template": { "metadata": run_for, "spec": { "containers": container("worker") } }
                    },
                    "consolidation": { "template": { "metadata": run_for, "spec": { "containers": container("consolidate") } } },
                    "export": { "template": { "metadata": run_for, "spec": { "containers": container("export") } } }
                }
            }
        }
    })
}

/// kubectl, retried for up to a minute (the apiserver may be restarting); its stdout.
fn kubectl_retry(args: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let out = kubectl_output(args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "kubectl {args:?} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn json_retry(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_retry(&all)).expect("kubectl JSON")
}

/// The replica holding the lease (identity `<host>-<pid>`), if the lease names a live one.
fn leader(ns: &str, replicas: &[Controller; 2]) -> Option<usize> {
    let holder = lease_holder(ns)?;
    replicas.iter().position(|r| r.pid().is_some_and(|p| holder.ends_with(&format!("-{p}"))))
}

/// SIGKILLs one replica (the leader when `want_leader` and the lease names a live one, else
/// either) and restarts it after up to 0.5 s; whether it was the leader.
fn kill(ns: &str, replicas: &mut [Controller; 2], want_leader: bool, rng: &mut Rng) -> bool {
    let current = leader(ns, replicas);
    let r = current.filter(|_| want_leader).unwrap_or_else(|| rng.next(2) as usize);
    println!(
        "soak: {} SIGKILL replica {} ({})",
        Timestamp::now(),
        ["a", "b"][r],
        if current == Some(r) { "the leader" } else { "not the leader" }
    );
    replicas[r].kill();
    std::thread::sleep(Duration::from_millis(rng.next(500)));
    replicas[r].restart();
    current == Some(r)
}

/// The schedule, the batches and Jobs, the schedule's events and both replicas' last log lines.
fn diagnose(ns: &str, replicas: &[Controller; 2]) -> String {
    let show = |args: &[&str]| {
        let o = kubectl_output(args);
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    format!(
        "{}\n{}\n{}\n{}\n{}",
        show(&["get", "predictionschedule", SCHEDULE, "-n", ns, "-o", "yaml"]),
        show(&["get", "predictionbatches,jobs", "-n", ns, "-o", "wide"]),
        show(&["get", "events", "-n", ns, "--field-selector", "involvedObject.kind=PredictionSchedule"]),
        replicas[0].log_tail(),
        replicas[1].log_tail()
    )
}

/// The document, `None` when missing or Firestore is unreachable.
async fn read_doc(store: &FirestoreStore, id: &str) -> Option<StoredDocument> {
    tokio::time::timeout(Duration::from_secs(5), store.read(id)).await.ok()?.ok()?
}

/// Whether the document is missing (not: unreachable), retried for 10 s while Firestore answers
/// with errors (the client reconnects after a restart).
async fn first_doc_missing(store: &FirestoreStore, id: &str) -> bool {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), store.read(id)).await {
            Ok(Ok(doc)) => return doc.is_none(),
            other => assert!(
                start.elapsed() < Duration::from_secs(10),
                "Firestore does not answer after its restart: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The document shows this batch (this UID) finished: Succeeded, every item done, exported.
fn doc_is_final(d: &StoredDocument, uid: &str) -> bool {
    d.str("uid") == Some(uid)
        && d.str("phase") == Some("Succeeded")
        && d.bool("is_complete") == Some(true)
        && d.int("expected_players") == Some(ITEMS)
        && d.int("completed_players") == Some(ITEMS)
        && d.bool("consolidation_completed") == Some(true)
        && d.bool("export_completed") == Some(true)
        && d.bool("deleted") == Some(false)
}

/// IDs of every document in the collection (a RunQuery over it: the emulator serves no
/// ListDocuments).
async fn document_ids(host: &str) -> Result<BTreeSet<String>, String> {
    use firestore::gcloud_sdk::google_cloud_auth::credentials::anonymous;
    let opts = firestore::FirestoreDbOptions::new(PROJECT.into()).with_firebase_api_url(format!("http://{host}"));
    let db = firestore::FirestoreDb::with_options_auth(opts, anonymous::Builder::new().build())
        .await
        .map_err(|e| e.to_string())?;
    let docs = db.fluent().select().from(COLLECTION).query().await.map_err(|e| e.to_string())?;
    Ok(docs.into_iter().map(|d| d.name.rsplit('/').next().unwrap_or_default().to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_soak_creates_exports_and_mirrors_every_day_once() {
    let test_start = Instant::now();
    let days: u32 = std::env::var("SOAK_DAYS").ok().map_or(5, |d| d.parse().expect("SOAK_DAYS is a number"));
    assert!((3..=900).contains(&days), "SOAK_DAYS must be 3..=900 (the history limit keeps 1000), not {days}");
    let seed = std::env::var("SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("soak: {days} days, seed {seed} (SOAK_SEED={seed} replays the disruption schedule)");
    let mut rng = Rng(seed);

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/soak-cluster");
    let cluster = OwnCluster::up(dir.clone());
    // The only test in this binary: point the shared helpers at the soak cluster before first use.
    unsafe { std::env::set_var("CLUSTER_DIR", &dir) };
    ensure_crd();
    install_crypto_provider();
    let ns = TestNamespace::new("soak");
    let ns = ns.name();
    // Loader pods of the namespace report 12 items as their termination message.
    let _loader_output = TestStage::loader_output(ns, &format!(r#"{{"targetCount": {ITEMS}}}"#));
    let jobs = MultiJobWatch::start(ns).await;
    let statuses = StatusWatch::start(ns).await;
    let batches = BatchUidWatch::start(ns).await;

    let mut emulator = Some(Emulator::start(0));
    let port = emulator.as_ref().unwrap().port;
    let host = format!("127.0.0.1:{port}");
    let store = FirestoreStore::new(FirestoreOptions {
        project: PROJECT.into(),
        database: None,
        collection: COLLECTION.into(),
        emulator_host: Some(host.clone()),
    });

    let replica = |name: &str| {
        Launch::test(name, ns)
            .args(["--leader-elect", "--lease-namespace", ns, "--lease-duration", "3"])
            .args(["--firestore-project", PROJECT])
            .env("FIRESTORE_EMULATOR_HOST", &host)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .start()
    };
    let mut replicas = [replica("soak-a"), replica("soak-b")];
    support::wait_until(
        "a replica to hold the lease",
        Duration::from_secs(60),
        || leader(ns, &replicas),
        || format!("{}\n{}", replicas[0].log_tail(), replicas[1].log_tail()),
    );

    kubectl_stdin(&["apply", "-f", "-"], &schedule_manifest(ns).to_string());
    let schedule = json_retry(&["get", "predictionschedule", SCHEDULE, "-n", ns]);
    let schedule_uid = schedule["metadata"]["uid"].as_str().unwrap().to_string();
    let created: Timestamp = schedule["metadata"]["creationTimestamp"].as_str().unwrap().parse().unwrap();
    // The first run is the first minute strictly after the creation time (whole seconds).
    let first = Timestamp::from_second(created.as_second() - created.as_second().rem_euclid(60) + 60).unwrap();
    let runs: Vec<Timestamp> = (0..days).map(|d| after(first, i64::from(d) * 60_000)).collect();
    let last = *runs.last().unwrap();
    let names: Vec<String> = runs.iter().map(|t| run_name(*t)).collect();
    let last_name = names.last().unwrap().clone();
    println!(
        "soak: schedule created {created}, runs {} ({}) .. {} ({last_name}); set up in {:.0?}",
        runs[0],
        names[0],
        last,
        test_start.elapsed()
    );

    // The disruptions. Day d is the minute from runs[d]. Every day one kill (mostly of the leader)
    // lands at its run's creation: on even days in the 1.5 s before it (the standby must take
    // over and create the run late), on odd days in the 1.5 s after it (the create, the
    // schedule's status write and the new batch's first passes are in flight); one or two more
    // land at random moments.
    let day = |d: u32, ms: i64| after(first, i64::from(d) * 60_000 + ms);
    let mut plan: Vec<(Timestamp, Act)> = Vec::new();
    for d in 0..days {
        let is_last = d + 1 == days;
        let at_leader = rng.next(4) != 0;
        let ms = if d % 2 == 0 { -1500 + rng.next(1500) as i64 } else { rng.next(1500) as i64 };
        plan.push((day(d, ms), Act::Kill { leader: at_leader, boundary: true }));
        for _ in 0..(if is_last { 1 } else { 1 + rng.next(2) }) {
            let ms = if is_last { 3000 + rng.next(8000) } else { 3000 + rng.next(54_000) };
            plan.push((day(d, ms as i64), Act::Kill { leader: rng.next(2) == 0, boundary: false }));
        }
    }
    let (api_day, outage_day) = (days / 4, days / 2);
    let etcd_day = (3 * days / 4).max(outage_day + 1).min(days - 1);
    plan.push((day(api_day, 2000 + rng.next(43_000) as i64), Act::Restart("kube-apiserver")));
    plan.push((day(etcd_day, 2000 + rng.next(43_000) as i64), Act::Restart("etcd")));
    // Firestore goes down while the day's batch runs, and stays down past its end.
    let down_at = day(outage_day, 3000 + rng.next(3000) as i64);
    plan.push((down_at, Act::FirestoreDown));
    plan.push((after(down_at, 30_000 + rng.next(10_001) as i64), Act::FirestoreUp));
    plan.sort_by_key(|(t, _)| *t);
    println!(
        "soak: apiserver restart on day {api_day}, Firestore outage on day {outage_day}, etcd restart on day {etcd_day}, {} kills planned",
        plan.iter().filter(|(_, a)| matches!(a, Act::Kill { .. })).count()
    );

    let soak_start = Instant::now();
    let (mut kills, mut leader_kills, mut boundary_kills) = (0u32, 0u32, 0u32);
    let mut restarts: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut next = 0;
    let mut suspended = false;
    let mut outage: Option<(Timestamp, Instant)> = None;
    let mut outage_secs = 0.0;
    let mut came_back_empty = None;
    // After Firestore's return: the batches that finished during the outage (their final write
    // is the worker's retry), and when it returned.
    let mut post_outage: Option<(Instant, Vec<(String, String)>)> = None;
    let mut retry_lag: Option<Duration> = None;
    let mut finished_in_outage = 0usize;
    let mut last_mirror_check = Instant::now() - Duration::from_secs(10);
    let mut mirrored: BTreeSet<String> = BTreeSet::new();
    loop {
        let now = Timestamp::now();
        while next < plan.len() && plan[next].0 <= now {
            let (at, act) = plan[next];
            next += 1;
            let late = now.duration_since(at).as_secs_f64();
            match act {
                Act::Kill { leader: want_leader, boundary } => {
                    let was_leader = kill(ns, &mut replicas, want_leader, &mut rng);
                    kills += 1;
                    leader_kills += u32::from(was_leader);
                    boundary_kills += u32::from(boundary);
                }
                Act::Restart(component) => {
                    let took = cluster.restart(component);
                    println!("soak: restarted {component} at {now} ({late:.1}s late) in {took:.1?}");
                    restarts.insert(component, took);
                }
                Act::FirestoreDown => {
                    emulator.take().unwrap().stop();
                    outage = Some((now, Instant::now()));
                    println!("soak: Firestore down at {now}");
                }
                Act::FirestoreUp => {
                    let (down_ts, down_i) = outage.expect("down before up");
                    emulator = Some(Emulator::start(port));
                    outage_secs = down_i.elapsed().as_secs_f64();
                    // The emulator keeps its documents in memory only: does the first day's
                    // document (written long before the outage) survive its restart?
                    came_back_empty = Some(first_doc_missing(&store, &format!("{ns}.{}", names[0])).await);
                    let rec = statuses.snapshot();
                    let done_meanwhile: Vec<(String, String)> = names
                        .iter()
                        .filter(|n| {
                            rec.last(n).is_some_and(|s| {
                                s["phase"] == "Succeeded"
                                    && s["completionTime"]
                                        .as_str()
                                        .and_then(|t| t.parse::<Timestamp>().ok())
                                        .is_some_and(|t| t >= down_ts)
                            })
                        })
                        .map(|n| {
                            let uid = batches.snapshot().uids[n].iter().next().cloned().unwrap_or_default();
                            (n.clone(), uid)
                        })
                        .collect();
                    finished_in_outage = done_meanwhile.len();
                    println!(
                        "soak: Firestore back after {outage_secs:.1}s (came back empty: {}); finished meanwhile: {:?}",
                        came_back_empty.unwrap(),
                        done_meanwhile.iter().map(|(n, _)| n).collect::<Vec<_>>()
                    );
                    post_outage = Some((Instant::now(), done_meanwhile));
                }
            }
        }

        // The batches that finished while Firestore was down get their final document from the
        // worker's retries, within seconds of its return. Then both replicas are replaced: the
        // emulator keeps nothing across a restart (real Firestore loses no data in an outage), and
        // a process that confirmed a document before the outage does not send the same content
        // again, so the documents of the days before the outage come back only from a replica
        // started after it (a new term hands every batch to its mirror again). Checked at the end.
        if let Some((back, done_meanwhile)) = &post_outage {
            let back = *back;
            let mut all = true;
            for (name, uid) in done_meanwhile {
                all &= read_doc(&store, &format!("{ns}.{name}")).await.is_some_and(|d| doc_is_final(&d, uid));
            }
            assert!(
                all || back.elapsed() < Duration::from_secs(20),
                "the documents of the batches that finished during the Firestore outage ({done_meanwhile:?}) are not \
                 final 20 s after its return\n{}",
                diagnose(ns, &replicas)
            );
            if all {
                retry_lag = Some(back.elapsed());
                println!("soak: final documents of the outage's days {:.1?} after Firestore's return", back.elapsed());
                post_outage = None;
                // The standby first, then the leader: whichever leads next started after the outage.
                let l = leader(ns, &replicas);
                let lead = l.unwrap_or(0);
                for target in [1 - lead, lead] {
                    leader_kills += u32::from(Some(target) == l);
                    println!(
                        "soak: {} SIGKILL replica {} (replacing both after the outage)",
                        Timestamp::now(),
                        ["a", "b"][target]
                    );
                    replicas[target].kill();
                    std::thread::sleep(Duration::from_millis(300));
                    replicas[target].restart();
                    kills += 1;
                }
            }
        }

        let seen = batches.snapshot();
        if !suspended && seen.uids.contains_key(&last_name) {
            // The last day's batch exists: no more runs.
            kubectl_retry(&[
                "patch",
                "predictionschedule",
                SCHEDULE,
                "-n",
                ns,
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"suspend":true}}"#,
            ]);
            suspended = true;
            println!("soak: {last_name} created; schedule suspended");
        }
        let rec = statuses.snapshot();
        let failed: Vec<&String> =
            names.iter().filter(|n| rec.last(n).is_some_and(|s| s["phase"] == "Failed")).collect();
        assert!(failed.is_empty(), "batches failed: {failed:?}\n{}", diagnose(ns, &replicas));
        let all_terminal = names.iter().all(|n| rec.last(n).is_some_and(|s| s["phase"] == "Succeeded"));
        if all_terminal && last_mirror_check.elapsed() > Duration::from_secs(1) && emulator.is_some() {
            last_mirror_check = Instant::now();
            for n in &names {
                if mirrored.contains(n) {
                    continue;
                }
                let uid = seen.uids[n].iter().next().cloned().unwrap_or_default();
                if read_doc(&store, &format!("{ns}.{n}")).await.is_some_and(|d| doc_is_final(&d, &uid)) {
                    mirrored.insert(n.clone());
                }
            }
        }
        // And the mirror says so on each batch.
        let all_synced = names.iter().all(|n| {
            rec.last(n).is_some_and(|s| {
                s["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "MirrorSynced" && c["status"] == "True"))
            })
        });
        if next == plan.len()
            && suspended
            && post_outage.is_none()
            && retry_lag.is_some()
            && all_terminal
            && all_synced
            && mirrored.len() == names.len()
        {
            break;
        }

        let now = Timestamp::now();
        let missing: Vec<&String> = names
            .iter()
            .zip(&runs)
            .filter(|(n, t)| !seen.uids.contains_key(*n) && now > after(**t, STARTING_DEADLINE_SECS * 1000 + 5000))
            .map(|(n, _)| n)
            .collect();
        assert!(
            missing.is_empty(),
            "runs past their starting deadline without a batch: {missing:?}\n{}",
            diagnose(ns, &replicas)
        );
        assert!(
            now < after(last, 180_000),
            "the soak did not finish 3 minutes after its last run: suspended {suspended}, {next}/{} disruptions done, \
             phases {:?}, mirrored {mirrored:?}\n{}",
            plan.len(),
            names.iter().map(|n| (n, rec.last(n).map(|s| s["phase"].clone()))).collect::<Vec<_>>(),
            diagnose(ns, &replicas)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let soak_elapsed = soak_start.elapsed();

    // The schedule's own record agrees: every run scheduled, none missed, nothing active.
    let schedule = support::wait_until(
        "the schedule's status to show the last run and no active batch",
        Duration::from_secs(30),
        || {
            let s = json_retry(&["get", "predictionschedule", SCHEDULE, "-n", ns]);
            let st = &s["status"];
            let last_at = st["lastScheduleTime"].as_str().and_then(|t| t.parse::<Timestamp>().ok());
            (last_at == Some(last) && st["active"].as_array().is_none_or(|a| a.is_empty())).then_some(s)
        },
        || diagnose(ns, &replicas),
    );
    std::thread::sleep(Duration::from_secs(2));

    let rec = statuses.snapshot();
    let seen = batches.snapshot();
    let uids = jobs.snapshot();
    let ids = document_ids(&host).await.unwrap_or_else(|e| panic!("cannot list the Firestore collection: {e}"));
    let listed = json_retry(&["get", "predictionbatches", "-n", ns]);
    let objects: BTreeMap<String, Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["metadata"]["name"].as_str().unwrap().to_string(), b.clone()))
        .collect();
    // The batch creates the apiserver answered (audit log): a create repeated after a kill gets
    // AlreadyExists (409), which the schedule takes as its own batch, never as a new run.
    let audit = std::fs::read_to_string(dir.join("logs/audit.log")).expect("the audit log");
    let create_codes: Vec<i64> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["verb"] == "create"
                && e["objectRef"]["resource"] == "predictionbatches"
                && e["objectRef"]["namespace"] == ns
        })
        .map(|e| e["responseStatus"]["code"].as_i64().unwrap_or(0))
        .collect();
    let conflicts = create_codes.iter().filter(|c| **c == 409).count();
    // How late each run's batch was created (whole seconds: creationTimestamp's precision).
    let latest_create = names
        .iter()
        .zip(&runs)
        .filter_map(|(n, t)| {
            let created: Timestamp = objects.get(n)?["metadata"]["creationTimestamp"].as_str()?.parse().ok()?;
            Some(created.duration_since(*t).as_secs())
        })
        .max()
        .unwrap_or_default();
    let exports: usize = names.iter().map(|n| uids.get(&(n.clone(), "export".into())).map_or(0, |u| u.len())).sum();
    let uid_count: usize = seen.uids.values().map(|u| u.len()).sum();
    let panics = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("controller-soak-"))
        .filter(|f| std::fs::read_to_string(f.path()).unwrap_or_default().contains("panicked"))
        .map(|f| f.path())
        .collect::<Vec<_>>();
    println!(
        "soak figures: {days} days, {kills} controller kills ({leader_kills} of the leader, {boundary_kills} at a run's creation), \
         {} apiserver restart, {} etcd restart, Firestore down {outage_secs:.0}s ({finished_in_outage} batch finished meanwhile, \
         final {:.1}s after its return; it came back empty: {}), {} batches created ({} distinct names, {uid_count} UIDs), \
         {} batch creates answered ({conflicts} AlreadyExists), runs created at most {latest_create}s late, \
         {exports} exports, {} mirrored ({} documents), {} status regressions, {} status versions checked, \
         soak {soak_elapsed:.0?}, test {:.0?}",
        usize::from(restarts.contains_key("kube-apiserver")),
        usize::from(restarts.contains_key("etcd")),
        retry_lag.unwrap_or_default().as_secs_f64(),
        came_back_empty.unwrap_or(false),
        seen.uids.len(),
        seen.uids.len(),
        create_codes.len(),
        mirrored.len(),
        ids.len(),
        rec.regressions.len(),
        rec.versions.values().sum::<usize>(),
        test_start.elapsed(),
    );

    // Created once: exactly the scheduled minutes, each one name with one UID, owned and labelled.
    let expected: BTreeSet<&String> = names.iter().collect();
    let got: BTreeSet<&String> = seen.uids.keys().collect();
    assert_eq!(got, expected, "batches created vs one per scheduled minute");
    let recreated: Vec<_> = seen.uids.iter().filter(|(_, u)| u.len() != 1).collect();
    assert!(recreated.is_empty(), "names created more than once: {recreated:?}");
    assert!(rec.regressions.is_empty(), "status moved backwards: {:#?}", rec.regressions);
    let strays: Vec<_> = uids.keys().filter(|(b, _)| !expected.contains(b)).collect();
    assert!(strays.is_empty(), "Jobs of no scheduled batch: {strays:?}");
    for (name, t) in names.iter().zip(&runs) {
        let b = objects.get(name).unwrap_or_else(|| panic!("{name} is gone"));
        let uid = seen.uids[name].iter().next().unwrap();
        assert_eq!(b["metadata"]["uid"], uid.as_str(), "{name}");
        assert_eq!(b["metadata"]["labels"]["predictions.dev/schedule"], SCHEDULE, "{name}");
        assert_eq!(b["metadata"]["labels"]["app"], "soak", "{name}: template labels");
        assert_eq!(b["metadata"]["annotations"]["predictions.dev/scheduled-at"], t.to_string(), "{name}");
        let owner =
            b["metadata"]["ownerReferences"].as_array().and_then(|o| o.iter().find(|o| o["controller"] == true));
        assert_eq!(owner.map(|o| &o["uid"]), Some(&json!(schedule_uid)), "{name}: owner");
        assert_eq!(b["spec"]["gameDate"], game_date(*t), "{name}");
        assert_eq!(b["spec"]["completion"]["completeBy"], after(*t, 5 * 3_600_000 + 30 * 60_000).to_string(), "{name}");
        // Ended Succeeded, with every item, each stage's Job created once.
        let st = &b["status"];
        assert_eq!(st["phase"], "Succeeded", "{name}: {st:#}");
        assert_eq!(st["items"]["target"], ITEMS, "{name}: the loader's count");
        assert_eq!(st["items"]["succeeded"], ITEMS, "{name}");
        assert_eq!(st["shards"]["total"], ITEMS / PER_SHARD, "{name}");
        for stage in STAGES {
            let ran = uids.get(&(name.clone(), stage.to_string())).cloned().unwrap_or_default();
            assert_eq!(ran.len(), 1, "{name}: {stage} Jobs {ran:?}");
            assert_eq!(st[stage]["state"], "Succeeded", "{name}: {stage}: {st:#}");
            assert_eq!(st[stage]["jobUid"], ran.iter().next().unwrap().as_str(), "{name}: {stage}'s Job in status");
        }
        // Mirrored: its one document (by ID), of this UID, final.
        let doc = read_doc(&store, &format!("{ns}.{name}")).await;
        assert!(doc.as_ref().is_some_and(|d| doc_is_final(d, uid)), "{name}: document {doc:#?}");
    }
    let want_ids: BTreeSet<String> = names.iter().map(|n| format!("{ns}.{n}")).collect();
    assert_eq!(ids, want_ids, "the Firestore collection holds one document per day, no other");
    let st = &schedule["status"];
    assert!(st["lastMissedTime"].is_null(), "a run was missed: {st:#}");
    assert!(st["lastSuccessfulTime"].is_string(), "{st:#}");
    assert!(panics.is_empty(), "a controller panicked: {panics:?}");
    let created = create_codes.iter().filter(|c| **c == 201).count();
    assert_eq!(created, days as usize, "batch creates answered 201 Created (all answers: {create_codes:?})");
    assert_eq!(restarts.len(), 2, "the apiserver and etcd restarts: {restarts:?}");
    drop(replicas);
}
