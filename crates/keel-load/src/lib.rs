//! keel's load generator (`keel load`): HTTP load on this machine, measured the way wrk,
//! oha and vegeta measure it, and checked the way Jepsen checks promises.
//!
//! A run sends requests on keep-alive connections, either open-loop at a set rate
//! (latency counted from each request's intended send time, which corrects for
//! coordinated omission) or closed-loop with a set number of connections; it counts
//! statuses, error kinds, latency percentiles (HDR histograms), the spread of answers
//! per backend and a per-second timeline; it can write unique keys and read every
//! acknowledged one back afterwards to count lost writes.
//!
//! - [`settings`]: the flags as [`Settings`], checked into a [`Plan`] (limits, the
//!   this-machine-only rule)
//! - [`schedule`]: numbered tickets, their intended send times, which are writes
//! - [`engine`]: one worker per connection, taking tickets and counting answers
//! - [`exchange`]: the [`Exchange`](exchange::Exchange) trait the engine sends through,
//!   and the [`Answer`](exchange::Answer) it gets back
//! - [`conn`]: the real connection (one HTTP/1.1 keep-alive connection per slot);
//!   [`http1`]: the requests' bytes, and answers parsed where they were read
//! - [`recorder`]: histograms, counts, writes; [`timeline`]: per-second buckets;
//!   [`spread`]: which backend answered
//! - [`live`]: the live view on stderr; [`events`]: the monitor's events during a run
//! - [`report`]: the final report, as text and JSON; [`plot`]: the SVG plot
//! - [`verify`]: reading acknowledged writes back
#![forbid(unsafe_code)]

pub mod conn;
pub mod engine;
pub mod events;
pub mod exchange;
pub mod http1;
pub mod live;
pub mod plot;
pub mod recorder;
pub mod report;
pub mod schedule;
pub mod settings;
pub mod spread;
pub mod timeline;
pub mod verify;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use bytes::Bytes;
pub use live::LiveMode;
pub use recorder::WriteLog;
pub use report::Report;
pub use settings::{Bound, HeaderLine, Pace, Plan, PlanError, Settings};
pub use spread::SpreadBy;
pub use verify::{GroupWrites, VerifyOptions, VerifySummary, verify};

use crate::conn::{HttpConn, RequestTemplate};
use crate::engine::lock;
use crate::events::Collector;
use crate::live::Live;
use crate::recorder::Recorder;
use crate::report::RunFacts;
use crate::schedule::Schedule;

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The settings are wrong.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The target's host name does not resolve.
    #[error("cannot resolve {host}: {why}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        why: String,
    },
    /// The target refused the first connections.
    #[error("cannot connect to {url}: {why}; is the server running?")]
    Connect {
        /// The target URL.
        url: String,
        /// The error.
        why: String,
    },
    /// `--monitor` does not answer with an event stream.
    #[error("cannot follow the monitor's events at {url}: {why}")]
    Monitor {
        /// The monitor's URL.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// Reading writes back failed as a whole (not one write: those are counted).
    #[error("cannot read the writes back: {0}")]
    Verify(String),
    /// The plot could not be drawn or written.
    #[error("cannot draw the plot into {}: {why}", path.display())]
    Plot {
        /// The file asked for.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A histogram could not be set up (a bug: the bounds are constants).
    #[error("cannot set up the latency histograms: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
}

/// How a run shows itself and what else it follows.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The live view on stderr.
    pub live: LiveMode,
    /// The monitor whose events to collect during the run.
    pub monitor: Option<String>,
}

/// What a run leaves: the report, and the writes for [`verify`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The report (without a verify section yet).
    pub report: Report,
    /// The writes by outcome.
    pub writes: WriteLog,
}

/// Runs `plan`: opens every connection, follows the monitor if asked, sends the load,
/// and reports. `stop` (Ctrl-C) ends the sending early; requests in flight still finish
/// and count.
pub async fn run(
    plan: &Plan,
    options: RunOptions,
    stop: impl Future<Output = ()>,
) -> Result<Outcome, LoadError> {
    let addr = conn::resolve(&plan.target, plan.settings.allow_remote).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let template = Arc::new(RequestTemplate::new(plan, &run_id)?);

    // Every connection is open before the clock starts, as in wrk: connecting is not
    // what is measured, and a target that is down is one clear error.
    let mut connecting = JoinSet::new();
    for _ in 0..plan.settings.pace.connections() {
        let mut conn = HttpConn::new(addr, Arc::clone(&template));
        connecting.spawn(async move { conn.connect().await.map(|()| conn) });
    }
    let mut conns = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        let failed = |why: String| LoadError::Connect {
            url: plan.target.url.clone(),
            why,
        };
        match joined {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(e) => return Err(failed(e.to_string())),
        }
    }

    let collector = match &options.monitor {
        Some(monitor) => Some(Collector::start(monitor, plan.settings.tls.clone()).await?),
        None => None,
    };

    let start = Instant::now();
    let recorder = Arc::new(Mutex::new(Recorder::new(start)?));
    let schedule = Schedule::new(
        start,
        plan.settings.pace,
        plan.settings.bound,
        plan.settings.write_ratio,
    );
    let live = Live::start(
        options.live,
        Arc::clone(&recorder),
        collector.as_ref().map(Collector::feed),
        start,
        plan.settings.bound,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let drive = engine::drive(conns, schedule, Arc::clone(&recorder), stop_rx);
    tokio::pin!(drive);
    tokio::pin!(stop);
    let driven = tokio::select! {
        driven = &mut drive => driven,
        () = &mut stop => {
            let _ = stop_tx.send(true);
            drive.await
        }
    };
    live.finish().await;
    let events = collector.map(|c| c.finish(start)).unwrap_or_default();

    let recorder = lock(&recorder);
    let report = Report::new(
        plan,
        &recorder,
        RunFacts {
            run_id,
            elapsed_s: (driven.finished - start).as_secs_f64(),
            stopped_early: driven.stopped_at.is_some(),
            missed: driven.missed,
            events,
        },
    );
    Ok(Outcome {
        report,
        writes: recorder.writes.clone(),
    })
}
