//! `keel client fetch URL`: the fault-tolerance lab's client — retry with a delay, then a
//! fallback — made with `keel-resilience`: backoff with optional jitter, `Retry-After`
//! honoured, a timeout per attempt, an optional circuit breaker, and a fallback cache that
//! serves the last good answer marked stale with its age.
//!
//! Every failed attempt is one line on stderr, as the lab's client prints it
//! (`Attempt 1 failed: 503 Service Unavailable; retrying in 1.0 s`); the answer goes to
//! stdout as the server sent it. A 2xx answer whose `message` says the service is in
//! degraded mode is recognised and said so on stderr. When no attempt succeeds, stdout
//! gets the cached answer (stderr says it is stale, and how old), or the lab's
//! `{"message": "Service unavailable (fallback)"}`.
//!
//! The stack per attempt, outermost first: retry → breaker → timeout → the request, so a
//! hang counts as a failure in the breaker, and an open breaker ends the retries at once.

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use keel_resilience::{
    Backoff, CallOutcome, CircuitBreaker, Elapsed, Failure, FailureKind, FallbackCache, Jitter,
    Rejected, RetryPolicy, retry,
};
use reqwest::{StatusCode, Url};
use tokio::sync::broadcast;
use tokio::time::Instant;

use outcome::{Outcome, Source};

use super::conn::root_cause;
use crate::cli::{BackoffKind, FetchArgs, JitterKind};

mod outcome;

/// The lab's answer when nothing better is at hand.
pub(super) const FALLBACK_BODY: &str = r#"{"message": "Service unavailable (fallback)"}"#;

/// Runs `keel client fetch`; `timeout` bounds each attempt, `json` prints one JSON
/// object per fetch instead of the body.
pub(super) async fn run(
    args: FetchArgs,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let url = Url::parse(&args.url)
        .ok()
        .filter(|u| u.scheme() == "http" && u.host_str().is_some())
        .with_context(|| {
            format!(
                "keel client fetch takes an http:// URL such as http://127.0.0.1:5055/, got {:?}",
                args.url
            )
        })?;
    let policy = policy(&args)?;
    let breaker = match args.breaker {
        Some(config) => Some(CircuitBreaker::new(breaker_name(&url), config).context("--breaker")?),
        None => None,
    };
    let cache = match &args.fallback_cache {
        Some(dir) => FallbackCache::persistent(dir).context("--fallback-cache")?,
        None => FallbackCache::in_memory(),
    };
    let fetcher = Fetcher {
        http: reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .context("cannot set up the HTTP client")?,
        url,
        timeout,
        events: RefCell::new(breaker.as_ref().map(CircuitBreaker::subscribe)),
        breaker,
    };
    let mut all_fresh = true;
    for n in 0..args.count {
        if n > 0 {
            tokio::time::sleep(args.interval).await;
        }
        let outcome = fetcher.fetch(&policy, &cache).await;
        all_fresh &= matches!(outcome.source, Source::Service);
        outcome.print(json)?;
    }
    Ok(if all_fresh {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The longest wait with exponential backoff, unless `--max-delay` says otherwise.
const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);

/// The retry policy the flags describe; refuses combinations that cannot work.
fn policy(args: &FetchArgs) -> anyhow::Result<RetryPolicy> {
    let (backoff, default_jitter) = match (args.backoff, args.max_delay) {
        (BackoffKind::Constant, Some(_)) => {
            bail!(
                "--max-delay caps --backoff exponential; with constant backoff every wait is --retry-delay"
            )
        }
        (BackoffKind::Constant, None) => (Backoff::Constant(args.retry_delay), JitterKind::None),
        (BackoffKind::Exponential, max_delay) => {
            let cap = max_delay.unwrap_or(DEFAULT_MAX_DELAY);
            if cap < args.retry_delay {
                bail!(
                    "--max-delay ({}) is shorter than --retry-delay ({}), the first wait",
                    keel_core::duration::format(cap),
                    keel_core::duration::format(args.retry_delay)
                );
            }
            (
                Backoff::exponential(args.retry_delay, cap),
                JitterKind::Full,
            )
        }
    };
    let jitter = match args.jitter.unwrap_or(default_jitter) {
        JitterKind::None => Jitter::None,
        JitterKind::Full => Jitter::Full,
    };
    Ok(RetryPolicy::new()
        .max_attempts(args.retries.saturating_add(1))
        .backoff(backoff)
        .jitter(jitter))
}

/// `host:port`, the name the breaker's events carry.
fn breaker_name(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        _ => url.to_string(),
    }
}

/// One attempt's failure.
#[derive(Debug)]
enum AttemptError {
    /// The server answered, with a status that is not 2xx.
    Status { failure: Failure },
    /// No answer: the connection failed or broke.
    Transport { failure: Failure },
    /// No answer within the timeout.
    TimedOut(Elapsed),
    /// The breaker is open; nothing was sent.
    Open(Rejected),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Status { failure } | AttemptError::Transport { failure } => {
                failure.fmt(f)
            }
            AttemptError::TimedOut(elapsed) => elapsed.fmt(f),
            AttemptError::Open(rejected) => rejected.fmt(f),
        }
    }
}

impl AttemptError {
    fn failure(&self) -> Failure {
        match self {
            AttemptError::Status { failure } | AttemptError::Transport { failure } => {
                failure.clone()
            }
            AttemptError::TimedOut(elapsed) => elapsed.failure(),
            AttemptError::Open(rejected) => rejected.failure(),
        }
    }

    /// How the breaker counts it: trouble on the server's side is a failure; a 4xx other
    /// than 429 is the request's own fault and says nothing about the server's health.
    fn outcome(&self) -> CallOutcome {
        match self {
            AttemptError::Status { failure } => match failure.kind {
                FailureKind::Status(code) if code == 429 || code >= 500 => CallOutcome::Failure,
                _ => CallOutcome::Ignored,
            },
            AttemptError::Transport { .. } | AttemptError::TimedOut(_) => CallOutcome::Failure,
            AttemptError::Open(_) => CallOutcome::Ignored,
        }
    }
}

struct Fetcher {
    http: reqwest::Client,
    url: Url,
    timeout: Duration,
    breaker: Option<CircuitBreaker>,
    /// The breaker's transitions, printed as they happen.
    events: RefCell<Option<broadcast::Receiver<keel_resilience::BreakerEvent>>>,
}

impl Fetcher {
    /// One fetch: attempts under the policy, then the cache or the fallback message.
    async fn fetch(&self, policy: &RetryPolicy, cache: &FallbackCache<String>) -> Outcome {
        let attempts = Cell::new(0u32);
        let result = retry(policy)
            .idempotent()
            .observe(|report| eprintln!("{report}"))
            .run(AttemptError::failure, |n| {
                attempts.set(n);
                self.attempt()
            })
            .await;
        let status = result.as_ref().ok().map(|(status, _)| *status);
        let result = result.map(|(_, body)| body);
        let key = self.url.as_str();
        let mut outcome = Outcome {
            url: key.to_owned(),
            source: Source::Service,
            status,
            attempts: attempts.get(),
            error: None,
            body: String::new(),
        };
        // `FallbackCache::serve` by hand, to keep the error next to a stale answer.
        let error = match result {
            Ok(body) => {
                if let Err(e) = cache.store(key, body.clone()) {
                    eprintln!("warning: the answer was not cached: {e}");
                }
                outcome.body = body;
                return outcome;
            }
            Err(error) => error,
        };
        outcome.error = Some(error.to_string());
        match cache.stale(key) {
            Ok(Some(stale)) => {
                outcome.source = Source::Cache(stale.age);
                outcome.body = stale.value;
            }
            Ok(None) => {
                outcome.source = Source::Fallback;
                outcome.body = FALLBACK_BODY.to_owned();
            }
            Err(e) => {
                eprintln!("warning: the cached answer cannot be used: {e}");
                outcome.source = Source::Fallback;
                outcome.body = FALLBACK_BODY.to_owned();
            }
        }
        outcome
    }

    /// One attempt through the breaker (if any), bounded by the timeout.
    async fn attempt(&self) -> Result<(StatusCode, String), AttemptError> {
        let permit = match &self.breaker {
            Some(breaker) => {
                let permit = breaker.try_acquire();
                // Acquiring may have made the breaker half-open.
                self.print_transitions();
                Some(permit.map_err(AttemptError::Open)?)
            }
            None => None,
        };
        let start = Instant::now();
        let result = match keel_resilience::timeout(self.timeout, self.get()).await {
            Ok(result) => result,
            Err(elapsed) => Err(AttemptError::TimedOut(elapsed)),
        };
        if let Some(permit) = permit {
            let outcome = match &result {
                Ok(_) => CallOutcome::Success,
                Err(e) => e.outcome(),
            };
            permit.record(outcome, start.elapsed());
            self.print_transitions();
        }
        result
    }

    /// Prints the breaker's transitions since the last call, one line each on stderr.
    fn print_transitions(&self) {
        let mut events = self.events.borrow_mut();
        let Some(rx) = events.as_mut() else { return };
        loop {
            match rx.try_recv() {
                Ok(event) => eprintln!("{event}"),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    eprintln!("({missed} breaker transitions not shown)");
                }
                Err(_) => break,
            }
        }
    }

    async fn get(&self) -> Result<(StatusCode, String), AttemptError> {
        let response = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let failure = Failure::from_response(status, response.headers());
        if !status.is_success() {
            return Err(AttemptError::Status { failure });
        }
        let body = response.text().await.map_err(transport)?;
        Ok((status, body))
    }
}

/// A request that got no answer, as a failure the retry policy can judge.
fn transport(e: reqwest::Error) -> AttemptError {
    let kind = if e.is_connect() {
        FailureKind::Connect
    } else if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_builder() || e.is_redirect() || e.is_decode() {
        FailureKind::Other
    } else {
        FailureKind::Reset
    };
    let what = match kind {
        FailureKind::Connect => "cannot connect",
        FailureKind::Timeout => "no answer in time",
        FailureKind::Reset => "connection broken",
        _ => "request failed",
    };
    AttemptError::Transport {
        failure: Failure::new(kind).detail(format!("{what} ({})", root_cause(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakers_count_server_trouble_only() {
        let status = |code: u16| AttemptError::Status {
            failure: Failure::new(FailureKind::Status(code)),
        };
        assert_eq!(status(503).outcome(), CallOutcome::Failure);
        assert_eq!(status(429).outcome(), CallOutcome::Failure);
        assert_eq!(status(404).outcome(), CallOutcome::Ignored);
        assert_eq!(status(503).to_string(), "503 Service Unavailable");
    }
}
