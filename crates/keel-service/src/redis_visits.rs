//! The visits counter of the Redis demo (`INCR visits`), behind a circuit breaker and a
//! timeout.
//!
//! Every call to Redis is bounded by a timeout (2 s by default) and guarded by a
//! [`CircuitBreaker`] named `redis`. By default it opens after one failure and stays
//! open 5 s, then lets one trial call through, which is the demo's behaviour when Redis
//! is paused: the first request waits for the timeout, the next ones fail at once, a
//! request after the open wait probes again (and waits again if Redis is still paused),
//! and once Redis answers the counter is back.
//!
//! A call that timed out may still be applied: the command sits in the paused server's
//! socket and runs when it resumes. The counter can therefore jump by the number of
//! requests that waited; nothing is counted twice, and nothing is lost that was
//! acknowledged.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use keel_resilience::{CircuitBreaker, Config, Elapsed, Rejected, State};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

/// The key of the counter, as in the demo.
pub const COUNTER_KEY: &str = "visits";

/// The breaker's name, in events, logs and metrics.
pub const BREAKER_NAME: &str = "redis";

/// How long one call to Redis may take, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The demo's breaker: open after one failure, for 5 s, then one trial call.
pub fn default_breaker() -> Config {
    Config {
        consecutive_failures: Some(1),
        wait_in_open: Duration::from_secs(5),
        permitted_half_open_calls: 1,
        ..Config::default()
    }
}

/// Why the counter could not be read or counted.
#[derive(Debug, thiserror::Error)]
pub enum VisitsError {
    /// The breaker is open: Redis was not asked.
    #[error("{0}")]
    Rejected(Rejected),
    /// Redis did not answer in time.
    #[error("redis {0}")]
    TimedOut(Elapsed),
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(String),
}

/// A Redis URL that cannot be used, or a breaker configuration out of range.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL does not parse as a Redis URL.
    #[error("--redis {url:?} is not a Redis URL such as redis://127.0.0.1:6379: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The breaker's settings are out of range.
    #[error("redis breaker: {0}")]
    Breaker(#[from] keel_resilience::ConfigError),
}

/// The counter in Redis, with its breaker and its counters.
pub struct RedisVisits {
    client: redis::Client,
    url: String,
    limit: Duration,
    breaker: CircuitBreaker,
    /// The open connection, if any. A std mutex: held to clone or replace a handle.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    timed_out: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for RedisVisits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisVisits")
            .field("url", &self.url)
            .field("limit", &self.limit)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl RedisVisits {
    /// A counter at `url`; every call gives up after `limit`. Nothing is connected until
    /// the first call.
    pub fn new(url: &str, limit: Duration, breaker: Config) -> Result<Self, RedisSetupError> {
        let client = redis::Client::open(url).map_err(|e| RedisSetupError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let breaker = CircuitBreaker::new(BREAKER_NAME, breaker)?;
        Ok(RedisVisits {
            client,
            url: redacted(url),
            limit,
            breaker,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            timed_out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The URL, without a password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The breaker in front of Redis.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// How long one call may take.
    pub fn timeout(&self) -> Duration {
        self.limit
    }

    /// Calls that ran out of time (each one waited the whole timeout).
    pub fn timeouts(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Calls that failed otherwise (refused connection, an error reply).
    pub fn errors(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Counts one visit: `INCR visits`.
    pub async fn incr(&self) -> Result<i64, VisitsError> {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(COUNTER_KEY);
        self.call(cmd).await
    }

    /// Reads the counter (0 when it was never counted).
    pub async fn get(&self) -> Result<i64, VisitsError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(COUNTER_KEY);
        let value: Option<i64> = self.call(cmd).await?;
        Ok(value.unwrap_or(0))
    }

    /// Runs `cmd` through the breaker, within the timeout.
    async fn call<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, VisitsError> {
        let permit = self.breaker.try_acquire().map_err(VisitsError::Rejected)?;
        let start = Instant::now();
        match keel_resilience::timeout(self.limit, self.run(&cmd)).await {
            Ok(Ok(value)) => {
                permit.success(start.elapsed());
                Ok(value)
            }
            Ok(Err(e)) => {
                permit.failure(start.elapsed());
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.forget_connection();
                tracing::warn!(error = %e, "redis call failed");
                Err(VisitsError::Redis(e.to_string()))
            }
            Err(elapsed) => {
                permit.failure(start.elapsed());
                self.timed_out.fetch_add(1, Ordering::Relaxed);
                // A connection whose last command got no answer may have a backlog of
                // unanswered ones behind it; the next call starts afresh.
                self.forget_connection();
                tracing::warn!(limit = ?self.limit, "redis call timed out");
                Err(VisitsError::TimedOut(elapsed))
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut conn = self.connection().await?;
        cmd.query_async(&mut conn).await
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.slot().clone() {
            return Ok(conn);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.slot().clone() {
            return Ok(conn);
        }
        // The only time limit is the caller's, so that one setting decides how long a
        // request may wait (the crate's own defaults would cut in earlier).
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.slot() = Some(conn.clone());
        Ok(conn)
    }

    fn forget_connection(&self) {
        *self.slot() = None;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The breaker's state and counters, and the Redis call counters, as Prometheus text.
    pub fn render_metrics(&self, out: &mut String, service: &str) {
        let metrics = self.breaker.metrics();
        let b = BREAKER_NAME;
        let _ = writeln!(
            out,
            "# HELP keel_breaker_state The breaker's state (1 for the current one)\n\
             # TYPE keel_breaker_state gauge"
        );
        for state in State::ALL {
            let _ = writeln!(
                out,
                "keel_breaker_state{{breaker=\"{b}\",state=\"{state}\"}} {}",
                u8::from(state == metrics.state)
            );
        }
        let _ = writeln!(
            out,
            "# HELP keel_breaker_calls_total Calls through the breaker, by outcome (rejected: refused while open)\n\
             # TYPE keel_breaker_calls_total counter"
        );
        for (outcome, n) in [
            ("successful", metrics.successful),
            ("failed", metrics.failed),
            ("slow", metrics.slow),
            ("ignored", metrics.ignored),
            ("rejected", metrics.rejected),
        ] {
            let _ = writeln!(
                out,
                "keel_breaker_calls_total{{breaker=\"{b}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP keel_breaker_transitions_total Transitions, by the state entered\n\
             # TYPE keel_breaker_transitions_total counter"
        );
        for state in State::ALL {
            let _ = writeln!(
                out,
                "keel_breaker_transitions_total{{breaker=\"{b}\",to=\"{state}\"}} {}",
                metrics.transitions.to(state)
            );
        }
        let _ = writeln!(
            out,
            "# HELP keel_service_redis_timeouts_total Calls to Redis that waited out the whole timeout\n\
             # TYPE keel_service_redis_timeouts_total counter\n\
             keel_service_redis_timeouts_total{{service=\"{service}\"}} {}\n\
             # HELP keel_service_redis_errors_total Calls to Redis that failed without waiting out the timeout\n\
             # TYPE keel_service_redis_errors_total counter\n\
             keel_service_redis_errors_total{{service=\"{service}\"}} {}",
            self.timeouts(),
            self.errors()
        );
    }
}

/// The URL with any password replaced, for logs, `/health` and `/data`.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("redis://:secret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redacted("redis://app:secret@127.0.0.1:6379"),
            "redis://app:***@127.0.0.1:6379"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_bad_url_is_named() {
        let err = RedisVisits::new("http://x", DEFAULT_TIMEOUT, default_breaker())
            .expect_err("not redis");
        assert!(err.to_string().contains("--redis \"http://x\""), "{err}");
    }

    #[tokio::test]
    async fn nothing_listening_fails_and_opens_the_breaker() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let visits = RedisVisits::new(
            &format!("redis://127.0.0.1:{port}"),
            DEFAULT_TIMEOUT,
            default_breaker(),
        )
        .expect("valid url");
        assert!(matches!(visits.incr().await, Err(VisitsError::Redis(_))));
        assert_eq!(visits.breaker().state(), State::Open);
        let refused = visits.incr().await.expect_err("open");
        assert!(
            refused.to_string().starts_with("circuit open, retry in"),
            "{refused}"
        );
        assert_eq!((visits.errors(), visits.timeouts()), (1, 0));
        let mut text = String::new();
        visits.render_metrics(&mut text, "s1");
        assert!(
            text.contains("keel_breaker_state{breaker=\"redis\",state=\"open\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keel_breaker_calls_total{breaker=\"redis\",outcome=\"rejected\"} 1"),
            "{text}"
        );
    }
}
