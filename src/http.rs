//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::info;

use crate::controller::Shared;
use crate::metrics::{BATCH_CONTROLLER, ControllerLabel, Metrics};
use crate::watch_health::NOT_READY_AFTER;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
}

/// Binds `addr` (port 0 picks a free port, which is logged) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, shared });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    });
    Ok(bound)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let shared = &state.shared;
    let batches = shared.batches.lock().expect("poisoned").clone();
    if let Some(store) = batches {
        state.metrics.set_batches(&store.state());
    }
    let schedules = shared.schedules.lock().expect("poisoned").clone();
    if let Some(store) = schedules {
        state.metrics.set_schedules(&store.state());
    }
    state.metrics.mirror_out_of_sync.set(shared.mirror.lock().expect("poisoned").out_of_sync() as i64);
    let depth = i64::try_from(shared.queue.depth() + shared.sweep.pending()).unwrap_or(i64::MAX);
    state.metrics.queue_depth.get_or_create(&ControllerLabel { controller: BATCH_CONTROLLER }).set(depth);
    state.metrics.set_watch_failing(&shared.watches.failing(Instant::now()));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

/// Ready once the caches have synced, and as long as no watch has kept failing for
/// [`NOT_READY_AFTER`]; a failing watch is named in the body either way.
async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    let failing = state.shared.watches.failing(Instant::now());
    let detail: Vec<String> = failing.iter().map(ToString::to_string).collect();
    if !state.shared.ready.load(Ordering::SeqCst) {
        let body = std::iter::once("caches not synced".to_string()).chain(detail).collect::<Vec<_>>().join("; ");
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else if failing.iter().any(|f| f.for_ >= NOT_READY_AFTER) {
        (StatusCode::SERVICE_UNAVAILABLE, detail.join("; "))
    } else {
        (StatusCode::OK, "ready".to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::to_bytes;

    use super::*;
    use crate::watch_health::Watch;

    async fn readyz(shared: &Arc<Shared>) -> (StatusCode, String) {
        let state = AppState { metrics: Arc::new(Metrics::default()), shared: shared.clone() };
        let response = ready_handler(State(state)).await.into_response();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_names_a_failing_watch_and_fails_once_it_keeps_failing() {
        let shared = Arc::new(Shared::default());
        let now = Instant::now();
        shared.watches.record(Watch::Batches, Err(&"forbidden"), now);
        let (status, body) = readyz(&shared).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("caches not synced; watch of PredictionBatches failing for "), "{body}");

        // Synced, and a watch failed a moment ago: still ready.
        shared.ready.store(true, Ordering::SeqCst);
        assert_eq!(readyz(&shared).await, (StatusCode::OK, "ready".to_string()));

        // Synced, but a watch has been failing for longer than NOT_READY_AFTER: not ready.
        let health = Shared::default();
        health.ready.store(true, Ordering::SeqCst);
        let shared = Arc::new(health);
        let long_ago = now.checked_sub(NOT_READY_AFTER + Duration::from_secs(1)).unwrap();
        shared.watches.record(Watch::Jobs, Err(&"forbidden"), long_ago);
        shared.watches.record(Watch::Jobs, Err(&"forbidden"), now);
        let (status, body) = readyz(&shared).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("watch of Jobs failing for 6"), "{body}");
    }
}
