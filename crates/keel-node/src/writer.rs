//! The primary's write path.
//!
//! Requests queue into one writer task. It takes everything waiting (up to
//! [`MAX_BATCH`]), checks that every sync standby is streaming and that this primary
//! holds its lease, decides the batch's entries, hands them to the senders, and only then
//! makes them durable with one fsync
//! ([`Store::execute_with`](keel_store::Store::execute_with)) — so the primary's fsync and
//! the standbys' run at the same time, as a Raft leader's do. Then it moves on to the next
//! batch at once; waiting for the standbys' acks happens in a task per batch.
//!
//! An entry shipped but never made durable here is harmless: it was not acknowledged, and
//! since every start of a primary begins a new epoch, a standby that holds it rolls it back
//! when it next meets this primary. A commit that fails after shipping, however, leaves
//! this process unable to reuse those positions safely, so it aborts.
//!
//! The waits re-check their condition whenever [`Shared::changes`] moves (a link's state,
//! ack or sync flag, the role, the lease, a failover), so a standby that the monitor drops
//! from the sync set releases the writes that were waiting for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_core::{Epoch, Lsn, Role};
use keel_store::{Applied, Command, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::MAX_BATCH;
use crate::shared::{LinkState, Shared, StandbyLink, Stats};

/// A write waiting for its answer.
pub struct WriteRequest {
    /// What to do.
    pub command: Command,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// Why a write was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node is not the primary.
    #[error("this node is a standby and does not take writes")]
    NotPrimary {
        /// The primary's URL, when known.
        primary: Option<String>,
    },
    /// A newer epoch exists; this node stepped down.
    #[error("this node was primary of an older epoch; epoch {epoch} has begun{}", if .committed.is_some() { " (the write was already durable here: its outcome is unknown)" } else { "" })]
    Fenced {
        /// The newer epoch.
        epoch: Epoch,
        /// Where the write stands in this node's log, if it was committed before the node
        /// stepped down: then it may survive (a standby may hold it), and its outcome is
        /// unknown. `None`: nothing was written.
        committed: Option<Lsn>,
    },
    /// The monitor is replacing the primary.
    #[error("a failover is in progress{}; retry shortly", .to.as_ref().map(|t| format!(" (promoting {t})")).unwrap_or_default())]
    FailoverInProgress {
        /// The node being promoted.
        to: Option<String>,
    },
    /// Neither the monitor nor every sync standby renewed this primary's lease.
    #[error(
        "this primary's lease has lapsed (neither the monitor nor every sync standby renewed it); it takes no writes until it is renewed"
    )]
    NoLease,
    /// A sync standby was not streaming within the wait; nothing was written.
    #[error(
        "sync standby unavailable: {standbys} not connected within {waited:?}; nothing was written"
    )]
    SyncUnavailable {
        /// The standbys missing.
        standbys: String,
        /// How long the write waited.
        waited: Duration,
    },
    /// Written locally, but not confirmed by every sync standby within the wait.
    #[error(
        "the write is durable on the primary at lsn {lsn} but {standbys} did not confirm it within {waited:?}; its outcome is unknown"
    )]
    ReplicationTimeout {
        /// Where the write stands in the primary's log.
        lsn: Lsn,
        /// The standbys that did not confirm.
        standbys: String,
        /// How long the write waited.
        waited: Duration,
    },
    /// Written and replicated, but the lease lapsed before the write could be
    /// acknowledged, so this primary may already have been replaced.
    #[error(
        "the write reached lsn {lsn}, but this primary's lease lapsed before it could be acknowledged; its outcome is unknown"
    )]
    LeaseLapsed {
        /// Where the write stands in the primary's log.
        lsn: Lsn,
    },
    /// The store failed.
    #[error("storage failure: {0}")]
    Store(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e.to_string())
    }
}

type Reply = oneshot::Sender<Result<Applied, WriteError>>;

/// Queues a write and waits for its answer.
pub async fn submit(shared: &Shared, command: Command) -> Result<Applied, WriteError> {
    if let Some(err) = refusal(shared) {
        return Err(err);
    }
    let (reply, answer) = oneshot::channel();
    shared
        .writes
        .send(WriteRequest { command, reply })
        .await
        .map_err(|_| WriteError::ShuttingDown)?;
    answer.await.map_err(|_| WriteError::ShuttingDown)?
}

/// Why this node must refuse writes right now, if it must.
pub fn refusal(shared: &Shared) -> Option<WriteError> {
    let role = shared.role();
    if let Some(epoch) = role.fenced_by {
        return Some(WriteError::Fenced {
            epoch,
            committed: None,
        });
    }
    if let Some(f) = shared.failover() {
        return Some(WriteError::FailoverInProgress {
            to: Some(f.to.to_string()),
        });
    }
    match role.role {
        Role::Standby => Some(WriteError::NotPrimary {
            primary: role.primary,
        }),
        Role::Primary => None,
    }
}

/// The writer task: runs until the queue closes.
pub async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let requests = std::mem::take(&mut batch);
        if let Some(err) = refusal(&shared) {
            answer_all(requests.into_iter().map(|r| r.reply), &err);
            continue;
        }
        let sync = !shared.sync_links().is_empty();
        if sync && let Err(err) = wait_for_standbys(&shared).await {
            Stats::bump(&shared.stats.writes_unavailable, requests.len() as u64);
            answer_all(requests.into_iter().map(|r| r.reply), &err);
            continue;
        }
        if !shared.lease_valid(Instant::now()) {
            Stats::bump(&shared.stats.writes_unavailable, requests.len() as u64);
            answer_all(requests.into_iter().map(|r| r.reply), &WriteError::NoLease);
            continue;
        }
        let (commands, replies): (Vec<_>, Vec<_>) =
            requests.into_iter().map(|r| (r.command, r.reply)).unzip();
        let store = shared.store.clone();
        let epoch = Epoch(shared.writing_epoch.load(Ordering::SeqCst));
        let n = commands.len() as u64;
        let publisher = shared.clone();
        let commit = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut shipped = false;
            let result = store.execute_with(epoch, &commands, |entries| {
                publisher.publish(entries);
                shipped = true;
            });
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            Stats::bump(&publisher.stats.commit_micros, micros);
            (result, shipped)
        });
        let results = match commit.await {
            Ok((Ok(results), _)) => results,
            Ok((Err(StoreError::StaleEpoch { current, .. }), false)) => {
                // Another primary's epoch has been seen here: this node must not write,
                // and nothing was written.
                answer_all(
                    replies,
                    &WriteError::Fenced {
                        epoch: current,
                        committed: None,
                    },
                );
                continue;
            }
            Ok((Err(e), shipped)) => {
                if shipped {
                    tracing::error!(error = %e, "commit failed after its entries were shipped; aborting");
                    std::process::abort();
                }
                tracing::error!(error = %e, "group commit failed");
                answer_all(replies, &WriteError::from(e));
                continue;
            }
            Err(e) => {
                // The commit task itself died, so whether its entries went out is unknown.
                tracing::error!(error = %e, "group commit task failed; aborting");
                std::process::abort();
            }
        };
        Stats::bump(&shared.stats.commits, 1);
        Stats::bump(&shared.stats.committed_ops, n);
        let last = shared.store.status().last.lsn;
        shared.inflight.fetch_add(1, Ordering::SeqCst);
        // A standby may have joined the sync set while this batch was being committed:
        // from the moment it did, writes must wait for it.
        if sync || !shared.sync_links().is_empty() {
            tokio::spawn(acknowledge_when_replicated(
                shared.clone(),
                last,
                replies,
                results,
            ));
        } else {
            finish(&shared, last, replies, results);
        }
    }
}

/// Waits until `cond` holds, re-checking whenever the shared state changes, for at most
/// `timeout`. Returns whether it held.
async fn wait_until(shared: &Shared, timeout: Duration, cond: impl Fn(&Shared) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut changes = shared.changes.subscribe();
    loop {
        changes.borrow_and_update();
        if cond(shared) {
            return true;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return cond(shared);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return cond(shared),
        }
    }
}

/// Waits up to the sync timeout for every sync standby to be streaming.
async fn wait_for_standbys(shared: &Shared) -> Result<(), WriteError> {
    let timeout = shared.config.sync_timeout;
    let streaming = |s: &Shared| {
        s.sync_links()
            .iter()
            .all(|l| *l.state.borrow() == LinkState::Streaming)
    };
    if wait_until(shared, timeout, streaming).await {
        return Ok(());
    }
    Err(WriteError::SyncUnavailable {
        standbys: names(&shared.sync_links(), |l| {
            *l.state.borrow() != LinkState::Streaming
        }),
        waited: timeout,
    })
}

/// Names of the links for which `pred` holds, for messages.
fn names(links: &[Arc<StandbyLink>], pred: impl Fn(&StandbyLink) -> bool) -> String {
    let names: Vec<String> = links
        .iter()
        .filter(|l| pred(l))
        .map(|l| {
            l.node_id()
                .map(|id| format!("{id} ({})", l.url))
                .unwrap_or_else(|| l.url.clone())
        })
        .collect();
    names.join(", ")
}

/// Holds a committed batch's answers until every sync standby has confirmed `last`.
async fn acknowledge_when_replicated(
    shared: Arc<Shared>,
    last: Lsn,
    replies: Vec<Reply>,
    results: Vec<Applied>,
) {
    let timeout = shared.config.sync_timeout;
    let replicated = |s: &Shared| {
        s.role.borrow().fenced_by.is_some()
            || s.sync_links().iter().all(|l| *l.acked.borrow() >= last)
    };
    let done = wait_until(&shared, timeout, replicated).await;
    if let Some(epoch) = shared.role().fenced_by {
        shared.inflight.fetch_sub(1, Ordering::SeqCst);
        answer_all(
            replies,
            &WriteError::Fenced {
                epoch,
                committed: Some(last),
            },
        );
        return;
    }
    if !done {
        shared.inflight.fetch_sub(1, Ordering::SeqCst);
        let err = WriteError::ReplicationTimeout {
            lsn: last,
            standbys: names(&shared.sync_links(), |l| *l.acked.borrow() < last),
            waited: timeout,
        };
        Stats::bump(&shared.stats.writes_unavailable, replies.len() as u64);
        answer_all(replies, &err);
        return;
    }
    finish(&shared, last, replies, results);
}

/// Answers a batch that is durable where it must be — if this primary still holds its
/// lease: a primary whose lease lapsed may already have been replaced, and must not tell
/// anyone it wrote something after that.
fn finish(shared: &Shared, last: Lsn, replies: Vec<Reply>, results: Vec<Applied>) {
    shared.inflight.fetch_sub(1, Ordering::SeqCst);
    if !shared.lease_valid(Instant::now()) {
        Stats::bump(&shared.stats.writes_unavailable, replies.len() as u64);
        answer_all(replies, &WriteError::LeaseLapsed { lsn: last });
        return;
    }
    for (reply, result) in replies.into_iter().zip(results) {
        let counter = if result.is_ok() {
            &shared.stats.writes_ok
        } else {
            &shared.stats.writes_rejected
        };
        Stats::bump(counter, 1);
        // The client may have gone away; its write stands all the same.
        let _ = reply.send(Ok(result));
    }
}

fn answer_all(replies: impl IntoIterator<Item = Reply>, err: &WriteError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}
