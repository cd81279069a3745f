//! A monitored node's side of the protocol in docs/failover.md.
//!
//! One task registers the node, heartbeats every `heartbeat_interval`, and hands each
//! answer to the machine ([`Input::View`]), which decides what it changes: the timing,
//! the failover in progress, the monitor's lease, the epoch (adopted durably as soon as
//! the monitor has recorded it, which fences an older primary at this node's door), the
//! role, and — on a primary — the standbys and the sync set. A primary also asks the
//! monitor to drop a sync standby that has stopped streaming (the machine names them), and
//! stops waiting for it only once the monitor has said yes.
//!
//! Requests go one at a time, so answers are applied in the order they were asked for.
//!
//! The session is written against [`Member`], not the node itself: a keeper of a
//! PostgreSQL server (`keel_pg::keeper`) is a node to the monitor too, with the same
//! machine behind it, and speaks the protocol through this same code.

use std::sync::Arc;
use std::time::Duration;

use keel_client::wire::{
    FailoverPhase, HeartbeatRequest, RefusalBody, RegisterRequest, SyncDropRequest, View, codes,
};
use keel_core::{Epoch, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::machine::{Input, Timing};
use crate::shared::{Shared, Stats};

/// What the monitor protocol needs of the member it speaks for: what it reports, and
/// where the monitor's answers go (its machine).
pub trait Member: Send + Sync + 'static {
    /// The monitor's timing as last learned.
    fn timing(&self) -> Timing;
    /// The body of `POST /v1/register`; `None` while there is nothing true to report (a
    /// keeper whose server is down), and then nothing is sent: to the monitor the member
    /// is as silent as a dead node.
    fn register(&self) -> Option<RegisterRequest>;
    /// The body of `POST /v1/heartbeat`; `None` as for [`Member::register`].
    fn heartbeat(&self) -> Option<HeartbeatRequest>;
    /// Whether it acts as primary (it then asks to drop silent sync standbys).
    fn is_primary(&self) -> bool;
    /// Its id and the epoch it writes in, for a sync drop.
    fn writer(&self) -> (NodeId, Epoch);
    /// Its sync standbys silent for `heartbeat_timeout`, as (URL, id).
    fn silent_sync_standbys(&self, now: Instant) -> Vec<(String, NodeId)>;
    /// Whether keel's fault filter cuts it off from `url` (`keel chaos partition`).
    fn blocks(&self, url: &str) -> bool;
    /// The cluster secret's signer, when it has one.
    fn signer(&self) -> Option<&keel_auth::Signer>;
    /// TLS towards `https://` monitors.
    fn tls(&self) -> Option<keel_auth::tls::ClientConfig>;
    /// Counts a request's outcome (for `/metrics`).
    fn counted(&self, ok: bool);
    /// Hands an input to its machine and carries out what comes of it.
    fn input(&self, input: Input) -> impl std::future::Future<Output = ()> + Send;
    /// Keeps what a view says of the key space (its group, the slot table), before the
    /// view goes to the machine. Nothing, unless the member says otherwise.
    fn learn(&self, _view: &View) {}
    /// Resolves when the member has news the monitor should hear before the next
    /// interval (a keeper's promotion done: its lease is renewed by the answer). Never,
    /// unless the member says otherwise.
    fn nudged(&self) -> impl std::future::Future<Output = ()> + Send {
        std::future::pending()
    }
}

impl Member for Shared {
    fn timing(&self) -> Timing {
        Shared::timing(self)
    }

    fn register(&self) -> Option<RegisterRequest> {
        let status = self.store.status();
        Some(RegisterRequest {
            group: self.config.group.clone(),
            node: self.config.id.clone(),
            url: self.config.advertise.clone(),
            incarnation: self.incarnation,
            epoch: status.epoch,
            lsn: status.last.lsn,
        })
    }

    fn heartbeat(&self) -> Option<HeartbeatRequest> {
        let status = self.store.status();
        let me = self.config.id.as_str();
        let (role, standbys, drained, failover) = {
            let machine = self.machine();
            let (standbys, drained) = machine.report();
            (
                machine.role().role,
                standbys,
                drained,
                machine.failover().cloned(),
            )
        };
        // Draining is done once no write is waiting for its acks any more: what is in
        // the log is then all there is to hand over.
        let draining = drained
            && failover
                .is_some_and(|f| f.from.as_str() == me && f.phase == FailoverPhase::Draining);
        Some(HeartbeatRequest {
            slots_version: self.slots_version(),
            node: self.config.id.clone(),
            incarnation: self.incarnation,
            role,
            epoch: status.epoch,
            lsn: status.last.lsn,
            standbys,
            draining,
        })
    }

    fn is_primary(&self) -> bool {
        Shared::is_primary(self)
    }

    fn writer(&self) -> (NodeId, Epoch) {
        (self.config.id.clone(), self.store.status().epoch)
    }

    fn silent_sync_standbys(&self, now: Instant) -> Vec<(String, NodeId)> {
        self.machine().silent_sync_standbys(now)
    }

    fn blocks(&self, url: &str) -> bool {
        self.faults.blocks(url)
    }

    fn signer(&self) -> Option<&keel_auth::Signer> {
        self.signer.as_ref()
    }

    fn tls(&self) -> Option<keel_auth::tls::ClientConfig> {
        self.config.tls.as_ref().map(|t| t.client_config())
    }

    fn counted(&self, ok: bool) {
        let counter = if ok {
            &self.stats.heartbeats_ok
        } else {
            &self.stats.heartbeats_failed
        };
        Stats::bump(counter, 1);
    }

    async fn input(&self, input: Input) {
        Shared::input(self, input).await;
    }

    fn learn(&self, view: &View) {
        self.learn_slots(view);
    }
}

/// What a request to the monitor came back with.
enum Answer {
    View(View),
    Refused { status: u16, body: RefusalBody },
}

/// Runs until `stop` turns true. `monitors` is one URL, or several separated by commas
/// (a group of monitors): the node talks to the one that leads, follows a `421
/// not_leader` to the leader it names, and tries the next when one does not answer.
pub async fn run<M: Member>(shared: Arc<M>, monitors: String, mut stop: watch::Receiver<bool>) {
    let mut builder = reqwest::Client::builder();
    if let Some(tls) = shared.tls() {
        builder = builder.tls_backend_preconfigured(tls);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build an HTTP client; not talking to the monitor");
            return;
        }
    };
    let monitors: Vec<String> = monitors
        .split(',')
        .map(|m| m.trim().trim_end_matches('/').to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    let Some(first) = monitors.first() else {
        tracing::error!("no monitor URL; not talking to a monitor");
        return;
    };
    let mut monitor = first.clone();
    // The leader last announced in the log, so that a move is said once.
    let mut announced: Option<String> = None;
    let mut registered = false;
    let mut monitor_up = true;
    loop {
        let timing = shared.timing();
        let sent_at = Instant::now();
        let result = if registered {
            match shared.heartbeat() {
                Some(body) => Some(
                    post(
                        &client,
                        &*shared,
                        &format!("{monitor}/v1/heartbeat"),
                        &body,
                        timing.heartbeat_timeout,
                    )
                    .await,
                ),
                None => None,
            }
        } else {
            match shared.register() {
                Some(body) => Some(
                    post(
                        &client,
                        &*shared,
                        &format!("{monitor}/v1/register"),
                        &body,
                        timing.heartbeat_timeout,
                    )
                    .await,
                ),
                None => None,
            }
        };
        // Nothing true to report this round: silent, as a dead node would be.
        let Some(result) = result else {
            tokio::select! {
                _ = tokio::time::sleep_until(sent_at + timing.heartbeat_interval) => {}
                _ = stop.changed() => return,
            }
            continue;
        };
        match result {
            Ok(Answer::View(view)) => {
                if !monitor_up || !registered {
                    tracing::info!(monitor = %monitor, role = %view.role, epoch = %view.epoch, "monitor answered");
                }
                monitor_up = true;
                registered = true;
                shared.counted(true);
                apply(&*shared, view, Some(sent_at)).await;
            }
            Ok(Answer::Refused { status, body }) => {
                shared.counted(false);
                if body.error == codes::STALE_INCARNATION {
                    // Another process has registered under this node's id since: it is the
                    // node now. Whatever view came with the refusal is that process's, and
                    // obeying it could make two primaries; this process steps down for good.
                    tracing::error!(message = %body.message, "another process registered as this node; stepping down and leaving the cluster");
                    shared.input(Input::Evicted).await;
                    return;
                }
                if body.error == codes::NOT_LEADER {
                    // Another monitor leads: go to it at once (its name comes from a
                    // member's signed answer). When none is known yet (an election),
                    // ask the next one after the interval: asking round the group at
                    // once would spin until the election ends.
                    match body.leader.map(|l| l.trim_end_matches('/').to_owned()) {
                        Some(leader) if leader != monitor => {
                            if announced.as_ref() != Some(&leader) {
                                tracing::info!(leader = %leader, "following the monitors' leader");
                                announced = Some(leader.clone());
                            }
                            monitor = leader;
                            continue;
                        }
                        _ => monitor = next_monitor(&monitors, &monitor),
                    }
                } else if body.error == codes::UNKNOWN_NODE {
                    tracing::warn!("the monitor does not know this node; registering again");
                    registered = false;
                } else if let Some(view) = body.view {
                    tracing::warn!(status, error = %body.error, message = %body.message, "monitor refused a heartbeat; following its view");
                    apply(&*shared, view, None).await;
                } else {
                    tracing::warn!(status, error = %body.error, message = %body.message, "monitor refused a heartbeat");
                    // A refused registration must not be retried in a tight loop forever
                    // without being seen; the warning above repeats each interval.
                }
            }
            Err(e) => {
                shared.counted(false);
                if monitor_up {
                    tracing::warn!(monitor = %monitor, error = %e, "monitor unreachable; carrying on with the last view");
                    monitor_up = false;
                }
                monitor = next_monitor(&monitors, &monitor);
            }
        }
        if registered && shared.is_primary() {
            drop_silent_standbys(&*shared, &client, &monitor, timing).await;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(sent_at + timing.heartbeat_interval) => {}
            () = shared.nudged() => {}
            _ = stop.changed() => return,
        }
    }
}

/// The monitor after `current` in the list (the first when `current` is not in it).
fn next_monitor(monitors: &[String], current: &str) -> String {
    let at = monitors.iter().position(|m| m == current);
    let next = at.map_or(0, |i| (i + 1) % monitors.len());
    monitors
        .get(next)
        .cloned()
        .unwrap_or_else(|| current.to_owned())
}

/// Sends one request to the monitor. One the fault filter blocks fails as a refused
/// connection would, without a byte sent. With the cluster secret, the request is signed
/// and an answer counts only if the monitor signed it: a process that took the monitor's
/// port, or a monitor of another cluster, is treated as no monitor at all.
async fn post<T: serde::Serialize>(
    client: &reqwest::Client,
    shared: &impl Member,
    url: &str,
    body: &T,
    timeout: Duration,
) -> Result<Answer, String> {
    if shared.blocks(url) {
        return Err(format!(
            "{url}: connection refused by keel's fault filter (keel chaos partition)"
        ));
    }
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let signed = match shared.signer() {
        Some(signer) => Some(signer.sign("POST", url, &body).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(timeout);
    if let Some(signed) = &signed {
        request = request.header(keel_auth::AUTH_HEADER, &signed.header);
    }
    let resp = request.body(body).send().await.map_err(|e| chain(&e))?;
    let status = resp.status();
    let answer_sig = keel_auth::signature_of(resp.headers());
    let bytes = resp.bytes().await.map_err(|e| chain(&e))?;
    if let (Some(signer), Some(signed)) = (shared.signer(), &signed) {
        signer
            .check_answer(signed, answer_sig.as_deref(), status.as_u16(), Some(&bytes))
            .map_err(|e| {
                format!(
                    "the answer ({status}: {}) is not from a member of this cluster: {e}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )
            })?;
    }
    if status.is_success() {
        serde_json::from_slice(&bytes)
            .map(Answer::View)
            .map_err(|e| format!("bad answer from the monitor: {e}"))
    } else {
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| RefusalBody {
            error: format!("http_{}", status.as_u16()),
            message: String::from_utf8_lossy(&bytes).into_owned(),
            view: None,
            leader: None,
        });
        Ok(Answer::Refused {
            status: status.as_u16(),
            body,
        })
    }
}

/// An error with every cause after it ("error sending request: …: invalid peer
/// certificate: UnknownIssuer"): reqwest's own message alone does not say what failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Hands the monitor's view to the machine. `sent_at` is when the request that brought it
/// was sent (for the lease); `None` for a view that came with a refusal, which renews
/// nothing.
async fn apply(shared: &impl Member, view: View, sent_at: Option<Instant>) {
    shared.learn(&view);
    shared
        .input(Input::View {
            view: Box::new(view),
            sent_at,
        })
        .await;
}

/// Asks the monitor to drop from the sync set every sync standby that has not been
/// streaming for `heartbeat_timeout`, and stops waiting for it once the monitor agrees.
async fn drop_silent_standbys(
    shared: &impl Member,
    client: &reqwest::Client,
    monitor: &str,
    timing: Timing,
) {
    let silent = shared.silent_sync_standbys(Instant::now());
    for (url, standby) in silent {
        let (node, epoch) = shared.writer();
        let request = SyncDropRequest {
            node,
            epoch,
            standby,
        };
        match post(
            client,
            shared,
            &format!("{monitor}/v1/sync/drop"),
            &request,
            timing.heartbeat_timeout,
        )
        .await
        {
            Ok(Answer::View(_)) => {
                shared.input(Input::SyncDropped { url }).await;
            }
            Ok(Answer::Refused { status, body }) => {
                tracing::warn!(status, error = %body.error, message = %body.message, "monitor refused to drop a standby from the sync set");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the monitor to drop a silent standby; writes keep waiting for it")
            }
        }
    }
}
