//! The control API's routes: each request becomes a [`Command`] for the supervisor's
//! loop, which owns the processes, and its answer goes back as JSON.

// Handlers return `Result<_, Response>`: the error side is a finished answer.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_auth::{Hosts, Principal};
use keel_core::ApiError;
use keel_core::token::Token;
use keel_http::Guard;
use keel_http::{body_rejection, error_response};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{Action, Command, PartitionRequest, Refused, SwitchoverRequest};

/// The largest body the control API reads.
const MAX_BODY: usize = 64 << 10;

struct App {
    guard: Arc<Guard>,
    commands: mpsc::Sender<Command>,
}

/// The routes; requests become [`Command`]s on `commands`.
pub(crate) fn router(token: Option<Token>, commands: mpsc::Sender<Command>) -> Router {
    let routes = Router::new()
        .route("/v1/processes", get(list))
        .route("/v1/processes/{name}/{action}", post(act))
        .route("/v1/partition", post(partition))
        .route("/v1/heal", post(heal))
        .route("/v1/switchover", post(switchover))
        .route("/health", get(|| async { "ok" }));
    let routes = keel_http::json_fallbacks(
        routes,
        "GET /v1/processes, POST /v1/processes/{name}/{action}, POST /v1/partition, POST /v1/heal or POST /v1/switchover",
    )
    .layer(DefaultBodyLimit::max(MAX_BODY));
    let guard = Arc::new(Guard::new(
        "keel up",
        "keel-up",
        None,
        token.as_ref(),
        Hosts::any(),
    ));
    let routes = routes.with_state(Arc::new(App {
        guard: guard.clone(),
        commands,
    }));
    keel_http::guarded(routes, guard)
}

async fn list(State(app): State<Arc<App>>) -> Result<Response, Response> {
    let (tx, rx) = oneshot::channel();
    app.commands
        .send(Command::List(tx))
        .await
        .map_err(|_| stopping())?;
    let processes = rx.await.map_err(|_| stopping())?;
    Ok(axum::Json(serde_json::json!({ "processes": processes })).into_response())
}

/// Who signed the request, if anyone (the guard checked it).
type Signed = Option<Extension<Principal>>;

/// Refuses a request without the admin token.
fn check_token(app: &App, signed: &Signed) -> Result<(), Response> {
    app.guard
        .require_admin(signed.as_ref().map(|Extension(p)| p))
}

async fn act(
    State(app): State<Arc<App>>,
    Path((name, action)): Path<(String, String)>,
    signed: Signed,
) -> Result<Response, Response> {
    check_token(&app, &signed)?;
    let action = Action::parse(&action).ok_or_else(|| {
        error_response(
            StatusCode::NOT_FOUND,
            ApiError::new(
                "no_such_action",
                format!("{action:?} is not an action: kill, pause, resume or restart"),
            ),
        )
    })?;
    let (reply, rx) = oneshot::channel();
    app.commands
        .send(Command::Act {
            name,
            action,
            reply,
        })
        .await
        .map_err(|_| stopping())?;
    match rx.await.map_err(|_| stopping())? {
        Ok(done) => Ok(axum::Json(done).into_response()),
        Err((status, error)) => Err(error_response(status, error)),
    }
}

async fn partition(
    State(app): State<Arc<App>>,
    signed: Signed,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    check_token(&app, &signed)?;
    let body = body.map_err(|r| body_rejection(r, MAX_BODY, "bad_partition"))?;
    let request: PartitionRequest = serde_json::from_slice(&body).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "bad_partition",
                format!("the body is not {{\"node\": \"app1\", \"from\": [\"app2\", …]}}: {e}"),
            ),
        )
    })?;
    let (reply, rx) = oneshot::channel();
    app.commands
        .send(Command::Partition { request, reply })
        .await
        .map_err(|_| stopping())?;
    answer(rx.await.map_err(|_| stopping())?)
}

async fn heal(State(app): State<Arc<App>>, signed: Signed) -> Result<Response, Response> {
    check_token(&app, &signed)?;
    let (reply, rx) = oneshot::channel();
    app.commands
        .send(Command::Heal { reply })
        .await
        .map_err(|_| stopping())?;
    answer(rx.await.map_err(|_| stopping())?)
}

async fn switchover(
    State(app): State<Arc<App>>,
    signed: Signed,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    check_token(&app, &signed)?;
    let body = body.map_err(|r| body_rejection(r, MAX_BODY, "bad_switchover"))?;
    let request: SwitchoverRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SwitchoverRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            error_response(
                StatusCode::BAD_REQUEST,
                ApiError::new(
                    "bad_switchover",
                    format!(
                        "the body is not {{\"to\": \"app2\"}} (or empty, for the best standby): {e}"
                    ),
                ),
            )
        })?
    };
    let (reply, rx) = oneshot::channel();
    app.commands
        .send(Command::Switchover { request, reply })
        .await
        .map_err(|_| stopping())?;
    answer(rx.await.map_err(|_| stopping())?)
}

fn answer<T: Serialize>(result: Result<T, Refused>) -> Result<Response, Response> {
    match result {
        Ok(done) => Ok(axum::Json(done).into_response()),
        Err((status, error)) => Err(error_response(status, error)),
    }
}

fn stopping() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        ApiError::new("shutting_down", "keel up is stopping"),
    )
}
