//! The `keel` binary: parses the command line and hands over to `cmd::<subcommand>`.
#![forbid(unsafe_code)]

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    die_with_supervisor();
    raise_open_files_limit();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Under `keel up` (which sets [`keel_core::shutdown::SUPERVISOR_PID_ENV`]), asks the
/// kernel for SIGKILL when `keel up` dies, however it dies: its children must not outlive
/// it and hold its ports. SIGKILL rather than a stop order: a supervisor gone is a crash,
/// which every keel process survives by design (what it acknowledged is on disk). When
/// `keel up` died before the request was made, this process has another parent by now,
/// and ends at once.
fn die_with_supervisor() {
    let Some(supervisor) = std::env::var(keel_core::shutdown::SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() {
        return;
    }
    if nix::unistd::getppid().as_raw() != supervisor {
        eprintln!("keel: the keel up that started this process is gone; stopping");
        std::process::exit(1);
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
