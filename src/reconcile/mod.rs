//! Reconcile = observe → plan → act → write status.

mod act;
pub mod deadline;
mod fresh;
pub mod jobs;
pub mod observed;
#[cfg(test)]
mod pass_tests;
pub mod plan;
mod publish;
pub mod ranges;
mod record;
mod run;
pub mod shards;

pub use act::release_jobs_of;
pub use run::reconcile;
