//! Every line `keel up` prints — its own, the monitor's events, its children's output —
//! numbered, kept (the last [`HISTORY`]) and broadcast, so that the dashboard's timeline
//! shows what the terminal shows and a page opened late gets the recent past.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many lines are kept for a page that connects late.
pub const HISTORY: usize = 500;

/// The source of `keel up`'s own lines.
pub const KEEL_UP: &str = "keel up";

/// One line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedLine {
    /// From 1, one more per line.
    pub id: u64,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// `keel up`, `monitor`, or a child's name (`app1`, `proxy`, `pg2`).
    pub source: String,
    pub text: String,
}

/// The lines.
#[derive(Debug)]
pub struct Feed {
    kept: Mutex<(u64, VecDeque<FeedLine>)>,
    tx: broadcast::Sender<FeedLine>,
}

/// The process's feed.
pub fn feed() -> &'static Feed {
    static FEED: OnceLock<Feed> = OnceLock::new();
    FEED.get_or_init(|| Feed {
        kept: Mutex::new((0, VecDeque::new())),
        tx: broadcast::channel(HISTORY).0,
    })
}

impl Feed {
    /// Adds a line.
    pub fn push(&self, source: &str, text: &str) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.0 += 1;
        let line = FeedLine {
            id: kept.0,
            at: keel_core::duration::rfc3339_millis(std::time::SystemTime::now()),
            source: source.to_owned(),
            text: text.to_owned(),
        };
        if kept.1.len() == HISTORY {
            kept.1.pop_front();
        }
        kept.1.push_back(line.clone());
        // No subscriber is no error.
        let _ = self.tx.send(line);
    }

    /// The kept lines after `since`, and the new ones from now on: taken under one lock,
    /// so that none is missed or seen twice.
    pub fn subscribe(&self, since: u64) -> (Vec<FeedLine>, broadcast::Receiver<FeedLine>) {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let past = kept.1.iter().filter(|l| l.id > since).cloned().collect();
        (past, self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_kept_and_replayed_from_an_id() {
        let feed = Feed {
            kept: Mutex::new((0, VecDeque::new())),
            tx: broadcast::channel(8).0,
        };
        for i in 0..(HISTORY + 3) {
            feed.push("app1", &format!("line {i}"));
        }
        let (past, _) = feed.subscribe(0);
        assert_eq!(past.len(), HISTORY, "the oldest go");
        assert_eq!(past[0].id, 4);
        let (past, mut live) = feed.subscribe((HISTORY + 1) as u64);
        assert_eq!(past.iter().map(|l| l.id).collect::<Vec<_>>(), [502, 503]);
        feed.push("monitor", "promoted: app2");
        let line = live.try_recv().expect("a new line");
        assert_eq!((line.id, line.source.as_str()), (504, "monitor"));
    }
}
