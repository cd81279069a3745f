//! Accepting client connections, serving the admin API beside them, reloading on SIGHUP,
//! and stopping: no new connections, in-flight requests finish (up to a grace period).
//!
//! A reload swaps the proxy's table and nothing else: the listening socket and every open
//! connection stay as they are, so no connection is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_core::token::Token;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Proxy;
use crate::config::Config;
use crate::evict::{Registry, Slot};
use crate::front::{self, Flags};

/// How long open connections may take to finish once the proxy is told to stop.
const GRACE: Duration = Duration::from_secs(5);

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot watch for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    token: Option<Token>,
    secret: Option<keel_core::auth::ClusterSecret>,
    tls: Option<keel_core::tls::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind { addr, what, source })
    };
    let listener = bind(config.listen, "proxy").await?;
    let admin_listener = bind(config.admin, "admin").await?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ProxyError::Signal)?;
    let backends = config.backends.len();
    let cluster = config.cluster.as_ref().map(|c| c.monitor.clone());
    let proxy = Proxy::new(config, config_path, token, secret, tls);
    crate::start_background(&proxy, &proxy.table(), None);
    tracing::info!(
        listen = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        admin = %admin_listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        backends, cluster = ?cluster,
        "proxy listening"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = tokio::spawn(crate::admin::serve(
        Arc::clone(&proxy),
        admin_listener,
        stop_rx.clone(),
    ));
    let reloads = {
        let proxy = Arc::clone(&proxy);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = hangup.recv() => {
                        if got.is_none() { return; }
                        match proxy.reload() {
                            Ok(outcome) => tracing::info!("SIGHUP: configuration {}", outcome.message),
                            Err(e) => tracing::error!("SIGHUP: configuration refused, the old one keeps serving: {e}"),
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let accepting = tokio::spawn(accept(Arc::clone(&proxy), listener, stop_rx.clone()));
    shutdown.await;
    tracing::info!("stopping: no new connections; open ones finish their requests");
    let _ = stop_tx.send(true);
    let open = accepting.await.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + GRACE;
    while Arc::strong_count(&open) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&open) > 1 {
        tracing::warn!(
            open = Arc::strong_count(&open) - 1,
            "connections still open after the grace period; stopping anyway"
        );
    }
    reloads.abort();
    let _ = admin.await;
    if let Some(cluster) = &proxy.table().cluster {
        cluster.stop();
    }
    Ok(())
}

/// Accepts connections until told to stop; returns a token every open connection holds
/// a clone of, so the caller can wait for them.
async fn accept(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Arc<()> {
    let open = Arc::new(());
    let max_connections = proxy.table().config.max_connections;
    let registry = Arc::new(Registry::new(Instant::now()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return open,
        };
        if registry.open() >= max_connections
            && !make_room(&proxy, &registry, max_connections, &mut stop).await
        {
            return open;
        }
        let _ = stream.set_nodelay(true);
        let slot = registry.register(Instant::now());
        let proxy = Arc::clone(&proxy);
        let held = Arc::clone(&open);
        let mut stop = stop.clone();
        proxy.stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let open_guard = Open {
            registry: Arc::clone(&registry),
            slot: Arc::clone(&slot),
            proxy: Arc::clone(&proxy),
        };
        tokio::spawn(async move {
            let _held = held;
            let _open = open_guard;
            let flags = Flags::default();
            let mut connection = std::pin::pin!(front::serve(&proxy, stream, peer, &flags, &slot));
            tokio::select! {
                // The connection first: the stop and an eviction are looked at only while
                // it waits.
                biased;
                () = connection.as_mut() => return,
                // Made room for a newer connection: dropping the future closes the socket
                // (and any backend connection it held).
                () = slot.evicted() => return,
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
            // Stopping: an idle connection closes now, one serving a request finishes
            // that request first.
            flags.stopping.store(true, Ordering::Relaxed);
            if flags.busy.load(Ordering::Relaxed) {
                connection.await;
            }
        });
    }
}

/// How often a full proxy whose connections are all serving looks again for one that
/// may give way (besides when one leaves).
const RECHECK: Duration = Duration::from_millis(100);

/// Makes a place for a connection accepted at `max_connections`: evicts one by the rule of
/// [`crate::evict`], or waits until one may be evicted or leaves. False if the proxy
/// stops meanwhile.
async fn make_room(
    proxy: &Proxy,
    registry: &Registry,
    max_connections: usize,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut waited = false;
    loop {
        if registry.open() < max_connections {
            return true;
        }
        if registry.evict_one() {
            proxy
                .stats
                .connections_evicted
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(max_connections, "connection evicted for a new one");
            return true;
        }
        if !waited {
            waited = true;
            proxy
                .stats
                .connections_limited
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                max_connections,
                "connection limit reached, every connection serving a request: new clients wait"
            );
        }
        tokio::select! {
            () = registry.left() => {}
            () = tokio::time::sleep(RECHECK) => {}
            _ = stop.changed() => return false,
        }
    }
}

/// A client connection's place under `max_connections`: given back, and the connection
/// no longer counted as open, when it ends.
struct Open {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
    proxy: Arc<Proxy>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.registry.release(&self.slot);
        self.proxy
            .stats
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}
