//! kwok Stages of one test: copies of a Stage of tests/cluster/stages/ that act only on the worker
//! pods of the test's namespace (kwok runs with `--enable-crds=Stage`, so tests can add their own).
//! They let a test make the pods of an unmodified manifest (an example) fail or straggle.

use serde_json::{Value, json};

use super::{kubectl_output, kubectl_stdin};

/// A kwok Stage of one test, deleted when dropped: a copy of one of tests/cluster/stages/ that
/// acts only on the worker pods of `ns` with one of `indexes`.
pub struct TestStage {
    name: String,
}

impl TestStage {
    /// `base` (a Stage of `stages_file`) renamed, restricted to pods of `ns` whose completion index
    /// is in `indexes`, its spec then changed by `edit`.
    pub fn new(stages_file: &str, base: &str, ns: &str, indexes: &[&str], edit: impl FnOnce(&mut Value)) -> TestStage {
        let index = json!({
            "key": ".metadata.annotations[\"batch.kubernetes.io/job-completion-index\"]",
            "operator": "In",
            "values": indexes,
        });
        TestStage::selecting(stages_file, base, &format!("{base}-{ns}"), ns, index, edit)
    }

    /// `base` renamed to `name`, restricted to pods of `ns` that match `select` (a kwok
    /// selector expression), its spec then changed by `edit`.
    fn selecting(
        stages_file: &str,
        base: &str,
        name: &str,
        ns: &str,
        select: Value,
        edit: impl FnOnce(&mut Value),
    ) -> TestStage {
        let path = format!("{}/tests/cluster/stages/{stages_file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut stage: Value = serde_yaml::Deserializer::from_str(&text)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("a YAML document"))
            .find(|s| s["metadata"]["name"] == base)
            .unwrap_or_else(|| panic!("no Stage {base} in {path}"));
        stage["metadata"] = json!({ "name": name });
        // Keep "not being deleted" and "Running"; drop the base's own pod selection.
        let keep = [".metadata.deletionTimestamp", ".status.phase"];
        let mut exprs: Vec<Value> = stage["spec"]["selector"]["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| keep.iter().any(|k| e["key"].as_str() == Some(*k)))
            .cloned()
            .collect();
        exprs.push(json!({ "key": ".metadata.namespace", "operator": "In", "values": [ns] }));
        exprs.push(select);
        stage["spec"]["selector"]["matchExpressions"] = Value::Array(exprs);
        stage["spec"]["weight"] = json!(100);
        edit(&mut stage["spec"]);
        kubectl_stdin(&["apply", "-f", "-"], &stage.to_string());
        TestStage { name: name.to_string() }
    }

    /// Pods of `ns` of one stage (`predictions.dev/stage` label, e.g. "export") fail on every
    /// attempt, as while a service the stage needs is down.
    pub fn fail_stage(ns: &str, stage: &str) -> TestStage {
        let select =
            json!({ "key": ".metadata.labels[\"predictions.dev/stage\"]", "operator": "In", "values": [stage] });
        TestStage::selecting("pod-fail.yaml", "pod-fail-shards-3-7", &format!("fail-{stage}-{ns}"), ns, select, |_| {})
    }

    /// Loader pods of `ns` succeed with `message` as their termination message, as a loader
    /// container that wrote it to /dev/termination-log.
    pub fn loader_output(ns: &str, message: &str) -> TestStage {
        let select =
            json!({ "key": ".metadata.labels[\"predictions.dev/stage\"]", "operator": "In", "values": ["loader"] });
        TestStage::selecting("pod-complete.yaml", "pod-complete", &format!("loader-output-{ns}"), ns, select, |spec| {
            let template = spec["next"]["statusTemplate"].as_str().unwrap().to_string();
            let lookup = template
                .lines()
                .find(|l| l.contains("termination-message"))
                .expect("pod-complete writes a termination message")
                .trim()
                .to_string();
            // A Go template raw string holds the JSON as it is.
            let literal = format!("message: {{{{ `{message}` | Quote }}}}");
            spec["next"]["statusTemplate"] = json!(template.replace(&lookup, &literal));
        })
    }

    /// Worker pods of `ns` with these completion indexes fail on every attempt.
    pub fn fail(ns: &str, indexes: &[&str]) -> TestStage {
        TestStage::new("pod-fail.yaml", "pod-fail-shards-3-7", ns, indexes, |_| {})
    }

    /// Worker pods of `ns` with these completion indexes stay Pending with every container
    /// waiting for `reason` (e.g. `ImagePullBackOff`), as the kubelet reports a pull that fails.
    /// Its times are the pod's creation, so applying it again changes nothing (no event loop).
    pub fn waiting(ns: &str, indexes: &[&str], reason: &str) -> TestStage {
        TestStage::new("pod-ready.yaml", "pod-ready", ns, indexes, |spec| {
            let status = format!(
                r#"{{{{ $now := .metadata.creationTimestamp }}}}
conditions:
- type: PodScheduled
  status: "True"
  lastTransitionTime: {{{{ $now | Quote }}}}
- type: Ready
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{{{ $now | Quote }}}}
containerStatuses:
{{{{ range .spec.containers }}}}
- name: {{{{ .name | Quote }}}}
  image: {{{{ .image | Quote }}}}
  imageID: ""
  ready: false
  started: false
  restartCount: 0
  state:
    waiting:
      reason: {reason}
      message: {{{{ printf "Back-off pulling image %q" .image | Quote }}}}
{{{{ end }}}}
hostIP: {{{{ NodeIPWith .spec.nodeName | Quote }}}}
phase: Pending
startTime: {{{{ $now | Quote }}}}
"#
            );
            spec["next"]["statusTemplate"] = json!(status);
        })
    }

    /// Worker pods of `ns` with these completion indexes run for an hour (stragglers).
    pub fn straggle(ns: &str, indexes: &[&str]) -> TestStage {
        TestStage::new("pod-complete.yaml", "pod-complete", ns, indexes, |spec| {
            spec["delay"] = json!({ "durationMilliseconds": 3_600_000, "jitterDurationMilliseconds": 3_600_000 });
        })
    }
}

impl Drop for TestStage {
    fn drop(&mut self) {
        let _ = kubectl_output(&["delete", "stage", &self.name, "--ignore-not-found", "--wait=false"]);
    }
}
