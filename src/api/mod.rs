//! The `predictions.dev/v1alpha1` `PredictionBatch` API.

pub mod conditions;
pub mod crd;
pub mod reference;
mod spec;
mod status;
mod template_schema;

pub use conditions::*;
pub use spec::*;
pub use status::*;
