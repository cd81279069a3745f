//! One module per subcommand; `run` dispatches. This is the only place `anyhow` is used.

mod certs;
mod chaos;
mod client;
mod dashboard;
mod demo;
mod flaky;
mod keeper;
mod load;
mod monitor;
mod node;
mod proxy;
mod service;
mod sim;
mod up;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use keel_auth::{ClusterSecret, SECRET_ENV};

use crate::cli::{Cli, Command, LogFormat};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A client says what happens in its own lines; library logs at info (a breaker's
    // transitions) would only repeat them.
    let default_level = match cli.command {
        Command::Client(_) | Command::Demo(_) => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, default_level);
    match cli.command {
        Command::Node(args) => node::run(args),
        Command::Client(args) => client::run(args),
        Command::Up(args) => up::run(args),
        Command::Pg(args) => up::run_pg(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Load(args) => load::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Service(args) => service::run(args),
        Command::Flaky(args) => flaky::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Keeper(args) => keeper::run(args),
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    // openraft (a group of monitors) logs each failed call to a dead peer, twice a second;
    // the monitor logs the moves of the leadership itself. KEEL_LOG=openraft=info shows it.
    let filter = EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},openraft=off")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes would only litter a log file or a pipe (`keel up` pipes its nodes).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The cluster secret from `file`, else from `KEEL_CLUSTER_SECRET`.
fn load_secret(file: Option<&Path>) -> anyhow::Result<Option<ClusterSecret>> {
    let env = std::env::var(SECRET_ENV).ok();
    ClusterSecret::load(file, env.as_deref()).context("cannot load the cluster secret")
}

/// Refuses to serve `addrs` beyond loopback without the cluster secret: anyone on the
/// network could then register, heartbeat or replicate as a member.
fn require_secret_beyond_loopback(
    what: &str,
    addrs: &[SocketAddr],
    secret: Option<&ClusterSecret>,
) -> anyhow::Result<()> {
    if secret.is_some() {
        return Ok(());
    }
    if let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "{what} would listen on {addr} without a cluster secret, and anyone who can reach it could join or take over the cluster; \
             pass --cluster-secret-file FILE (keel up and keel certs write one) or set {SECRET_ENV}, or listen on 127.0.0.1 (docs/security.md)"
        );
    }
    tracing::warn!(
        "no cluster secret (--cluster-secret-file or {SECRET_ENV}): any process on this machine can act as a member of the cluster"
    );
    Ok(())
}

/// The TLS of `--tls-cert`, `--tls-key` and `--tls-ca`, if given.
fn load_tls(args: &crate::cli::TlsArgs) -> anyhow::Result<Option<keel_auth::tls::Tls>> {
    keel_auth::tls::Tls::from_flags(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_ca.as_deref(),
    )
    .context("cannot set up TLS")
}
