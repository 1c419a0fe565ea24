//! Builders for the three child Jobs (pure). Every Job gets a deterministic name, a controller
//! ownerReference to its batch, our labels, and the env contract its containers rely on.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::ranges::IndexSet;
use super::shards::ShardLayout;
use crate::api::stage::{backup_job_name, batch_label_value, shard_job_name};
use crate::api::{PodTemplate, PredictionBatch, PredictionBatchSpec, PredictionBatchStatus, Stage, env};
use crate::labels::{BATCH_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, OUTCOME_FINALIZER, STAGE_LABEL};

/// Annotation the Job controller puts on Indexed Job pods.
const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// Labels identifying a batch's children (also the selector of the controller's Job watch).
pub fn child_labels(batch: &PredictionBatch, stage: Stage) -> BTreeMap<String, String> {
    BTreeMap::from([
        (BATCH_LABEL.to_string(), batch_label_value(batch.metadata.name.as_deref().unwrap_or_default())),
        (STAGE_LABEL.to_string(), stage.label().to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
    ])
}

/// The user's pod template of `stage`, `None` when the spec has no such stage.
pub fn user_template(batch: &PredictionBatch, stage: Stage) -> Option<&PodTemplate> {
    batch.spec.template(stage)
}

/// True when this copy of the batch (a cached one) had the template of `stage` dropped: the
/// batch must be read in full before its Job can be built.
pub fn template_dropped(batch: &PredictionBatch, stage: Stage) -> bool {
    user_template(batch, stage).is_some_and(|t| t.get().is_none())
}

/// The Job for `stage`, or `None` when the spec has no such stage, this copy of the batch lacks
/// its template ([`template_dropped`]), the batch has no UID yet, or the stage needs the item
/// count and the loader has not reported it (or reported none: no worker Job on an empty day).
pub fn build(batch: &PredictionBatch, stage: Stage) -> Option<Job> {
    build_for(batch, stage, batch.items_target())
}

/// The Job for a server-side dry run before the first Job is created: a stage whose count the
/// loader has not reported yet is checked as if there were one item.
pub fn build_for_dry_run(batch: &PredictionBatch, stage: Stage) -> Option<Job> {
    build_for(batch, stage, Some(batch.items_target().unwrap_or(1).max(1)))
}

fn build_for(batch: &PredictionBatch, stage: Stage, target: Option<u32>) -> Option<Job> {
    let spec = &batch.spec;
    let name = batch.metadata.name.clone()?;
    let owner = batch.controller_owner_ref(&())?;
    let labels = child_labels(batch, stage);
    let status = batch.status.clone().unwrap_or_default();

    let mut vars = vec![var(env::PREDICTION_BATCH, &name), var(env::GAME_DATE, &spec.game_date)];
    let user = user_template(batch, stage)?.get()?;
    let job_spec = if stage == Stage::Loader {
        one_shot_job(spec.one_shot(stage)?.backoff_limit, pod_template(user, &labels, &vars))
    } else {
        // A zero count is a layout with no shards (only consolidation and export may run).
        let layout = ShardLayout { target: target?, per_shard: spec.items_per_shard.max(1) };
        let shards = layout.shard_count();
        vars.extend([
            var(env::TARGET_COUNT, &layout.target.to_string()),
            var(env::SHARD_COUNT, &shards.to_string()),
            var(env::ITEMS_PER_SHARD, &spec.items_per_shard.to_string()),
        ]);
        if let Some(items_ref) = &status.items_ref {
            vars.push(var(env::ITEMS_REF, items_ref));
        }
        if stage == Stage::Workers {
            if shards == 0 {
                return None;
            }
            worker_job(spec, shards, user, &labels, vars)
        } else {
            vars.extend(result_env(&status, layout));
            one_shot_job(spec.one_shot(stage)?.backoff_limit, pod_template(user, &labels, &vars))
        }
    };
    Some(Job {
        metadata: ObjectMeta {
            name: Some(batch.job_name(stage)),
            namespace: batch.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            // Held until the stage's outcome is in the batch status, so a Job deleted early (by a
            // person, a TTL policy, a janitor) stays readable until its outcome is recorded.
            finalizers: Some(vec![OUTCOME_FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(JobSpec { suspend: Some(spec.suspend), ..job_spec }),
        status: None,
    })
}

/// The Job of one shard rerun alone (an attempt that reruns failed shards): the worker template
/// and env, `SHARD_INDEX` the shard's real index, retried `backoffLimitPerShard` times.
pub fn build_shard(batch: &PredictionBatch, shard: u32) -> Option<Job> {
    let attempt = batch.status.as_ref().map_or(1, PredictionBatchStatus::attempt);
    single_shard(batch, shard, shard_job_name(batch.metadata.name.as_deref()?, attempt, shard))
}

/// The Job of a straggling shard's backup run: the same as a rerun shard's, by another name.
pub fn build_backup(batch: &PredictionBatch, shard: u32) -> Option<Job> {
    single_shard(batch, shard, backup_job_name(batch.metadata.name.as_deref()?, shard))
}

fn single_shard(batch: &PredictionBatch, shard: u32, name: String) -> Option<Job> {
    let mut job = build(batch, Stage::Workers)?;
    job.metadata.name = Some(name);
    let spec = job.spec.as_mut()?;
    spec.completion_mode = None;
    spec.completions = Some(1);
    spec.parallelism = Some(1);
    spec.backoff_limit = Some(batch.spec.worker.backoff_limit_per_shard);
    spec.backoff_limit_per_index = None;
    spec.max_failed_indexes = None;
    let pod = spec.template.spec.as_mut()?;
    let init = pod.init_containers.iter_mut().flatten();
    for c in pod.containers.iter_mut().chain(init) {
        for var in c.env.iter_mut().flatten().filter(|v| v.name == env::SHARD_INDEX && v.value_from.is_some()) {
            *var = self::var(env::SHARD_INDEX, &shard.to_string());
        }
    }
    Some(job)
}

/// The worker stage: one Indexed Job, a completion index per shard.
fn worker_job(
    spec: &PredictionBatchSpec,
    shards: u32,
    user: &PodTemplateSpec,
    labels: &BTreeMap<String, String>,
    mut vars: Vec<EnvVar>,
) -> JobSpec {
    vars.push(EnvVar {
        name: env::SHARD_INDEX.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let template = pod_template(user, labels, &vars);
    let never = template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never");
    let shards = i32::try_from(shards).unwrap_or(i32::MAX);
    JobSpec {
        completion_mode: Some("Indexed".into()),
        completions: Some(shards),
        parallelism: Some(i32::try_from(spec.parallelism).unwrap_or(i32::MAX).min(shards)),
        backoff_limit_per_index: Some(spec.worker.backoff_limit_per_shard),
        // Admission can only bound it by a count known when the batch is written; a loaded count
        // may be smaller, and more failed shards than there are is the same as no limit.
        max_failed_indexes: spec.worker.max_failed_shards.map(|m| m.min(shards)),
        // Evictions and preemptions are not the shard's fault: don't spend its retries on them.
        // (A pod failure policy requires restartPolicy Never.)
        pod_failure_policy: never.then(|| PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                ..Default::default()
            }],
        }),
        template,
        ..Default::default()
    }
}

/// A stage that runs one pod once (retried up to `backoff_limit` times).
fn one_shot_job(backoff_limit: i32, template: PodTemplateSpec) -> JobSpec {
    JobSpec {
        completions: Some(1),
        parallelism: Some(1),
        backoff_limit: Some(backoff_limit),
        template,
        ..Default::default()
    }
}

/// SUCCEEDED_SHARDS / FAILED_SHARDS / SUCCEEDED_ITEMS: the fixed result of the worker stage.
fn result_env(status: &PredictionBatchStatus, layout: ShardLayout) -> Vec<EnvVar> {
    let succeeded = IndexSet::parse_opt(status.succeeded_shards.as_deref()).unwrap_or_default();
    let failed = succeeded.complement(layout.shard_count());
    vec![
        var(env::SUCCEEDED_SHARDS, &succeeded.to_string()),
        var(env::FAILED_SHARDS, &failed.to_string()),
        var(env::SUCCEEDED_ITEMS, &layout.items_in(&succeeded).to_string()),
    ]
}

fn var(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The user's template with our labels added (theirs kept; ours win on a clash, since selectors
/// rely on them), restartPolicy Never unless set, and our env first in every container (a
/// container's own env with the same name comes later and wins, as Kubernetes resolves it).
fn pod_template(user: &PodTemplateSpec, labels: &BTreeMap<String, String>, env_vars: &[EnvVar]) -> PodTemplateSpec {
    let mut t = user.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    let l = meta.labels.get_or_insert_with(Default::default);
    l.extend(labels.clone());
    let pod = t.spec.get_or_insert_with(Default::default);
    pod.restart_policy.get_or_insert_with(|| "Never".into());
    // Init containers too: the README promises the env to every container of every stage.
    let init = pod.init_containers.iter_mut().flatten();
    for c in pod.containers.iter_mut().chain(init) {
        let mut all = env_vars.to_vec();
        all.extend(c.env.take().unwrap_or_default());
        c.env = Some(all);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{StageSpec, WorkerSpec};

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"team": "nba"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "main", "image": image, "env": [{"name": "GAME_DATE", "value": "override"}]}]}
        }))
        .unwrap()
    }

    fn batch() -> PredictionBatch {
        let spec: PredictionBatchSpec = serde_json::from_value(serde_json::json!({
            "gameDate": "2026-01-02", "targetCount": 120, "itemsPerShard": 4, "parallelism": 50,
            "worker": {"template": serde_json::to_value(template("w")).unwrap()},
        }))
        .unwrap();
        let mut b = PredictionBatch::new(
            "nba-2026-01-02",
            PredictionBatchSpec {
                consolidation: Some(StageSpec { template: template("c").into(), backoff_limit: 2 }),
                worker: WorkerSpec { max_failed_shards: Some(5), ..spec.worker.clone() },
                ..spec
            },
        );
        b.metadata.namespace = Some("ns".into());
        b.metadata.uid = Some("uid-1".into());
        b
    }

    #[test]
    fn worker_job_is_indexed_with_per_shard_retries() {
        let job = build(&batch(), Stage::Workers).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("nba-2026-01-02-workers"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("uid-1", Some(true)));
        let spec = job.spec.unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(30));
        assert_eq!(spec.parallelism, Some(30));
        assert_eq!(spec.backoff_limit_per_index, Some(3));
        assert_eq!(spec.max_failed_indexes, Some(5));
        assert_eq!(spec.suspend, Some(false));
        assert!(spec.ttl_seconds_after_finished.is_none(), "TTL is applied by the controller, not the Job");
        let meta = spec.template.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "nba");
        assert_eq!(labels[STAGE_LABEL], "workers");
        assert_eq!(labels[BATCH_LABEL], "nba-2026-01-02");
        assert_eq!(meta.annotations.unwrap()["a"], "b");
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let names: Vec<_> = pod.containers[0].env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "PREDICTION_BATCH",
                "GAME_DATE",
                "TARGET_COUNT",
                "SHARD_COUNT",
                "ITEMS_PER_SHARD",
                "SHARD_INDEX",
                "GAME_DATE"
            ]
        );
    }

    #[test]
    fn init_containers_get_the_env_contract_too() {
        let mut b = batch();
        let mut t = b.spec.worker.template.get().unwrap().clone();
        t.spec.as_mut().unwrap().init_containers =
            Some(vec![serde_json::from_value(serde_json::json!({"name": "fetch", "image": "f"})).unwrap()]);
        b.spec.worker.template = t.into();
        let job = build(&b, Stage::Workers).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let init = &pod.init_containers.unwrap()[0];
        let names: Vec<_> = init.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names[..2], ["PREDICTION_BATCH", "GAME_DATE"]);
        assert!(names.contains(&"SHARD_INDEX"));
    }

    #[test]
    fn every_job_carries_the_outcome_finalizer() {
        let mut b = batch();
        b.status = Some(PredictionBatchStatus::default());
        for stage in [Stage::Workers, Stage::Consolidation] {
            let job = build(&b, stage).unwrap();
            assert_eq!(job.metadata.finalizers, Some(vec![OUTCOME_FINALIZER.to_string()]), "{stage:?}");
        }
    }

    #[test]
    fn consolidation_gets_the_fixed_result() {
        let mut b = batch();
        b.status = Some(PredictionBatchStatus { succeeded_shards: Some("0-2,4-6,8-29".into()), ..Default::default() });
        let job = build(&b, Stage::Consolidation).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("nba-2026-01-02-consolidate"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(2));
        assert!(spec.completion_mode.is_none());
        let env = spec.template.spec.unwrap().containers[0].env.clone().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone()).unwrap();
        assert_eq!(get("SUCCEEDED_SHARDS"), "0-2,4-6,8-29");
        assert_eq!(get("FAILED_SHARDS"), "3,7");
        assert_eq!(get("SUCCEEDED_ITEMS"), "112");
        assert!(build(&b, Stage::Export).is_none(), "no export stage in the spec");
    }
}
