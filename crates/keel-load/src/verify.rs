//! `--verify`: every acknowledged write is read back from the primary after the run, and
//! any that is missing or different is a lost acknowledged write.
//!
//! Each write carries a unique key and value that follow from the run id and its ticket
//! number ([`write_key`], [`write_value`]), so nothing but the numbers needs keeping.
//! Writes whose outcome was unknown (a timeout, a broken connection, a 503 saying
//! `"written": "unknown"`) promised nothing: they are read back too, and reported as
//! present or absent, but never counted as lost.
//!
//! Reads go to the primary: to `--verify-url` (default the target's origin), or to the
//! primary the monitor names when one is given. A standby's `421` names the primary and
//! is followed; a `503` is retried after its `Retry-After`; an answer from a standby
//! (`Keel-Role: standby`) is not taken as the truth, since it may lag, and the primary
//! is looked up again. All of this within `--verify-timeout`; a write that could not be
//! read by then is reported as unreadable, which is not the same as lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::LoadError;
use crate::recorder::WriteLog;
use crate::settings::check_url;

/// How many reads are in flight at once.
const READERS: usize = 16;
/// How long one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before trying again after a failed read (when no `Retry-After` says more).
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest `Retry-After` honoured; a longer one is waited in steps of this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);
/// How many lost writes the report lists by name.
const LIST_AT_MOST: usize = 20;

/// The key of write `n` of run `run_id`.
pub fn write_key(run_id: &str, n: u64) -> String {
    format!("load-{run_id}-{n}")
}

/// The value of write `n` of run `run_id`: unique, so that a value left by another write
/// cannot pass for this one.
pub fn write_value(run_id: &str, n: u64) -> String {
    format!("keel-load {run_id} #{n}")
}

/// Where and how long to read.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The run id the writes were named after.
    pub run_id: String,
    /// The base URL to read from first.
    pub read_from: String,
    /// The monitor, asked for the primary before reading and whenever the node read
    /// from stops answering as primary.
    pub monitor: Option<String>,
    /// How long reading back may take in all.
    pub within: Duration,
    /// Follow a primary outside this machine.
    pub allow_remote: bool,
    /// TLS towards `https://` nodes and monitors.
    pub tls: Option<keel_auth::tls::ClientConfig>,
}

/// What reading back found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifySummary {
    /// Where the reads went in the end.
    pub read_from: String,
    /// Acknowledged writes checked.
    pub acknowledged: u64,
    /// Of them, found with their value.
    pub confirmed: u64,
    /// Of them, missing or with another value.
    pub lost: u64,
    /// The first lost writes.
    pub lost_writes: Vec<LostWrite>,
    /// Of them, not readable within the time allowed.
    pub unreadable: u64,
    /// Why the first unreadable one could not be read.
    pub unreadable_reason: Option<String>,
    /// Writes whose outcome was unknown, checked too.
    pub unknown: u64,
    /// Of them, found with their value.
    pub unknown_present: u64,
    /// Of them, not there.
    pub unknown_absent: u64,
    /// Of them, not readable.
    pub unknown_unreadable: u64,
}

/// One lost write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostWrite {
    /// The key written.
    pub key: String,
    /// The value acknowledged.
    pub expected: String,
    /// What the primary holds instead (`None`: the key does not exist).
    pub found: Option<String>,
}

/// What one read found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Present,
    Absent(Option<String>),
    Unreadable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Promise {
    Acknowledged,
    Unknown,
}

/// Reads back every write of `log` that was acknowledged or whose outcome is unknown.
pub async fn verify(log: &WriteLog, options: &VerifyOptions) -> Result<VerifySummary, LoadError> {
    let mut http = reqwest::Client::builder()
        .timeout(READ_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(tls) = &options.tls {
        http = http.tls_backend_preconfigured(tls.clone());
    }
    let http = http.build().map_err(|e| LoadError::Verify(e.to_string()))?;
    let locator = Arc::new(Locator {
        base: options.read_from.trim_end_matches('/').to_owned(),
        monitor: options
            .monitor
            .as_ref()
            .map(|m| m.trim_end_matches('/').to_owned()),
        current: Mutex::new(options.read_from.trim_end_matches('/').to_owned()),
        allow_remote: options.allow_remote,
        http,
    });
    locator.ask_monitor().await;

    let queue: VecDeque<(u64, Promise)> = log
        .acknowledged
        .iter()
        .map(|&n| (n, Promise::Acknowledged))
        .chain(log.unknown.iter().map(|&n| (n, Promise::Unknown)))
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let deadline = Instant::now() + options.within;
    let mut readers = JoinSet::new();
    for _ in 0..READERS {
        let (queue, locator, run_id) = (
            Arc::clone(&queue),
            Arc::clone(&locator),
            options.run_id.clone(),
        );
        readers.spawn(async move {
            let mut found = Vec::new();
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let Some((n, promise)) = next else { break };
                let (key, value) = (write_key(&run_id, n), write_value(&run_id, n));
                let result = locator.check(&key, &value, deadline).await;
                found.push((key, value, promise, result));
            }
            found
        });
    }

    let mut summary = VerifySummary::default();
    while let Some(joined) = readers.join_next().await {
        let found = joined.map_err(|e| LoadError::Verify(e.to_string()))?;
        for (key, expected, promise, result) in found {
            summary.count(key, expected, promise, result);
        }
    }
    summary.lost_writes.sort_by(|a, b| a.key.cmp(&b.key));
    summary.lost_writes.truncate(LIST_AT_MOST);
    summary.read_from = locator.current();
    Ok(summary)
}

impl VerifySummary {
    fn count(&mut self, key: String, expected: String, promise: Promise, found: Found) {
        match promise {
            Promise::Acknowledged => {
                self.acknowledged += 1;
                match found {
                    Found::Present => self.confirmed += 1,
                    Found::Absent(found) => {
                        self.lost += 1;
                        self.lost_writes.push(LostWrite {
                            key,
                            expected,
                            found,
                        });
                    }
                    Found::Unreadable(why) => {
                        self.unreadable += 1;
                        self.unreadable_reason.get_or_insert(why);
                    }
                }
            }
            Promise::Unknown => {
                self.unknown += 1;
                match found {
                    Found::Present => self.unknown_present += 1,
                    Found::Absent(_) => self.unknown_absent += 1,
                    Found::Unreadable(_) => self.unknown_unreadable += 1,
                }
            }
        }
    }
}

/// Where the primary is, as far as the reads know.
struct Locator {
    base: String,
    monitor: Option<String>,
    current: Mutex<String>,
    allow_remote: bool,
    http: reqwest::Client,
}

impl Locator {
    fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves the reads to `url`, if it is a URL this run may read from.
    fn go_to(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        if check_url(url, self.allow_remote).is_err() {
            return false;
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = url.to_owned();
        true
    }

    /// Asks the monitor for the primary; whether it named one.
    async fn ask_monitor(&self) -> bool {
        let Some(monitor) = &self.monitor else {
            return false;
        };
        let view = keel_client::monitor::cluster(&self.http, monitor, READ_TIMEOUT).await;
        match view.as_ref().map(keel_client::primary_of) {
            Ok(keel_client::Found::Node(primary)) => self.go_to(&primary.url),
            _ => false,
        }
    }

    /// Looks for the primary again after `from` failed or answered as a standby: the
    /// monitor, else `from`'s own `/health` (a standby names its primary), else the base.
    async fn relocate(&self, from: &str) {
        if self.ask_monitor().await {
            return;
        }
        let named = match self.http.get(format!("{from}/health")).send().await {
            Ok(r) if r.status().is_success() => {
                r.json::<keel_client::node::NodeHealth>().await.ok()
            }
            _ => None,
        };
        if let Some(primary) = named.and_then(|h| h.primary)
            && primary.trim_end_matches('/') != from
            && self.go_to(&primary)
        {
            return;
        }
        self.go_to(&self.base.clone());
    }

    /// Reads `key` until it is found, known absent, or `deadline` passes.
    async fn check(&self, key: &str, expected: &str, deadline: Instant) -> Found {
        let mut last = String::from("no read finished in time");
        loop {
            if Instant::now() >= deadline {
                return Found::Unreadable(last);
            }
            let from = self.current();
            let url = format!("{from}/v1/kv/{key}");
            let response = match self.http.get(&url).send().await {
                Ok(response) => response,
                Err(e) => {
                    last = format!("GET {url}: {e}");
                    self.relocate(&from).await;
                    pause(RETRY_PAUSE, deadline).await;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let standby = response
                .headers()
                .get(keel_core::headers::KEEL_ROLE)
                .is_some_and(|v| v.as_bytes() == b"standby");
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    last = format!("GET {url}: {e}");
                    pause(RETRY_PAUSE, deadline).await;
                    continue;
                }
            };
            match status {
                200 | 404 if standby => {
                    last = format!("{from} answered as a standby");
                    self.relocate(&from).await;
                    pause(RETRY_PAUSE, deadline).await;
                }
                200 if body.as_ref() == expected.as_bytes() => return Found::Present,
                200 => return Found::Absent(Some(String::from_utf8_lossy(&body).into_owned())),
                404 => return Found::Absent(None),
                421 => {
                    last = format!("{from} is not the primary");
                    // A standby's 421 names its primary (docs/api.md).
                    let named = serde_json::from_slice::<keel_core::ApiError>(&body)
                        .ok()
                        .and_then(|e| e.details.get("primary")?.as_str().map(str::to_owned));
                    let moved =
                        named.is_some_and(|p| p.trim_end_matches('/') != from && self.go_to(&p));
                    if !moved {
                        self.relocate(&from).await;
                        pause(RETRY_PAUSE, deadline).await;
                    }
                }
                _ => {
                    last = format!(
                        "GET {url} answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    );
                    let wait = retry_after.map_or(RETRY_PAUSE, |d| d.min(MAX_RETRY_AFTER));
                    pause(wait, deadline).await;
                }
            }
        }
    }
}

/// Sleeps `d`, but not past `deadline`.
async fn pause(d: Duration, deadline: Instant) {
    tokio::time::sleep_until((Instant::now() + d).min(deadline)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_unique_per_run_and_ticket() {
        assert_eq!(write_key("ab12", 7), "load-ab12-7");
        assert_ne!(write_value("ab12", 7), write_value("ab12", 70));
        assert_ne!(write_value("ab12", 7), write_value("cd34", 7));
    }

    #[test]
    fn unknown_outcomes_are_never_counted_as_lost() {
        let mut s = VerifySummary::default();
        s.count(
            "k1".into(),
            "v1".into(),
            Promise::Acknowledged,
            Found::Present,
        );
        s.count(
            "k2".into(),
            "v2".into(),
            Promise::Acknowledged,
            Found::Absent(None),
        );
        s.count(
            "k3".into(),
            "v3".into(),
            Promise::Acknowledged,
            Found::Absent(Some("other".into())),
        );
        s.count(
            "k4".into(),
            "v4".into(),
            Promise::Unknown,
            Found::Absent(None),
        );
        s.count("k5".into(), "v5".into(), Promise::Unknown, Found::Present);
        s.count(
            "k6".into(),
            "v6".into(),
            Promise::Acknowledged,
            Found::Unreadable("down".into()),
        );
        assert_eq!(
            (s.acknowledged, s.confirmed, s.lost, s.unreadable),
            (4, 1, 2, 1)
        );
        assert_eq!((s.unknown, s.unknown_present, s.unknown_absent), (2, 1, 1));
        assert_eq!(s.lost_writes[1].found.as_deref(), Some("other"));
        assert_eq!(s.unreadable_reason.as_deref(), Some("down"));
    }
}
