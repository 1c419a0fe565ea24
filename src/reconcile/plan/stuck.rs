//! Stuck pods on the batch: the pods the pod watch found waiting for something that needs someone
//! to act, once they have waited `--stuck-pod-after`, go into `status.stuckPods` and the
//! `PodsStuck` condition, with one Warning event each time new ones show up. A pod that moves on
//! leaves them; a batch that ends keeps neither.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{Wanted, wanted};
use super::{EventNote, Planner};
use crate::api::{CONDITION_PODS_STUCK, ConditionStatus, EventReason, Phase, Reason, StuckPodStatus};
use crate::reconcile::deadline::add_secs;

/// Most stuck pods listed in status (the condition's message counts them all).
pub const MAX_LISTED: usize = 10;

impl Planner<'_> {
    pub(super) fn stuck_pods(&mut self) {
        if self.st.phase.is_some_and(Phase::is_terminal) || self.batch.spec.suspend {
            self.st.stuck_pods.clear();
            return;
        }
        let after = self.obs.stuck_after_secs.max(0);
        let mut listed = Vec::new();
        let mut total = 0;
        for p in &self.obs.stuck {
            let due = add_secs(p.since, after);
            if self.now < due {
                self.wake_at(due);
                continue;
            }
            total += 1;
            if listed.len() < MAX_LISTED {
                listed.push(StuckPodStatus {
                    stage: p.stage.label().to_string(),
                    shard: p.shard,
                    pod: p.pod.clone(),
                    reason: p.reason.as_str().to_string(),
                    message: p.message.chars().take(300).collect(),
                    since: Some(Time(p.since)),
                });
            }
        }
        let new: Vec<&StuckPodStatus> =
            listed.iter().filter(|s| !self.prev.stuck_pods.iter().any(|p| p.pod == s.pod)).collect();
        if !new.is_empty() {
            let note = format!("{} waiting: {}", plural(new.len()), describe(&new));
            self.notes.push(EventNote { warning: true, reason: EventReason::PodsStuck, note });
        }
        self.stuck_total = total;
        self.st.stuck_pods = listed;
    }

    /// `PodsStuck`: `True` while pods are stuck, `False` once the ones that were moved on, absent
    /// for a batch that never had one and once the batch ended.
    pub(super) fn pods_stuck(&self) -> Option<Wanted> {
        if self.st.phase.is_some_and(Phase::is_terminal) {
            return None;
        }
        if let Some(first) = self.st.stuck_pods.first() {
            let reason = crate::api::StuckReason::ALL
                .into_iter()
                .find(|r| r.as_str() == first.reason)
                .map_or(Reason::NoStuckPods, Reason::Stuck);
            let all: Vec<&StuckPodStatus> = self.st.stuck_pods.iter().collect();
            let more = self.stuck_total.saturating_sub(all.len());
            let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
            let message = format!("{} waiting: {}{tail}", plural(self.stuck_total), describe(&all));
            return Some(wanted(CONDITION_PODS_STUCK, ConditionStatus::True, reason, message));
        }
        let had = self.prev.conditions.iter().any(|c| c.type_ == CONDITION_PODS_STUCK);
        had.then(|| wanted(CONDITION_PODS_STUCK, ConditionStatus::False, Reason::NoStuckPods, String::new()))
    }
}

fn plural(n: usize) -> String {
    if n == 1 { "1 pod".into() } else { format!("{n} pods") }
}

/// "shard 3: ImagePullBackOff (Back-off pulling image ...); consolidation: Unschedulable (...)".
fn describe(pods: &[&StuckPodStatus]) -> String {
    pods.iter()
        .map(|p| {
            let what = p.shard.map_or_else(|| p.stage.clone(), |s| format!("shard {s}"));
            let why: String = p.message.chars().take(120).collect();
            if why.is_empty() { format!("{what}: {}", p.reason) } else { format!("{what}: {} ({why})", p.reason) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
