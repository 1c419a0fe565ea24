//! The batch's standard conditions (`Ready`, `Reconciling`, `Stalled`, `Degraded`), built from
//! typed statuses and reasons, and merged with the stored ones so that an unchanged batch gets
//! a byte-identical status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::Planner;
use crate::api::{
    CONDITION_DEGRADED, CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, ConditionStatus, Phase, Reason,
    StallReason,
};
use crate::reconcile::shards::ShardLayout;

use ConditionStatus::{False, True, Unknown};

/// Longest list of failed shards quoted in `Degraded`'s message.
const MAX_QUOTED_SHARDS: usize = 200;

/// One condition as the planner wants it (`lastTransitionTime` and `observedGeneration` are
/// added by [`merge_conditions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Wanted {
    type_: &'static str,
    status: ConditionStatus,
    /// A [`Reason`]'s name; a stored reason is kept as it was written.
    reason: String,
    message: String,
}

impl Wanted {
    pub(super) fn is(&self, type_: &str) -> bool {
        self.type_ == type_
    }
}

pub(super) fn wanted(type_: &'static str, status: ConditionStatus, reason: impl ToString, message: String) -> Wanted {
    Wanted { type_, status, reason: reason.to_string(), message }
}

/// `Ready`, `Reconciling` and `Stalled`, which move together.
struct Lifecycle {
    ready: Wanted,
    reconciling: Wanted,
    stalled: Wanted,
}

impl Lifecycle {
    /// Failed, or stuck until something changes: the same reason and message on all three.
    fn stalled(reason: &str, message: String) -> Self {
        Lifecycle {
            ready: wanted(CONDITION_READY, False, reason, message.clone()),
            reconciling: wanted(CONDITION_RECONCILING, False, reason, message.clone()),
            stalled: wanted(CONDITION_STALLED, True, reason, message),
        }
    }

    /// `reason` is `Succeeded`, or `NoItems` for a batch that had nothing to do.
    fn succeeded(reason: Reason, message: String) -> Self {
        Lifecycle {
            ready: wanted(CONDITION_READY, True, reason, message.clone()),
            reconciling: wanted(CONDITION_RECONCILING, False, reason, message),
            stalled: wanted(CONDITION_STALLED, False, reason, String::new()),
        }
    }

    fn suspended(message: String) -> Self {
        Lifecycle {
            ready: wanted(CONDITION_READY, Unknown, Reason::Suspended, message.clone()),
            reconciling: wanted(CONDITION_RECONCILING, False, Reason::Suspended, message),
            stalled: wanted(CONDITION_STALLED, False, Reason::Suspended, String::new()),
        }
    }

    fn in_progress(phase: Phase, message: String) -> Self {
        Lifecycle {
            ready: wanted(CONDITION_READY, Unknown, Reason::InProgress(phase), message.clone()),
            reconciling: wanted(CONDITION_RECONCILING, True, Reason::InProgress(phase), message),
            stalled: wanted(CONDITION_STALLED, False, Reason::Progressing, String::new()),
        }
    }
}

impl Planner<'_> {
    pub(super) fn conditions(&self, layout: ShardLayout) -> Vec<Wanted> {
        let Lifecycle { ready, reconciling, stalled } = self.lifecycle(layout);
        let mut all = vec![ready, reconciling, stalled, self.degraded(layout)];
        all.extend(self.at_risk());
        all.extend(self.pods_stuck());
        all
    }

    fn lifecycle(&self, layout: ShardLayout) -> Lifecycle {
        let items = self.st.items.clone().unwrap_or_default();
        let progress = format!("{}/{} items", items.succeeded, layout.target);
        let phase = self.st.phase.unwrap_or(Phase::Pending);
        if let Some(stop) = &self.stop {
            return Lifecycle::stalled(stop.reason.as_str(), stop.message.clone());
        }
        match phase {
            // A stored terminal state keeps its reason and message across passes.
            Phase::Failed => {
                let stalled = |c: &&Condition| c.type_ == CONDITION_STALLED;
                let reason = self.prev.conditions.iter().filter(stalled).find(|c| c.status == True.as_str());
                let reason = reason.map(|c| c.reason.as_str());
                let message = self.prev.conditions.iter().find(stalled).map(|c| c.message.clone()).unwrap_or_default();
                Lifecycle::stalled(reason.unwrap_or(StallReason::Failed.as_str()), message)
            }
            Phase::Succeeded if layout.target == 0 => {
                let source = if self.batch.spec.loader.is_some() { "the loader found" } else { "spec.targetCount is" };
                Lifecycle::succeeded(Reason::NoItems, format!("no items to predict: {source} 0"))
            }
            Phase::Succeeded if items.succeeded == layout.target => {
                Lifecycle::succeeded(Reason::Succeeded, format!("{progress} succeeded"))
            }
            Phase::Succeeded => {
                let coverage = f64::from(items.succeeded) * 100.0 / f64::from(layout.target.max(1));
                Lifecycle::succeeded(Reason::Succeeded, format!("{progress} succeeded ({coverage:.1}% coverage)"))
            }
            Phase::Suspended => Lifecycle::suspended(format!("suspended at {progress}")),
            Phase::Loading => Lifecycle::in_progress(Phase::Loading, "Loading: the loader is finding the items".into()),
            p => {
                let active = self.st.shards.as_ref().map_or(0, |s| s.active);
                Lifecycle::in_progress(p, format!("{}: {progress}, {active} shards active", p.as_str()))
            }
        }
    }

    fn degraded(&self, layout: ShardLayout) -> Wanted {
        let shards = self.st.shards.clone().unwrap_or_default();
        if shards.failed == 0 {
            return wanted(CONDITION_DEGRADED, False, Reason::NoFailedShards, String::new());
        }
        let items = self.st.items.clone().unwrap_or_default();
        let list = self.st.failed_shards.clone().unwrap_or_default();
        let list = if list.len() > MAX_QUOTED_SHARDS {
            let end = list.char_indices().nth(MAX_QUOTED_SHARDS).map_or(list.len(), |(i, _)| i);
            format!("{}…", &list[..end])
        } else {
            list
        };
        let message = format!(
            "{} of {} shards failed ({} of {} items): {list}",
            shards.failed, shards.total, items.failed, layout.target
        );
        wanted(CONDITION_DEGRADED, True, Reason::ShardsFailed, message)
    }
}

/// Conditions in a fixed order; `lastTransitionTime` moves only when a condition's status does,
/// so an unchanged batch produces a byte-identical status. Conditions we don't own (e.g. the
/// mirror's `MirrorSynced`) are kept as they are.
pub(super) fn merge_conditions(
    prev: &[Condition],
    wanted: Vec<Wanted>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let ours: Vec<&str> = wanted.iter().map(|w| w.type_).collect();
    let foreign: Vec<Condition> = prev.iter().filter(|c| !ours.contains(&c.type_.as_str())).cloned().collect();
    let mut out: Vec<Condition> = wanted
        .into_iter()
        .map(|w| {
            let status = w.status.as_str();
            let last_transition_time = match prev.iter().find(|c| c.type_ == w.type_) {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: w.type_.to_string(),
                status: status.to_string(),
                reason: w.reason,
                message: w.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    out.extend(foreign);
    out
}
