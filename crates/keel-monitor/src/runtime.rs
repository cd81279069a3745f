//! [`run`]: the monitor's life — load the state, serve, drive the state machine, stop.
//!
//! One task (the core) owns the decision machine, [`Groups`]: each group of nodes'
//! [`crate::Monitor`] and the slot table (one group, `g1`, unless `--groups` names
//! more). Requests reach it through an mpsc channel
//! with a oneshot for the answer; a timer feeds it ticks; probe tasks feed it their
//! results. The core carries out the machine's outputs in order, and awaits each
//! [`GroupsOutput::Persist`] before it sends the answer behind it, so no node ever acts on a
//! state that a crash could undo.
//!
//! Alone, a monitor persists to `monitor.json`. In a group (`--peers`), persisting is
//! committing through Raft ([`crate::raft`]), and only the leader has a machine: it builds
//! one from the replicated state when it wins an election, and drops it the moment it
//! loses the leadership or a commit fails. Followers refuse node requests with `421
//! not_leader`, naming the leader. A leader renews a node's lease only while a majority
//! of monitors has acknowledged it recently ([`crate::raft::may_renew_leases`]): after
//! that a new leader may exist, and renewals must come from it alone.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use keel_auth::{ClusterSecret, Hosts, Signer};
use keel_core::NodeId;
use keel_core::faults::Faults;
use keel_core::slots::GroupId;
use keel_core::token::Token;
use keel_http::Guard;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::machine::groups::{Groups, GroupsOutput};
use crate::machine::{Answer, Input, Refusal, Stats};
use crate::raft::COMMIT_TIMEOUT;
use crate::settings::{Settings, SettingsError};
use crate::state::{GroupsError, GroupsState};
use crate::store::{Store, StoreError};
use crate::wire::{ClusterView, EventRecord};

/// The events of the monitor's life kept for replay on `GET /v1/events`.
pub(crate) type EventLog = keel_http::EventLog<EventRecord>;

/// How many events are kept for replay.
pub const HISTORY: usize = 10_000;

/// An event of the machine, stamped with the wall-clock time for people (never compared
/// with another clock); naming its group when the monitor runs several.
fn record_of(event: crate::machine::Event, group: Option<GroupId>) -> EventRecord {
    EventRecord {
        id: event.id,
        group,
        at: keel_core::duration::rfc3339_millis(std::time::SystemTime::now()),
        kind: event.kind,
        node: event.node,
        epoch: event.epoch,
        message: event.message,
    }
}

/// The id the monitor signs its answers and probes with.
pub const MONITOR_ID: &str = "monitor";

/// How long in-flight requests get to finish once the monitor is told to stop.
const GRACE: Duration = Duration::from_secs(5);

/// A monitor in a group of monitors (`--id`, `--peers`).
#[derive(Debug, Clone)]
pub struct RaftSetup {
    /// This monitor's number (`m2` → 2).
    pub num: crate::raft::MonitorNum,
    /// Every monitor of the group, this one included.
    pub peers: crate::raft::Peers,
}

/// Everything `keel monitor` is told on its command line.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Where to serve the protocol.
    pub listen: SocketAddr,
    /// Where `monitor.json` lives (created when missing).
    pub data_dir: PathBuf,
    /// Detection and lease timing.
    pub settings: Settings,
    /// The admin token for `POST /v1/failover`; without one, switchovers are refused.
    pub token: Option<Token>,
    /// The cluster secret: with it, only members may register, heartbeat and drop a
    /// standby from the sync set, and probes trust only members' answers. Without it the
    /// monitor is open to anyone who can reach it (loopback only; docs/security.md).
    pub secret: Option<ClusterSecret>,
    /// The lowest epoch the monitor may issue next: for a monitor whose state was lost
    /// while its nodes kept theirs (they report epochs it never issued, which it refuses).
    pub epoch_floor: Option<keel_core::Epoch>,
    /// TLS for the listener and the probes (`--tls-*`); plaintext without it.
    pub tls: Option<keel_auth::tls::Tls>,
    /// The URLs members reach the monitor at besides its listen address
    /// (`--advertise`): signatures for other hosts are refused.
    pub advertise: Vec<String>,
    /// The group this monitor belongs to; `None`: it runs alone.
    pub raft: Option<RaftSetup>,
    /// The groups of nodes a new monitor runs, the slots split evenly among them
    /// (`--groups`; one, `g1`, by default). A monitor with a state keeps its own.
    pub groups: Vec<GroupId>,
}

/// Why the monitor could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The timing settings do not work together.
    #[error("{0}")]
    Settings(#[from] SettingsError),
    /// The state file could not be read or written.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client for probes could not be built.
    #[error("cannot build the probe client: {0}")]
    Client(reqwest::Error),
    /// The server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
    /// The Raft group could not start.
    #[error("raft: {0}")]
    Raft(String),
    /// The groups a new monitor is told to run cannot be.
    #[error("--groups: {0}")]
    Groups(#[from] GroupsError),
}

/// A message to the core.
pub(crate) enum Msg {
    /// An input; requests carry the channel for their answer.
    Input(Input, Option<oneshot::Sender<Result<Answer, Refusal>>>),
    /// A group's view (the first group's when `None`), for `GET /v1/cluster` and
    /// `/health`; `None` for a group the monitor does not run.
    Cluster(Option<GroupId>, oneshot::Sender<Option<ClusterView>>),
    /// The slot table, for `GET /v1/slots`.
    Slots(oneshot::Sender<keel_core::slots::SlotTable>),
    /// A move to begin (slots, to), or the move under way to cancel (`None`); answered
    /// with the table once the change is durable.
    Move(
        Option<(Vec<keel_core::slots::Slot>, GroupId)>,
        oneshot::Sender<Result<keel_core::slots::SlotTable, Refusal>>,
    ),
    /// A piece of a copy is durable at the target: how far the copy has got.
    PieceCopied(CopiedSoFar),
    /// A copy of the move frozen at this version ended, and how: in how many pieces.
    Copied(u64, Result<usize, String>),
    /// The view and the counters, for `/metrics`.
    Metrics(oneshot::Sender<(ClusterView, Stats, Option<crate::metrics::RaftFigures>)>),
}

/// What the HTTP handlers share.
pub(crate) struct App {
    pub core: mpsc::Sender<Msg>,
    pub events: Arc<EventLog>,
    /// Checks members' signatures and the admin credential; signs answers to members.
    pub guard: Arc<Guard>,
    /// Heartbeats refused before they reached the machine (unparsable bodies).
    pub malformed_heartbeats: AtomicU64,
    /// Turns `true` when the monitor stops: event streams end so that the server can
    /// drain.
    pub stopping: watch::Receiver<bool>,
    /// The group's Raft, for the calls of the other monitors.
    pub raft: Option<crate::raft::Raft>,
}

/// Runs a monitor until `shutdown` resolves, then drains in-flight requests (up to a
/// grace period). Returns an error if the state cannot be loaded or, later, written: a
/// monitor that cannot make its decisions durable must not make any.
///
/// Its probes go through the fault filter named by `KEEL_FAULTS_FILE`
/// ([`keel_core::faults`]), which is inert when it is unset.
pub async fn run(
    config: MonitorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MonitorError> {
    config.settings.check()?;
    let dir = config.data_dir.clone();
    let (store, state) = if config.raft.is_none() {
        let (store, state) = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| MonitorError::Serve(std::io::Error::other(e)))??;
        (Some(store), state)
    } else {
        (None, None)
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| MonitorError::Bind {
            addr: config.listen,
            source,
        })?;
    let mut probe_client = reqwest::Client::builder().no_proxy();
    if let Some(tls) = &config.tls {
        probe_client = probe_client.tls_backend_preconfigured(tls.client_config());
    }
    let probe_client = probe_client.build().map_err(MonitorError::Client)?;
    let signer = config
        .secret
        .as_ref()
        .map(|s| Signer::new(s.key(), MONITOR_ID));
    let group = match &config.raft {
        Some(setup) => {
            Some(Group::start(&config, setup, probe_client.clone(), signer.clone()).await?)
        }
        None => None,
    };

    let fresh = GroupsState::new(&config.groups)?;
    if let Some(kept) = &state {
        warn_if_other_groups(kept, &fresh);
    }
    let (monitor, started) = match &store {
        Some(store) => {
            let (mut monitor, mut started) = Groups::new(
                config.settings,
                state.unwrap_or(fresh.clone()),
                Instant::now(),
            );
            if let Some(floor) = config.epoch_floor {
                started.extend(monitor.raise_epoch_floor(floor));
            }
            log_started(
                &monitor,
                &format!("monitor started ({})", store.path().display()),
            );
            (Some(monitor), started)
        }
        None => {
            tracing::info!(listen = %config.listen, "monitor started in a group; waiting for a leader");
            (None, Vec::new())
        }
    };
    let events = Arc::new(EventLog::new(HISTORY, |e: &EventRecord| e.id));
    let (core_tx, core_rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = Arc::new(App {
        core: core_tx.clone(),
        events: events.clone(),
        guard: Arc::new(Guard::new(
            "monitor",
            MONITOR_ID,
            config.secret.as_ref(),
            config.token.as_ref(),
            Hosts::of(
                config.listen,
                &config
                    .advertise
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
        )),
        malformed_heartbeats: AtomicU64::new(0),
        stopping: stop_rx.clone(),
        raft: group.as_ref().map(|g| g.raft.clone()),
    });
    let core = Core {
        monitor,
        fresh,
        settings: config.settings,
        epoch_floor: config.epoch_floor,
        store,
        group,
        stalled: false,
        events,
        rx: core_rx,
        tx: core_tx.downgrade(),
        probe_client,
        signer,
        faults: Faults::from_env(),
        copying: None,
        copy_again_at: Instant::now(),
        copied_so_far: None,
    };
    let mut core_task = tokio::spawn(core.run(started));

    let app_raft = app.raft.clone();
    let router = crate::server::router(app);
    let server = keel_http::serve_draining(
        listener,
        router,
        shutdown,
        GRACE,
        stop_tx.clone(),
        config.tls.as_ref(),
    );
    let result = tokio::select! {
        () = server => Ok(()),
        r = &mut core_task => match r {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(MonitorError::Serve(std::io::Error::other(e))),
        },
    };
    let _ = stop_tx.send(true);
    core_task.abort();
    if let Some(raft) = &app_raft {
        let _ = raft.shutdown().await;
    }
    tracing::info!("monitor stopped");
    result
}

/// A monitor with a state keeps the groups it records: say so when `--groups` names
/// others, rather than let a person believe they run.
fn warn_if_other_groups(kept: &GroupsState, asked: &GroupsState) {
    let names = |s: &GroupsState| {
        s.groups
            .keys()
            .map(GroupId::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let (kept, asked) = (names(kept), names(asked));
    if kept != asked {
        tracing::warn!(
            recorded = %kept, asked = %asked,
            "this monitor's state records other groups than --groups names; it runs the recorded ones (--groups is for a new monitor)"
        );
    }
}

/// Says what a monitor starts with: each group's version, epoch and primary.
fn log_started(monitor: &Groups, what: &str) {
    for name in monitor.names() {
        if let Some(state) = monitor.state().groups.get(&name) {
            tracing::info!(
                group = %name, version = state.version, epoch = %state.epoch,
                primary = state.primary.as_ref().map_or("-", NodeId::as_str),
                "{what}"
            );
        }
    }
}

/// The task that owns the state machine.
struct Core {
    /// The decision machine: always when alone; in a group, only while this monitor
    /// leads.
    monitor: Option<Groups>,
    /// The state a monitor with none starts from (`--groups`).
    fresh: GroupsState,
    settings: Settings,
    epoch_floor: Option<keel_core::Epoch>,
    /// `monitor.json`, when alone.
    store: Option<Store>,
    /// The Raft group, when in one.
    group: Option<Group>,
    /// A commit timed out while this monitor led: it decides again only after a new
    /// election or once a majority acknowledges it again.
    stalled: bool,
    events: Arc<EventLog>,
    rx: mpsc::Receiver<Msg>,
    // Weak: the core must not keep its own channel open; probes upgrade it while they run.
    tx: mpsc::WeakSender<Msg>,
    probe_client: reqwest::Client,
    /// Signs probes and checks the answers: with the cluster secret, only a member's
    /// answer counts as alive, so a process that took a dead primary's port cannot hold
    /// off its failover.
    signer: Option<Signer>,
    /// The nodes the monitor must not connect to (`keel chaos partition`).
    faults: Faults,
    /// The move whose copy runs now (its freeze version), and when a failed copy may
    /// be tried again.
    copying: Option<u64>,
    copy_again_at: Instant,
    /// How far the last copy got, so that the next, between the same two nodes, goes on
    /// from there.
    copied_so_far: Option<CopiedSoFar>,
}

/// Where a copy of a move stopped: its freeze version, its two nodes, the last piece's
/// end and how many pieces that was.
#[derive(Debug, Clone)]
pub(crate) struct CopiedSoFar {
    since: u64,
    from: NodeId,
    to: NodeId,
    upto: keel_client::node::Mark,
    pieces: usize,
}

/// The Raft side of a monitor in a group.
struct Group {
    raft: crate::raft::Raft,
    sm: crate::raft::sm::StateMachine,
    num: crate::raft::MonitorNum,
    peers: crate::raft::Peers,
    metrics: watch::Receiver<openraft::RaftMetrics<crate::raft::MonitorNum, openraft::BasicNode>>,
    /// The leader last seen, the state last seen, and what changed since the start.
    seen_leader: Option<crate::raft::MonitorNum>,
    seen_state: openraft::ServerState,
    leader_changes: u64,
    elections: u64,
}

impl Group {
    /// Opens the Raft database in the data directory and joins the group. The
    /// lowest-numbered monitor sets the membership up the first time (later starts find it
    /// in the log and leave it be).
    async fn start(
        config: &MonitorConfig,
        setup: &RaftSetup,
        client: reqwest::Client,
        signer: Option<Signer>,
    ) -> Result<Self, MonitorError> {
        use crate::raft::{log, net, sm};
        let dir = config.data_dir.clone();
        let db = tokio::task::spawn_blocking(move || log::open(&dir))
            .await
            .map_err(|e| MonitorError::Raft(e.to_string()))?
            .map_err(MonitorError::Raft)?;
        let machine = sm::StateMachine::open(db.clone()).map_err(MonitorError::Raft)?;
        let network = net::Network::new(client, signer, Faults::from_env());
        let raft_config = crate::raft::config()
            .validate()
            .map_err(|e| MonitorError::Raft(e.to_string()))?;
        let raft = crate::raft::Raft::new(
            setup.num,
            Arc::new(raft_config),
            network,
            log::LogStore::new(db),
            machine.clone(),
        )
        .await
        .map_err(|e| MonitorError::Raft(e.to_string()))?;
        let first = setup.peers.0.keys().next().copied();
        if first == Some(setup.num) {
            let members: std::collections::BTreeMap<_, _> = setup
                .peers
                .0
                .iter()
                .map(|(n, url)| (*n, openraft::BasicNode::new(url)))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(peers = %setup.peers, "monitor group set up"),
                Err(e) => tracing::debug!(error = %e, "monitor group already set up"),
            }
        }
        let metrics = raft.metrics();
        Ok(Self {
            raft,
            sm: machine,
            num: setup.num,
            peers: setup.peers.clone(),
            metrics,
            seen_leader: None,
            seen_state: openraft::ServerState::Learner,
            leader_changes: 0,
            elections: 0,
        })
    }

    /// Counts leader changes and the elections this monitor stood in.
    fn observe(&mut self) {
        let (leader, state) = {
            let m = self.metrics.borrow();
            (m.current_leader, m.state)
        };
        if leader.is_some() && leader != self.seen_leader {
            self.leader_changes += 1;
            self.seen_leader = leader;
        }
        if state == openraft::ServerState::Candidate && self.seen_state != state {
            self.elections += 1;
        }
        self.seen_state = state;
    }

    /// The Raft figures for `/metrics`.
    fn figures(&self) -> crate::metrics::RaftFigures {
        let m = self.metrics.borrow();
        crate::metrics::RaftFigures {
            term: m.current_term,
            leader: m.state == openraft::ServerState::Leader,
            leader_changes: self.leader_changes,
            elections: self.elections,
            last_log: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
        }
    }

    /// Whether this monitor leads now.
    fn leads(&self) -> bool {
        let m = self.metrics.borrow();
        m.state == openraft::ServerState::Leader && m.current_leader == Some(self.num)
    }

    /// The leader's URL, when one is known.
    fn leader_url(&self) -> Option<String> {
        let leader = self.metrics.borrow().current_leader?;
        self.members().remove(&leader)
    }

    /// The group's members by number, with their URLs: as the log records them (monitors
    /// added or removed since the start), else as `--peers` named them.
    fn members(&self) -> std::collections::BTreeMap<crate::raft::MonitorNum, String> {
        let recorded: std::collections::BTreeMap<_, _> = self
            .metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(n, node)| (*n, node.addr.clone()))
            .collect();
        if recorded.is_empty() {
            self.peers.0.clone()
        } else {
            recorded
        }
    }

    /// Whether this leader may renew nodes' leases now ([`crate::raft::may_renew_leases`]).
    fn confident(&self) -> bool {
        let since = self.metrics.borrow().millis_since_quorum_ack;
        crate::raft::may_renew_leases(since.map(Duration::from_millis))
    }
}

impl Core {
    /// Runs until aborted (after the server drained) or until a persist fails. It does
    /// not stop by itself at shutdown: requests still draining need their answers.
    async fn run(mut self, started: Vec<GroupsOutput>) -> Result<(), MonitorError> {
        self.carry_out(started, None).await?;
        // Ticks at least every half interval catch every timeout within that much; the
        // machine's own deadlines (a suspicion, a lease's end) are met exactly.
        let period = self.settings.heartbeat_interval / 2;
        let mut next_tick = Instant::now() + period;
        let mut metrics = self.group.as_ref().map(|g| g.metrics.clone());
        loop {
            self.drive_move();
            let wake = match self.monitor.as_ref().and_then(Groups::next_deadline) {
                Some(d) => next_tick.min(d),
                None => next_tick,
            };
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    self.message(msg).await?;
                }
                changed = async {
                    match metrics.as_mut() {
                        Some(m) => m.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        return Err(MonitorError::Raft("the Raft core stopped".into()));
                    }
                    self.leadership().await?;
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_tick {
                        next_tick = now + period;
                    }
                    if let Some(monitor) = self.monitor.as_mut() {
                        let out = monitor.handle(Input::Tick, now);
                        self.carry_out(out, None).await?;
                    }
                }
            }
        }
    }

    /// Takes up or gives up the decision machine as the leadership moves.
    async fn leadership(&mut self) -> Result<(), MonitorError> {
        if let Some(group) = self.group.as_mut() {
            group.observe();
        }
        let Some(group) = &self.group else {
            return Ok(());
        };
        let leads = group.leads();
        if !leads {
            if self.monitor.take().is_some() {
                tracing::warn!(leader = ?group.leader_url(), "this monitor no longer leads the group; another decides now");
            }
            return Ok(());
        }
        if self.monitor.is_some() {
            return Ok(());
        }
        if self.stalled && !group.confident() {
            return Ok(());
        }
        self.stalled = false;
        // Everything committed before this term must be applied before deciding on it.
        if let Err(e) = group.raft.ensure_linearizable().await {
            tracing::warn!(error = %e, "elected, but cannot confirm the leadership yet");
            return Ok(());
        }
        if !group.leads() {
            return Ok(());
        }
        let known = group
            .sm
            .current()
            .groups_state()
            .unwrap_or_else(|| self.fresh.clone());
        let term = group.metrics.borrow().current_term;
        // A new machine gives the primary a full heartbeat timeout of its own, and assumes
        // a lease granted now: no failover before it has heard from the nodes itself, and
        // none before any lease the previous leader granted has run out.
        let (mut monitor, mut started) = Groups::new(self.settings, known, Instant::now());
        if let Some(floor) = self.epoch_floor {
            started.extend(monitor.raise_epoch_floor(floor));
        }
        log_started(
            &monitor,
            &format!(
                "this monitor (m{}) leads its group of monitors, term {term}",
                group.num
            ),
        );
        self.monitor = Some(monitor);
        self.carry_out(started, None).await
    }

    /// The refusal for a request that reached a monitor that does not lead.
    fn not_leader(&self) -> Refusal {
        if self.group.as_ref().is_some_and(Group::leads) {
            return Refusal::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                crate::wire::codes::NOT_LEADER,
                "this monitor was elected leader but cannot reach a majority of its group, so it decides nothing; a leader the majority elects will",
            );
        }
        let leader = self.group.as_ref().and_then(Group::leader_url);
        let (status, message) = match &leader {
            Some(url) => (
                http::StatusCode::MISDIRECTED_REQUEST,
                format!("this monitor does not lead its group; the leader is at {url}"),
            ),
            None => (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "this monitor does not lead its group, and no leader is known yet (an election is under way, or a majority of monitors is down)".to_owned(),
            ),
        };
        let mut refusal = Refusal::new(status, crate::wire::codes::NOT_LEADER, message);
        refusal.leader = leader;
        refusal
    }

    /// Group `of`'s view (the first group's when `None`): the machine's, or on a
    /// follower, the replicated state's; in a group of monitors, with the group as this
    /// monitor sees it. `None` for a group the monitor does not run.
    fn cluster_view(&self, of: Option<&GroupId>) -> Option<ClusterView> {
        let mut view = self.machine_view(of)?;
        if let Some(group) = &self.group {
            let members = group.members();
            let m = group.metrics.borrow();
            view.monitors = Some(crate::wire::GroupView {
                answered_by: format!("m{}", group.num),
                leader: m.current_leader.map(|l| format!("m{l}")),
                leader_url: m.current_leader.and_then(|l| members.get(&l).cloned()),
                term: m.current_term,
                last_applied: m.last_applied.map(|l| l.index),
                members: members
                    .iter()
                    .map(|(n, url)| crate::wire::MonitorMember {
                        id: format!("m{n}"),
                        url: url.clone(),
                    })
                    .collect(),
            });
        }
        Some(view)
    }

    fn machine_view(&self, of: Option<&GroupId>) -> Option<ClusterView> {
        let now = Instant::now();
        match (&self.monitor, &self.group) {
            (Some(m), _) => m.cluster_view(of, now),
            (None, Some(group)) => {
                let known = group
                    .sm
                    .current()
                    .groups_state()
                    .unwrap_or_else(|| self.fresh.clone());
                Groups::new(self.settings, known, now)
                    .0
                    .cluster_view(of, now)
            }
            (None, None) => Groups::new(self.settings, self.fresh.clone(), now)
                .0
                .cluster_view(of, now),
        }
    }

    async fn message(&mut self, msg: Msg) -> Result<(), MonitorError> {
        match msg {
            Msg::Input(input, reply) => match self.monitor.as_mut() {
                Some(monitor) => {
                    let out = monitor.handle(input, Instant::now());
                    self.carry_out(out, reply).await
                }
                None => {
                    if let Some(tx) = reply {
                        let _ = tx.send(Err(self.not_leader()));
                    }
                    Ok(())
                }
            },
            Msg::Slots(reply) => {
                let table = match (&self.monitor, &self.group) {
                    (Some(m), _) => m.slots().clone(),
                    (None, Some(group)) => group
                        .sm
                        .current()
                        .groups_state()
                        .map_or_else(|| self.fresh.slots.clone(), |s| s.slots),
                    (None, None) => self.fresh.slots.clone(),
                };
                let _ = reply.send(table);
                Ok(())
            }
            Msg::Cluster(of, reply) => {
                let _ = reply.send(self.cluster_view(of.as_ref()));
                Ok(())
            }
            Msg::Move(change, reply) => {
                let Some(monitor) = self.monitor.as_mut() else {
                    let _ = reply.send(Err(self.not_leader()));
                    return Ok(());
                };
                let asked = match &change {
                    Some((slots, to)) => monitor.begin_move(slots, to),
                    None => monitor.cancel_move(),
                };
                let out = match asked {
                    Ok(out) => out,
                    Err(e) => {
                        let status = match e {
                            keel_core::slots::SlotError::UnknownGroup(_) => {
                                http::StatusCode::NOT_FOUND
                            }
                            _ => http::StatusCode::CONFLICT,
                        };
                        let _ = reply.send(Err(Refusal::new(status, "bad_move", e.to_string())));
                        return Ok(());
                    }
                };
                let version = monitor.slots().version();
                self.carry_out(out, None).await?;
                // Durable only if this monitor still decides, at that version.
                let answer = match self.monitor.as_ref().map(Groups::slots) {
                    Some(table) if table.version() == version => Ok(table.clone()),
                    _ => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
                Ok(())
            }
            Msg::PieceCopied(so_far) => {
                if let Some(monitor) = self.monitor.as_mut() {
                    monitor.piece_copied(so_far.since, so_far.pieces, Instant::now());
                }
                self.copied_so_far = Some(so_far);
                Ok(())
            }
            Msg::Copied(since, result) => {
                self.copying = None;
                match result {
                    Ok(pieces) => {
                        self.copied_so_far = None;
                        if let Some(monitor) = self.monitor.as_mut() {
                            let out = monitor.copied(since, pieces);
                            self.carry_out(out, None).await?;
                        }
                    }
                    Err(why) => {
                        tracing::warn!(since, error = %why, "copying the slots on the move failed; trying again shortly");
                        self.copy_again_at = Instant::now() + COPY_RETRY;
                    }
                }
                Ok(())
            }
            Msg::Metrics(reply) => {
                let stats = self.monitor.as_ref().map(Groups::stats).unwrap_or_default();
                let figures = self.group.as_ref().map(Group::figures);
                if let Some(view) = self.cluster_view(None) {
                    let _ = reply.send((view, stats, figures));
                }
                Ok(())
            }
        }
    }

    /// Makes `state` durable: `monitor.json` alone, a Raft commit in a group. Returns
    /// false if this monitor lost the leadership (the machine is dropped then).
    async fn persist(&mut self, state: GroupsState) -> Result<bool, MonitorError> {
        let version = state.version;
        if let Some(group) = &self.group {
            let write = group
                .raft
                .client_write(crate::raft::Command::SetGroups(state));
            let error = match tokio::time::timeout(COMMIT_TIMEOUT, write).await {
                Ok(Ok(_)) => return Ok(true),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!(
                    "no majority of monitors confirmed it within {COMMIT_TIMEOUT:?} (this monitor may be cut off from them)"
                ),
            };
            // Not committed: the machine's state in memory is ahead of the group's and
            // must not be acted on. A leader decides again from the group's state.
            tracing::warn!(error = %error, version, "the cluster state did not commit; this monitor stops deciding");
            self.monitor = None;
            self.stalled = true;
            return Ok(false);
        }
        let Some(store) = self.store.clone() else {
            return Ok(true);
        };
        let saved = tokio::task::spawn_blocking(move || store.save(&state))
            .await
            .map_err(|e| MonitorError::Serve(std::io::Error::other(e)))?;
        if let Err(e) = saved {
            // The machine has moved on in memory; answering from that state could hand
            // out an epoch a restart would reuse. Stop instead.
            tracing::error!(error = %e, version, "cannot persist the cluster state; stopping");
            return Err(e.into());
        }
        Ok(true)
    }

    /// Carries out the machine's outputs in order.
    async fn carry_out(
        &mut self,
        out: Vec<GroupsOutput>,
        mut reply: Option<oneshot::Sender<Result<Answer, Refusal>>>,
    ) -> Result<(), MonitorError> {
        // Events name their group only when there are several: one group's look as they
        // always did.
        let several = self.monitor.as_ref().is_some_and(|m| m.names().len() > 1);
        for output in out {
            match output {
                GroupsOutput::Persist(state) => {
                    if !self.persist(state).await? {
                        if let Some(tx) = reply.take() {
                            let _ = tx.send(Err(self.not_leader()));
                        }
                        return Ok(());
                    }
                }
                GroupsOutput::Probe {
                    node, url, probe, ..
                } => self.probe(node, url, probe),
                GroupsOutput::Event { group, event } => {
                    let record = self
                        .events
                        .publish(record_of(event, several.then_some(group)));
                    // The kind is the message (`promoted`, `suspected`); the sentence
                    // rides along for people reading the log.
                    tracing::info!(
                        id = record.id,
                        node = record.node.as_ref().map(NodeId::as_str).unwrap_or("-"),
                        epoch = %record.epoch, detail = %record.message,
                        "{}", record.kind.as_str()
                    );
                }
                GroupsOutput::Reply(answer) => {
                    if let Some(tx) = reply.take() {
                        // The requester may have gone away; the state is durable anyway.
                        let _ = tx.send(self.grant_if_confident(answer));
                    }
                }
            }
        }
        Ok(())
    }

    /// In a group, a node's lease is renewed only by a leader a majority acknowledged
    /// recently ([`crate::raft::may_renew_leases`]); otherwise the view goes out without it.
    fn grant_if_confident(&self, answer: Result<Answer, Refusal>) -> Result<Answer, Refusal> {
        match (answer, &self.group) {
            (Ok(Answer::View(mut view)), Some(group)) if view.lease_ms.is_some() => {
                if !group.confident() {
                    view.lease_ms = None;
                }
                Ok(Answer::View(view))
            }
            (answer, _) => answer,
        }
    }

    /// Starts the copy of the move under way when the machine says it may run and no copy
    /// runs: the source primary's export, then the target primary's import, in a task of
    /// its own whose end comes back as [`Msg::Copied`].
    fn drive_move(&mut self) {
        if self.copying.is_some() || Instant::now() < self.copy_again_at {
            return;
        }
        let Some(order) = self
            .monitor
            .as_ref()
            .and_then(|m| m.next_copy(Instant::now()))
        else {
            return;
        };
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let since = order.moving.since;
        self.copying = Some(since);
        // A copy between the same two nodes goes on from where the last one stopped:
        // what it imported is durable at the target, and the source's slots are frozen.
        let start = self
            .copied_so_far
            .clone()
            .filter(|s| s.since == since && s.from == order.from_node && s.to == order.to_node);
        let client = self.probe_client.clone();
        let signer = self.signer.clone();
        // A node cut off from the monitor (`keel chaos partition`) is not reached by the
        // copy either.
        let blocked = [&order.from_url, &order.to_url]
            .into_iter()
            .find(|url| self.faults.blocks(url))
            .cloned();
        tokio::spawn(async move {
            let result = match blocked {
                Some(url) => Err(format!(
                    "{url} is cut off from this monitor (keel's fault filter)"
                )),
                None => copy_slots(&client, signer.as_ref(), &order, start, &tx).await,
            };
            let _ = tx.send(Msg::Copied(since, result)).await;
        });
    }

    /// `GET {url}/health` with a timeout of one heartbeat interval, in its own task; the
    /// result comes back as an input. A probe the fault filter blocks fails at once, as a
    /// refused connection would.
    fn probe(&self, node: NodeId, url: String, probe: u64) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let client = self.probe_client.clone();
        let timeout = self.settings.heartbeat_interval;
        let blocked = self.faults.blocks(&url);
        let signer = self.signer.clone();
        tokio::spawn(async move {
            let ok = if blocked {
                tracing::debug!(node = %node, "probe refused by keel's fault filter (keel chaos partition)");
                false
            } else {
                match probe_once(&client, signer.as_ref(), &url, timeout).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(node = %node, error = %e, "probe failed");
                        false
                    }
                }
            };
            let _ = tx
                .send(Msg::Input(Input::ProbeResult { node, probe, ok }, None))
                .await;
        });
    }
}

/// How long after a failed copy the next is tried.
pub const COPY_RETRY: Duration = Duration::from_millis(300);
/// How long one export or import may take: a primary that stops answering is given up
/// on and the copy tried again, perhaps with its group's next primary.
pub const COPY_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET {url}/health`, signed when the monitor holds the cluster secret; then the answer
/// counts only if the member that answered signed it.
async fn probe_once(
    client: &reqwest::Client,
    signer: Option<&Signer>,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    member_call(
        client,
        signer,
        "GET",
        &format!("{url}/health"),
        Vec::new(),
        timeout,
    )
    .await
    .map(drop)
}

/// The copy of a move, piece by piece: each piece of the frozen slots' data from the
/// source primary, into the target primary, which answers once it is durable there;
/// the next piece starts where that one ended (docs/shards.md), from the first or
/// after `start`. Each piece done is reported, so that a long copy that goes on is not
/// called off, and a copy that fails can go on from there. Returns how many pieces
/// there were.
///
/// A copy with other nodes starts again from the first piece: each piece makes its
/// stretch of the slots at the target the source's, so pieces copied twice write the
/// same.
async fn copy_slots(
    client: &reqwest::Client,
    signer: Option<&Signer>,
    order: &crate::machine::groups::CopyOrder,
    start: Option<CopiedSoFar>,
    progress: &mpsc::Sender<Msg>,
) -> Result<usize, String> {
    use keel_client::node::Mark;
    /// The one field of a piece the monitor reads: where the next starts.
    #[derive(serde::Deserialize)]
    struct PieceEnd {
        upto: Option<Mark>,
    }
    let since = order.moving.since;
    let import = format!("{}/v1/slots/import", order.to_url);
    let (mut after, mut pieces) = match start {
        Some(s) => {
            tracing::info!(
                since,
                pieces = s.pieces,
                "the copy goes on from where the last one stopped"
            );
            (Some(s.upto), s.pieces)
        }
        None => (None, 0),
    };
    loop {
        let mut export = reqwest::Url::parse(&format!("{}/v1/slots/export", order.from_url))
            .map_err(|e| format!("{}: {e}", order.from_url))?;
        {
            let mut query = export.query_pairs_mut();
            query.append_pair("since", &since.to_string());
            if let Some((name, value)) = after.as_ref().map(Mark::export_param) {
                query.append_pair(name, value);
            }
        }
        let data = member_call(
            client,
            signer,
            "GET",
            export.as_str(),
            Vec::new(),
            COPY_TIMEOUT,
        )
        .await
        .map_err(|e| format!("export from {}: {e}", order.from_node))?;
        let end: PieceEnd = serde_json::from_slice(&data).map_err(|e| {
            format!(
                "export from {}: not a piece of slot data: {e}",
                order.from_node
            )
        })?;
        if let (Some(upto), Some(after)) = (&end.upto, &after)
            && upto <= after
        {
            return Err(format!(
                "export from {}: a piece ends ({upto:?}) where the one before did",
                order.from_node
            ));
        }
        member_call(client, signer, "POST", &import, data.to_vec(), COPY_TIMEOUT)
            .await
            .map_err(|e| format!("import into {}: {e}", order.to_node))?;
        pieces += 1;
        match end.upto {
            None => return Ok(pieces),
            Some(upto) => {
                tracing::info!(since, pieces, upto = ?upto, "a piece of the slots on the move copied");
                let so_far = CopiedSoFar {
                    since,
                    from: order.from_node.clone(),
                    to: order.to_node.clone(),
                    upto: upto.clone(),
                    pieces,
                };
                let _ = progress.send(Msg::PieceCopied(so_far)).await;
                after = Some(upto);
            }
        }
    }
}

/// A call to a node, signed when the monitor holds the cluster secret; the answer counts
/// only if the member that answered signed it, and only a 2xx: its body.
async fn member_call(
    client: &reqwest::Client,
    signer: Option<&Signer>,
    method: &str,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<axum::body::Bytes, String> {
    let mut request = match method {
        "POST" => client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json"),
        _ => client.get(url),
    }
    .timeout(timeout);
    let signed = match signer {
        Some(signer) => {
            let signed = signer.sign(method, url, &body).map_err(|e| e.to_string())?;
            request = request.header(keel_auth::AUTH_HEADER, &signed.header);
            Some(signed)
        }
        None => None,
    };
    if !body.is_empty() {
        request = request.body(body);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let header = keel_auth::signature_of(response.headers());
    let answer = response.bytes().await.map_err(|e| e.to_string())?;
    if let (Some(signer), Some(signed)) = (signer, &signed) {
        signer
            .check_answer(signed, header.as_deref(), status.as_u16(), Some(&answer))
            .map_err(|e| format!("answer not from a member: {e}"))?;
    }
    if !status.is_success() {
        return Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        ));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use axum::extract::{Query, State};
    use keel_client::node::Mark;

    /// A stand-in for two nodes: the source exports five keys one piece each, and the
    /// target refuses its third import once. Records where each export started.
    #[derive(Default)]
    struct Fake {
        exports_after: Mutex<Vec<Option<String>>>,
        imports: Mutex<usize>,
    }

    const KEYS: [&str; 5] = ["k1", "k2", "k3", "k4", "k5"];

    async fn serve_fake() -> (String, Arc<Fake>) {
        async fn export(
            State(fake): State<Arc<Fake>>,
            Query(q): Query<std::collections::BTreeMap<String, String>>,
        ) -> axum::Json<serde_json::Value> {
            let after = q.get("after_kv").cloned();
            fake.exports_after
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(after.clone());
            let next = KEYS
                .iter()
                .position(|k| after.as_deref().is_none_or(|a| *k > a))
                .unwrap_or(KEYS.len() - 1);
            let key = KEYS[next];
            let upto = (next + 1 < KEYS.len()).then(|| serde_json::json!({ "kv": key }));
            axum::Json(serde_json::json!({
                "since": 2, "slots": "0-99", "after": after.map(|a| serde_json::json!({ "kv": a })),
                "upto": upto, "kv": [{"key": key, "value": "dg=="}], "counters": {}, "entries": null,
            }))
        }
        async fn import(State(fake): State<Arc<Fake>>) -> http::StatusCode {
            let mut n = fake.imports.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            if *n == 3 {
                http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                http::StatusCode::OK
            }
        }
        let fake = Arc::new(Fake::default());
        let app = axum::Router::new()
            .route("/v1/slots/export", axum::routing::get(export))
            .route("/v1/slots/import", axum::routing::post(import))
            .with_state(Arc::clone(&fake));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, fake)
    }

    #[tokio::test]
    async fn a_copy_that_fails_goes_on_from_its_last_piece_between_the_same_nodes() {
        let (url, fake) = serve_fake().await;
        let order = crate::machine::groups::CopyOrder {
            moving: keel_core::slots::Moving {
                from: GroupId::new("g1").expect("a group"),
                to: GroupId::new("g2").expect("a group"),
                slots: keel_core::slots::parse_slots("0-99").expect("slots"),
                since: 2,
            },
            from_node: NodeId::new("app1").expect("a node"),
            from_url: url.clone(),
            to_node: NodeId::new("app3").expect("a node"),
            to_url: url,
        };
        let client = reqwest::Client::new();
        let (tx, mut rx) = mpsc::channel(16);
        let failed = copy_slots(&client, None, &order, None, &tx).await;
        assert!(
            failed
                .as_ref()
                .is_err_and(|e| e.contains("import into app3")),
            "{failed:?}"
        );
        let mut so_far = None;
        while let Ok(Msg::PieceCopied(s)) = rx.try_recv() {
            so_far = Some(s);
        }
        let so_far = so_far.expect("two pieces were copied");
        assert_eq!(so_far.pieces, 2);
        assert_eq!(so_far.upto, Mark::Kv("k2".to_owned()));

        let done = copy_slots(&client, None, &order, Some(so_far), &tx).await;
        assert_eq!(done, Ok(5), "five pieces in all");
        let exports = fake
            .exports_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let text: Vec<Option<&str>> = exports.iter().map(Option::as_deref).collect();
        // The first copy: from the start, after k1, after k2 (whose import failed);
        // the second goes on after k2.
        assert_eq!(
            text,
            vec![
                None,
                Some("k1"),
                Some("k2"),
                Some("k2"),
                Some("k3"),
                Some("k4")
            ]
        );
        assert_eq!(*fake.imports.lock().unwrap_or_else(|p| p.into_inner()), 6);
    }
}
