//! `keel flaky`: the fault-tolerance lab's flaky service in the foreground.

use std::process::ExitCode;

use anyhow::Context;
use keel_core::token::Token;
use keel_service::flaky::{FlakyConfig, Settings};

use crate::cli::FlakyArgs;

pub fn run(args: FlakyArgs) -> anyhow::Result<ExitCode> {
    let env_token = std::env::var("KEEL_TOKEN").ok();
    let token = Token::load(args.token_file.as_deref(), env_token.as_deref())?;
    let config = FlakyConfig {
        listen: args.listen,
        settings: Settings {
            mode: args.mode,
            failure_rate: args.failure_rate,
            latency: args.latency,
        },
        seed: args.seed,
        token,
    };
    // A toy service: two worker threads are plenty, and leave the machine to the clients.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("keel-flaky")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(keel_service::flaky::run(
        config,
        keel_core::shutdown::signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}
