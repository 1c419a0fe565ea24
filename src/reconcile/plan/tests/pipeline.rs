//! The happy path: each stage is recorded before the next is planned, a Job we made but did not
//! record is adopted, and a Job we do not own is never touched.

use super::*;

#[test]
fn first_pass_writes_the_intent_and_creates_workers() {
    let p = plan(&batch(spec(), None), &observed(0));
    // The stage is on record as started, with its Job's name, before that Job is created.
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert_eq!(p.actions, vec![Action::Validate, Action::Create(Stage::Workers)]);
    let w = p.status.workers.as_ref().unwrap();
    assert_eq!(w.state, StageState::Running);
    assert!(w.start_time.is_some() && p.status.start_time == w.start_time, "{:?}", p.status);
    assert!(
        p.events.iter().any(|e| e.reason == EventReason::StageStarted(Stage::Workers)),
        "started with the intent: {:?}",
        p.events
    );
    assert_eq!(w.job_name, "nba-2026-01-02-workers");
    assert_eq!(w.job_uid, None);
    assert_eq!(p.status.shards.as_ref().unwrap().total, 30);
    assert_eq!(p.status.items.as_ref().unwrap().target, 120);
    assert_eq!(cond(&p.status, CONDITION_READY).status, "Unknown");
    assert_eq!(cond(&p.status, CONDITION_RECONCILING).status, "True");
    assert_eq!(cond(&p.status, CONDITION_STALLED).status, "False");
    assert_eq!(cond(&p.status, CONDITION_DEGRADED).status, "False");
    assert_condition_generations(&p.status);
}

#[test]
fn owned_job_without_uid_in_status_is_adopted_not_recreated() {
    // Crash between the create and the status write: the status has no UID yet.
    for prev in [None, Some(plan(&batch(spec(), None), &observed(0)).status)] {
        let intent_written = prev.is_some();
        let p = plan(&batch(spec(), prev), &obs_with(5, &[job(Stage::Workers)]));
        assert!(creates(&p).is_empty(), "{:?}", p.actions);
        let w = p.status.workers.as_ref().unwrap();
        assert_eq!(w.job_uid.as_deref(), Some("uid-workers"));
        assert_eq!(w.state, StageState::Running);
        assert_eq!(p.status.phase, Some(Phase::Running));
        // The start was announced with the intent; adopting the Job does not announce it again.
        let started = p.events.iter().filter(|e| e.reason == "WorkersStarted").count();
        assert_eq!(started, usize::from(!intent_written), "{:?}", p.events);
    }
}

#[test]
fn foreign_job_stalls_with_name_conflict_and_is_never_adopted() {
    let foreign = JobView { owned: false, uid: "someone-else".into(), ..job(Stage::Workers) };
    let p = plan(&batch(spec(), None), &obs_with(0, &[foreign.clone()]));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let stalled = cond(&p.status, CONDITION_STALLED);
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "JobNameConflict"));
    assert_ne!(p.status.workers.as_ref().and_then(|w| w.job_uid.as_deref()), Some("someone-else"));
    assert!(p.requeue_after.is_some());
    assert!(p.events.iter().any(|e| e.warning && e.reason == "JobNameConflict"));
    // Still not adopted on the next pass, and the event is not repeated.
    let (_, b) = step(&batch(spec(), None), &obs_with(0, &[foreign.clone()]));
    let p2 = plan(&b, &obs_with(10, &[foreign]));
    assert!(creates(&p2).is_empty());
    assert_eq!(cond(&p2.status, CONDITION_STALLED).reason, "JobNameConflict");
    assert!(p2.events.is_empty(), "{:?}", p2.events);
}

#[test]
fn workers_succeeded_is_recorded_before_consolidation_is_planned() {
    let b = batch(spec(), Some(running_status(&spec())));
    let obs = obs_with(100, &[succeeded(workers_job("0-29", "", 0), 90)]);
    let p = plan(&b, &obs);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 30);
    assert_eq!(p.status.progress.as_deref(), Some("120/120"));
    // The reconciler writes this status (workers Succeeded) before it runs any action, so the
    // consolidation create that may follow in the same plan only happens once the outcome is on record.
    assert!(creates(&p).iter().all(|s| *s == Stage::Consolidation), "{:?}", p.actions);
}

#[test]
fn status_with_workers_succeeded_plans_consolidation() {
    let b = batch(spec(), Some(running_status(&spec())));
    let jobs = [succeeded(workers_job("0-29", "", 0), 90)];
    let (_, b) = step(&b, &obs_with(100, &jobs));
    assert_eq!(stage_state(b.status.as_ref().unwrap(), Stage::Workers), Some(StageState::Succeeded));
    let p = plan(&b, &obs_with(101, &jobs));
    assert_eq!(creates(&p), vec![Stage::Consolidation]);
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Running));
    assert_eq!(p.status.phase, Some(Phase::Consolidating));
    // Planned again before its Job is seen: the same intent, so nothing new to write.
    let (_, b) = step(&b, &obs_with(101, &jobs));
    let again = plan(&b, &obs_with(103, &jobs));
    assert_eq!(Some(&again.status), b.status.as_ref());
    assert_eq!(creates(&again), vec![Stage::Consolidation]);
}

#[test]
fn consolidation_succeeded_then_export() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let (p, b) = consolidating(&w);
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Running));
    assert!(creates(&p).is_empty());
    let jobs = [w.clone(), succeeded(job(Stage::Consolidation), 150)];
    let (p, b) = step(&b, &obs_with(160, &jobs));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Succeeded));
    assert!(!creates(&p).contains(&Stage::Consolidation));
    let (p, b) = step(&b, &obs_with(161, &jobs));
    assert_eq!(creates(&p), vec![Stage::Export]);
    assert_eq!(p.status.phase, Some(Phase::Exporting));
    let jobs = [w, succeeded(job(Stage::Consolidation), 150), succeeded(job(Stage::Export), 200)];
    let (_, b) = step(&b, &obs_with(170, &jobs[..2].iter().cloned().chain([job(Stage::Export)]).collect::<Vec<_>>()));
    let (p, b) = step(&b, &obs_with(210, &jobs));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&p.status, CONDITION_READY).status, "True");
    assert_eq!(cond(&p.status, CONDITION_RECONCILING).status, "False");
    assert_eq!(cond(&p.status, CONDITION_DEGRADED).status, "False");
    assert_eq!(p.status.completion_time, Some(Time(t(200))));
    assert!(p.events.iter().any(|e| e.reason == "BatchSucceeded"));
    // Finished, no TTL: nothing more to do.
    let p = plan(&b, &obs_with(300, &jobs));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.status, *b.status.as_ref().unwrap());
}

#[test]
fn without_consolidation_export_follows_workers() {
    let s = spec_with(|s| s.consolidation = None);
    let mut sim = Sim::new(s, succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.run(10);
    assert_eq!(sim.all_creates(), vec![Stage::Export]);
    assert_eq!(sim.status().consolidation, None);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    assert!(sim.plans.iter().all(|p| p.status.phase != Some(Phase::Consolidating)));
}

#[test]
fn without_consolidation_or_export_workers_finish_the_batch() {
    let s = spec_with(|s| {
        s.consolidation = None;
        s.export = None;
    });
    let mut sim = Sim::new(s, succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.run(5);
    assert!(sim.all_creates().is_empty());
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
}
