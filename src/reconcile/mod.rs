//! Reconcile = observe → plan → act → write status.

pub mod deadline;
pub mod jobs;
pub mod observed;
pub mod plan;
pub mod ranges;
mod run;
pub mod shards;
pub mod stage;

pub use run::{reconcile, release_jobs_of};
