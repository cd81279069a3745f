//! Reading the monitor from outside: its cluster view (`GET /v1/cluster`) and its event
//! stream (`GET /v1/events`, server-sent events).
//!
//! Shared by everything that follows the monitor: `keel client` and `keel up` print the
//! events, `keel proxy` re-reads the view on every event to route writes to the primary,
//! `keel load` draws the events on its plot.

use std::collections::VecDeque;
use std::time::Duration;

use keel_auth::{AUTH_HEADER, Signed, Signer};

use crate::wire::{ClusterView, EventKind, EventRecord};

/// Why the monitor could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot set up the HTTP client: {0}")]
    Setup(reqwest::Error),
    #[error("cannot reach the monitor at {monitor}: {reason}")]
    Unreachable { monitor: String, reason: String },
    #[error("the monitor at {monitor} answered {status} to {url}: {body}")]
    Refused {
        monitor: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("the monitor's answer to {url} is not what was expected: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("the monitor's event stream broke off: {0}")]
    Broken(String),
    #[error("the answer of {monitor} is not from a member of this cluster: {reason}")]
    NotAMember { monitor: String, reason: String },
}

/// An HTTP client for event streams: a connect timeout, but none on the whole request
/// (the body of an event stream lasts as long as the stream does), no redirects, and
/// with `tls`, TLS towards `https://` monitors (a member's whole configuration,
/// `Tls::client_config`, or a tool's that only checks the CA, `tls::client_for_ca`).
pub fn stream_client(
    connect_timeout: Duration,
    tls: Option<keel_auth::tls::ClientConfig>,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build().map_err(ClientError::Setup)
}

/// The monitors `monitors` names: one URL, or several separated by commas (a group of
/// monitors, `keel monitor --peers`).
pub fn monitor_list(monitors: &str) -> Vec<String> {
    monitors
        .split(',')
        .map(|m| m.trim().trim_end_matches('/').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// Reads `GET /v1/cluster`.
pub async fn cluster(
    http: &reqwest::Client,
    monitor: &str,
    timeout: Duration,
) -> Result<ClusterView, ClientError> {
    cluster_as(http, monitor, timeout, None).await
}

/// Reads `GET /v1/cluster` as a member: with a `signer`, the request is signed and the
/// view is taken only if the monitor signed it (a member routes traffic by it).
///
/// `monitors` may name a group (URLs separated by commas): the first that answers is
/// asked, and if it does not lead, the leader it names — whose view also holds what the
/// nodes reported in their heartbeats. A follower's view is taken when the leader does
/// not answer: the cluster state in it is the group's.
pub async fn cluster_as(
    http: &reqwest::Client,
    monitors: &str,
    timeout: Duration,
    signer: Option<&Signer>,
) -> Result<ClusterView, ClientError> {
    let list = monitor_list(monitors);
    let mut failed = None;
    for monitor in &list {
        match cluster_one(http, monitor, timeout, signer).await {
            Ok(view) => {
                let leader = view
                    .monitors
                    .as_ref()
                    .and_then(|g| g.leader_url.clone())
                    .filter(|l| l != monitor);
                if let Some(leader) = leader
                    && let Ok(led) = cluster_one(http, &leader, timeout, signer).await
                {
                    return Ok(led);
                }
                return Ok(view);
            }
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| ClientError::Unreachable {
        monitor: monitors.to_owned(),
        reason: "no monitor URL given".into(),
    }))
}

/// The monitor that leads among `monitors` (its URL), or the only one given.
pub async fn leading(
    http: &reqwest::Client,
    monitors: &str,
    timeout: Duration,
    signer: Option<&Signer>,
) -> Result<String, ClientError> {
    let list = monitor_list(monitors);
    if list.len() < 2 {
        return Ok(list.into_iter().next().unwrap_or_default());
    }
    let view = cluster_as(http, monitors, timeout, signer).await?;
    let group = view.monitors.ok_or_else(|| ClientError::BadAnswer {
        url: monitors.to_owned(),
        reason: "several monitors were given, but the one that answered runs alone".into(),
    })?;
    group.leader_url.ok_or_else(|| ClientError::Unreachable {
        monitor: monitors.to_owned(),
        reason: format!(
            "no monitor leads the group ({} answered; a majority may be down)",
            group.answered_by
        ),
    })
}

/// Reads one monitor's `GET /v1/cluster`.
async fn cluster_one(
    http: &reqwest::Client,
    monitor: &str,
    timeout: Duration,
    signer: Option<&Signer>,
) -> Result<ClusterView, ClientError> {
    get_one(http, monitor, "/v1/cluster", timeout, signer).await
}

/// Group `group`'s view (`GET /v1/cluster?group=…`) under a monitor of several groups,
/// asked of the monitor that leads among `monitors`.
pub async fn group_as(
    http: &reqwest::Client,
    monitors: &str,
    group: &keel_core::slots::GroupId,
    timeout: Duration,
    signer: Option<&Signer>,
) -> Result<ClusterView, ClientError> {
    let leader = leading(http, monitors, timeout, signer).await?;
    let path = format!("/v1/cluster?group={group}");
    get_one(http, &leader, &path, timeout, signer).await
}

/// The slot table (`GET /v1/slots`), asked of the monitor that leads among `monitors`.
pub async fn slots_as(
    http: &reqwest::Client,
    monitors: &str,
    timeout: Duration,
    signer: Option<&Signer>,
) -> Result<keel_core::slots::SlotTable, ClientError> {
    let leader = leading(http, monitors, timeout, signer).await?;
    get_one(http, &leader, "/v1/slots", timeout, signer).await
}

/// Reads one monitor's `GET {path}`, signed as a member with a `signer`.
async fn get_one<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    monitor: &str,
    path: &str,
    timeout: Duration,
    signer: Option<&Signer>,
) -> Result<T, ClientError> {
    let url = format!("{monitor}{path}");
    let (request, signed) = signed_get(http, &url, monitor, signer)?;
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| unreachable(monitor, &e))?;
    let status = response.status();
    let header = answer_signature(&response);
    let body = response
        .bytes()
        .await
        .map_err(|e| unreachable(monitor, &e))?;
    check_signed(
        signer,
        signed.as_ref(),
        header.as_deref(),
        status.as_u16(),
        Some(&body),
        monitor,
    )?;
    if !status.is_success() {
        return Err(ClientError::Refused {
            monitor: monitor.to_owned(),
            url,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    serde_json::from_slice::<T>(&body).map_err(|e| ClientError::BadAnswer {
        url,
        reason: e.to_string(),
    })
}

/// A GET of `url`, signed when there is a signer.
fn signed_get(
    http: &reqwest::Client,
    url: &str,
    monitor: &str,
    signer: Option<&Signer>,
) -> Result<(reqwest::RequestBuilder, Option<Signed>), ClientError> {
    let mut request = http.get(url);
    let signed = match signer {
        Some(signer) => {
            let signed = signer
                .sign("GET", url, b"")
                .map_err(|e| ClientError::Unreachable {
                    monitor: monitor.to_owned(),
                    reason: e.to_string(),
                })?;
            request = request.header(AUTH_HEADER, &signed.header);
            Some(signed)
        }
        None => None,
    };
    Ok((request, signed))
}

fn answer_signature(response: &reqwest::Response) -> Option<String> {
    keel_auth::signature_of(response.headers())
}

/// With a signer, the answer must carry a member's signature over the request's nonce.
fn check_signed(
    signer: Option<&Signer>,
    signed: Option<&Signed>,
    header: Option<&str>,
    status: u16,
    body: Option<&[u8]>,
    monitor: &str,
) -> Result<(), ClientError> {
    if let (Some(signer), Some(signed)) = (signer, signed) {
        signer
            .check_answer(signed, header, status, body)
            .map_err(|e| ClientError::NotAMember {
                monitor: monitor.to_owned(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// The response when it is a success, else the monitor's refusal with its body.
async fn success(
    response: reqwest::Response,
    monitor: &str,
    url: &str,
) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(ClientError::Refused {
        monitor: monitor.to_owned(),
        url: url.to_owned(),
        status: status.as_u16(),
        body: body.trim().to_owned(),
    })
}

fn unreachable(monitor: &str, e: &reqwest::Error) -> ClientError {
    ClientError::Unreachable {
        monitor: monitor.to_owned(),
        reason: if e.is_timeout() {
            "timed out".to_owned()
        } else {
            root_cause(e)
        },
    }
}

/// The innermost cause of a transport error, which is the one that names the problem
/// ("connection refused", "invalid peer certificate: UnknownIssuer"): reqwest's own
/// message only says that sending failed.
pub fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::ConnectionRefused
    {
        return "connection refused".to_owned();
    }
    cause.to_string()
}

/// One event as read from the stream.
///
/// The monitor may learn new kinds of event before this binary does; such an event is
/// still shown (from its raw fields) rather than ending the stream, hence the `kind` as a
/// string rather than an [`EventKind`].
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: u64,
    /// The group it is about, when the monitor runs several.
    pub group: Option<String>,
    /// The wire name of the kind (`promoted`).
    pub kind: String,
    pub node: Option<String>,
    pub at: String,
    pub message: String,
}

impl Seen {
    /// Parses the JSON of one `data:` line; the error says what was wrong with it.
    pub fn parse(data: &str) -> Result<Seen, String> {
        if let Ok(record) = serde_json::from_str::<EventRecord>(data) {
            return Ok(Seen {
                id: record.id,
                group: record.group.as_ref().map(ToString::to_string),
                kind: record.kind.as_str().to_owned(),
                node: record.node.as_ref().map(ToString::to_string),
                at: record.at,
                message: record.message,
            });
        }
        let value: serde_json::Value =
            serde_json::from_str(data).map_err(|e| format!("not an event ({e}): {data}"))?;
        let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(Seen {
            id: value
                .get("id")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("an event without an id: {data}"))?,
            kind: text("kind").unwrap_or_else(|| "event".to_owned()),
            group: text("group"),
            node: text("node"),
            at: text("at").unwrap_or_default(),
            message: text("message").unwrap_or_default(),
        })
    }

    /// Whether it is an event of `kind`.
    pub fn is(&self, kind: EventKind) -> bool {
        self.kind == kind.as_str()
    }

    /// `03:04:05.123  monitor  promoted: app2 is told to promote in epoch 4`
    ///
    /// The kind comes first, in words, because it is what a person scans for; the
    /// monitor's sentence after it names the nodes and numbers.
    pub fn line(&self) -> String {
        self.line_from("monitor")
    }

    /// Like [`Seen::line`], naming the monitor `who` (`pgmonitor`: the PostgreSQL
    /// group's, beside the data tier's).
    pub fn line_from(&self, who: &str) -> String {
        let who = match &self.group {
            Some(group) => format!("{who} {group}"),
            None => who.to_owned(),
        };
        format!(
            "{}  {who}  {}: {}",
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

/// An open `GET /v1/events` stream, read one `data:` payload at a time.
pub struct EventStream {
    response: reqwest::Response,
    /// Bytes received but not yet split into lines.
    pending: Vec<u8>,
    /// Complete lines not yet handed out.
    lines: VecDeque<String>,
}

impl EventStream {
    /// Opens the stream; `since` asks the monitor to replay its history after that event
    /// id first. `http` should come from [`stream_client`].
    pub async fn open(
        http: &reqwest::Client,
        monitor: &str,
        since: Option<u64>,
    ) -> Result<EventStream, ClientError> {
        Self::open_as(http, monitor, since, None).await
    }

    /// Opens the stream as a member: signed, and taken only from a monitor that signed
    /// its answer (whose status, not the stream's bytes: those only tell a member to
    /// read the signed view again).
    ///
    /// With a group of monitors (URLs separated by commas) the stream is the leader's:
    /// only it decides, so only its stream tells of failovers. When it dies the stream
    /// breaks, and opening it again finds the new leader.
    pub async fn open_as(
        http: &reqwest::Client,
        monitors: &str,
        since: Option<u64>,
        signer: Option<&Signer>,
    ) -> Result<EventStream, ClientError> {
        let monitor = &leading(http, monitors, Duration::from_secs(2), signer).await?;
        let url = match since {
            Some(id) => format!("{monitor}/v1/events?since={id}"),
            None => format!("{monitor}/v1/events"),
        };
        let (request, signed) = signed_get(http, &url, monitor, signer)?;
        let response = request
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| unreachable(monitor, &e))?;
        if response.status().is_success() {
            let header = answer_signature(&response);
            let status = response.status().as_u16();
            check_signed(
                signer,
                signed.as_ref(),
                header.as_deref(),
                status,
                None,
                monitor,
            )?;
        }
        let response = success(response, monitor, &url).await?;
        Ok(EventStream {
            response,
            pending: Vec::new(),
            lines: VecDeque::new(),
        })
    }

    /// The JSON text of the next event; `Ok(None)` when the monitor ended the stream.
    ///
    /// Only `data:` lines are read: the monitor sends one JSON event per `data:` line
    /// (docs/failover.md), so the other SSE fields (`id:`, `event:`, comments used as
    /// keep-alives) carry nothing a reader needs.
    pub async fn next_data(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            while let Some(line) = self.lines.pop_front() {
                if let Some(data) = line.strip_prefix("data:") {
                    let data = data.trim();
                    if !data.is_empty() {
                        return Ok(Some(data.to_owned()));
                    }
                }
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|e| ClientError::Broken(e.to_string()))?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.pending.extend_from_slice(&chunk);
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                self.lines
                    .push_back(text.trim_end_matches(['\n', '\r']).to_owned());
            }
        }
    }
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
