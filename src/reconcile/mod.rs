//! Reconcile = observe → plan → act → write status.

pub mod jobs;
pub mod observed;
pub mod plan;
pub mod ranges;
mod run;
pub mod shards;
pub mod stage;

pub use run::reconcile;
