//! The loader stage: one Job that finds the day's work items. Its output (the termination message
//! of its pod, see [`crate::api::loader`]) is read once, when the Job succeeded, and recorded with
//! the stage's success in one status write: the item count and `itemsRef` then come from the
//! status, never from the pod again, so a restart between the loader and the workers changes
//! nothing. A day with no items ends the pipeline without a worker.

use k8s_openapi::jiff::Timestamp;

use super::Planner;
use crate::api::loader::parse_loader_output;
use crate::api::{ItemCounts, MAX_SHARDS, ShardCounts, Stage, StallReason};
use crate::reconcile::shards::ShardLayout;

impl Planner<'_> {
    /// Runs the loader when the spec has one; while it runs, wakes at `completeBy` (which fails
    /// the batch if it passes before any worker started).
    pub(super) fn loader(&mut self, complete_by: Option<Timestamp>) {
        if !self.batch.spec.has_stage(Stage::Loader) {
            return;
        }
        self.one_shot_stage(Stage::Loader);
        if !self.done(Stage::Loader)
            && let Some(t) = complete_by
        {
            self.wake_at(t);
        }
    }

    /// The loader's Job succeeded: its output becomes the batch's item count. False (and the
    /// batch failed, `LoaderOutputInvalid`) when the output is missing, malformed or out of range.
    pub(super) fn record_loader_output(&mut self) -> bool {
        let per_shard = self.batch.spec.items_per_shard.max(1);
        let checked = parse_loader_output(self.obs.loader_message.as_deref()).and_then(|out| {
            let shards = out.target_count.div_ceil(per_shard);
            if u64::from(shards) > MAX_SHARDS {
                return Err(format!(
                    "the loader reported {} items: in shards of {per_shard} (spec.itemsPerShard) that is {shards} shards, more than {MAX_SHARDS}",
                    out.target_count
                ));
            }
            Ok(out)
        });
        let out = match checked {
            Ok(out) => out,
            Err(message) => {
                self.fail(Stage::Loader, StallReason::LoaderOutputInvalid, message);
                return false;
            }
        };
        let layout = ShardLayout { target: out.target_count, per_shard };
        self.st.items = Some(ItemCounts { target: layout.target, ..Default::default() });
        self.st.shards = Some(ShardCounts { total: layout.shard_count(), ..Default::default() });
        self.st.progress = Some(format!("0/{}", layout.target));
        self.st.items_ref = out.items_ref;
        if let Some(l) = self.st.loader.as_mut() {
            l.message = Some(format!("{} items", layout.target));
        }
        true
    }

    /// Nothing to predict: no worker Job, and the counts say so.
    pub(super) fn no_items(&mut self, layout: ShardLayout) {
        self.no_items = true;
        self.st.items = Some(ItemCounts::default());
        self.st.shards = Some(ShardCounts::default());
        self.st.progress = Some(format!("0/{}", layout.target));
    }
}
