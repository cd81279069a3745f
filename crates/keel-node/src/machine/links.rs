//! The primary's standbys: their streams, acks, the sync set and the lease they renew.

use keel_core::Lsn;
use tokio::time::Instant;

use super::{Link, LinkState, Machine, Note, Output};

impl Link {
    pub(super) fn new(id: u64, url: String, node: Option<String>, now: Instant) -> Self {
        Self {
            id,
            url,
            node,
            state: LinkState::Connecting,
            acked: Lsn(0),
            sync: false,
            sync_from: Lsn(u64::MAX),
            down_since: Some(now),
            lease_until: None,
        }
    }

    /// Puts the standby in or out of the set the primary waits for. Joining, everything
    /// up to `log_end` may have been acknowledged without it: it counts as in sync only
    /// once it has acknowledged that far. Every batch decided after this waits for it.
    pub(super) fn set_sync(&mut self, sync: bool, log_end: Lsn) {
        match (self.sync, sync) {
            (false, true) => self.sync_from = log_end,
            (true, false) => self.sync_from = Lsn(u64::MAX),
            _ => {}
        }
        self.sync = sync;
    }

    /// Moves the stream to a new state. Silent since it stopped streaming: a reconnect
    /// attempt that fails again (connecting, then disconnected) does not start the count
    /// anew, or a dead standby would leave the sync set only once the retry backoff grows
    /// past `heartbeat_timeout`.
    fn set_state(&mut self, state: LinkState, now: Instant) {
        if self.state == state {
            return;
        }
        self.state = state;
        if state == LinkState::Streaming {
            self.down_since = None;
        } else if self.down_since.is_none() {
            self.down_since = Some(now);
        }
    }
}

impl Machine {
    pub(super) fn link_mut(&mut self, id: u64) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.id == id)
    }

    pub(super) fn set_link_state(&mut self, id: u64, state: LinkState, now: Instant) {
        if let Some(link) = self.link_mut(id) {
            link.set_state(state, now);
        }
    }

    /// Replaces the set of standbys (as the monitor lists them: id, URL, sync): starts a
    /// sender for each new one, stops those no longer listed, and updates the sync set.
    pub(super) fn set_standbys(
        &mut self,
        standbys: &[(String, String, bool)],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.links.retain(|link| {
            let keep = standbys.iter().any(|(_, url, _)| *url == link.url);
            if !keep {
                out.push(Output::StopSender { link: link.id });
            }
            keep
        });
        for (node, url, sync) in standbys {
            let log_end = self.log_end;
            match self.links.iter_mut().find(|l| l.url == *url) {
                Some(link) => link.set_sync(*sync, log_end),
                None => {
                    self.last_link += 1;
                    let id = self.last_link;
                    let mut link = Link::new(id, url.clone(), Some(node.clone()), now);
                    link.set_sync(*sync, log_end);
                    self.links.push(link);
                    out.push(Output::StartSender {
                        link: id,
                        url: url.clone(),
                    });
                }
            }
        }
    }

    /// The standby's log is in line with ours up to `acked`.
    pub(super) fn aligned(&mut self, id: u64, acked: Lsn, now: Instant, out: &mut Vec<Output>) {
        if let Some(link) = self.link_mut(id) {
            link.acked = acked;
        }
        self.caught_up(id, now, out);
        self.settle(now, out);
        self.advance(now, out);
    }

    /// An ack: the standby has everything up to `lsn` durably, and renewed the lease of
    /// the frame it answered, sent at `sent_at` (a lease runs from when its renewal was
    /// asked for, never from when the answer came back).
    pub(super) fn ack(
        &mut self,
        id: u64,
        lsn: Lsn,
        sent_at: Option<Instant>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let lease = self.timing.lease;
        let Some(link) = self.link_mut(id) else {
            return;
        };
        if let Some(at) = sent_at {
            link.lease_until = Some(at + lease);
        }
        link.acked = link.acked.max(lsn);
        self.caught_up(id, now, out);
        self.settle(now, out);
        self.advance(now, out);
    }

    /// A standby that is catching up streams once it has acknowledged every entry
    /// decided so far.
    fn caught_up(&mut self, id: u64, now: Instant, out: &mut Vec<Output>) {
        let log_end = self.log_end;
        let Some(link) = self.link_mut(id) else {
            return;
        };
        if link.state == LinkState::CatchingUp && link.acked >= log_end {
            link.set_state(LinkState::Streaming, now);
            out.push(Output::Note(Note::Streaming {
                url: link.url.clone(),
                at: link.acked,
            }));
        }
    }

    /// The monitor has recorded that this standby left the sync set.
    pub(super) fn sync_dropped(&mut self, url: &str, now: Instant, out: &mut Vec<Output>) {
        let log_end = self.log_end;
        let Some(link) = self.links.iter_mut().find(|l| l.url == url) else {
            return;
        };
        if link.sync {
            link.set_sync(false, log_end);
            out.push(Output::Note(Note::SyncDropped(url.to_owned())));
        }
        self.settle(now, out);
        self.advance(now, out);
    }

    /// Whether every standby of the sync set is streaming.
    pub(super) fn sync_streaming(&self) -> bool {
        self.links
            .iter()
            .filter(|l| l.sync)
            .all(|l| l.state == LinkState::Streaming)
    }

    /// Whether every standby of the sync set has acknowledged `lsn`.
    pub(super) fn sync_acked(&self, lsn: Lsn) -> bool {
        self.links.iter().filter(|l| l.sync).all(|l| l.acked >= lsn)
    }

    /// The sync standbys for which `pred` holds, named for messages.
    pub(super) fn names(&self, pred: impl Fn(&Link) -> bool) -> String {
        let names: Vec<String> = self
            .links
            .iter()
            .filter(|l| l.sync && pred(l))
            .map(|l| match &l.node {
                Some(id) => format!("{id} ({})", l.url),
                None => l.url.clone(),
            })
            .collect();
        names.join(", ")
    }
}
