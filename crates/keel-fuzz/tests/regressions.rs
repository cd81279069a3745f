//! Replays every case in `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/`: the
//! inputs the fuzzers found trouble with (named after the bug they pinned) and the seeds
//! they start from. The fuzzing itself runs in `scripts/fuzz`, not here.

use std::path::Path;

fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir);
    let mut replayed = 0;
    for (target, run) in keel_fuzz::TARGETS {
        let Ok(cases) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for case in cases {
            let path = case.expect("a directory entry").path();
            let data = std::fs::read(&path).expect("a case");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_case_the_fuzzers_found_stays_fixed() {
    replay("regressions");
}

#[test]
fn every_seed_of_every_target_passes() {
    assert!(
        replay("seeds") >= keel_fuzz::TARGETS.len(),
        "the seeds are missing"
    );
}
