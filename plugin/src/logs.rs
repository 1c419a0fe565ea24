//! `logs NAME --shard N | --stage STAGE`: finds the pod by the controller's labels and streams its log.

use std::io::Write;

use anyhow::{Context as _, anyhow};
use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use prediction_batch_controller::api::Stage;

use crate::client::Ctx;
use crate::pods::{self, Target};
use crate::{LogsArgs, StageArg};

pub async fn run(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<u8> {
    let target = match (args.shard, args.stage) {
        (Some(n), _) => Target::Shard(n),
        (None, Some(stage)) => Target::Stage(match stage {
            StageArg::Loader => Stage::Loader,
            StageArg::Workers => Stage::Workers,
            StageArg::Consolidation => Stage::Consolidation,
            StageArg::Export => Stage::Export,
        }),
        (None, None) => return Err(anyhow!("give --shard N or --stage STAGE")),
    };
    // The batch must exist: a clear "not found" rather than "no pod".
    ctx.get_batch(&args.name).await?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let list = api
        .list(&ListParams::default().labels(&pods::selector(&args.name, target.stage())))
        .await
        .context("cannot list the batch's pods")?;
    let found = pods::matching(&list.items, target);
    let Some(pod) = found.first() else {
        return Err(anyhow!(
            "no pod of {} of predictionbatch {:?} in namespace {:?} (not started yet, or its Jobs were deleted, e.g. by ttlSecondsAfterFinished)",
            target.describe(),
            args.name,
            ctx.namespace
        ));
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into());
    let attempts = if found.len() > 1 { format!(", newest of {} pods", found.len()) } else { String::new() };
    let container = pods::container(pod, args.container.as_deref());
    eprintln!(
        "pod {name} ({}, {phase}{attempts}{})",
        target.describe(),
        container.as_deref().map(|c| format!(", container {c}")).unwrap_or_default()
    );
    let params = LogParams {
        container,
        follow: args.follow,
        tail_lines: args.tail,
        previous: args.previous,
        timestamps: args.timestamps,
        ..Default::default()
    };
    let stream = async {
        let mut reader =
            api.log_stream(&name, &params).await.with_context(|| format!("cannot read the log of pod {name}"))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut stdout = std::io::stdout();
        loop {
            let n = reader.read(&mut buf).await.with_context(|| format!("reading the log of pod {name}"))?;
            if n == 0 {
                break;
            }
            if stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
                break; // stdout closed (e.g. `| head`): nothing more to do
            }
        }
        anyhow::Ok(crate::EXIT_OK)
    };
    tokio::select! {
        result = stream => result,
        _ = tokio::signal::ctrl_c() => Ok(crate::EXIT_INTERRUPTED),
    }
}
