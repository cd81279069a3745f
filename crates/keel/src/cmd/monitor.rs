//! `keel monitor`: runs the monitor in the foreground.

use std::process::ExitCode;

use anyhow::Context;
use keel_core::token::Token;
use keel_monitor::{MonitorConfig, Settings};

use crate::cli::MonitorArgs;

pub fn run(args: MonitorArgs) -> anyhow::Result<ExitCode> {
    let args = match &args.config {
        Some(path) => from_file(path, args.tls)?,
        None => args,
    };
    let Some(data_dir) = args.data_dir.clone() else {
        anyhow::bail!("--data-dir is required");
    };
    let settings = Settings {
        heartbeat_interval: args.heartbeat_interval,
        heartbeat_timeout: args.heartbeat_timeout,
        probe_retries: args.probe_retries,
        lease: args.lease,
        drift: args.drift_margin,
        drain_timeout: args.drain_timeout,
    };
    settings.check().context("invalid timing flags")?;
    if settings.heartbeat_timeout < 2 * settings.heartbeat_interval {
        tracing::warn!(
            interval = ?settings.heartbeat_interval, timeout = ?settings.heartbeat_timeout,
            "the heartbeat timeout is under two intervals: one late heartbeat makes the primary suspected"
        );
    }
    if settings.lease < 2 * settings.heartbeat_interval {
        tracing::warn!(
            interval = ?settings.heartbeat_interval, lease = ?settings.lease,
            "the lease is under two heartbeat intervals: one lost heartbeat stops the primary's writes"
        );
    }
    if settings.drift.is_zero() {
        tracing::warn!("a zero drift margin trusts every clock to run at exactly the same rate");
    }
    let env_token = std::env::var("KEEL_TOKEN").ok();
    let token = Token::load(args.token_file.as_deref(), env_token.as_deref())?;
    if token.is_none() {
        tracing::warn!("no admin token (--token-file or KEEL_TOKEN): POST /v1/failover is refused");
    }
    let secret = super::load_secret(args.cluster_secret_file.as_deref())?;
    super::require_secret_beyond_loopback("the monitor", &[args.listen], secret.as_ref())?;
    let raft = match (&args.id, &args.peers) {
        (Some(id), Some(peers)) => {
            let num = keel_monitor::raft::monitor_num(id)?;
            if !peers.0.contains_key(&num) {
                anyhow::bail!("--peers must list this monitor ({id}) too: {peers}");
            }
            if peers.0.len() % 2 == 0 {
                tracing::warn!(
                    monitors = peers.0.len(),
                    "an even number of monitors tolerates no more failures than one fewer: run 3 or 5"
                );
            }
            Some(keel_monitor::RaftSetup {
                num,
                peers: peers.clone(),
            })
        }
        _ => None,
    };
    let config = MonitorConfig {
        raft,
        listen: args.listen,
        data_dir,
        settings,
        token,
        secret,
        epoch_floor: args.epoch_floor.map(keel_core::Epoch),
        advertise: args.advertise.clone(),
        tls: super::load_tls(&args.tls)?,
        groups: args.groups.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keel-monitor")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(keel_monitor::run(config, keel_core::shutdown::signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// The options of `--config FILE`, with the flags' defaults for what it leaves out; TLS
/// files it does not name may still come from the environment (`KEEL_TLS_*`).
fn from_file(path: &std::path::Path, tls: crate::cli::TlsArgs) -> anyhow::Result<MonitorArgs> {
    let file = keel_monitor::file::MonitorFile::load(path)?;
    let peers = file.peers()?;
    let defaults = Settings::default();
    Ok(MonitorArgs {
        config: None,
        listen: file
            .listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8070))),
        data_dir: file.data_dir,
        advertise: file.advertise,
        heartbeat_interval: file
            .heartbeat_interval
            .unwrap_or(defaults.heartbeat_interval),
        heartbeat_timeout: file.heartbeat_timeout.unwrap_or(defaults.heartbeat_timeout),
        probe_retries: file.probe_retries.unwrap_or(defaults.probe_retries),
        lease: file.lease.unwrap_or(defaults.lease),
        drift_margin: file.drift_margin.unwrap_or(defaults.drift),
        drain_timeout: file.drain_timeout.unwrap_or(defaults.drain_timeout),
        token_file: file.token_file,
        cluster_secret_file: file.cluster_secret_file,
        tls: crate::cli::TlsArgs {
            tls_cert: file.tls_cert.or(tls.tls_cert),
            tls_key: file.tls_key.or(tls.tls_key),
            tls_ca: file.tls_ca.or(tls.tls_ca),
        },
        epoch_floor: file.epoch_floor,
        id: file.id,
        peers,
        groups: if file.groups.is_empty() {
            vec![keel_monitor::state::first_group()]
        } else {
            file.groups
        },
    })
}
