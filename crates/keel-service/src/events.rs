//! The service's event stream (`GET /v1/events`): every transition of its circuit
//! breaker, as server-sent events in the monitor's style — one JSON object per `data:`
//! line, with `id`, `at` (RFC 3339), `kind` and `message`, plus the breaker's `from`, `to`
//! and `reason`.
//!
//! The last [`HISTORY`] events are kept, so a client can replay from an id (`?since=N` or
//! `Last-Event-ID`); without either it gets only new events. Replay and subscription
//! happen under one lock, so a client sees every event once, in order.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keel_core::ApiError;
use keel_resilience::{BreakerEvent, CircuitBreaker};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// How many events are kept for replay.
pub const HISTORY: usize = 1_000;

/// One event on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Grows by one per event, from 1, over the process's life.
    pub id: u64,
    /// Wall-clock time of the transition, RFC 3339 UTC with milliseconds; for people.
    pub at: String,
    /// `breaker_open`, `breaker_half_open`, `breaker_closed`, `breaker_forced_open` or
    /// `breaker_forced_closed`: the state entered.
    pub kind: String,
    /// The breaker's name (`redis`).
    pub breaker: String,
    /// The state it left.
    pub from: String,
    /// The state it entered.
    pub to: String,
    /// Why, e.g. `1 consecutive failures`, `open wait elapsed`.
    pub reason: String,
    /// A sentence for a person: `breaker redis: closed -> open (1 consecutive failures)`.
    pub message: String,
}

/// The history and the live feed.
#[derive(Debug)]
pub struct EventLog(keel_http::EventLog<EventRecord>);

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        EventLog(keel_http::EventLog::new(HISTORY, |e| e.id))
    }

    /// Records a breaker transition and sends it to subscribers.
    pub fn publish(&self, event: &BreakerEvent) -> EventRecord {
        // The event's instant is on tokio's clock; the wall clock is only for people.
        let at = SystemTime::now()
            .checked_sub(event.at.elapsed())
            .unwrap_or_else(SystemTime::now);
        self.0.publish_next(|id| EventRecord {
            id,
            at: keel_core::duration::rfc3339_millis(at),
            kind: format!("breaker_{}", event.to.as_str()),
            breaker: event.breaker.to_string(),
            from: event.from.as_str().to_owned(),
            to: event.to.as_str().to_owned(),
            reason: event.reason.to_string(),
            message: event.to_string(),
        })
    }

    /// The kept events after `since`, and a receiver for everything after them.
    pub fn subscribe(&self, since: u64) -> (Vec<EventRecord>, broadcast::Receiver<EventRecord>) {
        self.0.subscribe(since)
    }

    /// The id of the newest event, 0 when none.
    pub fn last_id(&self) -> u64 {
        self.0.last_id()
    }

    /// Copies every transition of `breaker` into this log, from now until the breaker is
    /// dropped. Needs a tokio runtime; outside one, nothing is copied (and a warning
    /// says so).
    pub fn follow(self: &Arc<Self>, breaker: &CircuitBreaker) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                breaker = breaker.name(),
                "no async runtime: breaker transitions will not be on /v1/events"
            );
            return;
        };
        let mut rx = breaker.subscribe();
        let log = Arc::clone(self);
        runtime.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        log.publish(&event);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "breaker events missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct Since {
    since: Option<u64>,
}

/// `GET /v1/events`: the stream. Ends when `stopping` turns true.
pub(crate) async fn stream(
    log: Arc<EventLog>,
    query: Result<Query<Since>, QueryRejection>,
    headers: &HeaderMap,
    stopping: watch::Receiver<bool>,
) -> Response {
    let since = match query {
        Ok(Query(q)) => q.since,
        Err(e) => {
            return keel_http::error_response(
                StatusCode::BAD_REQUEST,
                ApiError::new(
                    "bad_query",
                    format!("?since= takes an event id (a whole number): {e}"),
                ),
            );
        }
    };
    // Without either, only new events: a reader that wants history asks for it.
    let since = keel_http::events_since(since, headers).unwrap_or_else(|| log.last_id());
    let (past, live) = log.subscribe(since);
    keel_http::event_stream(past, live, |e| (e.id, e.kind.clone()), stopping)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_resilience::Config;

    use super::*;

    #[tokio::test]
    async fn transitions_are_recorded_in_order_with_ids() {
        let breaker = CircuitBreaker::new(
            "redis",
            Config {
                consecutive_failures: Some(1),
                ..Config::default()
            },
        )
        .expect("valid");
        let log = Arc::new(EventLog::new());
        let (_, mut rx) = log.subscribe(0);
        log.follow(&breaker);
        breaker
            .try_acquire()
            .expect("closed")
            .failure(Duration::from_millis(1));
        breaker.reset();
        let first = rx.recv().await.expect("open event");
        let second = rx.recv().await.expect("reset event");
        assert_eq!((first.id, first.kind.as_str()), (1, "breaker_open"));
        assert_eq!(
            first.message,
            "breaker redis: closed -> open (1 consecutive failures)"
        );
        assert_eq!((second.id, second.kind.as_str()), (2, "breaker_closed"));
        assert_eq!(second.reason, "reset");
        assert_eq!(log.subscribe(1).0, vec![second]);
        assert!(
            first.at.ends_with('Z') && first.at.contains('T'),
            "{}",
            first.at
        );
    }
}
