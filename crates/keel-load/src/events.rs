//! The monitor's events during a run (`GET /v1/events`, server-sent events), kept with
//! the moment each arrived, to mark them on the timeline and the plot.
//!
//! Each event is placed by when it *arrived here*, on this machine's monotonic clock: the
//! monitor's `at` timestamp is its own wall clock, which is never compared with ours. On a
//! single machine the two differ by the stream's delivery time, well under the one-second
//! buckets of the timeline.
//!
//! The stream is read with [`keel_client::monitor::EventStream`]. An event of a kind this
//! version does not know is kept as it is. When the stream breaks (the monitor
//! restarted) it is opened again with `?since=` the last id, so nothing in between is
//! lost while the monitor keeps its history.
//!
//! Given a group of monitors, the stream is the leader's. When another takes over, its
//! stream is opened from now (event ids are each monitor's own), and the change is kept
//! as an event of kind `monitor_leader` with id 0, so the report says it once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_client::monitor::{ClientError, EventStream};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::LoadError;

/// How long connecting to the monitor may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait between attempts to reopen a broken stream.
const REOPEN_PAUSE: Duration = Duration::from_millis(250);

/// One event as it arrived.
#[derive(Debug, Clone)]
pub struct Arrived {
    /// When it arrived, on this machine's clock.
    pub at: Instant,
    /// The event.
    pub event: MonitorEvent,
}

/// The fields of a monitor event this tool shows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MonitorEvent {
    /// The monitor's event id.
    pub id: u64,
    /// The kind's wire name (`promoted`).
    pub kind: String,
    /// The node it is about.
    #[serde(default)]
    pub node: Option<String>,
    /// The monitor's sentence.
    #[serde(default)]
    pub message: String,
}

/// An event in the report: when it arrived, in seconds from the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventMark {
    /// Seconds from the start of the run (negative: before it started).
    pub at_s: f64,
    /// The monitor's event id.
    pub id: u64,
    /// The kind (`failover_started`).
    pub kind: String,
    /// The node it is about.
    pub node: Option<String>,
    /// The monitor's sentence.
    pub message: String,
}

impl EventMark {
    /// `promoted app2` — the short label a plot marker carries.
    pub fn label(&self) -> String {
        let kind = self.kind.replace('_', " ");
        match &self.node {
            Some(node) => format!("{kind} {node}"),
            None => kind,
        }
    }
}

/// The events seen so far, shared with the live view.
pub type Feed = Arc<Mutex<Vec<Arrived>>>;

/// A running collection of the monitor's events.
pub struct Collector {
    feed: Feed,
    task: JoinHandle<()>,
}

impl Collector {
    /// Opens `{monitor}/v1/events` and collects every event from now on. Fails when the
    /// monitor does not answer or answers with anything but a stream.
    pub async fn start(
        monitor: &str,
        tls: Option<keel_auth::tls::ClientConfig>,
    ) -> Result<Collector, LoadError> {
        let monitor = monitor.trim_end_matches('/').to_owned();
        let failed = |e: ClientError| LoadError::Monitor {
            url: monitor.clone(),
            why: e.to_string(),
        };
        let http = keel_client::monitor::stream_client(CONNECT_TIMEOUT, tls).map_err(failed)?;
        let leader = keel_client::monitor::leading(&http, &monitor, CONNECT_TIMEOUT, None)
            .await
            .map_err(failed)?;
        let stream = EventStream::open(&http, &leader, None)
            .await
            .map_err(failed)?;
        let feed: Feed = Arc::default();
        let task = tokio::spawn(follow(http, monitor, leader, stream, Arc::clone(&feed)));
        Ok(Collector { feed, task })
    }

    /// The feed the live view reads.
    pub fn feed(&self) -> Feed {
        Arc::clone(&self.feed)
    }

    /// Stops collecting; the events, placed relative to `start`.
    pub fn finish(self, start: Instant) -> Vec<EventMark> {
        self.task.abort();
        let arrived = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
        arrived.iter().map(|a| mark(a, start)).collect()
    }
}

/// An arrived event placed relative to `start`.
pub fn mark(arrived: &Arrived, start: Instant) -> EventMark {
    let at_s = if arrived.at >= start {
        (arrived.at - start).as_secs_f64()
    } else {
        -(start - arrived.at).as_secs_f64()
    };
    EventMark {
        at_s,
        id: arrived.event.id,
        kind: arrived.event.kind.clone(),
        node: arrived.event.node.clone(),
        message: arrived.event.message.clone(),
    }
}

/// Reads the stream of `leader` (one of `monitors`) into `feed`, reopening it when it
/// breaks, on whichever monitor leads then, until aborted.
async fn follow(
    http: reqwest::Client,
    monitors: String,
    mut leader: String,
    first: EventStream,
    feed: Feed,
) {
    let mut stream = Some(first);
    let mut last_id = None;
    loop {
        let mut current = match stream.take() {
            Some(s) => s,
            None => {
                tokio::time::sleep(REOPEN_PAUSE).await;
                let Ok(now) =
                    keel_client::monitor::leading(&http, &monitors, CONNECT_TIMEOUT, None).await
                else {
                    continue;
                };
                if now != leader {
                    last_id = None;
                    push(
                        &feed,
                        MonitorEvent {
                            id: 0,
                            kind: "monitor_leader".into(),
                            node: None,
                            message: format!("the monitors' leader is now {now}"),
                        },
                    );
                    leader = now;
                }
                match EventStream::open(&http, &leader, last_id).await {
                    Ok(s) => s,
                    Err(_) => continue,
                }
            }
        };
        while let Ok(Some(data)) = current.next_data().await {
            if let Some(event) = parse(&data) {
                last_id = Some(event.id);
                push(&feed, event);
            }
        }
    }
}

fn push(feed: &Feed, event: MonitorEvent) {
    feed.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arrived {
            at: Instant::now(),
            event,
        });
}

/// The event in the JSON of one `data:` line; `None` when it is not one.
pub fn parse(data: &str) -> Option<MonitorEvent> {
    serde_json::from_str(data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_as_its_kind_node_and_message_even_of_an_unknown_kind() {
        let known = parse(
            r#"{"id": 7, "at": "2026-11-22T03:04:05.123Z", "kind": "promoted", "node": "app2",
                "epoch": 2, "message": "app2 is told to promote in epoch 2"}"#,
        );
        assert_eq!(
            known,
            Some(MonitorEvent {
                id: 7,
                kind: "promoted".into(),
                node: Some("app2".into()),
                message: "app2 is told to promote in epoch 2".into()
            })
        );
        let unknown = parse(r#"{"id": 8, "kind": "moon_phase_changed", "epoch": 2}"#);
        assert_eq!(
            unknown.map(|e| e.kind),
            Some("moon_phase_changed".to_owned())
        );
    }

    #[test]
    fn garbage_is_not_an_event() {
        assert_eq!(parse("not json"), None);
        assert_eq!(parse(r#"{"kind": "promoted"}"#), None, "no id");
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_placed_by_when_they_arrived() {
        let start = Instant::now();
        let arrived = Arrived {
            at: start + Duration::from_millis(2500),
            event: MonitorEvent {
                id: 1,
                kind: "failover_started".into(),
                node: Some("app1".into()),
                message: String::new(),
            },
        };
        let m = mark(&arrived, start);
        assert_eq!(m.at_s, 2.5);
        assert_eq!(m.label(), "failover started app1");
        let before = mark(&arrived, start + Duration::from_secs(3));
        assert_eq!(before.at_s, -0.5);
    }
}
