//! `watch NAME`: follows one batch through a watch on it (kube's watcher: relists and backs off on
//! errors by itself) until it has ended. On a terminal: a live progress bar (indicatif) of items,
//! shards, the running stage and the ETA, redrawn in place. Otherwise: one plain line per change.
//! `-o json`: one summary a line per change.

use std::io::IsTerminal;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};

use crate::client::{Batch, Ctx};
use crate::summary::{self, Summary};
use crate::{WatchArgs, WatchOutput, format};

enum View {
    Bar(ProgressBar),
    Lines { last: String },
    Json,
}

pub async fn run(ctx: &Ctx, args: WatchArgs) -> anyhow::Result<u8> {
    let name = args.name.clone();
    let mut batch = ctx.get_batch(&name).await?;
    let mut view = match args.output {
        Some(WatchOutput::Json) => View::Json,
        None if std::io::stdout().is_terminal() => View::Bar(new_bar()),
        None => View::Lines { last: String::new() },
    };
    let mut s = summarize(&batch);
    view.show(&s)?;
    if summary::ended(&s) {
        return Ok(view.finish(&s));
    }

    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(ctx.batches(), config).default_backoff().boxed();
    let timeout = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen_in_list = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => seen_in_list = false,
                Some(Ok(watcher::Event::InitApply(obj) | watcher::Event::Apply(obj))) => {
                    seen_in_list = true;
                    batch = Batch::from_dynamic(obj)?;
                    s = summarize(&batch);
                    view.show(&s)?;
                    if summary::ended(&s) {
                        return Ok(view.finish(&s));
                    }
                }
                Some(Ok(watcher::Event::InitDone)) if !seen_in_list => return Ok(view.gone(&name)),
                Some(Ok(watcher::Event::InitDone)) => {}
                Some(Ok(watcher::Event::Delete(_))) => return Ok(view.gone(&name)),
                Some(Err(e)) => view.warn(&format!("watch failed, retrying: {e}")),
                None => anyhow::bail!("the watch of predictionbatch {name:?} ended"),
            },
            _ = tick.tick() => {
                // Running times and "in 2m" grow with the clock, not only with the batch.
                if let View::Bar(bar) = &view {
                    redraw(bar, &summarize(&batch));
                }
            }
            _ = sleep_until(timeout) => {
                let phase = s.phase.clone().unwrap_or_else(|| "no status".into());
                view.warn(&format!("timed out after {}: the batch has not ended ({phase})", format::duration(args.timeout.unwrap_or_default().as_secs() as i64)));
                view.abandon();
                return Ok(crate::EXIT_UNHEALTHY);
            }
            _ = tokio::signal::ctrl_c() => {
                view.abandon();
                return Ok(crate::EXIT_INTERRUPTED);
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn summarize(batch: &Batch) -> Summary {
    summary::summarize(batch, &[], 0, Timestamp::now())
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner:.green} {prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} items ({percent}%)\n  {wide_msg}",
        )
        .expect("a valid template")
        .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn redraw(bar: &ProgressBar, s: &Summary) {
    bar.set_length(u64::from(s.items.target.unwrap_or(0)));
    bar.set_position(u64::from(s.items.succeeded));
    bar.set_prefix(format!("{} {}", s.name, s.phase.as_deref().unwrap_or("(no status yet)")));
    bar.set_message(details(s, Some(Timestamp::now())));
}

/// Shards, the running stage, the ETA and the deadline, in one line. With `now`, the running
/// stage's time and how far off the ETA is; without, only what changes with the batch.
pub fn details(s: &Summary, now: Option<Timestamp>) -> String {
    let mut parts = Vec::new();
    if s.shards.total > 0 {
        parts.push(format!(
            "shards {}/{} ok, {} failed, {} active",
            s.shards.succeeded, s.shards.total, s.shards.failed, s.shards.active
        ));
    }
    if let Some(stage) = current_stage(s) {
        let time = stage.duration.as_deref().filter(|_| now.is_some() || !stage.running);
        parts.push(format!("{} {}{}", stage.stage, stage.state, time.map(|d| format!(" {d}")).unwrap_or_default()));
    }
    if let Some(t) = s.eta.completion_time.as_deref().and_then(|t| t.parse::<Timestamp>().ok()) {
        let off = now.map(|now| format!(" ({})", format::relative(t, now))).unwrap_or_default();
        parts.push(format!("ETA {}{off}", format::time(t)));
    }
    match s.eta.at_risk {
        Some(true) => parts.push("AT RISK".into()),
        Some(false) => parts.push("on track".into()),
        None => {}
    }
    if let Some(f) = &s.failed_shards {
        parts.push(format!("failed shards {f}"));
    }
    parts.join(" · ")
}

/// The stage that runs now, else the last one that ran.
fn current_stage(s: &Summary) -> Option<&summary::StageSummary> {
    s.stages
        .iter()
        .find(|st| st.running)
        .or_else(|| s.stages.iter().rev().find(|st| st.in_spec && !matches!(st.state.as_str(), "Waiting" | "Skipped")))
}

/// The plain line of a state: what `watch` prints (after the time) each time it changes. Only
/// what the batch says, nothing that moves with the clock.
pub fn line(s: &Summary) -> String {
    let items = match s.items.target {
        Some(t) => format!("{}/{t} items ({})", s.items.succeeded, format::percent(s.items.succeeded, t)),
        None => "items not counted yet".into(),
    };
    let details = details(s, None);
    let sep = if details.is_empty() { "" } else { " · " };
    format!("{} {} {items}{sep}{details}", s.name, s.phase.as_deref().unwrap_or("(no status yet)"))
}

/// The last line: how the batch ended.
pub fn final_line(s: &Summary) -> String {
    let phase = s.phase.as_deref().unwrap_or("(no status)");
    let items = s.items.target.map_or_else(String::new, |t| {
        format!(" {}/{t} items ({})", s.items.succeeded, format::percent(s.items.succeeded, t))
    });
    let took = s.duration.as_deref().map(|d| format!(" in {d}")).unwrap_or_default();
    let notes = if s.notes.is_empty() { String::new() } else { format!(": {}", s.notes.join("; ")) };
    format!("{} {phase}{items}{took}{notes}", s.name)
}

impl View {
    fn show(&mut self, s: &Summary) -> anyhow::Result<()> {
        match self {
            View::Bar(bar) => redraw(bar, s),
            View::Lines { last } => {
                let now = line(s);
                if now != *last {
                    println!("{} {now}", format::time(Timestamp::now()));
                    *last = now;
                }
            }
            View::Json => println!("{}", serde_json::to_string(s)?),
        }
        Ok(())
    }

    fn warn(&self, message: &str) {
        match self {
            View::Bar(bar) => bar.println(format!("warning: {message}")),
            _ => eprintln!("warning: {message}"),
        }
    }

    fn abandon(&self) {
        if let View::Bar(bar) = self {
            bar.abandon();
        }
    }

    fn finish(&self, s: &Summary) -> u8 {
        match self {
            View::Bar(bar) => {
                redraw(bar, s);
                bar.finish();
                println!("{}", final_line(s));
            }
            View::Lines { .. } => println!("{} {}", format::time(Timestamp::now()), final_line(s)),
            View::Json => {}
        }
        s.health.map_or(crate::EXIT_UNHEALTHY, |h| h.exit_code())
    }

    fn gone(&self, name: &str) -> u8 {
        self.abandon();
        eprintln!("error: predictionbatch {name:?} was deleted");
        crate::EXIT_UNHEALTHY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_lines_change_with_the_batch_not_the_clock() {
        let raw = json!({
            "metadata": {"name": "b", "namespace": "n"},
            "spec": {"gameDate": "2026-01-02", "targetCount": 120, "itemsPerShard": 4,
                     "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}},
            "status": {"phase": "Running", "items": {"target": 120, "succeeded": 40, "failed": 0},
                       "shards": {"total": 30, "succeeded": 10, "failed": 0, "active": 10},
                       "workers": {"jobName": "b-workers", "state": "Running", "startTime": "2026-01-02T12:00:00Z"},
                       "eta": {"completionTime": "2026-01-02T12:03:22Z"}}
        });
        let s = summarize(&Batch::from_value(raw.clone()));
        assert_eq!(
            line(&s),
            "b Running 40/120 items (33.3%) · shards 10/30 ok, 0 failed, 10 active · workers Running · ETA 2026-01-02T12:03:22Z"
        );
        assert!(details(&s, Some(Timestamp::now())).contains("workers Running "), "with the running time");
        let mut done = raw;
        done["status"] =
            json!({"phase": "Succeeded", "duration": "11s", "items": {"target": 120, "succeeded": 120, "failed": 0}});
        let s = summarize(&Batch::from_value(done));
        assert_eq!(final_line(&s), "b Succeeded 120/120 items (100.0%) in 11s");
    }
}
