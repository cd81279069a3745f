//! The standby's side: which replication stream may write, the epoch rule on every offer
//! and frame, the leases this node grants, and promotion.

use keel_core::{Epoch, Lsn, Role};
use tokio::time::Instant;

use super::{Machine, Note, Output, Promotion, RoleState};

impl Machine {
    /// A primary offers a stream in `epoch`. Older than one this node has seen: refused
    /// with the newer epoch, which makes the sender step down. A primary accepts only a
    /// newer epoch than its own. Accepted, the epoch is recorded first (refusing any older
    /// primary from then on), this node follows the sender, and the new stream replaces
    /// any older one.
    pub(super) fn offer(
        &mut self,
        from: &str,
        epoch: Epoch,
        primary: Option<String>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let seen = self.seen;
        let refused = if epoch < seen {
            Some(format!(
                "{from} sent epoch {epoch}, but this node has seen epoch {seen}; the sender is no longer primary"
            ))
        } else if self.is_primary() && epoch <= seen {
            Some(format!(
                "this node is the primary of epoch {seen}; {from} at epoch {epoch} cannot replicate to it"
            ))
        } else {
            None
        };
        if let Some(message) = refused {
            out.push(Output::Refuse { seen, message });
            return;
        }
        self.observe(epoch, out);
        self.follow(primary, now, out);
        self.stream += 1;
        out.push(Output::Accept {
            stream: self.stream,
        });
    }

    /// A frame of stream `stream` in `epoch`.
    pub(super) fn frame(&mut self, stream: u64, epoch: Epoch, out: &mut Vec<Output>) {
        if stream != self.stream {
            out.push(Output::Replaced);
        } else if epoch < self.seen {
            out.push(Output::FrameStale { seen: self.seen });
        } else {
            self.observe(epoch, out);
            out.push(Output::FrameOk);
        }
    }

    /// Records a newer epoch (durably, before what follows).
    pub(super) fn observe(&mut self, epoch: Epoch, out: &mut Vec<Output>) {
        if epoch > self.seen {
            self.seen = epoch;
            out.push(Output::PersistEpoch(epoch));
        }
    }

    /// The monitor names this node primary: it takes over once every lease it granted as
    /// a standby has run out — until then the old primary may still, in its own eyes,
    /// hold a lease that this node renewed.
    pub(super) fn start_promotion(
        &mut self,
        epoch: Epoch,
        standbys: Vec<(String, String, bool)>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.promotion.is_some() {
            return;
        }
        let until = self
            .last_grant
            .map_or(now, |g| g + self.timing.lease + self.timing.drift);
        self.promotion = Some(Promotion {
            epoch,
            standbys,
            until,
            recording: false,
        });
        if until > now {
            out.push(Output::Note(Note::WaitingOutLease(until - now)));
        }
        self.tick_promotion(now, out);
    }

    /// Records the promotion's epoch once the wait is over.
    pub(super) fn tick_promotion(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let Some(p) = &mut self.promotion
            && !p.recording
            && now >= p.until
        {
            p.recording = true;
            out.push(Output::PersistPromotion(p.epoch));
        }
    }

    /// A standby view arrived before the promotion was being recorded: it is called off.
    pub(super) fn cancel_promotion(&mut self) {
        if self.promotion.as_ref().is_some_and(|p| !p.recording) {
            self.promotion = None;
        }
    }

    /// The promotion's epoch is recorded: primary from now on. Writes stay refused until
    /// the monitor's next answer clears the failover; the lease from it renews this
    /// primary from then on.
    pub(super) fn promotion_recorded(
        &mut self,
        epoch: Epoch,
        log_end: Lsn,
        error: Option<String>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(promotion) = self.promotion.take() else {
            return;
        };
        if promotion.epoch != epoch {
            self.promotion = Some(promotion);
            return;
        }
        if let Some(why) = error {
            out.push(Output::Note(Note::PromotionFailed(why)));
            return;
        }
        self.seen = self.seen.max(epoch);
        self.writing_epoch = epoch;
        // No stream from a former primary may append to this log any more.
        self.stream += 1;
        self.log_end = log_end;
        self.committed = log_end;
        out.push(Output::ResetLogEnd);
        self.set_role(
            RoleState {
                role: Role::Primary,
                primary: Some(self.advertise.clone()),
                fenced_by: None,
            },
            out,
        );
        self.set_standbys(&promotion.standbys, now, out);
        out.push(Output::Note(Note::Promoted(epoch)));
    }
}
