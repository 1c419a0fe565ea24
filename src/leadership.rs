//! Whether this replica may act on the cluster right now.
//!
//! Status writes are fenced by the `resourceVersion` they were planned from, so a stale replica
//! can never write older status over newer. Actions on Jobs (create, suspend, delete) have no such
//! fence of their own, so before each one the reconciler asks [`Leadership::may_act`]: without
//! leader election the answer is always yes; with it, only while the last successful renewal of
//! the Lease is younger than the renew deadline, which is shorter than the lease duration. A
//! leader cut off from the apiserver therefore stops acting before a standby can take the Lease.
//!
//! The renewals come from [`follow_lease`], which reads the Lease itself: kube-lease-manager
//! reports only changes of holder, and a holder whose renewals fail keeps believing it leads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use tokio::sync::watch;
use tracing::debug;

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

/// Until when the holder `identity` may act, as of `now`, from the Lease as stored: its
/// `renewTime` (stamped by the holder just before the renewal was sent, so never later than the
/// renewal itself) plus the renew deadline, or plus the Lease's own duration if that is shorter.
/// `None` when the Lease names another holder or none.
pub fn acting_deadline(
    lease: &Lease,
    identity: &str,
    renew_deadline: Duration,
    now: (Timestamp, Instant),
) -> Option<Instant> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let mut allowed = renew_deadline;
    if let Some(secs) = spec.lease_duration_seconds.filter(|s| *s > 0) {
        allowed = allowed.min(Duration::from_secs(secs as u64));
    }
    // A renewal stamped in the future (the clock stepped back) counts as made just now.
    let age = Duration::try_from(now.0.duration_since(renewed)).unwrap_or(Duration::ZERO);
    Some(now.1 + allowed.saturating_sub(age))
}

/// Follows the Lease `name` until aborted, reading it every `every`, and keeps `leadership` and
/// `deadline` in step with it: a Lease naming `identity` as holder allows acting until
/// [`acting_deadline`]; any other holder, or none, revokes at once. A replica cut off from the
/// apiserver reads nothing more, so its deadline simply runs out.
///
/// Reads, not a watch: the chart's Role grants `get` on the one Lease and no `list`/`watch`, and
/// how late a read sees a renewal only shortens the time left to act, never lengthens it.
pub async fn follow_lease(
    api: Api<Lease>,
    name: String,
    identity: String,
    renew_deadline: Duration,
    every: Duration,
    leadership: Arc<Leadership>,
    deadline: watch::Sender<Option<Instant>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lease = match api.get_opt(&name).await {
            Ok(lease) => lease,
            Err(e) => {
                debug!(error = %e, "could not read the Lease");
                continue;
            }
        };
        let until =
            lease.and_then(|l| acting_deadline(&l, &identity, renew_deadline, (Timestamp::now(), Instant::now())));
        match until {
            Some(until) => leadership.renewed_until(until),
            None => leadership.revoke(),
        }
        deadline.send_replace(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

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

    fn lease(holder: Option<&str>, renewed: Option<Timestamp>, duration: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(MicroTime),
                lease_duration_seconds: duration,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_deadline_counts_from_the_renewal_not_from_when_it_was_seen() {
        let now = (Timestamp::now(), Instant::now());
        let deadline = Duration::from_secs(10);
        let two_s_ago = now.0 - Duration::from_secs(2);
        let until = acting_deadline(&lease(Some("me"), Some(two_s_ago), Some(15)), "me", deadline, now).unwrap();
        assert_eq!(until - now.1, Duration::from_secs(8));
        // A renewal older than the deadline allows nothing any more.
        let old = now.0 - Duration::from_secs(11);
        assert_eq!(acting_deadline(&lease(Some("me"), Some(old), Some(15)), "me", deadline, now), Some(now.1));
        // Never longer than the Lease's own duration.
        let until = acting_deadline(&lease(Some("me"), Some(now.0), Some(4)), "me", deadline, now).unwrap();
        assert_eq!(until - now.1, Duration::from_secs(4));
        // A renewal stamped in the future counts as made now.
        let future = now.0 + Duration::from_secs(30);
        let until = acting_deadline(&lease(Some("me"), Some(future), Some(15)), "me", deadline, now).unwrap();
        assert_eq!(until - now.1, deadline);
    }

    #[test]
    fn only_the_holder_with_a_renewal_may_act() {
        let now = (Timestamp::now(), Instant::now());
        let d = Duration::from_secs(10);
        assert_eq!(acting_deadline(&lease(Some("other"), Some(now.0), Some(15)), "me", d, now), None);
        assert_eq!(acting_deadline(&lease(None, None, None), "me", d, now), None);
        assert_eq!(acting_deadline(&lease(Some("me"), None, Some(15)), "me", d, now), None);
        assert_eq!(acting_deadline(&Lease::default(), "me", d, now), None);
    }
}
