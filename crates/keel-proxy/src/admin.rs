//! The admin API, on its own port (`--admin`, 127.0.0.1:8090 by default):
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /health` | the proxy is up; how many backends are |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/backends` | every backend: state, why, weight, counters |
//! | `PUT /v1/backends/{name}/weight` | `{"weight": N}`: set a weight (token) |
//! | `POST /v1/backends/{name}/drain` | no new requests to it (token) |
//! | `POST /v1/backends/{name}/undrain` | back in rotation (token) |
//! | `POST /v1/reload` | read the configuration file again, as SIGHUP does (token) |
//! | `GET /v1/route` | the cluster route's view of the data tier |
//! | `GET /v1/tcp` | the TCP pools: each server's role, lag, checks, sessions, bytes |
//!
//! Changes need the admin token: `Authorization: Bearer <token>`, or a `Keel-Auth`
//! signature made with it.

// Handlers return `Result<_, Response>`: the error side is a finished answer.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use keel_auth::Principal;
use keel_core::ApiError;
use keel_http::error_response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Proxy;
use crate::backend::Backend;
use crate::health::State as HealthState;

/// Serves the admin API until `stop` turns true, with the limits every keel server has
/// (see [`keel_http::serve_draining`]).
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let (stopping, _) = watch::channel(false);
    let tls = proxy.tls().cloned();
    keel_http::serve_draining(
        listener,
        router(proxy),
        shutdown,
        std::time::Duration::from_secs(5),
        stopping,
        tls.as_ref(),
    )
    .await;
}

/// The admin routes.
pub fn router(proxy: Arc<Proxy>) -> Router {
    let guard = Arc::clone(proxy.guard());
    let routes = keel_http::json_fallbacks(
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/v1/backends", get(backends))
            .route("/v1/backends/{name}/weight", put(set_weight))
            .route("/v1/backends/{name}/drain", post(drain))
            .route("/v1/backends/{name}/undrain", post(undrain))
            .route("/v1/reload", post(reload))
            .route("/v1/route", get(cluster))
            .route("/v1/tcp", get(tcp)),
        "docs/proxy.md, \"Admin API\"",
    )
    .with_state(proxy);
    keel_http::guarded(routes, guard)
}

type Answer = Result<Response, Response>;

async fn health(State(proxy): State<Arc<Proxy>>) -> Response {
    let table = proxy.table();
    let up = table.pool.backends.iter().filter(|b| b.is_up()).count();
    axum::Json(json!({
        "status": "ok",
        "backends": table.pool.backends.len(),
        "backends_up": up,
        "cluster": table.cluster.as_ref().map(|c| c.monitor.clone()),
        "last_reload": proxy.last_reload(),
    }))
    .into_response()
}

async fn metrics(State(proxy): State<Arc<Proxy>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&proxy),
    )
        .into_response()
}

async fn backends(State(proxy): State<Arc<Proxy>>) -> Response {
    let table = proxy.table();
    let now = Instant::now();
    let pool: Vec<Value> = table
        .pool
        .backends
        .iter()
        .map(|b| describe(b, Some(&table.pool.policy), now))
        .collect();
    let nodes: Vec<Value> = table
        .cluster
        .as_ref()
        .map(|c| {
            c.backends()
                .iter()
                .map(|b| describe(b, None, now))
                .collect()
        })
        .unwrap_or_default();
    axum::Json(json!({
        "balance": table.pool.balance,
        "backends": pool,
        "data_nodes": nodes,
        "retry_budget": {
            "remaining": table.pool.budget.snapshot().remaining,
            "exhausted_total": proxy.stats.budget_exhausted.load(Ordering::Relaxed),
        },
    }))
    .into_response()
}

fn describe(b: &Backend, policy: Option<&crate::health::Policy>, now: Instant) -> Value {
    let health = b.health();
    let state = if b.is_drained() {
        "drained"
    } else {
        match health.state() {
            HealthState::Up if policy.is_some_and(|p| health.warming(now, p)) => "warming",
            HealthState::Up => "up",
            HealthState::Down if health.ejected_until().is_some() => "ejected",
            HealthState::Down => "down",
        }
    };
    let s = &b.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "name": b.name,
        "url": b.url,
        "state": state,
        "why": health.why(),
        "weight": b.weight(),
        "weight_share": policy.map(|p| health.weight_factor(now, p)),
        "ejected_for_ms": health
            .ejected_until()
            .map(|until| until.saturating_duration_since(now).as_millis() as u64),
        "in_flight": b.in_flight.load(Ordering::Relaxed),
        "requests": load(&s.requests),
        "responses": {
            "1xx": load(&s.answers[0]), "2xx": load(&s.answers[1]), "3xx": load(&s.answers[2]),
            "4xx": load(&s.answers[3]), "5xx": load(&s.answers[4]),
        },
        "connect_failures": load(&s.connect_failures),
        "failures": load(&s.failures),
        "retries": load(&s.retries),
        "ejections": load(&s.ejections),
        "check_downs": load(&s.downs),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

async fn set_weight(
    State(proxy): State<Arc<Proxy>>,
    Path(name): Path<String>,
    signed: Signed,
    body: Bytes,
) -> Answer {
    let backend = authorized_backend(&proxy, &signed, &name)?;
    let parsed: WeightBody = serde_json::from_slice(&body).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new("bad_body", format!("expected {{\"weight\": N}}: {e}")),
        )
    })?;
    if !(1..=1000).contains(&parsed.weight) {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "bad_weight",
                format!("{} is out of range: weights are 1 to 1000", parsed.weight),
            ),
        ));
    }
    backend.set_weight(parsed.weight);
    tracing::info!(backend = %name, weight = parsed.weight, "weight set through the admin API");
    Ok(axum::Json(json!({"name": name, "weight": parsed.weight})).into_response())
}

async fn drain(
    State(proxy): State<Arc<Proxy>>,
    Path(name): Path<String>,
    signed: Signed,
) -> Answer {
    set_drained(&proxy, &signed, &name, true)
}

async fn undrain(
    State(proxy): State<Arc<Proxy>>,
    Path(name): Path<String>,
    signed: Signed,
) -> Answer {
    set_drained(&proxy, &signed, &name, false)
}

fn set_drained(proxy: &Proxy, signed: &Signed, name: &str, drained: bool) -> Answer {
    let backend = authorized_backend(proxy, signed, name)?;
    backend.set_drained(drained);
    tracing::info!(backend = %name, drained, "drain set through the admin API");
    Ok(axum::Json(json!({
        "name": name,
        "drained": drained,
        "in_flight": backend.in_flight.load(Ordering::Relaxed),
    }))
    .into_response())
}

async fn reload(State(proxy): State<Arc<Proxy>>, signed: Signed) -> Answer {
    authorize(&proxy, &signed)?;
    match proxy.reload() {
        Ok(outcome) => Ok(axum::Json(outcome).into_response()),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "config_refused",
                format!("the old configuration keeps serving: {e}"),
            ),
        )),
    }
}

async fn cluster(State(proxy): State<Arc<Proxy>>) -> Answer {
    let table = proxy.table();
    let Some(cluster) = &table.cluster else {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            ApiError::new(
                "no_cluster_route",
                "this proxy has no cluster route (--cluster)",
            ),
        ));
    };
    let view = cluster.snapshot();
    Ok(axum::Json(json!({
        "monitor": cluster.monitor,
        "prefix": cluster.prefix,
        "version": view.version,
        "epoch": view.epoch,
        "primary": view.primary.as_ref().map(|b| json!({"node": b.name, "url": b.url})),
        "standbys": view.standbys.iter().map(|b| json!({"node": b.name, "url": b.url})).collect::<Vec<_>>(),
        "failover": view.failover.as_ref().map(|(from, to)| json!({"from": from, "to": to})),
        "monitor_error": view.monitor_error,
    }))
    .into_response())
}

async fn tcp(State(proxy): State<Arc<Proxy>>) -> Response {
    use crate::tcp::pools::{Port, Role};
    use crate::tcp::serve::port_label;
    let pools: Vec<Value> = proxy
        .tcp
        .iter()
        .map(|pool| {
            let rw = pool.eligible(Port::ReadWrite);
            let ro = pool.eligible(Port::ReadOnly);
            let servers: Vec<Value> = pool
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let last = s.last_check();
                    let seen = last.as_ref().and_then(|r| r.as_ref().ok());
                    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                    json!({
                        "name": s.name,
                        "addr": s.addr.to_string(),
                        "up": pool.is_up(i),
                        "role": seen.map(|x| match x.role { Role::Primary => "primary", Role::Standby => "standby" }),
                        // null when unknown (nothing replayed since the standby started).
                        "lag_seconds": seen.filter(|x| x.lag != std::time::Duration::MAX).map(|x| x.lag.as_secs_f64()),
                        "last_check_error": last.as_ref().and_then(|r| r.as_ref().err()),
                        "in_read_write": rw.contains(&i),
                        "in_read_only": ro.contains(&i),
                        "sessions_open": {
                            port_label(Port::ReadWrite): s.stats.open[0].load(Ordering::Relaxed),
                            port_label(Port::ReadOnly): s.stats.open[1].load(Ordering::Relaxed),
                        },
                        "sessions_total": {
                            port_label(Port::ReadWrite): n(&s.stats.sessions[0]),
                            port_label(Port::ReadOnly): n(&s.stats.sessions[1]),
                        },
                        "bytes_in": n(&s.stats.bytes_in),
                        "bytes_out": n(&s.stats.bytes_out),
                        "connect_failures": n(&s.stats.connect_failures),
                        "closed_on_role_change": n(&s.stats.closed_on_move),
                        "checks_ok": n(&s.stats.checks_ok),
                        "checks_failed": n(&s.stats.checks_failed),
                    })
                })
                .collect();
            json!({
                "name": pool.config.name,
                "read_write": pool.config.read_write.to_string(),
                "read_only": pool.config.read_only.to_string(),
                "balance": pool.config.balance,
                "max_lag_seconds": pool.config.max_lag.as_secs_f64(),
                "refused": {
                    port_label(Port::ReadWrite): pool.refused[0].load(Ordering::Relaxed),
                    port_label(Port::ReadOnly): pool.refused[1].load(Ordering::Relaxed),
                },
                "servers": servers,
            })
        })
        .collect();
    axum::Json(json!({ "pools": pools })).into_response()
}

/// Who signed the request, if anyone (the guard checked it).
type Signed = Option<Extension<Principal>>;

fn authorize(proxy: &Proxy, signed: &Signed) -> Result<(), Response> {
    proxy
        .guard()
        .require_admin(signed.as_ref().map(|Extension(p)| p))
}

fn authorized_backend(
    proxy: &Proxy,
    signed: &Signed,
    name: &str,
) -> Result<Arc<Backend>, Response> {
    authorize(proxy, signed)?;
    proxy.backend(name).ok_or_else(|| {
        let known: Vec<String> = proxy
            .table()
            .pool
            .backends
            .iter()
            .map(|b| b.name.clone())
            .collect();
        error_response(
            StatusCode::NOT_FOUND,
            ApiError::new(
                "no_such_backend",
                format!(
                    "no backend is named {name:?}; the backends are {}",
                    known.join(", ")
                ),
            ),
        )
    })
}
