//! The workers: one per connection, each taking the next ticket, sending it (at its
//! intended time under `--rate`) and counting what came back.
//!
//! Tickets are numbered by one shared counter. A worker takes a ticket only when its
//! connection is free, so under `--rate` a ticket whose time comes while every connection
//! is busy waits for one, and that wait is part of its latency (counted from the intended
//! time): the correction for coordinated omission that wrk2 made known. No central
//! dispatcher is needed, and a closed loop is the same code without the waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::exchange::{Answer, Exchange, Failure, Request};
use crate::recorder::{Recorder, Sample};
use crate::schedule::{Schedule, Ticket};

/// After a refused connection a closed-loop worker waits this long before its next
/// request: a target that is down would otherwise be hammered by a loop that does
/// nothing but count refusals.
pub const CONNECT_PAUSE: Duration = Duration::from_millis(10);

/// How sending ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Driven {
    /// When the last request finished.
    pub finished: Instant,
    /// When the run was told to stop early, if it was.
    pub stopped_at: Option<Instant>,
    /// Under `--rate`: tickets whose time came before sending ended but that no
    /// connection was free to send.
    pub missed: u64,
}

struct Shared {
    schedule: Schedule,
    next: AtomicU64,
    recorder: Arc<Mutex<Recorder>>,
}

/// Runs one worker per connection until the schedule ends or `stop` turns true, and
/// waits for every request in flight (each is bounded by its connection's timeout).
pub async fn drive<E: Exchange>(
    conns: Vec<E>,
    schedule: Schedule,
    recorder: Arc<Mutex<Recorder>>,
    stop: watch::Receiver<bool>,
) -> Driven {
    let shared = Arc::new(Shared {
        schedule,
        next: AtomicU64::new(0),
        recorder,
    });
    let mut workers = JoinSet::new();
    for conn in conns {
        workers.spawn(worker(conn, Arc::clone(&shared), stop.clone()));
    }
    let mut stopped_at = None;
    let mut stop_seen = stop.clone();
    loop {
        tokio::select! {
            // The stop first: when it and the last worker's end are ready together, the
            // run was still stopped early.
            biased;
            changed = stop_seen.changed(), if stopped_at.is_none() => {
                if changed.is_err() || *stop_seen.borrow() {
                    stopped_at = Some(Instant::now());
                }
            }
            joined = workers.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
        }
    }
    let finished = Instant::now();
    let sent = lock(&shared.recorder).requests;
    let cutoff = match (stopped_at, schedule.end()) {
        (Some(stop), Some(end)) => stop.min(end),
        (Some(stop), None) => stop,
        (None, Some(end)) => end,
        (None, None) => finished,
    };
    Driven {
        finished,
        stopped_at,
        missed: schedule.due_before(cutoff).saturating_sub(sent),
    }
}

async fn worker<E: Exchange>(mut conn: E, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let schedule = &shared.schedule;
    loop {
        if *stop.borrow() {
            break;
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let intended = match schedule.ticket(n) {
            Ticket::Stop => break,
            Ticket::Send { intended } => intended,
        };
        if let Some(at) = intended {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                _ = stop.changed() => break,
            }
        }
        let sent = Instant::now();
        if schedule.end().is_some_and(|end| sent >= end) {
            break;
        }
        let request = Request {
            n,
            write: schedule.is_write(n),
        };
        let answer = conn.exchange(request).await;
        let done = Instant::now();
        lock(&shared.recorder).record(Sample {
            request,
            intended: intended.unwrap_or(sent),
            sent,
            done,
            answer: &answer,
        });
        if intended.is_none() && answer == Answer::Failed(Failure::Connect) {
            tokio::select! {
                () = tokio::time::sleep(CONNECT_PAUSE) => {}
                _ = stop.changed() => break,
            }
        }
    }
}

/// The recorder, even if a thread panicked while holding it: the counts are plain
/// numbers and stay meaningful.
pub fn lock(recorder: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::settings::{Bound, Pace};

    /// A connection whose answers take a scripted time (in paused time): `slow` maps a
    /// ticket number to its delay, everything else takes `normal`.
    struct Scripted {
        normal: Duration,
        slow: HashMap<u64, Duration>,
        backend: &'static str,
    }

    impl Exchange for Scripted {
        async fn exchange(&mut self, request: Request) -> Answer {
            let delay = self.slow.get(&request.n).copied().unwrap_or(self.normal);
            tokio::time::sleep(delay).await;
            Answer::Response {
                status: 200,
                backend: Some(self.backend.to_owned()),
                error_code: None,
                outcome_unknown: false,
            }
        }
    }

    fn scripted(normal_ms: u64, slow: &[(u64, u64)]) -> Scripted {
        Scripted {
            normal: Duration::from_millis(normal_ms),
            slow: slow
                .iter()
                .map(|&(n, ms)| (n, Duration::from_millis(ms)))
                .collect(),
            backend: "b",
        }
    }

    async fn run(conns: Vec<Scripted>, pace: Pace, bound: Bound) -> (Recorder, Driven, Instant) {
        let start = Instant::now();
        let recorder = Arc::new(Mutex::new(Recorder::new(start).expect("recorder")));
        let schedule = Schedule::new(start, pace, bound, 0.0);
        let (_stop_tx, stop) = watch::channel(false);
        let driven = drive(conns, schedule, Arc::clone(&recorder), stop).await;
        let recorder = lock(&recorder).clone();
        (recorder, driven, start)
    }

    fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> u64 {
        h.value_at_quantile(q) / 1000
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_is_kept_exactly_when_the_server_keeps_up() {
        let rate = Pace::Rate {
            per_second: 100,
            connections: 2,
        };
        let (r, driven, start) = run(
            vec![scripted(1, &[]), scripted(1, &[])],
            rate,
            Bound::Duration(Duration::from_secs(2)),
        )
        .await;
        assert_eq!(r.requests, 200);
        assert_eq!(driven.missed, 0);
        let per_second: Vec<u64> = r.timeline.rows().iter().map(|row| row.requests).collect();
        assert_eq!(per_second, [100, 100]);
        assert_eq!(ms(&r.latency, 1.0), 1, "every answer took 1 ms");
        // The last ticket is meant for 1.99 s and answered 1 ms later.
        assert_eq!(driven.finished - start, Duration::from_millis(1991));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_under_rate_shows_in_the_latency_but_not_in_the_service_time() {
        // 100/s on one connection; request 10 (meant for t=100 ms) takes a whole second.
        // Requests 11..=109 were meant for 110..1090 ms but can only go at 1100 ms.
        let rate = Pace::Rate {
            per_second: 100,
            connections: 1,
        };
        let (r, driven, _) = run(
            vec![scripted(1, &[(10, 1000)])],
            rate,
            Bound::Duration(Duration::from_secs(3)),
        )
        .await;
        assert_eq!(r.requests, 300, "the backlog is caught up within the run");
        assert_eq!(driven.missed, 0);
        // Corrected: the stalled request and the ~100 queued behind it, about a third of
        // all, waited from 10 ms up to a second.
        assert_eq!(ms(&r.latency, 1.0), 1000);
        assert!(ms(&r.latency, 0.7) >= 10, "p70 {}", ms(&r.latency, 0.7));
        assert!(ms(&r.latency, 0.9) >= 500, "p90 {}", ms(&r.latency, 0.9));
        // Uncorrected: one slow request out of 300; the p99 does not see it.
        assert_eq!(ms(&r.service, 0.99), 1);
        assert_eq!(ms(&r.service, 1.0), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn tickets_that_no_connection_can_take_before_the_end_are_missed() {
        // One connection, every answer takes 100 ms, 100/s asked for 1 s: only 10 go.
        let rate = Pace::Rate {
            per_second: 100,
            connections: 1,
        };
        let (r, driven, _) = run(
            vec![scripted(100, &[])],
            rate,
            Bound::Duration(Duration::from_secs(1)),
        )
        .await;
        assert_eq!(r.requests, 10);
        assert_eq!(driven.missed, 90);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_sends_the_exact_count_and_counts_from_the_send() {
        let (r, _, _) = run(
            vec![scripted(2, &[(5, 50)]), scripted(2, &[(5, 50)])],
            Pace::Concurrency(2),
            Bound::Requests(40),
        )
        .await;
        assert_eq!(r.requests, 40);
        assert_eq!(r.answered, 40);
        assert_eq!(r.spread.shares()[0].count, 40);
        assert_eq!(
            ms(&r.latency, 1.0),
            50,
            "closed loop: latency is service time"
        );
        assert_eq!(ms(&r.latency, 0.9), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_with_a_duration_stops_sending_at_the_end() {
        let (r, driven, start) = run(
            vec![scripted(10, &[])],
            Pace::Concurrency(1),
            Bound::Duration(Duration::from_millis(1000)),
        )
        .await;
        assert_eq!(r.requests, 100);
        assert_eq!(driven.finished - start, Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_run_early_and_keeps_the_counts() {
        let start = Instant::now();
        let recorder = Arc::new(Mutex::new(Recorder::new(start).expect("recorder")));
        let schedule = Schedule::new(
            start,
            Pace::Rate {
                per_second: 10,
                connections: 1,
            },
            Bound::Duration(Duration::from_secs(60)),
            0.0,
        );
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(450)).await;
            let _ = stop_tx.send(true);
            // Keep the sender alive: a dropped sender is a stop too, but this test is
            // about the explicit one.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let driven = drive(
            vec![scripted(1, &[])],
            schedule,
            Arc::clone(&recorder),
            stop,
        )
        .await;
        assert_eq!(lock(&recorder).requests, 5, "tickets at 0, 100, …, 400 ms");
        assert_eq!(
            driven.stopped_at.map(|t| t - start),
            Some(Duration::from_millis(450))
        );
        assert_eq!(driven.missed, 0);
    }
}
