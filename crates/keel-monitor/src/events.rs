//! The event history and its subscribers (`GET /v1/events`).
//!
//! The last [`HISTORY`] events stay in memory so that a client can replay from an id;
//! new ones go out on a broadcast channel. Replay and subscription happen under one lock,
//! so a client sees every event exactly once, in order.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::machine::Event;
use crate::wire::EventRecord;

/// How many events are kept for replay.
pub const HISTORY: usize = 10_000;

/// The history and the live feed.
#[derive(Debug)]
pub struct EventLog {
    // A std mutex: it is held for a copy or a push, never across an await.
    history: Mutex<VecDeque<EventRecord>>,
    live: broadcast::Sender<EventRecord>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        let (live, _) = broadcast::channel(1024);
        Self {
            history: Mutex::new(VecDeque::with_capacity(1024)),
            live,
        }
    }

    /// Stamps an event with the wall-clock time, keeps it and sends it to subscribers.
    pub fn publish(&self, event: Event) -> EventRecord {
        let record = EventRecord {
            id: event.id,
            at: rfc3339_millis(SystemTime::now()),
            kind: event.kind,
            node: event.node,
            epoch: event.epoch,
            message: event.message,
        };
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(record.clone());
        // No subscriber is not an error.
        let _ = self.live.send(record.clone());
        record
    }

    /// The kept events after `since`, and a receiver for everything after them.
    pub fn subscribe(&self, since: u64) -> (Vec<EventRecord>, broadcast::Receiver<EventRecord>) {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let past = history.iter().filter(|e| e.id > since).cloned().collect();
        (past, self.live.subscribe())
    }

    /// The id of the newest event, 0 when none.
    pub fn last_id(&self) -> u64 {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.back().map_or(0, |e| e.id)
    }
}

/// `2026-11-22T03:04:05.123Z`. Written by hand to avoid a date crate for one format.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_core::Epoch;

    use super::*;
    use crate::wire::EventKind;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_316_645_123);
        assert_eq!(rfc3339_millis(t), "2026-11-22T03:04:05.123Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn subscribers_replay_after_since_then_follow() {
        let log = EventLog::new();
        let event = |id| Event {
            id,
            kind: EventKind::Registered,
            node: None,
            epoch: Epoch(1),
            message: String::new(),
        };
        log.publish(event(1));
        log.publish(event(2));
        let (past, mut rx) = log.subscribe(1);
        assert_eq!(past.iter().map(|e| e.id).collect::<Vec<_>>(), [2]);
        log.publish(event(3));
        assert_eq!(rx.try_recv().map(|e| e.id).ok(), Some(3));
        assert_eq!(log.last_id(), 3);
    }
}
