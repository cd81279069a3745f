//! `keel node`: runs one data node in the foreground.

use std::process::ExitCode;

use anyhow::Context;
use keel_core::token::Token;
use keel_core::{Epoch, Role};
use keel_node::NodeConfig;

use crate::cli::NodeArgs;

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    if let Some(urls) = &args.monitor {
        for url in urls.split(',').map(str::trim) {
            check_url(url).with_context(|| format!("--monitor {urls}: {url}"))?;
        }
    }
    let role = args.role.unwrap_or(Role::Standby);
    if role == Role::Standby && !args.standbys.is_empty() {
        anyhow::bail!(
            "--standby is for a primary: it names the standbys the primary replicates to"
        );
    }
    for url in &args.standbys {
        check_url(url).with_context(|| format!("--standby {url}"))?;
    }
    let tls = super::load_tls(&args.tls)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertise = match args.advertise {
        Some(url) => {
            check_url(&url).with_context(|| format!("--advertise {url}"))?;
            url.trim_end_matches('/').to_owned()
        }
        None => format!("{scheme}://{}", args.listen),
    };
    let env_token = std::env::var("KEEL_TOKEN").ok();
    let token = Token::load(args.token_file.as_deref(), env_token.as_deref())?;
    if token.is_none() {
        tracing::warn!("no admin token (--token-file or KEEL_TOKEN): admin actions are refused");
    }
    let secret = super::load_secret(args.cluster_secret_file.as_deref())?;
    super::require_secret_beyond_loopback("this node", &[args.listen], secret.as_ref())?;
    let config = NodeConfig {
        id: args.id,
        listen: args.listen,
        advertise,
        data_dir: args.data_dir,
        role,
        standbys: args
            .standbys
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect(),
        sync: !args.async_replication,
        epoch: args.epoch.map(Epoch),
        sync_timeout: args.sync_timeout,
        log_retain: args.log_retain,
        store: args.store,
        token,
        secret,
        tls,
        monitor: args.monitor.map(|u| u.trim_end_matches('/').to_owned()),
        group: args.group,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keel-node")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(keel_node::run(config, keel_core::shutdown::signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// A base URL must be http or https with a host and port and no path.
fn check_url(url: &str) -> anyhow::Result<()> {
    let uri: http::Uri = url.parse().context("not a URL")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        anyhow::bail!("only http:// and https:// URLs are supported");
    }
    if uri.authority().is_none() {
        anyhow::bail!("the URL needs a host and port, like http://127.0.0.1:8082");
    }
    if !matches!(uri.path(), "" | "/") {
        anyhow::bail!("the URL must not have a path");
    }
    Ok(())
}
