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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::Proxy;
use crate::config::Config;
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
    // Taken before each accept and held by the connection: at the limit the proxy stops
    // accepting, and the kernel's queue holds the next clients until one leaves.
    let limit = Arc::new(Semaphore::new(proxy.table().config.max_connections));
    loop {
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                proxy
                    .stats
                    .connections_limited
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    max_connections = proxy.table().config.max_connections,
                    "connection limit reached: new clients wait until one leaves"
                );
                tokio::select! {
                    permit = Arc::clone(&limit).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return open,
                    },
                    _ = stop.changed() => return open,
                }
            }
        };
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
        let _ = stream.set_nodelay(true);
        let proxy = Arc::clone(&proxy);
        let held = Arc::clone(&open);
        let mut stop = stop.clone();
        proxy.stats.connections_open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _held = held;
            let _open = Open {
                _permit: permit,
                proxy: Arc::clone(&proxy),
            };
            let flags = Flags::default();
            let mut connection = std::pin::pin!(front::serve(&proxy, stream, peer, &flags));
            tokio::select! {
                // The connection first: the stop is looked at only while it waits.
                biased;
                () = connection.as_mut() => return,
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

/// A client connection's place under `max_connections`: given back, and the connection
/// no longer counted as open, when it ends.
struct Open {
    _permit: OwnedSemaphorePermit,
    proxy: Arc<Proxy>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.proxy
            .stats
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}
