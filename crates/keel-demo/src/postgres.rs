//! The PostgreSQL homework (seed 002): two backends behind the front door, reads spread
//! over two PostgreSQL standbys behind `keel proxy --tcp`; kill a follower, then a
//! backend, and the application keeps answering; then what the homework could not do:
//! kill the primary, and the keepers' monitor promotes a standby that takes the writes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_chaos::Action;

use crate::narrator::{Narrator, Seen as Saw, Step};
use crate::stack::{Workdir, http, wait_for};
use crate::up::{Shape, Up, play_on};
use crate::{Demo, DemoError, Ended, Options};

const STEPS: usize = 6;
/// Requests of each look at the spread (the homework's load script).
const LOAD: usize = 100;

/// Why the demo cannot run here: no PostgreSQL server programs.
pub fn missing() -> Option<DemoError> {
    keel_pg::install::Binaries::find()
        .err()
        .map(|e| DemoError::Missing {
            what: "PostgreSQL",
            hint: format!("{e} (apt-get install postgresql)"),
        })
}

pub async fn run(work: Workdir, options: &Options) -> Ended {
    let shape = Shape {
        nodes: 0,
        services: 2,
        postgres: true,
    };
    play_on(work, shape, async |work, up| steps(work, up, options).await).await
}

async fn steps(work: &Workdir, up: &Up, options: &Options) -> Result<(), DemoError> {
    let mut n = Narrator::new(Demo::Postgres, options.auto, STEPS);
    let data = format!("{}/data", up.proxy);
    n.open(
        "keel demo postgres: the PostgreSQL homework (two backends, two PostgreSQL followers)",
        &[
            format!(
                "stack: {} (on free ports), in {}",
                up.command,
                work.path().display()
            ),
            format!("to type the commands yourself: {}", work.how_to_follow()),
        ],
    );
    let load = format!(
        "keel load {data} --requests {LOAD} --concurrency 1 --spread-by json:backend_id,json:postgres_node"
    );

    // The services' pools reach PostgreSQL through the proxy a moment after the start.
    let ready = wait_for(Duration::from_secs(30), || async {
        let answers = spread(&data, 4).await.ok()?;
        (answers.errors == 0).then_some(())
    })
    .await;
    if ready.is_none() {
        return n.judge(
            0,
            "Start the system",
            Err(format!("{data} did not answer within 30 s")),
        );
    }

    let title = "The system running normally";
    let step = Step {
        title,
        say: "The load script's requests are spread over both backends by the front door, and \
              the backends' connections over both PostgreSQL followers by keel proxy's \
              read-only port (which logs in and asks pg_is_in_recovery() to know who is a \
              follower).",
        commands: std::slice::from_ref(&load),
        watch: "backend_id: service1 and service2; postgres_node: pg2 and pg3",
    };
    let k = n.announce(&step).await;
    let seen = look(&n, &data, |s| {
        (s.backends.len() == 2 && s.nodes.len() == 2)
            .then_some(())
            .ok_or("expected both backends and both followers")
    })
    .await;
    n.judge(k, title, seen)?;

    let title = "Shut down a PostgreSQL follower";
    let step = Step {
        title,
        say: "pg3 dies (the homework's `docker kill postgres-slave2`). Reads that were on it \
              fail over to pg2 inside the service; the proxy's check marks pg3 down.",
        commands: &["keel chaos kill pg3".into(), load.clone()],
        watch: "postgres_node: only pg2, and no error",
    };
    let k = n.announce(&step).await;
    let seen = match up.chaos(Action::Kill, "pg3").await {
        Err(e) => Err(e),
        Ok(message) => {
            n.output(&message);
            look(&n, &data, |s| {
                (s.nodes.keys().all(|node| node == "pg2") && s.backends.len() == 2)
                    .then_some(())
                    .ok_or("expected every read on pg2, through both backends")
            })
            .await
        }
    };
    n.judge(k, title, seen)?;

    let title = "Restore the follower";
    let step = Step {
        title,
        say: "pg3 starts again, catches up from the primary, and the proxy's check sees it \
              answer as a follower: reads spread over both again.",
        commands: &["keel chaos restart pg3".into(), load.clone()],
        watch: "postgres_node: pg2 and pg3 again",
    };
    let k = n.announce(&step).await;
    let seen = back(&n, up, "pg3", &data, |s| s.nodes.contains_key("pg3")).await;
    n.judge(k, title, seen)?;

    let title = "Shut down a backend";
    let step = Step {
        title,
        say: "service1 dies (the homework's `docker kill backend1`). The front door sends its \
              requests to service2 — the one that failed to connect is retried there at once — \
              and PostgreSQL balancing goes on: a service keeps a connection to one follower \
              for about 5 s, then takes a new one, which the proxy sends to the next follower.",
        commands: &["keel chaos kill service1".into(), load.clone()],
        watch: "backend_id: only service2; postgres_node: still pg2 and pg3",
    };
    let k = n.announce(&step).await;
    let seen = match up.chaos(Action::Kill, "service1").await {
        Err(e) => Err(e),
        Ok(message) => {
            n.output(&message);
            match look(&n, &data, |s| {
                (s.backends.keys().all(|b| b == "service2")
                    && s.nodes.keys().all(|node| node == "pg2" || node == "pg3"))
                .then_some(())
                .ok_or("expected every answer from service2, read on the followers")
            })
            .await
            {
                Err(e) => Err(e),
                Ok(seen) => both_followers(&n, &data)
                    .await
                    .map(|more| format!("{seen}; {more}")),
            }
        }
    };
    n.judge(k, title, seen)?;

    let title = "Restore the backend";
    let step = Step {
        title,
        say: "service1 starts again (`docker compose restart backend1`); the front door's \
              checks put it back in rotation.",
        commands: &["keel chaos restart service1".into(), load.clone()],
        watch: "backend_id: service1 and service2 again",
    };
    let k = n.announce(&step).await;
    let seen = back(&n, up, "service1", &data, |s| {
        s.backends.contains_key("service1")
    })
    .await;
    n.judge(k, title, seen)?;

    let title = "Shut down the PostgreSQL primary";
    let write = format!("curl -s -X POST -d '{{\"value\":\"after the failover\"}}' {data}");
    let step = Step {
        title,
        say: "pg1, the primary, dies. The homework has no answer to this: writes fail until \
              someone promotes a follower by hand. Here a keeper runs each server, and their \
              monitor promotes a synchronous standby — one that has every acknowledged \
              commit — once pg1's lease has run out; the proxy's read-write port follows the \
              monitor, so the services' next writes land on the new primary.",
        commands: &["keel chaos kill pg1".into(), write, load],
        watch: "the write's postgres_node: pg2 or pg3, about a second after the kill; reads on the other",
    };
    let k = n.announce(&step).await;
    let seen = match up.chaos(Action::Kill, "pg1").await {
        Err(e) => Err(e),
        Ok(message) => {
            n.output(&message);
            failed_over(&n, &data).await
        }
    };
    n.judge(k, title, seen)?;
    println!("\nkeel demo postgres: every step observed");
    Ok(())
}

/// Writes through the front door until a write is taken, at most 15 s after the kill:
/// by another server than pg1, with reads going on after it.
async fn failed_over(n: &Narrator, url: &str) -> Saw {
    let http = http().map_err(|e| e.to_string())?;
    let killed = Instant::now();
    let taken = wait_for(Duration::from_secs(15), || async {
        let answer = http
            .post(url)
            .body(r#"{"value":"after the failover"}"#)
            .send()
            .await
            .ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body: serde_json::Value = answer.json().await.ok()?;
        body["postgres_node"].as_str().map(str::to_owned)
    })
    .await;
    let Some(node) = taken else {
        return Err("no write was taken within 15 s of the kill".to_owned());
    };
    let took = killed.elapsed().as_secs_f64();
    n.output(&format!(
        "the first write taken after the kill went to {node}, {took:.1} s after it"
    ));
    if node == "pg1" {
        return Err("a write was taken by pg1, which was killed".to_owned());
    }
    let reads = look(n, url, |s| {
        (!s.nodes.contains_key("pg1"))
            .then_some(())
            .ok_or("a read came from pg1, which was killed")
    })
    .await?;
    Ok(format!(
        "{node} took writes {took:.1} s after the kill; {reads}"
    ))
}

/// Who answered `count` requests of `/data`.
#[derive(Default)]
struct Spread {
    backends: BTreeMap<String, usize>,
    nodes: BTreeMap<String, usize>,
    errors: usize,
    first_error: Option<String>,
}

impl Spread {
    fn text(&self) -> String {
        let part = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "backend_id: {}; postgres_node: {}; errors: {}",
            part(&self.backends),
            part(&self.nodes),
            self.errors
        )
    }
}

async fn spread(url: &str, count: usize) -> Result<Spread, String> {
    let http = http().map_err(|e| e.to_string())?;
    let mut spread = Spread::default();
    for _ in 0..count {
        let answer = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                spread
                    .first_error
                    .get_or_insert(format!("{status}: {}", body.trim()));
                None
            }
            Err(e) => {
                spread.first_error.get_or_insert(e.to_string());
                None
            }
        };
        let Some(answer) = answer else {
            spread.errors += 1;
            continue;
        };
        let field = |name: &str| answer[name].as_str().unwrap_or("?").to_owned();
        *spread.backends.entry(field("backend_id")).or_insert(0) += 1;
        *spread.nodes.entry(field("postgres_node")).or_insert(0) += 1;
    }
    Ok(spread)
}

/// Sends the load, shows the spread, and checks it has no error and `holds`.
async fn look(n: &Narrator, url: &str, holds: impl Fn(&Spread) -> Result<(), &'static str>) -> Saw {
    let spread = spread(url, LOAD).await?;
    n.output(&spread.text());
    if spread.errors > 0 {
        return Err(format!(
            "{} of {LOAD} requests failed (first: {}): {}",
            spread.errors,
            spread.first_error.as_deref().unwrap_or("?"),
            spread.text()
        ));
    }
    holds(&spread).map_err(|why| format!("{why}; got {}", spread.text()))?;
    Ok(format!("all {LOAD} requests answered: {}", spread.text()))
}

/// Sends requests for up to 15 s until reads came from both followers: a service's
/// connection is renewed every few seconds, and the new one goes to the other follower.
async fn both_followers(n: &Narrator, url: &str) -> Saw {
    let started = Instant::now();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(15) {
        let spread = spread(url, 10).await?;
        if spread.errors > 0 {
            return Err(format!(
                "a request failed while reads moved between followers: {}",
                spread.first_error.as_deref().unwrap_or("?")
            ));
        }
        for (node, count) in spread.nodes {
            *seen.entry(node).or_insert(0) += count;
        }
        if seen.contains_key("pg2") && seen.contains_key("pg3") {
            let text = format!(
                "over the next {:.1} s reads came from {}",
                started.elapsed().as_secs_f64(),
                seen.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            n.output(&text);
            return Ok(format!("{text}: PostgreSQL balancing goes on"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "in 15 s every read came from the same follower: {seen:?}"
    ))
}

/// Restarts `name`, then sends the load until it is seen again (`seen`), at most 30 s.
async fn back(n: &Narrator, up: &Up, name: &str, url: &str, seen: impl Fn(&Spread) -> bool) -> Saw {
    let started = Instant::now();
    let message = up.chaos(Action::Restart, name).await?;
    n.output(&message);
    let again = wait_for(Duration::from_secs(30), || async {
        let spread = spread(url, 20).await.ok()?;
        (spread.errors == 0 && seen(&spread)).then_some(())
    })
    .await;
    if again.is_none() {
        return Err(format!(
            "{name} served no request within 30 s of its restart"
        ));
    }
    let took = started.elapsed();
    let shown = look(n, url, |_| Ok(())).await?;
    Ok(format!(
        "{name} was back {:.1} s after the restart; {shown}",
        took.as_secs_f64()
    ))
}
