//! `keel up`'s control API: how `keel chaos` asks the supervisor to kill, pause, resume or
//! restart one of its processes, or to partition the data tier and heal it. The
//! supervisor, not `keel chaos`, carries the action out, since it is the parent that holds
//! the process and reaps it, and writes the fault files its children follow (or, under
//! `--netns`, the rules of their namespaces).
//!
//! On `127.0.0.1:--control-port` (8060). Every action needs the admin token; the address
//! is written to `<data-dir>/up.json` so `keel chaos` finds it.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/processes` | every process: name, pid, state (`running`, `paused`, `exited`), URL |
//! | `POST /v1/processes/{name}/{kill,pause,resume,restart}` | what was done: `{"name", "action", "pid", "state", "message"}` |
//! | `POST /v1/partition` `{"node": "app1", "from": ["app2"]}` | `node` cut off from `from` (every other process of the data tier when empty or absent, and under `--netns` the `clients` too): `{"action", "node", "from", "partitions", "method", "message"}` |
//! | `POST /v1/heal` | every partition ended, same shape |

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

/// The body of `POST /v1/partition`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartitionRequest {
    /// The process to cut off.
    pub(crate) node: String,
    /// Whom from; empty or absent: every other process of the data tier (and, under
    /// `--netns`, `clients`: everything outside it).
    #[serde(default)]
    pub(crate) from: Vec<String>,
}

/// The answer to a partition or a heal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartitionDone {
    /// `partition` or `heal`.
    pub(crate) action: String,
    /// The process cut off (a partition).
    pub(crate) node: Option<String>,
    /// Whom from (a partition).
    pub(crate) from: Vec<String>,
    /// Every pair of processes cut off from each other now.
    pub(crate) partitions: Vec<[String; 2]>,
    /// How: `fault_filter` (keel's own network layer, not the kernel's) or `netns` (the
    /// kernel, between network namespaces).
    pub(crate) method: String,
    pub(crate) message: String,
}

/// What the supervisor answers: the result, or a status and an error.
type Reply<T> = oneshot::Sender<Result<T, (StatusCode, ApiError)>>;

/// A request to the supervisor's main loop, which owns the processes.
pub(crate) enum Command {
    List(oneshot::Sender<Vec<ProcessInfo>>),
    Act {
        name: String,
        action: Action,
        reply: Reply<Done>,
    },
    Partition {
        request: PartitionRequest,
        reply: Reply<PartitionDone>,
    },
    Heal {
        reply: Reply<PartitionDone>,
    },
}

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
        .route("/health", get(|| async { "ok" }));
    let routes = keel_http::json_fallbacks(
        routes,
        "GET /v1/processes, POST /v1/processes/{name}/{action}, POST /v1/partition or POST /v1/heal",
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

fn answer<T: Serialize>(result: Result<T, (StatusCode, ApiError)>) -> Result<Response, Response> {
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
