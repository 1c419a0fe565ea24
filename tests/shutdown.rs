//! Shutdown at any moment: SIGTERM sent at several moments of the start and of a busy pass, with
//! and without leader election, ends the controller promptly and cleanly (exit 0), and a leader
//! releases its Lease on the way out. A pass stuck on an unreachable apiserver holds the exit
//! no longer than the drain bound, and a second SIGTERM ends the process at once.
//!
//! The moments the start cannot be caught at by timing alone are made to last with the hidden
//! fault flags: `--inject-api-faults 1` (every list fails, so the caches never sync) and
//! `--inject-api-partition FILE` (requests to the paths in FILE get no answer).

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::json;
use support::batch::{apply, batch};
use support::controller::{Controller, lease_holder};
use support::{TestNamespace, ensure_crd, wait_until};

/// What "promptly" means here: no drain is needed at these moments.
const PROMPT: Duration = Duration::from_secs(5);

/// Waits until the controller's log has a line containing `what`.
fn wait_logged(c: &Controller, what: &str, timeout: Duration) {
    let start = Instant::now();
    while !c.log_text().contains(what) {
        assert!(start.elapsed() < timeout, "no {what:?} in the log after {timeout:?}:\n{}", c.log_tail());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM and waits up to `within` for the exit: (status, time from the signal).
fn terminate(moment: &str, c: &mut Controller, within: Duration) -> (ExitStatus, Duration) {
    let t = Instant::now();
    c.signal("TERM");
    let Some(status) = c.wait_exit(within) else {
        panic!("{moment}: still running {within:?} after SIGTERM\n{}", c.log_tail());
    };
    let took = t.elapsed();
    println!("{moment}: {status} {took:?} after SIGTERM");
    (status, took)
}

/// SIGTERM at `moment` must end the process within [`PROMPT`] with exit code 0.
fn terminate_cleanly(moment: &str, c: &mut Controller) -> Duration {
    let (status, took) = terminate(moment, c, PROMPT);
    assert!(status.success(), "{moment}: exit status {status} after SIGTERM\n{}", c.log_tail());
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(log.contains("shutdown signal received"), "{moment}: {}", c.log_tail());
    took
}

fn partition_args(file: &Path) -> Vec<String> {
    vec!["--inject-api-partition".into(), file.to_str().unwrap().into()]
}

fn start(name: &str, ns: &str, args: &[String]) -> Controller {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Controller::start(name, ns, &args)
}

fn elected_args(ns: &str) -> Vec<String> {
    ["--leader-elect", "--lease-namespace", ns, "--lease-duration", "5"].iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_any_moment_of_the_start_without_election() {
    ensure_crd();
    let ns = TestNamespace::new("shutdown-start");
    let dir = tempfile::tempdir().unwrap();

    // Right away: before the handler is installed, SIGTERM's default action ends the process.
    let mut c = start("start-now", ns.name(), &[]);
    let (status, _) = terminate("right away", &mut c, PROMPT);
    assert!(status.success() || status.signal() == Some(15), "right away: {status}\n{}", c.log_tail());

    // The apiserver is unreachable from the start: the first list never answers.
    let cut = dir.path().join("cut");
    std::fs::write(&cut, "").unwrap();
    let mut c = start("start-unreachable", ns.name(), &partition_args(&cut));
    wait_logged(&c, "starting", PROMPT);
    std::thread::sleep(Duration::from_millis(500));
    terminate_cleanly("apiserver unreachable, caches never synced", &mut c);

    // Every list fails (the watches retry with backoff): the caches never sync.
    let mut c = start("start-faults", ns.name(), &["--inject-api-faults".into(), "1".into()]);
    wait_logged(&c, "starting", PROMPT);
    std::thread::sleep(Duration::from_millis(500));
    terminate_cleanly("lists failing, caches not synced", &mut c);

    // Idle, caches synced.
    let mut c = start("start-idle", ns.name(), &[]);
    wait_logged(&c, "caches synced", Duration::from_secs(30));
    terminate_cleanly("idle after the caches synced", &mut c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_any_moment_of_the_start_with_election() {
    ensure_crd();
    let ns = TestNamespace::new("shutdown-elected");
    let dir = tempfile::tempdir().unwrap();
    let elected = elected_args(ns.name());

    let mut c = start("elected-now", ns.name(), &elected);
    let (status, _) = terminate("elected, right away", &mut c, PROMPT);
    assert!(status.success() || status.signal() == Some(15), "right away: {status}\n{}", c.log_tail());

    // The apiserver is unreachable: the Lease cannot even be read.
    let cut = dir.path().join("cut");
    std::fs::write(&cut, "").unwrap();
    let mut c = start("elected-unreachable", ns.name(), &[&elected[..], &partition_args(&cut)].concat());
    wait_logged(&c, "starting", PROMPT);
    std::thread::sleep(Duration::from_millis(500));
    terminate_cleanly("elected, apiserver unreachable", &mut c);

    // Leader, but its batch cache cannot sync (the batches are cut off, the Lease is not): it
    // must not wait for a sync that cannot come, and it releases the Lease.
    let batches_cut = dir.path().join("batches-cut");
    std::fs::write(&batches_cut, "/apis/predictions.dev/\n").unwrap();
    let mut leader = start("elected-unsynced", ns.name(), &[&elected[..], &partition_args(&batches_cut)].concat());
    wait_logged(&leader, "acquired leadership", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    let pid = leader.pid().unwrap();
    terminate_cleanly("leader, caches not synced", &mut leader);
    assert!(leader.log_text().contains("released the leader lease"), "{}", leader.log_tail());
    let holder = lease_holder(ns.name());
    assert!(holder.as_ref().is_none_or(|h| !h.ends_with(&format!("-{pid}"))), "Lease still held: {holder:?}");

    // A standby: exits at once and leaves the leader's Lease alone.
    let leader = start("elected-leader", ns.name(), &elected);
    wait_logged(&leader, "caches synced", Duration::from_secs(30));
    let leader_pid = leader.pid().unwrap();
    let mut standby = start("elected-standby", ns.name(), &elected);
    wait_logged(&standby, "starting", PROMPT);
    std::thread::sleep(Duration::from_secs(1));
    terminate_cleanly("standby", &mut standby);
    let holder = lease_holder(ns.name()).unwrap_or_default();
    assert!(holder.ends_with(&format!("-{leader_pid}")), "the standby's exit changed the Lease: {holder:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_busy_pass() {
    ensure_crd();
    for elected in [false, true] {
        let ns = TestNamespace::new(if elected { "shutdown-busy-elected" } else { "shutdown-busy" });
        for i in 0..20 {
            apply(ns.name(), &batch(&format!("busy-{i}"), json!({}), json!({})));
        }
        let args = if elected { elected_args(ns.name()) } else { Vec::new() };
        let mut c = start(if elected { "busy-elected" } else { "busy" }, ns.name(), &args);
        wait_logged(&c, "status written", Duration::from_secs(30));
        let pid = c.pid().unwrap();
        let moment = if elected { "leader, busy pass" } else { "busy pass" };
        terminate_cleanly(moment, &mut c);
        if elected {
            assert!(c.log_text().contains("released the leader lease"), "{}", c.log_tail());
            let holder = lease_holder(ns.name());
            assert!(holder.as_ref().is_none_or(|h| !h.ends_with(&format!("-{pid}"))), "Lease still held: {holder:?}");
        }
    }
}

/// A pass whose Job create gets no answer (the Jobs API is cut off after the caches synced).
fn hung_pass(name: &str, ns: &TestNamespace, cut: &Path) -> Controller {
    let c = start(name, ns.name(), &partition_args(cut));
    wait_logged(&c, "caches synced", Duration::from_secs(30));
    std::fs::write(cut, "/apis/batch/\n").unwrap();
    apply(ns.name(), &batch(name, json!({}), json!({})));
    wait_until(
        "a Job create held by the partition",
        Duration::from_secs(30),
        || c.log_text().lines().any(|l| l.contains("api write dropped") && l.contains("/jobs")).then_some(()),
        || c.log_tail(),
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_pass_holds_the_exit_at_most_the_drain_bound_and_a_second_sigterm_ends_it_at_once() {
    ensure_crd();
    let dir = tempfile::tempdir().unwrap();

    let ns = TestNamespace::new("shutdown-second");
    let mut c = hung_pass("second", &ns, &dir.path().join("second"));
    let t = Instant::now();
    c.signal("TERM");
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.is_running(), "exited before its in-flight pass ended:\n{}", c.log_tail());
    let (status, _) = terminate("second SIGTERM while draining", &mut c, Duration::from_secs(2));
    println!("second SIGTERM: exited {:?} after the first", t.elapsed());
    assert_eq!(status.code(), Some(1), "{}", c.log_tail());
    assert!(c.log_text().contains("second shutdown signal"), "{}", c.log_tail());

    let ns = TestNamespace::new("shutdown-drain");
    let mut c = hung_pass("drain", &ns, &dir.path().join("drain"));
    let (status, took) = terminate("stuck pass", &mut c, Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", c.log_tail());
    assert!(
        took >= Duration::from_secs(15) && took <= Duration::from_secs(23),
        "the stuck pass should hold the exit for the 20 s drain bound, not {took:?}\n{}",
        c.log_tail()
    );
}
