//! Reruns: a new token on a finished batch starts an attempt from the chosen stage, with Jobs of
//! its own; the same token again does nothing; the history is bounded; a rerun that cannot run
//! is refused once.

use super::*;
use crate::api::{EventReason, RerunFrom, RerunSpec};

fn with_rerun(b: &PredictionBatch, token: &str, from: RerunFrom) -> PredictionBatch {
    let mut b = b.clone();
    b.spec.rerun = Some(RerunSpec { token: token.into(), from });
    b.metadata.generation = Some(b.metadata.generation.unwrap_or(0) + 1);
    b
}

/// The example batch run to the end, its export failed; returns the batch and what was observed.
fn export_failed() -> (PredictionBatch, Observed) {
    let mut sim = Sim::new(spec(), succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.stage_outcome = JobOutcome::Failed { reason: "BackoffLimitExceeded".into(), message: "503".into(), at: None };
    sim.run(20);
    assert_eq!(sim.status().phase, Some(Phase::Failed));
    assert_eq!(cond(sim.status(), CONDITION_STALLED).reason, "ConsolidationFailed", "the sim fails every one-shot");
    (sim.batch.clone(), sim.obs.clone())
}

fn succeeded_sim() -> Sim {
    let mut sim = Sim::new(spec(), succeeded(workers_job("0-29", "", 0), 90), 100);
    sim.run(20);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    sim
}

#[test]
fn a_new_token_reruns_the_export_as_a_new_job_and_the_same_token_does_nothing() {
    let sim = succeeded_sim();
    let b = with_rerun(&sim.batch, "front-end-back", RerunFrom::Export);
    let (p, b) = step(&b, &sim.obs);
    assert_eq!(creates(&p), [Stage::Export]);
    assert_eq!(p.status.phase, Some(Phase::Exporting));
    assert_eq!(stage_of(&p.status, Stage::Export).unwrap().job_name, format!("{NAME}-r2-export"));
    assert_eq!(stage_state(&p.status, Stage::Consolidation), Some(StageState::Succeeded), "kept");
    assert_eq!(p.status.rerun_token.as_deref(), Some("front-end-back"));
    let attempts: Vec<(u32, Option<Phase>)> = p.status.attempts.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(attempts, [(1, Some(Phase::Succeeded)), (2, None)]);
    assert_eq!(p.status.attempts[0].succeeded_items, 120);
    assert!(p.events.iter().any(|e| e.reason == EventReason::RerunStarted), "{:?}", p.events);
    assert_eq!(p.status.progress.as_deref(), Some("120/120"), "counts describe the whole batch");

    // The old export Job is still observed by its name: never adopted as the new attempt's.
    let export = JobView { name: format!("{NAME}-r2-export"), uid: "uid-r2-export".into(), ..job(Stage::Export) };
    let mut obs = sim.obs.clone();
    obs.set_job(Stage::Export, Some(export.clone()));
    let (p, b) = step(&b, &obs);
    assert_eq!(stage_of(&p.status, Stage::Export).unwrap().job_uid.as_deref(), Some("uid-r2-export"));
    obs.set_job(Stage::Export, Some(succeeded(export, 200)));
    let (p, b) = step(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    let last = p.status.attempts.last().unwrap();
    assert_eq!((last.attempt, last.outcome, last.reason.as_deref()), (2, Some(Phase::Succeeded), Some("Succeeded")));
    assert!(last.completion_time.is_some());
    // Applying the same token again (or anything else) changes nothing.
    let again = plan(&b, &obs);
    assert_eq!(again.status, p.status);
    assert!(again.actions.is_empty() && again.events.is_empty(), "{:?} {:?}", again.actions, again.events);
}

#[test]
fn a_failed_export_reruns_and_the_batch_ends_succeeded() {
    let (b, obs) = export_failed();
    let b = with_rerun(&b, "t1", RerunFrom::Consolidation);
    let (p, b) = step(&b, &obs);
    assert_eq!(creates(&p), [Stage::Consolidation]);
    assert_eq!(p.status.phase, Some(Phase::Consolidating));
    assert!(p.status.completion_time.is_none());
    assert_eq!(cond(&p.status, CONDITION_STALLED).status, "False");
    assert_eq!(cond(&p.status, CONDITION_RECONCILING).status, "True");
    assert_eq!(p.status.attempts[0].outcome, Some(Phase::Failed));
    assert_eq!(p.status.attempts[0].reason.as_deref(), Some("ConsolidationFailed"));
    let mut obs = obs;
    let c = JobView { name: format!("{NAME}-r2-consolidate"), ..succeeded(job(Stage::Consolidation), 300) };
    obs.set_job(Stage::Consolidation, Some(c));
    let (p, b) = step(&b, &obs);
    assert_eq!(creates(&p), [Stage::Export]);
    let e = JobView { name: format!("{NAME}-r2-export"), ..succeeded(job(Stage::Export), 310) };
    obs.set_job(Stage::Export, Some(e));
    let (p, _) = step(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&p.status, CONDITION_READY).status, "True");
}

#[test]
fn a_token_the_batch_was_created_with_starts_nothing() {
    let s = spec_with(|s| s.rerun = Some(RerunSpec { token: "v1".into(), from: RerunFrom::Export }));
    let mut sim = Sim::new(s, succeeded(workers_job("0-29", "", 0), 90), 100);
    // Sim starts from a running status: record the token as the first pass would have.
    sim.batch.status.as_mut().unwrap().rerun_token = Some("v1".into());
    sim.run(20);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    assert_eq!(sim.all_creates().iter().filter(|s| **s == Stage::Export).count(), 1);
    let (p, _) = step(&batch(sim.batch.spec.clone(), None), &observed(0));
    assert_eq!(p.status.rerun_token.as_deref(), Some("v1"), "recorded on the first pass");
}

#[test]
fn a_rerun_whose_earlier_stages_did_not_succeed_is_refused_once() {
    // Failed below quorum: consolidation never ran, so a rerun of the export cannot run.
    let b = batch(spec(), Some(running_status(&spec())));
    let (_, b) = step(&b, &obs_with(100, &[failed(workers_job("0-5", "6", 0), "BackoffLimitExceeded", 99)]));
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let b = with_rerun(&b, "t", RerunFrom::Export);
    let (p, b) = step(&b, &observed(200));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert!(p.actions.is_empty());
    assert!(p.status.attempts.is_empty());
    let refused: Vec<_> = p.events.iter().filter(|e| e.reason == EventReason::RerunRefused).collect();
    assert_eq!(refused.len(), 1, "{:?}", p.events);
    assert!(refused[0].warning && refused[0].note.contains("workers did not succeed"), "{:?}", refused[0]);
    let again = plan(&b, &observed(300));
    assert!(again.events.is_empty(), "refused once: {:?}", again.events);
}

#[test]
fn the_history_is_bounded_and_names_stay_unique() {
    let mut sim = succeeded_sim();
    let mut names = std::collections::BTreeSet::new();
    for i in 0..15 {
        let b = with_rerun(&sim.batch, &format!("t{i}"), RerunFrom::Export);
        let (p, b) = step(&b, &sim.obs);
        let name = stage_of(&p.status, Stage::Export).unwrap().job_name.clone();
        assert!(names.insert(name.clone()), "{name} used twice");
        let e = JobView { name, uid: format!("uid-{i}"), ..succeeded(job(Stage::Export), 1000 + i) };
        sim.obs.set_job(Stage::Export, Some(e));
        let (p, b) = step(&b, &sim.obs);
        assert_eq!(p.status.phase, Some(Phase::Succeeded), "attempt {}", i + 2);
        sim.batch = b;
    }
    let st = sim.status();
    assert_eq!(st.attempts.len(), rerun_max());
    assert_eq!(st.attempts.last().unwrap().attempt, 16);
    assert_eq!(st.attempts[0].attempt, 7);
}

fn rerun_max() -> usize {
    super::super::rerun::MAX_ATTEMPTS
}

/// The example batch at 90% quorum, ended Succeeded with shards 3 and 7 failed.
fn degraded() -> Sim {
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let mut sim = Sim::new(s, failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(20);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    assert_eq!(sim.status().failed_shards.as_deref(), Some("3,7"));
    sim
}

fn shard_job(attempt: u32, shard: u32) -> JobView {
    JobView {
        name: crate::api::stage::shard_job_name(NAME, attempt, shard),
        uid: format!("uid-r{attempt}-{shard}"),
        parallelism: Some(1),
        outcome_finalizer: Some(0),
        ..job(Stage::Workers)
    }
}

#[test]
fn failed_shards_rerun_alone_then_consolidation_and_export_and_the_batch_is_whole() {
    let sim = degraded();
    let b = with_rerun(&sim.batch, "shards", RerunFrom::FailedShards);
    let mut obs = sim.obs.clone();
    let (p, b) = step(&b, &obs);
    assert_eq!(p.actions, [Action::CreateShard(3), Action::CreateShard(7)], "only the failed shards");
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert_eq!(p.status.attempts.last().unwrap().shards.as_deref(), Some("3,7"));
    assert_eq!(p.status.succeeded_shards.as_deref(), Some(ALL_BUT_3_7), "earlier successes stay");
    assert!(p.status.consolidation.is_none() && p.status.export.is_none());

    // Shard 3 succeeds, shard 7 still runs: recorded, 3's Job released, nothing else created.
    obs.shard_jobs.insert(3, succeeded(shard_job(2, 3), 300));
    obs.shard_jobs.insert(7, JobView { active: 1, ..shard_job(2, 7) });
    let (p, b) = step(&b, &obs);
    assert_eq!(p.status.shards.as_ref().unwrap().succeeded, 29);
    assert_eq!(p.actions, [Action::ReleaseShard { shard: 3, uid: "uid-r2-3".into(), index: 0 }]);
    obs.shard_jobs.insert(3, JobView { outcome_finalizer: None, ..succeeded(shard_job(2, 3), 300) });
    obs.shard_jobs.insert(7, succeeded(shard_job(2, 7), 310));
    let (p, b) = step(&b, &obs);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded));
    assert_eq!(p.status.progress.as_deref(), Some("120/120"));
    assert_eq!(p.status.failed_shards, None);
    assert_eq!(creates(&p), [Stage::Consolidation]);
    assert_eq!(stage_of(&p.status, Stage::Consolidation).unwrap().job_name, format!("{NAME}-r2-consolidate"));
    assert!(p.actions.contains(&Action::ReleaseShard { shard: 7, uid: "uid-r2-7".into(), index: 0 }));
    let c = JobView { name: format!("{NAME}-r2-consolidate"), ..succeeded(job(Stage::Consolidation), 320) };
    obs.set_job(Stage::Consolidation, Some(c));
    let (p, b) = step(&b, &obs);
    assert_eq!(creates(&p), [Stage::Export]);
    let e = JobView { name: format!("{NAME}-r2-export"), ..succeeded(job(Stage::Export), 330) };
    obs.set_job(Stage::Export, Some(e));
    let (p, _) = step(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&p.status, CONDITION_DEGRADED).status, "False", "100% now");
    let last = p.status.attempts.last().unwrap();
    assert_eq!((last.outcome, last.succeeded_items, last.failed_items), (Some(Phase::Succeeded), 120, 0));
    assert_eq!(p.status.attempts[0].failed_items, 8);
}

#[test]
fn a_shard_that_fails_again_is_not_run_a_third_time_and_the_quorum_decides() {
    let sim = degraded();
    let b = with_rerun(&sim.batch, "shards", RerunFrom::FailedShards);
    let mut obs = sim.obs.clone();
    let (_, b) = step(&b, &obs);
    obs.shard_jobs.insert(3, failed(shard_job(2, 3), "BackoffLimitExceeded", 300));
    let (p, b) = step(&b, &obs);
    assert_eq!(p.status.attempts.last().unwrap().failed_shards.as_deref(), Some("3"));
    // Its Job released and gone: shard 3 is not created again.
    obs.shard_jobs.remove(&3);
    let p2 = plan(&b, &obs);
    assert!(!p2.actions.contains(&Action::CreateShard(3)), "{:?}", p2.actions);
    assert!(p.actions.contains(&Action::CreateShard(7)) || p2.actions.contains(&Action::CreateShard(7)));
    obs.shard_jobs.insert(7, succeeded(shard_job(2, 7), 310));
    let (p, _) = step(&b, &obs);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "116/120 meets 90%");
    assert_eq!(p.status.failed_shards.as_deref(), Some("3"));
    assert_eq!(cond(&p.status, CONDITION_DEGRADED).status, "True");
}

#[test]
fn with_no_failed_shard_a_failed_shards_rerun_runs_consolidation_and_export() {
    let sim = succeeded_sim();
    let b = with_rerun(&sim.batch, "again", RerunFrom::FailedShards);
    let (p, _) = step(&b, &sim.obs);
    assert_eq!(creates(&p), [Stage::Consolidation]);
    assert_eq!(stage_state(&p.status, Stage::Workers), Some(StageState::Succeeded), "the workers are kept");
}

#[test]
fn parallelism_bounds_the_rerun_shard_jobs() {
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 1;
        s.parallelism = 2;
    });
    let mut sim = Sim::new(s, failed(workers_job("0-9", "10-29", 0), "FailedIndexes", 90), 100);
    sim.run(20);
    assert_eq!(sim.status().phase, Some(Phase::Succeeded));
    let b = with_rerun(&sim.batch, "t", RerunFrom::FailedShards);
    let (p, b) = step(&b, &sim.obs);
    assert_eq!(p.actions, [Action::CreateShard(10), Action::CreateShard(11)]);
    let mut obs = sim.obs.clone();
    obs.shard_jobs.insert(10, JobView { active: 1, ..shard_job(2, 10) });
    obs.shard_jobs.insert(11, succeeded(shard_job(2, 11), 200));
    let p = plan(&b, &obs);
    let created: Vec<_> = p.actions.iter().filter(|a| matches!(a, Action::CreateShard(_))).collect();
    assert_eq!(created, [&Action::CreateShard(12)], "one slot free");
}

#[test]
fn the_ttl_deletes_every_job_of_every_attempt() {
    let mut sim = degraded();
    sim.batch.spec.ttl_seconds_after_finished = Some(60);
    let b = with_rerun(&sim.batch, "fix-3-7", RerunFrom::FailedShards);
    let mut obs = sim.obs.clone();
    // As the reconciler sees it: no Job by the rerun's worker name (its shards have Jobs of their own).
    obs.set_job(Stage::Workers, None);
    let (_, b) = step(&b, &obs);
    for i in [3, 7] {
        obs.shard_jobs.insert(i, JobView { outcome_finalizer: None, ..succeeded(shard_job(2, i), 300) });
    }
    let (_, b) = step(&b, &obs);
    for (stage, at) in [(Stage::Consolidation, 320), (Stage::Export, 330)] {
        let j = JobView { name: stage.job_name_in(NAME, 2), uid: format!("uid-r2-{}", stage.label()), ..job(stage) };
        obs.set_job(stage, Some(succeeded(j, at)));
        obs.now = t(at + 1);
    }
    let (_, b) = step(&b, &obs);
    let (p, b) = step(&b, &obs);
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    // The first attempt's consolidation and export Jobs, and the rerun shard Jobs, are the batch's too.
    obs.leftover_jobs = vec![
        (Stage::Workers.job_name(NAME), uid(Stage::Workers)),
        (Stage::Consolidation.job_name(NAME), uid(Stage::Consolidation)),
        (Stage::Export.job_name(NAME), uid(Stage::Export)),
        (shard_job(2, 3).name, "uid-r2-3".into()),
        (shard_job(2, 7).name, "uid-r2-7".into()),
    ];
    obs.now = t(1000);
    let p = plan(&b, &obs);
    let mut deleted: Vec<String> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { stage, .. } => Some(stage.job_name_in(NAME, 2)),
            Action::DeleteJob { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    deleted.sort();
    let mut want: Vec<String> =
        ["workers", "consolidate", "export", "r2-consolidate", "r2-export", "r2-workers-3", "r2-workers-7"]
            .iter()
            .map(|s| format!("{NAME}-{s}"))
            .collect();
    want.sort();
    assert_eq!(deleted, want, "{:?}", p.actions);
}

#[test]
fn suspending_a_rerun_suspends_its_running_shard_jobs_and_resuming_resumes_them() {
    let sim = degraded();
    let b = with_rerun(&sim.batch, "shards", RerunFrom::FailedShards);
    let mut obs = sim.obs.clone();
    let (_, mut b) = step(&b, &obs);
    obs.shard_jobs.insert(3, JobView { active: 1, ..shard_job(2, 3) });
    obs.shard_jobs.insert(7, JobView { active: 1, ..shard_job(2, 7) });
    b.spec.suspend = true;
    let (p, b) = step(&b, &obs);
    let suspends: Vec<_> = p.actions.iter().filter(|a| matches!(a, Action::SuspendShard { .. })).collect();
    assert_eq!(
        suspends,
        [&Action::SuspendShard { shard: 3, suspend: true }, &Action::SuspendShard { shard: 7, suspend: true }]
    );
    for i in [3, 7] {
        obs.shard_jobs.insert(i, JobView { suspended: true, active: 0, ..shard_job(2, i) });
    }
    let (p, mut b) = step(&b, &obs);
    assert!(!p.actions.iter().any(|a| matches!(a, Action::SuspendShard { .. })), "{:?}", p.actions);
    assert_eq!(p.status.phase, Some(Phase::Suspended));
    b.spec.suspend = false;
    let (p, _) = step(&b, &obs);
    let resumes: Vec<_> = p.actions.iter().filter(|a| matches!(a, Action::SuspendShard { .. })).collect();
    assert_eq!(
        resumes,
        [&Action::SuspendShard { shard: 3, suspend: false }, &Action::SuspendShard { shard: 7, suspend: false }]
    );
}
