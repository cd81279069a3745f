//! What a run does: [`Settings`] as the command line gives them, checked into a [`Plan`].
//!
//! Every limit a run has lives here, so that a bad flag is refused before a single request
//! is sent, with a message that names the flag. The one rule that is not about numbers:
//! load goes only to this machine (127.0.0.0/8, `::1`, `localhost`) unless the caller
//! says `--allow-remote`.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::spread::SpreadBy;

/// The most connections (or requests in flight) a run may open.
pub const MAX_CONNECTIONS: u32 = 10_000;
/// The highest `--rate`, in requests per second.
pub const MAX_RATE: u32 = 10_000_000;
/// The longest `--duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most `--requests`.
pub const MAX_REQUESTS: u64 = 100_000_000;
/// Connections `--rate` opens when `--connections` is not given.
pub const DEFAULT_RATE_CONNECTIONS: u32 = 32;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Open loop: `per_second` requests a second, each sent at its intended time on one
    /// of `connections` keep-alive connections, whatever the answers do. Latency counts
    /// from the intended time, so a stall that holds requests back shows in it.
    Rate {
        /// Requests per second.
        per_second: u32,
        /// Connections that share them.
        connections: u32,
    },
    /// Closed loop: this many connections, one request in flight on each, the next sent
    /// as soon as the previous one is answered.
    Concurrency(u32),
}

impl Pace {
    /// How many connections the run keeps open.
    pub fn connections(self) -> u32 {
        match self {
            Pace::Rate { connections, .. } => connections,
            Pace::Concurrency(n) => n,
        }
    }
}

/// When a run stops sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// After this long.
    Duration(Duration),
    /// After this many requests.
    Requests(u64),
}

/// One `Name: value` request header from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLine {
    /// The header's name.
    pub name: HeaderName,
    /// Its value.
    pub value: HeaderValue,
}

impl FromStr for HeaderLine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not a header: expected `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of header {name} is not valid"))?;
        Ok(HeaderLine { name, value })
    }
}

/// A run as asked for; [`Plan::new`] checks it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL every request (but the writes) goes to.
    pub url: String,
    /// Open or closed loop.
    pub pace: Pace,
    /// When to stop.
    pub bound: Bound,
    /// The method of the requests that are not writes.
    pub method: Method,
    /// Their body (empty for none).
    pub body: Bytes,
    /// Extra request headers, on every request.
    pub headers: Vec<HeaderLine>,
    /// How long one request may take before it counts as a timeout.
    pub timeout: Duration,
    /// The share of requests, 0 to 1, that are writes `PUT /v1/kv/load-<run>-<n>`.
    pub write_ratio: f64,
    /// Where the backend that answered is read from.
    pub spread_by: SpreadBy,
    /// Allow a target outside this machine.
    pub allow_remote: bool,
    /// TLS towards an `https://` target (`--tls-ca`): its certificate checked against the
    /// cluster CA.
    pub tls: Option<keel_auth::tls::ClientConfig>,
}

/// A checked [`Settings`]: the target split into what a connection needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The settings, unchanged.
    pub settings: Settings,
    /// Where requests go.
    pub target: Target,
}

/// The parts of the URL a connection needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// `http://host:port` (or `https://`): where writes (`/v1/kv/…`) and read-backs go.
    pub origin: String,
    /// The URL is `https://`.
    pub https: bool,
    /// `host:port`, for DNS and the `Host` header.
    pub authority: String,
    /// The host alone (no brackets around an IPv6 address).
    pub host: String,
    /// The port (80, or 443 for https, when the URL names none).
    pub port: u16,
    /// The path and query of the requests that are not writes.
    pub path_and_query: String,
}

/// What is wrong with the settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The URL does not parse, or is not `http://host[:port][/path]`.
    #[error("{url:?} is not a URL keel load can use: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The URL names a host outside this machine and `--allow-remote` was not given.
    #[error(
        "{url} is not on this machine: keel load sends load only to 127.0.0.0/8, ::1 or \
         localhost. Pass --allow-remote to load a host you are responsible for"
    )]
    NotLocal {
        /// The URL given.
        url: String,
    },
    /// A number out of its range.
    #[error("{flag} {why}")]
    OutOfRange {
        /// The flag, as typed (`--rate`).
        flag: &'static str,
        /// What its range is.
        why: String,
    },
}

impl Plan {
    /// Checks `settings`: the URL is `http://` on this machine (or `allow_remote`), and
    /// every number is inside its range.
    pub fn new(settings: Settings) -> Result<Plan, PlanError> {
        let target = Target::parse(&settings.url)?;
        if target.https && settings.tls.is_none() {
            return Err(PlanError::BadUrl {
                url: settings.url.clone(),
                why: "an https:// target needs --tls-ca, the CA to check its certificate against"
                    .to_owned(),
            });
        }
        if !settings.allow_remote && !is_local_host(&target.host) {
            return Err(PlanError::NotLocal {
                url: settings.url.clone(),
            });
        }
        match settings.pace {
            Pace::Rate {
                per_second,
                connections,
            } => {
                in_range("--rate", u64::from(per_second), u64::from(MAX_RATE))?;
                in_range(
                    "--connections",
                    u64::from(connections),
                    u64::from(MAX_CONNECTIONS),
                )?;
            }
            Pace::Concurrency(n) => {
                in_range("--concurrency", u64::from(n), u64::from(MAX_CONNECTIONS))?;
            }
        }
        match settings.bound {
            Bound::Duration(d) => {
                if d.is_zero() || d > MAX_DURATION {
                    return Err(PlanError::OutOfRange {
                        flag: "--duration",
                        why: format!("must be above 0 and at most {}s", MAX_DURATION.as_secs()),
                    });
                }
            }
            Bound::Requests(n) => in_range("--requests", n, MAX_REQUESTS)?,
        }
        if settings.timeout.is_zero() {
            return Err(PlanError::OutOfRange {
                flag: "--timeout",
                why: "must be above 0".to_owned(),
            });
        }
        if !(0.0..=1.0).contains(&settings.write_ratio) {
            return Err(PlanError::OutOfRange {
                flag: "--write-ratio",
                why: format!("must be from 0 to 1, not {}", settings.write_ratio),
            });
        }
        Ok(Plan { settings, target })
    }
}

fn in_range(flag: &'static str, value: u64, max: u64) -> Result<(), PlanError> {
    if value == 0 || value > max {
        return Err(PlanError::OutOfRange {
            flag,
            why: format!("must be from 1 to {max}, not {value}"),
        });
    }
    Ok(())
}

impl Target {
    /// Splits an `http(s)://host[:port][/path][?query]` URL.
    pub fn parse(url: &str) -> Result<Target, PlanError> {
        let bad = |why: &str| PlanError::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| bad("expected e.g. http://127.0.0.1:8080/"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) | None => return Err(bad("it must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("it names no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user names and passwords in URLs are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("it names no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let path_and_query = if path_and_query.is_empty() {
            "/".to_owned()
        } else {
            path_and_query
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Target {
            url: url.to_owned(),
            origin: format!("{}://{authority}", if https { "https" } else { "http" }),
            https,
            authority,
            host,
            port,
            path_and_query,
        })
    }
}

/// Whether a host name or address is this machine by its name alone: an address in
/// 127.0.0.0/8 or `::1`, or `localhost`. The addresses a name resolves to are checked
/// again before connecting.
pub fn is_local_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Checks a URL other than the target (`--verify-url`, `--monitor`): `http://` on this
/// machine unless `allow_remote`.
pub fn check_url(url: &str, allow_remote: bool) -> Result<Target, PlanError> {
    let target = Target::parse(url)?;
    if !allow_remote && !is_local_host(&target.host) {
        return Err(PlanError::NotLocal {
            url: url.to_owned(),
        });
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Settings {
        Settings {
            url: url.to_owned(),
            pace: Pace::Concurrency(4),
            bound: Bound::Duration(Duration::from_secs(1)),
            method: Method::GET,
            body: Bytes::new(),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            write_ratio: 0.0,
            spread_by: SpreadBy::Auto,
            allow_remote: false,
            tls: None,
        }
    }

    #[test]
    fn a_loopback_url_is_split_into_its_parts() {
        let plan = Plan::new(settings("http://127.0.0.2:8080/data?x=1")).expect("valid");
        assert_eq!(plan.target.origin, "http://127.0.0.2:8080");
        assert_eq!(plan.target.authority, "127.0.0.2:8080");
        assert_eq!(plan.target.path_and_query, "/data?x=1");
        let plan = Plan::new(settings("http://localhost")).expect("valid");
        assert_eq!(plan.target.port, 80);
        assert_eq!(plan.target.path_and_query, "/");
        let plan = Plan::new(settings("http://[::1]:9000/")).expect("valid");
        assert_eq!(plan.target.host, "::1");
        assert_eq!(plan.target.origin, "http://[::1]:9000");
    }

    #[test]
    fn a_remote_url_is_refused_unless_allowed() {
        for url in [
            "http://10.0.0.1:80/",
            "http://example.com/",
            "http://128.0.0.1/",
        ] {
            let err = Plan::new(settings(url)).expect_err("remote");
            assert!(matches!(err, PlanError::NotLocal { .. }), "{url}: {err}");
            assert!(err.to_string().contains("--allow-remote"), "{err}");
        }
        let mut remote = settings("http://example.com/");
        remote.allow_remote = true;
        assert!(Plan::new(remote).is_ok());
    }

    #[test]
    fn urls_that_are_not_http_or_https_with_a_ca_are_refused_with_the_reason() {
        let err = Plan::new(settings("https://127.0.0.1/")).expect_err("https without a CA");
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        let target = Target::parse("https://127.0.0.1/").expect("https parses");
        assert_eq!(
            (target.port, target.origin.as_str()),
            (443, "https://127.0.0.1:443")
        );
        let err = Plan::new(settings("127.0.0.1:80")).expect_err("no scheme");
        assert!(err.to_string().contains("http://"), "{err}");
        let err = Plan::new(settings("http://u:p@127.0.0.1/")).expect_err("user info");
        assert!(err.to_string().contains("passwords"), "{err}");
    }

    #[test]
    fn numbers_out_of_range_name_their_flag() {
        let mut s = settings("http://127.0.0.1/");
        s.pace = Pace::Rate {
            per_second: 0,
            connections: 4,
        };
        assert!(
            Plan::new(s.clone())
                .expect_err("rate 0")
                .to_string()
                .starts_with("--rate")
        );
        s.pace = Pace::Concurrency(MAX_CONNECTIONS + 1);
        assert!(
            Plan::new(s.clone())
                .expect_err("too many")
                .to_string()
                .starts_with("--concurrency")
        );
        s.pace = Pace::Concurrency(1);
        s.bound = Bound::Duration(Duration::ZERO);
        assert!(
            Plan::new(s.clone())
                .expect_err("zero")
                .to_string()
                .starts_with("--duration")
        );
        s.bound = Bound::Requests(0);
        assert!(
            Plan::new(s.clone())
                .expect_err("zero")
                .to_string()
                .starts_with("--requests")
        );
        s.bound = Bound::Requests(1);
        s.write_ratio = 1.5;
        assert!(
            Plan::new(s)
                .expect_err("ratio")
                .to_string()
                .starts_with("--write-ratio")
        );
    }

    #[test]
    fn header_lines_parse_or_say_what_is_wrong() {
        let h: HeaderLine = "X-Test:  yes ".parse().expect("valid");
        assert_eq!(h.name.as_str(), "x-test");
        assert_eq!(h.value, "yes");
        assert!("no colon".parse::<HeaderLine>().is_err());
        assert!("bad name: x".parse::<HeaderLine>().is_err());
    }
}
