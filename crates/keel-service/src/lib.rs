//! keel's stateless app tier: the "hello" services of the load-balancing lab, the visits
//! counter of the Redis demo, and the `/data` endpoint of the PostgreSQL homework's load
//! script — one small HTTP server, run as many times as there are services. Also the
//! fault-tolerance lab's flaky service ([`flaky`], `keel flaky`).
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | `Hello from service1`, the host name and the visits counter (text) |
//! | `GET /data` | JSON: `backend_id` (this service) and what served its data |
//! | `POST /data` | with PostgreSQL: `{"value": "…"}` written through the read-write port |
//! | `GET /health` | JSON: name, the data tier or Redis, the breaker's state |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/events` | server-sent events: the Redis breaker's transitions |
//!
//! The service keeps no state of its own worth keeping: with `--data` the counter lives
//! in the data tier (any URL that speaks the node API: a node, or `keel proxy`'s cluster
//! route, which follows the primary through failovers), with `--redis` in Redis (`INCR
//! visits`) behind a circuit breaker and a timeout ([`redis_visits`]), else in the
//! process, which says so. When the counter's store does not answer, `/` still answers —
//! a degraded page that says what is missing ("The counter is temporarily disabled!"
//! with Redis) — and `/data`, whose whole point is the data, answers 503.
//!
//! With `--postgres-read URL --postgres-write URL`, `/data` is on PostgreSQL instead
//! ([`postgres`]): reads through `keel proxy --tcp`'s read-only port, writes through its
//! read-write port, each answer naming the server (`postgres_node`, `postgres_addr`).
//!
//! Modules: [`flaky`] (the flaky service), [`redis_visits`] (the counter in Redis and its
//! breaker), [`events`] (the event stream), [`breaker_spec`] (breaker settings as a flag
//! writes them), `data` (the data tier's client), `metrics` (request counters).

#![forbid(unsafe_code)]

pub mod breaker_spec;
mod data;
pub mod events;
pub mod flaky;
mod metrics;
pub mod postgres;
pub mod redis_visits;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use data::{DataAnswer, DataError, DataTier};
pub use events::{EventLog, EventRecord};
pub use redis_visits::{RedisSetupError, RedisVisits, VisitsError};

/// What `/` says in place of the counter when Redis cannot count (the demo's words).
pub const COUNTER_DISABLED: &str = "The counter is temporarily disabled!";

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
    /// Redis URL (`redis://127.0.0.1:6379`) for the visits counter, if any; exclusive
    /// with `data`.
    pub redis: Option<String>,
    /// How long one call to Redis may take ([`redis_visits::DEFAULT_TIMEOUT`]: 2 s).
    pub redis_timeout: Duration,
    /// The breaker in front of Redis ([`redis_visits::default_breaker`]).
    pub redis_breaker: keel_resilience::Config,
    /// TLS for the listener and for the calls to an `https://` data tier (`--tls-*`).
    pub tls: Option<keel_auth::tls::Tls>,
    /// `/data` on PostgreSQL, if set.
    pub postgres: Option<PostgresConfig>,
}

/// Where `/data` reads and writes on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://USER@HOST:PORT/DBNAME`: the read-only port.
    pub read: String,
    /// The read-write port.
    pub write: String,
    /// A file holding the password.
    pub password_file: Option<std::path::PathBuf>,
    /// How long taking a connection, making one or a query may take.
    pub timeout: Duration,
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
    /// The Redis URL or the breaker's settings cannot be used.
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    /// The settings contradict each other or are out of range.
    #[error("{0}")]
    Config(String),
    /// The PostgreSQL URLs or password cannot be used.
    #[error(transparent)]
    Postgres(#[from] postgres::PgDataError),
}

/// What the handlers share.
struct Service {
    name: String,
    host: String,
    data: Option<DataTier>,
    redis: Option<RedisVisits>,
    postgres: Option<Arc<postgres::PgData>>,
    events: Arc<EventLog>,
    /// Turns true when the server stops, ending the event streams.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The counter when there is no data tier: this process's visits only.
    local_visits: AtomicU64,
    stats: metrics::Stats,
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    config: ServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let (listener, addr) = crate::bind(config.listen).await?;
    tracing::info!(name = %config.name, %addr, data = ?config.data, redis = ?config.redis.as_deref().map(redis_visits::redacted), "service listening");
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let router = build(&config, stopped)?;
    keel_http::serve_draining(
        listener,
        router,
        shutdown,
        Duration::from_secs(5),
        stopping,
        config.tls.as_ref(),
    )
    .await;
    Ok(())
}

/// Listens on `addr`; also the address it got (port 0 picks one).
pub(crate) async fn bind(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), ServiceError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServiceError::Serve)?;
    Ok((listener, local))
}

/// The service's routes, for a server or a test. Call it within a tokio runtime, so
/// that the breaker's transitions reach `/v1/events`.
pub fn router(config: &ServiceConfig) -> Result<Router, ServiceError> {
    // Never stopped: its event streams end with their clients.
    let (_, never) = tokio::sync::watch::channel(false);
    build(config, never)
}

fn build(
    config: &ServiceConfig,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Router, ServiceError> {
    if config.data.is_some() && config.redis.is_some() {
        return Err(ServiceError::Config(
            "--data and --redis both keep the visits counter; give one of them".to_owned(),
        ));
    }
    let data = match &config.data {
        Some(url) => Some(DataTier::new(
            url,
            config.data_timeout,
            config.tls.as_ref(),
        )?),
        None => None,
    };
    let redis = match &config.redis {
        Some(url) => Some(RedisVisits::new(
            url,
            config.redis_timeout,
            config.redis_breaker,
        )?),
        None => None,
    };
    let postgres = match &config.postgres {
        Some(pg) => {
            let data = Arc::new(postgres::PgData::new(
                &pg.read,
                &pg.write,
                pg.password_file.as_deref(),
                pg.timeout,
            )?);
            Some(data)
        }
        None => None,
    };
    let events = Arc::new(EventLog::new());
    if let Some(redis) = &redis {
        events.follow(redis.breaker());
    }
    let service = Arc::new(Service {
        name: config.name.clone(),
        host: host_name(),
        data,
        redis,
        postgres,
        events,
        stopping,
        local_visits: AtomicU64::new(0),
        stats: metrics::Stats::default(),
    });
    Ok(keel_http::json_fallbacks(
        Router::new()
            .route("/", get(hello))
            .route("/data", get(data_route).post(write_route))
            .route("/health", get(health))
            .route("/metrics", get(metrics_route))
            .route("/v1/events", get(events_route)),
        "GET /, /data, /health, /metrics or /v1/events; POST /data",
    )
    .with_state(service))
}

/// `GET /`: the lab's greeting, the host, and the visits counter.
async fn hello(State(service): State<Arc<Service>>) -> Response {
    let visits = match (&service.redis, &service.data) {
        (Some(redis), _) => match redis.incr().await {
            Ok(visits) => format!("{visits} (redis {})", redis.url()),
            Err(e) => {
                tracing::debug!(error = %e, "visits counter disabled");
                format!("{COUNTER_DISABLED} ({e})")
            }
        },
        (None, None) => format!(
            "{} (kept in this process only: start with --data to keep it in the data tier)",
            service.local_visits.fetch_add(1, Ordering::Relaxed) + 1
        ),
        (None, Some(data)) => match data.incr_visits().await {
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
    if let Some(pg) = &service.postgres {
        body["data_source"] = pg.read_url().into();
        let status = match pg.read().await {
            Ok(answer) => {
                body["postgres_node"] = answer.node.into();
                body["postgres_addr"] = answer.addr.into();
                body["postgres_role"] = answer.role.into();
                body["row"] = answer.row;
                StatusCode::OK
            }
            Err(e) => {
                service.stats.data_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("GET /data: {e}");
                body["error"] = "postgres_unavailable".into();
                body["message"] = e.into();
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        service.stats.count("/data", status);
        return (status, axum::Json(body)).into_response();
    }
    let status = match (&service.redis, &service.data) {
        (Some(redis), _) => {
            body["data_source"] = redis.url().into();
            match redis.get().await {
                Ok(visits) => {
                    body["visits"] = visits.into();
                    StatusCode::OK
                }
                Err(e) => {
                    body["error"] = "data_unavailable".into();
                    body["message"] = format!("{COUNTER_DISABLED} ({e})").into();
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }
        (None, None) => {
            body["visits"] = service.local_visits.load(Ordering::Relaxed).into();
            body["data_source"] = "process".into();
            StatusCode::OK
        }
        (None, Some(data)) => {
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

/// `POST /data`: `{"value": "…"}` (or no body: a value of its own) written to
/// PostgreSQL's primary through the read-write port; the row and the server that took it.
async fn write_route(State(service): State<Arc<Service>>, body: axum::body::Bytes) -> Response {
    let refuse = |status: StatusCode, code: &str, message: String| {
        service.stats.count("/data", status);
        keel_http::error_response(status, keel_core::ApiError::new(code, message))
    };
    let Some(pg) = &service.postgres else {
        return refuse(
            StatusCode::NOT_FOUND,
            "no_postgres",
            "POST /data writes to PostgreSQL: start the service with --postgres-read and --postgres-write".to_owned(),
        );
    };
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        format!("written by {}", service.name)
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Write {
            value: String,
        }
        match serde_json::from_slice::<Write>(&body) {
            Ok(w) => w.value,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("the body must be JSON {{\"value\": \"text\"}}: {e}"),
                );
            }
        }
    };
    if value.len() > postgres::MAX_VALUE || value.contains('\0') {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_value",
            format!(
                "the value must be text of at most {} bytes, without NUL",
                postgres::MAX_VALUE
            ),
        );
    }
    let mut answer = serde_json::json!({ "backend_id": service.name, "host": service.host });
    let status = match pg.write(&value, &service.name).await {
        Ok(written) => {
            answer["postgres_node"] = written.node.into();
            answer["postgres_addr"] = written.addr.into();
            answer["row"] = written.row;
            StatusCode::CREATED
        }
        Err(e) => {
            service.stats.data_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("POST /data: {e}");
            answer["error"] = "postgres_unavailable".into();
            answer["message"] = e.into();
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    service.stats.count("/data", status);
    (status, axum::Json(answer)).into_response()
}

/// `GET /health`: always 200 while the process serves; `status` is `degraded` while
/// the Redis breaker is not closed.
async fn health(State(service): State<Arc<Service>>) -> Response {
    let data = service.data.as_ref().map(DataTier::url);
    service.stats.count("/health", StatusCode::OK);
    let mut body = serde_json::json!({
        "name": service.name,
        "status": "ok",
        "host": service.host,
        "data": data,
    });
    if let Some(pg) = &service.postgres {
        body["postgres"] = pg.status();
    }
    if let Some(redis) = &service.redis {
        let state = redis.breaker().state();
        if !matches!(state, keel_resilience::State::Closed) {
            body["status"] = "degraded".into();
        }
        body["redis"] = redis.url().into();
        body["breaker"] = serde_json::json!({
            "name": redis.breaker().name(),
            "state": state.as_str(),
            "timeout": keel_core::duration::format(redis.timeout()),
            "settings": breaker_spec::describe(redis.breaker().config()),
        });
    }
    axum::Json(body).into_response()
}

async fn metrics_route(State(service): State<Arc<Service>>) -> Response {
    let mut text = service.stats.render(&service.name);
    if let Some(redis) = &service.redis {
        redis.render_metrics(&mut text, &service.name);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /v1/events`: the breaker's transitions as server-sent events.
async fn events_route(
    State(service): State<Arc<Service>>,
    query: Result<Query<events::Since>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    events::stream(
        Arc::clone(&service.events),
        query,
        &headers,
        service.stopping.clone(),
    )
    .await
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
