//! GitOps compatibility: the Argo CD health checks (deploy/argocd/health.lua for PredictionBatch,
//! deploy/argocd/health-schedule.lua for PredictionSchedule) run the way Argo CD runs them
//! (gopher-lua, Argo CD's libraries, through tests/tools/argocd-lua) on their health_test.yaml and
//! health_schedule_test.yaml cases, and Flux's kstatus (sigs.k8s.io/cli-utils status.Compute,
//! through tests/tools/kstatus) and the Argo CD checks on live batches in every phase and live
//! schedules (ready, suspended, stalled), reconciled by the controller on the local control plane.
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
use support::{TestNamespace, cluster, ensure_crd, kubectl, kubectl_json, kubectl_stdin, wait_until};

fn argocd_dir() -> PathBuf {
    repo().join("deploy/argocd")
}

/// One Argo CD health check of deploy/argocd: the kind it is for (its argocd-cm key is
/// `resource.customizations.health.predictions.dev_<kind>`), its script, and its cases in Argo CD's
/// health_test.yaml format.
struct HealthCheck {
    kind: &'static str,
    script: &'static str,
    cases: &'static str,
}

const HEALTH_CHECKS: [HealthCheck; 2] = [
    HealthCheck { kind: "PredictionBatch", script: "health.lua", cases: "health_test.yaml" },
    HealthCheck { kind: "PredictionSchedule", script: "health-schedule.lua", cases: "health_schedule_test.yaml" },
];

impl HealthCheck {
    fn argocd_cm_key(&self) -> String {
        format!("resource.customizations.health.predictions.dev_{}", self.kind)
    }

    /// The check Argo CD runs for `object` (by its kind).
    fn of(object: &Value) -> &'static HealthCheck {
        let kind = object["kind"].as_str().unwrap_or_default();
        HEALTH_CHECKS
            .iter()
            .find(|c| c.kind == kind)
            .unwrap_or_else(|| panic!("no Argo CD health check for kind {kind:?}: {object}"))
    }
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

/// Runs the health check of `object`'s kind (health.lua for a batch, health-schedule.lua for a
/// schedule) on it as Argo CD does; returns (status, message).
fn argo_health(object: &Value) -> (String, String) {
    let script = HealthCheck::of(object).script;
    argocd_lua(&argocd_dir().join(script), object)
        .unwrap_or_else(|e| panic!("{script} failed in Argo CD's Lua VM: {e}\n{object:#}"))
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(y).unwrap()
}

/// Each script passes every case of its health_test.yaml (health.lua: health_test.yaml,
/// health-schedule.lua: health_schedule_test.yaml), each case an object of the script's kind.
#[test]
fn argo_cd_health_checks_pass_every_case_of_their_health_test_yaml() {
    let dir = argocd_dir();
    let mut inputs = BTreeMap::new();
    let mut failures = Vec::new();
    for check in &HEALTH_CHECKS {
        let tests = yaml_file(&dir.join(check.cases));
        let cases = tests["tests"].as_array().unwrap_or_else(|| panic!("{}: tests: [...]", check.cases));
        let mut seen = BTreeMap::new();
        for case in cases {
            let input = case["inputPath"].as_str().expect("inputPath");
            let want_status = case["healthStatus"]["status"].as_str().expect("healthStatus.status");
            let want_message = case["healthStatus"]["message"].as_str().unwrap_or("");
            if let Some(other) = inputs.insert(input.to_string(), check.cases) {
                failures.push(format!("{input}: a case of both {other} and {}", check.cases));
            }
            let object = yaml_file(&dir.join(input));
            assert_eq!(object["kind"], check.kind, "{input}, a case of {}, is not a {}", check.cases, check.kind);
            let (status, message) = argocd_lua(&dir.join(check.script), &object)
                .unwrap_or_else(|e| panic!("{} failed on {input} in Argo CD's Lua VM: {e}", check.script));
            if status != want_status || message != want_message {
                failures.push(format!(
                    "{} on {input}: got {status} {message:?}, want {want_status} {want_message:?}",
                    check.script
                ));
            }
            *seen.entry(want_status.to_string()).or_insert(0) += 1;
        }
        for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
            assert!(seen.contains_key(status), "no case of {} expects {status}: {seen:?}", check.cases);
        }
    }
    assert!(failures.is_empty(), "failed cases:\n{}", failures.join("\n"));
    // Every testdata file is a case (of one of the scripts).
    let files: Vec<String> = std::fs::read_dir(dir.join("testdata"))
        .unwrap()
        .map(|e| format!("testdata/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| !inputs.contains_key(f))
        .collect();
    assert!(
        files.is_empty(),
        "testdata files without a case in health_test.yaml or health_schedule_test.yaml: {files:?}"
    );
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

/// deploy/argocd/README.md's argocd-cm snippet has both keys, each its script verbatim
/// (health.lua, health-schedule.lua).
#[test]
fn argocd_cm_snippet_in_the_readme_is_the_shipped_health_scripts() {
    let readme = std::fs::read_to_string(argocd_dir().join("README.md")).unwrap();
    for check in &HEALTH_CHECKS {
        let key = check.argocd_cm_key();
        let block = readme
            .split("```yaml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.contains(&key))
            .unwrap_or_else(|| panic!("no ```yaml block with {key} in deploy/argocd/README.md"));
        let cm: serde_yaml::Value = serde_yaml::from_str(block).expect("the snippet is YAML");
        let script = cm["data"][key.as_str()].as_str().unwrap_or_else(|| panic!("data.{key} is not a string"));
        let shipped = std::fs::read_to_string(argocd_dir().join(check.script)).unwrap();
        assert_eq!(script, shipped, "deploy/argocd/README.md's snippet ({key}) differs from {}", check.script);
    }
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

/// A PredictionSchedule running `schedule` in New York (a run's batch would finish in seconds on
/// kwok; `0 7 * * *` makes none during the test but at 07:00 New York time).
fn schedule_json(name: &str, schedule: &str, suspend: bool) -> String {
    serde_json::json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionSchedule",
        "metadata": {"name": name},
        "spec": {
            "schedule": schedule,
            "timeZone": "America/New_York",
            "suspend": suspend,
            "batchTemplate": {"spec": {
                "targetCount": 8,
                "itemsPerShard": 4,
                "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}}}
            }}
        }
    })
    .to_string()
}

/// Waits until the controller has written the status of schedule `name`'s current generation with
/// condition `type_` True for `reason`; returns the schedule.
fn wait_for_schedule(ns: &str, name: &str, type_: &str, reason: &str, ctl: &Controller) -> Value {
    let get = || kubectl_json(&["get", "predictionschedules.predictions.dev", name, "-n", ns]);
    wait_until(
        &format!("schedule {ns}/{name} to have {type_}=True ({reason})"),
        Duration::from_secs(60),
        || {
            let s = get();
            let current = s["status"]["observedGeneration"] == s["metadata"]["generation"];
            let holds = s["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == type_ && c["status"] == "True" && c["reason"] == reason);
            (current && holds).then_some(s)
        },
        || format!("{:#}\n{}", get(), ctl.log_tail()),
    )
}

/// kstatus (tests/tools/kstatus) of every object of `list` (`kubectl get -o json`), by name.
fn kstatus_by_name(kstatus: &Path, list: &str) -> BTreeMap<String, Value> {
    let out = output_with_stdin(Command::new(kstatus), list.as_bytes());
    assert!(out.status.success(), "kstatus failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("kstatus JSON line"))
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect()
}

/// kstatus (what Flux's health checks compute) and the Argo CD checks, on live batches the
/// controller reconciled into each phase and live schedules it found ready, suspended or stalled.
#[test]
fn kstatus_and_argo_cd_health_of_live_batches_and_schedules() {
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
    // Schedules: (name, manifest, the condition that turns True, its reason, kstatus, Argo CD
    // health). A suspended schedule is Ready=True (reason Suspended): Current for kstatus, unlike a
    // suspended batch. A four-field expression is Stalled=True (InvalidSchedule).
    let schedules = [
        ("daily", schedule_json("daily", "0 7 * * *", false), "Ready", "Scheduled", "Current", "Healthy"),
        ("paused", schedule_json("paused", "0 7 * * *", true), "Ready", "Suspended", "Current", "Suspended"),
        ("typo", schedule_json("typo", "0 7 * *", false), "Stalled", "InvalidSchedule", "Failed", "Degraded"),
    ];
    for manifest in cases.iter().map(|c| &c.1).chain(schedules.iter().map(|s| &s.1)) {
        kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], manifest);
    }
    for (name, _, phase, ..) in &cases {
        wait_for_phase(ns.name(), name, phase, Duration::from_secs(120), &controller);
    }
    for (name, _, type_, reason, ..) in &schedules {
        wait_for_schedule(ns.name(), name, type_, reason, &controller);
    }
    // The running batch has its pods running (not just created), so InProgress is about work.
    let scratch = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let mut wrong = Vec::new();
    let expected = [
        (
            "predictionbatches.predictions.dev",
            cases.iter().map(|(name, _, phase, k, a)| (*name, *phase, *k, *a)).collect::<Vec<_>>(),
        ),
        (
            "predictionschedules.predictions.dev",
            schedules.iter().map(|(name, _, _, reason, k, a)| (*name, *reason, *k, *a)).collect(),
        ),
    ];
    for (resource, objects) in &expected {
        let list = kubectl(&["get", resource, "-n", ns.name(), "-o", "json"]);
        let results = kstatus_by_name(&kstatus, &list);
        let live: Value = serde_json::from_str(&list).unwrap();
        for (name, state, want_kstatus, want_argo) in objects {
            let r = &results[*name];
            let object = live["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == *name).unwrap();
            let (argo, argo_message) = argo_health(object);
            report.push(format!(
                "{:18} {state:15} kstatus {} ({}) | Argo CD {argo} ({argo_message})",
                object["kind"].as_str().unwrap(),
                r["status"],
                r["message"]
            ));
            if r["status"] != *want_kstatus || argo != *want_argo {
                wrong.push(format!(
                    "{name}: kstatus {} (want {want_kstatus}), Argo CD {argo} (want {want_argo})\n{r}\n{object:#}",
                    r["status"]
                ));
            }
            // A ready schedule's message is the Ready condition's, then its next run.
            if *name == "daily" {
                let next = object["status"]["nextScheduleTime"].as_str().expect("daily has a nextScheduleTime");
                let want = format!(r#"runs "0 7 * * *" in America/New_York; next run at {next}"#);
                if argo_message != want {
                    wrong.push(format!("daily: Argo CD message {argo_message:?}, want {want:?}"));
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), controller.log_tail());

    // A spec change the controller has not observed yet is InProgress for kstatus and Progressing
    // for Argo CD: stop the controller, change the succeeded batch and the daily schedule, look.
    assert!(controller.stop(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", controller.log_tail());
    for (resource, name, patch) in [
        ("predictionbatches.predictions.dev", "succeeded", r#"{"spec":{"parallelism":5}}"#),
        ("predictionschedules.predictions.dev", "daily", r#"{"spec":{"timeZone":"Europe/London"}}"#),
    ] {
        kubectl(&["patch", resource, name, "-n", ns.name(), "--type=merge", "-p", patch]);
        let object: Value =
            serde_json::from_str(&kubectl(&["get", resource, name, "-n", ns.name(), "-o", "json"])).unwrap();
        assert_eq!(object["metadata"]["generation"], 2, "{object:#}");
        let mut cmd = Command::new(&kstatus);
        let file = scratch.path().join(format!("{name}-gen2.json"));
        std::fs::write(&file, object.to_string()).unwrap();
        cmd.arg(&file);
        let r: Value = serde_json::from_str(run_ok(cmd).trim()).unwrap();
        assert_eq!(r["status"], "InProgress", "{name}: {r}");
        assert_eq!(
            argo_health(&object),
            ("Progressing".to_string(), "Waiting for the controller to observe generation 2".to_string()),
            "{name}"
        );
    }
}
