//! GitOps compatibility: the Argo CD health check (deploy/argocd/health.lua) run the way Argo CD
//! runs it (gopher-lua, Argo CD's libraries, through tests/tools/argocd-lua) on its
//! health_test.yaml cases, and Flux's kstatus (sigs.k8s.io/cli-utils status.Compute, through
//! tests/tools/kstatus) and the Argo CD check on live batches in every phase, reconciled by the
//! controller on the local control plane.
//!
//! Needs Go (to build tests/tools/kstatus and tests/tools/argocd-lua once) and a running cluster
//! (`tests/cluster/up`). Fails, never skips, without them.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::batch::wait_for_phase;
use support::controller::BINARY;
use support::controller::Controller;
use support::install::{run_ok, tool};
use support::repo;
use support::{TestNamespace, cluster, ensure_crd, kubectl, kubectl_stdin};

fn argocd_dir() -> PathBuf {
    repo().join("deploy/argocd")
}

/// Runs `cmd` with `input` on its stdin.
fn output_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap_or_else(|e| panic!("write stdin of {what}: {e}"));
    child.wait_with_output().unwrap_or_else(|e| panic!("wait for {what}: {e}"))
}

/// The health Argo CD would show for `object` with `script` as its argocd-cm health script
/// (tests/tools/argocd-lua): Ok((status, message)), or Err(the error Argo CD reports) when the
/// script does not load or run.
fn argocd_lua(script: &Path, object: &Value) -> Result<(String, String), String> {
    let mut cmd = Command::new(tool("argocd-lua"));
    cmd.arg(script);
    let out = output_with_stdin(cmd, object.to_string().as_bytes());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            let hs: Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("argocd-lua printed no health JSON ({e}): {stdout}"));
            let field = |k: &str| hs[k].as_str().unwrap_or_else(|| panic!("argocd-lua: no {k} in {hs}")).to_string();
            Ok((field("status"), field("message")))
        }
        Some(1) => Err(stderr.trim().to_string()),
        _ => panic!("argocd-lua could not run {} ({}):\n{stderr}{stdout}", script.display(), out.status),
    }
}

/// Runs health.lua on `object` as Argo CD does; returns (status, message).
fn argo_health(object: &Value) -> (String, String) {
    argocd_lua(&argocd_dir().join("health.lua"), object)
        .unwrap_or_else(|e| panic!("health.lua failed in Argo CD's Lua VM: {e}\n{object:#}"))
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
    let mut seen = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases {
        let input = case["inputPath"].as_str().expect("inputPath");
        let want_status = case["healthStatus"]["status"].as_str().expect("healthStatus.status");
        let want_message = case["healthStatus"]["message"].as_str().unwrap_or("");
        let object = yaml_file(&dir.join(input));
        let (status, message) = argo_health(&object);
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

/// tests/tools/argocd-lua is Argo CD's Lua, not any Lua: gopher-lua (Lua 5.1) with only the
/// libraries Argo CD opens for an argocd-cm health script. So a health.lua that used Lua 5.3/5.4
/// syntax or a library Argo CD does not open fails here, as it would in Argo CD (where the
/// resource would show as Unknown), instead of passing with a system Lua.
#[test]
fn argocd_lua_runs_health_scripts_in_argo_cds_lua_vm() {
    let object = serde_json::json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionBatch",
        "metadata": {"name": "vm", "generation": 3},
        "status": {"phase": "Running", "observedGeneration": null}
    });
    let scratch = tempfile::tempdir().unwrap();
    let run = |script: &str| {
        let path = scratch.path().join("health.lua");
        std::fs::write(&path, script).unwrap();
        argocd_lua(&path, &object)
    };
    let healthy = |message: &str| Ok(("Healthy".to_string(), message.to_string()));

    // Rejected: Lua 5.3/5.4 only, or libraries Argo CD does not give health scripts.
    for (script, why) in [
        ("return {status = 'Healthy', message = tostring(7 // 2)}", "integer division `//` is Lua 5.3+"),
        ("return {status = 'Healthy', message = tostring(6 & 3)}", "bitwise operators are Lua 5.3+"),
        ("local x <const> = 1 return {status = 'Healthy'}", "<const> variables are Lua 5.4"),
        (
            "return {status = 'Healthy', message = tostring(math.tointeger(3))}",
            "no math library (and tointeger is 5.3+)",
        ),
        ("return {status = 'Healthy', message = string.format('%d', 1)}", "no string library"),
        ("return {status = 'Healthy', message = ('phase'):upper()}", "no string methods either"),
        ("return {status = 'Healthy', message = tostring(os.time())}", "no os global (only require('os'))"),
        ("local f = io.open('/etc/passwd') return {status = 'Healthy'}", "no io library"),
        ("return obj.status.nope.deeper", "a runtime error"),
        ("return 'Healthy'", "a result that is not a table"),
        ("while true do end", "a script running past Argo CD's 1 s limit"),
    ] {
        assert!(run(script).is_err(), "argocd-lua accepted a script with {why}: {script} -> {:?}", run(script));
    }

    // Accepted, as in Argo CD: Lua 5.1 built-ins, the table library, require('os') (time and
    // date only), numbers as Lua 5.1 numbers, JSON null as nil.
    for (script, want) in [
        (
            "return {status = 'Healthy', message = type(setfenv) .. ' ' .. type(unpack) .. ' ' .. type(loadstring)}",
            healthy("function function function"),
        ),
        ("return {status = 'Healthy', message = table.concat({'a', 'b'}, ',')}", healthy("a,b")),
        (
            "local os = require('os') return {status = 'Healthy', message = os.date('!%Y-%m-%d', 0)}",
            healthy("1970-01-01"),
        ),
        (
            "return {status = 'Healthy', message = tostring(obj.metadata.generation / 2) .. ' ' .. tostring(obj.metadata.generation)}",
            healthy("1.5 3"),
        ),
        ("return {status = 'Healthy', message = tostring(obj.status.observedGeneration)}", healthy("nil")),
        // Argo CD's result handling: an unknown status is Unknown, an empty table no health.
        ("return {status = 'Fine'}", Ok(("Unknown".into(), "Lua returned an invalid health status".into()))),
        ("return {}", Ok((String::new(), String::new()))),
    ] {
        assert_eq!(run(script), want, "{script}");
    }

    // tests/tools/versions.env and the tool's go.mod pin the same gopher-lua (Argo CD's).
    let versions = std::fs::read_to_string(repo().join("tests/tools/versions.env")).unwrap();
    let pinned = versions.lines().find_map(|l| l.strip_prefix("GOPHER_LUA_VERSION=")).expect("GOPHER_LUA_VERSION");
    let go_mod = std::fs::read_to_string(repo().join("tests/tools/argocd-lua/go.mod")).unwrap();
    assert!(
        go_mod.contains(&format!("github.com/yuin/gopher-lua {pinned}\n")),
        "go.mod does not require gopher-lua {pinned}"
    );
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
    let mut cmd = Command::new(BINARY);
    cmd.args(["run", "--namespace", ns.name(), "--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &cluster().controller_kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1");
    let mut controller = Controller::spawn(cmd, log_dir.path().join("controller.log"));
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
    let out = output_with_stdin(Command::new(&kstatus), list.as_bytes());
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
        let (argo, argo_message) = argo_health(object);
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
    assert!(controller.stop(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", controller.log_tail());
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
    assert_eq!(argo_health(&object).0, "Progressing");
}
