//! Whether this replica may act on the cluster right now.
//!
//! Status writes are fenced by the `resourceVersion` they were planned from, so a stale replica
//! can never write older status over newer. Actions on Jobs (create, suspend, delete) have no such
//! fence of their own, so before each one the reconciler asks [`Leadership::may_act`]: without
//! leader election the answer is always yes; with it, only while the last successful renewal of
//! the Lease is younger than the renew deadline, which is shorter than the lease duration. A
//! leader cut off from the apiserver therefore stops acting before a standby can take the Lease.

use std::sync::Mutex;
use std::time::Instant;

/// The gate every non-idempotent action passes.
#[derive(Debug)]
pub struct Leadership {
    /// `None`: no election, always allowed. `Some(until)`: allowed while `now < until`.
    lease: Option<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// A replica that runs without leader election.
    pub fn unelected() -> Self {
        Leadership { lease: None }
    }

    /// A replica under leader election; it may not act until [`Leadership::renewed_until`].
    pub fn elected() -> Self {
        Leadership { lease: Some(Mutex::new(None)) }
    }

    /// The Lease was renewed: acting is allowed until `deadline` (the renewal's time plus the
    /// renew deadline).
    pub fn renewed_until(&self, deadline: Instant) {
        if let Some(lease) = &self.lease {
            *lease.lock().expect("poisoned") = Some(deadline);
        }
    }

    /// Leadership was lost or given up: no more actions.
    pub fn revoke(&self) {
        if let Some(lease) = &self.lease {
            *lease.lock().expect("poisoned") = None;
        }
    }

    /// True while this replica may create, patch or delete Jobs.
    pub fn may_act(&self) -> bool {
        match &self.lease {
            None => true,
            Some(lease) => lease.lock().expect("poisoned").is_some_and(|until| Instant::now() < until),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_unelected_replica_always_acts() {
        assert!(Leadership::unelected().may_act());
    }

    #[test]
    fn an_elected_replica_acts_only_inside_its_renew_deadline() {
        let l = Leadership::elected();
        assert!(!l.may_act(), "not before the first renewal");
        l.renewed_until(Instant::now() + Duration::from_secs(60));
        assert!(l.may_act());
        l.renewed_until(Instant::now() - Duration::from_millis(1));
        assert!(!l.may_act(), "not after the renew deadline");
        l.renewed_until(Instant::now() + Duration::from_secs(60));
        l.revoke();
        assert!(!l.may_act(), "not after losing the lease");
    }
}
