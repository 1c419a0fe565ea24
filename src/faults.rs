//! Test-only API fault injection: a tower layer under the kube client that fails a share of
//! requests with 409, 429, 500 or a timeout. Enabled only by the hidden `--inject-api-faults`
//! flag; it exists to prove that retries, backoff and idempotent writes hold up.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::client::{Body, DynBody};
use tower::{BoxError, Layer, Service};
use tracing::debug;

/// Fails `rate` (0..1) of the requests passing through.
#[derive(Clone)]
pub struct FaultLayer {
    rate: f64,
    state: Arc<AtomicU64>,
    pub injected: Arc<AtomicU64>,
}

impl FaultLayer {
    pub fn new(rate: f64, seed: u64) -> Self {
        FaultLayer {
            rate: rate.clamp(0.0, 1.0),
            state: Arc::new(AtomicU64::new(seed | 1)),
            injected: Default::default(),
        }
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
        // Watches are long-lived streams whose failures only delay the caches; faults target
        // the calls a reconcile makes (reads, lists, creates, patches, deletes).
        let is_watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        if is_watch || self.faults.next() >= self.faults.rate {
            return Box::pin(self.inner.call(req));
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
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("injected fault ({reason})"), "reason": reason, "code": code.as_u16()
        });
        let body: Box<DynBody> = Box::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}));
        let mut resp = Response::new(body);
        *resp.status_mut() = code;
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Box::pin(async move { Ok(resp) })
    }
}
