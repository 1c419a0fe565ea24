//! What the batch asks for must be plannable before anything runs: a spec the planner cannot use
//! stalls the batch (recoverable: the spec may be fixed), a template the apiserver refused and a
//! `completeBy` already past before any worker started fail it before any Job is created.

use k8s_openapi::jiff::Timestamp;

use super::{Plan, Planner, Stop};
use crate::api::{MAX_SHARDS, Phase, Stage, StallReason};
use crate::reconcile::deadline::parse_complete_by;
use crate::reconcile::shards::ShardLayout;

impl Planner<'_> {
    /// The parsed `completeBy`, or why the spec cannot be planned (a `targetCount` that does not
    /// give 0..=[`MAX_SHARDS`] shards; a loader's count is checked when it reports).
    pub(super) fn usable_spec(&self) -> Result<Option<Timestamp>, String> {
        let spec = &self.batch.spec;
        let complete_by = match spec.completion.complete_by.as_deref().map(parse_complete_by) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => return Err(format!("spec.completion.completeBy is {e}")),
            None => None,
        };
        let shards = spec.target_count.map(|t| ShardLayout { target: t, per_shard: spec.items_per_shard.max(1) });
        if spec.items_per_shard == 0 || shards.is_some_and(|l| u64::from(l.shard_count()) > MAX_SHARDS) {
            return Err(format!(
                "spec.targetCount {} with spec.itemsPerShard {} does not give 0..{MAX_SHARDS} shards",
                spec.target_count.unwrap_or_default(),
                spec.items_per_shard
            ));
        }
        if spec.target_count.is_some() == spec.loader.is_some() {
            return Err("exactly one of spec.targetCount and spec.loader must be set".into());
        }
        Ok(complete_by)
    }

    /// Stalls the batch until its spec changes; nothing is created or touched.
    pub(super) fn invalid_spec(mut self, message: String) -> Plan {
        self.stop = Some(Stop { reason: StallReason::InvalidSpec, message, terminal: false });
        if self.st.phase.is_none() {
            self.st.phase = Some(Phase::Pending);
        }
        let layout = self.layout();
        self.finish(layout)
    }

    /// A template of a later stage the apiserver refused in the dry run that comes with the first
    /// Job's create: fail now, before anything runs (the spec is immutable).
    pub(super) fn refuse_rejected_templates(&mut self) {
        for stage in Stage::ALL {
            let created =
                self.st.stage(stage).as_ref().is_some_and(|s| s.job_uid.is_some()) || self.obs.job(stage).is_some();
            if let Some(message) = self.obs.rejection(stage).filter(|_| !created) {
                let message = format!("the apiserver rejected the {} Job: {message}", stage.label());
                return self.fail(stage, StallReason::JobRejected, message);
            }
        }
    }

    /// A `completeBy` that had already passed before the worker Job was created fails the batch
    /// without creating any Job.
    pub(super) fn deadline_before_start(&mut self, complete_by: Option<Timestamp>) {
        // A rerun is asked for by hand, after the fact: the deadline was the first run's.
        let Some(t) = complete_by.filter(|t| self.now >= *t && self.st.attempt() == 1) else { return };
        let never_started =
            self.st.workers.as_ref().is_none_or(|w| w.job_uid.is_none()) && self.obs.job(Stage::Workers).is_none();
        if never_started {
            let message = format!("completeBy {t} had passed before any worker started");
            self.fail(Stage::Workers, StallReason::DeadlineExceeded, message);
        }
    }
}
