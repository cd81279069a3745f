//! The supervisor's decisions, apart from any process: which child stops when, what an
//! action does to a child in the state it is in, and what an exit is reported as. No
//! process, clock or socket here, so that the tests pin each decision exactly.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use axum::http::StatusCode;
use keel_core::ApiError;

use crate::control::{Action, Refused};
use crate::plan::{MONITOR, PG_MONITOR, PROXY, is_monitor};
pub use crate::settings::RestartPolicy;

/// Where `name` stops in `keel up`'s order, lowest first: the proxy and the services,
/// which no longer take traffic then; the monitors (the data tier's and PostgreSQL's), so
/// that nothing fails over while the tiers stop; the `primaries`, while their standbys
/// still acknowledge their last writes; the standbys. Those of a rank stop in their start
/// order: the nodes all share one when no monitor named a primary.
pub(crate) fn stop_rank(name: &str, primaries: &[String]) -> u8 {
    if name == PROXY {
        0
    } else if name.starts_with("service") {
        1
    } else if is_monitor(name) || name == PG_MONITOR {
        2
    } else if primaries.iter().any(|p| p == name) {
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
pub(crate) fn exit_report(name: &str, how: &str, again: &str, restart: Option<Restart>) -> String {
    let consequence = if name == MONITOR {
        "; nothing fails over until it is back (the nodes keep serving)"
    } else if is_monitor(name) {
        "; the other monitors decide while a majority of them runs"
    } else if name == PROXY {
        "; the front door is closed until it is back (the nodes and services answer on their own ports)"
    } else {
        ""
    };
    match restart {
        Some(r) => format!(
            "{name} exited ({how}){consequence}; keel up starts it again in {} ({}{})",
            keel_core::duration::format(r.after),
            r.policy.flag(),
            if r.in_a_row > 0 {
                format!(", restart {} in a row", r.in_a_row + 1)
            } else {
                String::new()
            }
        ),
        None => format!(
            "{name} exited ({how}); keel up does not restart it{consequence}. To start it again: {again}"
        ),
    }
}

/// The first wait before a restart; each restart in a row doubles it.
pub const RESTART_FIRST: Duration = Duration::from_secs(1);
/// The longest wait before a restart.
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long before it ended is restarted as if for the first time.
pub const RESTART_RESET: Duration = Duration::from_secs(60);

/// A restart decided on: after how long, and which in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub after: Duration,
    /// Restarts before this one since the process last ran for [`RESTART_RESET`].
    pub in_a_row: u32,
}

/// Whether, and after how long, a process that ended `how` (`exit code 0`, `signal 9`)
/// after running `ran` is started again under `policy`, `in_a_row` restarts having come
/// before this one: one second, doubling with each restart in a row, at most 30 s; back
/// to one second once a process has run for a minute.
pub(crate) fn restart_after(
    policy: RestartPolicy,
    how: &str,
    ran: Duration,
    in_a_row: u32,
) -> Option<Restart> {
    let failed = how != "exit code 0";
    match policy {
        RestartPolicy::Never => return None,
        RestartPolicy::OnFailure if !failed => return None,
        RestartPolicy::OnFailure | RestartPolicy::Always => {}
    }
    let in_a_row = if ran >= RESTART_RESET { 0 } else { in_a_row };
    let after = RESTART_FIRST
        .saturating_mul(1u32 << in_a_row.min(16))
        .min(RESTART_MAX);
    Some(Restart {
        policy,
        after,
        in_a_row,
    })
}

/// Whether an exit is that of a process `keel chaos restart` replaced: another process
/// of the same name (`running`) runs now, and the restart has said what happened.
pub(crate) fn superseded(exited: Option<u32>, running: Option<u32>) -> bool {
    running.is_some() && running != exited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_door_stops_first_then_the_monitors_then_the_primaries_then_the_standbys() {
        let started = [
            "monitor",
            "app1",
            "app2",
            "app3",
            "pgmonitor",
            "pg1",
            "pg2",
            "pg3",
            "service1",
            "service2",
            "proxy",
        ];
        let mut order = started.to_vec();
        order.sort_by_key(|name| stop_rank(name, &["app2".to_owned(), "pg3".to_owned()]));
        assert_eq!(
            order,
            [
                "proxy",
                "service1",
                "service2",
                "monitor",
                "pgmonitor",
                "app2",
                "pg3",
                "app1",
                "app3",
                "pg1",
                "pg2"
            ]
        );
        let mut unknown = started.to_vec();
        unknown.sort_by_key(|name| stop_rank(name, &[]));
        assert_eq!(
            unknown,
            [
                "proxy",
                "service1",
                "service2",
                "monitor",
                "pgmonitor",
                "app1",
                "app2",
                "app3",
                "pg1",
                "pg2",
                "pg3"
            ],
            "without a known primary the nodes keep their start order"
        );
    }

    #[test]
    fn each_action_needs_the_state_it_changes() {
        assert_eq!(
            step("app1", Action::Kill, Some(7), false).ok(),
            Some(Step::Kill(7))
        );
        assert_eq!(
            step("app1", Action::Kill, Some(7), true).ok(),
            Some(Step::Kill(7)),
            "a paused process can be killed"
        );
        assert_eq!(
            step("app1", Action::Pause, Some(7), false).ok(),
            Some(Step::Pause(7))
        );
        assert_eq!(
            step("app1", Action::Resume, Some(7), true).ok(),
            Some(Step::Resume(7))
        );
        assert_eq!(
            step("app1", Action::Restart, Some(7), true).ok(),
            Some(Step::Restart(Some(7)))
        );
        assert_eq!(
            step("app1", Action::Restart, None, false).ok(),
            Some(Step::Restart(None)),
            "a restart starts what is not running"
        );
        for (action, running, paused, why) in [
            (Action::Pause, Some(7), true, "app1 is already paused"),
            (Action::Resume, Some(7), false, "app1 is not paused"),
            (
                Action::Kill,
                None,
                false,
                "app1 is not running; `keel chaos restart app1` starts it again",
            ),
            (
                Action::Pause,
                None,
                false,
                "app1 is not running; `keel chaos restart app1` starts it again",
            ),
            (
                Action::Resume,
                None,
                true,
                "app1 is not running; `keel chaos restart app1` starts it again",
            ),
        ] {
            let (status, error) =
                step("app1", action, running, paused).expect_err("a conflict with the state");
            assert_eq!(status, StatusCode::CONFLICT, "{action:?}");
            assert_eq!(error.message, why, "{action:?}");
        }
    }

    #[test]
    fn an_exit_is_reported_by_exit_code_or_signal_with_what_it_means() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9");
        assert_eq!(
            exit_report("app1", "signal 9", "keel chaos restart app1", None),
            "app1 exited (signal 9); keel up does not restart it. To start it again: keel chaos restart app1"
        );
        assert!(
            exit_report(MONITOR, "exit code 1", "x", None)
                .starts_with("monitor exited (exit code 1); keel up does not restart it; nothing fails over until it is back")
        );
        assert!(
            exit_report(PROXY, "signal 15", "x", None)
                .contains("; the front door is closed until it is back")
        );
        let restart = restart_after(
            RestartPolicy::OnFailure,
            "signal 9",
            Duration::from_secs(3),
            2,
        );
        assert_eq!(
            exit_report("app1", "signal 9", "x", restart),
            "app1 exited (signal 9); keel up starts it again in 4s (--restart on-failure, restart 3 in a row)"
        );
    }

    #[test]
    fn restarts_follow_the_policy_and_back_off_to_a_cap_until_a_process_runs_a_minute() {
        let short = Duration::from_secs(2);
        let after = |policy, how, ran, n| restart_after(policy, how, ran, n).map(|r| r.after);
        assert_eq!(after(RestartPolicy::Never, "signal 9", short, 0), None);
        assert_eq!(
            after(RestartPolicy::OnFailure, "exit code 0", short, 0),
            None,
            "a clean exit is not a failure"
        );
        assert_eq!(
            after(RestartPolicy::Always, "exit code 0", short, 0),
            Some(RESTART_FIRST)
        );
        let waits: Vec<u64> = (0..8)
            .filter_map(|n| after(RestartPolicy::OnFailure, "exit code 1", short, n))
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            after(RestartPolicy::OnFailure, "signal 9", RESTART_RESET, 7),
            Some(RESTART_FIRST),
            "a minute up: counted as well again"
        );
        assert_eq!(
            after(RestartPolicy::OnFailure, "signal 9", short, u32::MAX),
            Some(RESTART_MAX),
            "no overflow however many"
        );
    }

    #[test]
    fn only_the_exit_of_a_replaced_process_is_superseded() {
        assert!(superseded(Some(7), Some(8)), "restarted: 8 replaced 7");
        assert!(!superseded(Some(8), Some(8)), "the running one itself");
        assert!(!superseded(Some(7), None), "nothing replaced it");
    }
}
