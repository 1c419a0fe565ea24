//! How long a batch's change waits for the pass that handles it, and how many batches have such
//! a change waiting: kube-runtime's scheduler does not expose its queue, so the controller clocks
//! it from the outside, from a change arriving on a watch to the start of the batch's next pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::PredictionBatch;

/// Per batch, when its oldest change not yet handled arrived.
#[derive(Debug, Default)]
pub struct QueueClock {
    waiting: Mutex<HashMap<ObjectRef<PredictionBatch>, Instant>>,
}

impl QueueClock {
    /// A change of `batch` (or of one of its Jobs) arrived at `at`; an older waiting one is kept.
    pub fn arrived(&self, batch: ObjectRef<PredictionBatch>, at: Instant) {
        self.waiting.lock().expect("poisoned").entry(batch).or_insert(at);
    }

    /// A pass of `batch` starts at `at`: how long its oldest change waited, if one did (a pass
    /// that a timer or a retry started has none).
    pub fn started(&self, batch: &ObjectRef<PredictionBatch>, at: Instant) -> Option<Duration> {
        self.waiting.lock().expect("poisoned").remove(batch).map(|t| at.saturating_duration_since(t))
    }

    /// The batch is gone: nothing of it will run.
    pub fn forget(&self, batch: &ObjectRef<PredictionBatch>) {
        self.waiting.lock().expect("poisoned").remove(batch);
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
}
