//! A keeper's HTTP API: `GET /health`, what it and its server are (signed for members,
//! so that the monitor's probe of a suspected primary counts only the keeper's own
//! answer), and `GET /v1/pg`, where its server listens, for the standbys that follow it.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_core::Epoch;
use serde_json::json;

use super::Keeper;

/// The keeper's routes, behind the guard that checks and signs for members.
pub fn router(keeper: Arc<Keeper>) -> Router {
    let guard = keeper.guard.clone();
    let routes = Router::new()
        .route("/health", get(health))
        .route("/v1/pg", get(pg))
        .route("/v1/grant", post(grant))
        .with_state(keeper);
    keel_http::guarded(keel_http::json_fallbacks(routes, "docs/postgres.md"), guard)
}

/// 200 while its server answers, 503 when it does not: a keeper whose server is down is
/// a node that is down.
async fn health(State(keeper): State<Arc<Keeper>>) -> Response {
    let observed = keeper.observed();
    let body = json!({
        "node": keeper.id(),
        "role": keeper.role_now(),
        "epoch": keeper.seen().0,
        "postgres": keeper.pg_address(),
        "in_recovery": observed.as_ref().map(|o| o.in_recovery),
        "lsn": observed.as_ref().map(|o| o.lsn.0),
        "timeline": observed.as_ref().map(|o| o.timeline),
        "standbys": observed.as_ref().map(|o| o.replicas.iter().map(|r| json!({
            "name": r.name, "state": r.state, "flushed": r.flushed.0, "sync_state": r.sync_state,
        })).collect::<Vec<_>>()),
    });
    let status = if observed.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn pg(State(keeper): State<Arc<Keeper>>) -> Response {
    axum::Json(json!({"node": keeper.id(), "address": keeper.pg_address()})).into_response()
}

/// The body of `POST /v1/grant`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    /// The primary's keeper (it must sign as this id).
    from: String,
    /// Its URL, as the monitor's view names it.
    url: String,
    /// The epoch it writes in.
    epoch: u64,
}

async fn grant(
    State(keeper): State<Arc<Keeper>>,
    principal: Option<Extension<keel_auth::Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let request: GrantRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return keel_http::error_response(
                StatusCode::BAD_REQUEST,
                keel_core::error::ApiError::new(
                    "bad_body",
                    format!("expected {{\"from\", \"url\", \"epoch\"}}: {e}"),
                ),
            );
        }
    };
    let principal = principal.map(|Extension(p)| p);
    if let Err(refused) = keeper
        .guard
        .require_member(principal.as_ref(), Some(&request.from))
    {
        return refused;
    }
    match keeper.grant(&request.url, Epoch(request.epoch)) {
        Ok(()) => axum::Json(json!({"granted": true})).into_response(),
        Err(why) => keel_http::error_response(
            StatusCode::CONFLICT,
            keel_core::error::ApiError::new("not_granted", why),
        ),
    }
}
