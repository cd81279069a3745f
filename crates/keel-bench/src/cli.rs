//! Command-line flags.
//!
//! Two modes. Without a subcommand, the throughput run (`--target … --url …`), as
//! `scripts/bench/replication.sh` calls it. With `failover`, the writer of
//! `scripts/bench/failover.sh`: it writes until told to stop while the script kills and
//! restarts the primary, and reports the write-unavailability windows and lost writes.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Write benchmarks: the same load against keel, etcd or Redis.
#[derive(Debug, Parser)]
#[command(
    name = "keel-writebench",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Option<Mode>,

    /// The throughput run's flags, when no subcommand is given.
    #[command(flatten)]
    pub throughput: Option<Args>,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Write through kill -9 cycles: measure unavailability windows and lost writes.
    Failover(FailoverArgs),
    /// PostgreSQL: one writer committing through kill -9 cycles of the primary's
    /// postmaster, which this mode carries out itself.
    PgFailover(PgFailoverArgs),
}

/// Closed-loop write benchmark: the same load against keel, etcd or Redis.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The system under test; decides what one write is.
    #[arg(long, value_enum)]
    pub target: Target,

    /// Where to send writes: `http://host:port` for keel (the primary) and etcd (any
    /// member's client URL), `redis://host:port` for Redis (the master).
    #[arg(long)]
    pub url: String,

    /// Number of connections, each with one write in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// How long to measure, after the warm-up (`10s`, `1500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How long to load before measuring; those writes are not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Size of every value in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub value_size: u32,

    /// A write that takes longer than this is abandoned and counted as an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,

    /// The CA (PEM) to check an `https://` target's certificate against (keel on TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// The failover writer. It finds the primary itself and follows it through failovers;
/// the script tells it when it kills (`SIGUSR1`), when writes are back (`SIGUSR2`) and
/// when to stop (`SIGTERM` or `SIGINT`), and it then reads every acknowledged write back.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The system under test; decides what one write is and how the primary is found.
    #[arg(long, value_enum)]
    pub target: Target,

    /// Where to find the primary, comma-separated: keel's monitor URL
    /// (`http://127.0.0.1:8070`, asks for its view), every etcd member's client URL
    /// (asks each `/v3/maintenance/status` which one leads), or every Redis Sentinel
    /// (`redis://127.0.0.1:26379`, asks `SENTINEL get-master-addr-by-name`).
    #[arg(long, required = true, value_delimiter = ',')]
    pub discover: Vec<String>,

    /// The Sentinel master name (Redis only).
    #[arg(long, default_value = "mymaster")]
    pub master_name: String,

    /// Number of writers, each with one write in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub concurrency: u32,

    /// Writes per second over all writers; 0 is as fast as acknowledgements come.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,

    /// Size of every value in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub value_size: u32,

    /// A write that takes longer than this is abandoned (not acknowledged); the writer
    /// reconnects and tries again with a new key.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Pause after a failed attempt before the next one.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub retry_pause: Duration,

    /// Every key starts with this, then `-<writer>-<attempt>`.
    #[arg(long, default_value = "fo")]
    pub key_prefix: String,

    /// Rewritten every 50 ms with `{"acked", "attempts", "kills", "recovered", …}` so
    /// that a script can wait for writes to flow; created once the signals are handled.
    #[arg(long)]
    pub status_file: Option<PathBuf>,

    /// Stop by itself after this long, in case nobody says stop.
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    pub max_duration: Duration,

    /// How long to keep trying to read the acknowledged writes back at the end.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub verify_timeout: Duration,

    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// The PostgreSQL failover driver: one writer on a multi-host connection that finds the
/// primary of any of the three servers, and `--cycles` kills of the primary (its whole
/// node, or its postmaster alone), each followed by the member's rejoin. The same for any system that runs three
/// PostgreSQL servers on 127.0.0.1 (keel's keepers, Patroni, pg_auto_failover).
#[derive(Debug, clap::Args)]
pub struct PgFailoverArgs {
    /// What the report calls the system under test (`keel`, `patroni`, …).
    #[arg(long)]
    pub system: String,

    /// The three servers' ports on 127.0.0.1, comma-separated, in member order.
    #[arg(long, required = true, value_delimiter = ',')]
    pub ports: Vec<u16>,

    /// Their data directories, in the same order: the primary's postmaster pid is read
    /// from `<dir>/postmaster.pid`.
    #[arg(long, required = true, value_delimiter = ',')]
    pub data_dirs: Vec<PathBuf>,

    /// What a kill takes: the primary's whole node (its agent with every process of it,
    /// its postmaster with every backend), or its postmaster alone (the server crashes,
    /// the agent lives).
    #[arg(long, value_enum, default_value_t = KillMode::Node)]
    pub kill: KillMode,

    /// Files holding each member's agent pid (keel keeper, patroni, `pg_autoctl run`), in
    /// member order, read at each kill: the script rewrites one when it starts that
    /// agent again. Needed with `--kill node`.
    #[arg(long, value_delimiter = ',', required_if_eq("kill", "node"))]
    pub agent_pid_files: Vec<PathBuf>,

    /// The role the writer logs in as.
    #[arg(long, default_value = "postgres")]
    pub user: String,

    /// A file holding its password (none: trust).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// The database written to.
    #[arg(long, default_value = "postgres")]
    pub dbname: String,

    /// Kill cycles.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub cycles: u32,

    /// Time between two attempts of the writer (an INSERT, or a connection attempt
    /// after an error).
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub interval: Duration,

    /// A COMMIT (or a connection) that takes longer than this is abandoned, not
    /// acknowledged; the writer reconnects.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Steady writes before each kill.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,

    /// How long any one wait (writes back, the member a standby again) may take before
    /// the run stops and reports the cycles done.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub step_timeout: Duration,

    /// Run with `sh -c` once writes flow again after a kill, with `MEMBER` (1, 2 or 3),
    /// `MEMBER_PORT` and `MEMBER_DATA_DIR` set: how the system's operator starts the
    /// killed member again. None: the system restarts its server by itself.
    #[arg(long)]
    pub rejoin_command: Option<String>,

    /// Run with `sh -c` until it succeeds, before each kill and to end each cycle: the
    /// system's own "every member is back" check, on top of this mode's (one primary,
    /// the other two streaming from it).
    #[arg(long)]
    pub ready_command: Option<String>,

    /// Stop by itself after this long, whatever is left to do.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub max_duration: Duration,

    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// What `pg-failover` kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KillMode {
    /// The agent's process group and tree, the postmaster and its tree: the machine
    /// gone, so every system must fail over.
    Node,
    /// The postmaster alone: the agent lives and may restart it in place.
    Postmaster,
}

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// keel node primary: `PUT /v1/kv/{key}`.
    Keel,
    /// etcd v3 JSON gateway: `POST /v3/kv/put`.
    Etcd,
    /// Redis master: `SET` then `WAIT 1 0`.
    Redis,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Keel => "keel",
            Self::Etcd => "etcd",
            Self::Redis => "redis",
        })
    }
}

/// Parses `250ms`, `10s`, `1.5s` or `2m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like 10s, 500ms or 1m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}`; use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("`{text}`: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
