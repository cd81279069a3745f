//! keel's PostgreSQL: the machine's own servers (Debian's `postgresql` package), set up
//! once as a primary and its streaming-replication standbys in keel's data directory,
//! and run by keel.
//!
//! - [`install`]: [`Binaries`], where the machine's PostgreSQL is (`KEEL_PG_BIN`, else
//!   `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`);
//! - [`owner`]: [`Owner`], who runs it: this user, or — PostgreSQL refuses root — the
//!   `postgres` account, through `setpriv`, which execs so that signals reach the server;
//! - [`server`]: [`Server`] (a name, a directory, a port) and [`Setup`], which makes the
//!   password once, initialises a primary (`initdb`, scram-sha-256, loopback only),
//!   clones a standby from it (`pg_basebackup -R`), and gives the command line that runs
//!   each in the foreground;
//! - [`running`]: [`Running`], a server run as a child and stopped (a fast shutdown)
//!   when dropped;
//! - [`cluster`]: [`cluster::ensure`], a primary and its standbys made where missing and
//!   reused where present, with no keeper (the proxy's TCP pools are tested on servers
//!   made so; `keel up` leaves making them to the keepers);
//! - [`observe`]: what a server says of itself — in recovery or not, its WAL position,
//!   its timeline, the standbys streaming from it — as a keeper reports it to the monitor;
//! - [`keeper`]: `keel keeper`, one server made a node to the monitor with keel's own
//!   node machine behind it ([`keeper::serve`]): it makes its server (`initdb`, or a copy
//!   of the primary's), rewinds a former primary (`pg_rewind`, else a fresh copy),
//!   promotes, follows, sets the sync set, drains for a switchover, and kills its server
//!   before its lease ends; [`keeper::Links`] turns `pg_stat_replication` into the
//!   machine's inputs.
//!
//! Nothing here decides anything about traffic: which server takes which connection is
//! the proxy's business, from what its checks see.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod install;
pub mod keeper;
pub mod observe;
pub mod owner;
pub mod running;
pub mod server;

pub use install::Binaries;
pub use owner::Owner;
pub use running::Running;
pub use server::{Server, Setup, USER};

/// What went wrong setting PostgreSQL up.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The machine has no PostgreSQL server.
    #[error(
        "PostgreSQL is not installed: {0} (install Debian's postgresql package, or set KEEL_PG_BIN to the directory holding postgres, initdb and pg_basebackup)"
    )]
    NotInstalled(String),
    /// keel runs as root and there is no account to run PostgreSQL as.
    #[error(
        "PostgreSQL refuses to run as root, and there is no `postgres` user to run it as (Debian's postgresql package creates it)"
    )]
    NoAccount,
    /// The account cannot reach the data directory.
    #[error(
        "the postgres user cannot reach {0}: let others traverse every directory above it (chmod o+x), or use a --data-dir it can reach"
    )]
    Unreachable(String),
    /// A tool failed.
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        /// The tool and its main argument.
        tool: String,
        /// How it ended.
        status: String,
        /// The end of what it printed.
        output: String,
    },
    /// A file or directory could not be made or read.
    #[error("{what}: {source}")]
    Io {
        /// The file and what was done to it.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

impl PgError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
        let what = what.into();
        move |source| PgError::Io { what, source }
    }
}
