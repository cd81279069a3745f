//! What `keel up` is asked to run: the binary turns its flags into [`Settings`], so that
//! nothing here depends on how a command line is parsed.

use std::path::PathBuf;

/// How many of each process, on which ports, where their data goes, and how they talk.
///
/// Port fields name the first port of a range where there are several processes
/// (`base_port`: `app1`, then `app2` on the next port…). The flags of `keel up` carry the
/// same names with dashes, and the errors about them name the flag (`--base-port`), since
/// that is what a person changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How many data nodes (`app1..appN`), in every group together; 0 for no data tier
    /// at all (`keel pg`: no monitor and no nodes either, PostgreSQL behind the proxy).
    pub nodes: u16,
    /// How many groups of nodes (`--shards`): 1, or several (`g1..gN`, each an equal
    /// share of the nodes in order, with its own primary; docs/shards.md).
    pub shards: u16,
    /// Where the monitor and the nodes keep their data, and where the credentials, the
    /// fault files and `up.json` are written.
    pub data_dir: PathBuf,
    /// Port of `app1`; the other nodes take the ports after it.
    pub base_port: u16,
    /// The nodes' `--store` (`redb`, `log`); `None`: the node's default.
    pub store: Option<String>,
    /// How many monitors: 1, or 3 or 5 replicating the cluster state with Raft.
    pub monitors: u16,
    /// Port of the monitor (of `m1` when there are several; the others take the ports
    /// after it).
    pub monitor_port: u16,
    /// How many app services (`service1..serviceN`) behind the proxy.
    pub services: u16,
    /// Port of `service1`; the others take the ports after it.
    pub service_port: u16,
    /// Port of the proxy, the front door.
    pub proxy_port: u16,
    /// Port of the proxy's admin API.
    pub proxy_admin_port: u16,
    /// Port of the control API that `keel chaos` speaks.
    pub control_port: u16,
    /// The children log at info level rather than warnings only.
    pub verbose: bool,
    /// The monitor and every node in a network namespace of its own (Linux, root).
    pub netns: bool,
    /// Every process on TLS, with certificates from a CA in `<data-dir>/tls`.
    pub tls: bool,
    /// Whether a process that ends by itself is started again (`--restart`).
    pub restart: RestartPolicy,
    /// PostgreSQL too (`--postgres`): three servers, each run by a keeper, a monitor of
    /// their own that fails them over, the proxy's TCP ports in front and `/data` of the
    /// services on them.
    pub postgres: Option<PgPorts>,
}

impl Settings {
    /// Whether the data tier runs (a monitor and nodes); not under `keel pg`.
    pub fn has_data_tier(&self) -> bool {
        self.nodes > 0
    }
}

/// The ports of `keel up --postgres`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgPorts {
    /// Port of `pg1`; `pg2` and `pg3` take the ports after it.
    pub pg_port: u16,
    /// The proxy's read-write port; the read-only port is the next one.
    pub tcp_port: u16,
    /// Port of the PostgreSQL group's monitor (`pgmonitor`); the keepers of pg1..pg3
    /// listen on the next three.
    pub keeper_port: u16,
}

/// What `keel up --restart` does when a process ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Nothing: what a test or a person does to a process is what they see.
    #[default]
    Never,
    /// Start it again when it failed: an exit code other than 0, or a signal.
    OnFailure,
    /// Start it again however it ended.
    Always,
}

impl RestartPolicy {
    /// The flag that asks for it.
    pub fn flag(self) -> &'static str {
        match self {
            RestartPolicy::Never => "--restart never",
            RestartPolicy::OnFailure => "--restart on-failure",
            RestartPolicy::Always => "--restart always",
        }
    }
}
