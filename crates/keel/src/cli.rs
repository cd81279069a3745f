//! The command line: one clap-derived struct per subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keel_core::{NodeId, Role};

/// Fault tolerance you can run, break and prove.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "KEEL_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a data node: a durable store that is primary or standby of a replicated group.
    Node(NodeArgs),
    /// Talk to a running data tier: read and write data, show state, kill the primary.
    Client(ClientArgs),
    /// Start a whole data tier on this machine (a primary and its standbys) in the foreground.
    Up(UpArgs),
    /// Run the monitor: it assigns roles to the data nodes and fails over automatically.
    Monitor(MonitorArgs),
    /// Run the front door: an HTTP load balancer with health checks, retries and a route
    /// that follows the data tier's primary.
    Proxy(ProxyArgs),
    /// Run an app service: hello, a visits counter kept in the data tier, /data.
    Service(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's name, e.g. app1 (letters, digits, '-' and '_').
    #[arg(long)]
    pub id: NodeId,

    /// Address to serve the HTTP API and replication on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// URL other nodes and clients should use to reach this node [default: http://<listen>].
    #[arg(long)]
    pub advertise: Option<String>,

    /// Directory for the node's durable state (created when missing).
    #[arg(long)]
    pub data_dir: PathBuf,

    /// The node's role in its group, fixed by hand. Without it, --monitor assigns it.
    #[arg(long, value_parser = parse_role, required_unless_present = "monitor", conflicts_with = "monitor")]
    pub role: Option<Role>,

    /// The monitor's URL: it assigns this node's role, standbys and epoch, and fails over
    /// automatically (see docs/failover.md).
    #[arg(long, value_name = "URL", conflicts_with_all = ["standbys", "epoch", "async_replication"])]
    pub monitor: Option<String>,

    /// A standby to replicate to, as its base URL (repeat for several). Primary only.
    #[arg(long = "standby", value_name = "URL")]
    pub standbys: Vec<String>,

    /// Acknowledge writes once committed locally, without waiting for the standbys.
    /// Writes acknowledged in the last moments before a primary dies may then be lost.
    #[arg(long = "async")]
    pub async_replication: bool,

    /// Start a new epoch as primary (a manual promotion). Must exceed every epoch this
    /// node has seen; standbys then refuse the older primary.
    #[arg(long)]
    pub epoch: Option<u64>,

    /// How long a write waits for the sync standbys before it is answered with 503.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub sync_timeout: Duration,

    /// How many log entries to keep behind the latest snapshot; older ones are truncated,
    /// and a standby that needs them gets a snapshot instead.
    #[arg(long, default_value_t = 10_000)]
    pub log_retain: u64,

    /// File holding the admin token (else the KEEL_TOKEN variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The monitor that knows which node is primary [default: http://127.0.0.1:8070;
    /// when that one does not answer, the client talks to http://127.0.0.1:8081].
    #[arg(long, global = true, value_name = "URL", env = "KEEL_MONITOR_URL")]
    pub monitor: Option<String>,

    /// Talk to this node directly, without asking the monitor (a standby works too:
    /// writes are sent on to the primary it names).
    #[arg(long, global = true, value_name = "URL", env = "KEEL_NODE_URL")]
    pub node: Option<String>,

    /// Print JSON instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,

    /// File holding the admin token (else KEEL_TOKEN, else ./keel-data/admin.token).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,

    /// How long to wait for each answer.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long to keep retrying through a failover (unreachable primary, 503 with
    /// Retry-After, a standby's 421) before giving up.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub retry_for: Duration,

    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show the entries map of the primary, the standby(s) or all nodes.
    State {
        #[arg(value_enum, default_value_t = StateWhich::All)]
        which: StateWhich,
    },
    /// Merge `key=value` lines from a file into the entries map (one pair a line; blank
    /// lines and '#' comments are ignored); prints the updated map.
    Update {
        #[arg(long)]
        file: PathBuf,
    },
    /// Set one or more keys of the key/value space: `keel client set a=1 b=2`.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Read a key of the key/value space, or list the keys when none is given.
    Get { key: Option<String> },
    /// Increment a counter and print its new value.
    Incr {
        name: String,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// End the primary process at once (needs the admin token).
    KillPrimary {
        /// Then follow the monitor's events until a standby is promoted (at most 10 s).
        #[arg(long)]
        watch: bool,
    },
    /// Switch the primary role to a standby by hand (needs the admin token).
    Failover {
        /// The standby to promote [default: the most up-to-date promotable one].
        #[arg(long, value_name = "NODE")]
        to: Option<NodeId>,
    },
    /// Show the monitor's view of the cluster: epoch, primary, every node.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateWhich {
    Primary,
    Standby,
    All,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many data nodes (app1..appN); the monitor makes one primary, the rest standbys.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,

    /// Where the monitor and the nodes keep their data and where the admin token is written.
    #[arg(long, default_value = "./keel-data")]
    pub data_dir: PathBuf,

    /// Port of the first node; the others take the ports after it.
    #[arg(long, default_value_t = 8081)]
    pub base_port: u16,

    /// Port of the monitor.
    #[arg(long, default_value_t = 8070)]
    pub monitor_port: u16,

    /// How many app services (service1..serviceN) behind the proxy.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=9))]
    pub services: u16,

    /// Port of the first app service; the others take the ports after it.
    #[arg(long, default_value_t = 5056)]
    pub service_port: u16,

    /// Port of the proxy, the front door.
    #[arg(long, default_value_t = 8080)]
    pub proxy_port: u16,

    /// Port of the proxy's admin API and metrics.
    #[arg(long, default_value_t = 8090)]
    pub proxy_admin_port: u16,

    /// Show the monitor's and the nodes' own logs at info level (default: warnings only,
    /// so that the monitor's events are what you read).
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Address to serve the monitor protocol on.
    #[arg(long, default_value = "127.0.0.1:8070")]
    pub listen: SocketAddr,

    /// Directory for the monitor's durable cluster state (created when missing).
    #[arg(long)]
    pub data_dir: PathBuf,

    /// How often nodes heartbeat (handed to them in every answer).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long without a heartbeat before the primary is suspected.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// How many direct probes of a suspected primary must fail before it is replaced.
    #[arg(long, default_value_t = 2)]
    pub probe_retries: u32,

    /// How long a lease renewal lets the primary take writes.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub lease: Duration,

    /// Margin added to every lease wait, for clocks running at different rates.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub drift_margin: Duration,

    /// How long a switchover may wait for the primary to drain before it is abandoned.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// File holding the admin token (else the KEEL_TOKEN variable); needed for
    /// POST /v1/failover.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// A TOML configuration file (docs/proxy.md); SIGHUP reads it again.
    #[arg(long, conflicts_with_all = ["backend", "cluster"])]
    pub config: Option<PathBuf>,

    /// A backend: URL[,weight=N][,name=NAME], e.g. http://127.0.0.1:5056,weight=3. Repeat
    /// the flag for each backend.
    #[arg(long, value_name = "URL[,weight=N][,name=NAME]")]
    pub backend: Vec<String>,

    /// Follow this monitor's view: requests under /v1/ go to the data tier's primary.
    #[arg(long, value_name = "MONITOR_URL")]
    pub cluster: Option<String>,

    /// Address clients connect to [default: 127.0.0.1:8080, or the file's `listen`].
    #[arg(long)]
    pub listen: Option<SocketAddr>,

    /// Address of the admin API and /metrics [default: 127.0.0.1:8090, or the file's `admin`].
    #[arg(long)]
    pub admin: Option<SocketAddr>,

    /// Backend selection (without --config).
    #[arg(long, value_parser = ["round_robin", "least_request"])]
    pub balance: Option<String>,

    /// How long a backend may take to answer (without --config) [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Worker threads [default: one per CPU the process may use].
    #[arg(long)]
    pub threads: Option<usize>,

    /// File holding the admin token (weights, drain, reload); KEEL_TOKEN works too.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The name it answers with, e.g. service1.
    #[arg(long, default_value = "service1")]
    pub name: String,

    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:5056")]
    pub listen: SocketAddr,

    /// Base URL of the data tier (a node, or keel proxy's cluster route), for the visits
    /// counter and /data.
    #[arg(long, value_name = "URL")]
    pub data: Option<String>,

    /// How long a call to the data tier may take.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub data_timeout: Duration,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Parses `250ms`, `2s`, `1.5s`, `1m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    keel_core::duration::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
