//! The monitor's event stream (`GET /v1/events`, server-sent events) read as
//! [`Seen`] events (`keel_client`'s), each one line a person can follow.
//!
//! Shared by `keel client` (`kill-primary --watch`, `failover`) and `keel up`, which
//! prints every event as it happens.

pub(crate) use keel_client::monitor::Seen;

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
            Some(data) => Seen::parse(&data).map(Some).map_err(anyhow::Error::msg),
            None => Ok(None),
        }
    }
}

/// An HTTP client for event streams: a connect timeout, but none on the whole request.
pub(crate) fn stream_client(
    connect_timeout: std::time::Duration,
    tls: Option<keel_auth::tls::ClientConfig>,
) -> anyhow::Result<reqwest::Client> {
    Ok(keel_client::monitor::stream_client(connect_timeout, tls)?)
}
