//! `keel demo NAME`: a seed's step table, narrated and checked (see docs/demos.md).

use std::process::ExitCode;

use anyhow::Context;
use keel_demo::{Demo, Options};

use crate::cli::{DemoArgs, DemoName};

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the keel binary to run the stack")?;
    let options = Options {
        exe,
        auto: args.auto,
        keep: args.keep,
    };
    let demos: Vec<Demo> = match args.demo {
        DemoName::Failover => vec![Demo::Failover],
        DemoName::Resilience => vec![Demo::Resilience],
        DemoName::Balance => vec![Demo::Balance],
        DemoName::Redis => vec![Demo::Redis],
        DemoName::Postgres => vec![Demo::Postgres],
        DemoName::All => Demo::ALL.to_vec(),
    };
    let all = demos.len() > 1;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut skipped = Vec::new();
    for demo in demos {
        // `all` plays what this machine can run; a demo asked for by name says what it
        // lacks and fails.
        if all && let Some(missing) = demo.missing() {
            println!("\nkeel demo {}: skipped: {missing}", demo.name());
            skipped.push(demo.name());
            continue;
        }
        // Ctrl-C ends the demo where it is: dropping its run stops what it started (the
        // processes are killed on drop) and removes its directory.
        let played = runtime.block_on(async {
            tokio::select! {
                played = keel_demo::run(demo, &options) => Some(played),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        match played {
            Some(played) => played.with_context(|| format!("keel demo {}", demo.name()))?,
            None => {
                println!("\nkeel demo {}: stopped (Ctrl-C)", demo.name());
                // A wait for Enter may still hold a thread on the terminal.
                runtime.shutdown_background();
                return Ok(ExitCode::from(130));
            }
        }
    }
    if all {
        if skipped.is_empty() {
            println!("\nkeel demo all: every demo observed what it should");
        } else {
            println!(
                "\nkeel demo all: every demo that ran observed what it should (skipped: {})",
                skipped.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
