//! A stage that failed fails the batch for good: the stage's status says why, the batch's phase
//! becomes Failed, and no pod of the batch is left running.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Action, Planner, Stop};
use crate::api::{Phase, Stage, StageState, StageStatus, StallReason};
use crate::reconcile::observed::JobOutcome;

impl Planner<'_> {
    pub(super) fn fail(&mut self, stage: Stage, reason: StallReason, message: String) {
        let job_name = self.job_name(stage);
        let entry =
            self.st.stage_mut(stage).get_or_insert_with(|| Box::new(StageStatus { job_name, ..Default::default() }));
        entry.state = StageState::Failed;
        entry.completion_time.get_or_insert(Time(self.now));
        entry.message = Some(message.clone());
        self.stop = Some(Stop { reason, message, terminal: true });
        self.st.phase = Some(Phase::Failed);
        self.st.completion_time.get_or_insert(Time(self.now));
        self.stop_leftover_pods();
    }

    /// A failed batch must not leave pods running.
    pub(super) fn stop_leftover_pods(&mut self) {
        for stage in Stage::ALL {
            let Some(job) = self.obs.job(stage) else { continue };
            let action = Action::Suspend { stage, suspend: true };
            if job.owned
                && !job.deleting
                && job.has_pods()
                && !job.suspended
                && job.outcome == JobOutcome::Running
                && !self.actions.contains(&action)
            {
                self.actions.push(action);
            }
        }
    }
}
