//! `keel up`: the whole system on this machine, in the foreground — the seed's `main.py`
//! grown a front door: a data tier, two app services and the proxy in front of them.
//!
//! Starts `keel monitor`, then the nodes `app1..appN` as `keel node --monitor` child
//! processes of this executable, then the app services `service1..serviceN` (`keel
//! service`, their visits counter kept in the data tier through the proxy) and last
//! `keel proxy` at :8080, which spreads `/` over the services and sends `/v1/…` to
//! whichever node is primary; each with its own directory under `--data-dir`, all
//! sharing the admin token in `<data-dir>/admin.token` (generated once, then kept). The
//! monitor decides who is primary: the first node to register, so `keel up` starts one
//! node and waits for the monitor to name it before starting the rest. Started again on
//! the same directory, the monitor reloads its state and the node it recorded as primary
//! (not necessarily `app1`) is started first.
//!
//! What a person reads is the monitor's event stream (`/v1/events`), one line per event:
//! registered, primary elected, heartbeat missed, suspected, promoted, rejoined…. The
//! children's own logs are shown too, prefixed with their name, at warning level unless
//! `--verbose`.
//!
//! Every child follows a fault file, `<data-dir>/faults/<name>.json` (`KEEL_FAULTS_FILE`),
//! through which `keel chaos partition` cuts the data tier ([`partition`]). With
//! `--netns` (Linux, root), the monitor and each node run in a network namespace of their
//! own instead, and a partition is the kernel's ([`netns`]); the namespaces, their veths
//! and the bridge are removed when `keel up` stops, or fails to start.
//!
//! `keel up` never restarts anything by itself: a process that dies is reported, with
//! the command that starts it again, and stays dead, so that what a test or a person does
//! to a node is what they see — and what the monitor does about it. On Ctrl-C or SIGTERM
//! the proxy and the services stop first, then the monitor (so that nothing fails over
//! while the tier stops), then the primary (while its standbys still acknowledge its last writes), then the standbys:
//! SIGTERM each, and SIGKILL for whatever is left [`STOP_GRACE`] after the first.
//!
//! [`plan`] holds what is started (ports, addresses, command lines, the checks before
//! anything runs); [`control`] is the API `keel chaos` speaks; this file runs it all.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_auth::ClusterSecret;
use keel_core::Role;
use keel_core::faults::FAULTS_FILE_ENV;
use keel_core::token::Token;
use keel_monitor::wire::ClusterView;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod control;
mod netns;
mod partition;
mod plan;

pub(crate) use control::{
    Action, Done, PartitionDone, PartitionRequest, ProcessInfo, UP_FILE, UpFile,
};

use super::client::events::{EventStream, stream_client};
use crate::cli::UpArgs;
use netns::Net;
use partition::Partitions;
use plan::{
    Credentials, MONITOR, PROXY, Placement, Plan, Spec, check_ports, data_tier_names, path_arg,
    plan, shell_line, shell_quote,
};

/// How long the children get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a process may take to answer `/health` after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the monitor to name a primary, and for the standbys to catch up
/// and become promotable, before going on without (with a note).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(up(args))
}

/// A child's supervisor task and the channel that tells it to stop the child by a
/// deadline.
struct Supervised {
    name: String,
    pid: Option<u32>,
    stop: oneshot::Sender<tokio::time::Instant>,
    task: JoinHandle<Option<String>>,
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut stop_signal = pin!(keel_core::shutdown::signal());
    // Poll once so the handlers are installed before any child exists: a Ctrl-C from
    // then on reaches this code instead of killing the process and orphaning the nodes.
    tokio::select! {
        biased;
        () = &mut stop_signal => return Ok(ExitCode::SUCCESS),
        () = std::future::ready(()) => {}
    }

    // Before anything is made: a `--netns` that cannot run leaves nothing behind.
    if args.netns {
        netns::check()?;
    }
    let data_dir = &args.data_dir;
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let mut credentials = Credentials::in_dir(data_dir);
    let token_path = credentials.token.clone();
    let token_note = ensure_secret_file(
        &token_path,
        "admin token",
        || {
            Token::generate()
                .map(|t| t.secret().to_owned())
                .context("cannot generate an admin token")
        },
        |path| {
            Token::from_file(path)
                .map(drop)
                .map_err(anyhow::Error::from)
        },
    )?;
    ensure_secret_file(
        &credentials.secret,
        "cluster secret",
        || {
            ClusterSecret::generate()
                .map(|s| s.secret().to_owned())
                .context("cannot generate a cluster secret")
        },
        |path| {
            ClusterSecret::from_file(path)
                .map(drop)
                .map_err(anyhow::Error::from)
        },
    )?;
    let net = if args.netns {
        let (net, leftovers) = Net::plan(data_dir, &data_tier_names(args.nodes))?;
        for line in leftovers {
            println!("{line}");
        }
        Some(net)
    } else {
        None
    };
    let placement = net
        .as_ref()
        .map_or_else(Placement::loopback, Net::placement);
    let client_tls = if args.tls {
        let dir = data_dir.join("tls");
        // Each of the data tier named by its own address too (a network namespace's, under
        // --netns): the others reach it there.
        let mut wanted: Vec<(String, Vec<String>)> = data_tier_names(args.nodes)
            .into_iter()
            .map(|name| {
                let host = placement.host(&name).to_string();
                (name, vec![host])
            })
            .collect();
        wanted.push((PROXY.to_owned(), Vec::new()));
        wanted.extend((1..=args.services).map(|k| (format!("service{k}"), Vec::new())));
        super::certs::ensure(&dir, &wanted)?;
        let client = keel_auth::tls::client_for_ca(&dir.join("ca.pem"))
            .context("cannot set up TLS towards the tier")?;
        credentials.tls = Some(dir);
        Some(client)
    } else {
        None
    };
    let plan = plan(&args, &credentials, &placement)?;
    check_ports(&plan)?;
    let net = match net {
        Some(mut net) => {
            net.create()?;
            Some(net)
        }
        None => None,
    };
    // From here on, the namespaces go when `partitions` does, however `keel up` ends.
    let partitions = Partitions::start(data_dir, &plan, net)?;
    let control_addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.control_port));
    let control_listener = tokio::net::TcpListener::bind(control_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {control_addr} for keel chaos — is another `keel up` running? \
                 pick another port with --control-port"
            )
        })?;
    let (commands_tx, mut commands) = mpsc::channel(16);
    let control_token = Token::from_file(&token_path).ok();
    let control_server = tokio::spawn(async move {
        let app = control::router(control_token, commands_tx);
        // Served until `keel up` ends, which aborts this task.
        let (stopping, _) = tokio::sync::watch::channel(false);
        keel_http::serve_draining(
            control_listener,
            app,
            std::future::pending(),
            std::time::Duration::ZERO,
            stopping,
            None,
        )
        .await;
    });

    let exe =
        std::env::current_exe().context("cannot find the keel executable to start the nodes")?;
    let width = plan.all().map(|s| s.name.len()).max().unwrap_or(0);
    let mut tier = Tier::new(
        exe,
        width,
        child_log_level(args.verbose),
        partitions,
        client_tls,
    )?;

    let started = tokio::select! {
        r = tier.start_all(&plan) => Some(r),
        () = &mut stop_signal => None,
    };
    match started {
        None => {
            println!("interrupted during startup; stopping");
            tier.shutdown().await;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Err(e)) => {
            tier.shutdown().await;
            return Err(e);
        }
        Some(Ok(())) => {}
    }
    let view = tier.cluster().await;
    let up_file = data_dir.join(UP_FILE);
    write_up_file(&up_file, &plan, args.control_port)?;
    print_banner(&args, &plan, &tier, view.as_ref(), &token_path, token_note);

    let mut alive = plan.all().count();
    loop {
        tokio::select! {
            biased;
            () = &mut stop_signal => break,
            Some(command) = commands.recv() => match command {
                control::Command::List(reply) => {
                    let _ = reply.send(tier.processes(&plan));
                }
                control::Command::Act { name, action, reply } => {
                    let done = tier.act(&plan, &name, action).await;
                    if let Ok(done) = &done {
                        println!("keel chaos: {}", done.message);
                        if matches!(action, Action::Restart) {
                            alive = (alive + 1).min(plan.all().count());
                        }
                    }
                    let _ = reply.send(done);
                }
                control::Command::Partition { request, reply } => {
                    let done = tier.partitions.partition(&plan, &request.node, &request.from);
                    if let Ok(done) = &done {
                        println!("keel chaos: {}", done.message);
                    }
                    let _ = reply.send(done);
                }
                control::Command::Heal { reply } => {
                    let done = tier.partitions.heal(&plan);
                    if let Ok(done) = &done {
                        println!("keel chaos: {}", done.message);
                    }
                    let _ = reply.send(done);
                }
            },
            Some((name, how)) = tier.exits.recv() => {
                if tier.running(&name).is_some() {
                    // The process `keel chaos restart` killed and started again: its
                    // successor runs, and `keel chaos` has already said what happened.
                    continue;
                }
                alive = alive.saturating_sub(1);
                let again = plan
                    .all()
                    .find(|s| s.name == name)
                    .map(|s| tier.command_line(s))
                    .unwrap_or_default();
                let consequence = if name == MONITOR {
                    "; nothing fails over until it is back (the nodes keep serving)"
                } else if name == PROXY {
                    "; the front door is closed until it is back (the nodes and services answer on their own ports)"
                } else {
                    ""
                };
                println!(
                    "{name} exited ({how}); keel up does not restart it{consequence}. To start it again:\n  {again}"
                );
                if alive == 0 {
                    println!("nothing is running any more; press Ctrl-C to quit");
                }
            }
        }
    }
    println!("stopping everything");
    control_server.abort();
    let _ = fs::remove_file(&up_file);
    tier.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Writes `<data-dir>/up.json`: where `keel chaos` finds this `keel up`.
fn write_up_file(path: &Path, plan: &Plan, control_port: u16) -> anyhow::Result<()> {
    let file = UpFile {
        control: format!("http://127.0.0.1:{control_port}"),
        pid: std::process::id(),
        monitor: plan.monitor.url.clone(),
        proxy: plan.proxy.url.clone(),
    };
    let text = serde_json::to_string_pretty(&file).context("cannot write up.json")?;
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The children's `KEEL_LOG`: warnings only, unless `--verbose` or the person set
/// `KEEL_LOG` themselves (then theirs, inherited). At info level the nodes log every
/// replication stream and role change, which would bury the monitor's events — the lines
/// that tell the story — while the warnings (a lost stream, a refused heartbeat) are
/// exactly what should stand out next to them.
fn child_log_level(verbose: bool) -> Option<&'static str> {
    if std::env::var_os("KEEL_LOG").is_some() {
        None
    } else if verbose {
        Some("info")
    } else {
        Some("warn")
    }
}

/// Keeps the credential of an earlier `keel up` in `path` (nodes and scripts may hold
/// it) if `check` accepts it, else writes a new one from `generate`, readable by the
/// owner only. Returns a note for the banner.
fn ensure_secret_file(
    path: &Path,
    what: &str,
    generate: impl FnOnce() -> anyhow::Result<String>,
    check: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<&'static str> {
    if path.exists() {
        check(path).with_context(|| {
            format!(
                "the {what} in {} is unusable; delete the file and `keel up` writes a new one",
                path.display()
            )
        })?;
        return Ok("kept");
    }
    let secret = generate()?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the {what} to {}", path.display()))?;
    writeln!(file, "{secret}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the {what} to {}", path.display()))?;
    Ok("new")
}

/// The running children: a supervisor task per child (waits for its exit, or stops it
/// when told), a task per output stream, and the task that prints the monitor's events.
struct Tier {
    exe: PathBuf,
    /// Width of the name column in the output prefix.
    width: usize,
    /// `KEEL_LOG` for the children, when `keel up` sets it.
    log_level: Option<&'static str>,
    exits_tx: mpsc::UnboundedSender<(String, String)>,
    /// Children that exited by themselves: name and how.
    exits: mpsc::UnboundedReceiver<(String, String)>,
    supervisors: Vec<Supervised>,
    pumps: Vec<JoinHandle<()>>,
    events: Option<JoinHandle<()>>,
    /// Name and pid of every child started, for the banner.
    pids: Vec<(String, Option<u32>)>,
    /// The monitor's URL, once planned.
    monitor: String,
    http: reqwest::Client,
    /// TLS towards the tier, with `--tls`.
    tls: Option<keel_auth::tls::ClientConfig>,
    /// Processes stopped with SIGSTOP by `keel chaos pause`.
    paused: Vec<String>,
    /// The partitions in force and the children's fault files.
    partitions: Partitions,
}

impl Tier {
    fn new(
        exe: PathBuf,
        width: usize,
        log_level: Option<&'static str>,
        partitions: Partitions,
        tls: Option<keel_auth::tls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let mut http = reqwest::Client::builder();
        if let Some(tls) = &tls {
            http = http.tls_backend_preconfigured(tls.clone());
        }
        let http = http.build().context("cannot set up the HTTP client")?;
        Ok(Tier {
            exe,
            width,
            log_level,
            exits_tx,
            exits,
            supervisors: Vec::new(),
            pumps: Vec::new(),
            events: None,
            pids: Vec::new(),
            monitor: String::new(),
            http,
            tls,
            paused: Vec::new(),
            partitions,
        })
    }

    /// Every planned process and its state, for `keel chaos`.
    fn processes(&self, plan: &Plan) -> Vec<ProcessInfo> {
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

    /// The pid of `name` if its process is still running.
    fn running(&self, name: &str) -> Option<u32> {
        self.supervisors
            .iter()
            .rev()
            .find(|s| s.name == name && !s.task.is_finished())
            .and_then(|s| s.pid)
    }

    /// Carries out a `keel chaos` action on `name`.
    async fn act(
        &mut self,
        plan: &Plan,
        name: &str,
        action: Action,
    ) -> Result<Done, (reqwest::StatusCode, keel_core::ApiError)> {
        use keel_core::ApiError;
        use reqwest::StatusCode;
        let Some(spec) = plan.all().find(|s| s.name == name) else {
            let names: Vec<&str> = plan.all().map(|s| s.name.as_str()).collect();
            return Err((
                StatusCode::NOT_FOUND,
                ApiError::new(
                    "no_such_process",
                    format!("keel up runs no {name:?}; it runs {}", names.join(", ")),
                ),
            ));
        };
        let pid = self.running(name);
        let conflict = |why: String| Err((StatusCode::CONFLICT, ApiError::new("wrong_state", why)));
        let signal = |pid: u32, signal: Signal| {
            i32::try_from(pid)
                .ok()
                .map(|p| kill(Pid::from_raw(p), signal).is_ok())
                .unwrap_or(false)
        };
        let paused = self.paused.iter().any(|n| n == name);
        let (message, state) = match (action, pid) {
            (Action::Kill, Some(pid)) => {
                signal(pid, Signal::SIGKILL);
                self.paused.retain(|n| n != name);
                (format!("killed {name} (pid {pid}, SIGKILL)"), "exited")
            }
            (Action::Pause, Some(pid)) if !paused => {
                signal(pid, Signal::SIGSTOP);
                self.paused.push(name.to_owned());
                (format!("paused {name} (pid {pid}, SIGSTOP)"), "paused")
            }
            (Action::Pause, Some(_)) => return conflict(format!("{name} is already paused")),
            (Action::Resume, Some(pid)) if paused => {
                signal(pid, Signal::SIGCONT);
                self.paused.retain(|n| n != name);
                (format!("resumed {name} (pid {pid}, SIGCONT)"), "running")
            }
            (Action::Resume, Some(_)) => return conflict(format!("{name} is not paused")),
            (Action::Restart, _) => {
                if let Some(pid) = pid {
                    signal(pid, Signal::SIGKILL);
                }
                self.reap(name).await;
                if let Err(e) = self.spawn(spec) {
                    return Err((
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ApiError::new("restart_failed", format!("{e:#}")),
                    ));
                }
                let pid = self.running(name).unwrap_or_default();
                if self.partitions.cut_from_clients(name) {
                    // Its namespace drops what keel up sends: the check could only time out.
                    (
                        format!(
                            "restarted {name} (pid {pid}) in its namespace; its health is not \
                             checked: a partition cuts it off from the clients, keel up among them"
                        ),
                        "running",
                    )
                } else {
                    if let Err(e) = self.wait_healthy(spec).await {
                        return Err((
                            StatusCode::INTERNAL_SERVER_ERROR,
                            ApiError::new("restart_failed", format!("{e:#}")),
                        ));
                    }
                    let pid = self.running(name).unwrap_or_default();
                    (format!("restarted {name} (pid {pid}), healthy"), "running")
                }
            }
            (_, None) => {
                return conflict(format!(
                    "{name} is not running; `keel chaos restart {name}` starts it again"
                ));
            }
        };
        Ok(Done {
            name: name.to_owned(),
            action,
            pid: self.running(name).or(pid),
            state: state.to_owned(),
            message,
        })
    }

    /// Waits for the supervisor task of `name`'s last process to end (it was killed). Its
    /// exit report, if it sent one, is skipped by the main loop once the new process runs.
    async fn reap(&mut self, name: &str) {
        let Some(i) = self.supervisors.iter().rposition(|s| s.name == name) else {
            return;
        };
        let supervised = self.supervisors.remove(i);
        drop(supervised.stop);
        let _ = tokio::time::timeout(STOP_GRACE, supervised.task).await;
    }

    /// The monitor, then the node that should be primary, then the others — each only
    /// after the one before answers `/health`.
    async fn start_all(&mut self, plan: &Plan) -> anyhow::Result<()> {
        self.monitor.clone_from(&plan.monitor.url);
        self.spawn(&plan.monitor)?;
        self.wait_healthy(&plan.monitor).await?;
        self.follow_events()?;

        // The node the monitor recorded as primary in an earlier run, else app1: the
        // first node to register becomes primary, and the recorded primary, when it
        // comes back first, keeps the role (in a new epoch) rather than waiting for a
        // standby that is not yet promotable.
        let recorded = self
            .cluster()
            .await
            .and_then(|v| v.primary)
            .map(|p| p.node.to_string());
        let first = recorded
            .as_deref()
            .and_then(|name| plan.nodes.iter().position(|s| s.name == name))
            .unwrap_or(0);
        let order =
            std::iter::once(first).chain((0..plan.nodes.len()).filter(move |&i| i != first));
        for (started, i) in order.enumerate() {
            let spec = &plan.nodes[i];
            self.spawn(spec)?;
            self.wait_healthy(spec).await?;
            if started == 0 {
                self.wait_for_primary().await;
            }
        }
        self.wait_for_promotable(plan).await;
        for spec in plan.services.iter().chain(std::iter::once(&plan.proxy)) {
            self.spawn(spec)?;
            self.wait_healthy(spec).await?;
        }
        self.wait_for_route(&plan.proxy_admin).await;
        Ok(())
    }

    /// Waits until the proxy's cluster route knows the primary, so that the first request
    /// to `/v1/…` through the front door finds it.
    async fn wait_for_route(&mut self, admin: &str) {
        let url = format!("{admin}/v1/cluster");
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < deadline {
            let view: Option<serde_json::Value> = match self.http.get(&url).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if view.is_some_and(|v| !v["primary"].is_null()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("note: the proxy does not know the primary yet; its log above says why");
    }

    /// Prints the monitor's events as they happen, for as long as `keel up` runs.
    fn follow_events(&mut self) -> anyhow::Result<()> {
        let http = stream_client(Duration::from_secs(1), self.tls.clone())?;
        self.events = Some(tokio::spawn(follow_events(http, self.monitor.clone())));
        Ok(())
    }

    /// The monitor's view, or `None` when it does not answer.
    async fn cluster(&self) -> Option<ClusterView> {
        let resp = self
            .http
            .get(format!("{}/v1/cluster", self.monitor))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// Waits until the monitor names a primary that heartbeats, with no failover
    /// running; goes on with a note when that takes longer than [`SETTLE_TIMEOUT`] (the
    /// other nodes may be what it waits for).
    async fn wait_for_primary(&mut self) {
        let ok = self
            .settle(|v| {
                !v.failover_in_progress
                    && v.primary
                        .as_ref()
                        .is_some_and(|p| v.nodes.iter().any(|n| n.node == p.node && n.healthy))
            })
            .await;
        if !ok {
            println!(
                "note: the monitor names no live primary after {} s; starting the other nodes anyway \
                 (its events above say why)",
                SETTLE_TIMEOUT.as_secs()
            );
        }
    }

    /// Waits until every node has registered and every standby has caught up and is
    /// promotable, so that the tier the banner announces can fail over at once; goes on
    /// with a note otherwise.
    async fn wait_for_promotable(&mut self, plan: &Plan) {
        let ok = self
            .settle(|v| {
                // A node answers /health before it has registered: the view may not list
                // it yet, and a standby missing from it is not one that is ready.
                let registered = plan
                    .nodes
                    .iter()
                    .all(|s| v.nodes.iter().any(|n| n.node.as_str() == s.name));
                registered
                    && v.nodes
                        .iter()
                        .filter(|n| n.role == Role::Standby)
                        .all(|n| n.promotable)
            })
            .await;
        if !ok {
            println!(
                "note: not every standby is promotable after {} s; `keel client cluster` says why",
                SETTLE_TIMEOUT.as_secs()
            );
        }
    }

    /// Polls the monitor's view until `done` holds; `false` after [`SETTLE_TIMEOUT`].
    async fn settle(&mut self, done: impl Fn(&ClusterView) -> bool) -> bool {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.cluster().await.is_some_and(|v| done(&v)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(&mut self, spec: &Spec) -> anyhow::Result<()> {
        let mut command = match (&spec.netns, self.partitions.net()) {
            // `ip netns exec` enters the namespace and execs keel: the pid stays the one
            // that is signalled and waited for.
            (Some(ns), Some(net)) => {
                let mut command = Command::new(net.ip());
                command.args(["netns", "exec", ns]).arg(&self.exe);
                command
            }
            _ => Command::new(&self.exe),
        };
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Should `keel up` itself fail, its children must not outlive it.
            .kill_on_drop(true);
        // Stopped by SIGTERM from here, in order; a terminal's Ctrl-C is ours to act on.
        command.env(keel_core::shutdown::SUPERVISED_ENV, "1");
        if let Some(level) = self.log_level {
            command.env("KEEL_LOG", level);
        }
        if let Some(file) = self.partitions.file(&spec.name) {
            command.env(FAULTS_FILE_ENV, file);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", spec.name))?;
        let prefix = format!("{:width$} | ", spec.name, width = self.width);
        if let Some(out) = child.stdout.take() {
            self.pumps.push(tokio::spawn(pump(prefix.clone(), out)));
        }
        if let Some(err) = child.stderr.take() {
            self.pumps.push(tokio::spawn(pump(prefix, err)));
        }
        let pid = child.id();
        self.pids.retain(|(n, _)| *n != spec.name);
        self.pids.push((spec.name.clone(), pid));
        self.paused.retain(|n| *n != spec.name);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(
            spec.name.clone(),
            child,
            stop_rx,
            self.exits_tx.clone(),
        ));
        self.supervisors.push(Supervised {
            name: spec.name.clone(),
            pid,
            stop,
            task,
        });
        Ok(())
    }

    /// The command that starts `spec` again by hand: in its namespace, or with its fault
    /// file, so that a partition in force still holds.
    fn command_line(&self, spec: &Spec) -> String {
        let keel = shell_line(&self.exe, &spec.args);
        match (
            &spec.netns,
            self.partitions.net(),
            self.partitions.file(&spec.name),
        ) {
            (Some(ns), Some(net), _) => format!(
                "{} netns exec {} {keel}",
                shell_quote(&path_arg(net.ip())),
                shell_quote(ns)
            ),
            (_, _, Some(file)) => {
                format!("{FAULTS_FILE_ENV}={} {keel}", shell_quote(&path_arg(&file)))
            }
            _ => keel,
        }
    }

    /// Polls `/health` until it answers 200; fails when any child exits meanwhile.
    async fn wait_healthy(&mut self, spec: &Spec) -> anyhow::Result<()> {
        let health = spec.health.clone();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok((name, how)) = self.exits.try_recv() {
                bail!("{name} exited during startup ({how}); its output is above");
            }
            let ok = self
                .http
                .get(&health)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer {health} within {STARTUP_TIMEOUT:?}; its output is above",
                    spec.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the monitor, then the primary, then the standbys (see the module's doc);
    /// SIGKILL for those still there [`STOP_GRACE`] after the first SIGTERM; a line for
    /// each.
    async fn shutdown(&mut self) {
        // Asked before the monitor goes: after that, nobody knows.
        let primary = self
            .cluster()
            .await
            .and_then(|v| v.primary)
            .map(|p| p.node.to_string());
        if let Some(events) = self.events.take() {
            events.abort();
        }
        let rank = |name: &str| {
            if name == PROXY {
                0
            } else if name.starts_with("service") {
                1
            } else if name == MONITOR {
                2
            } else if Some(name) == primary.as_deref() {
                3
            } else {
                4
            }
        };
        let mut supervisors = std::mem::take(&mut self.supervisors);
        // Stable: the standbys keep their start order.
        supervisors.sort_by_key(|s| rank(&s.name));
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for Supervised { stop, task, .. } in supervisors {
            // A closed channel belongs to a child that already exited.
            let _ = stop.send(deadline);
            match task.await {
                Ok(Some(line)) => println!("{line}"),
                Ok(None) => {}
                Err(e) => eprintln!("keel: a supervisor task failed: {e}"),
            }
        }
        // Those that ended by themselves meanwhile (a signal sent to the whole group).
        while let Ok((name, how)) = self.exits.try_recv() {
            println!("{name} exited ({how})");
        }
        // Let the last lines of output through; a grandchild holding a pipe open must
        // not keep us here.
        let pumps = std::mem::take(&mut self.pumps);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for pump in pumps {
                let _ = pump.await;
            }
        })
        .await;
    }
}

impl Drop for Tier {
    /// Once the children are stopped (or, when `keel up` ends by an error, killed), the
    /// namespaces of `--netns` go, with a line that says so.
    fn drop(&mut self) {
        for line in self.partitions.teardown() {
            println!("{line}");
        }
    }
}

/// Prints every event of the monitor, one line each, from its first (`since=0`: the
/// history of this monitor's life, so that nothing between its start and this
/// subscription is missed). When the stream breaks (the monitor was killed), it
/// reconnects every half second, quietly, and resumes after the last event printed.
async fn follow_events(http: reqwest::Client, monitor: String) {
    let mut last = 0;
    loop {
        if let Ok(mut stream) = EventStream::open(&http, &monitor, Some(last)).await {
            while let Ok(Some(event)) = stream.next().await {
                // The monitor replays only what follows `since`; this guards against
                // printing an event twice should it ever replay more.
                if event.id > last {
                    last = event.id;
                    let mut out = std::io::stdout().lock();
                    // Nowhere to report a closed stdout.
                    let _ = writeln!(out, "{}", event.line());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for the child to exit (reported on `exits`) or to be told to stop (then stops
/// it and returns a line saying how it ended).
async fn supervise(
    name: String,
    mut child: Child,
    stop: oneshot::Receiver<tokio::time::Instant>,
    exits: mpsc::UnboundedSender<(String, String)>,
) -> Option<String> {
    let deadline = tokio::select! {
        status = child.wait() => {
            let how = match status {
                Ok(status) => describe(status),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = exits.send((name, how));
            return None;
        }
        // A dropped sender means `keel up` is ending without an orderly stop: stop anyway.
        deadline = stop => deadline.unwrap_or_else(|_| tokio::time::Instant::now() + STOP_GRACE),
    };
    Some(terminate(&name, &mut child, deadline).await)
}

async fn terminate(name: &str, child: &mut Child, deadline: tokio::time::Instant) -> String {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // An error means it is already gone, which `wait` below reports. A child paused
        // by `keel chaos` only acts on SIGTERM once it runs again.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    }
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

/// `exit code 1` or `signal 9`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Copies a child's output to ours, a line at a time, each with the child's name.
async fn pump(prefix: String, stream: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let mut out = std::io::stdout().lock();
                // Nowhere to report a closed stdout; the node keeps running regardless.
                let _ = writeln!(out, "{prefix}{}", text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

fn print_banner(
    args: &UpArgs,
    plan: &Plan,
    tier: &Tier,
    view: Option<&ClusterView>,
    token_path: &Path,
    token_note: &str,
) {
    let pid = |name: &str| {
        tier.pids
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, pid)| *pid)
            .map_or_else(String::new, |pid| format!("  pid {pid}"))
    };
    let epoch = view.map_or_else(String::new, |v| format!(", epoch {}", v.epoch));
    let mut text = format!("\nkeel data tier is up (sync replication{epoch}):\n");
    let width = plan.all().map(|s| s.name.len()).max().unwrap_or(0);
    text.push_str(&format!(
        "  {:width$}  {:7}  {}{}\n",
        MONITOR,
        "",
        plan.monitor.url,
        pid(MONITOR)
    ));
    for spec in &plan.nodes {
        // The role the monitor gave, not the one `keel up` hoped for.
        let role = view
            .and_then(|v| v.nodes.iter().find(|n| n.node.as_str() == spec.name))
            .map_or("?", |n| n.role.as_str());
        text.push_str(&format!(
            "  {:width$}  {role:7}  {}{}\n",
            spec.name,
            spec.url,
            pid(&spec.name)
        ));
    }
    text.push_str("front door and app tier:\n");
    text.push_str(&format!(
        "  {:width$}  {:7}  {}  (admin {}){}\n",
        PROXY,
        "",
        plan.proxy.url,
        plan.proxy_admin,
        pid(PROXY)
    ));
    for spec in &plan.services {
        text.push_str(&format!(
            "  {:width$}  {:7}  {}{}\n",
            spec.name,
            "",
            spec.url,
            pid(&spec.name)
        ));
    }
    text.push_str(&format!(
        "  data in {}, admin token in {} ({token_note})\n",
        args.data_dir.display(),
        token_path.display()
    ));
    if args.tls {
        text.push_str(&format!(
            "  TLS between every process, certificates in {} (keel certs adds more)\n",
            args.data_dir.join("tls").display()
        ));
    }
    match tier.partitions.net() {
        Some(net) => text.push_str(&format!(
            "  the monitor and the nodes in {}; keel chaos partition: the kernel drops packets between them\n\n",
            net.describe()
        )),
        None => text.push_str(
            "  keel chaos partition: a fault filter in keel's own network layer (keel up --netns, as root: network namespaces)\n\n",
        ),
    }
    let monitor = if args.monitor_port == 8070 && tier.partitions.net().is_none() && !args.tls {
        String::new()
    } else {
        format!(" --monitor {}", plan.monitor.url)
    };
    // With --tls, the CA that the client checks the tier's certificates against.
    let (monitor, curl_ca) = if args.tls {
        let ca = args.data_dir.join("tls").join("ca.pem");
        (
            format!("{monitor} --tls-ca {}", ca.display()),
            format!(" --cacert {}", ca.display()),
        )
    } else {
        (monitor, String::new())
    };
    let token =
        if args.data_dir == Path::new("./keel-data") || args.data_dir == Path::new("keel-data") {
            String::new()
        } else {
            format!(" --token-file {}", token_path.display())
        };
    let primary_url = view
        .and_then(|v| v.primary.as_ref())
        .and_then(|p| plan.nodes.iter().find(|s| s.name == p.node.as_str()))
        .or(plan.nodes.first())
        .map_or_else(String::new, |s| s.url.clone());
    text.push_str("Try, in another terminal:\n");
    let front = if args.tls {
        format!("{curl_ca} https://localhost:{}", args.proxy_port)
    } else {
        format!(" localhost:{}", args.proxy_port)
    };
    text.push_str(&format!(
        "  curl -s{front}/                     # hello and visits, from a service\n"
    ));
    text.push_str(&format!(
        "  curl -s{front}/v1/counters/visits   # the data tier, through the proxy\n"
    ));
    text.push_str(&format!("  keel client{monitor} cluster\n"));
    text.push_str(&format!("  keel client{monitor} set greeting=hello\n"));
    text.push_str(&format!("  keel client{monitor} state all\n"));
    // `localhost:PORT` as in the other lines, unless the node has an address of its own.
    let primary_url = primary_url
        .replace("http://127.0.0.1:", "localhost:")
        .replace("https://127.0.0.1:", "https://localhost:");
    text.push_str(&format!("  curl -s{curl_ca} {primary_url}/v1/entries\n"));
    text.push_str(&format!(
        "  keel client{monitor}{token} kill-primary --watch   # a standby takes over\n"
    ));
    text.push_str(&format!(
        "  keel client{monitor}{token} failover               # and back, by hand\n"
    ));
    text.push_str(
        "The monitor's events follow. Ctrl-C stops everything (the front door first, then the monitor).\n",
    );
    print!("{text}");
    let _ = std::io::stdout().flush();
}
