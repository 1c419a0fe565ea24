//! `spec.completion.completeBy` as the planner reads it.
//!
//! The CRD admits any RFC 3339 time that matches [`crate::api::crd::COMPLETE_BY_PATTERN`] and that
//! the apiserver's `date-time` format accepts: years 0000 to 9999 with any UTC offset. A
//! `jiff::Timestamp` only spans about -9999-01-02 to 9999-12-30, and refuses offsets beyond
//! ±25:59, so `9999-12-31T23:59:59Z` or `…-23:59` would not parse, and a batch with such a
//! (meaning: never) deadline would stall. So the planner does the arithmetic itself and clamps to
//! the timestamps it can represent: a deadline past the end of `Timestamp` is the end of
//! `Timestamp`, which no clock reaches.

use k8s_openapi::jiff::civil::Date;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Why a `completeBy` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 time (YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)): {0:?}")]
pub struct BadDeadline(pub String);

/// Parses a `completeBy` value: `YYYY-MM-DDTHH:MM:SS`, up to nine fraction digits, then `Z` or
/// an offset `±HH:MM`. Every value the CRD admits parses; times beyond what a [`Timestamp`] holds
/// are clamped to its range. A leap second (`:60`) is read as the last instant of that minute.
pub fn parse_complete_by(s: &str) -> Result<Timestamp, BadDeadline> {
    let bad = || BadDeadline(s.chars().take(80).collect());
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":")) {
        return Err(bad());
    }
    let (year, month, day) =
        (digits(0, 4).ok_or_else(bad)?, digits(5, 2).ok_or_else(bad)?, digits(8, 2).ok_or_else(bad)?);
    let (hour, minute, second) =
        (digits(11, 2).ok_or_else(bad)?, digits(14, 2).ok_or_else(bad)?, digits(17, 2).ok_or_else(bad)?);
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if at(i, b".") {
        let start = i + 1;
        let len = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&len) {
            return Err(bad());
        }
        nanos = digits(start, len).ok_or_else(bad)? * 10i64.pow(9 - len as u32);
        i = start + len;
    }
    let offset_secs = match b.get(i..) {
        Some(b"Z" | b"z") => 0,
        Some([sign @ (b'+' | b'-'), _, _, b':', _, _]) => {
            let (h, m) = (digits(i + 1, 2).ok_or_else(bad)?, digits(i + 4, 2).ok_or_else(bad)?);
            let secs = h * 3600 + m * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return Err(bad()),
    };
    let date = Date::new(year as i16, month as i8, day as i8).map_err(|_| bad())?;
    let days = i64::from(date.since(Date::constant(1970, 1, 1)).map_err(|_| bad())?.get_days());
    // A leap second is not a distinct instant here: the last nanosecond of the minute stands for it.
    let (second, nanos) = if second == 60 { (59, 999_999_999) } else { (second, nanos) };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let wanted = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let (min, max) = (Timestamp::MIN.as_nanosecond(), Timestamp::MAX.as_nanosecond());
    let clamped = wanted.clamp(min, max);
    Timestamp::from_nanosecond(clamped).map_err(|_| bad())
}

/// `t + secs`, saturating at the ends of [`Timestamp`].
pub fn add_secs(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap_or(if secs >= 0 { Timestamp::MAX } else { Timestamp::MIN })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_times_read_as_jiff_reads_them() {
        for s in [
            "2026-01-02T19:30:00Z",
            "2026-01-02t19:30:00z",
            "2026-01-02T19:30:00.5+01:00",
            "2026-01-02T19:30:00.123456789-05:00",
            "1970-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_complete_by(s), Ok(s.parse::<Timestamp>().unwrap()), "{s}");
        }
    }

    #[test]
    fn the_far_ends_of_the_admitted_range_clamp_instead_of_failing() {
        // jiff refuses each of these; the CRD (and the apiserver) admit them.
        for s in ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999999-23:59", "9999-12-30T23:00:00Z"] {
            assert!(s.parse::<Timestamp>().is_err(), "{s} parses in jiff now: simplify");
            assert_eq!(parse_complete_by(s), Ok(Timestamp::MAX), "{s}");
        }
        assert_eq!(parse_complete_by("0000-01-01T00:00:00+23:59").map(|t| t.as_second()), Ok(-62_167_305_540));
        assert_eq!(parse_complete_by("2026-01-02T19:30:00+99:59").unwrap().to_string(), "2025-12-29T15:31:00Z");
        assert_eq!(parse_complete_by("2016-12-31T23:59:60Z").unwrap().to_string(), "2016-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn what_the_apiserver_refuses_is_refused() {
        for s in ["2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-02T24:00:00Z", "2026-01-02T19:30:00", "x"] {
            assert!(parse_complete_by(s).is_err(), "{s}");
        }
    }

    /// One value of the CRD's completeBy pattern with a real calendar date and time of day (what
    /// the apiserver's date-time format adds to the pattern), every part drawn from its full range.
    fn admitted() -> impl Strategy<Value = String> {
        let date = (0i16..=9999, 1i8..=12, 1i8..=31)
            .prop_filter_map("a calendar date", |(y, m, d)| Date::new(y, m, d).ok().map(|_| (y, m, d)));
        let fraction = proptest::option::of("[0-9]{1,9}");
        let t = prop_oneof![Just(b'T'), Just(b't')];
        let offset = prop_oneof![
            Just("Z".to_string()),
            Just("z".to_string()),
            ("[+-]", 0u8..=99, 0u8..=99).prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        ];
        (date, t, 0u8..=23, 0u8..=59, 0u8..=60, fraction, offset).prop_map(|((y, mo, d), t, h, mi, s, f, off)| {
            let f = f.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}{}{h:02}:{mi:02}:{s:02}{f}{off}", t as char)
        })
    }

    proptest! {
        #[test]
        fn every_admitted_value_parses(s in admitted()) {
            let pattern = regex_lite_match(&s);
            prop_assert!(pattern, "generator left the CRD pattern: {}", s);
            prop_assert!(parse_complete_by(&s).is_ok(), "{}", s);
        }

        #[test]
        fn where_jiff_can_read_a_value_both_agree(s in admitted()) {
            let leap = &s[17..19] == "60";
            let readable = if leap { format!("{}59{}", &s[..17], &s[19..]) } else { s.clone() };
            if let Ok(t) = readable.parse::<Timestamp>() {
                let ours = parse_complete_by(&s).unwrap();
                if leap {
                    // Within the 59th second, at its last nanosecond.
                    let after = ours.as_nanosecond() - t.as_nanosecond();
                    prop_assert!((0..1_000_000_000).contains(&after), "{} vs {}", ours, t);
                } else {
                    prop_assert_eq!(ours, t);
                }
            }
        }
    }

    /// `COMPLETE_BY_PATTERN` checked by hand (no regex crate in the build): the generator must stay
    /// inside what admission admits.
    fn regex_lite_match(s: &str) -> bool {
        let b = s.as_bytes();
        let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        let c = |i: usize, set: &[u8]| b.get(i).is_some_and(|x| set.contains(x));
        let head = (0..4).all(d)
            && c(4, b"-")
            && d(5)
            && d(6)
            && c(7, b"-")
            && d(8)
            && d(9)
            && c(10, b"Tt")
            && d(11)
            && d(12)
            && c(13, b":")
            && d(14)
            && d(15)
            && c(16, b":")
            && d(17)
            && d(18);
        if !head {
            return false;
        }
        let mut i = 19;
        if c(i, b".") {
            let n = b[i + 1..].iter().take_while(|x| x.is_ascii_digit()).count();
            if !(1..=9).contains(&n) {
                return false;
            }
            i += 1 + n;
        }
        match &b[i..] {
            [b'Z' | b'z'] => true,
            [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|x| x.is_ascii_digit()),
            _ => false,
        }
    }
}
