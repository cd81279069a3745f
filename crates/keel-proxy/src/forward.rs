//! The request path: check and rewrite a client's request, send it to a backend, retry on
//! another one when that is safe, and pass the answer back.
//!
//! **When a request is retried.** At once and on a different backend, and only while the
//! pool's retry budget allows it:
//! - the connection could not be made: always, whatever the method, since nothing reached
//!   the backend;
//! - the request went out and the connection broke, or the answer is 502, 503 or 504: only
//!   for an idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and only when the
//!   request has no body, since a body that has gone out cannot be sent again. A POST
//!   whose body was sent is never retried: the backend may have acted on it.

// Handlers return `Result<_, Response>`: the error side is a finished answer.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use keel_core::ApiError;
use keel_core::headers::KEEL_BACKEND;
use tokio::time::Instant;

use crate::Proxy;
use crate::backend::{Backend, ConnectError, InFlight, UpBody};
use crate::body::{ProxyBody, Returning};
use crate::config::Config;
use crate::pool::Pool;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEEL_BACKEND_HEADER: HeaderName = HeaderName::from_static(KEEL_BACKEND);

/// Headers that describe one hop, not the message (RFC 9110, 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Serves one client request.
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    proxy.stats.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = request_id(request.headers());
    let mut response = match prepare(request, peer, &request_id) {
        Err(refusal) => {
            proxy.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            refusal
        }
        Ok(request) => {
            let table = proxy.table();
            match &table.cluster {
                Some(cluster) if cluster.routes(request.uri().path()) => {
                    crate::cluster::forward(&table.config, cluster, request).await
                }
                _ => forward(&proxy, &table.config, &table.pool, request).await,
            }
        }
    };
    if response.extensions().get::<Local>().is_some() {
        proxy.stats.local_answers.fetch_add(1, Ordering::Relaxed);
    }
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    Ok(response)
}

/// Marks an answer the proxy made itself, for the metrics.
#[derive(Debug, Clone, Copy)]
struct Local;

/// Checks a request and rewrites it for the backend: origin-form target, no hop-by-hop
/// headers, `X-Forwarded-For` and `X-Request-Id` added.
fn prepare(
    request: Request<Incoming>,
    peer: SocketAddr,
    request_id: &HeaderValue,
) -> Result<Request<Incoming>, Response<ProxyBody>> {
    let (mut parts, body) = request.into_parts();
    if parts.version == Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
        return Err(local(
            StatusCode::BAD_REQUEST,
            ApiError::new("missing_host", "an HTTP/1.1 request needs a Host header"),
        ));
    }
    if parts.method == Method::CONNECT {
        return Err(local(
            StatusCode::METHOD_NOT_ALLOWED,
            ApiError::new(
                "connect_refused",
                "keel proxy is a reverse proxy: CONNECT tunnels are not offered",
            ),
        ));
    }
    // An absolute-form target (`GET http://host/path`) is sent on as its path; the usual
    // origin-form one is kept as it is, without parsing it again.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = match target.parse() {
            Ok(uri) => uri,
            Err(_) => {
                return Err(local(
                    StatusCode::BAD_REQUEST,
                    ApiError::new("bad_target", format!("{target:?} is not a request target")),
                ));
            }
        };
    }
    strip_hop_by_hop(&mut parts.headers);
    let forwarded = match parts.headers.get(&X_FORWARDED_FOR).map(HeaderValue::to_str) {
        Some(Ok(earlier)) => format!("{earlier}, {}", peer.ip()),
        _ => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// The client's `X-Request-Id` when it is a reasonable one, else a new random one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&X_REQUEST_ID) {
        let ok = (1..=128).contains(&given.len())
            && given
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            return given.clone();
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Whether a method may be sent twice with the effect of once (RFC 9110, 9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends a request to the pool, retrying on another backend where that is safe.
async fn forward(
    proxy: &Proxy,
    config: &Config,
    pool: &Pool,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    pool.budget.deposit_at(Instant::now());
    let (parts, body) = request.into_parts();
    let idempotent = is_idempotent(&parts.method);
    // Nothing to stream: the request can be built again for another backend.
    let replayable = body.is_end_stream();
    let mut streaming = (!replayable).then_some(body);
    // At most `retry.attempts` (10) backends are tried; kept on the stack.
    let mut tried = [usize::MAX; 10];
    let mut tries = 0;
    let mut failure: Option<Response<ProxyBody>> = None;
    loop {
        let Some(pick) = pool.pick(&tried[..tries], Instant::now()) else {
            return failure.unwrap_or_else(|| no_backend(pool));
        };
        if pick.panic {
            proxy.stats.panic_picks.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = tried.get_mut(tries) {
            *slot = pick.index;
        }
        tries += 1;
        let backend = pick.backend;
        let body = match streaming.take() {
            Some(body) => Either::Left(body),
            None => Either::Right(Full::new(Bytes::new())),
        };
        let attempt = rebuild(&parts, body);
        let more = tries < (config.retry.attempts as usize).min(tried.len());
        let in_flight = InFlight::start(Arc::clone(&backend));
        match exchange(
            &backend,
            attempt,
            config.connect_timeout,
            config.request_timeout,
        )
        .await
        {
            Exchange::Answered(response, sender, took) => {
                let status = response.status();
                backend.stats.latency.record(took);
                backend.count_answer(status.as_u16());
                pool.answered(&backend, status.is_server_error(), Instant::now());
                let retryable = matches!(status.as_u16(), 502..=504) && idempotent && replayable;
                if retryable && more && may_retry(proxy, pool, &backend) {
                    failure = Some(pass_back(response, sender, in_flight));
                    continue;
                }
                return pass_back(response, sender, in_flight);
            }
            Exchange::NotSent(request, error) => {
                if let Either::Left(body) = request.into_body() {
                    streaming = Some(body);
                }
                pool.connect_failed(&backend, Instant::now());
                failure = Some(bad_gateway(&backend, &error.to_string(), false));
                if more && may_retry(proxy, pool, &backend) {
                    continue;
                }
                return failure.unwrap_or_else(|| no_backend(pool));
            }
            Exchange::Failed(error) => {
                backend.stats.failures.fetch_add(1, Ordering::Relaxed);
                pool.answered(&backend, true, Instant::now());
                if idempotent && replayable && more && may_retry(proxy, pool, &backend) {
                    failure = Some(bad_gateway(&backend, &error.to_string(), true));
                    continue;
                }
                let why = if idempotent && replayable {
                    "no other backend to try".to_owned()
                } else if !idempotent {
                    format!(
                        "not retried: {} is not idempotent and the request went out",
                        parts.method
                    )
                } else {
                    "not retried: the request's body went out and cannot be sent again".to_owned()
                };
                return bad_gateway(&backend, &format!("{error}; {why}"), true);
            }
            Exchange::TimedOut => {
                backend.stats.failures.fetch_add(1, Ordering::Relaxed);
                pool.answered(&backend, true, Instant::now());
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    ApiError::new(
                        "gateway_timeout",
                        format!(
                            "backend {} did not answer within {:?} (request_timeout)",
                            backend.name, config.request_timeout
                        ),
                    )
                    .with("backend", backend.name.as_str()),
                );
            }
        }
    }
}

/// Takes one retry from the budget, counting it.
fn may_retry(proxy: &Proxy, pool: &Pool, from: &Backend) -> bool {
    if pool.budget.try_withdraw_at(Instant::now()) {
        from.stats.retries.fetch_add(1, Ordering::Relaxed);
        true
    } else {
        proxy.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// A request to send: the client's method, target and headers with `body`.
pub(crate) fn rebuild(parts: &http::request::Parts, body: UpBody) -> Request<UpBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.headers_mut() = parts.headers.clone();
    request
}

/// How one exchange with a backend ended.
pub(crate) enum Exchange {
    /// The answer's head, the connection it came on, and how long it took.
    Answered(Response<Incoming>, SendRequest<UpBody>, Duration),
    /// Nothing reached the backend: the request is handed back.
    NotSent(Request<UpBody>, ConnectError),
    /// The request went out (perhaps partly) and no answer came.
    Failed(hyper::Error),
    /// No answer within the request timeout.
    TimedOut,
}

/// Sends `request` to `backend` on an idle connection if one is open, else a new one.
pub(crate) async fn exchange(
    backend: &Backend,
    mut request: Request<UpBody>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Exchange {
    backend.stats.requests.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    while let Some(mut sender) = backend.checkout() {
        if sender.ready().await.is_err() {
            continue;
        }
        match send(&mut sender, request, request_timeout).await {
            Sent::Answer(response) => {
                return Exchange::Answered(response, sender, started.elapsed());
            }
            // The idle connection had been closed by the backend: try the next one.
            Sent::Back(back) => request = back,
            Sent::Failed(error) => return Exchange::Failed(error),
            Sent::TimedOut => return Exchange::TimedOut,
        }
    }
    let mut sender = match backend.connect(connect_timeout).await {
        Ok(sender) => sender,
        Err(error) => return Exchange::NotSent(request, error),
    };
    match send(&mut sender, request, request_timeout).await {
        Sent::Answer(response) => Exchange::Answered(response, sender, started.elapsed()),
        Sent::Back(back) => Exchange::NotSent(
            back,
            ConnectError::TimedOut {
                addr: backend.addr,
                after: connect_timeout,
            },
        ),
        Sent::Failed(error) => Exchange::Failed(error),
        Sent::TimedOut => Exchange::TimedOut,
    }
}

enum Sent {
    Answer(Response<Incoming>),
    Back(Request<UpBody>),
    Failed(hyper::Error),
    TimedOut,
}

async fn send(
    sender: &mut SendRequest<UpBody>,
    request: Request<UpBody>,
    timeout: Duration,
) -> Sent {
    match tokio::time::timeout(timeout, sender.try_send_request(request)).await {
        Err(_) => Sent::TimedOut,
        Ok(Ok(response)) => Sent::Answer(response),
        Ok(Err(mut error)) => match error.take_message() {
            Some(request) => Sent::Back(request),
            None => Sent::Failed(error.into_error()),
        },
    }
}

/// A backend's answer on its way to the client, naming the backend.
pub(crate) fn pass_back(
    response: Response<Incoming>,
    sender: SendRequest<UpBody>,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let name = in_flight.0.name_header.clone();
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(KEEL_BACKEND_HEADER.clone(), name);
    Response::from_parts(parts, Either::Left(Returning::new(body, sender, in_flight)))
}

/// An answer the proxy makes itself: the JSON error body every keel server uses.
pub(crate) fn local(status: StatusCode, error: ApiError) -> Response<ProxyBody> {
    let body = serde_json::to_vec(&error).unwrap_or_default();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.extensions_mut().insert(Local);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_gateway(backend: &Backend, why: &str, sent: bool) -> Response<ProxyBody> {
    let mut response = local(
        StatusCode::BAD_GATEWAY,
        ApiError::new(
            "bad_gateway",
            format!("backend {} failed: {why}", backend.name),
        )
        .with("backend", backend.name.as_str())
        .with("sent", sent),
    );
    response
        .headers_mut()
        .insert(KEEL_BACKEND_HEADER.clone(), backend.name_header.clone());
    response
}

fn no_backend(pool: &Pool) -> Response<ProxyBody> {
    let why = if pool.backends.is_empty() {
        "this proxy has no backends: only its cluster route (the data tier) is configured"
            .to_owned()
    } else {
        format!(
            "no backend can take the request: {} configured, all drained or already tried",
            pool.backends.len()
        )
    };
    let mut response = local(
        StatusCode::SERVICE_UNAVAILABLE,
        ApiError::new("no_backend", why),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn a_good_request_id_is_kept_and_a_bad_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("a b"));
        let fresh = request_id(&headers);
        assert_eq!(fresh.len(), 16);
        assert_ne!(fresh, "a b");
    }

    #[test]
    fn only_idempotent_methods_are_retried_after_sending() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
