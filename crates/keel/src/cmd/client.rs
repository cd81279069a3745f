//! `keel client`: the failover seed's client (`-get_state`, `-update -file`,
//! `-kill-primary`) made real, plus the key/value space and counters.
//!
//! Every command starts from one node (`--node`) and finds the others through the API:
//! a standby names its primary (`/health` `primary`, or a 421's `primary` field) and the
//! primary lists its standbys (`/health` `standbys[].url`). Writes sent to a standby are
//! followed once to the primary it names. Failures become messages a person can act on;
//! the exit code is non-zero whenever something did not happen.

mod conn;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use keel_core::token::{TOKEN_FILE_NAME, Token};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::cli::{ClientArgs, ClientCommand, StateWhich};
use conn::{Conn, Health, Req, normalize_url};
use keel_node::update::{self, UpdateError};

/// Where `keel up` writes the token when run with its default data dir.
const DEFAULT_TOKEN_PATH: &str = "./keel-data";

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
    /// The node given with `--node`, without a trailing `/`.
    node: String,
    json: bool,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct KeyList {
    keys: Vec<KeyVersion>,
}

#[derive(Debug, Deserialize)]
struct KeyVersion {
    key: String,
    version: u64,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        Ok(Client {
            conn: Conn::new(args.timeout)?,
            node: normalize_url(&args.node)?,
            json: args.json,
            token_file: args.token_file.clone(),
        })
    }

    async fn run(&self, command: ClientCommand) -> anyhow::Result<ExitCode> {
        match command {
            ClientCommand::State { which } => self.state(which).await,
            ClientCommand::Update { file } => self.update(&file).await,
            ClientCommand::Set { pairs } => self.set(&pairs).await,
            ClientCommand::Get { key } => self.get(key.as_deref()).await,
            ClientCommand::Incr { name, by } => self.incr(&name, by).await,
            ClientCommand::KillPrimary => self.kill_primary().await,
        }
    }

    /// The primary's URL and health, found from the node at `base` (whose health is
    /// `health`): the node itself when it is primary, else the primary it names.
    async fn locate_primary(&self, base: &str, health: Health) -> anyhow::Result<(String, Health)> {
        if health.role == "primary" {
            return Ok((base.to_owned(), health));
        }
        let Some(primary) = health.primary.as_deref().filter(|p| !p.is_empty()) else {
            bail!(
                "{} at {base} is a {} and does not know its primary (no primary is connected to it); \
                 pass the primary's URL with --node",
                health.node,
                health.role
            );
        };
        let primary = normalize_url(primary)?;
        let found = self
            .conn
            .health(&primary)
            .await
            .with_context(|| format!("{} names {primary} as its primary", health.node))?;
        if found.role != "primary" {
            bail!(
                "{} names {primary} as its primary, but {} there is a {}; a failover may be under way, try again",
                health.node,
                found.node,
                found.role
            );
        }
        Ok((primary, found))
    }

    async fn primary(&self) -> anyhow::Result<(String, Health)> {
        let health = self.conn.health(&self.node).await?;
        self.locate_primary(&self.node, health).await
    }

    /// `keel client state primary|standby|all`.
    async fn state(&self, which: StateWhich) -> anyhow::Result<ExitCode> {
        let given = self.conn.health(&self.node).await?;
        let given_is_standby = given.role != "primary";
        let targets: Vec<String> = match (self.locate_primary(&self.node, given).await, which) {
            (Ok((url, _)), StateWhich::Primary) => vec![url],
            (Ok((url, health)), which) => {
                let standbys = health
                    .standbys
                    .iter()
                    .map(|s| s.url.trim_end_matches('/').to_owned());
                let mut targets: Vec<String> = match which {
                    StateWhich::All => std::iter::once(url).chain(standbys).collect(),
                    _ => standbys.collect(),
                };
                targets.dedup();
                if targets.is_empty() {
                    eprintln!("the primary at {} has no standbys", self.node);
                }
                targets
            }
            // Without a primary a standby can still show what it holds (the seed's
            // `-get_state=standby` after the primary was killed).
            (Err(e), StateWhich::Standby | StateWhich::All) if given_is_standby => {
                eprintln!("warning: {e:#}; showing {} only", self.node);
                vec![self.node.clone()]
            }
            (Err(e), _) => return Err(e),
        };

        let mut failed = false;
        let mut shown = Vec::new();
        for (i, base) in targets.iter().enumerate() {
            let result = self.conn.call(base, &Req::get(&["v1", "entries"])).await;
            let result = result.and_then(|a| {
                let entries: BTreeMap<String, String> = a.json()?;
                Ok((a, entries))
            });
            match result {
                Ok((answer, entries)) if self.json => shown.push(json!({
                    "url": base,
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
                    failed = true;
                    if self.json {
                        shown.push(json!({"url": base, "error": format!("{e:#}")}));
                    }
                    eprintln!("keel: {e:#}");
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
        let answer = self.conn.write(&self.node, &req).await?;
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
        let mut base = self.node.clone();
        let mut results = Vec::new();
        for (key, value) in checked {
            let mut req = Req::new(Method::PUT, &["v1", "kv", key]);
            req.body = Some(("application/octet-stream", value.as_bytes().to_vec()));
            let answer = self
                .conn
                .write(&base, &req)
                .await
                .with_context(|| format!("setting {key:?}"))?;
            // After a 421 was followed, the rest goes straight to the primary.
            base.clone_from(&answer.base);
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

    /// `keel client get [KEY]`: reads go to the node given (a standby's may be stale).
    async fn get(&self, key: Option<&str>) -> anyhow::Result<ExitCode> {
        let Some(key) = key else {
            let answer = self.conn.call(&self.node, &Req::get(&["v1", "kv"])).await?;
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
            .conn
            .call(&self.node, &Req::get(&["v1", "kv", key]))
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
        let answer = self.conn.write(&self.node, &req).await?;
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

    /// `keel client kill-primary`: POST /admin/kill to the primary, then watch it go.
    async fn kill_primary(&self) -> anyhow::Result<ExitCode> {
        let (token, origin) = self.load_token()?;
        let (primary, health) = self.primary().await?;
        let mut req = Req::new(Method::POST, &["admin", "kill"]);
        req.bearer = Some(token.secret().to_owned());
        let answer = self.conn.send(&primary, &req).await?;
        match answer.status {
            StatusCode::UNAUTHORIZED => bail!(
                "the admin token (from {origin}) was refused by {}: check --token-file or KEEL_TOKEN",
                answer.who()
            ),
            StatusCode::FORBIDDEN => bail!(
                "{}; start the nodes with --token-file, as `keel up` does",
                answer.failure()
            ),
            s if s.is_success() => {}
            _ => return Err(answer.failure()),
        }
        // The node ends "at once" but after its answer went out: wait until it stops
        // answering, so that the next command sees it gone.
        let deadline = Instant::now() + Duration::from_secs(3);
        let gone = loop {
            if self
                .conn
                .send(&primary, &Req::get(&["health"]))
                .await
                .is_err()
            {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        if self.json {
            print_json(&json!({"killed": health.node, "url": primary, "gone": gone}))?;
        } else if gone {
            println!("killed {} (the primary) at {primary}", health.node);
        } else {
            eprintln!(
                "{} at {primary} accepted the kill but still answers after 3 s",
                health.node
            );
            return Ok(ExitCode::FAILURE);
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

/// Prints a map as aligned `key = value` lines, sorted by key.
fn print_map(entries: &BTreeMap<String, String>) {
    if entries.is_empty() {
        println!("  (no entries)");
        return;
    }
    let width = entries.keys().map(|k| display_width(k)).max().unwrap_or(0);
    for (key, value) in entries {
        println!("  {key:width$} = {}", printable(value));
    }
}

/// A value with control characters escaped, so that one entry stays on one line.
fn printable(value: &str) -> String {
    if value.chars().any(char::is_control) {
        value.escape_debug().to_string()
    } else {
        value.to_owned()
    }
}

/// Width for alignment: characters, not bytes, so accented keys line up.
fn display_width(s: &str) -> usize {
    s.chars().count()
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_in_values() {
        assert_eq!(printable("a\r\nb"), "a\\r\\nb");
        assert_eq!(printable("plain"), "plain");
    }
}
