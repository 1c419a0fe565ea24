//! `kubectl-predictions` against the suite's real control plane (tests/cluster/: kube-apiserver,
//! kube-controller-manager, kwok fake nodes), with the release controller binary running the
//! batches: `status` (screen, `-o json|yaml`, exit codes 0 and 1), `watch` (a live bar in a
//! pseudo-terminal, plain lines in a pipe), `list`, `logs`, `rerun`, `suspend` and `resume`.
//!
//! Like every test of the suite it needs the cluster of `CLUSTER_DIR` (tests/cluster/up;
//! tests/run-all brings it up) and FAILS, never skips, without it. The controller binary is the
//! one cargo built next to this test (`cargo test --workspace` builds it; alone, run
//! `cargo build --release` first; `PBC_CONTROLLER_BIN` names another one). The pseudo-terminal
//! comes from `script` (util-linux).
//!
//! A small copy of tests/support (the cluster, kubectl, a namespace, the controller process): that
//! support belongs to the controller package and reads its own manifest directory and binary.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The plugin binary cargo built for this test.
const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-predictions");

// ------------------------------------------------------------------------------ the cluster

/// The repository's root (the controller package).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    kubectl: PathBuf,
    logs: PathBuf,
}

/// The cluster of `CLUSTER_DIR` (relative to the repository; default target/test-cluster), with
/// the repository's CRDs applied. Panics, saying how to start one, when none runs.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = std::env::var_os("CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|| "target/test-cluster".into());
        let dir = if dir.is_absolute() { dir } else { repo().join(dir) };
        let c = Cluster {
            kubeconfig: dir.join("kubeconfig"),
            controller_kubeconfig: dir.join("controller.kubeconfig"),
            kubectl: dir.join("bin/kubectl"),
            logs: dir.join("logs"),
            dir,
        };
        let not_running = |why: String| -> ! {
            panic!(
                "no running test cluster in {} ({why}): start one with `tests/cluster/up` (CLUSTER_DIR={0}), \
                 or run the whole suite with `tests/run-all`",
                c.dir.display()
            )
        };
        for f in [&c.kubeconfig, &c.controller_kubeconfig, &c.kubectl] {
            if !f.exists() {
                not_running(format!("{} is missing", f.display()));
            }
        }
        let ready = Command::new(&c.kubectl)
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(["get", "--raw=/readyz", "--request-timeout=10s"])
            .output()
            .unwrap_or_else(|e| not_running(format!("cannot run {}: {e}", c.kubectl.display())));
        if !ready.status.success() {
            not_running(format!("kube-apiserver is not ready: {}", String::from_utf8_lossy(&ready.stderr).trim()));
        }
        c
    })
}

fn kubectl_output(args: &[&str]) -> Output {
    Command::new(&cluster().kubectl)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"))
}

fn kubectl(args: &[&str]) -> String {
    let out = kubectl_output(args);
    assert!(out.status.success(), "kubectl {args:?} failed: {}{}", text(&out.stderr), text(&out.stdout));
    text(&out.stdout)
}

fn kubectl_apply(ns: &str, obj: &Value) {
    let mut child = Command::new(&cluster().kubectl)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(obj.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply: {}", text(&out.stderr));
}

/// The repository's CRDs, applied once per test binary and Established.
fn ensure_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = repo().join("crds");
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().unwrap()]);
        for crd in ["predictionbatches.predictions.dev", "predictionschedules.predictions.dev"] {
            let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
            wait_until(&format!("CRD {crd} Established"), Duration::from_secs(60), || {
                (text(&kubectl_output(&["get", "crd", crd, "-o", jsonpath]).stdout) == "True").then_some(())
            });
        }
    });
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A namespace of the test's own, deleted when the test passed (kept for a look when it failed).
struct TestNamespace {
    name: String,
}

impl TestNamespace {
    fn new(prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        ensure_crds();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{:x}-{n}-{:x}", std::process::id(), nanos & 0xffff);
        kubectl(&["create", "namespace", &name]);
        kubectl(&["label", "namespace", &name, "test.predictions.dev/e2e=true"]);
        wait_until("the default ServiceAccount", Duration::from_secs(60), || {
            kubectl_output(&["get", "serviceaccount", "default", "-n", &name]).status.success().then_some(())
        });
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping namespace {} of the failed test", self.name);
            return;
        }
        let _ = kubectl_output(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

// ---------------------------------------------------------------------------- the controller

/// The controller binary cargo built with this test (same target directory), checked to be newer
/// than the controller's sources, or `PBC_CONTROLLER_BIN`.
fn controller_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PBC_CONTROLLER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/").join("prediction-batch-controller");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|e| {
        panic!("no controller binary at {} ({e}): run tests/run-all, or `cargo build --release` first", bin.display())
    });
    let newest = newest_source(&repo().join("src"));
    assert!(
        built >= newest,
        "{} is older than the controller's sources: run tests/run-all, or `cargo build --release` first",
        bin.display()
    );
    bin
}

fn newest_source(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { newest_source(&p) } else { std::fs::metadata(&p).unwrap().modified().unwrap() })
        .max()
        .unwrap_or(UNIX_EPOCH)
}

/// `prediction-batch-controller run --namespace <ns>` as user pbc-controller, as tests/support
/// starts it; when dropped (the test passed) the namespace's batches are deleted while it still
/// runs (it releases its finalizers), then it is killed.
struct Controller {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Controller {
    fn start(ns: &str) -> Controller {
        let log = cluster().logs.join(format!("plugin-controller-{ns}.log"));
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = Command::new(controller_bin())
            .args(["run", "--namespace", ns, "--http-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", &cluster().controller_kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the controller");
        Controller { child, ns: ns.to_string(), log }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("controller log: {}", self.log.display());
        } else {
            let _ = kubectl_output(&[
                "delete",
                "predictionbatches.predictions.dev",
                "--all",
                "-n",
                &self.ns,
                "--timeout=60s",
            ]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------ batches

/// A batch like examples/batch.yaml (120 items, 4 per shard = 30 shards, 10 at a time, all three
/// stages), with `spec_patch` merged into its spec and `worker_meta` into the worker template's
/// metadata.
fn batch(name: &str, spec_patch: Value, worker_meta: Value) -> Value {
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
                "template": { "spec": { "containers": [{ "name": "worker", "image": "example.com/worker:1" }] } }
            },
            "consolidation": { "template": { "spec": { "containers": [{ "name": "c", "image": "example.com/consolidate:1" }] } } },
            "export": { "template": { "spec": { "containers": [{ "name": "e", "image": "example.com/export:1" }] } } }
        }
    });
    merge(&mut b["spec"], &spec_patch);
    merge(&mut b["spec"]["worker"]["template"]["metadata"], &worker_meta);
    b
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn batch_json(ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl(&["get", "predictionbatches.predictions.dev", name, "-n", ns, "-o", "json"])).unwrap()
}

fn wait_phase(ns: &str, name: &str, phases: &[&str], timeout: Duration) -> Value {
    wait_until(&format!("batch {ns}/{name} in phase {phases:?}"), timeout, || {
        let b = batch_json(ns, name);
        phases.contains(&b["status"]["phase"].as_str().unwrap_or("")).then_some(b)
    })
}

// ------------------------------------------------------------------------------------ the plugin

/// A finished run of the plugin.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

fn plugin_command(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(PLUGIN);
    cmd.env("KUBECONFIG", &cluster().kubeconfig).env_remove("NO_COLOR").args(args).args(["-n", ns]);
    cmd
}

fn plugin(ns: &str, args: &[&str]) -> Run {
    let out = plugin_command(ns, args).output().unwrap_or_else(|e| panic!("cannot run {PLUGIN}: {e}"));
    let run = Run { code: out.status.code().unwrap_or(-1), stdout: text(&out.stdout), stderr: text(&out.stderr) };
    eprintln!("$ kubectl predictions {} -n {ns}\n{run:?}", args.join(" "));
    run
}

fn status_json(ns: &str, name: &str) -> (i32, Value) {
    let run = plugin(ns, &["status", name, "-o", "json"]);
    let v = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("status -o json is not JSON ({e}): {run:?}"));
    (run.code, v)
}

/// A child process whose output is collected while it runs, with a deadline to end.
struct Background {
    child: Child,
    what: String,
}

impl Background {
    fn spawn(mut cmd: Command, what: &str) -> Background {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect(what);
        Background { child, what: what.to_string() }
    }

    fn wait(mut self, timeout: Duration) -> Run {
        let mut stdout = self.child.stdout.take().unwrap();
        let mut stderr = self.child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout.read_to_end(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not end within {timeout:?}:\n{}", self.what, text(&out.join().unwrap()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: text(&out.join().unwrap()),
            stderr: text(&err.join().unwrap()),
        };
        eprintln!("$ {}\n{run:?}", self.what);
        run
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `watch` in a pseudo-terminal of 120 columns: `script` (util-linux) runs it with its stdout a
/// terminal and copies what it draws, escape sequences and all.
fn watch_in_terminal(ns: &str, name: &str) -> Background {
    let which = Command::new("script").arg("--version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "`script` (util-linux) is needed to run watch in a pseudo-terminal: apt-get install util-linux"
    );
    let command = format!("stty cols 120 rows 40; exec '{PLUGIN}' watch '{name}' -n '{ns}'");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color");
    Background::spawn(cmd, &format!("script -qec \"kubectl predictions watch {name} -n {ns}\""))
}

// -------------------------------------------------------------------------------------- tests

/// One batch from start to success, seen through every read command while it runs and after:
/// status (0 while in progress and once Succeeded; screen, JSON and YAML), watch (a live bar in a
/// terminal, plain lines in a pipe), list, logs of shard 0; then a rerun of its export, which
/// watch follows to the end.
#[test]
fn a_batch_from_start_to_success_on_every_screen() {
    let ns = TestNamespace::new("plugin-ok");
    let ns = ns.name.as_str();
    let _controller = Controller::start(ns);
    // 30 shards of 3 s, 10 at a time: the workers run about 10 s.
    kubectl_apply(ns, &batch("ok", json!({}), json!({ "annotations": { "test.predictions.dev/run-for": "3s" } })));
    let plain =
        Background::spawn(plugin_command(ns, &["watch", "ok"]), &format!("kubectl predictions watch ok -n {ns} | cat"));
    let terminal = watch_in_terminal(ns, "ok");

    // While the workers run.
    wait_phase(ns, "ok", &["Running"], Duration::from_secs(60));
    let (code, s) = status_json(ns, "ok");
    assert_eq!(code, 0, "a batch in progress is healthy: {s:#}");
    assert_eq!(s["healthy"], json!(true));
    assert!(["Running", "Consolidating", "Exporting", "Succeeded"].contains(&s["phase"].as_str().unwrap()), "{s:#}");
    assert_eq!(s["items"]["target"], json!(120));
    assert_eq!(s["stages"].as_array().unwrap().len(), 4);
    let screen = plugin(ns, &["status", "ok"]);
    assert_eq!(screen.code, 0, "{screen:?}");
    for want in ["Name:        ok", "Health:      OK", "Progress:    [", "Stages:", "workers", "Conditions:", "Events"]
    {
        assert!(screen.stdout.contains(want), "status screen without {want:?}: {screen:?}");
    }

    // kwok's fake nodes serve no logs: the apiserver asks the kubelet at the node's Hostname
    // address, which must not resolve (else it would dial the node's made-up InternalIP).
    let lookup = std::net::ToSocketAddrs::to_socket_addrs(&("kwok-node-0", 10250));
    assert!(lookup.is_err(), "kwok-node-0 resolves ({lookup:?}): a log request would leave this machine");
    let selector = "predictions.dev/batch=ok,batch.kubernetes.io/job-completion-index=0";
    wait_until("shard 0's pod", Duration::from_secs(60), || {
        (!kubectl(&["get", "pods", "-n", ns, "-l", selector, "-o", "name"]).trim().is_empty()).then_some(())
    });
    let logs = plugin(ns, &["logs", "ok", "--shard", "0"]);
    assert!(logs.stderr.contains("pod ok-workers-0-"), "logs --shard 0 did not name shard 0's pod: {logs:?}");
    assert!(logs.stderr.contains("(shard 0,"), "{logs:?}");
    assert!(
        logs.code == 0 || (logs.code == 2 && logs.stderr.contains("cannot read the log of pod ok-workers-0-")),
        "an empty log or the kubelet's error: {logs:?}"
    );
    let none = plugin(ns, &["logs", "ok", "--shard", "999"]);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(none.stderr.contains("no pod of shard 999"), "{none:?}");

    let list = plugin(ns, &["list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.starts_with("NAME "), "{list:?}");
    assert!(list.stdout.lines().any(|l| l.starts_with("ok ") && l.contains("2026-01-02")), "{list:?}");

    // Both watches end with the batch.
    let plain = plain.wait(Duration::from_secs(120));
    assert_eq!(plain.code, 0, "watch of a batch that succeeds: {plain:?}");
    assert!(!plain.stdout.contains('\u{1b}'), "plain lines have no escape sequences: {plain:?}");
    let lines: Vec<&str> = plain.stdout.lines().collect();
    assert!(lines.len() >= 3, "one line per change: {plain:?}");
    assert!(lines.iter().any(|l| l.contains(" ok Running ")), "{plain:?}");
    assert!(
        lines.last().unwrap().contains(" ok Succeeded 120/120 items (100.0%)"),
        "ends with the final phase: {plain:?}"
    );
    let terminal = terminal.wait(Duration::from_secs(120));
    assert_eq!(terminal.code, 0, "watch in a terminal: {terminal:?}");
    let drawn = &terminal.stdout;
    assert!(drawn.contains("\u{1b}["), "no ANSI sequences in the terminal: {terminal:?}");
    assert!(drawn.contains("\u{1b}[2K") || drawn.contains("\r"), "the bar is not redrawn in place: {terminal:?}");
    assert!(drawn.contains('█'), "no bar drawn: {terminal:?}");
    assert!(drawn.contains("ok Running") && drawn.contains("/120 items"), "{terminal:?}");
    assert!(drawn.contains("ok Succeeded 120/120 items (100.0%)"), "{terminal:?}");

    // Once it succeeded.
    let done = plugin(ns, &["status", "ok"]);
    assert_eq!(done.code, 0, "{done:?}");
    for want in ["Phase:       Succeeded", "Health:      OK (Succeeded)", "120/120 items (100.0%)", "BatchSucceeded"] {
        assert!(done.stdout.contains(want), "status screen without {want:?}: {done:?}");
    }
    let (code, s) = status_json(ns, "ok");
    assert_eq!(
        (code, &s["phase"], &s["health"], &s["healthy"]),
        (0, &json!("Succeeded"), &json!("Succeeded"), &json!(true))
    );
    let states: Vec<&str> = s["stages"].as_array().unwrap().iter().map(|st| st["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["Skipped", "Succeeded", "Succeeded", "Succeeded"], "{s:#}");
    assert!(s["stages"][1]["duration"].is_string(), "{s:#}");
    assert!(s["events"].as_array().unwrap().iter().any(|e| e["reason"] == "BatchSucceeded"), "{s:#}");
    let yaml = plugin(ns, &["status", "ok", "-o", "yaml"]);
    let y: Value =
        serde_yaml::from_str(&yaml.stdout).unwrap_or_else(|e| panic!("status -o yaml is not YAML ({e}): {yaml:?}"));
    assert_eq!((yaml.code, &y["phase"]), (0, &json!("Succeeded")));

    // Rerun the export; watch follows the new attempt (or sees it already done) to success.
    let rerun = plugin(ns, &["rerun", "ok", "--from", "export"]);
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let spec_rerun = batch_json(ns, "ok")["spec"]["rerun"].clone();
    assert_eq!(spec_rerun["from"], json!("Export"), "{spec_rerun}");
    let token = spec_rerun["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("kubectl-predictions-"), "{token}");
    let again = Background::spawn(plugin_command(ns, &["watch", "ok"]), "kubectl predictions watch ok (rerun)")
        .wait(Duration::from_secs(60));
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.lines().last().unwrap().contains(" ok Succeeded "), "{again:?}");
    wait_until("the rerun to be answered and done", Duration::from_secs(60), || {
        let b = batch_json(ns, "ok");
        (b["status"]["rerunToken"] == json!(token) && b["status"]["phase"] == "Succeeded").then_some(())
    });
    let (code, s) = status_json(ns, "ok");
    assert_eq!((code, &s["attempt"]), (0, &json!(2)), "{s:#}");

    let all = plugin(ns, &["list", "-A", "--limit", "0"]);
    assert!(all.stdout.starts_with("NAMESPACE "), "{all:?}");
    assert!(all.stdout.lines().any(|l| l.starts_with(&format!("{ns} ")) && l.contains(" ok ")), "{all:?}");
    let rows = plugin(ns, &["list", "-o", "json"]);
    let rows: Value = serde_json::from_str(&rows.stdout).unwrap();
    assert_eq!(rows[0]["name"], json!("ok"));
    assert_eq!(rows[0]["phase"], json!("Succeeded"));
}

/// Failed batches exit 1 from status and watch: one whose completeBy has passed
/// (DeadlineExceeded, no Job at all) and one whose shards 3 and 7 fail (kwok's
/// pod-fail-shards-3-7 stage) under a 100 % quorum.
#[test]
fn failed_batches_are_unhealthy() {
    let ns = TestNamespace::new("plugin-failed");
    let ns = ns.name.as_str();
    let _controller = Controller::start(ns);
    kubectl_apply(ns, &batch("late", json!({ "completion": { "completeBy": "2026-01-01T00:00:00Z" } }), json!({})));
    kubectl_apply(
        ns,
        &batch(
            "broken",
            json!({ "completion": { "minSucceededPercent": 100 } }),
            json!({ "labels": { "test.predictions.dev/fail": "shards-3-7" } }),
        ),
    );
    wait_phase(ns, "late", &["Failed"], Duration::from_secs(60));
    wait_phase(ns, "broken", &["Failed"], Duration::from_secs(90));

    let late = plugin(ns, &["status", "late"]);
    assert_eq!(late.code, 1, "a failed batch exits 1: {late:?}");
    assert!(late.stdout.contains("Phase:       Failed"), "{late:?}");
    assert!(late.stdout.contains("UNHEALTHY (Failed)") && late.stdout.contains("DeadlineExceeded"), "{late:?}");
    let (code, s) = status_json(ns, "late");
    assert_eq!((code, &s["healthy"], &s["health"]), (1, &json!(false), &json!("Failed")), "{s:#}");

    let (code, s) = status_json(ns, "broken");
    assert_eq!((code, &s["phase"], &s["healthy"]), (1, &json!("Failed"), &json!(false)), "{s:#}");
    let failed = s["failedShards"].as_str().unwrap_or_default();
    let holds = |shard: u32| {
        failed.split(',').any(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            a.parse::<u32>().is_ok_and(|a| a <= shard) && b.parse::<u32>().is_ok_and(|b| shard <= b)
        })
    };
    assert!(holds(3), "failed shards as ranges, shard 3 among them: {s:#}");
    let screen = plugin(ns, &["status", "broken"]);
    assert_eq!(screen.code, 1, "{screen:?}");
    assert!(screen.stdout.contains("Failed:      shards 3"), "{screen:?}");
    assert!(screen.stdout.contains("Quorum"), "the Stalled reason: {screen:?}");

    let watch = Background::spawn(plugin_command(ns, &["watch", "broken"]), "kubectl predictions watch broken")
        .wait(Duration::from_secs(30));
    assert_eq!(watch.code, 1, "watch of a failed batch exits 1: {watch:?}");
    assert!(watch.stdout.lines().last().unwrap().contains(" broken Failed "), "{watch:?}");

    let list = plugin(ns, &["list"]);
    assert_eq!(list.stdout.lines().filter(|l| l.contains(" Failed ")).count(), 2, "{list:?}");
}

/// suspend, resume and rerun write the spec (as field manager kubectl-predictions), a suspended
/// batch is not healthy, watch exits 1 when its batch is deleted, and usage, kubeconfig and
/// not-found errors exit 2.
#[test]
fn suspend_resume_and_rerun_edit_the_spec() {
    let ns = TestNamespace::new("plugin-edit");
    let ns = ns.name.as_str();
    let _controller = Controller::start(ns);
    kubectl_apply(
        ns,
        &batch("held", json!({ "suspend": true }), json!({ "annotations": { "test.predictions.dev/run-for": "3s" } })),
    );
    wait_phase(ns, "held", &["Suspended"], Duration::from_secs(60));
    let suspended = plugin(ns, &["status", "held"]);
    assert_eq!(suspended.code, 1, "a suspended batch is not healthy: {suspended:?}");
    assert!(suspended.stdout.contains("UNHEALTHY (Suspended)"), "{suspended:?}");
    let spec = |field: &str| batch_json(ns, "held")["spec"][field].clone();

    let resume = plugin(ns, &["resume", "held"]);
    assert_eq!((resume.code, resume.stdout.trim()), (0, "predictionbatch.predictions.dev/held resumed"), "{resume:?}");
    assert_eq!(spec("suspend"), json!(false));
    let suspend = plugin(ns, &["suspend", "held"]);
    assert_eq!(
        (suspend.code, suspend.stdout.trim()),
        (0, "predictionbatch.predictions.dev/held suspended"),
        "{suspend:?}"
    );
    assert_eq!(spec("suspend"), json!(true));
    let again = plugin(ns, &["suspend", "held"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("already suspended"), "{again:?}");
    let managers = kubectl(&["get", "pb", "held", "-n", ns, "-o", "jsonpath={.metadata.managedFields[*].manager}"]);
    assert!(managers.split_whitespace().any(|m| m == "kubectl-predictions"), "field managers: {managers}");

    let rerun = plugin(ns, &["rerun", "held", "--from", "export", "--token", "t1"]);
    assert_eq!(rerun.code, 0, "{rerun:?}");
    assert_eq!(spec("rerun"), json!({ "token": "t1", "from": "Export" }));
    assert!(rerun.stderr.contains("has not finished"), "{rerun:?}");
    let failed = plugin(ns, &["rerun", "held", "--failed"]);
    assert_eq!(failed.code, 0, "{failed:?}");
    let r = spec("rerun");
    assert_eq!(r["from"], json!("FailedShards"));
    assert!(r["token"].as_str().unwrap().starts_with("kubectl-predictions-"), "{r}");

    // Errors: usage, not found, kubeconfig, context.
    for args in [&["rerun", "held"][..], &["logs", "held"], &["status"], &["list", "--limit", "many"]] {
        let run = plugin(ns, args);
        assert_eq!(run.code, 2, "usage error {args:?}: {run:?}");
    }
    let missing = plugin(ns, &["status", "missing"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains(&format!("predictionbatch \"missing\" not found in namespace \"{ns}\"")),
        "{missing:?}"
    );
    let no_kubeconfig = plugin(ns, &["status", "held", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(no_kubeconfig.code, 2, "{no_kubeconfig:?}");
    assert!(no_kubeconfig.stderr.contains("/nonexistent/kubeconfig"), "{no_kubeconfig:?}");
    let context = kubectl(&["config", "current-context"]);
    let kubeconfig = cluster().kubeconfig.to_str().unwrap().to_string();
    let named = plugin(ns, &["status", "held", "--kubeconfig", &kubeconfig, "--context", context.trim()]);
    assert_eq!(named.code, 1, "--kubeconfig and --context select the cluster: {named:?}");
    let wrong = plugin(ns, &["status", "held", "--context", "no-such-context"]);
    assert_eq!(wrong.code, 2, "{wrong:?}");

    // A watched batch that is deleted.
    let watch = Background::spawn(plugin_command(ns, &["watch", "held"]), "kubectl predictions watch held (deleted)");
    std::thread::sleep(Duration::from_secs(2));
    kubectl(&["delete", "pb", "held", "-n", ns, "--timeout=60s"]);
    let watch = watch.wait(Duration::from_secs(30));
    assert_eq!(watch.code, 1, "{watch:?}");
    assert!(watch.stderr.contains("was deleted"), "{watch:?}");
}
