//! The Helm chart (charts/prediction-batch-controller), proven against the real control plane of
//! tests/cluster: lint, render, server-side dry run, install/upgrade/uninstall, Pod Security
//! "restricted", and least privilege — the release binary runs the happy-path batch authenticated
//! with a token of the chart's ServiceAccount, and as an unprivileged UID with nothing writable
//! (the runtime contract of the distroless image).
//!
//! Needs a running cluster (`tests/cluster/up`, or `tests/run-all`) and Helm (built from its Go
//! module by tests/tools/build when not on PATH). Fails, never skips, without them.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::batch::{batch_json, wait_for_phase};
use support::controller::BINARY;
use support::controller::Controller;
use support::firestore_emulator;
use support::http::get as http_get;
use support::install;
use support::install::{
    CHART_DIR, Release, assert_nothing_refused, can_i, controller_lock, helm, of_kind, one_of_kind, render, run_ok,
    service_account_kubeconfig, set_mode, tool_command, unique,
};
use support::repo;
use support::{TestNamespace, cluster, ensure_crd, kubectl, kubectl_json, kubectl_output, kubectl_stdin, wait_until};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/batch.yaml");
const EXAMPLE_NAME: &str = "nba-2026-01-02";

/// Values that turn the Firestore mirror on (with a NetworkPolicy, so its egress renders too).
const FIRESTORE_ON: &[&str] = &[
    "--set",
    "firestore.enabled=true",
    "--set",
    "firestore.project=my-project",
    "--set",
    "firestore.gcpServiceAccount=pbc-mirror@my-project.iam.gserviceaccount.com",
    "--set",
    "networkPolicy.enabled=true",
];

/// Values variants every static check runs over.
fn variants() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("defaults", vec![]),
        ("namespace-scoped", vec!["--set", "controller.watchNamespace=team-a"]),
        (
            "everything on",
            vec![
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "networkPolicy.enabled=true",
                "--set",
                "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "--set",
                "alerts.enabled=true",
                "--set",
                "dashboard.enabled=true",
            ],
        ),
        (
            "single replica, no leader election",
            vec!["--set", "replicaCount=1", "--set", "controller.leaderElection.enabled=false"],
        ),
        ("firestore mirror", FIRESTORE_ON.to_vec()),
    ]
}

// ------------------------------------------------------------------------------ static checks

#[test]
fn chart_crds_are_byte_identical_to_the_top_level_crds() {
    install::assert_chart_crds_match();
}

/// The chart is versioned with the controller: Chart.yaml's `version` and `appVersion` are
/// Cargo.toml's package version, so a chart in a registry names the controller it deploys (the
/// rule and how to bump: charts/prediction-batch-controller/README.md, "Versions").
#[test]
fn chart_version_and_app_version_are_the_cargo_package_version() {
    let path = Path::new(CHART_DIR).join("Chart.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let chart: serde_yaml::Value = serde_yaml::from_str(&text).expect("Chart.yaml parses");
    let cargo = env!("CARGO_PKG_VERSION");
    for key in ["version", "appVersion"] {
        assert_eq!(
            chart[key].as_str(),
            Some(cargo),
            "charts/prediction-batch-controller/Chart.yaml `{key}` is {:?}, Cargo.toml's version is {cargo}: \
             they must be equal (set both `version` and `appVersion: \"{cargo}\"`)",
            chart[key]
        );
    }
}

#[test]
fn helm_lint_is_clean() {
    for (what, extra) in variants() {
        let mut cmd = tool_command("helm");
        cmd.args(["lint", CHART_DIR, "--strict"]).args(&extra);
        let out = install::output(cmd);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "helm lint --strict ({what}) failed:\n{text}");
        for level in ["[WARNING]", "[ERROR]", "[INFO]"] {
            assert!(!text.contains(level), "helm lint ({what}) is not clean:\n{text}");
        }
    }
    // The schema refuses what would break the Deployment, and the template refuses two replicas
    // that would both reconcile.
    for (bad, expect) in [
        (vec!["--set", "controller.watchNamespace=Not_A_Namespace"], "watchNamespace"),
        (vec!["--set", "controller.logFormat=xml"], "logFormat"),
        (vec!["--set", "unknownKey=1"], "unknownKey"),
        (vec!["--set", "controller.leaderElection.enabled=false"], "leaderElection"),
        (vec!["--set", "alerts.for.PredictionBatchAtRisk=soon"], "PredictionBatchAtRisk"),
        (vec!["--set", "alerts.atRiskMinutes=0"], "atRiskMinutes"),
        (vec!["--set", "alerts.runbookBaseUrl=README.md#runbooks"], "runbookBaseUrl"),
    ] {
        assert_template_fails(&bad, expect);
    }
}

/// Helm 3 renders exactly what Helm 4 renders (the chart uses nothing version-specific).
#[test]
fn helm_3_lints_and_renders_the_chart_like_helm_4() {
    for (what, extra) in variants() {
        let mut lint3 = tool_command("helm3");
        lint3.args(["lint", CHART_DIR, "--strict"]).args(&extra);
        let text = run_ok(lint3);
        assert!(!text.contains("[WARNING]") && !text.contains("[ERROR]"), "helm 3 lint ({what}):\n{text}");

        // The same `helm template` with Helm 3 and Helm 4.
        let render = |tool: &str| {
            let mut cmd = tool_command(tool);
            cmd.args([
                "template",
                "r",
                CHART_DIR,
                "--namespace",
                "pbc-system",
                "--include-crds",
                "--kube-version",
                "1.35.4",
            ])
            .args(&extra);
            install::parse_documents(&run_ok(cmd))
        };
        let (v3, v4) = (render("helm3"), render("helm"));
        assert_eq!(v3.len(), v4.len(), "helm 3 and 4 render different numbers of objects ({what})");
        for (a, b) in v3.iter().zip(&v4) {
            assert_eq!(a, b, "helm 3 and helm 4 render differently ({what})");
        }
    }
}

#[test]
fn deployment_runs_two_leader_elected_replicas_under_pod_security_restricted() {
    let docs = render("r", "pbc-system", &[]);
    let deploy = one_of_kind(&docs, "Deployment");
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    assert!(args.contains(&"--lease-name=r-prediction-batch-controller"), "{args:?}");
    assert!(args.contains(&"--http-addr=0.0.0.0:8080"), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--namespace")), "all namespaces by default: {args:?}");

    // The pod's own name and namespace: identity in the lease, and the lease's namespace.
    let env = c["env"].as_array().unwrap();
    for (name, path) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let e = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("env {name} missing"));
        assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], path);
    }

    // Probes on the real endpoints of the named HTTP port.
    assert_eq!(c["ports"], json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}]));
    assert_eq!(c["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": "http"}));
    assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "http"}));
    assert!(
        c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string(),
        "{}",
        c["resources"]
    );

    // Pod Security "restricted" (every control of the profile) plus a read-only root filesystem.
    let psc = &pod["securityContext"];
    let sc = &c["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["runAsNonRoot"], true);
    assert!(sc["runAsUser"].as_i64().unwrap() > 0, "non-root UID");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(sc["privileged"].is_null() || sc["privileged"] == false);
    for forbidden in ["hostNetwork", "hostPID", "hostIPC", "volumes"] {
        assert!(pod[forbidden].is_null(), "{forbidden} set in the pod");
    }
    assert_eq!(pod["serviceAccountName"], "r-prediction-batch-controller");

    // Namespace scoping is one value.
    let scoped = render("r", "pbc-system", &["--set", "controller.watchNamespace=team-a"]);
    let args = one_of_kind(&scoped, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(args.as_array().unwrap().contains(&json!("--namespace=team-a")), "{args}");
}

/// Every flag the chart passes exists in the binary's `run --help` (the chart cannot drift from
/// the CLI unnoticed).
#[test]
fn every_rendered_flag_exists_in_the_binary() {
    let help = run_ok({
        let mut c = Command::new(BINARY);
        c.args(["run", "--help"]);
        c
    });
    for (what, extra) in variants() {
        let docs = render("r", "pbc-system", &extra);
        let deploy = one_of_kind(&docs, "Deployment");
        for arg in deploy["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap() {
            let arg = arg.as_str().unwrap();
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(&format!("--{flag}")),
                    "the chart ({what}) passes --{flag}, which `run --help` lacks:\n{help}"
                );
            } else {
                assert_eq!(arg, "run", "unexpected argument {arg}");
            }
        }
    }
}

/// The rendered rules are the least privilege list, and nothing more, in every variant.
#[test]
fn rendered_rbac_is_least_privilege() {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let controller_rules = vec![
        rule(&["predictions.dev"], &["predictionbatches"], &["get", "list", "watch"]),
        rule(&["predictions.dev"], &["predictionbatches/status"], &["patch", "update"]),
        rule(&["predictions.dev"], &["predictionbatches/finalizers"], &["update"]),
        // Schedules: create each run's batch, delete Replace'd and old ones, watch, status, owner refs.
        rule(&["predictions.dev"], &["predictionbatches"], &["create", "delete"]),
        rule(&["predictions.dev"], &["predictionschedules"], &["get", "list", "watch"]),
        rule(&["predictions.dev"], &["predictionschedules/status"], &["patch", "update"]),
        rule(&["predictions.dev"], &["predictionschedules/finalizers"], &["update"]),
        rule(&["batch"], &["jobs"], &["get", "list", "watch", "create", "patch", "delete"]),
        rule(&[""], &["pods"], &["get", "list", "watch"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        rule(&[""], &["events"], &["create", "patch"]),
    ];
    for (what, extra) in variants() {
        let docs = render("r", "pbc-system", &extra);
        for d in docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role") {
            if d["metadata"]["name"] == "r-prediction-batch-controller-release-finalizers-pods" {
                // The uninstall hook waits for the controller's pods to go: list, nothing else.
                assert_eq!(d["rules"], json!([rule(&[""], &["pods"], &["list"])]), "({what})");
                assert_eq!(d["metadata"]["namespace"], "pbc-system", "({what})");
                continue;
            }
            for r in d["rules"].as_array().unwrap() {
                let text = r.to_string();
                assert!(!text.contains('*'), "wildcard in {} ({what}): {text}", d["metadata"]["name"]);
                for res in r["resources"].as_array().unwrap() {
                    let res = res.as_str().unwrap();
                    if res == "pods" && r["verbs"] == json!(["get", "list", "watch"]) {
                        // The loader's termination message, shard run times, stuck pods; never a write.
                        continue;
                    }
                    assert!(
                        !["secrets", "pods", "configmaps", "serviceaccounts", "roles", "rolebindings", "clusterroles"]
                            .contains(&res),
                        "{res} granted by {} ({what})",
                        d["metadata"]["name"]
                    );
                }
            }
        }
        let scoped = what == "namespace-scoped";
        let controller_role = docs
            .iter()
            .find(|d| {
                d["kind"] == if scoped { "Role" } else { "ClusterRole" }
                    && d["metadata"]["name"] == "r-prediction-batch-controller"
            })
            .unwrap_or_else(|| panic!("controller role missing ({what})"));
        let mut expected = controller_rules.clone();
        if what == "firestore mirror" {
            // The mirror's finalizer is added and removed with a JSON patch of the batch.
            expected.push(rule(&["predictions.dev"], &["predictionbatches"], &["patch"]));
        }
        assert_eq!(controller_role["rules"], json!(expected), "controller rules ({what})");
        if scoped {
            assert_eq!(controller_role["metadata"]["namespace"], "team-a");
            assert!(of_kind(&docs, "ClusterRoleBinding").is_empty(), "a namespace-scoped install binds no ClusterRole");
            let rb = docs
                .iter()
                .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "r-prediction-batch-controller")
                .unwrap();
            assert_eq!(rb["metadata"]["namespace"], "team-a");
            assert_eq!(rb["subjects"][0]["namespace"], "pbc-system");
        }
        let le = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "r-prediction-batch-controller-leader-election");
        if what.contains("no leader election") {
            assert!(le.is_none(), "no lease rights without leader election");
        } else {
            let le = le.unwrap_or_else(|| panic!("leader-election Role missing ({what})"));
            assert_eq!(le["metadata"]["namespace"], "pbc-system", "leases only in the release namespace");
            assert_eq!(
                le["rules"],
                json!([
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                     "resourceNames": ["r-prediction-batch-controller"], "verbs": ["get", "update", "patch"]},
                ])
            );
        }
        // Aggregated roles extend view/edit/admin to PredictionBatches and PredictionSchedules.
        let agg: Vec<&Value> = of_kind(&docs, "ClusterRole")
            .into_iter()
            .filter(|d| {
                d["metadata"]["labels"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            })
            .collect();
        let labels: BTreeSet<String> = agg
            .iter()
            .flat_map(|d| d["metadata"]["labels"].as_object().unwrap().keys().cloned())
            .filter(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            .collect();
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            ["admin", "edit", "view"].map(|r| format!("rbac.authorization.k8s.io/aggregate-to-{r}")),
            "({what})"
        );
        let agg_rules = |suffix: &str| {
            let name = format!("r-prediction-batch-controller-{suffix}");
            let role = agg.iter().find(|d| d["metadata"]["name"] == name.as_str());
            role.unwrap_or_else(|| panic!("aggregated ClusterRole {name} missing ({what})"))["rules"].clone()
        };
        let read = ["get", "list", "watch"];
        assert_eq!(
            agg_rules("view"),
            json!([rule(
                &["predictions.dev"],
                &["predictionbatches", "predictionbatches/status", "predictionschedules", "predictionschedules/status"],
                &read
            )]),
            "view role ({what})"
        );
        assert_eq!(
            agg_rules("edit"),
            json!([
                rule(
                    &["predictions.dev"],
                    &["predictionbatches", "predictionschedules"],
                    &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
                ),
                rule(&["predictions.dev"], &["predictionbatches/status", "predictionschedules/status"], &read),
            ]),
            "edit role ({what})"
        );
    }
}

#[test]
fn optional_objects_render_only_when_enabled() {
    let defaults = render("r", "pbc-system", &[]);
    let kinds: BTreeSet<&str> = defaults.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = [
        "CustomResourceDefinition",
        "Job", // the uninstall hook (uninstall.releaseFinalizers)
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, expected, "default objects");
    let svc = one_of_kind(&defaults, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    let pdb = one_of_kind(&defaults, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        one_of_kind(&defaults, "Deployment")["spec"]["selector"]["matchLabels"]
    );

    let all = render(
        "r",
        "pbc-system",
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "alerts.enabled=true",
            "--set",
            "dashboard.enabled=true",
        ],
    );
    let sm = one_of_kind(&all, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // The per-batch series keep their `namespace` label (the batch's), which the alerts group by.
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true);
    assert_eq!(sm["spec"]["selector"]["matchLabels"], svc["spec"]["selector"]);
    let np = one_of_kind(&all, "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    // The alerts (a PrometheusRule) and the Grafana dashboard (a ConfigMap for its sidecar); what
    // they contain is tests/alerts.rs's business.
    let rule = one_of_kind(&all, "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "pbc-system");
    assert!(rule["spec"]["groups"][0]["rules"].as_array().is_some_and(|r| !r.is_empty()), "{rule:#}");
    let dashboard = one_of_kind(&all, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert!(dashboard["data"]["prediction-batches.json"].is_string(), "{dashboard:#}");
    assert_eq!(
        all.len(),
        defaults.len() + 4,
        "enabled, only the ServiceMonitor, NetworkPolicy, PrometheusRule and ConfigMap come in addition"
    );
}

/// One switch, `firestore.enabled`, turns on everything the mirror needs together: the flags,
/// the RBAC rule of its finalizer, the Workload Identity annotation and the egress to Google.
#[test]
fn the_firestore_block_turns_on_the_mirror_with_everything_it_needs() {
    let args_of = |docs: &[Value]| -> Vec<String> {
        one_of_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let controller_rules = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "r-prediction-batch-controller")
            .expect("the controller's ClusterRole")["rules"]
            .as_array()
            .unwrap()
            .clone()
    };
    let finalizer_rule =
        json!({"apiGroups": ["predictions.dev"], "resources": ["predictionbatches"], "verbs": ["patch"]});
    let wi = "iam.gke.io/gcp-service-account";

    // Off (the default): none of it.
    let off = render("r", "pbc-system", &["--set", "networkPolicy.enabled=true"]);
    assert!(!args_of(&off).iter().any(|a| a.starts_with("--firestore")), "{:?}", args_of(&off));
    assert!(!controller_rules(&off).contains(&finalizer_rule));
    assert!(controller_service_account(&off)["metadata"]["annotations"][wi].is_null());
    let egress = one_of_kind(&off, "NetworkPolicy")["spec"]["egress"].to_string();
    assert!(!egress.contains("169.254.169.254"), "{egress}");

    // On.
    let on = render(
        "r",
        "pbc-system",
        &[
            FIRESTORE_ON,
            &[
                "--set",
                "firestore.database=mirror-db",
                "--set",
                "firestore.collection=batches",
                "--set",
                "firestore.deleteTimeoutSeconds=45",
                "--set",
                "networkPolicy.apiServerTo[0].ipBlock.cidr=10.0.0.1/32",
            ],
        ]
        .concat(),
    );
    let args = args_of(&on);
    for flag in [
        "--firestore-project=my-project",
        "--firestore-collection=batches",
        "--firestore-database=mirror-db",
        "--firestore-delete-timeout=45",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
    }
    let rules = controller_rules(&on);
    assert!(rules.contains(&finalizer_rule), "no finalizer rule: {rules:#?}");
    let sa = controller_service_account(&on);
    assert_eq!(sa["metadata"]["annotations"][wi], "pbc-mirror@my-project.iam.gserviceaccount.com", "{sa:#}");
    // Egress: Google APIs on 443 although the API server rule is pinned to one address, and the
    // metadata server that hands out Workload Identity tokens.
    let np = one_of_kind(&on, "NetworkPolicy");
    let egress = np["spec"]["egress"].as_array().unwrap();
    let open_443 = egress.iter().any(|r| {
        r["to"].is_null() && r["ports"].as_array().unwrap().contains(&json!({"port": 443, "protocol": "TCP"}))
    });
    assert!(open_443, "no egress to Google APIs on 443: {egress:#?}");
    for (cidr, port) in [("169.254.169.254/32", 80), ("169.254.169.252/32", 988)] {
        let found = egress.iter().any(|r| {
            r["to"] == json!([{"ipBlock": {"cidr": cidr}}]) && r["ports"] == json!([{"port": port, "protocol": "TCP"}])
        });
        assert!(found, "no egress to the metadata server {cidr}:{port}: {egress:#?}");
    }

    // Namespace-scoped: the rule lands in the Role.
    let scoped = render("r", "pbc-system", &[FIRESTORE_ON, &["--set", "controller.watchNamespace=team-a"]].concat());
    let role = scoped
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "r-prediction-batch-controller")
        .expect("the controller's Role");
    assert!(role["rules"].as_array().unwrap().contains(&finalizer_rule), "{role:#}");

    // Defaults of the block: the binary's own defaults; the database flag only when set.
    let plain = render("r", "pbc-system", &["--set", "firestore.enabled=true", "--set", "firestore.project=p"]);
    let args = args_of(&plain);
    assert!(args.contains(&"--firestore-collection=prediction_batches".to_string()), "{args:?}");
    assert!(args.contains(&"--firestore-delete-timeout=30".to_string()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--firestore-database")), "{args:?}");
    assert!(controller_service_account(&plain)["metadata"]["annotations"][wi].is_null());

    // Refused: no project; an annotation the chart cannot place (it creates no ServiceAccount).
    for (bad, expect) in [
        (vec!["--set", "firestore.enabled=true"], "firestore.project"),
        (
            [FIRESTORE_ON, &["--set", "serviceAccount.create=false", "--set", "serviceAccount.name=mine"]].concat(),
            "gcpServiceAccount",
        ),
    ] {
        assert_template_fails(&bad, expect);
    }
}

// ------------------------------------------------------------------------- against the cluster

#[test]
fn helm_template_passes_a_server_side_dry_run() {
    ensure_crd();
    let ns = TestNamespace::new("chart-dry-run");
    for (what, extra) in variants() {
        if what == "everything on" {
            continue; // the ServiceMonitor and PrometheusRule CRDs (prometheus-operator) are not installed here
        }
        let release = unique("dry");
        let mut extra = extra.clone();
        let scoped;
        if what == "namespace-scoped" {
            scoped = format!("controller.watchNamespace={}", ns.name());
            extra = vec!["--set", &scoped];
        }
        let mut cmd = tool_command("helm");
        cmd.args(["template", &release, CHART_DIR, "--namespace", ns.name(), "--include-crds"]).args(&extra);
        let manifests = run_ok(cmd);
        let out = kubectl_stdin(&["apply", "--dry-run=server", "-n", ns.name(), "-f", "-"], &manifests);
        assert!(out.contains("deployment.apps/") && out.contains("(server dry run)"), "{what}: {out}");
    }
    // With the NetworkPolicy and the dashboard's ConfigMap too (they need no CRD).
    let mut cmd = tool_command("helm");
    cmd.args(["template", &unique("dry"), CHART_DIR, "--namespace", ns.name(), "--set", "networkPolicy.enabled=true"])
        .args(["--set", "dashboard.enabled=true"]);
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-n", ns.name(), "-f", "-"], &run_ok(cmd));
    assert!(out.contains("networkpolicy.networking.k8s.io/"), "{out}");
    assert!(out.contains("configmap/"), "{out}");
}

#[test]
fn helm_install_upgrade_and_uninstall_in_a_restricted_namespace() {
    // Installing a stale chart CRD would change the cluster's CRD under the other tests.
    install::assert_chart_crds_match();
    ensure_crd();
    let namespace = unique("chart-install");
    kubectl(&["create", "namespace", &namespace]);
    // Pod Security admission enforces "restricted": pods that break it are never created.
    kubectl(&[
        "label",
        "namespace",
        &namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let started = Instant::now();
    // With its CRD (crds.install, the default): the CRD is already there, applied by other tests
    // with the same content but no Helm ownership, so the release takes it over as a platform
    // team upgrading from a hand-applied CRD would (README: Upgrading and uninstalling).
    let name = unique("pbc");
    let mut release = Release::install(&name, &namespace, &["--take-ownership"]);
    eprintln!("helm install took {:?}", started.elapsed());
    let full = release.fullname();

    // The ReplicaSet got both pods past Pod Security admission (kwok runs them as fakes).
    let selector = &format!("app.kubernetes.io/instance={name}");
    wait_until(
        "2 controller pods admitted under Pod Security restricted",
        Duration::from_secs(60),
        || {
            let pods = kubectl_json(&["get", "pods", "-n", &namespace, "-l", selector]);
            (pods["items"].as_array().map_or(0, |i| i.len()) == 2).then_some(())
        },
        || String::from_utf8_lossy(&kubectl_output(&["get", "events", "-n", &namespace]).stdout).into_owned(),
    );
    let events = kubectl(&["get", "events", "-n", &namespace, "--field-selector", "reason=FailedCreate", "-o", "name"]);
    assert!(events.trim().is_empty(), "FailedCreate events: {events}");
    for obj in [
        format!("serviceaccount/{full}"),
        format!("service/{full}-metrics"),
        format!("poddisruptionbudget/{full}"),
        format!("role/{full}-leader-election"),
        format!("clusterrole/{full}"),
        format!("clusterrolebinding/{full}"),
        format!("clusterrole/{full}-view"),
        format!("clusterrole/{full}-edit"),
    ] {
        kubectl(&["get", &obj, "-n", &namespace]);
    }

    // The aggregated roles reach the built-in ones: an editor of a namespace may create batches
    // there, a viewer may only read them.
    let team = TestNamespace::new("chart-aggregation");
    kubectl(&["create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", team.name()]);
    kubectl(&["create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", team.name()]);
    wait_until(
        "the aggregation controller to add PredictionBatches and PredictionSchedules to edit and view",
        Duration::from_secs(30),
        || {
            (can_i("alice", "create", "predictionbatches.predictions.dev", Some(team.name()))
                && can_i("bob", "list", "predictionbatches.predictions.dev", Some(team.name()))
                && can_i("alice", "create", "predictionschedules.predictions.dev", Some(team.name()))
                && can_i("bob", "list", "predictionschedules.predictions.dev", Some(team.name())))
            .then_some(())
        },
        || kubectl(&["get", "clusterrole", "edit", "view", "-o", "yaml"]),
    );
    for (user, verb, resource, want) in [
        ("alice", "patch", "predictionschedules.predictions.dev", true),
        ("alice", "delete", "predictionschedules.predictions.dev", true),
        ("alice", "get", "predictionschedules.predictions.dev/status", true),
        ("alice", "patch", "predictionschedules.predictions.dev/status", false),
        ("bob", "watch", "predictionschedules.predictions.dev", true),
        ("bob", "get", "predictionschedules.predictions.dev/status", true),
        ("bob", "create", "predictionbatches.predictions.dev", false),
        ("bob", "create", "predictionschedules.predictions.dev", false),
        ("bob", "patch", "predictionschedules.predictions.dev", false),
    ] {
        assert_eq!(can_i(user, verb, resource, Some(team.name())), want, "{user} {verb} {resource}");
    }
    assert!(!can_i("alice", "create", "predictionbatches.predictions.dev", Some("default")));
    assert!(!can_i("alice", "create", "predictionschedules.predictions.dev", Some("default")));

    // Upgrade: a changed value reaches the Deployment, as revision 2.
    helm(&[
        "upgrade",
        &name,
        CHART_DIR,
        "--namespace",
        &namespace,
        "--set",
        "controller.logFormat=text",
        "--set",
        "replicaCount=3",
    ]);
    let deploy = kubectl_json(&["get", "deployment", &full, "-n", &namespace]);
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert!(
        deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--log-format=text"))
    );
    let status: Value =
        serde_json::from_str(&helm(&["status", &name, "--namespace", &namespace, "-o", "json"])).unwrap();
    assert_eq!(status["version"], 2, "{status}");
    assert_eq!(status["info"]["status"], "deployed");

    // Uninstall removes everything it created, cluster-scoped roles included; the CRD stays
    // (helm.sh/resource-policy: keep), so batches survive a reinstall.
    release.uninstall();
    wait_until(
        "the release's objects to be gone",
        Duration::from_secs(60),
        || {
            let left = kubectl_output(&[
                "get",
                "deployment,serviceaccount,service,pdb,role,rolebinding",
                "-n",
                &namespace,
                "-l",
                selector,
                "-o",
                "name",
            ]);
            let cluster_left = kubectl_output(&["get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name"]);
            (String::from_utf8_lossy(&left.stdout).trim().is_empty()
                && String::from_utf8_lossy(&cluster_left.stdout).trim().is_empty())
            .then_some(())
        },
        String::new,
    );
    kubectl(&["get", "crd", "predictionbatches.predictions.dev"]);
    let _ = kubectl_output(&["delete", "namespace", &namespace, "--wait=false"]);
}

/// Least privilege, proven: the controller binary runs the happy-path batch, and a schedule that
/// creates a batch and deletes it again (history limit 0), authenticated only by a token of the
/// chart's ServiceAccount, no request of it is refused, and the account can do nothing beyond its
/// rules.
#[test]
fn the_chart_service_account_runs_the_happy_path_batch_and_nothing_more() {
    ensure_crd();
    let _one_controller = controller_lock();
    let namespace = unique("chart-rbac");
    let release =
        Release::install(&unique("pbc"), &namespace, &["--set", "crds.install=false", "--set", "replicaCount=0"]);
    let full = release.fullname();
    let sa = release.service_account();

    let dir = tempfile::Builder::new().prefix("chart-sa-").tempdir_in(repo().join("target")).unwrap();
    let cmd = release.controller_command(dir.path(), "chart-rbac-test");

    // Who the token is.
    let mut whoami = Command::new(&cluster().kubectl);
    whoami
        .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
        .env("KUBECONFIG", dir.path().join("kubeconfig"));
    assert_eq!(run_ok(whoami), sa);

    let ns = TestNamespace::new("chart-rbac-batch");
    let mut controller = Controller::spawn(cmd, dir.path().join("controller.log"));
    controller.wait_for_log("acquired leadership", Duration::from_secs(30));
    // The probe and scrape endpoints the chart points at answer.
    let addr = controller.logged_http_addr().expect("the controller logs its HTTP address");
    assert_eq!(http_get(&addr, "/healthz").0, 200, "/healthz");
    assert_eq!(http_get(&addr, "/readyz").0, 200, "/readyz (leader-elected replicas are ready)");
    let (code, metrics) = http_get(&addr, "/metrics");
    assert!(code == 200 && metrics.contains("# TYPE"), "/metrics: {code}\n{metrics}");

    let started = Instant::now();
    // A schedule running every minute whose runs are deleted once they succeed: the schedule
    // reconciler's every call (create a batch, delete it, status, events) under the chart's rights.
    let schedule = every_minute_schedule(SCHEDULE_NAME);
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &schedule.to_string());
    kubectl(&["apply", "-n", ns.name(), "-f", EXAMPLE]);
    let batch = wait_for_phase(ns.name(), EXAMPLE_NAME, "Succeeded", Duration::from_secs(180), &controller);
    eprintln!("happy-path batch Succeeded as {sa} in {:?}", started.elapsed());
    assert_eq!(batch["status"]["progress"], "120/120", "{batch:#}");
    assert_schedule_creates_and_deletes_a_batch(ns.name(), &controller);
    eprintln!("schedule created, ran and deleted a batch as {sa} after {:?}", started.elapsed());
    // Events were published with the chart's rights too.
    wait_until(
        "events about the batch",
        Duration::from_secs(20),
        || {
            let ev = kubectl_json(&["get", "events.events.k8s.io", "-n", ns.name()]);
            ev["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["reportingController"] == "prediction-batch-controller")
                .then_some(())
        },
        || controller.log_tail(),
    );
    // The lease in the release namespace is held by this process.
    let lease = kubectl_json(&["get", "lease", &full, "-n", &namespace]);
    assert_eq!(lease["spec"]["holderIdentity"], "chart-rbac-test");
    let status = controller.stop(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the controller did not exit cleanly on SIGTERM: {status:?}\n{}",
        controller.log_tail()
    );

    // Not one request of the account was refused (the audit log records every one of them).
    let requests = assert_nothing_refused(&sa, &controller);
    assert!(requests > 10, "expected the controller's requests in the audit log, found {requests}");

    // And the account can do nothing else.
    let other = ns.name();
    for (verb, resource, namespace, want) in [
        ("create", "jobs.batch", Some(other), true),
        ("patch", "predictionbatches.predictions.dev/status", Some(other), true),
        ("get", "secrets", Some(other), false),
        ("list", "secrets", None, false),
        ("get", "secrets", Some(namespace.as_str()), false),
        ("create", "pods", Some(other), false),
        ("create", "pods", Some(namespace.as_str()), false),
        ("create", "pods/exec", Some(other), false),
        ("delete", "deployments.apps", Some(other), false),
        ("create", "configmaps", Some(other), false),
        ("update", "jobs.batch", Some(other), false),
        // Schedules create their runs' batches and delete old or replaced ones; never change one.
        ("create", "predictionbatches.predictions.dev", Some(other), true),
        ("delete", "predictionbatches.predictions.dev", Some(other), true),
        ("update", "predictionbatches.predictions.dev", Some(other), false),
        ("patch", "predictionbatches.predictions.dev", Some(other), false),
        ("deletecollection", "predictionbatches.predictions.dev", Some(other), false),
        ("watch", "predictionschedules.predictions.dev", Some(other), true),
        ("list", "predictionschedules.predictions.dev", None, true),
        ("patch", "predictionschedules.predictions.dev/status", Some(other), true),
        ("update", "predictionschedules.predictions.dev/finalizers", Some(other), true),
        ("create", "predictionschedules.predictions.dev", Some(other), false),
        ("update", "predictionschedules.predictions.dev", Some(other), false),
        ("patch", "predictionschedules.predictions.dev", Some(other), false),
        ("delete", "predictionschedules.predictions.dev", Some(other), false),
        ("create", "serviceaccounts/token", Some(other), false),
        ("create", "rolebindings.rbac.authorization.k8s.io", Some(other), false),
        ("create", "leases.coordination.k8s.io", Some(namespace.as_str()), true),
        ("create", "leases.coordination.k8s.io", Some(other), false),
        ("delete", "leases.coordination.k8s.io", Some(namespace.as_str()), false),
        ("list", "nodes", None, false),
        ("list", "namespaces", None, false),
    ] {
        assert_eq!(
            can_i(&sa, verb, resource, namespace),
            want,
            "kubectl auth can-i {verb} {resource} -n {namespace:?} --as={sa} should be {}",
            if want { "yes" } else { "no" }
        );
    }
    // Only the chart's lease, by name.
    let as_sa = format!("--as={sa}");
    let other_lease = kubectl_output(&[
        "auth",
        "can-i",
        "update",
        "leases.coordination.k8s.io/someone-else",
        &as_sa,
        "-n",
        &namespace,
    ]);
    assert_eq!(String::from_utf8_lossy(&other_lease.stdout).trim(), "no");
    // No wildcard in anything the account holds.
    let list = kubectl(&["auth", "can-i", "--list", &as_sa, "-n", other]);
    for line in list.lines().skip(1) {
        let resource = line.split_whitespace().next().unwrap_or("");
        assert!(!line.contains("[*]") && resource != "*.*", "wildcard grant for {sa}: {line}\n{list}");
    }
}

/// The chart with `firestore.enabled`: the controller binary, with the mirror flags the chart
/// renders and only the rights of the chart's ServiceAccount, adds and removes the mirror's
/// finalizer, keeps its document in sync (against the Firestore emulator) and is refused nothing.
#[test]
fn the_chart_service_account_runs_a_mirrored_batch_with_firestore_enabled() {
    ensure_crd();
    let _one_controller = controller_lock();
    let emulator = firestore_emulator::Emulator::start(0);
    let docs = firestore_emulator::Docs::new(&emulator.host());
    let namespace = unique("chart-fs");
    let project = firestore_emulator::PROJECT;
    let release = Release::install(
        &unique("pbc"),
        &namespace,
        &[
            "--set",
            "crds.install=false",
            "--set",
            "replicaCount=0",
            "--set",
            "firestore.enabled=true",
            "--set",
            &format!("firestore.project={project}"),
            "--set",
            "firestore.deleteTimeoutSeconds=60",
            "--set",
            "firestore.gcpServiceAccount=pbc-mirror@test-project.iam.gserviceaccount.com",
        ],
    );
    let full = release.fullname();
    let sa = release.service_account();
    let sa_object = kubectl_json(&["get", "serviceaccount", &full, "-n", &namespace]);
    assert_eq!(
        sa_object["metadata"]["annotations"]["iam.gke.io/gcp-service-account"],
        "pbc-mirror@test-project.iam.gserviceaccount.com"
    );
    // The mirror's flags, as the chart renders them for the Deployment.
    let deploy = kubectl_json(&["get", "deployment", &full, "-n", &namespace]);
    let mirror_args: Vec<String> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().filter(|a| a.starts_with("--firestore")).map(String::from))
        .collect();
    assert!(mirror_args.contains(&format!("--firestore-project={project}")), "{mirror_args:?}");

    let dir = tempfile::Builder::new().prefix("chart-fs-").tempdir_in(repo().join("target")).unwrap();
    let ns = TestNamespace::new("chart-fs-batch");
    let mut cmd = release.controller_command(dir.path(), "chart-fs-test");
    cmd.args(&mirror_args).env("FIRESTORE_EMULATOR_HOST", emulator.host()).env_remove("GOOGLE_APPLICATION_CREDENTIALS");
    let mut controller = Controller::spawn(cmd, dir.path().join("controller.log"));
    controller.wait_for_log("acquired leadership", Duration::from_secs(30));

    let started = Instant::now();
    kubectl(&["apply", "-n", ns.name(), "-f", EXAMPLE]);
    let batch = wait_for_phase(ns.name(), EXAMPLE_NAME, "Succeeded", Duration::from_secs(180), &controller);
    eprintln!("mirrored batch Succeeded as {sa} in {:?}", started.elapsed());
    let finalizers = batch["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    assert!(finalizers.contains(&json!("predictions.dev/firestore-mirror")), "no mirror finalizer: {finalizers:?}");
    let id = format!("{}.{EXAMPLE_NAME}", ns.name());
    let uid = batch["metadata"]["uid"].as_str().unwrap().to_string();
    wait_until(
        "the document of the finished batch, and MirrorSynced=True",
        Duration::from_secs(30),
        || {
            let d = docs.get(&id)?;
            let b = batch_json(ns.name(), EXAMPLE_NAME)?;
            let synced = b["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "MirrorSynced" && c["status"] == "True");
            (synced && d.str("uid") == Some(uid.as_str()) && d.str("phase") == Some("Succeeded")).then_some(())
        },
        || format!("{:?}\n{}", docs.get(&id).map(|d| d.fields), controller.log_tail()),
    );

    // Deleting it marks the document deleted and releases the batch (long before the timeout).
    let deleted_at = Instant::now();
    kubectl(&["delete", "predictionbatch", EXAMPLE_NAME, "-n", ns.name(), "--wait=false"]);
    wait_until(
        "the batch to be gone",
        Duration::from_secs(30),
        || batch_json(ns.name(), EXAMPLE_NAME).is_none().then_some(()),
        || controller.log_tail(),
    );
    assert!(deleted_at.elapsed() < Duration::from_secs(30), "the deletion waited for the timeout");
    assert_eq!(docs.get(&id).and_then(|d| d.bool("deleted")), Some(true));
    let status = controller.stop(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "no clean exit on SIGTERM: {status:?}\n{}", controller.log_tail());

    // Not one request of the account was refused.
    assert_nothing_refused(&sa, &controller);
}

/// A namespace-scoped install: the ServiceAccount may act in the watched namespace only.
#[test]
fn namespace_scoped_install_grants_rights_in_the_watched_namespace_only() {
    ensure_crd();
    let watched = TestNamespace::new("chart-watched");
    let elsewhere = TestNamespace::new("chart-elsewhere");
    let namespace = unique("chart-scoped");
    let release = Release::install(
        &unique("pbc"),
        &namespace,
        &[
            "--set",
            "crds.install=false",
            "--set",
            &format!("controller.watchNamespace={}", watched.name()),
            "--set",
            "replicaCount=1",
        ],
    );
    let sa = release.service_account();
    let deploy = kubectl_json(&["get", "deployment", &release.fullname(), "-n", &namespace]);
    assert!(
        deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("--namespace={}", watched.name())))
    );
    for (verb, resource) in [
        ("create", "jobs.batch"),
        ("watch", "predictionbatches.predictions.dev"),
        ("patch", "predictionbatches.predictions.dev/status"),
        ("create", "predictionbatches.predictions.dev"),
        ("watch", "predictionschedules.predictions.dev"),
        ("patch", "predictionschedules.predictions.dev/status"),
        ("create", "events.events.k8s.io"),
    ] {
        assert!(can_i(&sa, verb, resource, Some(watched.name())), "{verb} {resource} in the watched namespace");
        assert!(!can_i(&sa, verb, resource, Some(elsewhere.name())), "{verb} {resource} outside the watched namespace");
        assert!(!can_i(&sa, verb, resource, None), "{verb} {resource} in all namespaces");
    }
    assert!(!can_i(&sa, "get", "secrets", Some(watched.name())));
    assert!(!can_i(&sa, "create", "pods", Some(watched.name())));
    let bindings = kubectl(&["get", "clusterrolebindings", "-o", "json"]);
    let bindings: Value = serde_json::from_str(&bindings).unwrap();
    assert!(
        !bindings["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["subjects"].as_array().is_some_and(|s| s.iter().any(|s| s["namespace"] == namespace.as_str()))),
        "a ClusterRoleBinding names the namespace-scoped ServiceAccount"
    );
}

/// The runtime contract of the distroless image: the release binary, as UID/GID 65532 with no
/// supplementary groups, an empty environment (no HOME), cwd `/`, and every world-writable place
/// (/tmp, /var/tmp, /dev/shm, /run/lock) covered by a read-only mount, runs the happy-path batch
/// with the chart's (namespace-scoped) ServiceAccount token.
#[test]
fn release_binary_runs_the_batch_as_an_unprivileged_uid_with_nothing_writable() {
    ensure_crd();
    let _one_controller = controller_lock();
    for tool in ["unshare", "setpriv", "mount"] {
        assert!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success(),
            "{tool} (util-linux) is required for the runtime-contract test: apt-get install util-linux mount"
        );
    }
    let watched = TestNamespace::new("chart-uid");
    let namespace = unique("chart-uid-rel");
    let release = Release::install(
        &unique("pbc"),
        &namespace,
        &[
            "--set",
            "crds.install=false",
            "--set",
            &format!("controller.watchNamespace={}", watched.name()),
            "--set",
            "replicaCount=0",
        ],
    );
    let full = release.fullname();

    // Binary and kubeconfig readable (not writable) by the UID: 0755 dir, 0755 binary, 0644 file.
    // They must not live under a directory the sandbox covers (a checkout under /tmp would vanish).
    let base = {
        let target = repo().join("target");
        let masked = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"].iter().any(|m| target.starts_with(m));
        if masked {
            let b = std::path::PathBuf::from("/var/lib/prediction-batch-controller-tests");
            std::fs::create_dir_all(&b).expect("create /var/lib/prediction-batch-controller-tests");
            set_mode(&b, 0o755);
            b
        } else {
            target
        }
    };
    let dir = tempfile::Builder::new().prefix("chart-uid-").tempdir_in(&base).unwrap();
    set_mode(dir.path(), 0o755);
    let bin = dir.path().join("prediction-batch-controller");
    std::fs::copy(BINARY, &bin).unwrap();
    set_mode(&bin, 0o755);
    let kubeconfig = dir.path().join("kubeconfig");
    service_account_kubeconfig(&namespace, &full, &kubeconfig);
    let log_dir = tempfile::Builder::new().prefix("chart-uid-log-").tempdir_in(&base).unwrap();

    let uid = "65532";
    // A private mount namespace: read-only empty tmpfs over each world-writable directory; then
    // drop to the UID (no groups, no capabilities) with an empty environment, in /.
    let sandbox = format!(
        r#"set -e
for d in /tmp /var/tmp /dev/shm /run/lock /dev/mqueue; do
  if [ -d "$d" ]; then mount -t tmpfs -o ro,size=4k,mode=0555 tmpfs "$d"; fi
done
cd /
drop() {{ setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"; }}
# Nothing the process could write to: its cwd, its files, and the usual scratch places.
for p in / {dir} {bin} {kubeconfig} /tmp /var/tmp /dev/shm /run/lock /root /etc /usr/local/bin; do
  if drop env -i /usr/bin/test -w "$p"; then echo "WRITABLE: $p"; exit 97; fi
done
if drop env -i /bin/sh -c ': > /tmp/probe' 2>/dev/null; then echo "WRITABLE: /tmp/probe"; exit 97; fi
echo "sandbox: uid $(drop env -i /usr/bin/id -u), HOME=[$(drop env -i /bin/sh -c 'echo $HOME')], nothing writable"
exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- \
  env -i KUBECONFIG={kubeconfig} RUST_LOG=info,kube=warn NO_COLOR=1 \
  {bin} run --http-addr 127.0.0.1:0 --leader-elect --lease-namespace {namespace} --lease-name {full} \
  --namespace {watched} --identity uid-{uid}
"#,
        dir = dir.path().display(),
        bin = bin.display(),
        kubeconfig = kubeconfig.display(),
        watched = watched.name(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", &sandbox]).current_dir("/");
    let mut controller = Controller::spawn(cmd, log_dir.path().join("controller.log"));
    controller.wait_for_log("acquired leadership", Duration::from_secs(30));
    assert!(controller.log_text().contains("nothing writable"), "{}", controller.log_tail());

    // The process really runs as the UID, with no HOME.
    let pid = wait_until(
        "the controller process",
        Duration::from_secs(10),
        || {
            let out = Command::new("pgrep").args(["-f", &format!("{} run", bin.display())]).output().ok()?;
            String::from_utf8_lossy(&out.stdout).lines().next().map(|s| s.trim().to_string())
        },
        || controller.log_tail(),
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uids.split_whitespace().skip(1).all(|u| u == uid), "{uids}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim(), "Groups:", "supplementary groups: {groups}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> =
        environ.split(|b| *b == 0).filter(|v| !v.is_empty()).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    assert!(!vars.iter().any(|v| v.starts_with("HOME=")), "{vars:?}");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"));

    let started = Instant::now();
    kubectl(&["apply", "-n", watched.name(), "-f", EXAMPLE]);
    let batch = wait_for_phase(watched.name(), EXAMPLE_NAME, "Succeeded", Duration::from_secs(180), &controller);
    eprintln!("happy-path batch Succeeded as UID {uid} with nothing writable in {:?}", started.elapsed());
    assert_eq!(batch["status"]["progress"], "120/120");
    let exit = controller.stop(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "no clean exit on SIGTERM: {exit:?}\n{}", controller.log_tail());
}

const SCHEDULE_NAME: &str = "rbac-every-minute";

/// A PredictionSchedule running every minute (UTC) a small batch like examples/batch.yaml (one
/// shard), keeping no finished batch.
fn every_minute_schedule(name: &str) -> Value {
    let example: Value =
        serde_yaml::from_str(&std::fs::read_to_string(EXAMPLE).unwrap()).expect("examples/batch.yaml parses");
    let mut spec = example["spec"].clone();
    let fields = spec.as_object_mut().unwrap();
    fields.remove("gameDate").expect("the example has a gameDate");
    fields.insert("targetCount".into(), json!(4));
    json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionSchedule",
        "metadata": { "name": name },
        "spec": {
            "schedule": "* * * * *",
            "timeZone": "UTC",
            "completeByAfter": "+1h",
            "successfulBatchesHistoryLimit": 0,
            "failedBatchesHistoryLimit": 0,
            "batchTemplate": { "spec": spec },
        }
    })
}

/// The schedule of [`every_minute_schedule`] created a batch at its first run (within a minute),
/// the batch succeeded and the schedule deleted it (history limit 0); then the schedule is
/// suspended, so that nothing runs on while the test ends.
fn assert_schedule_creates_and_deletes_a_batch(ns: &str, controller: &Controller) {
    let selector = format!("predictions.dev/schedule={SCHEDULE_NAME}");
    let describe = || {
        let show = |args: &[&str]| String::from_utf8_lossy(&kubectl_output(args).stdout).into_owned();
        format!(
            "{}
{}
{}
{}",
            show(&["get", "predictionschedule", SCHEDULE_NAME, "-n", ns, "-o", "yaml"]),
            show(&["get", "predictionbatches", "-n", ns, "-l", &selector]),
            show(&["get", "events", "-n", ns, "--field-selector", "involvedObject.kind=PredictionSchedule"]),
            controller.log_tail()
        )
    };
    let first = wait_until(
        "the schedule's first batch",
        Duration::from_secs(90),
        || {
            let list = kubectl_json(&["get", "predictionbatches", "-n", ns, "-l", &selector]);
            let mut names: Vec<String> = list["items"]
                .as_array()?
                .iter()
                .filter_map(|b| b["metadata"]["name"].as_str().map(String::from))
                .collect();
            names.sort();
            names.into_iter().next()
        },
        describe,
    );
    wait_until(
        &format!("{first} to succeed and be deleted (successfulBatchesHistoryLimit 0)"),
        Duration::from_secs(120),
        || {
            let s = kubectl_json(&["get", "predictionschedule", SCHEDULE_NAME, "-n", ns]);
            let gone = batch_json(ns, &first).is_none();
            let events = kubectl(&[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                "involvedObject.kind=PredictionSchedule,reason=BatchDeleted",
                "-o",
                "name",
            ]);
            (gone && s["status"]["lastSuccessfulTime"].is_string() && !events.trim().is_empty()).then_some(())
        },
        describe,
    );
    kubectl(&[
        "patch",
        "predictionschedule",
        SCHEDULE_NAME,
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    wait_until(
        "the schedule to be Suspended",
        Duration::from_secs(30),
        || {
            let s = kubectl_json(&["get", "predictionschedule", SCHEDULE_NAME, "-n", ns]);
            let ready = s["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
            (ready["reason"] == "Suspended").then_some(())
        },
        describe,
    );
}

/// `helm template` with `bad` values must fail with a message naming `expect`.
fn assert_template_fails(bad: &[&str], expect: &str) {
    let mut cmd = tool_command("helm");
    cmd.args(["template", "bad", CHART_DIR]).args(bad);
    let out = install::output(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(expect), "helm template {bad:?} should fail naming {expect}: {err}");
}

/// The controller's ServiceAccount (not the uninstall hook's).
fn controller_service_account(docs: &[Value]) -> &Value {
    let found: Vec<&Value> = of_kind(docs, "ServiceAccount")
        .into_iter()
        .filter(|d| d["metadata"]["annotations"]["helm.sh/hook"].is_null())
        .collect();
    assert_eq!(found.len(), 1, "expected one ServiceAccount besides the hook's");
    found[0]
}
