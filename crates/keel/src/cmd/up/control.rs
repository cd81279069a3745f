//! `keel up`'s control API: how `keel chaos` asks the supervisor to kill, pause, resume or
//! restart one of its processes. The supervisor, not `keel chaos`, carries the action out,
//! since it is the parent that holds the process and reaps it.
//!
//! On `127.0.0.1:--control-port` (8060). Every action needs the admin token; the address
//! is written to `<data-dir>/up.json` so `keel chaos` finds it.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/processes` | every process: name, pid, state (`running`, `paused`, `exited`), URL |
//! | `POST /v1/processes/{name}/{kill,pause,resume,restart}` | what was done: `{"name", "action", "pid", "state", "message"}` |

// Handlers return `Result<_, Response>`: the error side is a finished answer.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_core::ApiError;
use keel_core::http::{error_response, method_not_allowed, not_found};
use keel_core::token::Token;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// What can be done to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// SIGKILL: gone at once, as in a crash.
    Kill,
    /// SIGSTOP: frozen, its sockets open, as in a long GC pause or a hung disk.
    Pause,
    /// SIGCONT after a pause.
    Resume,
    /// Killed if running, then started again with the same command line.
    Restart,
}

impl Action {
    pub(crate) fn parse(s: &str) -> Option<Action> {
        match s {
            "kill" => Some(Action::Kill),
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "restart" => Some(Action::Restart),
            _ => None,
        }
    }
}

/// A process as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProcessInfo {
    pub(crate) name: String,
    pub(crate) pid: Option<u32>,
    /// `running`, `paused` or `exited`.
    pub(crate) state: String,
    pub(crate) url: String,
}

/// The answer to an action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) name: String,
    pub(crate) action: Action,
    pub(crate) pid: Option<u32>,
    pub(crate) state: String,
    pub(crate) message: String,
}

/// A request to the supervisor's main loop, which owns the processes.
pub(crate) enum Command {
    List(oneshot::Sender<Vec<ProcessInfo>>),
    Act {
        name: String,
        action: Action,
        reply: oneshot::Sender<Result<Done, (StatusCode, ApiError)>>,
    },
}

struct App {
    token: Option<Token>,
    commands: mpsc::Sender<Command>,
}

/// The routes; requests become [`Command`]s on `commands`.
pub(crate) fn router(token: Option<Token>, commands: mpsc::Sender<Command>) -> Router {
    Router::new()
        .route("/v1/processes", get(list))
        .route("/v1/processes/{name}/{action}", post(act))
        .route("/health", get(|| async { "ok" }))
        .fallback(fallback)
        .method_not_allowed_fallback(wrong_method)
        .with_state(Arc::new(App { token, commands }))
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

async fn act(
    State(app): State<Arc<App>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    keel_core::token::check_admin(app.token.as_ref(), authorization, "keel up")
        .map_err(|(status, error)| error_response(status, error))?;
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

fn stopping() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        ApiError::new("shutting_down", "keel up is stopping"),
    )
}

async fn fallback(method: Method, uri: Uri) -> Response {
    not_found(
        &method,
        &uri,
        "GET /v1/processes or POST /v1/processes/{name}/{action}",
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    method_not_allowed(&method, &uri)
}

/// What `<data-dir>/up.json` holds: where a running `keel up` can be reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UpFile {
    pub(crate) control: String,
    pub(crate) pid: u32,
    pub(crate) monitor: String,
    pub(crate) proxy: String,
}

/// The file's name in the data directory.
pub(crate) const UP_FILE: &str = "up.json";
