//! The CustomResourceDefinition as shipped in `crds/`: the derived schema plus the admission
//! contract that derive attributes can't express well — bounds, formats, cross-field and
//! transition (immutability) rules. Every rule a user can hit is listed here, in one place.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use super::MAX_SHARDS;
use super::PredictionBatch;

/// `conditions` as a list-map keyed by `type`, so server-side apply merges by condition type.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = Condition::json_schema(generator).to_value();
    Schema::try_from(json!({
        "type": "array",
        "description": "Ready, Reconciling, Stalled and Degraded (and MirrorSynced when the Firestore mirror is on).",
        "items": item,
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"]
    }))
    .expect("a JSON object is a schema")
}

/// The CRD, with every admission rule applied.
pub fn definition() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(PredictionBatch::crd()).expect("CRD serializes");
    let root = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    apply_root_rules(root);
    apply_spec_rules(&mut root["properties"]["spec"]);
    bound_integers(root);
    serde_json::from_value(crd).expect("CRD deserializes")
}

/// The CRD as the YAML document checked in under `crds/`.
pub fn yaml() -> String {
    serde_yaml::to_string(&definition()).expect("CRD serializes to YAML")
}

/// RFC 3339 as the planner reads it (`jiff::Timestamp`): the apiserver's `date-time` format checks
/// that the time is real, but admits any number of fraction digits, and the planner reads at most 9
/// (nanoseconds); without this pattern `...:00.1234567891Z` was admitted and then stalled the batch
/// as an invalid spec.
pub const COMPLETE_BY_PATTERN: &str =
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$";

fn set(schema: &mut Value, path: &[&str], key: &str, value: Value) {
    let mut node = schema;
    for p in path {
        node = &mut node["properties"][*p];
    }
    assert!(node.is_object(), "no schema at {path:?}");
    node[key] = value;
}

fn rules(schema: &mut Value, path: &[&str], list: Value) {
    set(schema, path, "x-kubernetes-validations", list);
}

fn immutable(field: &str) -> Value {
    json!({ "rule": "self == oldSelf", "message": format!("{field} is immutable") })
}

/// Rules on the whole object. CEL may read `metadata.name` at the root (it is not in the schema, so
/// the rule can't carry a `fieldPath`; the message names the field).
fn apply_root_rules(root: &mut Value) {
    // A batch name is a DNS subdomain, but the worker Job is named `<batch>-workers` and its Indexed
    // pods get the hostname `<job>-<index>`, a DNS label: the apiserver refuses such a Job ("will not
    // able to create pod with invalid DNS label"), so a dotted batch could only ever fail. Long
    // names are fine (Job names are cut and hashed, see `api::stage`).
    root["x-kubernetes-validations"] = json!([
        {
            "rule": "!self.metadata.name.contains('.')",
            "message": "metadata.name must not contain dots: the worker Job is named after the batch and its pods need DNS-label hostnames"
        }
    ]);
}

fn apply_spec_rules(spec: &mut Value) {
    // Bounds and formats of plain fields.
    set(spec, &["gameDate"], "format", json!("date"));
    set(spec, &["gameDate"], "pattern", json!("^[0-9]{4}-[0-9]{2}-[0-9]{2}$"));
    set(spec, &["gameDate"], "maxLength", json!(10));
    for (path, min, max) in [
        (&["targetCount"][..], 0, Some(100_000)),
        (&["itemsPerShard"], 1, Some(100_000)),
        (&["parallelism"], 1, Some(1000)),
        (&["worker", "backoffLimitPerShard"], 0, Some(1000)),
        (&["worker", "maxFailedShards"], 0, Some(MAX_SHARDS as i64)),
        (&["completion", "minSucceededPercent"], 1, Some(100)),
        (&["completion", "graceSeconds"], 0, Some(7 * 24 * 3600)),
        (&["loader", "backoffLimit"], 0, Some(1000)),
        (&["consolidation", "backoffLimit"], 0, Some(1000)),
        (&["export", "backoffLimit"], 0, Some(1000)),
        (&["ttlSecondsAfterFinished"], 0, None),
    ] {
        set(spec, path, "minimum", json!(min));
        match max {
            Some(max) => set(spec, path, "maximum", json!(max)),
            None => set(spec, path, "maximum", json!(i32::MAX)),
        }
        // schemars writes "uint32"/"int64" formats the apiserver ignores; keep the CRD clean.
        set(spec, path, "format", json!("int32"));
    }
    set(spec, &["rerun", "token"], "minLength", json!(1));
    set(spec, &["rerun", "token"], "maxLength", json!(253));
    set(spec, &["completion", "completeBy"], "format", json!("date-time"));
    set(spec, &["completion", "completeBy"], "pattern", json!(COMPLETE_BY_PATTERN));
    set(spec, &["completion", "completeBy"], "maxLength", json!(64));

    // Immutability: only suspend, parallelism and completion.completeBy may change after creation.
    for field in [
        "gameDate",
        "targetCount",
        "loader",
        "itemsPerShard",
        "worker",
        "consolidation",
        "export",
        "ttlSecondsAfterFinished",
    ] {
        rules(spec, &[field], json!([immutable(&format!("spec.{field}"))]));
    }
    // Workers restart only through the Job: with OnFailure a failing shard restarts inside its pod,
    // the Job never sees a failure (backoffLimitPerShard counts nothing), and a crash-looping
    // shard would hold the batch forever. One-shot stages may use OnFailure (backoffLimit counts
    // their restarts). Ratcheting keeps batches stored before this rule updatable.
    rules(
        spec,
        &["worker", "template", "spec"],
        json!([{
            "rule": "!has(self.restartPolicy) || self.restartPolicy == 'Never'",
            "message": "spec.worker.template.spec.restartPolicy must be Never: with OnFailure a failing shard restarts inside its pod, the Job never counts its retries, and a crash-looping shard would never end the batch",
            "fieldPath": ".restartPolicy"
        }]),
    );
    rules(spec, &["completion", "minSucceededPercent"], json!([immutable("spec.completion.minSucceededPercent")]));
    rules(spec, &["completion", "graceSeconds"], json!([immutable("spec.completion.graceSeconds")]));
    rules(spec, &["completion", "onNoItems"], json!([immutable("spec.completion.onNoItems")]));

    // Cross-field rules, and transition rules for optional fields (a per-field rule only runs when
    // the field exists both before and after, so adding or removing one is checked here).
    spec["x-kubernetes-validations"] = json!([
        {
            // The count is known when the batch is written, or the loader finds it on the day.
            "rule": "has(self.targetCount) != has(self.loader)",
            "message": "exactly one of spec.targetCount and spec.loader must be set: the count is either known when the batch is written or found by the loader",
            "fieldPath": ".targetCount"
        },
        {
            "rule": format!("!has(self.targetCount) || self.targetCount <= self.itemsPerShard * {MAX_SHARDS}"),
            "message": format!("spec.itemsPerShard: too many shards: ceil(targetCount / itemsPerShard) must be at most {MAX_SHARDS}"),
            "fieldPath": ".itemsPerShard"
        },
        {
            // The worker Job's maxFailedIndexes must not exceed its completions (the shard count),
            // or the apiserver refuses the Job and the batch fails. Without division:
            // m <= ceil(t / p)  <=>  (m - 1) * p < t.
            // A loaded count is only known on the day; the controller then caps it at the shard count.
            "rule": "!has(self.worker.maxFailedShards) || !has(self.targetCount) || self.targetCount == 0 || (self.worker.maxFailedShards - 1) * self.itemsPerShard < self.targetCount",
            "message": "spec.worker.maxFailedShards must be at most the number of shards, ceil(targetCount / itemsPerShard)",
            "fieldPath": ".worker.maxFailedShards"
        },
        {
            // A backup is a bet against a deadline: without one, a straggler only costs time.
            "rule": "!has(self.completion) || !has(self.completion.backupStragglers) || !self.completion.backupStragglers || has(self.completion.completeBy)",
            "message": "spec.completion.backupStragglers needs spec.completion.completeBy: backups race stragglers against a deadline",
            "fieldPath": ".completion.backupStragglers"
        },
        {
            "rule": "!has(self.rerun) || self.rerun.from != 'Consolidation' || has(self.consolidation)",
            "message": "spec.rerun.from is Consolidation, but the batch has no consolidation stage",
            "fieldPath": ".rerun.from"
        },
        {
            "rule": "!has(self.rerun) || self.rerun.from != 'Export' || has(self.export)",
            "message": "spec.rerun.from is Export, but the batch has no export stage",
            "fieldPath": ".rerun.from"
        },
        {
            "rule": "has(self.targetCount) == has(oldSelf.targetCount)",
            "message": "spec.targetCount cannot be added or removed after creation",
            "fieldPath": ".targetCount"
        },
        {
            "rule": "has(self.loader) == has(oldSelf.loader)",
            "message": "spec.loader cannot be added or removed after creation",
            "fieldPath": ".loader"
        },
        {
            "rule": "has(self.consolidation) == has(oldSelf.consolidation)",
            "message": "spec.consolidation cannot be added or removed after creation",
            "fieldPath": ".consolidation"
        },
        {
            "rule": "has(self.export) == has(oldSelf.export)",
            "message": "spec.export cannot be added or removed after creation",
            "fieldPath": ".export"
        },
        {
            "rule": "has(self.ttlSecondsAfterFinished) == has(oldSelf.ttlSecondsAfterFinished)",
            "message": "spec.ttlSecondsAfterFinished cannot be added or removed after creation",
            "fieldPath": ".ttlSecondsAfterFinished"
        }
    ]);
}

/// Bounds every integer below `schema` to what its type holds, read from its `format` (bounds
/// already there and tighter stay). The apiserver ignores `format` in a CRD but enforces `minimum`
/// and `maximum`; without them it stores, say, a `containerPort` of 99999999999 or a status count
/// above `u32::MAX`, and then no typed client, this controller included, can read the object.
/// `int64` needs no bounds: the apiserver itself refuses integers that are not int64 (and an
/// `i64::MAX` bound would be read back as the float 2^63).
fn bound_integers(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("integer") {
                let range = match map.get("format").and_then(Value::as_str) {
                    Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX), "int32")),
                    // schemars' format for u32 (status counts); not a format Kubernetes knows.
                    Some("uint32") => Some((0, i64::from(u32::MAX), "int64")),
                    _ => None,
                };
                if let Some((min, max, format)) = range {
                    let min = map.get("minimum").and_then(Value::as_i64).map_or(min, |m| m.max(min));
                    let max = map.get("maximum").and_then(Value::as_i64).map_or(max, |m| m.min(max));
                    map.insert("minimum".into(), json!(min));
                    map.insert("maximum".into(), json!(max));
                    map.insert("format".into(), json!(format));
                }
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crd_matches_the_rust_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/predictions.dev_predictionbatches.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == yaml(),
            "{path} is out of date with the Rust types: regenerate it with \
             `cargo run --release -- crd > crds/predictions.dev_predictionbatches.yaml`"
        );
    }

    /// `kubectl apply` (client-side, as GitOps tools still do) stores the whole CRD in its
    /// `last-applied-configuration` annotation, and annotations may hold 256 KiB in all: keep
    /// 16 KiB of that for the annotation's other content and growth. (Four pod templates take
    /// about 200 KiB; `api_admission` applies the CRD both ways.)
    #[test]
    fn fits_in_the_client_side_apply_annotation() {
        let json = serde_json::to_string(&definition()).unwrap();
        assert!(json.len() < 240 * 1024, "CRD is {} bytes of JSON", json.len());
    }

    /// Every integer holds in its Rust and Kubernetes type: `int32` ones (and `u32` ones, written
    /// as `int64`) are bounded here, `int64` ones by the apiserver itself. Every `IntOrString` (the
    /// `port` of probes and lifecycle handlers, an `i32`) is bounded; quantities (also
    /// int-or-string, but any number) are not.
    #[test]
    fn every_integer_is_bounded_to_its_type() {
        fn walk(path: String, v: &Value, ports: &mut usize, problems: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    // The typed CRD keeps bounds as floats.
                    let bounds =
                        (map.get("minimum").and_then(Value::as_f64), map.get("maximum").and_then(Value::as_f64));
                    if map.get("type").and_then(Value::as_str) == Some("integer") {
                        match (map.get("format").and_then(Value::as_str), bounds) {
                            (Some("int32"), (Some(min), Some(max)))
                                if min >= f64::from(i32::MIN) && max <= f64::from(i32::MAX) => {}
                            (Some("int64"), _) => {}
                            (format, bounds) => problems.push(format!("{path}: {format:?} {bounds:?}")),
                        }
                    }
                    if map.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
                        if path.ends_with(".port") {
                            *ports += 1;
                            if bounds != (Some(f64::from(i32::MIN)), Some(f64::from(i32::MAX))) {
                                problems.push(format!("{path} (IntOrString) is not bounded to i32: {bounds:?}"));
                            }
                        } else if bounds != (None, None) {
                            problems.push(format!("{path} (a quantity) must not be bounded: {bounds:?}"));
                        }
                    }
                    for (key, child) in map {
                        if key == "properties"
                            && let Value::Object(props) = child
                        {
                            for (name, prop) in props {
                                walk(format!("{path}.{name}"), prop, ports, problems);
                            }
                        } else {
                            walk(format!("{path}/{key}"), child, ports, problems);
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| walk(format!("{path}[]"), i, ports, problems)),
                _ => {}
            }
        }
        let crd = serde_json::to_value(definition()).unwrap();
        let (mut ports, mut problems) = (0, Vec::new());
        walk(String::new(), &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], &mut ports, &mut problems);
        assert!(problems.is_empty(), "integers not bounded to their types:\n{}", problems.join("\n"));
        // httpGet and tcpSocket of 3 probes and 2 lifecycle handlers, in containers and init
        // containers (a template has no ephemeral containers), in 4 templates.
        assert_eq!(ports, 4 * 2 * 5 * 2, "IntOrString ports found");
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(status["properties"]["shards"]["properties"]["total"]["maximum"], json!(f64::from(u32::MAX)));
    }

    #[test]
    fn complete_by_pattern_admits_only_what_the_planner_parses() {
        use k8s_openapi::jiff::Timestamp;
        // Each of these matches COMPLETE_BY_PATTERN (the e2e test proves the apiserver admits them).
        for ok in [
            "2026-01-02T19:30:00Z",
            "2026-01-02t19:30:00z",
            "2026-01-02T19:30:00.5+01:00",
            "2026-01-02T19:30:00.123456789-05:00",
        ] {
            ok.parse::<Timestamp>().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // What the pattern exists to refuse: the planner cannot read a tenth fraction digit.
        assert!("2026-01-02T19:30:00.1234567891Z".parse::<Timestamp>().is_err());
    }

    #[test]
    fn names_are_the_contract() {
        let crd = definition();
        assert_eq!(crd.metadata.name.as_deref(), Some("predictionbatches.predictions.dev"));
        let names = &crd.spec.names;
        assert_eq!(names.kind, "PredictionBatch");
        assert_eq!(names.short_names.as_deref(), Some(&["pb".to_string()][..]));
        assert_eq!(names.categories.as_deref(), Some(&["predictions".to_string()][..]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
    }
}
