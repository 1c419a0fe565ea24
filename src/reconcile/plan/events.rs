//! The Events of what changed between the stored status and the one being written: a stage's Job
//! started, succeeded or failed, the stragglers are being stopped, the batch finished, or it
//! became stuck.

use super::{EventNote, Stop};
use crate::api::{EventReason, Phase, PredictionBatchStatus, Stage, StageState};

pub(super) fn transition_events(
    prev: &PredictionBatchStatus,
    next: &PredictionBatchStatus,
    stop: Option<&Stop>,
) -> Vec<EventNote> {
    let mut events = Vec::new();
    let mut note = |warning, reason, note: String| events.push(EventNote { warning, reason, note });
    for stage in Stage::ALL {
        let (before, Some(after)) = (prev.stage(stage), next.stage(stage)) else { continue };
        let before_state = before.as_ref().map(|b| b.state);
        let label = stage.label();
        // Started when the intent to create its Job is written (the create follows that write).
        if after.state == StageState::Running && before_state.is_none_or(|b| b == StageState::Pending) {
            note(false, EventReason::StageStarted(stage), format!("{label} Job {} started", after.job_name));
        }
        if before_state != Some(after.state) {
            let message = after.message.clone().unwrap_or_default();
            match after.state {
                StageState::Stopping => note(
                    false,
                    EventReason::StoppingStragglers,
                    format!("{label}: {message}; stopping the remaining shards"),
                ),
                StageState::Succeeded => note(false, EventReason::StageSucceeded(stage), format!("{label} succeeded")),
                StageState::Failed => note(true, EventReason::StageFailed(stage), format!("{label} failed: {message}")),
                _ => {}
            }
        }
    }
    if prev.phase != next.phase {
        match next.phase {
            Some(Phase::Succeeded) => note(
                false,
                EventReason::BatchSucceeded,
                format!("batch succeeded: {}", next.progress.clone().unwrap_or_default()),
            ),
            Some(Phase::Failed) => {
                note(true, EventReason::BatchFailed, stop.map(|s| s.message.clone()).unwrap_or_default())
            }
            _ => {}
        }
    }
    let at_risk = |st: &PredictionBatchStatus| {
        st.conditions.iter().find(|c| c.type_ == crate::api::CONDITION_AT_RISK && c.status == "True").cloned()
    };
    if let (None, Some(c)) = (at_risk(prev), at_risk(next)) {
        note(true, EventReason::AtRisk, c.message);
    }
    if let Some(s) = stop.filter(|s| !s.terminal) {
        let was = prev
            .conditions
            .iter()
            .any(|c| c.type_ == crate::api::CONDITION_STALLED && c.status == "True" && c.reason == s.reason);
        if !was {
            note(true, EventReason::Stalled(s.reason), s.message.clone());
        }
    }
    events
}
