//! The supervisor on fake processes and tokio's paused clock: the order of stopping, the
//! grace period, what a restart does, and which exits are reported. Each fake process
//! records what was done to it and when, so the tests compare whole timelines.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;

use super::*;
use crate::Settings;
use crate::credentials::Credentials;
use crate::plan::{MONITOR, Placement, plan};

/// The fake machine: its processes and what happened to them.
#[derive(Clone)]
struct World(Arc<Mutex<State>>);

struct State {
    origin: Instant,
    next_pid: u32,
    /// What was done, and when since `origin`: `start app1 (pid 1)`, `SIGTERM app1`…
    log: Vec<(Duration, String)>,
    /// Every process started: its name, when, and how to end it.
    processes: BTreeMap<u32, Fake>,
    /// Processes that ignore SIGTERM.
    stubborn: BTreeSet<String>,
    /// How long after its start a process answers its health check (at once if absent).
    ready_after: BTreeMap<String, Duration>,
}

struct Fake {
    name: String,
    started: Instant,
    exit: watch::Sender<Option<ExitStatus>>,
}

/// How long a process that obeys SIGTERM takes to stop.
const STOPS_IN: Duration = Duration::from_millis(500);

/// `exit code 0`, `exit code 1`, `signal 9` as the kernel reports them.
fn exited(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}
fn killed() -> ExitStatus {
    ExitStatus::from_raw(9)
}

impl World {
    fn new() -> World {
        World(Arc::new(Mutex::new(State {
            origin: Instant::now(),
            next_pid: 1,
            log: Vec::new(),
            processes: BTreeMap::new(),
            stubborn: BTreeSet::new(),
            ready_after: BTreeMap::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .expect("no test thread panicked holding the lock")
    }

    fn record(&self, what: String) {
        let mut state = self.state();
        let at = state.origin.elapsed();
        state.log.push((at, what));
    }

    /// The timeline so far, in milliseconds, and a fresh one from now.
    fn take_log(&self) -> Vec<(u128, String)> {
        std::mem::take(&mut self.state().log)
            .into_iter()
            .map(|(at, what)| (at.as_millis(), what))
            .collect()
    }

    fn end(&self, pid: u32, status: ExitStatus) {
        if let Some(fake) = self.state().processes.get(&pid) {
            fake.exit.send_replace(Some(status));
        }
    }

    fn name_of(&self, pid: u32) -> String {
        self.state()
            .processes
            .get(&pid)
            .map_or_else(|| format!("pid {pid}"), |f| f.name.clone())
    }

    /// The process of `name` ends by itself, as in a crash.
    fn crash(&self, name: &str, code: i32) {
        let pids: Vec<u32> = self
            .state()
            .processes
            .iter()
            .filter(|(_, f)| f.name == name && f.exit.borrow().is_none())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            self.end(pid, exited(code));
        }
    }
}

struct FakeHost(World);

impl Host for FakeHost {
    type Process = FakeProcess;

    fn start(&mut self, spec: &Spec) -> io::Result<FakeProcess> {
        let (exit, exit_rx) = watch::channel(None);
        let pid = {
            let mut state = self.0.state();
            let pid = state.next_pid;
            state.next_pid += 1;
            state.processes.insert(
                pid,
                Fake {
                    name: spec.name.clone(),
                    started: Instant::now(),
                    exit,
                },
            );
            pid
        };
        self.0.record(format!("start {} (pid {pid})", spec.name));
        Ok(FakeProcess {
            pid,
            name: spec.name.clone(),
            exit: exit_rx,
            world: self.0.clone(),
        })
    }

    fn signal(&self, pid: u32, signal: Signal) -> bool {
        self.0
            .record(format!("{} {}", signal.as_str(), self.0.name_of(pid)));
        if signal == Signal::SIGKILL {
            self.0.end(pid, killed());
        }
        true
    }

    async fn healthy(&self, spec: &Spec) -> bool {
        let state = self.0.state();
        let delay = state
            .ready_after
            .get(&spec.name)
            .copied()
            .unwrap_or_default();
        state
            .processes
            .values()
            .rev()
            .find(|f| f.name == spec.name)
            .is_some_and(|f| f.exit.borrow().is_none() && f.started.elapsed() >= delay)
    }

    async fn flush(&mut self) {
        self.0.record("flush".to_owned());
    }
}

struct FakeProcess {
    pid: u32,
    name: String,
    exit: watch::Receiver<Option<ExitStatus>>,
    world: World,
}

impl Process for FakeProcess {
    fn id(&self) -> Option<u32> {
        Some(self.pid)
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self
            .exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| io::Error::other("the fake machine is gone"))?;
        status.ok_or_else(|| io::Error::other("waited for an exit"))
    }

    fn terminate(&mut self) {
        self.world.record(format!("SIGTERM {}", self.name));
        if self.world.state().stubborn.contains(&self.name) {
            return;
        }
        let (world, pid) = (self.world.clone(), self.pid);
        tokio::spawn(async move {
            tokio::time::sleep(STOPS_IN).await;
            world.end(pid, exited(0));
        });
    }

    async fn kill(&mut self) -> io::Result<()> {
        self.world.record(format!("SIGKILL {}", self.name));
        self.world.end(self.pid, killed());
        Ok(())
    }
}

/// Three nodes, two services: `monitor app1 app2 app3 service1 service2 proxy`.
fn the_plan() -> Plan {
    let settings = Settings {
        nodes: 3,
        shards: 1,
        data_dir: "/tmp/keel-test".into(),
        base_port: 9001,
        store: None,
        monitors: 1,
        monitor_port: 9070,
        services: 2,
        service_port: 9056,
        proxy_port: 9080,
        proxy_admin_port: 9090,
        control_port: 9060,
        verbose: false,
        netns: false,
        tls: false,
        restart: Default::default(),
        postgres: None,
    };
    plan(
        &settings,
        &Credentials::in_dir(Path::new("/tmp/keel-test")),
        &Placement::loopback(),
    )
    .expect("a plan")
}

fn spec<'a>(plan: &'a Plan, name: &str) -> &'a Spec {
    plan.all().find(|s| s.name == name).expect("planned")
}

/// A supervisor on a fake machine with every process of `plan` started, pids 1 to 7 in
/// start order, and the timeline cleared.
fn all_started(plan: &Plan) -> (World, Supervisor<FakeHost>) {
    let world = World::new();
    let mut supervisor = Supervisor::new(FakeHost(world.clone()));
    for spec in plan.all() {
        supervisor.start(spec).expect("started");
    }
    world.take_log();
    (world, supervisor)
}

fn timeline(entries: &[(u128, &str)]) -> Vec<(u128, String)> {
    entries
        .iter()
        .map(|(at, what)| (*at, (*what).to_owned()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn stopping_goes_front_door_services_monitor_primary_standbys_each_once_the_last_is_gone() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    let mut lines = Vec::new();
    supervisor
        .stop_all(&["app2".to_owned()], |line| lines.push(line))
        .await;
    assert_eq!(
        world.take_log(),
        timeline(&[
            (0, "SIGTERM proxy"),
            (500, "SIGTERM service1"),
            (1000, "SIGTERM service2"),
            (1500, "SIGTERM monitor"),
            (2000, "SIGTERM app2"),
            (2500, "SIGTERM app1"),
            (3000, "SIGTERM app3"),
            (3500, "flush"),
        ])
    );
    assert_eq!(
        lines,
        [
            "proxy stopped (exit code 0)",
            "service1 stopped (exit code 0)",
            "service2 stopped (exit code 0)",
            "monitor stopped (exit code 0)",
            "app2 stopped (exit code 0)",
            "app1 stopped (exit code 0)",
            "app3 stopped (exit code 0)",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_grace_runs_from_the_first_sigterm_and_whatever_is_left_then_is_killed() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    world.state().stubborn.insert(MONITOR.to_owned());
    let mut lines = Vec::new();
    supervisor.stop_all(&[], |line| lines.push(line)).await;
    assert_eq!(
        world.take_log(),
        timeline(&[
            (0, "SIGTERM proxy"),
            (500, "SIGTERM service1"),
            (1000, "SIGTERM service2"),
            (1500, "SIGTERM monitor"),
            // Five seconds after the proxy's SIGTERM, not the monitor's.
            (5000, "SIGKILL monitor"),
            // No primary known: the nodes in start order, past the grace at once.
            (5000, "SIGTERM app1"),
            (5000, "SIGKILL app1"),
            (5000, "SIGTERM app2"),
            (5000, "SIGKILL app2"),
            (5000, "SIGTERM app3"),
            (5000, "SIGKILL app3"),
            (5000, "flush"),
        ])
    );
    assert_eq!(
        lines[3..],
        [
            "monitor did not stop within 5s of SIGTERM; killed",
            "app1 did not stop within 5s of SIGTERM; killed",
            "app2 did not stop within 5s of SIGTERM; killed",
            "app3 did not stop within 5s of SIGTERM; killed",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_process_that_ended_by_itself_is_reported_and_not_stopped_again() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    world.crash("app1", 3);
    let exit = supervisor.next_exit().await.expect("an exit");
    assert_eq!(
        exit,
        Exit {
            name: "app1".into(),
            pid: Some(2),
            how: "exit code 3".into()
        }
    );
    assert_eq!(supervisor.running("app1"), None);
    let mut lines = Vec::new();
    supervisor
        .stop_all(&["app2".to_owned()], |line| lines.push(line))
        .await;
    let log = world.take_log();
    assert!(
        !log.iter().any(|(_, what)| what.ends_with(" app1")),
        "{log:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("app1")), "{lines:?}");
}

#[tokio::test(start_paused = true)]
async fn restart_kills_the_running_process_starts_the_same_spec_and_the_old_exit_is_not_reported() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    let app1 = spec(&plan, "app1");
    let done = supervisor
        .act(app1, Action::Restart, true)
        .await
        .expect("restarted");
    assert_eq!(done.message, "restarted app1 (pid 8), healthy");
    assert_eq!((done.pid, done.state.as_str()), (Some(8), "running"));
    assert_eq!(
        world.take_log(),
        timeline(&[(0, "SIGKILL app1"), (0, "start app1 (pid 8)")])
    );
    let listed = supervisor.processes(&plan);
    let app1_listed = listed.iter().find(|p| p.name == "app1").expect("listed");
    assert_eq!(
        (app1_listed.pid, app1_listed.state.as_str()),
        (Some(8), "running")
    );

    // The first exit reported is the new process's, not the one the restart killed.
    supervisor
        .act(app1, Action::Kill, true)
        .await
        .expect("killed");
    let exit = supervisor.next_exit().await.expect("an exit");
    assert_eq!(
        exit,
        Exit {
            name: "app1".into(),
            pid: Some(8),
            how: "signal 9".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_that_never_answers_fails_after_the_startup_timeout_to_the_millisecond() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    world
        .state()
        .ready_after
        .insert("app3".into(), Duration::MAX);
    let began = Instant::now();
    let (status, error) = supervisor
        .act(spec(&plan, "app3"), Action::Restart, true)
        .await
        .expect_err("never healthy");
    assert_eq!(began.elapsed(), crate::plan::STARTUP);
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error.error, "restart_failed");
    assert_eq!(
        error.message,
        "app3 did not answer http://127.0.0.1:9003/health within 10s; its output is above"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_waits_for_health_unless_a_partition_cuts_the_process_off() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    world
        .state()
        .ready_after
        .insert("app2".into(), Duration::from_secs(2));
    let began = Instant::now();
    let done = supervisor
        .act(spec(&plan, "app2"), Action::Restart, true)
        .await
        .expect("restarted");
    assert_eq!(began.elapsed(), Duration::from_secs(2));
    assert_eq!(done.message, "restarted app2 (pid 8), healthy");

    let began = Instant::now();
    let done = supervisor
        .act(spec(&plan, "app2"), Action::Restart, false)
        .await
        .expect("restarted");
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "no health check to wait for"
    );
    assert!(
        done.message
            .starts_with("restarted app2 (pid 9) in its namespace; its health is not checked"),
        "{}",
        done.message
    );
}

#[tokio::test(start_paused = true)]
async fn an_exit_during_a_restart_is_kept_for_the_report_not_taken_for_the_restart() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    world
        .state()
        .ready_after
        .insert("app1".into(), Duration::from_secs(1));
    let crasher = world.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        crasher.crash("app2", 1);
    });
    let done = supervisor
        .act(spec(&plan, "app1"), Action::Restart, true)
        .await
        .expect("app2's exit is not app1's");
    assert_eq!(done.message, "restarted app1 (pid 8), healthy");
    let exit = supervisor.next_exit().await.expect("app2's exit, kept");
    assert_eq!(
        exit,
        Exit {
            name: "app2".into(),
            pid: Some(3),
            how: "exit code 1".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn while_the_system_starts_any_exit_fails_the_wait() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    world
        .state()
        .ready_after
        .insert("proxy".into(), Duration::from_secs(1));
    world.crash("monitor", 2);
    let err = supervisor
        .wait_healthy(spec(&plan, "proxy"), Awaited::Startup)
        .await
        .expect_err("the monitor exited");
    assert_eq!(
        err.to_string(),
        "monitor exited during startup (exit code 2); its output is above"
    );
}

#[tokio::test(start_paused = true)]
async fn pause_resume_and_kill_signal_the_running_pid_and_show_in_its_state() {
    let plan = the_plan();
    let (world, mut supervisor) = all_started(&plan);
    let app3 = spec(&plan, "app3");
    let state = |supervisor: &Supervisor<FakeHost>| {
        supervisor
            .processes(&plan)
            .into_iter()
            .find(|p| p.name == "app3")
            .map(|p| (p.pid, p.state))
            .expect("listed")
    };
    let done = supervisor
        .act(app3, Action::Pause, true)
        .await
        .expect("paused");
    assert_eq!(done.message, "paused app3 (pid 4, SIGSTOP)");
    assert_eq!(state(&supervisor), (Some(4), "paused".to_owned()));
    let (status, _) = supervisor
        .act(app3, Action::Pause, true)
        .await
        .expect_err("already paused");
    assert_eq!(status, StatusCode::CONFLICT);
    let done = supervisor
        .act(app3, Action::Resume, true)
        .await
        .expect("resumed");
    assert_eq!(done.message, "resumed app3 (pid 4, SIGCONT)");
    assert_eq!(state(&supervisor), (Some(4), "running".to_owned()));
    supervisor
        .act(app3, Action::Pause, true)
        .await
        .expect("paused again");
    let done = supervisor
        .act(app3, Action::Kill, true)
        .await
        .expect("killed");
    assert_eq!(done.message, "killed app3 (pid 4, SIGKILL)");
    supervisor.next_exit().await.expect("its exit");
    assert_eq!(state(&supervisor), (None, "exited".to_owned()));
    assert_eq!(
        world.take_log(),
        timeline(&[
            (0, "SIGSTOP app3"),
            (0, "SIGCONT app3"),
            (0, "SIGSTOP app3"),
            (0, "SIGKILL app3"),
        ])
    );
    let (status, error) = supervisor
        .act(app3, Action::Resume, true)
        .await
        .expect_err("not running");
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error.message.contains("keel chaos restart app3"),
        "{}",
        error.message
    );
    let done = supervisor
        .act(app3, Action::Restart, true)
        .await
        .expect("started again");
    assert_eq!(done.message, "restarted app3 (pid 8), healthy");
    assert_eq!(state(&supervisor), (Some(8), "running".to_owned()));
}
