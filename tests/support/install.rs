//! Helpers of the install tests (tests/chart.rs, tests/chart_oci.rs, tests/gitops.rs,
//! tests/dockerfile.rs, tests/alerts.rs): the Go tools of tests/tools (built on demand into the
//! cache, like the cluster binaries), Helm against the test cluster, ServiceAccount kubeconfigs,
//! and the release chart's identity for the release binary ([`Release::controller_command`]).
//!
//! Nothing here skips: a missing tool, Go toolchain or cluster is a failure that says what to do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::controller::{Controller, chart_command};
use super::{cluster, cluster_dir, kubectl, kubectl_output, repo};

pub const CHART_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/prediction-batch-controller");

/// Path of a tool of tests/tools/build (`helm`, `helm3`, `kstatus`, `dockerfile-lint`,
/// `argocd-lua`, `registry`, `prometheus`, `promtool`), building it into the cache when missing
/// (Helm: about 2.5 minutes, the registry about 4.5 under load, Prometheus and promtool together
/// about 7, once per machine). Panics with the build log when it cannot be built (e.g. no Go
/// toolchain).
pub fn tool(name: &str) -> PathBuf {
    static TOOLS: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut tools = TOOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = tools.get(name) {
        return p.clone();
    }
    let script = repo().join("tests/tools/build");
    let started = Instant::now();
    let out = Command::new(&script)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().map(PathBuf::from).unwrap_or_default();
    if !out.status.success() || !path.is_file() {
        panic!(
            "tool {name} is missing and could not be built with `tests/tools/build {name}` ({}):\n{}{}\n\
             It is built from its Go module into ~/.cache/prediction-batch-controller (needs Go >= 1.26 \
             and the Go module proxy); .ci/run builds it up front.",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    if started.elapsed() > Duration::from_secs(5) {
        eprintln!("built {name} in {:?}: {}", started.elapsed(), path.display());
    }
    tools.insert(name.to_string(), path.clone());
    path
}

/// A command of a tool, with the cluster's admin kubeconfig and (for Helm) private cache and
/// config directories, so tests never read or write the user's ~/.config/helm.
pub fn tool_command(name: &str) -> Command {
    let mut cmd = Command::new(tool(name));
    if name.starts_with("helm") {
        let home = helm_home();
        cmd.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            // `helm template` and `helm lint` need no cluster; install/upgrade do (they call `cluster()`).
            .env("KUBECONFIG", cluster_dir().join("kubeconfig"));
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn helm_home() -> &'static PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = repo().join("target/helm-home");
        std::fs::create_dir_all(&dir).expect("create target/helm-home");
        dir
    })
}

/// Runs a command and returns its Output, panicking only when it cannot be started.
pub fn output(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command; returns stdout, panics with stderr on failure.
pub fn run_ok(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 stdout")
}

/// `helm ARGS...`; panics with Helm's output on failure.
pub fn helm(args: &[&str]) -> String {
    let mut cmd = tool_command("helm");
    cmd.args(args);
    run_ok(cmd)
}

/// `helm template <release> <chart> --namespace <ns> <extra...>`, parsed into documents.
pub fn render(release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, CHART_DIR, "--namespace", namespace];
    args.extend_from_slice(extra);
    parse_documents(&helm(&args))
}

pub fn parse_documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).expect("rendered YAML parses");
            (!v.is_null()).then(|| serde_json::to_value(v).expect("YAML to JSON"))
        })
        .collect()
}

/// The documents of a kind (in render order).
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected exactly one {kind}, got {}", found.len());
    found[0]
}

/// A Helm release installed by a test; uninstalled (without waiting) when dropped unless the test
/// failed (then it stays for inspection while the cluster lives).
pub struct Release {
    pub name: String,
    pub namespace: String,
    uninstalled: bool,
}

impl Release {
    /// `helm install <name> <chart> -n <ns> --create-namespace <extra...>`.
    pub fn install(name: &str, namespace: &str, extra: &[&str]) -> Self {
        Self::install_chart(CHART_DIR, name, namespace, extra)
    }

    /// The same from another chart reference (a packaged .tgz, an `oci://` URL).
    pub fn install_chart(chart: &str, name: &str, namespace: &str, extra: &[&str]) -> Self {
        cluster();
        let mut args = vec!["install", name, chart, "--namespace", namespace, "--create-namespace"];
        args.extend_from_slice(extra);
        helm(&args);
        Release { name: name.into(), namespace: namespace.into(), uninstalled: false }
    }

    /// A release installed some other way (e.g. from another chart directory), handled like one
    /// of [`Release::install`] from here on.
    pub fn adopt(name: &str, namespace: &str) -> Self {
        Release { name: name.into(), namespace: namespace.into(), uninstalled: false }
    }

    pub fn uninstall(&mut self) -> String {
        self.uninstalled = true;
        helm(&["uninstall", &self.name, "--namespace", &self.namespace, "--wait", "--timeout", "60s"])
    }

    /// Name of the chart's ServiceAccount (and ClusterRole, Role, lease): the fullname.
    pub fn fullname(&self) -> String {
        if self.name.contains("prediction-batch-controller") {
            self.name.clone()
        } else {
            format!("{}-prediction-batch-controller", self.name)
        }
    }

    pub fn service_account(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.fullname())
    }

    /// The release binary run as this release's Deployment runs it ([`chart_command`]: leader
    /// election on the chart's Lease in the release namespace), but as a local process: the
    /// cluster's kwok nodes run no containers. It authenticates only with a token of the chart's
    /// ServiceAccount, written to `dir/kubeconfig`, so it has exactly the rights the chart grants.
    /// Add flags and env, then `Controller::spawn` it.
    pub fn controller_command(&self, dir: &Path, identity: &str) -> Command {
        let full = self.fullname();
        let kubeconfig = dir.join("kubeconfig");
        service_account_kubeconfig(&self.namespace, &full, &kubeconfig);
        chart_command(&kubeconfig, &self.namespace, &full, identity)
    }
}

/// Asserts that the audit log holds no request of `user` refused by RBAC (403) and that the
/// controller logged nothing forbidden; returns how many requests of `user` it holds.
pub fn assert_nothing_refused(user: &str, controller: &Controller) -> usize {
    let audit = std::fs::read_to_string(&cluster().audit_log).expect("audit log");
    let mine: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user)
        .collect();
    let refused: Vec<String> = mine
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| format!("{} {}: {}", e["verb"], e["requestURI"], e["responseStatus"]["message"]))
        .collect();
    assert!(refused.is_empty(), "requests of {user} refused by RBAC: {refused:#?}");
    let log = controller.log_text();
    assert!(!log.contains("forbidden") && !log.contains("Forbidden"), "{}", controller.log_tail());
    mine.len()
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.uninstalled || std::thread::panicking() {
            if std::thread::panicking() {
                eprintln!("keeping Helm release {}/{} of the failed test", self.namespace, self.name);
            }
            return;
        }
        let mut cmd = tool_command("helm");
        cmd.args(["uninstall", &self.name, "--namespace", &self.namespace]);
        let _ = cmd.output();
        let _ = kubectl_output(&["delete", "namespace", &self.namespace, "--wait=false"]);
    }
}

/// A unique, DNS-safe suffix for release and namespace names of this test process.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{:x}{:x}{}", std::process::id() & 0xfff, nanos & 0xfff, N.fetch_add(1, Ordering::Relaxed))
}

/// Writes a kubeconfig that authenticates with a fresh token of `namespace/service_account`
/// (`kubectl create token`), with the server and CA of the admin kubeconfig, into `path` (0644, so
/// an unprivileged UID can read it).
pub fn service_account_kubeconfig(namespace: &str, service_account: &str, path: &Path) {
    let token = kubectl(&["create", "token", service_account, "-n", namespace, "--duration=2h"]);
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cluster().kubeconfig).expect("admin kubeconfig"))
            .expect("admin kubeconfig parses");
    let c = &admin["clusters"][0]["cluster"];
    let server = c["server"].as_str().expect("server in the admin kubeconfig");
    let ca = c["certificate-authority-data"].as_str().expect("certificate-authority-data in the admin kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {service_account}\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: {service_account}\n    namespace: {namespace}\n\
         current-context: test\n",
        token = token.trim()
    );
    std::fs::write(path, text).expect("write the ServiceAccount kubeconfig");
    set_mode(path, 0o644);
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// `kubectl auth can-i VERB RESOURCE --as=<user> [-n ns]` (admin impersonating): true for "yes".
pub fn can_i(user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let as_user = format!("--as={user}");
    // "resource/subresource" is spelled --subresource for kubectl.
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, as_user.as_str()];
    if let Some(s) = &sub {
        args.push(s);
    }
    match namespace {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let out = kubectl_output(&args);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl {args:?}: unexpected answer {answer:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Serialises the tests of one binary that run a controller over all namespaces, so two
/// controllers never reconcile the same batch.
pub fn controller_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The chart's copies of the CRDs (files/crds/, rendered by templates/crds.yaml) cannot drift from
/// the repository's crds/: the same files, byte for byte, and each rendered CRD is its file's
/// content plus only the chart's labels and annotations (helm.sh/resource-policy: keep by default;
/// none with crds.keep=false, no CRD at all with crds.install=false).
pub fn assert_chart_crds_match() {
    use std::collections::BTreeSet;
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let top = repo().join("crds");
    let chart = Path::new(CHART_DIR).join("files/crds");
    assert_eq!(
        names(&top),
        names(&chart),
        "charts/prediction-batch-controller/files/crds/ must hold exactly the files of crds/"
    );
    let mut files = Vec::new();
    for name in names(&top) {
        let a = std::fs::read(top.join(&name)).unwrap();
        let b = std::fs::read(chart.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/prediction-batch-controller/files/crds/{name} differs from crds/{name}: \
             run `cp crds/*.yaml charts/prediction-batch-controller/files/crds/`"
        );
        files.push(parse_documents(&String::from_utf8(a).expect("UTF-8 CRD")).remove(0));
    }
    let mut crd_names: Vec<&str> = files.iter().map(|f| f["metadata"]["name"].as_str().unwrap()).collect();
    crd_names.sort();
    assert_eq!(crd_names, ["predictionbatches.predictions.dev", "predictionschedules.predictions.dev"]);
    let docs = render("r", "pbc-system", &[]);
    let mut rendered: Vec<Value> = of_kind(&docs, "CustomResourceDefinition").into_iter().cloned().collect();
    assert_eq!(rendered.len(), files.len(), "templates/crds.yaml renders one CRD per file of files/crds/");
    for crd in &mut rendered {
        let meta = crd["metadata"].as_object_mut().unwrap();
        let annotations = meta.remove("annotations").unwrap_or_default();
        assert_eq!(annotations["helm.sh/resource-policy"], "keep", "the CRD must outlive `helm uninstall`");
        let labels = meta.remove("labels").unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
        let file = files.iter().find(|f| f["metadata"]["name"] == crd["metadata"]["name"]).expect("a file per CRD");
        assert!(
            *crd == *file,
            "the rendered CRD {} differs from its file beyond labels and annotations",
            crd["metadata"]["name"]
        );
    }
    let off = render("r", "pbc-system", &["--set", "crds.install=false"]);
    assert!(of_kind(&off, "CustomResourceDefinition").is_empty(), "crds.install=false renders no CRD");
    let unkept = render("r", "pbc-system", &["--set", "crds.keep=false"]);
    let unkept = of_kind(&unkept, "CustomResourceDefinition");
    assert_eq!(unkept.len(), files.len());
    for crd in unkept {
        assert!(
            crd["metadata"]["annotations"].is_null(),
            "crds.keep=false: no resource-policy annotation on {}",
            crd["metadata"]["name"]
        );
    }
}
