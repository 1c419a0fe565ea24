//! Where a transition's time goes: from a change of a batch (or of one of its Jobs) arriving on
//! the watch to the next stage's Job created, in four steps, so a slow reaction names its cause
//! (a queue, our own reads, the apiserver's status write, its Job create).
//! Exported as `prediction_batch_transition_seconds{stage,step}` and logged with each create.

use std::time::{Duration, Instant};

use tracing::info;

use crate::api::Stage;
use crate::context::Context;
use crate::metrics::TransitionLabels;

/// A step of a transition (the `step` label of `prediction_batch_transition_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionStep {
    /// The change arriving on the watch → the pass starting.
    Queued,
    /// The pass starting → the status write sent (the pass's reads and its plan).
    Planned,
    /// The status write (outcome and intent).
    Status,
    /// The status written → the Job created (the create, and a read of the batch's templates
    /// when the cache had dropped them).
    Create,
}

impl TransitionStep {
    pub const ALL: [TransitionStep; 4] =
        [TransitionStep::Queued, TransitionStep::Planned, TransitionStep::Status, TransitionStep::Create];

    pub fn as_str(self) -> &'static str {
        match self {
            TransitionStep::Queued => "queued",
            TransitionStep::Planned => "planned",
            TransitionStep::Status => "status",
            TransitionStep::Create => "create",
        }
    }
}

/// The clock of one pass: when it started, and how long the change that started it had waited.
#[derive(Clone, Copy, Debug)]
pub struct PassClock {
    pub queued: Option<Duration>,
    pub started: Instant,
}

impl PassClock {
    pub fn start(queued: Option<Duration>) -> Self {
        PassClock { queued, started: Instant::now() }
    }

    /// `stage`'s Job was created now; the status write that allowed it was sent at `sent` and
    /// returned at `written`.
    pub fn created(&self, ctx: &Context, stage: Stage, sent: Instant, written: Instant) {
        let now = Instant::now();
        let steps = [
            (TransitionStep::Queued, self.queued),
            (TransitionStep::Planned, Some(sent.saturating_duration_since(self.started))),
            (TransitionStep::Status, Some(written.saturating_duration_since(sent))),
            (TransitionStep::Create, Some(now.saturating_duration_since(written))),
        ];
        for (step, took) in steps {
            if let Some(took) = took {
                let labels = TransitionLabels { stage: stage.label(), step: step.as_str() };
                ctx.metrics.transition.get_or_create(&labels).observe(took.as_secs_f64());
            }
        }
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1e3);
        info!(
            stage = stage.label(),
            queued_ms = format!("{:.1}", ms(steps[0].1)),
            planned_ms = format!("{:.1}", ms(steps[1].1)),
            status_ms = format!("{:.1}", ms(steps[2].1)),
            create_ms = format!("{:.1}", ms(steps[3].1)),
            "stage Job created"
        );
    }
}
