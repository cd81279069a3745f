//! The dashboard: a web page `keel up` serves on its control port (`http://127.0.0.1:8060/`)
//! that shows the whole system live and breaks it from buttons.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page (its script and style are embedded in the binary: no CDN) |
//! | `GET /dashboard.js`, `GET /dashboard.css` | the script and the style |
//! | `GET /v1/state` | one JSON snapshot: every process and its state, the monitor's view, the proxy's backends and TCP pools |
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

/// What the page's snapshot is read from.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) http: reqwest::Client,
    /// The monitor (or the group's leader); `None` without a data tier.
    pub(crate) monitor: Option<MonitorClient>,
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
    let cluster = async {
        match &context.monitor {
            Some(monitor) => monitor.view().await,
            None => None,
        }
    };
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
    let (processes, cluster, backends, tcp) =
        tokio::join!(processes, cluster, admin("/v1/backends"), admin("/v1/tcp"));
    axum::Json(serde_json::json!({
        "processes": processes,
        "data_tier": context.monitor.is_some(),
        "cluster": cluster,
        "monitor_error": (context.monitor.is_some() && cluster.is_none())
            .then_some("the monitor does not answer"),
        "backends": backends,
        "proxy_error": backends.is_none().then_some("the proxy's admin API does not answer"),
        "tcp": tcp,
    }))
    .into_response()
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
