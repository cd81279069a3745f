//! One module per subcommand; `run` dispatches. This is the only place `anyhow` is used.

mod chaos;
mod client;
mod flaky;
mod load;
mod monitor;
mod node;
mod proxy;
mod service;
mod up;

use std::process::ExitCode;

use crate::cli::{Cli, Command, LogFormat};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A client says what happens in its own lines; library logs at info (a breaker's
    // transitions) would only repeat them.
    let default_level = match cli.command {
        Command::Client(_) => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, default_level);
    match cli.command {
        Command::Node(args) => node::run(args),
        Command::Client(args) => client::run(args),
        Command::Up(args) => up::run(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Load(args) => load::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Service(args) => service::run(args),
        Command::Flaky(args) => flaky::run(args),
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
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
