//! `/metrics` on the admin port: per backend, requests, answers by class, failures,
//! retries, ejections and a latency histogram; for the proxy, requests, retries refused by
//! the budget, panic-mode picks and the cluster route's state.
//!
//! Counters are atomics bumped on the request path and read at scrape time; the text is
//! written by hand (a dozen metric families do not need a registry).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Proxy;
use crate::backend::Backend;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of durations, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One count per bucket, plus one for everything above the last.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The proxy's own counters.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Requests received from clients.
    pub requests: AtomicU64,
    /// Retries not made because the budget was spent.
    pub budget_exhausted: AtomicU64,
    /// Picks made in panic mode (every backend looked down).
    pub panic_picks: AtomicU64,
    /// Answers the proxy made itself, by kind (no backend, bad gateway, …).
    pub local_answers: AtomicU64,
    /// Requests refused because they were malformed.
    pub bad_requests: AtomicU64,
    /// Client connections open now.
    pub connections_open: AtomicU64,
    /// Times a new connection waited because `max_connections` were open and every one
    /// was serving a request.
    pub connections_limited: AtomicU64,
    /// Connections closed to make room for a new one at `max_connections`.
    pub connections_evicted: AtomicU64,
    /// Client connections cut off by a timeout, by [`Timeout`].
    pub timeouts: [AtomicU64; Timeout::ALL.len()],
    /// TLS handshakes with clients that failed (plain HTTP on the TLS port, a client
    /// certificate another CA signed, …).
    pub tls_handshake_failures: AtomicU64,
    /// Configuration reloads applied and refused.
    pub reloads: AtomicU64,
    pub reloads_refused: AtomicU64,
}

/// Which of a client connection's timeouts ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// No request began within `idle_timeout`.
    Idle,
    /// A head was not whole within `header_timeout`.
    Header,
    /// A body was not whole within `body_timeout`.
    Body,
    /// The client took no part of its answer within `send_timeout`.
    Send,
    /// A TLS client did not finish its handshake within `header_timeout`.
    Handshake,
}

impl Timeout {
    pub const ALL: [Timeout; 5] = [
        Timeout::Idle,
        Timeout::Header,
        Timeout::Body,
        Timeout::Send,
        Timeout::Handshake,
    ];

    fn label(self) -> &'static str {
        match self {
            Timeout::Idle => "idle",
            Timeout::Header => "header",
            Timeout::Body => "body",
            Timeout::Send => "send",
            Timeout::Handshake => "tls_handshake",
        }
    }
}

impl ProxyStats {
    /// Counts a client connection cut off by `timeout`.
    pub fn timed_out(&self, timeout: Timeout) {
        self.timeouts[timeout as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Renders every metric.
pub fn render(proxy: &Proxy) -> String {
    let mut out = String::with_capacity(8192);
    let backends = proxy.all_backends();
    family(
        &mut out,
        "keel_proxy_backend_up",
        "gauge",
        "1 if the backend is in rotation",
        &backends,
        |b| u64::from(b.is_up()),
    );
    family(
        &mut out,
        "keel_proxy_backend_drained",
        "gauge",
        "1 if an operator drained the backend",
        &backends,
        |b| u64::from(b.is_drained()),
    );
    family(
        &mut out,
        "keel_proxy_backend_weight",
        "gauge",
        "The backend's configured weight",
        &backends,
        |b| u64::from(b.weight()),
    );
    family(
        &mut out,
        "keel_proxy_backend_in_flight",
        "gauge",
        "Requests in flight on the backend",
        &backends,
        |b| u64::from(b.in_flight.load(Ordering::Relaxed)),
    );
    family(
        &mut out,
        "keel_proxy_backend_requests_total",
        "counter",
        "Requests sent to the backend, retries included",
        &backends,
        |b| b.stats.requests.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP keel_proxy_backend_responses_total Answers from the backend, by status class\n\
         # TYPE keel_proxy_backend_responses_total counter"
    );
    for b in &backends {
        for (i, count) in b.stats.answers.iter().enumerate() {
            let _ = writeln!(
                out,
                "keel_proxy_backend_responses_total{{backend=\"{}\",class=\"{}xx\"}} {}",
                b.name,
                i + 1,
                count.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP keel_proxy_backend_errors_total Requests that got no answer from the backend, by kind\n\
         # TYPE keel_proxy_backend_errors_total counter"
    );
    for b in &backends {
        let _ = writeln!(
            out,
            "keel_proxy_backend_errors_total{{backend=\"{}\",kind=\"connect\"}} {}\n\
             keel_proxy_backend_errors_total{{backend=\"{}\",kind=\"no_answer\"}} {}",
            b.name,
            b.stats.connect_failures.load(Ordering::Relaxed),
            b.name,
            b.stats.failures.load(Ordering::Relaxed)
        );
    }
    family(
        &mut out,
        "keel_proxy_backend_retries_total",
        "counter",
        "Requests retried on another backend after failing on this one",
        &backends,
        |b| b.stats.retries.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "keel_proxy_backend_ejections_total",
        "counter",
        "Passive ejections of the backend",
        &backends,
        |b| b.stats.ejections.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "keel_proxy_backend_check_downs_total",
        "counter",
        "Times failed active checks took the backend down",
        &backends,
        |b| b.stats.downs.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP keel_proxy_backend_latency_seconds Time from sending a request to the backend to its answer's head\n\
         # TYPE keel_proxy_backend_latency_seconds histogram"
    );
    for b in &backends {
        b.stats.latency.render(
            &mut out,
            "keel_proxy_backend_latency_seconds",
            &format!("backend=\"{}\"", b.name),
        );
    }
    let s = &proxy.stats;
    let mut single = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    single(
        "keel_proxy_requests_total",
        "counter",
        "Requests received from clients",
        s.requests.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_retry_budget_exhausted_total",
        "counter",
        "Retries not made because the retry budget was spent",
        s.budget_exhausted.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_panic_picks_total",
        "counter",
        "Backends picked in panic mode (every backend looked down)",
        s.panic_picks.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_local_answers_total",
        "counter",
        "Error answers the proxy made itself (no backend, bad gateway, timeout, failover)",
        s.local_answers.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_bad_requests_total",
        "counter",
        "Requests refused as malformed",
        s.bad_requests.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_connections_open",
        "gauge",
        "Client connections open now",
        s.connections_open.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_connections_limited_total",
        "counter",
        "Times a new connection waited because max_connections were open, all serving requests",
        s.connections_limited.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_connections_evicted_total",
        "counter",
        "Connections closed to make room for a new one at max_connections",
        s.connections_evicted.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_tls_handshake_failures_total",
        "counter",
        "TLS handshakes with clients that failed (not counting those that timed out)",
        s.tls_handshake_failures.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_reloads_total",
        "counter",
        "Configuration reloads applied",
        s.reloads.load(Ordering::Relaxed),
    );
    single(
        "keel_proxy_reloads_refused_total",
        "counter",
        "Configuration reloads refused (the old configuration kept serving)",
        s.reloads_refused.load(Ordering::Relaxed),
    );
    if let Some(cluster) = proxy.table().cluster.as_ref() {
        let view = cluster.snapshot();
        single(
            "keel_proxy_cluster_epoch",
            "gauge",
            "The data tier's epoch as last seen",
            view.epoch,
        );
        single(
            "keel_proxy_cluster_failover_in_progress",
            "gauge",
            "1 while the data tier fails over",
            u64::from(view.failover.is_some()),
        );
        single(
            "keel_proxy_cluster_has_primary",
            "gauge",
            "1 when a primary is known",
            u64::from(view.primary.is_some()),
        );
    }
    let _ = writeln!(
        out,
        "# HELP keel_proxy_client_timeouts_total Client connections cut off by a timeout, by kind\n\
         # TYPE keel_proxy_client_timeouts_total counter"
    );
    for kind in Timeout::ALL {
        let _ = writeln!(
            out,
            "keel_proxy_client_timeouts_total{{kind=\"{}\"}} {}",
            kind.label(),
            s.timeouts[kind as usize].load(Ordering::Relaxed)
        );
    }
    render_tcp(proxy, &mut out);
    out
}

/// The TCP pools' figures, labelled by pool and server.
fn render_tcp(proxy: &Proxy, out: &mut String) {
    use crate::tcp::pools::{Port, Role};
    use crate::tcp::serve::{TcpPool, TcpServer, port_label};
    if proxy.tcp.is_empty() {
        return;
    }
    type Value = fn(&TcpPool, usize, &TcpServer) -> f64;
    let families: [(&str, &str, &str, Value); 8] = [
        (
            "keel_proxy_tcp_server_up",
            "gauge",
            "1 if the server's checks pass",
            |p, i, _| f64::from(u8::from(p.is_up(i))),
        ),
        (
            "keel_proxy_tcp_server_primary",
            "gauge",
            "1 if the last check saw a primary",
            |_, _, s| {
                f64::from(u8::from(
                    s.last_check()
                        .and_then(Result::ok)
                        .is_some_and(|x| x.role == Role::Primary),
                ))
            },
        ),
        (
            "keel_proxy_tcp_server_lag_seconds",
            "gauge",
            "How far the standby's replay is behind (+Inf when unknown)",
            |_, _, s| {
                s.last_check().and_then(Result::ok).map_or(0.0, |x| {
                    // Unknown (nothing replayed to measure it by): endless.
                    if x.lag == std::time::Duration::MAX {
                        f64::INFINITY
                    } else {
                        x.lag.as_secs_f64()
                    }
                })
            },
        ),
        (
            "keel_proxy_tcp_bytes_in_total",
            "counter",
            "Bytes relayed from clients to the server",
            |_, _, s| s.stats.bytes_in.load(Ordering::Relaxed) as f64,
        ),
        (
            "keel_proxy_tcp_bytes_out_total",
            "counter",
            "Bytes relayed from the server to clients",
            |_, _, s| s.stats.bytes_out.load(Ordering::Relaxed) as f64,
        ),
        (
            "keel_proxy_tcp_connect_failures_total",
            "counter",
            "Sessions the server refused or did not accept in time",
            |_, _, s| s.stats.connect_failures.load(Ordering::Relaxed) as f64,
        ),
        (
            "keel_proxy_tcp_closed_on_role_change_total",
            "counter",
            "Sessions closed because the server's role changed",
            |_, _, s| s.stats.closed_on_move.load(Ordering::Relaxed) as f64,
        ),
        (
            "keel_proxy_tcp_checks_failed_total",
            "counter",
            "Checks of the server that failed",
            |_, _, s| s.stats.checks_failed.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in &proxy.tcp {
            for (i, s) in pool.servers.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\",server=\"{}\"}} {}",
                    pool.config.name,
                    s.name,
                    prometheus_number(value(pool, i, s))
                );
            }
        }
    }
    for (name, help, open) in [
        (
            "keel_proxy_tcp_sessions_open",
            "Sessions open on the server, by port",
            true,
        ),
        (
            "keel_proxy_tcp_sessions_total",
            "Sessions relayed to the server, by port",
            false,
        ),
    ] {
        let kind = if open { "gauge" } else { "counter" };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in &proxy.tcp {
            for s in &pool.servers {
                for port in [Port::ReadWrite, Port::ReadOnly] {
                    let n = if open {
                        s.stats.open[port as usize].load(Ordering::Relaxed) as u64
                    } else {
                        s.stats.sessions[port as usize].load(Ordering::Relaxed)
                    };
                    let _ = writeln!(
                        out,
                        "{name}{{pool=\"{}\",server=\"{}\",port=\"{}\"}} {n}",
                        pool.config.name,
                        s.name,
                        port_label(port)
                    );
                }
            }
        }
    }
    let name = "keel_proxy_tcp_refused_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections turned away: no server could take them\n# TYPE {name} counter"
    );
    for pool in &proxy.tcp {
        for port in [Port::ReadWrite, Port::ReadOnly] {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",port=\"{}\"}} {}",
                pool.config.name,
                port_label(port),
                pool.refused[port as usize].load(Ordering::Relaxed)
            );
        }
    }
}

/// A number as Prometheus writes it (`+Inf` for an endless lag).
fn prometheus_number(x: f64) -> String {
    if x.is_infinite() {
        "+Inf".to_owned()
    } else {
        format!("{x}")
    }
}

fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    backends: &[std::sync::Arc<Backend>],
    value: impl Fn(&Backend) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for b in backends {
        let _ = writeln!(out, "{name}{{backend=\"{}\"}} {}", b.name, value(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(30));
        let mut out = String::new();
        h.render(&mut out, "x", "b=\"1\"");
        assert!(out.contains("x_bucket{b=\"1\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{b=\"1\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{b=\"1\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{b=\"1\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{b=\"1\"} 3\n"), "{out}");
    }
}
