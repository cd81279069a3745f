//! `keel service`: one app service in the foreground.

use std::process::ExitCode;

use anyhow::Context;
use keel_service::{PostgresConfig, ServiceConfig};

use crate::cli::ServiceArgs;

pub fn run(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    let config = ServiceConfig {
        name: args.name,
        listen: args.listen,
        data: args.data,
        data_timeout: args.data_timeout,
        redis: args.redis,
        redis_timeout: args.redis_timeout,
        redis_breaker: args.redis_breaker,
        tls: super::load_tls(&args.tls)?,
        postgres: match (args.postgres_read, args.postgres_write) {
            (Some(read), Some(write)) => Some(PostgresConfig {
                read,
                write,
                password_file: args.postgres_password_file,
                timeout: args.postgres_timeout,
            }),
            _ => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("keel-service")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(keel_service::run(config, keel_core::shutdown::signal()))?;
    Ok(ExitCode::SUCCESS)
}
