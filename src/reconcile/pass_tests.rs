//! In-process tests of one reconcile pass against a scripted apiserver (a `tower-test` mock under
//! a real `kube::Client`, as kube-rs/controller-rs does): each path of [`fresh`](super::fresh)
//! and of the idempotent actions, without a cluster. The fake holds one batch and its Jobs,
//! answers like the apiserver (resourceVersion-conditional status writes, AlreadyExists, 404),
//! and takes scripted refusals.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::batch::v1::Job;
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::clock::PassClock;
use super::fresh::{Learned, Reread, View};
use super::run::reconcile_inner;
use crate::api::{PredictionBatch, Stage, StageState};
use crate::context::Context;

const NS: &str = "default";
const NAME: &str = "b";
const BATCH_UID: &str = "batch-uid";

/// A refusal the fake gives once, to the first request that matches.
struct Refusal {
    method: Method,
    /// A part of the request's path and query.
    path_has: &'static str,
    code: u16,
    reason: &'static str,
}

#[derive(Default)]
struct FakeApi {
    batch: Value,
    jobs: BTreeMap<String, Value>,
    rv: u64,
    refusals: Vec<Refusal>,
    /// Every request but Events, as `METHOD path?query -> code`.
    log: Vec<String>,
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code})
}

impl FakeApi {
    fn answer(&mut self, method: &Method, path: &str, query: &str, body: Value) -> (u16, Value) {
        let target = format!("{path}?{query}");
        if let Some(i) = self.refusals.iter().position(|r| r.method == *method && target.contains(r.path_has)) {
            let r = self.refusals.remove(i);
            return (r.code, status_body(r.code, r.reason, "refused by the test"));
        }
        let batch_path = format!("/apis/predictions.dev/v1alpha1/namespaces/{NS}/predictionbatches/{NAME}");
        let jobs_path = format!("/apis/batch/v1/namespaces/{NS}/jobs");
        let job_name = path.strip_prefix(&format!("{jobs_path}/")).map(str::to_string);
        match (method.as_str(), path) {
            ("GET", p) if p == batch_path => (200, self.batch.clone()),
            ("PATCH", p) if p == format!("{batch_path}/status") => {
                let stored = self.batch["metadata"]["resourceVersion"].clone();
                if body["metadata"]["resourceVersion"] != stored {
                    return (409, status_body(409, "Conflict", "the object has been modified"));
                }
                self.rv += 1;
                self.batch["status"] = body["status"].clone();
                self.batch["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                (200, self.batch.clone())
            }
            ("POST", p) if p == jobs_path => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if self.jobs.contains_key(&name) {
                    return (409, status_body(409, "AlreadyExists", "jobs.batch already exists"));
                }
                let mut job = body;
                job["metadata"]["uid"] = json!(format!("uid-{name}"));
                job["metadata"]["resourceVersion"] = json!("1");
                if !query.contains("dryRun") {
                    self.jobs.insert(name, job.clone());
                }
                (201, job)
            }
            ("GET", _) if job_name.is_some() => match self.jobs.get(job_name.as_deref().unwrap_or_default()) {
                Some(job) => (200, job.clone()),
                None => (404, status_body(404, "NotFound", "jobs.batch not found")),
            },
            ("PATCH", _) if job_name.is_some() => match self.jobs.get_mut(job_name.as_deref().unwrap_or_default()) {
                Some(job) => {
                    for (k, v) in body["spec"].as_object().cloned().unwrap_or_default() {
                        job["spec"][k] = v;
                    }
                    (200, job.clone())
                }
                None => (404, status_body(404, "NotFound", "jobs.batch not found")),
            },
            _ => (404, status_body(404, "NotFound", "not served by the fake")),
        }
    }
}

/// Serves `fake` until the client is dropped.
fn serve(fake: Arc<Mutex<FakeApi>>) -> kube::Client {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (path, query) = (parts.uri.path().to_string(), parts.uri.query().unwrap_or_default().to_string());
            let (code, answer) = if path.contains("/events") {
                (201, body)
            } else {
                let mut fake = fake.lock().unwrap();
                let (code, answer) = fake.answer(&parts.method, &path, &query, body);
                let dry = if query.contains("dryRun") { " (dry run)" } else { "" };
                fake.log.push(format!("{} {path}{dry} -> {code}", parts.method));
                (code, answer)
            };
            let response = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            respond.send_response(response);
        }
    });
    kube::Client::new(mock, NS)
}

fn context(client: kube::Client, cached_jobs: Vec<Job>) -> Context {
    let (jobs, mut writer) = reflector::store();
    for job in cached_jobs {
        writer.apply_watcher_event(&watcher::Event::Apply(job));
    }
    Context::for_tests(client, jobs)
}

fn template(image: &str) -> Value {
    json!({"spec": {"containers": [{"name": "c", "image": image}], "restartPolicy": "Never"}})
}

/// The batch as stored: resourceVersion `rv`, with `status`.
fn stored_batch(rv: &str, status: Value) -> Value {
    json!({
        "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
        "metadata": {"name": NAME, "namespace": NS, "uid": BATCH_UID, "generation": 1, "resourceVersion": rv},
        "spec": {
            "gameDate": "2026-01-02", "targetCount": 4, "parallelism": 2,
            "worker": {"template": template("worker")},
            "consolidation": {"template": template("consolidate")},
        },
        "status": status,
    })
}

fn owned_job(stage: Stage, parallelism: i32) -> Value {
    let name = stage.job_name(NAME);
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "resourceVersion": "1",
            "ownerReferences": [{"apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
                "name": NAME, "uid": BATCH_UID, "controller": true}],
        },
        "spec": {"parallelism": parallelism, "completions": 2, "completionMode": "Indexed", "template": template("worker")},
        "status": {"active": 1},
    })
}

/// Runs one pass of the batch `cached` (as the controller's cache has it) against `fake`.
async fn pass(
    fake: &Arc<Mutex<FakeApi>>,
    cached: Value,
    cached_jobs: Vec<Job>,
) -> (Context, kube::runtime::controller::Action) {
    let ctx = context(serve(fake.clone()), cached_jobs);
    let batch: PredictionBatch = serde_json::from_value(cached).unwrap();
    let action = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reconcile_inner(&batch, &ctx, &mut Learned::default(), &PassClock::start(None)),
    )
    .await
    .expect("the pass finished")
    .expect("the pass succeeded");
    (ctx, action)
}

fn log(fake: &Arc<Mutex<FakeApi>>) -> Vec<String> {
    fake.lock().unwrap().log.clone()
}

fn stored(fake: &Arc<Mutex<FakeApi>>) -> PredictionBatch {
    serde_json::from_value(fake.lock().unwrap().batch.clone()).unwrap()
}

fn fake_with(batch: Value) -> Arc<Mutex<FakeApi>> {
    Arc::new(Mutex::new(FakeApi { batch, rv: 10, ..Default::default() }))
}

#[tokio::test]
async fn a_status_write_refused_as_stale_rereads_the_batch_and_plans_again() {
    // The cache is behind: the apiserver has resourceVersion 7, the cache 6.
    let fake = fake_with(stored_batch("7", json!(null)));
    let (ctx, _) = pass(&fake, stored_batch("6", json!(null)), vec![]).await;
    let log = log(&fake);
    let batch_path = format!("/apis/predictions.dev/v1alpha1/namespaces/{NS}/predictionbatches/{NAME}");
    let jobs_path = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    assert_eq!(
        log[..5],
        [
            format!("PATCH {batch_path}/status -> 409"),
            format!("GET {batch_path} -> 200"),
            format!("PATCH {batch_path}/status -> 200"),
            format!("POST {jobs_path} (dry run) -> 201"),
            format!("POST {jobs_path} -> 201"),
        ],
        "{log:#?}"
    );
    assert_eq!(ctx.metrics.status_conflicts.get(), 1);
    assert!(fake.lock().unwrap().jobs.contains_key(&Stage::Workers.job_name(NAME)));
}

#[tokio::test]
async fn a_job_that_already_exists_and_is_ours_is_adopted_not_made_twice() {
    // A crash between the create and the status write: the Job exists, status does not name it,
    // and the Job cache has not seen it.
    let fake = fake_with(stored_batch("10", json!(null)));
    let existing = owned_job(Stage::Workers, 2);
    fake.lock().unwrap().jobs.insert(Stage::Workers.job_name(NAME), existing);
    pass(&fake, stored_batch("10", json!(null)), vec![]).await;
    let log = log(&fake);
    let creates = log.iter().filter(|l| l.starts_with("POST") && !l.contains("dry run")).collect::<Vec<_>>();
    assert_eq!(creates.len(), 1, "one create, refused as AlreadyExists: {log:#?}");
    assert!(creates[0].ends_with("-> 409"), "{log:#?}");
    let status = stored(&fake).status.unwrap();
    let workers = status.workers.unwrap();
    assert_eq!(workers.job_name, Stage::Workers.job_name(NAME));
    assert_eq!(workers.state, StageState::Running, "the intent is on record");
    // The next pass (the Job now cached) adopts it: no second create; its UID rides on the
    // write of the progress it brings (a shard active).
    let before = log.len();
    let again = fake.lock().unwrap().batch.clone();
    pass(&fake, again, vec![serde_json::from_value(owned_job(Stage::Workers, 2)).unwrap()]).await;
    let after = fake.lock().unwrap().log[before..].to_vec();
    assert!(after.iter().all(|l| !l.starts_with("POST")), "{after:#?}");
    let workers = stored(&fake).status.unwrap().workers.unwrap();
    assert_eq!(workers.job_uid.as_deref(), Some(format!("uid-{}", Stage::Workers.job_name(NAME)).as_str()));
}

#[tokio::test]
async fn a_template_the_apiserver_refuses_fails_the_batch_and_creates_nothing() {
    let fake = fake_with(stored_batch("10", json!(null)));
    fake.lock().unwrap().refusals.push(Refusal {
        method: Method::POST,
        path_has: "dryRun",
        code: 422,
        reason: "Invalid",
    });
    pass(&fake, stored_batch("10", json!(null)), vec![]).await;
    let log = log(&fake);
    let created = |l: &&String| l.starts_with("POST") && !l.contains("dry run");
    assert!(!log.iter().any(|l| created(&l)), "a Job was created: {log:#?}");
    let status = stored(&fake).status.unwrap();
    let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "JobRejected"), "{status:#?}");
    assert!(fake.lock().unwrap().jobs.is_empty());
}

#[tokio::test]
async fn a_job_gone_when_patched_is_seen_as_deleted() {
    let running = json!({
        "phase": "Running",
        "workers": {"jobName": Stage::Workers.job_name(NAME), "jobUid": format!("uid-{}", Stage::Workers.job_name(NAME)), "state": "Running"},
    });
    let fake = fake_with(stored_batch("10", running.clone()));
    // The cache still has the Job (parallelism 1, the spec wants 2); the apiserver no longer does.
    let cached: Job = serde_json::from_value(owned_job(Stage::Workers, 1)).unwrap();
    pass(&fake, stored_batch("10", running), vec![cached]).await;
    let log = log(&fake);
    assert!(log.iter().any(|l| l.starts_with("PATCH /apis/batch/v1") && l.ends_with("-> 404")), "{log:#?}");
    let status = stored(&fake).status.unwrap();
    let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "JobDeleted"), "{status:#?}");
}

/// The status write that comes before every create returns the whole object, so a pass meets a
/// copy without templates only if that write was skipped: the device is tested on its own.
#[tokio::test]
async fn a_copy_without_templates_is_read_whole_before_a_job_is_built_and_a_newer_spec_is_planned_again() {
    let fake = fake_with(stored_batch("10", json!(null)));
    let ctx = context(serve(fake.clone()), vec![]);
    let api = kube::Api::<PredictionBatch>::namespaced(ctx.client.clone(), NS);
    let mut trimmed: PredictionBatch = serde_json::from_value(stored_batch("10", json!(null))).unwrap();
    trimmed.spec.worker.template.drop_cached();
    let mut learned = Learned::default();

    let mut view = View::start(&ctx, &trimmed, &mut learned);
    // The workers' template is there for the consolidation's dry run: nothing to read.
    assert!(matches!(view.fill_templates(&api, Stage::AFTER_WORKERS).await.unwrap(), Reread::Current));
    assert!(log(&fake).is_empty());
    assert!(matches!(view.fill_templates(&api, [Stage::Workers]).await.unwrap(), Reread::Current));
    assert_eq!(log(&fake).len(), 1, "{:#?}", log(&fake));
    let job = super::jobs::build(&view.batch, Stage::Workers).expect("the Job can be built");
    assert_eq!(job.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("worker"));

    // The spec moved on since the copy was made: plan again from the batch as it is.
    fake.lock().unwrap().batch["metadata"]["generation"] = json!(2);
    let mut view = View::start(&ctx, &trimmed, &mut learned);
    assert!(matches!(view.fill_templates(&api, [Stage::Workers]).await.unwrap(), Reread::Replan));
    assert_eq!(view.batch.metadata.generation, Some(2));
}

#[tokio::test]
async fn the_pass_after_a_create_plans_from_the_created_job_while_the_job_cache_lags() {
    // The pass our own status write wakes runs before the Job watch has delivered the Job we
    // created just after that write: it must neither read the Job nor create it again.
    let fake = fake_with(stored_batch("10", json!(null)));
    let ctx = context(serve(fake.clone()), vec![]);
    let first: PredictionBatch = serde_json::from_value(stored_batch("10", json!(null))).unwrap();
    reconcile_inner(&first, &ctx, &mut Learned::default(), &PassClock::start(None)).await.expect("the first pass");
    assert!(log(&fake).iter().any(|l| l.starts_with("POST") && !l.contains("dry run") && l.ends_with("201")));
    let before = log(&fake).len();
    let woken = stored(&fake);
    reconcile_inner(&woken, &ctx, &mut Learned::default(), &PassClock::start(None)).await.expect("the woken pass");
    let after = fake.lock().unwrap().log[before..].to_vec();
    assert!(after.is_empty(), "the woken pass asked the apiserver nothing: {after:#?}");
}

/// One flaky call costs one repeat of that call, not the pass: a pass meeting a throttled dry
/// run, a failed status write and a failed create still creates the workers' Job, once.
#[tokio::test]
async fn a_call_that_fails_transiently_is_tried_again_within_the_pass() {
    let fake = fake_with(stored_batch("10", json!(null)));
    let refusals = [
        (Method::POST, "dryRun", 429, "TooManyRequests"),
        (Method::PATCH, "/status", 500, "InternalError"),
        (Method::POST, "/jobs?&fieldManager", 503, "ServiceUnavailable"),
    ];
    for (method, path_has, code, reason) in refusals {
        fake.lock().unwrap().refusals.push(Refusal { method, path_has, code, reason });
    }
    pass(&fake, stored_batch("10", json!(null)), vec![]).await;
    let log = log(&fake);
    let batch_path = format!("/apis/predictions.dev/v1alpha1/namespaces/{NS}/predictionbatches/{NAME}");
    let jobs_path = format!("/apis/batch/v1/namespaces/{NS}/jobs");
    assert_eq!(
        log,
        [
            format!("PATCH {batch_path}/status -> 500"),
            format!("PATCH {batch_path}/status -> 200"),
            format!("POST {jobs_path} (dry run) -> 429"),
            format!("POST {jobs_path} (dry run) -> 201"),
            format!("POST {jobs_path} -> 503"),
            format!("POST {jobs_path} -> 201"),
        ],
        "{log:#?}"
    );
    assert!(fake.lock().unwrap().jobs.contains_key(&Stage::Workers.job_name(NAME)));
    assert!(fake.lock().unwrap().refusals.is_empty(), "every refusal was met");
}
