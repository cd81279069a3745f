//! HTTP helpers every keel server shares, so that every one of them answers a wrong route,
//! a wrong method or a bad body with the same JSON shape ([`ApiError`]).

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

/// The live part of an event stream (`/v1/events`): each message of `rx` until the
/// channel closes. A reader too slow to keep up (the channel lagged) is disconnected
/// rather than shown a stream with a gap; it reconnects with `?since=` and is replayed
/// what it missed.
pub fn live_events<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(message) => Some((message, rx)),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event stream client too slow; disconnecting it");
                None
            }
            Err(RecvError::Closed) => None,
        }
    })
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

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for at most `grace`. `stopping` turns true the moment shutdown begins, so that
/// the server's other tasks can stop with it.
pub async fn serve_draining(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
    stopping: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    let mut stopped = stopping.subscribe();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("stopping: draining in-flight requests");
        let _ = stopping.send(true);
    });
    tokio::select! {
        r = server => r,
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "requests still open after the grace period; stopping anyway");
            Ok(())
        }
    }
}
