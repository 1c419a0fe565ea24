//! Durations, ages, times and tables as kubectl prints them.

use k8s_openapi::jiff::Timestamp;

/// A duration as the controller writes `status.duration` ("45s", "4m12s", "1h5m", "2d3h").
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// An age as kubectl's AGE column shows it (`duration.HumanDuration`): "45s", "3m12s", "25m",
/// "5h3m", "26h", "3d4h", "12d", "2y3d".
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        let y = d / 365;
        if d % 365 == 0 { format!("{y}y") } else { format!("{y}y{}d", d % 365) }
    }
}

/// Whole seconds from `a` to `b` (negative when `b` is earlier).
pub fn seconds_between(a: Timestamp, b: Timestamp) -> i64 {
    b.duration_since(a).as_secs()
}

/// "in 2m10s" for a future time, "2m10s ago" for a past one.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let secs = seconds_between(now, t);
    if secs >= 0 { format!("in {}", duration(secs)) } else { format!("{} ago", duration(-secs)) }
}

/// A time for a screen: RFC 3339 UTC, to the second.
pub fn time(t: Timestamp) -> String {
    let whole = Timestamp::from_second(t.as_second()).unwrap_or(t);
    whole.to_string()
}

/// A user's duration: "90s", "30m", "3h", "1h30m", "2d", or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let bad = || format!("{text:?} is not a duration like 90s, 30m, 1h30m or 2d");
    let (mut total, mut number) = (0u64, String::new());
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Columns on a screen, colour codes left out.
fn width(cell: &str) -> usize {
    console::measure_text_width(cell)
}

/// Left-aligned columns separated by three spaces, as kubectl's tables (the last column unpadded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(cell));
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - width(cell) + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// A text progress bar of `width` cells: `[##########----------]`.
pub fn bar(fraction: f64, width: usize) -> String {
    let f = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
    let filled = ((f * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// `part / whole` in percent with one decimal ("33.3%"); "-" when `whole` is 0.
pub fn percent(part: u32, whole: u32) -> String {
    if whole == 0 { "-".into() } else { format!("{:.1}%", f64::from(part) * 100.0 / f64::from(whole)) }
}

/// How many indexes a compressed range list holds ("0-2,4,7-8" → 6); 0 for an unreadable one.
pub fn range_len(ranges: &str) -> u32 {
    let mut n = 0u32;
    for part in ranges.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            (Ok(a), Ok(b)) if b >= a => n = n.saturating_add(b - a + 1),
            _ => return 0,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_controllers() {
        assert_eq!(duration(-3), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(252), "4m12s");
        assert_eq!(duration(3900), "1h5m");
        assert_eq!(duration(183_600), "2d3h");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(5 * 3600 + 180), "5h3m");
        assert_eq!(age(26 * 3600), "26h");
        assert_eq!(age(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(age(12 * 86_400), "12d");
        assert_eq!(age(733 * 86_400), "2y3d");
    }

    #[test]
    fn user_durations() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 2 * 86_400);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("5").is_ok() && parse_duration("5x").is_err() && parse_duration("1h5").is_err());
    }

    #[test]
    fn relative_times_and_whole_seconds() {
        let now: Timestamp = "2026-01-02T12:00:00Z".parse().unwrap();
        assert_eq!(relative("2026-01-02T12:02:10Z".parse().unwrap(), now), "in 2m10s");
        assert_eq!(relative("2026-01-02T11:59:15Z".parse().unwrap(), now), "45s ago");
        assert_eq!(time("2026-01-02T12:00:03.25Z".parse().unwrap()), "2026-01-02T12:00:03Z");
    }

    #[test]
    fn tables_bars_and_ranges() {
        let t = table(&["NAME", "PHASE", "AGE"], &[vec!["a".into(), "Running".into(), "3s".into()]]);
        assert_eq!(t, "NAME   PHASE     AGE\na      Running   3s\n");
        assert_eq!(bar(0.5, 10), "[#####-----]");
        assert_eq!(bar(2.0, 4), "[####]");
        assert_eq!(bar(f64::NAN, 2), "[--]");
        assert_eq!(percent(40, 120), "33.3%");
        assert_eq!(percent(0, 0), "-");
        assert_eq!(range_len("0-2,4,7-8"), 6);
        assert_eq!(range_len(""), 0);
        assert_eq!(range_len("3,x"), 0);
    }
}
