//! Helpers for end-to-end tests against the local control plane of `tests/cluster/` (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and kwok fake nodes).
//!
//! The cluster is found through `CLUSTER_DIR` (default `<repo>/target/test-cluster`), which
//! `tests/cluster/up` fills; `tests/run-all` brings it up, runs the suite and tears it down. A test
//! that needs the cluster and does not find it running FAILS with a message saying how to start
//! it: it never skips.
//!
//! Every test works in its own namespace ([`TestNamespace`]), so tests can run in parallel.
//!
//! The one test support of the suite: every test binary declares `mod support;` and nothing else
//! (no `#[path]` includes). The submodules:
//! - [`controller`]: the controller binary (or any server a test runs) as a child process: start
//!   with the tests' identity or the chart's, extra env, JSON logs, SIGTERM/SIGKILL/restart, its log;
//! - [`batch`]: PredictionBatch manifests, reading one back (phase, conditions), waiting for it;
//! - [`watch`]: watches of a test's own on Jobs and batch statuses, recording what they saw;
//! - [`http`]: one plain HTTP GET and a Prometheus sample reader, for /metrics, /readyz, registries;
//! - [`install`]: Helm, the Go tools of tests/tools, ServiceAccount kubeconfigs (install tests);
//! - [`firestore_emulator`], [`kwok_stage`]: the Firestore emulator and per-test kwok Stages.
// Each test binary uses a different subset of the support; unused items are expected.
#![allow(dead_code)]

pub mod batch;
pub mod controller;
pub mod firestore_emulator;
pub mod http;
pub mod install;
pub mod kwok_stage;
pub mod watch;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Labels, annotations and names that the kwok stages in `tests/cluster/stages/` act on.
pub mod stages {
    /// Label on a pod (template): with value [`FAIL_SHARDS_3_7`], the pods of completion indexes 3
    /// and 7 fail (exit code 1) on every attempt (stage `pod-fail-shards-3-7`).
    pub const FAIL_LABEL: &str = "test.predictions.dev/fail";
    pub const FAIL_SHARDS_3_7: &str = "shards-3-7";
    /// Annotation: comma-separated completion indexes whose pods fail (stage `pod-fail-indexes`).
    pub const FAIL_INDEXES: &str = "test.predictions.dev/fail-indexes";
    /// Annotation: fail only the first N attempts of those indexes (needs `backoffLimitPerIndex`,
    /// whose `batch.kubernetes.io/job-index-failure-count` annotation counts the attempts).
    pub const FAIL_ATTEMPTS: &str = "test.predictions.dev/fail-attempts";
    /// Annotation: exit code of failing pods (default 1).
    pub const EXIT_CODE: &str = "test.predictions.dev/exit-code";
    /// Annotation: Go duration ("30s") every pod runs before it succeeds or fails, instead of
    /// `POD_DELAY_MS` of `tests/cluster/up`.
    pub const RUN_FOR: &str = "test.predictions.dev/run-for";
    /// Annotations: the completion indexes in `STRAGGLE_INDEXES` ("3,7") run `STRAGGLE_FOR` ("2m").
    pub const STRAGGLE_INDEXES: &str = "test.predictions.dev/straggle-indexes";
    pub const STRAGGLE_FOR: &str = "test.predictions.dev/straggle-for";
    /// Annotation (any value): once deleted, the pod is never confirmed gone, as on a dead node
    /// (stage `pod-delete-never`; force-delete such pods when done).
    pub const NEVER_TERMINATE: &str = "test.predictions.dev/never-terminate";
    /// Annotation: every container of the pod terminates with this message, as if written to
    /// `/dev/termination-log` (stage `pod-complete`): a loader's output.
    pub const TERMINATION_MESSAGE: &str = "test.predictions.dev/termination-message";
    /// Label of every fake node.
    pub const NODE_SELECTOR: &str = "type=kwok";
}

/// A running test cluster.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    /// Admin (system:masters) kubeconfig.
    pub kubeconfig: PathBuf,
    /// Kubeconfig of user `pbc-controller` (system:masters): the controller's identity, told apart
    /// in the audit log.
    pub controller_kubeconfig: PathBuf,
    /// Kubeconfig of user `pbc-controller-rbac`, in no group: it may do only what RBAC grants it
    /// (bind the chart's ClusterRole to this user to test the chart's permissions).
    pub controller_rbac_kubeconfig: PathBuf,
    /// The kubectl built with the cluster (v1.35.4), not whatever is on PATH.
    pub kubectl: PathBuf,
    pub logs: PathBuf,
    pub audit_log: PathBuf,
}

/// The repository's root (the controller package's manifest directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `CLUSTER_DIR` (relative to the repository), default `<repo>/target/test-cluster`; whether a
/// cluster runs there is [`cluster`]'s business.
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("CLUSTER_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { repo().join(d) })
        .unwrap_or_else(|| repo().join("target/test-cluster"))
}

/// The cluster of `CLUSTER_DIR` (default `<repo>/target/test-cluster`). Panics, naming
/// `tests/cluster/up` and the logs directory, when it is not running.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = cluster_dir();
        let c = Cluster {
            kubeconfig: dir.join("kubeconfig"),
            controller_kubeconfig: dir.join("controller.kubeconfig"),
            controller_rbac_kubeconfig: dir.join("controller-rbac.kubeconfig"),
            kubectl: dir.join("bin/kubectl"),
            logs: dir.join("logs"),
            audit_log: dir.join("logs/audit.log"),
            dir,
        };
        for f in [&c.kubeconfig, &c.controller_kubeconfig, &c.kubectl] {
            if !f.exists() {
                not_running(&c, &format!("{} is missing", f.display()));
            }
        }
        let out = Command::new(&c.kubectl)
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(["get", "--raw=/readyz", "--request-timeout=10s"])
            .output()
            .unwrap_or_else(|e| not_running(&c, &format!("cannot run {}: {e}", c.kubectl.display())));
        if !out.status.success() {
            not_running(&c, &format!("kube-apiserver is not ready: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        c
    })
}

fn not_running(c: &Cluster, why: &str) -> ! {
    panic!(
        "no running test cluster in {dir} ({why}).\n\
         Start one with `tests/cluster/up` (CLUSTER_DIR={dir}), or run the whole suite with \
         `tests/run-all`. Component logs: {logs}",
        dir = c.dir.display(),
        logs = c.logs.display(),
    )
}

/// A kubectl command for the cluster as admin (add `--kubeconfig` again to act as someone else).
pub fn kubectl_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let c = cluster();
    let mut cmd = Command::new(&c.kubectl);
    cmd.env("KUBECONFIG", &c.kubeconfig).args(args);
    cmd
}

/// Runs kubectl and returns its Output, whatever the exit status.
pub fn kubectl_output(args: &[&str]) -> Output {
    kubectl_command(args).output().unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"))
}

/// Runs kubectl; returns stdout, panics with stderr (and where the logs are) on failure.
pub fn kubectl(args: &[&str]) -> String {
    check(args, kubectl_output(args))
}

/// Runs kubectl with `input` on stdin (e.g. `kubectl_stdin(&["apply", "-f", "-"], yaml)`).
pub fn kubectl_stdin(args: &[&str], input: &str) -> String {
    check(args, kubectl_stdin_output(args, input))
}

/// Runs kubectl with `input` on stdin; its Output, whatever the exit status.
pub fn kubectl_stdin_output(args: &[&str], input: &str) -> Output {
    let mut child = kubectl_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).expect("write kubectl stdin");
    child.wait_with_output().expect("wait for kubectl")
}

/// kubectl `-o json`, parsed.
pub fn kubectl_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {all:?}: bad JSON ({e}): {out}"))
}

fn check(args: &[&str], out: Output) -> String {
    if !out.status.success() {
        panic!(
            "kubectl {args:?} failed ({}):\n{}{}\n(component logs: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            cluster().logs.display()
        );
    }
    String::from_utf8(out.stdout).expect("kubectl stdout is UTF-8")
}

/// Polls `f` every 250 ms until it returns Some, or panics after `timeout` with `what` and the
/// output of `diagnose` (e.g. the objects involved).
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    diagnose: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}\n(component logs: {})",
                diagnose(),
                cluster().logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A namespace of its own for one test, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique suffix>` and waits for its `default` ServiceAccount (pods, and so
    /// Jobs, cannot start before the service-account controller has created it).
    pub fn new(prefix: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(30)
            .collect();
        let name = format!("{}-{:x}-{n}-{:x}", prefix.trim_matches('-'), std::process::id(), nanos & 0xffff);
        kubectl(&["create", "namespace", &name]);
        kubectl(&["label", "namespace", &name, "test.predictions.dev/e2e=true"]);
        let ns = TestNamespace { name };
        wait_until(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || kubectl_output(&["get", "serviceaccount", "default", "-n", &ns.name]).status.success().then_some(()),
            String::new,
        );
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Keep the objects of a failed test for inspection while the cluster lives.
        if std::thread::panicking() {
            eprintln!("keeping namespace {} of the failed test", self.name);
            return;
        }
        let _ = kubectl_output(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A kube-rs client (rustls) from `$CLUSTER_DIR/kubeconfig`.
pub async fn client() -> kube::Client {
    client_from(&cluster().kubeconfig).await
}

/// A kube-rs client acting as user `pbc-controller`.
pub async fn controller_client() -> kube::Client {
    client_from(&cluster().controller_kubeconfig).await
}

pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).expect("kube client")
}

/// Applies the repository's CRDs (as the chart's crds/ would) once per test binary and waits until
/// they are Established.
pub fn ensure_crd() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
        wait_crd_established("predictionbatches.predictions.dev");
        wait_crd_established("predictionschedules.predictions.dev");
    });
}

/// Waits until a CRD is Established. Not `kubectl wait`: right after creation a CRD has no
/// conditions yet, and `kubectl wait` errors out instead of waiting.
pub fn wait_crd_established(crd: &str) {
    wait_until(
        &format!("CRD {crd} to be Established"),
        Duration::from_secs(60),
        || {
            let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
            let out = kubectl_output(&["get", "crd", crd, "-o", jsonpath]);
            (String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(())
        },
        String::new,
    );
}

/// A kubeconfig for `user`: the tests' admin one, impersonating `user` (who may then do only
/// what RBAC grants it).
pub fn impersonating_kubeconfig(user: &str) -> PathBuf {
    let text = std::fs::read_to_string(&cluster().kubeconfig).expect("read the cluster's kubeconfig");
    let mut kubeconfig: serde_json::Value = serde_yaml::from_str(&text).expect("a YAML kubeconfig");
    for u in kubeconfig["users"].as_array_mut().into_iter().flatten() {
        u["user"]["as"] = serde_json::json!(user);
    }
    let path = cluster().logs.join(format!("kubeconfig-{user}"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).expect("serialize")).expect("write the kubeconfig");
    path
}
