//! Restart safety beyond a single crash (issue 6): leader election and failover, a leader cut
//! off from the apiserver, graceful shutdown, two replicas without election, and injected API
//! faults.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use support::batch::{apply, batch, phase, wait_batch};
use support::controller::{Controller, lease_holder, log_time};
use support::watch::{MultiJobWatch, StatusWatch};
use support::{TestNamespace, ensure_crd, kubectl_json, stages, wait_until};

/// The default identity is `<hostname>-<pid>`: find which replica holds the lease.
fn leader_index(ns: &str, replicas: &[Controller]) -> Option<usize> {
    let holder = lease_holder(ns)?;
    replicas.iter().position(|r| r.pid().is_some_and(|pid| holder.ends_with(&format!("-{pid}"))))
}

fn elected(name: &str, ns: &str, lease_secs: &str) -> Controller {
    Controller::start(name, ns, &["--leader-elect", "--lease-namespace", ns, "--lease-duration", lease_secs])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_is_killed() {
    ensure_crd();
    let ns = TestNamespace::new("failover");
    let jobs = MultiJobWatch::start(ns.name()).await;
    let statuses = StatusWatch::start(ns.name()).await;
    let lease_secs = 5;
    let mut replicas = vec![elected("failover-a", ns.name(), "5"), elected("failover-b", ns.name(), "5")];
    apply(ns.name(), &batch("failover", json!({}), json!({ "annotations": { stages::RUN_FOR: "3s" } })));
    wait_batch(ns.name(), "failover", &replicas[0], Duration::from_secs(60), "workers running", |b| {
        b["status"]["shards"]["succeeded"].as_u64().unwrap_or(0) > 0
    });
    let leader = wait_until("a leader", Duration::from_secs(30), || leader_index(ns.name(), &replicas), String::new);
    let before = statuses.snapshot().versions.get("failover").copied().unwrap_or(0);
    let killed_at = Instant::now();
    replicas[leader].kill();
    let standby = 1 - leader;
    // Takeover = the lease changes hands, then the new leader's first status write.
    wait_until(
        "the standby to acquire the lease",
        Duration::from_secs(30),
        || (leader_index(ns.name(), &replicas) == Some(standby)).then_some(()),
        || replicas[standby].log_tail(),
    );
    let acquired = killed_at.elapsed();
    wait_until(
        "a status write by the new leader",
        Duration::from_secs(30),
        || (statuses.snapshot().versions.get("failover").copied().unwrap_or(0) > before).then_some(()),
        || replicas[standby].log_tail(),
    );
    let first_write = killed_at.elapsed();
    println!(
        "leader failover: lease acquired {acquired:?} after SIGKILL, first status write {first_write:?} (lease {lease_secs}s)"
    );
    // The lease must expire; kube-lease-manager's standby then takes a few seconds to acquire it
    // (force release, a random sleep, retries), and the new leader syncs its caches and reconciles.
    assert!(
        first_write <= Duration::from_secs(lease_secs + 10),
        "takeover took {first_write:?}, more than the lease ({lease_secs}s) plus acquisition and one reconcile"
    );
    let done = wait_batch(ns.name(), "failover", &replicas[standby], Duration::from_secs(90), "Succeeded", |b| {
        phase(b) == "Succeeded"
    });
    assert_eq!(done["status"]["progress"], "120/120");
    assert_eq!(jobs.max_per_stage(), 1, "a stage ran twice: {:?}", jobs.snapshot());
    let rec = statuses.snapshot();
    assert!(rec.regressions.is_empty(), "status moved backwards: {:?}", rec.regressions);
}

/// Writes (creates, patches, deletes) of batches and Jobs that a replica attempted, from the
/// fault layer's `api write` debug lines (dropped ones included): (time, line).
fn batch_and_job_writes(log: &str) -> Vec<(Timestamp, String)> {
    log.lines()
        .filter(|l| l.contains("api write") && (l.contains("/jobs") || l.contains("/predictionbatches")))
        .filter_map(|l| Some((log_time(l)?, l.to_string())))
        .collect()
}

/// The time of the first log line containing `what`.
fn first_logged(log: &str, what: &str) -> Option<Timestamp> {
    log.lines().find(|l| l.contains(what)).and_then(log_time)
}

/// `prediction_batch_leader` of a running replica, from its /metrics.
fn leader_gauge(replica: &Controller) -> Option<u64> {
    let addr = replica.logged_http_addr()?;
    let (code, body) = support::http::get(&addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines().find_map(|l| l.strip_prefix("prediction_batch_leader ")?.trim().parse().ok())
}

/// Two elected replicas (lease 5 s, so a renew deadline of 3.33 s), each with a partition file of
/// its own; mid-batch the leader is cut off (`scope`: the partition file's content, empty for
/// everything). Returns once the batch has Succeeded under the standby and the partition has
/// been healed for a while, having checked that the cut-off leader's last attempt to write a
/// batch or a Job came before the standby acquired the Lease, and that every stage ran once.
async fn partitioned_leader(prefix: &str, scope: &str) {
    ensure_crd();
    let ns = TestNamespace::new(prefix);
    let jobs = MultiJobWatch::start(ns.name()).await;
    let statuses = StatusWatch::start(ns.name()).await;
    let dir = tempfile::tempdir().unwrap();
    let files = [dir.path().join("a"), dir.path().join("b")];
    let start = |name: &str, file: &Path| {
        let file = file.to_str().unwrap();
        let args = ["--leader-elect", "--lease-namespace", ns.name(), "--lease-duration", "5"];
        Controller::start(name, ns.name(), &[&args[..], &["--inject-api-partition", file]].concat())
    };
    let replicas = vec![start(&format!("{prefix}-a"), &files[0]), start(&format!("{prefix}-b"), &files[1])];
    // 30 shards, 10 at a time, 3 s each: about 9 s of workers, then consolidation and export.
    apply(ns.name(), &batch("cut", json!({}), json!({ "annotations": { stages::RUN_FOR: "3s" } })));
    let leader = wait_until("a leader", Duration::from_secs(30), || leader_index(ns.name(), &replicas), String::new);
    let standby = 1 - leader;
    wait_batch(ns.name(), "cut", &replicas[leader], Duration::from_secs(60), "workers running", |b| {
        b["status"]["shards"]["succeeded"].as_u64().unwrap_or(0) > 0
    });
    std::fs::write(&files[leader], scope).unwrap();
    let cut_at = Instant::now();
    wait_until(
        "the standby to acquire the lease",
        Duration::from_secs(30),
        || (leader_index(ns.name(), &replicas) == Some(standby)).then_some(()),
        || format!("{}\n{}", replicas[leader].log_tail(), replicas[standby].log_tail()),
    );
    let acquired_after = cut_at.elapsed();
    // Still cut off, the old leader should know it may not lead (checked below).
    let gauge_while_cut = leader_gauge(&replicas[leader]);
    let done = wait_batch(ns.name(), "cut", &replicas[standby], Duration::from_secs(90), "Succeeded", |b| {
        phase(b) == "Succeeded"
    });
    assert_eq!(done["status"]["progress"], "120/120");
    // Heal: the old leader's held requests fail, its watches resume; it must still not act.
    std::fs::remove_file(&files[leader]).unwrap();
    std::thread::sleep(Duration::from_secs(5));

    let (old, new) = (replicas[leader].log_text(), replicas[standby].log_text());
    let acquired = first_logged(&new, "acquired leadership").expect("the standby logged its acquisition");
    let stopped = first_logged(&old, "not renewed within the renew deadline; stopped reconciling");
    let writes = batch_and_job_writes(&old);
    let last = writes.last().expect("the leader wrote before it was cut off");
    println!(
        "partition ({}): standby acquired {acquired_after:?} after the cut; old leader stopped at {stopped:?}, \
         last write attempt at {}, standby acquired at {acquired}",
        if scope.is_empty() { "everything" } else { scope.trim() },
        last.0
    );
    let late: Vec<&String> = writes.iter().filter(|(t, _)| *t >= acquired).map(|(_, l)| l).collect();
    assert!(
        late.is_empty(),
        "the cut-off leader still tried to write after the standby acquired the Lease at {acquired}:\n{}",
        late.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(gauge_while_cut, Some(0), "prediction_batch_leader of the cut-off replica after the takeover");
    let stopped =
        stopped.unwrap_or_else(|| panic!("the cut-off leader never stopped:\n{}", replicas[leader].log_tail()));
    assert!(stopped < acquired, "the old leader stopped at {stopped}, after the standby acquired at {acquired}");
    for stage in ["workers", "consolidation", "export"] {
        assert_eq!(jobs.count("cut", stage), 1, "{stage}: {:?}", jobs.snapshot());
    }
    let rec = statuses.snapshot();
    assert!(rec.regressions.is_empty(), "status moved backwards: {:?}", rec.regressions);
}

/// The leader loses the apiserver entirely: it can neither renew nor act, and must give up the
/// right to act (its renew deadline) before the Lease can expire for the standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_apiserver_stops_before_the_standby_takes_over() {
    partitioned_leader("cutoff", "").await;
}

/// The leader can still read and write batches and Jobs but no longer reach its Lease (it cannot
/// renew): without a renew deadline it would go on acting next to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_its_lease_stops_acting_before_the_standby_takes_over() {
    partitioned_leader("leasecut", "/apis/coordination.k8s.io/\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_cleanly_and_releases_the_lease() {
    ensure_crd();
    let ns = TestNamespace::new("sigterm");
    let mut replicas = vec![elected("sigterm-a", ns.name(), "15"), elected("sigterm-b", ns.name(), "15")];
    apply(ns.name(), &batch("graceful", json!({}), json!({ "annotations": { stages::RUN_FOR: "2s" } })));
    let leader = wait_until("a leader", Duration::from_secs(30), || leader_index(ns.name(), &replicas), String::new);
    wait_batch(ns.name(), "graceful", &replicas[leader], Duration::from_secs(60), "running", |b| phase(b) == "Running");
    let t = Instant::now();
    let leader_pid = replicas[leader].pid().unwrap();
    let status = replicas[leader].terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status after SIGTERM: {status}\n{}", replicas[leader].log_tail());
    let log = std::fs::read_to_string(&replicas[leader].log).unwrap();
    assert!(log.contains("released the leader lease"), "{}", replicas[leader].log_tail());
    let holder = lease_holder(ns.name());
    assert!(
        holder.as_ref().is_none_or(|h| !h.ends_with(&format!("-{leader_pid}"))),
        "the lease still names the stopped replica: {holder:?}"
    );
    // kube-lease-manager's standby looks again only when the lease it last saw would expire, so
    // takeover after a release is bounded by the lease duration (15 s here), not immediate.
    let standby = 1 - leader;
    wait_until(
        "the standby to take the released lease",
        Duration::from_secs(25),
        || (leader_index(ns.name(), &replicas) == Some(standby)).then_some(()),
        || replicas[standby].log_tail(),
    );
    println!("SIGTERM: exited 0 and the standby led {:?} later", t.elapsed());
    let done = wait_batch(ns.name(), "graceful", &replicas[standby], Duration::from_secs(90), "Succeeded", |b| {
        phase(b) == "Succeeded"
    });
    assert_eq!(done["status"]["progress"], "120/120");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_without_election_stay_safe() {
    ensure_crd();
    let ns = TestNamespace::new("noelection");
    let jobs = MultiJobWatch::start(ns.name()).await;
    let statuses = StatusWatch::start(ns.name()).await;
    let a = Controller::start("noelection-a", ns.name(), &[]);
    let _b = Controller::start("noelection-b", ns.name(), &[]);
    let names = ["twin-1", "twin-2", "twin-3"];
    for name in names {
        apply(ns.name(), &batch(name, json!({ "targetCount": 40 }), json!({})));
    }
    for name in names {
        wait_batch(ns.name(), name, &a, Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    }
    for name in names {
        for stage in ["workers", "consolidation", "export"] {
            assert_eq!(jobs.count(name, stage), 1, "{name}/{stage}: {:?}", jobs.snapshot());
        }
    }
    let rec = statuses.snapshot();
    assert!(rec.regressions.is_empty(), "status moved backwards: {:?}", rec.regressions);
    // Both replicas really did work (the apiserver refused the loser's duplicate creates / stale writes).
    let logs: Vec<String> = ["noelection-a-1", "noelection-b-1"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(support::cluster().logs.join(format!("controller-{n}.log"))).unwrap_or_default()
        })
        .collect();
    assert!(logs.iter().all(|l| l.contains("status written")), "each replica should have reconciled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_api_faults_are_retried_with_backoff() {
    ensure_crd();
    let ns = TestNamespace::new("faults");
    let jobs = MultiJobWatch::start(ns.name()).await;
    let dir = tempfile::tempdir().unwrap();
    let outage = dir.path().join("outage");
    let ctl = Controller::start(
        "faults",
        ns.name(),
        &["--inject-api-faults", "0.5", "--inject-api-outage", outage.to_str().unwrap()],
    );
    apply(ns.name(), &batch("faulty-1", json!({}), json!({})));
    // Random faults at 50% rarely beat a call tried twice within a pass tried four times, so on
    // their own they do not always make a pass fail (the test was flaky for that). An outage of
    // every call about faulty-2 does, every time: its passes must reach the backoff, and the
    // batch must finish once the outage ends.
    std::fs::write(&outage, "/predictionbatches/faulty-2\n").unwrap();
    apply(ns.name(), &batch("faulty-2", json!({}), json!({})));
    let backed_off = |attempt: &str| {
        let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
        log.lines().any(|l| l.contains("backing off") && l.contains("faulty-2") && l.contains(attempt)).then_some(())
    };
    wait_until("faulty-2's second failed pass", Duration::from_secs(60), || backed_off("attempt=2"), || ctl.log_tail());
    std::fs::remove_file(&outage).unwrap();
    for name in ["faulty-1", "faulty-2"] {
        let done =
            wait_batch(ns.name(), name, &ctl, Duration::from_secs(240), "Succeeded", |b| phase(b) == "Succeeded");
        assert_eq!(done["status"]["progress"], "120/120");
        for stage in ["workers", "consolidation", "export"] {
            assert_eq!(jobs.count(name, stage), 1, "{name}/{stage}");
        }
    }
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    // A transient error is first tried again within the pass (100/300/900 ms)...
    let in_pass = log.matches("transient API error; trying the pass again").count();
    assert!(in_pass > 0, "no in-pass retry in the log:\n{}", ctl.log_tail());
    // ...and a pass that still fails hands the batch to the controller's backoff, which doubles
    // with each consecutive failure (250 ms, 500 ms, ..., at most 60 s; a stale view (409) waits
    // a fifth of that, at least 50 ms).
    let field = |l: &str, key: &str| -> Option<u64> { l.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
    let failures: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("backing off"))
        .filter_map(|l| Some((field(l, "attempt=")?, field(l, "backoff_ms=")?)))
        .collect();
    println!("injected faults: {in_pass} in-pass retries, (attempt, backoff_ms) of failed passes: {failures:?}");
    assert!(failures.len() >= 2, "fewer than two failed passes reached the backoff:\n{}", ctl.log_tail());
    for &(attempt, ms) in &failures {
        let full = (250u64 << (attempt - 1).min(16)).min(60_000);
        assert!(
            ms == full || ms == (full / 5).max(50),
            "attempt {attempt} waited {ms} ms, not {full} (or {} for a 409)",
            (full / 5).max(50)
        );
    }
    // No hot loop: a handful of writes per stage plus coalesced progress, not hundreds.
    let writes = log.matches("status written").count();
    assert!(writes < 120, "{writes} status writes for two batches");
    let stored = kubectl_json(&["get", "pb", "faulty-1", "-n", ns.name()]);
    assert_eq!(stored["status"]["observedGeneration"], 1);
}
