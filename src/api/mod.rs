//! The `predictions.dev/v1alpha1` API: `PredictionBatch`, and `PredictionSchedule` which creates them.

pub mod conditions;
pub mod crd;
pub mod env;
pub mod loader;
pub mod reference;
mod schedule;
pub mod schedule_crd;
mod spec;
pub mod stage;
mod status;
mod template_schema;

pub use conditions::*;
pub use schedule::*;
pub use spec::*;
pub use stage::{Stage, StageMap};
pub use status::*;

#[cfg(test)]
mod tests {
    /// The API is the contract the reconciler implements: it must not depend on the reconciler.
    #[test]
    fn the_api_imports_nothing_from_the_reconciler() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        // Spelled in pieces so that this file does not match itself.
        let (reconcile, controller) = (["crate", "reconcile"].join("::"), ["crate", "controller"].join("::"));
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            assert!(
                !text.contains(&reconcile) && !text.contains(&controller),
                "{} imports from the reconciler",
                entry.path().display()
            );
        }
    }
}
