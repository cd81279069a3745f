//! `keel up`: the whole system on this machine, in the foreground — the seed's `main.py`
//! grown a front door: a monitor, the data nodes `app1..appN`, the app services
//! `service1..serviceN` (their visits counter kept in the data tier through the proxy)
//! and `keel proxy` at :8080, which spreads `/` over the services and sends `/v1/…` to
//! whichever node is primary. Each is this executable started again with a subcommand,
//! with its own directory under `--data-dir`, all sharing the admin token in
//! `<data-dir>/admin.token` (generated once, then kept).
//!
//! What a person reads is the monitor's event stream, one line per event, and the
//! children's own logs prefixed with their names (warnings only unless `--verbose`). A
//! process that dies is reported with the command that starts it again, and stays dead.
//! On Ctrl-C or SIGTERM the proxy and the services stop first, then the monitor, then the
//! primary, then the standbys.
//!
//! The supervisor, the plan, the partitions (`--netns`) and the control API that `keel
//! chaos` speaks are `keel_chaos`'s; this parses the flags and prints.

use std::io::Write as _;
use std::pin::pin;
use std::process::ExitCode;

use anyhow::Context;
use keel_chaos::settings::RestartPolicy;
use keel_chaos::{Settings, Up};

use crate::cli::{PgArgs, StackArgs, UpArgs};

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    run_settings(settings(&args))
}

/// `keel pg`: the same, without the data tier — PostgreSQL, the services and the proxy.
pub fn run_pg(args: PgArgs) -> anyhow::Result<ExitCode> {
    // No nodes: no data tier.
    run_settings(Settings {
        data_dir: args.data_dir,
        postgres: Some(keel_chaos::settings::PgPorts {
            pg_port: args.pg_port,
            tcp_port: args.tcp_port,
            keeper_port: args.keeper_port,
        }),
        ..stack(&args.stack)
    })
}

fn run_settings(settings: Settings) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(up(settings))
}

async fn up(settings: Settings) -> anyhow::Result<ExitCode> {
    let mut stop_signal = pin!(keel_core::shutdown::signal());
    // Poll once so the handlers are installed before any child exists: a Ctrl-C from
    // then on reaches this code instead of killing the process and orphaning the nodes.
    tokio::select! {
        biased;
        () = &mut stop_signal => return Ok(ExitCode::SUCCESS),
        () = std::future::ready(()) => {}
    }
    let exe =
        std::env::current_exe().context("cannot find the keel executable to start the nodes")?;
    let mut up = Up::prepare(settings, exe).await?;

    let started = tokio::select! {
        r = up.start() => Some(r),
        () = &mut stop_signal => None,
    };
    match started {
        None => {
            println!("interrupted during startup; stopping");
            up.shutdown().await;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Err(e)) => {
            up.shutdown().await;
            return Err(e.into());
        }
        Some(Ok(())) => {}
    }
    let (view, pg_view, groups) = (up.view().await, up.pg_view().await, up.group_views().await);
    up.write_up_file()?;
    print!("{}", up.banner(view.as_ref(), pg_view.as_ref(), &groups));
    let _ = std::io::stdout().flush();

    up.serve(&mut stop_signal).await;
    println!("stopping everything");
    up.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn settings(args: &UpArgs) -> Settings {
    Settings {
        // --nodes is per group.
        nodes: args.nodes * args.shards,
        shards: args.shards,
        data_dir: args.data_dir.clone(),
        base_port: args.base_port,
        store: args.store.map(|s| s.to_string()),
        monitors: args.monitors,
        monitor_port: args.monitor_port,
        netns: args.netns,
        tls: args.tls,
        postgres: args.postgres.then_some(keel_chaos::settings::PgPorts {
            pg_port: args.pg_port,
            tcp_port: args.tcp_port,
            keeper_port: args.keeper_port,
        }),
        ..stack(&args.stack)
    }
}

/// The app tier's and the front door's settings; no data tier (no nodes), no
/// PostgreSQL, for the caller to add.
fn stack(args: &StackArgs) -> Settings {
    Settings {
        nodes: 0,
        shards: 1,
        data_dir: std::path::PathBuf::new(),
        base_port: 8081,
        store: None,
        monitors: 1,
        monitor_port: 8070,
        services: args.services,
        service_port: args.service_port,
        proxy_port: args.proxy_port,
        proxy_admin_port: args.proxy_admin_port,
        control_port: args.control_port,
        verbose: args.verbose,
        netns: false,
        tls: false,
        restart: match args.restart.as_str() {
            "on-failure" => RestartPolicy::OnFailure,
            "always" => RestartPolicy::Always,
            _ => RestartPolicy::Never,
        },
        postgres: None,
    }
}
