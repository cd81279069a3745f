//! The service's calls to the data tier: the `visits` counter of the node API.

use std::time::Duration;

use keel_core::headers::{KEEL_NODE, KEEL_READ, KEEL_ROLE};

/// The counter every service shares.
const VISITS: &str = "visits";

/// A client of the data tier's HTTP API.
#[derive(Debug, Clone)]
pub struct DataTier {
    url: String,
    http: reqwest::Client,
}

/// The counter's value and who answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataAnswer {
    pub visits: u64,
    /// The `Keel-Node` of the answer: the data node that served it.
    pub node: Option<String>,
    /// Its `Keel-Role`.
    pub role: Option<String>,
}

impl DataAnswer {
    pub fn node_or_unknown(&self) -> &str {
        self.node.as_deref().unwrap_or("unknown")
    }
}

/// Why the data tier did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "--data {url:?} is not an http:// URL (or https:// with --tls-cert, --tls-key and --tls-ca)"
    )]
    BadUrl { url: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("the data tier at {url} did not answer: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the data tier answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the data tier's answer is not a counter: {0}")]
    BadAnswer(String),
}

impl DataTier {
    /// A client for the data tier at `url`; every call gives up after `timeout`.
    pub fn new(
        url: &str,
        timeout: Duration,
        tls: Option<&keel_auth::tls::Tls>,
    ) -> Result<DataTier, DataError> {
        let url = url.trim_end_matches('/').to_owned();
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://").filter(|_| tls.is_some()));
        if host.is_none_or(str::is_empty) {
            return Err(DataError::BadUrl { url });
        }
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(1)))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = tls {
            http = http.tls_backend_preconfigured(tls.client_config());
        }
        let http = http.build().map_err(DataError::Client)?;
        Ok(DataTier { url, http })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Counts one visit (on the primary: a write).
    pub async fn incr_visits(&self) -> Result<DataAnswer, DataError> {
        let url = format!("{}/v1/counters/{VISITS}/incr", self.url);
        self.counter(self.http.post(&url), &url).await
    }

    /// Reads the counter; a standby may answer (`Keel-Read: stale`), which is how the
    /// reads of `/data` spread over the data nodes behind the proxy.
    pub async fn read_visits(&self) -> Result<DataAnswer, DataError> {
        let url = format!("{}/v1/counters/{VISITS}", self.url);
        self.counter(self.http.get(&url).header(KEEL_READ, "stale"), &url)
            .await
    }

    async fn counter(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<DataAnswer, DataError> {
        let unreachable = |e: reqwest::Error| DataError::Unreachable {
            url: url.to_owned(),
            reason: if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.without_url().to_string()
            },
        };
        let response = request.send().await.map_err(unreachable)?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (node, role) = (header(KEEL_NODE), header(KEEL_ROLE));
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<keel_core::ApiError>(&body)
                .map_or_else(|_| "no message".to_owned(), |e| e.message);
            return Err(DataError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let counter: keel_client::node::Counter = serde_json::from_slice(&body)
            .map_err(|_| DataError::BadAnswer(String::from_utf8_lossy(&body).into_owned()))?;
        let visits = u64::try_from(counter.value)
            .map_err(|_| DataError::BadAnswer(format!("a count of {}", counter.value)))?;
        Ok(DataAnswer { visits, node, role })
    }
}
