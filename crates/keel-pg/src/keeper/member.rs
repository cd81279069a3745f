//! [`Keeper`]: what a keeper's tasks share — the node machine, what its server said
//! last — and the machine's outputs carried out: epochs recorded at once, promotions and
//! repointing handed to the keeper's loop ([`Action`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use keel_client::wire::{FailoverPhase, HeartbeatRequest, RegisterRequest};
use keel_core::faults::Faults;
use keel_core::{Epoch, Lsn, NodeId, Role};
use keel_node::heartbeat::Member;
use keel_node::machine::{Input, LinkInfo, Machine, Output, Settings, Timing};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{KeeperConfig, KeeperError};
use crate::Server;
use crate::observe::Observed;

/// What the machine asks that takes PostgreSQL a while: done by the keeper's loop, in
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `pg_promote()`, then [`Input::PromotionRecorded`].
    Promote(Epoch),
    /// Point the server at this primary (its keeper's URL), or at none.
    Follow(Option<String>),
}

/// What a keeper keeps across its lives: the highest epoch it has seen, and the epoch
/// it was last primary in (`<base>/<id>.keeper.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    seen: u64,
    primary_in: u64,
}

/// The keeper's shared state.
pub struct Keeper {
    config: KeeperConfig,
    /// The server's address as its standbys reach it.
    pg_address: String,
    machine: Mutex<Machine>,
    observed: Mutex<Option<Observed>>,
    kept: Mutex<Kept>,
    kept_path: PathBuf,
    incarnation: u64,
    signer: Option<keel_auth::Signer>,
    faults: Faults,
    actions: mpsc::UnboundedSender<Action>,
    /// Why the keeper must stop its server, once something made it unsafe to go on.
    failed: Mutex<Option<String>>,
    /// Whether the server may take writes: false from just before a promotion until the
    /// new primary first holds its lease (it is read-only by default until then).
    writable: AtomicBool,
    /// Wakes the heartbeat session for news the monitor should hear at once.
    nudge: tokio::sync::Notify,
    /// Whether a drain this primary was asked for is done: no session left, no new
    /// transaction writable, its WAL position observed after that.
    drained: AtomicBool,
    http: reqwest::Client,
    pub(super) guard: std::sync::Arc<keel_http::Guard>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state behind every lock here is whole between statements: a panic elsewhere
    // leaves nothing half-written to fear.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Keeper {
    pub fn new(
        config: KeeperConfig,
        server: &Server,
        observed: Option<Observed>,
        actions: mpsc::UnboundedSender<Action>,
    ) -> Result<Keeper, KeeperError> {
        let kept_path = config.base.join(format!("{}.keeper.json", config.id));
        let kept: Kept = match std::fs::read(&kept_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeeperError::BadState {
                path: kept_path.clone(),
                reason: e.to_string(),
            })?,
            Err(_) => Kept::default(),
        };
        let log_end = observed.as_ref().map_or(Lsn(0), |o| o.lsn);
        let machine = Machine::new(
            Settings {
                advertise: config.advertise.clone(),
                monitored: true,
                role: Role::Standby,
                standbys: Vec::new(),
                sync: true,
                // PostgreSQL holds the COMMITs while a sync standby is away; the machine
                // only has to name it silent, after `heartbeat_timeout`.
                sync_timeout: Duration::from_secs(2),
                writing_epoch: Epoch(0),
                seen: Epoch(kept.seen),
                log_end,
            },
            Instant::now(),
        );
        let guard = std::sync::Arc::new(keel_http::Guard::new(
            "keeper",
            config.id.as_str(),
            config.secret.as_ref(),
            config.token.as_ref(),
            keel_auth::Hosts::of(config.listen, &[config.advertise.as_str()]),
        ));
        let signer = config
            .secret
            .as_ref()
            .map(|s| keel_auth::Signer::new(s.key(), config.id.as_str()));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| KeeperError::Http(e.to_string()))?;
        Ok(Keeper {
            pg_address: format!("127.0.0.1:{}", server.port),
            config,
            machine: Mutex::new(machine),
            observed: Mutex::new(observed),
            kept: Mutex::new(kept),
            kept_path,
            incarnation: incarnation(),
            signer,
            faults: Faults::from_env(),
            actions,
            failed: Mutex::new(None),
            writable: AtomicBool::new(true),
            nudge: tokio::sync::Notify::new(),
            drained: AtomicBool::new(false),
            http,
            guard,
        })
    }

    /// The keeper's id.
    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    /// Where its server listens, `host:port`.
    pub fn pg_address(&self) -> &str {
        &self.pg_address
    }

    /// What its server said last (`None`: it does not answer).
    pub fn observed(&self) -> Option<Observed> {
        lock(&self.observed).clone()
    }

    pub(super) fn set_observed(&self, observed: Option<Observed>) {
        *lock(&self.observed) = observed;
    }

    /// The role the machine acts in.
    pub fn role_now(&self) -> Role {
        lock(&self.machine).role().role
    }

    pub fn is_primary_now(&self) -> bool {
        lock(&self.machine).is_primary()
    }

    /// The epoch the machine has seen.
    pub fn seen(&self) -> Epoch {
        lock(&self.machine).seen()
    }

    pub(super) fn links(&self) -> Vec<LinkInfo> {
        lock(&self.machine).links()
    }

    /// When this primary's lease runs out unless renewed ([`keel_node::machine::Machine::lease_until`]).
    pub(super) fn lease_until(&self) -> Option<Instant> {
        lock(&self.machine).lease_until()
    }

    pub(super) fn deadline_passed(&self, now: Instant) -> bool {
        lock(&self.machine)
            .next_deadline()
            .is_some_and(|d| d <= now)
    }

    /// Whether the machine follows a primary other than this keeper.
    pub(super) fn seen_primary_elsewhere(&self) -> bool {
        lock(&self.machine)
            .role()
            .primary
            .as_deref()
            .is_some_and(|p| p != self.config.advertise)
    }

    /// The ids of the standbys PostgreSQL must wait for.
    pub(super) fn sync_standbys(&self) -> Vec<String> {
        lock(&self.machine)
            .links()
            .into_iter()
            .filter(|l| l.sync)
            .filter_map(|l| l.node)
            .collect()
    }

    /// Hands `input` to the machine and carries out what it asks.
    pub(super) fn feed(&self, input: Input) {
        let outputs = lock(&self.machine).handle(input, Instant::now());
        for output in outputs {
            self.carry_out(output);
        }
    }

    fn carry_out(&self, output: Output) {
        match output {
            Output::PersistEpoch(epoch) => self.keep(|k| k.seen = k.seen.max(epoch.0)),
            Output::PersistPromotion(epoch) => {
                self.keep(|k| {
                    k.seen = k.seen.max(epoch.0);
                    k.primary_in = epoch.0;
                });
                let _ = self.actions.send(Action::Promote(epoch));
            }
            // A standby follows the primary its view names; during a failover that may be
            // this keeper itself, about to be told to promote: nothing to follow then.
            Output::Role(state) if state.role == Role::Standby => {
                let primary = state.primary.filter(|p| *p != self.config.advertise);
                let _ = self.actions.send(Action::Follow(primary));
            }
            Output::Note(note) if note.is_warning() => tracing::warn!("{note}"),
            Output::Note(note) => tracing::info!("{note}"),
            // The write path and keel's own replication streams are PostgreSQL's here.
            _ => {}
        }
    }

    /// Changes what is kept and writes it durably before going on: an epoch must be on
    /// disk before anything acts on it.
    fn keep(&self, change: impl FnOnce(&mut Kept)) {
        let mut kept = lock(&self.kept);
        change(&mut kept);
        let written = serde_json::to_vec(&*kept)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_synced(&self.kept_path, &bytes));
        if let Err(e) = written {
            // Carrying on could let this keeper forget an epoch it acted on: its loop
            // stops the server at its next round.
            *lock(&self.failed) = Some(format!(
                "cannot record the keeper's state in {}: {e}",
                self.kept_path.display()
            ));
        }
    }

    /// Whether the server may take writes (see [`Keeper::set_writable`]).
    pub(super) fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }

    /// Says whether the server may take writes: set before the server is made writable,
    /// cleared once it cannot be, so that the lease watchdog never takes a writable
    /// server for a read-only one.
    pub(super) fn set_writable(&self, writable: bool) {
        self.writable.store(writable, Ordering::SeqCst);
    }

    /// Whether the monitor asks this primary to drain for a switchover.
    pub(super) fn asked_to_drain(&self) -> bool {
        let machine = lock(&self.machine);
        machine.is_primary()
            && machine.failover().is_some_and(|f| {
                f.from.as_str() == self.config.id.as_str() && f.phase == FailoverPhase::Draining
            })
    }

    /// Has the heartbeat session send its next heartbeat now, not at the interval's end.
    pub(super) fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Whether the drain is done (see [`Keeper::set_drained`]).
    pub(super) fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// Says the drain is done, once the server takes no more commits and the position
    /// it reports was observed after that; or that it is not (abandoned, or not begun).
    pub(super) fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::SeqCst);
    }

    /// Records why the server must be stopped (the first reason stays).
    pub(super) fn fail(&self, why: String) {
        lock(&self.failed).get_or_insert(why);
    }

    /// Why the server must be stopped, if something made it unsafe to go on.
    pub(super) fn failure(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    /// Asks the standby's keeper at `url` to renew this primary's lease, as a data node's
    /// standby does by acknowledging a frame: it grants only to the primary it follows,
    /// in an epoch it has not seen overtaken, and then waits this grant out before it
    /// would take over itself. Whether it granted; the grant counts from `sent_at`.
    pub(super) async fn ask_grant(&self, url: &str) -> bool {
        let target = format!("{url}/v1/grant");
        if self.faults.blocks(&target) {
            return false;
        }
        let body = serde_json::json!({
            "from": self.config.id,
            "url": self.config.advertise,
            "epoch": self.seen().0,
        });
        let Ok(body) = serde_json::to_vec(&body) else {
            return false;
        };
        let mut request = self
            .http
            .post(&target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timing().heartbeat_timeout);
        let signed = match &self.signer {
            Some(signer) => match signer.sign("POST", &target, &body) {
                Ok(signed) => Some(signed),
                Err(_) => return false,
            },
            None => None,
        };
        if let Some(signed) = &signed {
            request = request.header(keel_auth::AUTH_HEADER, &signed.header);
        }
        let Ok(answer) = request.body(body).send().await else {
            return false;
        };
        let status = answer.status();
        let header = keel_auth::signature_of(answer.headers());
        let Ok(bytes) = answer.bytes().await else {
            return false;
        };
        // Only a member's own answer is a grant: a process on the standby's port is none.
        if let (Some(signer), Some(signed)) = (&self.signer, &signed)
            && signer
                .check_answer(signed, header.as_deref(), status.as_u16(), Some(&bytes))
                .is_err()
        {
            return false;
        }
        status.is_success()
    }

    /// A grant asked by the primary `url` (keeper `from`) in `epoch`: given when this
    /// keeper follows that primary and has seen no newer epoch.
    pub fn grant(&self, url: &str, epoch: Epoch) -> Result<(), String> {
        let (follows, seen) = {
            let machine = lock(&self.machine);
            (
                !machine.is_primary() && machine.role().primary.as_deref() == Some(url),
                machine.seen(),
            )
        };
        if epoch < seen {
            return Err(format!(
                "epoch {epoch} is older than epoch {seen}, seen here"
            ));
        }
        if !follows {
            return Err(format!("this keeper does not follow {url}"));
        }
        self.feed(Input::Granted);
        Ok(())
    }

    /// Asks the keeper at `url` where its server listens.
    pub(super) async fn server_of(&self, url: &str) -> Option<String> {
        let answer = self.http.get(format!("{url}/v1/pg")).send().await.ok()?;
        let body: serde_json::Value = answer.json().await.ok()?;
        body["address"].as_str().map(str::to_owned)
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, then renamed over it.
fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A random number per process start: the monitor tells a restart by it.
fn incarnation() -> u64 {
    u64::from(rand::random::<u32>()) << 20 | u64::from(std::process::id() & 0xF_FFFF)
}

impl Member for Keeper {
    fn timing(&self) -> Timing {
        lock(&self.machine).timing()
    }

    fn register(&self) -> Option<RegisterRequest> {
        let observed = self.observed()?;
        Some(RegisterRequest {
            group: None,
            node: self.config.id.clone(),
            url: self.config.advertise.clone(),
            incarnation: self.incarnation,
            epoch: self.seen(),
            lsn: observed.lsn,
        })
    }

    fn heartbeat(&self) -> Option<HeartbeatRequest> {
        let observed = self.observed()?;
        let me = self.config.id.as_str();
        let machine = lock(&self.machine);
        let (standbys, drained) = machine.report();
        // The machine has no write of its own in flight; PostgreSQL's are over only once
        // the keeper has stopped them.
        let draining = drained
            && self.drained()
            && machine
                .failover()
                .is_some_and(|f| f.from.as_str() == me && f.phase == FailoverPhase::Draining);
        Some(HeartbeatRequest {
            slots_version: 0,
            node: self.config.id.clone(),
            incarnation: self.incarnation,
            role: machine.role().role,
            epoch: machine.seen(),
            lsn: observed.lsn,
            standbys,
            draining,
        })
    }

    fn is_primary(&self) -> bool {
        self.is_primary_now()
    }

    fn nudged(&self) -> impl std::future::Future<Output = ()> + Send {
        self.nudge.notified()
    }

    fn writer(&self) -> (NodeId, Epoch) {
        (self.config.id.clone(), self.seen())
    }

    fn silent_sync_standbys(&self, now: Instant) -> Vec<(String, NodeId)> {
        lock(&self.machine).silent_sync_standbys(now)
    }

    fn blocks(&self, url: &str) -> bool {
        self.faults.blocks(url)
    }

    fn signer(&self) -> Option<&keel_auth::Signer> {
        self.signer.as_ref()
    }

    fn tls(&self) -> Option<keel_auth::tls::ClientConfig> {
        None
    }

    fn counted(&self, _ok: bool) {}

    async fn input(&self, input: Input) {
        self.feed(input);
    }
}
