//! `keel sim`: many seeds of the deterministic simulator, a line per failing seed with
//! the invariant it broke and the steps that led there, and a summary; or one seed, in
//! full with `--trace`. The simulation is `keel_sim`'s; this reads flags and prints.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use crate::cli::SimArgs;

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let config = keel_sim::Config {
        nodes: args.nodes as usize,
        groups: args.groups as usize,
        monitors: usize::from(args.monitors),
        faults: args.faults,
        active_ms: args.active_ms,
        settle_ms: args.settle_ms,
        ..keel_sim::Config::default()
    };
    if let Some(seed) = args.seed {
        let outcome = keel_sim::run(seed, &config);
        if args.trace {
            let mut out = std::io::stdout().lock();
            for line in &outcome.trace {
                if writeln!(out, "{line}").is_err() {
                    // The reader went away (`keel sim --trace | head`): stop quietly.
                    return Ok(exit_code(&outcome));
                }
            }
        }
        return Ok(report_one(seed, &outcome));
    }
    let seeds = args.seeds.clone();
    let total = seeds.end() - seeds.start() + 1;
    let layout = match config.groups {
        1 => format!("{} nodes", config.nodes),
        g => format!("{g} groups of {} nodes", config.nodes),
    };
    println!(
        "simulating seeds {}..{} ({total}): {layout}, {} monitor(s), faults {}",
        seeds.start(),
        seeds.end(),
        config.monitors,
        config.faults
    );
    let started = Instant::now();
    let mut done = 0u64;
    let summary = keel_sim::run_seeds(seeds, &config, args.tail, |seed, outcome| {
        done += 1;
        if let Some(v) = &outcome.violation {
            println!(
                "seed {seed}: FAILED at {} ms: {}: {}",
                v.at_ms, v.invariant, v.detail
            );
            let start = outcome.trace.len().saturating_sub(args.tail);
            for line in &outcome.trace[start..] {
                println!("    {line}");
            }
            println!("    replay: keel sim --seed {seed} --trace");
        }
        if done.is_multiple_of(100) && done < total {
            eprintln!("  {done}/{total} seeds");
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} seeds, {} failed; {} writes acknowledged, {} reads, {} of unknown outcome, {} failovers, {}{}{} steps; {:.1} s ({:.0} seeds/s)",
        summary.seeds,
        summary.failures.len(),
        summary.writes_ok,
        summary.reads_ok,
        summary.unknown,
        summary.failovers,
        if config.groups > 1 {
            format!(
                "{} slot moves done, {} called off, ",
                summary.moves, summary.cancelled
            )
        } else {
            String::new()
        },
        if config.monitors > 1 {
            format!("{} monitor leaders elected, ", summary.elections)
        } else {
            String::new()
        },
        summary.steps,
        secs,
        summary.seeds as f64 / secs.max(1e-9)
    );
    Ok(if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report_one(seed: u64, outcome: &keel_sim::Outcome) -> ExitCode {
    match &outcome.violation {
        Some(v) => {
            println!(
                "seed {seed}: FAILED at {} ms: {}: {}",
                v.at_ms, v.invariant, v.detail
            );
            ExitCode::FAILURE
        }
        None => {
            println!(
                "seed {seed}: ok; {} writes acknowledged, {} reads, {} of unknown outcome, {} failovers, {} slot moves done, {} called off, {} steps",
                outcome.writes_ok,
                outcome.reads_ok,
                outcome.unknown,
                outcome.failovers,
                outcome.moves,
                outcome.cancelled,
                outcome.steps
            );
            ExitCode::SUCCESS
        }
    }
}

fn exit_code(outcome: &keel_sim::Outcome) -> ExitCode {
    match outcome.violation {
        Some(_) => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    }
}
