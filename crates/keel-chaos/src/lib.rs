//! keel's local supervisor and the tools to break what it runs: `keel up` runs the whole
//! system on one machine (a monitor, the data nodes, the app services, the proxy in front;
//! with `--shards N` several groups of nodes; with `--postgres` also PostgreSQL's
//! `pgmonitor` and the keepers of pg1..pg3, which make and fail over their servers; `keel
//! pg` the same without the data tier) as child processes, and `keel chaos` asks it to kill, pause,
//! resume or restart one of them, or to cut the data tier apart.
//!
//! - [`settings`]: [`Settings`], what `keel up` is asked to run (the binary turns its
//!   flags into it);
//! - [`plan`]: [`Plan`], what is started — names, ports, addresses, command lines — and
//!   the checks of its ports before anything runs;
//! - `credentials`: the admin token and the cluster secret in the data directory, made
//!   once and kept;
//! - [`up`]: [`Up`], which prepares, starts in order, serves `keel chaos` and stops the
//!   system; with the banner it prints once everything runs;
//! - `supervisor`: the children — spawn, kill, pause, resume, restart, exits reported,
//!   stopped in order — with its decisions pure (`supervisor::decide`) and the processes
//!   behind a small trait, so that tests run it on fakes and a paused clock;
//! - `monitor`: what `keel up` reads from its monitor (the view, the events), through
//!   `keel_client::monitor`;
//! - `partition`: partitions of the data tier, by fault files that keel's own network
//!   layer follows, or by the kernel between network namespaces (`netns`, `keel up
//!   --netns`);
//! - [`control`]: the control API — its requests and answers, its routes (served by `keel
//!   up`) and [`Control`], its client (used by `keel chaos`);
//! - [`run`]: `keel chaos run`, faults drawn from a seed, one at a time;
//! - [`feed`]: every line `keel up` prints, kept and broadcast for the dashboard;
//! - [`dashboard`]: the web page `keel up` serves on its control port — the processes,
//!   the monitor's view, the proxy's backends and PostgreSQL servers, the timeline, and
//!   buttons that carry out `keel chaos`'s actions.
//!
//! **Why a supervisor of its own.** `keel up` is the parent of every process, so it is
//! the one that can signal it, reap it and say how it ended; that is also why `keel chaos`
//! asks `keel up` rather than signalling by itself. It never restarts anything on its
//! own: what a test or a person does to a process is what they see.
//!
//! **Why this crate prints.** Most of what `keel up` shows is its children's output and
//! the monitor's events, relayed as they come; its own lines go the same way, through one
//! function, so that they interleave in order with the rest.
#![forbid(unsafe_code)]

pub mod control;
mod credentials;
pub mod dashboard;
pub mod feed;
mod monitor;
mod netns;
mod partition;
pub mod plan;
pub mod run;
pub mod settings;
mod supervisor;
pub mod up;

use std::io::Write as _;

pub use control::{Action, Control, ControlError};
pub use credentials::CredentialError;
pub use netns::NetError;
pub use partition::FaultFileError;
pub use plan::{Plan, PlanError};
pub use run::{RunError, RunSettings};
pub use settings::Settings;
pub use supervisor::StartError;
pub use up::{Up, UpError};

/// Writes one line to standard output, whole: children's output, events and `keel up`'s
/// own lines come from several tasks, and a line must not be cut by another. The line
/// goes to the dashboard's timeline too, as `keel up`'s.
pub(crate) fn say(line: &str) {
    say_from(feed::KEEL_UP, line, line);
}

/// Like [`say`], for a line that comes from `source` (a child's name, or the monitor's
/// events): `printed` on standard output, `text` on the dashboard's timeline.
pub(crate) fn say_from(source: &str, printed: &str, text: &str) {
    {
        let mut out = std::io::stdout().lock();
        // Nowhere to report a closed stdout; the children keep running regardless.
        let _ = writeln!(out, "{printed}");
    }
    feed::feed().push(source, text);
}

/// An error and its causes on one line, `outer: inner: innermost`, for the messages of
/// the control API, which carry no chain.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
