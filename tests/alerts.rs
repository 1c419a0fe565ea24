//! The chart's alerts and Grafana dashboard (issue 18), proven with the real Prometheus tools
//! (Prometheus and promtool, built from their pinned Go module by tests/tools/build):
//! - the rendered PrometheusRule is a valid rule file (`promtool check rules`), its alerts are the
//!   contract's names with severity, summary, description and a runbook_url whose anchor is a
//!   runbook heading;
//! - `promtool test rules` runs tests/alerts/rules-test.yaml against the rendered rules (the
//!   chart's thresholds as rendered), with a firing and a quiet case for every alert;
//! - every query of the dashboard is valid PromQL (`promtool check rules` on them as recording
//!   rules), and every metric the alerts and the dashboard use is in the controller's metric
//!   contract ([`METRIC_CONTRACT`]), with the labels they select and group by;
//! - end to end (needs the cluster, `tests/cluster/up`): a real Prometheus scrapes the controller
//!   while it runs a real batch, and every dashboard query returns data.
//!
//! Nothing here skips: without Go to build the tools, or without the cluster for the end-to-end
//! test, the tests fail saying what is missing.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::batch::{apply, batch, wait_for_phase};
use support::controller::Controller;
use support::install::{of_kind, one_of_kind, output, render, tool};
use support::{TestNamespace, ensure_crd, kubectl_stdin, repo, stages, wait_until};

/// Values that turn both on.
const ON: &[&str] = &["--set", "alerts.enabled=true", "--set", "dashboard.enabled=true"];

/// The alert names: a contract (Alertmanager routes and silences name them).
const ALERTS: &[&str] = &[
    "PredictionBatchFailed",
    "PredictionBatchAtRisk",
    "PredictionScheduleNoRecentSuccess",
    "PredictionBatchControllerDown",
    "PredictionBatchControllerNotLeading",
    "PredictionBatchMirrorOutOfSync",
    "PredictionBatchReconcileErrors",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// The controller's metric contract: every series the alerts and the dashboard may use, with its
/// type and labels (a histogram's series are `<name>_bucket` with `le`, `_sum` and `_count`). A
/// renamed metric or label breaks the tests that use this list.
const METRIC_CONTRACT: &[(&str, Type, &[&str])] = &[
    ("prediction_batch_build_info", Type::Gauge, &["version", "revision"]),
    ("prediction_batch_completions_total", Type::Counter, &["outcome", "reason"]),
    ("prediction_batch_in_flight", Type::Gauge, &[]),
    ("prediction_batch_batches", Type::Gauge, &["phase"]),
    ("prediction_batch_stage_duration_seconds", Type::Histogram, &["stage"]),
    ("prediction_batch_progress_ratio", Type::Gauge, &["namespace", "batch"]),
    ("prediction_batch_eta_timestamp_seconds", Type::Gauge, &["namespace", "batch"]),
    ("prediction_batch_complete_by_timestamp_seconds", Type::Gauge, &["namespace", "batch"]),
    ("prediction_batch_reconciles_total", Type::Counter, &["result"]),
    ("prediction_batch_reconcile_errors_total", Type::Counter, &["kind"]),
    ("prediction_batch_reconcile_duration_seconds", Type::Histogram, &[]),
    ("prediction_batch_leader", Type::Gauge, &[]),
    ("prediction_batch_mirror_failures_total", Type::Counter, &[]),
    ("prediction_batch_mirror_out_of_sync", Type::Gauge, &[]),
    ("prediction_batch_schedule_last_success_timestamp_seconds", Type::Gauge, &["namespace", "schedule"]),
    ("prediction_batch_watch_errors_total", Type::Counter, &["watch"]),
    ("prediction_batch_queue_depth", Type::Gauge, &["controller"]),
    ("prediction_batch_queue_wait_seconds", Type::Histogram, &["controller"]),
    ("process_cpu_seconds_total", Type::Counter, &[]),
    ("process_resident_memory_bytes", Type::Gauge, &[]),
    ("process_open_fds", Type::Gauge, &[]),
    ("process_start_time_seconds", Type::Gauge, &[]),
];

/// Series Prometheus itself writes for each scrape target (the alerts use `up`).
const SCRAPE_SERIES: &[&str] = &["up"];

/// Labels Prometheus attaches to every series of a target (a ServiceMonitor's, or a static one).
const TARGET_LABELS: &[&str] = &["job", "instance", "namespace", "pod", "service", "endpoint", "container"];

/// Grafana's variables in the dashboard's queries, and what the tests put in their place.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h")];

const DASHBOARD_FILE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/charts/prediction-batch-controller/files/dashboard.json");
const DASHBOARD_KEY: &str = "prediction-batches.json";
const RULES_TEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alerts/rules-test.yaml");

// --------------------------------------------------------------------------------- the tools

/// Prometheus 3.x.y is the Go module's v0.3xx.y (tests/tools/versions.env).
fn pinned_prometheus_release() -> String {
    let env = std::fs::read_to_string(repo().join("tests/tools/versions.env")).expect("tests/tools/versions.env");
    let module = env
        .lines()
        .find_map(|l| l.strip_prefix("PROMETHEUS_VERSION="))
        .expect("PROMETHEUS_VERSION in tests/tools/versions.env")
        .trim();
    let mut parts = module.trim_start_matches('v').split('.');
    let (_, mm, patch) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let mm: u32 = mm.parse().unwrap();
    format!("{}.{}.{patch}", mm / 100, mm % 100)
}

#[test]
fn prometheus_and_promtool_are_the_pinned_release_and_prometheus_answers_queries() {
    let release = pinned_prometheus_release();
    for name in ["prometheus", "promtool"] {
        let mut cmd = Command::new(tool(name));
        cmd.arg("--version");
        let out = output(cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} --version failed: {text}");
        assert!(text.starts_with(&format!("{name}, version {release} ")), "{name} --version: {text}");
    }
    let prometheus = Prometheus::start("global:\n  scrape_interval: 1s\nscrape_configs: []\n", &[]);
    let (code, body) = prometheus.get("/-/ready");
    assert_eq!(code, 200, "/-/ready: {body}");
    let answer = prometheus.query("1 + 1", None);
    assert_eq!(answer["resultType"], "scalar", "{answer}");
    assert_eq!(answer["result"][1], "2", "{answer}");
}

// ---------------------------------------------------------------------------------- alerts

/// The rendered PrometheusRule (release "r" in "pbc-system", default values) and its rules.
fn rendered_rule(extra: &[&str]) -> Value {
    let docs = render("r", "pbc-system", &[ON, extra].concat());
    let rule = one_of_kind(&docs, "PrometheusRule").clone();
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    rule
}

fn rules_of(rule: &Value) -> Vec<Value> {
    rule["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter().cloned())
        .collect()
}

fn alert_names(rule: &Value) -> BTreeSet<String> {
    rules_of(rule).iter().filter_map(|r| r["alert"].as_str().map(String::from)).collect()
}

/// Writes the rule's spec (a Prometheus rule file) to `dir/rules.yaml`.
fn write_rule_file(rule: &Value, dir: &Path) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    path
}

/// `promtool check rules FILE`: its output; panics when it fails or does not find `rules` rules.
fn promtool_check_rules(file: &Path, rules: usize) -> String {
    let mut cmd = Command::new(tool("promtool"));
    cmd.arg("check").arg("rules").arg(file);
    let out = output(cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool check rules {} failed:\n{text}\n{}",
        file.display(),
        std::fs::read_to_string(file).unwrap_or_default()
    );
    assert!(
        text.contains(&format!("SUCCESS: {rules} rules found")),
        "promtool found other than {rules} rules:\n{text}"
    );
    text
}

#[test]
fn promtool_checks_the_rendered_alert_rules() {
    let rule = rendered_rule(&[]);
    let rules = rules_of(&rule);
    let dir = tempfile::tempdir().unwrap();
    let text = promtool_check_rules(&write_rule_file(&rule, dir.path()), rules.len());
    eprintln!("{}", text.trim());

    // Exactly the contract's alerts, each with what Alertmanager and people need.
    let expected: BTreeSet<String> = ALERTS.iter().map(|a| a.to_string()).collect();
    assert_eq!(alert_names(&rule), expected, "the alert names are a contract");
    let base = "https://github.com/predictions-dev/prediction-batch-controller/blob/main/README.md";
    for r in &rules {
        let name = r["alert"].as_str().unwrap_or_else(|| panic!("a rule that is not an alert: {r}"));
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{name}: severity {severity:?}");
        for key in ["summary", "description", "runbook_url"] {
            let text = r["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name} has no {key} annotation");
        }
        assert_eq!(r["annotations"]["runbook_url"], format!("{base}#{}", name.to_lowercase()), "{name}");
        assert!(r["for"].is_string(), "{name} has no `for`");
        // Every selector of the controller's series carries the job selector.
        let expr = r["expr"].as_str().unwrap();
        for (metric, labels) in promql_refs(expr).metrics {
            assert!(labels.iter().any(|l| l == "job"), "{name}: {metric} is not selected by job in {expr}");
        }
    }

    // The default job selector is the job prometheus-operator gives the chart's ServiceMonitor's
    // targets: the name of the Service it selects.
    let docs = render("r", "pbc-system", &[ON, &["--set", "metrics.serviceMonitor.enabled=true"]].concat());
    let service = one_of_kind(&docs, "Service");
    let sm = one_of_kind(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["selector"]["matchLabels"], service["spec"]["selector"]);
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true, "the per-batch series keep their namespace label");
    let job = format!("job=\"{}\"", service["metadata"]["name"].as_str().unwrap());
    for r in rules_of(one_of_kind(&docs, "PrometheusRule")) {
        assert!(r["expr"].as_str().unwrap().contains(&job), "{} does not select {job}: {}", r["alert"], r["expr"]);
    }
}

/// Writes the rendered rules and a copy of tests/alerts/rules-test.yaml into a temp dir and runs
/// `promtool test rules` there: (success, output).
fn promtool_test_rules(rule: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    write_rule_file(rule, dir.path());
    std::fs::copy(RULES_TEST, dir.path().join("rules-test.yaml")).unwrap();
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(["test", "rules", "rules-test.yaml"]).current_dir(dir.path());
    let out = output(cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn promtool_unit_tests_cover_every_alert_firing_and_not_firing() {
    let rule = rendered_rule(&[]);
    let tests: Value =
        serde_yaml::from_str(&std::fs::read_to_string(RULES_TEST).expect("tests/alerts/rules-test.yaml")).unwrap();
    assert_eq!(tests["rule_files"], json!(["rules.yaml"]), "the unit tests must run on the rendered rules");
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for group in tests["tests"].as_array().expect("tests") {
        for case in group["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let expected = case["exp_alerts"].as_array().cloned().unwrap_or_default();
            if expected.is_empty() {
                quiet.insert(name);
                continue;
            }
            for alert in &expected {
                assert!(alert["exp_labels"]["severity"].is_string(), "{name}: a firing case without severity");
                for key in ["summary", "description", "runbook_url"] {
                    assert!(alert["exp_annotations"][key].is_string(), "{name}: a firing case without {key}");
                }
            }
            fires.insert(name);
        }
    }
    let alerts = alert_names(&rule);
    for (what, cases) in [("fires", &fires), ("does not fire", &quiet)] {
        let missing: Vec<&String> = alerts.difference(cases).collect();
        assert!(missing.is_empty(), "tests/alerts/rules-test.yaml has no case where {missing:?} {what}");
        let unknown: Vec<&String> = cases.difference(&alerts).collect();
        assert!(unknown.is_empty(), "tests/alerts/rules-test.yaml tests alerts the chart does not have: {unknown:?}");
    }

    let (ok, text) = promtool_test_rules(&rule);
    assert!(ok && text.contains("SUCCESS"), "promtool test rules failed on the rendered rules:\n{text}");
    eprintln!("promtool test rules: {} alerts, each firing and not firing: SUCCESS", alerts.len());

    // The cases test the rendered values: another threshold fails them.
    let (ok, text) = promtool_test_rules(&rendered_rule(&["--set", "alerts.atRiskMinutes=10"]));
    assert!(!ok && text.contains("PredictionBatchAtRisk"), "a changed threshold went unnoticed:\n{text}");
}

/// The alerts follow their values: selector, thresholds, durations, severities, labels.
#[test]
fn alert_values_reach_the_rendered_rules() {
    let rule = rendered_rule(&[
        "--set-literal",
        r#"alerts.jobSelector=job="pbc",cluster="prod""#,
        "--set",
        "alerts.atRiskMinutes=45",
        "--set",
        "alerts.scheduleSuccessMaxAgeHours=50",
        "--set",
        "alerts.reconcileErrorsPerSecond=0.5",
        "--set",
        "alerts.batchFailedWindow=1h",
        "--set",
        "alerts.for.PredictionBatchMirrorOutOfSync=1h",
        "--set",
        "alerts.severity.PredictionBatchAtRisk=page",
        "--set",
        "alerts.alertLabels.team=predictions",
        "--set",
        "alerts.labels.release=kube-prometheus",
        "--set",
        "alerts.runbookBaseUrl=https://runbooks.example.com/pbc",
    ]);
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
    let rules = rules_of(&rule);
    let find = |name: &str| -> Vec<&Value> { rules.iter().filter(|r| r["alert"] == name).collect() };
    for r in &rules {
        let expr = r["expr"].as_str().unwrap();
        assert!(expr.contains(r#"job="pbc",cluster="prod""#), "{expr}");
        assert_eq!(r["labels"]["team"], "predictions");
        assert!(r["annotations"]["runbook_url"].as_str().unwrap().starts_with("https://runbooks.example.com/pbc#"));
    }
    assert!(find("PredictionBatchAtRisk").iter().any(|r| r["expr"].as_str().unwrap().contains("< 45 * 60")));
    assert!(find("PredictionBatchAtRisk").iter().all(|r| r["labels"]["severity"] == "page"));
    assert!(find("PredictionScheduleNoRecentSuccess")[0]["expr"].as_str().unwrap().contains("> 50 * 3600"));
    assert!(find("PredictionBatchReconcileErrors")[0]["expr"].as_str().unwrap().contains("> 0.5"));
    assert!(find("PredictionBatchFailed")[0]["expr"].as_str().unwrap().contains("[1h]"));
    assert_eq!(find("PredictionBatchMirrorOutOfSync")[0]["for"], "1h");
    let dir = tempfile::tempdir().unwrap();
    promtool_check_rules(&write_rule_file(&rule, dir.path()), rules.len());
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every runbook_url's anchor is a heading of the README (the default runbookBaseUrl).
#[test]
fn every_runbook_url_leads_to_a_runbook_heading() {
    let anchors = |path: &Path| -> BTreeSet<String> {
        std::fs::read_to_string(path)
            .map(|text| text.lines().filter(|l| l.starts_with('#')).map(|l| slug(l.trim_start_matches('#'))).collect())
            .unwrap_or_default()
    };
    let readme = anchors(&repo().join("README.md"));
    for r in rules_of(&rendered_rule(&[])) {
        let url = r["annotations"]["runbook_url"].as_str().unwrap();
        let (base, anchor) = url.split_once('#').unwrap_or_else(|| panic!("{url} has no #anchor"));
        assert!(base.ends_with("/README.md"), "{url}");
        assert!(readme.contains(anchor), "{}: no heading with anchor #{anchor} in README.md", r["alert"]);
    }
}

// ------------------------------------------------------------------------------- dashboard

/// The dashboard as the rendered ConfigMap carries it.
fn rendered_dashboard() -> (Value, Value) {
    let docs = render("r", "pbc-system", ON);
    let cm = one_of_kind(&docs, "ConfigMap").clone();
    let text = cm["data"][DASHBOARD_KEY].as_str().unwrap_or_else(|| panic!("no data.{DASHBOARD_KEY} in {cm:#}"));
    let dashboard: Value = serde_json::from_str(text).expect("the dashboard is JSON");
    (cm, dashboard)
}

/// Every panel (rows' nested panels too) but the rows themselves.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, refId, expr, instant) of every query of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, String, bool)> {
    let mut queries = Vec::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        let with_expr: Vec<&Value> =
            targets.iter().filter(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())).collect();
        assert!(!with_expr.is_empty(), "panel {:?} ({}) has no query", title, p["id"]);
        for t in with_expr {
            queries.push((
                title.clone(),
                t["refId"].as_str().unwrap_or_default().to_string(),
                t["expr"].as_str().unwrap().to_string(),
                t["instant"] == true,
            ));
        }
    }
    queries
}

/// The expression with Grafana's variables replaced by `(name, value)` pairs; panics on any other
/// `$` (a Grafana-only construct Prometheus would refuse).
fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut e = expr.to_string();
    for (var, value) in values {
        e = e.replace(var, value);
    }
    assert!(!e.contains('$'), "a Grafana variable other than {values:?} in {expr}");
    e
}

#[test]
fn the_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard() {
    let (cm, dashboard) = rendered_dashboard();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "the Grafana sidecar's label");
    assert_eq!(cm["metadata"]["namespace"], "pbc-system");
    assert_eq!(cm["metadata"]["name"], "r-prediction-batch-controller-dashboard");
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), [DASHBOARD_KEY]);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD_FILE).unwrap()).expect("files/dashboard.json");
    assert_eq!(dashboard, file, "the ConfigMap carries files/dashboard.json unchanged");

    assert_eq!(dashboard["title"], "Prediction batches");
    assert_eq!(dashboard["uid"], "prediction-batches");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    assert!(dashboard["id"].is_null(), "a provisioned dashboard has no id");
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
    assert_eq!((&ds["type"], &ds["query"]), (&json!("datasource"), &json!("prometheus")));
    let mut ids = BTreeSet::new();
    for p in panels(&dashboard) {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id {} twice", p["id"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
        }
    }
    let n = dashboard_queries(&dashboard).len();
    eprintln!("dashboard: {} panels, {n} queries", panels(&dashboard).len());

    // Values: namespace, labels, annotations.
    let docs = render(
        "r",
        "pbc-system",
        &[
            "--set",
            "dashboard.enabled=true",
            "--set",
            "dashboard.namespace=monitoring",
            "--set",
            "dashboard.annotations.grafana_folder=Predictions",
        ],
    );
    let cm = one_of_kind(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Predictions");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let (_, dashboard) = rendered_dashboard();
    let queries = dashboard_queries(&dashboard);
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, ref_id, expr, _))| {
            json!({"record": format!("dashboard:query_{i}_{ref_id}"), "expr": substitute(expr, GRAFANA_VARIABLES)})
        })
        .collect();
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let text = promtool_check_rules(&path, queries.len());
    eprintln!("dashboard queries as recording rules: {}", text.trim());
}

#[test]
fn alerts_and_dashboard_do_not_render_by_default() {
    let kinds =
        |docs: &[Value]| -> BTreeSet<String> { docs.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect() };
    let defaults = render("r", "pbc-system", &[]);
    assert!(of_kind(&defaults, "PrometheusRule").is_empty() && of_kind(&defaults, "ConfigMap").is_empty());
    let alerts = render("r", "pbc-system", &["--set", "alerts.enabled=true"]);
    assert_eq!(of_kind(&alerts, "PrometheusRule").len(), 1);
    assert!(of_kind(&alerts, "ConfigMap").is_empty());
    let dashboard = render("r", "pbc-system", &["--set", "dashboard.enabled=true"]);
    assert_eq!(of_kind(&dashboard, "ConfigMap").len(), 1);
    assert!(of_kind(&dashboard, "PrometheusRule").is_empty());
    // Nothing else changes with them.
    let both = render("r", "pbc-system", ON);
    let mut added = kinds(&both);
    added.retain(|k| !kinds(&defaults).contains(k));
    assert_eq!(added, BTreeSet::from(["ConfigMap".to_string(), "PrometheusRule".to_string()]));
    assert_eq!(both.len(), defaults.len() + 2);
}

// ------------------------------------------------------------------------ the metric contract

/// What a PromQL expression refers to.
#[derive(Debug, Default)]
struct PromqlRefs {
    /// Metric names, with the label names of their matchers (`x{a="1"}`: ("x", ["a"])).
    metrics: Vec<(String, Vec<String>)>,
    /// Label names of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
    grouping: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"];
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// A small PromQL scanner (promtool has checked the syntax): metric names are the identifiers
/// that are not functions, aggregations, keywords, label names or inside strings, label
/// matchers or ranges.
fn promql_refs(expr: &str) -> PromqlRefs {
    let c: Vec<char> = expr.chars().collect();
    let ident = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let skip_string = |mut i: usize| {
        let quote = c[i];
        i += 1;
        while i < c.len() && c[i] != quote {
            i += if c[i] == '\\' && quote != '`' { 2 } else { 1 };
        }
        i + 1
    };
    // `{a="x", b!~"y"}` from its `{`: the label names and the index after `}`.
    let matchers = |mut i: usize| {
        let mut labels = Vec::new();
        i += 1;
        loop {
            i = skip_ws(i);
            if i >= c.len() || c[i] == '}' {
                return (labels, i + 1);
            }
            if c[i] == ',' {
                i += 1;
                continue;
            }
            if c[i] == '"' || c[i] == '\'' || c[i] == '`' {
                i = skip_string(i);
                continue;
            }
            let start = i;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            if i > start {
                labels.push(c[start..i].iter().collect());
            } else {
                i += 1; // an operator
            }
        }
    };
    let mut refs = PromqlRefs::default();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(i);
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch == '{' {
            let (labels, next) = matchers(i);
            refs.metrics.push((String::new(), labels));
            i = next;
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ident(ch) {
            let start = i;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            if GROUPING.contains(&word.as_str()) {
                if next < c.len() && c[next] == '(' {
                    let end = (next..c.len()).find(|&j| c[j] == ')').unwrap_or(c.len());
                    let list: String = c[next + 1..end].iter().collect();
                    refs.grouping.extend(list.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
                    i = end + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) {
            } else if next < c.len() && c[next] == '(' {
                // a function
            } else if next < c.len() && c[next] == '{' {
                let (labels, after) = matchers(next);
                refs.metrics.push((word, labels));
                i = after;
            } else {
                refs.metrics.push((word, Vec::new()));
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// The contract entry of a series name (a histogram's `_bucket`, `_sum` and `_count` are its
/// name's) and whether it is a bucket series.
fn contract_entry(series: &str) -> Option<(&'static str, Type, &'static [&'static str], bool)> {
    METRIC_CONTRACT.iter().find_map(|&(name, kind, labels)| {
        if series == name && kind != Type::Histogram {
            return Some((name, kind, labels, false));
        }
        let suffix = series.strip_prefix(name)?;
        (kind == Type::Histogram && ["_bucket", "_sum", "_count"].contains(&suffix)).then_some((
            name,
            kind,
            labels,
            suffix == "_bucket",
        ))
    })
}

/// Problems of one expression against the contract (empty: none).
fn contract_violations(what: &str, expr: &str) -> Vec<String> {
    let refs = promql_refs(expr);
    let mut problems = Vec::new();
    let mut known: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    if refs.metrics.is_empty() {
        problems.push(format!("{what}: uses no metric: {expr}"));
    }
    for (metric, labels) in &refs.metrics {
        let allowed: BTreeSet<&str> = match contract_entry(metric) {
            Some((name, kind, labels, bucket)) => {
                if kind == Type::Counter {
                    assert!(name.ends_with("_total"), "counter {name} of the contract without _total");
                }
                let mut l: BTreeSet<&str> = labels.iter().copied().collect();
                if bucket {
                    l.insert("le");
                }
                l
            }
            None if SCRAPE_SERIES.contains(&metric.as_str()) => BTreeSet::new(),
            None => {
                problems.push(format!("{what}: {metric:?} is not in the metric contract: {expr}"));
                continue;
            }
        };
        known.extend(&allowed);
        for label in labels {
            if !allowed.contains(label.as_str()) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!("{what}: {metric} has no label {label}: {expr}"));
            }
        }
    }
    for label in &refs.grouping {
        if !known.contains(label.as_str()) {
            problems.push(format!("{what}: groups or matches by {label}, which none of its metrics has: {expr}"));
        }
    }
    problems
}

#[test]
fn every_metric_of_the_alerts_and_the_dashboard_is_in_the_contract() {
    // The scanner itself.
    let refs = promql_refs(
        r#"histogram_quantile(0.9, sum by (stage, le) (rate(a_bucket{x="}",y=~"[a-z]"}[5m] offset 1h))) > on (job) group_left b or absent(up{job="j"})"#,
    );
    let names: Vec<&str> = refs.metrics.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b", "up"]);
    assert_eq!(refs.metrics[0].1, ["x", "y"]);
    assert_eq!(refs.grouping, ["stage", "le", "job"]);

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for r in rules_of(&rendered_rule(&[])) {
        let expr = r["expr"].as_str().unwrap();
        problems.extend(contract_violations(&format!("alert {}", r["alert"]), expr));
        used.extend(promql_refs(expr).metrics.into_iter().map(|(m, _)| m));
    }
    let (_, dashboard) = rendered_dashboard();
    for (title, ref_id, expr, _) in dashboard_queries(&dashboard) {
        let expr = substitute(&expr, GRAFANA_VARIABLES);
        problems.extend(contract_violations(&format!("dashboard panel {title:?} query {ref_id}"), &expr));
        used.extend(promql_refs(&expr).metrics.into_iter().map(|(m, _)| m));
    }
    assert!(problems.is_empty(), "queries outside the metric contract:\n{}", problems.join("\n"));
    // And the dashboard shows every metric of the contract.
    let unused: Vec<&str> = METRIC_CONTRACT
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| !used.iter().any(|u| contract_entry(u).is_some_and(|(n, ..)| n == *name)))
        .collect();
    assert!(unused.is_empty(), "metrics of the contract no alert or panel uses: {unused:?}");
}

// ----------------------------------------------------------------------------- end to end

/// A Prometheus server of a test: its own directory (config, data, log) and port; SIGTERMed when
/// dropped.
struct Prometheus {
    process: Controller,
    addr: String,
    /// Kept (not deleted) when the test fails.
    dir: Option<tempfile::TempDir>,
}

impl Prometheus {
    /// Starts the pinned Prometheus with `config` (prometheus.yml) and `files` (name, content) in
    /// its directory, and waits until it is ready. Panics with its log when it is not.
    fn start(config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("alerts-prometheus-").tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(tool("prometheus"));
        cmd.arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path());
        let process = Controller::spawn(cmd, dir.path().join("prometheus.log"));
        let mut p = Prometheus { process, addr, dir: Some(dir) };
        let started = Instant::now();
        loop {
            if let Some(status) = p.process.exited() {
                panic!("prometheus exited ({status}) before it was ready:\n{}", p.process.log_tail());
            }
            if try_get(&p.addr, "/-/ready").is_some_and(|(code, _)| code == 200) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "prometheus not ready after 60 s:\n{}",
                p.process.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn get(&self, path: &str) -> (u16, String) {
        try_get(&self.addr, path)
            .unwrap_or_else(|| panic!("GET {path} from prometheus failed\n{}", self.process.log_tail()))
    }

    /// An API call: its `data`, panicking when the status is not success.
    fn api(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {code} {e}: {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// An instant query (at `time`, Unix seconds, or now).
    fn query(&self, q: &str, time: Option<f64>) -> Value {
        let at = time.map(|t| format!("&time={t:.3}")).unwrap_or_default();
        self.api(&format!("/api/v1/query?query={}{at}", encode(q)))
    }

    fn query_range(&self, q: &str, start: f64, end: f64, step: f64) -> Value {
        self.api(&format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}", encode(q)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.stop(Duration::from_secs(10));
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            // Its config, rules, data and log, for inspection.
            eprintln!("keeping the directory of prometheus of the failed test: {}", dir.keep().display());
        }
    }
}

/// GET `path` from `addr` (HTTP/1.0), or None when the server does not answer.
fn try_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok())?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

const E2E_JOB: &str = "prediction-batch-controller";

/// The controller, scraped every second by a real Prometheus (with the chart's alert rules,
/// selecting its job), runs a real batch with a completeBy 10 minutes away (and a suspended
/// schedule exists next to it). Then every query of the dashboard returns data over the time the
/// batch ran (range queries; the instant ones at the end, over that range), every alert rule
/// evaluates without error, and PredictionBatchAtRisk became active for the batch.
#[test]
fn prometheus_scrapes_the_controller_during_a_real_batch_and_every_dashboard_query_has_data() {
    ensure_crd();
    let ns = TestNamespace::new("alerts-e2e");
    let controller = Controller::start("alerts-e2e", ns.name(), &["--leader-elect", "--lease-namespace", ns.name()]);
    let addr = controller.http_addr();

    let rule = rendered_rule(&["--set-literal", &format!(r#"alerts.jobSelector=job="{E2E_JOB}""#)]);
    let rules_yaml = serde_yaml::to_string(&rule["spec"]).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yaml]\n\
         scrape_configs:\n  - job_name: {E2E_JOB}\n    honor_labels: true\n    static_configs:\n      - targets: ['{addr}']\n"
    );
    let prometheus = Prometheus::start(&config, &[("rules.yaml", &rules_yaml)]);
    let start = now();

    // Scraping works before anything else is looked at.
    wait_until(
        "prometheus to scrape the controller (up == 1)",
        Duration::from_secs(30),
        || {
            let r = prometheus.query(&format!("up{{job=\"{E2E_JOB}\"}} == 1"), None);
            (!r["result"].as_array()?.is_empty()).then_some(())
        },
        || format!("{:#}\n{}", prometheus.api("/api/v1/targets"), prometheus.process.log_tail()),
    );

    // A suspended schedule: its last-success gauge is its creation time.
    let mut schedule: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/schedule.yaml")).unwrap()).unwrap();
    schedule["spec"]["suspend"] = json!(true);
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &schedule.to_string());

    // A small batch whose workers run a few seconds each, due in 10 minutes.
    let complete_by = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(600);
    let name = "alerts-e2e";
    let b = batch(
        name,
        json!({
            "targetCount": 40,
            "itemsPerShard": 4,
            "parallelism": 5,
            "completion": { "completeBy": complete_by.strftime("%Y-%m-%dT%H:%M:%SZ").to_string() },
        }),
        json!({ "annotations": { stages::RUN_FOR: "4s" } }),
    );
    apply(ns.name(), &b);
    let ran = Instant::now();
    wait_for_phase(ns.name(), name, "Succeeded", Duration::from_secs(180), &controller);
    eprintln!("batch {name} Succeeded in {:?}", ran.elapsed());
    // A few more scrapes of the final state, and rates over the last samples.
    std::thread::sleep(Duration::from_secs(5));
    let end = now();
    let range = format!("{}s", (end - start).ceil() as u64 + 1);

    // The series names Prometheus scraped from the controller while the batch ran (the per-batch
    // gauges exist only until their batch ends), and the controller's /metrics at the end.
    let scraped = prometheus.query_range(&format!(r#"group by (__name__) ({{job="{E2E_JOB}"}})"#), start, end, 1.0);
    let seen: BTreeSet<String> = scraped["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["metric"]["__name__"].as_str().map(String::from))
        .collect();
    let (_, body) = support::http::get(&addr, "/metrics");
    let missing_from_metrics = |expr: &str| -> Vec<String> {
        promql_refs(expr)
            .metrics
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| !SCRAPE_SERIES.contains(&m.as_str()) && !seen.contains(m))
            .collect()
    };

    let (_, dashboard) = rendered_dashboard();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (title, ref_id, expr, instant) in dashboard_queries(&dashboard) {
        let q = substitute(&expr, &[("$__rate_interval", "1m"), ("$__interval", "1s"), ("$__range", &range)]);
        let data = if instant { prometheus.query(&q, Some(end)) } else { prometheus.query_range(&q, start, end, 1.0) };
        checked += 1;
        if data["result"].as_array().is_none_or(|r| r.is_empty()) {
            let missing = missing_from_metrics(&q);
            failures.push(format!(
                "panel {title:?} query {ref_id}: no data for `{q}`; {}",
                if missing.is_empty() {
                    "its metrics were scraped, but the query matched no series while the batch ran".to_string()
                } else {
                    format!("the controller exported no series {missing:?} while the batch ran")
                }
            ));
        }
    }
    // Every metric of the contract was scraped, with the contract's labels.
    let mut not_exported = Vec::new();
    let mut label_problems = Vec::new();
    for &(name, kind, labels) in METRIC_CONTRACT {
        let series_name = if kind == Type::Histogram { format!("{name}_bucket") } else { name.to_string() };
        if !seen.contains(&series_name) {
            not_exported.push(name);
            continue;
        }
        let series = prometheus.api(&format!(
            "/api/v1/series?match[]={}&start={start:.3}&end={end:.3}",
            encode(&format!(r#"{series_name}{{job="{E2E_JOB}"}}"#))
        ));
        let found: BTreeSet<String> = series
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s.as_object().unwrap().keys().cloned())
            // This static target's own labels: job and instance.
            .filter(|l| !["__name__", "le", "job", "instance"].contains(&l.as_str()))
            .collect();
        let want: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        if found != want {
            label_problems.push(format!("{series_name} has labels {found:?}, the contract says {want:?}"));
        }
    }

    // Every alert rule evaluated against the real series without error.
    let groups = prometheus.api("/api/v1/rules");
    let mut rule_errors = Vec::new();
    for g in groups["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            if r["health"] != "ok" {
                rule_errors.push(format!("{} ({}): {}", r["name"], r["health"], r["lastError"]));
            }
        }
    }
    // What the dashboard showed is what happened: the values over the run, read at its end.
    let ns_batch = format!(r#"namespace="{}",batch="{name}""#, ns.name());
    let deadline = complete_by.as_second() as f64;
    type Check = Box<dyn Fn(f64) -> bool>;
    let facts: Vec<(String, String, Check)> = vec![
        (format!("max_over_time(prediction_batch_in_flight[{range}])"), "at least 1".into(), Box::new(|v| v >= 1.0)),
        (
            format!("max_over_time(prediction_batch_batches{{phase=\"Running\"}}[{range}])"),
            "at least 1".into(),
            Box::new(|v| v >= 1.0),
        ),
        (
            format!("max_over_time(prediction_batch_progress_ratio{{{ns_batch}}}[{range}])"),
            "in (0, 1]".into(),
            Box::new(|v| v > 0.0 && v <= 1.0),
        ),
        (
            format!("max_over_time(prediction_batch_complete_by_timestamp_seconds{{{ns_batch}}}[{range}])"),
            format!("its completeBy, {deadline}"),
            Box::new(move |v| v == deadline),
        ),
        (
            format!("max_over_time(prediction_batch_eta_timestamp_seconds{{{ns_batch}}}[{range}])"),
            "after the start".into(),
            Box::new(move |v| v > start),
        ),
        (r#"sum(prediction_batch_completions_total{outcome="Succeeded"})"#.into(), "1".into(), Box::new(|v| v == 1.0)),
        (r#"prediction_batch_batches{phase="Succeeded"}"#.into(), "1".into(), Box::new(|v| v == 1.0)),
        ("prediction_batch_in_flight".into(), "0".into(), Box::new(|v| v == 0.0)),
        ("prediction_batch_leader".into(), "1".into(), Box::new(|v| v == 1.0)),
        (
            r#"sum(prediction_batch_stage_duration_seconds_count)"#.into(),
            "3 (workers, consolidation, export)".into(),
            Box::new(|v| v == 3.0),
        ),
    ];
    let mut wrong_values = Vec::new();
    for (q, want, ok) in &facts {
        let r = prometheus.query(q, Some(end));
        let value = r["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
        if !value.is_some_and(ok) {
            wrong_values.push(format!("{q} = {value:?}, want {want}"));
        }
    }

    // The batch, due in 10 minutes, was at risk (less than 30 minutes left) while it ran.
    let at_risk = prometheus.query_range(
        &format!(
            r#"ALERTS{{alertname="PredictionBatchAtRisk",risk="deadline",namespace="{}",batch="{name}"}}"#,
            ns.name()
        ),
        start,
        end,
        1.0,
    );
    let at_risk_seen = at_risk["result"].as_array().is_some_and(|r| !r.is_empty());

    let mut report = Vec::new();
    if !failures.is_empty() {
        report.push(format!(
            "{} of {checked} dashboard queries returned no data:\n  {}",
            failures.len(),
            failures.join("\n  ")
        ));
    }
    if !not_exported.is_empty() {
        report.push(format!(
            "metrics of the contract the controller exported no series of while the batch ran: {not_exported:?}"
        ));
    }
    if !label_problems.is_empty() {
        report.push(format!("metrics whose labels differ from the contract:\n  {}", label_problems.join("\n  ")));
    }
    if !wrong_values.is_empty() {
        report.push(format!("values that do not match the batch's run:\n  {}", wrong_values.join("\n  ")));
    }
    if !rule_errors.is_empty() {
        report.push(format!("alert rules that failed to evaluate: {rule_errors:?}"));
    }
    if !at_risk_seen {
        report.push(format!(
            "PredictionBatchAtRisk (risk=deadline) never became active for {}/{name} (completeBy 10 minutes away)",
            ns.name()
        ));
    }
    assert!(
        report.is_empty(),
        "{}\n\nthe controller's /metrics at the end:\n{body}\n{}",
        report.join("\n"),
        controller.log_tail()
    );
    eprintln!("{checked} dashboard queries returned data; every alert rule evaluated without error");
}
