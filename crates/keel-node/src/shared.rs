//! The state that the API, the writer and replication share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use keel_core::faults::Faults;
use keel_core::{Epoch, Lsn, Role};
use keel_store::Store;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use keel_client::wire::Failover;

use crate::config::NodeConfig;
use crate::writer::WriteRequest;

/// Who this node is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    /// Primary or standby.
    pub role: Role,
    /// The primary's base URL, when known (a standby learns it from the stream).
    pub primary: Option<String>,
    /// Set when a standby reported a newer epoch and this primary stepped down.
    pub fenced_by: Option<Epoch>,
}

/// Where a standby's stream stands, as the primary sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Opening the connection and the handshake.
    Connecting,
    /// Connected, sending what the standby misses.
    CatchingUp,
    /// Connected and up to date: writes can be acknowledged.
    Streaming,
    /// No connection; retrying.
    Disconnected,
}

/// The primary's view of one standby.
pub struct StandbyLink {
    /// The standby's base URL.
    pub url: String,
    /// The standby's id: from the monitor, or learned from its hello.
    pub node: Mutex<Option<String>>,
    /// The stream's state.
    pub state: watch::Sender<LinkState>,
    /// The last lsn the standby has confirmed durable.
    pub acked: watch::Sender<Lsn>,
    /// Whether the primary waits for this standby's acks before acknowledging a write.
    pub sync: AtomicBool,
    /// The end of the log when the primary began waiting for this standby: until the
    /// standby has acknowledged up to here, it may lack writes acknowledged without it,
    /// and the primary does not report it as in sync.
    pub sync_from: Mutex<Lsn>,
    /// Since when the stream has not been streaming, if it is not.
    pub down_since: Mutex<Option<Instant>>,
    /// Until when this standby's last ack renews the primary's lease.
    pub lease_until: Mutex<Option<Instant>>,
    /// Tells the link's sender to stop (the standby left the group).
    pub stop: watch::Sender<bool>,
    changes: Arc<watch::Sender<u64>>,
}

impl StandbyLink {
    fn new(
        url: String,
        node: Option<String>,
        sync: bool,
        changes: Arc<watch::Sender<u64>>,
    ) -> Self {
        Self {
            url,
            node: Mutex::new(node),
            state: watch::Sender::new(LinkState::Connecting),
            acked: watch::Sender::new(Lsn(0)),
            sync: AtomicBool::new(sync),
            sync_from: Mutex::new(Lsn(u64::MAX)),
            down_since: Mutex::new(Some(Instant::now())),
            lease_until: Mutex::new(None),
            stop: watch::Sender::new(false),
            changes,
        }
    }

    /// The standby's id, if known.
    pub fn node_id(&self) -> Option<String> {
        lock(&self.node).clone()
    }

    /// Whether the primary waits for this standby.
    pub fn is_sync(&self) -> bool {
        self.sync.load(Ordering::SeqCst)
    }

    /// Moves the stream to a new state and wakes whoever waits on the links.
    pub fn set_state(&self, state: LinkState) {
        let changed = self
            .state
            .send_if_modified(|s| std::mem::replace(s, state) != state);
        if changed {
            // Silent since it stopped streaming: a reconnect attempt that fails again
            // (connecting, then disconnected) does not start the count anew, or a dead
            // standby would leave the sync set only once the retry backoff grows past
            // `heartbeat_timeout`.
            let mut since = lock(&self.down_since);
            if state == LinkState::Streaming {
                *since = None;
            } else if since.is_none() {
                *since = Some(Instant::now());
            }
            drop(since);
            bump(&self.changes);
        }
    }

    /// Records an ack: the standby has everything up to `lsn` durably, and renewed the
    /// lease of the frame it answered, sent at `sent_at`.
    pub fn ack(&self, lsn: Lsn, sent_at: Option<Instant>, lease: Duration) {
        if let Some(at) = sent_at {
            *lock(&self.lease_until) = Some(at + lease);
        }
        if self
            .acked
            .send_if_modified(|a| std::mem::replace(a, (*a).max(lsn)) < lsn)
        {
            bump(&self.changes);
        }
    }

    /// Sets the acked position outright (after a handshake, which may move it back).
    pub fn reset_acked(&self, lsn: Lsn) {
        self.acked.send_replace(lsn);
        bump(&self.changes);
    }

    /// Puts the standby in or out of the set the primary waits for.
    ///
    /// Joining, the flag goes up first and only then is the end of the log read into
    /// `sync_from`: every batch shipped after that read finds the flag up when its commit
    /// is done and waits for this standby, and every batch before it is at or below
    /// `sync_from`, which the standby must ack before it counts as in sync.
    pub fn set_sync(&self, sync: bool, log_end: &watch::Sender<Lsn>) {
        let was = self.sync.swap(sync, Ordering::SeqCst);
        match (was, sync) {
            (false, true) => *lock(&self.sync_from) = *log_end.borrow(),
            (true, false) => *lock(&self.sync_from) = Lsn(u64::MAX),
            _ => {}
        }
        if was != sync {
            bump(&self.changes);
        }
    }

    /// Whether the primary may report this standby as in sync: it waits for its acks, and
    /// the standby holds every write acknowledged before the waiting began.
    pub fn in_sync(&self) -> bool {
        self.is_sync() && *self.acked.borrow() >= *lock(&self.sync_from)
    }
}

fn bump(changes: &watch::Sender<u64>) {
    changes.send_modify(|v| *v = v.wrapping_add(1));
}

/// Locks a mutex that only guards plain data: a panic elsewhere cannot leave it half
/// written, so a poisoned lock is still good.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters for `/metrics`, bumped from the hot paths.
#[derive(Default)]
pub struct Stats {
    /// Writes acknowledged.
    pub writes_ok: AtomicU64,
    /// Writes refused by a precondition (412, 404, overflow).
    pub writes_rejected: AtomicU64,
    /// Writes answered 503 because a sync standby was missing or silent.
    pub writes_unavailable: AtomicU64,
    /// Group commits on this node (as primary or standby).
    pub commits: AtomicU64,
    /// Operations in those commits.
    pub committed_ops: AtomicU64,
    /// Time spent in those commits, in microseconds.
    pub commit_micros: AtomicU64,
    /// Heartbeats the monitor answered.
    pub heartbeats_ok: AtomicU64,
    /// Heartbeats that failed or were refused.
    pub heartbeats_failed: AtomicU64,
}

impl Stats {
    /// Adds to a counter.
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// The monitor's timing settings, which a monitored node follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a missing heartbeat (or a silent standby) is tolerated.
    pub heartbeat_timeout: Duration,
    /// How long a renewal keeps a primary's lease.
    pub lease: Duration,
    /// Allowance for clocks that run at slightly different rates.
    pub drift: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_millis(300),
            lease: Duration::from_millis(500),
            drift: Duration::from_millis(100),
        }
    }
}

/// What a monitored node knows from the monitor.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    /// The monitor's settings.
    pub timing: Timing,
    /// Until when the monitor's last renewal keeps this primary's lease.
    pub monitor_lease_until: Option<Instant>,
    /// The failover in progress, as the monitor last said.
    pub failover: Option<Failover>,
}

/// Everything the parts of a node share.
pub struct Shared {
    /// What the node was started with.
    pub config: NodeConfig,
    /// The log and state machine.
    pub store: Arc<Store>,
    /// The node's role; changes when it steps down, is promoted or follows another.
    pub role: watch::Sender<RoleState>,
    /// The end of the primary's log: the last lsn the senders may ship (decided, and being
    /// or already made durable). They follow it.
    pub log_end: watch::Sender<Lsn>,
    /// The newest entries, for the senders.
    pub outbox: Mutex<crate::outbox::Outbox>,
    /// The primary's standbys, one link each: fixed by `--standby`, or set by the monitor.
    links: RwLock<Vec<Arc<StandbyLink>>>,
    /// Bumped whenever a link's state, ack or sync flag, the role, the lease or the
    /// failover changes: what the writer's waits wake up on.
    pub changes: Arc<watch::Sender<u64>>,
    /// The queue into the writer.
    pub writes: mpsc::Sender<WriteRequest>,
    /// Counters.
    pub stats: Stats,
    /// On a standby: the number of the replication stream allowed to write; a newer
    /// stream from a (re)connecting primary replaces an older one.
    pub stream_generation: AtomicU64,
    /// On a standby: when it last acknowledged a frame, which renews the primary's lease.
    /// A standby being promoted waits out its own grants from here.
    pub last_grant: Mutex<Option<Instant>>,
    /// What the monitor said last (monitored nodes only).
    pub cluster: Mutex<ClusterInfo>,
    /// Batches committed and waiting for their acks.
    pub inflight: AtomicU64,
    /// A random number for this process's life, so the monitor can tell a restart.
    pub incarnation: u64,
    /// The epoch this node writes in as primary: the one it started or was promoted in.
    /// Never simply the highest epoch seen, which may be a rival's.
    pub writing_epoch: AtomicU64,
    /// The peers this node must not connect to (`keel chaos partition`); inert unless
    /// `KEEL_FAULTS_FILE` is set.
    pub faults: Faults,
    /// Checks the credentials of requests (members for replication, operators for
    /// admin actions) and signs answers to members.
    pub guard: Arc<keel_http::Guard>,
    /// Signs this node's requests to the monitor and its standbys, and checks their
    /// answers; `None` without the cluster secret.
    pub signer: Option<keel_auth::Signer>,
}

impl Shared {
    /// Builds the shared state; the writer's receiving end is returned beside it.
    pub fn new(
        config: NodeConfig,
        store: Arc<Store>,
        faults: Faults,
    ) -> (Arc<Self>, mpsc::Receiver<WriteRequest>) {
        let (tx, rx) = mpsc::channel(4 * crate::config::MAX_BATCH);
        let config_monitored = config.monitor.is_some();
        let changes = Arc::new(watch::Sender::new(0));
        let links = if config.role == Role::Primary {
            config
                .standbys
                .iter()
                .map(|u| {
                    Arc::new(StandbyLink::new(
                        u.clone(),
                        None,
                        config.sync,
                        changes.clone(),
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        let role = RoleState {
            role: config.role,
            primary: (config.role == Role::Primary).then(|| config.advertise.clone()),
            fenced_by: None,
        };
        let log_end = watch::Sender::new(store.status().last.lsn);
        let guard = Arc::new(keel_http::Guard::new(
            "node",
            config.id.as_str(),
            config.secret.as_ref(),
            config.token.as_ref(),
            keel_auth::Hosts::of(config.listen, &[config.advertise.as_str()]),
        ));
        let signer = config
            .secret
            .as_ref()
            .map(|s| keel_auth::Signer::new(s.key(), config.id.as_str()));
        let shared = Self {
            guard,
            signer,
            config,
            store,
            role: watch::Sender::new(role),
            log_end,
            outbox: Mutex::default(),
            links: RwLock::new(links),
            changes,
            writes: tx,
            stats: Stats::default(),
            stream_generation: AtomicU64::new(0),
            // A monitored node may have granted a lease in an earlier life (an ack just
            // before a crash) that it cannot remember: it assumes one at its start, as the
            // monitor does after a restart.
            last_grant: Mutex::new(config_monitored.then(Instant::now)),
            cluster: Mutex::default(),
            inflight: AtomicU64::new(0),
            incarnation: incarnation(),
            writing_epoch: AtomicU64::new(0),
            faults,
        };
        (Arc::new(shared), rx)
    }

    /// The current links.
    pub fn links(&self) -> Vec<Arc<StandbyLink>> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The links the primary waits for.
    pub fn sync_links(&self) -> Vec<Arc<StandbyLink>> {
        self.links().into_iter().filter(|l| l.is_sync()).collect()
    }

    /// Wakes whoever waits on the links, the lease or the failover.
    pub fn notify(&self) {
        bump(&self.changes);
    }

    /// Replaces the set of standbys (as the monitor lists them): starts a sender for each
    /// new one, stops those no longer listed, and updates who is in the sync set.
    pub fn set_standbys(self: &Arc<Self>, standbys: &[(String, String, bool)]) {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        links.retain(|link| {
            let keep = standbys.iter().any(|(_, url, _)| *url == link.url);
            if !keep {
                link.stop.send_replace(true);
            }
            keep
        });
        for (node, url, sync) in standbys {
            match links.iter().find(|l| l.url == *url) {
                Some(link) => link.set_sync(*sync, &self.log_end),
                None => {
                    let link = StandbyLink::new(
                        url.clone(),
                        Some(node.clone()),
                        false,
                        self.changes.clone(),
                    );
                    link.set_sync(*sync, &self.log_end);
                    let link = Arc::new(link);
                    links.push(link.clone());
                    tokio::spawn(crate::repl::sender::run(self.clone(), link));
                }
            }
        }
        drop(links);
        self.notify();
    }

    /// Starts the senders of the links fixed on the command line.
    pub fn start_senders(self: &Arc<Self>) {
        for link in self.links() {
            tokio::spawn(crate::repl::sender::run(self.clone(), link));
        }
    }

    /// Stops every sender (shutdown).
    pub fn stop_senders(&self) {
        for link in self.links() {
            link.stop.send_replace(true);
        }
    }

    /// The node's role right now.
    pub fn role(&self) -> RoleState {
        self.role.borrow().clone()
    }

    /// Forgets what the senders were following: a node that becomes (or stops being)
    /// primary starts from its own log as it is now. Without this, a promoted node's
    /// senders would compare against a log end from another life, and could mark a
    /// lagging standby up to date, or serve it entries rolled back since.
    pub fn reset_log_end(&self) {
        let mut outbox = lock(&self.outbox);
        *outbox = crate::outbox::Outbox::default();
        self.log_end.send_replace(self.store.status().last.lsn);
    }

    /// Hands a batch to the senders.
    pub fn publish(&self, batch: &[keel_store::LogEntry]) {
        let Some(last) = batch.last().map(|e| e.pos.lsn) else {
            return;
        };
        lock(&self.outbox).push(batch);
        self.log_end.send_replace(last);
    }

    /// Up to `max` entries after `after` from the outbox, or `None` if they must come from
    /// the store.
    pub fn outbox_after(&self, after: Lsn, max: usize) -> Option<Vec<keel_store::LogEntry>> {
        lock(&self.outbox).after(after, max)
    }

    /// Whether this node takes writes.
    pub fn is_primary(&self) -> bool {
        self.role.borrow().role == Role::Primary
    }

    /// The epoch this node writes in (and stamps its replication frames with).
    pub fn writing_epoch(&self) -> Epoch {
        Epoch(self.writing_epoch.load(Ordering::SeqCst))
    }

    /// Whether a monitor assigns this node's role.
    pub fn monitored(&self) -> bool {
        self.config.monitor.is_some()
    }

    /// The monitor's settings (defaults when not monitored).
    pub fn timing(&self) -> Timing {
        lock(&self.cluster).timing
    }

    /// The failover in progress, if the monitor announced one.
    pub fn failover(&self) -> Option<Failover> {
        lock(&self.cluster).failover.clone()
    }

    /// Whether this primary holds its write lease at `now`: the monitor renewed it within
    /// the lease, or every standby of the sync set (at least one) did. Nodes without a
    /// monitor have no lease to hold: their roles are fixed by hand.
    ///
    /// A promotion needs the monitor and the candidate — a sync standby — to stop renewing
    /// and wait out what they granted, which makes both conditions false for the old
    /// primary, however many standbys there are. (A plain majority of {primary, monitor,
    /// standbys} would not: with three sync standbys, the old primary and two of them are
    /// a majority without the monitor and the candidate.) Standbys out of the sync set can
    /// never be promoted, so they do not count, and a dead one cannot stop a healthy
    /// primary.
    pub fn lease_valid(&self, now: Instant) -> bool {
        if !self.monitored() {
            return true;
        }
        if lock(&self.cluster)
            .monitor_lease_until
            .is_some_and(|t| t > now)
        {
            return true;
        }
        let links = self.sync_links();
        !links.is_empty()
            && links
                .iter()
                .all(|l| lock(&l.lease_until).is_some_and(|t| t > now))
    }

    /// A standby has seen `epoch`, newer than ours: stop taking writes for good. The
    /// epoch is not adopted here; the node may only write again when restarted with a
    /// newer epoch of its own or as a standby of the new primary.
    pub fn step_down(&self, epoch: Epoch) {
        self.reset_log_end();
        let changed = self.role.send_if_modified(|r| {
            if r.fenced_by.is_some() {
                return false;
            }
            tracing::warn!(%epoch, "a standby has seen a newer epoch; stepping down");
            r.role = Role::Standby;
            r.primary = None;
            r.fenced_by = Some(epoch);
            true
        });
        if changed {
            self.notify();
        }
    }

    /// Becomes the standby of the primary at `url`.
    pub fn follow(&self, url: Option<String>) {
        if self.is_primary() {
            self.reset_log_end();
        }
        let changed = self.role.send_if_modified(|r| {
            let fenced_by = if self.monitored() { None } else { r.fenced_by };
            let next = RoleState { role: Role::Standby, primary: url.clone(), fenced_by };
            if *r == next {
                return false;
            }
            if r.role == Role::Primary {
                tracing::warn!(primary = ?url, "another node is primary now; following it as a standby");
            }
            *r = next;
            true
        });
        if changed {
            self.notify();
        }
    }

    /// Becomes primary in `epoch` (promotion by the monitor, or first election).
    pub fn become_primary(&self, epoch: Epoch) {
        self.reset_log_end();
        self.writing_epoch.store(epoch.0, Ordering::SeqCst);
        // No stream from a former primary may append to this log any more.
        self.stream_generation.fetch_add(1, Ordering::SeqCst);
        let changed = self.role.send_if_modified(|r| {
            let next = RoleState {
                role: Role::Primary,
                primary: Some(self.config.advertise.clone()),
                fenced_by: None,
            };
            if *r == next {
                return false;
            }
            *r = next;
            true
        });
        if changed {
            self.notify();
        }
    }
}

/// A random number for this process's life (from the OS's random source, falling back to
/// the time and pid, which are unique enough to tell two starts apart).
fn incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    match random {
        Ok(()) => u64::from_le_bytes(bytes) >> 11,
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            (nanos ^ u64::from(std::process::id()) << 32) >> 11
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitored(dir: &std::path::Path) -> Arc<Shared> {
        let config = NodeConfig {
            id: keel_core::NodeId::new("app1").expect("id"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: "http://127.0.0.1:1".into(),
            data_dir: dir.to_owned(),
            role: Role::Standby,
            standbys: Vec::new(),
            sync: true,
            epoch: None,
            sync_timeout: Duration::from_secs(2),
            log_retain: 100,
            token: None,
            secret: None,
            tls: None,
            monitor: Some("http://127.0.0.1:2".into()),
        };
        let store = Arc::new(Store::open(dir, 100).expect("store"));
        Shared::new(config, store, Faults::inert()).0
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_holds_with_the_monitor_or_with_every_sync_standby() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = monitored(dir.path());
        let now = Instant::now();
        let lease = Duration::from_millis(500);
        let t = now + Duration::from_millis(1);
        // No standby: the monitor's renewal alone, and it ends exactly at its end.
        assert!(!shared.lease_valid(now), "nobody renewed it");
        lock(&shared.cluster).monitor_lease_until = Some(now + lease);
        assert!(shared.lease_valid(now + lease - Duration::from_millis(1)));
        assert!(!shared.lease_valid(now + lease));

        // Three sync standbys, cut off from the monitor: two of them still renewing is not
        // enough (the third may be the candidate being promoted), all three is.
        lock(&shared.cluster).monitor_lease_until = None;
        let urls = [
            "http://127.0.0.1:3",
            "http://127.0.0.1:4",
            "http://127.0.0.1:5",
        ];
        let standbys: Vec<(String, String, bool)> = urls
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("app{}", i + 2), u.to_string(), true))
            .collect();
        shared.set_standbys(&standbys);
        let links = shared.links();
        links[0].ack(Lsn(1), Some(now), lease);
        links[1].ack(Lsn(1), Some(now), lease);
        assert!(
            !shared.lease_valid(t),
            "the primary and two of three standbys must not hold it"
        );
        links[2].ack(Lsn(1), Some(now), lease);
        assert!(shared.lease_valid(t));
        assert!(!shared.lease_valid(now + lease));

        // Standbys out of the sync set do not count, for or against.
        for link in &links {
            link.set_sync(false, &shared.log_end);
        }
        assert!(
            !shared.lease_valid(t),
            "with no sync standby, only the monitor can renew it"
        );
        lock(&shared.cluster).monitor_lease_until = Some(now + lease);
        assert!(
            shared.lease_valid(t),
            "dead standbys out of the sync set cannot stop it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_is_reported_in_sync_only_once_it_has_acked_what_came_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = monitored(dir.path());
        shared.log_end.send_replace(Lsn(100));
        shared.set_standbys(&[("app2".into(), "http://127.0.0.1:3".into(), true)]);
        let link = shared.links()[0].clone();
        assert!(link.is_sync(), "the primary waits for it from now on");
        assert!(
            !link.in_sync(),
            "but it may lack writes acknowledged before"
        );
        link.ack(Lsn(99), None, Duration::ZERO);
        assert!(!link.in_sync());
        link.ack(Lsn(100), None, Duration::ZERO);
        assert!(link.in_sync());
    }
}
