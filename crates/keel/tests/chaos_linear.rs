//! A minute of `keel chaos run` — kills and pauses of the primary, the standby and each of
//! three monitors — under concurrent writers and readers, and every key's history checked
//! for linearizability with the simulator's checker (`keel_sim::linear`): a write whose
//! outcome was unknown may take effect at any time after it was sent, or never.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keel_sim::linear::{self, Kind, Op};
use support::KeelUp;

const KEYS: usize = 3;

/// What the clients saw: every key's operations, and the primaries that acknowledged
/// writes.
#[derive(Default)]
struct Seen {
    ops: BTreeMap<String, Vec<Op>>,
    primaries: BTreeSet<String>,
}

type History = Arc<Mutex<Seen>>;

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// The primary's URL, per the monitors' leader.
fn primary(client: &reqwest::blocking::Client, monitors: &[String]) -> Option<String> {
    monitors.iter().find_map(|m| {
        let view: serde_json::Value = client
            .get(format!("{m}/v1/cluster"))
            .timeout(Duration::from_millis(300))
            .send()
            .ok()?
            .json()
            .ok()?;
        let group = &view["monitors"];
        if group["leader"] != group["answered_by"] || view["failover_in_progress"] == true {
            return None;
        }
        view["primary"]["url"].as_str().map(str::to_owned)
    })
}

/// One client: reads and writes of the keys, until stopped, each recorded with when it
/// was sent and when (if ever) it was answered.
fn client_loop(
    c: usize,
    monitors: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: History,
    values: Arc<AtomicU64>,
) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut target: Option<String> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let Some(url) = target.clone().or_else(|| primary(&client, &monitors)) else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        target = Some(url.clone());
        let key = format!("k{}", (c + i) % KEYS);
        let write = i.is_multiple_of(2);
        let invoke = micros(start);
        if write {
            let value = values.fetch_add(1, Ordering::Relaxed);
            let sent = client
                .put(format!("{url}/v1/kv/{key}"))
                .body(value.to_string())
                .send();
            let (kind, complete) = match sent {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    let done = micros(start);
                    history.lock().expect("lock").primaries.insert(url.clone());
                    (Kind::Write(value), Some(done))
                }
                Ok(r) => {
                    target = None;
                    let body: serde_json::Value = r.json().unwrap_or_default();
                    if body["written"] == false || body["error"] == "not_primary" {
                        // Nothing was written: not part of the history.
                        continue;
                    }
                    (Kind::Write(value), None)
                }
                Err(_) => {
                    target = None;
                    (Kind::Write(value), None)
                }
            };
            history
                .lock()
                .expect("lock")
                .ops
                .entry(key)
                .or_default()
                .push(Op {
                    client: c,
                    kind,
                    invoke,
                    complete,
                });
        } else {
            let Ok(r) = client.get(format!("{url}/v1/kv/{key}")).send() else {
                target = None;
                continue;
            };
            // Only a primary's answer is a linearizable read; a standby's is stale by
            // design and says so.
            let primary = r
                .headers()
                .get("keel-role")
                .is_some_and(|v| v.as_bytes() == b"primary");
            let value = match r.status() {
                reqwest::StatusCode::OK if primary => r.text().ok().and_then(|t| t.parse().ok()),
                reqwest::StatusCode::NOT_FOUND if primary => None,
                _ => {
                    target = None;
                    continue;
                }
            };
            history
                .lock()
                .expect("lock")
                .ops
                .entry(key)
                .or_default()
                .push(Op {
                    client: c,
                    kind: Kind::Read(value),
                    invoke,
                    complete: Some(micros(start)),
                });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `keel up --monitors 3`, writers and readers, `keel chaos run --seed SEED` for 60 s,
/// then the history checked.
fn chaos_minute(seed: u64) {
    let dir = support::tempdir();
    let data = dir.path().join("keel-data");
    let (base, mon) = support::ports_for_three_monitors();
    let mut tier = KeelUp::start_on(&data, 2, base, mon, &["--monitors", "3"]);
    let monitors: Vec<String> = (0..3).map(|k| support::url_for(mon + k)).collect();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history: History = Arc::default();
    let values = Arc::new(AtomicU64::new(1));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (monitors, stop, history, values) = (
                monitors.clone(),
                stop.clone(),
                history.clone(),
                values.clone(),
            );
            thread::spawn(move || client_loop(c, monitors, start, stop, history, values))
        })
        .collect();

    let data_arg = data.display().to_string();
    let seed_arg = seed.to_string();
    // A minute of faults: longer than `run_keel` waits for a command.
    let mut chaos = support::KeelProcess::spawn_captured(
        "chaos",
        &[
            "chaos",
            "--data-dir",
            &data_arg,
            "run",
            "--duration",
            "60s",
            "--seed",
            &seed_arg,
            "--faults",
            "kill,pause",
            "--targets",
            "app1,app2,m1,m2,m3",
        ],
    );
    let status = chaos
        .wait_timeout(Duration::from_secs(150))
        .unwrap_or_else(|| panic!("keel chaos run did not end\n{}", chaos.log_report()));
    let timeline = chaos.log_text();
    assert!(status.success(), "{timeline}");
    // Everything restored: a primary again, and the clients go on a little.
    assert!(
        support::wait_until(Duration::from_secs(20), || {
            let client = support::http_client();
            primary(&client, &monitors).is_some()
        }),
        "no primary after the chaos\n{}",
        tier.proc.log_report()
    );
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let seen = std::mem::take(&mut *history.lock().expect("lock"));
    let all = || seen.ops.values().flatten();
    let ops = all().count();
    let unknown = all().filter(|o| o.complete.is_none()).count();
    let reads = all().filter(|o| matches!(o.kind, Kind::Read(_))).count();
    assert!(ops > 500, "too few operations to mean anything: {ops}");
    assert!(
        seen.primaries.len() >= 2,
        "seed {seed}: every write went to {:?}: the chaos never failed the primary over\n{timeline}",
        seen.primaries
    );
    for (key, ops) in &seen.ops {
        if let Err(e) = linear::check(ops) {
            panic!(
                "seed {seed}: key {key} is not linearizable: stuck at {:?} after {} operations\n{}",
                e.stuck.iter().take(3).collect::<Vec<_>>(),
                e.longest.len(),
                timeline
            );
        }
    }
    eprintln!(
        "seed {seed}: {ops} operations ({reads} reads, {unknown} writes of unknown outcome), \
         {} primaries, linearizable\n{timeline}",
        seen.primaries.len()
    );
    assert!(tier.proc.terminate().success());
}

#[test]
fn a_minute_of_kills_and_pauses_of_nodes_and_monitors_seed_1_stays_linearizable() {
    chaos_minute(1);
}

#[test]
fn a_minute_of_kills_and_pauses_of_nodes_and_monitors_seed_2_stays_linearizable() {
    chaos_minute(2);
}
