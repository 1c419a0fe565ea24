//! `kubectl-predictions`: the kubectl plugin of prediction-batch-controller (`kubectl predictions
//! ...`). One screen per question of a morning: is the batch on track (`status`, `watch`), what ran
//! lately (`list`), what did a shard say (`logs`), and the few spec edits people make by hand
//! (`rerun`, `suspend`, `resume`).
//!
//! Exit codes, for scripts: 0 ok (and, for `status` and `watch`, the batch is healthy), 1 the batch
//! is not healthy (failed, stalled, suspended or at risk; `watch`: deleted, or `--timeout`), 2 a
//! usage error, something not found, or an error talking to the cluster.

mod client;
mod edit;
mod format;
mod list;
mod logs;
mod pods;
mod status;
mod summary;
mod watch;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code: done, and the batch is healthy.
pub const EXIT_OK: u8 = 0;
/// Exit code: the batch is not healthy (Failed, Stalled, Suspended, AtRisk=True; deleted while watched).
pub const EXIT_UNHEALTHY: u8 = 1;
/// Exit code: usage error, not found, or an API or kubeconfig error.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: interrupted (Ctrl-C) while watching or following logs, as a shell reports SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "\
Exit codes:
  0  ok; for status and watch: the batch is healthy (Succeeded, or in progress, not Stalled
     and not AtRisk=True)
  1  the batch is not healthy: Failed, Stalled, Suspended or AtRisk=True
     (watch: also deleted while watched, or --timeout reached)
  2  usage error, batch or pod not found, kubeconfig or API error
  130 interrupted (Ctrl-C) while watching or following logs

Examples:
  kubectl predictions status nba-2026-01-02
  kubectl predictions watch nba-2026-01-02 -n nba
  kubectl predictions list -A --limit 10
  kubectl predictions logs nba-2026-01-02 --shard 7 -f
  kubectl predictions logs nba-2026-01-02 --stage export --tail 50
  kubectl predictions rerun nba-2026-01-02 --from export
  kubectl predictions suspend nba-2026-01-02";

/// kubectl plugin for PredictionBatches (predictions.dev/v1alpha1, short name pb).
#[derive(Parser, Debug)]
#[command(name = "kubectl-predictions", bin_name = "kubectl predictions", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags kubectl users expect on every command.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// The namespace of the batch (default: the kubeconfig context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE", help_heading = "Global options")]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "CONTEXT", help_heading = "Global options")]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true, value_name = "PATH", help_heading = "Global options")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show one batch's pipeline on one screen
    ///
    /// Phase, progress, each stage with its state, duration and coverage, failed shards, the ETA
    /// against completeBy (and AtRisk), stuck pods, the Firestore mirror and the last events.
    /// Exits 0 only when the batch is healthy: Succeeded, or in progress, not Stalled and not
    /// AtRisk=True; 1 otherwise.
    Status(StatusArgs),
    /// Follow one batch with a live progress bar until it ends
    ///
    /// Items, shards, the running stage and the ETA, redrawn in place from a watch on the batch.
    /// When stdout is not a terminal: one plain line per change, the last one saying how the batch
    /// ended. A finished batch with a rerun pending is followed through the rerun. Exits like
    /// status once the batch has ended.
    Watch(WatchArgs),
    /// List recent batches, newest first
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Print the logs of one shard's or one stage's pod
    ///
    /// Finds the pod by the labels the controller puts on every pod (predictions.dev/batch,
    /// predictions.dev/stage) and, for --shard, its completion index (or the SHARD_INDEX of a
    /// rerun or backup run); the newest pod when there were several attempts. Names the pod on
    /// stderr.
    Logs(LogsArgs),
    /// Run the end of a finished batch again
    ///
    /// Sets spec.rerun to a new token and where to start (see the README's "Reruns"); a batch
    /// still running starts the rerun once it has finished.
    Rerun(RerunArgs),
    /// Suspend a batch: spec.suspend true (its running Job stops, no new stage starts)
    Suspend(NameArgs),
    /// Resume a suspended batch: spec.suspend false (it goes on where it stopped)
    Resume(NameArgs),
}

/// Machine-readable output.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The PredictionBatch.
    pub name: String,
    /// Print a machine-readable summary instead of the screen.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// How many of the batch's latest events to show.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub events: usize,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The PredictionBatch.
    pub name: String,
    /// Print one JSON summary a line (as status -o json) on every change instead of the bar.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<WatchOutput>,
    /// Give up after this long (e.g. 90s, 30m, 3h) and exit 1.
    #[arg(long, value_parser = format::parse_duration, value_name = "DURATION")]
    pub timeout: Option<std::time::Duration>,
}

/// Machine-readable output of `watch`: newline-delimited JSON.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOutput {
    Json,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// List the batches of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Show at most this many batches (the newest); 0 shows all.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Only batches with these labels, e.g. predictions.dev/schedule=nba-daily.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Print the rows as a JSON or YAML list instead of the table.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["shard", "stage"]))]
pub struct LogsArgs {
    /// The PredictionBatch.
    pub name: String,
    /// A worker shard's pod (its completion index, or the shard of a rerun or backup run).
    #[arg(long, value_name = "N")]
    pub shard: Option<u32>,
    /// A stage's pod: loader, consolidation or export (workers: the newest worker pod).
    #[arg(long, value_enum)]
    pub stage: Option<StageArg>,
    /// Follow the log.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Lines of the end of the log to show.
    #[arg(long, value_name = "LINES")]
    pub tail: Option<i64>,
    /// The container (default: the pod's first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The log of the container's previous run.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageArg {
    Loader,
    Workers,
    Consolidation,
    Export,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("start").required(true).args(["failed", "from"]))]
pub struct RerunArgs {
    /// The PredictionBatch.
    pub name: String,
    /// Rerun the shards that did not succeed, then consolidation and export (from FailedShards).
    #[arg(long)]
    pub failed: bool,
    /// Where the new attempt starts; every later stage runs again too.
    #[arg(long, value_enum, value_name = "STAGE")]
    pub from: Option<RerunFromArg>,
    /// The token (any value the batch has not answered yet; default: kubectl-predictions-<UTC time>).
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerunFromArg {
    /// The shards that did not succeed (spec.rerun.from FailedShards).
    #[value(name = "failed-shards", alias = "FailedShards", alias = "workers")]
    FailedShards,
    #[value(name = "consolidation", alias = "Consolidation")]
    Consolidation,
    #[value(name = "export", alias = "Export")]
    Export,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// The PredictionBatch.
    pub name: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", client::describe_error(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let ctx = client::Ctx::connect(&cli.global).await?;
    match cli.command {
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Watch(args) => watch::run(&ctx, args).await,
        Command::List(args) => list::run(&ctx, args).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Rerun(args) => edit::rerun(&ctx, args).await,
        Command::Suspend(args) => edit::set_suspend(&ctx, &args.name, true).await,
        Command::Resume(args) => edit::set_suspend(&ctx, &args.name, false).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere_and_usage_errors_exit_2() {
        let cli =
            Cli::try_parse_from(["kubectl-predictions", "status", "b", "-n", "nba", "--context", "prod"]).unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("nba"));
        assert_eq!(cli.global.context.as_deref(), Some("prod"));
        let cli = Cli::try_parse_from(["kubectl-predictions", "--kubeconfig", "/k", "list", "-A"]).unwrap();
        assert!(matches!(cli.command, Command::List(ListArgs { all_namespaces: true, limit: 20, .. })));
        // clap exits 2 on usage errors, as our own errors do.
        let err = Cli::try_parse_from(["kubectl-predictions", "logs", "b"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_ERROR));
        let err = Cli::try_parse_from(["kubectl-predictions", "rerun", "b"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_ERROR));
        let err =
            Cli::try_parse_from(["kubectl-predictions", "rerun", "b", "--failed", "--from", "export"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_ERROR));
        let cli = Cli::try_parse_from(["kubectl-predictions", "rerun", "b", "--from", "Export"]).unwrap();
        assert!(matches!(cli.command, Command::Rerun(RerunArgs { from: Some(RerunFromArg::Export), .. })));
    }
}
