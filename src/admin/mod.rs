//! The admin HTTP endpoint (`[admin] listen`, off by default), served with
//! axum on the main runtime (never on the workers, which serve clients):
//!
//! - `/metrics`: Prometheus text format ([`metrics`]), collected at scrape
//!   time from the hot-path counters ([`crate::counters`]) and the same
//!   sources INFO reads;
//! - `/healthz`: 200 `ok` while the process runs;
//! - `/readyz`: 200 `ready` when the topology is loaded, the client listener
//!   accepts and every shard has a live connection; else 503 with the reason
//!   ([`readiness`]);
//! - `/api/status`: the proxy's state as JSON ([`status`]);
//! - `/`: a status page (`status.html`, embedded) that polls `/api/status`.
//!
//! No authentication: bind it to loopback or a private network (a warning
//! is logged for any other address).

pub mod metrics;
pub mod replication;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::state::Shared;

/// The status page (plain HTML and vanilla JS, no build step).
const STATUS_PAGE: &str = include_str!("status.html");

/// Binds the admin address; warns when it is not a loopback address (the
/// endpoint has no authentication).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        warn!(admin = %local, "the admin endpoint listens on a non-loopback address and has no authentication");
    }
    Ok(listener)
}

/// What the handlers share.
struct App {
    shared: Arc<Shared>,
    metrics: metrics::Metrics,
    status: status::Window,
}

/// Serves the endpoint on `listener` until the runtime stops (it keeps
/// answering during a shutdown's drain: `/readyz` then says so).
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let local = listener.local_addr().ok();
    let app = Arc::new(App {
        metrics: metrics::Metrics::new(shared.clone()),
        status: status::Window::default(),
        shared,
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(api_status))
        .with_state(app);
    let local = local.map_or_else(String::new, |a: SocketAddr| a.to_string());
    info!(admin = %local, "admin endpoint listening");
    if let Err(e) = axum::serve(listener, router).await {
        warn!(error = %e, "the admin endpoint stopped");
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], STATUS_PAGE)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let s = &app.shared;
    let topo = s.topology.load();
    let shards: Vec<(String, i64)> = topo
        .shards
        .iter()
        .map(|sh| (sh.name().to_string(), sh.counters.snapshot().live))
        .collect();
    let input = Readiness {
        listening: s.stats.listening.load(Ordering::Acquire),
        shutting_down: s.shutdown.is_triggered(),
        shards,
    };
    match readiness(&input) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> impl IntoResponse {
    match app.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

async fn api_status(State(app): State<Arc<App>>) -> impl IntoResponse {
    let st = status::Status::collect(&app.shared, &app.status);
    match serde_json::to_string(&st) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode the status: {e}\n"),
        ),
    }
}

/// What `/readyz` decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The client listener accepts.
    pub listening: bool,
    /// A shutdown has started.
    pub shutting_down: bool,
    /// Each shard of the topology and its live pooled connections.
    pub shards: Vec<(String, i64)>,
}

/// Ready when the client listener accepts, no shutdown has started, the
/// topology has shards, and every shard has at least one live connection;
/// else the reason, naming the shards without one.
pub fn readiness(r: &Readiness) -> Result<(), String> {
    if r.shutting_down {
        return Err("shutting down".to_string());
    }
    if !r.listening {
        return Err("the client listener is not accepting".to_string());
    }
    if r.shards.is_empty() {
        return Err("no topology loaded".to_string());
    }
    let down: Vec<&str> = r
        .shards
        .iter()
        .filter(|(_, live)| *live <= 0)
        .map(|(n, _)| n.as_str())
        .collect();
    if !down.is_empty() {
        return Err(format!("no live connection to shard(s) {}", down.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(shards: &[(&str, i64)]) -> Readiness {
        Readiness {
            listening: true,
            shutting_down: false,
            shards: shards.iter().map(|(n, l)| (n.to_string(), *l)).collect(),
        }
    }

    #[test]
    fn ready_only_when_every_shard_has_a_live_connection() {
        assert_eq!(readiness(&input(&[("a", 2), ("b", 1)])), Ok(()));
        let e = readiness(&input(&[("a", 2), ("b", 0), ("c", 0)])).unwrap_err();
        assert_eq!(e, "no live connection to shard(s) b, c");
        assert_eq!(readiness(&input(&[])).unwrap_err(), "no topology loaded");
        let mut r = input(&[("a", 1)]);
        r.listening = false;
        assert!(readiness(&r).unwrap_err().contains("listener"));
        r.shutting_down = true;
        assert_eq!(readiness(&r).unwrap_err(), "shutting down");
    }
}
