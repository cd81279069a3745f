//! HTTP helpers every keel server shares, so that every one of them answers a wrong route,
//! a wrong method or a bad body with the same JSON shape ([`ApiError`]), checks
//! credentials the same way ([`guard`]) and bounds every connection the same way
//! ([`serve`]).

mod conns;
mod guard;
mod serve;

pub use guard::{Guard, MAX_SIGNED_BODY, SIGNED_BODY_TIMEOUT, guarded};
pub use serve::{Limits, TlsPeer, serve_draining, serve_with};

use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, Uri};

use crate::ApiError;

/// An error answer: a status and an [`ApiError`] body.
pub fn error_response(status: StatusCode, error: ApiError) -> Response {
    (status, axum::Json(error)).into_response()
}

/// The answer for a route that does not exist; `docs` names the page that lists the routes.
pub fn not_found(method: &Method, uri: &Uri, docs: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        ApiError::new(
            "no_route",
            format!("no route for {method} {}; see {docs}", uri.path()),
        ),
    )
}

/// The answer for a route that exists but not with this method.
pub fn method_not_allowed(method: &Method, uri: &Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ApiError::new(
            "method_not_allowed",
            format!("{} does not take {method}", uri.path()),
        ),
    )
}

/// Adds the JSON answers for a route that does not exist ([`not_found`], pointing at
/// `docs`) and for a wrong method ([`method_not_allowed`]) to `router`.
pub fn json_fallbacks<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    docs: &'static str,
) -> axum::Router<S> {
    router
        .fallback(move |method: Method, uri: Uri| async move { not_found(&method, &uri, docs) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            method_not_allowed(&method, &uri)
        })
}

/// Where a `GET /v1/events` reader wants to start: `?since=N`, else the `Last-Event-ID` a
/// reconnecting browser sends; `None` for "only new events".
pub fn events_since(query: Option<u64>, headers: &http::HeaderMap) -> Option<u64> {
    query.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    })
}

/// The answer to `GET /v1/events`: the kept events in `past`, then each new one from
/// `live`, as server-sent events with `id:` and `event:` from `id_and_kind` and the JSON
/// of the event as `data:`. A reader too slow to keep up (the channel lagged) is
/// disconnected rather than shown a gap; it reconnects with `?since=` and is replayed
/// what it missed. The stream ends when `stopping` turns true, or a graceful shutdown
/// would wait for every open stream.
pub fn event_stream<T>(
    past: Vec<T>,
    live: tokio::sync::broadcast::Receiver<T>,
    id_and_kind: fn(&T) -> (u64, String),
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Response
where
    T: serde::Serialize + Clone + Send + Sync + 'static,
{
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let live = futures::stream::unfold(live, |mut rx| async move {
        match rx.recv().await {
            Ok(message) => Some((message, rx)),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event stream client too slow; disconnecting it");
                None
            }
            Err(RecvError::Closed) => None,
        }
    });
    let stream = futures::stream::iter(past)
        .chain(live)
        .map(move |event| {
            let (id, kind) = id_and_kind(&event);
            let data = serde_json::to_string(&event).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(
                Event::default().id(id.to_string()).event(kind).data(data),
            )
        })
        .take_until(async move {
            if stopping.wait_for(|s| *s).await.is_err() {
                // Nobody can stop this server any more: the stream ends with its reader.
                std::future::pending::<()>().await;
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The answer for a body that could not be read: `413 body_too_large` past `limit`, else
/// the rejection's own status with `code`.
pub fn body_rejection(rejection: BytesRejection, limit: usize, code: &str) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        error_response(
            status,
            ApiError::new(
                "body_too_large",
                format!("the body is larger than the limit of {limit} bytes"),
            ),
        )
    } else {
        error_response(status, ApiError::new(code, rejection.body_text()))
    }
}
