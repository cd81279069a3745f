//! `keel proxy`: the front door in the foreground.

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use keel_core::token::Token;
use keel_proxy::config::{Balance, ClusterConfig, Config, ConfigError, parse_backend_flag};
use keel_proxy::tcp::config::{TcpBalance, TcpConfig, parse_servers_flag};

use crate::cli::ProxyArgs;

pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let config = config_of(&args)?;
    let tls = super::load_tls(&args.tls)?;
    // Before anything starts: an https:// backend needs the proxy's TLS to be reached.
    config
        .check_tls(tls.is_some())
        .map_err(|e| refused(&args, &e))?;
    let env_token = std::env::var("KEEL_TOKEN").ok();
    let token = Token::load(args.token_file.as_deref(), env_token.as_deref())?;
    if token.is_none() {
        tracing::warn!(
            "no admin token (--token-file or KEEL_TOKEN): weights, drains and reloads through the admin API are refused"
        );
    }
    let secret = super::load_secret(args.cluster_secret_file.as_deref())?;
    if config.cluster.is_some() {
        super::require_secret_beyond_loopback(
            "the proxy, following the cluster,",
            &[config.listen, config.admin],
            secret.as_ref(),
        )?;
    }
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // One thread: a current-thread runtime, which spares the work-stealing machinery.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder
        .enable_all()
        .thread_name("keel-proxy")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(keel_proxy::run(
        config,
        args.config.clone(),
        token,
        secret,
        tls,
        keel_core::shutdown::signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The configuration: the file's, or one made of the flags; `--listen` and `--admin`
/// override either.
fn config_of(args: &ProxyArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| anyhow!("{e}"))?,
        None => {
            let mut config = Config::default();
            for flag in &args.backend {
                config
                    .backends
                    .push(parse_backend_flag(flag).map_err(|e| anyhow!("--backend: {e}"))?);
            }
            config.cluster = args.cluster.as_ref().map(|monitor| ClusterConfig {
                monitor: monitor.clone(),
                ..ClusterConfig::default()
            });
            if let Some(balance) = &args.balance {
                config.balance = match balance.as_str() {
                    "least_request" => Balance::LeastRequest,
                    _ => Balance::RoundRobin,
                };
            }
            if let Some(timeout) = args.request_timeout {
                config.request_timeout = timeout;
            }
            if let Some(servers) = &args.tcp {
                config.tcp.push(TcpConfig {
                    read_write: args.tcp_read_write,
                    read_only: args.tcp_read_only,
                    balance: match args.tcp_balance.as_str() {
                        "least_connections" => TcpBalance::LeastConnections,
                        _ => TcpBalance::RoundRobin,
                    },
                    max_lag: args.tcp_max_lag,
                    user: args.tcp_user.clone(),
                    password_file: args.tcp_password_file.clone(),
                    servers: parse_servers_flag(servers),
                    monitor: args.tcp_monitor.clone(),
                    ..TcpConfig::default()
                });
            }
            config
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    config.check().map_err(|e| refused(args, &e))?;
    Ok(config)
}

/// A configuration error, naming the flag when the configuration came from flags.
fn refused(args: &ProxyArgs, e: &ConfigError) -> anyhow::Error {
    if args.config.is_some() {
        anyhow!("{e}")
    } else {
        let text = e.to_string().replace("backend[", "--backend[");
        // The flags' pool is tcp[0]: name its flag instead.
        let text = match text.strip_prefix("tcp[0].") {
            Some(rest) => match rest.split_once(':') {
                Some((key, reason)) if key.starts_with("server") => {
                    format!("--tcp ({key}):{reason}")
                }
                Some((key, reason)) => format!("--tcp-{}:{reason}", key.replace('_', "-")),
                None => text,
            },
            None => text,
        };
        anyhow!("{text}")
    }
}
