//! The supervisor: starts the children of `keel up`, carries out what `keel chaos` asks
//! (kill, pause, resume, restart), reports the exits, and stops them all in order.
//!
//! Each child has a task of its own that waits for it to exit (and reports the exit), or
//! for the order to stop it by a deadline. The supervisor never restarts anything by
//! itself: a process that dies is reported and stays dead, so that what a test or a person
//! does to a node is what they see, and what the monitor does about it.
//!
//! The decisions (the order of stopping, what an action does in which state, what an exit
//! is reported as) are pure functions in [`decide`]; the processes are behind [`Host`],
//! the machine's in [`os`] and fakes in the tests; time is tokio's, so that the tests run
//! the grace periods and timeouts on a paused clock.

mod decide;
mod host;
mod os;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::StatusCode;
use keel_core::ApiError;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::control::{Action, Done, ProcessInfo, Refused};
use crate::plan::{Plan, Spec};
use decide::{Step, describe, step, stop_rank, superseded};
pub(crate) use decide::{exit_report, restart_after};
pub(crate) use host::{Host, Process};
pub(crate) use os::OsHost;

/// How long the children get to stop after the first SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often a starting process's health is asked for.
const HEALTH_POLL: Duration = Duration::from_millis(20);

/// Why a process did not start, or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be started at all.
    #[error("cannot start {name}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    /// A process exited while one was starting.
    #[error("{name} exited during startup ({how}); its output is above")]
    Exited { name: String, how: String },
    /// The process did not answer its health check in time.
    #[error("{name} did not answer {url} within {timeout:?}; its output is above")]
    Unhealthy {
        name: String,
        url: String,
        timeout: Duration,
    },
}

/// A process that ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exit {
    pub(crate) name: String,
    pub(crate) pid: Option<u32>,
    /// `exit code 1`, `signal 9`.
    pub(crate) how: String,
}

/// A child's task and the channel that tells it to stop the child by a deadline.
struct Supervised {
    name: String,
    pid: Option<u32>,
    stop: oneshot::Sender<Instant>,
    task: JoinHandle<Option<String>>,
}

/// The children of `keel up`.
pub(crate) struct Supervisor<H: Host> {
    host: H,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    /// Exits that came while a restarted process was awaited, kept for the report.
    set_aside: VecDeque<Exit>,
    /// Every child started, in start order; a restarted one replaces its predecessor.
    children: Vec<Supervised>,
    /// Processes stopped with SIGSTOP by `keel chaos pause`.
    paused: Vec<String>,
}

impl<H: Host> Supervisor<H> {
    pub(crate) fn new(host: H) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Supervisor {
            host,
            exits_tx,
            exits,
            set_aside: VecDeque::new(),
            children: Vec::new(),
            paused: Vec::new(),
        }
    }

    /// Where its processes run.
    pub(crate) fn host(&self) -> &H {
        &self.host
    }

    /// Starts `spec`'s process and the task that watches it.
    pub(crate) fn start(&mut self, spec: &Spec) -> Result<(), StartError> {
        let child = self.host.start(spec).map_err(|source| StartError::Spawn {
            name: spec.name.clone(),
            source,
        })?;
        let pid = child.id();
        self.paused.retain(|n| *n != spec.name);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(
            spec.name.clone(),
            child,
            stop_rx,
            self.exits_tx.clone(),
        ));
        self.children.push(Supervised {
            name: spec.name.clone(),
            pid,
            stop,
            task,
        });
        Ok(())
    }

    /// The pid of `name` if its process is still running.
    pub(crate) fn running(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .rev()
            .find(|s| s.name == name && !s.task.is_finished())
            .and_then(|s| s.pid)
    }

    /// The pid `name` was last started with, running or not.
    pub(crate) fn started(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .rev()
            .find(|s| s.name == name)
            .and_then(|s| s.pid)
    }

    /// Every planned process and its state, for `keel chaos`.
    pub(crate) fn processes(&self, plan: &Plan) -> Vec<ProcessInfo> {
        plan.all()
            .map(|spec| {
                let running = self.running(&spec.name);
                let state = match running {
                    None => "exited",
                    Some(_) if self.paused.contains(&spec.name) => "paused",
                    Some(_) => "running",
                };
                ProcessInfo {
                    name: spec.name.clone(),
                    pid: running,
                    state: state.to_owned(),
                    url: spec.url.clone(),
                }
            })
            .collect()
    }

    /// Carries out a `keel chaos` action on `spec`'s process. `reachable`: whether `keel
    /// up` can reach it for a health check after a restart (a partition may cut it off
    /// from the clients, `keel up` among them).
    pub(crate) async fn act(
        &mut self,
        spec: &Spec,
        action: Action,
        reachable: bool,
    ) -> Result<Done, Refused> {
        let name = spec.name.as_str();
        let pid = self.running(name);
        let paused = self.paused.iter().any(|n| n == name);
        let (message, state) = match step(name, action, pid, paused)? {
            Step::Kill(pid) => {
                self.host.signal(pid, Signal::SIGKILL);
                self.paused.retain(|n| n != name);
                (format!("killed {name} (pid {pid}, SIGKILL)"), "exited")
            }
            Step::Pause(pid) => {
                self.host.signal(pid, Signal::SIGSTOP);
                self.paused.push(name.to_owned());
                (format!("paused {name} (pid {pid}, SIGSTOP)"), "paused")
            }
            Step::Resume(pid) => {
                self.host.signal(pid, Signal::SIGCONT);
                self.paused.retain(|n| n != name);
                (format!("resumed {name} (pid {pid}, SIGCONT)"), "running")
            }
            Step::Restart(old) => (self.restart(spec, old, reachable).await?, "running"),
        };
        Ok(Done {
            name: name.to_owned(),
            action,
            pid: self.running(name).or(pid),
            state: state.to_owned(),
            message,
        })
    }

    /// Kills `old` if it runs, starts `spec` again, and waits for it to answer its health
    /// check when it can be reached; the line that says so.
    async fn restart(
        &mut self,
        spec: &Spec,
        old: Option<u32>,
        reachable: bool,
    ) -> Result<String, Refused> {
        let name = spec.name.as_str();
        let failed = |e: StartError| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                ApiError::new("restart_failed", crate::chain(&e)),
            )
        };
        if let Some(pid) = old {
            self.host.signal(pid, Signal::SIGKILL);
        }
        self.reap(name).await;
        self.start(spec).map_err(failed)?;
        let pid = self.running(name).unwrap_or_default();
        if !reachable {
            // Its namespace drops what keel up sends: the check could only time out.
            return Ok(format!(
                "restarted {name} (pid {pid}) in its namespace; its health is not \
                 checked: a partition cuts it off from the clients, keel up among them"
            ));
        }
        self.wait_healthy(spec, Awaited::Restart)
            .await
            .map_err(failed)?;
        let pid = self.running(name).unwrap_or_default();
        Ok(format!("restarted {name} (pid {pid}), healthy"))
    }

    /// Waits for the task of `name`'s last process to end (it was killed). Its exit, if
    /// it reported one, is superseded by the process started next.
    async fn reap(&mut self, name: &str) {
        let Some(i) = self.children.iter().rposition(|s| s.name == name) else {
            return;
        };
        let supervised = self.children.remove(i);
        drop(supervised.stop);
        let _ = tokio::time::timeout(STOP_GRACE, supervised.task).await;
    }

    /// Polls `spec`'s health until it answers, failing after its [`Spec::startup`] or when
    /// a process exits meanwhile: any process while the system starts (its output is
    /// above), only the awaited one during a restart (the others' exits are set aside for
    /// the report).
    pub(crate) async fn wait_healthy(
        &mut self,
        spec: &Spec,
        awaited: Awaited,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + spec.startup;
        loop {
            while let Ok(exit) = self.exits.try_recv() {
                if self.is_superseded(&exit) {
                    continue;
                }
                if awaited == Awaited::Startup || exit.name == spec.name {
                    return Err(StartError::Exited {
                        name: exit.name,
                        how: exit.how,
                    });
                }
                self.set_aside.push_back(exit);
            }
            if self.host.healthy(spec).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Unhealthy {
                    name: spec.name.clone(),
                    url: spec.health.clone(),
                    timeout: spec.startup,
                });
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// The next exit to report: not one of a process a restart replaced. Cancel-safe.
    pub(crate) async fn next_exit(&mut self) -> Option<Exit> {
        loop {
            let exit = match self.set_aside.pop_front() {
                Some(exit) => exit,
                None => self.exits.recv().await?,
            };
            if !self.is_superseded(&exit) {
                return Some(exit);
            }
        }
    }

    fn is_superseded(&self, exit: &Exit) -> bool {
        superseded(exit.pid, self.running(&exit.name))
    }

    /// Stops every child in `keel up`'s order ([`stop_rank`]), one after the other, each
    /// by SIGTERM; SIGKILL for those still there [`STOP_GRACE`] after the first SIGTERM.
    /// `say` gets a line for each, and for those that ended by themselves meanwhile.
    pub(crate) async fn stop_all(&mut self, primaries: &[String], mut say: impl FnMut(String)) {
        let mut children = std::mem::take(&mut self.children);
        // Stable: the standbys keep their start order.
        children.sort_by_key(|s| stop_rank(&s.name, primaries));
        let deadline = Instant::now() + STOP_GRACE;
        for Supervised { stop, task, .. } in children {
            // A closed channel belongs to a child that already exited.
            let _ = stop.send(deadline);
            match task.await {
                Ok(Some(line)) => say(line),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "a supervisor task failed"),
            }
        }
        // Those that ended by themselves meanwhile (a signal sent to the whole group).
        while let Some(exit) = self
            .set_aside
            .pop_front()
            .or_else(|| self.exits.try_recv().ok())
        {
            say(format!("{} exited ({})", exit.name, exit.how));
        }
        self.host.flush().await;
    }
}

/// What a health check is awaited for, which decides which exits fail it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaited {
    /// The system starting: any exit means it will not come up as planned.
    Startup,
    /// A restarted process: only its own exit fails the restart.
    Restart,
}

/// Waits for the child to exit (reported on `exits`) or to be told to stop (then stops
/// it and returns a line saying how it ended).
async fn supervise<P: Process>(
    name: String,
    mut child: P,
    stop: oneshot::Receiver<Instant>,
    exits: mpsc::UnboundedSender<Exit>,
) -> Option<String> {
    let pid = child.id();
    let deadline = tokio::select! {
        // An exit that has happened is reported as such, even if an order to stop came
        // at the same moment.
        biased;
        status = child.wait() => {
            let how = match status {
                Ok(status) => describe(status),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = exits.send(Exit { name, pid, how });
            return None;
        }
        // A dropped sender means `keel up` is ending without an orderly stop, or a
        // restart reaps: stop anyway.
        deadline = stop => deadline.unwrap_or_else(|_| Instant::now() + STOP_GRACE),
    };
    Some(terminate(&name, &mut child, deadline).await)
}

/// SIGTERM, then SIGKILL at `deadline`; the line that says how the child ended.
async fn terminate<P: Process>(name: &str, child: &mut P, deadline: Instant) -> String {
    child.terminate();
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => format!("{name} stopped ({})", describe(status)),
        Ok(Err(e)) => format!("cannot wait for {name}: {e}"),
        Err(_) => match child.kill().await {
            Ok(()) => format!("{name} did not stop within {STOP_GRACE:?} of SIGTERM; killed"),
            Err(e) => {
                format!("{name} did not stop within {STOP_GRACE:?} and cannot be killed: {e}")
            }
        },
    }
}
