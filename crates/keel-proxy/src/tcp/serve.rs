//! The TCP pools at work: their listeners, the relay of each session, and the check
//! loops that feed [`super::pools::Pools`]. Thin on purpose: which server takes a
//! connection, and what a check's result means, is decided there.
//!
//! A session is relayed byte for byte; the proxy does not read PostgreSQL's protocol on
//! it. A server that refuses the connection is passed over for the next usable one,
//! which is safe since nothing was sent yet. When no server can take it, the client gets
//! PostgreSQL's own error message (`57P03`, with why in words) rather than a silent
//! close. Sessions end when either side closes, when their server's role changed under
//! them ([`super::pools::Change::Moved`]), or when the proxy stops.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::check::{Target, check};
use super::config::{TcpBalance, TcpConfig};
use super::pools::{Change, Pools, Port, Role, Seen};

/// Bytes read at once from either side of a session.
const RELAY_BUFFER: usize = 16 * 1024;

/// Counters of one server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Sessions relayed to it, by port.
    pub sessions: [AtomicU64; 2],
    /// Sessions open on it now, by port.
    pub open: [AtomicUsize; 2],
    /// Bytes from clients to it.
    pub bytes_in: AtomicU64,
    /// Bytes from it to clients.
    pub bytes_out: AtomicU64,
    /// Connections it refused or did not accept in time.
    pub connect_failures: AtomicU64,
    /// Sessions closed because its role changed.
    pub closed_on_move: AtomicU64,
    /// Checks that saw it answer.
    pub checks_ok: AtomicU64,
    /// Checks that failed.
    pub checks_failed: AtomicU64,
}

/// One PostgreSQL server of a pool.
#[derive(Debug)]
pub struct TcpServer {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: ServerStats,
    /// Bumped to close its sessions on a port (index: the port).
    close: [watch::Sender<u64>; 2],
    /// The last check's result: what it saw, or why it failed.
    last: Mutex<Option<Result<Seen, String>>>,
}

impl TcpServer {
    /// The last check's result.
    pub fn last_check(&self) -> Option<Result<Seen, String>> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One `[[tcp]]` pool: its settings, its servers and the decisions over them.
#[derive(Debug)]
pub struct TcpPool {
    pub config: TcpConfig,
    pub servers: Vec<TcpServer>,
    password: Option<String>,
    pools: Mutex<Pools>,
    /// Connections turned away, by port: no server could take them.
    pub refused: [AtomicU64; 2],
}

/// A port's label in logs, the admin API and the metrics.
pub fn port_label(port: Port) -> &'static str {
    match port {
        Port::ReadWrite => "read_write",
        Port::ReadOnly => "read_only",
    }
}

impl TcpPool {
    /// The pool `config` describes (already checked); the password read now.
    pub fn new(config: TcpConfig) -> TcpPool {
        let password = config.read_password().ok().flatten();
        let servers = config
            .servers
            .iter()
            .filter_map(|s| {
                Some(TcpServer {
                    name: s.name.clone(),
                    addr: s.addr.parse().ok()?,
                    stats: ServerStats::default(),
                    close: [watch::channel(0).0, watch::channel(0).0],
                    last: Mutex::new(None),
                })
            })
            .collect::<Vec<_>>();
        let mut pools = Pools::new(servers.len(), config.policy());
        if config.monitor.is_some() {
            pools.follow_monitor();
        }
        let pools = Mutex::new(pools);
        TcpPool {
            config,
            servers,
            password,
            pools,
            refused: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The servers that may take a new connection on `port` now.
    pub fn eligible(&self, port: Port) -> Vec<usize> {
        self.pools().eligible(port)
    }

    /// Whether server `i` is up (its checks pass).
    pub fn is_up(&self, i: usize) -> bool {
        self.pools().is_up(i)
    }

    fn pick(&self, port: Port, skip: &[usize]) -> Option<usize> {
        let mut pools = self.pools();
        match (port, self.config.balance) {
            (Port::ReadOnly, TcpBalance::LeastConnections) => {
                let open: Vec<usize> = self
                    .servers
                    .iter()
                    .map(|s| s.stats.open[port as usize].load(Ordering::Relaxed))
                    .collect();
                pools.least_connections(port, &open, skip)
            }
            _ => pools.round_robin(port, skip),
        }
    }

    /// Feeds a check's result to the decisions, and acts on what changed.
    fn observe(&self, i: usize, result: Result<Seen, String>) {
        let Some(server) = self.servers.get(i) else {
            return;
        };
        let counter = match &result {
            Ok(_) => &server.stats.checks_ok,
            Err(_) => &server.stats.checks_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *server.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(result.clone());
        let changes = self.pools().observe(i, result);
        let (pool, name) = (&self.config.name, &server.name);
        for change in changes {
            match change {
                Change::Up => tracing::warn!("{pool}: {name} is up"),
                Change::Down(why) => tracing::warn!(
                    "{pool}: {name} is down after {} failed checks: {why}",
                    self.config.fall
                ),
                Change::Lagging(lag) => tracing::warn!(
                    "{pool}: {name} replays {} behind its primary (max_lag {:?}): out of the read-only pool",
                    lag_words(lag),
                    self.config.max_lag
                ),
                Change::CaughtUp => {
                    tracing::warn!("{pool}: {name} caught up: back in the read-only pool")
                }
                Change::Moved { from, to, close } => {
                    let open = server.stats.open[close as usize].load(Ordering::Relaxed);
                    server.close[close as usize].send_modify(|g| *g += 1);
                    tracing::warn!(
                        "{pool}: {name} was {} and is now {}: its {open} {} session(s) closed",
                        role_words(from),
                        role_words(to),
                        port_label(close)
                    );
                }
                Change::Deposed => self.deposed(i),
            }
        }
    }

    /// Feeds the monitor's word on the primary (a server's name; `None` when it names
    /// none) to the decisions, and closes the read-write sessions of a server it no
    /// longer names. The server it names now, when that is news: its index.
    pub fn named(&self, primary: Option<&str>) -> Option<usize> {
        let index = primary.and_then(|name| self.servers.iter().position(|s| s.name == name));
        let changes = self.pools().named(index);
        let news = !changes.is_empty();
        for (i, _) in changes {
            self.deposed(i);
        }
        index.filter(|_| news)
    }

    /// What a check of server `i` connects to.
    fn target(&self, i: usize) -> Option<Target> {
        let server = self.servers.get(i)?;
        Some(Target {
            host: server.addr.ip().to_string(),
            port: server.addr.port(),
            user: self.config.user.clone(),
            password: self.password.clone(),
            dbname: self.config.dbname.clone(),
        })
    }

    fn deposed(&self, i: usize) {
        let Some(server) = self.servers.get(i) else {
            return;
        };
        let port = Port::ReadWrite;
        let open = server.stats.open[port as usize].load(Ordering::Relaxed);
        server.close[port as usize].send_modify(|g| *g += 1);
        tracing::warn!(
            "{}: the monitor no longer names {} primary: its {open} {} session(s) closed",
            self.config.name,
            server.name,
            port_label(port)
        );
    }

    /// Why no server can take a connection on `port`, for the client: what each server's
    /// checks say, or, for those tried for this connection, how they refused it.
    fn why_none(&self, port: Port, tried: &[(usize, String)]) -> String {
        let states: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if let Some((_, why)) = tried.iter().find(|(t, _)| *t == i) {
                    return format!("{}: {why}", s.name);
                }
                let state = match (self.is_up(i), s.last_check()) {
                    (_, None) => "not checked yet".to_owned(),
                    (false, Some(Err(why))) => format!("down: {why}"),
                    (false, Some(Ok(_))) => "coming back".to_owned(),
                    (true, _) => match self.pools().seen(i) {
                        Some(seen)
                            if seen.role == Role::Standby && seen.lag > self.config.max_lag =>
                        {
                            format!("a standby {:.1} s behind", seen.lag.as_secs_f64())
                        }
                        Some(seen) => role_words(seen.role).to_owned(),
                        None => "unknown".to_owned(),
                    },
                };
                format!("{}: {state}", s.name)
            })
            .collect();
        format!(
            "keel proxy: no PostgreSQL server of {} can take a {} connection now ({})",
            self.config.name,
            match port {
                Port::ReadWrite => "read-write",
                Port::ReadOnly => "read-only",
            },
            states.join("; ")
        )
    }
}

/// A lag in words: `3.2 s`, or `an unknown time` when nothing was replayed to measure it
/// by.
fn lag_words(lag: Duration) -> String {
    if lag == Duration::MAX {
        "an unknown time (no transaction replayed since it started)".to_owned()
    } else {
        format!("{:.1} s", lag.as_secs_f64())
    }
}

fn role_words(role: Role) -> &'static str {
    match role {
        Role::Primary => "the primary",
        Role::Standby => "a standby",
    }
}

/// Binds both ports of every pool, before anything is served, so that a port taken is
/// an error at start.
pub async fn bind(
    pools: &[Arc<TcpPool>],
) -> Result<Vec<(Arc<TcpPool>, Port, TcpListener)>, (SocketAddr, io::Error)> {
    let mut out = Vec::new();
    for pool in pools {
        for (port, addr) in [
            (Port::ReadWrite, pool.config.read_write),
            (Port::ReadOnly, pool.config.read_only),
        ] {
            let listener = TcpListener::bind(addr).await.map_err(|e| (addr, e))?;
            out.push((Arc::clone(pool), port, listener));
        }
    }
    Ok(out)
}

/// Starts the check loops of every server of `pool`, and the loop that follows its
/// monitor when it has one; they end when `stop` turns true or the pool is dropped.
pub fn start_checks(pool: &Arc<TcpPool>, stop: &watch::Receiver<bool>) {
    for i in 0..pool.servers.len() {
        tokio::spawn(check_loop(Arc::downgrade(pool), i, stop.clone()));
    }
    if let Some(monitor) = pool.config.monitor.clone() {
        tokio::spawn(monitor_loop(Arc::downgrade(pool), monitor, stop.clone()));
    }
}

/// How often the monitor is asked which server is primary: as often as a node
/// heartbeats, since a failover is over in well under a second.
const ASK_MONITOR_EVERY: Duration = Duration::from_millis(100);

/// Asks the monitor which server is primary, every [`ASK_MONITOR_EVERY`]; a server it
/// names anew is checked at once rather than at its next check. A monitor that does not
/// answer changes nothing: without it there is no failover either.
async fn monitor_loop(weak: Weak<TcpPool>, monitor: String, mut stop: watch::Receiver<bool>) {
    let timeout = match weak.upgrade() {
        Some(pool) => pool.config.check_timeout,
        None => return,
    };
    let Ok(http) = reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
    else {
        tracing::error!("cannot set up an HTTP client to follow the monitor");
        return;
    };
    let mut tick = tokio::time::interval(ASK_MONITOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let view = keel_client::monitor::cluster_as(&http, &monitor, timeout, None).await;
        let Some(pool) = weak.upgrade() else { return };
        match view {
            Ok(view) => {
                reachable = true;
                let news = pool.named(view.primary.as_ref().map(|p| p.node.as_str()));
                if let Some((i, target)) = news.and_then(|i| Some((i, pool.target(i)?))) {
                    drop(pool);
                    let result = check(&target, timeout).await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.observe(i, result);
                }
            }
            Err(e) if reachable => {
                tracing::warn!(monitor = %monitor, error = %e, "{}: the monitor does not answer; keeping its last word", pool.config.name);
                reachable = false;
            }
            Err(_) => {}
        }
    }
}

async fn check_loop(pool: Weak<TcpPool>, i: usize, mut stop: watch::Receiver<bool>) {
    let (target, interval, timeout) = {
        let Some(pool) = pool.upgrade() else { return };
        let Some(target) = pool.target(i) else {
            return;
        };
        (
            target,
            pool.config.check_interval,
            pool.config.check_timeout,
        )
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let result = check(&target, timeout).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.observe(i, result);
    }
}

/// Accepts connections on one port of `pool` until `stop` turns true.
pub async fn accept(
    pool: Arc<TcpPool>,
    port: Port,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(
                    "{}: accept on the {} port failed: {e}",
                    pool.config.name,
                    port_label(port)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(session(Arc::clone(&pool), port, client, stop.clone()));
    }
}

/// Decrements a server's open sessions when the session ends, however it ends.
struct Open<'a>(&'a AtomicUsize);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn session(
    pool: Arc<TcpPool>,
    port: Port,
    mut client: TcpStream,
    mut stop: watch::Receiver<bool>,
) {
    let _ = client.set_nodelay(true);
    // The servers tried for this connection, and how each refused it.
    let mut tried: Vec<(usize, String)> = Vec::new();
    let (i, mut upstream) = loop {
        let skip: Vec<usize> = tried.iter().map(|(i, _)| *i).collect();
        let Some(i) = pool.pick(port, &skip) else {
            pool.refused[port as usize].fetch_add(1, Ordering::Relaxed);
            let message = pool.why_none(port, &tried);
            tracing::debug!("{message}");
            // The client learns why in PostgreSQL's own words; it may be gone already.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                client.write_all(&error_response("57P03", &message)),
            )
            .await;
            return;
        };
        let server = &pool.servers[i];
        let why = match tokio::time::timeout(
            pool.config.connect_timeout,
            TcpStream::connect(server.addr),
        )
        .await
        {
            Ok(Ok(stream)) => break (i, stream),
            Ok(Err(e)) => format!("refused this connection: {e}"),
            Err(_) => format!(
                "did not accept this connection within {:?}",
                pool.config.connect_timeout
            ),
        };
        tracing::debug!("{}: {} {why}", pool.config.name, server.name);
        server
            .stats
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        tried.push((i, why));
    };
    let _ = upstream.set_nodelay(true);
    let server = &pool.servers[i];
    server.stats.sessions[port as usize].fetch_add(1, Ordering::Relaxed);
    server.stats.open[port as usize].fetch_add(1, Ordering::Relaxed);
    let _open = Open(&server.stats.open[port as usize]);
    let mut moved = server.close[port as usize].subscribe();
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = upstream.split();
    let relay = async {
        tokio::try_join!(
            pump(client_read, server_write, &server.stats.bytes_in),
            pump(server_read, client_write, &server.stats.bytes_out),
        )
    };
    tokio::select! {
        _ = relay => {}
        _ = moved.changed() => {
            server.stats.closed_on_move.fetch_add(1, Ordering::Relaxed);
        }
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Copies one direction of a session until its reader closes (then closes the writer,
/// so the other side sees the end) or either side fails.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    bytes: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A PostgreSQL `ErrorResponse` message, FATAL, with `code` and `message`: what a
/// server sends a client it will not serve. Clients show its message.
pub fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(tag);
        // A NUL would end the field early.
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend(len.to_be_bytes());
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_message_is_postgresqls_framing() {
        let m = error_response("57P03", "no server");
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len, m.len() - 1, "the length counts itself, not the tag");
        assert_eq!(&m[5..], b"SFATAL\0VFATAL\0C57P03\0Mno server\0\0");
    }
}
