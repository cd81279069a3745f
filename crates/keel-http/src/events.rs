//! Event streams (`GET /v1/events`, server-sent events): the history a server keeps and
//! its live subscribers ([`EventLog`]), and the answer that replays the one and follows
//! the other ([`event_stream`]). The monitor streams its failover steps this way, a
//! service its breaker's transitions.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;

/// The last events of a server and its live feed. Replay and subscription happen under
/// one lock, so a subscriber sees every event exactly once, in order.
#[derive(Debug)]
pub struct EventLog<T> {
    // A std mutex: held for a push or a copy, never across an await.
    inner: Mutex<Kept<T>>,
    live: broadcast::Sender<T>,
    capacity: usize,
    id_of: fn(&T) -> u64,
}

#[derive(Debug)]
struct Kept<T> {
    history: VecDeque<T>,
    last_id: u64,
}

impl<T: Clone> EventLog<T> {
    /// A log keeping the last `capacity` events, whose ids `id_of` reads. Ids grow by
    /// one per event from 1, whoever gives them ([`EventLog::publish`] takes an event
    /// with its id, [`EventLog::publish_next`] gives the next one).
    pub fn new(capacity: usize, id_of: fn(&T) -> u64) -> Self {
        let (live, _) = broadcast::channel(1024);
        EventLog {
            inner: Mutex::new(Kept {
                history: VecDeque::with_capacity(capacity.min(1024)),
                last_id: 0,
            }),
            live,
            capacity,
            id_of,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `event` and sends it to subscribers.
    pub fn publish(&self, event: T) -> T {
        let mut kept = self.lock();
        kept.last_id = (self.id_of)(&event);
        self.push(&mut kept, event)
    }

    /// Makes an event with the next id, keeps it and sends it to subscribers.
    pub fn publish_next(&self, make: impl FnOnce(u64) -> T) -> T {
        let mut kept = self.lock();
        kept.last_id += 1;
        let event = make(kept.last_id);
        self.push(&mut kept, event)
    }

    fn push(&self, kept: &mut Kept<T>, event: T) -> T {
        if kept.history.len() >= self.capacity {
            kept.history.pop_front();
        }
        kept.history.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.live.send(event.clone());
        event
    }

    /// The kept events after `since`, and a receiver for everything after them.
    pub fn subscribe(&self, since: u64) -> (Vec<T>, broadcast::Receiver<T>) {
        let kept = self.lock();
        let past = kept
            .history
            .iter()
            .filter(|e| (self.id_of)(e) > since)
            .cloned()
            .collect();
        (past, self.live.subscribe())
    }

    /// The id of the newest event, 0 when none.
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }
}

/// Where a `GET /v1/events` reader wants to start: `?since=N`, else the `Last-Event-ID` a
/// reconnecting browser sends; `None` for "only new events".
pub fn events_since(query: Option<u64>, headers: &http::HeaderMap) -> Option<u64> {
    query.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    })
}

/// The answer to `GET /v1/events`: the kept events in `past`, then each new one from
/// `live`, as server-sent events with `id:` and `event:` from `id_and_kind` and the JSON
/// of the event as `data:`. A reader too slow to keep up (the channel lagged) is
/// disconnected rather than shown a gap; it reconnects with `?since=` and is replayed
/// what it missed. The stream ends when `stopping` turns true, or a graceful shutdown
/// would wait for every open stream.
pub fn event_stream<T>(
    past: Vec<T>,
    live: tokio::sync::broadcast::Receiver<T>,
    id_and_kind: fn(&T) -> (u64, String),
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Response
where
    T: serde::Serialize + Clone + Send + Sync + 'static,
{
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let live = futures::stream::unfold(live, |mut rx| async move {
        match rx.recv().await {
            Ok(message) => Some((message, rx)),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event stream client too slow; disconnecting it");
                None
            }
            Err(RecvError::Closed) => None,
        }
    });
    let stream = futures::stream::iter(past)
        .chain(live)
        .map(move |event| {
            let (id, kind) = id_and_kind(&event);
            let data = serde_json::to_string(&event).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(
                Event::default().id(id.to_string()).event(kind).data(data),
            )
        })
        .take_until(async move {
            if stopping.wait_for(|s| *s).await.is_err() {
                // Nobody can stop this server any more: the stream ends with its reader.
                std::future::pending::<()>().await;
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_replay_after_since_then_follow() {
        let log: EventLog<(u64, &str)> = EventLog::new(2, |e| e.0);
        log.publish((1, "a"));
        log.publish_next(|id| (id, "b"));
        let (past, mut rx) = log.subscribe(1);
        assert_eq!(past, [(2, "b")]);
        log.publish_next(|id| (id, "c"));
        assert_eq!(rx.try_recv().ok(), Some((3, "c")));
        assert_eq!(log.last_id(), 3);
        // Only the last two are kept.
        assert_eq!(log.subscribe(0).0, [(2, "b"), (3, "c")]);
    }
}
