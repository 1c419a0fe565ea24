//! Backup runs for stragglers: started once per shard, near the end and before the quorum; the
//! first run to succeed counts, once; the other is stopped; restarts change nothing.

use super::*;
use crate::reconcile::stragglers::ShardTimes;

/// Every shard but 3 succeeded; the example batch with backups on and a completeBy far away.
const ALL_BUT_3: &str = "0-2,4-29";

fn backup_spec() -> PredictionBatchSpec {
    spec_with(|s| {
        s.completion.backup_stragglers = true;
        s.completion.complete_by = Some(t(3600).to_string());
    })
}

/// 29 shards finished in 10 s each; shard 3 has run since `since`.
fn times(since: i64) -> ShardTimes {
    ShardTimes { finished: vec![Duration::from_secs(10); 29], running: BTreeMap::from([(3, t(since))]) }
}

fn observing(now: i64, workers: JobView, times: Option<ShardTimes>, backups: &[(u32, JobView)]) -> Observed {
    let mut o = obs_with(now, &[workers]);
    o.shard_times = times;
    o.backup_jobs = backups.iter().cloned().collect();
    o
}

fn backup_job(shard: u32) -> JobView {
    JobView {
        name: crate::api::stage::backup_job_name(NAME, shard),
        uid: format!("uid-backup-{shard}"),
        parallelism: Some(1),
        outcome_finalizer: Some(0),
        active: 1,
        ..job(Stage::Workers)
    }
}

fn backups(st: &PredictionBatchStatus) -> (Option<&str>, Option<&str>, Option<&str>) {
    let b = st.backups.as_ref();
    (b.and_then(|b| b.started.as_deref()), b.and_then(|b| b.won.as_deref()), b.and_then(|b| b.lost.as_deref()))
}

/// The batch after shard 3 got its backup (at 40: it started at 5, the median is 10 s).
fn racing() -> (Plan, PredictionBatch) {
    let b = batch(backup_spec(), Some(running_status(&backup_spec())));
    let p = plan(&b, &observing(40, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[]));
    assert_eq!(p.actions, [Action::CreateBackup(3)]);
    assert_eq!(backups(&p.status), (Some("3"), None, None), "recorded with the create, before it");
    assert!(p.events.iter().any(|e| e.reason == EventReason::BackupStarted && e.note.contains("shard 3")));
    let mut b = b;
    b.status = Some(p.status.clone());
    (p, b)
}

#[test]
fn a_straggler_gets_one_backup_and_only_one() {
    let (_, b) = racing();
    // The backup Job runs: nothing more is created, however long the shard runs.
    let p = plan(&b, &observing(300, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[(3, backup_job(3))]));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::CreateBackup(_))), "{:?}", p.actions);
    // A restart between the status write and the create (or a cache behind it): created again,
    // by the same deterministic name (AlreadyExists is success), never a second backup.
    let p = plan(&b, &observing(41, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[]));
    assert_eq!(p.actions, [Action::CreateBackup(3)]);
    assert_eq!(backups(&p.status), (Some("3"), None, None));
}

#[test]
fn no_backup_when_off_early_or_without_times() {
    // Shard 3 is slow, but backups are off.
    let b = batch(spec(), Some(running_status(&spec())));
    let p = plan(&b, &observing(40, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[]));
    assert!(p.actions.is_empty() && p.status.backups.is_none(), "{:?}", p.actions);
    // On, but shard 3 has run 15 s: not yet twice the median; look again when it would be.
    let b = batch(backup_spec(), Some(running_status(&backup_spec())));
    let p = plan(&b, &observing(20, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(6)), "at 20 s of running, plus a second");
    // Far from the end: 10 shards unfinished.
    let p = plan(&b, &observing(400, workers_job("0-19", "", 10), Some(times(5)), &[]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    // No times observed (the reconciler lists pods only near the end).
    let p = plan(&b, &observing(400, workers_job(ALL_BUT_3, "", 1), None, &[]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    // Suspended: nothing new runs.
    let suspended = spec_with(|s| {
        *s = backup_spec();
        s.suspend = true;
    });
    let b = batch(suspended.clone(), Some(running_status(&backup_spec())));
    let p = plan(&b, &observing(400, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[]));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::CreateBackup(_))), "{:?}", p.actions);
}

#[test]
fn no_backup_once_the_quorum_is_met() {
    let spec90 = spec_with(|s| {
        *s = backup_spec();
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 600;
    });
    let b = batch(spec90.clone(), Some(running_status(&spec90)));
    let p = plan(&b, &observing(400, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[]));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::CreateBackup(_))), "{:?}", p.actions);
}

#[test]
fn the_backup_wins_the_shard_counts_once_and_the_original_is_stopped() {
    let (_, b) = racing();
    let done = succeeded(backup_job(3), 50);
    let p = plan(&b, &observing(51, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[(3, done.clone())]));
    assert_eq!(backups(&p.status), (Some("3"), Some("3"), None));
    assert_eq!(p.status.succeeded_shards.as_deref(), Some("0-29"));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 30, "30 shards, not 31");
    assert_eq!(p.status.progress.as_deref(), Some("120/120"));
    assert!(p.events.iter().any(|e| e.reason == EventReason::BackupWon));
    // Every shard succeeded: the worker Job (with shard 3's original run) stops now, no grace.
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(p.actions.contains(&Action::ReleaseBackup { shard: 3, uid: "uid-backup-3".into(), index: 0 }));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    let mut b = b;
    b.status = Some(p.status.clone());
    // The original's late success changes nothing; the stage ends, consolidation sees all 30.
    let w = JobView { suspended: true, suspend_confirmed: true, ..workers_job("0-29", "", 0) };
    let released = JobView { outcome_finalizer: None, ..done };
    let p = plan(&b, &observing(52, w, None, &[(3, released)]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 30);
    assert_eq!(creates(&p), [Stage::Consolidation]);
    assert_eq!(backups(&p.status), (Some("3"), Some("3"), None));
}

#[test]
fn the_original_wins_and_the_backup_is_stopped() {
    let (_, b) = racing();
    let p = plan(&b, &observing(45, succeeded(workers_job("0-29", "", 0), 45), None, &[(3, backup_job(3))]));
    assert_eq!(backups(&p.status), (Some("3"), None, Some("3")));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 30);
    let release = Action::ReleaseBackup { shard: 3, uid: "uid-backup-3".into(), index: 0 };
    let stop = Action::StopBackup { shard: 3, uid: "uid-backup-3".into() };
    let (r, s) = (p.actions.iter().position(|a| *a == release), p.actions.iter().position(|a| *a == stop));
    assert!(r.is_some() && r < s, "released, then deleted: {:?}", p.actions);
    // A backup that succeeds after the original counts nothing more.
    let mut b = b;
    b.status = Some(p.status.clone());
    let late = succeeded(backup_job(3), 46);
    let p = plan(&b, &observing(46, succeeded(workers_job("0-29", "", 0), 45), None, &[(3, late)]));
    assert_eq!(backups(&p.status), (Some("3"), None, Some("3")));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 30);
}

#[test]
fn a_failed_backup_leaves_the_shard_to_its_original_run() {
    let (_, b) = racing();
    let f = failed(backup_job(3), "BackoffLimitExceeded", 60);
    let p = plan(&b, &observing(61, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[(3, f)]));
    assert_eq!(backups(&p.status), (Some("3"), None, Some("3")));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 29);
    assert!(p.actions.contains(&Action::ReleaseBackup { shard: 3, uid: "uid-backup-3".into(), index: 0 }));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::CreateBackup(_))), "no second backup: {:?}", p.actions);
}

#[test]
fn a_backup_can_rescue_a_shard_whose_original_failed() {
    let (_, b) = racing();
    // The original of shard 3 failed for good (quorum 100 %: unreachable), but its backup succeeded.
    let w = workers_job(ALL_BUT_3, "3", 0);
    let p = plan(&b, &observing(70, w, None, &[(3, succeeded(backup_job(3), 69))]));
    assert_eq!(p.status.succeeded_shards.as_deref(), Some("0-29"));
    assert_eq!(p.status.failed_shards, None);
    assert_ne!(p.status.phase, Some(Phase::Failed));
}

#[test]
fn a_backup_still_running_when_the_stage_ends_is_stopped() {
    let (_, b) = racing();
    // completeBy passes with shard 3 unfinished: the batch fails; the backup must not keep running.
    let p = plan(&b, &observing(3601, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[(3, backup_job(3))]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(backups(&p.status), (Some("3"), None, Some("3")));
    assert!(p.actions.contains(&Action::StopBackup { shard: 3, uid: "uid-backup-3".into() }), "{:?}", p.actions);
}

#[test]
fn at_most_a_tenth_of_the_shards_get_backups() {
    // 100 shards of 1 item: 90 finished in 10 s, 10 stragglers: at most 10 backups, then no more.
    let s = spec_with(|s| {
        *s = backup_spec();
        s.target_count = Some(100);
        s.items_per_shard = 1;
        s.parallelism = 100;
    });
    let b = batch(s.clone(), Some(running_status(&s)));
    let running: BTreeMap<u32, Timestamp> = (90..100).map(|i| (i, t(i64::from(i) - 90))).collect();
    let times = ShardTimes { finished: vec![Duration::from_secs(10); 90], running };
    let p = plan(&b, &observing(100, workers_job("0-89", "", 10), Some(times.clone()), &[]));
    let created: Vec<_> = p.actions.iter().filter(|a| matches!(a, Action::CreateBackup(_))).collect();
    assert_eq!(created.len(), 10);
    assert_eq!(p.actions.first(), Some(&Action::CreateBackup(90)), "longest-running first");
}

#[test]
fn suspending_the_batch_stops_a_racing_backup() {
    let (_, b) = racing();
    let mut b = b;
    b.spec.suspend = true;
    let p = plan(&b, &observing(60, workers_job(ALL_BUT_3, "", 1), Some(times(5)), &[(3, backup_job(3))]));
    assert_eq!(backups(&p.status), (Some("3"), None, Some("3")));
    assert!(p.actions.contains(&Action::StopBackup { shard: 3, uid: "uid-backup-3".into() }), "{:?}", p.actions);
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
}

#[test]
fn the_ttl_deletes_backup_jobs_too() {
    let (_, b) = racing();
    let mut b = b;
    b.spec.ttl_seconds_after_finished = Some(60);
    let done = succeeded(backup_job(3), 50);
    let w = JobView { suspended: true, suspend_confirmed: true, ..workers_job("0-29", "", 0) };
    let obs = |now: i64| {
        let mut o = observing(now, w.clone(), None, &[(3, JobView { outcome_finalizer: None, ..done.clone() })]);
        o.set_job(Stage::Consolidation, Some(succeeded(job(Stage::Consolidation), 55)));
        o.set_job(Stage::Export, Some(succeeded(job(Stage::Export), 56)));
        o
    };
    let mut last = None;
    for now in [51, 52, 53, 54, 57, 58] {
        let (p, next) = step(&b, &obs(now));
        b = next;
        last = Some(p);
    }
    assert_eq!(last.unwrap().status.phase, Some(Phase::Succeeded));
    let p = plan(&b, &obs(200));
    let deletes: Vec<_> = p.actions.iter().filter(|a| matches!(a, Action::DeleteJob { .. })).collect();
    let name = crate::api::stage::backup_job_name(NAME, 3);
    assert_eq!(deletes, [&Action::DeleteJob { name, uid: "uid-backup-3".into() }], "{:?}", p.actions);
    assert!(p.actions.iter().any(|a| matches!(a, Action::Delete { stage: Stage::Workers, .. })), "{:?}", p.actions);
}
