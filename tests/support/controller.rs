//! The controller binary (the one cargo built for this test run: release under
//! `cargo test --release`) as a child process against the test cluster, so tests can kill and
//! restart it like a crashing pod. One type, [`Controller`], for every way a test runs it:
//! - the tests' identity ([`Controller::start`], [`Launch::test`]): user `pbc-controller`
//!   (system:masters), one namespace, debug logs, SIGKILLed when dropped;
//! - the chart's identity ([`chart_command`], used by `install::Release::controller_command`):
//!   the flags and env the chart's Deployment gives it, with a ServiceAccount's kubeconfig;
//! - any other command ([`Controller::spawn`]: e.g. the OCI registry of tests/chart_oci.rs),
//!   SIGTERMed (then SIGKILLed) when dropped.
//!
//! Extra flags and env, JSON logs ([`Launch::json_logs`]), and the log of each start (a file of
//! its own, under the cluster's logs directory unless the test names one) come with every kind.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cluster, kubectl_output, wait_until};

/// The binary cargo built for this test run (release under `cargo test --release`): the same
/// flags as the image's `cargo build --release --locked` (plus the `test-faults` feature, which
/// every test build has).
pub const BINARY: &str = env!("CARGO_BIN_EXE_prediction-batch-controller");

/// `RUST_LOG` of the tests' identity: the controller's own debug lines (e.g. `api write`).
const TEST_RUST_LOG: &str = "info,prediction_batch_controller=debug,kube=warn";

/// What dropping a [`Controller`] does to its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnDrop {
    /// SIGKILL, like an OOM kill or a node loss.
    Kill,
    /// SIGTERM, then SIGKILL after 5 s.
    Terminate,
}

/// How to start a [`Controller`]: a command, where its log goes, what dropping it does.
pub struct Launch {
    name: String,
    cmd: Command,
    /// The log file of the first start; later starts number theirs. None: under the cluster's logs.
    log: Option<PathBuf>,
    on_drop: OnDrop,
    /// Namespace whose batches are deleted (while the controller still runs) when it is dropped.
    delete_batches_in: Option<String>,
}

impl Launch {
    /// `prediction-batch-controller run --namespace <ns> --http-addr 127.0.0.1:0` as user
    /// pbc-controller, with debug logs; SIGKILLed when dropped.
    pub fn test(name: &str, namespace: &str) -> Self {
        let mut cmd = Command::new(BINARY);
        cmd.args(["run", "--namespace", namespace, "--http-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", &cluster().controller_kubeconfig)
            .env("RUST_LOG", TEST_RUST_LOG)
            .env("NO_COLOR", "1");
        Launch { name: name.to_string(), cmd, log: None, on_drop: OnDrop::Kill, delete_batches_in: None }
    }

    /// Any command (the binary with flags of the test's own, or another server), logging to
    /// `log`; SIGTERMed (then SIGKILLed) when dropped.
    pub fn command(cmd: Command, log: PathBuf) -> Self {
        let name = log.file_stem().map_or_else(|| "process".into(), |s| s.to_string_lossy().into_owned());
        Launch { name, cmd, log: Some(log), on_drop: OnDrop::Terminate, delete_batches_in: None }
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.cmd.env_remove(key);
        self
    }

    /// `--log-format json`: one JSON object a line (what the chart's `logFormat: json` sets).
    pub fn json_logs(self) -> Self {
        self.args(["--log-format", "json"])
    }

    /// Another kubeconfig than the tests' identity's (e.g. one that impersonates a user).
    pub fn kubeconfig(self, path: &Path) -> Self {
        self.env("KUBECONFIG", path)
    }

    /// When dropped (and the test did not fail), first delete the batches of `namespace` while the
    /// controller can still release its finalizers, so the namespace can go too.
    pub fn delete_batches_on_drop(mut self, namespace: &str) -> Self {
        self.delete_batches_in = Some(namespace.to_string());
        self
    }

    pub fn start(self) -> Controller {
        let Launch { name, cmd, log, on_drop, delete_batches_in } = self;
        let mut c = Controller {
            child: None,
            log: PathBuf::new(),
            first_log: log,
            cmd,
            starts: 0,
            name,
            on_drop,
            delete_batches_in,
        };
        c.restart();
        c
    }
}

/// The command line the chart's Deployment runs (leader election on the chart's Lease in the
/// release namespace, the chart's log level), authenticating with `kubeconfig`. The cluster's
/// kwok nodes run no containers, so tests run it as a local process.
pub fn chart_command(kubeconfig: &Path, lease_namespace: &str, lease_name: &str, identity: &str) -> Command {
    let mut cmd = Command::new(BINARY);
    cmd.args(["run", "--http-addr", "127.0.0.1:0", "--leader-elect", "--lease-namespace", lease_namespace])
        .args(["--lease-name", lease_name, "--identity", identity])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1");
    cmd
}

/// One process of a test; see [`Launch`] for what dropping it does.
pub struct Controller {
    child: Option<Child>,
    /// The log of the current start.
    pub log: PathBuf,
    first_log: Option<PathBuf>,
    cmd: Command,
    starts: u32,
    name: String,
    on_drop: OnDrop,
    delete_batches_in: Option<String>,
}

impl Controller {
    /// Starts `prediction-batch-controller run --namespace <ns>` as user pbc-controller.
    pub fn start(name: &str, namespace: &str, extra: &[&str]) -> Self {
        Launch::test(name, namespace).args(extra).start()
    }

    /// Like [`Controller::start`], with extra environment variables for the process.
    pub fn start_with_env(name: &str, namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        env.iter().fold(Launch::test(name, namespace).args(extra), |l, (k, v)| l.env(k, v)).start()
    }

    /// Starts `cmd` (a command running the binary, or another server), logging to `log`.
    pub fn spawn(cmd: Command, log: PathBuf) -> Self {
        Launch::command(cmd, log).start()
    }

    /// (Re)starts the process; each start logs to its own file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "controller {} is still running", self.name);
        self.starts += 1;
        self.log = match &self.first_log {
            Some(log) if self.starts == 1 => log.clone(),
            Some(log) => log.with_extension(format!("{}.log", self.starts)),
            None => cluster().logs.join(format!("controller-{}-{}.log", self.name, self.starts)),
        };
        let out = File::create(&self.log).unwrap_or_else(|e| panic!("create {}: {e}", self.log.display()));
        let child = self
            .cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", self.cmd));
        self.child = Some(child);
    }

    /// SIGKILL, like an OOM kill or a node loss: no cleanup, no lease release.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status (panics after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("controller is running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let pid = child.id();
        wait_until(
            &format!("controller {} (pid {pid}) to exit after SIGTERM", self.name),
            timeout,
            || child.try_wait().ok().flatten(),
            || self.log_tail(),
        )
    }

    /// SIGTERM, and the exit status once it exited; SIGKILL (and None) after `timeout`, or None
    /// when it was not running.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            return Some(status);
        }
        // Not `signal`: this also runs from Drop, where a failed kill must not panic.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let status = self.wait_exit(timeout);
        self.kill();
        status
    }

    /// Sends `signal` ("TERM", "INT", ...) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("controller is running");
        let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit; its exit status, or None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The whole log of the current start.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- last lines of {} ---\n{}", self.log.display(), lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    /// Waits until the log contains `needle`; panics with the log if the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        let child = self.child.as_mut().expect("running");
        wait_until(
            &format!("controller log line containing {needle:?}"),
            timeout,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the controller exited ({status}) before logging {needle:?}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::fs::read_to_string(&log).unwrap_or_default().contains(needle).then_some(())
            },
            String::new,
        );
    }

    /// The address the HTTP server bound (`--http-addr 127.0.0.1:0`), from its "serving /metrics"
    /// log line (text or JSON), if logged yet.
    pub fn logged_http_addr(&self) -> Option<String> {
        http_addr(&self.log_text())
    }

    /// [`Controller::logged_http_addr`], waiting up to 30 s for the line.
    pub fn http_addr(&self) -> String {
        wait_until(
            "the controller's HTTP address in its log",
            Duration::from_secs(30),
            || self.logged_http_addr(),
            || self.log_tail(),
        )
    }

    /// The value of the sample `name` (with its labels, if any) on /metrics; panics when missing.
    pub fn metric(&self, name: &str) -> f64 {
        self.try_metric(name).unwrap_or_else(|body| panic!("no metric {name} in:\n{body}"))
    }

    /// The value of the sample `name`, or the whole /metrics body when it is absent.
    pub fn try_metric(&self, name: &str) -> Result<f64, String> {
        let (code, body) = super::http::get(&self.http_addr(), "/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        super::http::metric(&body, name).ok_or(body)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(ns) = &self.delete_batches_in
            && !std::thread::panicking()
        {
            let _ = kubectl_output(&["delete", "predictionbatch", "--all", "-n", ns, "--timeout=60s"]);
        }
        match self.on_drop {
            OnDrop::Kill => self.kill(),
            OnDrop::Terminate => {
                let _ = self.stop(Duration::from_secs(5));
            }
        }
        if std::thread::panicking() {
            eprintln!("log of {}: {}", self.name, self.log.display());
        }
    }
}

/// The address of the HTTP server in a controller log (text: `addr=…`; JSON: `fields.addr`).
pub fn http_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("serving /metrics"))?;
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json["fields"]["addr"].as_str().map(String::from);
    }
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    Some(addr.trim_matches('"').to_string())
}

/// Holder of the controller's default leader-election Lease in `ns`, if it has one.
pub fn lease_holder(ns: &str) -> Option<String> {
    let args = ["get", "lease", "prediction-batch-controller", "-n", ns, "-o", "jsonpath={.spec.holderIdentity}"];
    let out = kubectl_output(&args);
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !holder.is_empty()).then_some(holder)
}

/// The time of a controller log line (text format: it starts with an RFC 3339 UTC timestamp).
pub fn log_time(line: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    line.split_whitespace().next()?.parse().ok()
}
