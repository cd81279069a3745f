//! The supervisor's decisions, apart from any process: which child stops when, what an
//! action does to a child in the state it is in, and what an exit is reported as. No
//! process, clock or socket here, so that the tests pin each decision exactly.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;

use axum::http::StatusCode;
use keel_core::ApiError;

use crate::control::{Action, Refused};
use crate::plan::{MONITOR, PROXY};

/// Where `name` stops in `keel up`'s order, lowest first: the proxy and the services,
/// which no longer take traffic then; the monitor, so that nothing fails over while the
/// tier stops; the primary, while its standbys still acknowledge its last writes; the
/// standbys. Nodes share a rank when the primary is unknown (the monitor did not answer),
/// and then stop in their start order.
pub(crate) fn stop_rank(name: &str, primary: Option<&str>) -> u8 {
    if name == PROXY {
        0
    } else if name.starts_with("service") {
        1
    } else if name == MONITOR {
        2
    } else if Some(name) == primary {
        3
    } else {
        4
    }
}

/// What an action does to a process, given its pid if it runs and whether it is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// SIGKILL to this pid.
    Kill(u32),
    /// SIGSTOP to this pid.
    Pause(u32),
    /// SIGCONT to this pid.
    Resume(u32),
    /// SIGKILL to this pid if there is one, then the same command line again.
    Restart(Option<u32>),
}

/// The step `action` takes on process `name`, or why it cannot (a conflict with the
/// state the process is in, which the refusal names).
pub(crate) fn step(
    name: &str,
    action: Action,
    running: Option<u32>,
    paused: bool,
) -> Result<Step, Refused> {
    let conflict = |why: String| Err((StatusCode::CONFLICT, ApiError::new("wrong_state", why)));
    match (action, running) {
        (Action::Restart, pid) => Ok(Step::Restart(pid)),
        (Action::Kill, Some(pid)) => Ok(Step::Kill(pid)),
        (Action::Pause, Some(pid)) if !paused => Ok(Step::Pause(pid)),
        (Action::Pause, Some(_)) => conflict(format!("{name} is already paused")),
        (Action::Resume, Some(pid)) if paused => Ok(Step::Resume(pid)),
        (Action::Resume, Some(_)) => conflict(format!("{name} is not paused")),
        (_, None) => conflict(format!(
            "{name} is not running; `keel chaos restart {name}` starts it again"
        )),
    }
}

/// How a process ended: `exit code 1` or `signal 9`.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// What `keel up` prints when a process ends by itself: how, that nothing restarts it,
/// what that means for the rest of the system, and the command (`again`) that starts it
/// by hand.
pub(crate) fn exit_report(name: &str, how: &str, again: &str) -> String {
    let consequence = if name == MONITOR {
        "; nothing fails over until it is back (the nodes keep serving)"
    } else if name == PROXY {
        "; the front door is closed until it is back (the nodes and services answer on their own ports)"
    } else {
        ""
    };
    format!(
        "{name} exited ({how}); keel up does not restart it{consequence}. To start it again:\n  {again}"
    )
}

/// Whether an exit is that of a process `keel chaos restart` replaced: another process
/// of the same name (`running`) runs now, and the restart has said what happened.
pub(crate) fn superseded(exited: Option<u32>, running: Option<u32>) -> bool {
    running.is_some() && running != exited
}
