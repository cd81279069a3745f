//! keel's front door: an HTTP/1.1 reverse proxy and load balancer.
//!
//! It takes the best of its peers: smooth weighted round robin (nginx), active health
//! checks with fall/rise and retries on another server (HAProxy), passive ejection with
//! backoff, a retry budget and a panic mode (Envoy), and least-request balancing with
//! power of two choices — plus a route that follows the data tier's primary through
//! failovers by watching the monitor. docs/proxy.md is the user's guide.
//!
//! - [`config`]: the configuration (file or flags), checked before use;
//! - [`selection`]: the balancing algorithms, pure;
//! - [`health`]: one backend's health state machine, pure, time passed in;
//! - [`backend`]: a backend's weight, health, idle connections and counters;
//! - [`pool`]: picks and ejections over a pool of backends;
//! - [`wire`]: HTTP/1.1 heads, body framing and chunked bodies, parsed in place;
//! - [`stream`]: a connection's socket, plain or TLS, without a box on the plain path;
//! - [`front`]: client connections: the TLS handshake, requests read and checked,
//!   answers relayed back;
//! - [`forwarded`]: `X-Forwarded-For` and the trusted proxies that may add to it;
//! - [`forward`]: the request path to a pool, with retries;
//! - [`relay`]: answers on their way back to the client;
//! - [`cluster`]: the data tier route (by key to a group's primary under several groups,
//!   and the list of keys merged across them);
//! - [`checks`]: the active health checks;
//! - [`admin`]: the admin API and `/metrics`;
//! - [`evict`]: which connection gives way to a new one when the proxy is full, pure;
//! - [`tcp`]: TCP pools in front of PostgreSQL: the pools' decisions, pure, and the
//!   checks that speak PostgreSQL;
//! - [`server`]: accepting connections, reloading, stopping.

#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod checks;
pub mod cluster;
pub mod config;
pub mod evict;
pub mod forward;
pub mod forwarded;
pub mod front;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod relay;
pub mod selection;
pub mod server;
pub mod stream;
pub mod tcp;
#[cfg(test)]
mod testing;
pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use keel_auth::tls::Tls;
use keel_auth::{ClusterSecret, Signer};
use keel_core::token::Token;
use keel_http::Guard;

/// The id the proxy signs its requests to the monitor with.
pub const PROXY_ID: &str = "proxy";

use crate::backend::Backend;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, parse_backend_url};
use crate::metrics::ProxyStats;
use crate::pool::Pool;
use crate::tcp::serve::TcpPool;

pub use server::{ProxyError, run};

/// A running proxy: the configuration in force and everything built from it.
#[derive(Debug)]
pub struct Proxy {
    table: RwLock<Arc<Table>>,
    pub stats: ProxyStats,
    /// The file SIGHUP reads again, when the configuration came from one.
    config_path: Option<PathBuf>,
    /// Checks the admin credential on the admin API's changes.
    guard: Arc<Guard>,
    /// Signs the cluster route's reads of the monitor and checks its answers; `None`
    /// without the cluster secret.
    signer: Option<Signer>,
    /// TLS for the front door, the admin API, `https://` backends (the data nodes of a
    /// tier on TLS among them) and the cluster route's calls to the monitor.
    tls: Option<Tls>,
    /// The outcome of the last reload, for the admin API.
    last_reload: Mutex<Option<ReloadOutcome>>,
    /// The TCP pools (`[[tcp]]`), made at start and kept as they are by reloads.
    pub tcp: Vec<Arc<TcpPool>>,
}

/// The configuration in force and what was built from it. A reload builds a new table and
/// swaps it in; requests already running finish on the table they started with.
#[derive(Debug)]
pub struct Table {
    pub config: Config,
    pub pool: Arc<Pool>,
    pub cluster: Option<Arc<Cluster>>,
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    pub applied: bool,
    pub message: String,
}

impl Proxy {
    /// A proxy serving `config` (already checked). `config_path` is the file to read again
    /// on reload; `token` guards the admin API's changes; with `secret`, the cluster
    /// route reads the monitor as a member and follows only its signed answers.
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        token: Option<Token>,
        secret: Option<ClusterSecret>,
        tls: Option<Tls>,
    ) -> Arc<Proxy> {
        let signer = secret.as_ref().map(|s| Signer::new(s.key(), PROXY_ID));
        let tcp = config
            .tcp
            .iter()
            .map(|t| Arc::new(TcpPool::new(t.clone())))
            .collect();
        let table = build_table(config, None, signer.as_ref(), tls.as_ref());
        Arc::new(Proxy {
            table: RwLock::new(Arc::new(table)),
            stats: ProxyStats::default(),
            config_path,
            guard: Arc::new(Guard::new(
                "proxy",
                PROXY_ID,
                None,
                token.as_ref(),
                keel_auth::Hosts::any(),
            )),
            signer,
            tls,
            last_reload: Mutex::new(None),
            tcp,
        })
    }

    /// The table in force.
    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The proxy's TLS, if it has it: its listeners serve TLS, and it reaches
    /// `https://` backends with it.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The admin API's guard.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// Every backend: the pool's, then the data nodes of the cluster route.
    pub fn all_backends(&self) -> Vec<Arc<Backend>> {
        let table = self.table();
        let mut all = table.pool.backends.clone();
        if let Some(cluster) = &table.cluster {
            all.extend(cluster.backends());
        }
        all
    }

    /// A backend of the pool by name.
    pub fn backend(&self, name: &str) -> Option<Arc<Backend>> {
        self.table()
            .pool
            .backends
            .iter()
            .find(|b| b.name == name)
            .cloned()
    }

    /// Reads the configuration file again and, if it is good, puts it in force; if not,
    /// the old one stays and the error names the key. Backends that keep their name and
    /// URL keep their health, counters and connections.
    pub fn reload(self: &Arc<Self>) -> Result<ReloadOutcome, ConfigError> {
        let outcome = self.try_reload();
        let recorded = match &outcome {
            Ok(done) => done.clone(),
            Err(e) => ReloadOutcome {
                applied: false,
                message: format!("refused, the old configuration keeps serving: {e}"),
            },
        };
        *self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(recorded);
        outcome
    }

    fn try_reload(self: &Arc<Self>) -> Result<ReloadOutcome, ConfigError> {
        use std::sync::atomic::Ordering;
        let Some(path) = &self.config_path else {
            return Err(ConfigError::Invalid {
                key: "--config".to_owned(),
                reason: "the proxy was started from flags; there is no file to read again"
                    .to_owned(),
            });
        };
        let loaded = Config::load(path).and_then(|config| {
            config.check_tls(self.tls.is_some())?;
            Ok(config)
        });
        let mut config = match loaded {
            Ok(config) => config,
            Err(e) => {
                self.stats.reloads_refused.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let old = self.table();
        let mut kept = Vec::new();
        for (what, before, after) in [
            ("listen", old.config.listen, config.listen),
            ("admin", old.config.admin, config.admin),
        ] {
            if before != after {
                kept.push(format!("{what} stays {before} until a restart"));
            }
        }
        if config.tcp != old.config.tcp {
            kept.push("the [[tcp]] pools stay as they are until a restart".to_owned());
        }
        if config.serves_http() != old.config.serves_http() {
            kept.push("the HTTP front door stays as it is (on or off) until a restart".to_owned());
        }
        config.listen = old.config.listen;
        config.admin = old.config.admin;
        config.tcp = old.config.tcp.clone();
        config.threads = old.config.threads;
        config.max_connections = old.config.max_connections;
        let table = Arc::new(build_table(
            config,
            Some(&old),
            self.signer.as_ref(),
            self.tls.as_ref(),
        ));
        start_background(self, &table, Some(&old));
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&table);
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        let mut message = format!(
            "applied: {} backend(s){}",
            table.pool.backends.len(),
            if table.cluster.is_some() {
                " and the cluster route"
            } else {
                ""
            }
        );
        if !kept.is_empty() {
            message.push_str(&format!("; {}", kept.join("; ")));
        }
        Ok(ReloadOutcome {
            applied: true,
            message,
        })
    }

    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Builds what `config` describes, keeping from `previous` the backends (same name and
/// URL) and the cluster route (same monitor) that did not change.
fn build_table(
    config: Config,
    previous: Option<&Table>,
    signer: Option<&Signer>,
    tls: Option<&Tls>,
) -> Table {
    let backends = config
        .backends
        .iter()
        .filter_map(|b| {
            let kept = previous.and_then(|t| {
                t.pool
                    .backends
                    .iter()
                    .find(|old| old.name == b.name && old.url == b.url)
                    .cloned()
            });
            if let Some(kept) = kept {
                kept.set_weight(b.weight);
                return Some(kept);
            }
            let addr = parse_backend_url(&b.url).ok()?;
            Some(Arc::new(Backend::new(
                b.name.clone(),
                b.url.clone(),
                &addr,
                b.weight,
                tls,
            )))
        })
        .collect();
    let pool = Arc::new(Pool::new(backends, &config));
    let cluster = config.cluster.as_ref().map(|c| {
        previous
            .and_then(|t| t.cluster.clone())
            .filter(|old| old.monitor == c.monitor && old.prefix == c.prefix)
            .unwrap_or_else(|| Cluster::new(c, signer.cloned(), tls))
    });
    Table {
        config,
        pool,
        cluster,
    }
}

/// Starts the health checks of new backends and the watch of a new cluster route, and
/// stops the watch of a route that left.
fn start_background(proxy: &Arc<Proxy>, table: &Table, previous: Option<&Table>) {
    for backend in &table.pool.backends {
        let known =
            previous.is_some_and(|t| t.pool.backends.iter().any(|b| Arc::ptr_eq(b, backend)));
        if !known {
            tokio::spawn(checks::run(Arc::downgrade(proxy), Arc::downgrade(backend)));
        }
    }
    let old_cluster = previous.and_then(|t| t.cluster.clone());
    match (&table.cluster, &old_cluster) {
        (Some(new), Some(old)) if Arc::ptr_eq(new, old) => {}
        (new, old) => {
            if let Some(old) = old {
                old.stop();
            }
            if let Some(new) = new {
                tokio::spawn(Arc::clone(new).watch());
            }
        }
    }
}
