//! keel's stateless app tier: the "hello" services of the load-balancing lab, the visits
//! counter of the Redis demo, and the `/data` endpoint of the PostgreSQL homework's load
//! script — one small HTTP server, run as many times as there are services.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | `Hello from service1`, the host name and the visits counter (text) |
//! | `GET /data` | JSON: `backend_id` (this service) and what served its data |
//! | `GET /health` | JSON: name, whether the data tier answers |
//! | `GET /metrics` | Prometheus text |
//!
//! The service keeps no state of its own worth keeping: with `--data` the counter lives
//! in the data tier (any URL that speaks the node API: a node, or `keel proxy`'s cluster
//! route, which follows the primary through failovers), else in the process, which says
//! so. When the data tier does not answer, `/` still answers — a degraded page that says
//! what is missing — and `/data`, whose whole point is the data, answers 503.

#![forbid(unsafe_code)]

mod data;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_core::http::{method_not_allowed, not_found};

pub use data::{DataAnswer, DataError, DataTier};

/// How a service is run.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The name it answers with (`service1`); also its `backend_id`.
    pub name: String,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Base URL of the data tier (`http://127.0.0.1:8080`), if any.
    pub data: Option<String>,
    /// How long one call to the data tier may take.
    pub data_timeout: Duration,
}

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Data(#[from] DataError),
}

/// What the handlers share.
struct Service {
    name: String,
    host: String,
    data: Option<DataTier>,
    /// The counter when there is no data tier: this process's visits only.
    local_visits: AtomicU64,
    stats: metrics::Stats,
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    config: ServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServiceError::Serve)?;
    tracing::info!(name = %config.name, %addr, data = ?config.data, "service listening");
    let router = router(&config)?;
    let (stopping, _) = tokio::sync::watch::channel(false);
    keel_core::http::serve_draining(listener, router, shutdown, Duration::from_secs(5), stopping)
        .await
        .map_err(ServiceError::Serve)
}

/// The service's routes, for a server or a test.
pub fn router(config: &ServiceConfig) -> Result<Router, ServiceError> {
    let data = match &config.data {
        Some(url) => Some(DataTier::new(url, config.data_timeout)?),
        None => None,
    };
    let service = Arc::new(Service {
        name: config.name.clone(),
        host: host_name(),
        data,
        local_visits: AtomicU64::new(0),
        stats: metrics::Stats::default(),
    });
    Ok(Router::new()
        .route("/", get(hello))
        .route("/data", get(data_route))
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
        .fallback(fallback)
        .method_not_allowed_fallback(wrong_method)
        .with_state(service))
}

/// `GET /`: the lab's greeting, the host, and the visits counter.
async fn hello(State(service): State<Arc<Service>>) -> Response {
    let visits = match &service.data {
        None => format!(
            "{} (kept in this process only: start with --data to keep it in the data tier)",
            service.local_visits.fetch_add(1, Ordering::Relaxed) + 1
        ),
        Some(data) => match data.incr_visits().await {
            Ok(answer) => format!("{} (data node {})", answer.visits, answer.node_or_unknown()),
            Err(e) => {
                service.stats.data_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "visits counter unavailable");
                format!("unavailable ({e})")
            }
        },
    };
    service.stats.count("/", StatusCode::OK);
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "Hello from {}\nhost: {}\nvisits: {visits}\n",
            service.name, service.host
        ),
    )
        .into_response()
}

/// `GET /data`: which service answered and which data node served its data (the
/// homework's `backend_id` and `postgres_ip`).
async fn data_route(State(service): State<Arc<Service>>) -> Response {
    let mut body = serde_json::json!({
        "backend_id": service.name,
        "host": service.host,
    });
    let status = match &service.data {
        None => {
            body["visits"] = service.local_visits.load(Ordering::Relaxed).into();
            body["data_source"] = "process".into();
            StatusCode::OK
        }
        Some(data) => {
            body["data_source"] = data.url().into();
            match data.read_visits().await {
                Ok(answer) => {
                    body["visits"] = answer.visits.into();
                    body["data_node"] = answer.node.into();
                    body["data_role"] = answer.role.into();
                    StatusCode::OK
                }
                Err(e) => {
                    service.stats.data_errors.fetch_add(1, Ordering::Relaxed);
                    body["error"] = "data_unavailable".into();
                    body["message"] = e.to_string().into();
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }
    };
    service.stats.count("/data", status);
    (status, axum::Json(body)).into_response()
}

async fn health(State(service): State<Arc<Service>>) -> Response {
    let data = service.data.as_ref().map(DataTier::url);
    service.stats.count("/health", StatusCode::OK);
    axum::Json(serde_json::json!({
        "name": service.name,
        "status": "ok",
        "host": service.host,
        "data": data,
    }))
    .into_response()
}

async fn metrics_route(State(service): State<Arc<Service>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.stats.render(&service.name),
    )
        .into_response()
}

async fn fallback(method: Method, uri: Uri) -> Response {
    not_found(&method, &uri, "GET /, /data, /health or /metrics")
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    method_not_allowed(&method, &uri)
}

/// The machine's name, as the seeds' pages show it; `localhost` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
