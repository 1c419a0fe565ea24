//! Reconcile = observe → plan → record the status → act, one batch at a time.
//!
//! - [`run`]: one pass, in rounds, with in-pass retries of transient API errors;
//! - [`fresh`]: what a pass plans from, kept current (the one freshness mechanism);
//! - [`observed`]: the batch's Jobs reduced to what the planner reads;
//! - [`plan`]: the pure planner, one module per rule;
//! - [`record`]: the status write that alone hands out a plan's actions;
//! - [`act`] and [`jobs`]: the idempotent Job calls and the Jobs they build;
//! - [`clock`]: where a transition's time goes (queue, reads, status write, Job create);
//! - [`publish`]: the plan's Events, in the background;
//! - [`verdicts`]: the dry runs' accepted templates, remembered per namespace for a while;
//! - [`shards`], [`ranges`], [`deadline`]: shard arithmetic, index ranges, `completeBy` parsing.

mod act;
mod clock;
pub mod deadline;
mod fresh;
pub mod jobs;
pub mod observed;
#[cfg(test)]
mod pass_tests;
pub mod plan;
pub(crate) mod publish;
pub mod ranges;
mod record;
mod run;
pub mod shards;
pub mod stragglers;
pub mod stuck;
pub mod verdicts;

pub use act::release_jobs_of;
pub use clock::TransitionStep;
pub use run::{reconcile, reconcile_queued};
