//! `docs/api-reference.md`, generated from the CRD's `openAPIV3Schema` (the one checked in under
//! `crds/`, which the drift test in [`super::crd`] keeps equal to [`super::crd::definition`]):
//! every spec and status field with its type, description, default and validation. Printed by
//! `prediction-batch-controller api-reference`; a unit test fails when the checked-in file is
//! out of date. Generated rather than written so the reference cannot disagree with admission.

use std::fmt::Write;

use serde_json::Value;

/// Where the generated reference is checked in, relative to the repository root.
pub const PATH: &str = "docs/api-reference.md";

/// The command that regenerates [`PATH`].
pub const REGENERATE: &str = "cargo run --release -- api-reference > docs/api-reference.md";

/// The reference of both CRDs ([`super::crd::definition`], then [`super::schedule_crd::definition`]).
pub fn markdown() -> String {
    let batch = render(&serde_json::to_value(super::crd::definition()).expect("CRD serializes"));
    let schedule = render(&serde_json::to_value(super::schedule_crd::definition()).expect("CRD serializes"));
    format!("{batch}\n{schedule}")
}

/// The reference of a CustomResourceDefinition given as JSON (its first version).
pub fn render(crd: &Value) -> String {
    let names = &crd["spec"]["names"];
    let version = &crd["spec"]["versions"][0];
    let root = &version["schema"]["openAPIV3Schema"];
    let kind = names["kind"].as_str().unwrap_or_default();
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# {kind} API reference\n");
    let file = format!("crds/{}_{}.yaml", str_of(&crd["spec"]["group"]), str_of(&names["plural"]));
    let _ = writeln!(
        w,
        "<!-- Generated from the CRD ({file}) by `{REGENERATE}`. Do not edit by hand: a test fails when this file is out of date. -->\n"
    );
    let _ = writeln!(w, "{}\n", one_line(root["description"].as_str().unwrap_or_default()));
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| apiVersion | `{}/{}` |", str_of(&crd["spec"]["group"]), str_of(&version["name"]));
    let _ = writeln!(w, "| kind | `{kind}` |");
    let _ = writeln!(w, "| scope | {} |", str_of(&crd["spec"]["scope"]));
    let _ = writeln!(w, "| plural / singular | `{}` / `{}` |", str_of(&names["plural"]), str_of(&names["singular"]));
    let _ = writeln!(w, "| short names | {} |", code_list(&names["shortNames"]));
    let _ = writeln!(w, "| categories | {} |", code_list(&names["categories"]));
    let subresources: Vec<String> =
        version["subresources"].as_object().map(|m| m.keys().map(|k| format!("`{k}`")).collect()).unwrap_or_default();
    let _ = writeln!(w, "| subresources | {} |\n", subresources.join(", "));

    let object_rules = rules_of(root);
    if !object_rules.is_empty() {
        let _ = writeln!(w, "Rules on the whole object:\n");
        for rule in object_rules {
            let _ = writeln!(w, "- {rule}");
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Printer columns\n");
    let _ = writeln!(w, "| Column | JSONPath | Type | Shown | Description |\n|---|---|---|---|---|");
    for col in version["additionalPrinterColumns"].as_array().into_iter().flatten() {
        let shown = if col["priority"].as_i64().unwrap_or(0) > 0 { "`-o wide`" } else { "always" };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {shown} | {} |",
            str_of(&col["name"]).to_uppercase(),
            code(str_of(&col["jsonPath"])),
            str_of(&col["type"]),
            cell(str_of(&col["description"]))
        );
    }

    for (section, title) in [("spec", "Spec"), ("status", "Status")] {
        let node = &root["properties"][section];
        let _ = writeln!(w, "\n## {title}\n");
        let _ = writeln!(w, "{}\n", one_line(node["description"].as_str().unwrap_or_default()));
        let rules: Vec<String> =
            node["x-kubernetes-validations"].as_array().into_iter().flatten().map(rule_text).collect();
        if !rules.is_empty() {
            let _ = writeln!(w, "Rules across `{section}` fields (each also listed at the field it names):\n");
            for rule in rules {
                let _ = writeln!(w, "- {rule}");
            }
            let _ = writeln!(w);
        }
        if section == "spec" && kind == "PredictionSchedule" {
            let _ = writeln!(
                w,
                "`batchTemplate.spec` is a [PredictionBatch spec](#predictionbatch-api-reference) without `gameDate` and \
                 `rerun`, checked at admission by the same schema and cross-field rules (not the immutability rules).\n"
            );
        } else if section == "spec" {
            let _ = writeln!(
                w,
                "Pod templates (`worker.template`, `consolidation.template`, `export.template`) are core/v1 \
                 `PodTemplateSpec`s. Only their fields with a description below are documented and checked here; \
                 every other pod spec field is accepted with its Kubernetes type (unknown fields and wrong types \
                 are refused) and checked by the apiserver when the controller creates the Job.\n"
            );
        }
        let _ =
            writeln!(w, "| Field | Type | Required | Default | Validation | Description |\n|---|---|---|---|---|---|");
        let mut rows = Vec::new();
        fields(section, node, false, &[], &mut rows);
        for row in rows {
            let _ = writeln!(w, "{row}");
        }
    }
    out
}

/// One table row per field below `node` (depth first, properties in schema order, which is
/// alphabetical in the generated CRD). Inside a pod template only described fields get a row.
/// `inherited` are rules declared higher up whose `fieldPath` points below `node` (path relative
/// to `node`, message): each is listed at the field it names.
fn fields(path: &str, node: &Value, in_template: bool, inherited: &[(String, String)], rows: &mut Vec<String>) {
    let Some(props) = node["properties"].as_object() else { return };
    let required: Vec<&str> = node["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut pointed: Vec<(String, String)> = inherited.to_vec();
    pointed.extend(
        node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["fieldPath"].as_str()?.trim_start_matches('.').to_string(), rule_text(r)))),
    );
    for (name, child) in props {
        let child_path = format!("{path}.{name}");
        let template = in_template || (name == "template" && child["properties"]["spec"].is_object());
        let below: Vec<(String, String)> = pointed
            .iter()
            .filter_map(|(p, r)| Some((p.strip_prefix(&format!("{name}."))?.to_string(), r.clone())))
            .collect();
        if child["description"].is_string() || !in_template {
            let mut validation = validation_of(child);
            validation.extend(pointed.iter().filter(|(p, _)| p == name).map(|(_, r)| r.clone()));
            rows.push(format!(
                "| `{child_path}` | {} | {} | {} | {} | {} |",
                type_of(child),
                if required.contains(&name.as_str()) { "yes" } else { "" },
                child.get("default").map(|d| code(&d.to_string())).unwrap_or_default(),
                validation.join("<br>"),
                cell(&one_line(child["description"].as_str().unwrap_or_default())),
            ));
        }
        if child_path == "spec.batchTemplate.spec" {
            // The batch's spec, documented with PredictionBatch.
            continue;
        }
        fields(&child_path, child, template, &below, rows);
        if child["type"] == "array" {
            fields(&format!("{child_path}[]"), &child["items"], template, &[], rows);
        }
    }
}

fn type_of(node: &Value) -> String {
    let base = match node["type"].as_str() {
        Some("array") => format!("array of {}", type_of(&node["items"])),
        Some("object") if node["additionalProperties"].is_object() && node["properties"].is_null() => {
            format!("map of {}", type_of(&node["additionalProperties"]))
        }
        Some(t) => t.to_string(),
        None if node["x-kubernetes-int-or-string"] == true => "integer or string".to_string(),
        None => "any".to_string(),
    };
    match node["format"].as_str() {
        Some(f) => format!("{base} ({f})"),
        None => base,
    }
}

fn validation_of(node: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let num =
        |k: &str| node[k].as_f64().map(|n| if n.fract() == 0.0 { format!("{}", n as i64) } else { n.to_string() });
    match (num("minimum"), num("maximum")) {
        (Some(lo), Some(hi)) => v.push(format!("{lo}..{hi}")),
        (Some(lo), None) => v.push(format!("≥ {lo}")),
        (None, Some(hi)) => v.push(format!("≤ {hi}")),
        (None, None) => {}
    }
    for (key, label) in
        [("minLength", "min length"), ("maxLength", "max length"), ("minItems", "min items"), ("maxItems", "max items")]
    {
        if let Some(n) = node[key].as_u64() {
            v.push(format!("{label} {n}"));
        }
    }
    if let Some(p) = node["pattern"].as_str() {
        v.push(format!("pattern {}", code(p)));
    }
    if let Some(values) = node["enum"].as_array() {
        // A `null` among the values only repeats `nullable`.
        let values: Vec<String> = values.iter().filter_map(Value::as_str).map(code).collect();
        v.push(format!("one of {}", values.join(", ")));
    }
    if node["nullable"] == true {
        v.push("nullable".into());
    }
    if let Some(keys) = node["x-kubernetes-list-map-keys"].as_array() {
        let keys: Vec<String> = keys.iter().map(|k| code(k.as_str().unwrap_or_default())).collect();
        v.push(format!("list-map keyed by {}", keys.join(", ")));
    }
    v.extend(rules_of(node));
    v
}

/// The CEL rules of `node` that do not name a deeper field (those are listed at that field).
fn rules_of(node: &Value) -> Vec<String> {
    node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["fieldPath"].is_null())
        .map(rule_text)
        .collect()
}

fn rule_text(rule: &Value) -> String {
    format!("{} (CEL {})", cell(str_of(&rule["message"])), code(str_of(&rule["rule"])))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn code_list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(|s| code(str_of(s))).collect();
    items.join(", ")
}

/// An inline code span that is safe inside a table cell (GitHub reads `\|` as a literal `|` there).
fn code(s: &str) -> String {
    let s = s.replace('|', "\\|");
    if s.contains('`') { format!("`` {s} ``") } else { format!("`{s}`") }
}

/// Text safe inside a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Doc comments wrap lines; a table cell must not.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_reference_matches_the_crd() {
        let path = format!("{}/{PATH}", env!("CARGO_MANIFEST_DIR"));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(on_disk == markdown(), "{path} is out of date with the CRD: regenerate it with `{REGENERATE}`");
    }

    /// Every spec and status field of the CRD (outside pod templates) has a row.
    #[test]
    fn every_field_outside_pod_templates_has_a_row() {
        fn walk(path: &str, node: &Value, out: &mut Vec<String>) {
            for (name, child) in node["properties"].as_object().into_iter().flatten() {
                let p = format!("{path}.{name}");
                out.push(p.clone());
                if name != "template" {
                    walk(&p, child, out);
                    walk(&format!("{p}[]"), &child["items"], out);
                }
            }
        }
        let crd = serde_json::to_value(crate::api::crd::definition()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let doc = markdown();
        let mut paths = Vec::new();
        walk("spec", &root["properties"]["spec"], &mut paths);
        walk("status", &root["properties"]["status"], &mut paths);
        assert!(paths.len() > 40, "walked only {paths:?}");
        for p in paths {
            assert!(doc.contains(&format!("| `{p}` |")), "no row for {p}");
        }
        for must in ["`spec.worker.template.spec.restartPolicy`", "one of `Never`, `OnFailure`", "1..100000"] {
            assert!(doc.contains(must), "{must} missing");
        }
    }
}
