//! A server run as a child of this process, its output in `<dir>.log`, stopped with a
//! fast shutdown (SIGINT: clients are disconnected, the WAL is flushed) when dropped,
//! and killed if it has not stopped within 10 s.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{PgError, Server, Setup};

/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server.
#[derive(Debug)]
pub struct Running {
    name: String,
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Running {
    /// Starts `server` (`postgres -D DIR`, as the setup's owner).
    pub fn start(setup: &Setup, server: &Server) -> Result<Running, PgError> {
        Self::spawn(setup.command(server), server)
    }

    /// Like [`Running::start`], the server dying with this process even when it is
    /// killed (a keeper's server lives and dies with its keeper).
    pub fn start_supervised(setup: &Setup, server: &Server) -> Result<Running, PgError> {
        Self::spawn(setup.supervised_command(server), server)
    }

    fn spawn(mut command: std::process::Command, server: &Server) -> Result<Running, PgError> {
        let log = server.dir.with_extension("log");
        let out = File::create(&log).map_err(PgError::io(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(PgError::io(format!("open {}", log.display())))?;
        let child = command
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(PgError::io(format!("start postgres for {}", server.name)))?;
        Ok(Running {
            name: server.name.clone(),
            port: server.port,
            log,
            child,
        })
    }

    /// Waits until it accepts connections on its port, or says why not: it exited, or
    /// `timeout` passed (with the end of its log).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failed(format!("exited ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(self.failed(format!("not accepting connections after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it has ended.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it at once (SIGKILL): nothing more is acknowledged, nothing is flushed that
    /// was not already.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Why it ended, with the end of its log, when it has.
    pub fn ended(&mut self) -> Option<PgError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(self.failed(format!("exited ({status})"))),
            Ok(None) => None,
            Err(e) => Some(self.failed(format!("cannot be waited for ({e})"))),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn failed(&self, status: String) -> PgError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(6).collect();
        PgError::Tool {
            tool: format!("postgres ({})", self.name),
            status,
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(server = %self.name, "did not stop within {STOP_TIMEOUT:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
