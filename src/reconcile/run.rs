//! One reconcile pass: observe → plan (pure) → record the status → act, in rounds until the plan
//! has nothing left to do. [`fresh`](super::fresh) keeps what the pass plans from current,
//! [`record`](super::record) puts each plan's status on record (and alone hands out its
//! actions), [`act`](super::act) carries them out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as ControllerAction;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, warn};

use super::act::{act, release_jobs_of};
use super::clock::PassClock;
use super::fresh::{Learned, Reread, View};
use super::plan::{Action, plan};
use super::record::{Recording, record};
use crate::api::PredictionBatch;
use crate::context::Context;
use crate::error::Error;

/// Bound on plan/act rounds in one pass (a full pipeline needs about six).
const MAX_ROUNDS: usize = 12;
/// A pass that meets a transient API error (throttling, a server error, a lost request) tries
/// again this often, after these pauses, before the batch goes to the controller's growing
/// backoff: one flaky call should not cost a whole pass and a wait that doubles.
const TRANSIENT_RETRY_PAUSES: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(300), Duration::from_millis(900)];

pub async fn reconcile(batch: Arc<PredictionBatch>, ctx: Arc<Context>) -> Result<ControllerAction, Error> {
    reconcile_queued(batch, ctx, None).await
}

/// A pass started by a change that waited `queued` for it (see [`PassClock`]).
pub async fn reconcile_queued(
    batch: Arc<PredictionBatch>,
    ctx: Arc<Context>,
    queued: Option<Duration>,
) -> Result<ControllerAction, Error> {
    let clock = PassClock::start(queued);
    let started = clock.started;
    // Boxed: the runner holds one future per batch it has started, thousands at a controller's
    // start, and the pass's own state (~12 KB) should only exist while the pass runs.
    let mut learned = Box::<Learned>::default();
    let mut result = Box::pin(reconcile_inner(&batch, &ctx, &mut learned, &clock)).await;
    for pause in TRANSIENT_RETRY_PAUSES {
        match &result {
            Err(e) if e.is_transient() && ctx.leadership.may_act() => {
                debug!(error = %e, ?pause, "transient API error; trying the pass again");
                ctx.metrics.errors.get_or_create(&crate::metrics::KindLabel { kind: e.kind() }).inc();
                tokio::time::sleep(pause).await;
                result = Box::pin(reconcile_inner(&batch, &ctx, &mut learned, &clock)).await;
            }
            _ => break,
        }
    }
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    let key = ObjectRef::from_obj(batch.as_ref());
    match &result {
        Ok(_) => {
            ctx.metrics.reconciles.get_or_create(&crate::metrics::ResultLabel { result: "ok" }).inc();
            ctx.failures.lock().expect("poisoned").remove(&key);
        }
        Err(e) => {
            ctx.metrics.reconciles.get_or_create(&crate::metrics::ResultLabel { result: "error" }).inc();
            ctx.metrics.errors.get_or_create(&crate::metrics::KindLabel { kind: e.kind() }).inc();
        }
    }
    result
}

pub(super) async fn reconcile_inner(
    batch: &PredictionBatch,
    ctx: &Context,
    learned: &mut Learned,
    clock: &PassClock,
) -> Result<ControllerAction, Error> {
    if batch.metadata.deletion_timestamp.is_some() {
        // Our outcome finalizers must not hold up the Jobs' deletion (foreground deletion of the
        // batch waits for them), whatever else still runs for the batch. Owner references let
        // the garbage collector remove the Jobs and pods.
        let uid = batch.uid().unwrap_or_default();
        release_jobs_of(ctx, &batch.namespace().unwrap_or_default(), &batch.name_any(), Some(&uid)).await?;
        return Ok(ControllerAction::await_change());
    }
    let ns = batch.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = batch.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let batches: Api<PredictionBatch> = Api::namespaced(ctx.client.clone(), &ns);
    let mut view = View::start(ctx, batch, learned);

    'rounds: for _round in 0..MAX_ROUNDS {
        let observed = view.observe(ctx, &jobs_api, &uid).await?;
        let plan = plan(&view.batch, &observed);
        let sent = Instant::now();
        let recorded = match record(ctx, &mut view.batch, plan).await? {
            Recording::Recorded(recorded) => recorded,
            Recording::Coalesced(wait) => return Ok(ControllerAction::requeue(wait)),
            Recording::Stale(conflict) => match view.reread_after_conflict(ctx, &batches, &uid, conflict).await? {
                Reread::Gone => return Ok(ControllerAction::await_change()),
                _ => continue,
            },
        };
        let written = Instant::now();
        if recorded.is_empty() {
            return Ok(match recorded.requeue_after() {
                Some(d) => ControllerAction::requeue(d),
                None => ControllerAction::await_change(),
            });
        }
        for action in recorded.actions() {
            let needs = match *action {
                Action::Create(stage) => vec![stage],
                Action::CreateShard(_) | Action::CreateBackup(_) => vec![crate::api::Stage::Workers],
                Action::Validate => view.batch.spec.later_stages(),
                _ => vec![],
            };
            match view.fill_templates(&batches, needs).await? {
                Reread::Current => {}
                Reread::Replan => continue 'rounds,
                Reread::Gone => return Ok(ControllerAction::await_change()),
            }
            if *action == Action::Validate && view.learned.validated == view.batch.metadata.generation {
                continue;
            }
            if !ctx.leadership.may_act() {
                return Err(Error::NotLeading);
            }
            let acted = act(&jobs_api, &view.batch, &uid, action, view.learned, &ctx.dry_runs).await;
            if let Some(stage) = view.learned.created.take() {
                clock.created(ctx, stage, sent, written);
            }
            super::fresh::remember_jobs(ctx, view.learned);
            acted?;
            if *action == Action::Validate {
                if !view.learned.rejected.is_empty() {
                    // A refused template fails the batch: plan again before creating anything.
                    continue 'rounds;
                }
                view.learned.validated = view.batch.metadata.generation;
            }
        }
    }
    warn!("plan did not settle within {MAX_ROUNDS} rounds; looking again shortly");
    Ok(ControllerAction::requeue(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller holds one of these futures per batch being reconciled: with thousands of
    /// batches starting at once their size is the controller's memory.
    #[tokio::test]
    async fn a_reconcile_pass_is_a_small_future() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let ctx = Arc::new(Context::for_tests(client, kube::runtime::reflector::store().0));
        let batch = Arc::new(PredictionBatch::new(
            "b",
            serde_json::from_value(serde_json::json!({
                "gameDate": "2026-01-02", "targetCount": 4,
                "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
            }))
            .unwrap(),
        ));
        let size = std::mem::size_of_val(&reconcile(batch, ctx));
        eprintln!("reconcile future: {size} bytes");
        assert!(size < 512, "reconcile future is {size} bytes");
    }
}
