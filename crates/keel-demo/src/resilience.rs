//! Lab 6, fault tolerance: the flaky service (30% 503s, a degraded mode, total failure),
//! the lab's client with retries, a fallback when every try fails, and a circuit breaker
//! that opens, refuses without sending, probes and closes.

use std::time::Duration;

use crate::narrator::{Narrator, Seen as Saw, Step};
use crate::stack::{Proc, Workdir, free_ports, http, metric_sum, wait_healthy};
use crate::{Demo, DemoError, Ended, Options, show};

const STEPS: usize = 5;
/// Seeds the flaky service's draws, so that every run of the demo sees the same answers.
const SEED: &str = "7";
/// How many times step 1 asks the service.
const PLAIN_REQUESTS: usize = 20;
const FETCHES: usize = 10;
/// The circuit breaker's run: fetches, their spacing, and when the service is healed.
const BREAKER_FETCHES: usize = 20;

pub async fn run(work: Workdir, options: &Options) -> Ended {
    let flaky = match start(&work).await {
        Ok(started) => started,
        Err(e) => return Err((work, e)),
    };
    let result = steps(&work, &flaky, options).await;
    flaky.proc.stop(Duration::from_secs(5)).await;
    match result {
        Ok(()) => Ok(work),
        Err(e) => Err((work, e)),
    }
}

struct Flaky {
    proc: Proc,
    url: String,
    token: String,
}

async fn start(work: &Workdir) -> Result<Flaky, DemoError> {
    let token = keel_core::token::Token::generate().map_err(DemoError::Dir)?;
    let token_file = work.path().join("admin.token");
    std::fs::write(&token_file, token.secret()).map_err(DemoError::Dir)?;
    let port = free_ports(1)?;
    let url = format!("http://127.0.0.1:{port}");
    let mut proc = work.spawn_keel(
        "flaky",
        &[
            "flaky".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--seed".into(),
            SEED.into(),
            "--token-file".into(),
            "admin.token".into(),
        ],
    )?;
    wait_healthy(&mut proc, &url).await?;
    Ok(Flaky {
        proc,
        url: format!("{url}/"),
        token: token.secret().to_owned(),
    })
}

async fn steps(work: &Workdir, flaky: &Flaky, options: &Options) -> Result<(), DemoError> {
    let mut n = Narrator::new(Demo::Resilience, options.auto, STEPS);
    let url = &flaky.url;
    n.open(
        "keel demo resilience: lab 6 (retry, fallback, circuit breaker) against a flaky service",
        &[
            format!(
                "stack: keel flaky --seed {SEED} --token-file admin.token (on {url}), in {}",
                work.path().display()
            ),
            format!("to type the commands yourself: {}", work.how_to_follow()),
        ],
    );
    let mode = |body: &str| {
        format!(
            "curl -X PUT -H \"Authorization: Bearer $(cat admin.token)\" -d '{body}' {url}admin/mode"
        )
    };

    let title = "Ask the flaky service";
    let step = Step {
        title,
        say: "In normal mode the service answers 503 Service Unavailable to about 30% of \
              requests, as the lab's Flask service does (seeded here, so every run is the same).",
        commands: &[format!(
            "for i in $(seq {PLAIN_REQUESTS}); do curl -s -o /dev/null -w '%{{http_code}} ' {url}; done"
        )],
        watch: "the status codes: mostly 200, some 503",
    };
    let k = n.announce(&step).await;
    let seen = plain(&n, url).await;
    n.judge(k, title, seen)?;

    let title = "The lab's client: retry";
    let fetch_count = FETCHES.to_string();
    let args = [
        "client",
        "fetch",
        url.as_str(),
        "--retries",
        "3",
        "--retry-delay",
        "200ms",
        "--fallback-cache",
        "cache",
        "--count",
        fetch_count.as_str(),
        "--interval",
        "0s",
        "--json",
    ];
    let step = Step {
        title,
        say: "The client tries again after a failure (3 retries, 200 ms apart; the lab's are \
              1 s) and keeps the last good answer in a cache for later.",
        commands: &[format!("keel {}", args.join(" "))],
        watch: "\"Attempt 1 failed: 503\" lines, then every fetch answered by the service",
    };
    let k = n.announce(&step).await;
    let seen = match show(&n, work, &args).await {
        Err(e) => Err(e),
        Ok(ran) => retried(&ran.stdout),
    };
    n.judge(k, title, seen)?;

    let title = "Degraded mode";
    let step = Step {
        title,
        say: "The service switches to its fallback mode: 200, with less data and a message \
              that says so. The client recognises the degraded answer instead of trusting it.",
        commands: &[
            mode(r#"{"mode":"fallback"}"#),
            format!("keel client fetch {url} --fallback-cache cache --json"),
        ],
        watch: "\"degraded\": true and data [1, 2, 3]",
    };
    let k = n.announce(&step).await;
    let seen = match set_mode(flaky, r#"{"mode":"fallback"}"#).await {
        Err(e) => Err(e),
        Ok(()) => match show(
            &n,
            work,
            &[
                "client",
                "fetch",
                url,
                "--fallback-cache",
                "cache",
                "--json",
            ],
        )
        .await
        {
            Err(e) => Err(e),
            Ok(ran) => degraded(&ran.stdout),
        },
    };
    n.judge(k, title, seen)?;

    let title = "Complete failure: the fallback";
    let step = Step {
        title,
        say: "The service fails every request. The client's retries all fail too; instead of an \
              error it serves the last good answer from its cache, marked stale — and with \
              nothing cached, the lab's fallback message.",
        commands: &[
            mode(r#"{"mode":"failure"}"#),
            format!(
                "keel client fetch {url} --retries 3 --retry-delay 200ms --fallback-cache cache --json"
            ),
            format!("keel client fetch {url} --retries 1 --retry-delay 200ms --json"),
        ],
        watch: "\"source\": \"cache\" with \"stale\": true, then \"source\": \"fallback\"",
    };
    let k = n.announce(&step).await;
    let seen = fallback(&n, work, flaky).await;
    n.judge(k, title, seen)?;

    let title = "A circuit breaker";
    let spec = "failures=2,open=600ms,half-open=1";
    let step = Step {
        title,
        say: "Still failing: after 2 failures in a row the breaker opens, and the client stops \
              sending — it answers at once from the fallback, sparing the service. After 600 ms \
              it lets one trial call through (half-open). One second in, keel demo heals the \
              service; the next trial succeeds and the breaker closes.",
        commands: &[
            format!(
                "keel client fetch {url} --retries 0 --breaker {spec} --count {BREAKER_FETCHES} --interval 150ms --json"
            ),
            mode(r#"{"mode":"normal","failure_rate":0}"#),
        ],
        watch: "closed -> open, open -> half_open, half_open -> closed; and how few requests reached the service",
    };
    let k = n.announce(&step).await;
    let seen = breaker(&n, work, flaky, spec).await;
    n.judge(k, title, seen)?;
    println!("\nkeel demo resilience: every step observed");
    Ok(())
}

async fn plain(n: &Narrator, url: &str) -> Saw {
    let http = http().map_err(|e| e.to_string())?;
    let mut codes = Vec::new();
    for _ in 0..PLAIN_REQUESTS {
        let status = http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .status()
            .as_u16();
        codes.push(status);
    }
    let line: Vec<String> = codes.iter().map(u16::to_string).collect();
    n.output(&line.join(" "));
    let failed = codes.iter().filter(|&&c| c == 503).count();
    let other = codes.iter().filter(|&&c| c != 503 && c != 200).count();
    if failed == 0 || failed == PLAIN_REQUESTS || other > 0 {
        return Err(format!(
            "expected a mix of 200 and 503, got {}",
            line.join(" ")
        ));
    }
    Ok(format!(
        "{failed} of {PLAIN_REQUESTS} requests answered 503, the others 200 ({}%)",
        failed * 100 / PLAIN_REQUESTS
    ))
}

/// The JSON lines `keel client fetch --json` printed.
fn fetched(stdout: &str) -> Result<Vec<serde_json::Value>, String> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).map_err(|e| format!("not keel client fetch's JSON ({e}): {l}"))
        })
        .collect()
}

fn retried(stdout: &str) -> Saw {
    let lines = fetched(stdout)?;
    let fresh = lines.iter().filter(|l| l["source"] == "service").count();
    let attempts: u64 = lines.iter().filter_map(|l| l["attempts"].as_u64()).sum();
    let needed = lines
        .iter()
        .filter(|l| l["attempts"].as_u64().is_some_and(|a| a > 1))
        .count();
    if lines.len() != FETCHES || fresh != FETCHES {
        return Err(format!(
            "{fresh} of {} fetches were answered by the service, expected all {FETCHES}",
            lines.len()
        ));
    }
    Ok(format!(
        "all {FETCHES} fetches got the service's answer, in {attempts} attempts: {needed} of them needed retries, none reached the user as an error"
    ))
}

fn degraded(stdout: &str) -> Saw {
    let lines = fetched(stdout)?;
    let line = lines.first().ok_or("keel client fetch printed nothing")?;
    if line["degraded"] == true && line["body"]["data"] == serde_json::json!([1, 2, 3]) {
        Ok(format!(
            "status {}, recognised as degraded: {}",
            line["status"], line["body"]["message"]
        ))
    } else {
        Err(format!("expected a degraded answer, got {line}"))
    }
}

async fn set_mode(flaky: &Flaky, body: &str) -> Result<(), String> {
    let http = http().map_err(|e| e.to_string())?;
    let url = format!("{}admin/mode", flaky.url);
    http.put(&url)
        .bearer_auth(&flaky.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map(|_| ())
        .map_err(|e| format!("PUT {url} {body}: {e}"))
}

async fn fallback(n: &Narrator, work: &Workdir, flaky: &Flaky) -> Saw {
    set_mode(flaky, r#"{"mode":"failure"}"#).await?;
    let url = flaky.url.as_str();
    let cached = [
        "client",
        "fetch",
        url,
        "--retries",
        "3",
        "--retry-delay",
        "200ms",
        "--fallback-cache",
        "cache",
        "--json",
    ];
    // Exit code 2 means "answered from the fallback": the point of this step.
    let ran = work.keel(&cached, Duration::from_secs(30)).await?;
    n.output(&ran.shown());
    let from_cache = fetched(&ran.stdout)?;
    let line = from_cache
        .first()
        .ok_or("keel client fetch printed nothing")?;
    if line["source"] != "cache" || line["stale"] != true || ran.code != Some(2) {
        return Err(format!(
            "expected the cached answer, marked stale (exit code 2), got {line} ({:?})",
            ran.code
        ));
    }
    let bare = [
        "client",
        "fetch",
        url,
        "--retries",
        "1",
        "--retry-delay",
        "200ms",
        "--json",
    ];
    let ran = work.keel(&bare, Duration::from_secs(30)).await?;
    n.output(&ran.shown());
    let fallback = fetched(&ran.stdout)?;
    let bare_line = fallback
        .first()
        .ok_or("keel client fetch printed nothing")?;
    if bare_line["source"] != "fallback" {
        return Err(format!("expected the fallback answer, got {bare_line}"));
    }
    Ok(format!(
        "after {} failed attempts the client served the cached answer ({:.1} s old, stale); with no cache, the lab's fallback {}",
        line["attempts"],
        line["age_s"].as_f64().unwrap_or(0.0),
        bare_line["body"]["message"]
    ))
}

async fn breaker(n: &Narrator, work: &Workdir, flaky: &Flaky, spec: &str) -> Saw {
    let http = http().map_err(|e| e.to_string())?;
    let metrics = format!("{}metrics", flaky.url);
    let served = "keel_flaky_requests_total";
    let before = metric_sum(&http, &metrics, served).await?;
    let count = BREAKER_FETCHES.to_string();
    let args = [
        "client",
        "fetch",
        flaky.url.as_str(),
        "--retries",
        "0",
        "--breaker",
        spec,
        "--count",
        count.as_str(),
        "--interval",
        "150ms",
        "--json",
    ];
    let fetch = work.keel(&args, Duration::from_secs(30));
    let heal = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        set_mode(flaky, r#"{"mode":"normal","failure_rate":0}"#).await
    };
    let (ran, healed) = tokio::join!(fetch, heal);
    let ran = ran?;
    healed?;
    n.output(&ran.shown());
    let after = metric_sum(&http, &metrics, served).await?;
    let reached = (after - before).round() as u64;
    let lines = fetched(&ran.stdout)?;
    let transitions: Vec<&str> = ran
        .stderr
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(_, t)| t))
        .filter(|t| t.contains(" -> "))
        .map(|t| t.split(" (").next().unwrap_or(t))
        .collect();
    for needed in ["closed -> open", "open -> half_open", "half_open -> closed"] {
        if !transitions.contains(&needed) {
            return Err(format!(
                "the breaker never went {needed}; its transitions: {}",
                transitions.join(", ")
            ));
        }
    }
    let refused = BREAKER_FETCHES as u64 - reached;
    if refused == 0 {
        return Err("every fetch reached the service: the breaker spared it nothing".into());
    }
    let last_fresh = lines.last().is_some_and(|l| l["source"] == "service");
    if !last_fresh {
        return Err(
            "the last fetch was not answered by the service after the breaker closed".into(),
        );
    }
    Ok(format!(
        "the breaker went {}; of {BREAKER_FETCHES} fetches only {reached} reached the service \
         (the service counted them): {refused} were refused without being sent",
        transitions.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: &str, attempts: u64) -> String {
        format!(
            r#"{{"source":"{source}","attempts":{attempts},"degraded":false,"status":200,"body":{{"data":[1,2,3,4,5]}}}}"#
        )
    }

    #[test]
    fn retries_count_only_when_every_fetch_got_the_services_answer() {
        let mut out: Vec<String> = (0..FETCHES).map(|_| line("service", 1)).collect();
        out[3] = line("service", 3);
        let seen = retried(&out.join("\n"));
        assert_eq!(
            seen,
            Ok(format!(
                "all {FETCHES} fetches got the service's answer, in {} attempts: 1 of them needed retries, none reached the user as an error",
                FETCHES + 2
            ))
        );
        out[5] = line("fallback", 4);
        assert!(retried(&out.join("\n")).is_err());
        assert!(retried("no fetch printed").is_err());
    }

    #[test]
    fn a_degraded_answer_is_told_from_a_full_one() {
        let degraded_line = r#"{"source":"service","degraded":true,"status":200,"body":{"message":"Service in degraded mode (fallback)","data":[1,2,3]}}"#;
        assert!(degraded(degraded_line).is_ok());
        assert!(degraded(&line("service", 1)).is_err());
        assert!(degraded("").is_err());
    }
}
