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
    /// Run PostgreSQL on this machine: a primary and two synchronous standbys, each run by
    /// a keeper and failed over by their monitor, behind keel proxy's TCP ports, and two
    /// services on them (the PostgreSQL homework, without the data tier; keel up
    /// --postgres runs both).
    Pg(PgArgs),
    /// Run the monitor: it assigns roles to the data nodes and fails over automatically.
    Monitor(MonitorArgs),
    /// Put HTTP load on a URL of this machine: live view, latency percentiles, the spread
    /// per backend, a timeline; with --verify, count lost acknowledged writes.
    Load(LoadArgs),
    /// Run the front door: an HTTP load balancer with health checks, retries and a route
    /// that follows the data tier's primary.
    Proxy(ProxyArgs),
    /// Run an app service: hello, a visits counter kept in the data tier, /data.
    Service(ServiceArgs),
    /// Run the fault-tolerance lab's flaky service: 503s at a failure rate, a degraded
    /// mode, total failure; changeable while it runs.
    Flaky(FlakyArgs),
    /// Break a stack that `keel up` runs: kill, pause, resume or restart a process, or
    /// random faults for a while.
    Chaos(ChaosArgs),
    /// Make a small CA and a certificate per process, for TLS across hosts.
    Certs(CertsArgs),
    /// Serve the dashboard for a stack started by hand: its monitor's view and events,
    /// its proxy's backends, a switchover button (keel up serves it on its own).
    Dashboard(DashboardArgs),
    /// Run the deterministic simulator: the monitor and node machines under seeded
    /// faults, checked for safety and linearizability; one line per failing seed.
    Sim(SimArgs),
    /// Play a seed's step table against a stack started in a temporary directory: for
    /// each step the narration, the command, what to watch, and what keel observed.
    Demo(DemoArgs),
    /// Run one PostgreSQL server as a node of the monitor: it reports the server's role
    /// and WAL position, promotes it, points it at the primary and sets its synchronous
    /// standbys as the monitor decides, and stops it when it may no longer be primary.
    Keeper(KeeperArgs),
}

#[derive(Debug, Args)]
pub struct KeeperArgs {
    /// The keeper's id, which is also its server's name and directory (<data-dir>/ID).
    #[arg(long)]
    pub id: NodeId,

    /// Address of the keeper's API (the monitor probes it; standbys ask it where the
    /// server listens).
    #[arg(long)]
    pub listen: SocketAddr,

    /// The monitor's URL, or a group's URLs separated by commas.
    #[arg(long, value_name = "URL[,URL…]")]
    pub monitor: String,

    /// Where the servers, the password and the keepers' state live: <data-dir>/ID is this
    /// keeper's server, made here when there is none (see --init).
    #[arg(long, default_value = "./keel-data")]
    pub data_dir: PathBuf,

    /// The server's port on 127.0.0.1.
    #[arg(long)]
    pub pg_port: u16,

    /// Make a new cluster (initdb) when <data-dir>/ID holds none and the monitor has never
    /// had a primary. Without it, a keeper with no server copies the primary's
    /// (pg_basebackup) once the monitor names one. Give it to one keeper only.
    #[arg(long)]
    pub init: bool,

    /// File holding the admin token (else KEEL_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,

    /// File holding the cluster secret that members sign their calls with (else
    /// KEEL_CLUSTER_SECRET).
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Which demo: failover (the failover challenge), resilience (lab 6: retry, fallback,
    /// circuit breaker), balance (lab 7: round robin, weights, a service stopped), redis
    /// (the Redis counter behind a breaker), postgres (the PostgreSQL homework), or all.
    #[arg(value_enum)]
    pub demo: DemoName,

    /// Run every step without waiting for Enter.
    #[arg(long)]
    pub auto: bool,

    /// Keep the demo's directory (data and logs) when it ends well (it is always kept
    /// when an observation fails).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoName {
    Failover,
    Resilience,
    Balance,
    Redis,
    Postgres,
    All,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// The seeds to run, as FIRST..LAST (both included) or one number.
    #[arg(long, default_value = "1..200", value_parser = parse_seeds)]
    pub seeds: std::ops::RangeInclusive<u64>,

    /// Run only this seed (with --trace, print every step of it).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,

    /// Print the whole trace of the run (with --seed).
    #[arg(long, requires = "seed")]
    pub trace: bool,

    /// Data nodes in the simulated cluster (in each group, with --groups).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=7))]
    pub nodes: u64,

    /// Groups of nodes, each a primary and its standbys; with 2 or more, the keys' slots
    /// are split among them and moved between them while the faults strike.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub groups: u64,

    /// Monitors: 1 alone, or a group of 3 or 5 replicating the cluster state with Raft.
    #[arg(long, default_value_t = 1, value_parser = parse_monitors)]
    pub monitors: u16,

    /// The faults that may strike: all, none, or a comma-separated list of loss, delay,
    /// duplicate, partition, crash, clock.
    #[arg(long, default_value = "all")]
    pub faults: keel_sim::Faults,

    /// Simulated milliseconds of client traffic and faults per seed.
    #[arg(long, default_value_t = 6_000)]
    pub active_ms: u64,

    /// Simulated milliseconds after the faults heal, before the final reads.
    #[arg(long, default_value_t = 4_000)]
    pub settle_ms: u64,

    /// Steps of trace printed before each violation.
    #[arg(long, default_value_t = 15)]
    pub tail: usize,
}

/// 1, 3 or 5 monitors.
fn parse_monitors(s: &str) -> Result<u16, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!(
            "{s:?}: run 1, 3 or 5 monitors (an even number tolerates no more failures than one fewer)"
        )),
    }
}

/// `A..B` (both included) or `N`.
fn parse_seeds(s: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
    let bad =
        || format!("{s:?} is not a seed range: write FIRST..LAST (e.g. 1..1000) or one number");
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (a, b.trim_start_matches('=')),
        None => (s, s),
    };
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if b < a {
        return Err(format!("{s:?}: the last seed is before the first"));
    }
    Ok(a..=b)
}

/// TLS for a process that listens and calls members (docs/security.md).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// This process's certificate (PEM), signed by the cluster CA. With --tls-key and
    /// --tls-ca its listener speaks TLS and its calls to members are TLS, with this as
    /// its client certificate (keel certs writes all three).
    #[arg(long, value_name = "FILE", env = "KEEL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// This process's private key (PEM).
    #[arg(long, value_name = "FILE", env = "KEEL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA's certificate (PEM): members' certificates are checked against it,
    /// and only it.
    #[arg(long, value_name = "FILE", env = "KEEL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The processes to make certificates for, each as NAME or NAME=HOST,HOST (the
    /// addresses or DNS names others reach it by, besides localhost), e.g. monitor
    /// app1=10.0.0.1 app2=10.0.0.2 proxy.
    #[arg(required = true, value_name = "NAME[=HOST,…]")]
    pub names: Vec<String>,

    /// Where the CA and the certificates go; an existing CA there is kept and signs the
    /// new certificates.
    #[arg(long, default_value = "keel-data/tls")]
    pub dir: PathBuf,

    /// A host every certificate names (repeat the flag for several).
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
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
    /// automatically (see docs/failover.md). For a group of monitors, every monitor's URL
    /// separated by commas: the node follows whichever leads.
    #[arg(long, value_name = "URL[,URL…]", conflicts_with_all = ["standbys", "epoch", "async_replication"])]
    pub monitor: Option<String>,

    /// The group of nodes this node joins under a monitor that runs several (docs/shards.md);
    /// without it, the monitor's first group.
    #[arg(long, value_name = "GROUP", requires = "monitor")]
    pub group: Option<keel_core::slots::GroupId>,

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

    /// Where the log and the state are kept: redb (one database, keel.redb) or log (the
    /// state in memory, made durable by one append-only file, keel.log: a commit is one
    /// append and one fdatasync; the whole state must fit in memory). docs/replication.md.
    #[arg(long, default_value = "redb")]
    pub store: keel_node::config::StoreKind,

    /// File holding the admin token (else the KEEL_TOKEN variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,

    /// File holding the cluster secret that members sign their calls to each other with
    /// (else the KEEL_CLUSTER_SECRET variable). Required on any address but loopback
    /// (docs/security.md).
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: TlsArgs,
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

    /// The cluster CA (PEM) to check https:// monitors and nodes against (a stack started
    /// with keel up --tls: <data-dir>/tls/ca.pem).
    #[arg(long, global = true, value_name = "FILE", env = "KEEL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

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
    /// Add a monitor to a running group, or remove one (needs the admin token).
    #[command(subcommand)]
    Monitors(MonitorsCommand),
    /// The slot table of a monitor of several groups, and moving slots between groups
    /// online (moves need the admin token; docs/shards.md).
    #[command(subcommand)]
    Slots(SlotsCommand),
    /// GET a URL with retries, backoff, a timeout (--timeout), an optional circuit
    /// breaker and a fallback: the cached last good answer, else the lab's fallback
    /// message. Exit code 0 for a fresh answer, 2 when any answer came from the fallback.
    Fetch(FetchArgs),
}

#[derive(Debug, Subcommand)]
pub enum SlotsCommand {
    /// Show the table: each group's slots, and the move under way.
    Show,
    /// Move slots (all one group's) to another group: frozen at their owner, copied,
    /// then switched in the table's next version.
    Move {
        /// The slots, e.g. 0-99,200.
        slots: String,
        /// The group they go to.
        #[arg(long, value_name = "GROUP")]
        to: keel_core::slots::GroupId,
        /// Return once the move is asked for, without waiting for it to end.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the move to end.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: std::time::Duration,
    },
    /// Move slots so that each group owns its share: equal, or by --weights.
    Rebalance {
        /// Each group's weight, e.g. g1=3,g2=1 [default: equal].
        #[arg(long)]
        weights: Option<String>,
        /// How long to wait for each move to end.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: std::time::Duration,
    },
    /// Call off the move under way: its slots stay their owner's.
    Cancel,
}

#[derive(Debug, Subcommand)]
pub enum MonitorsCommand {
    /// A monitor joins the group: start it first with --id ID and --peers naming the
    /// group and itself, then `keel client monitors add m4=http://HOST:PORT`.
    Add {
        /// The new monitor, as ID=URL.
        #[arg(value_name = "ID=URL")]
        joining: String,
    },
    /// A monitor leaves the group (then stop it).
    Remove {
        /// Its id, e.g. m2.
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateWhich {
    Primary,
    Standby,
    All,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many data nodes (app1..appN), in each group with --shards; the monitor makes one
    /// primary, the rest standbys.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,

    /// How many groups of nodes, each with its own primary, the key space split among them
    /// (g1 takes app1..appN, g2 the next N…; docs/shards.md): writes go to several
    /// primaries, the front door sending each key to its group's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub shards: u16,

    /// The nodes' store: redb (the default) or log (the state in memory, one append-only
    /// file; keel node --store, docs/replication.md).
    #[arg(long)]
    pub store: Option<keel_node::config::StoreKind>,

    /// Where the monitor and the nodes keep their data and where the admin token is written.
    #[arg(long, default_value = "./keel-data")]
    pub data_dir: PathBuf,

    /// Port of the first node; the others take the ports after it.
    #[arg(long, default_value_t = 8081)]
    pub base_port: u16,

    /// How many monitors: 1, or 3 or 5 (m1..mN) replicating the cluster state with Raft,
    /// so that any majority of them keeps failing over.
    #[arg(long, default_value_t = 1, value_parser = parse_monitors)]
    pub monitors: u16,

    /// Port of the monitor (of m1 when there are several; the others take the ports
    /// after it).
    #[arg(long, default_value_t = 8070)]
    pub monitor_port: u16,

    #[command(flatten)]
    pub stack: StackArgs,

    /// Run the monitor and every node in a network namespace of its own (Linux, as root,
    /// needs iproute2's `ip`), so that `keel chaos partition` cuts them apart in the
    /// kernel (see docs/chaos.md).
    #[arg(long)]
    pub netns: bool,

    /// Run every process on TLS, with certificates from a CA made in <data-dir>/tls (kept
    /// across runs), as a multi-host set-up would; the banner's URLs are then https.
    #[arg(long)]
    pub tls: bool,

    /// PostgreSQL too: a primary and two synchronous standbys (pg1..pg3, from the
    /// machine's PostgreSQL, in <data-dir>/pg1..pg3), each run by a keeper, failed over by
    /// a monitor of their own (pgmonitor), behind the proxy's TCP ports, and the
    /// services' /data on them (docs/postgres.md).
    #[arg(long)]
    pub postgres: bool,

    /// Port of pg1 (with --postgres); pg2 and pg3 take the next ports.
    #[arg(long, default_value_t = 5433, requires = "postgres")]
    pub pg_port: u16,

    /// The proxy's read-write port to PostgreSQL (with --postgres); the read-only port is
    /// the next one.
    #[arg(long, default_value_t = 5000, requires = "postgres")]
    pub tcp_port: u16,

    /// Port of PostgreSQL's monitor (with --postgres); the keepers of pg1..pg3 take the
    /// next three.
    #[arg(long, default_value_t = 7000, requires = "postgres")]
    pub keeper_port: u16,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to serve the page on.
    #[arg(long, default_value = "127.0.0.1:8060")]
    pub listen: SocketAddr,

    /// The monitor, or a group's monitors separated by commas.
    #[arg(long, value_name = "URL[,URL…]")]
    pub monitor: Option<String>,

    /// The proxy's admin API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8090")]
    pub proxy_admin: String,

    /// The admin token, for the switchover button (else the button is refused).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PgArgs {
    /// Where pg1..pg3, the password and the credentials go; used again on the next start.
    #[arg(long, default_value = "./keel-data")]
    pub data_dir: PathBuf,

    /// Port of pg1; pg2 and pg3 take the next ports.
    #[arg(long, default_value_t = 5433)]
    pub pg_port: u16,

    /// The proxy's read-write port to PostgreSQL; the read-only port is the next one.
    #[arg(long, default_value_t = 5000)]
    pub tcp_port: u16,

    /// Port of PostgreSQL's monitor; the keepers of pg1..pg3 take the next three.
    #[arg(long, default_value_t = 7000)]
    pub keeper_port: u16,

    #[command(flatten)]
    pub stack: StackArgs,
}

/// The app tier and the front door of `keel up` and `keel pg`.
#[derive(Debug, Args)]
pub struct StackArgs {
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

    /// Port of keel up's own control API, which `keel chaos` uses (found through
    /// <data-dir>/up.json).
    #[arg(long, default_value_t = 8060)]
    pub control_port: u16,

    /// Show the children's own logs at info level (default: warnings only, so that the
    /// monitor's events and the proxy's changes are what you read).
    #[arg(long, short)]
    pub verbose: bool,

    /// Whether a process that ends by itself is started again: never (what you do to a
    /// process is what you see), on-failure (an exit code other than 0, or a signal) or
    /// always; after 1 s, doubling with each restart in a row up to 30 s.
    #[arg(long, default_value = "never", value_parser = ["never", "on-failure", "always"])]
    pub restart: String,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// A TOML file with these options (keys are the flags' names with _ for -, and a
    /// [peers] table), instead of the flags (docs/failover.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "listen", "data_dir", "advertise", "heartbeat_interval", "heartbeat_timeout",
        "probe_retries", "lease", "drift_margin", "drain_timeout", "token_file",
        "cluster_secret_file", "epoch_floor", "id", "peers", "groups",
    ])]
    pub config: Option<PathBuf>,

    /// Address to serve the monitor protocol on.
    #[arg(long, default_value = "127.0.0.1:8070")]
    pub listen: SocketAddr,

    /// Directory for the monitor's durable cluster state (created when missing).
    #[arg(long, required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,

    /// A URL members reach the monitor at, when it is not its --listen address (a DNS
    /// name, an address behind NAT); repeat for several. Requests signed for any other
    /// host are refused, so that a request captured on its way to one process cannot be
    /// replayed to another.
    #[arg(long, value_name = "URL")]
    pub advertise: Vec<String>,

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

    /// File holding the cluster secret that members sign their calls to each other with
    /// (else the KEEL_CLUSTER_SECRET variable). Required on any address but loopback
    /// (docs/security.md).
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Take this epoch as issued: for a monitor whose state was lost while its nodes
    /// kept theirs, which report epochs it otherwise refuses as never issued.
    #[arg(long, value_name = "EPOCH")]
    pub epoch_floor: Option<u64>,

    /// This monitor's id in a group of monitors (m1, m2, m3…); with --peers.
    #[arg(long, value_name = "ID", requires = "peers")]
    pub id: Option<String>,

    /// Every monitor of the group, this one included, as m1=URL,m2=URL,m3=URL: the
    /// monitors replicate the cluster state with Raft, and any majority of them keeps
    /// failing over (docs/failover.md). Without it the monitor runs alone.
    #[arg(long, value_name = "ID=URL,…", requires = "id")]
    pub peers: Option<keel_monitor::raft::Peers>,

    /// The groups of nodes a new monitor runs, each a primary and its standbys with an
    /// epoch and a failover of their own, the key space's slots split evenly among them
    /// (docs/shards.md). A monitor that has a state keeps the groups it records.
    #[arg(
        long,
        value_name = "GROUP,…",
        value_delimiter = ',',
        default_value = "g1"
    )]
    pub groups: Vec<keel_core::slots::GroupId>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// A TOML configuration file (docs/proxy.md); SIGHUP reads it again.
    #[arg(long, conflicts_with_all = ["backend", "cluster", "tcp"])]
    pub config: Option<PathBuf>,

    /// A backend: URL[,weight=N][,name=NAME], e.g. http://127.0.0.1:5056,weight=3 (or
    /// https://, with --tls-cert, --tls-key and --tls-ca). Repeat the flag for each backend.
    #[arg(long, value_name = "URL[,weight=N][,name=NAME]")]
    pub backend: Vec<String>,

    /// Follow this monitor's view: requests under /v1/ go to the data tier's primary.
    #[arg(long, value_name = "MONITOR_URL")]
    pub cluster: Option<String>,

    /// A TCP pool in front of PostgreSQL: its servers, primary and standbys alike (the
    /// checks tell which is which), e.g. pg1=127.0.0.1:5433,pg2=127.0.0.1:5434
    /// (docs/postgres.md).
    #[arg(long, value_name = "NAME=IP:PORT,…")]
    pub tcp: Option<String>,

    /// The TCP pool's read-write port, to the primary.
    #[arg(long, default_value = "127.0.0.1:5000", requires = "tcp")]
    pub tcp_read_write: SocketAddr,

    /// The TCP pool's read-only port, over the standbys.
    #[arg(long, default_value = "127.0.0.1:5001", requires = "tcp")]
    pub tcp_read_only: SocketAddr,

    /// How the read-only port picks a standby.
    #[arg(long, default_value = "round_robin", value_parser = ["round_robin", "least_connections"], requires = "tcp")]
    pub tcp_balance: String,

    /// A standby whose replay is further behind leaves the read-only pool.
    #[arg(long, default_value = "1s", value_parser = parse_duration, requires = "tcp")]
    pub tcp_max_lag: Duration,

    /// The role the checks log in as.
    #[arg(long, default_value = "keel", requires = "tcp")]
    pub tcp_user: String,

    /// A file holding the checks' password (keel pg writes it to <data-dir>/pg.password).
    #[arg(long, value_name = "FILE", requires = "tcp")]
    pub tcp_password_file: Option<PathBuf>,

    /// The monitor of the PostgreSQL servers' keepers (keel keeper): the read-write port
    /// goes only to the server it names primary, and sessions to one it no longer names
    /// are closed. Without it, the checks decide alone.
    #[arg(long, value_name = "URL[,URL…]", requires = "tcp")]
    pub tcp_monitor: Option<String>,

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

    /// File holding the cluster secret that members sign their calls to each other with
    /// (else the KEEL_CLUSTER_SECRET variable). Required on any address but loopback
    /// (docs/security.md).
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: TlsArgs,
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

    /// Keep the visits counter in Redis (`INCR visits`) behind a circuit breaker, e.g.
    /// redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL", conflicts_with = "data")]
    pub redis: Option<String>,

    /// How long a call to Redis may take before it counts as a failure.
    #[arg(long, default_value = "2s", value_parser = parse_duration, requires = "redis")]
    pub redis_timeout: Duration,

    /// The breaker in front of Redis: key=value pairs among failure-rate, window,
    /// min-calls, failures, open, half-open, slow, slow-rate (docs/resilience.md).
    #[arg(long, value_name = "SPEC", default_value = "failures=1,open=5s,half-open=1",
          value_parser = keel_service::breaker_spec::parse, requires = "redis")]
    pub redis_breaker: keel_resilience::Config,

    /// `/data` reads PostgreSQL through this URL, keel proxy --tcp's read-only port, e.g.
    /// postgres://keel@127.0.0.1:5001/postgres (docs/postgres.md). The visits counter
    /// stays where --data or --redis keep it.
    #[arg(long, value_name = "URL", requires = "postgres_write")]
    pub postgres_read: Option<String>,

    /// `POST /data` writes through this URL, the read-write port, e.g.
    /// postgres://keel@127.0.0.1:5000/postgres.
    #[arg(long, value_name = "URL", requires = "postgres_read")]
    pub postgres_write: Option<String>,

    /// A file holding the PostgreSQL password (keel pg writes it to <data-dir>/pg.password).
    #[arg(long, value_name = "FILE", requires = "postgres_read")]
    pub postgres_password_file: Option<PathBuf>,

    /// How long taking a PostgreSQL connection, making one, or a query may take.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub postgres_timeout: Duration,

    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `keel flaky`: see docs/resilience.md.
#[derive(Debug, Args)]
pub struct FlakyArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:5055")]
    pub listen: SocketAddr,

    /// How GET / behaves: normal (503 at --failure-rate), fallback (degraded answer),
    /// failure (always 503).
    #[arg(long, env = "SERVICE_MODE", default_value = "normal")]
    pub mode: keel_service::flaky::Mode,

    /// In normal mode, the probability of a 503, from 0 to 1.
    #[arg(long, default_value_t = keel_service::flaky::DEFAULT_FAILURE_RATE, value_parser = parse_rate)]
    pub failure_rate: f64,

    /// Delay before every answer of GET /.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,

    /// Seed the failure draws, so that a run's sequence of answers repeats exactly.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// File holding the admin token that PUT /admin/mode needs (else KEEL_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// `keel client fetch URL`: see docs/resilience.md.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The URL to GET (http://).
    pub url: String,

    /// Retries after the first attempt (the lab's max_retries).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: u32,

    /// The wait before a retry (with exponential backoff: before the first retry).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub retry_delay: Duration,

    /// constant: the same wait every time; exponential: doubling up to --max-delay.
    #[arg(long, value_enum, default_value_t = BackoffKind::Constant)]
    pub backoff: BackoffKind,

    /// The longest wait with exponential backoff [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub max_delay: Option<Duration>,

    /// full: a random wait between 0 and the backoff's; none: exactly the backoff's
    /// [default: none with constant backoff, full with exponential].
    #[arg(long, value_enum)]
    pub jitter: Option<JitterKind>,

    /// Put a circuit breaker in front of the URL, e.g. failure-rate=50,window=10,open=5s
    /// (keys: failure-rate, window, min-calls, failures, open, half-open, slow, slow-rate).
    #[arg(long, value_name = "SPEC", value_parser = keel_service::breaker_spec::parse)]
    pub breaker: Option<keel_resilience::Config>,

    /// Keep the last good answer in DIR, and serve it (marked stale, with its age) when
    /// every attempt fails. Without it, only this run's answers are remembered.
    #[arg(long, value_name = "DIR")]
    pub fallback_cache: Option<PathBuf>,

    /// Fetch the URL this many times (one breaker and cache for all).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,

    /// The pause between fetches with --count.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackoffKind {
    Constant,
    Exponential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JitterKind {
    None,
    Full,
}

/// `keel load URL`: see docs/load.md.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The URL to load: http:// (or https:// with --tls-ca) on this machine (127.0.0.0/8,
    /// ::1 or localhost).
    pub url: String,

    /// Open loop: send N requests a second whatever the answers do; latency counts from
    /// each request's intended send time (corrected for coordinated omission).
    #[arg(long, value_name = "N", conflicts_with = "concurrency")]
    pub rate: Option<u32>,

    /// Closed loop: N connections, one request in flight on each [default: 10].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,

    /// With --rate: the connections that share the load [default: 32]. A request whose
    /// time comes while all are busy waits for one, and the wait counts in its latency.
    #[arg(long, value_name = "N", requires = "rate")]
    pub connections: Option<u32>,

    /// How long to send [default: 10s].
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Send exactly N requests, then stop.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,

    /// The method of the requests (not of the writes).
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,

    /// The request body: text, or @FILE to send a file's bytes.
    #[arg(long, short = 'd', value_name = "TEXT|@FILE")]
    pub body: Option<String>,

    /// An extra request header (repeat for several).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<keel_load::HeaderLine>,

    /// How long a request may take before it counts as a timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// The share of requests, 0 to 1, that are writes: PUT /v1/kv/load-<run>-<n> with a
    /// unique value, on the URL's host and port.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub write_ratio: f64,

    /// After the run, read every acknowledged write back from the primary and print
    /// `lost acknowledged writes: N`; exit with 3 when N > 0.
    #[arg(long)]
    pub verify: bool,

    /// Where --verify reads from [default: the primary --monitor names, else the URL's
    /// host and port]. A standby's 421 is followed to its primary.
    #[arg(long, value_name = "URL", requires = "verify")]
    pub verify_url: Option<String>,

    /// How long reading the writes back may take in all.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub verify_timeout: Duration,

    /// Where the backend that answered is named: auto (header Keel-Backend, else
    /// Keel-Node), header:NAME, json:FIELD (e.g. json:backend_id) or none.
    #[arg(long, value_name = "HOW", default_value = "auto")]
    pub spread_by: keel_load::SpreadBy,

    /// The monitor: its events during the run are listed in the report and marked on
    /// the plot, and --verify reads from the primary it names. For a group, every
    /// monitor's URL separated by commas: the leader's events and view are taken, and a
    /// new leader's after an election.
    #[arg(long, value_name = "URL[,URL…]", visible_alias = "events")]
    pub monitor: Option<String>,

    /// Also write the full report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw throughput, errors and p99 per second, with the monitor's events, into an
    /// SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Worker threads [default: the CPUs this process may use].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// No live view on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// Allow a URL outside this machine. Only load hosts you are responsible for.
    #[arg(long)]
    pub allow_remote: bool,

    /// The cluster CA (PEM) to check https:// targets, nodes and monitors against (a stack
    /// started with keel up --tls: <data-dir>/tls/ca.pem).
    #[arg(long, value_name = "FILE", env = "KEEL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// The data directory of the `keel up` to break: its up.json says where it listens,
    /// its admin.token is the token.
    #[arg(long, global = true, default_value = "./keel-data")]
    pub data_dir: PathBuf,

    /// keel up's control API, instead of reading it from <data-dir>/up.json.
    #[arg(long, global = true, value_name = "URL")]
    pub up: Option<String>,

    /// File holding the admin token [default: <data-dir>/admin.token; KEEL_TOKEN works too].
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: ChaosCommand,
}

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Every process keel up runs, with its pid and state.
    List,
    /// SIGKILL a process (a crash); keel up does not restart it by itself.
    Kill { name: String },
    /// SIGSTOP a process (frozen, sockets open: a long pause or a hung disk).
    Pause { name: String },
    /// SIGCONT a paused process.
    Resume { name: String },
    /// Start a process again (killing it first if it runs) and wait for its health.
    Restart { name: String },
    /// Cut a process of the data tier (monitor, appN) off from others: under `keel up
    /// --netns` the kernel drops the packets between their namespaces; otherwise keel's
    /// own connections between them are refused by its fault filter.
    Partition {
        /// The process to cut off.
        node: String,
        /// Whom from (repeat for several) [default: every other process of the data tier
        /// (under --shards, the monitors and the node's own group), and under --netns the
        /// clients too]; a group's name (g2) stands for its nodes; `clients` (--netns
        /// only) is everything outside the data tier: the proxy, the services, curl, keel
        /// load.
        #[arg(long = "from", value_name = "NODE")]
        from: Vec<String>,
    },
    /// End every partition.
    Heal,
    /// Random faults at random times, each restored before the next, with a timeline.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// How long to go on.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// The seed of the random draws: the same seed gives the same faults, targets and times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Which faults to draw from (comma-separated): kill (then restart), pause (then
    /// resume), partition (from every other process of the data tier; then heal).
    #[arg(long, default_value = "kill,pause")]
    pub faults: String,

    /// Which processes to hit (comma-separated) [default: the data nodes].
    #[arg(long)]
    pub targets: Option<String>,

    /// Shortest quiet time before a fault.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub min_gap: Duration,

    /// Longest quiet time before a fault.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub max_gap: Duration,

    /// Shortest time a fault lasts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_hold: Duration,

    /// Longest time a fault lasts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub max_hold: Duration,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number: expected a probability such as 0.3"))?;
    keel_service::flaky::check_rate(rate)?;
    Ok(rate)
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
