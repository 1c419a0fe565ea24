//! Time in status: the ETA follows finished shards only (an idle pass writes nothing), `AtRisk`
//! says whether the quorum is expected before `completeBy` (one Warning when it turns True), and
//! the durations are written with the transitions that end the stage and the batch.

use super::*;
use crate::api::{CONDITION_AT_RISK, EtaStatus};

fn eta(p: &Plan) -> &EtaStatus {
    p.status.eta.as_ref().unwrap_or_else(|| panic!("no eta in {:#?}", p.status))
}

fn running_with_deadline(complete_by: Option<i64>) -> PredictionBatch {
    let s = spec_with(|s| s.completion.complete_by = complete_by.map(|at| t(at).to_string()));
    batch(s.clone(), Some(running_status(&s)))
}

#[test]
fn eta_is_the_recent_rate_carried_to_the_last_shard_and_the_quorum() {
    // 30 shards from t(1); 6 finished by t(61): 6 a minute, 24 left, 4 minutes to go.
    let b = running_with_deadline(None);
    let p = plan(&b, &obs_with(61, &[workers_job("0-5", "", 10)]));
    let e = eta(&p);
    assert_eq!(e.shards_per_minute.as_deref(), Some("6"));
    assert_eq!(e.completion_time, Some(Time(t(61 + 240))));
    assert_eq!(e.quorum_time, Some(Time(t(61 + 240))), "the quorum is 100%");
    assert_eq!(e.window_start_time, Some(Time(t(1))));

    // A 50% quorum needs 60 items, 15 shards: 9 more.
    let mut half = running_with_deadline(None);
    half.spec.completion.min_succeeded_percent = 50;
    let e = plan(&half, &obs_with(61, &[workers_job("0-5", "", 10)])).status.eta.unwrap();
    assert_eq!(e.quorum_time, Some(Time(t(61 + 90))));
    assert_eq!(e.completion_time, Some(Time(t(61 + 240))));
}

#[test]
fn a_pass_that_saw_no_shard_finish_keeps_the_recorded_eta_and_writes_nothing() {
    let b = running_with_deadline(Some(1000));
    let (_, b) = step(&b, &obs_with(61, &[workers_job("0-5", "", 10)]));
    let before = b.status.clone().unwrap();
    for now in [62, 300, 900] {
        let p = plan(&b, &obs_with(now, &[workers_job("0-5", "", 10)]));
        assert_eq!(p.status, before, "at {now}: an idle pass plans the status it read");
    }
    // One more shard moves it.
    let p = plan(&b, &obs_with(66, &[workers_job("0-6", "", 10)]));
    assert_ne!(p.status.eta, before.eta);
}

#[test]
fn at_risk_turns_true_once_with_one_warning_and_back_when_the_rate_recovers() {
    // completeBy at t(200): 6 a minute finishes at t(301), too late.
    let b = running_with_deadline(Some(200));
    let (p, b) = step(&b, &obs_with(61, &[workers_job("0-5", "", 10)]));
    let c = cond(&p.status, CONDITION_AT_RISK);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "EtaPastDeadline"), "{}", c.message);
    assert!(c.message.contains("6 shards/min"), "{}", c.message);
    let warnings: Vec<_> = p.events.iter().filter(|e| e.reason == EventReason::AtRisk).collect();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].warning);

    // Still late after another shard: no second event.
    let (p, b) = step(&b, &obs_with(71, &[workers_job("0-6", "", 10)]));
    assert_eq!(cond(&p.status, CONDITION_AT_RISK).status, "True");
    assert!(p.events.iter().all(|e| e.reason != EventReason::AtRisk), "{:?}", p.events);

    // 28 of 30 by t(81): on track.
    let (p, _) = step(&b, &obs_with(81, &[workers_job("0-27", "", 2)]));
    let c = cond(&p.status, CONDITION_AT_RISK);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "OnTrack"), "{}", c.message);
}

#[test]
fn no_deadline_or_no_rate_yet_means_no_at_risk_condition() {
    let p = plan(&running_with_deadline(None), &obs_with(61, &[workers_job("0-5", "", 10)]));
    assert!(p.status.conditions.iter().all(|c| c.type_ != CONDITION_AT_RISK));
    let p = plan(&running_with_deadline(Some(200)), &obs_with(61, &[workers_job("", "", 10)]));
    assert!(p.status.conditions.iter().all(|c| c.type_ != CONDITION_AT_RISK));
    assert_eq!(eta(&p).completion_time, None, "no shard finished: no estimate");
}

#[test]
fn the_window_slides_to_the_last_two_minutes_so_a_slowdown_shows() {
    // Fast for 5 minutes (20 shards), then the estimate's window starts 2 minutes back.
    let b = running_with_deadline(None);
    let (p, b) = step(&b, &obs_with(301, &[workers_job("0-19", "", 10)]));
    let e = eta(&p);
    assert_eq!(e.window_start_time, Some(Time(t(301 - 120))));
    assert_eq!(e.window_finished_shards, 12, "20 - 4 a minute × 2 minutes");
    // Then only one more shard in 3 minutes: the rate drops well below the stage's average.
    let p = plan(&b, &obs_with(481, &[workers_job("0-20", "", 10)]));
    let rate: f64 = eta(&p).shards_per_minute.as_deref().unwrap().parse().unwrap();
    assert!(rate < 2.0, "{rate}");
}

#[test]
fn durations_are_written_when_stages_and_the_batch_end_and_the_eta_goes() {
    let mut sim = Sim::new(spec(), succeeded(workers_job("0-29", "", 0), 100), 101);
    sim.run(20);
    let st = sim.status();
    assert_eq!(st.phase, Some(Phase::Succeeded));
    assert_eq!(st.eta, None);
    assert!(st.conditions.iter().all(|c| c.type_ != CONDITION_AT_RISK));
    assert_eq!(stage_of(st, Stage::Workers).unwrap().duration.as_deref(), Some("1m39s"), "t(1) to t(100)");
    for stage in [Stage::Consolidation, Stage::Export] {
        assert!(stage_of(st, stage).unwrap().duration.is_some(), "{stage:?}: {st:#?}");
    }
    assert!(st.duration.as_deref().is_some_and(|d| d.ends_with('s')), "{st:#?}");
    // A finished batch's next pass changes nothing.
    let again = plan(&sim.batch, &sim.obs);
    assert_eq!(&again.status, st);
}
