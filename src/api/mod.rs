//! The `predictions.dev/v1alpha1` `PredictionBatch` API.

pub mod crd;
pub mod reference;
mod spec;
mod status;
mod template_schema;

pub use spec::*;
pub use status::*;
