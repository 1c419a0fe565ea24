//! The stages of a batch's pipeline as data: the [`Stage`] enum, the deterministic names of their
//! Jobs, a [`StageMap`] holding one value per stage, and the accessors that reach a stage's part of
//! the spec and status. Adding a stage is one variant here, its status field and its template
//! accessor; everything else iterates [`Stage::ALL`] or goes through a [`StageMap`].

use sha2::{Digest, Sha256};

use super::{PodTemplate, PredictionBatchSpec, PredictionBatchStatus, StageSpec, StageStatus};

/// A stage of the pipeline; each runs as exactly one Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Optional: finds the day's work items and reports their count (see [`super::loader`]).
    Loader,
    Workers,
    Consolidation,
    Export,
}

/// Longest Job name we create. Indexed Job pods are named `<job>-<index>-<5 random>` and get the
/// hostname `<job>-<index>` (a 63-character DNS label), so leave room for up to 5 index digits.
pub const MAX_JOB_NAME: usize = 52;

impl Stage {
    /// In pipeline order.
    pub const ALL: [Stage; 4] = [Stage::Loader, Stage::Workers, Stage::Consolidation, Stage::Export];

    /// The one-shot stages after the workers, in order.
    pub const AFTER_WORKERS: [Stage; 2] = [Stage::Consolidation, Stage::Export];

    /// Value of the `predictions.dev/stage` label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Loader => "loader",
            Stage::Workers => "workers",
            Stage::Consolidation => "consolidation",
            Stage::Export => "export",
        }
    }

    /// The stage's name in Event reasons (`WorkersStarted`, `ConsolidationFailed`, ...).
    pub fn title(self) -> &'static str {
        match self {
            Stage::Loader => "Loader",
            Stage::Workers => "Workers",
            Stage::Consolidation => "Consolidation",
            Stage::Export => "Export",
        }
    }

    pub fn from_label(value: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.label() == value)
    }

    fn suffix(self) -> &'static str {
        match self {
            Stage::Loader => "loader",
            Stage::Workers => "workers",
            Stage::Consolidation => "consolidate",
            Stage::Export => "export",
        }
    }

    /// `<batch>-loader`, `<batch>-workers`, `<batch>-consolidate`, `<batch>-export`; a batch name too long for that
    /// is cut and given a hash of the full name, so names stay unique and stable.
    pub fn job_name(self, batch: &str) -> String {
        self.job_name_in(batch, 1)
    }

    /// The stage's Job in `attempt`: as [`Stage::job_name`] for the first, `<batch>-r<attempt>-<stage>`
    /// for a rerun, so every attempt's Jobs have names of their own.
    pub fn job_name_in(self, batch: &str, attempt: u32) -> String {
        let suffix = if attempt <= 1 { self.suffix().to_string() } else { format!("r{attempt}-{}", self.suffix()) };
        let suffix = suffix.as_str();
        let plain = format!("{batch}-{suffix}");
        if plain.len() <= MAX_JOB_NAME {
            return plain;
        }
        let hash = short_hash(batch);
        let keep = MAX_JOB_NAME - suffix.len() - hash.len() - 2;
        let prefix: String = batch.chars().take(keep).collect();
        let prefix = prefix.trim_end_matches(['-', '.']);
        format!("{prefix}-{hash}-{suffix}")
    }
}

/// One value per stage, reached by [`Stage`] instead of a `match` at every use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageMap<T> {
    pub loader: T,
    pub workers: T,
    pub consolidation: T,
    pub export: T,
}

impl<T> StageMap<T> {
    pub fn get(&self, stage: Stage) -> &T {
        match stage {
            Stage::Loader => &self.loader,
            Stage::Workers => &self.workers,
            Stage::Consolidation => &self.consolidation,
            Stage::Export => &self.export,
        }
    }

    pub fn get_mut(&mut self, stage: Stage) -> &mut T {
        match stage {
            Stage::Loader => &mut self.loader,
            Stage::Workers => &mut self.workers,
            Stage::Consolidation => &mut self.consolidation,
            Stage::Export => &mut self.export,
        }
    }
}

/// The Job of one shard rerun alone in `attempt` (`<batch>-r<attempt>-workers-<shard>`): the
/// shard's own Job, so its pod gets its real index as SHARD_INDEX.
pub fn shard_job_name(batch: &str, attempt: u32, shard: u32) -> String {
    format!("{}-{shard}", Stage::Workers.job_name_in(batch, attempt))
}

/// The Job of a straggling shard's backup run (`<batch>-workers-b<shard>`, within 63 characters):
/// the backup races the shard's original run in the worker Job; whichever succeeds first counts.
pub fn backup_job_name(batch: &str, shard: u32) -> String {
    format!("{}-b{shard}", Stage::Workers.job_name(batch))
}

impl super::PredictionBatch {
    /// The name of `stage`'s Job in the batch's current attempt.
    pub fn job_name(&self, stage: Stage) -> String {
        let attempt = self.status.as_ref().map_or(1, PredictionBatchStatus::attempt);
        stage.job_name_in(self.metadata.name.as_deref().unwrap_or_default(), attempt)
    }
}

impl PredictionBatchStatus {
    /// The status of `stage` (`None` until the stage was planned).
    pub fn stage(&self, stage: Stage) -> &Option<Box<StageStatus>> {
        match stage {
            Stage::Loader => &self.loader,
            Stage::Workers => &self.workers,
            Stage::Consolidation => &self.consolidation,
            Stage::Export => &self.export,
        }
    }

    pub fn stage_mut(&mut self, stage: Stage) -> &mut Option<Box<StageStatus>> {
        match stage {
            Stage::Loader => &mut self.loader,
            Stage::Workers => &mut self.workers,
            Stage::Consolidation => &mut self.consolidation,
            Stage::Export => &mut self.export,
        }
    }
}

impl PredictionBatchSpec {
    /// The spec of a one-shot stage (one pod, run once); `None` for the workers or a stage the
    /// spec does not ask for.
    pub fn one_shot(&self, stage: Stage) -> Option<&StageSpec> {
        match stage {
            Stage::Loader => self.loader.as_ref(),
            Stage::Workers => None,
            Stage::Consolidation => self.consolidation.as_ref(),
            Stage::Export => self.export.as_ref(),
        }
    }

    /// The user's pod template of `stage`, `None` when the spec has no such stage.
    pub fn template(&self, stage: Stage) -> Option<&PodTemplate> {
        match stage {
            Stage::Workers => Some(&self.worker.template),
            _ => self.one_shot(stage).map(|s| &s.template),
        }
    }

    /// The spec asks for `stage` (workers always; the loader, consolidation and export when set).
    pub fn has_stage(&self, stage: Stage) -> bool {
        self.template(stage).is_some()
    }

    /// The stages of this spec after the first: the ones a dry run checks before the first Job is
    /// created, so a bad template fails the batch before anything runs.
    pub fn later_stages(&self) -> Vec<Stage> {
        let first = self.first_stage();
        Stage::ALL.into_iter().filter(|s| *s > first && self.has_stage(*s)).collect()
    }

    /// The stage whose Job is created first: the loader when there is one, else the workers.
    pub fn first_stage(&self) -> Stage {
        if self.loader.is_some() { Stage::Loader } else { Stage::Workers }
    }
}

/// Value of the `predictions.dev/batch` label: the batch name, or a cut name with a hash when the
/// name is not a valid label value (over 63 characters).
pub fn batch_label_value(batch: &str) -> String {
    if batch.len() <= 63 {
        return batch.to_string();
    }
    let hash = short_hash(batch);
    let prefix: String = batch.chars().take(63 - hash.len() - 1).collect();
    format!("{}-{hash}", prefix.trim_end_matches(['-', '.']))
}

fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names() {
        assert_eq!(Stage::Loader.job_name("nba-2026-01-02"), "nba-2026-01-02-loader");
        assert_eq!(Stage::Workers.job_name("nba-2026-01-02"), "nba-2026-01-02-workers");
        assert_eq!(Stage::Consolidation.job_name("b"), "b-consolidate");
        assert_eq!(Stage::Export.job_name("b"), "b-export");
        assert_eq!(Stage::Export.job_name_in("b", 1), "b-export");
        assert_eq!(Stage::Export.job_name_in("b", 2), "b-r2-export");
        assert_eq!(backup_job_name("nba-2026-01-02", 7), "nba-2026-01-02-workers-b7");
    }

    proptest! {
        #[test]
        fn long_names_are_short_unique_and_stable(name in "[a-z][a-z0-9-]{0,200}[a-z0-9]") {
            for stage in Stage::ALL {
                let job = stage.job_name(&name);
                prop_assert!(job.len() <= MAX_JOB_NAME, "{}", job);
                prop_assert_eq!(&job, &stage.job_name(&name));
                prop_assert!(job.ends_with(stage.suffix()));
                let rerun = stage.job_name_in(&name, 12);
                prop_assert!(rerun.len() <= MAX_JOB_NAME && rerun.ends_with(&format!("r12-{}", stage.suffix())), "{}", rerun);
                prop_assert_ne!(&rerun, &job);
                prop_assert!(!job.starts_with('-'));
                prop_assert!(!job.contains("--") || name.contains("--"));
            }
            // A Job name is a label value (batch.kubernetes.io/job-name): 63 characters at most.
            prop_assert!(backup_job_name(&name, 9999).len() <= 63);
            let label = batch_label_value(&name);
            prop_assert!(label.len() <= 63);
        }

        #[test]
        fn different_long_names_get_different_job_names(a in "[a-z]{60,80}", b in "[a-z]{60,80}") {
            prop_assume!(a != b);
            prop_assert_ne!(Stage::Workers.job_name(&a), Stage::Workers.job_name(&b));
        }
    }
}
