//! Proves the local control plane of `tests/cluster/` (see `tests/support`): kube-rs connects over
//! rustls, the fake nodes are Ready, and the real Job controller, garbage collector and kwok stages
//! run Indexed Jobs the way the controller's end-to-end tests rely on. Needs a running cluster
//! (`tests/cluster/up`, or `tests/run-all`); fails, never skips, without one.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde_json::Value;
use support::{TestNamespace, cluster, kubectl, kubectl_json, kubectl_output, kubectl_stdin, stages};

const MIN_NODES: usize = 4;

/// A plain batch/v1 Indexed Job; `pod_labels`/`pod_annotations` are YAML map entries (may be empty).
fn indexed_job(
    name: &str,
    completions: u32,
    parallelism: u32,
    extra_spec: &str,
    pod_labels: &[(&str, &str)],
    pod_annotations: &[(&str, &str)],
) -> String {
    let map = |entries: &[(&str, &str)]| {
        if entries.is_empty() {
            "{}".to_string()
        } else {
            let items: Vec<String> = entries.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
            format!("{{{}}}", items.join(", "))
        }
    };
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  completionMode: Indexed
  completions: {completions}
  parallelism: {parallelism}
{extra_spec}
  template:
    metadata:
      labels: {labels}
      annotations: {annotations}
    spec:
      restartPolicy: Never
      containers:
      - name: worker
        image: registry.k8s.io/pause:3.10
"#,
        labels = map(pod_labels),
        annotations = map(pod_annotations),
    )
}

fn job_status(ns: &str, name: &str) -> Value {
    kubectl_json(&["get", "job", name, "-n", ns])["status"].clone()
}

fn has_condition(status: &Value, type_: &str) -> bool {
    status["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}

/// What to print when a wait times out: the Job and its pods.
fn describe(ns: &str, name: &str) -> String {
    let job = kubectl_output(&["get", "job", name, "-n", ns, "-o", "yaml"]);
    let pods = kubectl_output(&["get", "pods", "-n", ns, "-o", "wide", "--show-labels"]);
    format!("job:\n{}\npods:\n{}", String::from_utf8_lossy(&job.stdout), String::from_utf8_lossy(&pods.stdout))
}

fn wait_for_job_condition(ns: &str, name: &str, type_: &str, timeout: Duration) -> Value {
    support::wait_until(
        &format!("Job {ns}/{name} condition {type_}"),
        timeout,
        || {
            let s = job_status(ns, name);
            has_condition(&s, type_).then_some(s)
        },
        || describe(ns, name),
    )
}

#[tokio::test]
async fn kube_rs_lists_ready_fake_nodes() {
    let client = support::client().await;
    let nodes: Api<Node> = Api::all(client);
    let list = nodes
        .list(&ListParams::default().labels(stages::NODE_SELECTOR))
        .await
        .expect("kube-rs lists nodes over rustls");
    let ready: Vec<String> = list
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert!(ready.len() >= MIN_NODES, "expected at least {MIN_NODES} Ready fake nodes, got {ready:?}");

    // The controller's own identity connects too.
    let as_controller: Api<Node> = Api::all(support::controller_client().await);
    as_controller.list(&ListParams::default().limit(1)).await.expect("pbc-controller lists nodes");
}

#[test]
fn kubectl_shows_fake_nodes_ready() {
    let out = kubectl(&["get", "nodes", "-l", stages::NODE_SELECTOR, "--no-headers"]);
    let ready = out.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count();
    assert!(ready >= MIN_NODES, "expected {MIN_NODES}+ Ready nodes:\n{out}");
    // The kubectl of the harness is the one built from v1.35.4.
    let version = kubectl(&["version", "--client", "-o", "json"]);
    assert!(version.contains("v1.35.4"), "kubectl version: {version}");
}

#[test]
fn indexed_job_completes_through_the_job_controller() {
    let ns = TestNamespace::new("job-complete");
    let started = Instant::now();
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &indexed_job("shards", 10, 10, "", &[], &[]));
    let status = wait_for_job_condition(ns.name(), "shards", "Complete", Duration::from_secs(120));
    eprintln!("10-shard Indexed Job Complete after {:?}", started.elapsed());
    assert_eq!(status["succeeded"], 10, "{status}");
    assert_eq!(status["completedIndexes"], "0-9", "{status}");
    assert!(status["failed"].as_i64().unwrap_or(0) == 0, "{status}");
}

#[test]
fn shards_3_and_7_fail_on_every_attempt() {
    let ns = TestNamespace::new("job-fail-3-7");
    kubectl_stdin(
        &["apply", "-n", ns.name(), "-f", "-"],
        &indexed_job(
            "shards",
            10,
            10,
            "  backoffLimitPerIndex: 1\n  maxFailedIndexes: 5",
            &[(stages::FAIL_LABEL, stages::FAIL_SHARDS_3_7)],
            &[],
        ),
    );
    let status = wait_for_job_condition(ns.name(), "shards", "Failed", Duration::from_secs(180));
    assert_eq!(status["failedIndexes"], "3,7", "{status}");
    assert_eq!(status["completedIndexes"], "0-2,4-6,8,9", "{status}");
    assert_eq!(status["succeeded"], 8, "{status}");
    // backoffLimitPerIndex 1: two attempts of each failing index.
    assert_eq!(status["failed"], 4, "{status}");

    // Every failed pod carries a terminated state with exit code 1 (what podFailurePolicy reads).
    let pods = kubectl_json(&["get", "pods", "-n", ns.name(), "--field-selector=status.phase=Failed"]);
    let codes: Vec<i64> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"].as_i64().unwrap_or(-1))
        .collect();
    assert!(!codes.is_empty() && codes.iter().all(|c| *c == 1), "exit codes {codes:?}");
}

#[test]
fn fail_indexes_annotation_fails_only_the_first_attempt() {
    let ns = TestNamespace::new("job-fail-once");
    kubectl_stdin(
        &["apply", "-n", ns.name(), "-f", "-"],
        &indexed_job(
            "shards",
            4,
            4,
            "  backoffLimitPerIndex: 2",
            &[],
            &[(stages::FAIL_INDEXES, "1"), (stages::FAIL_ATTEMPTS, "1"), (stages::EXIT_CODE, "42")],
        ),
    );
    let status = wait_for_job_condition(ns.name(), "shards", "Complete", Duration::from_secs(180));
    assert_eq!(status["completedIndexes"], "0-3", "{status}");
    assert_eq!(status["failed"], 1, "{status}");
}

#[test]
fn straggler_annotation_delays_only_the_chosen_index() {
    let ns = TestNamespace::new("job-straggler");
    let started = Instant::now();
    kubectl_stdin(
        &["apply", "-n", ns.name(), "-f", "-"],
        &indexed_job("shards", 4, 4, "", &[], &[(stages::STRAGGLE_INDEXES, "2"), (stages::STRAGGLE_FOR, "12s")]),
    );
    // The other indexes finish at the normal pace while index 2 still runs.
    let status = support::wait_until(
        "indexes 0, 1 and 3 complete",
        Duration::from_secs(60),
        || {
            let s = job_status(ns.name(), "shards");
            (s["completedIndexes"] == "0,1,3").then_some(s)
        },
        || describe(ns.name(), "shards"),
    );
    assert!(status["active"] == 1, "{status}");
    assert!(started.elapsed() < Duration::from_secs(12), "the non-stragglers took {:?}", started.elapsed());
    wait_for_job_condition(ns.name(), "shards", "Complete", Duration::from_secs(60));
    assert!(started.elapsed() >= Duration::from_secs(12), "the straggler finished after {:?}", started.elapsed());
}

#[test]
fn deleting_a_job_garbage_collects_its_pods() {
    let ns = TestNamespace::new("job-gc");
    kubectl_stdin(
        &["apply", "-n", ns.name(), "-f", "-"],
        &indexed_job("shards", 3, 3, "", &[], &[(stages::RUN_FOR, "10m")]),
    );
    let pods_of_job = || {
        kubectl_json(&["get", "pods", "-n", ns.name(), "-l", "batch.kubernetes.io/job-name=shards"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    support::wait_until(
        "3 running pods",
        Duration::from_secs(60),
        || {
            let pods = pods_of_job();
            (pods.len() == 3 && pods.iter().all(|p| p["status"]["phase"] == "Running")).then_some(())
        },
        || describe(ns.name(), "shards"),
    );
    kubectl(&["delete", "job", "shards", "-n", ns.name(), "--cascade=background", "--wait=false"]);
    support::wait_until(
        "the garbage collector to remove the Job's pods",
        Duration::from_secs(60),
        || pods_of_job().is_empty().then_some(()),
        || describe(ns.name(), "shards"),
    );
}

#[test]
fn audit_log_records_the_controller_identity() {
    let c = cluster();
    let ns = TestNamespace::new("audit");
    let out = kubectl_output(&[
        "--kubeconfig",
        c.controller_kubeconfig.to_str().unwrap(),
        "get",
        "configmaps",
        "-n",
        ns.name(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    support::wait_until(
        "an audit event of user pbc-controller",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(&c.audit_log).unwrap_or_default();
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|e| e["user"]["username"] == "pbc-controller" && e["objectRef"]["namespace"] == ns.name())
                .then_some(())
        },
        || format!("audit log: {}", c.audit_log.display()),
    );
}

#[test]
fn rbac_is_enforced_for_identities_outside_system_masters() {
    let c = cluster();
    let ns = TestNamespace::new("rbac");
    let rbac = c.controller_rbac_kubeconfig.to_str().unwrap();
    let out = kubectl_output(&["--kubeconfig", rbac, "get", "jobs", "-n", ns.name()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Forbidden"),
        "pbc-controller-rbac must be refused without a binding: {stderr}"
    );
    kubectl(&[
        "create",
        "rolebinding",
        "jobs-view",
        "-n",
        ns.name(),
        "--clusterrole=view",
        "--user=pbc-controller-rbac",
    ]);
    support::wait_until(
        "the RoleBinding to take effect",
        Duration::from_secs(10),
        || kubectl_output(&["--kubeconfig", rbac, "get", "jobs", "-n", ns.name()]).status.success().then_some(()),
        String::new,
    );
}
