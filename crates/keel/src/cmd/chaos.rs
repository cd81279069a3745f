//! `keel chaos`: faults on demand against a stack that `keel up` runs — the `docker kill`
//! and `docker compose pause` steps of the seeds, as commands, and network partitions of
//! the data tier.
//!
//! The actions are carried out by `keel up`'s supervisor (its control API, found through
//! `<data-dir>/up.json`), which is the parent of every process and reaps it, and which
//! carries a partition out (the fault files its children follow, or under `keel up
//! --netns` the kernel's rules in their namespaces); this command only asks,
//! with the admin token. `keel chaos run` draws faults from a seeded random
//! generator, so the same seed gives the same sequence of faults, targets and timings,
//! and restores each fault before the next one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use keel_auth::{Key, Signer};
use keel_core::token::{TOKEN_FILE_NAME, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::up::{Action, Done, PartitionDone, PartitionRequest, ProcessInfo, UP_FILE, UpFile};
use crate::cli::{ChaosArgs, ChaosCommand, RunArgs};

pub fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(chaos(args))
}

/// A connection to a running `keel up`.
struct Control {
    url: String,
    token: Option<Token>,
    http: reqwest::Client,
}

async fn chaos(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let control = Control::find(&args)?;
    match &args.command {
        ChaosCommand::List => {
            for p in control.processes().await? {
                let pid = p.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string());
                println!("{:10} {:8} pid {:>7}  {}", p.name, p.state, pid, p.url);
            }
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::Kill { name } => act_once(&control, name, Action::Kill).await,
        ChaosCommand::Pause { name } => act_once(&control, name, Action::Pause).await,
        ChaosCommand::Resume { name } => act_once(&control, name, Action::Resume).await,
        ChaosCommand::Restart { name } => act_once(&control, name, Action::Restart).await,
        ChaosCommand::Partition { node, from } => {
            let done = control.partition(node, from).await?;
            println!("{}", done.message);
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::Heal => {
            let done = control.heal().await?;
            println!("{}", done.message);
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::Run(run) => chaos_run(&control, run).await,
    }
}

async fn act_once(control: &Control, name: &str, action: Action) -> anyhow::Result<ExitCode> {
    let done = control.act(name, action).await?;
    println!("{}", done.message);
    Ok(ExitCode::SUCCESS)
}

impl Control {
    /// Finds the control API (`--up`, else `<data-dir>/up.json`) and the token
    /// (`--token-file`, `KEEL_TOKEN`, else `<data-dir>/admin.token`).
    fn find(args: &ChaosArgs) -> anyhow::Result<Control> {
        let url = match &args.up {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => read_up_file(&args.data_dir)?.control,
        };
        let env_token = std::env::var("KEEL_TOKEN").ok();
        let default_file = args.data_dir.join(TOKEN_FILE_NAME);
        let file: Option<PathBuf> = args
            .token_file
            .clone()
            .or_else(|| (env_token.is_none() && default_file.exists()).then_some(default_file));
        let token = Token::load(file.as_deref(), env_token.as_deref())?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            // A restart waits for the process to answer its health check.
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Control { url, token, http })
    }

    async fn processes(&self) -> anyhow::Result<Vec<ProcessInfo>> {
        let url = format!("{}/v1/processes", self.url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| self.unreachable())?;
        let body: serde_json::Value = response.json().await.context("a bad answer from keel up")?;
        serde_json::from_value(body["processes"].clone()).context("a bad answer from keel up")
    }

    async fn act(&self, name: &str, action: Action) -> anyhow::Result<Done> {
        let verb = serde_json::to_value(action)?;
        let path = format!("/v1/processes/{name}/{}", verb.as_str().unwrap_or(""));
        self.post(&path, None).await
    }

    /// Cuts `node` off from `from` (every other process of the data tier when empty).
    async fn partition(&self, node: &str, from: &[String]) -> anyhow::Result<PartitionDone> {
        let request = PartitionRequest {
            node: node.to_owned(),
            from: from.to_vec(),
        };
        self.post("/v1/partition", Some(serde_json::to_value(request)?))
            .await
    }

    /// Ends every partition.
    async fn heal(&self) -> anyhow::Result<PartitionDone> {
        self.post("/v1/heal", None).await
    }

    /// `POST {control}{path}` with the token and an optional JSON body.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.url);
        let body = match body {
            Some(body) => serde_json::to_vec(&body).context("cannot encode the request")?,
            None => Vec::new(),
        };
        let mut request = self.http.post(&url);
        // Signed with the token rather than carrying it (docs/security.md).
        if let Some(token) = &self.token {
            let signed = Signer::new(Key::admin(token), "keel-chaos")
                .sign("POST", &url, &body)
                .context("cannot sign the request")?;
            request = request.header(keel_auth::AUTH_HEADER, signed.header);
        }
        if !body.is_empty() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.with_context(|| self.unreachable())?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("a bad answer from keel up")?;
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            bail!("keel up refused: {message} ({status})");
        }
        serde_json::from_value(body).context("a bad answer from keel up")
    }

    fn unreachable(&self) -> String {
        format!(
            "cannot reach keel up's control API at {} — is keel up running?",
            self.url
        )
    }
}

fn read_up_file(data_dir: &Path) -> anyhow::Result<UpFile> {
    let path = data_dir.join(UP_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is `keel up` running with --data-dir {}? (or give --up URL)",
            path.display(),
            data_dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not keel up's file", path.display()))
}

/// A fault `keel chaos run` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, restored by a restart.
    Kill,
    /// SIGSTOP, restored by SIGCONT.
    Pause,
    /// Cut off from every other process of the data tier, restored by a heal.
    Partition,
}

impl Fault {
    /// Carries the fault out on `target`; the line that says what was done.
    async fn inject(self, control: &Control, target: &str) -> anyhow::Result<String> {
        Ok(match self {
            Fault::Kill => control.act(target, Action::Kill).await?.message,
            Fault::Pause => control.act(target, Action::Pause).await?.message,
            Fault::Partition => control.partition(target, &[]).await?.message,
        })
    }

    /// Undoes [`Fault::inject`].
    async fn restore(self, control: &Control, target: &str) -> anyhow::Result<String> {
        Ok(match self {
            Fault::Kill => control.act(target, Action::Restart).await?.message,
            Fault::Pause => control.act(target, Action::Resume).await?.message,
            Fault::Partition => control.heal().await?.message,
        })
    }
}

/// `keel chaos run`: a fault at a random time on a random target, held for a while, then
/// restored; again until the time is up. One fault at a time, so the stack is never asked
/// to survive more than one failure at once.
async fn chaos_run(control: &Control, args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.min_gap > args.max_gap {
        bail!("--min-gap must not exceed --max-gap");
    }
    if args.min_hold > args.max_hold {
        bail!("--min-hold must not exceed --max-hold");
    }
    let faults: Vec<Fault> = args
        .faults
        .split(',')
        .map(|f| match f.trim() {
            "kill" => Ok(Fault::Kill),
            "pause" => Ok(Fault::Pause),
            "partition" => Ok(Fault::Partition),
            other => Err(anyhow!(
                "--faults: {other:?} is not a fault (kill, pause, partition)"
            )),
        })
        .collect::<anyhow::Result<_>>()?;
    let processes = control.processes().await?;
    let targets: Vec<String> = match &args.targets {
        Some(list) => list.split(',').map(|t| t.trim().to_owned()).collect(),
        None => processes
            .iter()
            .filter(|p| p.name.starts_with("app"))
            .map(|p| p.name.clone())
            .collect(),
    };
    for target in &targets {
        if !processes.iter().any(|p| &p.name == target) {
            let names: Vec<&str> = processes.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "--targets: keel up runs no {target:?}; it runs {}",
                names.join(", ")
            );
        }
    }
    if targets.is_empty() {
        bail!("no targets: keel up runs no data node");
    }
    if faults.contains(&Fault::Partition)
        && let Some(client) = targets
            .iter()
            .find(|t| *t != "monitor" && !t.starts_with("app"))
    {
        bail!(
            "--targets: {client} cannot be partitioned (only the data tier is: the monitor and the nodes); \
             leave partition out of --faults or {client} out of --targets"
        );
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let started = tokio::time::Instant::now();
    let clock = || format!("{:7.1} s", started.elapsed().as_secs_f64());
    let draw = |rng: &mut StdRng, min: Duration, max: Duration| {
        let (lo, hi) = (min.as_millis() as u64, max.as_millis() as u64);
        Duration::from_millis(rng.random_range(lo..=hi))
    };
    println!(
        "chaos: {} s, seed {}, faults {}, targets {}",
        args.duration.as_secs_f64(),
        args.seed,
        args.faults,
        targets.join(",")
    );
    let mut injected = 0;
    let mut stop = std::pin::pin!(keel_core::shutdown::signal());
    loop {
        let gap = draw(&mut rng, args.min_gap, args.max_gap);
        let fault = faults[rng.random_range(0..faults.len())];
        let target = targets[rng.random_range(0..targets.len())].clone();
        let hold = draw(&mut rng, args.min_hold, args.max_hold);
        if started.elapsed() + gap + hold >= args.duration {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(gap) => {}
            () = &mut stop => break,
        }
        let message = fault.inject(control, &target).await?;
        injected += 1;
        println!("{}  {message}", clock());
        let interrupted = tokio::select! {
            () = tokio::time::sleep(hold) => false,
            () = &mut stop => true,
        };
        let message = fault.restore(control, &target).await?;
        println!("{}  {message}", clock());
        if interrupted {
            break;
        }
    }
    println!(
        "{}  chaos over: {injected} fault(s), each restored",
        clock()
    );
    Ok(ExitCode::SUCCESS)
}
