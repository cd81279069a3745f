//! Runs the clients: connect them all, load through the warm-up, then count and time
//! every write that finishes inside the measured window.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Args;
use crate::report::Report;
use crate::writer::Writer;

/// Latencies are recorded in microseconds, up to a minute, to three significant digits.
const HIGHEST_MICROS: u64 = 60_000_000;

/// After a failed write a client pauses this long, so that a target that refuses at
/// once (a closed port, a 503) is not hammered by a loop that does nothing else.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What one client saw inside the measured window.
pub struct ClientTally {
    pub latencies: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let writers = connect_all(args).await?;
    let value = Bytes::from(make_value(args.value_size as usize));

    // The clock starts once every client is connected, so the warm-up is all load.
    let measure_from = Instant::now() + args.warmup;
    let window = Window {
        from: measure_from,
        until: measure_from + args.duration,
        timeout: args.timeout,
    };
    let mut clients = JoinSet::new();
    for (id, writer) in writers.into_iter().enumerate() {
        clients.spawn(client(id, writer, value.clone(), window));
    }

    let mut total = new_histogram()?;
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = clients.join_next().await {
        let tally = joined.context("a client task failed")??;
        total.add(&tally.latencies)?;
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    Ok(Report::new(args, &total, errors, first_error))
}

async fn connect_all(args: &Args) -> anyhow::Result<Vec<Writer>> {
    let tls = match &args.tls_ca {
        Some(ca) => Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            keel_auth::tls::client_for_ca(ca)
                .with_context(|| format!("--tls-ca {}", ca.display()))?,
        ))),
        None => None,
    };
    let mut pending = JoinSet::new();
    for _ in 0..args.concurrency {
        let url = args.url.clone();
        let target = args.target;
        let timeout = args.timeout;
        let tls = tls.clone();
        pending.spawn(async move {
            tokio::time::timeout(timeout, Writer::connect(target, &url, tls.as_ref()))
                .await
                .with_context(|| format!("connecting to {url} took over {timeout:?}"))?
        });
    }
    let mut writers = Vec::with_capacity(args.concurrency as usize);
    while let Some(joined) = pending.join_next().await {
        writers.push(joined.context("a connecting task failed")??);
    }
    Ok(writers)
}

#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
    timeout: Duration,
}

/// One connection, one write in flight, until the window closes. A write counts when it
/// finishes inside the window; one still in flight when the window closes is let finish
/// (bounded by the timeout) and not counted either way.
async fn client(
    id: usize,
    mut writer: Writer,
    value: Bytes,
    window: Window,
) -> anyhow::Result<ClientTally> {
    let mut tally = ClientTally {
        latencies: new_histogram()?,
        errors: 0,
        first_error: None,
    };
    for n in 0u64.. {
        let began = Instant::now();
        if began >= window.until {
            break;
        }
        let key = format!("bench-{id}-{n}");
        let outcome = tokio::time::timeout(window.timeout, writer.write(&key, &value)).await;
        let finished = Instant::now();
        let counted = finished >= window.from && finished <= window.until;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(format!("{err:#}")),
            Err(_) => {
                writer.abandon_connection();
                Some(format!("no answer within {:?}", window.timeout))
            }
        };
        match failure {
            None if counted => {
                let micros = u64::try_from((finished - began).as_micros()).unwrap_or(u64::MAX);
                tally.latencies.saturating_record(micros.max(1));
            }
            None => {}
            Some(message) => {
                if counted {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(message);
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    Ok(tally)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)?)
}

/// A printable value of the given size; the same bytes for every write and target.
pub fn make_value(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    ALPHABET.iter().copied().cycle().take(size).collect()
}
