//! `keel chaos`: faults on demand against a stack that `keel up` runs — the `docker kill`
//! and `docker compose pause` steps of the seeds, as commands, and network partitions of
//! the data tier.
//!
//! The actions are carried out by `keel up`'s supervisor (its control API, found through
//! `<data-dir>/up.json`), which is the parent of every process and reaps it, and which
//! carries a partition out (the fault files its children follow, or under `keel up
//! --netns` the kernel's rules in their namespaces); this command only asks, with the
//! admin token. `keel chaos run` draws faults from a seeded random generator, so the same
//! seed gives the same sequence of faults, targets and timings, and restores each fault
//! before the next one. The client and the draws are `keel_chaos`'s; this parses and
//! prints.

use std::process::ExitCode;

use anyhow::Context;
use keel_chaos::{Action, Control, RunSettings};

use crate::cli::{ChaosArgs, ChaosCommand, RunArgs};

pub fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(chaos(args))
}

async fn chaos(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let env_token = std::env::var("KEEL_TOKEN").ok();
    let control = Control::find(
        &args.data_dir,
        args.up.as_deref(),
        args.token_file.as_deref(),
        env_token.as_deref(),
    )?;
    let message = match &args.command {
        ChaosCommand::List => {
            for p in control.processes().await? {
                let pid = p.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string());
                println!("{:10} {:8} pid {:>7}  {}", p.name, p.state, pid, p.url);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ChaosCommand::Kill { name } => control.act(name, Action::Kill).await?.message,
        ChaosCommand::Pause { name } => control.act(name, Action::Pause).await?.message,
        ChaosCommand::Resume { name } => control.act(name, Action::Resume).await?.message,
        ChaosCommand::Restart { name } => control.act(name, Action::Restart).await?.message,
        ChaosCommand::Partition { node, from } => control.partition(node, from).await?.message,
        ChaosCommand::Heal => control.heal().await?.message,
        ChaosCommand::Run(run) => {
            keel_chaos::run::run(
                &control,
                &run_settings(run),
                keel_core::shutdown::signal(),
                |line| println!("{line}"),
            )
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

fn run_settings(args: &RunArgs) -> RunSettings {
    RunSettings {
        duration: args.duration,
        seed: args.seed,
        faults: args.faults.clone(),
        targets: args.targets.clone(),
        min_gap: args.min_gap,
        max_gap: args.max_gap,
        min_hold: args.min_hold,
        max_hold: args.max_hold,
    }
}
