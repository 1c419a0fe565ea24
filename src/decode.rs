//! Each PredictionBatch is decoded on its own, so that no stored object can stop the controller.
//!
//! The watch lists and watches [`Listed`] objects: a batch that fits the Rust types, or, when it
//! does not (a number beyond what a Kubernetes type holds, stored under an older CRD or one without
//! bounds), just enough of it to name and mark it. [`Decoder`] turns the watch events into events of
//! `PredictionBatch` for the cache and the controller, leaving undecodable batches out; it counts
//! them and has each one marked `Stalled` with reason [`REASON_INVALID_OBJECT`] by [`Marker`]
//! through a JSON merge patch of the status conditions, which needs no typed object. The mark is
//! deterministic and fenced by the `resourceVersion` it was computed from, so it is written once,
//! not again on a relist. An undecodable batch being deleted is not marked but released from the
//! Firestore mirror's finalizer (its document cannot be written without the batch), so that its
//! deletion never hangs. Nothing undecoded is kept: the raw object lives only while it is looked
//! at.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::watcher::Event;
use kube::{Client, Resource};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::{CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED};
use crate::api::{PredictionBatch, REASON_INVALID_OBJECT};
use crate::metrics::Metrics;
use crate::mirror::{MIRROR_FIELD_MANAGER, MIRROR_FINALIZER};

/// Longest condition message we write (an Event note holds 1 kB).
const MAX_MESSAGE: usize = 1000;

/// A PredictionBatch as the apiserver sent it.
#[derive(Clone, Debug)]
pub enum Listed {
    /// It fits the Rust types.
    Batch(Box<PredictionBatch>),
    /// It does not; see [`InvalidBatch`].
    Invalid(Box<InvalidBatch>),
}

/// What is kept of a stored PredictionBatch that does not decode: its identity, why, and its
/// status conditions as stored (raw: they may be what does not decode).
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidBatch {
    /// Only name, namespace, uid, resourceVersion, generation and finalizers.
    pub metadata: ObjectMeta,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The first error, with the path of the field, e.g.
    /// ``spec.worker.template.spec.containers[0].ports[0].containerPort: invalid value: integer `99999999999`, expected i32``.
    pub error: String,
    pub conditions: Vec<Value>,
}

impl Listed {
    /// Decodes one object; never fails.
    pub fn from_value(value: Value) -> Self {
        match serde_path_to_error::deserialize::<_, PredictionBatch>(&value) {
            Ok(batch) => Listed::Batch(Box::new(batch)),
            Err(error) => Listed::Invalid(Box::new(InvalidBatch::new(&value, error.to_string()))),
        }
    }
}

impl<'de> Deserialize<'de> for Listed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Listed::from_value)
    }
}

impl Resource for Listed {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        PredictionBatch::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        PredictionBatch::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        PredictionBatch::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        PredictionBatch::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        PredictionBatch::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Listed::Batch(b) => &b.metadata,
            Listed::Invalid(i) => &i.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Listed::Batch(b) => &mut b.metadata,
            Listed::Invalid(i) => &mut i.metadata,
        }
    }
}

impl InvalidBatch {
    fn new(value: &Value, error: String) -> Self {
        let meta = &value["metadata"];
        let text = |key: &str| meta[key].as_str().map(str::to_string);
        let metadata = ObjectMeta {
            name: text("name"),
            namespace: text("namespace"),
            uid: text("uid"),
            resource_version: text("resourceVersion"),
            generation: meta["generation"].as_i64(),
            finalizers: meta["finalizers"]
                .as_array()
                .map(|f| f.iter().filter_map(|f| f.as_str().map(str::to_string)).collect()),
            ..ObjectMeta::default()
        };
        let deleting = meta["deletionTimestamp"].is_string();
        let conditions = value["status"]["conditions"].as_array().cloned().unwrap_or_default();
        InvalidBatch { metadata, deleting, error, conditions }
    }

    /// The message of the three conditions (deterministic: the same object gives the same text).
    pub fn message(&self) -> String {
        let mut message =
            format!("the stored object cannot be read, so the controller leaves it alone: {}", self.error);
        if message.len() > MAX_MESSAGE {
            let cut = (0..=MAX_MESSAGE - 3).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            message.truncate(cut);
            message.push_str("...");
        }
        message
    }

    /// The conditions with `Ready` and `Reconciling` `False` and `Stalled` `True`, all with reason
    /// `InvalidObject`; other conditions (`Degraded`, `MirrorSynced`) stay as they are. `None` when
    /// the stored conditions already say so: nothing to write.
    pub fn stalled_conditions(&self, now: Timestamp) -> Option<Vec<Value>> {
        let message = self.message();
        let mut conditions = self.conditions.clone();
        for (type_, status) in
            [(CONDITION_READY, "False"), (CONDITION_RECONCILING, "False"), (CONDITION_STALLED, "True")]
        {
            let old = conditions.iter().position(|c| c["type"] == type_);
            let last_transition_time = match old.map(|i| &conditions[i]) {
                Some(c) if c["status"] == status && c["lastTransitionTime"].is_string() => {
                    c["lastTransitionTime"].clone()
                }
                _ => serde_json::to_value(Time(now)).expect("a time serializes"),
            };
            let mut condition = json!({
                "type": type_,
                "status": status,
                "reason": REASON_INVALID_OBJECT,
                "message": message,
                "lastTransitionTime": last_transition_time,
            });
            if let Some(generation) = self.metadata.generation {
                condition["observedGeneration"] = json!(generation);
            }
            match old {
                Some(i) => conditions[i] = condition,
                None => conditions.push(condition),
            }
        }
        (conditions != self.conditions).then_some(conditions)
    }

    /// The JSON merge patch of the status subresource that marks this batch, if it needs one. The
    /// `resourceVersion` makes it apply only to the object it was computed from.
    pub fn mark_patch(&self, now: Timestamp) -> Option<Value> {
        let conditions = self.stalled_conditions(now)?;
        Some(json!({
            "metadata": { "resourceVersion": self.metadata.resource_version },
            "status": { "conditions": conditions },
        }))
    }

    /// The JSON patch that takes the Firestore mirror's finalizer off this batch, if it is being
    /// deleted and carries it; guarded by `test` operations (same object, finalizer still there).
    pub fn release_patch(&self) -> Option<Value> {
        if !self.deleting {
            return None;
        }
        let finalizers = self.metadata.finalizers.as_deref().unwrap_or_default();
        let i = finalizers.iter().position(|f| f == MIRROR_FINALIZER)?;
        Some(json!([
            { "op": "test", "path": "/metadata/uid", "value": self.metadata.uid },
            { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": MIRROR_FINALIZER },
            { "op": "remove", "path": format!("/metadata/finalizers/{i}") },
        ]))
    }
}

/// A write for an undecodable batch, computed when it was seen.
#[derive(Debug)]
pub struct Mark {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// The note of the Warning event recorded once the write is done.
    pub message: String,
    pub what: What,
}

#[derive(Debug, PartialEq)]
pub enum What {
    /// Merge patch of the status conditions ([`InvalidBatch::mark_patch`]).
    Stalled(Value),
    /// JSON patch removing the mirror's finalizer ([`InvalidBatch::release_patch`]).
    ReleaseFinalizer(Value),
}

impl What {
    fn action(&self) -> &'static str {
        match self {
            What::Stalled(_) => "MarkStalled",
            What::ReleaseFinalizer(_) => "ReleaseFinalizer",
        }
    }
}

type Key = (String, String);

fn key(meta: &ObjectMeta) -> Key {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// Turns watch events of [`Listed`] into events of `PredictionBatch`, keeping count of the
/// batches that do not decode and asking for each to be marked.
pub struct Decoder {
    metrics: Arc<Metrics>,
    marks: mpsc::UnboundedSender<Mark>,
    /// Undecodable batches now (keys only).
    invalid: HashSet<Key>,
    /// During a relist: those seen so far in it.
    relisting: Option<HashSet<Key>>,
}

impl Decoder {
    pub fn new(metrics: Arc<Metrics>, marks: mpsc::UnboundedSender<Mark>) -> Self {
        metrics.invalid_objects.set(0);
        Decoder { metrics, marks, invalid: HashSet::new(), relisting: None }
    }

    /// The event for the cache, if any. A batch that stops decoding leaves the cache (as a
    /// `Delete`, which the controller does not reconcile) so that no older copy of it is acted on.
    pub fn on_event(&mut self, event: Event<Listed>) -> Option<Event<PredictionBatch>> {
        let out = match event {
            Event::Init => {
                self.relisting = Some(HashSet::new());
                Some(Event::Init)
            }
            Event::InitApply(Listed::Batch(b)) => Some(Event::InitApply(*b)),
            Event::InitApply(Listed::Invalid(i)) => {
                self.relisting.get_or_insert_with(HashSet::new).insert(key(&i.metadata));
                self.report(&i);
                None
            }
            Event::InitDone => {
                self.invalid = self.relisting.take().unwrap_or_default();
                Some(Event::InitDone)
            }
            Event::Apply(Listed::Batch(b)) => {
                self.invalid.remove(&key(&b.metadata));
                Some(Event::Apply(*b))
            }
            Event::Apply(Listed::Invalid(i)) => {
                self.invalid.insert(key(&i.metadata));
                self.report(&i);
                Some(Event::Delete(tombstone(i.metadata)))
            }
            Event::Delete(Listed::Batch(b)) => {
                self.invalid.remove(&key(&b.metadata));
                Some(Event::Delete(*b))
            }
            Event::Delete(Listed::Invalid(i)) => {
                self.invalid.remove(&key(&i.metadata));
                Some(Event::Delete(tombstone(i.metadata)))
            }
        };
        self.metrics.invalid_objects.set(self.invalid.len() as i64);
        out
    }

    fn report(&self, invalid: &InvalidBatch) {
        let (namespace, name) = key(&invalid.metadata);
        let batch = format!("{namespace}/{name}");
        let uid = invalid.metadata.uid.clone();
        let mark = if invalid.deleting {
            // On its way out: no mark, but nothing of ours may hold it.
            invalid.release_patch().map(|patch| {
                warn!(batch, error = invalid.error, "deleted batch cannot be read; removing the mirror's finalizer");
                let message = format!(
                    "{}; its Firestore document was not marked deleted, and finalizer {MIRROR_FINALIZER} was removed so the deletion goes through",
                    invalid.message()
                );
                Mark { namespace, name, uid, message, what: What::ReleaseFinalizer(patch) }
            })
        } else {
            invalid.mark_patch(Timestamp::now()).map(|patch| {
                warn!(batch, error = invalid.error, "batch cannot be read; marking it Stalled");
                Mark { namespace, name, uid, message: invalid.message(), what: What::Stalled(patch) }
            })
        };
        match mark {
            // The receiver lives as long as the controller that owns this decoder.
            Some(mark) => drop(self.marks.send(mark)),
            None => debug!(batch, "batch cannot be read; nothing to write"),
        }
    }
}

/// A batch with nothing but `metadata`, to take a batch out of the cache.
fn tombstone(metadata: ObjectMeta) -> PredictionBatch {
    let spec = serde_json::from_value(json!({ "gameDate": "", "targetCount": 0, "worker": { "template": null } }))
        .expect("a minimal spec");
    PredictionBatch { metadata, spec, status: None }
}

/// Writes the marks, one at a time, until the decoder that sends them is gone.
pub struct Marker {
    pub client: Client,
    pub recorder: Recorder,
}

impl Marker {
    pub async fn run(self, mut marks: mpsc::UnboundedReceiver<Mark>) {
        while let Some(mark) = marks.recv().await {
            self.mark(mark).await;
        }
    }

    async fn mark(&self, mark: Mark) {
        let api: Api<Listed> = Api::namespaced(self.client.clone(), &mark.namespace);
        let batch = format!("{}/{}", mark.namespace, mark.name);
        let action = mark.what.action();
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=5 {
            let written = match &mark.what {
                What::Stalled(patch) => {
                    api.patch_status(&mark.name, &PatchParams::default(), &Patch::Merge(patch)).await
                }
                What::ReleaseFinalizer(ops) => {
                    let ops = serde_json::from_value(ops.clone()).expect("a valid JSON patch");
                    let params = PatchParams { field_manager: Some(MIRROR_FIELD_MANAGER.into()), ..Default::default() };
                    api.patch(&mark.name, &params, &Patch::<()>::Json(ops)).await
                }
            };
            match written {
                Ok(_) => {
                    info!(batch, action, "written ({REASON_INVALID_OBJECT})");
                    self.event(&mark).await;
                    return;
                }
                // Changed or gone since (a failed `test` is 422): the watch brings the new version,
                // which is looked at anew.
                Err(kube::Error::Api(s)) if [404, 409, 422].contains(&s.code) => {
                    debug!(batch, action, code = s.code, "batch changed before it was written");
                    return;
                }
                Err(error) => {
                    warn!(batch, action, %error, attempt, "could not write");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    async fn event(&self, mark: &Mark) {
        let reference = ObjectReference {
            api_version: Some(PredictionBatch::api_version(&()).into_owned()),
            kind: Some(PredictionBatch::kind(&()).into_owned()),
            namespace: Some(mark.namespace.clone()),
            name: Some(mark.name.clone()),
            uid: mark.uid.clone(),
            ..ObjectReference::default()
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: REASON_INVALID_OBJECT.into(),
            note: Some(mark.message.chars().take(1000).collect()),
            action: mark.what.action().into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            warn!(batch = format!("{}/{}", mark.namespace, mark.name), %error, "could not record an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(port: i64, conditions: Value) -> Value {
        json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
            "metadata": { "name": "b", "namespace": "ns", "uid": "u", "resourceVersion": "7", "generation": 2,
                          "managedFields": [{ "manager": "kubectl" }] },
            "spec": { "gameDate": "2026-01-02", "targetCount": 4,
                      "worker": { "template": { "spec": { "containers": [
                          { "name": "w", "image": "w", "ports": [{ "containerPort": port }] }] } } } },
            "status": { "conditions": conditions },
        })
    }

    fn invalid(v: Value) -> InvalidBatch {
        match Listed::from_value(v) {
            Listed::Invalid(i) => *i,
            Listed::Batch(b) => panic!("decoded: {b:?}"),
        }
    }

    fn now() -> Timestamp {
        "2026-01-02T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_batch_that_fits_decodes() {
        assert!(matches!(Listed::from_value(stored(8080, json!([]))), Listed::Batch(_)));
        assert!(matches!(Listed::from_value(stored(i64::from(i32::MAX), json!([]))), Listed::Batch(_)));
    }

    #[test]
    fn a_batch_that_does_not_fit_names_the_field_and_keeps_only_its_identity() {
        let i = invalid(stored(99_999_999_999, json!([])));
        assert_eq!(
            i.error,
            "spec.worker.template.spec.containers[0].ports[0].containerPort: invalid value: integer `99999999999`, expected i32"
        );
        assert_eq!(i.metadata.name.as_deref(), Some("b"));
        assert_eq!(i.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(i.metadata.generation, Some(2));
        assert!(i.metadata.managed_fields.is_none());
    }

    #[test]
    fn listed_objects_decode_one_by_one() {
        let list = json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "9" },
                           "items": [stored(1, json!([])), stored(99_999_999_999, json!([])), stored(2, json!([]))] });
        let list: kube::core::ObjectList<Listed> = serde_json::from_str(&list.to_string()).unwrap();
        let kinds: Vec<bool> = list.items.iter().map(|l| matches!(l, Listed::Batch(_))).collect();
        assert_eq!(kinds, [true, false, true]);
    }

    #[test]
    fn the_mark_is_written_once_and_keeps_other_conditions() {
        let degraded = json!({ "type": "Degraded", "status": "False", "reason": "NoFailedShards", "message": "",
                               "lastTransitionTime": "2026-01-01T00:00:00Z" });
        let ready = json!({ "type": "Ready", "status": "False", "reason": "Running", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z" });
        let i = invalid(stored(99_999_999_999, json!([ready, degraded])));
        let patch = i.mark_patch(now()).expect("a first mark");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        let types: Vec<&str> = conditions.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["Ready", "Degraded", "Reconciling", "Stalled"]);
        let stalled = &conditions[3];
        assert_eq!((stalled["status"].as_str(), stalled["reason"].as_str()), (Some("True"), Some("InvalidObject")));
        assert_eq!(stalled["observedGeneration"], 2);
        assert_eq!(stalled["lastTransitionTime"], "2026-01-02T10:00:00Z");
        assert!(stalled["message"].as_str().unwrap().contains("containerPort"));
        // Ready was False already: its transition time stays.
        assert_eq!(conditions[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(conditions[1], degraded);

        // Once marked, the same object (e.g. seen again in a relist, later) needs no write.
        let marked = invalid(stored(99_999_999_999, Value::Array(conditions.clone())));
        assert_eq!(marked.mark_patch("2026-01-03T00:00:00Z".parse().unwrap()), None);
    }

    #[test]
    fn a_deleted_batch_is_not_marked_but_let_go_by_the_mirror() {
        let mut v = stored(99_999_999_999, json!([]));
        v["metadata"]["deletionTimestamp"] = json!("2026-01-02T10:00:00Z");
        v["metadata"]["finalizers"] = json!(["example.com/other", MIRROR_FINALIZER]);
        let i = invalid(v.clone());
        let ops = i.release_patch().expect("the mirror's finalizer is there");
        assert_eq!(
            ops,
            json!([
                { "op": "test", "path": "/metadata/uid", "value": "u" },
                { "op": "test", "path": "/metadata/finalizers/1", "value": MIRROR_FINALIZER },
                { "op": "remove", "path": "/metadata/finalizers/1" },
            ])
        );
        let (d, mut marks, _) = decoder();
        d.report(&i);
        assert_eq!(marks.try_recv().unwrap().what, What::ReleaseFinalizer(ops));

        // Without our finalizer there is nothing to let go, and a deleted batch is not marked.
        v["metadata"]["finalizers"] = json!(["example.com/other"]);
        assert_eq!(invalid(v.clone()).release_patch(), None);
        d.report(&invalid(v));
        assert!(marks.try_recv().is_err());
        // Not being deleted: nothing to let go.
        assert_eq!(invalid(stored(99_999_999_999, json!([]))).release_patch(), None);
    }

    #[test]
    fn long_errors_are_cut() {
        let mut i = invalid(stored(99_999_999_999, json!([])));
        i.error = "é".repeat(2000);
        let message = i.message();
        assert!(message.len() <= MAX_MESSAGE && message.ends_with("..."), "{}", message.len());
    }

    fn decoder() -> (Decoder, mpsc::UnboundedReceiver<Mark>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::unbounded_channel();
        (Decoder::new(metrics.clone(), tx), rx, metrics)
    }

    fn listed(port: i64, name: &str) -> Listed {
        let mut v = stored(port, json!([]));
        v["metadata"]["name"] = json!(name);
        Listed::from_value(v)
    }

    #[test]
    fn the_decoder_keeps_good_batches_counts_bad_ones_and_asks_to_mark_them() {
        let (mut d, mut marks, metrics) = decoder();
        assert!(matches!(d.on_event(Event::Init), Some(Event::Init)));
        assert!(matches!(d.on_event(Event::InitApply(listed(1, "good"))), Some(Event::InitApply(_))));
        assert!(d.on_event(Event::InitApply(listed(99_999_999_999, "bad"))).is_none());
        assert!(matches!(d.on_event(Event::InitDone), Some(Event::InitDone)));
        assert_eq!(metrics.invalid_objects.get(), 1);
        let mark = marks.try_recv().unwrap();
        assert_eq!(mark.name, "bad");
        assert!(matches!(mark.what, What::Stalled(_)));

        // A good batch turning bad leaves the cache; turning good again comes back.
        match d.on_event(Event::Apply(listed(99_999_999_999, "good"))) {
            Some(Event::Delete(b)) => assert_eq!(b.metadata.name.as_deref(), Some("good")),
            other => panic!("{other:?}"),
        }
        assert_eq!(metrics.invalid_objects.get(), 2);
        assert!(matches!(d.on_event(Event::Apply(listed(1, "good"))), Some(Event::Apply(_))));
        assert_eq!(metrics.invalid_objects.get(), 1);

        // A relist starts the count afresh; a deleted bad batch is no longer counted.
        d.on_event(Event::Init);
        d.on_event(Event::InitApply(listed(99_999_999_999, "bad")));
        d.on_event(Event::InitDone);
        assert_eq!(metrics.invalid_objects.get(), 1);
        assert!(matches!(d.on_event(Event::Delete(listed(99_999_999_999, "bad"))), Some(Event::Delete(_))));
        assert_eq!(metrics.invalid_objects.get(), 0);
    }
}
