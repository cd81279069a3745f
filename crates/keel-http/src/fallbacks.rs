//! The answers every keel server gives a wrong route, a wrong method or a bad body, in
//! one JSON shape ([`ApiError`]).

use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, Uri};
use keel_core::ApiError;

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
