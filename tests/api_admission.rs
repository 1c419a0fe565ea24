//! The admission contract of the `PredictionBatch` API (issue 4), proven with a real apiserver and
//! the real kubectl (see `tests/support`): the checked-in CRD applies client-side and server-side,
//! every manifest under `tests/admission/invalid/` is refused with a message naming the offending
//! field and is not stored, the valid manifests (`examples/batch-full.yaml`,
//! `tests/admission/valid/`) are accepted, round-trip unchanged and show their defaults, the spec
//! is immutable except `suspend`, `parallelism` and `completion.completeBy`, GitOps-style
//! re-applies are no-ops, and the printer columns and `kubectl explain` docs are there.
//!
//! Needs a running cluster (`tests/cluster/up`, or `tests/run-all`); fails, never skips, without
//! one. No controller runs here: the objects only meet admission.
//!
//! Each file in `tests/admission/invalid/` carries `# expect: <substring>`, a substring of the
//! apiserver's error for `kubectl apply` (client-side) that names the offending field, and
//! optionally `# expect-server-side: <substring>` when `kubectl apply --server-side` words it
//! differently (type errors and unknown fields are found while building the typed patch there).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prediction_batch_controller::api::PredictionBatch;
use serde_json::{Value, json};
use support::{TestNamespace, kubectl, kubectl_json, kubectl_output};

const CRD: &str = "predictionbatches.predictions.dev";
const FULL_EXAMPLE: &str = "examples/batch-full.yaml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// Applies `crds/` with client-side AND server-side apply (once per test binary; both are safe to
/// repeat, also after other test binaries applied it), waits for Established and for the served
/// schema to be the one in `crds/`.
fn crd_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = repo().join("crds");
        let out = kubectl(&["apply", "-f", path_str(&crds)]);
        assert!(out.contains(CRD), "client-side apply of crds/: {out}");
        let out = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", path_str(&crds)]);
        assert!(out.contains("serverside-applied"), "server-side apply of crds/: {out}");
        support::wait_crd_established(CRD);

        // The apiserver swaps a changed CRD's handler asynchronously after Established: wait until
        // the newest rules in crds/ are the ones enforced.
        let probes: Vec<Invalid> = [
            "complete-by-ten-fraction-digits",
            "max-failed-shards-over-shard-count",
            "name-with-dots",
            "probe-port-beyond-int32",
        ]
        .iter()
        .map(|n| read_invalid(&repo().join(format!("tests/admission/invalid/{n}.yaml"))))
        .collect();
        support::wait_until(
            "the apiserver to serve the schema of crds/",
            Duration::from_secs(30),
            || {
                probes
                    .iter()
                    .all(|p| {
                        let out =
                            kubectl_output(&["apply", "--dry-run=server", "-n", "default", "-f", path_str(&p.path)]);
                        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(&p.expect)
                    })
                    .then_some(())
            },
            || kubectl(&["get", "crd", CRD, "-o", "jsonpath={.status.conditions}"]),
        );
    });
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = repo().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn spec_of(ns: &str, name: &str) -> Value {
    kubectl_json(&["get", "pb", name, "-n", ns])["spec"].clone()
}

fn generation_of(ns: &str, name: &str) -> i64 {
    kubectl_json(&["get", "pb", name, "-n", ns])["metadata"]["generation"].as_i64().expect("generation")
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Invalid manifests
// ---------------------------------------------------------------------------------------------

struct Invalid {
    path: PathBuf,
    name: String,
    expect: String,
    expect_server_side: Option<String>,
}

fn comment(text: &str, key: &str, path: &Path) -> Option<String> {
    let found: Vec<String> =
        text.lines().filter_map(|l| l.strip_prefix(&format!("# {key}:"))).map(|s| s.trim().to_string()).collect();
    assert!(found.len() <= 1, "{}: more than one `# {key}:` line", path.display());
    if let Some(s) = found.first() {
        assert!(!s.is_empty(), "{}: empty `# {key}:`", path.display());
    }
    found.into_iter().next()
}

fn read_invalid(path: &Path) -> Invalid {
    let text = std::fs::read_to_string(path).unwrap();
    let expect = comment(&text, "expect", path)
        .unwrap_or_else(|| panic!("{} has no `# expect: <substring>` line", path.display()));
    assert!(
        expect.contains("spec.") || expect.contains("metadata.name"),
        "{}: `# expect: {expect}` does not name a field",
        path.display()
    );
    let expect_server_side = comment(&text, "expect-server-side", path);
    let _: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    Invalid {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        path: path.to_path_buf(),
        expect,
        expect_server_side,
    }
}

/// Applies one invalid manifest into its own namespace, client-side then server-side; returns
/// what went wrong (empty: rejected as expected and nothing stored).
fn check_invalid(case: &Invalid) -> Vec<String> {
    let ns = TestNamespace::new(&format!("adm-{}", case.name));
    let file = path_str(&case.path);
    let mut problems = Vec::new();
    let attempts = [
        ("kubectl apply", vec!["apply", "-n", ns.name(), "-f", file], &case.expect),
        (
            "kubectl apply --server-side",
            vec!["apply", "--server-side", "-n", ns.name(), "-f", file],
            case.expect_server_side.as_ref().unwrap_or(&case.expect),
        ),
    ];
    for (how, args, expect) in attempts {
        let out = kubectl_output(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            problems.push(format!(
                "{}: ACCEPTED by `{how}`: {}",
                case.name,
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        } else if !stderr.contains(expect.as_str()) {
            problems.push(format!("{}: `{how}` error does not contain {expect:?}:\n{}", case.name, stderr.trim()));
        }
    }
    let stored = kubectl(&["get", "pb", "-n", ns.name(), "-o", "name"]);
    if !stored.trim().is_empty() {
        problems.push(format!("{}: stored although refused: {}", case.name, stored.trim()));
    }
    problems
}

#[test]
fn invalid_manifests_are_refused_naming_the_field_and_not_stored() {
    crd_installed();
    let cases: Vec<Invalid> = yaml_files("tests/admission/invalid").iter().map(|p| read_invalid(p)).collect();
    assert!(cases.len() >= 25, "only {} invalid manifests", cases.len());

    // A few at a time: each needs a namespace (and its ServiceAccount) of its own.
    let next = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let p = check_invalid(case);
                    problems.lock().unwrap().extend(p);
                }
            });
        }
    });
    let problems = problems.into_inner().unwrap();
    assert!(
        problems.is_empty(),
        "{} of {} invalid manifests misbehaved:\n\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n\n")
    );
    eprintln!("{} invalid manifests refused (client- and server-side), none stored", cases.len());
}

/// The status counts are `u32` to the controller, so the schema bounds them: a status write beyond
/// them is refused (stored, it would leave the batch unreadable to the controller).
#[test]
fn status_counts_beyond_their_type_are_refused() {
    crd_installed();
    let ns = TestNamespace::new("adm-status-bounds");
    kubectl(&["apply", "-n", ns.name(), "-f", path_str(&repo().join("tests/admission/valid/minimal.yaml"))]);
    let patch = |total: u64| {
        let counts = json!({ "status": { "shards": { "total": total, "succeeded": 0, "failed": 0, "active": 0 } } });
        kubectl_output(&[
            "patch",
            "pb",
            "minimal",
            "-n",
            ns.name(),
            "--subresource=status",
            "--type=merge",
            "-p",
            &counts.to_string(),
        ])
    };
    let out = patch(u64::from(u32::MAX) + 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("status.shards.total: Invalid value: 4294967296")
            && stderr.contains("should be less than or equal to 4294967295"),
        "a shard count beyond u32 was not refused as expected: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(kubectl_json(&["get", "pb", "minimal", "-n", ns.name()])["status"]["shards"].is_null());
    // The largest u32 is fine.
    let out = patch(u64::from(u32::MAX));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Why the CRD bounds only int32 (and u32) integers: the apiserver refuses an integer beyond int64
/// by itself, whatever the schema says.
#[test]
fn integers_beyond_int64_are_refused_by_the_apiserver_itself() {
    crd_installed();
    let ns = TestNamespace::new("adm-int64");
    let text = std::fs::read_to_string(repo().join("tests/admission/valid/minimal.yaml")).unwrap().replace(
        "    template:\n      spec:\n",
        "    template:\n      spec:\n        terminationGracePeriodSeconds: 99999999999999999999\n",
    );
    assert!(text.contains("99999999999999999999"), "{text}");
    let out = kubectl_output_stdin(&["create", "--dry-run=server", "-n", ns.name(), "-f", "-"], &text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr
                .contains("spec.worker.template.spec.terminationGracePeriodSeconds in body must be of type integer"),
        "{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn kubectl_output_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = support::kubectl_command(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Valid manifests, round trip, defaults, idempotent re-apply
// ---------------------------------------------------------------------------------------------

/// Paths of every property the CRD's spec schema declares that `value` lacks. Pod specs are not
/// walked (a template only needs metadata and a spec).
fn missing_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let Some(props) = schema["properties"].as_object() else { return };
    for (key, sub) in props {
        let p = format!("{path}.{key}");
        match value.get(key) {
            None | Some(Value::Null) => out.push(p),
            Some(v) if !p.ends_with(".template.spec") => missing_fields(sub, v, &p, out),
            Some(_) => {}
        }
    }
}

#[test]
fn full_example_sets_every_field_and_the_rust_types_keep_them() {
    let crd = read_yaml(&repo().join("crds/predictions.dev_predictionbatches.yaml"));
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert!(schema["properties"].is_object(), "no spec schema in crds/");
    let example = read_yaml(&repo().join(FULL_EXAMPLE));
    let mut missing = Vec::new();
    missing_fields(schema, &example["spec"], "spec", &mut missing);
    // The one field it cannot set: a loader excludes targetCount (examples/batch-loader.yaml has one).
    assert_eq!(missing, ["spec.loader"], "{FULL_EXAMPLE} does not set {missing:?}");
    let loader = read_yaml(&repo().join("examples/batch-loader.yaml"));
    let mut missing = Vec::new();
    missing_fields(&schema["properties"]["loader"], &loader["spec"]["loader"], "spec.loader", &mut missing);
    assert!(missing.is_empty(), "examples/batch-loader.yaml does not set {missing:?}");

    // The controller's types read all of it and write it back unchanged.
    let batch: PredictionBatch =
        serde_json::from_value(example.clone()).unwrap_or_else(|e| panic!("{FULL_EXAMPLE} as a PredictionBatch: {e}"));
    assert_eq!(serde_json::to_value(&batch.spec).unwrap(), example["spec"], "Rust round trip of {FULL_EXAMPLE}");
}

/// Dotted paths of the spec schema's properties (pod templates are not walked into).
fn spec_paths(schema: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(props) = schema["properties"].as_object() else { return };
    for (key, sub) in props {
        let p = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        out.push(p.clone());
        if key != "template" {
            spec_paths(sub, &p, out);
        }
    }
}

#[test]
fn reference_documents_every_field_and_shows_the_full_example() {
    let doc = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let crd = read_yaml(&repo().join("crds/predictions.dev_predictionbatches.yaml"));
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    let mut spec = Vec::new();
    spec_paths(&root["properties"]["spec"], "", &mut spec);
    missing.extend(spec.into_iter().filter(|p| !doc.contains(&format!("`{p}`"))).map(|p| format!("spec.{p}")));
    let status = root["properties"]["status"]["properties"].as_object().expect("status schema");
    for (key, sub) in status {
        if !doc.contains(&format!("`{key}`")) && !doc.contains(&format!("`{key}.")) {
            missing.push(format!("status.{key}"));
        }
        if key == "conditions" {
            continue;
        }
        for child in sub["properties"].as_object().into_iter().flatten().map(|(k, _)| k) {
            let dotted = format!("`{key}.{child}`");
            if !doc.contains(&dotted) && !doc.contains(&format!("`{child}`")) {
                missing.push(format!("status.{key}.{child}"));
            }
        }
    }
    assert!(missing.is_empty(), "README.md does not document {missing:?}");
    let example = std::fs::read_to_string(repo().join(FULL_EXAMPLE)).unwrap();
    assert!(doc.contains(&example), "README.md must show {FULL_EXAMPLE} verbatim");
    for column in ["DATE", "PHASE", "PROGRESS", "FAILED", "DURATION", "AGE", "SHARDS", "ETA", "MESSAGE"] {
        assert!(doc.contains(&format!("| {column} |")), "printer column {column} not documented");
    }
}

#[test]
fn full_example_is_accepted_round_trips_unchanged_and_reapplies_as_a_no_op() {
    crd_installed();
    let ns = TestNamespace::new("adm-full");
    let file = repo().join(FULL_EXAMPLE);
    let applied = read_yaml(&file);
    let name = applied["metadata"]["name"].as_str().unwrap().to_string();

    kubectl(&["apply", "-n", ns.name(), "-f", path_str(&file)]);

    // As JSON and as YAML, the stored spec is exactly the applied one.
    let stored = spec_of(ns.name(), &name);
    assert!(
        stored == applied["spec"],
        "stored spec differs from {FULL_EXAMPLE}:\napplied {}\nstored {}",
        pretty(&applied["spec"]),
        pretty(&stored)
    );
    let as_yaml: Value = serde_yaml::from_str(&kubectl(&["get", "pb", &name, "-n", ns.name(), "-o", "yaml"])).unwrap();
    assert_eq!(as_yaml["spec"], applied["spec"], "`kubectl get -o yaml` differs from {FULL_EXAMPLE}");
    // And the controller can read what the apiserver hands back.
    let object = kubectl_json(&["get", "pb", &name, "-n", ns.name()]);
    let batch: PredictionBatch = serde_json::from_value(object).expect("stored object is a PredictionBatch");
    assert_eq!(serde_json::to_value(&batch.spec).unwrap(), applied["spec"]);

    // GitOps re-applies constantly. The same kind of apply again is a no-op (nothing written);
    // switching between client-side and server-side apply rewrites only the last-applied
    // annotation; the spec and its generation never change.
    let rv = |ns: &str| kubectl_json(&["get", "pb", &name, "-n", ns])["metadata"]["resourceVersion"].clone();
    let file = path_str(&file);
    let created = rv(ns.name());
    let out = kubectl(&["apply", "-n", ns.name(), "-f", file]);
    assert!(out.contains("unchanged"), "client-side re-apply: {out}");
    assert_eq!(rv(ns.name()), created, "client-side re-apply wrote the object");
    let out = kubectl(&["apply", "--server-side", "-n", ns.name(), "-f", file]);
    assert!(out.contains("serverside-applied"), "server-side re-apply: {out}");
    let after_ssa = rv(ns.name());
    kubectl(&["apply", "--server-side", "-n", ns.name(), "-f", file]);
    assert_eq!(rv(ns.name()), after_ssa, "a second server-side re-apply wrote the object");
    kubectl(&["apply", "-n", ns.name(), "-f", file]);
    let out = kubectl(&["apply", "-n", ns.name(), "-f", file]);
    assert!(out.contains("unchanged"), "client-side re-apply after server-side: {out}");
    assert_eq!(generation_of(ns.name(), &name), 1, "a re-apply of the identical manifest changed the spec");
    assert_eq!(spec_of(ns.name(), &name), applied["spec"]);
}

#[test]
fn defaults_show_up_in_the_stored_object() {
    crd_installed();
    let ns = TestNamespace::new("adm-defaults");
    for f in ["minimal", "stage-defaults"] {
        kubectl(&["apply", "-n", ns.name(), "-f", path_str(&repo().join(format!("tests/admission/valid/{f}.yaml")))]);
    }
    let minimal = spec_of(ns.name(), "minimal");
    for (pointer, want) in [
        ("/itemsPerShard", json!(1)),
        ("/parallelism", json!(10)),
        ("/worker/backoffLimitPerShard", json!(3)),
        ("/completion/minSucceededPercent", json!(100)),
        ("/completion/graceSeconds", json!(0)),
        ("/suspend", json!(false)),
    ] {
        assert_eq!(minimal.pointer(pointer), Some(&want), "default of spec{pointer} in {}", pretty(&minimal));
    }
    for absent in
        ["/consolidation", "/export", "/ttlSecondsAfterFinished", "/worker/maxFailedShards", "/completion/completeBy"]
    {
        assert_eq!(minimal.pointer(absent), None, "spec{absent} should stay unset: {}", pretty(&minimal));
    }
    let stages = spec_of(ns.name(), "stage-defaults");
    for pointer in ["/consolidation/backoffLimit", "/export/backoffLimit"] {
        assert_eq!(stages.pointer(pointer), Some(&json!(2)), "default of spec{pointer} in {}", pretty(&stages));
    }
}

#[test]
fn boundary_manifests_are_accepted_and_reapply_idempotently() {
    crd_installed();
    let ns = TestNamespace::new("adm-valid");
    let files = yaml_files("tests/admission/valid");
    assert!(files.len() >= 4, "valid manifests: {files:?}");
    for file in &files {
        let applied = read_yaml(file);
        let name = applied["metadata"]["name"].as_str().unwrap();
        let what = file.file_name().unwrap().to_string_lossy();
        let out = kubectl_output(&["apply", "-n", ns.name(), "-f", path_str(file)]);
        assert!(out.status.success(), "{what} refused:\n{}", String::from_utf8_lossy(&out.stderr));
        // Every field the manifest sets is stored as written (defaults may add more).
        let stored = spec_of(ns.name(), name);
        assert_subset(&applied["spec"], &stored, &format!("{what}: spec"));

        let out = kubectl(&["apply", "-n", ns.name(), "-f", path_str(file)]);
        assert!(out.contains("unchanged"), "{what}: client-side re-apply: {out}");
        kubectl(&["apply", "--server-side", "-n", ns.name(), "-f", path_str(file)]);
        assert_eq!(generation_of(ns.name(), name), 1, "{what}: a re-apply changed the spec");
        kubectl(&["delete", "pb", name, "-n", ns.name(), "--wait=false"]);
    }
}

/// Every value in `want` is in `got` at the same place (objects may have more keys).
fn assert_subset(want: &Value, got: &Value, at: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                let g = g.get(k).unwrap_or_else(|| panic!("{at}.{k} was not stored"));
                assert_subset(v, g, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(want, got, "{at} stored differently"),
    }
}

// ---------------------------------------------------------------------------------------------
// Updates: immutable except suspend, parallelism and completion.completeBy
// ---------------------------------------------------------------------------------------------

fn set(v: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}")).as_object_mut().unwrap();
    obj.insert(key.to_string(), new);
}

fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}")).as_object_mut().unwrap();
    assert!(obj.remove(key).is_some(), "no {pointer} to remove");
}

#[derive(Clone, Copy)]
enum Base {
    /// `examples/batch-full.yaml`: every field set.
    Full,
    /// `tests/admission/valid/minimal.yaml`: required fields only.
    Minimal,
}

struct Update {
    what: &'static str,
    base: Base,
    edit: fn(&mut Value),
    /// `Some(substring of the error)`: refused; `None`: accepted.
    refused_with: Option<&'static str>,
    /// The field the edit touches, checked after an accepted update.
    pointer: &'static str,
}

fn a_stage() -> Value {
    json!({"template": {"spec": {"containers": [{"name": "c", "image": "registry.example.com/c:1"}]}}})
}

fn updates() -> Vec<Update> {
    vec![
        Update {
            what: "change gameDate",
            base: Base::Full,
            pointer: "/spec/gameDate",
            edit: |v| set(v, "/spec/gameDate", json!("2026-01-03")),
            refused_with: Some("spec.gameDate is immutable"),
        },
        Update {
            what: "change targetCount",
            base: Base::Full,
            pointer: "/spec/targetCount",
            edit: |v| set(v, "/spec/targetCount", json!(460)),
            refused_with: Some("spec.targetCount is immutable"),
        },
        Update {
            what: "change itemsPerShard",
            base: Base::Full,
            pointer: "/spec/itemsPerShard",
            edit: |v| set(v, "/spec/itemsPerShard", json!(10)),
            refused_with: Some("spec.itemsPerShard is immutable"),
        },
        Update {
            what: "change the worker image",
            base: Base::Full,
            pointer: "/spec/worker",
            edit: |v| {
                set(
                    v,
                    "/spec/worker/template/spec/containers/0/image",
                    json!("registry.example.com/nba/prediction-worker:1.4.3"),
                )
            },
            refused_with: Some("spec.worker is immutable"),
        },
        Update {
            what: "change worker.backoffLimitPerShard",
            base: Base::Full,
            pointer: "/spec/worker",
            edit: |v| set(v, "/spec/worker/backoffLimitPerShard", json!(5)),
            refused_with: Some("spec.worker is immutable"),
        },
        Update {
            what: "remove worker.maxFailedShards",
            base: Base::Full,
            pointer: "/spec/worker",
            edit: |v| remove(v, "/spec/worker/maxFailedShards"),
            refused_with: Some("spec.worker is immutable"),
        },
        Update {
            what: "change completion.minSucceededPercent",
            base: Base::Full,
            pointer: "/spec/completion",
            edit: |v| set(v, "/spec/completion/minSucceededPercent", json!(90)),
            refused_with: Some("spec.completion.minSucceededPercent is immutable"),
        },
        Update {
            what: "change rerun.token",
            base: Base::Full,
            pointer: "/spec/rerun",
            edit: |v| set(v, "/spec/rerun/token", json!("2")),
            refused_with: None,
        },
        Update {
            what: "rerun from a stage the batch does not have",
            base: Base::Minimal,
            pointer: "/spec/rerun",
            edit: |v| set(v, "/spec/rerun", json!({"token": "1", "from": "Export"})),
            refused_with: Some("spec.rerun.from is Export, but the batch has no export stage"),
        },
        Update {
            what: "change completion.onNoItems",
            base: Base::Full,
            pointer: "/spec/completion",
            edit: |v| set(v, "/spec/completion/onNoItems", json!("RunStages")),
            refused_with: Some("spec.completion.onNoItems is immutable"),
        },
        Update {
            what: "add a loader",
            base: Base::Minimal,
            pointer: "/spec/loader",
            edit: |v| set(v, "/spec/loader", a_stage()),
            refused_with: Some("spec.loader cannot be added or removed after creation"),
        },
        Update {
            what: "swap targetCount for a loader",
            base: Base::Minimal,
            pointer: "/spec/loader",
            edit: |v| {
                remove(v, "/spec/targetCount");
                set(v, "/spec/loader", a_stage());
            },
            refused_with: Some("spec.targetCount cannot be added or removed after creation"),
        },
        Update {
            what: "change completion.graceSeconds",
            base: Base::Full,
            pointer: "/spec/completion",
            edit: |v| set(v, "/spec/completion/graceSeconds", json!(0)),
            refused_with: Some("spec.completion.graceSeconds is immutable"),
        },
        Update {
            what: "remove completion.graceSeconds (back to its default 0)",
            base: Base::Full,
            pointer: "/spec/completion",
            edit: |v| remove(v, "/spec/completion/graceSeconds"),
            refused_with: Some("spec.completion.graceSeconds is immutable"),
        },
        Update {
            what: "change the consolidation image",
            base: Base::Full,
            pointer: "/spec/consolidation",
            edit: |v| set(v, "/spec/consolidation/template/spec/containers/0/image", json!("registry.example.com/c:2")),
            refused_with: Some("spec.consolidation is immutable"),
        },
        Update {
            what: "remove consolidation",
            base: Base::Full,
            pointer: "/spec/consolidation",
            edit: |v| remove(v, "/spec/consolidation"),
            refused_with: Some("spec.consolidation cannot be added or removed after creation"),
        },
        Update {
            what: "add consolidation",
            base: Base::Minimal,
            pointer: "/spec/consolidation",
            edit: |v| set(v, "/spec/consolidation", a_stage()),
            refused_with: Some("spec.consolidation cannot be added or removed after creation"),
        },
        Update {
            what: "change export.backoffLimit",
            base: Base::Full,
            pointer: "/spec/export",
            edit: |v| set(v, "/spec/export/backoffLimit", json!(1)),
            refused_with: Some("spec.export is immutable"),
        },
        Update {
            what: "remove export",
            base: Base::Full,
            pointer: "/spec/export",
            edit: |v| remove(v, "/spec/export"),
            refused_with: Some("spec.export cannot be added or removed after creation"),
        },
        Update {
            what: "add export",
            base: Base::Minimal,
            pointer: "/spec/export",
            edit: |v| set(v, "/spec/export", a_stage()),
            refused_with: Some("spec.export cannot be added or removed after creation"),
        },
        Update {
            what: "change ttlSecondsAfterFinished",
            base: Base::Full,
            pointer: "/spec/ttlSecondsAfterFinished",
            edit: |v| set(v, "/spec/ttlSecondsAfterFinished", json!(3600)),
            refused_with: Some("spec.ttlSecondsAfterFinished is immutable"),
        },
        Update {
            what: "remove ttlSecondsAfterFinished",
            base: Base::Full,
            pointer: "/spec/ttlSecondsAfterFinished",
            edit: |v| remove(v, "/spec/ttlSecondsAfterFinished"),
            refused_with: Some("spec.ttlSecondsAfterFinished cannot be added or removed after creation"),
        },
        Update {
            what: "add ttlSecondsAfterFinished",
            base: Base::Minimal,
            pointer: "/spec/ttlSecondsAfterFinished",
            edit: |v| set(v, "/spec/ttlSecondsAfterFinished", json!(60)),
            refused_with: Some("spec.ttlSecondsAfterFinished cannot be added or removed after creation"),
        },
        // The three fields that may change while a batch runs.
        Update {
            what: "suspend",
            base: Base::Full,
            pointer: "/spec/suspend",
            edit: |v| set(v, "/spec/suspend", json!(true)),
            refused_with: None,
        },
        Update {
            what: "change parallelism",
            base: Base::Full,
            pointer: "/spec/parallelism",
            edit: |v| set(v, "/spec/parallelism", json!(5)),
            refused_with: None,
        },
        Update {
            what: "move completion.completeBy",
            base: Base::Full,
            pointer: "/spec/completion/completeBy",
            edit: |v| set(v, "/spec/completion/completeBy", json!("2026-01-03T01:00:00+01:00")),
            refused_with: None,
        },
        Update {
            what: "turn completion.backupStragglers on (completeBy is set)",
            base: Base::Full,
            pointer: "/spec/completion/backupStragglers",
            edit: |v| set(v, "/spec/completion/backupStragglers", json!(true)),
            refused_with: None,
        },
        Update {
            what: "turn completion.backupStragglers on without a completeBy",
            base: Base::Minimal,
            pointer: "/spec/completion/backupStragglers",
            edit: |v| set(v, "/spec/completion", json!({ "backupStragglers": true })),
            refused_with: Some("spec.completion.backupStragglers needs spec.completion.completeBy"),
        },
        Update {
            what: "remove completion.completeBy",
            base: Base::Full,
            pointer: "/spec/completion/completeBy",
            edit: |v| remove(v, "/spec/completion/completeBy"),
            refused_with: None,
        },
        Update {
            what: "add completion.completeBy",
            base: Base::Minimal,
            pointer: "/spec/completion/completeBy",
            edit: |v| set(v, "/spec/completion", json!({"completeBy": "2026-01-03T00:30:00Z"})),
            refused_with: None,
        },
        Update {
            what: "suspend a minimal batch",
            base: Base::Minimal,
            pointer: "/spec/suspend",
            edit: |v| set(v, "/spec/suspend", json!(true)),
            refused_with: None,
        },
    ]
}

fn apply_json(ns: &str, manifest: &Value, server_side: bool) -> std::process::Output {
    let mut args = vec!["apply", "-n", ns, "-f", "-"];
    if server_side {
        args.push("--server-side");
    }
    let mut child = support::kubectl_command(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(manifest.to_string().as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs one update twice, the way the two kinds of GitOps do it: created and updated with
/// client-side apply, and created and updated with server-side apply (then the applier owns every
/// field, so leaving a field out of the manifest really removes it). Returns what went wrong.
fn check_update(ns: &str, i: usize, u: &Update) -> Vec<String> {
    let base = match u.base {
        Base::Full => read_yaml(&repo().join(FULL_EXAMPLE)),
        Base::Minimal => read_yaml(&repo().join("tests/admission/valid/minimal.yaml")),
    };
    let mut problems = Vec::new();
    for server_side in [false, true] {
        let how = if server_side { "kubectl apply --server-side" } else { "kubectl apply" };
        let name = format!("update-{i}-{}", if server_side { "ssa" } else { "csa" });
        let mut base = base.clone();
        set(&mut base, "/metadata/name", json!(name));
        let mut changed = base.clone();
        (u.edit)(&mut changed);
        assert_ne!(base, changed, "{}: the edit changes nothing", u.what);

        let out = apply_json(ns, &base, server_side);
        assert!(out.status.success(), "{}: base refused by `{how}`: {}", u.what, String::from_utf8_lossy(&out.stderr));
        let before = kubectl_json(&["get", "pb", &name, "-n", ns]);
        let out = apply_json(ns, &changed, server_side);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let now = kubectl_json(&["get", "pb", &name, "-n", ns]);
        match u.refused_with {
            Some(expect) => {
                if out.status.success() {
                    problems.push(format!(
                        "{}: ACCEPTED by `{how}`: {}",
                        u.what,
                        String::from_utf8_lossy(&out.stdout).trim()
                    ));
                } else if !stderr.contains(expect) {
                    problems.push(format!("{}: `{how}` error does not contain {expect:?}:\n{}", u.what, stderr.trim()));
                }
                if now["spec"] != before["spec"] || now["metadata"]["generation"] != before["metadata"]["generation"] {
                    problems.push(format!(
                        "{}: `{how}` was refused but the stored spec changed: {}",
                        u.what,
                        pretty(&now["spec"])
                    ));
                }
            }
            None => {
                if !out.status.success() {
                    problems.push(format!("{}: refused by `{how}`:\n{}", u.what, stderr.trim()));
                    continue;
                }
                if now.pointer(u.pointer) != changed.pointer(u.pointer) {
                    problems.push(format!(
                        "{}: after `{how}` {} is {:?}, applied {:?}",
                        u.what,
                        u.pointer,
                        now.pointer(u.pointer),
                        changed.pointer(u.pointer)
                    ));
                }
                if matches!(u.base, Base::Full) && now["spec"] != changed["spec"] {
                    problems.push(format!(
                        "{}: after `{how}` the stored spec is not the applied one: {}",
                        u.what,
                        pretty(&now["spec"])
                    ));
                }
                if now["metadata"]["generation"] != 2 {
                    problems.push(format!(
                        "{}: generation {} after `{how}`, expected 2",
                        u.what, now["metadata"]["generation"]
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn spec_is_immutable_except_suspend_parallelism_and_complete_by() {
    crd_installed();
    let ns = TestNamespace::new("adm-updates");
    let updates = updates();
    let next = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(u) = updates.get(i) else { break };
                    let p = check_update(ns.name(), i, u);
                    problems.lock().unwrap().extend(p);
                }
            });
        }
    });
    let problems = problems.into_inner().unwrap();
    assert!(problems.is_empty(), "{} problems with updates:\n\n{}", problems.len(), problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Printer columns and kubectl explain
// ---------------------------------------------------------------------------------------------

fn header(table: &str) -> Vec<String> {
    table.lines().next().unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

#[test]
fn printer_columns_show_date_phase_progress_failed_duration_and_wide_shards_eta_message() {
    crd_installed();
    let ns = TestNamespace::new("adm-columns");
    let file = repo().join(FULL_EXAMPLE);
    let name = read_yaml(&file)["metadata"]["name"].as_str().unwrap().to_string();
    kubectl(&["apply", "-n", ns.name(), "-f", path_str(&file)]);

    // A status as the controller would write it, through the status subresource.
    let status = json!({"status": {
        "observedGeneration": 1,
        "phase": "Running",
        "progress": "112/450",
        "items": {"target": 450, "succeeded": 112, "failed": 5},
        "shards": {"total": 90, "succeeded": 22, "failed": 1, "active": 30},
        "eta": {"completionTime": "2026-01-02T12:09:40Z", "shardsPerMinute": "12.5"},
        "conditions": [{
            "type": "Ready", "status": "False", "reason": "Running", "observedGeneration": 1,
            "message": "23 of 90 shards done", "lastTransitionTime": "2026-01-02T12:00:00Z"
        }]
    }});
    kubectl(&[
        "patch",
        "pb",
        &name,
        "-n",
        ns.name(),
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);

    let narrow = ["NAME", "DATE", "PHASE", "PROGRESS", "FAILED", "DURATION", "AGE"];
    for resource in ["pb", "predictions", "predictionbatches", "predictionbatch.predictions.dev"] {
        let table = kubectl(&["get", resource, "-n", ns.name()]);
        assert_eq!(header(&table), narrow, "kubectl get {resource}:\n{table}");
        // The category holds two kinds (PredictionSchedule too), so kubectl names rows by kind.
        let shown =
            if resource == "predictions" { format!("predictionbatch.predictions.dev/{name}") } else { name.clone() };
        let cells: Vec<&str> = row(&table, &shown).split_whitespace().collect();
        assert_eq!(
            &cells[..5],
            [shown.as_str(), "2026-01-02", "Running", "112/450", "5"],
            "kubectl get {resource}:\n{table}"
        );
    }

    let wide = kubectl(&["get", "pb", "-o", "wide", "-n", ns.name()]);
    let mut want: Vec<&str> = narrow.to_vec();
    want.extend(["SHARDS", "ETA", "MESSAGE"]);
    assert_eq!(header(&wide), want, "kubectl get pb -o wide:\n{wide}");
    let line = row(&wide, &name);
    let cells: Vec<&str> = line.split_whitespace().collect();
    // DURATION is empty while the batch runs, so the cells after FAILED move up by one.
    assert_eq!(cells[6], "90", "SHARDS column:\n{wide}");
    assert_eq!(cells[7], "2026-01-02T12:09:40Z", "ETA column:\n{wide}");

    // Once ended, DURATION shows.
    let ended = json!({"status": {"phase": "Succeeded", "duration": "4m12s", "eta": null}});
    let patch = ended.to_string();
    kubectl(&["patch", "pb", &name, "-n", ns.name(), "--subresource=status", "--type=merge", "-p", &patch]);
    let table = kubectl(&["get", "pb", "-n", ns.name()]);
    let cells: Vec<String> = row(&table, &name).split_whitespace().map(str::to_string).collect();
    assert_eq!(cells[5], "4m12s", "DURATION column:\n{table}");
    assert!(line.trim_end().ends_with("23 of 90 shards done"), "MESSAGE column:\n{wide}");
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn kubectl_explain_shows_the_rust_doc_comments() {
    crd_installed();
    // The descriptions in crds/ come from the doc comments on the Rust fields (the drift test keeps
    // them in step); kubectl wraps them, so compare with whitespace squashed.
    let crd = read_yaml(&repo().join("crds/predictions.dev_predictionbatches.yaml"));
    let completion =
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["completion"];
    let mut docs: Vec<String> = vec![completion["description"].as_str().unwrap().to_string()];
    for field in ["minSucceededPercent", "graceSeconds", "completeBy"] {
        docs.push(
            completion["properties"][field]["description"]
                .as_str()
                .unwrap_or_else(|| panic!("no doc on {field}"))
                .to_string(),
        );
    }
    // Literally from src/api/spec.rs, so an empty description can't pass.
    assert!(docs[1].starts_with("Quorum: the share of items"), "{docs:?}");

    // The OpenAPI document is published a moment after the CRD is Established.
    let out = support::wait_until(
        "kubectl explain to show the completion docs",
        Duration::from_secs(30),
        || {
            let out = kubectl_output(&["explain", "predictionbatch.spec.completion"]);
            let text = squash(&String::from_utf8_lossy(&out.stdout));
            (out.status.success() && docs.iter().all(|d| text.contains(&squash(d)))).then_some(text)
        },
        || {
            String::from_utf8_lossy(&kubectl_output(&["explain", "predictionbatch.spec.completion"]).stdout)
                .into_owned()
        },
    );
    for field in ["completeBy", "graceSeconds", "minSucceededPercent"] {
        assert!(out.contains(field), "{out}");
    }
    // The whole spec is documented, too.
    let spec = squash(&kubectl(&["explain", "pb.spec"]));
    for phrase in [
        "Game date this batch predicts, as YYYY-MM-DD",
        "Number of work items",
        "How many worker shards may run at once",
    ] {
        assert!(spec.contains(phrase), "kubectl explain pb.spec lacks {phrase:?}:\n{spec}");
    }
}

#[test]
fn crd_applies_again_both_ways() {
    crd_installed();
    // What GitOps does to the CRD itself: re-apply, client-side and server-side, unchanged.
    let crds = repo().join("crds");
    let out = kubectl(&["apply", "-f", path_str(&crds)]);
    assert!(out.contains("unchanged") || out.contains("configured"), "{out}");
    let out = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", path_str(&crds)]);
    assert!(out.contains("serverside-applied"), "{out}");
    let crd = kubectl_json(&["get", "crd", CRD]);
    let established = crd["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Established" && c["status"] == "True"));
    assert!(established, "{}", pretty(&crd["status"]));
    // Names the issue fixes.
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["pb"]));
    assert_eq!(crd["spec"]["names"]["categories"], json!(["predictions"]));
}
