//! No stored object can stop the controller. A PredictionBatch the Rust types cannot hold (a
//! number beyond int32 in a pod template, a status count beyond u32), stored under a CRD without
//! the integer bounds, used to fail the controller's initial list forever, so that after a restart
//! no batch was reconciled again. Here such batches are stored for real (the bounds are taken out
//! of the CRD for a few seconds, then put back), the controller is restarted, and the other batches
//! must run to the end while the bad ones are marked `Stalled` (reason `InvalidObject`) and counted.
//! And a watch that keeps failing must show on `/readyz` and in the metrics.
//!
//! Needs a running cluster (`tests/cluster/up`, or `tests/run-all`); fails, never skips, without one.

mod support;

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use support::batch::{apply, batch, batch_json, condition, phase, wait_batch};
use support::controller::{Controller, Launch};
use support::http::{get as http_get, metric};
use support::{TestNamespace, ensure_crd, kubectl, kubectl_output, kubectl_stdin, wait_until};

const CRD: &str = "predictionbatches.predictions.dev";
const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/predictions.dev_predictionbatches.yaml");
const BEYOND_INT32: i64 = 99_999_999_999;

// ------------------------------------------------------------------------------------ helpers

fn resource_version(ns: &str, name: &str) -> String {
    batch_json(ns, name).expect("the batch exists")["metadata"]["resourceVersion"].as_str().unwrap().to_string()
}

/// A quick batch: 2 shards, all three stages.
fn small(name: &str) -> Value {
    batch(name, json!({ "targetCount": 8 }), json!({}))
}

// --------------------------------------------------------------------- a CRD without the bounds

/// Removes `minimum`/`maximum` everywhere below `v`.
fn strip_bounds(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("minimum");
            map.remove("maximum");
            map.values_mut().for_each(strip_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_bounds),
        _ => {}
    }
}

/// The CRD of `crds/` with the integer bounds taken out of the pod templates and the status, as
/// an older CRD had it. Installed only while bad objects are being stored; the normal CRD is put
/// back when this is dropped, also when the test fails. Tests of other binaries never see it:
/// cargo runs test binaries one after the other, and each applies `crds/` (`ensure_crd`) first.
struct UnboundedCrd {
    probe: Value,
    ns: String,
}

impl UnboundedCrd {
    /// `probe`: a batch that only the unbounded CRD admits, only ever created with server-side dry
    /// runs (the apiserver switches to a changed CRD's schema asynchronously: they tell when).
    fn install(ns: &str, probe: Value) -> Self {
        let guard = UnboundedCrd { probe, ns: ns.to_string() };
        let mut spec = guard.file_spec();
        let schema = &mut spec["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        for stage in ["worker", "consolidation", "export"] {
            strip_bounds(&mut schema["spec"]["properties"][stage]["properties"]["template"]);
        }
        strip_bounds(&mut schema["status"]);
        let out = guard.replace_spec(spec);
        assert!(out.status.success(), "replacing the CRD: {}", String::from_utf8_lossy(&out.stderr));
        wait_until(
            "the apiserver to serve the CRD without bounds",
            Duration::from_secs(30),
            || guard.probe_admitted().then_some(()),
            || guard.probe_output(),
        );
        guard
    }

    fn file_spec(&self) -> Value {
        let file: Value = serde_yaml::from_str(&std::fs::read_to_string(CRD_FILE).unwrap()).unwrap();
        file["spec"].clone()
    }

    /// Replaces the whole spec of the installed CRD (an update, not an apply: nothing of the other
    /// version's schema may survive a merge). A raw PUT, because `kubectl replace` would also
    /// rewrite the `last-applied-configuration` annotation (with this object's resourceVersion in
    /// it, which breaks every later client-side `kubectl apply -f crds/`).
    fn replace_spec(&self, spec: Value) -> std::process::Output {
        let out = kubectl_output(&["get", "crd", CRD, "-o", "json"]);
        let mut crd: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        crd["spec"] = spec;
        let uri = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}");
        kubectl_output_stdin(&["replace", "--raw", &uri, "-f", "-"], &crd.to_string())
    }

    fn probe_output(&self) -> String {
        let out =
            kubectl_output_stdin(&["create", "--dry-run=server", "-n", &self.ns, "-f", "-"], &self.probe.to_string());
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn probe_admitted(&self) -> bool {
        self.probe_output().contains("created (server dry run)")
    }
}

impl Drop for UnboundedCrd {
    fn drop(&mut self) {
        // Never panic here (it may run while a failed test unwinds).
        for _ in 0..5 {
            if self.replace_spec(self.file_spec()).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        // Wait (a while) until the bounds are enforced again.
        for _ in 0..60 {
            if !self.probe_admitted() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("the restored CRD of crds/ still admits {}: does it bound the integers?", self.probe);
    }
}

fn kubectl_output_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::process::Stdio;
    let mut child = support::kubectl_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().unwrap().write_all(input.as_bytes()).expect("write kubectl stdin");
    child.wait_with_output().expect("wait for kubectl")
}

// ------------------------------------------------------------------------------------- tests

/// A batch only a CRD without the integer bounds admits.
fn beyond_int32(name: &str) -> Value {
    let mut b = small(name);
    b["spec"]["worker"]["template"]["spec"]["containers"][0]["ports"] = json!([{ "containerPort": BEYOND_INT32 }]);
    b
}

/// A status patch with a shard count beyond u32.
/// Writes a shard count beyond u32 into the status of batch `name` (needs the unbounded CRD).
fn patch_shards_beyond_u32(ns: &str, name: &str) {
    let patch =
        json!({ "status": { "shards": { "total": 5_000_000_000u64, "succeeded": 0, "failed": 0, "active": 0 } } });
    kubectl(&["patch", "pb", name, "-n", ns, "--subresource=status", "--type=merge", "-p", &patch.to_string()]);
}

fn metrics_of(ctl: &Controller) -> (String, String) {
    let addr = ctl.http_addr();
    let metrics = http_get(&addr, "/metrics").1;
    (addr, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_batches_are_marked_and_counted_and_the_others_run_across_a_restart() {
    ensure_crd();
    let ns = TestNamespace::new("invalid-objects");
    let ns = ns.name();
    let mut ctl = Controller::start("invalid-objects", ns, &[]);

    // A controller that works.
    apply(ns, &small("good-1"));
    wait_batch(ns, "good-1", &ctl, Duration::from_secs(120), "Succeeded", |b| phase(b) == "Succeeded");
    ctl.kill();

    // While it is down, four batches the Rust types cannot hold are stored under a CRD without
    // the integer bounds, which is then put back (the marks below are written under the bounded
    // CRD, which ratchets: unchanged out-of-bounds values may stay).
    let bad_port = beyond_int32("bad-port");
    let mut bad_probe = small("bad-probe");
    bad_probe["spec"]["consolidation"]["template"]["spec"]["containers"][0]["livenessProbe"] =
        json!({ "httpGet": { "path": "/healthz", "port": BEYOND_INT32 } });
    let bad_status = batch("bad-status", json!({ "targetCount": 8, "suspend": true }), json!({}));
    // One that carries the Firestore mirror's finalizer (as with `--firestore-project`).
    let mut bad_finalizer = beyond_int32("bad-finalizer");
    bad_finalizer["metadata"]["finalizers"] = json!(["predictions.dev/firestore-mirror"]);
    {
        let _crd = UnboundedCrd::install(ns, beyond_int32("probe"));
        for bad in [&bad_port, &bad_probe, &bad_status, &bad_finalizer] {
            kubectl_stdin(&["create", "-n", ns, "-f", "-"], &bad.to_string());
        }
        patch_shards_beyond_u32(ns, "bad-status");
    }

    // The restarted controller lists them along with new good batches, which run to the end.
    apply(ns, &small("good-2"));
    apply(ns, &small("good-3"));
    ctl.restart();
    for name in ["good-2", "good-3"] {
        wait_batch(
            ns,
            name,
            &ctl,
            Duration::from_secs(120),
            "Succeeded after a restart among undecodable batches",
            |b| phase(b) == "Succeeded",
        );
    }

    // Each bad batch is marked, naming the field, with a Warning event; none got a Job.
    let marked = |name: &str, field: &str, ctl: &Controller| {
        let b = wait_batch(ns, name, ctl, Duration::from_secs(30), "Stalled with reason InvalidObject", |b| {
            condition(b, "Stalled") == Some(("True".into(), "InvalidObject".into()))
        });
        assert_eq!(condition(&b, "Ready"), Some(("False".into(), "InvalidObject".into())));
        assert_eq!(condition(&b, "Reconciling"), Some(("False".into(), "InvalidObject".into())));
        let stalled = b["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Stalled").unwrap();
        let message = stalled["message"].as_str().unwrap();
        assert!(message.contains(field), "{name}: the message should name {field:?}: {message}");
        assert_eq!(stalled["observedGeneration"], b["metadata"]["generation"]);
        let selector = format!("--field-selector=involvedObject.name={name},reason=InvalidObject");
        wait_until(
            &format!("a Warning event InvalidObject on {name}"),
            Duration::from_secs(10),
            || (!kubectl(&["get", "events", "-n", ns, "-o", "name", &selector]).trim().is_empty()).then_some(()),
            String::new,
        );
    };
    let fields = [
        (
            "bad-port",
            "spec.worker.template.spec.containers[0].ports[0].containerPort: invalid value: integer `99999999999`",
        ),
        (
            "bad-probe",
            "spec.consolidation.template.spec.containers[0].livenessProbe.httpGet.port: invalid value: integer `99999999999`",
        ),
        ("bad-status", "status.shards.total: invalid value: integer `5000000000`"),
        ("bad-finalizer", "spec.worker.template.spec.containers[0].ports[0].containerPort"),
    ];
    for (name, field) in fields {
        marked(name, field, &ctl);
    }
    let jobs = kubectl(&["get", "jobs", "-n", ns, "-o", "name"]);
    assert!(!jobs.contains("bad-"), "Jobs of undecodable batches: {jobs}");

    // Counted, and no failing watch.
    let (addr, metrics) = metrics_of(&ctl);
    assert_eq!(metric(&metrics, "prediction_batch_invalid_objects"), Some(4.0), "{metrics}");
    assert_eq!(metric(&metrics, "prediction_batch_watch_errors_total{watch=\"batches\"}"), Some(0.0), "{metrics}");
    assert_eq!(http_get(&addr, "/readyz"), (200, "ready".to_string()));

    // Marked once: another restart relists them, and writes nothing.
    let versions: Vec<String> = fields.iter().map(|(name, _)| resource_version(ns, name)).collect();
    ctl.kill();
    ctl.restart();
    let addr = ctl.http_addr();
    wait_until(
        "the restarted controller to be ready and count the 4 undecodable batches",
        Duration::from_secs(60),
        || {
            let ready = http_get(&addr, "/readyz").0 == 200;
            let metrics = http_get(&addr, "/metrics").1;
            (ready && metric(&metrics, "prediction_batch_invalid_objects") == Some(4.0)).then_some(())
        },
        || ctl.log_tail(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<String> = fields.iter().map(|(name, _)| resource_version(ns, name)).collect();
    assert_eq!(versions, after, "a relist wrote the marks again");

    // A watched batch that turns unreadable is marked too (and leaves the controller's cache).
    {
        let _crd = UnboundedCrd::install(ns, beyond_int32("probe"));
        patch_shards_beyond_u32(ns, "good-1");
    }
    marked("good-1", "status.shards.total", &ctl);
    let count = |n: f64| {
        wait_until(
            &format!("prediction_batch_invalid_objects to be {n}"),
            Duration::from_secs(30),
            || (metric(&http_get(&addr, "/metrics").1, "prediction_batch_invalid_objects") == Some(n)).then_some(()),
            || http_get(&addr, "/metrics").1,
        )
    };
    count(5.0);

    // Deleting one takes it out of the count.
    kubectl(&["delete", "pb", "bad-port", "-n", ns]);
    count(4.0);

    // A deleted one is not held by the mirror's finalizer, which cannot write its document.
    kubectl(&["delete", "pb", "bad-finalizer", "-n", ns, "--wait=false"]);
    wait_until(
        "bad-finalizer to be gone (the mirror's finalizer removed)",
        Duration::from_secs(30),
        || batch_json(ns, "bad-finalizer").is_none().then_some(()),
        || format!("{:?}\n{}", batch_json(ns, "bad-finalizer").map(|b| b["metadata"].clone()), ctl.log_tail()),
    );
    count(3.0);
}

/// Runs the controller as `user` (admin impersonating it), who may do only what the test grants.
fn impersonating_controller(ns: &str, user: &str) -> Controller {
    Launch::test(user, ns).kubeconfig(&support::impersonating_kubeconfig(user)).start()
}

fn grant(ns: &str, user: &str, resources: &str) {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": { "name": "invalid-objects-test", "namespace": ns },
        "rules": resources.split(',').map(|r| {
            let (resource, group) = r.split_once('.').unwrap_or((r, ""));
            json!({ "apiGroups": [group], "resources": [resource], "verbs": ["get", "list", "watch"] })
        }).collect::<Vec<_>>(),
    });
    kubectl_stdin(&["apply", "-f", "-"], &role.to_string());
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "invalid-objects-test", "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "invalid-objects-test" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
    });
    kubectl_stdin(&["apply", "-f", "-"], &binding.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_keeps_failing_shows_on_readyz_and_in_the_metrics() {
    ensure_crd();
    let ns = TestNamespace::new("watch-failing");
    let ns = ns.name();
    let user = format!("pbc-test-{ns}");
    // Jobs may be watched, PredictionBatches may not: the batch watch fails on every attempt.
    grant(ns, &user, "jobs.batch");
    let ctl = impersonating_controller(ns, &user);
    let addr = ctl.http_addr();
    let log_tail = || {
        let text = std::fs::read_to_string(&ctl.log).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let batches_errors = "prediction_batch_watch_errors_total{watch=\"batches\"}";
    let (readyz, metrics) = wait_until(
        "/readyz and the metrics to show the failing watch of PredictionBatches",
        Duration::from_secs(60),
        || {
            let readyz = http_get(&addr, "/readyz");
            let metrics = http_get(&addr, "/metrics").1;
            let shown = readyz.0 == 503
                && readyz.1.contains("watch of PredictionBatches failing")
                && readyz.1.contains("forbidden")
                && metric(&metrics, batches_errors).is_some_and(|n| n >= 2.0);
            shown.then_some((readyz, metrics))
        },
        || {
            format!(
                "/readyz: {:?}\n/metrics:\n{}\n{}",
                http_get(&addr, "/readyz"),
                http_get(&addr, "/metrics").1.lines().filter(|l| l.contains("watch")).collect::<Vec<_>>().join("\n"),
                log_tail()
            )
        },
    );
    assert!(readyz.1.starts_with("caches not synced; "), "{readyz:?}");
    assert_eq!(metric(&metrics, "prediction_batch_watch_errors_total{watch=\"jobs\"}"), Some(0.0), "{metrics}");
    assert_eq!(metric(&metrics, "prediction_batch_watch_failing_seconds{watch=\"jobs\"}"), Some(0.0), "{metrics}");
    assert!(metric(&metrics, "prediction_batch_watch_failing_seconds{watch=\"batches\"}").is_some(), "{metrics}");

    // Granted: the watch recovers on its next attempt, and the signal clears.
    grant(ns, &user, "jobs.batch,predictionbatches.predictions.dev");
    wait_until(
        "the watch to recover: /readyz 200 and prediction_batch_watch_failing_seconds 0",
        Duration::from_secs(90),
        || {
            let metrics = http_get(&addr, "/metrics").1;
            let clear = metric(&metrics, "prediction_batch_watch_failing_seconds{watch=\"batches\"}") == Some(0.0);
            (http_get(&addr, "/readyz") == (200, "ready".to_string()) && clear).then_some(())
        },
        || format!("/readyz: {:?}\n{}", http_get(&addr, "/readyz"), log_tail()),
    );
}
