//! The chart as a release ships it, through a real OCI registry: `helm package`, `helm push` to
//! the CNCF distribution registry (built by tests/tools/build, run on 127.0.0.1 over plain HTTP
//! with its storage in a temp dir), `helm show chart`/`readme` and the rendered CRD from the registry, and
//! `helm install` from the registry into the test cluster, where the controller runs the example
//! batch to Succeeded with only the rights of the installed release. Helm 3 pushes and pulls the
//! same chart.
//!
//! Needs a running cluster (`tests/cluster/up`) and the Go-built tools (Helm, Helm 3, the
//! registry: built on demand). Fails, never skips, without them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::batch::wait_for_phase;
use support::controller::Controller;
use support::http::get as http_get;
use support::install;
use support::install::{CHART_DIR, Release, assert_nothing_refused, parse_documents, tool_command, unique};
use support::repo;
use support::{TestNamespace, ensure_crd, kubectl_json};

const CHART: &str = "prediction-batch-controller";
/// The chart's version and appVersion (tests/chart.rs holds them equal to it).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/batch.yaml");
const EXAMPLE_NAME: &str = "nba-2026-01-02";

/// A distribution registry (`registry serve`) on 127.0.0.1, on a port the kernel picks, storing
/// in a temp dir; stopped (SIGTERM) and its storage removed when dropped.
struct Registry {
    /// host:port
    addr: String,
    _process: Controller,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let bin = install::tool("registry");
        let dir = tempfile::Builder::new().prefix("oci-registry-").tempdir_in(repo().join("target")).unwrap();
        let config = dir.path().join("config.yml");
        // Port 0: the registry binds a free port itself and logs it, so no other process can take
        // the port between choosing and binding it. JSON logs, for reading that line back.
        let text = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  secret: chart-oci-test\n",
            dir.path().join("storage").display()
        );
        std::fs::write(&config, text).expect("write the registry config");
        let mut cmd = Command::new(&bin);
        // No OpenTelemetry exporter: its default would send traces to localhost:4318.
        cmd.arg("serve").arg(&config).env("OTEL_TRACES_EXPORTER", "none");
        // Its REGISTRY_<SECTION>_<KEY> variables would override the config: none from outside.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let mut process = Controller::spawn(cmd, dir.path().join("registry.log"));
        let cannot_start = |why: String, log: String| -> ! {
            panic!(
                "the OCI registry (CNCF distribution, {}) could not start: {why}\nconfig {}:\n{}\nlog:\n{log}",
                bin.display(),
                config.display(),
                std::fs::read_to_string(&config).unwrap_or_default()
            )
        };
        let started = Instant::now();
        let addr = loop {
            let log = process.log_text();
            if let Some(addr) = listening_addr(&log) {
                break addr;
            }
            if let Some(status) = process.exited() {
                cannot_start(format!("it exited ({status})"), log);
            }
            if started.elapsed() > Duration::from_secs(30) {
                cannot_start("no \"listening on\" log line within 30 s".into(), log);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The OCI distribution API answers (anonymous access: 200 on the base endpoint).
        let (code, body) = http_get(&addr, "/v2/");
        if code != 200 {
            cannot_start(format!("GET http://{addr}/v2/ answered {code}: {body}"), process.log_text());
        }
        Registry { addr, _process: process, _dir: dir }
    }

    /// `oci://<addr>/<path>`
    fn url(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.addr)
    }

    /// The tags of a repository, from the registry's own API (not through Helm).
    fn tags(&self, repository: &str) -> Vec<String> {
        let (code, body) = http_get(&self.addr, &format!("/v2/{repository}/tags/list"));
        assert_eq!(code, 200, "GET /v2/{repository}/tags/list: {body}");
        let list: Value = serde_json::from_str(&body).expect("tags/list JSON");
        list["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
    }
}

/// The address of the registry's `listening on 127.0.0.1:PORT` log line.
fn listening_addr(log: &str) -> Option<String> {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|l| {
        let msg = l["msg"].as_str()?;
        msg.strip_prefix("listening on ").map(|a| a.split([',', ' ']).next().unwrap().to_string())
    })
}

/// `<tool> ARGS...` (`helm` is Helm 4, `helm3` Helm 3): stdout followed by stderr (Helm reports
/// pushes on stderr); panics with both on failure.
fn helm_with(tool: &str, args: &[&str]) -> String {
    let mut cmd = tool_command(tool);
    cmd.args(args);
    let what = format!("{cmd:?}");
    let out = install::output(cmd);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// `helm package` of the chart into `dir`: the path of `prediction-batch-controller-<version>.tgz`.
fn package(dir: &Path) -> PathBuf {
    let out = helm_with("helm", &["package", CHART_DIR, "--destination", dir.to_str().unwrap()]);
    let tgz = dir.join(format!("{CHART}-{VERSION}.tgz"));
    assert!(tgz.is_file(), "helm package wrote no {}:\n{out}", tgz.display());
    tgz
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(repo().join("target")).unwrap()
}

/// The release flow end to end: package, push, read back, install from the registry, run a batch.
#[test]
fn the_chart_pushed_to_an_oci_registry_installs_from_it_and_runs_a_batch() {
    ensure_crd();
    let registry = Registry::start();
    let work = temp_dir("chart-oci-");
    let started = Instant::now();

    // What a release does (README.md, and the chart's README "Versions").
    let tgz = package(work.path());
    let pushed = helm_with("helm", &["push", tgz.to_str().unwrap(), &registry.url("charts"), "--plain-http"]);
    eprintln!("helm package + push took {:?}", started.elapsed());
    assert!(pushed.contains(&format!("{}/charts/{CHART}:{VERSION}", registry.addr)), "{pushed}");
    assert_eq!(registry.tags(&format!("charts/{CHART}")), [VERSION], "tags in the registry");

    // What a user reads before installing, from the registry.
    let chart_ref = registry.url(&format!("charts/{CHART}"));
    let show = |what: &str| install::helm(&["show", what, &chart_ref, "--version", VERSION, "--plain-http"]);
    let chart: serde_yaml::Value = serde_yaml::from_str(&show("chart")).expect("helm show chart is YAML");
    assert_eq!(chart["name"].as_str(), Some(CHART));
    assert_eq!(chart["version"].as_str(), Some(VERSION), "{chart:?}");
    assert_eq!(chart["appVersion"].as_str(), Some(VERSION), "{chart:?}");
    let readme = show("readme");
    let local = std::fs::read_to_string(Path::new(CHART_DIR).join("README.md")).unwrap();
    assert_eq!(readme.trim_end(), local.trim_end(), "helm show readme is not the chart's README.md");
    // The install steps, from the registry itself.
    let install_line = format!("helm install pbc oci://<registry>/charts/{CHART} --version <version>");
    assert!(readme.contains(&install_line), "the chart's README lacks `{install_line}`:\n{readme}");
    for step in ["helm package charts/prediction-batch-controller", "helm push "] {
        assert!(readme.contains(step), "the chart's README lacks the release step `{step}`");
    }
    // The packaged CRD is the repository's (installing it must not change the cluster's CRD): the
    // chart renders it from files/crds/ (crds.install), adding only labels and annotations.
    let by_name = |d: &Value| d["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut crds = std::fs::read_dir(repo().join("crds"))
        .unwrap()
        .flat_map(|e| parse_documents(&std::fs::read_to_string(e.unwrap().path()).unwrap()))
        .collect::<Vec<_>>();
    crds.sort_by_key(by_name);
    assert_eq!(crds.len(), 2, "crds/ holds the PredictionBatch and PredictionSchedule CRDs");
    let rendered = install::helm(&["template", "r", &chart_ref, "--version", VERSION, "--plain-http"]);
    let mut rendered: Vec<Value> = parse_documents(&rendered)
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|mut d| {
            let meta = d["metadata"].as_object_mut().unwrap();
            meta.remove("labels");
            meta.remove("annotations");
            d
        })
        .collect();
    rendered.sort_by_key(by_name);
    assert_eq!(rendered, crds, "the CRDs the packaged chart renders differ from crds/");

    // Installed from the registry (CRDs included). kwok runs no containers, so the Deployment
    // runs no controller here: replicaCount=0, and the controller runs below as a local process
    // with the release's ServiceAccount, as tests/chart.rs does.
    let namespace = unique("chart-oci");
    let installed = Instant::now();
    let mut release = Release::install_chart(
        &chart_ref,
        &unique("pbc"),
        &namespace,
        // The cluster's CRD was applied by other tests, not by a release: take it over, as the
        // chart's README says for a CRD applied by hand.
        &["--version", VERSION, "--plain-http", "--set", "replicaCount=0", "--take-ownership"],
    );
    eprintln!("helm install from {chart_ref} took {:?}", installed.elapsed());
    let list: Value =
        serde_json::from_str(&install::helm(&["list", "--namespace", &namespace, "-o", "json"])).expect("list JSON");
    assert_eq!(list[0]["chart"], format!("{CHART}-{VERSION}"), "{list:#}");
    assert_eq!(list[0]["app_version"], VERSION, "{list:#}");
    // appVersion is the image tag the Deployment gets by default.
    let deploy = kubectl_json(&["get", "deployment", &release.fullname(), "-n", &namespace]);
    let image = deploy["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string();
    assert!(image.ends_with(&format!(":{VERSION}")), "image {image} is not tagged {VERSION}");

    let dir = temp_dir("chart-oci-controller-");
    let cmd = release.controller_command(dir.path(), "chart-oci-test");
    let mut controller = Controller::spawn(cmd, dir.path().join("controller.log"));
    controller.wait_for_log("acquired leadership", Duration::from_secs(30));
    let ns = TestNamespace::new("chart-oci-batch");
    let batch_started = Instant::now();
    // The batch the release's notes offer, pasted as they print it (with <namespace> filled in).
    let notes = install::helm(&["get", "notes", &release.name, "--namespace", &namespace]);
    let command = notes_example_command(&notes).replace("<namespace>", ns.name());
    let cluster = support::cluster();
    let path = format!("{}:{}", cluster.kubectl.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let applied = std::process::Command::new("bash")
        .args(["-euc", &command])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("PATH", path)
        .output()
        .expect("run bash");
    assert!(
        applied.status.success(),
        "the notes' command failed:\n{command}\n{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let batch = wait_for_phase(ns.name(), EXAMPLE_NAME, "Succeeded", Duration::from_secs(180), &controller);
    eprintln!("batch Succeeded under the release installed from the registry in {:?}", batch_started.elapsed());
    assert_eq!(batch["status"]["progress"], "120/120", "{batch:#}");
    let exit = controller.stop(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "no clean exit on SIGTERM: {exit:?}\n{}", controller.log_tail());
    let requests = assert_nothing_refused(&release.service_account(), &controller);
    assert!(requests > 10, "expected the controller's requests in the audit log, found {requests}");
    release.uninstall();
    eprintln!("whole OCI flow took {:?}", started.elapsed());
}

/// The `kubectl apply ... <<'EOF' ... EOF` command of the chart's notes, which ship the example.
fn notes_example_command(notes: &str) -> String {
    let start = notes.find("kubectl apply -n <namespace> -f - <<'EOF'").expect("the notes offer a batch to apply");
    let rest = &notes[start..];
    let end = rest.find("\nEOF\n").expect("the heredoc ends with EOF") + "\nEOF\n".len();
    let command = &rest[..end];
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(command.contains(example.trim()), "the notes ship examples/batch.yaml as it is:\n{command}");
    command.to_string()
}

/// Helm 3 reads what Helm 4 pushed and Helm 4 reads what Helm 3 pushed, byte for byte (the chart
/// layer is the packaged .tgz).
#[test]
fn helm_3_and_helm_4_push_and_pull_the_same_chart() {
    let registry = Registry::start();
    let work = temp_dir("chart-oci-helm3-");
    let tgz = package(work.path());
    let packaged = std::fs::read(&tgz).unwrap();
    for (pusher, repository, puller) in [("helm", "charts", "helm3"), ("helm3", "charts-helm3", "helm")] {
        helm_with(pusher, &["push", tgz.to_str().unwrap(), &registry.url(repository), "--plain-http"]);
        assert_eq!(registry.tags(&format!("{repository}/{CHART}")), [VERSION], "pushed by {pusher}");
        let chart_ref = registry.url(&format!("{repository}/{CHART}"));
        let into = work.path().join(format!("pulled-by-{puller}"));
        std::fs::create_dir(&into).unwrap(); // Helm 3 does not create it
        let into_s = into.to_str().unwrap();
        helm_with(puller, &["pull", &chart_ref, "--version", VERSION, "--plain-http", "--destination", into_s]);
        let pulled = std::fs::read(into.join(format!("{CHART}-{VERSION}.tgz"))).expect("the pulled .tgz");
        assert!(pulled == packaged, "{puller} pulled other bytes than {pusher} pushed");
        let shown = helm_with(puller, &["show", "chart", &chart_ref, "--version", VERSION, "--plain-http"]);
        assert!(shown.contains(&format!("version: {VERSION}")), "{puller} show chart:\n{shown}");
    }
}
