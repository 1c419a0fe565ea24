//! Suspending and resuming, and deleting a finished batch's Jobs after its TTL.

use super::*;

#[test]
fn suspend_running_batch() {
    let s = spec_with(|s| s.suspend = true);
    let b = batch(s, Some(running_status(&spec())));
    let p = plan(&b, &obs_with(100, &[workers_job("0-3", "", 10)]));
    assert_eq!(p.status.phase, Some(Phase::Suspended));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: true }), "{:?}", p.actions);
    assert!(creates(&p).is_empty());
    assert_eq!(cond(&p.status, CONDITION_READY).status, "Unknown");
    assert_eq!(cond(&p.status, CONDITION_RECONCILING).reason, "Suspended");
    // Resume: the Job is unsuspended and the phase returns to Running.
    let (_, suspended) = step(&b, &obs_with(100, &[workers_job("0-3", "", 10)]));
    let mut resumed = suspended.clone();
    resumed.spec.suspend = false;
    let sj = JobView { suspended: true, ..workers_job("0-3", "", 0) };
    let p = plan(&resumed, &obs_with(200, &[sj]));
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Workers, suspend: false }), "{:?}", p.actions);
}

#[test]
fn suspended_first_pass_creates_nothing() {
    let p = plan(&batch(spec_with(|s| s.suspend = true), None), &observed(0));
    assert_eq!(p.status.phase, Some(Phase::Suspended));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn suspend_blocks_the_next_stage() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, mut b) = step(&b, &obs_with(100, &[w.clone()]));
    b.spec.suspend = true;
    let p = plan(&b, &obs_with(101, &[w]));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.status.phase, Some(Phase::Suspended));
}

fn finished_sim(ttl: Option<i64>) -> Sim {
    let s = spec_with(|s| s.ttl_seconds_after_finished = ttl);
    let mut sim = Sim::new(s, succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.run(10);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    sim
}

#[test]
fn ttl_deletes_jobs_after_expiry() {
    let sim = finished_sim(Some(60));
    let done = sim.status().completion_time.clone().unwrap().0;
    let mut obs = sim.obs.clone();
    obs.now = done.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(30)).unwrap();
    let p = plan(&sim.batch, &obs);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let wait = p.requeue_after.expect("wakes up at expiry");
    assert!(wait >= Duration::from_secs(30) && wait <= Duration::from_secs(31), "{wait:?}");
    obs.now = done.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(61)).unwrap();
    let p = plan(&sim.batch, &obs);
    let stages = Stage::ALL.into_iter().filter(|s| sim.batch.spec.has_stage(*s));
    let owned: Vec<Action> = stages.map(|stage| Action::Delete { stage, uid: uid(stage) }).collect();
    assert_eq!(p.actions, owned, "each owned Job by its UID");
    assert_eq!(p.status, *sim.status(), "deleting Jobs does not change the status");
    // Jobs gone: nothing left to do, status unchanged.
    let gone = Observed::new(obs.now);
    let p = plan(&sim.batch, &gone);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.status, *sim.status());
    assert!(p.events.is_empty());
}

#[test]
fn finished_batch_without_jobs_has_no_actions() {
    for ttl in [None, Some(0), Some(60)] {
        let sim = finished_sim(ttl);
        let p = plan(&sim.batch, &observed(100_000));
        assert!(p.actions.is_empty(), "{ttl:?}: {:?}", p.actions);
        assert_eq!(p.requeue_after, None);
        assert_eq!(p.status, *sim.status());
    }
}

#[test]
fn failed_batch_stops_leftover_pods_then_ttl_deletes() {
    let s = spec_with(|s| s.ttl_seconds_after_finished = Some(10));
    let b = batch(s.clone(), Some(running_status(&s)));
    let (p, b) = step(&b, &obs_with(100, &[failed(workers_job("0-5", "6", 0), "BackoffLimitExceeded", 99)]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "WorkersFailed");
    let p = plan(&b, &obs_with(200, &[failed(workers_job("0-5", "6", 0), "BackoffLimitExceeded", 99)]));
    assert_eq!(p.actions, vec![Action::Delete { stage: Stage::Workers, uid: uid(Stage::Workers) }]);
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "WorkersFailed");
}

#[test]
fn every_stage_job_is_released_after_the_pipeline_and_nothing_else_is_touched() {
    let mut sim = Sim::new(spec(), JobView { outcome_finalizer: Some(0), ..job(Stage::Workers) }, 10);
    sim.obs.jobs.workers = Some(JobView { outcome_finalizer: Some(0), ..succeeded(workers_job("0-29", "", 0), 9) });
    sim.run(20);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    for stage in Stage::ALL.into_iter().filter(|s| sim.batch.spec.has_stage(*s)) {
        assert_eq!(sim.obs.job(stage).unwrap().outcome_finalizer, None, "{stage:?} still held");
    }
    // A foreign Job with our finalizer (someone copied a manifest) is not ours to release.
    let foreign = JobView { owned: false, outcome_finalizer: Some(0), ..job(Stage::Export) };
    let p = plan(&sim.batch, &obs_with(1000, &[foreign]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn ttl_never_deletes_a_same_named_job_it_does_not_own() {
    let sim = finished_sim(Some(0));
    // The export Job was replaced by a hand-made one with the same name.
    let mine = sim.obs.job(Stage::Workers).cloned().unwrap();
    let theirs = JobView { owned: false, uid: "hand-made".into(), ..job(Stage::Export) };
    let p = plan(&sim.batch, &obs_with(100_000, &[mine, theirs]));
    assert_eq!(p.actions, vec![Action::Delete { stage: Stage::Workers, uid: uid(Stage::Workers) }]);
}

#[test]
fn suspending_during_consolidation_holds_the_export_and_never_stops_the_consolidation_pod() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[w.clone()]));
    let (_, mut b) = step(&b, &obs_with(101, &[w.clone(), job(Stage::Consolidation)]));
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Consolidating));
    b.spec.suspend = true;
    let cons = JobView { active: 1, ..job(Stage::Consolidation) };
    let (p, b) = step(&b, &obs_with(102, &[w.clone(), cons.clone()]));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Suspend { .. })), "{:?}", p.actions);
    assert_eq!(p.status.phase, Some(Phase::Suspended));
    // It finishes while suspended: recorded, but the export waits.
    let (p, mut b) = step(&b, &obs_with(110, &[w.clone(), succeeded(cons, 109)]));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Succeeded));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    b.spec.suspend = false;
    let p = plan(&b, &obs_with(120, &[w, succeeded(job(Stage::Consolidation), 109)]));
    assert_eq!(creates(&p), vec![Stage::Export]);
}

#[test]
fn a_one_shot_stage_suspended_by_an_older_controller_is_resumed() {
    let w = succeeded(workers_job("0-29", "", 0), 90);
    let b = batch(spec_with(|s| s.suspend = true), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[w.clone()]));
    let mut st = b.status.clone().unwrap();
    st.consolidation = Some(Box::new(StageStatus {
        job_name: Stage::Consolidation.job_name(NAME),
        job_uid: Some(uid(Stage::Consolidation)),
        state: StageState::Running,
        ..Default::default()
    }));
    let b = batch(spec_with(|s| s.suspend = true), Some(st));
    let p = plan(&b, &obs_with(101, &[w, JobView { suspended: true, ..job(Stage::Consolidation) }]));
    assert!(p.actions.contains(&Action::Suspend { stage: Stage::Consolidation, suspend: false }), "{:?}", p.actions);
}
