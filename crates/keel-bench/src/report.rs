//! The figures of one run, printed for a person or as JSON for the script.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::{Args, Target};

/// One run's result. Latencies are in milliseconds; writes counts successes only.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: Target,
    pub url: String,
    pub concurrency: u32,
    pub value_size: u32,
    pub duration_s: f64,
    pub writes: u64,
    pub writes_per_s: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// The first failure seen in the window, so that a run full of errors says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Report {
    pub fn new(
        args: &Args,
        latencies: &Histogram<u64>,
        errors: u64,
        first_error: Option<String>,
    ) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let duration_s = args.duration.as_secs_f64();
        let writes = latencies.len();
        // An empty histogram answers 0 for every quantile; report that as 0, not NaN.
        Self {
            target: args.target,
            url: args.url.clone(),
            concurrency: args.concurrency,
            value_size: args.value_size,
            duration_s,
            writes,
            writes_per_s: writes as f64 / duration_s,
            errors,
            p50_ms: ms(latencies.value_at_quantile(0.50)),
            p99_ms: ms(latencies.value_at_quantile(0.99)),
            p999_ms: ms(latencies.value_at_quantile(0.999)),
            max_ms: ms(latencies.max()),
            mean_ms: latencies.mean() / 1000.0,
            first_error,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "target {} at {}: {} clients, {}-byte values, {:.1} s measured",
            self.target, self.url, self.concurrency, self.value_size, self.duration_s
        )?;
        writeln!(
            f,
            "  writes/s {:.0}   ({} writes, {} errors)",
            self.writes_per_s, self.writes, self.errors
        )?;
        writeln!(
            f,
            "  latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.mean_ms
        )?;
        if let Some(error) = &self.first_error {
            writeln!(f, "  first error: {error}")?;
        }
        Ok(())
    }
}
