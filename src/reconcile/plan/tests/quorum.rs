//! Failed shards, the quorum, the grace period, `completeBy` and the early stop of the workers.

use super::*;

#[test]
fn failed_indexes_above_quorum_succeed_degraded() {
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let mut sim = Sim::new(s, failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(10);
    let st = sim.status();
    assert_eq!(st.phase, Some(Phase::Succeeded), "{st:#?}");
    assert_eq!(cond(st, CONDITION_READY).status, "True");
    assert_eq!(cond(st, CONDITION_STALLED).status, "False");
    let degraded = cond(st, CONDITION_DEGRADED);
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains("3,7"), "{}", degraded.message);
    assert!(cond(st, CONDITION_READY).message.contains("coverage"), "{}", cond(st, CONDITION_READY).message);
    let items = st.items.as_ref().unwrap();
    assert_eq!((items.target, items.succeeded, items.failed), (120, 112, 8));
    assert_eq!(st.failed_shards.as_deref(), Some("3,7"));
    assert_eq!(st.succeeded_shards.as_deref(), Some(ALL_BUT_3_7));
    assert_eq!(st.progress.as_deref(), Some("112/120"));
    assert_eq!(sim.all_creates(), vec![Stage::Consolidation, Stage::Export]);
}

#[test]
fn failed_indexes_below_quorum_fail_without_consolidation() {
    let mut sim = Sim::new(spec(), failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(10);
    let st = sim.status();
    assert_eq!(st.phase, Some(Phase::Failed));
    let stalled = cond(st, CONDITION_STALLED);
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, "QuorumNotMet");
    assert_eq!(cond(st, CONDITION_READY).status, "False");
    assert_eq!(cond(st, CONDITION_DEGRADED).status, "True");
    assert_eq!(st.failed_shards.as_deref(), Some("3,7"));
    assert_eq!(st.items.as_ref().unwrap().failed, 8);
    assert_eq!(stage_state(st, Stage::Workers), Some(StageState::Failed));
    assert!(sim.all_creates().is_empty(), "{:?}", sim.all_creates());
    assert_eq!(st.consolidation, None);
    // Later passes keep it that way.
    for now in [200, 5000] {
        let mut obs = sim.obs.clone();
        obs.now = t(now);
        let p = plan(&sim.batch, &obs);
        assert!(creates(&p).is_empty());
        assert_eq!(p.status.phase, Some(Phase::Failed));
        assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "QuorumNotMet");
    }
}

#[test]
fn max_failed_indexes_exceeded_fails() {
    let b = batch(spec(), Some(running_status(&spec())));
    let p = plan(&b, &obs_with(100, &[failed(workers_job("0-20", "21-25", 0), "MaxFailedIndexesExceeded", 90)]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "MaxFailedShardsExceeded");
    assert!(creates(&p).is_empty());
}

#[test]
fn quorum_unreachable_while_running_fails_and_suspends_workers() {
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let b = batch(s.clone(), Some(running_status(&s)));
    // 4 shards = 16 items failed > the 12 items (10 %) that may fail.
    let p = plan(&b, &obs_with(100, &[workers_job("10-12", "0-3", 10)]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "QuorumUnreachable");
    assert_eq!(cond(&p.status, CONDITION_STALLED).status, "True");
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
    assert!(p.events.iter().any(|e| e.warning && e.reason == "BatchFailed"));
    // 3 shards = 12 items failed is still reachable.
    let p = plan(&b, &obs_with(100, &[workers_job("10-12", "0-2", 10)]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Suspend { .. })));
}

#[test]
fn grace_period_then_stop_stragglers_then_consolidate() {
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 30;
    });
    let b = batch(s.clone(), Some(running_status(&s)));
    // 29 of 30 shards done (116 items), one straggler running.
    let straggling = workers_job("0-28", "", 1);
    let (p, b) = step(&b, &obs_with(100, &[straggling.clone()]));
    assert_eq!(p.status.quorum_time, Some(Time(t(100))));
    let wait = p.requeue_after.expect("wakes up at the end of the grace period");
    assert!(wait >= Duration::from_secs(30) && wait <= Duration::from_secs(31), "{wait:?}");
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Suspend { .. })), "{:?}", p.actions);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running));
    assert!(creates(&p).is_empty());

    // Still within the grace period: quorum time stays, the wait shrinks.
    let (p, b) = step(&b, &obs_with(110, &[straggling.clone()]));
    assert_eq!(p.status.quorum_time, Some(Time(t(100))));
    let wait = p.requeue_after.unwrap();
    assert!(wait >= Duration::from_secs(20) && wait <= Duration::from_secs(21), "{wait:?}");

    // 31 s after the quorum: stop the straggler.
    let (p, b) = step(&b, &obs_with(131, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
    assert!(p.events.iter().any(|e| e.reason == "StoppingStragglers"));

    // Suspended but its pod is still terminating: wait.
    let terminating = JobView { suspended: true, active: 0, terminating: 1, ..straggling.clone() };
    let (p, b) = step(&b, &obs_with(132, &[terminating]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.actions.is_empty(), "{:?}", p.actions);

    // No pods left: the stage is over and every unfinished shard counts as failed.
    let stopped = JobView { suspended: true, active: 0, ..straggling };
    let (p, b) = step(&b, &obs_with(135, &[stopped.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.failed_shards.as_deref(), Some("29"));
    assert_eq!(p.status.succeeded_shards.as_deref(), Some("0-28"));
    let items = p.status.items.as_ref().unwrap();
    assert_eq!((items.succeeded, items.failed), (116, 4));
    assert_eq!(p.status.shards.as_ref().unwrap().failed, 1);
    let p = plan(&b, &obs_with(136, &[stopped]));
    assert_eq!(creates(&p), vec![Stage::Consolidation]);
}

#[test]
fn stopping_complement_counts_unstarted_shards_as_failed() {
    // Stop while several shards never ran: failedShards is the complement of succeeded.
    let s = spec_with(|s| s.completion.min_succeeded_percent = 50);
    let mut st = running_status(&s);
    st.workers.as_mut().unwrap().state = StageState::Stopping;
    let b = batch(s, Some(st));
    let j = JobView { suspended: true, ..workers_job("0-19", "25", 0) };
    let p = plan(&b, &obs_with(100, &[j]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.failed_shards.as_deref(), Some("20-29"));
    assert_eq!(p.status.items.as_ref().unwrap().failed, 40);
}

#[test]
fn all_shards_finished_without_pods_ends_the_stage() {
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let b = batch(s.clone(), Some(running_status(&s)));
    let p = plan(&b, &obs_with(100, &[workers_job(ALL_BUT_3_7, "3,7", 0)]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.failed_shards.as_deref(), Some("3,7"));
}

#[test]
fn complete_by_without_quorum_fails_with_deadline_exceeded() {
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.complete_by = Some(t(500).to_string());
    });
    let b = batch(s.clone(), Some(running_status(&s)));
    let running = workers_job("0-9", "", 10);
    let p = plan(&b, &obs_with(400, &[running.clone()]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    let wait = p.requeue_after.unwrap();
    assert!(wait >= Duration::from_secs(100) && wait <= Duration::from_secs(101), "{wait:?}");
    let p = plan(&b, &obs_with(501, &[running]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "DeadlineExceeded");
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
}

#[test]
fn complete_by_with_quorum_stops_before_grace_end() {
    let s = deadline_spec(3600, 200);
    let b = batch(s.clone(), Some(running_status(&s)));
    let (p, b) = step(&b, &obs_with(100, &[workers_job("0-28", "", 1)]));
    let wait = p.requeue_after.unwrap();
    assert!(wait >= Duration::from_secs(100) && wait <= Duration::from_secs(101), "{wait:?}");
    let p = plan(&b, &obs_with(200, &[workers_job("0-28", "", 1)]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }));
}

/// A batch in its grace period with one straggler, stopped at `now`: the plan, and the batch
/// with that plan's status (workers Stopping since `now`).
fn stopping_batch(s: &PredictionBatchSpec, now: i64) -> (Plan, PredictionBatch, JobView) {
    let b = batch(s.clone(), Some(running_status(s)));
    let straggling = workers_job("0-28", "", 1);
    let (_, b) = step(&b, &obs_with(now - 31, &[straggling.clone()]));
    let (p, b) = step(&b, &obs_with(now, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping), "{:?}", p.status);
    assert_eq!(stage_of(&p.status, Stage::Workers).unwrap().stop_time, Some(Time(t(now))));
    (p, b, straggling)
}

fn grace_spec() -> PredictionBatchSpec {
    spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 30;
    })
}

#[test]
fn stopping_ends_once_the_job_confirms_the_suspension_even_with_pods_that_never_terminate() {
    let (_, b, straggling) = stopping_batch(&grace_spec(), 131);
    // The Job controller suspended the Job and deleted the pod; the node never confirms it.
    let stuck = JobView { suspended: true, suspend_confirmed: true, active: 0, terminating: 1, ..straggling };
    let p = plan(&b, &obs_with(133, &[stuck]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
    assert_eq!(p.status.failed_shards.as_deref(), Some("29"));
    assert_eq!(creates(&p), vec![Stage::Consolidation], "consolidation follows, after this status is written");
}

#[test]
fn stopping_ends_at_the_stop_timeout_when_the_job_never_confirms() {
    let (p, b, straggling) = stopping_batch(&grace_spec(), 131);
    let wait = p.requeue_after.expect("wakes up at the stop timeout");
    assert!(wait <= Duration::from_secs(STOP_TIMEOUT_SECS as u64 + 1), "{wait:?}");
    // Suspended, but nobody confirms (kube-controller-manager down) and the pod hangs on.
    let hanging = JobView { suspended: true, active: 1, terminating: 1, ..straggling };
    let p = plan(&b, &obs_with(131 + STOP_TIMEOUT_SECS - 1, &[hanging.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    assert!(p.requeue_after.unwrap() <= Duration::from_secs(2));
    let p = plan(&b, &obs_with(131 + STOP_TIMEOUT_SECS, &[hanging]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
}

#[test]
fn stopping_never_outlasts_complete_by() {
    let s = deadline_spec(30, 140);
    let (_, b, straggling) = stopping_batch(&s, 131);
    let hanging = JobView { suspended: true, active: 1, terminating: 1, ..straggling };
    let p = plan(&b, &obs_with(139, &[hanging.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));
    let p = plan(&b, &obs_with(140, &[hanging]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
}

#[test]
fn the_grace_period_does_not_run_while_suspended_but_complete_by_does() {
    let s = grace_spec();
    let b = batch(s.clone(), Some(running_status(&s)));
    let straggling = workers_job("0-28", "", 1);
    let (_, mut b) = step(&b, &obs_with(100, &[straggling.clone()])); // quorum at 100, grace to 130
    b.spec.suspend = true;
    let (p, b) = step(&b, &obs_with(110, &[straggling.clone()]));
    assert_eq!(p.status.suspend_time, Some(Time(t(110))));
    // Long past the grace period, still suspended: nothing stops.
    let quiet = JobView { suspended: true, active: 0, ..straggling.clone() };
    let (p, mut b) = step(&b, &obs_with(500, &[quiet.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running), "{:?}", p.status);
    // Resumed at 600 after 490 s suspended: 20 s of grace are left (until 620).
    b.spec.suspend = false;
    let (p, b) = step(&b, &obs_with(600, &[quiet]));
    assert_eq!(p.status.grace_paused_seconds, Some(490));
    assert_eq!(p.status.suspend_time, None);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running));
    let p = plan(&b, &obs_with(619, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Running));
    let p = plan(&b, &obs_with(620, &[straggling.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Stopping));

    // completeBy is wall-clock: it ends the wait even while suspended.
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 30;
        s.completion.complete_by = Some(t(300).to_string());
        s.suspend = true;
    });
    let b = batch(s.clone(), Some(running_status(&grace_spec())));
    let (_, b) = step(&b, &obs_with(100, &[straggling.clone()]));
    let p = plan(&b, &obs_with(300, &[JobView { suspended: true, active: 0, ..straggling }]));
    assert_ne!(stage_state(&p.status, Stage::Workers), Some(StageState::Running), "{:?}", p.status);
}

#[test]
fn a_deadline_already_past_at_creation_fails_without_creating_any_job() {
    let s = spec_with(|s| s.completion.complete_by = Some(t(-60).to_string()));
    let p = plan(&batch(s, None), &observed(0));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "DeadlineExceeded");
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn a_far_future_deadline_the_crd_admits_is_no_deadline_at_all() {
    for far in ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999999-23:59"] {
        let s = spec_with(|s| s.completion.complete_by = Some(far.into()));
        let p = plan(&batch(s, None), &observed(0));
        assert_eq!(p.status.phase, Some(Phase::Running), "{far}: {:?}", p.status);
        assert_ne!(cond(&p.status, CONDITION_STALLED).reason, "InvalidSpec", "{far}");
        assert_eq!(creates(&p), vec![Stage::Workers], "{far}");
    }
}

/// A 90 % quorum, a grace period of `grace` seconds and `completeBy` at `t(complete_by)`.
fn deadline_spec(grace: i64, complete_by: i64) -> PredictionBatchSpec {
    spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = grace;
        s.completion.complete_by = Some(t(complete_by).to_string());
    })
}
