//! Writers that follow the primary through failovers, and the check that no write they
//! saw acknowledged was lost: shared by the failover tests with one monitor and with a
//! group of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::{http_client, wait_until};

/// One acknowledged write, as the writer saw it.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub value: u64,
    pub node: String,
    pub at: Instant,
}

/// Writers that find the primary through the monitor and write until stopped: each
/// writer owns one key and writes 1, 2, 3… to it, so the final value of a key shows
/// whether an acknowledged write was lost or overwritten by an older one.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Writers {
    /// `n` writers finding the primary through `monitors` (one URL, or a group's
    /// separated by commas).
    pub fn start(monitors: &str, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let threads = (0..n)
            .map(|w| {
                let (monitors, stop, acks) = (monitors.to_owned(), stop.clone(), acks.clone());
                thread::spawn(move || write_loop(&monitors, w, &stop, &acks))
            })
            .collect();
        Writers {
            stop,
            acks,
            threads,
        }
    }

    pub fn count(&self) -> usize {
        self.acks.lock().expect("lock").len()
    }

    /// How many writes were acknowledged between `from` and `to`.
    pub fn acked_between(&self, from: Instant, to: Instant) -> usize {
        let acks = self.acks.lock().expect("lock");
        acks.iter().filter(|a| a.at > from && a.at < to).count()
    }

    pub fn wait_more(&self, more: usize) {
        let target = self.count() + more;
        assert!(
            wait_until(Duration::from_secs(30), || self.count() >= target),
            "writes stalled at {} (wanted {target})",
            self.count()
        );
    }

    pub fn finish(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("writer thread");
        }
        self.acks.lock().expect("lock").clone()
    }
}

fn write_loop(monitors: &str, w: usize, stop: &AtomicBool, acks: &Mutex<Vec<Ack>>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let key = format!("writer-{w}");
    let mut next = 1u64;
    let mut primary: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let url = match &primary {
            Some(url) => url.clone(),
            None => {
                // The first monitor that answers: a group's followers know the primary too.
                let found = monitors.split(',').find_map(|monitor| {
                    client
                        .get(format!("{monitor}/v1/cluster"))
                        .send()
                        .ok()
                        .and_then(|r| r.json::<serde_json::Value>().ok())
                        .and_then(|v| v["primary"]["url"].as_str().map(str::to_owned))
                });
                match found {
                    Some(url) => {
                        primary = Some(url.clone());
                        url
                    }
                    None => {
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
        };
        let value = next;
        next += 1;
        match client
            .put(format!("{url}/v1/kv/{key}"))
            .body(value.to_string())
            .send()
        {
            Ok(r) if r.status() == StatusCode::OK => {
                let node = r
                    .headers()
                    .get("keel-node")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                acks.lock().expect("lock").push(Ack {
                    key: key.clone(),
                    value,
                    node,
                    at: Instant::now(),
                });
            }
            // Not acknowledged (a failover, a dead node, a standby): find the primary again.
            _ => {
                primary = None;
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Every acknowledged write is present: each key holds at least the last value
/// acknowledged for it (a later, unacknowledged one may have landed too).
pub fn assert_nothing_lost(acks: &[Ack], node_url: &str, node: &str) {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for a in acks {
        let v = last.entry(&a.key).or_default();
        *v = (*v).max(a.value);
    }
    for (key, acked) in last {
        let resp = http_client()
            .get(format!("{node_url}/v1/kv/{key}"))
            .send()
            .expect("GET");
        assert_eq!(resp.status(), StatusCode::OK, "{key} missing on {node}");
        let value: u64 = resp.text().expect("body").parse().expect("a number");
        assert!(
            value >= acked,
            "{key} on {node} is {value}, but {acked} was acknowledged"
        );
    }
}
