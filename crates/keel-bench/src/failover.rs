//! The failover writer: `--concurrency` writers, each with one write in flight, follow the
//! primary through kills until told to stop; then every acknowledged write is read back.
//!
//! The script that kills and restarts nodes talks to it with signals, so that every
//! time here is read on one clock (this process's monotonic one):
//!
//! | signal              | meaning                                   |
//! |---------------------|-------------------------------------------|
//! | `SIGUSR1`           | the primary is being killed now            |
//! | `SIGUSR2`           | writes flow again after the last kill     |
//! | `SIGTERM`, `SIGINT` | stop writing, read back, report           |
//!
//! and reads the `--status-file` to know when acknowledgements flow.
//!
//! A write is acknowledged only by a success answer (`200` from keel, `2xx` from etcd's
//! gateway, `WAIT` reporting a replica from Redis). Anything else — a refused connection,
//! a `503` with `Retry-After` during a failover, a timeout — is a failed attempt: the
//! writer drops its connection, asks [`Discovery`] for the primary again, pauses
//! `--retry-pause` and tries again with a new key. It does not sleep for `Retry-After`
//! (keel sends `1`, in seconds): the benchmark measures when the system can take writes
//! again, not how long a polite client waits.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cli::{FailoverArgs, Target};
use crate::discovery::Discovery;
use crate::driver::make_value;
use crate::failover_report::{FailoverReport, Verification};
use crate::gaps::{self, Mark, MarkKind};
use crate::verify;
use crate::writer::Writer;

const STATUS_EVERY: Duration = Duration::from_millis(50);

/// Between two tries to read the writes back.
const VERIFY_RETRY: Duration = Duration::from_millis(200);

/// Counters the writers share with the status file.
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    attempts: AtomicU64,
    failures: AtomicU64,
}

/// What one writer did.
struct WriterLog {
    id: usize,
    /// When each acknowledged write was answered (since the start) and its attempt number.
    acks: Vec<(Duration, u64)>,
    attempts: u64,
    failures: u64,
    first_error: Option<String>,
}

/// The settings every writer shares.
struct Plan {
    target: Target,
    discovery: Discovery,
    counters: Counters,
    value: Bytes,
    key_prefix: String,
    timeout: Duration,
    retry_pause: Duration,
    /// Time between two writes of one writer, when the rate is capped.
    pace: Option<Duration>,
    started: Instant,
}

pub async fn run(args: &FailoverArgs) -> anyhow::Result<FailoverReport> {
    // Before anything else: SIGUSR1's default action is to end the process.
    let mut kill_marks = signal(SignalKind::user_defined1()).context("handling SIGUSR1")?;
    let mut recovered_marks = signal(SignalKind::user_defined2()).context("handling SIGUSR2")?;
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    let started = Instant::now();
    let pace = (args.rate > 0)
        .then(|| Duration::from_secs_f64(f64::from(args.concurrency) / f64::from(args.rate)));
    let plan = Arc::new(Plan {
        target: args.target,
        discovery: Discovery::new(
            args.target,
            args.discover.clone(),
            args.master_name.clone(),
            started,
        )?,
        counters: Counters::default(),
        value: Bytes::from(make_value(args.value_size as usize)),
        key_prefix: args.key_prefix.clone(),
        timeout: args.timeout,
        retry_pause: args.retry_pause,
        pace,
        started,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writers = JoinSet::new();
    for id in 0..args.concurrency as usize {
        writers.spawn(writer(id, Arc::clone(&plan), stop_rx.clone()));
    }

    let mut marks: Vec<Mark> = Vec::new();
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(args.max_duration);
    tokio::pin!(deadline);
    let stopped_by = loop {
        tokio::select! {
            _ = kill_marks.recv() => marks.push(Mark { kind: MarkKind::Kill, at: plan.started.elapsed() }),
            _ = recovered_marks.recv() => marks.push(Mark { kind: MarkKind::Recovered, at: plan.started.elapsed() }),
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            () = &mut deadline => break "--max-duration",
            _ = status_tick.tick() => {
                if let Some(path) = &args.status_file {
                    write_status(path, &plan.counters, &marks).await?;
                }
            }
        }
    };
    let duration = plan.started.elapsed();
    // A write in flight is let finish (within --timeout): if it is acknowledged, it
    // counts and must be found at the end like any other.
    let _ = stop_tx.send(true);
    let mut logs = Vec::with_capacity(args.concurrency as usize);
    while let Some(joined) = writers.join_next().await {
        logs.push(joined.context("a writer task failed")?);
    }
    logs.sort_by_key(|log| log.id);
    if let Some(path) = &args.status_file {
        write_status(path, &plan.counters, &marks).await?;
    }

    let mut acks: Vec<Duration> = logs
        .iter()
        .flat_map(|log| log.acks.iter().map(|&(at, _)| at))
        .collect();
    acks.sort_unstable();
    let windows = gaps::windows(&acks, &marks);
    let named = gaps::named_after(&marks, &plan.discovery.changes().await);

    let acked_keys: Vec<String> = logs
        .iter()
        .flat_map(|log| {
            log.acks
                .iter()
                .map(|&(_, n)| key(&plan.key_prefix, log.id, n))
        })
        .collect();
    let verification = read_back(&plan, &acked_keys, args.verify_timeout).await;

    Ok(FailoverReport::new(
        args,
        duration,
        stopped_by,
        &logs
            .iter()
            .map(|log| (log.attempts, log.failures))
            .collect::<Vec<_>>(),
        logs.iter().find_map(|log| log.first_error.clone()),
        &windows,
        &named,
        acked_keys.len() as u64,
        verification,
    ))
}

fn key(prefix: &str, writer: usize, attempt: u64) -> String {
    format!("{prefix}-{writer}-{attempt}")
}

/// One writer: one write in flight, a new key per attempt, until told to stop.
async fn writer(id: usize, plan: Arc<Plan>, mut stop: watch::Receiver<bool>) -> WriterLog {
    let mut log = WriterLog {
        id,
        acks: Vec::new(),
        attempts: 0,
        failures: 0,
        first_error: None,
    };
    let mut pace = plan.pace.map(|period| {
        let mut ticker = tokio::time::interval(period);
        // After a failover, carry on at the rate rather than catch up in a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    let mut connection: Option<(String, Writer)> = None;
    for n in 0u64.. {
        if *stop.borrow() {
            break;
        }
        if let Some(ticker) = &mut pace {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
        }
        log.attempts += 1;
        plan.counters.attempts.fetch_add(1, Ordering::Relaxed);
        match attempt(&plan, &mut connection, &key(&plan.key_prefix, id, n)).await {
            Ok(()) => {
                log.acks.push((plan.started.elapsed(), n));
                plan.counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                log.failures += 1;
                plan.counters.failures.fetch_add(1, Ordering::Relaxed);
                log.first_error.get_or_insert_with(|| format!("{err:#}"));
                // A failed connection may owe a late answer or sit behind a blocked
                // command (Redis's WAIT): always start the next attempt on a new one.
                let failed = connection.take().map(|(url, _)| url);
                plan.discovery.refresh(failed.as_deref()).await;
                tokio::select! {
                    () = tokio::time::sleep(plan.retry_pause) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    log
}

/// One write to the primary as currently known, connecting to it first if need be.
async fn attempt(
    plan: &Plan,
    connection: &mut Option<(String, Writer)>,
    key: &str,
) -> anyhow::Result<()> {
    let Some(primary) = plan.discovery.primary().await else {
        let why = plan.discovery.last_error().await.unwrap_or_default();
        anyhow::bail!("no primary known: {why}");
    };
    let writer = match connection {
        Some((url, writer)) if *url == primary => writer,
        slot => {
            let writer =
                tokio::time::timeout(plan.timeout, Writer::connect(plan.target, &primary, None))
                    .await
                    .with_context(|| {
                        format!("connecting to {primary} took over {:?}", plan.timeout)
                    })??;
            &mut slot.insert((primary, writer)).1
        }
    };
    tokio::time::timeout(plan.timeout, writer.write(key, &plan.value))
        .await
        .with_context(|| format!("no answer within {:?}", plan.timeout))?
}

/// Replaced atomically (write, then rename), so a reader never sees half a file.
async fn write_status(path: &Path, counters: &Counters, marks: &[Mark]) -> anyhow::Result<()> {
    let count = |kind| marks.iter().filter(|m| m.kind == kind).count();
    let status = serde_json::json!({
        "acked": counters.acked.load(Ordering::Relaxed),
        "attempts": counters.attempts.load(Ordering::Relaxed),
        "failures": counters.failures.load(Ordering::Relaxed),
        "kills": count(MarkKind::Kill),
        "recovered": count(MarkKind::Recovered),
    });
    let partial = path.with_extension("partial");
    tokio::fs::write(&partial, serde_json::to_vec(&status)?)
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
}

/// Finds the primary now and checks that it holds every acknowledged key; retries until
/// `within` (the cluster may still be settling when the script says stop).
async fn read_back(plan: &Plan, acked: &[String], within: Duration) -> Verification {
    let deadline = Instant::now() + within;
    let prefix = format!("{}-", plan.key_prefix);
    let mut last_error = String::from("no primary found");
    loop {
        if let Some(primary) = plan.discovery.refresh(None).await {
            match verify::present_keys(plan.target, &primary, &prefix).await {
                Ok(present) => {
                    let lost: Vec<&String> =
                        acked.iter().filter(|key| !present.contains(*key)).collect();
                    return Verification::Done {
                        against: primary,
                        lost: lost.len() as u64,
                        lost_sample: lost.into_iter().take(5).cloned().collect(),
                    };
                }
                Err(err) => last_error = format!("{primary}: {err:#}"),
            }
        } else if let Some(err) = plan.discovery.last_error().await {
            last_error = err;
        }
        if Instant::now() >= deadline {
            return Verification::Failed(last_error);
        }
        tokio::time::sleep(VERIFY_RETRY).await;
    }
}
