//! What a demo runs: a working directory of its own, free ports, the processes it starts
//! (`keel up`, `keel flaky`, `redis-server`…) with their logs, and the commands a person
//! would type, run for real in that directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::DemoError;

/// The demo's directory: where its stack keeps its data and logs, and where the commands
/// it shows are run (so `keel chaos` and `keel client` find `./keel-data` as they would
/// for a person who `cd`s there).
pub struct Workdir {
    dir: tempfile::TempDir,
    /// The keel binary that runs the stack and the commands.
    pub exe: PathBuf,
    /// Environment every command gets (`KEEL_MONITOR_URL`…), shown once to the person.
    env: Vec<(String, String)>,
}

impl Workdir {
    pub fn new(exe: PathBuf, name: &str) -> Result<Workdir, DemoError> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-demo-{name}-"))
            // PostgreSQL runs as its own account when keel runs as root: it must pass
            // through to its directories (not list this one).
            .permissions(std::fs::Permissions::from_mode(0o711))
            .tempdir()
            .map_err(DemoError::Dir)?;
        Ok(Workdir {
            dir,
            exe,
            env: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sets an environment variable for the commands run from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The line a person runs to type the demo's commands themselves.
    pub fn how_to_follow(&self) -> String {
        let mut line = format!("cd {}", self.path().display());
        for (k, v) in &self.env {
            line.push_str(&format!(" && export {k}={v}"));
        }
        line
    }

    /// Keeps the directory after the demo, for its logs; returns where it is.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// Starts `keel ARGS` in the background, its output in `<dir>/<name>.log`.
    pub fn spawn_keel(&self, name: &str, args: &[String]) -> Result<Proc, DemoError> {
        self.spawn(name, &self.exe, args)
    }

    /// Starts `program ARGS` in the background, its output in `<dir>/<name>.log`.
    pub fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Result<Proc, DemoError> {
        let log = self.path().join(format!("{name}.log"));
        let start_error = |reason: String| DemoError::Start {
            name: name.to_owned(),
            reason,
            log: log.clone(),
        };
        let file = std::fs::File::create(&log).map_err(|e| start_error(e.to_string()))?;
        let err = file.try_clone().map_err(|e| start_error(e.to_string()))?;
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| start_error(format!("{}: {e}", program.display())))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Runs `keel ARGS` to its end (at most `limit`), as a person would in the demo's
    /// directory: its exit status and output.
    pub async fn keel(&self, args: &[&str], limit: Duration) -> Result<Ran, String> {
        let shown = format!("keel {}", args.join(" "));
        let mut command = self.command(&self.exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let run = async {
            let started = Instant::now();
            let output = command
                .output()
                .await
                .map_err(|e| format!("`{shown}` did not run: {e}"))?;
            Ok(Ran {
                success: output.status.success(),
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                took: started.elapsed(),
            })
        };
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| format!("`{shown}` did not end within {limit:?}"))?
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.current_dir(self.path()).kill_on_drop(true);
        // The person's own settings must not point the demo's commands at another stack.
        for key in [
            "KEEL_TOKEN",
            "KEEL_MONITOR_URL",
            "KEEL_NODE_URL",
            "KEEL_TLS_CA",
        ] {
            command.env_remove(key);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    /// Its output as a terminal would show it: stderr lines, then stdout.
    pub fn shown(&self) -> String {
        format!("{}{}", self.stderr, self.stdout)
    }
}

/// A process the demo started, ended when the demo ends (or dropped).
pub struct Proc {
    name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the end of its log when it exited already (it could not start).
    pub fn check_running(&mut self) -> Result<(), DemoError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.start_error(format!("it exited ({status})"))),
            Err(e) => Err(self.start_error(e.to_string())),
        }
    }

    pub fn start_error(&self, reason: String) -> DemoError {
        let tail = log_tail(&self.log, 8);
        DemoError::Start {
            name: self.name.clone(),
            reason: if tail.is_empty() {
                reason
            } else {
                format!("{reason}; its log ends with:\n{tail}")
            },
            log: self.log.clone(),
        }
    }

    /// Sends `signal`; a process already gone is not an error.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // ESRCH: it ended by itself; nothing left to signal.
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGTERM, then up to `grace` for it to stop in order, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            // Past its grace: nothing more to wait for; kill_on_drop makes sure.
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// The last `n` lines of a log, indented.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first of `n` consecutive ports of 127.0.0.1 that are all free now: a demo runs
/// beside whatever else the machine runs (a `keel up` on the default ports, another
/// demo), so it never takes the defaults. They come from below the kernel's ephemeral
/// range, which outgoing connections draw their local ports from: the stack binds the
/// last of them seconds later (its proxy starts after PostgreSQL), and a connection's
/// local end must not take one meanwhile.
pub fn free_ports(n: u16) -> Result<u16, DemoError> {
    use std::hash::BuildHasher;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral.max(20_000));
    let Some(width) = high.checked_sub(low).and_then(|w| w.checked_sub(n)) else {
        return Err(DemoError::NoPorts(n));
    };
    for attempt in 0..1000u32 {
        // A fresh draw each time, different in each process.
        let draw =
            std::collections::hash_map::RandomState::new().hash_one((std::process::id(), attempt));
        let first = low + u16::try_from(draw % u64::from(width.max(1))).unwrap_or(0);
        // Held together until all are checked, then let go for the stack to take.
        let held: Vec<TcpListener> = (first..first + n)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return Ok(first);
        }
    }
    Err(DemoError::NoPorts(n))
}

/// Waits up to 15 s for `proc` to answer `GET {url}/health` with a 2xx.
pub async fn wait_healthy(proc: &mut Proc, url: &str) -> Result<(), DemoError> {
    let http = http()?;
    let health = format!("{url}/health");
    let up = wait_for(Duration::from_secs(15), || {
        let request = http.get(&health).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    if up.is_none() {
        proc.check_running()?;
        return Err(proc.start_error("it did not answer /health within 15 s".into()));
    }
    Ok(())
}

/// Polls `probe` every 50 ms until it gives a value or `limit` passes.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client for the demo's own looks at the stack: short timeouts, no proxy.
pub fn http() -> Result<reqwest::Client, DemoError> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| DemoError::Http(e.to_string()))
}

/// `GET url` as JSON; a failure says which URL and why.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    http.get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))
}

/// The sum of every sample of Prometheus metric `name` at `url` (all its labels).
pub async fn metric_sum(http: &reqwest::Client, url: &str, name: &str) -> Result<f64, String> {
    let text = http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok(sum_of(&text, name))
}

/// The sum of the samples of `name` in Prometheus text.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_labels_and_no_other_metric() {
        let text = "# HELP x_total x\n\
                    x_total{mode=\"normal\",status=\"200\"} 7\n\
                    x_total{mode=\"normal\",status=\"503\"} 3\n\
                    x_total_other 100\n\
                    y 2\n";
        assert_eq!(sum_of(text, "x_total"), 10.0);
        assert_eq!(sum_of(text, "y"), 2.0);
        assert_eq!(sum_of(text, "z"), 0.0);
    }
}
