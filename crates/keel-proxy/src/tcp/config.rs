//! A `[[tcp]]` section of the proxy's configuration: one PostgreSQL pool, its two ports
//! and its servers. Checked with the rest of the file ([`crate::config::Config::check`]),
//! each error naming its key (`tcp[0].server[1].addr`).
//!
//! ```toml
//! [[tcp]]
//! name = "postgres"
//! read_write = "127.0.0.1:5000"
//! read_only = "127.0.0.1:5001"
//! balance = "round_robin"          # or "least_connections"
//! max_lag = "1s"
//! user = "keel"
//! password_file = "keel-data/pg.password"
//! monitor = "http://127.0.0.1:8071"   # the read-write port follows its primary
//! [[tcp.server]]
//! name = "pg1"
//! addr = "127.0.0.1:5433"
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pools::Policy;

/// A bad value: its key (`tcp[0].server[1].addr`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

/// One TCP pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Its name in the logs, the admin API and the metrics.
    pub name: String,
    /// Where clients connect to reach the primary.
    pub read_write: SocketAddr,
    /// Where clients connect to reach a standby (the primary when none is usable).
    pub read_only: SocketAddr,
    /// How the read-only port picks a standby.
    pub balance: TcpBalance,
    /// A standby whose replay is further behind leaves the read-only pool.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub max_lag: Duration,
    /// How long a server may take to accept a relayed connection before the next is
    /// tried.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub connect_timeout: Duration,
    /// The checks' role.
    pub user: String,
    /// The checks' password, written in the file.
    pub password: Option<String>,
    /// A file holding the checks' password (relative to the configuration file).
    pub password_file: Option<PathBuf>,
    /// The database the checks connect to.
    pub dbname: String,
    /// Between checks of each server.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub check_interval: Duration,
    /// How long one check may take.
    #[serde(deserialize_with = "keel_core::duration::deserialize")]
    pub check_timeout: Duration,
    /// Failed checks in a row that take a server out.
    pub fall: u32,
    /// Good checks in a row that bring it back.
    pub rise: u32,
    /// The servers, primary and standbys alike: the checks find out which is which.
    #[serde(rename = "server")]
    pub servers: Vec<TcpServerConfig>,
    /// The monitor (or a group's monitors, comma-separated) whose word decides which
    /// server takes the read-write port: the servers' names are its node ids.
    pub monitor: Option<String>,
}

/// How the read-only port picks a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpBalance {
    /// Each in turn.
    RoundRobin,
    /// The one with the fewest open sessions.
    LeastConnections,
}

/// One PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpServerConfig {
    /// Its name (default: its address).
    #[serde(default)]
    pub name: String,
    /// `IP:PORT`.
    pub addr: String,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            name: "postgres".to_owned(),
            read_write: SocketAddr::from(([127, 0, 0, 1], 5000)),
            read_only: SocketAddr::from(([127, 0, 0, 1], 5001)),
            balance: TcpBalance::RoundRobin,
            max_lag: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            // The role of keel's own servers (`keel pg`).
            user: "keel".to_owned(),
            password: None,
            password_file: None,
            dbname: "postgres".to_owned(),
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_secs(1),
            fall: 2,
            rise: 2,
            servers: Vec::new(),
            monitor: None,
        }
    }
}

/// The most servers a TCP pool may hold.
pub const MAX_SERVERS: usize = 16;

impl TcpConfig {
    /// What the pools' decisions need.
    pub fn policy(&self) -> Policy {
        Policy {
            fall: self.fall,
            rise: self.rise,
            max_lag: self.max_lag,
        }
    }

    /// The checks' password: the file's (read now), else the one written here.
    pub fn read_password(&self) -> Result<Option<String>, String> {
        match &self.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|p| Some(p.trim().to_owned()))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            None => Ok(self.password.clone()),
        }
    }

    /// Makes a relative `password_file` relative to `dir`, the configuration file's.
    pub fn resolve_paths(&mut self, dir: &Path) {
        if let Some(file) = &self.password_file
            && file.is_relative()
        {
            self.password_file = Some(dir.join(file));
        }
    }

    /// Checks section `i`: every key, the servers' names and addresses, and the password
    /// file readable.
    pub fn check(&mut self, i: usize, taken: &mut HashSet<SocketAddr>) -> Result<(), Invalid> {
        let key = |field: &str| format!("tcp[{i}].{field}");
        let invalid = |field: &str, reason: String| Invalid {
            key: key(field),
            reason,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "name",
                format!("{:?} must be letters, digits, '-', '_' or '.'", self.name),
            ));
        }
        for (field, addr) in [
            ("read_write", self.read_write),
            ("read_only", self.read_only),
        ] {
            if !taken.insert(addr) {
                return Err(invalid(
                    field,
                    format!("{addr} is already a port of this proxy"),
                ));
            }
        }
        for (field, value) in [
            ("max_lag", self.max_lag),
            ("connect_timeout", self.connect_timeout),
            ("check_interval", self.check_interval),
            ("check_timeout", self.check_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be more than 0".to_owned()));
            }
        }
        if self.fall == 0 {
            return Err(invalid("fall", "must be at least 1".to_owned()));
        }
        if self.rise == 0 {
            return Err(invalid("rise", "must be at least 1".to_owned()));
        }
        if self.user.is_empty() {
            return Err(invalid("user", "must not be empty".to_owned()));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid(
                "password_file",
                "give password or password_file, not both".to_owned(),
            ));
        }
        self.read_password()
            .map_err(|reason| invalid("password_file", reason))?;
        if self.servers.is_empty() {
            return Err(invalid(
                "server",
                "no servers: give at least one [[tcp.server]] with an addr".to_owned(),
            ));
        }
        if self.servers.len() > MAX_SERVERS {
            return Err(invalid(
                "server",
                format!(
                    "{} servers: a TCP pool holds at most {MAX_SERVERS}",
                    self.servers.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (j, server) in self.servers.iter_mut().enumerate() {
            let field = |f: &str| format!("server[{j}].{f}");
            let addr: SocketAddr = server.addr.parse().map_err(|_| {
                invalid(
                    &field("addr"),
                    format!("{:?} is not IP:PORT, e.g. 127.0.0.1:5433", server.addr),
                )
            })?;
            if addr.port() == 0 {
                return Err(invalid(
                    &field("addr"),
                    "port 0 is not a server's".to_owned(),
                ));
            }
            if !addrs.insert(addr) {
                return Err(invalid(&field("addr"), format!("{addr} is listed twice")));
            }
            if server.name.is_empty() {
                server.name = addr.to_string();
            }
            if !names.insert(server.name.clone()) {
                return Err(invalid(
                    &field("name"),
                    format!("{:?} names two servers; names must be unique", server.name),
                ));
            }
        }
        Ok(())
    }
}

/// `--tcp NAME=IP:PORT,…`: the servers of one pool, named or not.
/// Addresses are checked with the rest of the configuration.
pub fn parse_servers_flag(flag: &str) -> Vec<TcpServerConfig> {
    flag.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, addr)) => TcpServerConfig {
                name: name.trim().to_owned(),
                addr: addr.trim().to_owned(),
            },
            None => TcpServerConfig {
                name: String::new(),
                addr: item.to_owned(),
            },
        })
        .collect()
}
