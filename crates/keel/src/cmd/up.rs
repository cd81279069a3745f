//! `keel up`: a whole data tier on this machine, in the foreground — the seed's `main.py`.
//!
//! Starts `app2..appN` as standbys and then `app1` as their primary, each a `keel node`
//! child process of this executable with its own directory under `--data-dir`, and all
//! sharing the admin token in `<data-dir>/admin.token` (generated once, then kept). The
//! children's output is shown line by line, prefixed with the node's name.
//!
//! `keel up` never restarts anything by itself: a node that dies is reported and stays
//! dead, so that what a test or a person does to a node is what they see. On Ctrl-C or
//! SIGTERM every child gets SIGTERM — the primary first, so that its in-flight writes
//! can still reach the standbys — and whatever is left after [`STOP_GRACE`] gets SIGKILL.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_core::token::{TOKEN_FILE_NAME, Token};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cli::UpArgs;

/// How long the children get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a node may take to answer `/health` after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(up(args))
}

/// A child's supervisor task and the channel that tells it to stop the child by a
/// deadline.
struct Supervised {
    stop: oneshot::Sender<tokio::time::Instant>,
    task: JoinHandle<Option<String>>,
}

/// One node to start.
struct NodeSpec {
    name: String,
    port: u16,
    url: String,
    args: Vec<String>,
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut stop_signal = pin!(keel_core::shutdown::signal());
    // Poll once so the handlers are installed before any child exists: a Ctrl-C from
    // then on reaches this code instead of killing the process and orphaning the nodes.
    tokio::select! {
        biased;
        () = &mut stop_signal => return Ok(ExitCode::SUCCESS),
        () = std::future::ready(()) => {}
    }

    let data_dir = &args.data_dir;
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let token_path = data_dir.join(TOKEN_FILE_NAME);
    let token_note = ensure_token(&token_path)?;
    let specs = plan(&args, &token_path)?;
    check_ports(&specs)?;

    let exe =
        std::env::current_exe().context("cannot find the keel executable to start the nodes")?;
    let width = specs.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut tier = Tier::new(exe, width);

    let started = tokio::select! {
        r = tier.start_all(&specs) => Some(r),
        () = &mut stop_signal => None,
    };
    match started {
        None => {
            println!("interrupted during startup; stopping");
            tier.shutdown().await;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Err(e)) => {
            tier.shutdown().await;
            return Err(e);
        }
        Some(Ok(())) => {}
    }
    print_banner(&args, &specs, &tier, &token_path, token_note);

    let mut alive = specs.len();
    loop {
        tokio::select! {
            biased;
            () = &mut stop_signal => break,
            Some((name, how)) = tier.exits.recv() => {
                alive = alive.saturating_sub(1);
                println!("{name} exited ({how}); keel up does not restart it");
                if alive == 0 {
                    println!("no node is running any more; press Ctrl-C to quit");
                }
            }
        }
    }
    println!("stopping the data tier");
    tier.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Keeps the token of an earlier `keel up` (nodes and scripts may hold it), else writes a
/// new one readable by the owner only. Returns a note for the banner.
fn ensure_token(path: &Path) -> anyhow::Result<&'static str> {
    if path.exists() {
        Token::from_file(path).with_context(|| {
            format!(
                "the admin token in {} is unusable; delete the file and `keel up` writes a new one",
                path.display()
            )
        })?;
        return Ok("kept");
    }
    let token = Token::generate().context("cannot generate an admin token")?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    writeln!(file, "{}", token.secret())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    Ok("new")
}

/// The nodes, standbys first: the primary connects to its standbys when it starts.
fn plan(args: &UpArgs, token_path: &Path) -> anyhow::Result<Vec<NodeSpec>> {
    let n = args.nodes;
    let last = args.base_port.checked_add(n - 1).filter(|p| *p > 0);
    if args.base_port == 0 || last.is_none() {
        bail!(
            "--base-port {} leaves no room for {n} nodes (ports must be 1 to 65535)",
            args.base_port
        );
    }
    let node = |k: u16| {
        let port = args.base_port + (k - 1);
        (format!("app{k}"), port, format!("http://127.0.0.1:{port}"))
    };
    let common = |name: &str, port: u16, role: &str| -> Vec<String> {
        vec![
            "node".into(),
            "--id".into(),
            name.into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            path_arg(&args.data_dir.join(name)),
            "--role".into(),
            role.into(),
            "--token-file".into(),
            path_arg(token_path),
        ]
    };
    let mut specs = Vec::new();
    for k in 2..=n {
        let (name, port, url) = node(k);
        let args = common(&name, port, "standby");
        specs.push(NodeSpec {
            name,
            port,
            url,
            args,
        });
    }
    let (name, port, url) = node(1);
    let mut primary_args = common(&name, port, "primary");
    for standby in &specs {
        primary_args.push("--standby".into());
        primary_args.push(standby.url.clone());
    }
    if args.async_replication {
        primary_args.push("--async".into());
    }
    specs.push(NodeSpec {
        name,
        port,
        url,
        args: primary_args,
    });
    Ok(specs)
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Fails before anything starts when a port is taken, naming it.
fn check_ports(specs: &[NodeSpec]) -> anyhow::Result<()> {
    for spec in specs {
        match TcpListener::bind(("127.0.0.1", spec.port)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => bail!(
                "port {} (for {}) is already in use on 127.0.0.1 — is another `keel up` running? \
                 stop it, or pick other ports with --base-port",
                spec.port,
                spec.name
            ),
            Err(e) => bail!("cannot use port {} for {}: {e}", spec.port, spec.name),
        }
    }
    Ok(())
}

/// The running children: a supervisor task per child (waits for its exit, or stops it
/// when told) and a task per output stream.
struct Tier {
    exe: PathBuf,
    /// Width of the name column in the output prefix.
    width: usize,
    exits_tx: mpsc::UnboundedSender<(String, String)>,
    /// Children that exited by themselves: name and how.
    exits: mpsc::UnboundedReceiver<(String, String)>,
    /// In start order: standbys first, the primary last.
    supervisors: Vec<Supervised>,
    pumps: Vec<JoinHandle<()>>,
    /// Name and pid of every child started, for the banner.
    pids: Vec<(String, Option<u32>)>,
    http: reqwest::Client,
}

impl Tier {
    fn new(exe: PathBuf, width: usize) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Tier {
            exe,
            width,
            exits_tx,
            exits,
            supervisors: Vec::new(),
            pumps: Vec::new(),
            pids: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    /// Starts the nodes in order, each only after the one before answers `/health`.
    async fn start_all(&mut self, specs: &[NodeSpec]) -> anyhow::Result<()> {
        for spec in specs {
            self.spawn(spec)?;
            self.wait_healthy(spec).await?;
        }
        Ok(())
    }

    fn spawn(&mut self, spec: &NodeSpec) -> anyhow::Result<()> {
        let mut command = Command::new(&self.exe);
        let mut child = command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Should `keel up` itself fail, its nodes must not outlive it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.name))?;
        let prefix = format!("{:width$} | ", spec.name, width = self.width);
        if let Some(out) = child.stdout.take() {
            self.pumps.push(tokio::spawn(pump(prefix.clone(), out)));
        }
        if let Some(err) = child.stderr.take() {
            self.pumps.push(tokio::spawn(pump(prefix, err)));
        }
        self.pids.push((spec.name.clone(), child.id()));
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(
            spec.name.clone(),
            child,
            stop_rx,
            self.exits_tx.clone(),
        ));
        self.supervisors.push(Supervised { stop, task });
        Ok(())
    }

    /// Polls `/health` until it answers 200; fails when any child exits meanwhile.
    async fn wait_healthy(&mut self, spec: &NodeSpec) -> anyhow::Result<()> {
        let health = format!("{}/health", spec.url);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok((name, how)) = self.exits.try_recv() {
                bail!("{name} exited during startup ({how}); its output is above");
            }
            let ok = self
                .http
                .get(&health)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer {health} within {STARTUP_TIMEOUT:?}; its output is above",
                    spec.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM to every child, primary first; SIGKILL to those still there
    /// [`STOP_GRACE`] after the first SIGTERM; a line for each.
    async fn shutdown(&mut self) {
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        // Reverse start order: the primary stops while its standbys still answer, so
        // the writes it drains are acknowledged rather than left with unknown outcomes.
        for Supervised { stop, task } in self.supervisors.drain(..).rev() {
            // A closed channel belongs to a child that already exited.
            let _ = stop.send(deadline);
            match task.await {
                Ok(Some(line)) => println!("{line}"),
                Ok(None) => {}
                Err(e) => eprintln!("keel: a supervisor task failed: {e}"),
            }
        }
        // Let the last lines of output through; a grandchild holding a pipe open must
        // not keep us here.
        let pumps = std::mem::take(&mut self.pumps);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for pump in pumps {
                let _ = pump.await;
            }
        })
        .await;
    }
}

/// Waits for the child to exit (reported on `exits`) or to be told to stop (then stops
/// it and returns a line saying how it ended).
async fn supervise(
    name: String,
    mut child: Child,
    stop: oneshot::Receiver<tokio::time::Instant>,
    exits: mpsc::UnboundedSender<(String, String)>,
) -> Option<String> {
    let deadline = tokio::select! {
        status = child.wait() => {
            let how = match status {
                Ok(status) => describe(status),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = exits.send((name, how));
            return None;
        }
        // A dropped sender means `keel up` is ending without an orderly stop: stop anyway.
        deadline = stop => deadline.unwrap_or_else(|_| tokio::time::Instant::now() + STOP_GRACE),
    };
    Some(terminate(&name, &mut child, deadline).await)
}

async fn terminate(name: &str, child: &mut Child, deadline: tokio::time::Instant) -> String {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // An error means it is already gone, which `wait` below reports.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => format!("{name} stopped ({})", describe(status)),
        Ok(Err(e)) => format!("cannot wait for {name}: {e}"),
        Err(_) => match child.kill().await {
            Ok(()) => format!("{name} did not stop within {STOP_GRACE:?} of SIGTERM; killed"),
            Err(e) => {
                format!("{name} did not stop within {STOP_GRACE:?} and cannot be killed: {e}")
            }
        },
    }
}

/// `exit code 1` or `signal 9`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Copies a child's output to ours, a line at a time, each with the node's name.
async fn pump(prefix: String, stream: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let mut out = std::io::stdout().lock();
                // Nowhere to report a closed stdout; the node keeps running regardless.
                let _ = writeln!(out, "{prefix}{}", text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

fn print_banner(
    args: &UpArgs,
    specs: &[NodeSpec],
    tier: &Tier,
    token_path: &Path,
    token_note: &str,
) {
    let mode = if args.async_replication {
        "async"
    } else {
        "sync"
    };
    let mut text = format!("\nkeel data tier is up ({mode} replication):\n");
    // Primary first, as a person reads it; the specs list it last because it starts last.
    let mut ordered: Vec<&NodeSpec> = specs.iter().collect();
    ordered.sort_by_key(|s| s.port);
    for spec in ordered {
        let role = if spec.port == args.base_port {
            "primary"
        } else {
            "standby"
        };
        let pid = tier
            .pids
            .iter()
            .find(|(name, _)| *name == spec.name)
            .and_then(|(_, pid)| *pid)
            .map_or_else(String::new, |pid| format!("  pid {pid}"));
        text.push_str(&format!("  {:5} {role}  {}{pid}\n", spec.name, spec.url));
    }
    text.push_str(&format!(
        "  data in {}, admin token in {} ({token_note})\n\n",
        args.data_dir.display(),
        token_path.display()
    ));
    let node = if args.base_port == 8081 {
        String::new()
    } else {
        format!(" --node http://127.0.0.1:{}", args.base_port)
    };
    let token =
        if args.data_dir == Path::new("./keel-data") || args.data_dir == Path::new("keel-data") {
            String::new()
        } else {
            format!(" --token-file {}", token_path.display())
        };
    text.push_str("Try, in another terminal:\n");
    text.push_str(&format!("  keel client{node} state all\n"));
    text.push_str(&format!("  keel client{node} set greeting=hello\n"));
    text.push_str(&format!("  keel client{node} get greeting\n"));
    text.push_str(&format!(
        "  curl -s localhost:{}/v1/entries\n",
        args.base_port
    ));
    text.push_str(&format!(
        "  keel client{node}{token} kill-primary    # no monitor yet: nothing takes over\n"
    ));
    text.push_str("Ctrl-C stops every node.\n");
    print!("{text}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: u16, base_port: u16) -> UpArgs {
        UpArgs {
            nodes,
            data_dir: PathBuf::from("/tmp/d"),
            base_port,
            async_replication: false,
        }
    }

    #[test]
    fn standbys_start_first_and_the_primary_names_them_all() {
        let specs = plan(&args(3, 9000), Path::new("/tmp/d/admin.token")).expect("plan");
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["app2", "app3", "app1"]);
        let primary = &specs[2];
        assert_eq!(primary.port, 9000);
        let joined = primary.args.join(" ");
        assert!(joined.contains("--role primary"), "{joined}");
        assert!(
            joined.contains("--standby http://127.0.0.1:9001"),
            "{joined}"
        );
        assert!(
            joined.contains("--standby http://127.0.0.1:9002"),
            "{joined}"
        );
        assert!(joined.contains("--data-dir /tmp/d/app1"), "{joined}");
        assert!(specs[0].args.join(" ").contains("--role standby"));
    }

    #[test]
    fn ports_past_65535_are_refused() {
        assert!(plan(&args(3, 65534), Path::new("t")).is_err());
        assert!(plan(&args(2, 0), Path::new("t")).is_err());
    }

    #[test]
    fn a_taken_port_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let specs = plan(&args(1, port), Path::new("t")).expect("plan");
        let err = check_ports(&specs).expect_err("port is taken");
        assert!(err.to_string().contains(&format!("port {port}")), "{err}");
    }
}
