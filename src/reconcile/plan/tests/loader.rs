//! The loader stage: its output becomes the count once, in the same status write as its success;
//! nothing after it runs before that; a day with no items; bad output fails the batch.

use super::*;
use crate::api::NoItemsPolicy;

fn loader_spec() -> PredictionBatchSpec {
    spec_with(|s| {
        s.target_count = None;
        s.loader = Some(stage_spec());
    })
}

fn loaded(message: Option<&str>, now: i64) -> Observed {
    let mut o = obs_with(now, &[succeeded(job(Stage::Loader), now - 1)]);
    o.loader_message = message.map(String::from);
    o
}

/// First pass (loader planned), then the pass that adopts the running loader Job.
fn loading_batch(spec: PredictionBatchSpec) -> PredictionBatch {
    let (p, b) = step(&batch(spec, None), &observed(0));
    assert_eq!(creates(&p), [Stage::Loader]);
    assert!(p.actions.contains(&Action::Validate), "the later stages are dry-run with the first create");
    let (p, b) = step(&b, &obs_with(1, &[job(Stage::Loader)]));
    assert_eq!(p.status.phase, Some(Phase::Loading));
    assert_eq!(cond(&p.status, CONDITION_READY).reason, "Loading");
    assert!(p.status.workers.is_none(), "no worker stage before the count is known");
    b
}

#[test]
fn the_count_and_ref_are_recorded_with_the_loader_s_success_and_the_workers_follow() {
    let b = loading_batch(loader_spec());
    let (p, b) = step(&b, &loaded(Some(r#"{"targetCount": 38, "itemsRef": "gs://b/p.json"}"#), 10));
    let st = &p.status;
    assert_eq!(stage_state(st, Stage::Loader), Some(StageState::Succeeded));
    assert_eq!(st.items.as_ref().map(|i| i.target), Some(38));
    assert_eq!(st.shards.as_ref().map(|s| s.total), Some(10));
    assert_eq!(st.items_ref.as_deref(), Some("gs://b/p.json"));
    assert_eq!(creates(&p), [Stage::Workers], "workers planned with the status that holds the count");
    assert_eq!(b.items_target(), Some(38));
    // Later passes never read the loader again: its Job and message may be gone.
    let (p, _) = step(&b, &obs_with(11, &[job(Stage::Workers)]));
    assert_eq!(p.status.items.as_ref().map(|i| i.target), Some(38));
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert_eq!(stage_state(&p.status, Stage::Loader), Some(StageState::Succeeded));
}

#[test]
fn nothing_is_created_while_the_loader_runs_and_a_failed_loader_fails_the_batch() {
    let b = loading_batch(loader_spec());
    let p = plan(&b, &obs_with(5, &[job(Stage::Loader)]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let p = plan(&b, &obs_with(6, &[failed(job(Stage::Loader), "BackoffLimitExceeded", 6)]));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "LoaderFailed");
    assert!(creates(&p).is_empty());
}

#[test]
fn output_that_cannot_be_used_fails_the_batch_quoting_it() {
    for (message, why) in [
        (None, "without a termination message"),
        (Some("38 players"), "\"38 players\""),
        (Some(r#"{"targetCount": 100001}"#), "not a whole number"),
        (Some(r#"{"targetCount": -3}"#), "not a whole number"),
    ] {
        let b = loading_batch(loader_spec());
        let p = plan(&b, &loaded(message, 10));
        assert_eq!(p.status.phase, Some(Phase::Failed), "{message:?}");
        let stalled = cond(&p.status, CONDITION_STALLED);
        assert_eq!(stalled.reason, "LoaderOutputInvalid", "{message:?}");
        assert!(stalled.message.contains(why), "{message:?}: {}", stalled.message);
        assert!(creates(&p).is_empty(), "{message:?}");
        assert!(p.status.items.is_none(), "no count is guessed");
    }
    // A count the layout cannot hold: 100000 items in shards of 1 is over the shard limit.
    let b = loading_batch(spec_with(|s| {
        s.target_count = None;
        s.loader = Some(stage_spec());
        s.items_per_shard = 1;
    }));
    let p = plan(&b, &loaded(Some(r#"{"targetCount": 100000}"#), 10));
    assert_eq!(cond(&p.status, CONDITION_STALLED).reason, "LoaderOutputInvalid");
}

#[test]
fn a_day_with_no_items_succeeds_without_workers() {
    let b = loading_batch(loader_spec());
    let (p, b) = step(&b, &loaded(Some(r#"{"targetCount": 0}"#), 10));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&p.status, CONDITION_READY).reason, "NoItems");
    assert_eq!(cond(&p.status, CONDITION_READY).status, "True");
    assert!(cond(&p.status, CONDITION_READY).message.contains("the loader found 0"));
    assert!(creates(&p).is_empty(), "{:?}", p.actions);
    assert!(p.status.workers.is_none() && p.status.consolidation.is_none());
    assert_eq!(p.status.progress.as_deref(), Some("0/0"));
    // Stays so.
    let again = plan(&b, &loaded(Some(r#"{"targetCount": 0}"#), 20));
    assert_eq!(again.status, p.status);
    assert!(again.events.is_empty());
}

#[test]
fn a_zero_target_count_runs_consolidation_and_export_only_when_asked() {
    let (p, _) = step(&batch(spec_with(|s| s.target_count = Some(0)), None), &observed(0));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&p.status, CONDITION_READY).reason, "NoItems");
    assert!(p.actions.is_empty(), "{:?}", p.actions);

    let spec = spec_with(|s| {
        s.target_count = Some(0);
        s.completion.on_no_items = NoItemsPolicy::RunStages;
    });
    let (p, b) = step(&batch(spec, None), &observed(0));
    assert_eq!(creates(&p), [Stage::Consolidation], "no workers, consolidation at once");
    let c = succeeded(job(Stage::Consolidation), 5);
    let (p, b) = step(&b, &obs_with(6, &[c.clone()]));
    assert_eq!(creates(&p), [Stage::Export]);
    assert_eq!(p.status.phase, Some(Phase::Exporting), "{:?}", p.status);
    let (p, _) = step(&b, &obs_with(9, &[c, succeeded(job(Stage::Export), 8)]));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&p.status, CONDITION_READY).reason, "NoItems");
}
