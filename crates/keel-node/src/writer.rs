//! The primary's write path, as a driver of the machine.
//!
//! Requests queue into one writer task. It takes everything waiting (up to
//! [`MAX_BATCH`]) as one batch and hands it to the machine, which decides when it may
//! commit: once every sync standby is streaming and while this primary holds its lease.
//! The writer then decides the batch's entries, hands them to the senders, and only then
//! makes them durable with one fsync
//! ([`Storage::execute_with`](keel_store::Storage::execute_with)) — so the primary's fsync and
//! the standbys' run at the same time, as a Raft leader's do. The machine answers the
//! batch once every sync standby has confirmed it; meanwhile the writer takes the next
//! batch. It takes no batch while the machine still holds one waiting or committing, so
//! writes that arrive meanwhile make one larger batch.
//!
//! An entry shipped but never made durable here is harmless: it was not acknowledged, and
//! since every start of a primary begins a new epoch, a standby that holds it rolls it back
//! when it next meets this primary. A commit that fails after shipping, however, leaves
//! this process unable to reuse those positions safely, so it aborts.

use std::sync::Arc;

use keel_core::Epoch;
use keel_store::{Command, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::config::MAX_BATCH;
use crate::machine::{BatchId, CommitFailure, Input};
use crate::shared::{Shared, Stats, WriteRequest};

pub use crate::machine::WriteError;

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e.to_string())
    }
}

/// Queues a write and waits for its answer.
pub async fn submit(shared: &Shared, command: Command) -> Result<keel_store::Applied, WriteError> {
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
    shared.machine().refusal()
}

/// The writer task: runs until the queue closes.
pub async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut id: BatchId = 0;
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        id += 1;
        let (commands, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut batch)
            .into_iter()
            .map(|r| (r.command, r.reply))
            .unzip();
        shared.hold(id, replies);
        shared
            .input(Input::Queued {
                batch: id,
                writes: commands.len(),
            })
            .await;
        let mut commands = Some(commands);
        // The batch commits here, or the machine answers it without a commit.
        loop {
            if let Some((batch, epoch)) = shared.take_commit() {
                match commands.take() {
                    Some(commands) if batch == id => commit(&shared, batch, epoch, commands).await,
                    _ => tracing::error!(batch, "asked to commit a batch the writer does not hold"),
                }
            }
            if !shared.machine().busy() {
                break;
            }
            shared.writer_wake.notified().await;
        }
    }
    shared.answer_all_pending(&WriteError::ShuttingDown);
}

/// Commits one batch and reports the result to the machine.
async fn commit(shared: &Arc<Shared>, batch: BatchId, epoch: Epoch, commands: Vec<Command>) {
    let store = shared.store.clone();
    let n = commands.len() as u64;
    let publisher = shared.clone();
    let commit = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut shipped = false;
        let result = store.execute_with(epoch, &commands, &mut |entries| {
            publisher.publish(entries);
            shipped = true;
        });
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        Stats::bump(&publisher.stats.commit_micros, micros);
        (result, shipped)
    });
    let result = match commit.await {
        Ok((Ok(results), _)) => {
            Stats::bump(&shared.stats.commits, 1);
            Stats::bump(&shared.stats.committed_ops, n);
            shared.committed(batch, results);
            Ok(shared.store.status().last.lsn)
        }
        // Another primary's epoch has been seen here, and nothing was written.
        Ok((Err(StoreError::StaleEpoch { current, .. }), false)) => {
            Err(CommitFailure::StaleEpoch { current })
        }
        Ok((Err(e), shipped)) => {
            if shipped {
                tracing::error!(error = %e, "commit failed after its entries were shipped; aborting");
                std::process::abort();
            }
            tracing::error!(error = %e, "group commit failed");
            Err(CommitFailure::Store(e.to_string()))
        }
        Err(e) => {
            // The commit task itself died, so whether its entries went out is unknown.
            tracing::error!(error = %e, "group commit task failed; aborting");
            std::process::abort();
        }
    };
    shared.input(Input::Committed { batch, result }).await;
}
