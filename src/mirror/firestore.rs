//! The Firestore store: writes a [`BatchDocument`] unless the stored one is as new or newer.
//!
//! Each write is one read-write transaction: BeginTransaction, BatchGetDocuments of the stored
//! `uid`, `created_at`, `status_version` and `deleted` inside it, then either Rollback (the stored
//! document is a newer snapshot of the same batch, or belongs to another batch that keeps it: see
//! [`precedence`]) or a Commit of one update with an explicit mask of every field. Those are the RPCs the npm
//! `@firestore-emulator/server` serves (it has no GetDocument/UpdateDocument/Write), and the
//! no-regression check is ours, not a server precondition (the emulator checks none and does not
//! isolate transactions; the real service does both, so concurrent writers serialise there).
//!
//! Nothing is contacted until the first write or read: the client is built lazily (and rebuilt
//! on the next attempt if building failed), so a controller whose Firestore is down starts anyway.
//! Authentication is the `firestore` crate's standard chain (Application Default Credentials:
//! Workload Identity / the metadata server, or `GOOGLE_APPLICATION_CREDENTIALS`);
//! `FIRESTORE_EMULATOR_HOST` selects an emulator with a stub token.

use std::collections::BTreeMap;

use async_trait::async_trait;
use firestore::gcloud_sdk::google::firestore::v1 as pb;
use firestore::gcloud_sdk::google_cloud_auth::credentials::anonymous;
use firestore::gcloud_sdk::{prost_types, tonic};
use firestore::{FirestoreDb, FirestoreDbOptions};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::OnceCell;

use super::document::{BatchDocument, FIELDS, FieldValue, Precedence, StoredHead, precedence};

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The document now holds this snapshot.
    Written,
    /// The stored document is a snapshot of the same batch, as new or newer; nothing was written.
    Stale { stored: u64 },
    /// The stored document belongs to another batch of the same name (another UID) that keeps it
    /// (created later, or not deleted while ours is); nothing was written.
    OtherBatch { uid: String, created_at: Option<Timestamp> },
}

/// A failed write, with a condition reason (CamelCase) and a human message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct MirrorError {
    pub reason: String,
    pub message: String,
}

impl MirrorError {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        MirrorError { reason: reason.into(), message: message.into() }
    }

    fn status(what: &str, s: &tonic::Status) -> Self {
        let message =
            if s.message().is_empty() { format!("{what}: {:?}", s.code()) } else { format!("{what}: {}", s.message()) };
        MirrorError::new(format!("Firestore{:?}", s.code()), message)
    }
}

/// Where the mirror writes documents (Firestore, or a fake in tests).
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Writes `doc` unless the stored document may not be replaced by it ([`precedence`]).
    async fn write(&self, doc: &BatchDocument) -> Result<WriteOutcome, MirrorError>;
}

/// Project, database and collection of the mirror.
#[derive(Clone, Debug)]
pub struct FirestoreOptions {
    pub project: String,
    /// `None`: the `(default)` database.
    pub database: Option<String>,
    pub collection: String,
    /// An emulator to use whatever the environment says (tests running several emulators in one
    /// process). `None`: `FIRESTORE_EMULATOR_HOST` if set, else the real service.
    pub emulator_host: Option<String>,
}

/// A stored document, as read back (tests, diagnostics).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StoredDocument {
    pub fields: BTreeMap<String, FieldValue>,
}

impl StoredDocument {
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.fields.get(name)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            FieldValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            FieldValue::Bool(v) => Some(*v),
            _ => None,
        }
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            FieldValue::Str(v) => Some(v),
            _ => None,
        }
    }

    /// Whether the field is absent or null.
    pub fn is_null(&self, name: &str) -> bool {
        matches!(self.get(name), None | Some(FieldValue::Null))
    }
}

/// The Firestore mirror store (gRPC through the `firestore` crate's authenticated client).
pub struct FirestoreStore {
    options: FirestoreOptions,
    db: OnceCell<FirestoreDb>,
}

impl FirestoreStore {
    /// A store that connects on first use.
    pub fn new(options: FirestoreOptions) -> Self {
        FirestoreStore { options, db: OnceCell::new() }
    }

    pub fn options(&self) -> &FirestoreOptions {
        &self.options
    }

    async fn db(&self) -> Result<&FirestoreDb, MirrorError> {
        self.db
            .get_or_try_init(|| async {
                let mut opts = FirestoreDbOptions::new(self.options.project.clone());
                if let Some(db) = &self.options.database {
                    opts = opts.with_database_id(db.clone());
                }
                let db = match &self.options.emulator_host {
                    Some(host) => {
                        let opts = opts.with_firebase_api_url(format!("http://{host}"));
                        FirestoreDb::with_options_auth(opts, anonymous::Builder::new().build()).await
                    }
                    None => FirestoreDb::with_options(opts).await,
                };
                db.map_err(|e| MirrorError::new("FirestoreConnectFailed", format!("connecting to Firestore: {e}")))
            })
            .await
    }

    fn document_path(&self, db: &FirestoreDb, id: &str) -> String {
        format!("{}/{}/{}", db.get_documents_path(), self.options.collection, id)
    }

    /// Reads a document (BatchGetDocuments, outside any transaction); `None` when missing.
    pub async fn read(&self, id: &str) -> Result<Option<StoredDocument>, MirrorError> {
        let db = self.db().await?;
        let mut client = db.client().get();
        let request = pb::BatchGetDocumentsRequest {
            database: db.get_database_path().clone(),
            documents: vec![self.document_path(db, id)],
            ..Default::default()
        };
        let found = batch_get_one(&mut client, request).await?;
        Ok(found
            .map(|doc| StoredDocument { fields: doc.fields.into_iter().map(|(k, v)| (k, from_value(v))).collect() }))
    }

    /// Writes `doc` unconditionally, watermark and all (tests: plant a document "from the future").
    pub async fn write_unchecked(&self, doc: &BatchDocument) -> Result<(), MirrorError> {
        let db = self.db().await?;
        let mut client = db.client().get();
        let database = db.get_database_path().clone();
        let tx = begin(&mut client, &database).await?;
        commit(&mut client, &database, tx, self.update(db, doc)).await
    }

    fn update(&self, db: &FirestoreDb, doc: &BatchDocument) -> pb::Write {
        pb::Write {
            update_mask: Some(pb::DocumentMask { field_paths: FIELDS.iter().map(|f| f.to_string()).collect() }),
            operation: Some(pb::write::Operation::Update(pb::Document {
                name: self.document_path(db, &doc.id),
                fields: doc.fields().into_iter().map(|(k, v)| (k.to_string(), to_value(v))).collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

#[async_trait]
impl DocumentStore for FirestoreStore {
    async fn write(&self, doc: &BatchDocument) -> Result<WriteOutcome, MirrorError> {
        let db = self.db().await?;
        let mut client = db.client().get();
        let database = db.get_database_path().clone();
        let path = self.document_path(db, &doc.id);
        let tx = begin(&mut client, &database).await?;
        let read = pb::BatchGetDocumentsRequest {
            database: database.clone(),
            documents: vec![path],
            mask: Some(pb::DocumentMask { field_paths: HEAD_FIELDS.iter().map(|f| f.to_string()).collect() }),
            consistency_selector: Some(pb::batch_get_documents_request::ConsistencySelector::Transaction(tx.clone())),
            ..Default::default()
        };
        let stored = match batch_get_one(&mut client, read).await {
            Ok(found) => found.map(|d| head_of(d.fields)).unwrap_or_default(),
            Err(e) => {
                rollback(&mut client, &database, tx).await;
                return Err(e);
            }
        };
        let outcome = match precedence(doc, &stored) {
            Precedence::Replace => {
                commit(&mut client, &database, tx, self.update(db, doc)).await?;
                return Ok(WriteOutcome::Written);
            }
            Precedence::Stale { stored } => WriteOutcome::Stale { stored },
            Precedence::OtherBatch { uid, created_at } => WriteOutcome::OtherBatch { uid, created_at },
        };
        rollback(&mut client, &database, tx).await;
        Ok(outcome)
    }
}

type Client = pb::firestore_client::FirestoreClient<firestore::gcloud_sdk::GoogleAuthMiddleware>;

async fn begin(client: &mut Client, database: &str) -> Result<Vec<u8>, MirrorError> {
    let request = pb::BeginTransactionRequest {
        database: database.to_string(),
        options: Some(pb::TransactionOptions {
            mode: Some(pb::transaction_options::Mode::ReadWrite(Default::default())),
        }),
        ..Default::default()
    };
    let response = client.begin_transaction(request).await.map_err(|s| MirrorError::status("begin transaction", &s))?;
    Ok(response.into_inner().transaction)
}

async fn commit(
    client: &mut Client,
    database: &str,
    transaction: Vec<u8>,
    write: pb::Write,
) -> Result<(), MirrorError> {
    let request =
        pb::CommitRequest { database: database.to_string(), writes: vec![write], transaction, ..Default::default() };
    client.commit(request).await.map_err(|s| MirrorError::status("commit", &s))?;
    Ok(())
}

/// Ends a transaction that will not commit (releases its locks on the real service); best effort.
async fn rollback(client: &mut Client, database: &str, transaction: Vec<u8>) {
    let request = pb::RollbackRequest { database: database.to_string(), transaction, ..Default::default() };
    if let Err(s) = client.rollback(request).await {
        tracing::debug!(error = %s, "Firestore rollback failed");
    }
}

async fn batch_get_one(
    client: &mut Client,
    request: pb::BatchGetDocumentsRequest,
) -> Result<Option<pb::Document>, MirrorError> {
    let mut stream =
        client.batch_get_documents(request).await.map_err(|s| MirrorError::status("batch get", &s))?.into_inner();
    let mut found = None;
    while let Some(msg) = stream.message().await.map_err(|s| MirrorError::status("batch get", &s))? {
        if let Some(pb::batch_get_documents_response::Result::Found(doc)) = msg.result {
            found = Some(doc);
        }
    }
    Ok(found)
}

fn watermark_of(v: &FieldValue) -> Option<u64> {
    match v {
        FieldValue::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// The fields a write reads back inside its transaction.
const HEAD_FIELDS: &[&str] = &["uid", "created_at", "status_version", "deleted"];

/// Whose the stored document is and how new, from its fields (those of [`HEAD_FIELDS`]).
fn head_of(fields: std::collections::HashMap<String, pb::Value>) -> StoredHead {
    let mut head = StoredHead::default();
    for (name, value) in fields {
        match (name.as_str(), from_value(value)) {
            ("uid", FieldValue::Str(s)) => head.uid = Some(s),
            ("created_at", FieldValue::Time(t)) => head.created_at = Some(t),
            ("status_version", v) => head.status_version = watermark_of(&v),
            ("deleted", FieldValue::Bool(b)) => head.deleted = b,
            _ => {}
        }
    }
    head
}

/// A field value on the wire.
pub fn to_value(v: FieldValue) -> pb::Value {
    use pb::value::ValueType;
    let value_type = match v {
        FieldValue::Null => ValueType::NullValue(prost_types::NullValue::NullValue as i32),
        FieldValue::Bool(b) => ValueType::BooleanValue(b),
        FieldValue::Int(i) => ValueType::IntegerValue(i),
        FieldValue::Str(s) => ValueType::StringValue(s),
        FieldValue::Time(t) => {
            ValueType::TimestampValue(prost_types::Timestamp { seconds: t.as_second(), nanos: t.subsec_nanosecond() })
        }
    };
    pb::Value { value_type: Some(value_type) }
}

/// A value read back; kinds the mirror never writes (doubles, maps, arrays, ...) as their debug text.
pub fn from_value(v: pb::Value) -> FieldValue {
    use pb::value::ValueType;
    match v.value_type {
        None | Some(ValueType::NullValue(_)) => FieldValue::Null,
        Some(ValueType::BooleanValue(b)) => FieldValue::Bool(b),
        Some(ValueType::IntegerValue(i)) => FieldValue::Int(i),
        Some(ValueType::StringValue(s)) => FieldValue::Str(s),
        Some(ValueType::TimestampValue(t)) => match Timestamp::new(t.seconds, t.nanos) {
            Ok(t) => FieldValue::Time(t),
            Err(_) => FieldValue::Str(format!("{t:?}")),
        },
        Some(other) => FieldValue::Str(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for v in [
            FieldValue::Null,
            FieldValue::Bool(true),
            FieldValue::Int(-7),
            FieldValue::Int(48213),
            FieldValue::Str("Running".into()),
            FieldValue::Time("2026-01-02T12:00:00.123456789Z".parse().unwrap()),
        ] {
            assert_eq!(from_value(to_value(v.clone())), v);
        }
    }

    #[test]
    fn the_head_of_a_stored_document() {
        let t: Timestamp = "2026-01-02T11:00:00Z".parse().unwrap();
        let fields = [
            ("uid", FieldValue::Str("u".into())),
            ("created_at", FieldValue::Time(t)),
            ("status_version", FieldValue::Int(42)),
            ("deleted", FieldValue::Bool(true)),
            ("phase", FieldValue::Str("Running".into())),
        ];
        let head = head_of(fields.into_iter().map(|(k, v)| (k.to_string(), to_value(v))).collect());
        assert_eq!(
            head,
            StoredHead { uid: Some("u".into()), created_at: Some(t), status_version: Some(42), deleted: true }
        );
        // The old coordinator's documents: no uid, no watermark.
        let legacy = [("batch_id", FieldValue::Str("ns.b".into())), ("status_version", FieldValue::Str("x".into()))];
        let head = head_of(legacy.into_iter().map(|(k, v)| (k.to_string(), to_value(v))).collect());
        assert_eq!(head, StoredHead::default());
    }

    #[test]
    fn only_integer_watermarks_count() {
        assert_eq!(watermark_of(&FieldValue::Int(5)), Some(5));
        assert_eq!(watermark_of(&FieldValue::Int(-1)), None);
        assert_eq!(watermark_of(&FieldValue::Str("5".into())), None);
    }
}
