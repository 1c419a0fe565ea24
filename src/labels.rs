//! Names the controller stamps on what it creates. These are a public contract: selectors,
//! dashboards and other tools rely on them.

/// Field manager of every write (server-side apply and patches).
pub const FIELD_MANAGER: &str = "prediction-batch-controller";
/// Label on child Jobs (and their pods): the owning batch's name (shortened with a hash if over 63 characters).
pub const BATCH_LABEL: &str = "predictions.dev/batch";
/// Label on child Jobs (and their pods): `workers`, `consolidation` or `export`.
pub const STAGE_LABEL: &str = "predictions.dev/stage";
/// Standard label naming the controller that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "prediction-batch-controller";
/// Finalizer on every child Job while its stage's outcome is not yet in the batch status. The
/// controller removes it once the outcome is recorded (or the batch is gone), so a Job deleted
/// before then is still there to be read. `prediction-batch-controller` must run for it to go.
pub const OUTCOME_FINALIZER: &str = "predictions.dev/record-outcome";
/// Label on every PredictionBatch a PredictionSchedule creates: the schedule's name
/// (`kubectl get pb -l predictions.dev/schedule=nba-daily`).
pub const SCHEDULE_LABEL: &str = "predictions.dev/schedule";
/// Annotation on every PredictionBatch a PredictionSchedule creates: the run's scheduled time,
/// RFC 3339 UTC. History limits keep the newest runs by it.
pub const SCHEDULED_AT_ANNOTATION: &str = "predictions.dev/scheduled-at";
