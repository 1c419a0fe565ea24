//! Publishing a plan's Events once its status is written: in the background and best effort,
//! so an Event never delays the Job create that follows a status write (under load one publish
//! took 700 ms) and losing one never fails or repeats a pass.
//!
//! A batch's routine Events (a stage started, a stage succeeded) are paced: at most one per
//! [`NORMAL_EVENT_INTERVAL`] per batch, the first one too (counted from the first routine Event
//! the batch had). The ones held back go out together, as one Event that names them, with the
//! next Event that is published or when the interval is up, so a 3-stage batch that takes less
//! than the interval costs one Event (`BatchSucceeded`, naming the seven), not seven, while the
//! apiserver is busy with its pods. Warnings and every other reason are never held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use tracing::{Instrument, debug, info, warn};

use super::plan::EventNote;
use crate::api::{EventReason, PredictionBatch};
use crate::context::Context;

/// The apiserver refuses an Event whose note is longer than 1 KiB (in bytes).
pub(crate) const MAX_EVENT_NOTE_BYTES: usize = 1024;
/// At most one routine Event (see [`paced`]) per batch this often.
pub const NORMAL_EVENT_INTERVAL: Duration = Duration::from_secs(30);
/// Batches whose pacing is remembered; older entries are forgotten beyond this.
const MAX_PACED_BATCHES: usize = 4096;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    &s[..end]
}

/// Routine Events, which may wait: a stage started or succeeded.
fn paced(reason: EventReason) -> bool {
    matches!(reason, EventReason::StageStarted(_) | EventReason::StageSucceeded(_))
}

/// The batch's end: nothing more will come, so whatever was held goes with it.
fn last(reason: EventReason) -> bool {
    matches!(reason, EventReason::BatchSucceeded | EventReason::BatchFailed)
}

/// Per batch: when its last routine Event went out, and what is held back since.
#[derive(Default)]
pub struct EventPacer {
    batches: Mutex<HashMap<ObjectRef<PredictionBatch>, Paced>>,
}

struct Paced {
    /// When its last routine Event went out, or its first routine Event came (held).
    last: Instant,
    held: Vec<EventNote>,
    /// A flush is scheduled for the held Events.
    flushing: bool,
}

/// What [`EventPacer::pace`] decided.
#[derive(Debug, Default, PartialEq)]
pub struct PaceDecision {
    /// Publish these now.
    pub now: Vec<EventNote>,
    /// Some were held: flush them after this long (unless a later Event takes them along).
    pub flush_after: Option<Duration>,
}

impl EventPacer {
    /// Splits `notes` into those to publish now (held ones folded into the first routine or
    /// final one) and those to hold.
    pub fn pace(&self, key: &ObjectRef<PredictionBatch>, notes: Vec<EventNote>, now: Instant) -> PaceDecision {
        let mut all = self.batches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() > MAX_PACED_BATCHES {
            all.retain(|_, p| !p.held.is_empty() || now.saturating_duration_since(p.last) < NORMAL_EVENT_INTERVAL);
        }
        let mut out = PaceDecision::default();
        for note in notes {
            let entry = all.entry(key.clone());
            if last(note.reason) {
                let held = match entry {
                    std::collections::hash_map::Entry::Occupied(o) => o.remove().held,
                    std::collections::hash_map::Entry::Vacant(_) => Vec::new(),
                };
                out.now.push(fold(held, note));
                continue;
            }
            if !paced(note.reason) {
                out.now.push(note);
                continue;
            }
            let p = entry.or_insert(Paced { last: now, held: vec![], flushing: false });
            let since = now.saturating_duration_since(p.last);
            if since >= NORMAL_EVENT_INTERVAL && p.held.is_empty() {
                p.last = now;
                out.now.push(note);
            } else {
                p.held.push(note);
                if !p.flushing {
                    p.flushing = true;
                    out.flush_after = Some(NORMAL_EVENT_INTERVAL.saturating_sub(since));
                }
            }
        }
        out
    }

    /// The held Events of a batch whose interval is up, folded into one (`None`: a later Event
    /// took them along, or the batch ended).
    pub fn flush(&self, key: &ObjectRef<PredictionBatch>, now: Instant) -> Option<EventNote> {
        let mut all = self.batches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = all.get_mut(key)?;
        p.flushing = false;
        let mut held = std::mem::take(&mut p.held);
        let newest = held.pop()?;
        p.last = now;
        Some(fold(held, newest))
    }
}

/// `note`, naming the Events held before it.
fn fold(held: Vec<EventNote>, note: EventNote) -> EventNote {
    if held.is_empty() {
        return note;
    }
    let before: Vec<String> = held.iter().map(|h| h.note.clone()).collect();
    EventNote { note: format!("{} (after: {})", note.note, before.join("; ")), ..note }
}

fn to_event(e: &EventNote) -> Event {
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
}

fn publish(recorder: Recorder, reference: k8s_openapi::api::core::v1::ObjectReference, events: Vec<Event>) {
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

pub fn spawn_events(ctx: &Context, batch: &PredictionBatch, notes: &[EventNote]) {
    if notes.is_empty() {
        return;
    }
    let key = ObjectRef::from_obj(batch);
    let paced = ctx.events.pace(&key, notes.to_vec(), Instant::now());
    let reference = batch.object_ref(&());
    if !paced.now.is_empty() {
        publish(ctx.recorder.clone(), reference.clone(), paced.now.iter().map(to_event).collect());
    }
    if let Some(after) = paced.flush_after {
        let (pacer, recorder) = (ctx.events.clone(), ctx.recorder.clone());
        tokio::spawn(
            async move {
                tokio::time::sleep(after).await;
                if let Some(note) = pacer.flush(&key, Instant::now()) {
                    publish(recorder, reference, vec![to_event(&note)]);
                }
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Stage;

    fn n(reason: EventReason, warning: bool) -> EventNote {
        EventNote { warning, reason, note: reason.as_string() }
    }

    fn key() -> ObjectRef<PredictionBatch> {
        ObjectRef::new("b").within("ns")
    }

    #[test]
    fn routine_events_of_a_short_batch_go_out_as_one() {
        let (p, t0) = (EventPacer::default(), Instant::now());
        let s = Duration::from_secs;
        let started = p.pace(&key(), vec![n(EventReason::StageStarted(Stage::Workers), false)], t0);
        assert!(started.now.is_empty(), "the first is held too: {started:?}");
        assert_eq!(started.flush_after, Some(s(30)), "one flush, when the interval is up");
        let mid = p.pace(
            &key(),
            vec![
                n(EventReason::StageSucceeded(Stage::Workers), false),
                n(EventReason::StageStarted(Stage::Consolidation), false),
            ],
            t0 + s(8),
        );
        assert!(mid.now.is_empty(), "{mid:?}");
        assert_eq!(mid.flush_after, None, "the flush is already due");
        let end = p.pace(
            &key(),
            vec![n(EventReason::StageSucceeded(Stage::Consolidation), false), n(EventReason::BatchSucceeded, false)],
            t0 + s(12),
        );
        assert_eq!(end.now.len(), 1, "{end:?}");
        assert_eq!(end.now[0].reason, EventReason::BatchSucceeded);
        assert_eq!(
            end.now[0].note,
            "BatchSucceeded (after: WorkersStarted; WorkersSucceeded; ConsolidationStarted; ConsolidationSucceeded)"
        );
        assert_eq!(p.flush(&key(), t0 + s(30)), None, "the batch's end took them along");
    }

    #[test]
    fn warnings_and_other_reasons_are_never_held_and_held_ones_flush_as_one() {
        let (p, t0) = (EventPacer::default(), Instant::now());
        let s = Duration::from_secs;
        p.pace(&key(), vec![n(EventReason::StageStarted(Stage::Loader), false)], t0);
        let r = p.pace(
            &key(),
            vec![
                n(EventReason::StageSucceeded(Stage::Loader), false),
                n(EventReason::AtRisk, true),
                n(EventReason::BackupStarted, false),
            ],
            t0 + s(1),
        );
        let reasons: Vec<_> = r.now.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, vec![EventReason::AtRisk, EventReason::BackupStarted]);
        p.pace(&key(), vec![n(EventReason::StageStarted(Stage::Workers), false)], t0 + s(2));
        let flushed = p.flush(&key(), t0 + s(30)).expect("held events");
        assert_eq!(flushed.reason, EventReason::StageStarted(Stage::Workers));
        assert_eq!(flushed.note, "WorkersStarted (after: LoaderStarted; LoaderSucceeded)");
        // The interval starts again from the flush.
        let next = p.pace(&key(), vec![n(EventReason::StageSucceeded(Stage::Workers), false)], t0 + s(40));
        assert!(next.now.is_empty() && next.flush_after == Some(s(20)), "{next:?}");
        let later = EventPacer::default();
        let other: ObjectRef<PredictionBatch> = ObjectRef::new("c").within("ns");
        let first = later.pace(&other, vec![n(EventReason::StageStarted(Stage::Workers), false)], t0);
        assert!(first.now.is_empty() && first.flush_after == Some(s(30)), "{first:?}");
        assert_eq!(later.flush(&other, t0 + s(30)).map(|e| e.reason), Some(EventReason::StageStarted(Stage::Workers)));
    }

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
