//! A keeper: one PostgreSQL server, run by keel and made a node to the monitor.
//!
//! The keeper starts its server, watches what it says of itself ([`crate::observe`]),
//! and speaks the monitor protocol through the data tier's own session
//! (`keel_node::heartbeat`) with the data tier's own machine (`keel_node::machine`)
//! behind it: roles, epochs, the lease, the sync set and promotion are decided there,
//! once, for keel's nodes and PostgreSQL alike. The keeper only carries the machine's
//! decisions out on PostgreSQL:
//!
//! | the machine asks | the keeper does |
//! |---|---|
//! | record an epoch | writes it to `<server>.keeper.json`, synced, before anything else |
//! | promote in epoch E | `pg_promote()`, then reports the promotion recorded |
//! | follow primary P | points `primary_conninfo` at P's server (asked of P's keeper, `GET /v1/pg`) |
//! | the sync set | `synchronous_standby_names = 'ANY 1 (…)'`, so a COMMIT waits for a sync standby |
//!
//! and it stops its server, and exits, when the server may no longer be primary: the
//! lease ran out (no majority renewed it), or the monitor made another primary while this
//! one still writes (deposed). A keeper always starts its server in recovery: a server
//! that was primary becomes primary again only when the monitor says so, through a
//! promotion (on a new timeline), never by being started. A keeper with no server makes
//! one: a copy of the primary's (`pg_basebackup`), or with `--init`, while the monitor has
//! never had a primary, a new cluster; a former primary is rewound (`pg_rewind`) to the
//! primary the monitor names before it starts.
//!
//! - [`links`]: what the primary's `pg_stat_replication` shows, as the machine's inputs;
//! - [`member`]: [`member::Keeper`], the state the tasks share and the machine's outputs
//!   carried out;
//! - [`api`]: its HTTP API — `/health` (signed, for the monitor's probes) and `/v1/pg`
//!   (where its server listens, for standbys to follow it).

pub mod api;
pub mod links;
pub mod member;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Role;
use keel_node::heartbeat::Member as _;
use keel_node::machine::Input;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use links::Links;
pub use member::{Action, Keeper};

use crate::observe::observe;
use crate::server::quote_literal;
use crate::{PgError, Running, Server, Setup};

/// How often the keeper asks its server what it is.
const OBSERVE_EVERY: Duration = Duration::from_millis(50);

/// How long before its lease runs out a primary's server is stopped: the monitor waits the
/// lease out (plus its drift allowance) before it promotes, and a timer and a busy
/// machine can both be late.
const FENCE_EARLY: Duration = Duration::from_millis(50);

/// Why the server is stopped when its lease runs out.
const LEASE_RAN_OUT: &str = "its lease ran out: no majority renewed it";

/// Why the server is stopped when the monitor made another primary while it writes.
const DEPOSED: &str = "another server is primary now";

/// What a keeper is told on its command line.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// Its node id, which is also its server's `cluster_name` (`pg1`).
    pub id: keel_core::NodeId,
    /// Where its HTTP API listens.
    pub listen: SocketAddr,
    /// Its API's URL as others reach it.
    pub advertise: String,
    /// The monitor, or a group's monitors separated by commas.
    pub monitor: String,
    /// Where the servers, the password and the keepers' state live.
    pub base: PathBuf,
    /// Its server's port.
    pub pg_port: u16,
    /// The cluster secret (members sign with it).
    pub secret: Option<keel_auth::ClusterSecret>,
    /// The admin token.
    pub token: Option<keel_core::token::Token>,
    /// Whether it may make a new cluster (initdb) when its directory holds none and the
    /// monitor has never had a primary.
    pub init: bool,
}

/// Why a keeper stopped.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// Its server could not be set up or started.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// Its API's address cannot be listened on.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Its server cannot be reached.
    #[error("cannot connect to PostgreSQL ({name})")]
    Connect {
        name: String,
        source: tokio_postgres::Error,
    },
    /// Its server's directory holds no cluster, and the monitor says its node is the
    /// primary: the data is gone, and making a new cluster would hide that.
    #[error(
        "{0} holds no PostgreSQL cluster, yet the monitor names this node primary: its data \
         is gone; restore it, or remove the node from the monitor so that it joins as a new standby"
    )]
    NotMade(PathBuf),
    /// Its server's directory holds no cluster and no primary appeared to copy one from.
    #[error(
        "{dir} holds no PostgreSQL cluster and the monitor named no primary to copy within \
         {waited:?}: start the first keeper with --init to make a new cluster"
    )]
    NoPrimaryToCopy { dir: PathBuf, waited: Duration },
    /// Its state file cannot be read.
    #[error("{path} is not a keeper's state: {reason}")]
    BadState { path: PathBuf, reason: String },
    /// Its HTTP client cannot be built.
    #[error("cannot set up an HTTP client: {0}")]
    Http(String),
    /// Its server ended: a keeper lives and dies with its server, so that the monitor
    /// sees the one as it sees the other.
    #[error("PostgreSQL ({0}) exited; start the keeper again to rejoin as a standby")]
    ServerExited(String),
    /// Its server was stopped so that it can never acknowledge a commit in competition
    /// with another primary.
    #[error("stopped PostgreSQL ({name}): {why}")]
    Fenced { name: String, why: String },
}

/// Runs a keeper until `shutdown` resolves or its server ends, starting it over after
/// each time it stopped its server for safety ([`KeeperError::Fenced`]: its lease ran
/// out, or another server became primary — a switchover's old primary among them): its
/// server comes back as a standby of whichever primary the monitor names, rewound if it
/// must be. A server that ended by itself ends the keeper: the monitor must see that
/// death as it would a node's.
pub async fn serve(
    config: KeeperConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), KeeperError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    loop {
        match run(config.clone(), stop_rx.clone()).await {
            // Only for what a standby can come back from: a state file that cannot be
            // written stops the keeper for good rather than in a loop.
            Err(e @ KeeperError::Fenced { .. })
                if !*stop_rx.borrow()
                    && matches!(&e, KeeperError::Fenced { why, .. } if why == LEASE_RAN_OUT || why == DEPOSED) =>
            {
                tracing::warn!("{e}: starting it again as a standby");
                // Its port and its API's are free again once the old ones are reaped.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ended => return ended,
        }
    }
}

/// Runs a keeper until `stop` says so, its server ends, or it stops its server for
/// safety; see [`serve`].
async fn run(config: KeeperConfig, stop: watch::Receiver<bool>) -> Result<(), KeeperError> {
    let setup = Setup::prepare(&config.base)?;
    let server = Server::new(config.id.as_str(), &config.base, config.pg_port);
    // The server of a keeper killed a moment ago may still be dying.
    server.wait_until_unlocked(Duration::from_secs(10))?;
    if !server.is_initialised() && !bootstrap(&config, &setup, &server, &stop).await? {
        return Ok(());
    }
    if !rewind_if_it_was_primary(&config, &setup, &server, &stop).await? {
        return Ok(());
    }
    // Whatever it was, the server starts in recovery: only a promotion makes a primary.
    setup.start_in_recovery(&server)?;
    let mut running = Running::start_supervised(&setup, &server)?;
    running.wait_ready(Duration::from_secs(60))?;
    let client = connect_when_consistent(&setup, &server, &mut running).await?;
    let running = Arc::new(std::sync::Mutex::new(running));
    let observed = observe(&client).await.ok();

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| KeeperError::Bind {
            addr: config.listen,
            source,
        })?;
    let (actions_tx, mut actions) = mpsc::unbounded_channel();
    let keeper = Arc::new(Keeper::new(config.clone(), &server, observed, actions_tx)?);
    let mut driver = Driver {
        keeper: keeper.clone(),
        setup,
        server,
        client,
        links: Links::default(),
        sync_names: None,
        following: None,
        last_grants: None,
    };
    // A promotion's lease is granted before pg_promote() begins and may be spent by the
    // time it ends: a server this keeper promotes takes no write until the lease is
    // renewed, as a data node refuses writes without one. Set now, while the server is in
    // recovery: a reload just before pg_promote() can hold the promotion up for seconds.
    driver.set_read_only(true).await;
    tracing::info!(keeper = %config.id, pg_port = config.pg_port, listen = %config.listen, "keeper started");

    let (stop_tx, stop_rx) = watch::channel(false);
    let session = tokio::spawn(keel_node::heartbeat::run(
        keeper.clone(),
        config.monitor.clone(),
        stop_rx.clone(),
    ));
    let app = api::router(keeper.clone());
    let (served_tx, _) = watch::channel(false);
    let server_task = tokio::spawn(keel_http::serve_draining(
        listener,
        app,
        async move {
            let mut stop = stop_rx;
            let _ = stop.changed().await;
        },
        Duration::from_secs(2),
        served_tx,
        None,
    ));

    let watchdog = tokio::spawn(fence_at_lease_end(keeper.clone(), running.clone()));
    let mut stopped = stop.clone();
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let ended = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            action = actions.recv() => {
                if let Some(action) = action
                    && let Err(e) = driver.carry_out(action).await
                {
                    break Err(e);
                }
            }
            () = tokio::time::sleep(OBSERVE_EVERY) => {
                if let Err(e) = driver.round(&running).await {
                    break Err(e);
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    session.abort();
    watchdog.abort();
    let _ = watchdog.await;
    let _ = server_task.await;
    // Dropping `running` (the watchdog's share is gone) stops the server with a fast
    // shutdown, unless it was fenced.
    drop(running);
    ended
}

/// Stops the server the moment a primary's lease is about to run out, whatever the loop
/// is doing (a query to a stuck server can hold it up): PostgreSQL acknowledges commits on
/// its own, so this, not a check between rounds, is what keeps them inside the lease. The
/// loop then sees the failure and exits.
async fn fence_at_lease_end(keeper: Arc<Keeper>, running: Arc<std::sync::Mutex<Running>>) {
    loop {
        let now = Instant::now();
        // A primary not yet made writable since its promotion takes no write to fence.
        let wake = if keeper.is_primary_now() && keeper.writable() {
            match keeper.lease_until() {
                Some(until) if until > now + FENCE_EARLY => until - FENCE_EARLY,
                _ => {
                    // Re-checked under the machine's lock by the loop; the server goes
                    // now, and nothing it has not acknowledged yet ever will be.
                    if let Ok(mut running) = running.lock() {
                        running.kill();
                    }
                    keeper.fail(LEASE_RAN_OUT.to_owned());
                    return;
                }
            }
        } else {
            now + OBSERVE_EVERY
        };
        // Woken early enough to see a renewal or a change of role.
        tokio::time::sleep_until(wake.min(now + OBSERVE_EVERY)).await;
    }
}

/// A server that was a primary may hold WAL the new primary never had: it is rewound to
/// the primary the monitor names before it starts, or it could not follow it. Whether it
/// was is kept in `<base>/<id>.rewind` from the first start that finds it out of recovery
/// until a rewind: a server started in recovery and stopped again before it could be
/// rewound (its keeper cut off from the monitor) looks like a standby, and is not one.
/// While the monitor cannot say who is primary, such a server is not started at all.
///
/// Whether to go on: false when told to stop while waiting.
async fn rewind_if_it_was_primary(
    config: &KeeperConfig,
    setup: &Setup,
    server: &Server,
    stop: &watch::Receiver<bool>,
) -> Result<bool, KeeperError> {
    let marker = config.base.join(format!("{}.rewind", config.id));
    if !server.is_standby() {
        std::fs::write(&marker, "")
            .map_err(|e| KeeperError::Pg(PgError::io(format!("write {}", marker.display()))(e)))?;
    }
    if !marker.exists() {
        return Ok(true);
    }
    let mut said = false;
    loop {
        if *stop.borrow() {
            return Ok(false);
        }
        match primary_elsewhere(config).await {
            Seen::Primary(source) => {
                tracing::info!(primary = %source, "rewinding to the primary with pg_rewind");
                checkpoint(setup, &source).await?;
                if let Err(e) = setup.rewind(server, &source) {
                    // pg_rewind cannot always (WAL it needs gone, a server it cannot
                    // recover): what it would have kept is set aside, and the server is
                    // copied afresh from the primary.
                    let aside = server.dir.with_extension("not-rewound");
                    tracing::warn!(error = %e, aside = %aside.display(), "pg_rewind failed: copying the primary afresh with pg_basebackup");
                    let _ = std::fs::remove_dir_all(&aside);
                    std::fs::rename(&server.dir, &aside).map_err(|e| {
                        KeeperError::Pg(PgError::io(format!(
                            "move {} to {}",
                            server.dir.display(),
                            aside.display()
                        ))(e))
                    })?;
                    let (host, port) = split_address(&source)?;
                    setup.clone_from(server, host, port)?;
                }
                let _ = std::fs::remove_file(&marker);
                return Ok(true);
            }
            Seen::ThisOne | Seen::NeverAny | Seen::NoneNow => return Ok(true),
            Seen::Unknown => {
                if !said {
                    tracing::info!(
                        "this server was a primary: waiting for the monitor to name the primary to rewind it to"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// How long a keeper with no server waits for a primary to copy one from.
const BOOTSTRAP_WITHIN: Duration = Duration::from_secs(120);

/// Makes the server of a keeper whose directory holds none: a copy of the primary the
/// monitor names (`pg_basebackup`), or — with `--init`, and only while the monitor has
/// never had a primary — a new cluster. A keeper without `--init` waits for a primary to
/// copy: a new cluster beside an existing one would be a second database under the same
/// names, with none of the first one's data.
///
/// Whether to go on: false when told to stop while waiting.
async fn bootstrap(
    config: &KeeperConfig,
    setup: &Setup,
    server: &Server,
    stop: &watch::Receiver<bool>,
) -> Result<bool, KeeperError> {
    let deadline = Instant::now() + BOOTSTRAP_WITHIN;
    let mut said = false;
    loop {
        if *stop.borrow() {
            return Ok(false);
        }
        match primary_elsewhere(config).await {
            Seen::Primary(address) => {
                let (host, port) = split_address(&address)?;
                tracing::info!(primary = %address, "copying the primary's server with pg_basebackup");
                match setup.clone_from(server, host, port) {
                    Ok(()) => return Ok(true),
                    // A primary still being promoted ends the copy ("the standby was
                    // promoted during online backup"); a copy that fails leaves nothing
                    // behind, and is tried again.
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(error = %e, "the copy failed; trying again");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Seen::NeverAny if config.init => {
                tracing::info!(dir = %server.dir.display(), "making a new cluster with initdb");
                setup.init_primary(server)?;
                return Ok(true);
            }
            Seen::ThisOne => return Err(KeeperError::NotMade(server.dir.clone())),
            Seen::NeverAny | Seen::NoneNow | Seen::Unknown => {}
        }
        if Instant::now() >= deadline {
            return Err(KeeperError::NoPrimaryToCopy {
                dir: server.dir.clone(),
                waited: BOOTSTRAP_WITHIN,
            });
        }
        if !said {
            tracing::info!("no server here yet: waiting for the monitor to name a primary to copy");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the monitor says of the primary, as far as this keeper is concerned.
enum Seen {
    /// Another node is primary; its server listens here (`host:port`, asked of its keeper).
    Primary(String),
    /// This keeper's node is the primary.
    ThisOne,
    /// There is no primary, and there never was one (epoch 0): the cluster is new.
    NeverAny,
    /// There is no primary now.
    NoneNow,
    /// The monitor or the primary's keeper cannot be asked.
    Unknown,
}

/// What the monitor says of the primary; where the primary's server listens when it is
/// another node (asked of that primary's keeper). Short of [`Seen::Primary`], a server
/// that has one starts in recovery as it is, and waits to be told.
async fn primary_elsewhere(config: &KeeperConfig) -> Seen {
    let Ok(http) = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return Seen::Unknown;
    };
    let signer = config
        .secret
        .as_ref()
        .map(|s| keel_auth::Signer::new(s.key(), config.id.as_str()));
    let Ok(view) = keel_client::monitor::cluster_as(
        &http,
        &config.monitor,
        Duration::from_secs(2),
        signer.as_ref(),
    )
    .await
    else {
        return Seen::Unknown;
    };
    let primary = match view.primary {
        None if view.epoch.0 == 0 => return Seen::NeverAny,
        None => return Seen::NoneNow,
        Some(p) if p.node == config.id => return Seen::ThisOne,
        Some(p) => p,
    };
    let Ok(answer) = http.get(format!("{}/v1/pg", primary.url)).send().await else {
        return Seen::Unknown;
    };
    let Ok(body) = answer.json::<serde_json::Value>().await else {
        return Seen::Unknown;
    };
    match body["address"].as_str() {
        Some(address) => Seen::Primary(address.to_owned()),
        None => Seen::Unknown,
    }
}

/// `host:port` split, or the error that says it is not one.
fn split_address(address: &str) -> Result<(&str, &str), KeeperError> {
    address.rsplit_once(':').ok_or_else(|| {
        KeeperError::Pg(PgError::Tool {
            tool: "keel keeper".into(),
            status: "not run".into(),
            output: format!("the primary's keeper gave {address:?}, not host:port"),
        })
    })
}

/// How long a server in recovery may take to become consistent (to replay, from its
/// primary, the WAL a rewind left it to fetch) before the keeper gives up on it.
const CONSISTENT_WITHIN: Duration = Duration::from_secs(60);

/// Connects to the local server once it takes connections: a server in recovery
/// refuses them ("the database system is starting up") until it has replayed enough WAL
/// to be consistent — after a rewind, streamed from the new primary.
async fn connect_when_consistent(
    setup: &Setup,
    server: &Server,
    running: &mut Running,
) -> Result<tokio_postgres::Client, KeeperError> {
    let deadline = Instant::now() + CONSISTENT_WITHIN;
    loop {
        let connected = connect(setup, server).await;
        if let Some(ended) = running.ended() {
            return Err(ended.into());
        }
        match connected {
            Err(KeeperError::Connect { source, .. })
                if source.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            connected => return connected,
        }
    }
}

/// Asks the server at `address`, once promoted, for a checkpoint. pg_rewind reads the source's timeline
/// from its control file, which a promotion updates only at its first checkpoint: against a
/// primary promoted a moment ago it would rewind to the wrong timeline's history, and the
/// rewound server would refuse to start.
async fn checkpoint(setup: &Setup, address: &str) -> Result<(), KeeperError> {
    let failed = |source| KeeperError::Connect {
        name: address.to_owned(),
        source,
    };
    let (host, port) = split_address(address)?;
    let conninfo = format!("{} connect_timeout=5", setup.conninfo_at(host, port));
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // The monitor names the new primary as it tells it to promote: a checkpoint taken
    // before the promotion ends is a restartpoint, still on the old timeline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(failed)?;
        let in_recovery: bool = row.try_get(0).map_err(failed)?;
        if !in_recovery || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.batch_execute("CHECKPOINT").await.map_err(failed)
}

/// Connects to the local server as `keel`.
async fn connect(setup: &Setup, server: &Server) -> Result<tokio_postgres::Client, KeeperError> {
    let (client, connection) =
        tokio_postgres::connect(&setup.conninfo(server), tokio_postgres::NoTls)
            .await
            .map_err(|source| KeeperError::Connect {
                name: server.name.clone(),
                source,
            })?;
    tokio::spawn(async move {
        // The connection ends with the server; the next query says so.
        let _ = connection.await;
    });
    Ok(client)
}

/// The loop's own state: the server, its connection, and what was last set on it.
struct Driver {
    keeper: Arc<Keeper>,
    setup: Setup,
    server: Server,
    client: tokio_postgres::Client,
    links: Links,
    /// The `synchronous_standby_names` last set.
    sync_names: Option<String>,
    /// The primary's server last followed, as `host:port`.
    following: Option<String>,
    /// When the standbys were last asked to renew this primary's lease.
    last_grants: Option<Instant>,
}

impl Driver {
    /// One round: the server still runs, what it says now, the machine's deadlines, the
    /// sync set, and the lease.
    async fn round(&mut self, running: &std::sync::Mutex<Running>) -> Result<(), KeeperError> {
        // First: a server the watchdog stopped has exited too, and says why.
        if let Some(why) = self.keeper.failure() {
            return Err(self.fence(running, &why));
        }
        if running.lock().map_or(true, |mut r| r.exited()) {
            self.keeper.set_observed(None);
            return Err(KeeperError::ServerExited(self.server.name.clone()));
        }
        let observed = observe(&self.client).await.ok();
        self.keeper.set_observed(observed.clone());
        let now = Instant::now();
        if let Some(observed) = &observed
            && self.keeper.is_primary_now()
        {
            let inputs = self.links.inputs(&self.keeper.links(), observed);
            for input in inputs {
                self.keeper.feed(input);
            }
        }
        if self.keeper.deadline_passed(now) {
            self.keeper.feed(Input::Tick);
        }
        if self.keeper.is_primary_now() {
            self.set_sync_names().await;
            self.ask_grants(now).await;
            let now = Instant::now();
            let held = self
                .keeper
                .lease_until()
                .is_some_and(|until| until > now + FENCE_EARLY);
            let draining = self.keeper.asked_to_drain();
            if draining && !self.keeper.drained() {
                self.drain().await;
            } else if !draining && self.keeper.drained() {
                // The switchover was abandoned: this primary goes on.
                tracing::info!("the switchover was abandoned: taking writes again");
                self.keeper.set_drained(false);
            }
            match (held, self.keeper.writable()) {
                (true, false) if !draining => self.set_read_only(false).await,
                (false, true) => return Err(self.fence(running, LEASE_RAN_OUT)),
                _ => {}
            }
        }
        if let Some(observed) = &observed
            && !observed.in_recovery
            && self.keeper.role_now() == Role::Standby
            && self.keeper.seen_primary_elsewhere()
        {
            return Err(self.fence(running, DEPOSED));
        }
        Ok(())
    }

    async fn carry_out(&mut self, action: Action) -> Result<(), KeeperError> {
        match action {
            Action::Promote(epoch) => {
                let promoted = self
                    .client
                    .query_one("SELECT pg_promote(true, 30)", &[])
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|row| row.try_get::<_, bool>(0).map_err(|e| e.to_string()));
                let observed = observe(&self.client).await.ok();
                let error = match promoted {
                    Ok(true) => None,
                    Ok(false) => Some("pg_promote() did not finish within 30 s".to_owned()),
                    // Already out of recovery (promoted before, or never a standby).
                    Err(_) if observed.as_ref().is_some_and(|o| !o.in_recovery) => None,
                    Err(e) => Some(e),
                };
                let log_end = observed.as_ref().map_or(keel_core::Lsn(0), |o| o.lsn);
                self.keeper.set_observed(observed);
                // The links start over: the new primary's walsenders are not the old one's.
                self.links = Links::default();
                self.sync_names = None;
                self.keeper.feed(Input::PromotionRecorded {
                    epoch,
                    log_end,
                    error,
                });
                // Its lease is renewed only by the monitor's answer to a heartbeat that
                // says it is primary: that heartbeat goes now.
                self.keeper.nudge();
            }
            Action::Follow(Some(primary_url)) => self.follow(&primary_url).await,
            Action::Follow(None) => {}
        }
        Ok(())
    }

    /// Points this standby's server at the primary's: asked of the primary's keeper.
    async fn follow(&mut self, primary_url: &str) {
        let Some(address) = self.keeper.server_of(primary_url).await else {
            return;
        };
        if self.following.as_deref() == Some(address.as_str()) {
            return;
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            return;
        };
        let conninfo = self.setup.standby_conninfo(&self.server, host, port);
        let sql = format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            quote_literal(&conninfo)
        );
        match self.client.batch_execute(&sql).await {
            Ok(()) => {
                let _ = self.client.batch_execute("SELECT pg_reload_conf()").await;
                tracing::info!(primary = %address, "following the primary's server");
                self.following = Some(address);
            }
            Err(e) => tracing::warn!(error = %e, "cannot point primary_conninfo at the primary"),
        }
    }

    /// Asks every standby's keeper to renew the lease, once per heartbeat interval, all at
    /// once: a dead one costs the others nothing. Each grant renews the lease from when it
    /// was asked for, as a data node's standby's ack does from when the frame was sent.
    async fn ask_grants(&mut self, now: Instant) {
        let every = self.keeper.timing().heartbeat_interval;
        if self.last_grants.is_some_and(|at| now < at + every) {
            return;
        }
        self.last_grants = Some(now);
        let links = self.keeper.links();
        let asked = links.iter().map(|link| {
            let keeper = self.keeper.clone();
            let url = link.url.clone();
            async move { keeper.ask_grant(&url).await }
        });
        let answers = futures::future::join_all(asked).await;
        for (link, granted) in links.iter().zip(answers) {
            if granted {
                self.keeper.feed(Input::Ack {
                    link: link.id,
                    lsn: link.acked,
                    sent_at: Some(now),
                });
            }
        }
    }

    /// Drains the server for a switchover: no new transaction may write, every client
    /// session is ended (a COMMIT waiting for its standby is not acknowledged; it is in
    /// the WAL, and the target waits for all of it), and only then is its WAL position
    /// observed, the final position the monitor makes the target catch up to.
    async fn drain(&mut self) {
        self.set_read_only(true).await;
        if self.keeper.writable() {
            return;
        }
        let ended = self
            .client
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .await;
        if let Err(e) = ended {
            tracing::warn!(error = %e, "cannot end the client sessions to drain");
            return;
        }
        match observe(&self.client).await {
            Ok(observed) => {
                tracing::info!(lsn = %observed.lsn, "drained for the switchover: no session left, read-only");
                self.keeper.set_observed(Some(observed));
                self.keeper.set_drained(true);
                self.keeper.nudge();
            }
            Err(e) => tracing::warn!(error = %e, "cannot observe the drained server"),
        }
    }

    /// Makes every transaction read-only by default (`default_transaction_read_only`), or
    /// no longer. The watchdog counts the server writable from before it may be until it
    /// can no longer be: a setting that cannot be made leaves it counted writable.
    async fn set_read_only(&mut self, read_only: bool) {
        if !read_only {
            self.keeper.set_writable(true);
        }
        let sql = if read_only {
            "ALTER SYSTEM SET default_transaction_read_only = on"
        } else {
            "ALTER SYSTEM RESET default_transaction_read_only"
        };
        let set = match self.client.batch_execute(sql).await {
            Ok(()) => self.client.batch_execute("SELECT pg_reload_conf()").await,
            Err(e) => Err(e),
        };
        match set {
            Ok(()) if read_only => self.keeper.set_writable(false),
            Ok(()) => tracing::info!("the lease is held: the server takes writes"),
            Err(e) => {
                tracing::warn!(error = %e, read_only, "cannot set default_transaction_read_only")
            }
        }
    }

    /// Sets `synchronous_standby_names` to the machine's sync set, when it changed.
    async fn set_sync_names(&mut self) {
        let names = self.keeper.sync_standbys();
        let value = if names.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            format!("ANY 1 ({})", quoted.join(", "))
        };
        if self.sync_names.as_deref() == Some(value.as_str()) {
            return;
        }
        let sql = format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            quote_literal(&value)
        );
        match self.client.batch_execute(&sql).await {
            Ok(()) => {
                let _ = self.client.batch_execute("SELECT pg_reload_conf()").await;
                tracing::info!(sync = %value, "synchronous standbys set");
                self.sync_names = Some(value);
            }
            Err(e) => tracing::warn!(error = %e, "cannot set synchronous_standby_names"),
        }
    }

    /// Stops the server at once (no commit may be acknowledged from now on).
    fn fence(&mut self, running: &std::sync::Mutex<Running>, why: &str) -> KeeperError {
        if let Ok(mut running) = running.lock() {
            running.kill();
        }
        self.keeper.set_observed(None);
        tracing::error!(why, "stopped PostgreSQL");
        KeeperError::Fenced {
            name: self.server.name.clone(),
            why: why.to_owned(),
        }
    }
}
