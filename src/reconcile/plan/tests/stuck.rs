//! Stuck pods on the batch: listed once past the threshold (a wake-up at the threshold before),
//! one Warning event per new stuck pod, `PodsStuck` False once they moved on, nothing once ended.

use super::*;
use crate::api::{CONDITION_PODS_STUCK, StuckReason};
use crate::reconcile::stuck::StuckPod;

fn stuck(shard: u32, reason: StuckReason, since: i64) -> StuckPod {
    StuckPod {
        stage: Stage::Workers,
        shard: Some(shard),
        pod: format!("{NAME}-workers-{shard}-abcde"),
        reason,
        message: "Back-off pulling image \"example.com/worker:nope\"".into(),
        since: t(since),
    }
}

fn obs_stuck(now: i64, pods: Vec<StuckPod>) -> Observed {
    let mut o = obs_with(now, &[workers_job("0-2", "", 10)]);
    o.stuck = pods;
    o.stuck_after_secs = 15;
    o
}

#[test]
fn a_pod_past_the_threshold_shows_once_with_one_warning_and_clears_when_it_moves_on() {
    let b = batch(spec(), Some(running_status(&spec())));
    // Waiting 10 s: not yet, but the pass wakes at the threshold.
    let p = plan(&b, &obs_stuck(20, vec![stuck(3, StuckReason::ImagePullBackOff, 10)]));
    assert!(p.status.stuck_pods.is_empty());
    assert!(p.status.conditions.iter().all(|c| c.type_ != CONDITION_PODS_STUCK));
    assert!(p.requeue_after.is_some_and(|d| d <= Duration::from_secs(6)), "{:?}", p.requeue_after);

    let (p, b) = step(&b, &obs_stuck(26, vec![stuck(3, StuckReason::ImagePullBackOff, 10)]));
    assert_eq!(p.status.stuck_pods.len(), 1);
    assert_eq!((p.status.stuck_pods[0].shard, p.status.stuck_pods[0].reason.as_str()), (Some(3), "ImagePullBackOff"));
    let c = cond(&p.status, CONDITION_PODS_STUCK);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "ImagePullBackOff"));
    assert!(c.message.starts_with("1 pod waiting: shard 3: ImagePullBackOff (Back-off pulling image"), "{}", c.message);
    let warnings: Vec<_> = p.events.iter().filter(|e| e.reason == EventReason::PodsStuck).collect();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].warning && warnings[0].note.contains("shard 3"), "{:?}", warnings[0]);

    // The same pod still stuck: nothing new to write or say.
    let p2 = plan(&b, &obs_stuck(60, vec![stuck(3, StuckReason::ImagePullBackOff, 10)]));
    assert_eq!(Some(&p2.status), b.status.as_ref());
    assert!(p2.events.is_empty(), "{:?}", p2.events);

    // It moved on.
    let (p, b) = step(&b, &obs_stuck(70, vec![]));
    assert!(p.status.stuck_pods.is_empty());
    let c = cond(&p.status, CONDITION_PODS_STUCK);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NoStuckPods"));
    let p = plan(&b, &obs_stuck(80, vec![]));
    assert_eq!(Some(&p.status), b.status.as_ref(), "and stays quiet");
}

#[test]
fn many_stuck_pods_are_counted_in_the_message_and_listed_up_to_ten() {
    let b = batch(spec(), Some(running_status(&spec())));
    let pods: Vec<StuckPod> = (0..25).map(|i| stuck(i, StuckReason::Unschedulable, 0)).collect();
    let p = plan(&b, &obs_stuck(30, pods));
    assert_eq!(p.status.stuck_pods.len(), 10);
    let c = cond(&p.status, CONDITION_PODS_STUCK);
    assert_eq!(c.reason, "Unschedulable");
    assert!(c.message.starts_with("25 pods waiting:") && c.message.ends_with("and 15 more"), "{}", c.message);
}

#[test]
fn an_ended_or_suspended_batch_lists_no_stuck_pods() {
    let mut sim = Sim::new(spec(), succeeded(workers_job("0-29", "", 0), 100), 101);
    sim.run(20);
    let mut o = sim.obs.clone();
    o.stuck = vec![stuck(3, StuckReason::ImagePullBackOff, 0)];
    let p = plan(&sim.batch, &o);
    assert!(p.status.stuck_pods.is_empty());
    assert!(p.status.conditions.iter().all(|c| c.type_ != CONDITION_PODS_STUCK));

    let suspended = batch(spec_with(|s| s.suspend = true), Some(running_status(&spec())));
    let p = plan(&suspended, &obs_stuck(30, vec![stuck(3, StuckReason::ImagePullBackOff, 0)]));
    assert!(p.status.stuck_pods.is_empty());
}
