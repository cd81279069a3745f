//! Which connection goes when a server is full, and which has overstayed: the decisions
//! behind [`crate::serve_with`]'s limits, pure, with time passed in.
//!
//! A server at its connection cap used to stop accepting, so a thousand clients that each
//! sent half a request could keep every member out. Now a new connection is always
//! accepted, and the connection that has waited longest on its client — idle between
//! requests, still sending a body, or stuck on a write its client does not read — is
//! closed to make room. A connection whose request a handler is working on is never
//! chosen: closing it would lose an answer in progress, and the handler's own time is
//! bounded by the server, not by the client. An open event stream goes only when nothing
//! else can: it is usually a member following the monitor.

use tokio::time::Instant;

/// Where a connection stands, as far as its client's pace is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request head: between requests, or before the first.
    Idle,
    /// The head is in; the body is still arriving.
    Body,
    /// A handler is working on a request.
    Busy,
    /// A streamed answer (server-sent events) is open.
    Streaming,
}

/// What the server knows of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its number.
    pub id: u64,
    /// Its phase.
    pub phase: Phase,
    /// When it entered the phase.
    pub since: Instant,
    /// When a write to it last stopped making progress (its client does not read), if a
    /// write is stuck now.
    pub stalled_since: Option<Instant>,
}

impl Seen {
    /// How long the connection has been waiting on its client, if it is: a stuck write
    /// counts from when it stuck, whatever the phase.
    fn waiting_since(&self) -> Option<Instant> {
        match (self.stalled_since, self.phase) {
            (Some(t), _) => Some(t),
            (None, Phase::Idle | Phase::Body) => Some(self.since),
            (None, Phase::Busy | Phase::Streaming) => None,
        }
    }
}

/// The connection to close to make room for a new one: the one waiting longest on its
/// client; else the oldest event stream; `None` when every connection is being served.
pub fn victim(conns: &[Seen]) -> Option<u64> {
    let waiting = conns
        .iter()
        .filter_map(|c| c.waiting_since().map(|t| (t, c.id)))
        .min();
    let streaming = || {
        conns
            .iter()
            .filter(|c| c.phase == Phase::Streaming)
            .map(|c| (c.since, c.id))
            .min()
    };
    waiting.or_else(streaming).map(|(_, id)| id)
}

/// The limits a connection's client must keep to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// The longest a request's body may take to arrive once its head is in.
    pub body: std::time::Duration,
    /// The longest a write may make no progress.
    pub send: std::time::Duration,
}

/// Why a connection must be closed now, if it must.
pub fn overstayed(conn: &Seen, now: Instant, deadlines: Deadlines) -> Option<&'static str> {
    if conn
        .stalled_since
        .is_some_and(|t| now.saturating_duration_since(t) >= deadlines.send)
    {
        return Some("its client has not read its answer within the send timeout");
    }
    if conn.phase == Phase::Body && now.saturating_duration_since(conn.since) >= deadlines.body {
        return Some("its request body did not arrive within the body timeout");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn seen(id: u64, phase: Phase, since: Instant) -> Seen {
        Seen {
            id,
            phase,
            since,
            stalled_since: None,
        }
    }

    #[test]
    fn the_connection_waiting_longest_on_its_client_goes_first() {
        let t0 = Instant::now();
        let conns = [
            seen(1, Phase::Busy, at(t0, 0)),
            seen(2, Phase::Idle, at(t0, 30)),
            seen(3, Phase::Body, at(t0, 20)),
            seen(4, Phase::Streaming, at(t0, 10)),
        ];
        assert_eq!(victim(&conns), Some(3));
        // A write stuck since before everything else is older still.
        let mut stuck = conns;
        stuck[0].stalled_since = Some(at(t0, 5));
        assert_eq!(victim(&stuck), Some(1));
    }

    #[test]
    fn an_event_stream_goes_only_when_nothing_else_can_and_a_busy_connection_never() {
        let t0 = Instant::now();
        let conns = [
            seen(1, Phase::Busy, at(t0, 0)),
            seen(2, Phase::Streaming, at(t0, 20)),
            seen(3, Phase::Streaming, at(t0, 10)),
        ];
        assert_eq!(victim(&conns), Some(3));
        assert_eq!(victim(&conns[..1]), None);
        assert_eq!(victim(&[]), None);
    }

    #[test]
    fn a_body_or_a_write_that_takes_too_long_overstays_exactly_at_its_deadline() {
        let t0 = Instant::now();
        let deadlines = Deadlines {
            body: Duration::from_secs(10),
            send: Duration::from_secs(30),
        };
        let body = seen(1, Phase::Body, t0);
        assert_eq!(overstayed(&body, at(t0, 9_999), deadlines), None);
        assert!(overstayed(&body, at(t0, 10_000), deadlines).is_some());
        // An idle connection is bounded by the header timeout, not here.
        assert_eq!(
            overstayed(&seen(2, Phase::Idle, t0), at(t0, 60_000), deadlines),
            None
        );
        let stuck = Seen {
            stalled_since: Some(at(t0, 1_000)),
            ..seen(3, Phase::Streaming, t0)
        };
        assert_eq!(overstayed(&stuck, at(t0, 30_999), deadlines), None);
        assert!(overstayed(&stuck, at(t0, 31_000), deadlines).is_some());
    }
}
