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
//!
//! The routes are in `server`; [`Control`] is the other end, which `keel chaos` uses.

mod client;
mod server;

use axum::http::StatusCode;
use keel_core::ApiError;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use client::{Control, ControlError, read_up_file};
pub(crate) use server::router;

/// What can be done to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
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
    /// Every action, in the order the messages list them.
    pub const ALL: [Action; 4] = [Action::Kill, Action::Pause, Action::Resume, Action::Restart];

    /// The name in the URL and on the wire: `kill`, `pause`, `resume`, `restart`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Restart => "restart",
        }
    }

    /// The action of that name.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A process as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub name: String,
    pub pid: Option<u32>,
    /// `running`, `paused` or `exited`.
    pub state: String,
    pub url: String,
}

/// The answer to an action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub name: String,
    pub action: Action,
    pub pid: Option<u32>,
    pub state: String,
    pub message: String,
}

/// The body of `POST /v1/partition`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRequest {
    /// The process to cut off.
    pub node: String,
    /// Whom from; empty or absent: every other process of the data tier (and, under
    /// `--netns`, `clients`: everything outside it).
    #[serde(default)]
    pub from: Vec<String>,
}

/// The answer to a partition or a heal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionDone {
    /// `partition` or `heal`.
    pub action: String,
    /// The process cut off (a partition).
    pub node: Option<String>,
    /// Whom from (a partition).
    pub from: Vec<String>,
    /// Every pair of processes cut off from each other now.
    pub partitions: Vec<[String; 2]>,
    /// How: `fault_filter` (keel's own network layer, not the kernel's) or `netns` (the
    /// kernel, between network namespaces).
    pub method: String,
    pub message: String,
}

/// A refusal: the status and the error the control API answers with.
pub type Refused = (StatusCode, ApiError);

/// What the supervisor answers: the result, or a refusal.
type Reply<T> = oneshot::Sender<Result<T, Refused>>;

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
    /// A switchover by hand, asked of the monitors' leader with the admin token.
    Switchover {
        request: SwitchoverRequest,
        reply: Reply<SwitchoverDone>,
    },
}

/// The body of `POST /v1/switchover`: the standby to promote, or none for the best one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    #[serde(default)]
    pub to: Option<String>,
}

/// What the monitor said to a switchover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchoverDone {
    pub message: String,
}

/// What `<data-dir>/up.json` holds: where a running `keel up` can be reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpFile {
    pub control: String,
    pub pid: u32,
    pub monitor: String,
    pub proxy: String,
}

/// The file's name in the data directory.
pub const UP_FILE: &str = "up.json";
