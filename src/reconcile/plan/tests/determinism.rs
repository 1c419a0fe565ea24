//! Determinism: re-planning the planner's own status changes nothing, and every condition carries
//! the generation.

use super::*;

/// Replans every pass of `sim` from its own output with the same observation a bit later.
fn assert_fixpoints(b0: PredictionBatch, passes: &[Observed]) {
    let mut b = b0;
    for obs in passes {
        let (p, next) = step(&b, obs);
        let mut later = obs.clone();
        later.now = obs.now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5)).unwrap();
        let again = plan(&next, &later);
        assert_eq!(again.status, p.status, "status moved on an idle re-plan at {}", obs.now);
        assert!(again.events.is_empty(), "events on an idle re-plan at {}: {:?}", obs.now, again.events);
        assert_condition_generations(&again.status);
        b = next;
    }
}

#[test]
fn replanning_own_status_is_a_fixpoint() {
    let w_done = succeeded(workers_job("0-29", "", 0), 90);
    let c_done = succeeded(job(Stage::Consolidation), 150);
    assert_fixpoints(
        batch(spec(), None),
        &[
            observed(0),
            obs_with(2, &[job(Stage::Workers)]),
            obs_with(50, &[workers_job("0-9", "", 10)]),
            obs_with(100, &[w_done.clone()]),
            obs_with(101, &[w_done.clone()]),
            obs_with(102, &[w_done.clone(), job(Stage::Consolidation)]),
            obs_with(160, &[w_done.clone(), c_done.clone()]),
            obs_with(161, &[w_done.clone(), c_done.clone()]),
            obs_with(162, &[w_done.clone(), c_done.clone(), job(Stage::Export)]),
            obs_with(210, &[w_done, c_done, succeeded(job(Stage::Export), 200)]),
        ],
    );
}

#[test]
fn replanning_failed_and_stalled_batches_is_a_fixpoint() {
    // Quorum not met.
    assert_fixpoints(
        batch(spec(), Some(running_status(&spec()))),
        &vec![obs_with(100, &[failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90)]); 2],
    );
    // Job deleted.
    assert_fixpoints(batch(spec(), Some(running_status(&spec()))), &[observed(100), observed(200)]);
    // Name conflict.
    let foreign = JobView { owned: false, ..job(Stage::Workers) };
    assert_fixpoints(batch(spec(), None), &[obs_with(0, &[foreign.clone()]), obs_with(10, &[foreign])]);
    // Invalid spec.
    assert_fixpoints(batch(spec_with(|s| s.target_count = None), None), &[observed(0), observed(10)]);
    // Degraded success.
    let s = spec_with(|s| s.completion.min_succeeded_percent = 90);
    let mut sim = Sim::new(s, failed(workers_job(ALL_BUT_3_7, "3,7", 0), "FailedIndexes", 90), 100);
    sim.run(10);
    assert_fixpoints(sim.batch.clone(), &[sim.obs.clone()]);
    // Grace period (re-planned well within it) and stopping.
    let s = spec_with(|s| {
        s.completion.min_succeeded_percent = 90;
        s.completion.grace_seconds = 300;
    });
    assert_fixpoints(
        batch(s.clone(), Some(running_status(&s))),
        &[obs_with(100, &[workers_job("0-28", "", 1)]), obs_with(150, &[workers_job("0-28", "", 1)])],
    );
    // Suspended.
    assert_fixpoints(
        batch(spec_with(|s| s.suspend = true), Some(running_status(&spec()))),
        &[
            obs_with(100, &[workers_job("0-3", "", 4)]),
            obs_with(150, &[JobView { suspended: true, ..workers_job("0-3", "", 0) }]),
        ],
    );
}

#[test]
fn observed_generation_is_on_status_and_every_condition() {
    let mut b = batch(spec(), None);
    b.metadata.generation = Some(7);
    let p = plan(&b, &observed(0));
    assert_eq!(p.status.observed_generation, Some(7));
    assert_eq!(p.status.conditions.len(), 4);
    for c in &p.status.conditions {
        assert_eq!(c.observed_generation, Some(7), "{}", c.type_);
    }
    // A new generation updates it without moving unchanged conditions' transition times.
    let mut b2 = b.clone();
    b2.status = Some(p.status.clone());
    b2.metadata.generation = Some(8);
    let p2 = plan(&b2, &observed(60));
    assert_eq!(p2.status.observed_generation, Some(8));
    for c in &p2.status.conditions {
        assert_eq!(c.observed_generation, Some(8), "{}", c.type_);
        assert_eq!(c.last_transition_time, Time(t(0)), "{}", c.type_);
    }
    // Invalid spec too.
    let mut bad = batch(spec_with(|s| s.target_count = None), None);
    bad.metadata.generation = Some(9);
    let p = plan(&bad, &observed(0));
    assert_eq!(p.status.observed_generation, Some(9));
    assert!(p.status.conditions.iter().all(|c| c.observed_generation == Some(9)));
}

#[test]
fn foreign_conditions_are_kept() {
    let mut st = running_status(&spec());
    st.conditions.push(Condition {
        type_: "MirrorSynced".into(),
        status: "True".into(),
        reason: "Synced".into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(t(5)),
    });
    let p = plan(&batch(spec(), Some(st)), &obs_with(100, &[workers_job("0-3", "", 10)]));
    assert_eq!(cond(&p.status, "MirrorSynced").reason, "Synced");
}

#[test]
fn invalid_spec_stalls_without_actions() {
    let cases = [
        spec_with(|s| s.target_count = None),
        spec_with(|s| s.items_per_shard = 0),
        spec_with(|s| {
            s.target_count = Some(100_000);
            s.items_per_shard = 1;
        }),
        spec_with(|s| s.completion.complete_by = Some("tomorrow".into())),
    ];
    for s in cases {
        for prev in [None, Some(running_status(&spec()))] {
            let was_running = prev.is_some();
            let b = batch(s.clone(), prev);
            let p = plan(&b, &obs_with(10, &[workers_job("0-3", "", 10)]));
            assert!(p.actions.is_empty(), "{s:?}: {:?}", p.actions);
            let stalled = cond(&p.status, CONDITION_STALLED);
            assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "InvalidSpec"), "{s:?}");
            assert_eq!(cond(&p.status, CONDITION_READY).status, "False");
            let want = if was_running { Phase::Running } else { Phase::Pending };
            assert_eq!(p.status.phase, Some(want));
            assert!(p.events.iter().any(|e| e.warning && e.reason == "InvalidSpec"));
        }
    }
}
