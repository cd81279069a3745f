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

/// What a server checks of the credentials a request carries, and how it signs its
/// answers to members ([`crate::auth`]).
#[derive(Debug)]
pub struct Guard {
    /// The id this server signs its answers as.
    id: String,
    /// Names the server in messages ("monitor", "node").
    what: &'static str,
    verifier: std::sync::Mutex<crate::auth::Verifier>,
    admin: Option<crate::token::Token>,
}

/// How long a signed request's body may take to arrive: its signature covers the body,
/// so it is read before the handler runs.
pub const SIGNED_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest body of a signed request.
pub const MAX_SIGNED_BODY: usize = 1 << 20;

impl Guard {
    /// A guard for the server `what`, signing as `id`, checking member signatures with
    /// `secret` and operator credentials against `admin`; `hosts` are the hosts it
    /// answers to.
    pub fn new(
        what: &'static str,
        id: impl Into<String>,
        secret: Option<&crate::auth::ClusterSecret>,
        admin: Option<&crate::token::Token>,
        hosts: crate::auth::Hosts,
    ) -> Guard {
        let verifier = crate::auth::Verifier::new(
            secret.map(crate::auth::ClusterSecret::key),
            admin.map(crate::auth::Key::admin),
            hosts,
        );
        Guard {
            id: id.into(),
            what,
            verifier: std::sync::Mutex::new(verifier),
            admin: admin.cloned(),
        }
    }

    /// A guard that checks nothing and signs nothing: a server with neither credential.
    pub fn open(what: &'static str) -> Guard {
        Guard::new(what, what, None, None, crate::auth::Hosts::any())
    }

    /// Whether member routes need a member's signature (the server holds the secret).
    pub fn members_only(&self) -> bool {
        self.verifier().has_member_key()
    }

    fn verifier(&self) -> std::sync::MutexGuard<'_, crate::auth::Verifier> {
        // A panic while holding it leaves a cache that is still consistent: take it.
        self.verifier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses a request on a member route that no member signed, or that a member
    /// signed for another: `speaks_for` is the node the request speaks for (a heartbeat's
    /// `node`), which must be the signer. Open when the server holds no secret (loopback
    /// only; see docs/security.md).
    #[allow(clippy::result_large_err)]
    pub fn require_member(
        &self,
        principal: Option<&crate::auth::Principal>,
        speaks_for: Option<&str>,
    ) -> Result<(), Response> {
        if !self.members_only() {
            return Ok(());
        }
        match principal {
            Some(crate::auth::Principal::Member(id)) => match speaks_for {
                Some(node) if node != id => Err(error_response(
                    StatusCode::FORBIDDEN,
                    ApiError::new(
                        "wrong_member",
                        format!(
                            "the request speaks for {node} but is signed by {id}; a member speaks only for itself"
                        ),
                    ),
                )),
                _ => Ok(()),
            },
            _ => Err(error_response(
                StatusCode::UNAUTHORIZED,
                ApiError::new(
                    "members_only",
                    format!(
                        "this {} takes this request only from a member of its cluster: sign it with the cluster secret (Keel-Auth, docs/security.md)",
                        self.what
                    ),
                ),
            )),
        }
    }

    /// Refuses an operator action without the admin credential: `403 admin_disabled`
    /// when this server has no admin token, `401 unauthorized` without it.
    #[allow(clippy::result_large_err)]
    pub fn require_admin(
        &self,
        principal: Option<&crate::auth::Principal>,
    ) -> Result<(), Response> {
        let authorized = matches!(principal, Some(crate::auth::Principal::Admin));
        crate::token::check_admin(self.admin.as_ref(), authorized, self.what)
            .map_err(|(status, error)| error_response(status, error))
    }
}

/// Adds `guard` to `router`: every request's credential is checked before it reaches a
/// handler, which finds who sent it as an `Option<Extension<Principal>>`; an answer to a
/// member is signed.
pub fn guarded(router: axum::Router, guard: std::sync::Arc<Guard>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(guard, authenticate))
}

fn unauthorized(code: &str, message: String) -> Response {
    error_response(StatusCode::UNAUTHORIZED, ApiError::new(code, message))
}

async fn authenticate(
    axum::extract::State(guard): axum::extract::State<std::sync::Arc<Guard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::auth::{AUTH_HEADER, Claim, Principal, RequestParts, body_digest};
    let signed = request
        .headers()
        .get(AUTH_HEADER)
        .map(|v| v.to_str().map(str::to_owned));
    let (mut request, principal, nonce) = match signed {
        Some(Err(_)) => {
            return unauthorized(
                "bad_signature_header",
                "the Keel-Auth header is not ASCII".to_owned(),
            );
        }
        Some(Ok(header)) => {
            let claim = match Claim::parse(&header) {
                Ok(c) => c,
                Err(e) => return unauthorized(e.code(), e.to_string()),
            };
            let (parts, body) = request.into_parts();
            let read = tokio::time::timeout(
                SIGNED_BODY_TIMEOUT,
                axum::body::to_bytes(body, MAX_SIGNED_BODY),
            )
            .await;
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(_)) => {
                    return error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ApiError::new(
                            "body_too_large",
                            format!(
                                "a signed request's body is read whole first, and this one is over {MAX_SIGNED_BODY} bytes or broke off"
                            ),
                        ),
                    );
                }
                Err(_) => {
                    return error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        ApiError::new(
                            "body_timeout",
                            format!("the body did not arrive within {SIGNED_BODY_TIMEOUT:?}"),
                        ),
                    );
                }
            };
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .unwrap_or("");
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let digest = body_digest(&bytes);
            let over = RequestParts {
                method: parts.method.as_str(),
                host,
                path,
                body: &digest,
            };
            let checked = guard
                .verifier()
                .verify(&claim, &over, crate::auth::unix_ms());
            match checked {
                Ok(principal) => (
                    axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes)),
                    Some(principal),
                    Some(claim.nonce),
                ),
                Err(crate::auth::AuthError::WrongKind { got }) => {
                    let message = if got == "member" {
                        format!(
                            "this {} holds no cluster secret, so it cannot check a member's signature; start it with --cluster-secret-file (docs/security.md)",
                            guard.what
                        )
                    } else {
                        format!(
                            "this {} holds no admin token (--token-file or KEEL_TOKEN)",
                            guard.what
                        )
                    };
                    return unauthorized("wrong_credential", message);
                }
                Err(e) => {
                    tracing::warn!(signer = %claim.signer, error = %e, "refused a signed request");
                    return unauthorized(e.code(), e.to_string());
                }
            }
        }
        None => {
            let bearer = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let admin = guard
                .admin
                .as_ref()
                .is_some_and(|t| t.matches_header(bearer));
            (request, admin.then_some(Principal::Admin), None)
        }
    };
    let member = matches!(principal, Some(Principal::Member(_)));
    if let Some(p) = principal {
        request.extensions_mut().insert(p);
    }
    let response = next.run(request).await;
    match (member, nonce) {
        (true, Some(nonce)) => sign_answer(&guard, &nonce, response).await,
        _ => response,
    }
}

/// Signs an answer to a member over its status and body. An event stream's body is not
/// read (it lasts as long as the stream): its signature covers the status only, which a
/// member's client expects for a stream.
async fn sign_answer(guard: &Guard, nonce: &str, response: Response) -> Response {
    let Some(key) = guard.verifier().member_key().cloned() else {
        return response;
    };
    let streamed = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
    let status = response.status().as_u16();
    let (mut parts, body) = response.into_parts();
    let (body, digest) = if streamed {
        (body, None)
    } else {
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                let digest = crate::auth::body_digest(&bytes);
                (axum::body::Body::from(bytes), Some(digest))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an answer to sign it");
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ApiError::new("answer_failed", "the answer could not be read to be signed"),
                );
            }
        }
    };
    let header = key.sign_response(&guard.id, nonce, status, digest.as_ref());
    if let Ok(value) = http::HeaderValue::from_str(&header) {
        parts.headers.insert(crate::auth::AUTH_HEADER, value);
    }
    Response::from_parts(parts, body)
}

/// How long a client may take to send a request's head; then its connection is closed, so
/// that a client sending a byte now and then (slowloris) cannot hold a connection.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Connections a server serves at once. At the limit it stops accepting, and the next
/// clients wait in the kernel's queue until one leaves, so that a flood of connections
/// cannot exhaust its file descriptors.
pub const MAX_CONNECTIONS: u32 = 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for at most `grace`. `stopping` turns true the moment shutdown begins, so that
/// the server's other tasks (event streams among them) can stop with it. Connections are
/// bounded by [`HEADER_READ_TIMEOUT`] and [`MAX_CONNECTIONS`].
pub async fn serve_draining(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
    stopping: tokio::sync::watch::Sender<bool>,
) {
    let limits = Limits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_connections: MAX_CONNECTIONS,
    };
    serve_with(listener, router, shutdown, grace, stopping, limits).await
}

/// What one connection may take.
struct Limits {
    header_read_timeout: std::time::Duration,
    max_connections: u32,
}

// The loop is written here rather than taken from `axum::serve`, which has neither a
// header-read timeout nor a connection limit. Connections may be upgraded (a node's
// replication stream is): an upgraded connection leaves the server's count and is not
// waited for when it stops.
async fn serve_with(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
    stopping: tokio::sync::watch::Sender<bool>,
    limits: Limits,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // A permit per open connection: when they are all back, every connection is done.
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = std::sync::Arc::clone(&open).acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            break;
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection that went before it was
                    // taken: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let connection = http
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            )
            .with_upgrades();
        let mut stop = stopping.subscribe();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                    // The request in flight is finished, then the connection closed.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    tracing::info!("stopping: draining in-flight requests");
    let _ = stopping.send(true);
    drop(listener);
    tokio::select! {
        _ = open.acquire_many(limits.max_connections) => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "requests still open after the grace period; stopping anyway");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;

    /// A server answering `GET /` with "ok", and what stops it.
    async fn start(max_connections: u32) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = oneshot::channel::<()>();
        let (stopping, _) = tokio::sync::watch::channel(false);
        let limits = Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections,
        };
        let shutdown = async {
            let _ = stopped.await;
        };
        let server = tokio::spawn(serve_with(
            listener,
            router,
            shutdown,
            Duration::from_secs(1),
            stopping,
            limits,
        ));
        (addr, stop, server)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    /// Sends `GET /` and reads its answer (which is short: one read).
    async fn get(stream: &mut TcpStream) -> String {
        stream.write_all(GET).await.expect("write");
        let mut answer = vec![0; 4096];
        let n = stream.read(&mut answer).await.expect("read");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_still_unfinished_after_the_timeout_loses_its_connection() {
        let (addr, stop, server) = start(8).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest).await;
        let waited = started.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT && waited < HEADER_READ_TIMEOUT * 2,
            "closed after {waited:?}"
        );
        assert!(
            !String::from_utf8_lossy(&rest).contains("200 OK"),
            "{rest:?}"
        );
        // A client that sends its head whole is served.
        let mut quick = TcpStream::connect(addr).await.expect("connect");
        let answer = get(&mut quick).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        let _ = stop.send(());
        server.await.expect("server");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_connection_limit_the_next_client_waits_until_one_leaves() {
        let (addr, stop, server) = start(1).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        // The kernel takes the second connection; the server does not serve it while the
        // first is open.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        second.write_all(GET).await.expect("write");
        let mut answer = vec![0; 4096];
        let waited = tokio::time::timeout(Duration::from_secs(5), second.read(&mut answer)).await;
        assert!(
            waited.is_err(),
            "served while the first was open: {waited:?}"
        );
        drop(first);
        let n = second.read(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let _ = stop.send(());
        server.await.expect("server");
    }
}
