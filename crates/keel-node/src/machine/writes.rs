//! The primary's write path.
//!
//! A batch the writer took from its queue waits until every sync standby is streaming
//! (at most the sync timeout), and commits only if this primary holds its lease. One batch
//! commits at a time; its entries are shipped while they are made durable here. Once
//! committed, the batch waits (at most the sync timeout again) until every sync standby
//! has confirmed it, and is acknowledged only if the lease still holds then: a primary
//! whose lease lapsed may already have been replaced, and must not tell anyone it wrote
//! something after that.

use keel_core::{Lsn, Role};
use tokio::time::Instant;

use super::{BatchId, CommitFailure, Inflight, LinkState, Machine, Output, Waiting, WriteError};

impl Machine {
    /// The writer took a batch.
    pub(super) fn queued(&mut self, batch: BatchId, now: Instant, out: &mut Vec<Output>) {
        if let Some(err) = self.refusal() {
            out.push(Output::Reply {
                batch,
                result: Err(err),
            });
            return;
        }
        self.waiting.push_back(Waiting { batch, since: now });
        self.advance(now, out);
    }

    /// Starts the next commit, if one may start; refuses the batches that cannot.
    pub(super) fn advance(&mut self, now: Instant, out: &mut Vec<Output>) {
        while self.committing.is_none() {
            let Some(head) = self.waiting.front().copied() else {
                return;
            };
            let refused = if let Some(err) = self.refusal() {
                Some(err)
            } else if !self.sync_streaming() {
                if now < head.since + self.sync_timeout {
                    return;
                }
                Some(WriteError::SyncUnavailable {
                    standbys: self.names(|l| l.state != LinkState::Streaming),
                    waited: self.sync_timeout,
                })
            } else if !self.lease_valid(now) {
                Some(WriteError::NoLease)
            } else {
                None
            };
            self.waiting.pop_front();
            match refused {
                Some(err) => out.push(Output::Reply {
                    batch: head.batch,
                    result: Err(err),
                }),
                None => {
                    self.committing = Some(head.batch);
                    out.push(Output::Commit {
                        batch: head.batch,
                        epoch: self.writing_epoch,
                    });
                }
            }
        }
    }

    /// A commit is done.
    pub(super) fn committed(
        &mut self,
        batch: BatchId,
        result: Result<Lsn, CommitFailure>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.committing == Some(batch) {
            self.committing = None;
        }
        match result {
            Ok(last) => {
                self.log_end = self.log_end.max(last);
                self.committed = self.committed.max(last);
                self.inflight.push_back(Inflight {
                    batch,
                    last,
                    deadline: now + self.sync_timeout,
                });
                self.settle(now, out);
            }
            // Another primary's epoch has been seen here: this node must not write, and
            // nothing was written.
            Err(CommitFailure::StaleEpoch { current }) => out.push(Output::Reply {
                batch,
                result: Err(WriteError::Fenced {
                    epoch: current,
                    committed: None,
                }),
            }),
            Err(CommitFailure::Store(message)) => out.push(Output::Reply {
                batch,
                result: Err(WriteError::Store(message)),
            }),
        }
        self.advance(now, out);
    }

    /// Answers the committed batches whose fate is known, oldest first: a batch's acks
    /// and deadline come no earlier than those of the batches before it.
    pub(super) fn settle(&mut self, now: Instant, out: &mut Vec<Output>) {
        while let Some(head) = self.inflight.front().copied() {
            let result = if let Some(epoch) = self.role.fenced_by {
                Err(WriteError::Fenced {
                    epoch,
                    committed: Some(head.last),
                })
            } else if self.role.role != Role::Primary {
                // Told to stand by while the batch waited: this node is primary no more.
                Err(WriteError::LeaseLapsed { lsn: head.last })
            } else if self.sync_acked(head.last) {
                if self.lease_valid(now) {
                    Ok(())
                } else {
                    Err(WriteError::LeaseLapsed { lsn: head.last })
                }
            } else if now >= head.deadline {
                Err(WriteError::ReplicationTimeout {
                    lsn: head.last,
                    standbys: self.names(|l| l.acked < head.last),
                    waited: self.sync_timeout,
                })
            } else {
                return;
            };
            self.inflight.pop_front();
            out.push(Output::Reply {
                batch: head.batch,
                result,
            });
        }
    }
}
