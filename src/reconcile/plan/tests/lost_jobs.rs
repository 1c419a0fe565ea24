//! Jobs lost or refused: deleted before their outcome was recorded, rejected by the apiserver,
//! unreadable; our outcome finalizer; a terminal reason that outlives a bad spec.

use super::*;

#[test]
fn job_missing_after_uid_recorded_fails_with_job_deleted() {
    let b = batch(spec(), Some(running_status(&spec())));
    let p = plan(&b, &observed(100));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    // A different Job under the same name (recreated by someone) is not the recorded one either.
    let other = JobView { uid: "another".into(), ..job(Stage::Workers) };
    let p = plan(&b, &obs_with(100, &[other]));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
}

#[test]
fn consolidation_job_deleted_fails_but_finished_workers_job_may_go() {
    let (_, b) = consolidating(&succeeded(workers_job("0-29", "", 0), 90));
    // The workers Job is gone too, but its outcome is recorded: only consolidation matters.
    let p = plan(&b, &observed(103));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Failed));
    assert!(creates(&p).is_empty());
}

#[test]
fn rejected_create_fails_with_job_rejected() {
    let (_, b) = step(&batch(spec(), None), &observed(0));
    let mut obs = observed(1);
    obs.rejected.push((Stage::Workers, "spec.template.spec.containers: Required value".into()));
    let p = plan(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let stalled = cond(&p.status, CONDITION_STALLED);
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "JobRejected"));
    assert!(stalled.message.contains("containers: Required value"), "{}", stalled.message);
    assert!(creates(&p).is_empty());
    assert!(p.events.iter().any(|e| e.warning && e.note.contains("Required value")));
}

#[test]
fn unreadable_completed_indexes_do_not_shrink_counts() {
    // "counts never shrink": a Job whose completedIndexes can't be read (nothing panics on any
    // cluster object) must not wipe the shards already recorded.
    let b = batch(spec(), Some(running_status(&spec())));
    let (p, b) = step(&b, &obs_with(100, &[workers_job("0-9", "", 10)]));
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 10);
    let p = plan(&b, &obs_with(101, &[workers_job("0-9,x", "", 10)]));
    assert!(
        p.status.shards.as_ref().unwrap().succeeded >= 10,
        "shards.succeeded shrank from 10 to {:?} (succeededShards {:?})",
        p.status.shards,
        p.status.succeeded_shards
    );
}

#[test]
fn terminal_reason_survives_a_transiently_invalid_spec() {
    // completeBy stays mutable after the batch ended; an unreadable value (admission bypassed)
    // and then a fixed one must leave the failed batch's reason as it was.
    let mut sim = Sim::new(spec(), failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(5);
    assert_eq!(cond(sim.status(), CONDITION_STALLED).reason, "QuorumNotMet");
    let mut b = sim.batch.clone();
    b.spec.completion.complete_by = Some("tomorrow".into());
    let (p, mut b) = step(&b, &sim.obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    b.spec.completion.complete_by = None;
    let p = plan(&b, &sim.obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(
        cond(&p.status, CONDITION_STALLED).reason,
        "QuorumNotMet",
        "the terminal reason was replaced: {:#?}",
        cond(&p.status, CONDITION_STALLED)
    );
}

#[test]
fn a_finished_job_deleted_before_its_outcome_was_recorded_still_counts_and_is_then_released() {
    let b = batch(spec(), Some(running_status(&spec())));
    // TTL 0 (or a person) deleted the finished worker Job; our finalizer keeps it readable.
    let gone = JobView { deleting: true, outcome_finalizer: Some(1), ..succeeded(workers_job("0-29", "", 0), 90) };
    let p = plan(&b, &obs_with(100, &[gone.clone()]));
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "{:?}", p.status);
    assert_ne!(p.status.phase, Some(Phase::Failed));
    let release = Action::Release { stage: Stage::Workers, uid: uid(Stage::Workers), index: 1 };
    assert!(p.actions.contains(&release), "{:?}", p.actions);
    assert_eq!(creates(&p), vec![Stage::Consolidation]);
}

#[test]
fn a_running_job_keeps_our_finalizer_and_a_deleted_running_job_fails_the_batch_once() {
    let b = batch(spec(), Some(running_status(&spec())));
    let held = JobView { outcome_finalizer: Some(0), ..workers_job("0-3", "", 10) };
    let p = plan(&b, &obs_with(100, &[held.clone()]));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Release { .. })), "{:?}", p.actions);
    // Deleted while it runs: its outcome never comes; fail (JobDeleted), then let it go.
    let deleting = JobView { deleting: true, ..held };
    let (p, b) = step(&b, &obs_with(101, &[deleting.clone()]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
    assert!(p.actions.contains(&Action::Release { stage: Stage::Workers, uid: uid(Stage::Workers), index: 0 }));
    assert!(creates(&p).is_empty());
    let p = plan(&b, &obs_with(102, &[JobView { outcome_finalizer: None, ..deleting }]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "JobDeleted");
}

#[test]
fn a_template_the_apiserver_refuses_in_the_dry_run_fails_the_batch_before_any_worker() {
    let b = batch(spec(), None);
    let (p, b) = step(&b, &observed(0));
    assert_eq!(p.actions, vec![Action::Validate, Action::Create(Stage::Workers)]);
    // The dry run of the export Job was refused: the reconciler plans again before creating.
    let mut obs = observed(0);
    obs.rejected.push((Stage::Export, "spec.template.spec.containers[0].image: Required value".into()));
    let p = plan(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let stalled = cond(&p.status, CONDITION_STALLED);
    assert_eq!(stalled.reason, "JobRejected");
    assert!(
        stalled.message.contains("export Job") && stalled.message.contains("Required value"),
        "{}",
        stalled.message
    );
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
}
