//! The Redis counter behind a circuit breaker (seed 000): a web counter in Redis; pause
//! Redis and the first request waits for the timeout, the next ones fail fast; now and
//! then the breaker tries again (and waits again); unpause Redis and it counts on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::narrator::{Narrator, Seen as Saw, Step};
use crate::stack::{Proc, Workdir, free_ports, get_json, http, wait_for, wait_healthy};
use crate::{Demo, DemoError, Ended, Options};

const STEPS: usize = 4;
/// The service's bound on each Redis call (its default).
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long the breaker stays open before a trial call (5 s by default; shorter here so
/// the demo does not drag).
const OPEN_WAIT: Duration = Duration::from_secs(3);
const BREAKER: &str = "failures=1,open=3s,half-open=1";
const DURING_PAUSE: usize = 10;

/// Why the demo cannot run here: no `redis-server`.
pub fn missing() -> Option<DemoError> {
    redis_server().is_none().then(|| DemoError::Missing {
        what: "redis-server",
        hint: "the Redis demo runs a real Redis (apt-get install redis-server)".into(),
    })
}

fn redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

struct Stack {
    redis: Proc,
    service: Proc,
    url: String,
    redis_port: u16,
}

pub async fn run(work: Workdir, options: &Options) -> Ended {
    let stack = match start(&work).await {
        Ok(stack) => stack,
        Err(e) => return Err((work, e)),
    };
    let result = steps(&work, &stack, options).await;
    stack.service.stop(Duration::from_secs(5)).await;
    stack.redis.stop(Duration::from_secs(5)).await;
    match result {
        Ok(()) => Ok(work),
        Err(e) => Err((work, e)),
    }
}

async fn start(work: &Workdir) -> Result<Stack, DemoError> {
    let program = redis_server().ok_or_else(|| missing().unwrap_or(DemoError::NoPorts(0)))?;
    let first = free_ports(2)?;
    let (redis_port, service_port) = (first, first + 1);
    let mut redis = work.spawn(
        "redis",
        &program,
        &[
            "--port".into(),
            redis_port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
    )?;
    let ready = wait_for(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
            .await
            .ok()
    })
    .await;
    if ready.is_none() {
        redis.check_running()?;
        return Err(redis.start_error("it did not listen within 10 s".into()));
    }
    let mut service = work.spawn_keel(
        "service",
        &[
            "service".into(),
            "--name".into(),
            "web".into(),
            "--listen".into(),
            format!("127.0.0.1:{service_port}"),
            "--redis".into(),
            format!("redis://127.0.0.1:{redis_port}"),
            "--redis-breaker".into(),
            BREAKER.into(),
        ],
    )?;
    let url = format!("http://127.0.0.1:{service_port}");
    wait_healthy(&mut service, &url).await?;
    Ok(Stack {
        redis,
        service,
        url: format!("{url}/"),
        redis_port,
    })
}

async fn steps(work: &Workdir, stack: &Stack, options: &Options) -> Result<(), DemoError> {
    let mut n = Narrator::new(Demo::Redis, options.auto, STEPS);
    let url = &stack.url;
    let pid = stack.redis.pid().unwrap_or_default();
    n.open(
        "keel demo redis: a web counter in Redis behind a circuit breaker",
        &[
            format!(
                "stack: redis-server --port {} --save '' and keel service --redis redis://127.0.0.1:{} \
                 --redis-breaker {BREAKER} (on {url}), in {}",
                stack.redis_port,
                stack.redis_port,
                work.path().display()
            ),
            format!("to type the commands yourself: {}", work.how_to_follow()),
        ],
    );
    let curl_loop = |count: usize| {
        format!("for i in $(seq {count}); do time curl -s {url} | grep visits; done")
    };

    let title = "Count visits";
    let step = Step {
        title,
        say: "Every page view increments a counter in Redis (INCR visits).",
        commands: &[curl_loop(3)],
        watch: "visits: 1, 2, 3",
    };
    let k = n.announce(&step).await;
    let seen = counting(&n, url).await;
    n.judge(k, title, seen)?;

    let title = "Pause Redis";
    let step = Step {
        title,
        say: "Redis freezes (SIGSTOP, the seed's `docker compose pause redis`): its socket stays \
              open but nothing answers. The first request waits for the 2 s timeout; that \
              failure opens the breaker, and the next requests do not wait at all: the page \
              still answers, without the counter.",
        commands: &[format!("kill -STOP {pid}"), curl_loop(DURING_PAUSE)],
        watch: "the first request slow, the others instant, \"The counter is temporarily disabled!\"",
    };
    let k = n.announce(&step).await;
    stack.redis.signal(Signal::SIGSTOP);
    let seen = paused(&n, url).await;
    let opened = Instant::now();
    n.judge(k, title, seen)?;

    let title = "The breaker tries again";
    let step = Step {
        title,
        say: "After its open wait (3 s here) the breaker lets one trial call through: Redis is \
              still paused, so that request waits for the timeout again, and the breaker opens \
              again (the seed's \"occasionally the circuit will try to close again\").",
        commands: &[format!("sleep 3; {}", curl_loop(2))],
        watch: "one slow request, then a fast one; the breaker open again",
    };
    let k = n.announce(&step).await;
    let seen = retry_while_paused(&n, stack, opened).await;
    let opened = Instant::now();
    n.judge(k, title, seen)?;

    let title = "Unpause Redis";
    let step = Step {
        title,
        say: "Redis runs again. At the next trial call after the open wait, the call succeeds, \
              the breaker closes, and the counter counts again. It may have jumped: an INCR \
              that timed out while Redis was frozen sat in its socket and ran when it woke \
              (a timeout never tells whether the command ran).",
        commands: &[
            format!("kill -CONT {pid}"),
            format!("sleep 3; {}", curl_loop(3)),
        ],
        watch: "visits counting up again, and the breaker closed",
    };
    let k = n.announce(&step).await;
    stack.redis.signal(Signal::SIGCONT);
    let seen = recovered(&n, stack, opened).await;
    n.judge(k, title, seen)?;
    println!("\nkeel demo redis: every step observed");
    Ok(())
}

/// One `GET /`: how long it took and the visits line.
async fn visit(http: &reqwest::Client, url: &str) -> Result<(Duration, String), String> {
    let started = Instant::now();
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
    let took = started.elapsed();
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}: {}", text.trim()));
    }
    let visits = text
        .lines()
        .find_map(|l| l.strip_prefix("visits: "))
        .unwrap_or("")
        .to_owned();
    Ok((took, visits))
}

/// The number at the start of a visits line (`4 (redis …)`), if Redis counted.
fn count(visits: &str) -> Option<u64> {
    visits.split_whitespace().next()?.parse().ok()
}

fn disabled(visits: &str) -> bool {
    visits.starts_with(keel_service::COUNTER_DISABLED)
}

fn line(took: Duration, visits: &str) -> String {
    format!("{:>7.1} ms  visits: {visits}", took.as_secs_f64() * 1000.0)
}

async fn counting(n: &Narrator, url: &str) -> Saw {
    let http = http().map_err(|e| e.to_string())?;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let (took, visits) = visit(&http, url).await?;
        n.output(&line(took, &visits));
        counts.push(count(&visits).ok_or_else(|| format!("Redis did not count: {visits}"))?);
    }
    if counts.windows(2).all(|w| w[1] == w[0] + 1) {
        Ok(format!(
            "the counter went {} in Redis",
            counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        Err(format!("the counter did not count up by one: {counts:?}"))
    }
}

async fn paused(n: &Narrator, url: &str) -> Saw {
    let http = http().map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for _ in 0..DURING_PAUSE {
        let (took, visits) = visit(&http, url).await?;
        n.output(&line(took, &visits));
        if !disabled(&visits) {
            return Err(format!(
                "the page did not say the counter is disabled: {visits}"
            ));
        }
        times.push(took);
    }
    let (first, rest) = times.split_first().ok_or("no request made")?;
    // The first waits for the timeout; the others are refused by the open breaker, far
    // quicker than any timeout.
    let slowest_rest = rest.iter().max().copied().unwrap_or_default();
    if *first < TIMEOUT.mul_f64(0.9) || slowest_rest >= TIMEOUT / 4 {
        return Err(format!(
            "expected the first request to wait about {:.1} s and the rest to answer at once; \
             the first took {:.2} s, the slowest of the rest {:.0} ms",
            TIMEOUT.as_secs_f64(),
            first.as_secs_f64(),
            slowest_rest.as_secs_f64() * 1000.0
        ));
    }
    Ok(format!(
        "the first request waited {:.1} s for the timeout; the next {} answered in under {} ms: the breaker is open",
        first.as_secs_f64(),
        rest.len(),
        (slowest_rest.as_millis() + 1).max(1)
    ))
}

async fn breaker_state(url: &str) -> Result<String, String> {
    let http = http().map_err(|e| e.to_string())?;
    let health = get_json(&http, &format!("{url}health")).await?;
    Ok(health["breaker"]["state"]
        .as_str()
        .unwrap_or("?")
        .to_owned())
}

async fn retry_while_paused(n: &Narrator, stack: &Stack, opened: Instant) -> Saw {
    let http = http().map_err(|e| e.to_string())?;
    tokio::time::sleep((OPEN_WAIT + Duration::from_millis(200)).saturating_sub(opened.elapsed()))
        .await;
    let (trial, visits) = visit(&http, &stack.url).await?;
    n.output(&line(trial, &visits));
    let (after, visits_after) = visit(&http, &stack.url).await?;
    n.output(&line(after, &visits_after));
    let state = breaker_state(&stack.url).await?;
    if trial < TIMEOUT.mul_f64(0.9) || after >= TIMEOUT / 4 || state != "open" {
        return Err(format!(
            "expected a trial call waiting for the timeout, then the breaker open again; \
             the trial took {:.2} s, the next {:.0} ms, the breaker is {state}",
            trial.as_secs_f64(),
            after.as_secs_f64() * 1000.0
        ));
    }
    Ok(format!(
        "after the open wait one trial call went to Redis and waited {:.1} s; it failed, so the breaker is open again and the next request answered in {} ms",
        trial.as_secs_f64(),
        after.as_millis() + 1
    ))
}

async fn recovered(n: &Narrator, stack: &Stack, opened: Instant) -> Saw {
    let http = http().map_err(|e| e.to_string())?;
    tokio::time::sleep((OPEN_WAIT + Duration::from_millis(200)).saturating_sub(opened.elapsed()))
        .await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let (took, visits) = visit(&http, &stack.url).await?;
        n.output(&line(took, &visits));
        counts.push(count(&visits).ok_or_else(|| format!("Redis did not count again: {visits}"))?);
    }
    let state = breaker_state(&stack.url).await?;
    if state != "closed" || !counts.windows(2).all(|w| w[1] == w[0] + 1) {
        return Err(format!(
            "expected the counter to go on and the breaker closed; counts {counts:?}, breaker {state}"
        ));
    }
    Ok(format!(
        "the trial call succeeded and the breaker closed; the counter went on: {}",
        counts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
