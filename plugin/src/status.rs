//! `status NAME`: the pipeline of one batch on one screen, or `-o json|yaml`.

use console::Style;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};

use crate::client::Ctx;
use crate::format;
use crate::summary::{self, Summary};
use crate::{Output, StatusArgs};

pub async fn run(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<u8> {
    let batch = ctx.get_batch(&args.name).await?;
    let (events, events_error) = match batch.raw["metadata"]["uid"].as_str() {
        Some(uid) => match batch_events(ctx, uid).await {
            Ok(events) => (events, None),
            Err(e) => (Vec::new(), Some(crate::client::describe_error(&e))),
        },
        None => (Vec::new(), None),
    };
    let s = summary::summarize(&batch, &events, args.events, Timestamp::now());
    match args.output {
        Some(output) => print_machine(&s, output)?,
        None => {
            let mut text = render(&s, Timestamp::now(), &Colors::for_stdout());
            if let Some(e) = events_error {
                text.push_str(&format!("(cannot list the batch's events: {e})\n"));
            }
            print!("{text}");
        }
    }
    Ok(s.health.map_or(crate::EXIT_UNHEALTHY, |h| h.exit_code()))
}

/// The batch's events (core/v1, which also serves those written through events.k8s.io/v1).
pub async fn batch_events(ctx: &Ctx, uid: &str) -> anyhow::Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Ok(api.list(&ListParams::default().fields(&format!("involvedObject.uid={uid}"))).await?.items)
}

pub fn print_machine<T: serde::Serialize>(value: &T, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

/// Styles of the screen: colours only on a terminal that wants them (console honours NO_COLOR
/// and CLICOLOR_FORCE).
pub struct Colors {
    pub good: Style,
    pub bad: Style,
    pub warn: Style,
    pub bold: Style,
    pub dim: Style,
}

impl Colors {
    pub fn for_stdout() -> Colors {
        let on = console::colors_enabled();
        let style = |s: Style| s.force_styling(on);
        Colors {
            good: style(Style::new().green()),
            bad: style(Style::new().red().bold()),
            warn: style(Style::new().yellow()),
            bold: style(Style::new().bold()),
            dim: style(Style::new().dim()),
        }
    }

    #[cfg(test)]
    pub fn plain() -> Colors {
        let s = || Style::new().force_styling(false);
        Colors { good: s(), bad: s(), warn: s(), bold: s(), dim: s() }
    }

    pub fn phase(&self, phase: &str) -> String {
        match phase {
            "Succeeded" => self.good.apply_to(phase).to_string(),
            "Failed" => self.bad.apply_to(phase).to_string(),
            "Suspended" | "Stopping" => self.warn.apply_to(phase).to_string(),
            _ => phase.to_string(),
        }
    }
}

/// The status screen.
pub fn render(s: &Summary, now: Timestamp, c: &Colors) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let key = if key.is_empty() { String::new() } else { format!("{key}:") };
        out.push_str(&format!("{key:<12} {value}\n"));
    };
    line("Name", c.bold.apply_to(&s.name).to_string());
    line("Namespace", s.namespace.clone());
    if let Some(d) = &s.game_date {
        line("Game date", d.clone());
    }
    let mut phase = s.phase.as_deref().map_or_else(|| "(no status yet)".to_string(), |p| c.phase(p));
    if s.attempt > 1 {
        phase.push_str(&format!("   attempt {}", s.attempt));
    }
    if s.suspend && s.phase.as_deref() != Some("Suspended") {
        phase.push_str("   (spec.suspend: true)");
    }
    line("Phase", phase);
    let health = match s.health {
        Some(h) if h.is_healthy() => c.good.apply_to(format!("OK ({h:?})")).to_string(),
        Some(h) => c.bad.apply_to(format!("UNHEALTHY ({h:?})")).to_string(),
        None => "unknown".into(),
    };
    line("Health", health);
    for note in &s.notes {
        line("", format!("- {note}"));
    }
    if let Some(m) = &s.message {
        line("Message", m.clone());
    }
    let target = s.items.target;
    let fraction = target.filter(|t| *t > 0).map_or(0.0, |t| f64::from(s.items.succeeded) / f64::from(t));
    let coverage = match target {
        Some(t) => format!("{}/{t} items ({})", s.items.succeeded, format::percent(s.items.succeeded, t)),
        None => "item count not known yet (the loader reports it)".into(),
    };
    line("Progress", format!("{}  {coverage}", format::bar(fraction, 30)));
    if s.shards.total > 0 {
        line(
            "Shards",
            format!(
                "{}/{} succeeded, {} failed, {} active",
                s.shards.succeeded, s.shards.total, s.shards.failed, s.shards.active
            ),
        );
    }
    if let Some(f) = &s.failed_shards {
        let n = format::range_len(f);
        let count = if n > 0 {
            format!(" ({n} shard{}, {} items)", if n == 1 { "" } else { "s" }, s.items.failed)
        } else {
            String::new()
        };
        line("Failed", c.warn.apply_to(format!("shards {f}{count}")).to_string());
    }
    if let Some(d) = &s.duration {
        let how = match (&s.completion_time, &s.start_time) {
            (Some(end), _) => format!("{d} (ended {end})"),
            (None, Some(start)) => format!("{d} (running since {start})"),
            (None, None) => d.clone(),
        };
        line("Duration", how);
    }
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    let mut eta = Vec::new();
    if let Some(t) = parse(&s.eta.completion_time) {
        eta.push(format!("last shard {} ({})", format::time(t), format::relative(t, now)));
    }
    if let Some(t) = parse(&s.eta.quorum_time) {
        eta.push(format!("quorum {} ({})", format::time(t), format::relative(t, now)));
    } else if let Some(t) = parse(&s.eta.quorum_met_time) {
        eta.push(format!("quorum met {}", format::relative(t, now)));
    }
    if let Some(r) = &s.eta.shards_per_minute {
        eta.push(format!("{r} shards/min"));
    }
    if !eta.is_empty() {
        line("ETA", eta.join(", "));
    }
    if let Some(by) = &s.eta.complete_by {
        let when = by.parse::<Timestamp>().map(|t| format!(" ({})", format::relative(t, now))).unwrap_or_default();
        let verdict = match s.eta.at_risk {
            Some(true) => format!(": {}", c.bad.apply_to("AT RISK")),
            Some(false) => format!(": {}", c.good.apply_to("on track")),
            None => String::new(),
        };
        line("Deadline", format!("completeBy {by}{when}{verdict}"));
    }
    let mirror = match &s.mirror {
        Some(m) if m.status == "True" => c.good.apply_to("Firestore in sync (MirrorSynced=True)").to_string(),
        Some(m) => c
            .warn
            .apply_to(format!("Firestore NOT in sync (MirrorSynced={}, {}: {})", m.status, m.reason, m.message))
            .to_string(),
        None => c.dim.apply_to("off (no MirrorSynced condition)").to_string(),
    };
    line("Mirror", mirror);

    out.push_str("\nStages:\n");
    let rows: Vec<Vec<String>> = s
        .stages
        .iter()
        .map(|st| {
            let duration = match (&st.duration, st.running) {
                (Some(d), true) => format!("{d} (running)"),
                (Some(d), false) => d.clone(),
                (None, _) => "-".into(),
            };
            vec![
                st.stage.clone(),
                c.phase(&st.state),
                duration,
                st.coverage.clone().unwrap_or_else(|| "-".into()),
                st.job_name.clone().unwrap_or_else(|| "-".into()),
                st.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&indent(&format::table(&["STAGE", "STATE", "DURATION", "COVERAGE", "JOB", "MESSAGE"], &rows)));

    if !s.stuck_pods.is_empty() {
        out.push_str("\nStuck pods:\n");
        let rows: Vec<Vec<String>> = s
            .stuck_pods
            .iter()
            .map(|p| {
                let since = p.since.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
                vec![
                    p.stage.clone().unwrap_or_else(|| "-".into()),
                    p.shard.clone().unwrap_or_else(|| "-".into()),
                    p.pod.clone(),
                    c.warn.apply_to(&p.reason).to_string(),
                    since.map_or_else(
                        || p.since.clone().unwrap_or_else(|| "-".into()),
                        |t| format::age(format::seconds_between(t, now)),
                    ),
                    p.message.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&format::table(&["STAGE", "SHARD", "POD", "REASON", "FOR", "MESSAGE"], &rows)));
    }

    if !s.conditions.is_empty() {
        out.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = s
            .conditions
            .iter()
            .map(|cd| {
                let age = cd
                    .last_transition_time
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .map_or_else(|| "-".into(), |t| format::age(format::seconds_between(t, now)));
                vec![cd.type_.clone(), cd.status.clone(), cd.reason.clone(), age, cd.message.clone()]
            })
            .collect();
        out.push_str(&indent(&format::table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], &rows)));
    }

    if s.events.is_empty() {
        out.push_str("\nEvents: <none>\n");
    } else {
        out.push_str(&format!("\nEvents (last {}, newest last):\n", s.events.len()));
        let rows: Vec<Vec<String>> = s
            .events
            .iter()
            .map(|e| {
                let age = e.at.map_or_else(|| "-".into(), |t| format::age(format::seconds_between(t, now)));
                let age = if e.count > 1 { format!("{age} (x{})", e.count) } else { age };
                let type_ = if e.type_ == "Warning" { c.warn.apply_to(&e.type_).to_string() } else { e.type_.clone() };
                vec![age, type_, e.reason.clone(), e.message.clone()]
            })
            .collect();
        out.push_str(&indent(&format::table(&["AGE", "TYPE", "REASON", "MESSAGE"], &rows)));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Batch;
    use serde_json::json;

    #[test]
    fn the_screen_shows_every_part_of_the_pipeline() {
        let raw = json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
            "metadata": {"name": "nba-2026-01-02", "namespace": "nba", "uid": "u"},
            "spec": {
                "gameDate": "2026-01-02", "targetCount": 120, "itemsPerShard": 4,
                "completion": {"completeBy": "2026-01-02T19:00:00Z", "minSucceededPercent": 90},
                "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
                "export": {"template": {"spec": {"containers": [{"name": "e", "image": "e"}]}}}
            },
            "status": {
                "phase": "Running", "startTime": "2026-01-02T12:00:00Z",
                "shards": {"total": 30, "succeeded": 10, "failed": 2, "active": 10},
                "items": {"target": 120, "succeeded": 40, "failed": 8}, "failedShards": "3,7",
                "workers": {"jobName": "nba-2026-01-02-workers", "state": "Running", "startTime": "2026-01-02T12:00:00Z"},
                "eta": {"completionTime": "2026-01-02T12:03:22Z", "quorumTime": "2026-01-02T12:02:40Z", "shardsPerMinute": "13.3"},
                "stuckPods": [{"stage": "workers", "shard": 5, "pod": "nba-2026-01-02-workers-5-x", "reason": "ImagePullBackOff",
                               "since": "2026-01-02T12:00:12Z", "message": "Back-off pulling image"}],
                "conditions": [
                    {"type": "Ready", "status": "Unknown", "reason": "Running", "message": "Running: 40/120 items, 10 shards active", "lastTransitionTime": "2026-01-02T12:00:00Z"},
                    {"type": "AtRisk", "status": "False", "reason": "OnTrack", "message": "", "lastTransitionTime": "2026-01-02T12:00:30Z"},
                    {"type": "MirrorSynced", "status": "False", "reason": "FirestoreUnavailable", "message": "unavailable", "lastTransitionTime": "2026-01-02T12:00:30Z"}
                ]
            }
        });
        let now: Timestamp = "2026-01-02T12:01:12Z".parse().unwrap();
        let s = summary::summarize(&Batch::from_value(raw), &[], 10, now);
        let screen = render(&s, now, &Colors::plain());
        for want in [
            "Phase:       Running",
            "Health:      OK (InProgress)\n             - Firestore mirror not in sync: FirestoreUnavailable: unavailable\n",
            "Progress:    [##########--------------------]  40/120 items (33.3%)",
            "Shards:      10/30 succeeded, 2 failed, 10 active",
            "Failed:      shards 3,7 (2 shards, 8 items)",
            "Duration:    1m12s (running since 2026-01-02T12:00:00Z)",
            "ETA:         last shard 2026-01-02T12:03:22Z (in 2m10s), quorum 2026-01-02T12:02:40Z (in 1m28s), 13.3 shards/min",
            "Deadline:    completeBy 2026-01-02T19:00:00Z (in 6h58m): on track",
            "Mirror:      Firestore NOT in sync (MirrorSynced=False, FirestoreUnavailable: unavailable)",
            "  loader          Skipped   -",
            "  workers         Running   1m12s (running)   40/120 (33.3%)   nba-2026-01-02-workers",
            "  consolidation   Skipped",
            "  export          Waiting",
            "  workers   5       nba-2026-01-02-workers-5-x   ImagePullBackOff   60s   Back-off pulling image",
            "Events: <none>",
        ] {
            assert!(screen.contains(want), "missing {want:?} in:\n{screen}");
        }
    }
}
