//! The schema of the embedded pod templates.
//!
//! Why not the full `PodTemplateSpec` schema: k8s-openapi's schema of one pod template is about
//! 337 KB of JSON with its descriptions, so four templates would push the CRD far past the
//! 256 KiB `last-applied-configuration` annotation that `kubectl apply` (client-side) writes,
//! and GitOps tools still apply that way. So the schema describes what users get wrong and
//! what the controller relies on — labels and annotations, a non-empty container list, each
//! container's name and image, restartPolicy — with descriptions, and keeps the rest of the pod
//! spec's *structure* without descriptions so that unknown fields and wrong types are still
//! refused at admission. Semantic validation of the rest (e.g. resource quantities, volume
//! references) is left to the apiserver when the controller creates the Job; a rejected template
//! ends the batch Stalled with the apiserver's message.
//!
//! Numbers are the exception to "structure only": every integer is bounded to what its Kubernetes
//! type holds (see [`bound_int_or_string`] and `crd::bound_integers`). The apiserver ignores
//! `format: int32` in a CRD, so without bounds it stores a `containerPort` of 99999999999, which
//! no client of the Kubernetes types (this controller included) can read back.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// Schema of a pod template field (`loader.template`, `worker.template`, `consolidation.template`,
/// `export.template`).
pub fn pod_template(_generator: &mut SchemaGenerator) -> Schema {
    let mut spec = pod_spec_schema();
    strip_descriptions(&mut spec);
    let obj = spec.as_object_mut().expect("PodSpec schema is an object");
    obj.insert(
        "description".into(),
        json!("Pod spec of the stage's pods (core/v1 PodSpec). restartPolicy defaults to Never."),
    );
    let props = obj.get_mut("properties").and_then(Value::as_object_mut).expect("PodSpec schema has properties");
    // The apiserver refuses ephemeral containers in a pod template ("ephemeral containers not
    // allowed in pod template": they are only ever added to a running pod), so admission refuses
    // them up front, and each template's schema is a fifth smaller.
    props.remove("ephemeralContainers");
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

/// k8s-openapi's `PodSpec` schema with every subschema inlined (as kube's own generator does), and
/// every `IntOrString` bounded. The schemas of `IntOrString` (an `i32` or a string) and `Quantity`
/// (any number or a string) look alike once inlined, so the PodSpec schema is generated with
/// references first and `IntOrString` is told apart by its reference.
fn pod_spec_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = false).into_generator();
    let spec = PodSpec::json_schema(&mut generator).to_value();
    let int_or_string = generator.subschema_for::<IntOrString>().to_value();
    let int_or_string = int_or_string["$ref"].as_str().expect("IntOrString is referenced, not inlined").to_string();
    let definitions = generator.take_definitions(false);
    inline(spec, &definitions, &int_or_string)
}

/// Replaces every `$ref` below `schema` by the definition it names (keywords next to the `$ref`, the
/// field's description, win), bounding the `IntOrString` one.
fn inline(schema: Value, definitions: &Map<String, Value>, int_or_string: &str) -> Value {
    match schema {
        Value::Object(mut map) => {
            if let Some(Value::String(reference)) = map.remove("$ref") {
                let name = reference.rsplit('/').next().unwrap_or_default();
                let mut target = definitions
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("{reference} is not among the generated definitions"));
                if reference == int_or_string {
                    bound_int_or_string(&mut target);
                }
                let Value::Object(mut merged) = inline(target, definitions, int_or_string) else {
                    panic!("{reference} is not an object schema");
                };
                for (key, value) in map {
                    merged.insert(key, inline(value, definitions, int_or_string));
                }
                return Value::Object(merged);
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, inline(v, definitions, int_or_string))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| inline(v, definitions, int_or_string)).collect()),
        other => other,
    }
}

/// An `IntOrString` holds an `i32`: `minimum` and `maximum` apply to numbers only, so strings are
/// unaffected.
pub fn bound_int_or_string(schema: &mut Value) {
    schema["minimum"] = json!(i32::MIN);
    schema["maximum"] = json!(i32::MAX);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Inlining by reference gives exactly what an inlining generator gives (as kube's does), plus
    /// the bounds of `IntOrString`.
    #[test]
    fn inlined_schema_is_the_pod_spec_schema_with_bounded_int_or_string() {
        fn unbound(v: &mut Value, bounded: &mut usize) {
            match v {
                Value::Object(map) => {
                    if map.get("x-kubernetes-int-or-string") == Some(&json!(true)) && map.remove("maximum").is_some() {
                        map.remove("minimum");
                        *bounded += 1;
                    }
                    map.values_mut().for_each(|c| unbound(c, bounded));
                }
                Value::Array(items) => items.iter_mut().for_each(|c| unbound(c, bounded)),
                _ => {}
            }
        }
        let mut generator = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
        let expected = PodSpec::json_schema(&mut generator).to_value();
        let mut ours = pod_spec_schema();
        let mut bounded = 0;
        unbound(&mut ours, &mut bounded);
        assert_eq!(ours, expected);
        assert_eq!(
            bounded,
            3 * 5 * 2,
            "httpGet/tcpSocket ports of 3 probes and 2 handlers, (init/ephemeral) containers"
        );
    }
}
