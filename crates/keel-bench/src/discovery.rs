//! Finding the node that takes writes, the way each system's clients are meant to: ask
//! keel's monitor, ask every etcd member which one leads, ask Redis Sentinel.
//!
//! The writers share one [`Discovery`]. When a write fails they all ask it again at
//! once; it answers them from one lookup rather than sending eight, so that the load on
//! the monitor or the sentinels during a failover is one lookup per [`MIN_REFRESH`].

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use keel_client::Found;

use crate::cli::Target;

/// A lookup younger than this is answered from memory.
const MIN_REFRESH: Duration = Duration::from_millis(20);

/// Each question to one monitor, member or sentinel gets this long.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Discovery {
    target: Target,
    /// The start of the run, for [`Discovery::changes`].
    started: Instant,
    endpoints: Vec<String>,
    master_name: String,
    http: reqwest::Client,
    last: Mutex<Lookup>,
}

struct Lookup {
    /// Where writes go: `http://…` for keel and etcd, `redis://…` for Redis.
    primary: Option<String>,
    at: Option<Instant>,
    /// Why the last lookup found nothing, for the report.
    error: Option<String>,
    /// The last primary found, and every time a lookup found a different one.
    known: Option<String>,
    changes: Vec<Duration>,
}

impl Discovery {
    pub fn new(
        target: Target,
        endpoints: Vec<String>,
        master_name: String,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(ASK_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            target,
            started,
            endpoints,
            master_name,
            http,
            last: Mutex::new(Lookup {
                primary: None,
                at: None,
                error: None,
                known: None,
                changes: Vec::new(),
            }),
        })
    }

    /// The primary as last found, looking it up if it never was.
    pub async fn primary(&self) -> Option<String> {
        {
            let last = self.last.lock().await;
            if last.at.is_some() {
                return last.primary.clone();
            }
        }
        self.refresh(None).await
    }

    /// Looks the primary up again after a write to `failed` went wrong. A writer that
    /// failed against a primary the others have already moved away from gets the new
    /// one without another lookup.
    pub async fn refresh(&self, failed: Option<&str>) -> Option<String> {
        let mut last = self.last.lock().await;
        let fresh = last.at.is_some_and(|at| at.elapsed() < MIN_REFRESH);
        let moved_on =
            failed.is_some() && last.primary.is_some() && last.primary.as_deref() != failed;
        if fresh || moved_on {
            return last.primary.clone();
        }
        let found = self.lookup().await;
        last.at = Some(Instant::now());
        match found {
            Ok(primary) => {
                if last.known.as_ref().is_some_and(|known| *known != primary) {
                    let at = self.started.elapsed();
                    last.changes.push(at);
                }
                last.known = Some(primary.clone());
                last.primary = Some(primary);
                last.error = None;
            }
            Err(err) => {
                last.primary = None;
                last.error = Some(format!("{err:#}"));
            }
        }
        last.primary.clone()
    }

    /// When (since the start) a lookup first found a primary other than the one before.
    /// Lookups happen when writes fail, so during an outage this is within a retry pause
    /// and [`MIN_REFRESH`] of the moment the system named its new primary.
    pub async fn changes(&self) -> Vec<Duration> {
        self.last.lock().await.changes.clone()
    }

    /// Why the last lookup found no primary, if it did not.
    pub async fn last_error(&self) -> Option<String> {
        self.last.lock().await.error.clone()
    }

    async fn lookup(&self) -> anyhow::Result<String> {
        match self.target {
            Target::Keel => self.keel_primary().await,
            Target::Etcd => self.etcd_leader().await,
            Target::Redis => self.sentinel_master().await,
        }
    }

    /// The primary in the monitor's view, as every keel client finds it
    /// ([`keel_client::primary_of`]): none while a failover runs or the one named is not
    /// heartbeating. Several monitors are a group: the leader's view is read
    /// ([`keel_client::monitor::cluster`] finds it).
    async fn keel_primary(&self) -> anyhow::Result<String> {
        let monitors = self.endpoints.join(",");
        let view = keel_client::monitor::cluster(&self.http, &monitors, ASK_TIMEOUT).await?;
        match keel_client::primary_of(&view) {
            Found::Node(target) => Ok(target.url),
            Found::Wait(why) => Err(anyhow::anyhow!("{why}")),
        }
    }

    /// Asks every member for its status; the one whose `member_id` is the `leader` it
    /// reports leads. A member that was leader and died answers nothing, so during an
    /// election there is no leader, and writers wait rather than send writes to
    /// followers that would forward them to a dead leader and hang.
    async fn etcd_leader(&self) -> anyhow::Result<String> {
        let mut answers = Vec::new();
        for member in &self.endpoints {
            let url = format!("{}/v3/maintenance/status", member.trim_end_matches('/'));
            let status = self
                .http
                .post(&url)
                .json(&serde_json::json!({}))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            let Ok(status) = status else { continue };
            let Ok(status) = status.json::<Value>().await else {
                continue;
            };
            let id = status["header"]["member_id"].clone();
            if !id.is_null() && id == status["leader"] {
                return Ok(member.clone());
            }
            answers.push(member.as_str());
        }
        if answers.is_empty() {
            bail!("no etcd member answered its status");
        }
        bail!(
            "no leader among the members that answered ({})",
            answers.join(", ")
        )
    }

    /// `SENTINEL get-master-addr-by-name` on each sentinel until one answers.
    async fn sentinel_master(&self) -> anyhow::Result<String> {
        let mut last_error = None;
        for sentinel in &self.endpoints {
            match tokio::time::timeout(ASK_TIMEOUT, self.ask_sentinel(sentinel)).await {
                Ok(Ok(master)) => return Ok(master),
                Ok(Err(err)) => last_error = Some(err),
                Err(_) => {
                    last_error = Some(anyhow::anyhow!(
                        "{sentinel}: no answer within {ASK_TIMEOUT:?}"
                    ))
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no sentinel given")))
    }

    async fn ask_sentinel(&self, sentinel: &str) -> anyhow::Result<String> {
        let client = redis::Client::open(sentinel)
            .with_context(|| format!("`{sentinel}` is not a URL like redis://127.0.0.1:26379"))?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to sentinel {sentinel}"))?;
        let address: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut connection)
            .await
            .with_context(|| format!("asking sentinel {sentinel} for the master"))?;
        let (host, port) = address
            .with_context(|| format!("sentinel {sentinel} does not know {}", self.master_name))?;
        Ok(format!("redis://{host}:{port}"))
    }
}
