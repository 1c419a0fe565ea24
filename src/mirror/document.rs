//! The Firestore document of one batch: a pure mapping from the batch as written.
//!
//! One document per batch, `<collection>/<namespace>.<name>` (namespaces are DNS labels, so the
//! first dot separates the two). Its fields are what the old coordinator's readers (front-end,
//! monitoring, health checks) expect — `batch_id`, `game_date`, `expected_players`,
//! `completed_players`, `failed_players`, `phase`, `is_complete`, `consolidation_triggered`,
//! `consolidation_completed`, `export_completed`, `updated_at` — plus `uid`, `created_at`,
//! `generation`, `status_version` (the watermark), `deleted` and a few descriptive extras.
//!
//! Every write carries every field of [`FIELDS`] (absent values as `null`) under an update mask of
//! exactly those fields, so a field that became empty is cleared on the real service and on the
//! emulator alike (the emulator ignores masked-but-absent fields, so leaving them out would keep
//! stale values there).
//!
//! The watermark is `metadata.resourceVersion` as an integer: with etcd it is the revision of the
//! object's last write, which only grows for one object, so of two snapshots of one batch (one
//! UID) the higher watermark is the newer. It says nothing about two different batches of the
//! same name: a restored cluster or a second cluster numbers its resourceVersions on its own. So
//! [`precedence`] compares the UID first and orders documents of different batches by creation
//! time.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{Phase, PredictionBatch, StageState, StageStatus};

/// Every field of a batch document, in the order written; also the update mask of every write.
pub const FIELDS: &[&str] = &[
    "batch_id",
    "namespace",
    "name",
    "uid",
    "created_at",
    "generation",
    "status_version",
    "game_date",
    "phase",
    "expected_players",
    "completed_players",
    "failed_players",
    "progress",
    "total_shards",
    "completed_shards",
    "failed_shards",
    "failed_shard_indexes",
    "items_ref",
    "attempt",
    "is_complete",
    "consolidation_triggered",
    "consolidation_completed",
    "export_completed",
    "started_at",
    "completed_at",
    "message",
    "deleted",
    "updated_at",
];

/// A field value, independent of the Firestore wire types.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Time(Timestamp),
}

impl FieldValue {
    fn opt_str(v: &Option<String>) -> Self {
        v.as_ref().map_or(FieldValue::Null, |s| FieldValue::Str(s.clone()))
    }

    fn opt_time(v: &Option<Timestamp>) -> Self {
        v.map_or(FieldValue::Null, FieldValue::Time)
    }
}

/// Why a batch has no document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("batch has no {0}")]
    Missing(&'static str),
    #[error("resourceVersion {0:?} is not an integer; cannot derive the watermark")]
    Watermark(String),
}

/// The document of one batch at one resourceVersion.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchDocument {
    /// Document ID and `batch_id`: `<namespace>.<name>`.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `metadata.creationTimestamp`: orders documents of different batches of one name.
    pub created_at: Option<Timestamp>,
    pub generation: i64,
    /// The watermark: `metadata.resourceVersion` of the snapshot.
    pub status_version: u64,
    pub game_date: String,
    pub phase: String,
    pub expected_players: i64,
    pub completed_players: i64,
    pub failed_players: i64,
    pub progress: Option<String>,
    pub total_shards: i64,
    pub completed_shards: i64,
    pub failed_shards: i64,
    pub failed_shard_indexes: Option<String>,
    /// The loader's `itemsRef` (where the day's list is), if it reported one.
    pub items_ref: Option<String>,
    /// The batch's current attempt: 1, then 2, 3, ... for each rerun (one document per batch).
    pub attempt: i64,
    pub is_complete: bool,
    pub consolidation_triggered: bool,
    pub consolidation_completed: bool,
    pub export_completed: bool,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// Message of the Ready condition (why a batch failed, what it waits for).
    pub message: Option<String>,
    pub deleted: bool,
    /// When the controller observed this state (not when the write landed).
    pub updated_at: Timestamp,
}

/// Document ID of a batch.
pub fn document_id(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// The watermark of a batch snapshot.
pub fn watermark(batch: &PredictionBatch) -> Result<u64, MappingError> {
    let rv = batch.metadata.resource_version.as_deref().ok_or(MappingError::Missing("metadata.resourceVersion"))?;
    rv.parse::<u64>().map_err(|_| MappingError::Watermark(rv.to_string()))
}

fn stage_triggered(stage: Option<&StageStatus>) -> bool {
    stage.is_some_and(|s| s.job_uid.is_some() || s.state != StageState::Pending)
}

fn stage_succeeded(stage: Option<&StageStatus>) -> bool {
    stage.is_some_and(|s| s.state == StageState::Succeeded)
}

impl BatchDocument {
    /// The document of `batch` as observed at `now`; `deleted` for the final write of a batch
    /// being deleted (everything else, the phase included, as last written).
    pub fn from_batch(batch: &PredictionBatch, now: Timestamp, deleted: bool) -> Result<Self, MappingError> {
        let namespace = batch.namespace().ok_or(MappingError::Missing("metadata.namespace"))?;
        let name = batch.metadata.name.clone().ok_or(MappingError::Missing("metadata.name"))?;
        let uid = batch.metadata.uid.clone().ok_or(MappingError::Missing("metadata.uid"))?;
        let status_version = watermark(batch)?;
        let status = batch.status.clone().unwrap_or_default();
        let items = status.items.clone().unwrap_or_default();
        let shards = status.shards.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or(Phase::Pending);
        let expected = if status.items.is_some() { items.target } else { batch.spec.target_count.unwrap_or(0) };
        let message =
            status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.message.clone()).filter(|m| !m.is_empty());
        Ok(BatchDocument {
            id: document_id(&namespace, &name),
            namespace,
            name,
            uid,
            created_at: batch.metadata.creation_timestamp.as_ref().map(|t| t.0),
            generation: batch.metadata.generation.unwrap_or(0),
            status_version,
            game_date: batch.spec.game_date.clone(),
            phase: phase.as_str().to_string(),
            expected_players: i64::from(expected),
            completed_players: i64::from(items.succeeded),
            failed_players: i64::from(items.failed),
            progress: status.progress.clone(),
            total_shards: i64::from(shards.total),
            completed_shards: i64::from(shards.succeeded),
            failed_shards: i64::from(shards.failed),
            failed_shard_indexes: status.failed_shards.clone().filter(|s| !s.is_empty()),
            items_ref: status.items_ref.clone(),
            attempt: i64::from(status.attempt()),
            is_complete: phase.is_terminal(),
            consolidation_triggered: stage_triggered(status.consolidation.as_deref()),
            consolidation_completed: stage_succeeded(status.consolidation.as_deref()),
            export_completed: stage_succeeded(status.export.as_deref()),
            started_at: status.start_time.as_ref().map(|t| t.0),
            completed_at: status.completion_time.as_ref().map(|t| t.0),
            message,
            deleted,
            updated_at: now,
        })
    }

    /// Every field, in the order of [`FIELDS`].
    pub fn fields(&self) -> Vec<(&'static str, FieldValue)> {
        use FieldValue::*;
        vec![
            ("batch_id", Str(self.id.clone())),
            ("namespace", Str(self.namespace.clone())),
            ("name", Str(self.name.clone())),
            ("uid", Str(self.uid.clone())),
            ("created_at", FieldValue::opt_time(&self.created_at)),
            ("generation", Int(self.generation)),
            ("status_version", Int(i64::try_from(self.status_version).unwrap_or(i64::MAX))),
            ("game_date", Str(self.game_date.clone())),
            ("phase", Str(self.phase.clone())),
            ("expected_players", Int(self.expected_players)),
            ("completed_players", Int(self.completed_players)),
            ("failed_players", Int(self.failed_players)),
            ("progress", FieldValue::opt_str(&self.progress)),
            ("total_shards", Int(self.total_shards)),
            ("completed_shards", Int(self.completed_shards)),
            ("failed_shards", Int(self.failed_shards)),
            ("failed_shard_indexes", FieldValue::opt_str(&self.failed_shard_indexes)),
            ("items_ref", FieldValue::opt_str(&self.items_ref)),
            ("attempt", FieldValue::Int(self.attempt)),
            ("is_complete", Bool(self.is_complete)),
            ("consolidation_triggered", Bool(self.consolidation_triggered)),
            ("consolidation_completed", Bool(self.consolidation_completed)),
            ("export_completed", Bool(self.export_completed)),
            ("started_at", FieldValue::opt_time(&self.started_at)),
            ("completed_at", FieldValue::opt_time(&self.completed_at)),
            ("message", FieldValue::opt_str(&self.message)),
            ("deleted", Bool(self.deleted)),
            ("updated_at", Time(self.updated_at)),
        ]
    }

    /// Same content, watermark and observation time aside: writing `other` after `self` would
    /// change nothing a reader looks at.
    pub fn same_content(&self, other: &BatchDocument) -> bool {
        let strip =
            |d: &BatchDocument| BatchDocument { status_version: 0, updated_at: Timestamp::UNIX_EPOCH, ..d.clone() };
        strip(self) == strip(other)
    }
}

/// What a stored document says about whose it is and how new: the fields [`precedence`] reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredHead {
    pub uid: Option<String>,
    pub created_at: Option<Timestamp>,
    pub status_version: Option<u64>,
    pub deleted: bool,
}

/// Whether a document may replace the stored one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precedence {
    /// Write it.
    Replace,
    /// The stored document is a snapshot of the same batch, as new or newer.
    Stale { stored: u64 },
    /// The stored document belongs to another batch of the same name that keeps it.
    OtherBatch { uid: String, created_at: Option<Timestamp> },
}

/// Whether `ours` may replace `stored`; the UID is compared before the watermark.
///
/// - No document, or one without a `uid` (not written by this mirror): replace it.
/// - Same UID: the watermark decides; an equal or higher stored one is [`Precedence::Stale`].
/// - Another UID (the same name in a restored or a second cluster, or a delete and re-create
///   whose `deleted` marker never landed): resourceVersions of different objects do not compare,
///   so the batch created later owns the document. A document marked `deleted` is free for any
///   batch; a deletion never marks another batch's document; a stored document without
///   `created_at` (written before the field existed) counts as older; at equal creation times the
///   stored one stays.
pub fn precedence(ours: &BatchDocument, stored: &StoredHead) -> Precedence {
    let Some(uid) = &stored.uid else { return Precedence::Replace };
    if *uid == ours.uid {
        return match stored.status_version {
            Some(s) if s >= ours.status_version => Precedence::Stale { stored: s },
            _ => Precedence::Replace,
        };
    }
    let other = Precedence::OtherBatch { uid: uid.clone(), created_at: stored.created_at };
    if ours.deleted {
        return other;
    }
    if stored.deleted {
        return Precedence::Replace;
    }
    let ours_is_newer = match (ours.created_at, stored.created_at) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if ours_is_newer { Precedence::Replace } else { other }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ItemCounts, PredictionBatchStatus, ShardCounts};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn batch(status: Option<PredictionBatchStatus>) -> PredictionBatch {
        let mut b: PredictionBatch = serde_yaml::from_str(
            r#"
apiVersion: predictions.dev/v1alpha1
kind: PredictionBatch
metadata:
  name: nba-2026-01-02
  namespace: predictions
  uid: 0b5c6f7e-1111-2222-3333-444455556666
  generation: 3
  resourceVersion: "48213"
spec:
  gameDate: "2026-01-02"
  targetCount: 120
  itemsPerShard: 4
  worker:
    template:
      spec:
        containers: [{name: worker, image: w}]
"#,
        )
        .unwrap();
        b.status = status;
        b
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn stage(state: StageState, uid: Option<&str>) -> StageStatus {
        StageStatus { job_name: "j".into(), job_uid: uid.map(String::from), state, ..Default::default() }
    }

    fn get<'a>(fields: &'a [(&'static str, FieldValue)], name: &str) -> &'a FieldValue {
        &fields.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no field {name}")).1
    }

    #[test]
    fn a_new_batch_maps_to_a_pending_document() {
        let now = ts("2026-01-02T12:00:00Z");
        let d = BatchDocument::from_batch(&batch(None), now, false).unwrap();
        assert_eq!(d.id, "predictions.nba-2026-01-02");
        assert_eq!(d.phase, "Pending");
        assert_eq!(d.expected_players, 120, "target items from the spec until status has counts");
        assert_eq!((d.completed_players, d.failed_players), (0, 0));
        assert_eq!(d.status_version, 48213);
        assert_eq!(d.generation, 3);
        assert!(!d.is_complete && !d.consolidation_triggered && !d.consolidation_completed && !d.export_completed);
        assert!(!d.deleted);
        assert_eq!(d.updated_at, now);
        let f = d.fields();
        assert_eq!(get(&f, "batch_id"), &FieldValue::Str("predictions.nba-2026-01-02".into()));
        assert_eq!(get(&f, "started_at"), &FieldValue::Null);
        assert_eq!(get(&f, "completed_at"), &FieldValue::Null);
        assert_eq!(get(&f, "message"), &FieldValue::Null);
        assert_eq!(get(&f, "progress"), &FieldValue::Null);
        assert_eq!(get(&f, "status_version"), &FieldValue::Int(48213));
    }

    #[test]
    fn a_running_batch_reports_counts_and_triggered_stages() {
        let status = PredictionBatchStatus {
            phase: Some(Phase::Consolidating),
            items: Some(ItemCounts { target: 120, succeeded: 112, failed: 8 }),
            shards: Some(ShardCounts { total: 30, succeeded: 28, failed: 2, active: 0 }),
            progress: Some("112/120".into()),
            failed_shards: Some("3,7".into()),
            start_time: Some(Time(ts("2026-01-02T12:00:01Z"))),
            consolidation: Some(Box::new(stage(StageState::Running, Some("u1")))),
            ..Default::default()
        };
        let d = BatchDocument::from_batch(&batch(Some(status)), ts("2026-01-02T12:05:00Z"), false).unwrap();
        assert_eq!((d.expected_players, d.completed_players, d.failed_players), (120, 112, 8));
        assert_eq!((d.total_shards, d.completed_shards, d.failed_shards), (30, 28, 2));
        assert_eq!(d.phase, "Consolidating");
        assert!(d.consolidation_triggered && !d.consolidation_completed && !d.export_completed && !d.is_complete);
        assert_eq!(d.failed_shard_indexes.as_deref(), Some("3,7"));
        assert_eq!(get(&d.fields(), "started_at"), &FieldValue::Time(ts("2026-01-02T12:00:01Z")));
    }

    #[test]
    fn a_consolidation_about_to_be_created_is_not_yet_triggered() {
        let status = PredictionBatchStatus {
            consolidation: Some(Box::new(stage(StageState::Pending, None))),
            ..Default::default()
        };
        let d = BatchDocument::from_batch(&batch(Some(status)), Timestamp::UNIX_EPOCH, false).unwrap();
        assert!(!d.consolidation_triggered);
        let status = PredictionBatchStatus {
            consolidation: Some(Box::new(stage(StageState::Pending, Some("u")))),
            ..Default::default()
        };
        let d = BatchDocument::from_batch(&batch(Some(status)), Timestamp::UNIX_EPOCH, false).unwrap();
        assert!(d.consolidation_triggered, "created (has a Job UID)");
    }

    #[test]
    fn one_document_shows_the_latest_attempt_and_the_loader_s_list() {
        let d = BatchDocument::from_batch(&batch(None), Timestamp::UNIX_EPOCH, false).unwrap();
        assert_eq!((d.attempt, d.items_ref.as_deref()), (1, None));
        let attempts = (1..=3).map(|attempt| crate::api::AttemptStatus { attempt, ..Default::default() }).collect();
        let status =
            PredictionBatchStatus { attempts, items_ref: Some("gs://b/players.json".into()), ..Default::default() };
        let d = BatchDocument::from_batch(&batch(Some(status)), Timestamp::UNIX_EPOCH, false).unwrap();
        assert_eq!((d.attempt, d.items_ref.as_deref()), (3, Some("gs://b/players.json")));
        assert_eq!(d.id, BatchDocument::from_batch(&batch(None), Timestamp::UNIX_EPOCH, false).unwrap().id);
    }

    #[test]
    fn a_finished_batch_is_complete() {
        for (phase, export) in [(Phase::Succeeded, StageState::Succeeded), (Phase::Failed, StageState::Failed)] {
            let status = PredictionBatchStatus {
                phase: Some(phase),
                items: Some(ItemCounts { target: 120, succeeded: 120, failed: 0 }),
                consolidation: Some(Box::new(stage(StageState::Succeeded, Some("c")))),
                export: Some(Box::new(stage(export, Some("e")))),
                completion_time: Some(Time(ts("2026-01-02T12:10:00Z"))),
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: "Succeeded".into(),
                    message: "all 120 items predicted".into(),
                    observed_generation: Some(3),
                    last_transition_time: Time(ts("2026-01-02T12:10:00Z")),
                }],
                ..Default::default()
            };
            let d = BatchDocument::from_batch(&batch(Some(status)), Timestamp::UNIX_EPOCH, false).unwrap();
            assert!(d.is_complete, "{phase:?}");
            assert!(d.consolidation_triggered && d.consolidation_completed);
            assert_eq!(d.export_completed, export == StageState::Succeeded);
            assert_eq!(d.message.as_deref(), Some("all 120 items predicted"));
            assert_eq!(d.completed_at, Some(ts("2026-01-02T12:10:00Z")));
        }
    }

    #[test]
    fn deleted_keeps_the_phase() {
        let status = PredictionBatchStatus { phase: Some(Phase::Running), ..Default::default() };
        let d = BatchDocument::from_batch(&batch(Some(status)), Timestamp::UNIX_EPOCH, true).unwrap();
        assert!(d.deleted);
        assert_eq!(d.phase, "Running");
        assert_eq!(get(&d.fields(), "deleted"), &FieldValue::Bool(true));
    }

    #[test]
    fn every_field_is_written_and_masked() {
        let d = BatchDocument::from_batch(&batch(None), Timestamp::UNIX_EPOCH, false).unwrap();
        let names: Vec<&str> = d.fields().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, FIELDS, "the update mask must list exactly the written fields");
        for legacy in [
            "batch_id",
            "game_date",
            "expected_players",
            "completed_players",
            "failed_players",
            "phase",
            "is_complete",
            "consolidation_triggered",
            "consolidation_completed",
            "export_completed",
            "updated_at",
            "uid",
            "generation",
            "status_version",
        ] {
            assert!(FIELDS.contains(&legacy), "{legacy} missing");
        }
    }

    #[test]
    fn the_watermark_is_the_resource_version() {
        let mut b = batch(None);
        assert_eq!(watermark(&b), Ok(48213));
        b.metadata.resource_version = Some("abc".into());
        assert!(matches!(watermark(&b), Err(MappingError::Watermark(_))));
        assert!(BatchDocument::from_batch(&b, Timestamp::UNIX_EPOCH, false).is_err());
        b.metadata.resource_version = None;
        assert_eq!(watermark(&b), Err(MappingError::Missing("metadata.resourceVersion")));
    }

    #[test]
    fn the_uid_is_compared_before_the_watermark() {
        let created = ts("2026-01-02T11:00:00Z");
        let mut ours = BatchDocument::from_batch(&batch(None), Timestamp::UNIX_EPOCH, false).unwrap();
        ours.created_at = Some(created);
        let uid = ours.uid.clone();
        let head = |uid: &str, created_at: Option<&str>, version: u64, deleted: bool| StoredHead {
            uid: Some(uid.into()),
            created_at: created_at.map(ts),
            status_version: Some(version),
            deleted,
        };
        let other =
            |created_at: Option<&str>| Precedence::OtherBatch { uid: "other".into(), created_at: created_at.map(ts) };
        // Nothing there, or a document this mirror did not write.
        assert_eq!(precedence(&ours, &StoredHead::default()), Precedence::Replace);
        // Our batch: the watermark decides.
        assert_eq!(precedence(&ours, &head(&uid, Some("2026-01-02T11:00:00Z"), 48212, false)), Precedence::Replace);
        assert_eq!(
            precedence(&ours, &head(&uid, Some("2026-01-02T11:00:00Z"), 48213, false)),
            Precedence::Stale { stored: 48213 }
        );
        assert_eq!(precedence(&ours, &head(&uid, None, 99_999_999, true)), Precedence::Stale { stored: 99_999_999 });
        // Another batch created earlier (before a restore, or before a delete and re-create):
        // ours takes over, whatever its watermark.
        assert_eq!(
            precedence(&ours, &head("other", Some("2025-06-01T00:00:00Z"), 99_999_999, false)),
            Precedence::Replace
        );
        assert_eq!(precedence(&ours, &head("other", None, 99_999_999, false)), Precedence::Replace);
        // Another batch created later (a second cluster), or at the same time: it keeps the
        // document, whatever the watermarks.
        for later in ["2026-01-02T11:00:01Z", "2026-01-02T11:00:00Z"] {
            assert_eq!(precedence(&ours, &head("other", Some(later), 1, false)), other(Some(later)));
        }
        // ...until it is deleted.
        let later = "2026-01-02T12:00:00Z";
        assert_eq!(precedence(&ours, &head("other", Some(later), 1, true)), Precedence::Replace);
        // A deletion never marks another batch's document, older or not.
        let mut deleting = ours.clone();
        deleting.deleted = true;
        let earlier = "2025-06-01T00:00:00Z";
        assert_eq!(precedence(&deleting, &head("other", Some(earlier), 1, false)), other(Some(earlier)));
        assert_eq!(precedence(&deleting, &head("other", Some(earlier), 1, true)), other(Some(earlier)));
        // Ours without a creation time never displaces another batch.
        ours.created_at = None;
        assert_eq!(precedence(&ours, &head("other", Some(earlier), 1, false)), other(Some(earlier)));
    }

    #[test]
    fn same_content_ignores_the_watermark_and_time() {
        let a = BatchDocument::from_batch(&batch(None), ts("2026-01-02T12:00:00Z"), false).unwrap();
        let mut b = a.clone();
        b.status_version += 5;
        b.updated_at = ts("2026-01-02T13:00:00Z");
        assert!(a.same_content(&b));
        b.completed_players = 1;
        assert!(!a.same_content(&b));
        let mut c = a.clone();
        c.uid = "other".into();
        assert!(!a.same_content(&c), "a re-created batch is new content");
    }
}
