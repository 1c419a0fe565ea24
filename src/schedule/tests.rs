use proptest::prelude::*;

use super::*;
use jiff::Timestamp;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn timing(cron: &str, tz: &str) -> Timing {
    Timing::parse(cron, tz).unwrap()
}

#[test]
fn seven_am_eastern_is_noon_utc_in_winter_and_eleven_in_summer() {
    let t = timing("0 7 * * *", "America/New_York");
    assert_eq!(t.next_after(ts("2026-01-01T12:00:00Z")), Some(ts("2026-01-02T12:00:00Z")));
    assert_eq!(t.next_after(ts("2026-07-01T12:00:00Z")), Some(ts("2026-07-02T11:00:00Z")));
}

#[test]
fn a_run_in_the_spring_forward_gap_runs_right_after_it() {
    // 2026-03-08: New York skips 02:00-03:00 EST -> EDT.
    let t = timing("30 2 * * *", "America/New_York");
    let first = t.next_after(ts("2026-03-07T12:00:00Z")).unwrap();
    assert_eq!(first, ts("2026-03-08T07:00:00Z"), "03:00 EDT, the first instant after the gap");
    assert_eq!(t.next_after(first), Some(ts("2026-03-09T06:30:00Z")), "then 02:30 EDT again");
}

#[test]
fn a_run_in_the_fall_back_night_runs_once() {
    // 2026-11-01: New York repeats 01:00-02:00 (EDT, then EST).
    let t = timing("30 1 * * *", "America/New_York");
    let first = t.next_after(ts("2026-10-31T12:00:00Z")).unwrap();
    assert_eq!(first, ts("2026-11-01T05:30:00Z"), "01:30 EDT, the first occurrence");
    assert_eq!(t.next_after(first), Some(ts("2026-11-02T06:30:00Z")), "not 01:30 EST the same night");
    // Both instants would name the same batch anyway.
    assert_eq!(batch_name("nba", &t, first), batch_name("nba", &t, ts("2026-11-01T06:30:00Z")));
}

#[test]
fn zones_with_half_hour_offsets_and_a_half_hour_dst_shift() {
    // India: UTC+05:30, no DST.
    let t = timing("0 7 * * *", "Asia/Kolkata");
    assert_eq!(t.next_after(ts("2026-01-01T12:00:00Z")), Some(ts("2026-01-02T01:30:00Z")));
    // Lord Howe Island: +10:30, and +11:00 in summer (a 30-minute DST shift).
    // 2026-10-04 02:00 -> 02:30: 02:15 does not exist and runs at 02:30 (+11:00).
    let t = timing("15 2 * * *", "Australia/Lord_Howe");
    assert_eq!(t.next_after(ts("2026-10-03T00:00:00Z")), Some(ts("2026-10-03T15:30:00Z")));
    // 2026-04-05 02:00 -> 01:30: 01:45 happens twice and runs once, at +11:00.
    let t = timing("45 1 * * *", "Australia/Lord_Howe");
    let first = t.next_after(ts("2026-04-04T00:00:00Z")).unwrap();
    assert_eq!(first, ts("2026-04-04T14:45:00Z"));
    assert_eq!(t.next_after(first), Some(ts("2026-04-05T15:15:00Z")), "the next day at +10:30");
}

#[test]
fn bad_expressions_and_zones_are_refused() {
    for bad in ["", "* * * *", "0 0 7 * * *", "61 * * * *", "0 7 * * MON-XYZ"] {
        assert!(matches!(Timing::parse(bad, "UTC"), Err(TimingError::Cron(..))), "{bad:?}");
    }
    for zone in ["Eastern", "America/Nowhere", ""] {
        assert_eq!(Timing::parse("0 7 * * *", zone).unwrap_err(), TimingError::TimeZone(zone.into()));
    }
    assert!(Timing::parse("@daily", "UTC").is_ok());
}

#[test]
fn catch_up_starts_at_most_the_latest_missed_run() {
    let t = timing("* * * * *", "UTC");
    let since = ts("2026-01-02T12:00:00Z");
    // (now, deadline) -> (run, too late, due count)
    type Row = (&'static str, Option<i64>, Option<&'static str>, Option<&'static str>, u32);
    let table: [Row; 7] = [
        ("2026-01-02T12:00:30Z", None, None, None, 0),
        ("2026-01-02T12:01:10Z", None, Some("2026-01-02T12:01:00Z"), None, 1),
        ("2026-01-02T12:03:10Z", None, Some("2026-01-02T12:03:00Z"), None, 3),
        ("2026-01-02T12:03:10Z", Some(30), Some("2026-01-02T12:03:00Z"), None, 3),
        ("2026-01-02T12:03:50Z", Some(30), None, Some("2026-01-02T12:03:00Z"), 3),
        ("2026-01-02T12:01:50Z", Some(30), None, Some("2026-01-02T12:01:00Z"), 1),
        ("2026-01-03T12:00:10Z", None, Some("2026-01-03T12:00:00Z"), None, MAX_MISSED),
    ];
    for (now, deadline, run, late, count) in table {
        let d = due(&t, since, ts(now), deadline);
        assert_eq!(
            (d.run, d.too_late, d.due_count),
            (run.map(ts), late.map(ts), count),
            "now {now}, deadline {deadline:?}"
        );
        assert!(d.next.is_some_and(|n| n > ts(now)));
    }
}

#[test]
fn names_dates_and_deadlines_are_deterministic() {
    let t = timing("0 7 * * *", "America/New_York");
    let run = ts("2026-01-02T12:00:00Z");
    assert_eq!(batch_name("nba-daily", &t, run), "nba-daily-20260102-0700");
    assert_eq!(game_date(&t, run, 0).as_deref(), Some("2026-01-02"));
    assert_eq!(game_date(&t, run, 1).as_deref(), Some("2026-01-03"));
    // A 23:30 UTC run is still the 2nd in New York.
    let late = timing("30 18 * * *", "America/New_York");
    assert_eq!(game_date(&late, ts("2026-01-02T23:30:00Z"), 0).as_deref(), Some("2026-01-02"));
    assert_eq!(complete_by(run, "+5h30m").unwrap(), "2026-01-02T17:30:00Z");
    assert_eq!(complete_by(run, "90m").unwrap(), "2026-01-02T13:30:00Z");
    assert!(complete_by(run, "soon").is_err());
}

proptest! {
    #[test]
    fn the_run_is_a_scheduled_time_in_the_window(
        minute in 0u32..60, hour in 0u32..24, since in 1_700_000_000i64..1_900_000_000, gap in 0i64..400_000,
        deadline in proptest::option::of(0i64..100_000),
        zone in prop_oneof![Just("UTC"), Just("America/New_York"), Just("Asia/Kolkata"), Just("Australia/Lord_Howe")],
    ) {
        let t = timing(&format!("{minute} {hour} * * *"), zone);
        let since = Timestamp::from_second(since).unwrap();
        let now = Timestamp::from_second(since.as_second() + gap).unwrap();
        let d = due(&t, since, now, deadline);
        if let Some(run) = d.run {
            prop_assert!(run > since && run <= now);
            prop_assert_eq!(t.next_after(Timestamp::from_second(run.as_second() - 1).unwrap()), Some(run));
            prop_assert!(t.next_after(run).is_none_or(|n| n > now), "a later run was due");
            prop_assert!(deadline.is_none_or(|dl| now.as_second() - run.as_second() <= dl));
        }
        prop_assert!(d.run.is_none() || d.too_late.is_none());
        prop_assert!(d.next.is_some_and(|n| n > now));
        prop_assert_eq!(due(&t, since, now, deadline), d, "deterministic");
    }
}
