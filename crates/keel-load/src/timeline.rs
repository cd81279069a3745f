//! The run second by second: answers, errors and latency per second of the run.
//!
//! A request lands in the second in which it *finished* (counted from the start of the
//! run), so that the timeline shows what a client saw when: a stall is a second with few
//! answers, followed by one whose latencies are long.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::recorder::{HIGHEST_MICROS, micros_to_ms};

/// Two significant digits are plenty for a per-second p99, and keep one second's
/// histogram near 10 kB (an hour-long run holds 3600 of them).
const SIGFIG: u8 = 2;

/// One second of the run.
#[derive(Debug, Clone)]
struct Second {
    requests: u64,
    errors: u64,
    latencies: Histogram<u32>,
    /// Answers per backend name (`--spread-by`).
    spread: BTreeMap<String, u64>,
}

/// Per-second buckets, grown as the run goes.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// An empty histogram, cloned for every new second.
    empty: Histogram<u32>,
    seconds: Vec<Second>,
}

/// One second in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondRow {
    /// Seconds since the start of the run (this row covers `[second, second + 1)`).
    pub second: u64,
    /// Requests that finished in it (answered or not).
    pub requests: u64,
    /// Of them, errors (no answer, or an answer of 400 or more).
    pub errors: u64,
    /// Median latency of the answers, in milliseconds (`None` when nothing answered).
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Slowest answer.
    pub max_ms: Option<f64>,
    /// Answers per backend name (`--spread-by`), so that a backend leaving and coming
    /// back shows in the seconds it happened.
    pub spread: BTreeMap<String, u64>,
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Result<Timeline, hdrhistogram::CreationError> {
        Ok(Timeline {
            empty: Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGFIG)?,
            seconds: Vec::new(),
        })
    }

    /// Counts one request that finished `at` after the start; `latency_micros` when it
    /// was answered, `backend` when the answer named one.
    pub fn record(
        &mut self,
        at: Duration,
        error: bool,
        latency_micros: Option<u64>,
        backend: Option<&str>,
    ) {
        let index = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
        if index >= self.seconds.len() {
            // A run is bounded to an hour plus its timeout; an index far beyond that can
            // only come from a clock gone wrong, and must not allocate without bound.
            if index > 2 * 3600 {
                return;
            }
            let empty = Second {
                requests: 0,
                errors: 0,
                latencies: self.empty.clone(),
                spread: BTreeMap::new(),
            };
            self.seconds.resize(index + 1, empty);
        }
        let second = &mut self.seconds[index];
        second.requests += 1;
        second.errors += u64::from(error);
        if let Some(micros) = latency_micros {
            second.latencies.saturating_record(micros.max(1));
        }
        if let Some(name) = backend {
            match second.spread.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    second.spread.insert(name.to_owned(), 1);
                }
            }
        }
    }

    /// The rows, one per second from the start to the last request.
    pub fn rows(&self) -> Vec<SecondRow> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let answered = !s.latencies.is_empty();
                let at = |q: f64| answered.then(|| micros_to_ms(s.latencies.value_at_quantile(q)));
                SecondRow {
                    second: i as u64,
                    requests: s.requests,
                    errors: s.errors,
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                    max_ms: answered.then(|| micros_to_ms(s.latencies.max())),
                    spread: s.spread.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_the_second_they_finished_in() {
        let mut t = Timeline::new().expect("valid bounds");
        t.record(Duration::from_millis(10), false, Some(1_000), Some("pg2"));
        t.record(Duration::from_millis(999), false, Some(3_000), Some("pg3"));
        t.record(Duration::from_millis(1_000), true, None, None);
        t.record(
            Duration::from_millis(3_500),
            true,
            Some(250_000),
            Some("pg3"),
        );
        let rows = t.rows();
        let shape: Vec<(u64, u64, u64)> = rows
            .iter()
            .map(|r| (r.second, r.requests, r.errors))
            .collect();
        assert_eq!(
            shape,
            [(0, 2, 0), (1, 1, 1), (2, 0, 0), (3, 1, 1)],
            "an empty second in between is shown as such"
        );
        let max = rows[0].max_ms.expect("answered");
        assert!((max - 3.0).abs() <= 0.03, "{max}");
        assert_eq!(rows[1].p99_ms, None, "nothing answered in second 1");
        assert_eq!(rows[2].p50_ms, None);
        let names = |i: usize| {
            rows[i]
                .spread
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), ["pg2=1", "pg3=1"]);
        assert!(
            names(1).is_empty() && names(2).is_empty(),
            "pg2 gone after second 0"
        );
        assert_eq!(names(3), ["pg3=1"]);
        // Two significant digits: 250 ms reads back within 1 %.
        let p99 = rows[3].p99_ms.expect("answered");
        assert!((p99 - 250.0).abs() <= 2.5, "{p99}");
    }

    #[test]
    fn a_second_far_beyond_any_run_is_ignored_rather_than_allocated() {
        let mut t = Timeline::new().expect("valid bounds");
        t.record(Duration::from_secs(1_000_000), false, Some(1), None);
        assert!(t.rows().is_empty());
    }
}
