//! `keel demo NAME --auto`: each seed's step table played against a real stack that the
//! demo starts itself, every observation checked by the demo — and here, that it said so.

mod support;

use std::time::Duration;

use support::{KeelProcess, describe_status, run_keel_env};

/// Runs `keel demo NAME --auto` to its end and returns what it printed; fails unless it
/// exited 0 having observed every one of its steps.
fn play(name: &str) -> String {
    let mut demo = KeelProcess::spawn_captured(&format!("demo-{name}"), &["demo", name, "--auto"]);
    let Some(status) = demo.wait_timeout(Duration::from_secs(240)) else {
        panic!(
            "keel demo {name} did not end within 240 s:\n{}",
            demo.log_report()
        );
    };
    let out = demo.log_text();
    assert!(
        status.success(),
        "keel demo {name} failed ({}):\n{out}",
        describe_status(status)
    );
    let total = out
        .lines()
        .find_map(|l| l.strip_prefix("Step 1/"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no step table in:\n{out}"));
    let observed = out.matches("✓ observed: ").count();
    assert_eq!(observed, total, "every step observed once:\n{out}");
    assert!(!out.contains('✗'), "{out}");
    assert!(
        out.contains(&format!("keel demo {name}: every step observed")),
        "{out}"
    );
    out
}

/// The observation printed for step `title`.
fn observed<'a>(out: &'a str, title: &str) -> &'a str {
    let at = out
        .find(&format!(": {title}\n"))
        .unwrap_or_else(|| panic!("no step {title:?} in:\n{out}"));
    out[at..]
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("✓ observed: "))
        .unwrap_or_else(|| panic!("step {title:?} has no observation:\n{out}"))
}

#[test]
fn the_failover_demo_promotes_the_standby_loses_nothing_and_the_dead_primary_rejoins() {
    let out = play("failover");
    let killed = observed(&out, "Kill the primary while a client writes");
    assert!(
        killed.starts_with("app2 was primary at epoch 2 within "),
        "{killed}"
    );
    assert!(killed.contains("promoted"), "{killed}");
    let read = observed(&out, "Read the state of the new primary");
    assert!(read.ends_with("none lost"), "{read}");
    let rejoined = observed(&out, "Start the dead primary again");
    assert!(
        rejoined.starts_with("app1 came back as a standby at epoch 2"),
        "{rejoined}"
    );
    // The commands shown are the ones that ran: their output is in the narration.
    assert!(out.contains("$ keel client kill-primary --watch"), "{out}");
    assert!(out.contains("killed app1 (the primary)"), "{out}");
}

#[test]
fn the_resilience_demo_retries_falls_back_and_opens_and_closes_the_breaker() {
    let out = play("resilience");
    let plain = observed(&out, "Ask the flaky service");
    assert!(plain.contains("requests answered 503"), "{plain}");
    let fallback = observed(&out, "Complete failure: the fallback");
    assert!(fallback.contains("served the cached answer"), "{fallback}");
    let breaker = observed(&out, "A circuit breaker");
    assert!(
        breaker.starts_with("the breaker went closed -> open")
            && breaker.contains("half_open -> closed")
            && breaker.contains("were refused without being sent"),
        "{breaker}"
    );
}

#[test]
fn the_balance_demo_alternates_weighs_three_to_one_and_hides_a_dead_service() {
    let out = play("balance");
    let weighted = observed(&out, "Weighted balancing 3:1");
    assert!(
        weighted.starts_with("service1 30, service2 10"),
        "{weighted}"
    );
    let stopped = observed(&out, "Stop one service");
    assert!(
        stopped.starts_with("all 20 requests answered 200, by service2"),
        "{stopped}"
    );
}

#[test]
fn the_redis_demo_waits_once_for_the_timeout_then_fails_fast_then_counts_again() {
    let out = play("redis");
    let paused = observed(&out, "Pause Redis");
    assert!(
        paused.starts_with("the first request waited 2.")
            && paused.ends_with("the breaker is open"),
        "{paused}"
    );
    let back = observed(&out, "Unpause Redis");
    assert!(back.contains("the breaker closed"), "{back}");
}

#[test]
fn the_postgres_demo_answers_through_a_dead_follower_a_dead_backend_and_a_dead_primary() {
    let out = play("postgres");
    let follower = observed(&out, "Shut down a PostgreSQL follower");
    assert!(
        follower.contains("postgres_node: pg2 100; errors: 0"),
        "{follower}"
    );
    let backend = observed(&out, "Shut down a backend");
    assert!(
        backend.contains("backend_id: service2 100;") && backend.contains("balancing goes on"),
        "{backend}"
    );
    let primary = observed(&out, "Shut down the PostgreSQL primary");
    assert!(
        (primary.starts_with("pg2 took writes") || primary.starts_with("pg3 took writes"))
            && primary.contains("errors: 0"),
        "{primary}"
    );
}

#[test]
fn a_demo_whose_server_is_missing_says_what_to_install_and_fails() {
    let out = run_keel_env(
        &["demo", "postgres", "--auto"],
        &[("KEEL_PG_BIN", "/nonexistent/postgresql/bin")],
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("PostgreSQL is not installed")
            && out.stderr.contains("apt-get install postgresql"),
        "{out}"
    );
}
