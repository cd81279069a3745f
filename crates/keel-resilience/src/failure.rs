//! What went wrong in one attempt, in terms a retry policy can judge, and whether a
//! request may be repeated at all.
//!
//! Callers translate their own errors (a reqwest error, a Redis error, a 503 answer) into a
//! [`Failure`]; the retry policy decides on the [`FailureKind`] and the server's
//! `Retry-After`, and a CLI prints the failure as it is ("503 Service Unavailable").

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode, header::RETRY_AFTER};

/// The kind of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request never reached the server (the connection could not be made). Safe to
    /// retry whatever the request does, since nothing was sent.
    Connect,
    /// The connection broke after the request may have been sent.
    Reset,
    /// No answer in time; the server may still have acted on the request.
    Timeout,
    /// The server answered with this HTTP status.
    Status(u16),
    /// A circuit breaker refused the call without making it.
    CircuitOpen,
    /// Anything else: a bad answer, a protocol error, a bug. Not retried by default.
    Other,
}

impl FailureKind {
    /// The default retry-on rule: connection failures, resets, timeouts, and the statuses
    /// that mean "try again" (429 Too Many Requests, 502 Bad Gateway, 503 Service
    /// Unavailable, 504 Gateway Timeout). Other statuses say the request itself is wrong
    /// or the server is broken in a way a repeat will not fix; an open circuit is meant to
    /// fail fast.
    pub fn is_transient(self) -> bool {
        match self {
            FailureKind::Connect | FailureKind::Reset | FailureKind::Timeout => true,
            FailureKind::Status(code) => matches!(code, 429 | 502 | 503 | 504),
            FailureKind::CircuitOpen | FailureKind::Other => false,
        }
    }
}

/// One failed attempt: its kind, what the server asked for, and how to describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure this is.
    pub kind: FailureKind,
    /// How long the server asked the client to wait (`Retry-After`), if it did.
    pub retry_after: Option<Duration>,
    /// The caller's own description (e.g. the error's text); shown instead of the kind's.
    pub detail: Option<String>,
}

impl Failure {
    /// A failure of this kind, with no `Retry-After` and no detail.
    pub fn new(kind: FailureKind) -> Self {
        Failure {
            kind,
            retry_after: None,
            detail: None,
        }
    }

    /// A failed HTTP answer, reading `Retry-After` from its headers (delta-seconds or an
    /// HTTP date, measured against the system clock).
    pub fn from_response(status: StatusCode, headers: &HeaderMap) -> Self {
        Failure::new(FailureKind::Status(status.as_u16()))
            .retry_after(retry_after(headers, SystemTime::now()))
    }

    /// Sets how long the server asked the client to wait.
    pub fn retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// Sets the text shown for this failure.
    pub fn detail(mut self, text: impl Into<String>) -> Self {
        self.detail = Some(text.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(detail) = &self.detail {
            return f.write_str(detail);
        }
        match self.kind {
            FailureKind::Connect => f.write_str("connection failed"),
            FailureKind::Reset => f.write_str("connection reset"),
            FailureKind::Timeout => f.write_str("timed out"),
            FailureKind::CircuitOpen => f.write_str("circuit open"),
            FailureKind::Other => f.write_str("failed"),
            FailureKind::Status(code) => match StatusCode::from_u16(code) {
                Ok(status) => write!(f, "{status}"),
                Err(_) => write!(f, "status {code}"),
            },
        }
    }
}

/// The wait a `Retry-After` header asks for, as of `now` (the system clock, which an
/// HTTP date is written in). `None` if the header is absent or unreadable; a date in the
/// past means no wait.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether repeating a request is safe: doing it twice has the same effect as once.
///
/// Only idempotent requests are retried by default. A timeout or a reset leaves the
/// client not knowing whether the server acted, and repeating a non-idempotent request
/// (a POST that appends, an increment) could then do it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Idempotency {
    /// Safe to repeat.
    Idempotent,
    /// Not known to be safe to repeat: retried only if it never left the client.
    #[default]
    NotIdempotent,
}

impl Idempotency {
    /// The idempotency HTTP gives a method (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE,
    /// PUT and DELETE are idempotent; POST, PATCH and CONNECT are not.
    pub fn of_method(method: &Method) -> Self {
        let idempotent = [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ]
        .contains(method);
        if idempotent {
            Idempotency::Idempotent
        } else {
            Idempotency::NotIdempotent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(retry_after).expect("valid header"),
        );
        headers
    }

    #[test]
    fn retry_after_reads_delta_seconds() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(
            retry_after(&headers("120"), now),
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn retry_after_reads_an_http_date_against_now() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        let later = headers("Sun, 06 Nov 1994 08:50:07 GMT");
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = headers("Sun, 06 Nov 1994 08:49:00 GMT");
        assert_eq!(retry_after(&earlier, now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_ignores_garbage_and_absence() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&headers("-5"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn failures_read_like_the_answer() {
        let unavailable = Failure::new(FailureKind::Status(503));
        assert_eq!(unavailable.to_string(), "503 Service Unavailable");
        let refused = Failure::new(FailureKind::Connect).detail("connection refused");
        assert_eq!(refused.to_string(), "connection refused");
        assert_eq!(Failure::new(FailureKind::Timeout).to_string(), "timed out");
    }

    #[test]
    fn transient_kinds_are_the_retryable_ones() {
        let transient: Vec<_> = [200, 400, 404, 429, 500, 501, 502, 503, 504]
            .into_iter()
            .filter(|&code| FailureKind::Status(code).is_transient())
            .collect();
        assert_eq!(transient, [429, 502, 503, 504]);
        assert!(FailureKind::Connect.is_transient());
        assert!(!FailureKind::Other.is_transient());
        assert!(!FailureKind::CircuitOpen.is_transient());
    }

    #[test]
    fn methods_map_to_idempotency() {
        assert_eq!(
            Idempotency::of_method(&Method::GET),
            Idempotency::Idempotent
        );
        assert_eq!(
            Idempotency::of_method(&Method::PUT),
            Idempotency::Idempotent
        );
        assert_eq!(
            Idempotency::of_method(&Method::POST),
            Idempotency::NotIdempotent
        );
        assert_eq!(
            Idempotency::of_method(&Method::PATCH),
            Idempotency::NotIdempotent
        );
    }
}
