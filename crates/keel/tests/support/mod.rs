//! The shared harness of the integration tests: real `keel` processes on 127.0.0.1 with
//! free ports, and blocking HTTP helpers to talk to them.
//!
//! - [`KeelProcess`]: one child process with its output captured to a log file (or shown
//!   live with `KEEL_TEST_LOG=1`), signals (`kill9`, `stop`, `cont`, `terminate`), and a
//!   `Drop` that always kills it — and anything it started — so no test leaks processes.
//! - [`TestNode`]: a `keel node` as primary or standby, started and waited for until its
//!   `/health` answers; `restart` brings it back on the same port and data dir.
//! - [`run_keel`]: runs a `keel` command to completion (with a time limit) and captures
//!   its output, for testing `keel client`.
//! - [`get_json`], [`put_kv`], [`wait_until`] and friends.
//!
//! Each test file includes this with `mod support;`. Not every file uses every helper,
//! hence the `#[allow(dead_code)]`s.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod pg;
pub mod writers;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
pub use reqwest::StatusCode;

/// How long a node may take to answer `/health` after it was started.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a process may take to exit after SIGTERM before the harness gives up.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `keel` binary Cargo built for these tests.
pub fn keel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// Where tests pick their ports: below the kernel's ephemeral range, which outgoing
/// connections draw their local ports from. A port picked for a process that binds it
/// seconds later (`keel up` starts its proxy after the whole data tier, PostgreSQL
/// included) could otherwise be taken meanwhile as the local end of some connection.
fn port_pool() -> std::ops::Range<u16> {
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    10_000..ephemeral.max(20_000)
}

/// A port of the pool with room for `span` ports after it, drawn afresh at each call and
/// differently in each test process, so that parallel tests rarely pick the same.
fn candidate(span: u16) -> u16 {
    use std::hash::BuildHasher;
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let draw = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)));
    let pool = port_pool();
    let width = u64::from(pool.end - pool.start - span);
    pool.start + u16::try_from(draw % width).unwrap_or(0)
}

/// Takes the ports `first..first + n` for this test process, unless one of them was
/// handed out already: tests run side by side in one process, and a port drawn for one
/// must not be drawn again for another before its process binds it.
fn claim(first: u16, n: u16) -> bool {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if (first..first + n).any(|p| handed.contains(&p)) {
        return false;
    }
    handed.extend(first..first + n);
    true
}

/// A port on 127.0.0.1 that is free now (see [`port_pool`] for where it comes from).
///
/// Another process could take it before the test binds it; a test that starts a node on
/// it sees that as a startup failure with the node's log, not as a silent mix-up.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports. All listeners are held until every port is picked, so that
/// none is picked twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held: Vec<TcpListener> = Vec::new();
    for _ in 0..1000 * n {
        if held.len() == n {
            break;
        }
        let port = candidate(1);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port))
            && claim(port, 1)
        {
            held.push(listener);
        }
    }
    assert_eq!(held.len(), n, "found no {n} free ports on 127.0.0.1");
    held.iter()
        .map(|l| l.local_addr().expect("local addr of listener").port())
        .collect()
}

/// Free ports for two nodes and, apart from them, three monitors: (first node, first
/// monitor).
pub fn ports_for_three_monitors() -> (u16, u16) {
    let base = free_port_range(2);
    loop {
        let p = free_port_range(3);
        if !(p..p + 3).contains(&base)
            && !(p..p + 3).contains(&(base + 1))
            && !(base..base + 2).contains(&p)
        {
            return (base, p);
        }
    }
}

/// The first port of `n` consecutive ports that are all free now (for `keel up
/// --base-port`), from the same pool as [`free_port`].
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..1000 {
        let base = candidate(n);
        let held: Vec<_> = (base..base + n)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) && claim(base, n) {
            return base;
        }
    }
    panic!("found no {n} consecutive free ports on 127.0.0.1");
}

/// The base URL of a node listening on `port` of 127.0.0.1.
pub fn url_for(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A fresh temporary directory, removed when the value is dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("keel-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Whether the children's output should go to the terminal instead of a log file.
fn log_inherited() -> bool {
    std::env::var_os("KEEL_TEST_LOG").is_some_and(|v| v == "1")
}

/// Where captured output goes: under Cargo's per-target temp dir, kept after the test so
/// a failure can be read afterwards.
fn new_log_path(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("keel-test-logs");
    fs::create_dir_all(&dir).expect("create log dir");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{name}-{}-{n}.log", std::process::id()));
    // A new process starts a new file: an earlier test process with the same pid (pids
    // are reused) left one here, whose lines would pass for this process's ("keel data
    // tier is up" before it is). A restart keeps its path and appends.
    let _ = fs::remove_file(&path);
    path
}

/// Starts `keel <args>` in its own process group, output appended to `log_path` (or
/// inherited when `None`).
fn spawn_child(args: &[&str], log_path: Option<&Path>, env: &[(String, String)]) -> Child {
    let mut cmd = Command::new(keel_bin());
    cmd.args(args).stdin(Stdio::null()).process_group(0);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(path) = log_path {
        // Append, so that a restarted process keeps the earlier incarnation's output.
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdout(out).stderr(err);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", keel_bin().display()))
}

/// A running `keel` child process. Dropping it kills it (and its process group) with
/// SIGKILL and reaps it.
pub struct KeelProcess {
    pub child: Child,
    pub name: String,
    /// Where stdout and stderr go (`None` when inherited with `KEEL_TEST_LOG=1`).
    pub log_path: Option<PathBuf>,
    /// The exit status once reaped.
    status: Option<ExitStatus>,
    /// Variables set for it (and for it again when it is started again).
    env: Vec<(String, String)>,
}

impl KeelProcess {
    /// Starts `keel <args>`. The process gets its own process group so that `Drop` can
    /// also kill whatever it started (the nodes of `keel up`).
    pub fn spawn(name: &str, args: &[&str]) -> KeelProcess {
        let log_path = (!log_inherited()).then(|| new_log_path(name));
        Self::spawn_logging(name, args, log_path)
    }

    /// Like [`KeelProcess::spawn`], but always captures the output to a file, even with
    /// `KEEL_TEST_LOG=1`: for tests that read what the process prints (`keel up`'s banner).
    pub fn spawn_captured(name: &str, args: &[&str]) -> KeelProcess {
        Self::spawn_logging(name, args, Some(new_log_path(name)))
    }

    /// Like [`KeelProcess::spawn`], with the variables `env` set (`KEEL_FAULTS_FILE`).
    pub fn spawn_env(name: &str, args: &[&str], env: &[(String, String)]) -> KeelProcess {
        let log_path = (!log_inherited()).then(|| new_log_path(name));
        KeelProcess {
            child: spawn_child(args, log_path.as_deref(), env),
            name: name.to_owned(),
            log_path,
            status: None,
            env: env.to_vec(),
        }
    }

    fn spawn_logging(name: &str, args: &[&str], log_path: Option<PathBuf>) -> KeelProcess {
        KeelProcess {
            child: spawn_child(args, log_path.as_deref(), &[]),
            name: name.to_owned(),
            log_path,
            status: None,
            env: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid()).expect("pid fits in i32"))
    }

    /// Sends a signal to the process (not its group). Errors (it already exited) are
    /// ignored: the caller checks the outcome it cares about.
    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            let _ = kill(self.nix_pid(), sig);
        }
    }

    /// SIGKILL, then reap. Returns the exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        self.wait()
    }

    /// SIGSTOP: the process freezes (sockets stay open, nothing answers).
    pub fn stop(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT: a stopped process resumes.
    pub fn cont(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// SIGTERM, then wait up to [`TERMINATE_TIMEOUT`] for the exit. Panics (with the log)
    /// when the process does not exit in time.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        match self.wait_timeout(TERMINATE_TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM\n{}",
                self.name,
                self.log_report()
            ),
        }
    }

    /// Whether the process has not exited yet (a stopped process is still running).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on child");
        }
        self.status
    }

    /// Waits for the exit, for as long as it takes.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = self.child.wait().expect("wait on child");
        self.status = Some(status);
        status
    }

    /// Waits for the exit up to `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote so far (all incarnations, after restarts).
    pub fn log_text(&self) -> String {
        match &self.log_path {
            Some(path) => fs::read_to_string(path)
                .unwrap_or_else(|e| format!("<cannot read log {}: {e}>", path.display())),
            None => "<output was inherited: KEEL_TEST_LOG=1>".to_owned(),
        }
    }

    /// The log with a header naming the process and the file, for panic messages.
    pub fn log_report(&self) -> String {
        let path = self
            .log_path
            .as_ref()
            .map_or_else(|| "terminal".to_owned(), |p| p.display().to_string());
        format!(
            "----- {} (pid {}, log {path}) -----\n{}\n----- end of {} -----",
            self.name,
            self.pid(),
            self.log_text(),
            self.name
        )
    }

    /// Starts `keel <args>` again (killing it first if it still runs) and waits until
    /// `GET {url}/health` answers 200.
    pub fn restart(&mut self, args: &[String], url: &str) {
        if self.is_running() {
            self.kill9();
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.respawn(&arg_refs);
        wait_for_health(self, url);
    }

    /// Starts the same command again (after the old process exited), logging to the same
    /// file.
    pub fn respawn(&mut self, args: &[&str]) {
        assert!(
            !self.is_running(),
            "{} must have exited before it is restarted",
            self.name
        );
        self.child = spawn_child(args, self.log_path.as_deref(), &self.env);
        self.status = None;
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Also SIGSTOPped processes die on SIGKILL.
            let _ = kill(self.nix_pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // The group holds whatever the process started (the nodes of `keel up`); they
        // may outlive it, so kill them too. Harmless when the group is already empty.
        let _ = killpg(self.nix_pid(), Signal::SIGKILL);
        if std::thread::panicking() {
            eprintln!("{}", self.log_report());
        }
    }
}

/// Describes how a process ended: `exit code 1` or `signal 9`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => format!("{status:?}"),
    }
}

/// A `keel node` started by a test.
pub struct TestNode {
    pub proc: KeelProcess,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub id: String,
    pub data_dir: PathBuf,
    pub port: u16,
    args: Vec<String>,
}

impl TestNode {
    /// A primary on a free port replicating to `standby_urls`, with `extra` flags.
    pub fn primary(
        id: &str,
        data_dir: impl AsRef<Path>,
        standby_urls: &[String],
        extra: &[&str],
    ) -> TestNode {
        Self::primary_on_port(id, free_port(), data_dir, standby_urls, extra)
    }

    /// A standby on a free port, with `extra` flags.
    pub fn standby(id: &str, data_dir: impl AsRef<Path>, extra: &[&str]) -> TestNode {
        Self::standby_on_port(id, free_port(), data_dir, extra)
    }

    /// A primary on a given port.
    pub fn primary_on_port(
        id: &str,
        port: u16,
        data_dir: impl AsRef<Path>,
        standby_urls: &[String],
        extra: &[&str],
    ) -> TestNode {
        let mut more: Vec<&str> = Vec::new();
        for url in standby_urls {
            more.push("--standby");
            more.push(url);
        }
        more.extend_from_slice(extra);
        Self::start(id, port, data_dir.as_ref(), "primary", &more)
    }

    /// A standby on a given port (so a primary can be told its URL before it starts).
    pub fn standby_on_port(
        id: &str,
        port: u16,
        data_dir: impl AsRef<Path>,
        extra: &[&str],
    ) -> TestNode {
        Self::start(id, port, data_dir.as_ref(), "standby", extra)
    }

    /// Starts `keel node` with any role and flags and waits for its health.
    pub fn start(id: &str, port: u16, data_dir: &Path, role: &str, extra: &[&str]) -> TestNode {
        let mut flags = vec!["--role", role];
        flags.extend_from_slice(extra);
        Self::launch(id, port, data_dir, &flags)
    }

    /// A node on a free port whose role comes from the monitor at `monitor_url`.
    pub fn monitored(
        id: &str,
        data_dir: impl AsRef<Path>,
        monitor_url: &str,
        extra: &[&str],
    ) -> TestNode {
        let mut flags = vec!["--monitor", monitor_url];
        flags.extend_from_slice(extra);
        Self::launch(id, free_port(), data_dir.as_ref(), &flags)
    }

    /// Starts `keel node --id ID --listen 127.0.0.1:PORT --data-dir DIR` with `flags` and
    /// waits for its health.
    fn launch(id: &str, port: u16, data_dir: &Path, flags: &[&str]) -> TestNode {
        let listen = format!("127.0.0.1:{port}");
        let data = data_dir.display().to_string();
        let mut args: Vec<String> = ["node", "--id", id, "--listen", &listen, "--data-dir", &data]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(flags.iter().map(|s| s.to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut node = TestNode {
            proc: KeelProcess::spawn(id, &arg_refs),
            url: url_for(port),
            id: id.to_owned(),
            data_dir: data_dir.to_owned(),
            port,
            args,
        };
        node.wait_healthy();
        node
    }

    /// Waits until `GET /health` answers 200 (see [`wait_for_health`]).
    pub fn wait_healthy(&mut self) {
        wait_for_health(&mut self.proc, &self.url);
    }

    /// Starts the node again with the same flags, port and data dir, after it was killed
    /// (kills it first if it is still running), and waits for its health.
    pub fn restart(&mut self) {
        self.proc.restart(&self.args, &self.url);
    }

    /// SIGKILL the node and reap it.
    pub fn kill9(&mut self) -> ExitStatus {
        self.proc.kill9()
    }

    /// The node's `/health` body (panics unless it answers 200).
    pub fn health(&self) -> serde_json::Value {
        let (status, body) = get_json(&format!("{}/health", self.url));
        assert_eq!(status, StatusCode::OK, "{} /health: {body}", self.id);
        body
    }

    /// The flags the node was started with (after `keel`).
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

/// Waits until `GET {url}/health` answers 200; panics with the process's log if it exits
/// or [`STARTUP_TIMEOUT`] passes first.
pub fn wait_for_health(proc: &mut KeelProcess, url: &str) {
    let health = format!("{url}/health");
    let client = http_client();
    let up = wait_until(STARTUP_TIMEOUT, || {
        if let Some(status) = proc.try_status() {
            panic!(
                "{} exited during startup ({})\n{}",
                proc.name,
                describe_status(status),
                proc.log_report()
            );
        }
        client
            .get(&health)
            .timeout(Duration::from_millis(500))
            .send()
            .is_ok_and(|r| r.status() == StatusCode::OK)
    });
    assert!(
        up,
        "{} did not answer {health} within {STARTUP_TIMEOUT:?}\n{}",
        proc.name,
        proc.log_report()
    );
}

/// A blocking HTTP client with a generous timeout, so a hung node fails a test instead of
/// hanging it.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build http client")
}

/// Parses a body as JSON, or keeps it as a JSON string when it is not JSON.
fn json_or_text(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

/// `GET url`: the status and the body as JSON (a JSON string when the body is not JSON).
pub fn get_json(url: &str) -> (StatusCode, serde_json::Value) {
    let resp = http_client()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    (status, json_or_text(resp.text().unwrap_or_default()))
}

/// `GET url`: the status and the body as text.
pub fn get_text(url: &str) -> (StatusCode, String) {
    let resp = http_client()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    (status, resp.text().unwrap_or_default())
}

/// `PUT {node_url}/v1/kv/{key}` with `value` as the body.
pub fn put_kv(node_url: &str, key: &str, value: &str) -> reqwest::blocking::Response {
    let url = format!("{node_url}/v1/kv/{key}");
    http_client()
        .put(&url)
        .body(value.to_owned())
        .send()
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"))
}

/// `PATCH {node_url}/v1/entries` with a JSON object of strings: status and body.
pub fn patch_entries(
    node_url: &str,
    entries: &serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let url = format!("{node_url}/v1/entries");
    let resp = http_client()
        .patch(&url)
        .json(entries)
        .send()
        .unwrap_or_else(|e| panic!("PATCH {url}: {e}"));
    let status = resp.status();
    (status, json_or_text(resp.text().unwrap_or_default()))
}

/// `GET {node_url}/v1/entries` (panics unless 200).
pub fn entries(node_url: &str) -> serde_json::Value {
    let (status, body) = get_json(&format!("{node_url}/v1/entries"));
    assert_eq!(status, StatusCode::OK, "GET {node_url}/v1/entries: {body}");
    body
}

/// Polls `cond` every 15 ms until it holds or `timeout` passes; returns whether it held.
///
/// For waiting on process state (a node came up, a pid is gone), never for asserting how
/// long something took.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Whether a process with this pid exists (and is not a zombie we could still reap: a
/// zombie has exited, so it counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    // Signal 0 succeeds on zombies too; /proc tells them apart.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// What a finished `keel` command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            describe_status(self.status),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `keel <args>` to completion (killed after 30 s) and captures its output.
pub fn run_keel(args: &[&str]) -> Output {
    run_keel_env(args, &[])
}

/// Like [`run_keel`], with extra environment variables; `KEEL_TOKEN`, `KEEL_NODE_URL` and
/// `KEEL_MONITOR_URL` are removed from the inherited environment so the test's own shell
/// cannot leak in.
pub fn run_keel_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_keel_in(args, env, None)
}

/// Like [`run_keel_env`], in working directory `cwd`.
pub fn run_keel_in(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
    // Files, not pipes: no reader threads are needed and nothing can block on a full pipe.
    let dir = tempdir();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(keel_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .env_remove("KEEL_TOKEN")
        .env_remove("KEEL_NODE_URL")
        .env_remove("KEEL_MONITOR_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().expect("spawn keel");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "keel {args:?} did not finish within 30 s\nstdout: {}\nstderr: {}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// A `keel monitor` started by a test on a free port, with an admin token in its data
/// directory (`admin.token`).
pub struct TestMonitor {
    pub proc: KeelProcess,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The admin token (also in `token_file`).
    pub token: String,
    pub token_file: PathBuf,
    /// The cluster secret's file, when the monitor was started closed ([`TestMonitor::start_closed`]).
    pub secret_file: Option<PathBuf>,
    args: Vec<String>,
}

impl TestMonitor {
    /// A token that `keel_core::token::Token` accepts (16 characters or more).
    pub const TOKEN: &'static str = "test-monitor-token-0123456789";

    /// Starts `keel monitor --data-dir <data_dir> --token-file <data_dir>/admin.token`
    /// with `extra` flags and waits for its `/health`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> TestMonitor {
        Self::start_with(data_dir, extra, None, &[])
    }

    /// A cluster secret that `keel_auth::ClusterSecret` accepts.
    pub const SECRET: &'static str = "test-cluster-secret-0123456789abcdef0123456789";

    /// Like [`TestMonitor::start`], closed to outsiders: with the cluster secret in
    /// `<data_dir>/cluster.secret`, so only members may register and heartbeat.
    pub fn start_closed(data_dir: &Path, extra: &[&str]) -> TestMonitor {
        Self::start_closed_env(data_dir, extra, &[])
    }

    /// Like [`TestMonitor::start_closed`], with the variables `env` set.
    pub fn start_closed_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> TestMonitor {
        fs::create_dir_all(data_dir).expect("create monitor data dir");
        let secret_file = data_dir.join("cluster.secret");
        fs::write(&secret_file, Self::SECRET).expect("write secret file");
        Self::start_with(data_dir, extra, Some(secret_file), env)
    }

    /// The flags a member of this monitor's cluster is started with: the admin token and,
    /// when closed, the cluster secret.
    pub fn member_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--token-file".to_owned(),
            self.token_file.display().to_string(),
        ];
        if let Some(secret) = &self.secret_file {
            flags.push("--cluster-secret-file".to_owned());
            flags.push(secret.display().to_string());
        }
        flags
    }

    fn start_with(
        data_dir: &Path,
        extra: &[&str],
        secret_file: Option<PathBuf>,
        env: &[(String, String)],
    ) -> TestMonitor {
        fs::create_dir_all(data_dir).expect("create monitor data dir");
        let token_file = data_dir.join("admin.token");
        fs::write(&token_file, Self::TOKEN).expect("write token file");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = vec![
            "monitor".into(),
            "--listen".into(),
            listen,
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
        ];
        if let Some(secret) = &secret_file {
            args.push("--cluster-secret-file".into());
            args.push(secret.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut monitor = TestMonitor {
            proc: KeelProcess::spawn_env("monitor", &arg_refs, env),
            url: url_for(port),
            port,
            data_dir: data_dir.to_owned(),
            token: Self::TOKEN.to_owned(),
            token_file,
            secret_file,
            args,
        };
        monitor.wait_healthy();
        monitor
    }

    /// Waits until `GET /health` answers 200 (see [`wait_for_health`]).
    pub fn wait_healthy(&mut self) {
        wait_for_health(&mut self.proc, &self.url);
    }

    /// Starts the monitor again with the same flags, port and data dir (kills it first if
    /// it is still running), and waits for its health.
    pub fn restart(&mut self) {
        self.proc.restart(&self.args, &self.url);
    }

    /// `GET /v1/cluster` (panics unless 200).
    pub fn cluster(&self) -> serde_json::Value {
        let (status, body) = get_json(&format!("{}/v1/cluster", self.url));
        assert_eq!(status, StatusCode::OK, "GET /v1/cluster: {body}");
        body
    }

    /// `POST {path}` with a JSON body: the status and the body as JSON.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (StatusCode, serde_json::Value) {
        let url = format!("{}{path}", self.url);
        let resp = http_client()
            .post(&url)
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status();
        (status, json_or_text(resp.text().unwrap_or_default()))
    }
}

/// A `keel up` started by a test: a monitor and `nodes` nodes on free ports, its output
/// captured (the tests read its banner and the monitor's events in it).
pub struct KeelUp {
    pub proc: KeelProcess,
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub monitor_port: u16,
    pub monitor_url: String,
    pub token_file: PathBuf,
    /// The front door (`keel proxy`) and its admin API.
    pub proxy_url: String,
    pub proxy_admin_url: String,
    /// The port of `service1` (the others follow).
    pub service_port: u16,
    /// keel up's control API and dashboard.
    pub control_url: String,
}

impl KeelUp {
    /// Starts `keel up --data-dir DIR --base-port P --monitor-port M [extra…]` and waits
    /// for its banner.
    pub fn start(data_dir: &Path, nodes: u16, extra: &[&str]) -> KeelUp {
        let base_port = free_port_range(nodes);
        let monitor_port = loop {
            let p = free_port();
            if !(base_port..base_port + nodes).contains(&p) {
                break p;
            }
        };
        Self::start_on(data_dir, nodes, base_port, monitor_port, extra)
    }

    /// Like [`KeelUp::start`], on given ports (a second `keel up` on the same data).
    pub fn start_on(
        data_dir: &Path,
        nodes: u16,
        base_port: u16,
        monitor_port: u16,
        extra: &[&str],
    ) -> KeelUp {
        let data = data_dir.display().to_string();
        let (n, base, mon) = (
            nodes.to_string(),
            base_port.to_string(),
            monitor_port.to_string(),
        );
        // The front door and the services on free ports too, so tests run side by side.
        let taken = |p: u16| (base_port..base_port + nodes).contains(&p) || p == monitor_port;
        let (proxy_port, admin_port, service_port, control_port) = loop {
            let (proxy, admin, services, control) =
                (free_port(), free_port(), free_port_range(2), free_port());
            let all = [proxy, admin, services, services + 1, control];
            let distinct = all.iter().collect::<std::collections::HashSet<_>>().len() == 5;
            if distinct && !all.iter().any(|&p| taken(p)) {
                break (proxy, admin, services, control);
            }
        };
        let (proxy, admin, services, control) = (
            proxy_port.to_string(),
            admin_port.to_string(),
            service_port.to_string(),
            control_port.to_string(),
        );
        let mut args = vec![
            "up",
            "--data-dir",
            &data,
            "--nodes",
            &n,
            "--base-port",
            &base,
            "--monitor-port",
            &mon,
            "--proxy-port",
            &proxy,
            "--proxy-admin-port",
            &admin,
            "--service-port",
            &services,
            "--control-port",
            &control,
        ];
        args.extend_from_slice(extra);
        let mut proc = KeelProcess::spawn_captured("up", &args);
        let ready = wait_until(Duration::from_secs(40), || {
            proc.log_text().contains("keel data tier is up") || !proc.is_running()
        });
        assert!(
            ready && proc.is_running(),
            "keel up did not come up\n{}",
            proc.log_report()
        );
        KeelUp {
            proc,
            data_dir: data_dir.to_owned(),
            base_port,
            monitor_port,
            monitor_url: url_for(monitor_port),
            token_file: data_dir.join("admin.token"),
            proxy_url: url_for(proxy_port),
            proxy_admin_url: url_for(admin_port),
            service_port,
            control_url: url_for(control_port),
        }
    }

    /// The URL of `appK`.
    pub fn node_url(&self, k: u16) -> String {
        url_for(self.base_port + (k - 1))
    }

    /// `GET /v1/cluster` of the monitor.
    pub fn view(&self) -> serde_json::Value {
        let (status, view) = get_json(&format!("{}/v1/cluster", self.monitor_url));
        assert_eq!(status, StatusCode::OK, "{view}");
        view
    }

    /// The primary the monitor names, once no failover is running.
    pub fn primary(&self) -> Option<String> {
        let view = self.view();
        if view["failover_in_progress"] == true {
            return None;
        }
        view["primary"]["node"].as_str().map(str::to_owned)
    }

    /// Whether the monitor reports `node` as promotable.
    pub fn promotable(&self, node: &str) -> bool {
        self.view()["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["node"] == node && n["promotable"] == true)
        })
    }

    /// `keel client --monitor <this monitor> --token-file <its token> <args…>`.
    pub fn client(&self, args: &[&str]) -> Output {
        self.client_env(args, &[])
    }

    /// Like [`KeelUp::client`], with extra environment variables; with `KEEL_TOKEN`
    /// among them, without `--token-file` (so that the variable is what counts).
    pub fn client_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let token = self.token_file.display().to_string();
        let mut all = vec!["client", "--monitor", &self.monitor_url];
        if !env.iter().any(|(k, _)| *k == "KEEL_TOKEN") {
            all.extend_from_slice(&["--token-file", &token]);
        }
        all.extend_from_slice(args);
        let empty = tempdir();
        run_keel_in(&all, env, Some(empty.path()))
    }

    /// The pids the banner lists, by name (the monitor's too).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.proc
            .log_text()
            .lines()
            .filter(|l| l.starts_with("  ") && l.contains(" pid "))
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                Some((words.first()?.to_string(), words.last()?.parse().ok()?))
            })
            .collect()
    }

    /// Waits until `keel up`'s output contains `text`.
    pub fn wait_for_output(&mut self, text: &str) -> bool {
        wait_until(Duration::from_secs(20), || {
            self.proc.log_text().contains(text)
        })
    }
}

/// Reads `GET {monitor_url}/v1/events?since=0` until `until` shows up (or the client times
/// out), and returns the stream's text.
pub fn read_events(monitor_url: &str, until: &str) -> String {
    use std::io::Read as _;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut resp = client
        .get(format!("{}/v1/events?since=0", monitor_url))
        .send()
        .expect("GET /v1/events");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains(until) {
        match resp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    text
}

/// `keel load TARGET --concurrency 4 --duration DURATION --write-ratio 0.5 --verify
/// --quiet EXTRA…`, its output captured: the load that checks no acknowledged write is
/// lost while a test breaks things.
pub fn spawn_verified_load(target: &str, duration: &str, extra: &[&str]) -> KeelProcess {
    let mut args = vec![
        "load",
        target,
        "--concurrency",
        "4",
        "--duration",
        duration,
        "--write-ratio",
        "0.5",
        "--verify",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    KeelProcess::spawn_captured("load", &args)
}

/// The number of acknowledged writes in `keel load`'s report (its `writes …` line).
pub fn acknowledged_writes(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.first() == Some(&"writes")).then(|| words.get(4)?.parse().ok())?
        })
        .unwrap_or(0)
}

/// Makes sure this process may hold `want` open files (and so may the processes it
/// starts from now on, which inherit the limit), raising the soft limit up to the hard one
/// with `prlimit(1)`. Panics, saying why, when that is not possible: a test that needs
/// many connections would otherwise fail in a way that hides the cause.
pub fn raise_open_files(want: u64) {
    fn limits() -> (u64, String) {
        let text = fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .to_owned();
        let mut numbers = line
            .split_whitespace()
            .skip(3)
            .map(|n| n.parse::<u64>().unwrap_or(u64::MAX));
        let soft = numbers.next().unwrap_or(0);
        let hard = numbers.next().unwrap_or(0);
        (soft, format!("soft {soft}, hard {hard}"))
    }
    let (soft, shown) = limits();
    if soft >= want {
        return;
    }
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={want}:"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let (now, after) = limits();
    assert!(
        now >= want,
        "this test needs {want} open files; the limit was {shown} and prlimit ({status:?}) left it at {after}"
    );
}

/// Runs `keel load --quiet --json FILE ARGS…`: its output and the parsed report
/// (`Value::Null` when no report was written).
pub fn load_report(args: &[&str]) -> (Output, serde_json::Value) {
    let dir = tempdir();
    let json = dir.path().join("report.json");
    let json_arg = json.display().to_string();
    let mut all = vec!["load", "--quiet", "--json", &json_arg];
    all.extend_from_slice(args);
    let out = run_keel(&all);
    let report = match fs::read_to_string(&json) {
        Ok(text) => serde_json::from_str(&text).expect("the report is JSON"),
        Err(_) => serde_json::Value::Null,
    };
    (out, report)
}

/// A `keel load` report's spread: each backend's name and count, in the report's order.
pub fn spread_of(report: &serde_json::Value) -> Vec<(String, u64)> {
    report["spread"]
        .as_array()
        .expect("spread")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_owned(),
                s["count"].as_u64().expect("count"),
            )
        })
        .collect()
}
