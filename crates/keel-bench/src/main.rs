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
//! Modules: [`cli`] parses the flags, [`writer`] and its two transports ([`http_writer`],
//! [`redis_writer`]) send one write, [`driver`] runs the clients and times them,
//! [`report`] turns the histograms into the figures printed.

mod cli;
mod driver;
mod http_writer;
mod redis_writer;
mod report;
mod writer;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keel-writebench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(driver::run(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
