//! How long a batch's change waits for the pass that handles it, and how many batches have such
//! a change waiting: kube-runtime's scheduler does not expose its queue, so the controller clocks
//! it from the outside, from a change arriving on a watch to the start of the batch's next pass.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::PredictionBatch;

/// Per batch, when its oldest change not yet handled arrived.
///
/// Keyed by a 64-bit hash of the batch's namespace and name, not by its `ObjectRef`: a restart
/// over 100,000 batches queues every one of them at once, and an `ObjectRef` key (four strings
/// and a 96-byte struct) costs a few hundred bytes per batch where the hash costs 8. Two batches
/// sharing a hash would only share one wait measurement.
#[derive(Debug, Default)]
pub struct QueueClock {
    waiting: Mutex<HashMap<u64, Instant>>,
}

/// The 64-bit key of a batch in the controller's own queue bookkeeping (namespace and name).
pub fn batch_key(batch: &ObjectRef<PredictionBatch>) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(batch)
}

impl QueueClock {
    /// A change of `batch` (or of one of its Jobs) arrived at `at`; an older waiting one is kept.
    pub fn arrived(&self, batch: ObjectRef<PredictionBatch>, at: Instant) {
        self.waiting.lock().expect("poisoned").entry(batch_key(&batch)).or_insert(at);
    }

    /// A pass of `batch` starts at `at`: how long its oldest change waited, if one did (a pass
    /// that a timer or a retry started has none).
    pub fn started(&self, batch: &ObjectRef<PredictionBatch>, at: Instant) -> Option<Duration> {
        self.waiting.lock().expect("poisoned").remove(&batch_key(batch)).map(|t| at.saturating_duration_since(t))
    }

    /// The batch is gone: nothing of it will run.
    pub fn forget(&self, batch: &ObjectRef<PredictionBatch>) {
        self.waiting.lock().expect("poisoned").remove(&batch_key(batch));
    }

    pub fn depth(&self) -> usize {
        self.waiting.lock().expect("poisoned").len()
    }

    /// A new term of leadership starts with a new queue.
    pub fn reset(&self) {
        self.waiting.lock().expect("poisoned").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_change_counts_and_a_pass_takes_it() {
        let clock = QueueClock::default();
        let b = ObjectRef::<PredictionBatch>::new("b").within("ns");
        let t0 = Instant::now();
        clock.arrived(b.clone(), t0);
        clock.arrived(b.clone(), t0 + Duration::from_millis(5));
        clock.arrived(ObjectRef::new("c").within("ns"), t0);
        assert_eq!(clock.depth(), 2);
        assert_eq!(clock.started(&b, t0 + Duration::from_millis(20)), Some(Duration::from_millis(20)));
        assert_eq!(clock.started(&b, t0 + Duration::from_millis(30)), None, "a timer's pass waited for nothing");
        clock.forget(&ObjectRef::new("c").within("ns"));
        assert_eq!(clock.depth(), 0);
    }

    #[test]
    fn a_batch_is_one_key_whatever_its_resource_version_and_uid() {
        let clock = QueueClock::default();
        let t0 = Instant::now();
        let mut seen = ObjectRef::<PredictionBatch>::new("b").within("ns");
        seen.extra.resource_version = Some("42".into());
        seen.extra.uid = Some("u-1".into());
        clock.arrived(seen, t0);
        let lean = ObjectRef::<PredictionBatch>::new("b").within("ns");
        assert_eq!(clock.started(&ObjectRef::new("b").within("other"), t0), None, "another namespace");
        assert_eq!(clock.started(&lean, t0 + Duration::from_millis(7)), Some(Duration::from_millis(7)));
    }
}
