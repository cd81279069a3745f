//! What one group commit costs, by store and batch size: the wall time, and the CPU this
//! process spent (the kernel's work for the `fdatasync` included), so a commit's fixed
//! cost shows against its cost per write.
//!
//! `cargo run --release -p keel-store --example commit_cost` (Linux: the CPU time is read
//! from `/proc/self/schedstat`). Not a test: the figures depend on the disk.
use std::time::{Duration, Instant};

use keel_core::Epoch;
use keel_store::{Command, Expect, LogStore, Storage, Store};

type Error = Box<dyn std::error::Error>;

/// The nanoseconds this (single-threaded) process has run on a CPU.
fn cpu() -> Result<Duration, Error> {
    let stat = std::fs::read_to_string("/proc/self/schedstat")?;
    let nanos = stat
        .split_whitespace()
        .next()
        .ok_or("/proc/self/schedstat is empty")?
        .parse()?;
    Ok(Duration::from_nanos(nanos))
}

/// Commits `rounds` batches of `batch` puts of 64 bytes; the wall time and CPU time per
/// commit.
fn measure(store: &impl Storage, batch: usize, rounds: u32) -> Result<(Duration, Duration), Error> {
    let mut n = 0u64;
    let (cpu0, start) = (cpu()?, Instant::now());
    for _ in 0..rounds {
        let cmds: Vec<Command> = (0..batch)
            .map(|_| {
                n += 1;
                Command::Put {
                    key: format!("bench-{n}"),
                    value: vec![b'x'; 64],
                    expect: Expect::Any,
                }
            })
            .collect();
        store.execute(Epoch(1), &cmds)?;
    }
    Ok((start.elapsed() / rounds, (cpu()? - cpu0) / rounds))
}

fn main() -> Result<(), Error> {
    println!("store  batch  wall/commit   cpu/commit  cpu/write");
    for store in ["redb", "log"] {
        for batch in [1usize, 8, 16, 64] {
            let dir = tempfile::tempdir()?;
            let rounds = 1_000;
            let (wall, cpu) = match store {
                "redb" => measure(&Store::open(dir.path(), 10_000)?, batch, rounds)?,
                _ => measure(&LogStore::open(dir.path(), 10_000)?, batch, rounds)?,
            };
            println!(
                "{store:<5} {batch:>6} {:>9.1} µs {:>9.1} µs {:>7.1} µs",
                wall.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e6 / batch as f64
            );
        }
    }
    Ok(())
}
