//! `keel load`: HTTP load on this machine with a live view, a final report (text on
//! stdout, `--json`, `--plot`) and, with `--verify`, a count of lost acknowledged writes.
//!
//! The work is done by the keel-load crate; this module turns the flags into its
//! settings, picks the runtime, and decides the exit code: 0 when the run happened, 3
//! when `--verify` found lost acknowledged writes, 1 on any error (including writes
//! that could not be read back, since then the count of lost ones is incomplete).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::{Context, bail};
use keel_load::settings::{DEFAULT_RATE_CONNECTIONS, check_url};
use keel_load::{Bound, Bytes, LiveMode, Pace, Plan, RunOptions, Settings, VerifyOptions};

use crate::cli::LoadArgs;

/// Connections of a closed loop when neither `--rate` nor `--concurrency` is given
/// (wrk's default too).
const DEFAULT_CONCURRENCY: u32 = 10;

/// How long a run lasts when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION: std::time::Duration = std::time::Duration::from_secs(10);

/// The exit code when `--verify` found lost acknowledged writes.
const LOST_WRITES_EXIT: u8 = 3;

/// The most worker threads `--threads` may ask for.
const MAX_THREADS: usize = 64;

pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    // One monitor, or a group's URLs separated by commas: the events and the primary
    // then come from whichever leads.
    let monitor = args
        .monitor
        .as_deref()
        .map(|m| {
            keel_client::monitor::monitor_list(m)
                .iter()
                .map(|url| check_url(url, args.allow_remote).map(|t| t.origin))
                .collect::<Result<Vec<_>, _>>()
                .map(|urls| urls.join(","))
        })
        .transpose()
        .context("--monitor")?
        .filter(|m| !m.is_empty());
    let verify_from = match &args.verify_url {
        Some(url) => Some(
            check_url(url, args.allow_remote)
                .context("--verify-url")?
                .origin,
        ),
        None => None,
    };
    if args.verify && plan.settings.write_ratio <= 0.0 {
        bail!(
            "--verify needs writes to check: give --write-ratio above 0 (1 makes every request a write)"
        );
    }

    let live = if args.quiet {
        LiveMode::Quiet
    } else if std::io::stderr().is_terminal() {
        LiveMode::Terminal
    } else {
        LiveMode::Lines
    };
    let runtime = runtime(args.threads)?;
    runtime.block_on(async {
        let outcome = keel_load::run(
            &plan,
            RunOptions {
                live,
                monitor: monitor.clone(),
            },
            keel_core::shutdown::signal(),
        )
        .await?;
        let mut report = outcome.report;
        if args.verify {
            let options = VerifyOptions {
                tls: plan.settings.tls.clone(),
                run_id: report.run_id.clone(),
                read_from: verify_from.unwrap_or_else(|| plan.target.origin.clone()),
                // An explicit --verify-url is where to read; the monitor is asked only
                // when none was given.
                monitor: if args.verify_url.is_some() {
                    None
                } else {
                    monitor.clone()
                },
                within: args.verify_timeout,
                allow_remote: args.allow_remote,
            };
            report.verify = Some(keel_load::verify(&outcome.writes, &options).await?);
        }

        print!("{}", report.to_text());
        if let Some(path) = &args.json {
            let json = serde_json::to_vec_pretty(&report).context("cannot encode the report")?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
        }
        if let Some(path) = &args.plot {
            keel_load::plot::write_svg(&report, path)?;
        }

        match &report.verify {
            Some(v) if v.unreadable > 0 => bail!(
                "{} of {} acknowledged writes could not be read back within {:?} ({}); \
                 the count of lost writes is incomplete",
                v.unreadable,
                v.acknowledged,
                args.verify_timeout,
                v.unreadable_reason.as_deref().unwrap_or("no reason")
            ),
            Some(v) if v.lost > 0 => Ok(ExitCode::from(LOST_WRITES_EXIT)),
            _ => Ok(ExitCode::SUCCESS),
        }
    })
}

/// The flags as a checked plan.
fn plan(args: &LoadArgs) -> anyhow::Result<Plan> {
    let pace = match (args.rate, args.concurrency) {
        (Some(per_second), _) => Pace::Rate {
            per_second,
            connections: args.connections.unwrap_or(DEFAULT_RATE_CONNECTIONS),
        },
        (None, n) => Pace::Concurrency(n.unwrap_or(DEFAULT_CONCURRENCY)),
    };
    let bound = match (args.duration, args.requests) {
        (_, Some(n)) => Bound::Requests(n),
        (d, None) => Bound::Duration(d.unwrap_or(DEFAULT_DURATION)),
    };
    let method = http::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| anyhow::anyhow!("--method {:?} is not an HTTP method", args.method))?;
    let body = match args.body.as_deref() {
        None => Bytes::new(),
        Some(text) => match text.strip_prefix('@') {
            Some(path) => Bytes::from(
                std::fs::read(path).with_context(|| format!("--body: cannot read {path}"))?,
            ),
            None => Bytes::from(text.to_owned()),
        },
    };
    Ok(Plan::new(Settings {
        url: args.url.clone(),
        pace,
        bound,
        method,
        body,
        headers: args.headers.clone(),
        timeout: args.timeout,
        write_ratio: args.write_ratio,
        spread_by: args.spread_by.clone(),
        allow_remote: args.allow_remote,
        tls: match &args.tls_ca {
            Some(ca) => Some(
                keel_auth::tls::client_for_ca(ca)
                    .with_context(|| format!("--tls-ca {}", ca.display()))?,
            ),
            None => None,
        },
    })?)
}

/// One thread: a current-thread runtime, which spares a load on one core the work of a
/// multi-threaded scheduler. More: that many workers.
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if threads == 0 || threads > MAX_THREADS {
        bail!("--threads must be from 1 to {MAX_THREADS}, not {threads}");
    }
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
