//! Errors of a reconcile, classified by what the controller should do about them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// An error of one reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the apiserver failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The object lacks what every stored object has (name, namespace, UID).
    #[error("batch object is missing {0}")]
    MissingObjectKey(&'static str),
    /// This replica cannot be sure it still holds the leader Lease, so it must not act.
    #[error("not acting: the leader Lease was not renewed within the renew deadline")]
    NotLeading,
}

/// What to do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Our view was stale (a write conflicted): look again soon, without growing backoff.
    Soon,
    /// Transient (throttling, timeouts, server errors, anything unknown): back off exponentially.
    Backoff,
}

impl Error {
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube { action: action.into(), source }
    }

    pub fn retry(&self) -> Retry {
        match self {
            Error::Kube { source, .. } if status_code(source) == Some(409) => Retry::Soon,
            _ => Retry::Backoff,
        }
    }

    /// Worth trying again at once: throttling, server errors and failed transport (the request
    /// may not have reached the apiserver). Every write of a pass is idempotent, so repeating one
    /// that did land is harmless.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube { source, .. } => is_transient(source),
            Error::MissingObjectKey(_) | Error::NotLeading => false,
        }
    }

    /// Every value of [`Error::kind`] (exported at 0 from the start).
    pub const KINDS: [&'static str; 7] =
        ["conflict", "throttled", "server", "client", "transport", "object", "not_leading"];

    /// A short label for metrics (bounded cardinality), one of [`Error::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match status_code(source) {
                Some(409) => "conflict",
                Some(429) => "throttled",
                Some(c) if c >= 500 => "server",
                Some(_) => "client",
                None => "transport",
            },
            Error::MissingObjectKey(_) => "object",
            Error::NotLeading => "not_leading",
        }
    }
}

/// HTTP status of an apiserver error response, if it was one.
/// See [`Error::is_transient`].
pub fn is_transient(e: &kube::Error) -> bool {
    match status_code(e) {
        Some(code) => code == 429 || code >= 500,
        None => true,
    }
}

/// The pause before a call of a pass is tried a second time.
pub const CALL_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Makes one call of a pass, and once more after [`CALL_RETRY_PAUSE`] if it failed transiently.
///
/// Why: a pass makes several calls in a row (confirm the status, release a Job, read a Job the
/// cache lacks, create the next one), and restarting the whole pass for one flaky call multiplies
/// the odds against it: at a 50% failure rate a four-call pass succeeded 1 time in 16 and a batch
/// could sit minutes in backoff. Every call of a pass is idempotent (see [`Error::is_transient`]),
/// so repeating one that did land is harmless; a second failure goes to the pass's own retries.
pub async fn call_twice<T, F, Fut>(mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    match call().await {
        Err(e) if is_transient(&e) => {
            tracing::debug!(error = %e, "transient API error; trying the call again");
            tokio::time::sleep(CALL_RETRY_PAUSE).await;
            call().await
        }
        other => other,
    }
}

pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Exponential backoff for the n-th consecutive failure of one object: 250 ms doubling, at most 1 minute.
pub fn backoff(failures: u32) -> Duration {
    let ms = 250u64.saturating_mul(1u64 << failures.min(16));
    Duration::from_millis(ms.min(60_000))
}

/// How long an object waits after its `attempt`-th consecutive failed pass (from 1) with `error`.
pub fn retry_after(error: &Error, attempt: u32) -> Duration {
    match error.retry() {
        // A stale view (409): look again soon, growing only if it keeps happening.
        Retry::Soon => (backoff(attempt - 1) / 5).max(Duration::from_millis(50)),
        Retry::Backoff => backoff(attempt - 1),
    }
}

/// Counts one more consecutive failed pass of `key` (the count is reset by a successful pass);
/// returns the count.
pub fn count_failure<K: Eq + Hash>(failures: &Mutex<HashMap<K, u32>>, key: K) -> u32 {
    let mut failures = failures.lock().expect("poisoned");
    let n = failures.entry(key).or_insert(0);
    *n += 1;
    *n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        let status = kube::core::Status::failure("x", "y").with_code(code);
        Error::kube("call", kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn throttling_server_errors_and_transport_are_transient_not_conflicts_or_refusals() {
        assert!(api(429).is_transient());
        assert!(api(500).is_transient());
        assert!(api(503).is_transient());
        assert!(!api(409).is_transient());
        assert!(!api(422).is_transient());
        assert!(!api(404).is_transient());
        assert!(!Error::NotLeading.is_transient());
        assert!(!Error::MissingObjectKey("metadata.uid").is_transient());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), Duration::from_secs(60));
    }
}
