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
//!
//! Under a monitor of several groups (docs/shards.md) each key is read from its own
//! group's primary, found by the slot table (`GET /v1/slots`); a `421 wrong_group` (the
//! slot moved) reads the table again. The summary then counts every write per group
//! ([`GroupWrites`]): acknowledged, refused, unknown and lost, so that a run that killed
//! one group's primary shows which group's writers saw the errors.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use keel_core::slots::{GroupId, SlotTable};

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
    /// Every write counted per group, in the groups' order, when the monitor runs several
    /// groups; empty otherwise.
    pub groups: Vec<GroupWrites>,
}

/// The writes of one group: those whose key's slot the group owned when read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupWrites {
    /// The group.
    pub group: String,
    /// Writes acknowledged.
    pub acknowledged: u64,
    /// Writes refused (an error answer, or never sent).
    pub refused: u64,
    /// Writes whose outcome was unknown.
    pub unknown: u64,
    /// Acknowledged writes missing or different when read back.
    pub lost: u64,
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
    let router = Arc::new(Router::new(options, http).await);
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
        let (queue, router, run_id) = (
            Arc::clone(&queue),
            Arc::clone(&router),
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
                let (group, result) = router.check(&key, &value, deadline).await;
                found.push((key, value, promise, group, result));
            }
            found
        });
    }

    let mut summary = VerifySummary::default();
    let mut groups: BTreeMap<GroupId, GroupWrites> = BTreeMap::new();
    while let Some(joined) = readers.join_next().await {
        let found = joined.map_err(|e| LoadError::Verify(e.to_string()))?;
        for (key, expected, promise, group, result) in found {
            if let Some(group) = group {
                groups.entry(group).or_default().count(promise, &result);
            }
            summary.count(key, expected, promise, result);
        }
    }
    if let Some(table) = router.table() {
        for &n in &log.refused {
            let key = write_key(&options.run_id, n);
            groups
                .entry(table.owner_of(key.as_bytes()).clone())
                .or_default()
                .refused += 1;
        }
        for group in table.groups() {
            groups.entry(group.clone()).or_default();
        }
    }
    summary.groups = groups
        .into_iter()
        .map(|(group, writes)| GroupWrites {
            group: group.to_string(),
            ..writes
        })
        .collect();
    summary.lost_writes.sort_by(|a, b| a.key.cmp(&b.key));
    summary.lost_writes.truncate(LIST_AT_MOST);
    summary.read_from = router.read_from();
    Ok(summary)
}

impl GroupWrites {
    fn count(&mut self, promise: Promise, found: &Found) {
        match promise {
            Promise::Acknowledged => {
                self.acknowledged += 1;
                if matches!(found, Found::Absent(_)) {
                    self.lost += 1;
                }
            }
            Promise::Unknown => self.unknown += 1,
        }
    }
}

/// Which [`Locator`] reads a key: the one locator, or under several groups the key's
/// group's, by the slot table.
struct Router {
    /// The slot table, when the monitor runs several groups.
    table: Mutex<Option<SlotTable>>,
    /// One locator per group (created when first needed), or the one under `None`.
    locators: Mutex<HashMap<Option<GroupId>, Arc<Locator>>>,
    options: VerifyOptions,
    http: reqwest::Client,
}

impl Router {
    async fn new(options: &VerifyOptions, http: reqwest::Client) -> Router {
        let router = Router {
            table: Mutex::new(None),
            locators: Mutex::new(HashMap::new()),
            options: options.clone(),
            http,
        };
        router.read_table().await;
        router
    }

    /// Reads the slot table again; keeps it only when the monitor runs several groups.
    async fn read_table(&self) {
        let Some(monitor) = &self.options.monitor else {
            return;
        };
        let monitor = monitor.trim_end_matches('/');
        // A monitor of one group, or one older than slots, reads as it always did.
        if let Ok(table) =
            keel_client::monitor::slots_as(&self.http, monitor, READ_TIMEOUT, None).await
            && table.groups().len() > 1
        {
            let mut kept = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.as_ref().is_none_or(|k| k.version() < table.version()) {
                *kept = Some(table);
            }
        }
    }

    fn table(&self) -> Option<SlotTable> {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The locator for `key`, and its group under several groups.
    async fn locator(&self, key: &str) -> (Option<GroupId>, Arc<Locator>) {
        let group = self.table().map(|t| t.owner_of(key.as_bytes()).clone());
        let existing = self
            .locators
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&group)
            .cloned();
        if let Some(locator) = existing {
            return (group, locator);
        }
        let base = self.options.read_from.trim_end_matches('/').to_owned();
        let locator = Arc::new(Locator {
            current: Mutex::new(base.clone()),
            base,
            monitor: self
                .options
                .monitor
                .as_ref()
                .map(|m| m.trim_end_matches('/').to_owned()),
            group: group.clone(),
            allow_remote: self.options.allow_remote,
            http: self.http.clone(),
        });
        locator.ask_monitor().await;
        let locator = Arc::clone(
            self.locators
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(group.clone())
                .or_insert(locator),
        );
        (group, locator)
    }

    /// Reads `key` from its group's primary (see [`Locator::check`]), following the table
    /// when a node says the slot moved; the group it was read from last.
    async fn check(
        &self,
        key: &str,
        expected: &str,
        deadline: Instant,
    ) -> (Option<GroupId>, Found) {
        loop {
            let (group, locator) = self.locator(key).await;
            match locator.check(key, expected, deadline).await {
                Checked::Found(found) => return (group, found),
                Checked::Moved => {
                    self.read_table().await;
                    pause(RETRY_PAUSE / 4, deadline).await;
                }
            }
        }
    }

    /// Where the reads went: the one locator's node, or each group's.
    fn read_from(&self) -> String {
        let locators = self.locators.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_group: Vec<(String, String)> = locators
            .iter()
            .map(|(g, l)| {
                (
                    g.as_ref().map(GroupId::to_string).unwrap_or_default(),
                    l.current(),
                )
            })
            .collect();
        by_group.sort();
        match by_group.as_slice() {
            [] => self.options.read_from.trim_end_matches('/').to_owned(),
            [(_, one)] => one.clone(),
            many => many
                .iter()
                .map(|(g, url)| format!("{url} ({g})"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// What one [`Locator::check`] ended with.
enum Checked {
    Found(Found),
    /// The node said another group owns the key's slot (`421 wrong_group`).
    Moved,
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
    /// The group whose primary this locator follows, under several groups.
    group: Option<GroupId>,
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
        let view = match &self.group {
            None => keel_client::monitor::cluster(&self.http, monitor, READ_TIMEOUT).await,
            Some(group) => {
                keel_client::monitor::group_as(&self.http, monitor, group, READ_TIMEOUT, None).await
            }
        };
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
    async fn check(&self, key: &str, expected: &str, deadline: Instant) -> Checked {
        let mut last = String::from("no read finished in time");
        loop {
            if Instant::now() >= deadline {
                return Checked::Found(Found::Unreadable(last));
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
                200 if body.as_ref() == expected.as_bytes() => {
                    return Checked::Found(Found::Present);
                }
                200 => {
                    let found = String::from_utf8_lossy(&body).into_owned();
                    return Checked::Found(Found::Absent(Some(found)));
                }
                404 => return Checked::Found(Found::Absent(None)),
                421 => {
                    let error = serde_json::from_slice::<keel_core::ApiError>(&body).ok();
                    if error.as_ref().is_some_and(|e| e.error == "wrong_group") {
                        return Checked::Moved;
                    }
                    last = format!("{from} is not the primary");
                    // A standby's 421 names its primary (docs/api.md).
                    let named =
                        error.and_then(|e| e.details.get("primary")?.as_str().map(str::to_owned));
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
