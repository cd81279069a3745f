//! keel's narrated demos: `keel demo failover|resilience|balance|redis|postgres|all`
//! reproduces a seed's step table against a stack it starts in a temporary directory.
//! For each step it prints the narration, the command a person would type, what to
//! watch, runs it, and says what it observed ("the first request waited 2.0 s for the
//! timeout; the next 9 answered in under 5 ms: the breaker is open"). An observation that
//! does not hold stops the demo with an error, so `keel demo all --auto` is a check of the
//! whole system as much as a lesson.
//!
//! - [`narrator`]: the step table as printed, the pause for Enter, the `✓`/`✗` lines;
//! - [`stack`]: the demo's directory, free ports, the processes it starts and the
//!   commands it runs in that directory (so they are exactly what a person would type);
//! - [`up`]: a `keel up` or `keel pg` of the demo's own;
//! - one module per seed: [`failover`] (the failover challenge), [`resilience`] (lab 6:
//!   retry, fallback, circuit breaker against `keel flaky`), [`balance`] (lab 7: round
//!   robin, weights, one service stopped), [`redis`] (the Redis counter behind a
//!   breaker), [`postgres`] (the PostgreSQL homework: followers and backends killed under
//!   load).
//!
//! **Why a crate of its own.** A demo is a client of every part — `keel up`'s control
//! API, the monitor, the proxy's admin API, the services, keel's own commands — and of
//! none of their insides; apart, it keeps `keel-chaos`, which it drives, free of it.
//!
//! **Why the commands really run.** Where a step has a keel command (`keel client
//! kill-primary`, `keel client fetch`), the demo runs that very command in its directory
//! and shows its output; where the seed used curl, the demo makes the same requests
//! itself, to time each one. Either way the observation is measured, never assumed.
#![forbid(unsafe_code)]

pub mod balance;
pub mod failover;
pub mod narrator;
pub mod postgres;
pub mod redis;
pub mod resilience;
pub mod stack;
pub mod up;

use std::path::PathBuf;

/// Why a demo could not run or did not show what it should.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A program the demo needs is not on this machine.
    #[error("{what} is not installed: {hint}")]
    Missing { what: &'static str, hint: String },
    /// A process of the stack did not start.
    #[error("cannot start {name}: {reason}\n  (its whole log: {})", log.display())]
    Start {
        name: String,
        reason: String,
        log: PathBuf,
    },
    /// The demo's directory cannot be made.
    #[error("cannot make the demo's directory")]
    Dir(#[source] std::io::Error),
    /// No block of free ports on 127.0.0.1.
    #[error("found no {0} consecutive free ports on 127.0.0.1")]
    NoPorts(u16),
    /// The demo's HTTP client cannot be built.
    #[error("cannot set up an HTTP client: {0}")]
    Http(String),
    /// A step's observation did not hold.
    #[error("{demo}, step {step} ({title}): not observed: {seen}")]
    NotObserved {
        demo: &'static str,
        step: usize,
        title: String,
        seen: String,
    },
}

/// One of the seeds' demos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demo {
    Failover,
    Resilience,
    Balance,
    Redis,
    Postgres,
}

impl Demo {
    /// Every demo, in the order `keel demo all` runs them.
    pub const ALL: [Demo; 5] = [
        Demo::Failover,
        Demo::Resilience,
        Demo::Balance,
        Demo::Redis,
        Demo::Postgres,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Demo::Failover => "failover",
            Demo::Resilience => "resilience",
            Demo::Balance => "balance",
            Demo::Redis => "redis",
            Demo::Postgres => "postgres",
        }
    }

    /// What it needs besides keel, when that is missing here.
    pub fn missing(self) -> Option<DemoError> {
        match self {
            Demo::Redis => redis::missing(),
            Demo::Postgres => postgres::missing(),
            _ => None,
        }
    }
}

/// How to run a demo.
#[derive(Debug, Clone)]
pub struct Options {
    /// The keel binary (the one running: `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Run through without waiting for Enter between steps.
    pub auto: bool,
    /// Keep the demo's directory (data and logs) afterwards.
    pub keep: bool,
}

/// Runs `demo`: starts its stack, plays its steps, stops the stack. On success the
/// directory goes (unless `keep`); on failure it stays and the error names it.
pub async fn run(demo: Demo, options: &Options) -> Result<(), DemoError> {
    if let Some(missing) = demo.missing() {
        return Err(missing);
    }
    let work = stack::Workdir::new(options.exe.clone(), demo.name())?;
    let result = match demo {
        Demo::Failover => failover::run(work, options).await,
        Demo::Resilience => resilience::run(work, options).await,
        Demo::Balance => balance::run(work, options).await,
        Demo::Redis => redis::run(work, options).await,
        Demo::Postgres => postgres::run(work, options).await,
    };
    match result {
        Ok(work) => {
            if options.keep {
                let dir = work.keep();
                println!("\nkept {} (data and logs)", dir.display());
            }
            Ok(())
        }
        Err((work, error)) => {
            let dir = work.keep();
            println!("\nthe stack's logs are in {}", dir.display());
            Err(error)
        }
    }
}

/// What a demo's run ends with: its directory back, and how it went.
pub type Ended = Result<stack::Workdir, (stack::Workdir, DemoError)>;

/// Runs `keel ARGS` in the demo's directory and shows its output; a failure (exit code
/// other than 0) is what the step saw.
pub(crate) async fn show(
    n: &narrator::Narrator,
    work: &stack::Workdir,
    args: &[&str],
) -> Result<stack::Ran, String> {
    let ran = work.keel(args, std::time::Duration::from_secs(30)).await?;
    n.output(&ran.shown());
    if ran.success {
        Ok(ran)
    } else {
        Err(format!("`keel {}` failed ({:?})", args.join(" "), ran.code))
    }
}
