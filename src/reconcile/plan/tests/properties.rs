//! Property tests: whatever the spec, status and Jobs, the planner does not panic and keeps its
//! invariants.

use super::*;

fn arb_time() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        8 => (T0 - 1000..T0 + 100_000).prop_map(|s| Timestamp::from_second(s).unwrap()),
        1 => Just(Timestamp::MIN),
        1 => Just(Timestamp::MAX),
    ]
}

fn arb_indexes() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        4 => "([0-9]{1,2}(-[0-9]{1,2})?,){0,4}[0-9]{1,2}".prop_map(Some),
        1 => ".{0,20}".prop_map(Some),
        1 => Just(Some("0-4294967295".to_string())),
        1 => Just(Some("4294967295".to_string())),
        1 => Just(Some("99999999999".to_string())),
    ]
}

fn arb_outcome() -> impl Strategy<Value = JobOutcome> {
    let reason = prop_oneof![
        Just("FailedIndexes".to_string()),
        Just("MaxFailedIndexesExceeded".to_string()),
        Just("BackoffLimitExceeded".to_string()),
        Just("DeadlineExceeded".to_string()),
        ".{0,8}",
    ];
    prop_oneof![
        Just(JobOutcome::Running),
        proptest::option::of(arb_time()).prop_map(|at| JobOutcome::Succeeded { at }),
        (reason, ".{0,8}", proptest::option::of(arb_time())).prop_map(|(reason, message, at)| JobOutcome::Failed {
            reason,
            message,
            at
        }),
    ]
}

fn arb_job(stage: Stage) -> impl Strategy<Value = JobView> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(uid(stage)), Just("other".to_string()), Just(String::new())],
            (any::<bool>(), any::<bool>(), proptest::option::of(0usize..3)),
        ),
        (proptest::option::of(any::<i32>()), prop_oneof![0u32..20, any::<u32>()], 0u32..3),
        (arb_indexes(), arb_indexes(), arb_outcome()),
        (proptest::option::of(arb_time()), proptest::option::of(arb_time())),
    )
        .prop_map(
            move |(
                (owned, suspended, uid, (suspend_confirmed, deleting, fin)),
                (parallelism, active, terminating),
                (ci, fi, outcome),
                (created, start),
            )| {
                JobView {
                    name: stage.job_name(NAME),
                    uid,
                    owned,
                    suspended,
                    suspend_confirmed,
                    deleting,
                    outcome_finalizer: fin,
                    parallelism,
                    active,
                    terminating,
                    completed_indexes: ci,
                    failed_indexes: fi,
                    outcome,
                    created,
                    start_time: start,
                }
            },
        )
}

fn arb_phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Pending),
        Just(Phase::Running),
        Just(Phase::Consolidating),
        Just(Phase::Exporting),
        Just(Phase::Succeeded),
        Just(Phase::Failed),
        Just(Phase::Suspended),
    ]
}

fn arb_stage_status(stage: Stage) -> impl Strategy<Value = Option<StageStatus>> {
    let state = prop_oneof![
        Just(StageState::Pending),
        Just(StageState::Running),
        Just(StageState::Stopping),
        Just(StageState::Succeeded),
        Just(StageState::Failed),
    ];
    proptest::option::of(
        (
            state,
            proptest::option::of(prop_oneof![Just(uid(stage)), Just("other".to_string())]),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_time()),
            proptest::option::of(arb_time()),
        )
            .prop_map(move |(state, job_uid, start, stop, done)| StageStatus {
                job_name: stage.job_name(NAME),
                job_uid,
                state,
                start_time: start.map(Time),
                stop_time: stop.map(Time),
                completion_time: done.map(Time),
                duration: None,
                message: None,
            }),
    )
}

fn arb_condition() -> impl Strategy<Value = Condition> {
    (
        prop_oneof![Just(CONDITION_READY), Just(CONDITION_STALLED), Just(CONDITION_DEGRADED), Just("Other")],
        prop_oneof![Just("True"), Just("False"), Just("Unknown")],
        ".{0,10}",
        arb_time(),
    )
        .prop_map(|(type_, status, reason, at)| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.clone(),
            message: reason,
            observed_generation: Some(1),
            last_transition_time: Time(at),
        })
}

fn arb_status() -> impl Strategy<Value = Option<PredictionBatchStatus>> {
    proptest::option::of(
        (
            proptest::option::of(arb_phase()),
            (arb_stage_status(Stage::Workers), arb_stage_status(Stage::Consolidation), arb_stage_status(Stage::Export)),
            (proptest::option::of(arb_time()), proptest::option::of(arb_time()), proptest::option::of(arb_time())),
            (proptest::option::of((any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>())), arb_indexes()),
            proptest::collection::vec(arb_condition(), 0..4),
            (proptest::option::of(arb_time()), proptest::option::of(prop_oneof![0i64..1000, Just(i64::MAX)])),
            proptest::option::of((arb_indexes(), arb_indexes(), arb_indexes())),
        )
            .prop_map(
                |(
                    phase,
                    (workers, consolidation, export),
                    (quorum, start, done),
                    (shards, failed),
                    conditions,
                    (suspended, paused),
                    backups,
                )| {
                    PredictionBatchStatus {
                        backups: backups
                            .map(|(started, won, lost)| Box::new(crate::api::BackupStatus { started, won, lost })),
                        suspend_time: suspended.map(Time),
                        grace_paused_seconds: paused,
                        observed_generation: Some(1),
                        phase,
                        shards: shards.map(|(total, succeeded, failed, active)| crate::api::ShardCounts {
                            total,
                            succeeded,
                            failed,
                            active,
                        }),
                        items: None,
                        items_ref: None,
                        loader: None,
                        progress: None,
                        succeeded_shards: None,
                        failed_shards: failed,
                        quorum_time: quorum.map(Time),
                        workers: workers.map(Box::new),
                        consolidation: consolidation.map(Box::new),
                        export: export.map(Box::new),
                        start_time: start.map(Time),
                        completion_time: done.map(Time),
                        duration: None,
                        eta: None,
                        stuck_pods: Vec::new(),
                        rerun_token: suspended.map(|_| "a".to_string()),
                        attempts: Vec::new(),
                        conditions,
                    }
                },
            ),
    )
}

fn arb_spec() -> impl Strategy<Value = PredictionBatchSpec> {
    (
        (prop_oneof![0u32..200, Just(100_000u32), Just(u32::MAX)], prop_oneof![0u32..10, Just(u32::MAX)], any::<u32>()),
        (0u32..=120, prop_oneof![-10i64..100, Just(i64::MAX), Just(i64::MIN)]),
        prop_oneof![
            Just(None),
            Just(Some("tomorrow".to_string())),
            Just(Some(String::new())),
            arb_time().prop_map(|t| Some(t.to_string())),
        ],
        (any::<bool>(), any::<bool>(), any::<bool>()),
        proptest::option::of(prop_oneof![-10i64..100, Just(i64::MAX), Just(i64::MIN)]),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (target, per, par),
                (pct, grace),
                complete_by,
                (cons, exp, suspend),
                ttl,
                (loader, run_empty, backup),
            )| {
                spec_with(|s| {
                    s.target_count = Some(target);
                    if loader {
                        s.target_count = None;
                        s.loader = Some(stage_spec());
                    }
                    s.items_per_shard = per;
                    s.parallelism = par;
                    let on_no_items = if run_empty { NoItemsPolicy::RunStages } else { NoItemsPolicy::SkipStages };
                    s.completion = CompletionSpec {
                        min_succeeded_percent: pct,
                        grace_seconds: grace,
                        complete_by,
                        on_no_items,
                        backup_stragglers: backup,
                    };
                    if !cons {
                        s.consolidation = None;
                    }
                    if !exp {
                        s.export = None;
                    }
                    s.suspend = suspend;
                    s.ttl_seconds_after_finished = ttl;
                })
            },
        )
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        (
            proptest::option::of(arb_job(Stage::Loader)),
            proptest::option::of(prop_oneof![
                Just(r#"{"targetCount": 38, "itemsRef": "gs://b/players.json"}"#.to_string()),
                Just(r#"{"targetCount": 0}"#.to_string()),
                Just(r#"{"targetCount": 100000}"#.to_string()),
                ".{0,40}",
            ]),
        ),
        proptest::option::of(arb_job(Stage::Workers)),
        proptest::option::of(arb_job(Stage::Consolidation)),
        proptest::option::of(arb_job(Stage::Export)),
        proptest::collection::vec(
            (
                prop_oneof![Just(Stage::Loader), Just(Stage::Workers), Just(Stage::Consolidation), Just(Stage::Export)],
                ".{0,10}",
            ),
            0..2,
        ),
        arb_time(),
        (
            proptest::collection::btree_map(0u32..40, arb_job(Stage::Workers), 0..3),
            proptest::option::of((
                proptest::collection::vec((0u64..100_000).prop_map(std::time::Duration::from_millis), 0..12),
                proptest::collection::btree_map(0u32..40, arb_time(), 0..4),
            )),
        ),
        proptest::collection::vec((proptest::option::of(0u32..40), arb_time(), 0usize..6, -5i64..100), 0..4),
    )
        .prop_map(
            |((loader, loader_message), workers, consolidation, export, rejected, now, (backups, times), stuck)| {
                let stuck_after_secs = stuck.first().map_or(15, |s| s.3);
                let stuck = stuck
                    .into_iter()
                    .map(|(shard, since, reason, _)| crate::reconcile::stuck::StuckPod {
                        stage: if shard.is_some() { Stage::Workers } else { Stage::Export },
                        shard,
                        pod: format!("pod-{shard:?}"),
                        reason: crate::api::StuckReason::ALL[reason],
                        message: "m".into(),
                        since,
                    })
                    .collect();
                Observed {
                    jobs: crate::api::StageMap { loader, workers, consolidation, export },
                    rejected,
                    loader_message,
                    shard_jobs: Default::default(),
                    backup_jobs: backups,
                    shard_times: times
                        .map(|(finished, running)| crate::reconcile::stragglers::ShardTimes { finished, running }),
                    leftover_jobs: Vec::new(),
                    stuck,
                    stuck_after_secs,
                    now,
                }
            },
        )
}

/// Runs on a thread of its own with a larger stack: in an unoptimized build (`cargo test`
/// without `--release`) the cases overflowed libtest's 2 MiB thread stack and aborted the run.
#[test]
fn never_panics() {
    let cases = || {
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig { cases: 400, ..ProptestConfig::default() });
        let inputs = (arb_spec(), arb_status(), arb_observed(), proptest::option::of(any::<i64>()));
        runner
            .run(&inputs, |(spec, status, obs, generation)| {
                let mut b = batch(spec, status);
                b.metadata.generation = generation;
                let p = plan(&b, &obs);
                // And its own output is acceptable input.
                b.status = Some(p.status.clone());
                let p2 = plan(&b, &obs);
                prop_assert_eq!(p2.status.observed_generation, generation);
                prop_assert!(p2.status.conditions.iter().filter(|c| c.type_ == CONDITION_STALLED).count() == 1);
                backups_are_recorded_before_they_run(&p)?;
                backups_are_recorded_before_they_run(&p2)?;
                Ok(())
            })
            .map_err(|failure| failure.to_string())
    };
    let outcome = std::thread::Builder::new().stack_size(64 << 20).spawn(cases).expect("spawn").join();
    if let Err(e) = outcome.expect("the cases' thread panicked") {
        panic!("{e}");
    }
}

/// A backup Job is created only for a shard the status being written records as started and
/// still racing, and never once the worker stage is over.
fn backups_are_recorded_before_they_run(p: &Plan) -> Result<(), TestCaseError> {
    let b = p.status.backups.clone().unwrap_or_default();
    let set = |s: &Option<String>| crate::reconcile::ranges::IndexSet::parse_opt(s.as_deref()).unwrap_or_default();
    let (started, won, lost) = (set(&b.started), set(&b.won), set(&b.lost));
    let over = p.status.workers.as_ref().is_none_or(|w| w.state.is_finished());
    for a in &p.actions {
        if let Action::CreateBackup(shard) = a {
            prop_assert!(started.contains(*shard), "{a:?} without recording it: {b:?}");
            prop_assert!(!won.contains(*shard) && !lost.contains(*shard), "{a:?} for a decided shard: {b:?}");
            prop_assert!(!over, "{a:?} after the worker stage ended");
        }
    }
    Ok(())
}
