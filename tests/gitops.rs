//! GitOps compatibility: the Argo CD health check (deploy/argocd/health.lua) run by a real Lua
//! interpreter on its health_test.yaml cases, and Flux's kstatus (sigs.k8s.io/cli-utils
//! status.Compute, through tests/tools/kstatus) and the Argo CD check on live batches in every
//! phase, reconciled by the controller on the local control plane.
//!
//! Needs `lua5.4` (Debian package lua5.4), Go (to build tests/tools/kstatus once) and a running
//! cluster (`tests/cluster/up`). Fails, never skips, without them.

mod install;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use install::{ControllerProcess, repo, run_ok, tool, wait_for_phase};
use serde_json::Value;
use support::{TestNamespace, cluster, ensure_crd, kubectl, kubectl_stdin};

fn argocd_dir() -> PathBuf {
    repo().join("deploy/argocd")
}

fn lua() -> PathBuf {
    let found = Command::new("sh").args(["-c", "command -v lua5.4"]).output().expect("run sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        found.status.success() && !path.is_empty(),
        "lua5.4 is not installed: the Argo CD health check tests need a real Lua interpreter \
         (`apt-get install lua5.4`; .ci/run installs it)"
    );
    PathBuf::from(path)
}

/// A Lua table constructor for a JSON value, as Argo CD hands objects to health scripts: objects
/// are tables keyed by strings, arrays are sequences, nulls are absent, integers stay integers.
fn to_lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            format!("{{{}}}", items.iter().filter(|i| !i.is_null()).map(to_lua).collect::<Vec<_>>().join(", "))
        }
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), to_lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// Runs health.lua on `object` with the harness; returns (status, message).
fn argo_health(object: &Value, scratch: &Path) -> (String, String) {
    let input = scratch.join(format!("object-{}.lua", object["metadata"]["name"].as_str().unwrap_or("x")));
    std::fs::write(&input, format!("return {}\n", to_lua(object))).unwrap();
    let mut cmd = Command::new(lua());
    cmd.arg(repo().join("tests/tools/argocd-health/harness.lua")).arg(argocd_dir().join("health.lua")).arg(&input);
    let out = run_ok(cmd);
    let (status, message) = out.split_once('\n').unwrap_or((out.as_str(), ""));
    (status.to_string(), message.to_string())
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(y).unwrap()
}

#[test]
fn argo_cd_health_check_passes_every_case_of_its_health_test_yaml() {
    let dir = argocd_dir();
    let tests = yaml_file(&dir.join("health_test.yaml"));
    let cases = tests["tests"].as_array().expect("tests: [...]");
    let scratch = tempfile::tempdir().unwrap();
    let mut seen = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases {
        let input = case["inputPath"].as_str().expect("inputPath");
        let want_status = case["healthStatus"]["status"].as_str().expect("healthStatus.status");
        let want_message = case["healthStatus"]["message"].as_str().unwrap_or("");
        let object = yaml_file(&dir.join(input));
        let (status, message) = argo_health(&object, scratch.path());
        if status != want_status || message != want_message {
            failures.push(format!("{input}: got {status} {message:?}, want {want_status} {want_message:?}"));
        }
        *seen.entry(want_status.to_string()).or_insert(0) += 1;
    }
    assert!(failures.is_empty(), "health.lua failed cases:\n{}", failures.join("\n"));
    for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(seen.contains_key(status), "no case expects {status}: {seen:?}");
    }
    // Every testdata file is a case.
    let files = std::fs::read_dir(dir.join("testdata")).unwrap().count();
    assert_eq!(files, cases.len(), "testdata files without a case in health_test.yaml");
}

/// The harness really runs the script: a broken script fails, a wrong status is caught.
#[test]
fn lua_harness_rejects_broken_scripts() {
    let scratch = tempfile::tempdir().unwrap();
    let input = scratch.path().join("obj.lua");
    std::fs::write(&input, "return {[\"status\"] = {[\"phase\"] = \"Running\"}}\n").unwrap();
    for (script, why) in [
        ("local f = io.open('/etc/passwd') return {status = 'Healthy'}", "io is not available to health scripts"),
        ("return {status = 'Fine'}", "not an Argo CD health status"),
        ("return obj.status.nope.deeper", "runtime error"),
    ] {
        let path = scratch.path().join("bad.lua");
        std::fs::write(&path, script).unwrap();
        let out = Command::new(lua())
            .arg(repo().join("tests/tools/argocd-health/harness.lua"))
            .arg(&path)
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "harness accepted a script where {why}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// deploy/argocd/README.md's argocd-cm snippet is health.lua verbatim.
#[test]
fn argocd_cm_snippet_in_the_readme_is_the_shipped_health_lua() {
    let readme = std::fs::read_to_string(argocd_dir().join("README.md")).unwrap();
    let key = "resource.customizations.health.predictions.dev_PredictionBatch";
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains(key))
        .unwrap_or_else(|| panic!("no ```yaml block with {key} in deploy/argocd/README.md"));
    let cm: serde_yaml::Value = serde_yaml::from_str(block).expect("the snippet is YAML");
    let script = cm["data"][key].as_str().expect("data.<key> is a string");
    let shipped = std::fs::read_to_string(argocd_dir().join("health.lua")).unwrap();
    assert_eq!(script, shipped, "deploy/argocd/README.md's snippet differs from health.lua");
}

fn batch_yaml(name: &str, extra_spec: &str, worker_metadata: &str) -> String {
    format!(
        r#"apiVersion: predictions.dev/v1alpha1
kind: PredictionBatch
metadata:
  name: {name}
spec:
  gameDate: "2026-01-02"
  targetCount: 10
  parallelism: 10
{extra_spec}
  worker:
    backoffLimitPerShard: 0
    template:
      metadata: {worker_metadata}
      spec:
        containers:
          - name: worker
            image: registry.example.com/nba/prediction-worker:1.4.2
  consolidation:
    template:
      spec:
        containers:
          - name: consolidate
            image: registry.example.com/nba/prediction-consolidator:1.4.2
"#
    )
}

/// kstatus (what Flux's health checks compute) and the Argo CD check, on live batches the
/// controller reconciled into each phase.
#[test]
fn kstatus_and_argo_cd_health_of_live_batches_in_every_phase() {
    ensure_crd();
    let kstatus = tool("kstatus");
    let ns = TestNamespace::new("gitops-phases");
    let log_dir = tempfile::Builder::new().prefix("gitops-").tempdir_in(repo().join("target")).unwrap();
    let mut cmd = Command::new(install::BINARY);
    cmd.args(["run", "--namespace", ns.name(), "--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &cluster().controller_kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1");
    let mut controller = ControllerProcess::spawn(cmd, log_dir.path().join("controller.log"));
    controller.wait_for_log("starting", Duration::from_secs(30));

    // (name, manifest, phase, kstatus, Argo CD health)
    let cases = [
        (
            "running",
            batch_yaml("running", "", r#"{annotations: {"test.predictions.dev/run-for": "10m"}}"#),
            "Running",
            "InProgress",
            "Progressing",
        ),
        ("succeeded", batch_yaml("succeeded", "", "{}"), "Succeeded", "Current", "Healthy"),
        (
            "failed",
            batch_yaml(
                "failed",
                "  completion:\n    minSucceededPercent: 100",
                r#"{labels: {"test.predictions.dev/fail": "shards-3-7"}}"#,
            ),
            "Failed",
            "Failed",
            "Degraded",
        ),
        // Suspended: Ready=Unknown (reason Suspended), which kstatus reads as InProgress
        // (documented in deploy/argocd/README.md).
        ("suspended", batch_yaml("suspended", "  suspend: true", "{}"), "Suspended", "InProgress", "Suspended"),
    ];
    for (_, manifest, ..) in &cases {
        kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], manifest);
    }
    for (name, _, phase, ..) in &cases {
        wait_for_phase(ns.name(), name, phase, Duration::from_secs(120), &controller);
    }
    // The running batch has its pods running (not just created), so InProgress is about work.
    let list = kubectl(&["get", "predictionbatches.predictions.dev", "-n", ns.name(), "-o", "json"]);
    let mut child = Command::new(&kstatus)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(list.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kstatus failed: {}", String::from_utf8_lossy(&out.stderr));
    let results: BTreeMap<String, Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("kstatus JSON line"))
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect();
    let live: Value = serde_json::from_str(&list).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let mut wrong = Vec::new();
    for (name, _, phase, want_kstatus, want_argo) in &cases {
        let r = &results[*name];
        let object = live["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == *name).unwrap();
        let (argo, argo_message) = argo_health(object, scratch.path());
        report.push(format!("{phase:10} kstatus {} ({}) | Argo CD {argo} ({argo_message})", r["status"], r["message"]));
        if r["status"] != *want_kstatus || argo != *want_argo {
            wrong.push(format!(
                "{name}: kstatus {} (want {want_kstatus}), Argo CD {argo} (want {want_argo})\n{r}\n{object:#}",
                r["status"]
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), controller.log_tail());

    // A spec change the controller has not observed yet is InProgress for kstatus and Progressing
    // for Argo CD: stop the controller, change the succeeded batch, look.
    assert!(controller.terminate(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", controller.log_tail());
    kubectl(&[
        "patch",
        "predictionbatches.predictions.dev",
        "succeeded",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"spec":{"parallelism":5}}"#,
    ]);
    let object: Value = serde_json::from_str(&kubectl(&[
        "get",
        "predictionbatches.predictions.dev",
        "succeeded",
        "-n",
        ns.name(),
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(object["metadata"]["generation"], 2);
    let mut cmd = Command::new(&kstatus);
    let file = scratch.path().join("succeeded-gen2.json");
    std::fs::write(&file, object.to_string()).unwrap();
    cmd.arg(&file);
    let r: Value = serde_json::from_str(run_ok(cmd).trim()).unwrap();
    assert_eq!(r["status"], "InProgress", "{r}");
    assert_eq!(argo_health(&object, scratch.path()).0, "Progressing");
}
