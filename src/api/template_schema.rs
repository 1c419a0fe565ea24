//! The schema of the embedded pod templates.
//!
//! Why not the full `PodTemplateSpec` schema: k8s-openapi's schema of one pod template is about
//! 337 KB of JSON with its descriptions, so three templates would push the CRD far past the
//! 256 KiB `last-applied-configuration` annotation that `kubectl apply` (client-side) writes,
//! and GitOps tools still apply that way. So the schema describes what users get wrong and
//! what the controller relies on — labels and annotations, a non-empty container list, each
//! container's name and image, restartPolicy — with descriptions, and keeps the rest of the pod
//! spec's *structure* without descriptions so that unknown fields and wrong types are still
//! refused at admission. Semantic validation of the rest (e.g. resource quantities, volume
//! references) is left to the apiserver when the controller creates the Job; a rejected template
//! ends the batch Stalled with the apiserver's message.

use k8s_openapi::api::core::v1::PodSpec;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

/// Schema of a pod template field (`worker.template`, `consolidation.template`, `export.template`).
pub fn pod_template(generator: &mut SchemaGenerator) -> Schema {
    let mut spec = PodSpec::json_schema(generator).to_value();
    strip_descriptions(&mut spec);
    let obj = spec.as_object_mut().expect("PodSpec schema is an object");
    obj.insert(
        "description".into(),
        json!("Pod spec of the stage's pods (core/v1 PodSpec). restartPolicy defaults to Never."),
    );
    let props = obj.get_mut("properties").and_then(Value::as_object_mut).expect("PodSpec schema has properties");
    if let Some(containers) = props.get_mut("containers") {
        containers["minItems"] = json!(1);
        containers["maxItems"] = json!(64);
        containers["description"] = json!("The containers of the pod; at least one.");
        let item = &mut containers["items"];
        item["required"] = json!(["name", "image"]);
        item["properties"]["name"]["minLength"] = json!(1);
        item["properties"]["name"]["description"] = json!("Container name (a DNS label).");
        item["properties"]["image"]["minLength"] = json!(1);
        item["properties"]["image"]["description"] = json!("Container image; required.");
    }
    if let Some(rp) = props.get_mut("restartPolicy") {
        rp["enum"] = json!(["Never", "OnFailure"]);
        rp["description"] = json!("Never (default; needed for per-shard failure policies) or OnFailure.");
    }
    obj.insert("required".into(), json!(["containers"]));

    Schema::try_from(json!({
        "type": "object",
        "description": "Pod template (core/v1 PodTemplateSpec): metadata.labels/annotations and spec.",
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "description": "Labels and annotations given to every pod of the stage.",
                "properties": {
                    "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                    "annotations": { "type": "object", "additionalProperties": { "type": "string" } }
                }
            },
            "spec": spec
        }
    }))
    .expect("a JSON object is a schema")
}

/// Removes `description` keywords (not properties named "description") everywhere below `v`.
fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("description").is_some_and(Value::is_string) {
                map.remove("description");
            }
            for (key, child) in map.iter_mut() {
                if key == "properties" {
                    if let Value::Object(props) = child {
                        props.values_mut().for_each(strip_descriptions);
                    }
                } else {
                    strip_descriptions(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}
