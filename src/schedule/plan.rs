//! A schedule's pass as a pure function: from the schedule, the batches it owns and the time, to
//! the batch to create (if a run is due), the batches to delete (Replace, history limits), the
//! status and the events. No I/O and no clock: `now` is an input.
//!
//! Exactly once comes from the name: a run's batch is `<schedule>-<yyyymmdd>-<hhmm>`, created
//! before `lastScheduleTime` records it. A pass that finds the run's batch already there (a kill
//! between the create and the status write) records it and creates nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde_json::Value;

use super::timing::{self, Timing};
use crate::api::{
    ActiveBatch, CONDITION_READY, CONDITION_STALLED, ConcurrencyPolicy, PredictionBatch, PredictionBatchSpec,
    PredictionSchedule, PredictionScheduleSpec, PredictionScheduleStatus, ScheduleEventReason, ScheduleReason,
};
use crate::labels::{SCHEDULE_LABEL, SCHEDULED_AT_ANNOTATION};

/// Longest wait between two passes of a schedule with nothing due: a clock step or a missed
/// wake-up costs at most this.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);

/// A batch the schedule owns, as a pass needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedBatch {
    pub name: String,
    pub uid: String,
    /// Its run's scheduled time (annotation), else its creation time.
    pub scheduled_at: Timestamp,
    pub outcome: Outcome,
    /// Being deleted: neither active nor history.
    pub deleting: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    /// Succeeded, at its Ready condition's transition time when known.
    Succeeded(Option<Timestamp>),
    Failed,
}

/// What one pass sees.
pub struct Observed<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub generation: Option<i64>,
    pub created: Timestamp,
    pub spec: &'a PredictionScheduleSpec,
    pub status: &'a PredictionScheduleStatus,
    pub batches: Vec<OwnedBatch>,
    /// Names of batches in the namespace that this schedule does not own, among those its runs
    /// could be named (`<schedule>-...`).
    pub foreign: BTreeSet<String>,
    pub now: Timestamp,
}

/// Why a batch is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    Replaced,
    History,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub name: String,
    pub uid: String,
    pub reason: DeleteReason,
}

/// A run to start: its batch (name, labels, owner, spec all set).
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub scheduled_at: Timestamp,
    pub batch: PredictionBatch,
    /// Runs that were due at once (more than 1: some were missed, only this latest starts).
    pub due_count: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write once `create` (if any) exists; its `active` lacks the created batch,
    /// whose UID only the create returns.
    pub status: PredictionScheduleStatus,
    pub create: Option<Run>,
    pub delete: Vec<Delete>,
    /// Events other than the created batch's (`BatchCreated` and `RunsMissed` are published
    /// only when the create really created it).
    pub events: Vec<(ScheduleEventReason, String)>,
    /// When to look again (the next run, or the end of a held run's starting deadline).
    pub requeue: Option<Duration>,
}

/// The batch of the run scheduled at `t`, or why the template does not make one.
pub fn build_batch(o: &Observed, timing: &Timing, t: Timestamp) -> Result<PredictionBatch, String> {
    let mut spec = Value::Object(o.spec.batch_template.spec.clone());
    let date = timing::game_date(timing, t, o.spec.game_date_offset_days)
        .ok_or_else(|| "gameDateOffsetDays moves the date out of range".to_string())?;
    spec["gameDate"] = Value::String(date);
    if let Some(after) = &o.spec.complete_by_after {
        let at = timing::complete_by(t, after).map_err(|e| e.to_string())?;
        if !spec.get("completion").is_some_and(Value::is_object) {
            spec["completion"] = Value::Object(Default::default());
        }
        spec["completion"]["completeBy"] = Value::String(at);
    }
    let spec: PredictionBatchSpec =
        serde_json::from_value(spec).map_err(|e| format!("batchTemplate.spec is not a batch spec: {e}"))?;
    let meta = o.spec.batch_template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(SCHEDULE_LABEL.into(), o.name.into());
    let mut annotations = meta.annotations;
    annotations.insert(SCHEDULED_AT_ANNOTATION.into(), t.to_string());
    let owner = OwnerReference {
        api_version: PredictionSchedule::api_version(&()).into(),
        kind: PredictionSchedule::kind(&()).into(),
        name: o.name.into(),
        uid: o.uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut batch = PredictionBatch::new(&timing::batch_name(o.name, timing, t), spec);
    batch.metadata = ObjectMeta {
        name: batch.metadata.name.take(),
        namespace: Some(o.namespace.into()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };
    Ok(batch)
}

/// The pass.
pub fn plan(o: &Observed) -> Plan {
    let prev = o.status;
    let mut status = PredictionScheduleStatus {
        observed_generation: o.generation,
        last_schedule_time: prev.last_schedule_time.clone(),
        last_successful_time: last_successful(o),
        last_missed_time: prev.last_missed_time.clone(),
        next_schedule_time: None,
        active: active(o),
        conditions: Vec::new(),
    };
    let mut events = Vec::new();
    let mut delete = history(o);
    for d in &delete {
        events.push((ScheduleEventReason::BatchDeleted, format!("Deleted {} (beyond the history limit)", d.name)));
    }

    let timing = match Timing::parse(&o.spec.schedule, &o.spec.time_zone) {
        Ok(t) => t,
        Err(e) => return stalled(o, status, delete, events, ScheduleReason::InvalidSchedule, e.to_string()),
    };
    let since = [prev.last_schedule_time.as_ref(), prev.last_missed_time.as_ref()]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .fold(o.created, Timestamp::max);
    let due = timing::due(&timing, since, o.now, o.spec.starting_deadline_seconds);
    if due.next.is_none() && due.run.is_none() {
        // E.g. `0 0 30 2 *`: valid cron, but no time ever matches; Healthy would hide that.
        let message = format!("schedule {:?} never fires again", o.spec.schedule);
        return stalled(o, status, delete, events, ScheduleReason::InvalidSchedule, message);
    }
    // The template is checked on every pass (with the next run's date), so a bad one shows before
    // 7 AM rather than at it.
    let probe = due.run.or(due.next).unwrap_or(o.now);
    if let Err(e) = build_batch(o, &timing, probe) {
        return stalled(o, status, delete, events, ScheduleReason::InvalidTemplate, e);
    }
    if o.spec.suspend {
        status.conditions = conditions(o, ScheduleReason::Suspended, "spec.suspend holds new runs".into());
        return Plan { status, create: None, delete, events, requeue: None };
    }
    status.next_schedule_time = due.next.map(Time);
    let mut requeue = due.next.map(|n| until(o.now, n));
    let mut create = None;
    let mut reason = (ScheduleReason::Scheduled, ready_message(o));

    if let Some(t) = due.too_late {
        status.last_missed_time = Some(Time(t));
        let why = if o.spec.concurrency_policy == ConcurrencyPolicy::Forbid && !status.active.is_empty() {
            format!("an earlier batch ({}) was still running (concurrencyPolicy Forbid)", names(&status.active))
        } else {
            "it came due while the controller was down or the schedule was suspended".to_string()
        };
        events.push((
            ScheduleEventReason::RunMissed,
            format!(
                "Skipped the run of {}: not started within startingDeadlineSeconds ({}s); {why}",
                t,
                o.spec.starting_deadline_seconds.unwrap_or_default()
            ),
        ));
    }
    if let Some(t) = due.run {
        let batch = build_batch(o, &timing, t).expect("checked above with the same inputs");
        let name = batch.metadata.name.clone().unwrap_or_default();
        let others: Vec<&ActiveBatch> = status.active.iter().filter(|a| a.name != name).collect();
        if o.batches.iter().any(|b| b.name == name) {
            // Created by a pass that was stopped before it could record it.
            status.last_schedule_time = Some(Time(t));
        } else if o.foreign.contains(&name) {
            status.last_missed_time = Some(Time(t));
            let message =
                format!("a PredictionBatch named {name} exists and is not this schedule's: the run of {t} was skipped");
            events.push((ScheduleEventReason::Stalled(ScheduleReason::BatchNameTaken), message.clone()));
            reason = (ScheduleReason::BatchNameTaken, message);
        } else if o.spec.concurrency_policy == ConcurrencyPolicy::Forbid && !others.is_empty() {
            // Not recorded: it starts once the earlier batch ends, if still inside the deadline.
            let list = others.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ");
            reason.1 = format!("the run of {t} waits for {list} to finish (concurrencyPolicy Forbid)");
            if let Some(deadline) = o.spec.starting_deadline_seconds {
                let last_chance = t.checked_add(jiff::SignedDuration::from_secs(deadline + 1)).unwrap_or(t);
                requeue = Some(until(o.now, last_chance).min(requeue.unwrap_or(MAX_REQUEUE)));
            }
        } else {
            if o.spec.concurrency_policy == ConcurrencyPolicy::Replace {
                for a in others {
                    events.push((
                        ScheduleEventReason::BatchReplaced,
                        format!("Deleted {} for the run of {t} (concurrencyPolicy Replace)", a.name),
                    ));
                    delete.push(Delete { name: a.name.clone(), uid: a.uid.clone(), reason: DeleteReason::Replaced });
                }
                let gone: BTreeSet<&str> = delete.iter().map(|d| d.uid.as_str()).collect();
                status.active.retain(|a| !gone.contains(a.uid.as_str()));
            }
            status.last_schedule_time = Some(Time(t));
            create = Some(Run { scheduled_at: t, batch, due_count: due.due_count });
        }
    }
    // A skipped run whose name was taken keeps the schedule Stalled until a later run is created.
    if reason.0 == ScheduleReason::Scheduled
        && create.is_none()
        && let Some(c) = prev.conditions.iter().find(|c| c.type_ == CONDITION_STALLED && c.status == "True")
        && c.reason == ScheduleReason::BatchNameTaken.as_str()
        && status.last_missed_time > status.last_schedule_time
    {
        reason = (ScheduleReason::BatchNameTaken, c.message.clone());
    }
    status.conditions = conditions(o, reason.0, reason.1);
    Plan { status, create, delete, events, requeue: requeue.map(|r| r.min(MAX_REQUEUE)) }
}

fn stalled(
    o: &Observed,
    mut status: PredictionScheduleStatus,
    delete: Vec<Delete>,
    mut events: Vec<(ScheduleEventReason, String)>,
    reason: ScheduleReason,
    message: String,
) -> Plan {
    let was = o
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_STALLED && c.reason == reason.as_str() && c.status == "True");
    if !was {
        events.push((ScheduleEventReason::Stalled(reason), message.clone()));
    }
    status.conditions = conditions(o, reason, message);
    // Nothing to do until the spec changes (which triggers a pass).
    Plan { status, create: None, delete, events, requeue: None }
}

fn ready_message(o: &Observed) -> String {
    format!("runs {:?} in {}", o.spec.schedule, o.spec.time_zone)
}

fn names(active: &[ActiveBatch]) -> String {
    active.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    // A little after `t`, so the pass sees the run as due.
    let d = t.duration_since(now);
    Duration::from_millis(d.as_millis().clamp(0, MAX_REQUEUE.as_millis() as i128) as u64 + 100)
}

fn active(o: &Observed) -> Vec<ActiveBatch> {
    let mut active: Vec<ActiveBatch> = o
        .batches
        .iter()
        .filter(|b| b.outcome == Outcome::Running && !b.deleting)
        .map(|b| ActiveBatch { name: b.name.clone(), uid: b.uid.clone() })
        .collect();
    active.sort();
    active
}

/// Latest success ever seen: kept when the batch that set it is pruned.
fn last_successful(o: &Observed) -> Option<Time> {
    let seen = o.batches.iter().filter_map(|b| match b.outcome {
        Outcome::Succeeded(at) => at,
        _ => None,
    });
    seen.chain(o.status.last_successful_time.as_ref().map(|t| t.0)).max().map(Time)
}

/// Finished batches beyond the history limits, oldest first (by scheduled time, then name).
fn history(o: &Observed) -> Vec<Delete> {
    let mut out = Vec::new();
    for (succeeded, limit) in
        [(true, o.spec.successful_batches_history_limit), (false, o.spec.failed_batches_history_limit)]
    {
        let mut finished: Vec<&OwnedBatch> = o
            .batches
            .iter()
            .filter(|b| !b.deleting)
            .filter(|b| match b.outcome {
                Outcome::Succeeded(_) => succeeded,
                Outcome::Failed => !succeeded,
                Outcome::Running => false,
            })
            .collect();
        finished.sort_by(|a, b| (b.scheduled_at, &b.name).cmp(&(a.scheduled_at, &a.name)));
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        for b in finished.into_iter().skip(keep).rev() {
            out.push(Delete { name: b.name.clone(), uid: b.uid.clone(), reason: DeleteReason::History });
        }
    }
    out
}

/// `Ready` and `Stalled`; `lastTransitionTime` moves only when a condition's status does.
fn conditions(o: &Observed, reason: ScheduleReason, message: String) -> Vec<Condition> {
    let stalls = reason.stalls();
    let wanted = [
        (CONDITION_READY, if stalls { "False" } else { "True" }, reason.as_str(), message.clone()),
        (
            CONDITION_STALLED,
            if stalls { "True" } else { "False" },
            if stalls { reason.as_str() } else { "Scheduled" },
            if stalls { message } else { String::new() },
        ),
    ];
    wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let last_transition_time = match o.status.conditions.iter().find(|c| c.type_ == type_) {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Time(o.now),
            };
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message,
                observed_generation: o.generation,
                last_transition_time,
            }
        })
        .collect()
}
