//! The supervisor's [`Host`] on this machine: `keel` itself started again with a
//! subcommand, in a network namespace through `ip netns exec` under `--netns`, its output
//! copied to ours a line at a time with its name in front.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use keel_core::faults::FAULTS_FILE_ENV;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::host::{Host, Process};
use crate::plan::Spec;

/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the children's last lines of output may take once they are stopped.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The machine's processes: `exe` with each spec's arguments.
pub(crate) struct OsHost {
    exe: PathBuf,
    /// Width of the name column in the output prefix.
    width: usize,
    /// `KEEL_LOG` for the children, when `keel up` sets it.
    log_level: Option<&'static str>,
    /// `ip`, under `--netns`: a child with a namespace is started through `ip netns exec`.
    ip: Option<PathBuf>,
    /// The fault file each child follows, by name (none under `--netns`).
    fault_files: BTreeMap<String, PathBuf>,
    http: reqwest::Client,
    /// A task per output stream of every child started.
    pumps: Vec<JoinHandle<()>>,
    /// The pids of the processes that run children of their own (a keeper's PostgreSQL
    /// server, and the server's backends, each in a session of its own): `keel chaos`
    /// signals them with all their descendants, as a machine or a container dies or
    /// freezes as a whole.
    trees: HashSet<u32>,
}

impl OsHost {
    pub(crate) fn new(
        exe: PathBuf,
        width: usize,
        log_level: Option<&'static str>,
        ip: Option<PathBuf>,
        fault_files: BTreeMap<String, PathBuf>,
        http: reqwest::Client,
    ) -> OsHost {
        OsHost {
            exe,
            width,
            log_level,
            ip,
            fault_files,
            http,
            pumps: Vec::new(),
            trees: HashSet::new(),
        }
    }
}

impl Host for OsHost {
    type Process = OsProcess;

    fn start(&mut self, spec: &Spec) -> io::Result<OsProcess> {
        let mut command = match (&spec.netns, &self.ip) {
            // `ip netns exec` enters the namespace and execs keel: the pid stays the one
            // that is signalled and waited for.
            (Some(ns), Some(ip)) => {
                let mut command = Command::new(ip);
                command.args(["netns", "exec", ns]).arg(&self.exe);
                command
            }
            _ => Command::new(&self.exe),
        };
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Should `keel up` itself fail, its children must not outlive it.
            .kill_on_drop(true);
        // Stopped by SIGTERM from here, in order; a terminal's Ctrl-C is ours to act on.
        command.env(keel_core::shutdown::SUPERVISED_ENV, "1");
        // And die with this process, even should it be killed (see keel's main).
        command.env(
            keel_core::shutdown::SUPERVISOR_PID_ENV,
            std::process::id().to_string(),
        );
        if let Some(level) = self.log_level {
            command.env("KEEL_LOG", level);
        }
        if let Some(file) = self.fault_files.get(&spec.name) {
            command.env(FAULTS_FILE_ENV, file);
        }
        let mut child = command.spawn()?;
        if let (true, Some(pid)) = (spec.whole_tree, child.id()) {
            self.trees.insert(pid);
        }
        let prefix = format!("{:width$} | ", spec.name, width = self.width);
        if let Some(out) = child.stdout.take() {
            self.pumps
                .push(tokio::spawn(pump(spec.name.clone(), prefix.clone(), out)));
        }
        if let Some(err) = child.stderr.take() {
            self.pumps
                .push(tokio::spawn(pump(spec.name.clone(), prefix, err)));
        }
        Ok(OsProcess(child))
    }

    fn signal(&self, pid: u32, signal: Signal) -> bool {
        let send = |pid: u32| {
            i32::try_from(pid)
                .ok()
                .is_some_and(|p| kill(Pid::from_raw(p), signal).is_ok())
        };
        if !self.trees.contains(&pid) {
            return send(pid);
        }
        // A generation at a time, each once its parents have the signal: a stopped
        // process forks no new child meanwhile.
        let sent = send(pid);
        let mut parents = vec![pid];
        while !parents.is_empty() {
            let children = children_of(&parents);
            for &child in &children {
                send(child);
            }
            parents = children;
        }
        sent
    }

    async fn healthy(&self, spec: &Spec) -> bool {
        self.http
            .get(&spec.health)
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// A grandchild holding a pipe open must not keep `keel up` here.
    async fn flush(&mut self) {
        let pumps = std::mem::take(&mut self.pumps);
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
            for pump in pumps {
                let _ = pump.await;
            }
        })
        .await;
    }
}

/// A child process of `keel up`.
pub(crate) struct OsProcess(Child);

impl Process for OsProcess {
    fn id(&self) -> Option<u32> {
        self.0.id()
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.0.wait().await
    }

    fn terminate(&mut self) {
        if let Some(pid) = self.0.id().and_then(|p| i32::try_from(p).ok()) {
            // An error means it is already gone, which `wait` reports.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }

    async fn kill(&mut self) -> io::Result<()> {
        self.0.kill().await
    }
}

/// The processes whose parent is one of `parents`, from `/proc` (none where it cannot be
/// read).
fn children_of(parents: &[u32]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parent_in_stat(&stat))
                .is_some_and(|parent| parents.contains(&parent))
        })
        .collect()
}

/// The parent's pid in a `/proc/PID/stat` line: the second field after the command,
/// which is in parentheses and may hold spaces and parentheses itself.
fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Copies a child's output to ours, a line at a time, each with the child's name.
async fn pump(name: String, prefix: String, stream: impl AsyncRead + Unpin) {
    let name = name.as_str();
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                crate::say_from(name, &format!("{prefix}{text}"), text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_parent_is_read_past_a_command_with_spaces_and_parentheses() {
        let stat = "4242 (postgres: pg2: (x) y) S 4100 4100 4100 0 -1 4194560";
        assert_eq!(super::parent_in_stat(stat), Some(4100));
        assert_eq!(super::parent_in_stat("garbage"), None);
    }
}
