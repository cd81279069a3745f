//! The proxy's configuration: a TOML file (`--config proxy.toml`) or flags, checked as a
//! whole before any of it is used, so that a bad file — at start or on a SIGHUP reload —
//! is refused with the key and the reason while the old configuration keeps serving.
//!
//! docs/proxy.md lists every key with its default; [`Config::default`] is where those
//! defaults live.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::forwarded::IpNet;
use crate::tcp::config::TcpConfig;

/// A whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where the admin API and `/metrics` are served.
    pub admin: SocketAddr,
    /// How a backend is chosen.
    pub balance: Balance,
    /// How long to wait for a backend to accept a connection.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub connect_timeout: Duration,
    /// How long to wait for a backend's answer to begin, once the request is sent.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub request_timeout: Duration,
    /// How long a recovered backend takes to ramp up to its full weight (0: at once).
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub slow_start: Duration,
    /// Below this percentage of backends up, requests spread over all of them (panic
    /// mode); at 0 that happens only when none is up.
    pub panic_threshold: u8,
    /// Worker threads (0: one per CPU the process may run on). Read at start only.
    pub threads: usize,
    /// Client connections open at once. A new one beyond it closes the connection idle
    /// the longest, or else the one slowest to send its request (see
    /// [`crate::evict`]); when every connection is serving a request, new ones wait in
    /// the kernel's accept queue. Read at start only.
    pub max_connections: usize,
    /// How long a connection may wait for the first byte of a request — its first, or
    /// the next one on a kept-alive connection — before it is closed.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub idle_timeout: Duration,
    /// From a request's first byte, how long its head may take to arrive whole (then
    /// `408`).
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub header_timeout: Duration,
    /// From the end of a request's head, how long its whole body may take to arrive
    /// (then `408` if none of it went to a backend yet, else the connection is closed).
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub body_timeout: Duration,
    /// How long one write may wait for the other side to take it: a client that does not
    /// read its answer, a backend that does not read a body.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub send_timeout: Duration,
    /// Peers (addresses or networks) whose `X-Forwarded-For` is kept and added to; from
    /// anyone else it is replaced by the peer's address.
    pub trusted_proxies: Vec<IpNet>,
    /// Active health checks.
    pub health: HealthConfig,
    /// Passive health: ejection on a backend's own failures.
    pub passive: PassiveConfig,
    /// Retries on another backend.
    pub retry: RetryConfig,
    /// The data tier route, when set.
    pub cluster: Option<ClusterConfig>,
    /// The app tier: one pool of backends.
    #[serde(rename = "backend")]
    pub backends: Vec<BackendConfig>,
    /// TCP pools in front of PostgreSQL (docs/postgres.md). Read at start only.
    #[serde(rename = "tcp")]
    pub tcp: Vec<TcpConfig>,
}

/// How a backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin (nginx's): exact order, no bursts.
    RoundRobin,
    /// The less loaded of two backends drawn at random (power of two choices).
    LeastRequest,
}

/// Active health checks: `GET path` on each backend every `interval`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub path: String,
    /// Between checks (0: no active checks).
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub interval: Duration,
    /// Between checks while a backend's state is changing.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub fast_interval: Duration,
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub timeout: Duration,
    /// Failed checks in a row that take a backend down.
    pub fall: u32,
    /// Good checks in a row that bring it back.
    pub rise: u32,
}

/// Passive health: what a backend's answers to real requests say about it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// 5xx answers in a row that eject a backend (0: never on 5xx).
    pub consecutive_5xx: u32,
    /// The first ejection's length; each repeat doubles it.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub ejection: Duration,
    /// The longest ejection.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub max_ejection: Duration,
}

/// Retries on a different backend, under a budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries in all, the first included (1: no retries).
    pub attempts: u32,
    /// Retries allowed as a share of requests (0.2: one retry per five requests).
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub budget_min_per_second: u32,
}

/// The data tier route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The monitor whose view is followed; a group's monitors separated by commas, of
    /// which the leader is followed.
    pub monitor: String,
    /// Requests whose path starts with this go to the data tier.
    pub prefix: String,
}

/// One backend of the pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The name in `Keel-Backend`, the admin API and the metrics (default: host:port).
    #[serde(default)]
    pub name: String,
    /// `http://IP:PORT`, or `https://IP:PORT` for a backend on TLS ([`parse_backend_url`]).
    pub url: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8090)),
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            slow_start: Duration::from_secs(10),
            panic_threshold: 0,
            threads: 0,
            max_connections: 4096,
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            health: HealthConfig::default(),
            passive: PassiveConfig::default(),
            retry: RetryConfig::default(),
            cluster: None,
            backends: Vec::new(),
            tcp: Vec::new(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/health".to_owned(),
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
        }
    }
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            consecutive_5xx: 5,
            ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            budget_ratio: 0.2,
            budget_min_per_second: 3,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            monitor: "http://127.0.0.1:8070".to_owned(),
            prefix: "/v1/".to_owned(),
        }
    }
}

/// The most backends a pool may hold.
pub const MAX_BACKENDS: usize = 64;

/// What is wrong with a configuration: the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: shown,
            reason: e.to_string().trim().to_owned(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for tcp in &mut config.tcp {
            tcp.resolve_paths(dir);
        }
        config.check()?;
        Ok(config)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: "config".to_owned(),
            reason: e.to_string().trim().to_owned(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks every value and fills in backend names; on success the configuration can
    /// be used as it is.
    pub fn check(&mut self) -> Result<(), ConfigError> {
        if self.backends.is_empty() && self.cluster.is_none() && self.tcp.is_empty() {
            return Err(invalid(
                "backend",
                "no backends: give at least one [[backend]] (or --backend URL), a [cluster] route, or a [[tcp]] pool (or --tcp)",
            ));
        }
        let mut ports = HashSet::from([self.admin]);
        if self.serves_http() {
            ports.insert(self.listen);
        }
        for (i, tcp) in self.tcp.iter_mut().enumerate() {
            tcp.check(i, &mut ports)
                .map_err(|e| invalid(e.key, e.reason))?;
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(invalid(
                "backend",
                format!(
                    "{} backends: a pool holds at most {MAX_BACKENDS}",
                    self.backends.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut urls = HashSet::new();
        for (i, backend) in self.backends.iter_mut().enumerate() {
            let key = |field: &str| format!("backend[{i}].{field}");
            let addr =
                parse_backend_url(&backend.url).map_err(|reason| invalid(key("url"), reason))?;
            if backend.name.is_empty() {
                backend.name = addr.socket.to_string();
            }
            check_name(&backend.name).map_err(|reason| invalid(key("name"), reason))?;
            if !names.insert(backend.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} names two backends; names must be unique",
                        backend.name
                    ),
                ));
            }
            // One server, whichever way it is written (http or https, localhost or
            // 127.0.0.1): a port speaks one protocol.
            if !urls.insert(addr.socket) {
                return Err(invalid(
                    key("url"),
                    format!("{} is listed twice", backend.url),
                ));
            }
            if !(1..=1000).contains(&backend.weight) {
                return Err(invalid(
                    key("weight"),
                    format!("{} is out of range: weights are 1 to 1000", backend.weight),
                ));
            }
        }
        self.check_timing()?;
        if let Some(cluster) = &mut self.cluster {
            // One monitor, or a group's monitors separated by commas.
            let mut urls = Vec::new();
            for url in cluster.monitor.split(',').map(str::trim) {
                parse_backend_url(url).map_err(|reason| invalid("cluster.monitor", reason))?;
                urls.push(url.trim_end_matches('/').to_owned());
            }
            cluster.monitor = urls.join(",");
            if !cluster.prefix.starts_with('/') || cluster.prefix.len() < 2 {
                return Err(invalid(
                    "cluster.prefix",
                    format!("{:?} must be a path such as /v1/", cluster.prefix),
                ));
            }
        }
        Ok(())
    }

    /// Whether the HTTP front door runs: it has backends or the cluster route. A proxy of
    /// TCP pools alone does not listen on `listen`.
    pub fn serves_http(&self) -> bool {
        !self.backends.is_empty() || self.cluster.is_some()
    }

    /// Checks that the proxy can speak to every `https://` backend: it needs TLS of its
    /// own (`tls`: started with `--tls-cert`, `--tls-key` and `--tls-ca`) to check their
    /// certificates against the cluster CA and show its own. Kept apart from
    /// [`Config::check`] because TLS comes from flags, not from the file.
    pub fn check_tls(&self, tls: bool) -> Result<(), ConfigError> {
        if tls {
            return Ok(());
        }
        for (i, backend) in self.backends.iter().enumerate() {
            if parse_backend_url(&backend.url).is_ok_and(|a| a.scheme == Scheme::Https) {
                return Err(invalid(
                    format!("backend[{i}].url"),
                    format!(
                        "{} is an https:// backend, and this proxy has no TLS to reach it with: \
                         start the proxy with --tls-cert, --tls-key and --tls-ca (keel certs \
                         makes them), or give the backend as http://",
                        backend.url
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_timing(&self) -> Result<(), ConfigError> {
        let h = &self.health;
        if !h.path.starts_with('/') {
            return Err(invalid(
                "health.path",
                format!("{:?} must start with /", h.path),
            ));
        }
        if h.fall == 0 {
            return Err(invalid("health.fall", "must be at least 1"));
        }
        if h.rise == 0 {
            return Err(invalid("health.rise", "must be at least 1"));
        }
        if !h.interval.is_zero() {
            if h.timeout.is_zero() {
                return Err(invalid("health.timeout", "must be more than 0"));
            }
            if h.fast_interval.is_zero() {
                return Err(invalid("health.fast_interval", "must be more than 0"));
            }
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be more than 0"));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be more than 0"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        for (key, value) in [
            ("idle_timeout", self.idle_timeout),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        if self.panic_threshold > 100 {
            return Err(invalid(
                "panic_threshold",
                format!("{} is not a percentage (0 to 100)", self.panic_threshold),
            ));
        }
        let p = &self.passive;
        if p.ejection.is_zero() {
            return Err(invalid("passive.ejection", "must be more than 0"));
        }
        if p.max_ejection < p.ejection {
            return Err(invalid(
                "passive.max_ejection",
                "must not be shorter than passive.ejection",
            ));
        }
        let r = &self.retry;
        if !(1..=10).contains(&r.attempts) {
            return Err(invalid(
                "retry.attempts",
                format!("{} is out of range: 1 (no retries) to 10", r.attempts),
            ));
        }
        if !(0.0..=1.0).contains(&r.budget_ratio) || r.budget_ratio.is_nan() {
            return Err(invalid(
                "retry.budget_ratio",
                format!("{} is not a share between 0 and 1", r.budget_ratio),
            ));
        }
        Ok(())
    }
}

/// How the proxy speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP/1.1 (`http://`).
    Http,
    /// HTTP/1.1 over TLS (`https://`): the backend's certificate is checked against the
    /// cluster CA, and the proxy shows its own.
    Https,
}

impl Scheme {
    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a backend is and how it is spoken to, from its URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub scheme: Scheme,
    /// The host as the URL names it (an IP address, or `localhost`), without brackets:
    /// the name an `https://` backend's certificate must carry.
    pub host: String,
    /// The address connected to (`localhost` is 127.0.0.1).
    pub socket: SocketAddr,
}

/// `http://HOST[:PORT]` or `https://HOST[:PORT]`, where HOST is an IP address (IPv6 in
/// brackets) or `localhost`, with nothing after it: a backend is a server, not a path on
/// one. The port defaults to 80 for http and 443 for https.
pub fn parse_backend_url(url: &str) -> Result<BackendAddr, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{url:?} has a path; give the server only, e.g. {}://127.0.0.1:5056",
            scheme.as_str()
        ));
    }
    let not_ip = || {
        format!(
            "{url:?} is not {}://IP[:PORT] (host names other than localhost are not looked up)",
            scheme.as_str()
        )
    };
    // The host, and what follows it (empty, or ":PORT").
    let (host, after) = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').ok_or_else(not_ip)?,
        None => match authority.find(':') {
            Some(colon) => authority.split_at(colon),
            None => (authority, ""),
        },
    };
    let ip: std::net::IpAddr = if host.eq_ignore_ascii_case("localhost") {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse().map_err(|_| not_ip())?
    };
    // An IPv6 address is written in brackets, so that its colons are not taken for a port.
    if ip.is_ipv6() != authority.starts_with('[') {
        return Err(not_ip());
    }
    let port = match after {
        "" => scheme.default_port(),
        _ => after
            .strip_prefix(':')
            .and_then(|port| port.parse::<u16>().ok())
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("{url:?} has no valid port (1 to 65535) after its host"))?,
    };
    Ok(BackendAddr {
        scheme,
        host: host.to_ascii_lowercase(),
        socket: SocketAddr::new(ip, port),
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a name: 1 to 64 letters, digits, '-', '_', '.' or ':'"
        ))
    }
}

/// One `--backend URL[,weight=N][,name=NAME]` flag.
pub fn parse_backend_flag(flag: &str) -> Result<BackendConfig, String> {
    let mut parts = flag.split(',');
    let url = parts.next().unwrap_or_default().trim().to_owned();
    let mut backend = BackendConfig {
        name: String::new(),
        url,
        weight: 1,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("weight", n)) => {
                backend.weight = n
                    .trim()
                    .parse()
                    .map_err(|_| format!("weight={n} in {flag:?} is not a number"))?;
            }
            Some(("name", n)) => backend.name = n.trim().to_owned(),
            _ => {
                return Err(format!(
                    "{part:?} in {flag:?}: expected weight=N or name=NAME after the URL"
                ));
            }
        }
    }
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(text: &str) -> String {
        match Config::parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            Err(other) => other.to_string(),
            Ok(_) => "accepted".to_owned(),
        }
    }

    #[test]
    fn a_full_file_parses_with_every_section() {
        let config = Config::parse(
            r#"
            listen = "127.0.0.1:9080"
            balance = "least_request"
            slow_start = "0s"
            [health]
            interval = "500ms"
            rise = 1
            [passive]
            consecutive_5xx = 0
            [retry]
            attempts = 2
            [cluster]
            monitor = "http://127.0.0.1:8070/"
            [[backend]]
            url = "http://127.0.0.1:5056"
            weight = 3
            [[backend]]
            name = "b"
            url = "http://localhost:5057"
            "#,
        )
        .expect("valid");
        assert_eq!(config.listen.port(), 9080);
        assert_eq!(config.balance, Balance::LeastRequest);
        assert_eq!(config.health.interval, Duration::from_millis(500));
        assert_eq!(config.health.fall, 3, "unset keys keep their defaults");
        assert_eq!(config.backends[0].name, "127.0.0.1:5056");
        assert_eq!(config.backends[0].weight, 3);
        assert_eq!(config.backends[1].name, "b");
        assert_eq!(config.backends[1].weight, 1);
        assert_eq!(
            config.cluster.map(|c| c.monitor),
            Some("http://127.0.0.1:8070".to_owned())
        );
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let b = "[[backend]]\nurl = \"http://127.0.0.1:5056\"\n";
        assert_eq!(key_of(""), "backend");
        assert_eq!(
            key_of("[[backend]]\nurl = \"https://x\"\n"),
            "backend[0].url"
        );
        assert_eq!(
            key_of("[[backend]]\nurl = \"http://127.0.0.1:1/path\"\n"),
            "backend[0].url"
        );
        assert_eq!(key_of(&format!("{b}weight = 0\n")), "backend[0].weight");
        assert_eq!(key_of(&format!("{b}{b}")), "backend[1].name");
        assert_eq!(key_of(&format!("{b}name = \"a b\"\n")), "backend[0].name");
        assert_eq!(key_of(&format!("[health]\nfall = 0\n{b}")), "health.fall");
        assert_eq!(
            key_of(&format!("[retry]\nattempts = 11\n{b}")),
            "retry.attempts"
        );
        assert_eq!(
            key_of(&format!("[retry]\nbudget_ratio = 1.5\n{b}")),
            "retry.budget_ratio"
        );
        assert_eq!(
            key_of(&format!("panic_threshold = 101\n{b}")),
            "panic_threshold"
        );
        assert_eq!(
            key_of(&format!("max_connections = 0\n{b}")),
            "max_connections"
        );
        assert_eq!(
            key_of(&format!(
                "[passive]\nejection = \"10s\"\nmax_ejection = \"1s\"\n{b}"
            )),
            "passive.max_ejection"
        );
        assert_eq!(
            key_of("[cluster]\nmonitor = \"127.0.0.1:8070\"\n"),
            "cluster.monitor"
        );
        for key in [
            "idle_timeout",
            "header_timeout",
            "body_timeout",
            "send_timeout",
        ] {
            assert_eq!(key_of(&format!("{key} = \"0s\"\n{b}")), key);
        }
    }

    #[test]
    fn wire_timeouts_and_trusted_proxies_have_defaults_and_parse() {
        let b = "[[backend]]\nurl = \"http://127.0.0.1:5056\"\n";
        let config = Config::parse(b).expect("defaults");
        for timeout in [
            config.idle_timeout,
            config.header_timeout,
            config.body_timeout,
            config.send_timeout,
        ] {
            assert_eq!(timeout, Duration::from_secs(30));
        }
        assert!(
            config.trusted_proxies.is_empty(),
            "nobody is trusted unless named"
        );
        let config = Config::parse(&format!(
            "body_timeout = \"500ms\"\nsend_timeout = \"2s\"\n\
             trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n{b}"
        ))
        .expect("valid");
        assert_eq!(config.body_timeout, Duration::from_millis(500));
        assert_eq!(config.send_timeout, Duration::from_secs(2));
        assert_eq!(
            config.trusted_proxies,
            vec![
                IpNet::parse("127.0.0.1").expect("ip"),
                IpNet::parse("10.0.0.0/8").expect("net")
            ]
        );
        let err = Config::parse(&format!("trusted_proxies = [\"10.0.0.1/8\"]\n{b}"))
            .expect_err("host bits");
        assert!(err.to_string().contains("trusted_proxies"), "{err}");
        assert!(err.to_string().contains("first address"), "{err}");
    }

    #[test]
    fn syntax_errors_and_unknown_keys_say_where() {
        let err = Config::parse("[health]\nintervall = \"2s\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("intervall"), "{err}");
        let err = Config::parse("[health]\ninterval = \"soon\"\n").expect_err("bad duration");
        assert!(err.to_string().contains("soon"), "{err}");
        assert!(err.to_string().contains("interval"), "{err}");
        let err = Config::parse("listen = [").expect_err("not TOML");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn backend_urls_carry_their_scheme_and_default_the_port_by_it() {
        let addr = parse_backend_url("https://127.0.0.1:8443").expect("https");
        assert_eq!(addr.scheme, Scheme::Https);
        assert_eq!(addr.host, "127.0.0.1");
        assert_eq!(addr.socket, SocketAddr::from(([127, 0, 0, 1], 8443)));
        let addr = parse_backend_url("https://127.0.0.1/").expect("https, no port");
        assert_eq!(addr.socket.port(), 443, "https defaults to 443");
        let addr = parse_backend_url("http://10.0.0.1").expect("http, no port");
        assert_eq!((addr.scheme, addr.socket.port()), (Scheme::Http, 80));
        let addr = parse_backend_url("https://localhost:9000").expect("localhost");
        assert_eq!(
            addr.host, "localhost",
            "the certificate is checked for localhost"
        );
        assert_eq!(addr.socket, SocketAddr::from(([127, 0, 0, 1], 9000)));
        let addr = parse_backend_url("https://[::1]").expect("IPv6");
        assert_eq!(addr.host, "::1");
        assert_eq!(
            addr.socket,
            "[::1]:443".parse::<SocketAddr>().expect("addr")
        );
        let addr = parse_backend_url("http://[::1]:5056").expect("IPv6 with a port");
        assert_eq!(addr.socket.port(), 5056);
    }

    #[test]
    fn backend_urls_that_name_no_single_server_are_refused_with_why() {
        for (url, says) in [
            ("ftp://127.0.0.1:21", "not an http:// or https:// URL"),
            ("127.0.0.1:5056", "not an http:// or https:// URL"),
            ("https://127.0.0.1:8443/api", "has a path"),
            ("https://127.0.0.1:8443?x=1", "has a path"),
            (
                "https://app1.example:8443",
                "host names other than localhost",
            ),
            ("https://::1:8443", "not https://IP[:PORT]"),
            ("http://[127.0.0.1]:80", "not http://IP[:PORT]"),
            ("https://[::1", "not https://IP[:PORT]"),
            ("https://127.0.0.1:", "no valid port"),
            ("https://127.0.0.1:0", "no valid port"),
            ("https://127.0.0.1:70000", "no valid port"),
            ("http://[::1]x", "no valid port"),
        ] {
            let err = parse_backend_url(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn an_https_backend_needs_the_proxy_to_have_tls_and_the_error_says_how() {
        let config = Config::parse(
            "[[backend]]\nurl = \"http://127.0.0.1:5056\"\n\
             [[backend]]\nname = \"secure\"\nurl = \"https://127.0.0.1:5443\"\n",
        )
        .expect("https backends parse");
        assert_eq!(config.backends[1].name, "secure");
        assert_eq!(config.check_tls(true), Ok(()));
        let err = config.check_tls(false).expect_err("no TLS");
        let ConfigError::Invalid { key, reason } = &err else {
            panic!("{err}");
        };
        assert_eq!(key, "backend[1].url");
        for says in [
            "https://127.0.0.1:5443",
            "--tls-cert",
            "--tls-key",
            "--tls-ca",
            "http://",
        ] {
            assert!(reason.contains(says), "{reason}");
        }
        let plain = Config::parse("[[backend]]\nurl = \"http://127.0.0.1:5056\"\n").expect("plain");
        assert_eq!(plain.check_tls(false), Ok(()), "plain backends need no TLS");
    }

    #[test]
    fn one_server_written_two_ways_is_listed_twice() {
        let err = Config::parse(
            "[[backend]]\nurl = \"http://127.0.0.1:5056\"\n\
             [[backend]]\nname = \"b\"\nurl = \"https://localhost:5056\"\n",
        )
        .expect_err("the same port");
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn backend_flags_take_a_weight_and_a_name() {
        assert_eq!(
            parse_backend_flag("http://127.0.0.1:5056,weight=3,name=s1"),
            Ok(BackendConfig {
                name: "s1".into(),
                url: "http://127.0.0.1:5056".into(),
                weight: 3
            })
        );
        assert!(parse_backend_flag("http://127.0.0.1:5056,weight=x").is_err());
        assert!(parse_backend_flag("http://127.0.0.1:5056,colour=red").is_err());
    }
}

/// The `[[tcp]]` sections, checked with the rest of the file.
#[cfg(test)]
mod tcp_tests {
    use crate::config::Config;
    use crate::tcp::config::{TcpBalance, parse_servers_flag};

    fn error_of(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const SERVERS: &str = "[[tcp.server]]\nname = \"pg1\"\naddr = \"127.0.0.1:5433\"\n\
                           [[tcp.server]]\nname = \"pg2\"\naddr = \"127.0.0.1:5434\"\n";

    #[test]
    fn a_pool_alone_is_a_whole_configuration_with_every_default() {
        let config = Config::parse(&format!("[[tcp]]\n{SERVERS}")).expect("parses");
        let tcp = &config.tcp[0];
        assert_eq!(tcp.name, "postgres");
        assert_eq!(tcp.read_write.to_string(), "127.0.0.1:5000");
        assert_eq!(tcp.read_only.to_string(), "127.0.0.1:5001");
        assert_eq!(tcp.balance, TcpBalance::RoundRobin);
        assert_eq!(tcp.max_lag, std::time::Duration::from_secs(1));
        assert_eq!((tcp.fall, tcp.rise), (2, 2));
        assert_eq!(tcp.user, "keel");
        assert_eq!(tcp.servers[1].name, "pg2");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        for (section, key) in [
            ("balance = \"random\"", "balance"),
            ("max_lag = \"soon\"", "max_lag"),
            ("max_lag = \"0s\"", "tcp[0].max_lag"),
            ("fall = 0", "tcp[0].fall"),
            ("read_only = \"127.0.0.1:5000\"", "tcp[0].read_only"),
            (
                "password = \"a\"\npassword_file = \"/x\"",
                "tcp[0].password_file",
            ),
            ("password_file = \"/no/such/file\"", "tcp[0].password_file"),
            ("name = \"a b\"", "tcp[0].name"),
            ("colour = \"blue\"", "colour"),
        ] {
            let text = format!("[[tcp]]\n{section}\n{SERVERS}");
            let e = error_of(&text);
            assert!(e.contains(key), "{section}: {e}");
        }
        for (server, key) in [
            ("addr = \"localhost:5433\"", "tcp[0].server[0].addr"),
            ("addr = \"127.0.0.1:0\"", "tcp[0].server[0].addr"),
            ("name = \"x\"", "addr"),
        ] {
            let e = error_of(&format!("[[tcp]]\n[[tcp.server]]\n{server}\n"));
            assert!(e.contains(key), "{server}: {e}");
        }
        let e = error_of("[[tcp]]\n");
        assert!(e.contains("tcp[0].server: no servers"), "{e}");
        let twice = "[[tcp]]\n[[tcp.server]]\naddr = \"127.0.0.1:5433\"\n\
                     [[tcp.server]]\naddr = \"127.0.0.1:5433\"\n";
        assert!(error_of(twice).contains("tcp[0].server[1].addr: 127.0.0.1:5433 is listed twice"));
        let clash = format!(
            "listen = \"127.0.0.1:5000\"\n[[backend]]\nurl = \"http://127.0.0.1:5056\"\n[[tcp]]\n{SERVERS}"
        );
        assert!(error_of(&clash).contains("tcp[0].read_write: 127.0.0.1:5000 is already a port"));
    }

    #[test]
    fn the_servers_flag_takes_names_or_bare_addresses() {
        let servers = parse_servers_flag("pg2=127.0.0.1:5434, 127.0.0.1:5435");
        assert_eq!(servers[0].name, "pg2");
        assert_eq!(servers[1].addr, "127.0.0.1:5435");
        assert_eq!(servers[1].name, "");
    }
}
