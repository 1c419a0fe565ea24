//! The spec edits people make by hand: `rerun` (spec.rerun), `suspend` and `resume` (spec.suspend),
//! each one JSON merge patch written as field manager `kubectl-predictions`.

use anyhow::{anyhow, bail};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use prediction_batch_controller::api::{PredictionBatch, RerunFrom, Stage, StageState};
use serde_json::json;

use crate::client::Ctx;
use crate::summary::rerun_from;
use crate::{RerunArgs, RerunFromArg};

/// Field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-predictions";

fn params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

fn typed(ctx: &Ctx, batch: &crate::client::Batch, name: &str) -> anyhow::Result<PredictionBatch> {
    batch
        .typed
        .clone()
        .map_err(|e| anyhow!("predictionbatch {name:?} in namespace {:?} cannot be read: {e}", ctx.namespace))
}

/// A fresh rerun token: `kubectl-predictions-<UTC time to the millisecond>`.
pub fn new_token(now: Timestamp) -> String {
    format!("kubectl-predictions-{}", now.strftime("%Y%m%dT%H%M%S%.3fZ"))
}

pub async fn rerun(ctx: &Ctx, args: RerunArgs) -> anyhow::Result<u8> {
    let from = match (args.failed, args.from) {
        (_, Some(RerunFromArg::Consolidation)) => RerunFrom::Consolidation,
        (_, Some(RerunFromArg::Export)) => RerunFrom::Export,
        (true, _) | (_, Some(RerunFromArg::FailedShards)) => RerunFrom::FailedShards,
        (false, None) => bail!("give --failed or --from STAGE"),
    };
    let batch = ctx.get_batch(&args.name).await?;
    let b = typed(ctx, &batch, &args.name)?;
    let needs = match from {
        RerunFrom::Consolidation => Some(Stage::Consolidation),
        RerunFrom::Export => Some(Stage::Export),
        RerunFrom::FailedShards => None,
    };
    if let Some(stage) = needs.filter(|s| !b.spec.has_stage(*s)) {
        bail!("predictionbatch {:?} has no {} stage to rerun from", args.name, stage.label());
    }
    // The controller refuses a rerun unless every stage before `from` succeeded: say so now.
    let before: &[Stage] = match from {
        RerunFrom::FailedShards => &[Stage::Loader],
        RerunFrom::Consolidation => &[Stage::Loader, Stage::Workers],
        RerunFrom::Export => &[Stage::Loader, Stage::Workers, Stage::Consolidation],
    };
    let status = b.status.clone().unwrap_or_default();
    for stage in before.iter().copied().filter(|s| b.spec.has_stage(*s)) {
        let state = status.stage(stage).as_ref().map(|s| s.state);
        if state != Some(StageState::Succeeded) {
            let state = state.map_or_else(|| "not run".to_string(), |s| format!("{s:?}"));
            eprintln!(
                "warning: the {} stage has not succeeded ({state}): the controller refuses a rerun from {} until it has (RerunRefused)",
                stage.label(),
                rerun_from(from)
            );
        }
    }
    let token = args.token.unwrap_or_else(|| new_token(Timestamp::now()));
    let answered = b.status.as_ref().and_then(|s| s.rerun_token.as_deref());
    if answered == Some(token.as_str()) {
        bail!("the batch has already answered rerun token {token:?}: give a new --token");
    }
    let requested = b.spec.rerun.as_ref().filter(|r| r.token == token && r.from == from);
    if requested.is_some() {
        println!(
            "predictionbatch.predictions.dev/{} rerun already requested: from {}, token {token:?}",
            args.name,
            rerun_from(from)
        );
        return Ok(crate::EXIT_OK);
    }
    let patch = json!({ "spec": { "rerun": { "token": token, "from": rerun_from(from) } } });
    ctx.batches().patch(&args.name, &params(), &Patch::Merge(&patch)).await?;
    println!(
        "predictionbatch.predictions.dev/{} rerun requested: from {}, token {token:?}",
        args.name,
        rerun_from(from)
    );
    let finished = b.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal());
    if !finished {
        eprintln!("note: the batch has not finished: the rerun starts once it has");
    }
    eprintln!("follow it with: kubectl predictions watch {} -n {}", args.name, ctx.namespace);
    Ok(crate::EXIT_OK)
}

pub async fn set_suspend(ctx: &Ctx, name: &str, suspend: bool) -> anyhow::Result<u8> {
    let batch = ctx.get_batch(name).await?;
    let current = batch.raw["spec"]["suspend"].as_bool().unwrap_or(false);
    let word = if suspend { "suspended" } else { "resumed" };
    if current == suspend {
        println!(
            "predictionbatch.predictions.dev/{name} already {} (spec.suspend: {suspend})",
            if suspend { "suspended" } else { "running (not suspended)" }
        );
        return Ok(crate::EXIT_OK);
    }
    let patch = json!({ "spec": { "suspend": suspend } });
    ctx.batches().patch(name, &params(), &Patch::Merge(&patch)).await?;
    println!("predictionbatch.predictions.dev/{name} {word}");
    Ok(crate::EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_readable_and_change_every_millisecond() {
        let t: Timestamp = "2026-01-02T12:00:03.25Z".parse().unwrap();
        assert_eq!(new_token(t), "kubectl-predictions-20260102T120003.250Z");
        let later: Timestamp = "2026-01-02T12:00:03.251Z".parse().unwrap();
        assert_ne!(new_token(t), new_token(later));
    }
}
