//! Publishing a plan's Events once its status is written: in the background and best effort,
//! so an Event never delays the Job create that follows a status write (under load one publish
//! took 700 ms) and losing one never fails or repeats a pass.

use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::{Instrument, debug, info, warn};

use super::plan::EventNote;
use crate::api::PredictionBatch;
use crate::context::Context;

/// The apiserver refuses an Event whose note is longer than 1 KiB (in bytes).
pub(crate) const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    &s[..end]
}

pub fn spawn_events(ctx: &Context, batch: &PredictionBatch, notes: &[EventNote]) {
    if notes.is_empty() {
        return;
    }
    let reference = batch.object_ref(&());
    let events: Vec<Event> = notes
        .iter()
        .map(|e| {
            if e.warning {
                warn!(reason = %e.reason, "{}", e.note);
            } else {
                info!(reason = %e.reason, "{}", e.note);
            }
            Event {
                type_: if e.warning { EventType::Warning } else { EventType::Normal },
                reason: e.reason.as_string(),
                note: Some(truncate_utf8(&e.note, MAX_EVENT_NOTE_BYTES).to_string()),
                action: "Reconcile".into(),
                secondary: None,
            }
        })
        .collect();
    let recorder = ctx.recorder.clone();
    tokio::spawn(
        async move {
            for event in &events {
                if let Err(err) = recorder.publish(event, &reference).await {
                    debug!(%err, "could not publish event");
                }
            }
        }
        .in_current_span(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_at_a_character_boundary_within_one_kib() {
        let note = "é".repeat(700); // 1400 bytes
        let cut = truncate_utf8(&note, MAX_EVENT_NOTE_BYTES);
        assert_eq!(cut.len(), 1024);
        assert!(note.starts_with(cut));
        let odd = format!("a{}", "€".repeat(400)); // 1 + 1200 bytes
        let cut = truncate_utf8(&odd, MAX_EVENT_NOTE_BYTES);
        assert!(cut.len() <= 1024 && cut.len() > 1020, "{}", cut.len());
        assert_eq!(truncate_utf8("short", MAX_EVENT_NOTE_BYTES), "short");
    }
}
