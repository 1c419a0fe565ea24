//! A simulated cluster: random shard outcomes, restarts and spec changes, with the invariants
//! checked after every pass.

use super::*;

/// One random thing that happens to the cluster between two passes.
#[derive(Clone, Debug)]
enum Event {
    Nothing,
    CompleteShard(u32),
    FailShard(u32),
    /// The Job controller ends the worker Job: Complete when every index succeeded, else FailedIndexes.
    FinishWorkers,
    FailWorkers,
    /// Pods of the workers start or stop.
    Active(u32),
    FinishStage(Stage, bool),
    /// The apiserver rejects the next create.
    Reject,
    ToggleSuspend,
    Advance(i64),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => Just(Event::Nothing),
        12 => (0u32..40).prop_map(Event::CompleteShard),
        1 => (0u32..40).prop_map(Event::FailShard),
        1 => Just(Event::FinishWorkers),
        1 => Just(Event::FailWorkers),
        2 => (0u32..12).prop_map(Event::Active),
        3 => (prop_oneof![Just(Stage::Consolidation), Just(Stage::Export)], prop::bool::weighted(0.85))
            .prop_map(|(s, ok)| Event::FinishStage(s, ok)),
        1 => Just(Event::Reject),
        1 => Just(Event::ToggleSuspend),
        4 => (0i64..90).prop_map(Event::Advance),
    ]
}

fn rank(p: Phase) -> Option<u8> {
    match p {
        Phase::Pending => Some(0),
        Phase::Loading => Some(1),
        Phase::Running => Some(2),
        Phase::Consolidating => Some(3),
        Phase::Exporting => Some(4),
        Phase::Succeeded | Phase::Failed => Some(5),
        Phase::Suspended => None,
    }
}

fn stage_succeeded(st: Option<&PredictionBatchStatus>, stage: Stage) -> bool {
    st.and_then(|s| stage_state(s, stage)) == Some(StageState::Succeeded)
}

/// Indexes as the Job controller lists them (`1,3-5`), `None` for none.
fn index_list(s: &std::collections::BTreeSet<u32>) -> Option<String> {
    Some(crate::reconcile::ranges::IndexSet::from_indexes(s.iter().copied()).to_string()).filter(|s| !s.is_empty())
}

/// Runs the reconciler against a simulated cluster. `strict`: the next stage may only be planned
/// from a status that already recorded the previous stage's success (the brief's reading);
/// otherwise the status being written is enough (plan.rs's documented invariant).
fn simulate(
    spec: PredictionBatchSpec,
    (chaos, events): (bool, Vec<Vec<Event>>),
    strict: bool,
) -> Result<(), TestCaseError> {
    let layout =
        crate::reconcile::shards::ShardLayout::new(spec.target_count.unwrap_or(0), spec.items_per_shard).unwrap();
    let n = layout.shard_count();
    let pct = spec.completion.min_succeeded_percent;
    let mut b = batch(spec, None);
    let mut obs = observed(0);
    let mut created: BTreeMap<Stage, u32> = BTreeMap::new();
    let mut next_uid = 0;
    let mut completed: std::collections::BTreeSet<u32> = Default::default();
    let mut failed_set: std::collections::BTreeSet<u32> = Default::default();
    let mut max_phase: Option<u8> = None;
    let mut terminal: Option<Phase> = None;
    let mut max_succeeded = 0u32;
    let mut trace: Vec<String> = Vec::new();

    for (i, step_events) in events.into_iter().enumerate() {
        let prev = b.status.clone();
        let p = plan(&b, &obs);
        let st = &p.status;
        trace.push(format!(
            "step {i}: phase {:?} workers {:?} cons {:?} export {:?} actions {:?}",
            st.phase,
            stage_state(st, Stage::Workers),
            stage_state(st, Stage::Consolidation),
            stage_state(st, Stage::Export),
            p.actions
        ));
        let ctx = || trace.join("\n");

        // Stage ordering.
        for s in creates(&p) {
            let basis = if strict { prev.as_ref() } else { Some(st) };
            match s {
                Stage::Loader => {}
                Stage::Workers => {
                    let loaded = b.spec.loader.is_none() || stage_succeeded(basis, Stage::Loader);
                    prop_assert!(loaded, "workers before the loader succeeded\n{}", ctx());
                }
                Stage::Consolidation => {
                    prop_assert!(
                        stage_succeeded(basis, Stage::Workers),
                        "consolidation before workers succeeded\n{}",
                        ctx()
                    );
                    let items = st.items.clone().unwrap_or_default();
                    prop_assert!(
                        u64::from(items.succeeded) * 100 >= u64::from(pct) * u64::from(layout.target),
                        "consolidation below quorum: {items:?}\n{}",
                        ctx()
                    );
                    if strict {
                        let items = prev.as_ref().and_then(|s| s.items.clone()).unwrap_or_default();
                        prop_assert!(u64::from(items.succeeded) * 100 >= u64::from(pct) * u64::from(layout.target));
                    }
                }
                Stage::Export => {
                    let ok = if b.spec.consolidation.is_some() {
                        stage_succeeded(basis, Stage::Consolidation)
                    } else {
                        stage_succeeded(basis, Stage::Workers)
                    };
                    prop_assert!(ok, "export before the previous stage succeeded\n{}", ctx());
                }
            }
        }
        // Phases.
        let phase = st.phase.expect("a phase is always written");
        if let Some(t) = terminal {
            prop_assert_eq!(phase, t, "terminal phase changed\n{}", ctx());
        }
        if let Some(r) = rank(phase) {
            prop_assert!(max_phase.is_none_or(|m| r >= m), "phase moved backwards to {:?}\n{}", phase, ctx());
            max_phase = Some(max_phase.map_or(r, |m| m.max(r)));
        }
        if phase.is_terminal() {
            terminal = Some(phase);
        }
        // Counts.
        if let Some(sh) = &st.shards {
            prop_assert!(sh.succeeded >= max_succeeded, "shards.succeeded shrank\n{}", ctx());
            max_succeeded = sh.succeeded;
            prop_assert!(sh.succeeded + sh.failed <= sh.total);
        }

        // The reconciler writes status, then acts.
        b.status = Some(p.status.clone());
        // Determinism: with nothing left to do, the same observation again changes nothing and says
        // nothing. (A plan with actions may write an intermediate status, e.g. Stopping before the
        // Suspend, that the next pass moves on from.)
        if p.actions.is_empty() {
            let again = plan(&b, &obs);
            prop_assert_eq!(&again.status, &p.status, "status not a fixpoint\n{}", ctx());
            prop_assert!(again.events.is_empty(), "events on a re-plan: {:?}\n{}", again.events, ctx());
        }
        obs.rejected.clear();
        let reject = chaos && step_events.iter().any(|e| matches!(e, Event::Reject));
        for a in &p.actions {
            match a {
                Action::Create(s) => {
                    if reject {
                        obs.rejected.push((*s, "invalid template".into()));
                        continue;
                    }
                    let count = created.entry(*s).or_default();
                    *count += 1;
                    prop_assert!(*count == 1, "{:?} Job created twice\n{}", s, ctx());
                    next_uid += 1;
                    let j = JobView {
                        uid: format!("uid-{next_uid}"),
                        outcome_finalizer: Some(0),
                        created: Some(obs.now),
                        start_time: Some(obs.now),
                        parallelism: None,
                        ..job(*s)
                    };
                    obs.set_job(*s, Some(j));
                }
                Action::Suspend { stage, suspend } => {
                    if let Some(mut j) = obs.job(*stage).cloned() {
                        j.suspended = *suspend;
                        if *suspend {
                            j.active = 0;
                        }
                        obs.set_job(*stage, Some(j));
                    }
                }
                Action::Parallelism(par) => {
                    if let Some(j) = obs.jobs.workers.as_mut() {
                        j.parallelism = Some(*par);
                    }
                }
                Action::Delete { stage, .. } => obs.set_job(*stage, None),
                Action::Release { stage, .. } => {
                    if let Some(mut j) = obs.job(*stage).cloned() {
                        j.outcome_finalizer = None;
                        obs.set_job(*stage, Some(j));
                    }
                }
                // The simulated batches are never rerun.
                Action::Validate
                | Action::CreateShard(_)
                | Action::ReleaseShard { .. }
                | Action::CreateBackup(_)
                | Action::ReleaseBackup { .. }
                | Action::StopBackup { .. }
                | Action::DeleteJob { .. }
                | Action::SuspendShard { .. } => {}
            }
        }

        // The cluster moves on; without chaos, only shards fail.
        let harsh = |e: &Event| {
            matches!(e, Event::FailWorkers | Event::Reject | Event::FinishStage(_, false) | Event::ToggleSuspend)
        };
        for e in step_events.into_iter().filter(|e| chaos || !harsh(e)) {
            let running = |j: &Option<JobView>| j.as_ref().is_some_and(|j| j.outcome == JobOutcome::Running);
            match e {
                Event::Nothing | Event::Reject => {}
                Event::CompleteShard(k) | Event::FailShard(k) if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    if j.suspended {
                        continue;
                    }
                    // A shard already done: the lowest unfinished one instead.
                    let mut k = k % n;
                    if completed.contains(&k) || failed_set.contains(&k) {
                        k = (0..n).find(|i| !completed.contains(i) && !failed_set.contains(i)).unwrap_or(k);
                    }
                    if !completed.contains(&k) && !failed_set.contains(&k) {
                        if matches!(e, Event::CompleteShard(_)) {
                            completed.insert(k);
                        } else {
                            failed_set.insert(k);
                        }
                    }
                    j.completed_indexes = index_list(&completed);
                    j.failed_indexes = index_list(&failed_set);
                    let left = n - completed.len() as u32 - failed_set.len() as u32;
                    j.active = j.active.min(left);
                }
                Event::FinishWorkers if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    let all_done = completed.len() + failed_set.len() == n as usize;
                    if j.suspended || (!chaos && !all_done) {
                        continue;
                    }
                    // Every index ends: the remaining ones fail.
                    for k in 0..n {
                        if !completed.contains(&k) {
                            failed_set.insert(k);
                        }
                    }
                    j.completed_indexes = index_list(&completed);
                    j.failed_indexes = index_list(&failed_set);
                    j.active = 0;
                    j.outcome = if failed_set.is_empty() {
                        JobOutcome::Succeeded { at: Some(obs.now) }
                    } else {
                        JobOutcome::Failed { reason: "FailedIndexes".into(), message: String::new(), at: Some(obs.now) }
                    };
                }
                Event::FailWorkers if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    j.active = 0;
                    j.outcome = JobOutcome::Failed {
                        reason: "BackoffLimitExceeded".into(),
                        message: String::new(),
                        at: Some(obs.now),
                    };
                }
                Event::Active(a) if running(&obs.jobs.workers) => {
                    let j = obs.jobs.workers.as_mut().unwrap();
                    if !j.suspended {
                        let left = n - completed.len() as u32 - failed_set.len() as u32;
                        j.active = a.min(left);
                    }
                }
                Event::FinishStage(s, ok) => {
                    let now = obs.now;
                    let j = match s {
                        Stage::Consolidation => obs.jobs.consolidation.as_mut(),
                        _ => obs.jobs.export.as_mut(),
                    };
                    if let Some(j) = j.filter(|j| j.outcome == JobOutcome::Running && !j.suspended) {
                        j.outcome = if ok {
                            JobOutcome::Succeeded { at: Some(now) }
                        } else {
                            JobOutcome::Failed {
                                reason: "BackoffLimitExceeded".into(),
                                message: String::new(),
                                at: Some(now),
                            }
                        };
                    }
                }
                Event::ToggleSuspend => b.spec.suspend = !b.spec.suspend,
                Event::Advance(s) => {
                    obs.now = obs.now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(s)).unwrap();
                }
                _ => {}
            }
        }
    }
    if std::env::var_os("PLAN_SIM_STATS").is_some() {
        eprintln!("SIMSTAT strict={strict} final={:?} created={:?}", b.status.as_ref().and_then(|s| s.phase), created);
    }
    Ok(())
}

fn arb_sim_spec() -> impl Strategy<Value = PredictionBatchSpec> {
    (
        prop_oneof![Just((120u32, 4u32)), (1u32..40, 1u32..5)],
        prop_oneof![Just(100u32), Just(90), 1u32..=100],
        prop_oneof![Just(0i64), 0i64..120],
        prop_oneof![3 => Just(None), 1 => (0i64..4000).prop_map(Some)],
        (prop::bool::weighted(0.8), prop::bool::weighted(0.8)),
        proptest::option::of(0i64..100),
        1u32..12,
    )
        .prop_map(|((target, per), pct, grace, complete_by, (cons, exp), ttl, par)| {
            spec_with(|s| {
                s.target_count = Some(target);
                s.items_per_shard = per;
                s.parallelism = par;
                s.completion = CompletionSpec {
                    min_succeeded_percent: pct,
                    grace_seconds: grace,
                    complete_by: complete_by.map(|c| t(c).to_string()),
                    ..CompletionSpec::default()
                };
                if !cons {
                    s.consolidation = None;
                }
                if !exp {
                    s.export = None;
                }
                s.ttl_seconds_after_finished = ttl;
            })
        })
}

fn arb_sim_events() -> impl Strategy<Value = (bool, Vec<Vec<Event>>)> {
    (prop::bool::weighted(0.25), proptest::collection::vec(proptest::collection::vec(arb_event(), 0..5), 1..=40))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// plan.rs's invariants, with "the previous stage's outcome is in the status being written".
    #[test]
    fn simulation_keeps_the_invariants(spec in arb_sim_spec(), events in arb_sim_events()) {
        simulate(spec, events, false)?;
    }
}
