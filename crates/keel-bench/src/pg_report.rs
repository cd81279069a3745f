//! The figures of one PostgreSQL failover run, printed for a person or as JSON for the
//! script. The windows are the same fields as the other failover report's
//! ([`WindowFigures`]), so a script reads both alike.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{KillMode, PgFailoverArgs};
use crate::failover_report::{WindowFigures, ms, opt_ms};
use crate::gaps::{self, Windows};
use crate::pg_writer::WriterLog;

/// How reading the acknowledged ids back went.
#[derive(Debug)]
pub enum Verification {
    Done {
        /// The member (1, 2, …) read.
        against: usize,
        lost: Vec<i64>,
    },
    /// No primary could be read: nothing is known about loss.
    Failed(String),
}

/// One kill, as the driver saw it.
#[derive(Debug, Serialize)]
pub struct CycleRecord {
    /// The member killed (1, 2, …).
    pub victim: usize,
    /// The primary once every member was back.
    pub new_primary: usize,
    /// Processes sent `SIGKILL` (1 when the postmaster alone is killed).
    pub processes_killed: usize,
    /// From the kill to every member back (rejoined, streaming).
    pub whole_again_ms: f64,
}

/// Times in milliseconds. `lost` is `null` when the ids could not be read back.
#[derive(Debug, Serialize)]
pub struct PgFailoverReport {
    pub system: String,
    /// What a kill took: `node` or `postmaster`.
    pub kill: KillMode,
    pub cycles_asked: u32,
    pub interval_ms: f64,
    pub duration_s: f64,
    pub attempts: u64,
    pub failed_attempts: u64,
    pub acked: u64,
    pub acked_per_s: f64,
    #[serde(flatten)]
    pub windows: WindowFigures,
    /// Kills after which another member was primary once all were back (a failover,
    /// rather than the same server restarted in place).
    pub failovers: usize,
    pub whole_again_median_ms: Option<f64>,
    /// The longest pause between acknowledgements outside the kill windows.
    pub longest_gap_elsewhere_ms: f64,
    pub cycles: Vec<CycleRecord>,
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_sample: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_against: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Why the cycles stopped before `cycles_asked`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
}

impl PgFailoverReport {
    pub fn new(
        args: &PgFailoverArgs,
        duration: Duration,
        log: &WriterLog,
        windows: &Windows,
        cycles: Vec<CycleRecord>,
        verification: Verification,
        aborted: Option<String>,
    ) -> Self {
        let mut whole: Vec<Duration> = cycles
            .iter()
            .map(|c| Duration::from_secs_f64(c.whole_again_ms / 1000.0))
            .collect();
        whole.sort_unstable();
        let (lost, lost_sample, verified_against, verify_error) = match verification {
            Verification::Done { against, lost } => (
                Some(lost.len() as u64),
                lost.into_iter().take(5).collect(),
                Some(against),
                None,
            ),
            Verification::Failed(error) => (None, Vec::new(), None, Some(error)),
        };
        let acked = log.acks.len() as u64;
        Self {
            system: args.system.clone(),
            kill: args.kill,
            cycles_asked: args.cycles,
            interval_ms: ms(args.interval),
            duration_s: duration.as_secs_f64(),
            attempts: log.attempts,
            failed_attempts: log.failures,
            acked,
            acked_per_s: acked as f64 / duration.as_secs_f64().max(f64::EPSILON),
            windows: WindowFigures::new(windows),
            failovers: cycles.iter().filter(|c| c.new_primary != c.victim).count(),
            whole_again_median_ms: gaps::quantile(&whole, 0.5).map(ms),
            longest_gap_elsewhere_ms: ms(windows.longest_gap_elsewhere),
            cycles,
            lost,
            lost_sample,
            verified_against,
            verify_error,
            first_error: log.first_error.clone(),
            aborted,
        }
    }
}

impl fmt::Display for PgFailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "system {}: kill of the primary's {}, one writer, a COMMIT every {:.0} ms, {:.1} s",
            self.system,
            match self.kill {
                KillMode::Node => "node",
                KillMode::Postmaster => "postmaster",
            },
            self.interval_ms,
            self.duration_s
        )?;
        writeln!(
            f,
            "  {} acknowledged ({:.0}/s), {} of {} attempts failed",
            self.acked, self.acked_per_s, self.failed_attempts, self.attempts
        )?;
        writeln!(f, "  {}", self.windows)?;
        writeln!(
            f,
            "  {} of {} kills were failovers (another member primary); all members back after (median) {} ms",
            self.failovers,
            self.cycles.len(),
            opt_ms(self.whole_again_median_ms)
        )?;
        writeln!(
            f,
            "  longest gap outside the windows: {:.0} ms",
            self.longest_gap_elsewhere_ms
        )?;
        match (self.lost, self.verified_against, &self.verify_error) {
            (Some(lost), Some(against), _) => {
                writeln!(
                    f,
                    "  lost acknowledged COMMITs: {lost} (read back from member {against})"
                )?;
                if !self.lost_sample.is_empty() {
                    let ids: Vec<String> = self.lost_sample.iter().map(i64::to_string).collect();
                    writeln!(f, "  for example ids: {}", ids.join(", "))?;
                }
            }
            (_, _, Some(error)) => writeln!(
                f,
                "  lost acknowledged COMMITs: unknown, could not read back: {error}"
            )?,
            _ => {}
        }
        if let Some(why) = &self.aborted {
            writeln!(f, "  stopped after {} cycles: {why}", self.cycles.len())?;
        }
        if let Some(error) = &self.first_error {
            writeln!(f, "  first failed attempt: {error}")?;
        }
        Ok(())
    }
}
