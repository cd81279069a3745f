//! The dashboard: a web page `keel up` serves on its control port (`http://127.0.0.1:8060/`)
//! that shows the whole system live and breaks it from buttons.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page (its script and style are embedded in the binary: no CDN) |
//! | `GET /dashboard.js`, `GET /dashboard.css` | the script and the style |
//! | `GET /v1/state` | one JSON snapshot: every process and its state, the monitors' views (the data tier's, PostgreSQL's), the proxy's backends and TCP pools |
//! | `GET /v1/feed` | server-sent events: every line `keel up` prints ([`crate::feed`]), `?since=N` to replay |
//!
//! `keel dashboard` ([`serve`]) serves the same page for a stack started by hand, from its
//! monitor and its proxy.
//!
//! The buttons call the control API's own routes (`POST /v1/processes/{name}/{action}`,
//! `/v1/partition`, `/v1/heal`) with the admin token the page asks for once; without it
//! they are refused and the page says so. Reading needs no token, as for `keel chaos
//! list`; the control port listens on 127.0.0.1 only.

mod standalone;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_core::ApiError;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::control::Command;
use crate::feed::{FeedLine, feed};
use crate::monitor::MonitorClient;

pub use standalone::{DashboardError, DashboardSettings, serve};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// How long one read of the monitor or the proxy may take for a snapshot.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// The monitors the page shows.
#[derive(Clone)]
pub(crate) struct Monitors {
    /// The data tier's monitor (or its group); `None` without a data tier.
    pub(crate) data_tier: Option<MonitorClient>,
    /// PostgreSQL's, under `keel up --postgres` and `keel pg`.
    pub(crate) postgres: Option<MonitorClient>,
}

/// What the page's snapshot is read from.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) http: reqwest::Client,
    pub(crate) monitors: Monitors,
    /// The proxy's admin API.
    pub(crate) proxy_admin: String,
    /// Never turns true: the feed's streams end when keel up aborts the server.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

/// The dashboard's routes.
pub(crate) fn router(context: Context) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/v1/state", get(state))
        .route("/v1/feed", get(stream))
        .with_state(Arc::new(context))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// One snapshot of everything, each part read at once; a part that does not answer is
/// `null` with the reason beside it, and the rest is still shown.
async fn state(State(context): State<Arc<Context>>) -> Response {
    let processes = async {
        let (tx, rx) = oneshot::channel();
        context.commands.send(Command::List(tx)).await.ok()?;
        rx.await.ok()
    };
    let view = |monitor: Option<MonitorClient>| async move {
        match monitor {
            Some(monitor) => monitor.view().await,
            None => None,
        }
    };
    let cluster = view(context.monitors.data_tier.clone());
    let pg_cluster = view(context.monitors.postgres.clone());
    let admin = |path: &'static str| {
        let url = format!("{}{path}", context.proxy_admin);
        let http = context.http.clone();
        async move {
            let answer = http.get(&url).timeout(READ_TIMEOUT).send().await;
            match answer {
                Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
                _ => None,
            }
        }
    };
    let metrics = async {
        let url = format!("{}/metrics", context.proxy_admin);
        match context.http.get(&url).timeout(READ_TIMEOUT).send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        }
    };
    let (processes, cluster, pg_cluster, backends, tcp, metrics) = tokio::join!(
        processes,
        cluster,
        pg_cluster,
        admin("/v1/backends"),
        admin("/v1/tcp"),
        metrics
    );
    let latency = metrics.as_deref().map(latency_buckets);
    // Under a monitor of several groups: every group's view and the slot table.
    let (groups, slots) = match (&context.monitors.data_tier, &cluster) {
        (Some(monitor), Some(first)) if first.groups.len() > 1 => {
            let views = futures::future::join_all(
                first
                    .groups
                    .iter()
                    .map(|g| async move { (g.clone(), monitor.of_group(g).view().await) }),
            );
            let (views, slots) = tokio::join!(views, monitor.slots());
            (Some(group_parts(&views, slots.as_ref())), slots)
        }
        _ => (None, None),
    };
    axum::Json(serde_json::json!({
        "groups": groups,
        "slots": slots,
        "processes": processes,
        "data_tier": context.monitors.data_tier.is_some(),
        "cluster": cluster,
        "monitor_error": (context.monitors.data_tier.is_some() && cluster.is_none())
            .then_some("the monitor does not answer"),
        "postgres": context.monitors.postgres.is_some(),
        "pg_cluster": pg_cluster,
        "pg_monitor_error": (context.monitors.postgres.is_some() && pg_cluster.is_none())
            .then_some("PostgreSQL's monitor does not answer"),
        "backends": backends,
        "proxy_error": backends.is_none().then_some("the proxy's admin API does not answer"),
        "tcp": tcp,
        "latency_buckets": latency,
    }))
    .into_response()
}

/// Each group's view with its slots, as the page shows them.
fn group_parts(
    views: &[(
        keel_core::slots::GroupId,
        Option<keel_client::wire::ClusterView>,
    )],
    table: Option<&keel_core::slots::SlotTable>,
) -> Vec<serde_json::Value> {
    views
        .iter()
        .map(|(group, view)| {
            let slots =
                table.map(|t| format!("{} ({} slots)", t.slots_text(group), t.count(group)));
            serde_json::json!({"group": group, "view": view, "slots": slots})
        })
        .collect()
}

/// The proxy's answer-time histogram summed over its backends, from its `/metrics`:
/// `(upper bound in seconds, answers at most that slow so far)`, cumulative, the last
/// bound `None` for `+Inf`. The page turns two of these a second apart into that
/// second's p99.
fn latency_buckets(metrics: &str) -> Vec<(Option<f64>, u64)> {
    let mut sums: Vec<(Option<f64>, u64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("keel_proxy_backend_latency_seconds_bucket{") else {
            continue;
        };
        let Some((labels, count)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .map(|v| v.trim_end_matches('"'))
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            None
        } else {
            match le.parse::<f64>() {
                Ok(b) => Some(b),
                Err(_) => continue,
            }
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        match sums.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, sum)) => *sum += count,
            None => sums.push((bound, count)),
        }
    }
    sums.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    sums
}

/// `?since=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    since: Option<u64>,
}

/// `GET /v1/feed`: the lines after `since` (or the `Last-Event-ID`), then each new one.
async fn stream(
    State(context): State<Arc<Context>>,
    query: Result<Query<Since>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let since = match query {
        Ok(Query(q)) => q.since,
        Err(e) => {
            return keel_http::error_response(
                StatusCode::BAD_REQUEST,
                ApiError::new(
                    "bad_query",
                    format!("?since= takes a line's id (a whole number): {e}"),
                ),
            );
        }
    };
    let (past, live) = feed().subscribe(keel_http::events_since(since, &headers).unwrap_or(0));
    keel_http::event_stream(past, live, id_and_source, context.stopping.clone())
}

fn id_and_source(line: &FeedLine) -> (u64, String) {
    (line.id, "line".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_latency_buckets_are_summed_over_backends_in_order() {
        let metrics = "# HELP x\n\
            keel_proxy_backend_latency_seconds_bucket{backend=\"a\",le=\"0.005\"} 3\n\
            keel_proxy_backend_latency_seconds_bucket{backend=\"a\",le=\"+Inf\"} 4\n\
            keel_proxy_backend_latency_seconds_bucket{backend=\"b\",le=\"0.005\"} 1\n\
            keel_proxy_backend_latency_seconds_bucket{backend=\"b\",le=\"+Inf\"} 2\n\
            keel_proxy_backend_latency_seconds_count{backend=\"b\"} 2\n\
            keel_proxy_backend_latency_seconds_bucket{backend=\"c\",le=\"0.0005\"} 7\n";
        assert_eq!(
            super::latency_buckets(metrics),
            [(Some(0.0005), 7), (Some(0.005), 4), (None, 6)]
        );
        assert!(super::latency_buckets("garbage {le=\"x\"} y").is_empty());
    }
}
