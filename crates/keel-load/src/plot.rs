//! `--plot FILE.svg`: throughput, errors and p99 per second in three panels over the same
//! time axis, with the monitor's events drawn across all three as labelled vertical
//! markers, in the manner of vegeta's plots.

use std::path::Path;

use plotters::prelude::*;

use crate::LoadError;
use crate::report::Report;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 900;
const LINE: RGBColor = RGBColor(31, 119, 180);
const ERRORS: RGBColor = RGBColor(214, 39, 40);
const MARKER: RGBColor = RGBColor(148, 103, 189);

/// Label rows for the events, so that labels close in time do not print over each
/// other: each label takes the highest row where the previous label has ended, judged by
/// an estimate of its width (the SVG backend measures no text).
fn label_rows(report: &Report, x_span: f64) -> Vec<usize> {
    const ROWS: usize = 9;
    /// About the width of one character of a 12-pixel sans-serif font.
    const CHAR_PX: f64 = 6.5;
    let plot_px = f64::from(WIDTH) - 90.0;
    let units_per_px = x_span / plot_px;
    let mut ends = [f64::NEG_INFINITY; ROWS];
    report
        .events
        .iter()
        .map(|event| {
            let width = (event.label().chars().count() as f64 + 1.0) * CHAR_PX * units_per_px;
            let row = ends
                .iter()
                .position(|&end| end <= event.at_s)
                .unwrap_or_else(|| {
                    // Every row is taken here: the one that frees up first.
                    let mut best = 0;
                    for (r, end) in ends.iter().enumerate() {
                        if *end < ends[best] {
                            best = r;
                        }
                    }
                    best
                });
            ends[row] = event.at_s + width;
            row
        })
        .collect()
}

/// Draws `report`'s timeline into an SVG file at `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), LoadError> {
    draw(report, path).map_err(|why| LoadError::Plot {
        path: path.to_owned(),
        why,
    })
}

fn draw(report: &Report, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (title, body) = root.split_vertically(36);
    title
        .titled(
            &format!(
                "keel load {} {} — {} requests in {:.1} s",
                report.method, report.url, report.requests, report.elapsed_s
            ),
            ("sans-serif", 18),
        )
        .map_err(|e| e.to_string())?;

    // The x axis covers the whole run and every event seen during it.
    let last_second = report.timeline.len() as f64;
    let last_event = report.events.iter().map(|e| e.at_s).fold(0.0, f64::max);
    let x_max = last_second.max(last_event + 0.5).max(1.0);
    let first_event = report.events.iter().map(|e| e.at_s).fold(0.0, f64::min);
    let x_min = first_event.min(0.0);

    let mid = |second: u64| second as f64 + 0.5;
    let throughput: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .map(|r| (mid(r.second), r.requests as f64))
        .collect();
    let errors: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .map(|r| (mid(r.second), r.errors as f64))
        .collect();
    let p99: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .filter_map(|r| r.p99_ms.map(|v| (mid(r.second), v)))
        .collect();
    let rows = label_rows(report, x_max - x_min);
    let panels = body.split_evenly((3, 1));
    let specs = [
        ("throughput", "requests / s", &throughput, LINE),
        ("errors", "errors / s", &errors, ERRORS),
        ("p99 latency", "ms", &p99, LINE),
    ];
    for (i, (panel, (caption, unit, points, color))) in panels.iter().zip(specs).enumerate() {
        let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .margin(8)
            .caption(caption, ("sans-serif", 15))
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 238))
            .x_desc(if i == 2 { "seconds from the start" } else { "" })
            .y_desc(unit)
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, event) in report.events.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    [(event.at_s, 0.0), (event.at_s, y_max)],
                    MARKER.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?;
            if i == 0 {
                let y = y_max * (0.95 - 0.09 * rows[k] as f64);
                chart
                    .draw_series(std::iter::once(Text::new(
                        event.label(),
                        (event.at_s, y),
                        ("sans-serif", 12).into_font().color(&MARKER),
                    )))
                    .map_err(|e| e.to_string())?;
            }
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 2, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventMark;
    use crate::timeline::SecondRow;

    fn event(at_s: f64, kind: &str) -> EventMark {
        EventMark {
            at_s,
            id: 1,
            kind: kind.into(),
            node: Some("app2".into()),
            message: String::new(),
        }
    }

    fn report(events: Vec<EventMark>) -> Report {
        let row = |second, requests, errors, p99| SecondRow {
            second,
            requests,
            errors,
            p50_ms: p99,
            p99_ms: p99,
            max_ms: p99,
            spread: Default::default(),
        };
        Report {
            url: "http://127.0.0.1:8080/".into(),
            method: "GET".into(),
            run_id: "0".into(),
            mode: "rate",
            rate: Some(100),
            connections: 4,
            spread_by: "none".into(),
            elapsed_s: 3.0,
            stopped_early: false,
            requests: 250,
            answered: 200,
            errors: 50,
            missed: 0,
            requests_per_s: 83.3,
            statuses: Default::default(),
            error_kinds: Default::default(),
            latency: None,
            latency_corrected: true,
            service_time: None,
            spread: Vec::new(),
            spread_unnamed: 0,
            timeline: vec![
                row(0, 100, 0, Some(2.0)),
                row(1, 50, 50, None),
                row(2, 100, 0, Some(40.0)),
            ],
            writes: None,
            events,
            verify: None,
        }
    }

    #[test]
    fn the_plot_is_an_svg_with_three_panels_and_labelled_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run.svg");
        write_svg(&report(vec![event(1.2, "failover_done")]), &path).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("written");
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        for text in ["throughput", "errors", "p99 latency", "failover done app2"] {
            assert!(svg.contains(text), "{text:?} not in the SVG");
        }
    }

    #[test]
    fn a_plot_into_a_missing_directory_is_an_error_naming_the_file() {
        let err = write_svg(&report(Vec::new()), Path::new("/nonexistent-dir/run.svg"))
            .expect_err("cannot write there");
        assert!(
            err.to_string().contains("/nonexistent-dir/run.svg"),
            "{err}"
        );
    }

    #[test]
    fn labels_close_in_time_take_different_rows_and_later_ones_reuse_the_top() {
        let events = vec![
            event(1.0, "heartbeat_missed"),
            event(1.01, "suspected"),
            event(1.02, "failover_started"),
            event(9.0, "failover_done"),
        ];
        assert_eq!(label_rows(&report(events), 10.0), [0, 1, 2, 0]);
    }
}
