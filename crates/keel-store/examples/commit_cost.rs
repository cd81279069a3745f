//! How long one group commit takes, by batch size: `cargo run --release -p keel-store --example commit_cost`.
use std::time::Instant;

use keel_core::Epoch;
use keel_store::{Command, Expect, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), 10_000)?;
    let mut n = 0u64;
    for batch in [1usize, 16, 64] {
        let rounds = 300;
        let start = Instant::now();
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
        let per = start.elapsed() / rounds;
        println!("batch {batch:>3}: {per:?} per commit");
    }
    Ok(())
}
