//! The loader's output contract: what a loader container writes to its termination message
//! (`/dev/termination-log`, at most 4096 bytes, read by the kubelet), e.g.
//! `{"targetCount": 38, "itemsRef": "gs://bucket/2026-01-01/players.json"}`.
//!
//! The controller reads it from the finished loader pod's status, the way Tekton reads step
//! results. Anything it cannot use exactly as written fails the batch (`LoaderOutputInvalid`) with
//! the message quoted (bounded): never a panic, never a guess.

use serde::Deserialize;

use super::{PredictionBatch, PredictionBatchStatus, StageState};

/// Most work items a loader may report (as `spec.targetCount` admits).
pub const MAX_LOADED_ITEMS: u64 = 100_000;
/// Longest `itemsRef`, in bytes.
pub const MAX_ITEMS_REF_BYTES: usize = 1024;
/// Longest quote of a refused message in the batch's status.
const MAX_QUOTE_CHARS: usize = 256;

/// What the loader found: the day's count and, optionally, an opaque reference to the list it
/// wrote, so that every later stage reads the same list (`ITEMS_REF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderOutput {
    pub target_count: u32,
    pub items_ref: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    target_count: Option<serde_json::Value>,
    #[serde(default)]
    items_ref: Option<serde_json::Value>,
}

impl PredictionBatch {
    /// How many work items the batch has: `spec.targetCount`, or the count the loader reported
    /// once its outcome is in the status; `None` while the loader has not reported.
    pub fn items_target(&self) -> Option<u32> {
        self.spec.target_count.or_else(|| self.status.as_ref().and_then(loaded_count))
    }
}

/// The count a loader reported, recorded with its stage's success.
pub fn loaded_count(status: &PredictionBatchStatus) -> Option<u32> {
    let loaded = status.loader.as_ref().is_some_and(|l| l.state == StageState::Succeeded);
    loaded.then(|| status.items.as_ref().map(|i| i.target)).flatten()
}

/// Reads a loader's termination message. `Err` is the reason, ready for a condition message.
pub fn parse_loader_output(message: Option<&str>) -> Result<LoaderOutput, String> {
    let Some(message) = message.map(str::trim).filter(|m| !m.is_empty()) else {
        return Err("the loader finished without a termination message".into());
    };
    let refuse = |why: &str| Err(format!("{why}: {}", quote(message)));
    let Ok(wire) = serde_json::from_str::<Wire>(message) else {
        return refuse("the loader's termination message is not a JSON object");
    };
    let count = match wire.target_count {
        None => return refuse("the loader's termination message has no targetCount"),
        Some(v) => v.as_u64().filter(|n| *n <= MAX_LOADED_ITEMS),
    };
    let Some(count) = count else {
        return refuse(&format!("targetCount is not a whole number in 0..={MAX_LOADED_ITEMS}"));
    };
    let items_ref = match wire.items_ref {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.len() <= MAX_ITEMS_REF_BYTES && !s.is_empty() => Some(s),
        Some(_) => {
            return refuse(&format!("itemsRef is not a non-empty string of at most {MAX_ITEMS_REF_BYTES} bytes"));
        }
    };
    Ok(LoaderOutput { target_count: count as u32, items_ref })
}

/// `message` quoted, cut to [`MAX_QUOTE_CHARS`] characters.
fn quote(message: &str) -> String {
    match message.char_indices().nth(MAX_QUOTE_CHARS) {
        Some((end, _)) => format!("{:?}…", &message[..end]),
        None => format!("{message:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(count: u32, items_ref: Option<&str>) -> Result<LoaderOutput, String> {
        Ok(LoaderOutput { target_count: count, items_ref: items_ref.map(String::from) })
    }

    #[test]
    fn the_day_s_count_and_list() {
        let table: [(&str, Result<LoaderOutput, String>); 5] = [
            (
                r#"{"targetCount": 38, "itemsRef": "gs://b/2026-01-01/players.json"}"#,
                ok(38, Some("gs://b/2026-01-01/players.json")),
            ),
            (r#"{"targetCount": 120}"#, ok(120, None)),
            (r#"{"targetCount": 0}"#, ok(0, None)),
            (" {\"targetCount\": 100000, \"itemsRef\": null}\n", ok(100_000, None)),
            (r#"{"targetCount": 5, "note": "fields we do not know are ignored"}"#, ok(5, None)),
        ];
        for (message, want) in table {
            assert_eq!(parse_loader_output(Some(message)), want, "{message}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_message_quoted() {
        for (message, why) in [
            ("", "without a termination message"),
            ("38", "not a JSON object"),
            ("{\"targetCount\": 38", "not a JSON object"),
            ("{}", "no targetCount"),
            (r#"{"targetCount": -1}"#, "not a whole number"),
            (r#"{"targetCount": 100001}"#, "not a whole number"),
            (r#"{"targetCount": 3.5}"#, "not a whole number"),
            (r#"{"targetCount": "38"}"#, "not a whole number"),
            (r#"{"targetCount": 3, "itemsRef": 7}"#, "itemsRef"),
            (r#"{"targetCount": 3, "itemsRef": ""}"#, "itemsRef"),
        ] {
            let err = parse_loader_output(Some(message)).expect_err(message);
            assert!(err.contains(why), "{message}: {err}");
        }
        assert!(parse_loader_output(None).is_err());
        let long = format!(r#"{{"targetCount": 3, "itemsRef": "{}"}}"#, "x".repeat(MAX_ITEMS_REF_BYTES + 1));
        let err = parse_loader_output(Some(&long)).unwrap_err();
        assert!(err.chars().count() < 400, "the quote is bounded: {} chars", err.chars().count());
    }

    proptest! {
        #[test]
        fn never_panics(message in "\\PC{0,600}") {
            let _ = parse_loader_output(Some(&message));
        }
    }
}
