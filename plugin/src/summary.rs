//! One batch reduced to what its status screen and `-o json` show, and whether it is healthy.
//! Pure: built from the stored batch, its events and the time, so it is tested without a cluster.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use prediction_batch_controller::api::{
    CONDITION_AT_RISK, CONDITION_DEGRADED, CONDITION_READY, CONDITION_STALLED, Phase, PredictionBatch,
    PredictionBatchStatus, RerunFrom, Stage, StageState,
};
use serde::Serialize;
use serde_json::Value;

use crate::client::Batch;
use crate::format;

/// Condition of the Firestore mirror (`--firestore-project`); absent when the mirror is off.
pub const CONDITION_MIRROR_SYNCED: &str = "MirrorSynced";
/// `True` while pods of the batch wait for something that needs someone to act (controllers
/// that report stuck pods; absent otherwise).
pub const CONDITION_PODS_STUCK: &str = "PodsStuck";

/// What a batch's health comes to (`health` in `-o json`).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Phase Succeeded.
    Succeeded,
    /// In progress (or not yet seen by a controller), not Stalled, not AtRisk.
    InProgress,
    /// Phase Failed.
    Failed,
    /// Stalled=True on a batch that has not failed (a recoverable stall: JobNameConflict, ...).
    Stalled,
    /// spec.suspend holds the batch.
    Suspended,
    /// AtRisk=True: at the current throughput the quorum is expected after completeBy.
    AtRisk,
    /// The stored object cannot be read with the controller's types.
    Unreadable,
}

impl Health {
    pub fn is_healthy(self) -> bool {
        matches!(self, Health::Succeeded | Health::InProgress)
    }

    pub fn exit_code(self) -> u8 {
        if self.is_healthy() { crate::EXIT_OK } else { crate::EXIT_UNHEALTHY }
    }
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub game_date: Option<String>,
    /// `status.phase`; absent until a controller wrote a status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub healthy: bool,
    pub health: Option<Health>,
    /// What makes it unhealthy, or worth a look (Degraded, no status yet), one line each.
    pub notes: Vec<String>,
    /// Message of the Ready condition ("Running: 40/120 items, 10 shards active").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub suspend: bool,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun: Option<RerunSummary>,
    pub items: Items,
    pub shards: Shards,
    /// `status.failedShards` (compressed ranges, "3,7").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_shards: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `status.duration` once ended, else the running time since `startTime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    pub stages: Vec<StageSummary>,
    pub eta: Eta,
    /// The MirrorSynced condition (absent: the Firestore mirror is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<ConditionSummary>,
    pub conditions: Vec<ConditionSummary>,
    /// `status.stuckPods`, when the controller reports pods that do not make progress.
    pub stuck_pods: Vec<StuckPod>,
    /// The batch's latest events, oldest first.
    pub events: Vec<EventSummary>,
    /// When this summary was made.
    pub observed_at: String,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RerunSummary {
    pub token: String,
    pub from: String,
    /// The token is not answered yet: the rerun starts (or is refused) once the batch has finished.
    pub pending: bool,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Items {
    pub target: Option<u32>,
    pub succeeded: u32,
    pub failed: u32,
    /// Coverage: succeeded / target in percent (absent while the target is unknown or 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Shards {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub active: u32,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// loader, workers, consolidation or export.
    pub stage: String,
    /// The spec asks for the stage (workers always).
    pub in_spec: bool,
    /// The stage's state; `Skipped` when not in the spec, `Waiting` before the controller plans it.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `duration` once it ended, else its running time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Still running (the duration grows).
    pub running: bool,
    /// Items: workers their coverage, the loader the count it found, later stages what they got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Eta {
    /// `status.eta.completionTime`: when the last shard is expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `status.eta.quorumTime`: when the quorum is expected (absent once met).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum_time: Option<String>,
    /// `status.quorumTime`: when the quorum was met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum_met_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards_per_minute: Option<String>,
    /// `spec.completion.completeBy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete_by: Option<String>,
    /// The AtRisk condition: true (quorum expected after completeBy), false (on track), absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_risk: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_risk_message: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// One entry of `status.stuckPods` (read as JSON, so any shape the controller writes is shown).
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StuckPod {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    pub pod: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub message: String,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
    #[serde(skip)]
    pub at: Option<Timestamp>,
}

/// The summary of `batch` in `namespace` at `now`, with its `events` (any order; the last
/// `max_events` are kept, oldest first).
pub fn summarize(batch: &Batch, events: &[Event], max_events: usize, now: Timestamp) -> Summary {
    let raw = &batch.raw;
    let mut s = Summary {
        namespace: raw["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
        name: raw["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        uid: raw["metadata"]["uid"].as_str().map(String::from),
        game_date: raw["spec"]["gameDate"].as_str().map(String::from),
        phase: raw["status"]["phase"].as_str().map(String::from),
        attempt: 1,
        stuck_pods: stuck_pods(raw),
        events: latest_events(events, max_events),
        observed_at: format::time(now),
        ..Default::default()
    };
    match &batch.typed {
        Ok(typed) => fill(&mut s, typed, now),
        Err(e) => {
            s.conditions = raw_conditions(raw);
            s.health = Some(Health::Unreadable);
            s.notes.push(format!("the stored batch cannot be read with the controller's types: {e}"));
        }
    }
    s.healthy = s.health.is_some_and(Health::is_healthy);
    s
}

fn fill(s: &mut Summary, b: &PredictionBatch, now: Timestamp) {
    let empty = PredictionBatchStatus::default();
    let st = b.status.as_ref().unwrap_or(&empty);
    let spec = &b.spec;
    s.suspend = spec.suspend;
    s.attempt = st.attempt();
    s.conditions = st.conditions.iter().map(condition).collect();
    s.message = find(&st.conditions, CONDITION_READY).map(|c| c.message.clone()).filter(|m| !m.is_empty());
    s.mirror = find(&st.conditions, CONDITION_MIRROR_SYNCED).map(condition);

    if let Some(rerun) = &spec.rerun {
        s.rerun = Some(RerunSummary {
            token: rerun.token.clone(),
            from: rerun_from(rerun.from).into(),
            pending: b.status.is_some() && st.rerun_token.as_deref() != Some(rerun.token.as_str()),
        });
    }

    let target = st.items.as_ref().map(|i| i.target).or(spec.target_count);
    let (succeeded, failed) = st.items.as_ref().map_or((0, 0), |i| (i.succeeded, i.failed));
    let percent = target.filter(|t| *t > 0).map(|t| (f64::from(succeeded) * 1000.0 / f64::from(t)).round() / 10.0);
    s.items = Items { target, succeeded, failed, percent };
    if let Some(sh) = &st.shards {
        s.shards = Shards { total: sh.total, succeeded: sh.succeeded, failed: sh.failed, active: sh.active };
    }
    s.failed_shards = st.failed_shards.clone().filter(|f| !f.is_empty());

    s.start_time = st.start_time.as_ref().map(|t| format::time(t.0));
    s.completion_time = st.completion_time.as_ref().map(|t| format::time(t.0));
    let first_start = Stage::ALL
        .into_iter()
        .filter_map(|stage| st.stage(stage).as_ref()?.start_time.as_ref().map(|t| t.0))
        .chain(st.start_time.as_ref().map(|t| t.0))
        .min();
    match (&st.duration, first_start, &st.completion_time) {
        (Some(d), start, end) => {
            s.duration = Some(d.clone());
            s.duration_seconds = start.zip(end.as_ref()).map(|(a, b)| format::seconds_between(a, b.0));
        }
        (None, Some(start), None) => {
            let secs = format::seconds_between(start, now);
            s.duration = Some(format::duration(secs));
            s.duration_seconds = Some(secs);
        }
        _ => {}
    }

    let coverage = |items: u32| target.map(|t| format!("{items}/{t} ({})", format::percent(items, t)));
    for stage in Stage::ALL {
        let in_spec = spec.has_stage(stage);
        let status = st.stage(stage).as_ref();
        let mut out = StageSummary {
            stage: stage.label().into(),
            in_spec,
            state: match (in_spec, status) {
                (_, Some(ss)) => state_name(ss.state).into(),
                (false, None) => "Skipped".into(),
                (true, None) => "Waiting".into(),
            },
            ..Default::default()
        };
        if let Some(ss) = status {
            out.job_name = Some(ss.job_name.clone()).filter(|j| !j.is_empty());
            out.start_time = ss.start_time.as_ref().map(|t| format::time(t.0));
            out.completion_time = ss.completion_time.as_ref().map(|t| format::time(t.0));
            out.message = ss.message.clone();
            out.running = matches!(ss.state, StageState::Running | StageState::Stopping);
            let start = ss.start_time.as_ref().map(|t| t.0);
            let end = ss.completion_time.as_ref().map(|t| t.0);
            out.duration_seconds = match (start, end) {
                (Some(a), Some(b)) => Some(format::seconds_between(a, b)),
                (Some(a), None) if out.running => Some(format::seconds_between(a, now)),
                _ => None,
            };
            out.duration = ss.duration.clone().or_else(|| out.duration_seconds.map(format::duration));
            let started = ss.start_time.is_some() || ss.state != StageState::Pending;
            out.coverage = match stage {
                Stage::Loader => st
                    .items
                    .as_ref()
                    .filter(|_| ss.state == StageState::Succeeded)
                    .map(|i| format!("{} items found", i.target)),
                Stage::Workers if started => coverage(succeeded),
                Stage::Consolidation | Stage::Export if started => coverage(succeeded),
                _ => None,
            };
        }
        s.stages.push(out);
    }

    s.eta = Eta {
        completion_time: st.eta.as_ref().and_then(|e| e.completion_time.as_ref()).map(|t| format::time(t.0)),
        quorum_time: st.eta.as_ref().and_then(|e| e.quorum_time.as_ref()).map(|t| format::time(t.0)),
        quorum_met_time: st.quorum_time.as_ref().map(|t| format::time(t.0)),
        shards_per_minute: st.eta.as_ref().and_then(|e| e.shards_per_minute.clone()),
        complete_by: spec.completion.complete_by.clone(),
        at_risk: find(&st.conditions, CONDITION_AT_RISK).map(|c| c.status == "True"),
        at_risk_message: find(&st.conditions, CONDITION_AT_RISK).map(|c| c.message.clone()).filter(|m| !m.is_empty()),
    };

    let phase = st.phase;
    let stalled = find(&st.conditions, CONDITION_STALLED).filter(|c| c.status == "True");
    let health = match phase {
        Some(Phase::Succeeded) => Health::Succeeded,
        Some(Phase::Failed) => Health::Failed,
        _ if stalled.is_some() => Health::Stalled,
        Some(Phase::Suspended) => Health::Suspended,
        _ if s.eta.at_risk == Some(true) => Health::AtRisk,
        _ => Health::InProgress,
    };
    s.health = Some(health);
    match health {
        Health::Failed | Health::Stalled => {
            let (reason, message) = stalled.map_or(("Failed", ""), |c| (c.reason.as_str(), c.message.as_str()));
            s.notes.push(if message.is_empty() { reason.to_string() } else { format!("{reason}: {message}") });
        }
        Health::Suspended => s.notes.push("suspended (spec.suspend): resume it to go on".into()),
        Health::AtRisk => s.notes.push(format!(
            "at risk: {}",
            s.eta.at_risk_message.as_deref().unwrap_or("the quorum is expected after completeBy")
        )),
        _ => {}
    }
    if b.status.is_none() {
        s.notes.push("no status yet: is a controller watching this namespace?".into());
    }
    if let Some(d) = find(&st.conditions, CONDITION_DEGRADED).filter(|c| c.status == "True") {
        s.notes.push(format!("degraded: {}", d.message));
    }
    if let Some(r) = s.rerun.as_ref().filter(|r| r.pending) {
        let when =
            if phase.is_some_and(Phase::is_terminal) { "starting" } else { "waits until the batch has finished" };
        s.notes.push(format!("rerun from {} (token {:?}) {when}", r.from, r.token));
    }
    if let Some(p) = find(&st.conditions, CONDITION_PODS_STUCK).filter(|c| c.status == "True") {
        s.notes.push(format!("pods stuck: {}: {}", p.reason, p.message));
    }
    if let Some(m) = s.mirror.as_ref().filter(|m| m.status != "True") {
        s.notes.push(format!("Firestore mirror not in sync: {}: {}", m.reason, m.message));
    }
}

/// Whether a watch of the batch is over: it has Succeeded or Failed and no rerun is pending.
pub fn ended(s: &Summary) -> bool {
    matches!(s.phase.as_deref(), Some("Succeeded" | "Failed")) && !s.rerun.as_ref().is_some_and(|r| r.pending)
}

pub fn rerun_from(from: RerunFrom) -> &'static str {
    match from {
        RerunFrom::FailedShards => "FailedShards",
        RerunFrom::Consolidation => "Consolidation",
        RerunFrom::Export => "Export",
    }
}

fn state_name(state: StageState) -> &'static str {
    match state {
        StageState::Pending => "Pending",
        StageState::Running => "Running",
        StageState::Stopping => "Stopping",
        StageState::Succeeded => "Succeeded",
        StageState::Failed => "Failed",
    }
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn condition(c: &Condition) -> ConditionSummary {
    ConditionSummary {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: Some(format::time(c.last_transition_time.0)),
    }
}

fn raw_conditions(raw: &Value) -> Vec<ConditionSummary> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    raw["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| ConditionSummary {
            type_: text(&c["type"]),
            status: text(&c["status"]),
            reason: text(&c["reason"]),
            message: text(&c["message"]),
            last_transition_time: c["lastTransitionTime"].as_str().map(String::from),
        })
        .collect()
}

/// `status.stuckPods`: a list of {stage, shard, pod, reason, since, message}, any of them missing.
fn stuck_pods(raw: &Value) -> Vec<StuckPod> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    raw["status"]["stuckPods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| StuckPod {
            stage: text(&p["stage"]),
            shard: text(&p["shard"]),
            pod: text(&p["pod"]).unwrap_or_default(),
            reason: text(&p["reason"]).unwrap_or_default(),
            since: text(&p["since"]),
            message: text(&p["message"]).unwrap_or_default(),
        })
        .collect()
}

/// When an event last happened: its series' last observation, its last timestamp, its event
/// time, its first timestamp, else its creation (as `kubectl events` sorts them).
pub fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn latest_events(events: &[Event], max: usize) -> Vec<EventSummary> {
    let mut all: Vec<EventSummary> = events
        .iter()
        .map(|e| {
            let at = event_time(e);
            EventSummary {
                time: at.map(format::time),
                type_: e.type_.clone().unwrap_or_default(),
                reason: e.reason.clone().unwrap_or_default(),
                message: e.message.clone().unwrap_or_default().trim().to_string(),
                count: e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1),
                at,
            }
        })
        .collect();
    all.sort_by_key(|e| e.at);
    let skip = all.len().saturating_sub(max);
    all.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-01-02T12:01:12Z".parse().unwrap()
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": "2026-01-02T12:00:00Z", "observedGeneration": 1})
    }

    fn batch(status: Value, spec_extra: Value) -> Batch {
        let mut spec = json!({
            "gameDate": "2026-01-02", "targetCount": 120, "itemsPerShard": 4,
            "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
            "consolidation": {"template": {"spec": {"containers": [{"name": "c", "image": "c"}]}}},
            "export": {"template": {"spec": {"containers": [{"name": "e", "image": "e"}]}}}
        });
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut raw = json!({
            "apiVersion": "predictions.dev/v1alpha1", "kind": "PredictionBatch",
            "metadata": {"name": "nba-2026-01-02", "namespace": "nba", "uid": "u1"},
            "spec": spec
        });
        if !status.is_null() {
            raw["status"] = status;
        }
        Batch::from_value(raw)
    }

    fn running() -> Value {
        json!({
            "phase": "Running",
            "shards": {"total": 30, "succeeded": 10, "failed": 0, "active": 10},
            "items": {"target": 120, "succeeded": 40, "failed": 0},
            "progress": "40/120",
            "startTime": "2026-01-02T12:00:00Z",
            "workers": {"jobName": "nba-2026-01-02-workers", "state": "Running", "startTime": "2026-01-02T12:00:00Z"},
            "eta": {"completionTime": "2026-01-02T12:03:22Z", "quorumTime": "2026-01-02T12:03:22Z", "shardsPerMinute": "13.3"},
            "rerunToken": "t0",
            "conditions": [
                cond("Ready", "Unknown", "Running", "Running: 40/120 items, 10 shards active"),
                cond("Stalled", "False", "Progressing", ""),
                cond("AtRisk", "False", "OnTrack", "on track")
            ]
        })
    }

    #[test]
    fn a_running_batch_on_track_is_healthy() {
        let s =
            summarize(&batch(running(), json!({"completion": {"completeBy": "2026-01-02T19:00:00Z"}})), &[], 10, now());
        assert_eq!((s.health, s.healthy), (Some(Health::InProgress), true));
        assert_eq!(s.items.percent, Some(33.3));
        assert_eq!(s.duration.as_deref(), Some("1m12s"));
        let workers = &s.stages[1];
        assert_eq!((workers.stage.as_str(), workers.state.as_str()), ("workers", "Running"));
        assert_eq!(workers.duration.as_deref(), Some("1m12s"));
        assert!(workers.running);
        assert_eq!(workers.coverage.as_deref(), Some("40/120 (33.3%)"));
        assert_eq!(s.stages[0].state, "Skipped");
        assert_eq!(s.stages[2].state, "Waiting");
        assert_eq!(s.eta.at_risk, Some(false));
        assert_eq!(s.eta.complete_by.as_deref(), Some("2026-01-02T19:00:00Z"));
        assert!(s.mirror.is_none());
        assert!(!ended(&s));
    }

    #[test]
    fn at_risk_stalled_suspended_and_failed_are_unhealthy() {
        let mut st = running();
        st["conditions"][2] =
            cond("AtRisk", "True", "EtaPastDeadline", "at 6 shards/min the quorum is expected at ...");
        let s = summarize(&batch(st, json!({})), &[], 10, now());
        assert_eq!((s.health, s.healthy), (Some(Health::AtRisk), false));
        assert!(s.notes[0].starts_with("at risk: at 6 shards/min"), "{:?}", s.notes);

        let mut st = running();
        st["conditions"][1] = cond("Stalled", "True", "JobNameConflict", "a Job named ... exists");
        assert_eq!(summarize(&batch(st, json!({})), &[], 10, now()).health, Some(Health::Stalled));

        let mut st = running();
        st["phase"] = json!("Suspended");
        assert_eq!(summarize(&batch(st, json!({"suspend": true})), &[], 10, now()).health, Some(Health::Suspended));

        let st = json!({
            "phase": "Failed", "completionTime": "2026-01-02T12:00:01Z", "rerunToken": "t0",
            "conditions": [cond("Stalled", "True", "DeadlineExceeded", "completeBy passed")]
        });
        let s = summarize(&batch(st, json!({})), &[], 10, now());
        assert_eq!((s.health, s.healthy), (Some(Health::Failed), false));
        assert_eq!(s.notes, ["DeadlineExceeded: completeBy passed"]);
        assert_eq!(Health::Failed.exit_code(), 1);
        assert!(ended(&s));
    }

    #[test]
    fn a_succeeded_batch_shows_every_stage_and_a_pending_rerun_keeps_it_going() {
        let st = json!({
            "phase": "Succeeded", "startTime": "2026-01-02T12:00:00Z", "completionTime": "2026-01-02T12:00:11Z",
            "duration": "11s", "items": {"target": 120, "succeeded": 112, "failed": 8},
            "shards": {"total": 30, "succeeded": 28, "failed": 2, "active": 0}, "failedShards": "3,7",
            "workers": {"jobName": "w", "state": "Succeeded", "startTime": "2026-01-02T12:00:00Z",
                        "completionTime": "2026-01-02T12:00:07Z", "duration": "7s"},
            "consolidation": {"jobName": "c", "state": "Succeeded", "startTime": "2026-01-02T12:00:07Z",
                              "completionTime": "2026-01-02T12:00:09Z", "duration": "2s"},
            "export": {"jobName": "e", "state": "Succeeded", "startTime": "2026-01-02T12:00:09Z",
                       "completionTime": "2026-01-02T12:00:11Z", "duration": "2s"},
            "rerunToken": "t0",
            "conditions": [cond("Ready", "True", "Succeeded", "112/120 items succeeded (93.3% coverage)"),
                           cond("Degraded", "True", "ShardsFailed", "2 of 30 shards failed (8 of 120 items): 3,7"),
                           cond("MirrorSynced", "True", "Synced", "")]
        });
        let s = summarize(&batch(st.clone(), json!({})), &[], 10, now());
        assert_eq!((s.health, s.healthy), (Some(Health::Succeeded), true));
        assert_eq!((s.duration.as_deref(), s.duration_seconds), (Some("11s"), Some(11)));
        assert_eq!(s.failed_shards.as_deref(), Some("3,7"));
        assert_eq!(s.stages[3].duration.as_deref(), Some("2s"));
        assert!(s.notes.iter().any(|n| n.starts_with("degraded: 2 of 30")), "{:?}", s.notes);
        assert_eq!(s.mirror.as_ref().map(|m| m.status.as_str()), Some("True"));
        assert!(ended(&s));

        let s = summarize(&batch(st, json!({"rerun": {"token": "t1", "from": "Export"}})), &[], 10, now());
        assert_eq!(s.rerun, Some(RerunSummary { token: "t1".into(), from: "Export".into(), pending: true }));
        assert!(!ended(&s), "a rerun is about to start");
    }

    #[test]
    fn no_status_yet_is_in_progress_and_unreadable_objects_are_not() {
        let s = summarize(&batch(Value::Null, json!({})), &[], 10, now());
        assert_eq!((s.health, s.phase.as_deref()), (Some(Health::InProgress), None));
        assert!(s.notes[0].starts_with("no status yet"));
        assert_eq!(
            s.stages.iter().map(|st| st.state.as_str()).collect::<Vec<_>>(),
            ["Skipped", "Waiting", "Waiting", "Waiting"]
        );

        let b = batch(json!({"phase": "Running", "shards": {"total": 99999999999u64}}), json!({}));
        let s = summarize(&b, &[], 10, now());
        assert_eq!((s.health, s.healthy, s.phase.as_deref()), (Some(Health::Unreadable), false, Some("Running")));
    }

    #[test]
    fn stuck_pods_are_read_whatever_their_shape() {
        let mut st = running();
        st["stuckPods"] = json!([
            {"stage": "workers", "shard": 3, "pod": "w-3-abc", "reason": "ImagePullBackOff", "since": "2026-01-02T12:00:10Z", "message": "pull failed"},
            {"stage": "export", "pod": "export-x", "reason": "Unschedulable"}
        ]);
        st["conditions"][2] = cond("PodsStuck", "True", "ImagePullBackOff", "shard 3: pull failed");
        let s = summarize(&batch(st, json!({})), &[], 10, now());
        assert_eq!(s.notes, ["pods stuck: ImagePullBackOff: shard 3: pull failed"]);
        assert!(s.healthy, "stuck pods alone leave the verdict to Stalled and AtRisk");
        assert_eq!(s.stuck_pods.len(), 2);
        assert_eq!(s.stuck_pods[0].shard.as_deref(), Some("3"));
        assert_eq!(s.stuck_pods[1].shard, None);
        assert_eq!(s.stuck_pods[1].stage.as_deref(), Some("export"));
        assert_eq!(s.stuck_pods[1].reason, "Unschedulable");
    }

    #[test]
    fn the_latest_events_come_oldest_first() {
        let event = |reason: &str, t: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": reason, "namespace": "nba"},
                "involvedObject": {"kind": "PredictionBatch", "name": "nba-2026-01-02"},
                "reason": reason, "message": reason, "type": "Normal", "eventTime": t
            }))
            .unwrap()
        };
        let events = [
            event("C", "2026-01-02T12:00:03.000000Z"),
            event("A", "2026-01-02T12:00:01.000000Z"),
            event("B", "2026-01-02T12:00:02.000000Z"),
        ];
        let s = summarize(&batch(running(), json!({})), &events, 2, now());
        assert_eq!(s.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), ["B", "C"]);
    }
}
