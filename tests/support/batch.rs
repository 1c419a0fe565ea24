//! PredictionBatches in tests: a manifest like examples/batch.yaml, applying it, reading one back
//! (phase, conditions) and waiting for it, with the batch, its Jobs and the controller's log
//! printed when a wait times out.

use std::time::Duration;

use serde_json::{Value, json};

use super::controller::Controller;
use super::{kubectl_output, kubectl_stdin, wait_until};

/// A batch like examples/batch.yaml (120 items, 4 per shard = 30 shards, all three stages),
/// with `patch` merged into its spec and `worker_meta` merged into the worker template metadata.
pub fn batch(name: &str, spec_patch: Value, worker_meta: Value) -> Value {
    let mut b = json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionBatch",
        "metadata": { "name": name },
        "spec": {
            "gameDate": "2026-01-02",
            "targetCount": 120,
            "itemsPerShard": 4,
            "parallelism": 10,
            "worker": {
                "backoffLimitPerShard": 0,
                "template": {
                    "metadata": { "labels": { "app": "prediction-worker" } },
                    "spec": { "containers": [{ "name": "worker", "image": "example.com/worker:1" }] }
                }
            },
            "consolidation": { "template": { "spec": { "containers": [{ "name": "c", "image": "example.com/consolidate:1" }] } } },
            "export": { "template": { "spec": { "containers": [{ "name": "e", "image": "example.com/export:1" }] } } }
        }
    });
    merge(&mut b["spec"], &spec_patch);
    merge(&mut b["spec"]["worker"]["template"]["metadata"], &worker_meta);
    b
}

pub fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// `kubectl apply` of a manifest in `ns`.
pub fn apply(ns: &str, obj: &Value) {
    kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &obj.to_string());
}

/// The batch `ns/name` as JSON, if it exists.
pub fn batch_json(ns: &str, name: &str) -> Option<Value> {
    let out = kubectl_output(&["get", "predictionbatches.predictions.dev", name, "-n", ns, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("batch JSON"))
}

pub fn phase(b: &Value) -> &str {
    b["status"]["phase"].as_str().unwrap_or("")
}

/// Condition `type_` of a batch, the whole object (status, reason, message, observedGeneration).
pub fn condition_object<'a>(b: &'a Value, type_: &str) -> Option<&'a Value> {
    b["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// Status of condition `type_` of a batch ("True"/"False"/"Unknown"), with its reason.
pub fn condition(b: &Value, type_: &str) -> Option<(String, String)> {
    let c = condition_object(b, type_)?;
    Some((c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string()))
}

/// The batch, its Jobs and pods, and the controller's last log lines: what a failed wait prints.
pub fn describe(ns: &str, name: &str, ctl: &Controller) -> String {
    let show = |args: &[&str]| String::from_utf8_lossy(&kubectl_output(args).stdout).into_owned();
    format!(
        "{}\n{}\n{}",
        show(&["get", "predictionbatches.predictions.dev", name, "-n", ns, "-o", "yaml"]),
        show(&["get", "jobs,pods", "-n", ns, "-o", "wide"]),
        ctl.log_tail()
    )
}

/// Waits until the batch satisfies `pred`, printing [`describe`] on timeout.
pub fn wait_batch(
    ns: &str,
    name: &str,
    ctl: &Controller,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(
        &format!("batch {ns}/{name}: {what}"),
        timeout,
        || batch_json(ns, name).filter(|b| pred(b)),
        || describe(ns, name, ctl),
    )
}

/// Waits for `status.phase == want`, panicking at once if the batch ends in another terminal phase.
pub fn wait_for_phase(ns: &str, name: &str, want: &str, timeout: Duration, ctl: &Controller) -> Value {
    wait_batch(ns, name, ctl, timeout, &format!("phase {want}"), |b| {
        let p = phase(b);
        if p != want && (p == "Succeeded" || p == "Failed") {
            panic!("batch {ns}/{name} ended {p}, expected {want}:\n{b:#}\n{}", ctl.log_tail());
        }
        p == want
    })
}
