//! The PredictionSchedule CustomResourceDefinition as shipped in `crds/`: the derived schema, with
//! `batchTemplate.spec` replaced by the batch CRD's own spec schema (so a template is checked at
//! admission as a batch would be), and the schedule's own rules.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::PredictionSchedule;

/// The longest schedule name: it is the value of the `predictions.dev/schedule` label on every
/// batch it creates, and label values hold 63 characters.
pub const MAX_SCHEDULE_NAME: usize = 63;

/// The CRD, with every admission rule applied.
pub fn definition() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(PredictionSchedule::crd()).expect("CRD serializes");
    let root = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    root["x-kubernetes-validations"] = json!([
        {
            "rule": format!("size(self.metadata.name) <= {MAX_SCHEDULE_NAME}"),
            "message": format!("metadata.name must be at most {MAX_SCHEDULE_NAME} characters: it is the value of the predictions.dev/schedule label on every batch the schedule creates")
        },
        {
            "rule": "!self.metadata.name.contains('.')",
            "message": "metadata.name must not contain dots: batches are named <schedule>-<yyyymmdd>-<hhmm> and must not contain dots either"
        }
    ]);
    let spec = &mut root["properties"]["spec"];
    spec["properties"]["batchTemplate"]["properties"]["spec"] = template_spec_schema();
    let props = &mut spec["properties"];
    props["schedule"]["minLength"] = json!(1);
    props["schedule"]["maxLength"] = json!(128);
    props["timeZone"]["maxLength"] = json!(64);
    props["timeZone"]["x-kubernetes-validations"] = json!([{
        "rule": format!("self in {}", serde_json::to_string(&time_zone_names()).expect("names serialize")),
        "message": "timeZone is not an IANA time zone name (e.g. America/New_York, Europe/London, Asia/Kolkata, UTC)"
    }]);
    props["completeByAfter"]["maxLength"] = json!(32);
    props["completeByAfter"]["pattern"] = json!(COMPLETE_BY_AFTER_PATTERN);
    for (field, min, max) in [
        ("gameDateOffsetDays", -7, 7),
        ("startingDeadlineSeconds", 0, i64::from(i32::MAX)),
        ("successfulBatchesHistoryLimit", 0, 1000),
        ("failedBatchesHistoryLimit", 0, 1000),
    ] {
        props[field]["minimum"] = json!(min);
        props[field]["maximum"] = json!(max);
        props[field]["format"] = json!(if field == "startingDeadlineSeconds" { "int64" } else { "int32" });
    }
    spec["x-kubernetes-validations"] = json!([{
        // A batch's backups race its completeBy; a schedule may give it through completeByAfter.
        "rule": "!has(self.batchTemplate.spec.completion) || !has(self.batchTemplate.spec.completion.backupStragglers) || !self.batchTemplate.spec.completion.backupStragglers || has(self.batchTemplate.spec.completion.completeBy) || has(self.completeByAfter)",
        "message": "batchTemplate.spec.completion.backupStragglers needs a deadline: set completeByAfter (or batchTemplate.spec.completion.completeBy)",
        "fieldPath": ".batchTemplate.spec.completion.backupStragglers"
    }]);
    root["properties"]["status"]["properties"]["conditions"]["description"] = json!(
        "Ready (True: runs are created on time, or the schedule is suspended) and Stalled (True: it cannot run; reason InvalidSchedule, InvalidTemplate or BatchNameTaken)."
    );
    serde_json::from_value(crd).expect("CRD deserializes")
}

/// A duration after the scheduled time: `+5h30m`, `90m`, `2h`, `1h15m30s`.
pub const COMPLETE_BY_AFTER_PATTERN: &str = "^\\+?([0-9]+h([0-9]+m)?([0-9]+s)?|[0-9]+m([0-9]+s)?|[0-9]+s)$";

/// The batch CRD's spec schema, without what a run sets (`gameDate`) or what only makes sense on
/// a stored batch (`rerun`, and every transition rule: a template may change freely).
fn template_spec_schema() -> Value {
    let batch = serde_json::to_value(super::crd::definition()).expect("CRD serializes");
    let mut spec = batch["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    let props = spec["properties"].as_object_mut().expect("the batch spec has properties");
    props.remove("gameDate");
    props.remove("rerun");
    if let Some(required) = spec["required"].as_array_mut() {
        required.retain(|r| r != "gameDate");
    }
    drop_rules(&mut spec, &|rule| {
        rule.contains("oldSelf") || rule.contains("rerun") || rule.contains("backupStragglers")
    });
    spec["description"] = json!(
        "A PredictionBatch spec without gameDate (each run sets it) and without rerun; checked as a batch's spec would be."
    );
    spec
}

/// Removes, at every level, the CEL rules `drop` selects (and rule lists left empty).
fn drop_rules(schema: &mut Value, drop: &dyn Fn(&str) -> bool) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get_mut("x-kubernetes-validations") {
                list.retain(|r| !r["rule"].as_str().is_some_and(drop));
                if list.is_empty() {
                    map.remove("x-kubernetes-validations");
                }
            }
            map.values_mut().for_each(|v| drop_rules(v, drop));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| drop_rules(v, drop)),
        _ => {}
    }
}

/// Every zone name of the IANA database bundled in this binary (what the controller can read).
pub fn time_zone_names() -> Vec<String> {
    let mut names: Vec<String> = jiff::tz::db().available().map(|n| n.as_str().to_string()).collect();
    names.sort();
    names.dedup();
    names
}

/// The CRD as the YAML document checked in under `crds/`.
pub fn yaml() -> String {
    serde_yaml::to_string(&definition()).expect("CRD serializes to YAML")
}

/// Where [`yaml`] is checked in, relative to the repository root.
pub const PATH: &str = "crds/predictions.dev_predictionschedules.yaml";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crd_matches_the_rust_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PATH);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == yaml(),
            "{} is out of date with the Rust types: regenerate it with \
             `cargo run --release -- crd --kind PredictionSchedule > {PATH}`",
            path.display()
        );
    }

    /// As the batch CRD (see `crd::tests`): `kubectl apply -f crds/` client-side keeps the whole
    /// CRD in an annotation, and annotations hold 256 KiB in all.
    #[test]
    fn fits_in_the_client_side_apply_annotation() {
        let json = serde_json::to_string(&definition()).unwrap();
        assert!(json.len() < 240 * 1024, "CRD is {} bytes of JSON", json.len());
    }

    #[test]
    fn names_are_the_contract() {
        let crd = definition();
        assert_eq!(crd.metadata.name.as_deref(), Some("predictionschedules.predictions.dev"));
        let names = &crd.spec.names;
        assert_eq!(names.kind, "PredictionSchedule");
        assert_eq!(names.short_names.as_deref(), Some(&["pbs".to_string()][..]));
        assert_eq!(names.categories.as_deref(), Some(&["predictions".to_string()][..]));
        assert!(crd.spec.versions[0].subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn the_template_is_a_batch_spec_without_game_date_rerun_or_transition_rules() {
        let crd = serde_json::to_value(definition()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let template = &spec["properties"]["batchTemplate"]["properties"]["spec"];
        assert!(template["properties"]["worker"]["properties"]["template"].is_object());
        assert!(template["properties"].get("gameDate").is_none());
        assert!(template["properties"].get("rerun").is_none());
        let text = template.to_string();
        assert!(!text.contains("oldSelf"), "a template may change: no transition rules");
        assert!(text.contains("has(self.targetCount) != has(self.loader)"), "the cross-field rules stay");
        assert!(!template["required"].as_array().unwrap().iter().any(|r| r == "gameDate"));
    }

    #[test]
    fn every_zone_the_crd_admits_is_one_the_controller_reads() {
        let names = time_zone_names();
        assert!(names.len() > 300, "{} zones", names.len());
        for name in ["America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC", "Europe/London"] {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
        for name in &names {
            jiff::tz::TimeZone::get(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn complete_by_after_examples_parse() {
        // The pattern's own test is admission (`tests/schedule.rs`): what it admits, the planner reads.
        for ok in ["+5h30m", "90m", "2h", "1h15m30s", "+45s"] {
            crate::schedule::timing::complete_by(jiff::Timestamp::UNIX_EPOCH, ok).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
