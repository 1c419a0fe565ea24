//! Test-only API fault injection: a tower layer under the kube client that fails a share of
//! requests with 409, 429, 500 or a timeout (hidden flag `--inject-api-faults`), cuts the
//! replica off from the apiserver while a file exists (hidden flag `--inject-api-partition`), and
//! answers 503 while another file exists (hidden flag `--inject-api-outage`). It exists to prove
//! that retries, backoff, idempotent writes and the leader's renew deadline hold up.
//!
//! With the layer installed, every write (any method but GET/HEAD/OPTIONS) is logged at debug
//! level as `api write` (or `api write dropped`), so a test can tell from the log when a replica
//! last tried to change anything.
//!
//! Compiled only with the cargo feature `test-faults`, which nothing that ships enables
//! (`cargo build --release`, the Dockerfile's hack/build-image-binary, hack/demo). The package
//! lists itself as a dev-dependency with that feature, so every `cargo test` build (and so
//! tests/run-all and `.ci/run`) has it, for the library and for the binary the end-to-end tests
//! spawn. A binary built without it refuses the two flags with an error naming the feature, so a
//! test that asks for faults can never pass silently without them.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use kube::client::{Body, DynBody};
use tower::{BoxError, Layer, Service};
use tracing::{debug, warn};

/// Env: when set, the process aborts (no cleanup, as SIGKILL) right after a schedule's pass
/// created a run's batch and before it wrote `lastScheduleTime` (tests/schedule.rs).
pub const ABORT_AFTER_SCHEDULE_CREATE: &str = "PBC_TEST_ABORT_AFTER_SCHEDULE_CREATE";

/// How often a request held by a partition looks whether the partition has ended.
const PARTITION_POLL: Duration = Duration::from_millis(100);

/// Fails `rate` (0..1) of the requests passing through, and every request while partitioned.
#[derive(Clone)]
pub struct FaultLayer {
    rate: f64,
    state: Arc<AtomicU64>,
    pub injected: Arc<AtomicU64>,
    partition: Option<Arc<Partition>>,
    /// Requests matched while this is on are answered 503 at once (see [`FaultLayer::with_outage`]).
    outage: Option<Arc<Partition>>,
    /// Answer streaming lists (`sendInitialEvents=true`) as an apiserver without WatchList does.
    refuse_streaming_lists: bool,
}

impl FaultLayer {
    pub fn new(rate: f64, seed: u64) -> Self {
        FaultLayer {
            rate: rate.clamp(0.0, 1.0),
            state: Arc::new(AtomicU64::new(seed | 1)),
            injected: Default::default(),
            partition: None,
            outage: None,
            refuse_streaming_lists: false,
        }
    }

    /// Cut the replica off from the apiserver while `file` exists (see [`Partition`]).
    pub fn with_partition(mut self, file: PathBuf) -> Self {
        self.partition = Some(Arc::new(Partition::new(file, "partition")));
        self
    }

    /// While `file` exists, answer every request whose URL path contains one of its lines (every
    /// request if it has none) with 503 at once: an apiserver that is up behind its load
    /// balancer but failing. Unlike the random faults, it fails every try of a pass for as long
    /// as it lasts, so a test can count on a pass reaching the controller's backoff. Open watch
    /// streams are left alone.
    pub fn with_outage(mut self, file: PathBuf) -> Self {
        self.outage = Some(Arc::new(Partition::new(file, "outage")));
        self
    }

    /// Refuse every streaming list (see [`WATCH_LIST_REFUSED`]), as an apiserver whose WatchList
    /// feature is off does (hidden flag `--inject-no-streaming-lists`).
    pub fn refusing_streaming_lists(mut self) -> Self {
        self.refuse_streaming_lists = true;
        self
    }

    /// xorshift64*: deterministic per seed, good enough to pick faults.
    fn next(&self) -> f64 {
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A network partition between this replica and the apiserver, on while `file` exists.
///
/// An empty file cuts every request; otherwise each non-empty line is a substring of the URL paths
/// that are cut (e.g. `/apis/predictions.dev/` keeps the Lease reachable but not the batches).
/// A cut request never reaches the apiserver: it gets no answer while the partition lasts and
/// then fails as a timeout. A response stream already open (a watch) fails at its next chunk
/// instead of delivering it.
pub struct Partition {
    file: PathBuf,
    /// What the log calls it ("partition", "outage").
    what: &'static str,
    active: AtomicBool,
}

impl Partition {
    fn new(file: PathBuf, what: &'static str) -> Self {
        Partition { file, what, active: AtomicBool::new(false) }
    }

    /// Whether a request to `path` is cut right now.
    pub fn cuts(&self, path: &str) -> bool {
        let cut = match std::fs::read_to_string(&self.file) {
            Err(_) => None,
            Ok(text) => {
                let scopes: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                Some(scopes.is_empty() || scopes.iter().any(|s| path.contains(s)))
            }
        };
        let on = cut.is_some();
        if self.active.swap(on, Ordering::Relaxed) != on {
            if on {
                warn!(file = %self.file.display(), "injected API {} started (test only)", self.what);
            } else {
                warn!(file = %self.file.display(), "injected API {} ended (test only)", self.what);
            }
        }
        cut.unwrap_or(false)
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FaultService { inner, faults: self.clone() }
    }
}

#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: FaultLayer,
}

type BoxedResponse = Response<Box<DynBody>>;

impl<S> Service<Request<Body>> for FaultService<S>
where
    S: Service<Request<Body>, Response = BoxedResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = BoxedResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<BoxedResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if let Some(partition) = &self.faults.partition
            && partition.cuts(&path)
        {
            if write {
                debug!(method = %req.method(), path, "api write dropped: injected partition");
            }
            let partition = partition.clone();
            return Box::pin(async move {
                // Like a request into a network that drops packets: no answer while the partition
                // lasts, then a failure (it never reached the apiserver).
                while partition.cuts(&path) {
                    tokio::time::sleep(PARTITION_POLL).await;
                }
                Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "injected partition: the request was lost",
                )) as BoxError)
            });
        }
        if let Some(outage) = &self.faults.outage
            && outage.cuts(&path)
        {
            self.faults.injected.fetch_add(1, Ordering::Relaxed);
            debug!(target = format!("{} {path}", req.method()), code = 503, "injected fault: outage");
            let resp = status_response(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "injected outage");
            return Box::pin(async move { Ok(resp) });
        }
        if write {
            debug!(method = %req.method(), path, "api write");
        }
        let query = req.uri().query().unwrap_or_default().to_string();
        if self.faults.refuse_streaming_lists && query.split('&').any(|kv| kv == "sendInitialEvents=true") {
            debug!(path, "refused a streaming list (test only)");
            let resp = status_response(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", WATCH_LIST_REFUSED);
            return Box::pin(async move { Ok(resp) });
        }
        // Watches are long-lived streams whose failures only delay the caches; faults target
        // the calls a reconcile makes (reads, lists, creates, patches, deletes).
        let is_watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
        if is_watch || self.faults.next() >= self.faults.rate {
            let response = self.inner.call(req);
            let Some(partition) = self.faults.partition.clone() else {
                return Box::pin(response);
            };
            return Box::pin(async move {
                let response = response.await?;
                Ok(response.map(|body| cut_body(body, partition, path)))
            });
        }
        self.faults.injected.fetch_add(1, Ordering::Relaxed);
        let pick = self.faults.next();
        let target = format!("{} {}", req.method(), req.uri().path());
        if pick < 0.25 {
            debug!(target, "injected fault: timeout");
            return Box::pin(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Err(Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "injected timeout")) as BoxError)
            });
        }
        let (code, reason) = if pick < 0.5 {
            (StatusCode::CONFLICT, "Conflict")
        } else if pick < 0.75 {
            (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests")
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
        };
        debug!(target, code = code.as_u16(), "injected fault");
        let resp = status_response(code, reason, &format!("injected fault ({reason})"));
        Box::pin(async move { Ok(resp) })
    }
}

/// What an apiserver whose WatchList feature is off answers a streaming list (kube-apiserver's
/// validation message for `sendInitialEvents` without the feature gate).
pub const WATCH_LIST_REFUSED: &str = "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";

/// A `Status` failure as the apiserver sends one.
fn status_response(code: StatusCode, reason: &str, message: &str) -> BoxedResponse {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    let body: Box<DynBody> = Box::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}));
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

/// A response body that fails at its next chunk once `partition` cuts `path`: an open watch
/// stream stops delivering events as a real partition would.
fn cut_body(body: Box<DynBody>, partition: Arc<Partition>, path: String) -> Box<DynBody> {
    let frames = BodyStream::new(body).map(move |frame| {
        if partition.cuts(&path) {
            return Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected partition: connection lost",
            )) as BoxError);
        }
        frame
    });
    Box::new(StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_on_while_its_file_exists_and_cuts_its_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("partition");
        let p = Partition::new(file.clone(), "partition");
        assert!(!p.cuts("/apis/batch/v1/namespaces/a/jobs"));
        std::fs::write(&file, "").unwrap();
        assert!(p.cuts("/apis/batch/v1/namespaces/a/jobs"));
        assert!(p.cuts("/apis/coordination.k8s.io/v1/namespaces/a/leases/x"));
        std::fs::write(&file, "/apis/predictions.dev/\n\n").unwrap();
        assert!(p.cuts("/apis/predictions.dev/v1alpha1/namespaces/a/predictionbatches"));
        assert!(!p.cuts("/apis/coordination.k8s.io/v1/namespaces/a/leases/x"));
        std::fs::remove_file(&file).unwrap();
        assert!(!p.cuts("/apis/predictions.dev/v1alpha1/namespaces/a/predictionbatches"));
    }

    #[tokio::test]
    async fn an_outage_answers_503_at_once_to_its_scope_only_while_its_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("outage");
        let reached = Arc::new(AtomicU64::new(0));
        let counted = reached.clone();
        let inner = tower::service_fn(move |_req: Request<Body>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, BoxError>(status_response(StatusCode::OK, "", "")) }
        });
        let mut svc = FaultLayer::new(0.0, 1).with_outage(file.clone()).layer(inner);
        let mut status = async |path: &str| {
            let req = Request::builder().method(Method::PATCH).uri(path).body(Body::empty()).unwrap();
            svc.call(req).await.unwrap().status().as_u16()
        };
        let ours = "/apis/predictions.dev/v1alpha1/namespaces/a/predictionbatches/b/status";
        let other = "/apis/predictions.dev/v1alpha1/namespaces/a/predictionbatches/c/status";
        assert_eq!(status(ours).await, 200);
        std::fs::write(&file, "/predictionbatches/b/\n").unwrap();
        assert_eq!(status(ours).await, 503);
        assert_eq!(status(ours).await, 503, "every try fails while it lasts");
        assert_eq!(status(other).await, 200);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(status(ours).await, 200);
        assert_eq!(reached.load(Ordering::Relaxed), 3, "the refused calls never reached the apiserver");
    }
}
