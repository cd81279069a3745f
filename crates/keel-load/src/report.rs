//! The final report: built once from the counts, written as text for a person (stdout)
//! and as JSON for a program (`--json FILE`).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::events::EventMark;
use crate::recorder::{Percentiles, Recorder};
use crate::settings::{Pace, Plan};
use crate::spread::{BackendShare, FIELD_SEPARATOR};
use crate::timeline::SecondRow;
use crate::verify::VerifySummary;

/// Everything a run found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The URL loaded.
    pub url: String,
    /// The method of the requests that are not writes.
    pub method: String,
    /// The id the run's writes are named after (`load-<run_id>-<n>`).
    pub run_id: String,
    /// `rate` (open loop) or `concurrency` (closed loop).
    pub mode: &'static str,
    /// Requests per second asked for, under `--rate`.
    pub rate: Option<u32>,
    /// Connections used.
    pub connections: u32,
    /// Where the backend name was read from.
    pub spread_by: String,
    /// Seconds from the start to the last answer.
    pub elapsed_s: f64,
    /// Whether the run was stopped before its end (Ctrl-C).
    pub stopped_early: bool,
    /// Requests sent.
    pub requests: u64,
    /// Of them, answered with a status.
    pub answered: u64,
    /// Of them, errors: no answer, or a status of 400 or more.
    pub errors: u64,
    /// Under `--rate`: requests whose time came while every connection was busy and that
    /// were never sent before the run ended.
    pub missed: u64,
    /// `requests / elapsed_s`.
    pub requests_per_s: f64,
    /// Answers per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Errors per kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Latency of the answers; under `--rate` from the intended send time.
    pub latency: Option<Percentiles>,
    /// Whether `latency` counts from the intended send time (corrected for coordinated
    /// omission).
    pub latency_corrected: bool,
    /// Under `--rate`: the same answers timed from their actual send.
    pub service_time: Option<Percentiles>,
    /// Answers per backend.
    pub spread: Vec<BackendShare>,
    /// Answers that named no backend.
    pub spread_unnamed: u64,
    /// Second by second.
    pub timeline: Vec<SecondRow>,
    /// The writes, under `--write-ratio`.
    pub writes: Option<WritesReport>,
    /// The monitor's events during the run, with `--monitor`.
    pub events: Vec<EventMark>,
    /// What reading back found, with `--verify`.
    pub verify: Option<VerifySummary>,
}

/// The writes of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WritesReport {
    /// Sent.
    pub sent: u64,
    /// Answered 2xx.
    pub acknowledged: u64,
    /// Refused, or never sent.
    pub refused: u64,
    /// Outcome unknown.
    pub unknown: u64,
}

/// What the report is built from besides the counts.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// The id the writes were named after.
    pub run_id: String,
    /// Seconds from start to the last answer.
    pub elapsed_s: f64,
    /// Stopped by Ctrl-C.
    pub stopped_early: bool,
    /// Tickets never sent.
    pub missed: u64,
    /// The monitor's events.
    pub events: Vec<EventMark>,
}

impl Report {
    /// The report of `plan`'s run from its counts.
    pub fn new(plan: &Plan, recorder: &Recorder, facts: RunFacts) -> Report {
        let settings = &plan.settings;
        let (mode, rate) = match settings.pace {
            Pace::Rate { per_second, .. } => ("rate", Some(per_second)),
            Pace::Concurrency(_) => ("concurrency", None),
        };
        let writes = (settings.write_ratio > 0.0).then_some(WritesReport {
            sent: recorder.writes.sent,
            acknowledged: recorder.writes.acknowledged.len() as u64,
            refused: recorder.writes.refused.len() as u64,
            unknown: recorder.writes.unknown.len() as u64,
        });
        Report {
            url: plan.target.url.clone(),
            method: settings.method.to_string(),
            run_id: facts.run_id,
            mode,
            rate,
            connections: settings.pace.connections(),
            spread_by: settings.spread_by.to_string(),
            elapsed_s: facts.elapsed_s,
            stopped_early: facts.stopped_early,
            requests: recorder.requests,
            answered: recorder.answered,
            errors: recorder.errors,
            missed: facts.missed,
            requests_per_s: if facts.elapsed_s > 0.0 {
                recorder.requests as f64 / facts.elapsed_s
            } else {
                0.0
            },
            statuses: recorder.statuses.clone(),
            error_kinds: recorder.error_kinds.clone(),
            latency: Percentiles::of(&recorder.latency),
            latency_corrected: rate.is_some(),
            service_time: rate.and_then(|_| Percentiles::of(&recorder.service)),
            spread: recorder.spread.shares(),
            spread_unnamed: recorder.spread.unnamed(),
            timeline: recorder.timeline.rows(),
            writes,
            events: facts.events,
            verify: None,
        }
    }

    /// The report for a person.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> fmt::Result {
        let pace = match self.rate {
            Some(rate) => format!(
                "{rate} req/s on {} connections (open loop)",
                self.connections
            ),
            None => format!("{} connections (closed loop)", self.connections),
        };
        writeln!(out, "keel load {} {}", self.method, self.url)?;
        writeln!(
            out,
            "  {pace}, {:.2} s{}",
            self.elapsed_s,
            if self.stopped_early {
                ", stopped early"
            } else {
                ""
            }
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "requests   {:>10}   {:.1}/s",
            self.requests, self.requests_per_s
        )?;
        writeln!(out, "answered   {:>10}", self.answered)?;
        writeln!(
            out,
            "errors     {:>10}   {}",
            self.errors,
            percent(self.errors, self.requests)
        )?;
        if self.missed > 0 {
            writeln!(
                out,
                "missed     {:>10}   due while every connection was busy, never sent (raise --connections)",
                self.missed
            )?;
        }

        if !self.statuses.is_empty() {
            writeln!(out)?;
            writeln!(out, "status")?;
            for (status, count) in &self.statuses {
                writeln!(
                    out,
                    "  {status:<8} {count:>10}   {}",
                    percent(*count, self.answered)
                )?;
            }
        }
        if !self.error_kinds.is_empty() {
            writeln!(out)?;
            writeln!(out, "errors by kind")?;
            let width = self.error_kinds.keys().map(String::len).max().unwrap_or(0);
            for (kind, count) in &self.error_kinds {
                writeln!(out, "  {kind:<width$}   {count:>10}")?;
            }
        }

        writeln!(out)?;
        let heading = if self.latency_corrected {
            "latency (ms, from the intended send time: corrected for coordinated omission)"
        } else {
            "latency (ms)"
        };
        writeln!(out, "{heading}")?;
        writeln!(
            out,
            "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        )?;
        match &self.latency {
            Some(p) => write_percentiles(out, p)?,
            None => writeln!(out, "  no answers")?,
        }
        if let Some(service) = &self.service_time {
            writeln!(out, "service time (ms, from the actual send)")?;
            write_percentiles(out, service)?;
        }

        if !self.spread.is_empty() || self.spread_unnamed > 0 {
            writeln!(out)?;
            writeln!(out, "spread per backend (by {})", self.spread_by)?;
            let width = self
                .spread
                .iter()
                .map(|s| s.name.len())
                .max()
                .unwrap_or(0)
                .max(9);
            for share in &self.spread {
                writeln!(
                    out,
                    "  {:<width$}   {:>10}   {:>6.2}%",
                    share.name, share.count, share.percent
                )?;
            }
            if self.spread_unnamed > 0 {
                writeln!(
                    out,
                    "  {:<width$}   {:>10}   (answers that named no backend)",
                    "(unnamed)", self.spread_unnamed
                )?;
            }
            // Over several fields: each field's own spread too.
            let fields = self
                .spread
                .iter()
                .map(|s| s.name.split(FIELD_SEPARATOR).count())
                .max()
                .unwrap_or(1);
            for field in (0..fields).filter(|_| fields > 1) {
                let counts = by_field(
                    self.spread.iter().map(|s| (s.name.as_str(), s.count)),
                    field,
                );
                let total: u64 = counts.values().sum();
                let label = self
                    .spread_by
                    .split(FIELD_SEPARATOR)
                    .nth(field)
                    .unwrap_or("?");
                writeln!(out, "  by {label}:")?;
                for (name, count) in &counts {
                    writeln!(
                        out,
                        "    {:<width$} {:>10}   {:>6.2}%",
                        name,
                        count,
                        *count as f64 * 100.0 / total.max(1) as f64
                    )?;
                }
            }
        }

        if !self.timeline.is_empty() {
            writeln!(out)?;
            writeln!(out, "timeline (by the second each request finished in)")?;
            writeln!(
                out,
                "  {:>6} {:>10} {:>8} {:>10}",
                "second", "requests", "errors", "p99 ms"
            )?;
            for row in &self.timeline {
                let p99 = row
                    .p99_ms
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
                let marks: Vec<String> = self
                    .events
                    .iter()
                    .filter(|e| e.at_s >= row.second as f64 && e.at_s < (row.second + 1) as f64)
                    .map(EventMark::label)
                    .collect();
                // The full list follows the timeline; a row shows the first few.
                let marks = match marks.len() {
                    0 => String::new(),
                    1..=3 => format!("   ◆ {}", marks.join(", ")),
                    n => format!("   ◆ {} (+{} more)", marks[..3].join(", "), n - 3),
                };
                writeln!(
                    out,
                    "  {:>6} {:>10} {:>8} {:>10}{}{marks}",
                    row.second,
                    row.requests,
                    row.errors,
                    p99,
                    second_spread(&row.spread)
                )?;
            }
        }

        if !self.events.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "monitor events (seconds from the start, as they arrived)"
            )?;
            for e in &self.events {
                writeln!(
                    out,
                    "  {:>8.3}  {}: {}",
                    e.at_s,
                    e.kind.replace('_', " "),
                    e.message
                )?;
            }
        }

        if let Some(w) = &self.writes {
            writeln!(out)?;
            writeln!(
                out,
                "writes     sent {}   acknowledged {}   refused {}   unknown outcome {}",
                w.sent, w.acknowledged, w.refused, w.unknown
            )?;
        }
        if let Some(v) = &self.verify {
            write_verify(out, v)?;
        }
        Ok(())
    }
}

/// The counts of one field of several-field names (`service1 × pg2`), by that field.
fn by_field<'a>(
    names: impl Iterator<Item = (&'a str, u64)>,
    field: usize,
) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for (name, count) in names {
        let part = name.split(FIELD_SEPARATOR).nth(field).unwrap_or("?");
        *counts.entry(part.to_owned()).or_insert(0) += count;
    }
    counts
}

/// One second's answers per backend, for its timeline row: `  svc1 12 svc2 13`, each
/// field apart when there are several (`  service1 12 service2 13 | pg2 12 pg3 13`).
fn second_spread(spread: &std::collections::BTreeMap<String, u64>) -> String {
    if spread.is_empty() {
        return String::new();
    }
    let fields = spread
        .keys()
        .map(|k| k.split(FIELD_SEPARATOR).count())
        .max()
        .unwrap_or(1);
    let parts: Vec<String> = (0..fields)
        .map(|field| {
            by_field(spread.iter().map(|(k, v)| (k.as_str(), *v)), field)
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    format!("   {}", parts.join(" | "))
}

fn write_percentiles(out: &mut String, p: &Percentiles) -> fmt::Result {
    writeln!(
        out,
        "  {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.mean_ms
    )
}

fn write_verify(out: &mut String, v: &VerifySummary) -> fmt::Result {
    writeln!(out)?;
    writeln!(
        out,
        "verify     {} acknowledged writes read back from {}",
        v.acknowledged, v.read_from
    )?;
    writeln!(out, "  confirmed                 {}", v.confirmed)?;
    for lost in &v.lost_writes {
        match &lost.found {
            None => writeln!(out, "  lost: {} is missing", lost.key)?,
            Some(found) => writeln!(
                out,
                "  lost: {} holds {:?}, not {:?}",
                lost.key, found, lost.expected
            )?,
        }
    }
    if v.lost > v.lost_writes.len() as u64 {
        writeln!(out, "  … and {} more", v.lost - v.lost_writes.len() as u64)?;
    }
    if v.unreadable > 0 {
        writeln!(
            out,
            "  could not be read back    {} ({})",
            v.unreadable,
            v.unreadable_reason.as_deref().unwrap_or("no reason")
        )?;
    }
    if v.unknown > 0 {
        writeln!(
            out,
            "  unknown outcome           {} ({} present, {} absent, {} unreadable): promised nothing, not counted as lost",
            v.unknown, v.unknown_present, v.unknown_absent, v.unknown_unreadable
        )?;
    }
    if !v.groups.is_empty() {
        writeln!(
            out,
            "  by group          acknowledged    refused    unknown       lost"
        )?;
        for g in &v.groups {
            writeln!(
                out,
                "    {:<12} {:>15} {:>10} {:>10} {:>10}",
                g.group, g.acknowledged, g.refused, g.unknown, g.lost
            )?;
        }
    }
    writeln!(out, "lost acknowledged writes: {}", v.lost)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return String::new();
    }
    format!("{:.2}%", part as f64 * 100.0 / whole as f64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::Method;
    use tokio::time::Instant;

    use super::*;
    use crate::exchange::{Answer, Failure, Request};
    use crate::recorder::Sample;
    use crate::settings::{Bound, Settings};
    use crate::spread::SpreadBy;
    use crate::verify::{GroupWrites, LostWrite};

    fn plan(pace: Pace, write_ratio: f64) -> Plan {
        Plan::new(Settings {
            url: "http://127.0.0.1:8080/data".into(),
            pace,
            bound: Bound::Duration(Duration::from_secs(2)),
            method: Method::GET,
            body: Bytes::new(),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            write_ratio,
            spread_by: SpreadBy::Auto,
            allow_remote: false,
            tls: None,
        })
        .expect("valid plan")
    }

    /// Three answers in second 0 (two from svc1, one from svc2), a timeout in second 1.
    fn recorder() -> Recorder {
        let start = Instant::now();
        let mut r = Recorder::new(start).expect("recorder");
        let ok = |backend: &str| Answer::Response {
            status: 200,
            backend: Some(backend.to_owned()),
            error_code: None,
            outcome_unknown: false,
        };
        let at = |ms| start + Duration::from_millis(ms);
        for (n, backend) in [(0, "svc1"), (1, "svc1"), (2, "svc2")] {
            r.record(Sample {
                request: Request { n, write: n == 0 },
                intended: at(100),
                sent: at(100),
                done: at(104),
                answer: &ok(backend),
            });
        }
        r.record(Sample {
            request: Request { n: 3, write: false },
            intended: at(1000),
            sent: at(1000),
            done: at(1500),
            answer: &Answer::Failed(Failure::Timeout),
        });
        r
    }

    fn facts(events: Vec<EventMark>) -> RunFacts {
        RunFacts {
            run_id: "abcd0123".into(),
            elapsed_s: 2.0,
            stopped_early: false,
            missed: 0,
            events,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_text_report_shows_every_section_a_person_reads() {
        let events = vec![EventMark {
            at_s: 1.2,
            id: 9,
            kind: "failover_done".into(),
            node: Some("app2".into()),
            message: "app2 is primary in epoch 2".into(),
        }];
        let mut report = Report::new(&plan(Pace::Concurrency(2), 0.5), &recorder(), facts(events));
        report.verify = Some(VerifySummary {
            read_from: "http://127.0.0.1:8082".into(),
            acknowledged: 3,
            confirmed: 1,
            lost: 2,
            lost_writes: vec![
                LostWrite {
                    key: "load-abcd0123-4".into(),
                    expected: "v".into(),
                    found: None,
                },
                LostWrite {
                    key: "load-abcd0123-6".into(),
                    expected: "v".into(),
                    found: Some("w".into()),
                },
            ],
            groups: vec![
                GroupWrites {
                    group: "g1".into(),
                    acknowledged: 2,
                    refused: 1,
                    unknown: 0,
                    lost: 2,
                },
                GroupWrites {
                    group: "g2".into(),
                    acknowledged: 1,
                    ..GroupWrites::default()
                },
            ],
            ..VerifySummary::default()
        });
        let text = report.to_text();
        for expected in [
            "keel load GET http://127.0.0.1:8080/data",
            "2 connections (closed loop), 2.00 s",
            "requests            4   2.0/s",
            "errors              1   25.00%",
            "  200               3   100.00%",
            "  timeout            1",
            "  svc1                 2    66.67%",
            "  svc2                 1    33.33%",
            "       0          3        0",
            "       1          1        1          -   ◆ failover done app2",
            "     1.200  failover done: app2 is primary in epoch 2",
            "writes     sent 1   acknowledged 1   refused 0   unknown outcome 0",
            "  lost: load-abcd0123-4 is missing",
            "  lost: load-abcd0123-6 holds \"w\", not \"v\"",
            "  by group          acknowledged    refused    unknown       lost",
            "    g1                         2          1          0          2",
            "    g2                         1          0          0          0",
            "lost acknowledged writes: 2\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert!(
            !text.contains("coordinated omission"),
            "a closed loop is not corrected"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_report_says_its_latency_is_corrected_and_shows_service_time() {
        let report = Report::new(
            &plan(
                Pace::Rate {
                    per_second: 100,
                    connections: 4,
                },
                0.0,
            ),
            &recorder(),
            facts(Vec::new()),
        );
        assert!(report.latency_corrected);
        assert!(report.service_time.is_some());
        assert_eq!(report.writes, None, "no writes asked for");
        let text = report.to_text();
        assert!(
            text.contains("100 req/s on 4 connections (open loop)"),
            "{text}"
        );
        assert!(
            text.contains("corrected for coordinated omission"),
            "{text}"
        );
        assert!(
            text.contains("service time (ms, from the actual send)"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_json_report_keys_statuses_by_their_code() {
        let report = Report::new(
            &plan(Pace::Concurrency(1), 0.0),
            &recorder(),
            facts(Vec::new()),
        );
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["statuses"]["200"], 3);
        assert_eq!(json["error_kinds"]["timeout"], 1);
        assert_eq!(json["spread"][0]["name"], "svc1");
        assert_eq!(json["timeline"][1]["errors"], 1);
        assert_eq!(json["verify"], serde_json::Value::Null);
    }
}
