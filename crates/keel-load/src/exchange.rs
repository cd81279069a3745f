//! One request and its answer, as the engine sees it: the [`Exchange`] trait a connection
//! implements, and the [`Answer`] it gives back.
//!
//! The engine only knows this trait, so that its pacing and counting can be tested with a
//! scripted connection under paused time; [`crate::conn::HttpConn`] is the real one.

use std::fmt;
use std::future::Future;

/// What the engine asks a connection to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The ticket number (unique in the run).
    pub n: u64,
    /// A write `PUT /v1/kv/load-<run>-<n>` rather than the configured request.
    pub write: bool,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The server answered with a status.
    Response {
        /// The HTTP status.
        status: u16,
        /// The backend that answered, per `--spread-by`.
        backend: Option<String>,
        /// On an answer of 400 or more: the `error` code of keel's JSON error body.
        error_code: Option<String>,
        /// The body said `"written": "unknown"` (a write whose outcome is unknown).
        outcome_unknown: bool,
    },
    /// No answer.
    Failed(Failure),
}

impl Answer {
    /// An answer with just a status (tests, and servers that say nothing more).
    pub fn status(status: u16) -> Answer {
        Answer::Response {
            status,
            backend: None,
            error_code: None,
            outcome_unknown: false,
        }
    }

    /// Whether the request counts as an error: no answer, or a status of 400 or more.
    pub fn is_error(&self) -> bool {
        match self {
            Answer::Response { status, .. } => *status >= 400,
            Answer::Failed(_) => true,
        }
    }

    /// What a write's answer says about the write.
    pub fn write_outcome(&self) -> WriteOutcome {
        match self {
            Answer::Response { status, .. } if (200..300).contains(status) => {
                WriteOutcome::Acknowledged
            }
            Answer::Response {
                outcome_unknown: true,
                ..
            } => WriteOutcome::Unknown,
            Answer::Response { .. } | Answer::Failed(Failure::Connect) => WriteOutcome::Refused,
            // The request may have reached the server and been applied.
            Answer::Failed(_) => WriteOutcome::Unknown,
        }
    }
}

/// What a write's answer says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A 2xx: the server promised the write.
    Acknowledged,
    /// Refused, or never sent: nothing was promised.
    Refused,
    /// Maybe applied, maybe not: a timeout, a broken connection, or a 503 saying
    /// `"written": "unknown"`.
    Unknown,
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The connection could not be opened (the request was never sent).
    Connect,
    /// No answer within `--timeout`.
    Timeout,
    /// The connection closed or reset before the answer was complete.
    Broken,
    /// The answer was not valid HTTP.
    BadResponse,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Connect => "cannot connect",
            Failure::Timeout => "timeout",
            Failure::Broken => "connection broken",
            Failure::BadResponse => "bad response",
        })
    }
}

/// One connection slot: sends requests one at a time and reconnects as it needs to.
///
/// To ensure correct counts: every call must end (an implementation bounds it with the
/// run's `--timeout`), and must return [`Failure::Connect`] only when the request was
/// certainly not sent.
pub trait Exchange: Send + 'static {
    /// Sends `request` and waits for its answer.
    fn exchange(&mut self, request: Request) -> impl Future<Output = Answer> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_missing_answers_and_statuses_from_400() {
        assert!(!Answer::status(200).is_error());
        assert!(!Answer::status(304).is_error());
        assert!(Answer::status(404).is_error());
        assert!(Answer::status(503).is_error());
        assert!(Answer::Failed(Failure::Timeout).is_error());
    }

    #[test]
    fn a_write_is_unknown_when_it_may_have_landed() {
        assert_eq!(
            Answer::status(200).write_outcome(),
            WriteOutcome::Acknowledged
        );
        assert_eq!(Answer::status(421).write_outcome(), WriteOutcome::Refused);
        assert_eq!(
            Answer::Failed(Failure::Connect).write_outcome(),
            WriteOutcome::Refused
        );
        assert_eq!(
            Answer::Failed(Failure::Timeout).write_outcome(),
            WriteOutcome::Unknown
        );
        assert_eq!(
            Answer::Failed(Failure::Broken).write_outcome(),
            WriteOutcome::Unknown
        );
        let replication_timeout = Answer::Response {
            status: 503,
            backend: None,
            error_code: Some("replication_timeout".into()),
            outcome_unknown: true,
        };
        assert_eq!(replication_timeout.write_outcome(), WriteOutcome::Unknown);
    }
}
