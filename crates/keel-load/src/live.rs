//! The live view on stderr while a run goes: elapsed time, requests per second, errors
//! and the spread per backend, plus the monitor's events as they arrive.
//!
//! On a terminal it is an indicatif progress bar that redraws in place; elsewhere (a pipe,
//! a log file) one plain line a second, which reads well in a log; `--quiet` shows
//! nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::engine::lock;
use crate::events::Feed;
use crate::recorder::Recorder;
use crate::settings::Bound;

/// How the live view shows itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMode {
    /// A progress bar redrawn in place (stderr is a terminal).
    Terminal,
    /// One line a second.
    Lines,
    /// Nothing.
    Quiet,
}

/// The figures a live line shows.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveFigures {
    /// Seconds since the start.
    pub elapsed: Duration,
    /// Requests per second over the last second.
    pub rate: f64,
    /// Requests so far.
    pub requests: u64,
    /// Errors so far.
    pub errors: u64,
    /// `app1 50.1%  app2 49.9%`, the busiest backends first.
    pub spread: String,
}

impl LiveFigures {
    /// `  3.0s   1234 req/s   3702 requests   0 errors   app1 50.0%  app2 50.0%`
    pub fn line(&self) -> String {
        format!(
            "{:>6.1}s {:>9.0} req/s {:>10} requests {:>7} errors   {}",
            self.elapsed.as_secs_f64(),
            self.rate,
            self.requests,
            self.errors,
            self.spread
        )
    }
}

/// A running live view.
pub struct Live {
    task: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Live {
    /// Starts the live view of a run that began at `start`.
    pub fn start(
        mode: LiveMode,
        recorder: Arc<Mutex<Recorder>>,
        events: Option<Feed>,
        start: Instant,
        bound: Bound,
    ) -> Live {
        let (stop, stopped) = watch::channel(false);
        let task = match mode {
            LiveMode::Quiet => None,
            LiveMode::Terminal | LiveMode::Lines => Some(tokio::spawn(show(
                mode, recorder, events, start, bound, stopped,
            ))),
        };
        Live { task, stop }
    }

    /// Stops and clears the live view.
    pub async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn show(
    mode: LiveMode,
    recorder: Arc<Mutex<Recorder>>,
    events: Option<Feed>,
    start: Instant,
    bound: Bound,
    mut stopped: watch::Receiver<bool>,
) {
    let tick = match mode {
        LiveMode::Terminal => Duration::from_millis(200),
        _ => Duration::from_secs(1),
    };
    let bar = (mode == LiveMode::Terminal).then(|| progress_bar(bound));
    let mut interval = tokio::time::interval_at(start + tick, tick);
    // (when, requests so far): the last second of samples, for the current rate.
    let mut window: VecDeque<(Instant, u64)> = VecDeque::from([(start, 0)]);
    let mut events_shown = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.changed() => break,
        }
        let now = Instant::now();
        let figures = {
            let r = lock(&recorder);
            window.push_back((now, r.requests));
            while window.len() > 2 && now - window[1].0 >= Duration::from_secs(1) {
                window.pop_front();
            }
            let (then, before) = window[0];
            let span = (now - then).as_secs_f64();
            let shares = r.spread.shares();
            let spread = shares
                .iter()
                .take(4)
                .map(|s| format!("{} {:.1}%", s.name, s.percent))
                .collect::<Vec<_>>()
                .join("  ");
            let more = shares.len().saturating_sub(4);
            LiveFigures {
                elapsed: now - start,
                rate: if span > 0.0 {
                    (r.requests - before) as f64 / span
                } else {
                    0.0
                },
                requests: r.requests,
                errors: r.errors,
                spread: if more > 0 {
                    format!("{spread}  (+{more} more)")
                } else {
                    spread
                },
            }
        };
        let new_events: Vec<String> = match &events {
            Some(feed) => {
                let seen = feed.lock().unwrap_or_else(PoisonError::into_inner);
                let lines = seen
                    .iter()
                    .skip(events_shown)
                    .map(|a| {
                        let mark = crate::events::mark(a, start);
                        format!(
                            "{:>6.1}s  monitor  {}: {}",
                            mark.at_s,
                            mark.kind.replace('_', " "),
                            mark.message
                        )
                    })
                    .collect();
                events_shown = seen.len();
                lines
            }
            None => Vec::new(),
        };
        match &bar {
            Some(bar) => {
                for line in new_events {
                    bar.println(line);
                }
                bar.set_position(match bound {
                    Bound::Duration(_) => {
                        u64::try_from(figures.elapsed.as_millis()).unwrap_or(u64::MAX)
                    }
                    Bound::Requests(_) => figures.requests,
                });
                bar.set_message(format!(
                    "{:.0} req/s  {} requests  {} errors  {}",
                    figures.rate, figures.requests, figures.errors, figures.spread
                ));
            }
            None => {
                for line in new_events {
                    eprintln!("{line}");
                }
                eprintln!("{}", figures.line());
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn progress_bar(bound: Bound) -> ProgressBar {
    let len = match bound {
        Bound::Duration(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Bound::Requests(n) => n,
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    // The template is a constant; should indicatif ever refuse it, the default style
    // still shows the bar.
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30.cyan/blue}] {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
