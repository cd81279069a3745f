//! The primary's write path.
//!
//! Requests queue into one writer task. It takes everything waiting (up to
//! [`MAX_BATCH`]), checks that every sync standby is streaming, decides the batch's
//! entries, hands them to the senders, and only then makes them durable with one fsync
//! ([`Store::execute_with`](keel_store::Store::execute_with)) — so the primary's fsync and
//! the standbys' run at the same time, as a Raft leader's do. Then it moves on to the next
//! batch at once; waiting for the standbys' acks happens in a task per batch.
//!
//! An entry shipped but never made durable here is harmless: it was not acknowledged, and
//! since every start of a primary begins a new epoch, a standby that holds it rolls it back
//! when it next meets this primary. A commit that fails after shipping, however, leaves
//! this process unable to reuse those positions safely, so it aborts.

use std::sync::Arc;
use std::time::Duration;

use keel_core::{Epoch, Lsn, Role};
use keel_store::{Applied, Command, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::config::MAX_BATCH;
use crate::shared::{LinkState, Shared, Stats};

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
    /// A standby saw a newer epoch; this node stepped down.
    #[error("this node was primary of an older epoch; a standby has seen epoch {epoch}")]
    Fenced {
        /// The newer epoch.
        epoch: Epoch,
    },
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

/// Queues a write and waits for its answer.
pub async fn submit(shared: &Shared, command: Command) -> Result<Applied, WriteError> {
    let role = shared.role();
    if role.role != Role::Primary {
        return Err(match role.fenced_by {
            Some(epoch) => WriteError::Fenced { epoch },
            None => WriteError::NotPrimary {
                primary: role.primary,
            },
        });
    }
    let (reply, answer) = oneshot::channel();
    shared
        .writes
        .send(WriteRequest { command, reply })
        .await
        .map_err(|_| WriteError::ShuttingDown)?;
    answer.await.map_err(|_| WriteError::ShuttingDown)?
}

/// The writer task: runs until the queue closes.
pub async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let requests = std::mem::take(&mut batch);
        if let Some(err) = refusal(&shared) {
            answer_all(requests, &err);
            continue;
        }
        let sync = shared.config.sync && !shared.links.is_empty();
        if sync && let Err(err) = wait_for_standbys(&shared).await {
            Stats::bump(&shared.stats.writes_unavailable, requests.len() as u64);
            answer_all(requests, &err);
            continue;
        }
        let (commands, replies): (Vec<_>, Vec<_>) =
            requests.into_iter().map(|r| (r.command, r.reply)).unzip();
        let store = shared.store.clone();
        let epoch = store.status().epoch;
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
            Ok((Err(e), shipped)) => {
                if shipped {
                    tracing::error!(error = %e, "commit failed after its entries were shipped; aborting");
                    std::process::abort();
                }
                tracing::error!(error = %e, "group commit failed");
                answer_all_replies(replies, &WriteError::from(e));
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
        if sync {
            tokio::spawn(acknowledge_when_replicated(
                shared.clone(),
                last,
                replies,
                results,
            ));
        } else {
            answer(&shared, replies, results);
        }
    }
}

/// Why the writer must refuse everything right now, if it must.
fn refusal(shared: &Shared) -> Option<WriteError> {
    let role = shared.role();
    match (role.role, role.fenced_by) {
        (_, Some(epoch)) => Some(WriteError::Fenced { epoch }),
        (Role::Standby, None) => Some(WriteError::NotPrimary {
            primary: role.primary,
        }),
        (Role::Primary, None) => None,
    }
}

/// Waits up to the sync timeout for every sync standby to be streaming.
async fn wait_for_standbys(shared: &Shared) -> Result<(), WriteError> {
    let timeout = shared.config.sync_timeout;
    let all = async {
        for link in &shared.links {
            let mut state = link.state.subscribe();
            // An error means the link's task is gone: nothing will change any more.
            if state
                .wait_for(|s| *s == LinkState::Streaming)
                .await
                .is_err()
            {
                std::future::pending::<()>().await;
            }
        }
    };
    if tokio::time::timeout(timeout, all).await.is_ok() {
        return Ok(());
    }
    Err(WriteError::SyncUnavailable {
        standbys: missing(shared, |l| *l.state.borrow() != LinkState::Streaming),
        waited: timeout,
    })
}

/// Names of the standbys for which `pred` holds, for messages.
fn missing(shared: &Shared, pred: impl Fn(&crate::shared::StandbyLink) -> bool) -> String {
    let names: Vec<String> = shared
        .links
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
    replies: Vec<oneshot::Sender<Result<Applied, WriteError>>>,
    results: Vec<Applied>,
) {
    let timeout = shared.config.sync_timeout;
    let mut role = shared.role.subscribe();
    let all = async {
        for link in &shared.links {
            let mut acked = link.acked.subscribe();
            if acked.wait_for(|a| *a >= last).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let fenced = role.wait_for(|r| r.fenced_by.is_some());
    tokio::select! {
        done = tokio::time::timeout(timeout, all) => {
            if done.is_ok() {
                answer(&shared, replies, results);
            } else {
                let err = WriteError::ReplicationTimeout {
                    lsn: last,
                    standbys: missing(&shared, |l| *l.acked.borrow() < last),
                    waited: timeout,
                };
                Stats::bump(&shared.stats.writes_unavailable, replies.len() as u64);
                answer_all_replies(replies, &err);
            }
        }
        r = fenced => {
            let epoch = r.ok().and_then(|r| r.fenced_by).unwrap_or_default();
            answer_all_replies(replies, &WriteError::Fenced { epoch });
        }
    }
}

fn answer(
    shared: &Shared,
    replies: Vec<oneshot::Sender<Result<Applied, WriteError>>>,
    results: Vec<Applied>,
) {
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

fn answer_all(requests: Vec<WriteRequest>, err: &WriteError) {
    answer_all_replies(requests.into_iter().map(|r| r.reply).collect(), err);
}

fn answer_all_replies(
    replies: Vec<oneshot::Sender<Result<Applied, WriteError>>>,
    err: &WriteError,
) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}
