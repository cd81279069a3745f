//! The cluster route: requests for the data tier (`/v1/…` by default) go to whichever
//! node the monitor says is primary, and follow it through a failover.
//!
//! The route keeps the monitor's view in memory and refreshes it on every event of the
//! monitor's stream (`/v1/events`), on a 2-second tick as a safety net, and at once when
//! a node answers `421 not_primary` or cannot be reached — a watch, not a lookup per
//! request.
//!
//! - Writes, and reads by default, go to the primary. A read that says
//!   `Keel-Read: stale` may go to a standby instead (round robin over the healthy ones),
//!   which is how reads spread over the data nodes as in the PostgreSQL homework.
//! - While a failover runs, or when no primary is known, the answer is
//!   `503 failover_in_progress` (or `no_primary`) with `Retry-After` and a JSON reason.
//! - When the tier runs on TLS its nodes are `https://` in the monitor's view, and the
//!   route reaches them over TLS with the proxy's own certificate, checking theirs
//!   against the cluster CA (a proxy without TLS answers `503 node_unreachable` saying
//!   so).
//! - The body of a data request is read whole first (a node takes at most 1 MiB), so a
//!   request a node refused with 421, or that could not be delivered, can go to the new
//!   primary unchanged.
//! - Under a monitor of several groups (docs/shards.md) the route also keeps the slot
//!   table and each group's view, and sends a request that names a key (`/v1/kv/{key}`,
//!   a counter, the entries map) to the group that owns the key's slot; a request with no
//!   key goes to the first group. A node that answers `421 wrong_group` (the route's
//!   table was old) makes the route read the table again and send the request on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use keel_auth::Signer;
use keel_client::Written;
use keel_client::monitor::{
    EventStream, cluster_as as read_cluster, group_as, slots_as, stream_client,
};
use keel_client::wire::ClusterView;
use keel_core::ApiError;
use keel_core::Role;
use keel_core::slots::{GroupId, SlotTable};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::backend::{Backend, InFlight};
use crate::config::{ClusterConfig, Config, parse_backend_url};
use crate::forward::{Answer, Exchange, OutBody, exchange, hold, local, local_json, with_header};

/// The most a data request's body may hold (the nodes' own limit).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// How often the view is read again when no event comes.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How long the route waits before reconnecting to a monitor that went away.
const RECONNECT_AFTER: Duration = Duration::from_millis(250);

/// The route and its view of the data tier.
#[derive(Debug)]
pub struct Cluster {
    pub monitor: String,
    pub prefix: String,
    view: RwLock<Arc<View>>,
    /// Under a monitor of several groups: the table and each group's view.
    shards: RwLock<Arc<Shards>>,
    /// One backend per data node URL, kept across views so that connections and counters
    /// survive a failover.
    nodes: Mutex<HashMap<String, Arc<Backend>>>,
    refresh: Notify,
    next_standby: AtomicUsize,
    http: reqwest::Client,
    /// Signs reads of the monitor and checks its answers (with the cluster secret).
    signer: Option<Signer>,
    /// The proxy's TLS, for the monitor and for data nodes on TLS.
    tls: Option<keel_auth::tls::Tls>,
    stop: watch::Sender<bool>,
}

/// What the route knows of a data tier of several groups.
#[derive(Debug, Default)]
pub struct Shards {
    /// The slot table; `None` under a monitor of one group.
    pub table: Option<SlotTable>,
    /// Each group's view.
    pub groups: BTreeMap<GroupId, Arc<View>>,
}

/// What the route knows of the data tier (of one group of it).
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The monitor's view version (0: never read).
    pub version: u64,
    pub epoch: u64,
    pub primary: Option<Arc<Backend>>,
    /// Healthy standbys, for stale reads.
    pub standbys: Vec<Arc<Backend>>,
    /// The failover running now: (from, to).
    pub failover: Option<(String, String)>,
    /// Why the monitor could not be read lately, if it could not.
    pub monitor_error: Option<String>,
}

impl Cluster {
    /// A route following the monitor of `config`; [`Cluster::watch`] keeps it current.
    pub fn new(
        config: &ClusterConfig,
        signer: Option<Signer>,
        tls: Option<&keel_auth::tls::Tls>,
    ) -> Arc<Cluster> {
        let http = match stream_client(
            Duration::from_secs(1),
            tls.map(keel_auth::tls::Tls::client_config),
        ) {
            Ok(http) => http,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the client for the monitor; reading it without TLS");
                reqwest::Client::default()
            }
        };
        Arc::new(Cluster {
            monitor: config.monitor.clone(),
            prefix: config.prefix.clone(),
            view: RwLock::new(Arc::new(View::default())),
            shards: RwLock::new(Arc::new(Shards::default())),
            nodes: Mutex::new(HashMap::new()),
            refresh: Notify::new(),
            next_standby: AtomicUsize::new(0),
            http,
            signer,
            tls: tls.cloned(),
            stop: watch::channel(false).0,
        })
    }

    /// Whether a request for `path` takes this route.
    pub fn routes(&self, path: &str) -> bool {
        path.starts_with(&self.prefix)
    }

    /// The view as it stands.
    pub fn snapshot(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The view of the group that owns `key` under a monitor of several groups; else (one
    /// group, or no key) the route's view.
    pub fn view_for(&self, key: Option<&str>) -> Arc<View> {
        let shards = Arc::clone(&self.shards.read().unwrap_or_else(PoisonError::into_inner));
        if let (Some(table), Some(key)) = (&shards.table, key)
            && let Some(view) = shards.groups.get(table.owner_of(key.as_bytes()))
        {
            return Arc::clone(view);
        }
        self.snapshot()
    }

    /// Every data node the route has known, for the admin API and the metrics.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Arc<Backend>> = nodes.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Ends [`Cluster::watch`] (the route left the configuration).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Follows the monitor until stopped.
    pub async fn watch(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            self.refresh_view().await;
            let mut stream =
                match EventStream::open_as(&self.http, &self.monitor, None, self.signer.as_ref())
                    .await
                {
                    Ok(stream) => stream,
                    Err(e) => {
                        self.note_monitor_error(e.to_string());
                        tokio::select! {
                            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                };
            // Events that happened between the read above and the stream's opening would
            // be missed: read once more now that the stream is open.
            self.refresh_view().await;
            loop {
                tokio::select! {
                    event = stream.next_data() => match event {
                        Ok(Some(_)) => self.refresh_view().await,
                        Ok(None) | Err(_) => break,
                    },
                    _ = self.refresh.notified() => self.refresh_view().await,
                    _ = tick.tick() => self.refresh_view().await,
                    _ = stop.changed() => return,
                }
            }
            tracing::warn!(monitor = %self.monitor, "the monitor's event stream ended; reconnecting");
        }
    }

    /// Reads the monitor's view and makes it the route's.
    async fn refresh_view(&self) {
        match read_cluster(
            &self.http,
            &self.monitor,
            Duration::from_secs(1),
            self.signer.as_ref(),
        )
        .await
        {
            Ok(view) => {
                self.apply(&view);
                self.refresh_groups(&view).await;
            }
            Err(e) => self.note_monitor_error(e.to_string()),
        }
    }

    /// Under a monitor of several groups (`view` names them), reads the slot table and
    /// each group's view; a group that cannot be read keeps its last view.
    async fn refresh_groups(&self, view: &ClusterView) {
        if view.groups.len() < 2 {
            let mut shards = self.shards.write().unwrap_or_else(PoisonError::into_inner);
            if shards.table.is_some() {
                *shards = Arc::new(Shards::default());
            }
            return;
        }
        let timeout = Duration::from_secs(1);
        let signer = self.signer.as_ref();
        let table = match slots_as(&self.http, &self.monitor, timeout, signer).await {
            Ok(table) => Some(table),
            Err(e) => {
                self.note_monitor_error(e.to_string());
                None
            }
        };
        let before = Arc::clone(&self.shards.read().unwrap_or_else(PoisonError::into_inner));
        let mut groups = before.groups.clone();
        for group in &view.groups {
            match group_as(&self.http, &self.monitor, group, timeout, signer).await {
                Ok(seen) => {
                    groups.insert(group.clone(), Arc::new(self.view_of(&seen)));
                }
                Err(e) => self.note_monitor_error(e.to_string()),
            }
        }
        let mut shards = self.shards.write().unwrap_or_else(PoisonError::into_inner);
        *shards = Arc::new(Shards {
            table: table.or_else(|| before.table.clone()),
            groups,
        });
    }

    fn note_monitor_error(&self, error: String) {
        let mut current = self.view.write().unwrap_or_else(PoisonError::into_inner);
        if current.monitor_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(monitor = %self.monitor, "{error}");
        }
        let mut next = View::clone(&current);
        next.monitor_error = Some(error);
        *current = Arc::new(next);
    }

    /// Makes `view` the route's view.
    pub fn apply(&self, view: &ClusterView) {
        let next = self.view_of(view);
        let mut current = self.view.write().unwrap_or_else(PoisonError::into_inner);
        let before = current.primary.as_ref().map(|b| b.name.clone());
        let after = next.primary.as_ref().map(|b| b.name.clone());
        if before != after || current.failover != next.failover {
            tracing::info!(
                primary = ?after, failover = ?next.failover, epoch = next.epoch,
                "data tier view changed"
            );
        }
        *current = Arc::new(next);
    }

    /// What the route keeps of a monitor's view: the primary, the healthy standbys, the
    /// failover running.
    fn view_of(&self, view: &ClusterView) -> View {
        let primary = view
            .primary
            .as_ref()
            .and_then(|p| self.node(p.node.as_str(), &p.url));
        let standbys = view
            .nodes
            .iter()
            .filter(|n| n.role == Role::Standby && n.healthy)
            .filter_map(|n| self.node(n.node.as_str(), &n.url))
            .collect();
        let failover = match (&view.failover, view.failover_in_progress) {
            (Some(f), true) => Some((f.from.to_string(), f.to.to_string())),
            (None, true) => Some(("unknown".to_owned(), "unknown".to_owned())),
            _ => None,
        };
        View {
            version: view.version,
            epoch: view.epoch.0,
            primary,
            standbys,
            failover,
            monitor_error: None,
        }
    }

    /// The backend of the data node at `url`, made on first sight.
    fn node(&self, id: &str, url: &str) -> Option<Arc<Backend>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(backend) = nodes.get(url) {
            return Some(Arc::clone(backend));
        }
        let addr = parse_backend_url(url).ok()?;
        let backend = Arc::new(Backend::new(
            id.to_owned(),
            url.to_owned(),
            &addr,
            1,
            self.tls.as_ref(),
        ));
        nodes.insert(url.to_owned(), Arc::clone(&backend));
        Some(backend)
    }

    /// A standby for a stale read, in turn; the primary when there is none.
    fn reader(&self, view: &View) -> Option<Arc<Backend>> {
        if view.standbys.is_empty() {
            return view.primary.clone();
        }
        let i = self.next_standby.fetch_add(1, Ordering::Relaxed) % view.standbys.len();
        view.standbys.get(i).cloned()
    }
}

/// A data request, its body read whole.
#[derive(Debug)]
pub(crate) struct DataRequest<'h> {
    /// The head a node is sent, framing included.
    pub head: &'h [u8],
    pub body: Bytes,
    pub method: Method,
    /// The client asked for a stale read (`Keel-Read: stale`).
    pub stale: bool,
    /// The key the request names, if any ([`keel_client::node::key_of`]).
    pub key: Option<&'h str>,
    /// The request lists the keys (`GET /v1/kv`): under several groups, every group is
    /// asked and the lists merged.
    pub list: bool,
}

/// Sends a data request to the node the view names.
pub(crate) async fn forward(
    config: &Config,
    cluster: &Cluster,
    request: &DataRequest<'_>,
) -> Answer {
    let read_only = matches!(request.method, Method::GET | Method::HEAD);
    let stale = read_only && request.stale;
    if request.list && request.method == Method::GET {
        let shards = Arc::clone(
            &cluster
                .shards
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if let Some(table) = &shards.table {
            return list_merged(config, cluster, table, &shards, stale).await;
        }
    }
    let mut asked_again = false;
    loop {
        let view = cluster.view_for(request.key);
        if let Some((from, to)) = &view.failover {
            return unavailable(
                ApiError::new(
                    "failover_in_progress",
                    format!("the data tier is failing over from {from} to {to}; retry shortly"),
                )
                .with("promoting", to.as_str())
                .with("written", Written::No.to_json()),
            );
        }
        let target = if stale {
            cluster.reader(&view)
        } else {
            view.primary.clone()
        };
        let Some(node) = target else {
            let why = match &view.monitor_error {
                Some(e) => format!("no primary is known: {e}"),
                None => "the monitor names no primary".to_owned(),
            };
            return unavailable(
                ApiError::new("no_primary", why).with("written", Written::No.to_json()),
            );
        };
        let in_flight = InFlight::start(Arc::clone(&node));
        let body = if request.body.is_empty() {
            OutBody::Empty
        } else {
            OutBody::Buffered(&request.body)
        };
        let to_head = request.method == Method::HEAD;
        match exchange(&node, request.head, body, to_head, config, Instant::now()).await {
            Exchange::Answered(conn, head, took) => {
                node.stats.latency.record(took);
                node.count_answer(head.status);
                if head.status == StatusCode::MISDIRECTED_REQUEST.as_u16() && !asked_again {
                    // The node is no longer primary and did nothing: read the view again
                    // and send the request where it now points.
                    asked_again = true;
                    let _ = hold(conn, head, &node, config.request_timeout).await;
                    cluster.refresh_view().await;
                    continue;
                }
                return Answer::Relayed {
                    conn,
                    head,
                    in_flight,
                };
            }
            Exchange::NotSent(error) => {
                node.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                cluster.refresh.notify_one();
                return unavailable(
                    ApiError::new(
                        "node_unreachable",
                        format!("data node {} cannot be reached ({error}); the monitor will replace it if it is down", node.name),
                    )
                    .with("node", node.name.as_str())
                    .with("written", Written::No.to_json()),
                );
            }
            // The body was read whole before anything was sent.
            Exchange::ClientGone | Exchange::ClientTimedOut | Exchange::BadBody(_) => {
                return Answer::ClientGone;
            }
            Exchange::Failed(error) => {
                node.stats.failures.fetch_add(1, Ordering::Relaxed);
                cluster.refresh.notify_one();
                let mut refusal = ApiError::new(
                    "node_failed",
                    format!(
                        "data node {} broke off before answering: {error}",
                        node.name
                    ),
                )
                .with("node", node.name.as_str());
                // A read changed nothing; any other request may have been applied.
                if !read_only {
                    refusal = refusal.with("written", Written::Unknown.to_json());
                }
                return unavailable(refusal);
            }
            Exchange::TimedOut => {
                node.stats.failures.fetch_add(1, Ordering::Relaxed);
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    ApiError::new(
                        "gateway_timeout",
                        format!(
                            "data node {} did not answer within {:?}",
                            node.name, config.request_timeout
                        ),
                    )
                    .with("node", node.name.as_str())
                    .with("written", Written::Unknown.to_json()),
                );
            }
        }
    }
}

/// `GET /v1/kv` under several groups: every group's primary (or a standby, for a stale
/// read) is asked for its keys — each lists only its own slots' — and the lists are
/// merged, with who answered for each group. A group that cannot answer makes the whole
/// list a `503` naming it: a list missing a group's keys would pass for complete.
async fn list_merged(
    config: &Config,
    cluster: &Cluster,
    table: &SlotTable,
    shards: &Shards,
    stale: bool,
) -> Answer {
    use keel_client::node::{GroupKeys, KeyList};
    let asks = table.groups().iter().map(|group| async move {
        let view = shards.groups.get(group).cloned().unwrap_or_default();
        if let Some((from, to)) = &view.failover {
            return Err(ApiError::new(
                "failover_in_progress",
                format!("group {group} is failing over from {from} to {to}; retry shortly"),
            )
            .with("group", group.as_str()));
        }
        let node = if stale {
            cluster.reader(&view)
        } else {
            view.primary.clone()
        };
        let Some(node) = node else {
            return Err(ApiError::new(
                "no_primary",
                format!("group {group} has no primary the monitor names"),
            )
            .with("group", group.as_str()));
        };
        let failed = |why: String| {
            ApiError::new(
                "node_failed",
                format!(
                    "data node {} could not list group {group}'s keys: {why}",
                    node.name
                ),
            )
            .with("group", group.as_str())
            .with("node", node.name.as_str())
        };
        let mut ask = cluster
            .http
            .get(format!("{}/v1/kv", node.url))
            .timeout(config.request_timeout);
        if stale {
            ask = ask.header(keel_core::headers::KEEL_READ, "stale");
        }
        let response = ask.send().await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("it answered {}", response.status())));
        }
        let list: KeyList = response.json().await.map_err(|e| failed(e.to_string()))?;
        if list.group.as_deref().is_some_and(|g| g != group.as_str()) {
            return Err(failed(format!(
                "it belongs to group {}",
                list.group.as_deref().unwrap_or_default()
            )));
        }
        Ok((group.clone(), node.name.clone(), list))
    });
    let answers = futures::future::join_all(asks).await;
    let mut keys: BTreeMap<String, (u64, keel_client::node::KeyVersion)> = BTreeMap::new();
    let mut parts = Vec::new();
    let mut version = table.version();
    for answer in answers {
        let (group, node, list) = match answer {
            Ok(answered) => answered,
            Err(error) => return unavailable(error),
        };
        let seen = list.table_version.unwrap_or(0);
        version = version.max(seen);
        parts.push(GroupKeys {
            group: group.to_string(),
            node,
            keys: list.keys.len(),
        });
        for key in list.keys {
            // Two groups list a key only while they hold different versions of the
            // table (a slot just moved): the newer table's owner has it.
            match keys.get(&key.key) {
                Some((kept, _)) if *kept >= seen => {}
                _ => {
                    keys.insert(key.key.clone(), (seen, key));
                }
            }
        }
    }
    let list = KeyList {
        keys: keys.into_values().map(|(_, key)| key).collect(),
        group: None,
        table_version: Some(version),
        merged: Some(parts),
    };
    local_json(StatusCode::OK, &list)
}

/// `503` with `Retry-After: 1`: the data tier is between primaries.
fn unavailable(error: ApiError) -> Answer {
    with_header(
        local(StatusCode::SERVICE_UNAVAILABLE, error),
        header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    )
}
