//! Lab 7, load balancing: two services that name themselves, round robin through the
//! front door, weights 3:1, one service stopped (no request fails), and started again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_chaos::Action;

use crate::narrator::{Narrator, Seen as Saw, Step};
use crate::stack::{Workdir, get_json, http, wait_for};
use crate::up::{Shape, Up, play_on};
use crate::{Demo, DemoError, Ended, Options};

const STEPS: usize = 5;
const ROUND: usize = 10;
const WEIGHTED: usize = 40;
const DURING_FAULT: usize = 20;

pub async fn run(work: Workdir, options: &Options) -> Ended {
    let shape = Shape {
        nodes: 1,
        services: 2,
        postgres: false,
    };
    play_on(work, shape, async |work, up| steps(work, up, options).await).await
}

async fn steps(work: &Workdir, up: &Up, options: &Options) -> Result<(), DemoError> {
    let mut n = Narrator::new(Demo::Balance, options.auto, STEPS);
    n.open(
        "keel demo balance: lab 7 (round robin, weights, a service stopped) through keel proxy",
        &[
            format!(
                "stack: {} (on free ports), in {}",
                up.command,
                work.path().display()
            ),
            format!("to type the commands yourself: {}", work.how_to_follow()),
        ],
    );
    let proxy = format!("{}/", up.proxy);
    let loop_cmd =
        |count: usize| format!("for i in $(seq {count}); do curl -s {proxy} | head -1; done");

    let title = "Ask each service directly";
    let commands: Vec<String> = up
        .services
        .iter()
        .map(|s| format!("curl -s {s}/"))
        .collect();
    let step = Step {
        title,
        say: "Two instances of the same service, each saying who it is (the lab's SERVER_NAME).",
        commands: &commands,
        watch: "Hello from service1, Hello from service2",
    };
    let k = n.announce(&step).await;
    let seen = direct(&n, up).await;
    n.judge(k, title, seen)?;

    let title = "Round robin through the front door";
    let step = Step {
        title,
        say: "keel proxy sends each request to the next service in turn (the lab's nginx \
              upstream with two servers).",
        commands: &[loop_cmd(ROUND)],
        watch: "service1, service2, service1, …",
    };
    let k = n.announce(&step).await;
    let seen = match ask(&proxy, ROUND).await {
        Err(e) => Err(e),
        Ok(answers) => {
            n.output(&answers.join("\n"));
            round_robin(&answers)
        }
    };
    n.judge(k, title, seen)?;

    let title = "Weighted balancing 3:1";
    let admin = format!("{}/v1/backends/service1/weight", up.proxy_admin);
    let step = Step {
        title,
        say: "service1 gets weight 3 (the lab's `server service1:5055 weight=3`), changed \
              while the proxy runs; smooth weighted round robin spreads it evenly, s1 s1 s2 s1 over \
              and over: no burst longer than the weight.",
        commands: &[
            format!(
                "curl -X PUT -H \"Authorization: Bearer $(cat keel-data/admin.token)\" -d '{{\"weight\":3}}' {admin}"
            ),
            loop_cmd(WEIGHTED),
        ],
        watch: "three service1 for one service2",
    };
    let k = n.announce(&step).await;
    let seen = weighted(&n, work, &proxy, &admin, 3).await;
    n.judge(k, title, seen)?;

    let title = "Stop one service";
    let step = Step {
        title,
        say: "service1 dies (SIGKILL). The proxy's first request to it fails to connect; the \
              proxy sends that request to service2 at once and ejects service1: the client \
              never sees the failure.",
        commands: &["keel chaos kill service1".into(), loop_cmd(DURING_FAULT)],
        watch: "every answer from service2, and no error",
    };
    let k = n.announce(&step).await;
    let seen = stopped(&n, up, &proxy).await;
    n.judge(k, title, seen)?;

    let title = "Start it again";
    let step = Step {
        title,
        say: "service1 comes back; the proxy's health checks see it answer, and it gets traffic \
              again, a small share at first (slow start) so a cold service is not flooded.",
        commands: &[
            "keel chaos restart service1".into(),
            format!("curl -s {}/v1/backends", up.proxy_admin),
        ],
        watch: "service1's state: down, then warming, then up",
    };
    let k = n.announce(&step).await;
    let seen = restarted(&n, up, &proxy).await;
    n.judge(k, title, seen)?;
    println!("\nkeel demo balance: every step observed");
    Ok(())
}

/// The first line of each of `count` answers of `url`: `Hello from serviceN`.
async fn ask(url: &str, count: usize) -> Result<Vec<String>, String> {
    let http = http().map_err(|e| e.to_string())?;
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        let response = http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}: {}", text.trim()));
        }
        answers.push(text.lines().next().unwrap_or_default().to_owned());
    }
    Ok(answers)
}

/// `service1` from `Hello from service1`.
fn who(answer: &str) -> &str {
    answer.strip_prefix("Hello from ").unwrap_or(answer)
}

fn spread(answers: &[String]) -> BTreeMap<&str, usize> {
    let mut spread = BTreeMap::new();
    for answer in answers {
        *spread.entry(who(answer)).or_insert(0) += 1;
    }
    spread
}

fn spread_text(spread: &BTreeMap<&str, usize>) -> String {
    let parts: Vec<String> = spread.iter().map(|(k, v)| format!("{k} {v}")).collect();
    parts.join(", ")
}

async fn direct(n: &Narrator, up: &Up) -> Saw {
    let mut seen = Vec::new();
    for (k, service) in up.services.iter().enumerate() {
        let answer = ask(&format!("{service}/"), 1).await?.join("");
        n.output(&answer);
        let expected = format!("service{}", k + 1);
        if who(&answer) != expected {
            return Err(format!(
                "{service} answered {answer:?}, expected {expected}"
            ));
        }
        seen.push(answer);
    }
    Ok(format!("each service names itself: {}", seen.join("; ")))
}

fn round_robin(answers: &[String]) -> Saw {
    let alternates = answers.windows(2).all(|w| who(&w[0]) != who(&w[1]));
    let spread = spread(answers);
    if alternates && spread.len() == 2 {
        Ok(format!(
            "the services took turns, never the same twice in a row: {}",
            spread_text(&spread)
        ))
    } else {
        Err(format!(
            "the answers did not alternate: {}",
            answers.join(", ")
        ))
    }
}

async fn weighted(n: &Narrator, work: &Workdir, proxy: &str, admin: &str, weight: u32) -> Saw {
    let token = std::fs::read_to_string(work.path().join("keel-data/admin.token"))
        .map_err(|e| format!("cannot read the admin token: {e}"))?;
    let http = http().map_err(|e| e.to_string())?;
    let answer = http
        .put(admin)
        .bearer_auth(token.trim())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(format!("{{\"weight\":{weight}}}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("PUT {admin}: {e}"))?
        .text()
        .await
        .unwrap_or_default();
    n.output(&answer);
    let answers = ask(proxy, WEIGHTED).await?;
    let pattern: Vec<&str> = answers
        .iter()
        .map(|a| match who(a) {
            "service1" => "s1",
            "service2" => "s2",
            other => other,
        })
        .collect();
    n.output(&pattern.join(" "));
    weighted_spread(&answers, weight as usize)
}

/// Whether `answers` show service1 at `weight` to service2's 1, in runs no longer than
/// the weight (smooth weighted round robin).
fn weighted_spread(answers: &[String], weight: usize) -> Saw {
    let spread = spread(answers);
    let ones = spread.get("service1").copied().unwrap_or(0);
    let twos = spread.get("service2").copied().unwrap_or(0);
    let longest_run = answers
        .chunk_by(|a, b| who(a) == who(b))
        .map(<[String]>::len)
        .max()
        .unwrap_or(0);
    let expected_ones = answers.len() * weight / (weight + 1);
    if ones == expected_ones && twos == answers.len() - expected_ones && longest_run <= weight {
        Ok(format!(
            "service1 {ones}, service2 {twos}: exactly {weight} to 1, never more than {longest_run} in a row"
        ))
    } else {
        Err(format!(
            "expected {expected_ones} to {} with runs of at most {weight}, got {} (longest run {longest_run})",
            answers.len() - expected_ones,
            spread_text(&spread)
        ))
    }
}

/// The proxy's state of `name` (`up`, `warming`, `down`, `ejected`…) and its share of
/// its weight.
async fn backend(up: &Up, name: &str) -> Result<(String, f64), String> {
    let http = http().map_err(|e| e.to_string())?;
    let body = get_json(&http, &format!("{}/v1/backends", up.proxy_admin)).await?;
    let all = body["backends"].as_array().cloned().unwrap_or_default();
    let one = all
        .iter()
        .find(|b| b["name"] == name)
        .ok_or_else(|| format!("the proxy has no backend {name}: {body}"))?;
    Ok((
        one["state"].as_str().unwrap_or("?").to_owned(),
        one["weight_share"].as_f64().unwrap_or(1.0),
    ))
}

async fn stopped(n: &Narrator, up: &Up, proxy: &str) -> Saw {
    let message = up.chaos(Action::Kill, "service1").await?;
    n.output(&message);
    let answers = ask(proxy, DURING_FAULT).await?;
    n.output(&answers.join("\n"));
    let spread = spread(&answers);
    let (state, _) = backend(up, "service1").await?;
    if spread.len() == 1 && spread.contains_key("service2") && state != "up" {
        Ok(format!(
            "all {DURING_FAULT} requests answered 200, by service2; the proxy holds service1 {state}"
        ))
    } else {
        Err(format!(
            "expected every answer from service2 and service1 out of rotation, got {} (service1 {state})",
            spread_text(&spread)
        ))
    }
}

async fn restarted(n: &Narrator, up: &Up, proxy: &str) -> Saw {
    let started = Instant::now();
    let message = up.chaos(Action::Restart, "service1").await?;
    n.output(&message);
    let back = wait_for(Duration::from_secs(15), || async {
        backend(up, "service1")
            .await
            .ok()
            .filter(|(state, _)| state == "up" || state == "warming")
    })
    .await;
    let (state, share) = back.ok_or("service1 was not back in rotation within 15 s")?;
    let took = started.elapsed();
    // Slow start gives it a small share first: ask until it answers once, at most 200 times.
    let http = http().map_err(|e| e.to_string())?;
    let mut asked = 0;
    let mut answered = false;
    while asked < 200 && !answered {
        asked += 1;
        let text = http
            .get(proxy)
            .send()
            .await
            .map_err(|e| format!("GET {proxy}: {e}"))?
            .text()
            .await
            .unwrap_or_default();
        answered = text.starts_with("Hello from service1");
    }
    if !answered {
        return Err(format!(
            "service1 is {state} but answered none of {asked} requests"
        ));
    }
    Ok(format!(
        "service1 was {state} {:.1} s after the restart, at {:.0}% of its weight, and answered request {asked} through the front door",
        took.as_secs_f64(),
        share * 100.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(names: &str) -> Vec<String> {
        names
            .split_whitespace()
            .map(|n| format!("Hello from service{}", &n[1..]))
            .collect()
    }

    #[test]
    fn round_robin_holds_only_when_the_services_take_turns() {
        assert!(round_robin(&answers("s1 s2 s1 s2 s1 s2")).is_ok());
        let seen = round_robin(&answers("s1 s2 s2 s1 s1 s2"));
        assert!(
            seen.as_ref()
                .is_err_and(|e| e.contains("did not alternate")),
            "{seen:?}"
        );
        assert!(round_robin(&answers("s1 s1 s1")).is_err());
    }

    #[test]
    fn weights_three_to_one_hold_only_with_the_exact_share_and_short_runs() {
        let smooth = answers("s1 s1 s2 s1 s1 s1 s2 s1");
        let seen = weighted_spread(&smooth, 3);
        assert_eq!(
            seen,
            Ok("service1 6, service2 2: exactly 3 to 1, never more than 3 in a row".into())
        );
        // The right share, but in a burst longer than the weight: not smooth.
        assert!(weighted_spread(&answers("s1 s1 s1 s1 s2 s1 s1 s2"), 3).is_err());
        // Round robin ignoring the weight.
        assert!(weighted_spread(&answers("s1 s2 s1 s2 s1 s2 s1 s2"), 3).is_err());
    }
}
