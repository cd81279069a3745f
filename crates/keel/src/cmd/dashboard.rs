//! `keel dashboard`: the dashboard of a stack started by hand, in the foreground.

use std::process::ExitCode;

use anyhow::Context;
use keel_chaos::dashboard::{DashboardSettings, serve};

use crate::cli::DashboardArgs;

pub fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        tracing::warn!(
            "the dashboard listens on {}: anyone who reaches it sees the cluster (its buttons still need the admin token)",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(
        DashboardSettings {
            listen: args.listen,
            monitor: args.monitor,
            proxy_admin: args.proxy_admin.trim_end_matches('/').to_owned(),
            token_file: args.token_file,
        },
        keel_core::shutdown::signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}
