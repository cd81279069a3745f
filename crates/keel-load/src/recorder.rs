//! Everything a run counts: latency histograms, statuses, error kinds, the spread per
//! backend, the timeline and the outcome of every write.
//!
//! One [`Recorder`] per run, behind a `std::sync::Mutex` that every request takes once,
//! briefly and never across an await: a few hundred nanoseconds against the several
//! microseconds an HTTP exchange costs, and it lets the live view read consistent
//! figures without a second copy of the counts.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::exchange::{Answer, Request, WriteOutcome};
use crate::spread::Spread;
use crate::timeline::Timeline;

/// Latencies are recorded in microseconds up to an hour (the longest run): under
/// `--rate`, a request held back by a long stall has waited up to the whole run.
pub const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Three significant digits: 0.1 % resolution for the run's percentiles.
const SIGFIG: u8 = 3;

/// One finished request, with its times.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// What was sent.
    pub request: Request,
    /// When it was meant to be sent: its schedule under `--rate`, else when it was sent.
    pub intended: Instant,
    /// When it was sent.
    pub sent: Instant,
    /// When the answer (or the failure) came.
    pub done: Instant,
    /// What came back.
    pub answer: &'a Answer,
}

/// The writes of a run, by ticket number (the key and value follow from it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteLog {
    /// Writes sent.
    pub sent: u64,
    /// Answered 2xx.
    pub acknowledged: Vec<u64>,
    /// Outcome unknown.
    pub unknown: Vec<u64>,
    /// Refused or never sent.
    pub refused: Vec<u64>,
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `h` (recorded in microseconds); `None` when it is empty.
    pub fn of<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: micros_to_ms(h.value_at_quantile(0.5)),
            p90_ms: micros_to_ms(h.value_at_quantile(0.9)),
            p99_ms: micros_to_ms(h.value_at_quantile(0.99)),
            p999_ms: micros_to_ms(h.value_at_quantile(0.999)),
            max_ms: micros_to_ms(h.max()),
        })
    }
}

/// Microseconds as milliseconds.
pub fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The counts of a run.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    /// From the intended send time (under `--rate`: corrected for coordinated
    /// omission), of every answered request.
    pub latency: Histogram<u64>,
    /// From the actual send time, of every answered request.
    pub service: Histogram<u64>,
    /// Requests sent (answered or not).
    pub requests: u64,
    /// Requests that got an answer.
    pub answered: u64,
    /// Requests counted as errors (see [`Answer::is_error`]).
    pub errors: u64,
    /// Answers per status.
    pub statuses: BTreeMap<u16, u64>,
    /// Errors per kind: `timeout`, `503 failover_in_progress`, ….
    pub error_kinds: BTreeMap<String, u64>,
    /// Answers per backend.
    pub spread: Spread,
    /// Per second.
    pub timeline: Timeline,
    /// The writes.
    pub writes: WriteLog,
}

impl Recorder {
    /// An empty recorder for a run that starts at `start`.
    pub fn new(start: Instant) -> Result<Recorder, hdrhistogram::CreationError> {
        let histogram = Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGFIG)?;
        Ok(Recorder {
            start,
            latency: histogram.clone(),
            service: histogram,
            requests: 0,
            answered: 0,
            errors: 0,
            statuses: BTreeMap::new(),
            error_kinds: BTreeMap::new(),
            spread: Spread::default(),
            timeline: Timeline::new()?,
            writes: WriteLog::default(),
        })
    }

    /// Counts one finished request.
    pub fn record(&mut self, sample: Sample<'_>) {
        self.requests += 1;
        let error = sample.answer.is_error();
        self.errors += u64::from(error);
        let latency = match sample.answer {
            Answer::Response {
                status,
                backend,
                error_code,
                ..
            } => {
                self.answered += 1;
                *self.statuses.entry(*status).or_default() += 1;
                self.spread.record(backend.as_deref());
                if error {
                    let kind = match error_code {
                        Some(code) => format!("{status} {code}"),
                        None => status.to_string(),
                    };
                    *self.error_kinds.entry(kind).or_default() += 1;
                }
                let latency = micros(sample.done - sample.intended);
                self.latency.saturating_record(latency);
                self.service
                    .saturating_record(micros(sample.done - sample.sent));
                Some(latency)
            }
            Answer::Failed(failure) => {
                *self.error_kinds.entry(failure.to_string()).or_default() += 1;
                None
            }
        };
        let backend = match sample.answer {
            Answer::Response { backend, .. } => backend.as_deref(),
            Answer::Failed(_) => None,
        };
        self.timeline.record(
            sample.done.saturating_duration_since(self.start),
            error,
            latency,
            backend,
        );
        if sample.request.write {
            self.writes.sent += 1;
            match sample.answer.write_outcome() {
                WriteOutcome::Acknowledged => self.writes.acknowledged.push(sample.request.n),
                WriteOutcome::Unknown => self.writes.unknown.push(sample.request.n),
                WriteOutcome::Refused => self.writes.refused.push(sample.request.n),
            }
        }
    }
}

/// A duration in whole microseconds, at least 1 (the histogram's lowest value).
fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exchange::Failure;

    fn sample(n: u64, write: bool, times_ms: (u64, u64, u64), answer: &Answer) -> Sample<'_> {
        let base = Instant::now();
        let at = |ms| base + Duration::from_millis(ms);
        Sample {
            request: Request { n, write },
            intended: at(times_ms.0),
            sent: at(times_ms.1),
            done: at(times_ms.2),
            answer,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn latency_counts_from_the_intended_time_and_service_time_from_the_send() {
        let mut r = Recorder::new(Instant::now()).expect("recorder");
        // Meant for t=0, held back until t=900 ms by a stall, answered at 901 ms.
        r.record(sample(0, false, (0, 900, 901), &Answer::status(200)));
        assert_eq!(r.latency.max(), r.latency.highest_equivalent(901_000));
        assert_eq!(r.service.max(), r.service.highest_equivalent(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_errors_and_writes_are_counted_by_kind() {
        let mut r = Recorder::new(Instant::now()).expect("recorder");
        let failover = Answer::Response {
            status: 503,
            backend: Some("app1".into()),
            error_code: Some("failover_in_progress".into()),
            outcome_unknown: false,
        };
        let ok = Answer::Response {
            status: 200,
            backend: Some("app2".into()),
            error_code: None,
            outcome_unknown: false,
        };
        r.record(sample(0, true, (0, 0, 1), &ok));
        r.record(sample(1, true, (0, 0, 1), &failover));
        r.record(sample(
            2,
            true,
            (0, 0, 1),
            &Answer::Failed(Failure::Timeout),
        ));
        r.record(sample(3, false, (0, 0, 1), &Answer::status(404)));
        assert_eq!((r.requests, r.answered, r.errors), (4, 3, 3));
        assert_eq!(
            r.statuses.into_iter().collect::<Vec<_>>(),
            [(200, 1), (404, 1), (503, 1)]
        );
        assert_eq!(
            r.error_kinds.into_iter().collect::<Vec<_>>(),
            [
                ("404".to_owned(), 1),
                ("503 failover_in_progress".to_owned(), 1),
                ("timeout".to_owned(), 1)
            ]
        );
        assert_eq!(
            r.writes,
            WriteLog {
                sent: 3,
                acknowledged: vec![0],
                unknown: vec![2],
                refused: vec![1]
            }
        );
        assert_eq!(r.spread.shares().len(), 2);
        assert_eq!(r.spread.unnamed(), 1, "the 404 named no backend");
        assert_eq!(r.latency.len(), 3, "only answers have a latency");
    }
}
