//! `keel keeper`: one PostgreSQL server as a node of the monitor (docs/postgres.md,
//! "Failover").

use std::process::ExitCode;

use anyhow::Context;
use keel_core::token::Token;
use keel_pg::keeper::KeeperConfig;

use crate::cli::KeeperArgs;

pub fn run(args: KeeperArgs) -> anyhow::Result<ExitCode> {
    let env_token = std::env::var("KEEL_TOKEN").ok();
    let token = Token::load(args.token_file.as_deref(), env_token.as_deref())?;
    let secret = super::load_secret(args.cluster_secret_file.as_deref())?;
    super::require_secret_beyond_loopback("this keeper", &[args.listen], secret.as_ref())?;
    let config = KeeperConfig {
        advertise: format!("http://{}", args.listen),
        id: args.id,
        listen: args.listen,
        monitor: args.monitor.trim_end_matches('/').to_owned(),
        base: args.data_dir,
        pg_port: args.pg_port,
        secret,
        token,
        init: args.init,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("keel-keeper")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(keel_pg::keeper::run(config, keel_core::shutdown::signal()))?;
    Ok(ExitCode::SUCCESS)
}
