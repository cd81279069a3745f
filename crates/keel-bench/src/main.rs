//! `keel-writebench`: a closed-loop write benchmark that puts the same load on keel, etcd
//! and Redis, so that their sync-replicated durable writes can be compared fairly.
//!
//! It opens `--concurrency` keep-alive connections, one task each, and every task keeps
//! exactly one write in flight: a unique key `bench-<client>-<n>` with a `--value-size`
//! byte value. Writes that finish during the `--warmup` are thrown away; writes that
//! finish in the `--duration` after it are counted. A write that fails or times out is an
//! error, never a success.
//!
//! What one write is, per `--target`:
//!
//! | target  | write                                                                 |
//! |---------|-----------------------------------------------------------------------|
//! | `keel`  | `PUT /v1/kv/{key}` with the raw value as body; `200` is a success     |
//! | `etcd`  | `POST /v3/kv/put` with `{"key": b64, "value": b64}` (JSON gateway)    |
//! | `redis` | `SET key value` then `WAIT 1 0` on the same connection; the write      |
//! |         | counts only when `WAIT` reports at least one replica                  |
//!
//! Run it (the cluster must already be up; `scripts/bench/replication.sh` does it all):
//!
//! ```text
//! cargo run --release -p keel-bench --bin keel-writebench -- \
//!     --target keel --url http://127.0.0.1:8081 --concurrency 64 --duration 10s --warmup 2s
//! ```
//!
//! `keel-writebench failover …` is the other mode: writers that follow the primary through
//! kill -9 cycles and report how long writes were unavailable and how many acknowledged
//! writes were lost (`scripts/bench/failover.sh` drives it; see [`failover`]).
//!
//! `keel-writebench pg-failover …` does the same for PostgreSQL clusters (keel's keepers,
//! Patroni, pg_auto_failover): one writer committing a row every few milliseconds on a
//! multi-host connection, while the mode itself kills the primary's node (or its
//! postmaster alone) and waits for the member to rejoin (`scripts/bench/postgres-failover.sh` drives it; see
//! [`pg_failover`]).
//!
//! Modules: [`cli`] parses the flags, [`writer`] and its two transports ([`http_writer`],
//! [`redis_writer`]) send one write, [`driver`] runs the clients and times them,
//! [`report`] turns the histograms into the figures printed. For the failover mode,
//! [`failover`] runs the writers, [`discovery`] finds the primary, [`gaps`] computes the
//! windows, [`verify`] reads the writes back, [`failover_report`] prints the result. For
//! PostgreSQL, [`pg_failover`] runs the cycles, [`pg_kill`] kills a member, [`pg_writer`]
//! commits, [`pg_report`] prints.

mod cli;
mod discovery;
mod driver;
mod failover;
mod failover_report;
mod gaps;
mod http_writer;
mod pg_failover;
mod pg_kill;
mod pg_report;
mod pg_writer;
mod redis_writer;
mod report;
mod verify;
mod writer;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keel-writebench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match (cli.mode, cli.throughput) {
        (Some(cli::Mode::Failover(args)), _) => {
            let report = runtime.block_on(failover::run(&args))?;
            print(&report, args.json)
        }
        (Some(cli::Mode::PgFailover(args)), _) => {
            let report = runtime.block_on(pg_failover::run(&args))?;
            print(&report, args.json)
        }
        (None, Some(args)) => {
            let report = runtime.block_on(driver::run(&args))?;
            print(&report, args.json)
        }
        // clap requires the throughput flags when there is no subcommand.
        (None, None) => anyhow::bail!("give --target and --url, or a subcommand; see --help"),
    }
}

fn print<R: std::fmt::Display + serde::Serialize>(report: &R, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
