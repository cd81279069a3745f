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
    /// The configuration asks for what the proxy cannot do (an `https://` backend
    /// without TLS).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    token: Option<Token>,
    secret: Option<keel_auth::ClusterSecret>,
    tls: Option<keel_auth::tls::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    config.check_tls(tls.is_some())?;
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind { addr, what, source })
    };
    let listener = match config.serves_http() {
        true => Some(bind(config.listen, "proxy").await?),
        false => None,
    };
    let admin_listener = bind(config.admin, "admin").await?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ProxyError::Signal)?;
    let backends = config.backends.len();
    let cluster = config.cluster.as_ref().map(|c| c.monitor.clone());
    let proxy = Proxy::new(config, config_path, token, secret, tls);
    let tcp_listeners = crate::tcp::serve::bind(&proxy.tcp)
        .await
        .map_err(|(addr, source)| ProxyError::Bind {
            addr,
            what: "tcp",
            source,
        })?;
    crate::start_background(&proxy, &proxy.table(), None);
    tracing::info!(
        listen = %listener.as_ref().and_then(|l| l.local_addr().ok()).map_or_else(|| "-".into(), |a| a.to_string()),
        admin = %admin_listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        backends, cluster = ?cluster,
        "proxy listening"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    for pool in &proxy.tcp {
        crate::tcp::serve::start_checks(pool, &stop_rx);
        tracing::info!(
            "{}: read-write on {}, read-only on {}, over {}",
            pool.config.name,
            pool.config.read_write,
            pool.config.read_only,
            pool.servers
                .iter()
                .map(|s| format!("{} ({})", s.name, s.addr))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (pool, port, listener) in tcp_listeners {
        tokio::spawn(crate::tcp::serve::accept(
            pool,
            port,
            listener,
            stop_rx.clone(),
        ));
    }
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
    let accepting = listener
        .map(|listener| tokio::spawn(accept(Arc::clone(&proxy), listener, stop_rx.clone())));
    shutdown.await;
    tracing::info!("stopping: no new connections; open ones finish their requests");
    let _ = stop_tx.send(true);
    let open = match accepting {
        Some(accepting) => accepting.await.unwrap_or_default(),
        None => Arc::new(()),
    };
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use keel_auth::tls::Tls;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::config::BackendConfig;
    use crate::metrics::Timeout;
    use crate::testing::Ca;

    /// A proxy over `backends` (name, URL) with `tls`, accepting on a free port, without
    /// active checks (the tests say what the backends do); and what stops it.
    async fn start(
        backends: &[(&str, &str)],
        tls: Option<Tls>,
        edit: impl FnOnce(&mut Config),
    ) -> (SocketAddr, Arc<Proxy>, watch::Sender<bool>) {
        let mut config = Config {
            backends: backends
                .iter()
                .map(|(name, url)| BackendConfig {
                    name: (*name).to_owned(),
                    url: (*url).to_owned(),
                    weight: 1,
                })
                .collect(),
            ..Config::default()
        };
        config.health.interval = Duration::ZERO;
        edit(&mut config);
        config.check().expect("a valid configuration");
        let proxy = Proxy::new(config, None, None, None, tls);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept(Arc::clone(&proxy), listener, stopped));
        (addr, proxy, stop)
    }

    /// A backend that answers every request `200` with the body it was sent, keeping
    /// connections alive, over TLS with `tls`: its URL, and how many connections it
    /// accepted.
    async fn backend(tls: Option<Tls>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!(
            "{scheme}://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let acceptor = tls.as_ref().map(Tls::acceptor);
                tokio::spawn(async move {
                    match acceptor {
                        None => echo(stream).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                echo(stream).await;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    async fn echo(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
        let mut buf = Vec::new();
        while let Some((_, body)) = read_message(&mut stream, &mut buf).await {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let mut answer = head.into_bytes();
            answer.extend_from_slice(&body);
            if stream.write_all(&answer).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
    }

    /// Reads one message (a head, and a body of its `Content-Length`) from `stream`,
    /// `buf` holding what was read beyond the last one; `None` at the end.
    async fn read_message(
        stream: &mut (impl AsyncRead + Unpin),
        buf: &mut Vec<u8>,
    ) -> Option<(String, Vec<u8>)> {
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end..end + length].to_vec();
        buf.drain(..end + length);
        Some((head, body))
    }

    /// Sends `request` and reads its answer: the head and the body.
    async fn ask(
        stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
        request: &[u8],
    ) -> (String, String) {
        stream.write_all(request).await.expect("write");
        stream.flush().await.expect("flush");
        let (head, body) = read_message(stream, &mut Vec::new())
            .await
            .expect("an answer");
        (head, String::from_utf8_lossy(&body).into_owned())
    }

    /// A TLS connection to the proxy at `addr`, as a client trusting `ca`.
    async fn tls_client(ca: &Ca, addr: SocketAddr) -> impl AsyncRead + AsyncWrite + Unpin {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("a name");
        ca.client()
            .connect(name, tcp)
            .await
            .expect("a TLS handshake")
    }

    /// Whether the proxy closed `stream` within a minute (it reads to its end, perhaps
    /// after a TLS alert, or fails).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest))
            .await
            .is_ok()
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    #[tokio::test]
    async fn https_backends_are_reached_over_tls_and_kept_alive_like_plain_ones() {
        let ca = Ca::new("cluster CA");
        let (url, accepted) = backend(Some(ca.tls("app"))).await;
        let (addr, proxy, _stop) = start(&[("app", &url)], Some(ca.tls("proxy")), |_| {}).await;
        // A client with the CA and no certificate of its own is served at the front door.
        let mut client = tls_client(&ca, addr).await;
        for _ in 0..3 {
            let (head, _) = ask(&mut client, GET).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(head.contains("Keel-Backend: app"), "{head}");
        }
        // A body streams to the backend over TLS too, on the same kept-alive connection.
        let (head, body) = ask(
            &mut client,
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello there",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "hello there");
        let (head, _) = ask(&mut tls_client(&ca, addr).await, GET).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "five requests from two clients, one TLS connection to the backend"
        );
        let backend = proxy.backend("app").expect("the backend");
        assert!(backend.is_tls());
        let checked = crate::checks::check_once(&backend, "/health", Duration::from_secs(5)).await;
        assert_eq!(checked, Ok(()), "checked over TLS");
    }

    #[tokio::test]
    async fn a_backend_whose_certificate_another_ca_signed_is_ejected_and_fails_its_checks() {
        let ca = Ca::new("cluster CA");
        let other = Ca::new("another CA");
        let (good, _) = backend(Some(ca.tls("good"))).await;
        let (bad, _) = backend(Some(other.tls("bad"))).await;
        let (addr, proxy, _stop) = start(
            &[("bad", &bad), ("good", &good)],
            Some(ca.tls("proxy")),
            |_| {},
        )
        .await;
        let mut client = tls_client(&ca, addr).await;
        for _ in 0..4 {
            let (head, _) = ask(&mut client, GET).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(head.contains("Keel-Backend: good"), "{head}");
        }
        let bad = proxy.backend("bad").expect("the backend");
        assert!(!bad.is_up(), "ejected on its refused handshake");
        assert_eq!(bad.stats.connect_failures.load(Ordering::Relaxed), 1);
        assert_eq!(
            bad.stats
                .answers
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum::<u64>(),
            0
        );
        let checked = crate::checks::check_once(&bad, "/health", Duration::from_secs(5)).await;
        let why = checked.expect_err("its check fails");
        assert!(
            why.contains("TLS with") && why.contains("UnknownIssuer"),
            "{why}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tls_client_that_stalls_in_its_handshake_is_closed_after_the_header_timeout() {
        let ca = Ca::new("cluster CA");
        let (url, _) = backend(None).await;
        let header = Duration::from_secs(5);
        let (addr, proxy, _stop) = start(&[("app", &url)], Some(ca.tls("proxy")), |c| {
            c.header_timeout = header;
            c.idle_timeout = Duration::from_secs(60);
        })
        .await;
        // The start of a ClientHello record, and nothing more.
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        stalled
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8])
            .await
            .expect("write");
        let started = Instant::now();
        assert!(closed(&mut stalled).await);
        let waited = started.elapsed();
        assert!(
            waited >= header && waited < header + Duration::from_secs(1),
            "closed after {waited:?}"
        );
        assert_eq!(
            proxy.stats.timeouts[Timeout::Handshake as usize].load(Ordering::Relaxed),
            1
        );
        // Plain HTTP on the TLS port: closed at once, counted.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain.write_all(GET).await.expect("write");
        let started = Instant::now();
        assert!(closed(&mut plain).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            proxy.stats.tls_handshake_failures.load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_a_stalled_tls_handshake_gives_way_to_a_new_client() {
        let ca = Ca::new("cluster CA");
        let (url, _) = backend(None).await;
        let (addr, proxy, _stop) = start(&[("app", &url)], Some(ca.tls("proxy")), |c| {
            c.max_connections = 1;
        })
        .await;
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let served = async {
            let mut client = tls_client(&ca, addr).await;
            ask(&mut client, GET).await
        };
        let (head, _) = tokio::time::timeout(Duration::from_secs(1), served)
            .await
            .expect("served while the proxy was full");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            closed(&mut stalled).await,
            "the stalled handshake stayed open"
        );
        assert_eq!(proxy.stats.connections_evicted.load(Ordering::Relaxed), 1);
    }
}
