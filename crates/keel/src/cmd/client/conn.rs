//! Talking to one node: requests, answers with their `Keel-*` headers, and the errors a
//! person can act on (nothing listening, no answer in time, the server's own message).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use keel_auth::{AUTH_HEADER, Key, Kind, Signer};
use keel_core::ApiError;
use keel_core::headers::{KEEL_EPOCH, KEEL_LSN, KEEL_NODE, KEEL_ROLE};
use reqwest::{Method, StatusCode, Url, header};

/// An HTTP connection pool with the client's time limit.
pub(super) struct Conn {
    http: reqwest::Client,
    timeout: Duration,
}

/// A request, kept whole so it can be sent again to the primary after a 421.
#[derive(Clone)]
pub(super) struct Req {
    pub(super) method: Method,
    pub(super) path: Vec<String>,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) body: Option<(&'static str, Vec<u8>)>,
    pub(super) bearer: Option<String>,
}

impl Req {
    /// The key the request names on a data route (`v1/kv/{key}`, `v1/counters/{name}…`,
    /// `v1/entries`), for a data tier of several groups.
    pub(super) fn key(&self) -> Option<&str> {
        let parts: Vec<&str> = self.path.iter().map(String::as_str).collect();
        match parts.as_slice() {
            ["v1", "kv", key] | ["v1", "counters", key, ..] if !key.is_empty() => {
                self.path.get(2).map(String::as_str)
            }
            ["v1", "entries"] => Some(keel_client::node::ENTRIES_KEY),
            _ => None,
        }
    }

    pub(super) fn new(method: Method, path: &[&str]) -> Self {
        Req {
            method,
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            query: Vec::new(),
            body: None,
            bearer: None,
        }
    }

    pub(super) fn get(path: &[&str]) -> Self {
        Self::new(Method::GET, path)
    }
}

/// A node's answer with the `Keel-*` headers that say who answered and where it stands.
pub(super) struct Answer {
    /// The base URL the request went to.
    pub(super) base: String,
    pub(super) status: StatusCode,
    pub(super) node: Option<String>,
    pub(super) role: Option<String>,
    pub(super) epoch: Option<String>,
    pub(super) lsn: Option<String>,
    pub(super) etag: Option<String>,
    /// `Retry-After` as sent, for messages.
    pub(super) retry_after: Option<String>,
    /// `Retry-After` as a wait (delta-seconds or an HTTP date), if it parsed.
    pub(super) retry_after_wait: Option<Duration>,
    pub(super) body: Vec<u8>,
}

impl Answer {
    /// How to name the node in a message: its id, else its URL.
    pub(super) fn who(&self) -> &str {
        self.node.as_deref().unwrap_or(&self.base)
    }

    pub(super) fn api_error(&self) -> Option<ApiError> {
        serde_json::from_slice(&self.body).ok()
    }

    pub(super) fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{} answered with an unexpected body: {}",
                self.who(),
                shorten(&String::from_utf8_lossy(&self.body))
            )
        })
    }

    /// The answer as an error carrying the server's message.
    pub(super) fn failure(&self) -> anyhow::Error {
        let who = self.who();
        let Some(e) = self.api_error() else {
            return anyhow!(
                "{who} answered {}: {}",
                self.status,
                shorten(&String::from_utf8_lossy(&self.body))
            );
        };
        let mut msg = format!(
            "{who}: {} ({} {})",
            e.message,
            self.status.as_u16(),
            e.error
        );
        if let Some(secs) = &self.retry_after {
            msg.push_str(&format!("; retry after {secs} s"));
        }
        anyhow!(msg)
    }

    /// `app1 (primary, epoch 1, lsn 42) http://127.0.0.1:8081`
    pub(super) fn title(&self) -> String {
        format!(
            "{} ({}, epoch {}, lsn {}) {}",
            self.who(),
            self.role.as_deref().unwrap_or("?"),
            self.epoch.as_deref().unwrap_or("?"),
            self.lsn.as_deref().unwrap_or("?"),
            self.base
        )
    }
}

/// No answer came back.
pub(super) struct Unanswered {
    /// What to tell a person.
    pub(super) error: anyhow::Error,
    /// The request may have reached the server (its outcome is unknown).
    pub(super) maybe_received: bool,
    /// The cause in a few words (`connection refused`), for one-line notes.
    pub(super) reason: String,
}

/// The parts of `GET /health` the client uses (docs/api.md).
pub(super) type Health = keel_client::node::NodeHealth;

impl Conn {
    pub(super) fn new(
        timeout: Duration,
        tls: Option<keel_auth::tls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A node never redirects; a 3xx would come from something else on the port.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        Ok(Conn { http, timeout })
    }

    /// The HTTP client, for the monitor's reads (`keel_client::monitor`).
    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// How long one request may take.
    pub(super) fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// Sends `req` to the node at `base`. Only a failure to get any answer is an error.
    pub(super) async fn send(&self, base: &str, req: &Req) -> anyhow::Result<Answer> {
        self.try_send(base, req).await.map_err(|u| u.error)
    }

    /// Like [`Conn::send`], but says whether the request may have reached the server,
    /// which decides whether a write may be sent again.
    pub(super) async fn try_send(&self, base: &str, req: &Req) -> Result<Answer, Unanswered> {
        let unanswered = |e: reqwest::Error| Unanswered {
            // Nothing was sent when no connection was made; after that, the server may
            // have received and even applied the request before the answer was lost.
            maybe_received: !e.is_connect(),
            reason: if e.is_timeout() {
                format!("no answer within {:?}", self.timeout)
            } else {
                root_cause(&e)
            },
            error: self.transport_error(base, &e),
        };
        let not_sent = |error: anyhow::Error| Unanswered {
            maybe_received: false,
            reason: format!("{error:#}"),
            error,
        };
        let mut url = Url::parse(base)
            .with_context(|| format!("{base:?} is not a URL"))
            .map_err(not_sent)?;
        url.path_segments_mut()
            .map_err(|()| not_sent(anyhow!("{base:?} cannot be a base URL")))?
            .pop_if_empty()
            // Percent-encodes each segment, so any key (even one with '/') is one segment.
            .extend(&req.path);
        if !req.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&req.query);
        }
        // The admin token itself never leaves this process: the request is signed with it
        // (docs/security.md), so whatever answers at `base` learns nothing it could reuse.
        let signature = match &req.bearer {
            Some(token) => {
                let signer = Signer::new(Key::new(Kind::Admin, token.as_bytes()), "keel-client");
                let body = req.body.as_ref().map_or(&[][..], |(_, b)| b.as_slice());
                Some(
                    signer
                        .sign(req.method.as_str(), url.as_str(), body)
                        .map_err(|e| not_sent(anyhow!("{e}")))?,
                )
            }
            None => None,
        };
        let mut builder = self.http.request(req.method.clone(), url);
        if let Some((content_type, body)) = &req.body {
            builder = builder
                .header(header::CONTENT_TYPE, *content_type)
                .body(body.clone());
        }
        if let Some(signed) = &signature {
            builder = builder.header(AUTH_HEADER, &signed.header);
        }
        let resp = builder.send().await.map_err(unanswered)?;
        let text = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (node, role, epoch, lsn) = (
            text(KEEL_NODE),
            text(KEEL_ROLE),
            text(KEEL_EPOCH),
            text(KEEL_LSN),
        );
        let etag = text(header::ETAG.as_str());
        let retry_after = text(header::RETRY_AFTER.as_str());
        let retry_after_wait =
            keel_resilience::failure::retry_after(resp.headers(), std::time::SystemTime::now());
        let status = resp.status();
        let body = resp.bytes().await.map_err(unanswered)?.to_vec();
        Ok(Answer {
            base: base.to_owned(),
            status,
            node,
            role,
            epoch,
            lsn,
            etag,
            retry_after,
            retry_after_wait,
            body,
        })
    }

    /// What to tell a person when no answer came back.
    pub(super) fn transport_error(&self, base: &str, e: &reqwest::Error) -> anyhow::Error {
        if e.is_timeout() {
            return anyhow!(
                "no answer from {base} within {:?}: the node may be overloaded or paused (raise --timeout to wait longer)",
                self.timeout
            );
        }
        if e.is_connect() {
            return anyhow!(
                "cannot reach {base}: {} — is the data tier running? start it with `keel up`",
                root_cause(e)
            );
        }
        anyhow!("request to {base} failed: {}", root_cause(e))
    }

    /// Sends `req` and expects a 2xx.
    pub(super) async fn call(&self, base: &str, req: &Req) -> anyhow::Result<Answer> {
        let answer = self.send(base, req).await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(answer.failure())
        }
    }

    pub(super) async fn health(&self, base: &str) -> anyhow::Result<Health> {
        self.call(base, &Req::get(&["health"])).await?.json()
    }
}

/// Accepts `http://host:port`, `host:port` and a trailing `/`; returns `http://host:port`.
pub(super) fn normalize_url(s: &str) -> anyhow::Result<String> {
    let s = s.trim().trim_end_matches('/');
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&with_scheme)
        .with_context(|| format!("{s:?} is not a node URL such as http://127.0.0.1:8081"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("{s:?} is not a node URL such as http://127.0.0.1:8081");
    }
    Ok(with_scheme)
}

pub(super) use keel_client::monitor::root_cause;

fn shorten(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_get_a_scheme_and_lose_the_trailing_slash() {
        assert_eq!(
            normalize_url("http://127.0.0.1:8081/").ok().as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(
            normalize_url("localhost:8082").ok().as_deref(),
            Some("http://localhost:8082")
        );
        assert!(normalize_url("ftp://x").is_err());
    }
}
