//! Which pod holds a shard's or a stage's logs. The controller labels every Job and pod with
//! `predictions.dev/batch` and `predictions.dev/stage` (src/labels.rs); a worker pod's shard is its
//! completion index in the Indexed worker Job, or, in the one-shard Jobs of reruns
//! (`<batch>-r<attempt>-workers-<shard>`) and backup runs (`<batch>-workers-b<shard>`), the
//! `SHARD_INDEX` the controller set in its containers.

use k8s_openapi::api::core::v1::Pod;
use prediction_batch_controller::api::Stage;
use prediction_batch_controller::api::env::SHARD_INDEX;
use prediction_batch_controller::api::stage::batch_label_value;
use prediction_batch_controller::labels::{BATCH_LABEL, STAGE_LABEL};

/// Annotation (and label) of an Indexed Job's pods: the completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Annotation naming the container `kubectl logs` picks by default.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Shard(u32),
    Stage(Stage),
}

impl Target {
    pub fn stage(self) -> Stage {
        match self {
            Target::Shard(_) => Stage::Workers,
            Target::Stage(s) => s,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Target::Shard(n) => format!("shard {n}"),
            Target::Stage(s) => format!("stage {}", s.label()),
        }
    }
}

/// The label selector of the pods of `batch`'s `stage`.
pub fn selector(batch: &str, stage: Stage) -> String {
    format!("{BATCH_LABEL}={},{STAGE_LABEL}={}", batch_label_value(batch), stage.label())
}

/// The shard a worker pod runs: its completion index, else the SHARD_INDEX value in its containers.
pub fn shard_of(pod: &Pod) -> Option<u32> {
    let meta = &pod.metadata;
    let index = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)));
    if let Some(i) = index.and_then(|i| i.parse().ok()) {
        return Some(i);
    }
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == SHARD_INDEX && e.value.is_some())
        .and_then(|e| e.value.as_deref()?.parse().ok())
}

/// The pods of `target` among `pods` (already those of its stage), newest first.
pub fn matching(pods: &[Pod], target: Target) -> Vec<&Pod> {
    let stage = target.stage().label();
    let mut found: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(STAGE_LABEL)).map(String::as_str) == Some(stage))
        .filter(|p| match target {
            Target::Shard(n) => shard_of(p) == Some(n),
            Target::Stage(_) => true,
        })
        .collect();
    found.sort_by(|a, b| {
        let key = |p: &Pod| (p.metadata.creation_timestamp.clone(), p.metadata.name.clone());
        key(b).cmp(&key(a))
    });
    found
}

/// The container whose logs to show: `wanted`, else the pod's default-container annotation,
/// else its first container.
pub fn container(pod: &Pod, wanted: Option<&str>) -> Option<String> {
    if let Some(w) = wanted {
        return Some(w.to_string());
    }
    let annotated = pod.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CONTAINER)).cloned();
    annotated.or_else(|| pod.spec.as_ref()?.containers.first().map(|c| c.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, created: &str, stage: &str, index: Option<&str>, env_shard: Option<&str>) -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "creationTimestamp": created,
                         "labels": {"predictions.dev/batch": "b", "predictions.dev/stage": stage}},
            "spec": {"containers": [{"name": "worker", "image": "w", "env": []}]}
        });
        if let Some(i) = index {
            p["metadata"]["annotations"] = json!({ COMPLETION_INDEX: i });
        }
        if let Some(s) = env_shard {
            p["spec"]["containers"][0]["env"] =
                json!([{"name": "PREDICTION_BATCH", "value": "b"}, {"name": "SHARD_INDEX", "value": s}]);
        } else {
            p["spec"]["containers"][0]["env"] = json!([{"name": "SHARD_INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]);
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn the_newest_pod_of_a_shard_whatever_job_ran_it() {
        let pods = [
            pod("b-workers-0-aaaaa", "2026-01-02T12:00:00Z", "workers", Some("0"), None),
            pod("b-workers-3-bbbbb", "2026-01-02T12:00:00Z", "workers", Some("3"), None),
            pod("b-workers-3-ccccc", "2026-01-02T12:00:05Z", "workers", Some("3"), None),
            pod("b-r2-workers-3-ddddd", "2026-01-02T12:10:00Z", "workers", None, Some("3")),
            pod("b-export-eeeee", "2026-01-02T12:01:00Z", "export", None, None),
        ];
        let names = |t| matching(&pods, t).iter().map(|p| p.metadata.name.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(names(Target::Shard(3)), ["b-r2-workers-3-ddddd", "b-workers-3-ccccc", "b-workers-3-bbbbb"]);
        assert_eq!(names(Target::Shard(0)), ["b-workers-0-aaaaa"]);
        assert!(names(Target::Shard(9)).is_empty());
        assert_eq!(names(Target::Stage(Stage::Export)), ["b-export-eeeee"]);
        assert_eq!(names(Target::Stage(Stage::Workers))[0], "b-r2-workers-3-ddddd");
        assert_eq!(container(&pods[0], None).as_deref(), Some("worker"));
        assert_eq!(container(&pods[0], Some("side")).as_deref(), Some("side"));
    }

    #[test]
    fn selectors_use_the_controllers_labels() {
        assert_eq!(
            selector("nba-2026-01-02", Stage::Export),
            "predictions.dev/batch=nba-2026-01-02,predictions.dev/stage=export"
        );
        let long = "x".repeat(70);
        assert!(selector(&long, Stage::Workers).len() < 63 + 60);
    }
}
