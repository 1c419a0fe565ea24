//! The chart's lifecycle beyond install: the CRD upgraded by `helm upgrade` from the previous chart
//! (whose CRD came from crds/ and lacked a field) and kept by `helm uninstall`, and the uninstall
//! path that releases the controller's finalizers, so deleting batches or their namespace after
//! the controller is gone does not hang.
//!
//! Needs a running cluster (`tests/cluster/up`), Helm (tests/tools/build) and the Firestore
//! emulator (`npm ci` in tests/firestore-emulator). Fails, never skips, without them. The tests
//! of this binary change the cluster's CRD and run a controller over a namespace each: they run
//! one at a time.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::batch::{batch_json, phase, wait_for_phase};
use support::controller::BINARY;
use support::controller::Controller;
use support::firestore_emulator;
use support::install::{
    CHART_DIR, Release, controller_lock, helm, of_kind, one_of_kind, output, render, run_ok,
    service_account_kubeconfig, tool_command, unique,
};
use support::repo;
use support::{TestNamespace, ensure_crd, kubectl, kubectl_json, kubectl_output, kubectl_stdin, stages, wait_until};

const CRD: &str = "predictionbatches.predictions.dev";
const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/predictions.dev_predictionbatches.yaml");
const MIRROR_FINALIZER: &str = "predictions.dev/firestore-mirror";
const OUTCOME_FINALIZER: &str = "predictions.dev/record-outcome";
/// The field the "previous" chart's CRD lacks. It has a visible effect: the controller deletes a
/// finished batch's Jobs after that many seconds.
const NEW_FIELD: &str = "ttlSecondsAfterFinished";

fn crd_file() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(CRD_FILE).unwrap()).unwrap()
}

/// The CRD of crds/ without spec.`NEW_FIELD` (and the CEL rule naming it), as an older release
/// of the CRD had it.
fn previous_crd() -> Value {
    let mut crd = crd_file();
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    spec["properties"].as_object_mut().unwrap().remove(NEW_FIELD).expect("the field is in crds/");
    let rules = spec["x-kubernetes-validations"].as_array_mut().unwrap();
    rules.retain(|r| !r["rule"].as_str().unwrap_or("").contains(NEW_FIELD));
    crd
}

/// A version lower than `v` (semver `a.b.c`): the previous patch, minor or major.
fn previous_version(v: &str) -> String {
    let core = v.split(['-', '+']).next().unwrap();
    let n: Vec<u64> = core.split('.').map(|p| p.parse().expect("semver chart version")).collect();
    match n[..] {
        [a, b, c] if c > 0 => format!("{a}.{b}.{}", c - 1),
        [a, b, _] if b > 0 => format!("{a}.{}.0", b - 1),
        [a, _, _] if a > 0 => format!("{}.0.0", a - 1),
        _ => format!("{core}-previous"),
    }
}

/// The previous chart, built in `dir`: this chart as it was before the CRD became a template (CRD
/// in crds/, which Helm installs once and never upgrades; no uninstall hook), with the older CRD,
/// at a lower version.
fn build_previous_chart(dir: &Path) -> (std::path::PathBuf, String) {
    let chart = dir.join("prediction-batch-controller");
    run_ok({
        let mut c = Command::new("cp");
        c.arg("-r").arg(CHART_DIR).arg(&chart);
        c
    });
    std::fs::remove_file(chart.join("templates/crds.yaml")).unwrap();
    std::fs::remove_file(chart.join("templates/release-finalizers.yaml")).unwrap();
    std::fs::remove_dir_all(chart.join("files")).unwrap();
    std::fs::create_dir(chart.join("crds")).unwrap();
    let yaml = serde_yaml::to_string(&previous_crd()).unwrap();
    std::fs::write(chart.join("crds/predictions.dev_predictionbatches.yaml"), yaml).unwrap();
    let meta = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    let current = meta
        .lines()
        .find_map(|l| l.strip_prefix("version:"))
        .expect("version in Chart.yaml")
        .trim()
        .trim_matches('"')
        .to_string();
    let previous = previous_version(&current);
    let meta: String = meta
        .lines()
        .map(|l| if l.starts_with("version:") { format!("version: {previous}\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(chart.join("Chart.yaml"), meta).unwrap();
    (chart, previous)
}

/// Replaces the installed CRD with `crd` (spec, and metadata without Helm's ownership), as a
/// cluster that only ever had `crd` looks. A raw PUT: nothing of the current schema may survive
/// a merge. Puts crds/ back (server-side apply, as `ensure_crd`) when dropped, also on failure.
struct CrdAsOf;

impl CrdAsOf {
    fn set(crd: &Value) -> Self {
        let mut stored = kubectl_json(&["get", "crd", CRD]);
        stored["spec"] = crd["spec"].clone();
        let meta = stored["metadata"].as_object_mut().unwrap();
        meta.remove("labels");
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.retain(|k, _| !k.starts_with("meta.helm.sh/") && !k.starts_with("helm.sh/"));
        }
        let uri = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}");
        kubectl_stdin(&["replace", "--raw", &uri, "-f", "-"], &stored.to_string());
        CrdAsOf
    }
}

impl Drop for CrdAsOf {
    fn drop(&mut self) {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
        let _ = kubectl_output(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
    }
}

/// A batch of `NEW_FIELD: 0`, created with strict field validation: refused as an unknown field
/// by the previous CRD. Server-side dry run unless `create`.
fn create_batch_with_new_field(ns: &str, name: &str, dry_run: bool) -> std::process::Output {
    let mut batch: Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/batch.yaml")).unwrap())
        .expect("examples/batch.yaml");
    batch["metadata"]["name"] = json!(name);
    batch["spec"][NEW_FIELD] = json!(0);
    let mut args = vec!["create", "--validate=strict", "-n", ns, "-f", "-"];
    if dry_run {
        args.push("--dry-run=server");
    }
    support::kubectl_stdin_output(&args, &batch.to_string())
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn stored_field(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][NEW_FIELD]
}

/// Upgrade from the previous chart (CRD from crds/, without `ttlSecondsAfterFinished`) to this
/// one: the CRD is taken over by the release (`--take-ownership`, the documented step; without it
/// Helm refuses), upgraded in place, a batch using the new field is admitted and runs, and
/// `helm uninstall` keeps the CRD and the batch.
#[test]
fn helm_upgrade_from_the_previous_chart_upgrades_the_crd_and_uninstall_keeps_it() {
    ensure_crd();
    let _one_at_a_time = controller_lock();
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("chart-lifecycle-").tempdir_in(repo().join("target")).unwrap();
    let (previous_chart, previous_version) = build_previous_chart(dir.path());
    let _restore = CrdAsOf::set(&previous_crd());
    let ns = TestNamespace::new("lifecycle-crd");
    wait_until(
        "the apiserver to serve the previous CRD (no spec.ttlSecondsAfterFinished)",
        Duration::from_secs(30),
        || text(&create_batch_with_new_field(ns.name(), "probe", true)).contains("unknown field").then_some(()),
        || text(&create_batch_with_new_field(ns.name(), "probe", true)),
    );

    // The previous chart, installed as users have it today.
    let namespace = unique("lifecycle-crd-rel");
    let name = unique("pbc");
    let previous = previous_chart.to_str().unwrap();
    helm(&["install", &name, previous, "-n", &namespace, "--create-namespace", "--set", "replicaCount=0"]);
    let mut release = Release::adopt(&name, &namespace);
    assert!(stored_field(&kubectl_json(&["get", "crd", CRD])).is_null(), "the previous CRD has no {NEW_FIELD}");

    // Helm will not take over an object it did not create without being told to.
    let mut refused = tool_command("helm");
    refused.args(["upgrade", &name, CHART_DIR, "-n", &namespace, "--set", "replicaCount=0"]);
    let refused = output(refused);
    assert!(!refused.status.success(), "helm upgrade adopted a CRD without ownership metadata");
    assert!(text(&refused).contains("invalid ownership metadata"), "{}", text(&refused));

    // The documented upgrade, once: --take-ownership, and (Helm 4's server-side apply) --force-conflicts,
    // since the fields of a CRD applied by hand belong to kubectl.
    let upgraded_at = Instant::now();
    helm(&[
        "upgrade",
        &name,
        CHART_DIR,
        "-n",
        &namespace,
        "--set",
        "replicaCount=0",
        "--take-ownership",
        "--force-conflicts",
    ]);
    eprintln!("helm upgrade {previous_version} -> current took {:?}", upgraded_at.elapsed());
    let crd = kubectl_json(&["get", "crd", CRD]);
    let file = crd_file();
    let (stored, file) = (stored_field(&crd), stored_field(&file));
    assert!(stored["type"] == "integer" && stored["description"] == file["description"], "no {NEW_FIELD}: {stored}");
    assert_eq!(stored["x-kubernetes-validations"], file["x-kubernetes-validations"]);
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    assert_eq!(crd["metadata"]["annotations"]["meta.helm.sh/release-name"], name.as_str());
    assert_eq!(crd["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
    // A second upgrade is a plain one.
    helm(&["upgrade", &name, CHART_DIR, "-n", &namespace, "--set", "replicaCount=0"]);

    // A batch using the new field is admitted (strict validation), stored with it, and runs: the
    // controller deletes its Jobs right after the batch succeeded (ttlSecondsAfterFinished: 0).
    wait_until(
        "the apiserver to serve the upgraded CRD",
        Duration::from_secs(30),
        || create_batch_with_new_field(ns.name(), "probe", true).status.success().then_some(()),
        || text(&create_batch_with_new_field(ns.name(), "probe", true)),
    );
    let created = create_batch_with_new_field(ns.name(), "with-ttl", false);
    assert!(created.status.success(), "{}", text(&created));
    let mut cmd = Command::new(BINARY);
    cmd.args(["run", "--namespace", ns.name(), "--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &support::cluster().controller_kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1");
    let mut controller = Controller::spawn(cmd, dir.path().join("controller.log"));
    let batch = wait_for_phase(ns.name(), "with-ttl", "Succeeded", Duration::from_secs(180), &controller);
    assert_eq!(batch["spec"][NEW_FIELD], 0, "{batch:#}");
    wait_until(
        "the Jobs of the finished batch to be deleted (ttlSecondsAfterFinished: 0)",
        Duration::from_secs(60),
        || kubectl(&["get", "jobs", "-n", ns.name(), "-o", "name"]).trim().is_empty().then_some(()),
        || controller.log_tail(),
    );
    controller.stop(Duration::from_secs(30));

    // Uninstall keeps the CRD (resource-policy keep) and so the batch.
    release.uninstall();
    kubectl(&["get", "crd", CRD]);
    let kept = batch_json(ns.name(), "with-ttl").expect("the batch survives helm uninstall");
    assert_eq!(phase(&kept), "Succeeded");
    let _ = kubectl_output(&["delete", "namespace", &namespace, "--wait=false"]);
    eprintln!("CRD upgrade test took {:?}", started.elapsed());
}

/// The uninstall hook as rendered: a post-delete Job running `release-finalizers` over the
/// watched namespace(s) after the controller's pods are gone, with its own ServiceAccount and
/// only the rights that needs (created before the Job, deleted after it succeeded).
#[test]
fn the_uninstall_hook_renders_with_its_arguments_and_rights() {
    for (scoped, extra) in [(false, vec![]), (true, vec!["--set", "controller.watchNamespace=team-a"])] {
        let docs = render("r", "pbc-system", &extra);
        let hooks: Vec<&Value> =
            docs.iter().filter(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "post-delete").collect();
        let mut kinds: Vec<&str> = hooks.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        kinds.sort();
        let role = if scoped { "Role" } else { "ClusterRole" };
        let binding = format!("{role}Binding");
        let mut expected = vec!["ServiceAccount", role, &binding, "Role", "RoleBinding", "Job"];
        expected.sort();
        assert_eq!(kinds, expected, "scoped={scoped}");
        for h in &hooks {
            let a = &h["metadata"]["annotations"];
            assert_eq!(a["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded");
            let weight = if h["kind"] == "Job" { "0" } else { "-10" };
            assert_eq!(a["helm.sh/hook-weight"], weight, "{} runs after its RBAC", h["kind"]);
        }
        let job = hooks.iter().find(|d| d["kind"] == "Job").unwrap();
        let pod = &job["spec"]["template"]["spec"];
        let sa = "r-prediction-batch-controller-release-finalizers";
        assert_eq!(pod["serviceAccountName"], sa);
        assert_eq!(pod["restartPolicy"], "Never");
        let scope = if scoped { "--namespace=team-a" } else { "--all-namespaces" };
        assert_eq!(
            pod["containers"][0]["args"],
            json!([
                "release-finalizers",
                scope,
                "--wait-for-pods=app.kubernetes.io/name=prediction-batch-controller,app.kubernetes.io/instance=r",
                "--pods-namespace=pbc-system",
                "--wait-timeout=120",
                "--log-format=json",
            ])
        );
        assert_eq!(
            pod["containers"][0]["image"],
            one_of_kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
        );
        // Its pod does not match the selector it waits on (it would wait for itself).
        assert!(job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"].is_null());
        let rules = hooks.iter().find(|d| d["kind"] == role && d["metadata"]["name"] == sa).unwrap();
        assert_eq!(
            rules["rules"],
            json!([
                {"apiGroups": ["predictions.dev"], "resources": ["predictionbatches"], "verbs": ["list", "patch"]},
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "patch"]},
            ])
        );
        assert_eq!(rules["metadata"]["namespace"], if scoped { json!("team-a") } else { Value::Null });
    }
    // The subcommand it runs exists, and insists on a scope.
    let help = run_ok({
        let mut c = Command::new(BINARY);
        c.args(["release-finalizers", "--help"]);
        c
    });
    for flag in
        ["--namespace", "--all-namespaces", "--wait-for-pods", "--pods-namespace", "--wait-timeout", "--log-format"]
    {
        assert!(help.contains(flag), "release-finalizers --help lacks {flag}:\n{help}");
    }
    let unscoped = output({
        let mut c = Command::new(BINARY);
        c.arg("release-finalizers");
        c
    });
    assert!(!unscoped.status.success() && text(&unscoped).contains("--all-namespaces"), "{}", text(&unscoped));
    let off = render("r", "pbc-system", &["--set", "uninstall.releaseFinalizers=false"]);
    assert!(of_kind(&off, "Job").is_empty(), "uninstall.releaseFinalizers=false renders no hook");
}

/// With the Firestore mirror on, a controller runs batches (one finished, one still running), then
/// stops as in `helm uninstall`. Deleting the namespace hangs on the finalizers only the
/// controller removes; the release path (the hook's command, with the hook's rendered arguments
/// and rights) lets it complete, and a second run finds nothing to do.
#[test]
fn after_uninstall_the_release_path_lets_a_namespace_with_mirrored_batches_go() {
    ensure_crd();
    let _one_at_a_time = controller_lock();
    let emulator = firestore_emulator::Emulator::start(0);
    let ns = TestNamespace::new("lifecycle-release");
    let dir = tempfile::Builder::new().prefix("chart-release-").tempdir_in(repo().join("target")).unwrap();

    let mut cmd = Command::new(BINARY);
    cmd.args(["run", "--namespace", ns.name(), "--http-addr", "127.0.0.1:0"])
        .args(["--firestore-project", firestore_emulator::PROJECT])
        .env("KUBECONFIG", &support::cluster().controller_kubeconfig)
        .env("FIRESTORE_EMULATOR_HOST", emulator.host())
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1");
    let mut controller = Controller::spawn(cmd, dir.path().join("controller.log"));
    kubectl(&["apply", "-n", ns.name(), "-f", &repo().join("examples/batch.yaml").to_string_lossy()]);
    let mut running: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/batch.yaml")).unwrap())
            .expect("examples/batch.yaml");
    running["metadata"]["name"] = json!("still-running");
    running["spec"]["worker"]["template"]["metadata"]["annotations"] = json!({ stages::RUN_FOR: "10m" });
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &running.to_string());
    let done = wait_for_phase(ns.name(), "nba-2026-01-02", "Succeeded", Duration::from_secs(180), &controller);
    assert!(finalizers(&done).contains(&MIRROR_FINALIZER.to_string()), "{done:#}");
    wait_until(
        "the running batch's worker Job with the outcome finalizer, and the batch with the mirror's",
        Duration::from_secs(60),
        || {
            let b = batch_json(ns.name(), "still-running")?;
            let jobs = kubectl_json(&["get", "jobs", "-n", ns.name(), "-l", "predictions.dev/batch=still-running"]);
            let held = jobs["items"].as_array()?.iter().any(|j| finalizers(j).contains(&OUTCOME_FINALIZER.to_string()));
            (held && finalizers(&b).contains(&MIRROR_FINALIZER.to_string())).then_some(())
        },
        || controller.log_tail(),
    );
    // Uninstalled: the controller is gone.
    let status = controller.stop(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", controller.log_tail());

    // Before the fix: the namespace's deletion hangs on our finalizers. Once the namespace
    // controller has deleted everything it can, the batches and the running Job stay.
    kubectl(&["delete", "namespace", ns.name(), "--wait=false"]);
    let held = || -> Vec<String> {
        let left = kubectl_json(&["get", "predictionbatches,jobs", "-n", ns.name()]);
        left["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| !o["metadata"]["deletionTimestamp"].is_null())
            .filter(|o| finalizers(o).iter().any(|f| f == MIRROR_FINALIZER || f == OUTCOME_FINALIZER))
            .map(|o| {
                format!(
                    "{}/{} {:?}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or(""),
                    finalizers(o)
                )
            })
            .collect()
    };
    wait_until(
        "the namespace controller to delete the batches and the running Job",
        Duration::from_secs(120),
        || (held().len() == 3).then_some(()),
        || kubectl(&["get", "namespace", ns.name(), "-o", "yaml"]),
    );
    std::thread::sleep(Duration::from_secs(10));
    let stuck = kubectl_json(&["get", "namespace", ns.name()]);
    assert_eq!(stuck["status"]["phase"], "Terminating", "{stuck:#}");
    let held = held();
    assert_eq!(held.len(), 3, "2 batches and the running Job, held by our finalizers: {held:#?}");
    eprintln!("without the release step, namespace {} is still Terminating 10 s later: {held:?}", ns.name());

    // The release path, as the hook runs it: its rendered arguments, as its rendered
    // ServiceAccount with its rendered rights.
    let release_ns = TestNamespace::new("lifecycle-release-rel");
    let rel = unique("pbc");
    let docs = render(&rel, release_ns.name(), &[]);
    let hooks: Vec<&Value> =
        docs.iter().filter(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "post-delete").collect();
    let rbac: Vec<&&Value> = hooks.iter().filter(|d| d["kind"] != "Job").collect();
    let rbac_list = json!({ "apiVersion": "v1", "kind": "List", "items": rbac });
    kubectl_stdin(&["apply", "-f", "-"], &rbac_list.to_string());
    let job = hooks.iter().find(|d| d["kind"] == "Job").expect("the hook Job");
    let sa = job["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap();
    let kubeconfig = dir.path().join("hook.kubeconfig");
    service_account_kubeconfig(release_ns.name(), sa, &kubeconfig);
    let args: Vec<String> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("--log-format=json", "--log-format=text"))
        .collect();
    let release = || {
        let mut cmd = Command::new(BINARY);
        cmd.args(&args).env("KUBECONFIG", &kubeconfig).env("NO_COLOR", "1").env("RUST_LOG", "info");
        let out = output(cmd);
        assert!(out.status.success(), "release-finalizers {args:?} failed:\n{}", text(&out));
        text(&out)
    };
    let released_at = Instant::now();
    let log = release();
    assert!(log.contains("batches=2"), "{log}");
    wait_until(
        "the namespace to be deleted",
        Duration::from_secs(120),
        || (!kubectl_output(&["get", "namespace", ns.name()]).status.success()).then_some(()),
        || kubectl(&["get", "predictionbatches,jobs", "-n", ns.name(), "-o", "yaml"]),
    );
    eprintln!("after the release step, namespace {} was gone in {:?}", ns.name(), released_at.elapsed());
    let everywhere = kubectl(&["get", "predictionbatches,jobs", "-A", "-o", "name"]);
    assert!(!everywhere.contains("still-running"), "{everywhere}");
    // Idempotent: a second run finds nothing to release.
    let again = release();
    assert!(again.contains("batches=0") && again.contains("jobs=0"), "{again}");
    for d in &rbac {
        if d["metadata"]["namespace"].is_null() {
            let _ = kubectl_output(&[
                "delete",
                &d["kind"].as_str().unwrap().to_lowercase(),
                d["metadata"]["name"].as_str().unwrap(),
            ]);
        }
    }
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)).collect()
}
