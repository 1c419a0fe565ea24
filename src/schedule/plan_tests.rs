//! The schedule's pass without an API server: catch-up, concurrency policies, history limits,
//! restarts between the create and the status write, and a simulation of many days of passes
//! with kills at random points.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;

use super::plan::{DeleteReason, Observed, Outcome, OwnedBatch, Plan, plan};
use crate::api::{ActiveBatch, ConcurrencyPolicy, PredictionScheduleSpec, PredictionScheduleStatus};
use crate::labels::{SCHEDULE_LABEL, SCHEDULED_AT_ANNOTATION};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn spec(schedule: &str) -> PredictionScheduleSpec {
    serde_json::from_value(json!({
        "schedule": schedule,
        "timeZone": "America/New_York",
        "completeByAfter": "+5h30m",
        "batchTemplate": {
            "metadata": {"labels": {"team": "nba"}},
            "spec": {
                "loader": {"template": {"spec": {"containers": [{"name": "l", "image": "l"}]}}},
                "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
                "consolidation": {"template": {"spec": {"containers": [{"name": "c", "image": "c"}]}}},
                "export": {"template": {"spec": {"containers": [{"name": "e", "image": "e"}]}}}
            }
        }
    }))
    .unwrap()
}

struct World {
    spec: PredictionScheduleSpec,
    status: PredictionScheduleStatus,
    batches: Vec<OwnedBatch>,
    foreign: BTreeSet<String>,
    created: Timestamp,
}

impl World {
    fn new(schedule: &str) -> Self {
        World {
            spec: spec(schedule),
            status: Default::default(),
            batches: vec![],
            foreign: BTreeSet::new(),
            created: ts("2026-01-01T00:00:00Z"),
        }
    }

    fn pass(&self, now: &str) -> Plan {
        self.pass_at(ts(now))
    }

    fn pass_at(&self, now: Timestamp) -> Plan {
        plan(&Observed {
            name: "nba",
            namespace: "ns",
            uid: "schedule-uid",
            generation: Some(1),
            created: self.created,
            spec: &self.spec,
            status: &self.status,
            batches: self.batches.clone(),
            foreign: self.foreign.clone(),
            now,
        })
    }

    /// Carries a plan out: deletes, the create (a new UID), then the status write.
    fn apply(&mut self, p: &Plan) {
        self.act(p);
        self.status = p.status.clone();
        if let Some(run) = &p.create {
            let name = run.batch.metadata.name.clone().unwrap();
            let uid = self.batches.iter().find(|b| b.name == name).unwrap().uid.clone();
            self.status.active.push(ActiveBatch { name, uid });
            self.status.active.sort();
        }
    }

    /// Deletes and create only: the controller was killed before its status write.
    fn act(&mut self, p: &Plan) {
        let gone: BTreeSet<&str> = p.delete.iter().map(|d| d.uid.as_str()).collect();
        self.batches.retain(|b| !gone.contains(b.uid.as_str()));
        if let Some(run) = &p.create {
            let name = run.batch.metadata.name.clone().unwrap();
            if !self.batches.iter().any(|b| b.name == name) {
                self.batches.push(OwnedBatch {
                    uid: format!("uid-{name}"),
                    name,
                    scheduled_at: run.scheduled_at,
                    outcome: Outcome::Running,
                    deleting: false,
                });
            }
        }
    }

    fn finish_all(&mut self, outcome: Outcome) {
        for b in &mut self.batches {
            if b.outcome == Outcome::Running {
                b.outcome = outcome;
            }
        }
    }
}

fn created_name(p: &Plan) -> Option<String> {
    p.create.as_ref().map(|r| r.batch.metadata.name.clone().unwrap())
}

fn reasons(p: &Plan) -> Vec<&'static str> {
    p.events.iter().map(|(r, _)| r.as_str()).collect()
}

fn condition<'a>(p: &'a Plan, type_: &str) -> (&'a str, &'a str) {
    let c = p.status.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn nothing_is_due_before_the_first_run_and_the_pass_wakes_at_it() {
    let w = World::new("0 7 * * *");
    let p = w.pass("2026-01-01T11:00:00Z"); // 06:00 EST
    assert!(p.create.is_none() && p.delete.is_empty());
    assert_eq!(p.status.next_schedule_time, Some(Time(ts("2026-01-01T12:00:00Z"))));
    let wait = p.requeue.unwrap().as_millis();
    assert!((3_600_000..3_601_000).contains(&wait), "{wait} ms");
    assert_eq!(condition(&p, "Ready"), ("True", "Scheduled"));
    assert_eq!(condition(&p, "Stalled"), ("False", "Scheduled"));
}

#[test]
fn a_due_run_creates_its_batch_with_the_date_deadline_labels_and_owner() {
    let mut w = World::new("0 7 * * *");
    w.created = ts("2026-01-02T06:00:00Z");
    let p = w.pass("2026-01-02T12:00:01Z");
    let run = p.create.as_ref().unwrap();
    let b = &run.batch;
    assert_eq!(b.metadata.name.as_deref(), Some("nba-20260102-0700"));
    assert_eq!(b.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(b.spec.game_date, "2026-01-02");
    assert_eq!(b.spec.completion.complete_by.as_deref(), Some("2026-01-02T17:30:00Z"));
    let labels = b.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[SCHEDULE_LABEL], "nba");
    assert_eq!(labels["team"], "nba");
    assert_eq!(b.metadata.annotations.as_ref().unwrap()[SCHEDULED_AT_ANNOTATION], "2026-01-02T12:00:00Z");
    let owner = &b.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("PredictionSchedule", "schedule-uid", Some(true))
    );
    assert_eq!(p.status.last_schedule_time, Some(Time(ts("2026-01-02T12:00:00Z"))));
    assert_eq!(p.status.next_schedule_time, Some(Time(ts("2026-01-03T12:00:00Z"))));
    assert_eq!(run.due_count, 1);
}

#[test]
fn a_kill_between_the_create_and_the_status_write_creates_nothing_more() {
    let mut w = World::new("0 7 * * *");
    let first = w.pass("2026-01-02T12:00:01Z");
    w.act(&first); // killed before the status write
    let again = w.pass("2026-01-02T12:00:05Z");
    assert!(again.create.is_none(), "the batch exists: record it, create nothing");
    assert_eq!(again.status.last_schedule_time, Some(Time(ts("2026-01-02T12:00:00Z"))));
    assert_eq!(
        again.status.active,
        vec![ActiveBatch { name: "nba-20260102-0700".into(), uid: "uid-nba-20260102-0700".into() }]
    );
    w.apply(&again);
    assert!(w.pass("2026-01-02T12:30:00Z").create.is_none());
    assert_eq!(w.batches.len(), 1);
}

#[test]
fn after_downtime_only_the_latest_missed_run_starts_and_only_inside_the_deadline() {
    // (downtime in missed runs, starting deadline) -> (created batch, missed run recorded)
    type Case = (u32, Option<i64>, Option<&'static str>, Option<&'static str>);
    let cases: [Case; 6] = [
        (0, None, None, None),
        (1, None, Some("nba-20260102-0700"), None),
        (3, None, Some("nba-20260104-0700"), None),
        (1, Some(600), Some("nba-20260102-0700"), None),
        (3, Some(600), Some("nba-20260104-0700"), None),
        (3, Some(60), None, Some("2026-01-04T12:00:00Z")),
    ];
    for (missed, deadline, want, missed_at) in cases {
        let mut w = World::new("0 7 * * *");
        w.spec.starting_deadline_seconds = deadline;
        w.status.last_schedule_time = Some(Time(ts("2026-01-01T12:00:00Z")));
        // Back `missed` days after the last run, five minutes past 7 AM.
        let now =
            ts("2026-01-01T12:05:00Z").checked_add(jiff::SignedDuration::from_hours(24 * i64::from(missed))).unwrap();
        let p = w.pass_at(now);
        assert_eq!(created_name(&p).as_deref(), want, "missed {missed}, deadline {deadline:?}");
        assert_eq!(p.status.last_missed_time.as_ref().map(|t| t.0.to_string()).as_deref(), missed_at);
        if let Some(run) = &p.create {
            assert_eq!(run.due_count, missed);
        }
        if missed_at.is_some() {
            assert_eq!(reasons(&p), ["RunMissed"]);
            // Recorded: the next pass does not report it again.
            w.apply(&p);
            assert!(w.pass_at(now).events.is_empty());
        }
    }
}

#[test]
fn forbid_holds_a_run_while_the_previous_batch_runs_and_starts_it_inside_the_deadline() {
    let mut w = World::new("*/5 * * * *");
    w.spec.starting_deadline_seconds = Some(120);
    let p = w.pass("2026-01-02T12:00:01Z");
    w.apply(&p);
    // 12:05: the 12:00 batch still runs.
    let held = w.pass("2026-01-02T12:05:01Z");
    assert!(held.create.is_none());
    assert_eq!(held.status.last_schedule_time, Some(Time(ts("2026-01-02T12:00:00Z"))), "not recorded");
    let wait = held.requeue.unwrap().as_millis();
    assert!((119_000..121_200).contains(&wait), "wakes at the deadline: {wait} ms");
    assert!(condition(&held, "Ready").0 == "True");
    // It finishes at 12:06: the held run starts.
    w.apply(&held);
    w.finish_all(Outcome::Succeeded(Some(ts("2026-01-02T12:06:00Z"))));
    let late = w.pass("2026-01-02T12:06:01Z");
    assert_eq!(created_name(&late).as_deref(), Some("nba-20260102-0705"));
    assert_eq!(late.status.last_successful_time, Some(Time(ts("2026-01-02T12:06:00Z"))));
    // Held past the deadline: missed, recorded once.
    let mut w2 = World::new("*/5 * * * *");
    w2.spec.starting_deadline_seconds = Some(120);
    let p = w2.pass("2026-01-02T12:00:01Z");
    w2.apply(&p);
    let missed = w2.pass("2026-01-02T12:07:02Z");
    assert!(missed.create.is_none());
    assert_eq!(reasons(&missed), ["RunMissed"]);
    assert!(missed.events[0].1.contains("Forbid"), "{}", missed.events[0].1);
    assert_eq!(missed.status.last_missed_time, Some(Time(ts("2026-01-02T12:05:00Z"))));
}

#[test]
fn replace_deletes_the_running_batch_and_allow_keeps_it() {
    for (policy, deleted) in [(ConcurrencyPolicy::Replace, true), (ConcurrencyPolicy::Allow, false)] {
        let mut w = World::new("*/5 * * * *");
        w.spec.concurrency_policy = policy;
        let p = w.pass("2026-01-02T12:00:01Z");
        w.apply(&p);
        let next = w.pass("2026-01-02T12:05:01Z");
        assert_eq!(created_name(&next).as_deref(), Some("nba-20260102-0705"));
        let gone: Vec<_> = next.delete.iter().map(|d| (d.name.as_str(), d.reason)).collect();
        if deleted {
            assert_eq!(gone, [("nba-20260102-0700", DeleteReason::Replaced)]);
            assert_eq!(reasons(&next), ["BatchReplaced"]);
        } else {
            assert!(gone.is_empty());
        }
        w.apply(&next);
        assert_eq!(w.status.active.len(), if deleted { 1 } else { 2 });
    }
}

#[test]
fn history_limits_delete_the_oldest_finished_batches_only() {
    let mut w = World::new("0 7 * * *");
    w.spec.successful_batches_history_limit = 2;
    w.spec.failed_batches_history_limit = 1;
    let day = |d: u32| ts(&format!("2026-01-{d:02}T12:00:00Z"));
    let batch = |d: u32, outcome| OwnedBatch {
        name: format!("nba-202601{d:02}-0700"),
        uid: format!("u{d}"),
        scheduled_at: day(d),
        outcome,
        deleting: false,
    };
    w.batches = vec![
        batch(1, Outcome::Succeeded(None)),
        batch(2, Outcome::Failed),
        batch(3, Outcome::Succeeded(None)),
        batch(4, Outcome::Failed),
        batch(5, Outcome::Succeeded(None)),
        batch(6, Outcome::Running),
    ];
    w.batches.push(OwnedBatch { deleting: true, ..batch(7, Outcome::Succeeded(None)) });
    w.status.last_schedule_time = Some(Time(day(7)));
    let p = w.pass("2026-01-07T13:00:00Z");
    let gone: Vec<&str> = p.delete.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(gone, ["nba-20260101-0700", "nba-20260102-0700"]);
    assert!(p.delete.iter().all(|d| d.reason == DeleteReason::History));
    assert_eq!(reasons(&p), ["BatchDeleted", "BatchDeleted"]);
    assert_eq!(p.status.active, vec![ActiveBatch { name: "nba-20260106-0700".into(), uid: "u6".into() }]);
}

#[test]
fn a_bad_schedule_or_template_stalls_with_one_event_and_no_run() {
    let mut w = World::new("0 7 * *");
    let p = w.pass("2026-01-02T12:00:01Z");
    assert!(p.create.is_none() && p.requeue.is_none());
    assert_eq!(condition(&p, "Stalled"), ("True", "InvalidSchedule"));
    assert_eq!(condition(&p, "Ready"), ("False", "InvalidSchedule"));
    assert_eq!(reasons(&p), ["InvalidSchedule"]);
    w.apply(&p);
    assert!(w.pass("2026-01-02T12:00:02Z").events.is_empty(), "said once");

    let mut w = World::new("0 7 * * *");
    w.spec.batch_template.spec.remove("worker");
    let p = w.pass("2026-01-02T11:00:00Z");
    assert_eq!(condition(&p, "Stalled"), ("True", "InvalidTemplate"));
    assert!(p.status.conditions[0].message.contains("worker"), "{}", p.status.conditions[0].message);

    // Valid cron that never matches (30 February): stalled, not a Healthy schedule that never runs.
    let p = World::new("0 0 30 2 *").pass("2026-01-02T11:00:00Z");
    assert_eq!(condition(&p, "Stalled"), ("True", "InvalidSchedule"));
    assert!(p.status.conditions[0].message.contains("never fires"), "{}", p.status.conditions[0].message);

    let mut w = World::new("0 7 * * *");
    w.spec.complete_by_after = Some("soon".into());
    assert_eq!(condition(&w.pass("2026-01-02T11:00:00Z"), "Stalled"), ("True", "InvalidTemplate"));
}

#[test]
fn suspend_holds_runs_and_shows_no_next_time() {
    let mut w = World::new("0 7 * * *");
    w.spec.suspend = true;
    let p = w.pass("2026-01-02T12:00:01Z");
    assert!(p.create.is_none() && p.requeue.is_none() && p.status.next_schedule_time.is_none());
    assert_eq!(condition(&p, "Ready"), ("True", "Suspended"));
}

#[test]
fn a_taken_name_skips_the_run_and_stalls_until_a_later_run_is_created() {
    let mut w = World::new("0 7 * * *");
    w.foreign.insert("nba-20260102-0700".into());
    let p = w.pass("2026-01-02T12:00:01Z");
    assert!(p.create.is_none());
    assert_eq!(condition(&p, "Stalled"), ("True", "BatchNameTaken"));
    assert_eq!(reasons(&p), ["BatchNameTaken"]);
    w.apply(&p);
    let later = w.pass("2026-01-02T13:00:00Z");
    assert_eq!(condition(&later, "Stalled"), ("True", "BatchNameTaken"), "kept until the next run");
    assert!(later.events.is_empty());
    w.apply(&later);
    let next_day = w.pass("2026-01-03T12:00:01Z");
    assert_eq!(created_name(&next_day).as_deref(), Some("nba-20260103-0700"));
    assert_eq!(condition(&next_day, "Stalled"), ("False", "Scheduled"));
}

#[test]
fn an_idle_pass_plans_the_status_it_reads() {
    let mut w = World::new("0 7 * * *");
    let p = w.pass("2026-01-02T12:00:01Z");
    w.apply(&p);
    let idle = w.pass("2026-01-02T15:00:00Z");
    assert_eq!(idle.status, w.status, "no write when nothing changed");
    assert!(idle.events.is_empty() && idle.create.is_none());
    assert_eq!(w.pass("2026-01-02T15:00:00Z"), idle, "deterministic");
}

#[test]
fn the_game_date_follows_the_zone_and_the_offset() {
    let mut w = World::new("30 23 * * *");
    w.spec.game_date_offset_days = 1;
    // 23:30 EST on 1 January is 04:30 UTC on 2 January: the game date is New York's next day.
    let p = w.pass("2026-01-02T04:30:01Z");
    let b = &p.create.unwrap().batch;
    assert_eq!(b.metadata.name.as_deref(), Some("nba-20260101-2330"));
    assert_eq!(b.spec.game_date, "2026-01-02");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Passes at random moments over three weeks (gaps from seconds to days, some kills between
    /// the create and the status write, batches finishing at random): never two batches for one
    /// run, never a run older than one already created, and every created run was due at its pass.
    #[test]
    fn a_run_is_created_at_most_once_whatever_the_passes_and_kills(
        steps in prop::collection::vec((0u64..200_000, any::<bool>(), any::<bool>()), 1..60),
        deadline in prop::option::of(0i64..7200),
        policy in prop::sample::select(vec![ConcurrencyPolicy::Allow, ConcurrencyPolicy::Forbid, ConcurrencyPolicy::Replace]),
    ) {
        let mut w = World::new("0 7,19 * * *");
        w.spec.starting_deadline_seconds = deadline;
        w.spec.concurrency_policy = policy;
        w.spec.successful_batches_history_limit = 100;
        w.spec.failed_batches_history_limit = 100;
        let mut now = ts("2026-01-01T00:00:00Z");
        let mut created: Vec<Timestamp> = Vec::new();
        for (gap, killed, finish) in steps {
            now = now.checked_add(jiff::SignedDuration::from_secs(gap as i64)).unwrap();
            if finish {
                w.finish_all(Outcome::Succeeded(Some(now)));
            }
            let p = w.pass_at(now);
            if let Some(run) = &p.create {
                prop_assert!(run.scheduled_at <= now);
                if let Some(d) = deadline {
                    prop_assert!(now.duration_since(run.scheduled_at).as_secs() <= d);
                }
                prop_assert!(created.last().is_none_or(|last| *last < run.scheduled_at), "{created:?} then {}", run.scheduled_at);
                created.push(run.scheduled_at);
            }
            if killed { w.act(&p) } else { w.apply(&p) }
            let names: BTreeSet<&str> = w.batches.iter().map(|b| b.name.as_str()).collect();
            prop_assert_eq!(names.len(), w.batches.len());
        }
    }
}
