//! `pbc-bench`: the controller against a bare-Jobs baseline on the local control plane.
//!
//! `pbc-bench run --preset ci,repeat,scaling,mem,full` measures against a running cluster
//! (`tests/cluster/up`); `bench/run` is the one command that builds, brings up a cluster of its
//! own, runs this and tears the cluster down. `pbc-bench baseline-driver` is the baseline's
//! minimal watch-based driver, run as a process of its own so it is measured like the controller.

use pbc_bench::core;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use pbc_bench::core::{DriverKind, Env, MemoryResult, Mode, ModeOptions, ModeResult, Workload};

#[derive(Parser, Debug)]
#[command(name = "pbc-bench", about = "prediction-batch-controller against a bare-Jobs baseline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run presets against the cluster in --cluster-dir.
    Run(RunArgs),
    /// The baseline's driver: worker Job finished → create consolidation; consolidation finished → create export.
    BaselineDriver(DriverArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Cluster made by tests/cluster/up (kubeconfig, controller.kubeconfig, logs/audit.log).
    #[arg(long, env = "CLUSTER_DIR")]
    cluster_dir: PathBuf,
    /// The controller binary (the release build).
    #[arg(long, default_value = "target/release/prediction-batch-controller")]
    controller_bin: PathBuf,
    /// Comma-separated: ci (10x20, guard), repeat (N pairs 20x20), full (100x100), scaling
    /// (1,10,100,1000 batches, idle cost after the largest), idle (1,000 one-shard batches, then
    /// idle cost), mem (10,000 suspended batches, a restart per initial list), scale (100,000
    /// suspended batches in one namespace, then over 100), custom (--batches x --shards).
    #[arg(long, value_delimiter = ',', default_value = "ci")]
    preset: Vec<String>,
    /// Worker pods per batch at once, in both modes.
    #[arg(long, default_value_t = 10)]
    parallelism: u32,
    /// Pairs of the repeat preset (order alternates).
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Batch counts of the scaling series.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    scaling: Vec<usize>,
    /// Shards per batch in the scaling series.
    #[arg(long, default_value_t = 4)]
    scaling_shards: u32,
    /// Batches of the idle preset (one shard each), and of the memory preset.
    #[arg(long, default_value_t = 1000)]
    idle_batches: usize,
    #[arg(long, default_value_t = 10_000)]
    mem_batches: usize,
    /// Namespaces the memory preset spreads its batches over.
    #[arg(long, default_value_t = 1)]
    mem_namespaces: usize,
    /// Batches of the scale preset (suspended): once in one namespace, then spread over
    /// --scale-namespaces; a restart with the defaults over each.
    #[arg(long, default_value_t = 100_000)]
    scale_batches: usize,
    #[arg(long, default_value_t = 100)]
    scale_namespaces: usize,
    /// Length of an idle window.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// The CI guard fails above this ours/baseline ratio.
    #[arg(long, default_value_t = 1.5)]
    max_ratio: f64,
    /// The CI guard fails above this many API writes per batch (default: the measured figure + 2).
    #[arg(long, default_value_t = core::MEASURED_WRITES_PER_BATCH + 2.0)]
    max_writes: f64,
    /// Workload of the custom preset.
    #[arg(long, default_value_t = 20)]
    batches: usize,
    #[arg(long, default_value_t = 20)]
    shards: u32,
    /// Scope controller and driver to the run's namespace (default: cluster-wide, as deployed).
    #[arg(long)]
    scope_namespace: bool,
    /// Which mode runs first in the full, custom and scaling presets (repeat alternates).
    #[arg(long, default_value = "baseline", value_parser = ["baseline", "ours"])]
    first: String,
    /// Where results.json and summary.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct DriverArgs {
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[arg(long)]
    shards: u32,
    #[arg(long)]
    parallelism: u32,
    /// Watch only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
}

#[derive(Serialize, Default)]
struct Results {
    machine: serde_json::Value,
    command: String,
    pairs: Vec<PairRecord>,
    singles: Vec<ModeResult>,
    memory: Vec<MemoryResult>,
    checks: Vec<String>,
}

#[derive(Serialize, Clone)]
struct PairRecord {
    preset: String,
    index: usize,
    first: Mode,
    ratio: f64,
    baseline: ModeResult,
    ours: ModeResult,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread: the bench only watches and submits, and the controller and driver it measures
    // run as processes of their own. (A multi-thread runtime froze once in a 100 x 100 run, all
    // workers parked with a 50 ms sleep pending; a current-thread runtime drives its own timers.)
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Run(args) => rt.block_on(run(args)),
        Command::BaselineDriver(args) => rt.block_on(driver(args)),
    }
}

async fn driver(args: DriverArgs) -> Result<()> {
    let client = core::client_from(&args.kubeconfig).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let w = Workload::new(0, args.shards, args.parallelism);
    let task = tokio::spawn(core::baseline_driver(client, args.namespace, w, tx));
    rx.await.context("driver watch ended before it synced")?;
    println!("ready");
    std::io::stdout().flush()?;
    task.await?
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "cpu_model": model,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "pod_delay_ms": std::env::var("POD_DELAY_MS").ok(),
        "pod_jitter_ms": std::env::var("POD_JITTER_MS").ok(),
        "node_count": std::env::var("NODE_COUNT").ok(),
    })
}

/// Generous: at least 2 minutes, plus half a second per pod (the control plane moves ~8/s).
fn timeout_for(w: Workload) -> Duration {
    Duration::from_secs(120 + w.pods() as u64 / 2)
}

struct Bench {
    env: Env,
    args: RunArgs,
    results: Results,
}

impl Bench {
    fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.args.out)?;
        let path = self.args.out.join("results.json");
        std::fs::write(&path, serde_json::to_string_pretty(&self.results)?)?;
        std::fs::write(self.args.out.join("summary.md"), summary(&self.results))?;
        Ok(())
    }

    async fn mode(&mut self, mode: Mode, w: Workload, tag: &str, idle: bool) -> Result<ModeResult> {
        eprintln!(
            "[bench] {tag}: {} {}x{} (parallelism {}, {} pods) ...",
            mode.label(),
            w.batches,
            w.shards,
            w.parallelism,
            w.pods()
        );
        let opts = ModeOptions {
            timeout: timeout_for(w),
            idle: idle.then(|| Duration::from_secs(self.args.idle_seconds)),
            cleanup: true,
            tag: tag.to_string(),
        };
        let r = core::run_mode(&self.env, mode, w, &opts).await?;
        eprintln!("[bench] {}", core::summary_line(&r));
        Ok(r)
    }

    async fn pair(&mut self, preset: &str, index: usize, w: Workload, first: Mode, idle: bool) -> Result<PairRecord> {
        let tag = format!("{preset}-{index}");
        let (baseline, ours) = if first == Mode::Baseline {
            let b = self.mode(Mode::Baseline, w, &tag, false).await?;
            let o = self.mode(Mode::Ours, w, &tag, idle).await?;
            (b, o)
        } else {
            let o = self.mode(Mode::Ours, w, &tag, idle).await?;
            let b = self.mode(Mode::Baseline, w, &tag, false).await?;
            (b, o)
        };
        let p =
            PairRecord { preset: preset.into(), index, first, ratio: ours.wall_s / baseline.wall_s, baseline, ours };
        eprintln!("[bench] {tag}: ours/baseline = {:.3} ({:.1}s / {:.1}s)", p.ratio, p.ours.wall_s, p.baseline.wall_s);
        self.results.pairs.push(p.clone());
        self.save()?;
        Ok(p)
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let dir = std::path::absolute(&args.cluster_dir)?;
    let driver = DriverKind::Subprocess(std::env::current_exe()?);
    let env = Env::for_cluster(&dir, std::path::absolute(&args.controller_bin)?, driver, args.scope_namespace).await?;
    let results =
        Results { machine: machine(), command: std::env::args().collect::<Vec<_>>().join(" "), ..Default::default() };
    let presets = args.preset.clone();
    let mut bench = Bench { env, args, results };
    let p = bench.args.parallelism;
    let first = if bench.args.first == "ours" { Mode::Ours } else { Mode::Baseline };
    let mut failed = Vec::new();
    for preset in &presets {
        match preset.as_str() {
            "ci" => {
                let w = Workload::new(10, 20, p);
                // Up to three pairs: a guard against regressions (which fail every pair), not
                // against a neighbour's CPU burst during one 15-second pair.
                let mut verdict = Err(String::new());
                for attempt in 0..3 {
                    let pair = bench.pair("ci", attempt, w, Mode::Baseline, false).await?;
                    verdict =
                        core::ci_check(&pair.baseline, &pair.ours, bench.args.max_ratio, Some(bench.args.max_writes));
                    match &verdict {
                        Ok(ratio) => {
                            bench.results.checks.push(format!(
                                "ci: PASS, ours/baseline {ratio:.3} <= {} (attempt {})",
                                bench.args.max_ratio,
                                attempt + 1
                            ));
                            break;
                        }
                        Err(e) => bench.results.checks.push(format!("ci attempt {}: {e}", attempt + 1)),
                    }
                }
                if let Err(e) = verdict {
                    failed.push(format!("ci: {e}"));
                }
                bench.save()?;
            }
            "repeat" => {
                let w = Workload::new(20, 20, p);
                for i in 0..bench.args.pairs {
                    let first = if i % 2 == 0 { Mode::Baseline } else { Mode::Ours };
                    bench.pair("repeat", i, w, first, false).await?;
                }
            }
            "full" => {
                bench.pair("full", 0, Workload::new(100, 100, p), first, false).await?;
            }
            "custom" => {
                let w = Workload::new(bench.args.batches, bench.args.shards, p);
                bench.pair("custom", 0, w, first, false).await?;
            }
            "scaling" => {
                let series = bench.args.scaling.clone();
                let largest = series.iter().copied().max().unwrap_or(0);
                for (i, n) in series.into_iter().enumerate() {
                    let w = Workload::new(n, bench.args.scaling_shards, p);
                    bench.pair("scaling", i, w, first, n == largest && n >= 1000).await?;
                }
            }
            "idle" => {
                let w = Workload::new(bench.args.idle_batches, 1, p);
                let r = bench.mode(Mode::Ours, w, "idle", true).await?;
                bench.results.singles.push(r);
                bench.save()?;
            }
            "mem" => {
                let w = Workload::new(bench.args.mem_batches, 100, p);
                eprintln!("[bench] mem: {} suspended batches ...", w.batches);
                let opts =
                    ModeOptions { timeout: Duration::from_secs(1800), idle: None, cleanup: true, tag: "mem".into() };
                let m = core::memory_suspended(&bench.env, w, bench.args.mem_namespaces, true, &opts).await?;
                report_memory("mem", &m);
                bench.results.memory.push(m);
                bench.save()?;
            }
            "scale" => {
                let w = Workload::new(bench.args.scale_batches, 100, p);
                let mut spreads = vec![1, bench.args.scale_namespaces];
                spreads.dedup();
                let last = *spreads.last().unwrap_or(&1);
                for namespaces in spreads {
                    eprintln!("[bench] scale: {} suspended batches in {namespaces} namespace(s) ...", w.batches);
                    let opts = ModeOptions {
                        timeout: Duration::from_secs(4 * 3600),
                        idle: None,
                        // When nothing runs after it, the cluster goes with the last spread:
                        // deleting 100,000 batches first would only add minutes.
                        cleanup: namespaces != last || presets.last() != Some(preset),
                        tag: "scale".into(),
                    };
                    let m = core::memory_suspended(&bench.env, w, namespaces, false, &opts).await?;
                    report_memory("scale", &m);
                    bench.results.memory.push(m);
                    bench.save()?;
                }
            }
            other => bail!("unknown preset {other:?}"),
        }
    }
    bench.save()?;
    println!("{}", summary(&bench.results));
    eprintln!("[bench] results in {}", bench.args.out.join("results.json").display());
    if !failed.is_empty() {
        bail!("FAILED: {}", failed.join("; "));
    }
    Ok(())
}

fn report_memory(preset: &str, m: &core::MemoryResult) {
    eprintln!(
        "[bench] {preset}: {} batches in {} namespace(s), peak RSS {:.1} MiB (restart {:.1} MiB, ready {:.1}s), {:.3} ms CPU/reconcile, {} Jobs",
        m.batches,
        m.namespaces,
        m.peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
        m.restart_peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
        m.restart_ready_s,
        m.cpu_per_reconcile_ms.unwrap_or(f64::NAN),
        m.jobs_created
    );
}

fn mib(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Control-plane CPU seconds of a run: all components, or one.
fn cp(r: &ModeResult, component: Option<&str>) -> String {
    let m = &r.control_plane_cpu_s;
    if m.is_empty() {
        return "-".into();
    }
    match component {
        Some(c) => m.get(c).map_or("-".into(), |v| format!("{v:.1}")),
        None => format!("{:.1}", m.values().sum::<f64>()),
    }
}

fn verbs(a: Option<&core::ApiCount>) -> String {
    a.map_or("-".into(), |a| a.by_verb.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
}

/// Markdown tables of everything measured so far.
fn summary(r: &Results) -> String {
    let mut s = String::new();
    s += &format!("Machine: {}\n\n", r.machine);
    if !r.pairs.is_empty() {
        s += "| preset | B×S | first | baseline s | ours s | ours/baseline | cons. reaction p50/p99 ms (base / ours) | export reaction p50/p99 ms (base / ours) | ours start p50/p99 ms | ours CPU s | ours peak RSS MiB | driver CPU s | driver peak RSS MiB | ours API (writes) | driver API (writes) | ours writes/batch | control-plane CPU s (base / ours) | apiserver CPU s (base / ours) | load before→after (ours) |\n";
        s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for p in &r.pairs {
            let (b, o) = (&p.baseline, &p.ours);
            let api = |x: &ModeResult| x.api.as_ref().map_or("-".into(), |a| format!("{} ({})", a.total, a.writes));
            s += &format!(
                "| {}-{} | {}×{} | {} | {:.1} | {:.1} | {:.3} | {:.1}/{:.1} / {:.1}/{:.1} | {:.1}/{:.1} / {:.1}/{:.1} | {:.1}/{:.1} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} → {} |\n",
                p.preset,
                p.index,
                b.workload.batches,
                b.workload.shards,
                p.first.label(),
                b.wall_s,
                o.wall_s,
                p.ratio,
                b.reaction_consolidation_ms.p50,
                b.reaction_consolidation_ms.p99,
                o.reaction_consolidation_ms.p50,
                o.reaction_consolidation_ms.p99,
                b.reaction_export_ms.p50,
                b.reaction_export_ms.p99,
                o.reaction_export_ms.p50,
                o.reaction_export_ms.p99,
                o.start_ms.p50,
                o.start_ms.p99,
                opt(o.cpu_s, 2),
                mib(o.peak_rss_kib),
                opt(b.cpu_s, 2),
                mib(b.peak_rss_kib),
                api(o),
                api(b),
                opt(o.writes_per_batch, 1),
                cp(b, None),
                cp(o, None),
                cp(b, Some("kube-apiserver")),
                cp(o, Some("kube-apiserver")),
                o.load_before,
                o.load_after,
            );
        }
        s += "\nAPI requests by verb (ours | baseline driver):\n\n";
        for p in &r.pairs {
            s += &format!(
                "- {}-{}: {} | {}\n",
                p.preset,
                p.index,
                verbs(p.ours.api.as_ref()),
                verbs(p.baseline.api.as_ref())
            );
        }
        s += "\nWhere each transition's time went (ours; the controller's `stage Job created` lines, p50/p99 ms): change on the watch → pass start (queued) → status write sent (planned) → status written (status) → Job created (create):\n\n";
        s += "| pair | stage | n | queued | planned | status | create | total |\n|---|---|---|---|---|---|---|---|\n";
        for p in &r.pairs {
            for stage in ["consolidation", "export"] {
                let t = &p.ours.transition_ms;
                let cell = |step: &str| {
                    t.get(&format!("{stage} {step}")).map_or("-".into(), |x| format!("{:.1}/{:.1}", x.p50, x.p99))
                };
                let n = t.get(&format!("{stage} total")).map_or(0, |x| x.n);
                s += &format!(
                    "| {}-{} | {stage} | {n} | {} | {} | {} | {} | {} |\n",
                    p.preset,
                    p.index,
                    cell("queued"),
                    cell("planned"),
                    cell("status"),
                    cell("create"),
                    cell("total")
                );
            }
        }
        let repeat: Vec<f64> = r.pairs.iter().filter(|p| p.preset == "repeat").map(|p| p.ratio).collect();
        if !repeat.is_empty() {
            let min = repeat.iter().copied().fold(f64::INFINITY, f64::min);
            let max = repeat.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            s += &format!(
                "\nrepeat: {} pairs, ours/baseline median {:.3}, min {min:.3}, max {max:.3}\n",
                repeat.len(),
                core::median(&repeat)
            );
        }
    }
    let idles = r.pairs.iter().map(|p| &p.ours).chain(r.singles.iter()).filter(|o| o.idle.is_some());
    for o in idles {
        let i = o.idle.as_ref().unwrap();
        s += &format!(
            "\nidle with {} finished batches ({}): {:.1} requests/min ({:.1} writes/min; {}), {:.1} reconciles/min over {:.0}s\n",
            o.workload.batches,
            o.tag,
            i.requests_per_min.unwrap_or(f64::NAN),
            i.writes_per_min.unwrap_or(f64::NAN),
            verbs(i.api.as_ref()),
            i.reconciles_per_min,
            i.seconds
        );
        if let Some(rs) = &o.restart {
            s += &format!(
                "restarted over them: ready in {:.2}s, startup {} reconciles, API {} ({}), peak RSS {} MiB; then idle {:.1} requests/min ({:.1} writes/min), {:.1} reconciles/min\n",
                rs.ready_s,
                rs.startup_reconciles,
                rs.startup_api.as_ref().map_or("-".into(), |a| a.total.to_string()),
                verbs(rs.startup_api.as_ref()),
                mib(rs.peak_rss_kib),
                rs.idle.requests_per_min.unwrap_or(f64::NAN),
                rs.idle.writes_per_min.unwrap_or(f64::NAN),
                rs.idle.reconciles_per_min
            );
        }
    }
    for m in &r.memory {
        s += &format!(
            "\nmemory with {} suspended batches in {} namespace(s): peak RSS {} MiB (RSS {} MiB) reconciling them as they arrived ({:.1}s), {} ms CPU per reconcile ({} reconciles), {} Jobs; a fresh controller over them: ready {:.1}s, peak RSS {} MiB, {} reconciles, API {}\n",
            m.batches,
            m.namespaces,
            mib(m.peak_rss_kib),
            mib(m.rss_kib),
            m.all_reconciled_s,
            opt(m.cpu_per_reconcile_ms, 3),
            opt(m.reconciles, 0),
            m.jobs_created,
            m.restart_ready_s,
            mib(m.restart_peak_rss_kib),
            opt(m.restart_reconciles, 0),
            verbs(m.restart_api.as_ref()),
        );
        if !m.restarts.is_empty() {
            s += "\n| restart over them | ready (caches synced) s | every batch passed s | peak RSS MiB | RSS MiB | CPU s | ms CPU/reconcile | API requests (writes) |\n|---|---|---|---|---|---|---|---|\n";
            for p in &m.restarts {
                s += &format!(
                    "| {} | {:.2} | {:.2} | {} | {} | {} | {} | {} |\n",
                    p.lists,
                    p.ready_s,
                    p.all_passed_s,
                    mib(p.peak_rss_kib),
                    mib(p.rss_kib),
                    opt(p.cpu_s, 2),
                    opt(p.cpu_per_reconcile_ms, 3),
                    p.api.as_ref().map_or("-".into(), |a| format!("{} ({})", a.total, a.writes)),
                );
            }
        }
    }
    for c in &r.checks {
        s += &format!("\n{c}\n");
    }
    s
}
