//! [`run`]: the monitor's life — load the state, serve, drive the state machine, stop.
//!
//! One task (the core) owns the [`Monitor`]. Requests reach it through an mpsc channel
//! with a oneshot for the answer; a timer feeds it ticks; probe tasks feed it their
//! results. The core carries out the machine's outputs in order, and awaits each
//! [`Output::Persist`] before it sends the answer behind it, so no node ever acts on a
//! state that a crash could undo.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use keel_auth::{ClusterSecret, Hosts, Signer};
use keel_core::NodeId;
use keel_core::faults::Faults;
use keel_core::token::Token;
use keel_http::Guard;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::machine::{Answer, Input, Monitor, Output, Refusal, Stats};
use crate::settings::{Settings, SettingsError};
use crate::store::{Store, StoreError};
use crate::wire::{ClusterView, EventRecord};

/// The events of the monitor's life kept for replay on `GET /v1/events`.
pub(crate) type EventLog = keel_http::EventLog<EventRecord>;

/// How many events are kept for replay.
pub const HISTORY: usize = 10_000;

/// An event of the machine, stamped with the wall-clock time for people (never compared
/// with another clock).
fn record_of(event: crate::machine::Event) -> EventRecord {
    EventRecord {
        id: event.id,
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
}

/// A message to the core.
pub(crate) enum Msg {
    /// An input; requests carry the channel for their answer.
    Input(Input, Option<oneshot::Sender<Result<Answer, Refusal>>>),
    /// The cluster view, for `GET /v1/cluster` and `/health`.
    Cluster(oneshot::Sender<ClusterView>),
    /// The view and the counters, for `/metrics`.
    Metrics(oneshot::Sender<(ClusterView, Stats)>),
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
    let (store, state) = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .map_err(|e| MonitorError::Serve(std::io::Error::other(e)))??;
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

    let (mut monitor, mut started) = Monitor::new(config.settings, state, Instant::now());
    if let Some(floor) = config.epoch_floor {
        started.extend(monitor.raise_epoch_floor(floor));
    }
    let state = monitor.state();
    tracing::info!(
        listen = %config.listen, state = %store.path().display(), version = state.version,
        epoch = %state.epoch, primary = state.primary.as_ref().map_or("-", NodeId::as_str),
        "monitor started"
    );
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
    });
    let core = Core {
        monitor,
        store,
        events,
        rx: core_rx,
        tx: core_tx.downgrade(),
        probe_client,
        signer: config
            .secret
            .as_ref()
            .map(|s| Signer::new(s.key(), MONITOR_ID)),
        faults: Faults::from_env(),
    };
    let mut core_task = tokio::spawn(core.run(started));

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
    tracing::info!("monitor stopped");
    result
}

/// The task that owns the state machine.
struct Core {
    monitor: Monitor,
    store: Store,
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
}

impl Core {
    /// Runs until aborted (after the server drained) or until a persist fails. It does
    /// not stop by itself at shutdown: requests still draining need their answers.
    async fn run(mut self, started: Vec<Output>) -> Result<(), MonitorError> {
        self.carry_out(started, None).await?;
        // Ticks at least every half interval catch every timeout within that much; the
        // machine's own deadlines (a suspicion, a lease's end) are met exactly.
        let period = self.monitor.settings().heartbeat_interval / 2;
        let mut next_tick = Instant::now() + period;
        loop {
            let wake = match self.monitor.next_deadline() {
                Some(d) => next_tick.min(d),
                None => next_tick,
            };
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    self.message(msg).await?;
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_tick {
                        next_tick = now + period;
                    }
                    let out = self.monitor.handle(Input::Tick, now);
                    self.carry_out(out, None).await?;
                }
            }
        }
    }

    async fn message(&mut self, msg: Msg) -> Result<(), MonitorError> {
        match msg {
            Msg::Input(input, reply) => {
                let out = self.monitor.handle(input, Instant::now());
                self.carry_out(out, reply).await
            }
            Msg::Cluster(reply) => {
                let _ = reply.send(self.monitor.cluster_view(Instant::now()));
                Ok(())
            }
            Msg::Metrics(reply) => {
                let view = self.monitor.cluster_view(Instant::now());
                let _ = reply.send((view, self.monitor.stats()));
                Ok(())
            }
        }
    }

    /// Carries out the machine's outputs in order.
    async fn carry_out(
        &mut self,
        out: Vec<Output>,
        mut reply: Option<oneshot::Sender<Result<Answer, Refusal>>>,
    ) -> Result<(), MonitorError> {
        for output in out {
            match output {
                Output::Persist(state) => {
                    let store = self.store.clone();
                    let version = state.version;
                    let saved = tokio::task::spawn_blocking(move || store.save(&state))
                        .await
                        .map_err(|e| MonitorError::Serve(std::io::Error::other(e)))?;
                    if let Err(e) = saved {
                        // The machine has moved on in memory; answering from that state
                        // could hand out an epoch a restart would reuse. Stop instead.
                        tracing::error!(error = %e, version, "cannot persist the cluster state; stopping");
                        return Err(e.into());
                    }
                }
                Output::Probe { node, url, probe } => self.probe(node, url, probe),
                Output::Event(event) => {
                    let record = self.events.publish(record_of(event));
                    // The kind is the message (`promoted`, `suspected`); the sentence
                    // rides along for people reading the log.
                    tracing::info!(
                        id = record.id,
                        node = record.node.as_ref().map(NodeId::as_str).unwrap_or("-"),
                        epoch = %record.epoch, detail = %record.message,
                        "{}", record.kind.as_str()
                    );
                }
                Output::Reply(answer) => {
                    if let Some(tx) = reply.take() {
                        // The requester may have gone away; the state is durable anyway.
                        let _ = tx.send(answer);
                    }
                }
            }
        }
        Ok(())
    }

    /// `GET {url}/health` with a timeout of one heartbeat interval, in its own task; the
    /// result comes back as an input. A probe the fault filter blocks fails at once, as a
    /// refused connection would.
    fn probe(&self, node: NodeId, url: String, probe: u64) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let client = self.probe_client.clone();
        let timeout = self.monitor.settings().heartbeat_interval;
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

/// `GET {url}/health`, signed when the monitor holds the cluster secret; then the answer
/// counts only if the member that answered signed it.
async fn probe_once(
    client: &reqwest::Client,
    signer: Option<&Signer>,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let target = format!("{url}/health");
    let mut request = client.get(&target).timeout(timeout);
    let signed = match signer {
        Some(signer) => {
            let signed = signer
                .sign("GET", &target, b"")
                .map_err(|e| e.to_string())?;
            request = request.header(keel_auth::AUTH_HEADER, &signed.header);
            Some(signed)
        }
        None => None,
    };
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let header = keel_auth::signature_of(response.headers());
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if let (Some(signer), Some(signed)) = (signer, &signed) {
        signer
            .check_answer(signed, header.as_deref(), status.as_u16(), Some(&body))
            .map_err(|e| format!("answer not from a member: {e}"))?;
    }
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    Ok(())
}
