//! The `keel` binary: parses the command line and hands over to `cmd::<subcommand>`.
#![forbid(unsafe_code)]

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    raise_open_files_limit();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one. A server's connection cap
/// (1,024 for keel's own servers, 4,096 for the proxy by default) is what should bound
/// its connections, not a soft limit a shell happened to set; past it, `accept` fails and
/// a server can take no one, members included.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
