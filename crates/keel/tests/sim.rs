//! `keel sim` as a person runs it: many seeds with a summary, one seed's trace, a group
//! of monitors, and bad flags refused with a clear message.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn seeds_with_three_monitors_pass_and_say_how_many_leaders_were_elected() {
    let out = support::run_keel(&["sim", "--seeds", "1..20", "--monitors", "3"]);
    let stdout = &out.stdout;
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("3 nodes, 3 monitor(s)"),
        "the run says what it simulates: {stdout}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("20 seeds, 0 failed;") && summary.contains("monitor leaders elected"),
        "{summary}"
    );
}

#[test]
fn a_trace_shows_the_monitors_electing_a_leader() {
    let out = support::run_keel(&["sim", "--seed", "3", "--monitors", "3", "--trace"]);
    let stdout = &out.stdout;
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("elected leader of term 1"), "{stdout}");
    assert!(stdout.contains("leads the group in term 1"), "{stdout}");
}

#[test]
fn an_even_number_of_monitors_is_refused_with_the_reason() {
    let out = support::run_keel(&["sim", "--monitors", "2"]);
    assert!(!out.status.success());
    let stderr = &out.stderr;
    assert!(stderr.contains("run 1, 3 or 5 monitors"), "{stderr}");
}

/// `keel sim --seed N --trace | head`: the reader goes away early, and keel stops quietly.
#[test]
fn a_trace_piped_into_a_reader_that_stops_early_ends_without_a_panic() {
    let mut child = Command::new(support::keel_bin())
        .args(["sim", "--seed", "5", "--monitors", "3", "--trace"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel sim");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a first line");
    assert!(first.contains("seed 5"), "{first}");
    // The pipe's read end is closed here.
    let out = child.wait_with_output().expect("keel sim ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn two_groups_move_slots_and_the_summary_counts_the_moves() {
    let out = support::run_keel(&["sim", "--seeds", "1..20", "--groups", "2"]);
    let stdout = &out.stdout;
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("2 groups of 3 nodes, 1 monitor(s)"),
        "the run says what it simulates: {stdout}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    let moves: u64 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" slot moves done"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of slot moves: {summary}"));
    assert!(summary.starts_with("20 seeds, 0 failed;"), "{summary}");
    assert!(moves > 0, "{summary}");
}

#[test]
fn a_trace_of_two_groups_shows_a_move_copied_and_switched() {
    let out = support::run_keel(&["sim", "--seed", "3", "--groups", "2", "--trace"]);
    let stdout = &out.stdout;
    assert!(out.status.success(), "{stdout}");
    for step in [
        "operator: move slots",
        "SlotsMoving: slots",
        "copies slots",
        "SlotsMoved: slots",
        "misdirected: g1's in table 3",
    ] {
        assert!(stdout.contains(step), "no {step:?} in the trace:\n{stdout}");
    }
}

#[test]
fn more_than_four_groups_are_refused_with_the_range() {
    let out = support::run_keel(&["sim", "--groups", "5"]);
    assert!(!out.status.success());
    let stderr = &out.stderr;
    assert!(
        stderr.contains("--groups") && stderr.contains("1..=4"),
        "{stderr}"
    );
}
