//! The monitor's event stream (`GET /v1/events`, server-sent events) read as
//! [`EventRecord`]s, and each turned into one line a person can follow.
//!
//! Shared by `keel client` (`kill-primary --watch`, `failover`) and `keel up`, which
//! prints every event as it happens.

use anyhow::{Context, anyhow};
use keel_client::wire::{EventKind, EventRecord};

/// One event as read from the stream.
///
/// The monitor may learn new kinds of event before this binary does; such an event is
/// still shown (from its raw fields) rather than ending the stream, hence the `kind` as a
/// string rather than an [`EventKind`].
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) id: u64,
    /// The wire name of the kind (`promoted`).
    pub(crate) kind: String,
    pub(crate) node: Option<String>,
    pub(crate) at: String,
    pub(crate) message: String,
}

impl Seen {
    /// Parses the JSON of one `data:` line.
    pub(crate) fn parse(data: &str) -> anyhow::Result<Seen> {
        if let Ok(record) = serde_json::from_str::<EventRecord>(data) {
            return Ok(Seen {
                id: record.id,
                kind: record.kind.as_str().to_owned(),
                node: record.node.as_ref().map(ToString::to_string),
                at: record.at,
                message: record.message,
            });
        }
        let value: serde_json::Value =
            serde_json::from_str(data).with_context(|| format!("not an event: {data}"))?;
        let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(Seen {
            id: value
                .get("id")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| anyhow!("an event without an id: {data}"))?,
            kind: text("kind").unwrap_or_else(|| "event".to_owned()),
            node: text("node"),
            at: text("at").unwrap_or_default(),
            message: text("message").unwrap_or_default(),
        })
    }

    pub(crate) fn is(&self, kind: EventKind) -> bool {
        self.kind == kind.as_str()
    }

    /// `03:04:05.123  monitor  promoted: app2 is told to promote in epoch 4`
    ///
    /// The kind comes first, in words, because it is what a person scans for; the
    /// monitor's sentence after it names the nodes and numbers.
    pub(crate) fn line(&self) -> String {
        format!(
            "{}  monitor  {}: {}",
            clock_time(&self.at),
            self.kind.replace('_', " "),
            self.message
        )
    }
}

/// The time of day of an RFC 3339 timestamp (`2026-11-22T03:04:05.123Z` → `03:04:05.123`),
/// or the whole text when it is not one. UTC, as the nodes' own log lines.
fn clock_time(at: &str) -> &str {
    at.split_once('T')
        .map_or(at, |(_, time)| time.trim_end_matches('Z'))
}

/// An open `GET /v1/events` stream, read as [`Seen`] events.
pub(crate) struct EventStream(keel_client::monitor::EventStream);

impl EventStream {
    /// Opens the stream; `since` asks the monitor to replay its history after that event
    /// id first. `http` must come from [`stream_client`].
    pub(crate) async fn open(
        http: &reqwest::Client,
        monitor: &str,
        since: Option<u64>,
    ) -> anyhow::Result<EventStream> {
        Ok(EventStream(
            keel_client::monitor::EventStream::open(http, monitor, since).await?,
        ))
    }

    /// The next event; `Ok(None)` when the monitor ended the stream.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Seen>> {
        match self.0.next_data().await? {
            Some(data) => Seen::parse(&data).map(Some),
            None => Ok(None),
        }
    }
}

/// An HTTP client for event streams: a connect timeout, but none on the whole request.
pub(crate) fn stream_client(
    connect_timeout: std::time::Duration,
    tls: Option<keel_auth::tls::ClientConfig>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder
        .build()
        .context("cannot set up the HTTP client for the monitor's events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_event_reads_as_its_kind_and_message() {
        let seen = Seen::parse(
            r#"{"id": 12, "at": "2026-11-22T03:04:05.123Z", "kind": "promoted", "node": "app2",
                "epoch": 4, "message": "app2 is told to promote in epoch 4"}"#,
        )
        .expect("parses");
        assert!(seen.is(EventKind::Promoted));
        assert_eq!(seen.node.as_deref(), Some("app2"));
        assert_eq!(
            seen.line(),
            "03:04:05.123  monitor  promoted: app2 is told to promote in epoch 4"
        );
    }

    #[test]
    fn an_event_of_a_kind_this_binary_does_not_know_is_still_shown() {
        let seen = Seen::parse(
            r#"{"id": 3, "at": "2026-11-22T03:04:05.123Z", "kind": "moon_phase_changed",
                "node": null, "epoch": 1, "message": "full moon"}"#,
        )
        .expect("parses");
        assert_eq!(seen.kind, "moon_phase_changed");
        assert_eq!(
            seen.line(),
            "03:04:05.123  monitor  moon phase changed: full moon"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Seen::parse("not json").is_err());
        assert!(Seen::parse(r#"{"kind": "promoted"}"#).is_err());
    }
}
