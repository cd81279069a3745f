//! The failover challenge (seed 003): a monitor, a primary and a standby; update the
//! entries map, read it on both, kill the primary, watch the standby take over through
//! the "failover in progress" window, and — the seed's pending feature — start the dead
//! primary again so that it comes back as a standby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_chaos::Action;
use keel_client::monitor::{EventStream, Seen, stream_client};
use keel_core::Role;

use crate::narrator::{Narrator, Seen as Saw, Step};
use crate::stack::{Workdir, get_json, http};
use crate::up::{Shape, Up, play_on};
use crate::{Demo, DemoError, Ended, Options, show};

const STEPS: usize = 6;

pub async fn run(work: Workdir, options: &Options) -> Ended {
    let shape = Shape {
        nodes: 2,
        services: 0,
        postgres: false,
    };
    play_on(work, shape, async |work, up| steps(work, up, options).await).await
}

async fn steps(work: &Workdir, up: &Up, options: &Options) -> Result<(), DemoError> {
    let mut n = Narrator::new(Demo::Failover, options.auto, STEPS);
    n.open(
        "keel demo failover: the failover challenge (a monitor, a primary, a standby)",
        &[
            format!(
                "stack: {} (on free ports), in {}",
                up.command,
                work.path().display()
            ),
            format!("to type the commands yourself: {}", work.how_to_follow()),
        ],
    );

    // 1. The system as started.
    let title = "Start the system";
    let step = Step {
        title,
        say: "The monitor assigns the roles: app1 primary, app2 standby. Both heartbeat to it \
              every 100 ms; the primary acknowledges a write only once the standby has it too.",
        commands: &[up.command.clone(), "keel client cluster".into()],
        watch: "the epoch, the primary, and the standby in sync and promotable",
    };
    let k = n.announce(&step).await;
    let seen = show(&n, work, &["client", "cluster"]).await;
    let seen = match seen {
        Err(e) => Err(e),
        Ok(_) => match up.view().await {
            None => Err("the monitor did not answer".into()),
            Some(view) => {
                let primary = view.primary.as_ref().map(|p| p.node.to_string());
                let standby = view.nodes.iter().find(|s| s.role == Role::Standby);
                match (primary, standby) {
                    (Some(p), Some(s)) if s.sync && s.promotable => Ok(format!(
                        "the monitor is at epoch {}: {p} is primary; {} is a standby, in sync and promotable",
                        view.epoch, s.node
                    )),
                    (p, s) => Err(format!(
                        "expected a primary and a promotable standby; the monitor says primary {p:?}, standby {:?}",
                        s.map(|s| (&s.node, s.sync, s.promotable))
                    )),
                }
            }
        },
    };
    n.judge(k, title, seen)?;

    // 2. Update entries on the primary; the standby has them before the answer.
    let title = "Update the entries id and name";
    let update = work.path().join("update_file");
    if let Err(e) = std::fs::write(&update, "id=999\nname=Paola\n") {
        return n.judge(
            1,
            title,
            Err(format!("cannot write {}: {e}", update.display())),
        );
    }
    let step = Step {
        title,
        say: "The client sends key=value lines to the primary, which merges them into its \
              entries map, copies the write to the standby, and answers once both have it.",
        commands: &[
            "cat update_file".into(),
            "keel client update --file update_file".into(),
        ],
        watch: "the map printed back, with id 999 and name Paola",
    };
    let k = n.announce(&step).await;
    let seen = match show(&n, work, &["client", "update", "--file", "update_file"]).await {
        Err(e) => Err(e),
        Ok(_) => replicated(up).await,
    };
    n.judge(k, title, seen)?;

    // 3. get_state on both.
    let title = "Get the state of the primary and the standby";
    let step = Step {
        title,
        say: "The seed's -get_state: the map on each node, read from each node itself.",
        commands: &["keel client state all".into()],
        watch: "the same entries on both",
    };
    let k = n.announce(&step).await;
    let seen = match show(&n, work, &["client", "state", "all"]).await {
        Err(e) => Err(e),
        Ok(_) => same_maps(up).await,
    };
    n.judge(k, title, seen)?;

    // 4. Kill the primary under writes.
    let title = "Kill the primary while a client writes";
    let step = Step {
        title,
        say: "The primary dies at once (SIGKILL). A client increments a counter through the \
              front door all along. The monitor misses the heartbeats, probes, waits out the \
              old primary's lease and promotes the standby; meanwhile writes are answered \
              503 \"failover in progress\" with Retry-After: the seed's maintenance window.",
        commands: &["keel client kill-primary --watch".into()],
        watch: "the monitor's events: heartbeat missed, suspected, failover started, promoted",
    };
    let k = n.announce(&step).await;
    let seen = kill_under_writes(&n, work, up).await;
    let acked = match &seen {
        Ok((_, acked)) => *acked,
        Err(_) => 0,
    };
    n.judge(k, title, seen.map(|(text, _)| text))?;

    // 5. Nothing acknowledged was lost.
    let title = "Read the state of the new primary";
    let step = Step {
        title,
        say: "The new primary has every acknowledged write: the update of step 2 and every \
              increment the client was told succeeded.",
        commands: &[
            "keel client state primary".into(),
            format!("curl -s {}/v1/counters/demo", up.proxy),
        ],
        watch: "id 999, name Paola, and the counter",
    };
    let k = n.announce(&step).await;
    let seen = match show(&n, work, &["client", "state", "primary"]).await {
        Err(e) => Err(e),
        Ok(_) => survived(up, acked).await,
    };
    n.judge(k, title, seen)?;

    // 6. The dead primary comes back as a standby.
    let title = "Start the dead primary again";
    let step = Step {
        title,
        say: "The seed's pending feature: the old primary starts, asks the monitor for its \
              role, learns it is a standby now, drops what it never had acknowledged, catches \
              up, and becomes promotable again.",
        commands: &[
            "keel chaos restart app1".into(),
            "keel client cluster".into(),
        ],
        watch: "app1 back as a standby of the new epoch, in sync and promotable",
    };
    let k = n.announce(&step).await;
    let seen = rejoin(&n, work, up).await;
    n.judge(k, title, seen)?;
    println!("\nkeel demo failover: every step observed");
    Ok(())
}

/// The entries map of each node, read from the node itself.
async fn maps(up: &Up) -> Result<Vec<(String, serde_json::Value)>, String> {
    let http = http().map_err(|e| e.to_string())?;
    let mut maps = Vec::new();
    for (k, node) in up.nodes.iter().enumerate() {
        let body = get_json(&http, &format!("{node}/v1/entries")).await?;
        maps.push((format!("app{}", k + 1), body));
    }
    Ok(maps)
}

fn entry<'a>(map: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    map.get("entries")
        .unwrap_or(map)
        .get(key)
        .and_then(serde_json::Value::as_str)
}

async fn replicated(up: &Up) -> Saw {
    let maps = maps(up).await?;
    let missing: Vec<&str> = maps
        .iter()
        .filter(|(_, m)| entry(m, "id") != Some("999") || entry(m, "name") != Some("Paola"))
        .map(|(name, _)| name.as_str())
        .collect();
    if missing.is_empty() {
        Ok(format!(
            "the write was acknowledged, and {} have id=999 and name=Paola: the standby had it before the answer",
            names(&maps)
        ))
    } else {
        Err(format!(
            "{} do not have id=999 name=Paola",
            missing.join(" and ")
        ))
    }
}

async fn same_maps(up: &Up) -> Saw {
    let maps = maps(up).await?;
    let first = maps.first().map(|(_, m)| entries_of(m));
    if maps.iter().all(|(_, m)| Some(entries_of(m)) == first) {
        let count = first
            .and_then(|m| m.as_object().map(|o| o.len()))
            .unwrap_or(0);
        Ok(format!("{} hold the same {count} entries", names(&maps)))
    } else {
        Err(format!("the maps differ: {maps:?}"))
    }
}

fn entries_of(map: &serde_json::Value) -> serde_json::Value {
    map.get("entries").unwrap_or(map).clone()
}

fn names(maps: &[(String, serde_json::Value)]) -> String {
    let names: Vec<&str> = maps.iter().map(|(n, _)| n.as_str()).collect();
    names.join(" and ")
}

/// What the client writing through the front door saw.
#[derive(Default)]
struct Writes {
    acked: AtomicU64,
    in_failover: AtomicU64,
    /// Acknowledged after the kill.
    acked_after: AtomicU64,
    /// The other answers, by status and error code (`502 bad_gateway`), with their count.
    other_kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Writes {
    fn other(&self, kind: String) {
        if let Ok(mut kinds) = self.other_kinds.lock() {
            *kinds.entry(kind).or_insert(0) += 1;
        }
    }

    /// `3 × 502 bad_gateway, 1 × connection refused`, or `none`.
    fn other_text(&self) -> String {
        let kinds = self
            .other_kinds
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        if kinds.is_empty() {
            return "no other error".into();
        }
        let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
        format!("other answers: {}", parts.join(", "))
    }
}

async fn kill_under_writes(n: &Narrator, work: &Workdir, up: &Up) -> Result<(String, u64), String> {
    let before = up.view().await.ok_or("the monitor did not answer")?;
    let old = before
        .primary
        .as_ref()
        .map(|p| p.node.to_string())
        .ok_or("no primary to kill")?;
    let monitor = up.monitor.clone().ok_or("no monitor")?;
    let events = Events::follow(&monitor).await?;
    let writes = Arc::new(Writes::default());
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(
        up.proxy.clone(),
        writes.clone(),
        killed.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    killed.store(true, Ordering::SeqCst);
    let ran = work
        .keel(
            &["client", "kill-primary", "--watch"],
            Duration::from_secs(30),
        )
        .await;
    let promoted = up
        .wait_view(Duration::from_secs(15), |v| {
            v.primary
                .as_ref()
                .is_some_and(|p| p.node.to_string() != old)
                && !v.failover_in_progress
        })
        .await;
    let took = started.elapsed();
    // Writes go on a little past the failover, to show they are served again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let seen_events = events.finish();
    if let Ok(ran) = &ran {
        n.output(&ran.shown());
    }
    let ran = ran?;
    if !ran.success {
        return Err(format!(
            "`keel client kill-primary --watch` failed ({:?})",
            ran.code
        ));
    }
    let view =
        promoted.ok_or_else(|| format!("no standby was promoted within 15 s of killing {old}"))?;
    let new = view
        .primary
        .as_ref()
        .map(|p| p.node.to_string())
        .unwrap_or_default();
    let kinds: Vec<String> = seen_events
        .iter()
        .map(|e| e.kind.replace('_', " "))
        .collect();
    for needed in ["heartbeat missed", "suspected", "promoted"] {
        if !kinds.iter().any(|k| k == needed) {
            return Err(format!(
                "the monitor's events lack \"{needed}\": {}",
                kinds.join(", ")
            ));
        }
    }
    let acked = writes.acked.load(Ordering::SeqCst);
    let after = writes.acked_after.load(Ordering::SeqCst);
    if after == 0 {
        return Err(format!(
            "no write was acknowledged after the failover to {new}"
        ));
    }
    Ok((
        format!(
            "{new} was primary at epoch {} within {} ms of the kill (the monitor said: {}); \
             the client's writes: {acked} acknowledged ({after} since the kill), {} answered \
             \"failover in progress\" (503, Retry-After); {}",
            view.epoch,
            took.as_millis(),
            dedup(&kinds).join(" → "),
            writes.in_failover.load(Ordering::SeqCst),
            writes.other_text(),
        ),
        acked,
    ))
}

/// The kinds in order, each once.
fn dedup(kinds: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kind in kinds {
        if !out.contains(kind) {
            out.push(kind.clone());
        }
    }
    out
}

/// The monitor's events from the moment it was opened, read in the background.
struct Events {
    reader: tokio::task::JoinHandle<()>,
    came: std::sync::mpsc::Receiver<Seen>,
}

impl Events {
    /// Starts reading the monitor's event stream.
    async fn follow(monitor: &str) -> Result<Events, String> {
        let http = stream_client(Duration::from_secs(1), None).map_err(|e| e.to_string())?;
        let mut stream = EventStream::open(&http, monitor, None)
            .await
            .map_err(|e| format!("cannot follow the monitor's events: {e}"))?;
        let (tx, came) = std::sync::mpsc::channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(data)) = stream.next_data().await {
                if let Ok(seen) = Seen::parse(&data) {
                    // The receiver lives until `finish`; after it nothing needs the event.
                    let _ = tx.send(seen);
                }
            }
        });
        Ok(Events { reader, came })
    }

    /// Stops reading; every event that came, in order.
    fn finish(self) -> Vec<Seen> {
        self.reader.abort();
        self.came.try_iter().collect()
    }
}

async fn write_loop(
    proxy: String,
    writes: Arc<Writes>,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let Ok(http) = http() else { return };
    let url = format!("{proxy}/v1/counters/demo/incr");
    while !stop.load(Ordering::SeqCst) {
        match http.post(&url).send().await {
            Ok(r) if r.status().is_success() => {
                writes.acked.fetch_add(1, Ordering::SeqCst);
                if killed.load(Ordering::SeqCst) {
                    writes.acked_after.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let code = body["error"].as_str().unwrap_or("").to_owned();
                if status == 503 && code == "failover_in_progress" {
                    writes.in_failover.fetch_add(1, Ordering::SeqCst);
                } else {
                    writes.other(format!("{status} {code}"));
                }
            }
            Err(e) => writes.other(keel_client::monitor::root_cause(&e)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn survived(up: &Up, acked: u64) -> Saw {
    let view = up.view().await.ok_or("the monitor did not answer")?;
    let primary = view.primary.as_ref().ok_or("no primary")?;
    let http = http().map_err(|e| e.to_string())?;
    let entries: serde_json::Value =
        get_json(&http, &format!("{}/v1/entries", primary.url)).await?;
    if entry(&entries, "id") != Some("999") || entry(&entries, "name") != Some("Paola") {
        return Err(format!("{} lost the update: {entries}", primary.node));
    }
    let counter: serde_json::Value =
        get_json(&http, &format!("{}/v1/counters/demo", primary.url)).await?;
    let value = counter["value"]
        .as_u64()
        .ok_or_else(|| format!("no counter value: {counter}"))?;
    if value < acked {
        return Err(format!(
            "the counter is {value}, but {acked} increments were acknowledged: writes were lost"
        ));
    }
    Ok(format!(
        "{} has id=999 and name=Paola, and the counter is {value} for {acked} acknowledged increments: none lost",
        primary.node
    ))
}

async fn rejoin(n: &Narrator, work: &Workdir, up: &Up) -> Saw {
    let before = up.view().await.ok_or("the monitor did not answer")?;
    let dead = before
        .nodes
        .iter()
        .find(|s| !s.healthy)
        .map(|s| s.node.to_string())
        .ok_or("no dead node to start again")?;
    let started = Instant::now();
    let message = up.chaos(Action::Restart, &dead).await?;
    n.output(&message);
    let epoch = before.epoch;
    let back = up
        .wait_view(Duration::from_secs(20), |v| {
            let primary_lsn = v
                .nodes
                .iter()
                .find(|s| s.role == Role::Primary)
                .map(|s| s.lsn);
            v.nodes.iter().any(|s| {
                s.node.to_string() == dead
                    && s.role == Role::Standby
                    && s.healthy
                    && s.promotable
                    && Some(s.lsn) == primary_lsn
            })
        })
        .await;
    let took = started.elapsed();
    show(n, work, &["client", "cluster"]).await?;
    let view = back.ok_or_else(|| {
        format!("{dead} did not come back as a promotable, caught-up standby within 20 s")
    })?;
    let lsn = view
        .nodes
        .iter()
        .find(|s| s.node.to_string() == dead)
        .map(|s| s.lsn.to_string())
        .unwrap_or_default();
    Ok(format!(
        "{dead} came back as a standby at epoch {epoch}, caught up to lsn {lsn} and promotable, {:.1} s after the restart",
        took.as_secs_f64()
    ))
}
