//! `keel client`: the failover seed's client (`-get_state`, `-update -file`,
//! `-kill-primary`) made real, plus the key/value space, counters, a manual switchover
//! and the monitor's view.
//!
//! By default every command finds the primary through the monitor (`--monitor`, read
//! with `keel_client`) and rides through a failover: when the primary cannot be reached, or
//! answers that a failover is in progress, the client says so in one line on stderr,
//! asks the monitor again and retries with backoff, for up to `--retry-for`. `--node`
//! talks to one node directly instead (a standby names its primary in a 421, which is
//! followed once). Failures become messages a person can act on; the exit code is
//! non-zero whenever something did not happen.
//!
//! - [`route`]: where to send a request, and the retry loop around it
//! - [`admin`]: `kill-primary`, `failover`, `cluster`
//! - [`slots`]: `slots show|move|rebalance|cancel`, moving slots between groups
//! - [`conn`]: one request to one server, and the errors a person sees
//! - [`events`]: the monitor's event stream (shared with `keel up`)
//! - [`fetch`]: `keel client fetch URL`, the fault-tolerance lab's client (retry,
//!   breaker, fallback), for any HTTP service such as `keel flaky`
//!
//! The waits between tries are `keel_resilience`'s backoff (full jitter, `Retry-After` as
//! a floor).

mod admin;
mod conn;
pub(crate) mod events;
mod fetch;
mod print;
mod route;
mod slots;
mod state;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use keel_core::token::{TOKEN_FILE_NAME, Token};
use reqwest::Method;
use serde_json::json;

use crate::cli::{ClientArgs, ClientCommand, StateWhich};
use conn::{Conn, Req, normalize_url};
use keel_client::node::KeyList;
use keel_node::update::{self, UpdateError};
use print::{display_width, print_json, print_map};
use route::{Route, Safety};

/// Where `keel up` writes the token when run with its default data dir.
const DEFAULT_TOKEN_PATH: &str = "./keel-data";

/// The monitor of a `keel up` with default ports.
pub(crate) const DEFAULT_MONITOR: &str = "http://127.0.0.1:8070";

/// The first node of a `keel up` with default ports: where the client turns when the
/// default monitor does not answer.
const DEFAULT_NODE: &str = "http://127.0.0.1:8081";

pub fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    // One request at a time: a single-threaded runtime is all a command-line client needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = Client::new(&args)?;
    runtime.block_on(client.run(args.command))
}

/// One invocation's settings and HTTP connection pool.
struct Client {
    conn: Conn,
    /// How requests find their node.
    route: Route,
    /// The monitor's URL (the default one unless `--monitor` was given), for the
    /// commands that only the monitor answers (`cluster`, `failover`).
    monitor: String,
    json: bool,
    token_file: Option<PathBuf>,
    timeout: Duration,
    retry_for: Duration,
    /// TLS towards https:// monitors and nodes (`--tls-ca`).
    tls: Option<keel_auth::tls::ClientConfig>,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let monitor = match &args.monitor {
            // One monitor, or a group's monitors separated by commas.
            Some(urls) => urls
                .split(',')
                .map(normalize_url)
                .collect::<anyhow::Result<Vec<_>>>()
                .context("--monitor")?
                .join(","),
            None => DEFAULT_MONITOR.to_owned(),
        };
        let route = match &args.node {
            Some(node) => Route::direct(normalize_url(node).context("--node")?),
            // Only the default monitor may be absent quietly: a monitor that was named
            // and does not answer is an error the person should see.
            None => Route::monitor(monitor.clone(), args.monitor.is_none()),
        };
        let tls = match &args.tls_ca {
            Some(ca) => Some(
                keel_auth::tls::client_for_ca(ca)
                    .with_context(|| format!("--tls-ca {}", ca.display()))?,
            ),
            None => None,
        };
        Ok(Client {
            conn: Conn::new(args.timeout, tls.clone())?,
            tls,
            route,
            monitor,
            json: args.json,
            token_file: args.token_file.clone(),
            timeout: args.timeout,
            retry_for: args.retry_for,
        })
    }

    async fn run(&self, command: ClientCommand) -> anyhow::Result<ExitCode> {
        match command {
            ClientCommand::State { which } => self.state(which).await,
            ClientCommand::Update { file } => self.update(&file).await,
            ClientCommand::Set { pairs } => self.set(&pairs).await,
            ClientCommand::Get { key } => self.get(key.as_deref()).await,
            ClientCommand::Incr { name, by } => self.incr(&name, by).await,
            ClientCommand::KillPrimary { watch } => self.kill_primary(watch).await,
            ClientCommand::Failover { to } => self.failover(to).await,
            ClientCommand::Cluster => self.cluster().await,
            ClientCommand::Monitors(command) => self.monitors(command).await,
            ClientCommand::Slots(command) => self.slots(command).await,
            ClientCommand::Fetch(args) => fetch::run(args, self.timeout, self.json).await,
        }
    }

    /// `keel client state primary|standby|all`: the nodes (from the monitor, or found
    /// from `--node`), then each one's entries map.
    async fn state(&self, which: StateWhich) -> anyhow::Result<ExitCode> {
        let targets = self.state_targets(which).await?;
        let mut failed = false;
        let mut shown = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let result = self
                .conn
                .call(&target.url, &Req::get(&["v1", "entries"]))
                .await;
            let result = result.and_then(|a| {
                let entries: BTreeMap<String, String> = a.json()?;
                Ok((a, entries))
            });
            match result {
                Ok((answer, entries)) if self.json => shown.push(json!({
                    "url": target.url,
                    "node": answer.node,
                    "role": answer.role,
                    "epoch": answer.epoch.as_deref().and_then(|e| e.parse::<u64>().ok()),
                    "lsn": answer.lsn.as_deref().and_then(|l| l.parse::<u64>().ok()),
                    "entries": entries,
                })),
                Ok((answer, entries)) => {
                    if i > 0 {
                        println!();
                    }
                    println!("{}", answer.title());
                    print_map(&entries);
                }
                Err(e) => {
                    // A node the monitor already reports as silent is expected to be
                    // unreachable (it was killed): shown, but not a failure of `state`.
                    failed |= target.expected_up;
                    if self.json {
                        shown.push(json!({"url": target.url, "node": target.name, "error": format!("{e:#}")}));
                    } else {
                        if i > 0 {
                            println!();
                        }
                        println!("{}", target.title());
                        if target.expected_up {
                            println!("  (unreachable: {e:#})");
                        } else {
                            println!(
                                "  (not answering; the monitor has not heard from it lately either)"
                            );
                        }
                    }
                }
            }
        }
        if self.json {
            print_json(&serde_json::Value::Array(shown))?;
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }

    /// `keel client update --file F`.
    async fn update(&self, file: &Path) -> anyhow::Result<ExitCode> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow!(
                "{} is not UTF-8 text ({e}); nothing was sent",
                file.display()
            )
        })?;
        // The node's own rules, checked here first so the error can name the file.
        match update::parse_lines(&text) {
            Ok(_) => {}
            Err(UpdateError::Line { line, reason }) => {
                bail!("{}:{line}: {reason}; nothing was sent", file.display())
            }
            Err(UpdateError::Empty) => bail!(
                "{} holds no key=value lines (one pair a line, e.g. name=Paola); nothing was sent",
                file.display()
            ),
            Err(e) => bail!("{}: {e}; nothing was sent", file.display()),
        }
        let mut req = Req::new(Method::PATCH, &["v1", "entries"]);
        req.body = Some(("text/plain; charset=utf-8", text.into_bytes()));
        // Merging the same lines twice gives the same map: safe to send again.
        let answer = self.ride(&req, "the update", Safety::Idempotent).await?;
        let entries: BTreeMap<String, String> = answer.json()?;
        if self.json {
            print_json(&serde_json::to_value(&entries)?)?;
        } else {
            println!("{}", answer.title());
            print_map(&entries);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `keel client set k=v …`: every pair is checked before the first is sent.
    async fn set(&self, pairs: &[String]) -> anyhow::Result<ExitCode> {
        let mut checked = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("expected KEY=VALUE, got {pair:?}; nothing was sent");
            };
            update::check_key(key).map_err(|r| anyhow!("{r} in {pair:?}; nothing was sent"))?;
            checked.push((key, value));
        }
        let mut results = Vec::new();
        for (key, value) in checked {
            let mut req = Req::new(Method::PUT, &["v1", "kv", key]);
            req.body = Some(("application/octet-stream", value.as_bytes().to_vec()));
            // A PUT of the same value twice leaves the same value: safe to send again.
            let answer = self
                .ride(&req, &format!("setting {key:?}"), Safety::Idempotent)
                .await?;
            let body: serde_json::Value = answer.json()?;
            if self.json {
                results.push(body);
            } else {
                let version = body.get("version").and_then(serde_json::Value::as_u64);
                match version {
                    Some(v) => println!("{key} = {value} (version {v})"),
                    None => println!("{key} = {value}"),
                }
            }
        }
        if self.json {
            print_json(&serde_json::Value::Array(results))?;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `keel client get [KEY]`: from the primary, or from the node given with `--node`
    /// (a standby's answer may be a moment behind).
    async fn get(&self, key: Option<&str>) -> anyhow::Result<ExitCode> {
        let Some(key) = key else {
            let answer = self
                .ride(
                    &Req::get(&["v1", "kv"]),
                    "listing the keys",
                    Safety::Idempotent,
                )
                .await?;
            let list: KeyList = answer.json()?;
            if self.json {
                print_json(&serde_json::from_slice(&answer.body)?)?;
            } else if list.keys.is_empty() {
                eprintln!("{} holds no keys", answer.who());
            } else {
                let width = list
                    .keys
                    .iter()
                    .map(|k| display_width(&k.key))
                    .max()
                    .unwrap_or(0);
                for k in &list.keys {
                    println!("{:width$}  (version {})", k.key, k.version);
                }
            }
            return Ok(ExitCode::SUCCESS);
        };
        let answer = self
            .ride(
                &Req::get(&["v1", "kv", key]),
                &format!("reading {key:?}"),
                Safety::Idempotent,
            )
            .await?;
        if self.json {
            let version = answer
                .etag
                .as_deref()
                .and_then(|t| t.trim_matches('"').parse::<u64>().ok());
            print_json(&json!({
                "key": key,
                "value": String::from_utf8_lossy(&answer.body),
                "version": version,
            }))?;
        } else {
            // The value's bytes as stored, so `get` can be piped.
            let mut out = std::io::stdout().lock();
            out.write_all(&answer.body)?;
            if !answer.body.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `keel client incr NAME [--by N]`.
    async fn incr(&self, name: &str, by: i64) -> anyhow::Result<ExitCode> {
        update::check_key(name).map_err(|r| anyhow!("bad counter name {name:?}: {r}"))?;
        let mut req = Req::new(Method::POST, &["v1", "counters", name, "incr"]);
        req.query.push(("by", by.to_string()));
        // Never sent twice when its outcome is unknown: an increment applied twice counts
        // twice.
        let answer = self
            .ride(&req, &format!("incrementing {name:?}"), Safety::Once)
            .await?;
        let body: serde_json::Value = answer.json()?;
        if self.json {
            print_json(&body)?;
        } else {
            let value = body
                .get("value")
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| {
                    anyhow!("{} answered without a counter value: {body}", answer.who())
                })?;
            println!("{value}");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The admin token and where it came from: `--token-file`, else `KEEL_TOKEN`, else
    /// `./keel-data/admin.token` (where a `keel up` in this directory put it).
    fn load_token(&self) -> anyhow::Result<(Token, String)> {
        if let Some(path) = &self.token_file {
            return Ok((Token::from_file(path)?, path.display().to_string()));
        }
        if let Ok(value) = std::env::var("KEEL_TOKEN") {
            return Ok((Token::new(&value, "KEEL_TOKEN")?, "KEEL_TOKEN".to_owned()));
        }
        let default = Path::new(DEFAULT_TOKEN_PATH).join(TOKEN_FILE_NAME);
        if default.exists() {
            return Ok((Token::from_file(&default)?, default.display().to_string()));
        }
        bail!(
            "no admin token: pass --token-file FILE or set KEEL_TOKEN \
             (`keel up` writes one to <data-dir>/{TOKEN_FILE_NAME}; {} does not exist)",
            default.display()
        )
    }
}
