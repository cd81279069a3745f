//! [`Guard`]: what a server checks of the credentials a request carries (a member's
//! signature, an operator's token) before any handler runs, and the signature it puts on
//! its answers to members ([`keel_auth`]).

use axum::response::Response;
use http::StatusCode;

use crate::error_response;
use keel_core::ApiError;

/// What a server checks of the credentials a request carries, and how it signs its
/// answers to members ([`keel_auth`]).
#[derive(Debug)]
pub struct Guard {
    /// The id this server signs its answers as.
    id: String,
    /// Names the server in messages ("monitor", "node").
    what: &'static str,
    verifier: std::sync::Mutex<keel_auth::Verifier>,
    admin: Option<keel_core::token::Token>,
}

/// How long a signed request's body may take to arrive: its signature covers the body,
/// so it is read before the handler runs.
pub const SIGNED_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest body of a signed request: twice a write's largest body, so that a piece
/// of slots on the move (docs/shards.md), which may hold one whole 1 MiB value in
/// base64, fits.
pub const MAX_SIGNED_BODY: usize = 2 << 20;

impl Guard {
    /// A guard for the server `what`, signing as `id`, checking member signatures with
    /// `secret` and operator credentials against `admin`; `hosts` are the hosts it
    /// answers to.
    pub fn new(
        what: &'static str,
        id: impl Into<String>,
        secret: Option<&keel_auth::ClusterSecret>,
        admin: Option<&keel_core::token::Token>,
        hosts: keel_auth::Hosts,
    ) -> Guard {
        let verifier = keel_auth::Verifier::new(
            secret.map(keel_auth::ClusterSecret::key),
            admin.map(keel_auth::Key::admin),
            hosts,
        );
        Guard {
            id: id.into(),
            what,
            verifier: std::sync::Mutex::new(verifier),
            admin: admin.cloned(),
        }
    }

    /// Whether member routes need a member's signature (the server holds the secret).
    pub fn members_only(&self) -> bool {
        self.verifier().has_member_key()
    }

    fn verifier(&self) -> std::sync::MutexGuard<'_, keel_auth::Verifier> {
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
        principal: Option<&keel_auth::Principal>,
        speaks_for: Option<&str>,
    ) -> Result<(), Response> {
        if !self.members_only() {
            return Ok(());
        }
        match principal {
            Some(keel_auth::Principal::Member(id)) => match speaks_for {
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
    pub fn require_admin(&self, principal: Option<&keel_auth::Principal>) -> Result<(), Response> {
        let authorized = matches!(principal, Some(keel_auth::Principal::Admin));
        keel_core::token::check_admin(self.admin.as_ref(), authorized, self.what)
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
    use keel_auth::{AUTH_HEADER, Claim, Principal, RequestParts, body_digest};
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
            let checked = guard.verifier().verify(&claim, &over, keel_auth::unix_ms());
            // Over TLS, a member signs only as the member its certificate names: the
            // secret alone does not let one member speak for another there.
            let checked = match (checked, parts.extensions.get::<crate::TlsPeer>()) {
                (Ok(keel_auth::Principal::Member(id)), Some(peer)) if !peer.names(&id) => {
                    return error_response(
                        StatusCode::FORBIDDEN,
                        ApiError::new(
                            "wrong_member",
                            format!(
                                "signed as member {id}, but the TLS certificate this call came with {}",
                                if peer.cert.is_some() {
                                    "names another"
                                } else {
                                    "is missing"
                                }
                            ),
                        ),
                    );
                }
                (checked, _) => checked,
            };
            match checked {
                Ok(principal) => (
                    axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes)),
                    Some(principal),
                    Some(claim.nonce),
                ),
                Err(keel_auth::AuthError::WrongKind { got }) => {
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
                    // A member's clock or address is wrong: say so where its operator
                    // looks. A forged or replayed request is an outsider's noise.
                    use keel_auth::AuthError::{Busy, Expired, WrongHost};
                    if matches!(e, Expired { .. } | WrongHost { .. } | Busy) {
                        tracing::warn!(signer = %claim.signer, error = %e, "refused a signed request");
                    } else {
                        tracing::debug!(signer = %claim.signer, error = %e, "refused a signed request");
                    }
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
                let digest = keel_auth::body_digest(&bytes);
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
        parts.headers.insert(keel_auth::AUTH_HEADER, value);
    }
    Response::from_parts(parts, body)
}
