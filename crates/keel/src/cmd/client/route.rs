//! Where a request goes, and the loop that carries it through a failover.
//!
//! With the monitor, the primary is the one its view names (found the way every client
//! finds it: `keel_client::primary_of`); without it (`--node`,
//! or the default monitor not answering), the node given, and the primary a standby
//! names in a 421. [`Client::ride`] sends a request there and, on the answers that mean
//! "not now" — nothing listening, `503` with `Retry-After`, `421` — says in one line what
//! happened, asks again where the primary is and retries with capped, jittered backoff
//! that honours `Retry-After` (`keel_client::Waits`), until `--retry-for` runs out.
//!
//! The one thing it never does silently is send again a write whose outcome is unknown
//! (no answer after it was sent, or `503` with `Written::Unknown`): that is done only for
//! [`Safety::Idempotent`] requests (`keel_client::Safety`'s rule), and said; for the rest
//! the unknown outcome is the answer. What is here beyond `keel_client` is what a person
//! sees: a line for each wait, and the falling back to a node when no monitor answers.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use keel_client::outcome::Written;
use keel_client::wire::ClusterView;
pub(super) use keel_client::{Found, Safety, Target};
use keel_client::{Waits, primary_of};
use keel_core::ApiError;
use reqwest::StatusCode;

use super::conn::{Answer, Req, normalize_url};
use super::{Client, DEFAULT_NODE};

/// How requests find their node.
pub(super) struct Route {
    /// `--node`: this node, else `None` (ask the monitor).
    pub(super) node: Option<String>,
    /// The monitor's URL.
    pub(super) monitor: String,
    /// The monitor is the default one, and when it does not answer the client may turn
    /// to [`DEFAULT_NODE`].
    pub(super) may_fall_back: bool,
    /// Set once the client did turn to [`DEFAULT_NODE`].
    pub(super) fell_back: Cell<bool>,
}

impl Route {
    pub(super) fn direct(node: String) -> Route {
        Route {
            node: Some(node),
            monitor: String::new(),
            may_fall_back: false,
            fell_back: Cell::new(false),
        }
    }

    pub(super) fn monitor(url: String, may_fall_back: bool) -> Route {
        Route {
            node: None,
            monitor: url,
            may_fall_back,
            fell_back: Cell::new(false),
        }
    }

    /// The node to talk to directly, when the monitor is not asked.
    pub(super) fn direct_node(&self) -> Option<&str> {
        match &self.node {
            Some(node) => Some(node),
            None if self.fell_back.get() => Some(DEFAULT_NODE),
            None => None,
        }
    }
}

impl Client {
    /// The monitor's view; `Err` carries whether the monitor could be reached at all.
    pub(super) async fn cluster_view(
        &self,
        monitor: &str,
    ) -> Result<ClusterView, (anyhow::Error, bool)> {
        use keel_client::monitor::ClientError;
        let read = keel_client::monitor::cluster(self.conn.http(), monitor, self.conn.timeout());
        match read.await {
            Ok(view) => Ok(view),
            Err(ClientError::Unreachable { reason, .. }) => Err((
                anyhow!(
                    "cannot reach the monitor at {monitor}: {reason} — is `keel up` running? \
                     (to talk to a node directly, pass --node URL)"
                ),
                false,
            )),
            Err(ClientError::Refused { status, body, .. }) => Err((
                match serde_json::from_str::<ApiError>(&body) {
                    Ok(e) => anyhow!(
                        "the monitor at {monitor} refused: {} ({status} {})",
                        e.message,
                        e.error
                    ),
                    Err(_) => anyhow!(
                        "the monitor at {monitor} answered {status}; is that a keel monitor?"
                    ),
                },
                true,
            )),
            Err(e) => Err((
                anyhow!("{monitor} does not answer like a keel monitor: {e}"),
                true,
            )),
        }
    }

    /// Whether requests go to a node directly rather than where the monitor says.
    pub(super) fn route_is_direct(&self) -> bool {
        self.route.direct_node().is_some()
    }

    /// Where to send the next try: the primary, of the group that owns `key` under a
    /// monitor of several groups (docs/shards.md). `last` is where the previous one went.
    pub(super) async fn find_primary(
        &self,
        last: Option<&Target>,
        key: Option<&str>,
    ) -> anyhow::Result<Found> {
        if let Some(node) = self.route.direct_node() {
            return Ok(Found::Node(Target {
                name: None,
                url: node.to_owned(),
            }));
        }
        let monitor = &self.route.monitor;
        match self.cluster_view(monitor).await {
            Ok(view) if view.groups.len() > 1 && key.is_some() => {
                let key = key.unwrap_or_default();
                let (http, timeout) = (self.conn.http(), self.conn.timeout());
                let table = keel_client::monitor::slots_as(http, monitor, timeout, None)
                    .await
                    .map_err(|e| anyhow!("cannot read the slot table from {monitor}: {e}"))?;
                let group = table.owner_of(key.as_bytes());
                let view = keel_client::monitor::group_as(http, monitor, group, timeout, None)
                    .await
                    .map_err(|e| anyhow!("cannot read group {group}'s view from {monitor}: {e}"))?;
                Ok(primary_of(&view))
            }
            Ok(view) => Ok(primary_of(&view)),
            Err((e, false)) => {
                if let Some(last) = last {
                    // The data tier outlives its monitor (the primary keeps its lease
                    // through a standby), so the last primary is still the best guess.
                    eprintln!(
                        "the monitor at {monitor} does not answer; trying {} again",
                        last.label()
                    );
                    return Ok(Found::Node(last.clone()));
                }
                if self.route.may_fall_back {
                    eprintln!(
                        "note: no monitor answers at {monitor}; talking to {DEFAULT_NODE} directly \
                         (pass --monitor URL or --node URL to choose)"
                    );
                    self.route.fell_back.set(true);
                    return Ok(Found::Node(Target {
                        name: None,
                        url: DEFAULT_NODE.to_owned(),
                    }));
                }
                Err(e)
            }
            Err((e, true)) => Err(e),
        }
    }

    /// Sends `req` to the primary, riding through a failover (see the module's doc).
    /// `what` names the operation in messages ("setting \"a\"").
    pub(super) async fn ride(
        &self,
        req: &Req,
        what: &str,
        safety: Safety,
    ) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let mut backoff = Waits::new();
        // A primary named by a standby's 421, tried next without asking the monitor.
        let mut named: Option<Target> = None;
        let mut followed_421 = false;
        let mut last: Option<Target> = None;
        loop {
            let target = match named.take() {
                Some(t) => t,
                None => match self.find_primary(last.as_ref(), req.key()).await? {
                    Found::Node(t) => t,
                    Found::Wait(why) => {
                        self.pause(&mut backoff, started, what, &why, None).await?;
                        continue;
                    }
                },
            };
            last = Some(target.clone());
            let direct = self.route.direct_node().is_some();
            let answer = match self.conn.try_send(&target.url, req).await {
                Ok(answer) => answer,
                // Nothing was sent: always safe to try again, if there is anywhere else
                // to look.
                Err(u) if !u.maybe_received => {
                    if direct {
                        return Err(u.error.context(what.to_owned()));
                    }
                    let why = format!(
                        "{} unreachable ({}); asking the monitor for the primary…",
                        target.label(),
                        u.reason
                    );
                    self.pause(&mut backoff, started, what, &why, None).await?;
                    continue;
                }
                Err(u) => match safety {
                    Safety::Idempotent => {
                        let why = format!(
                            "{}: {}; it may or may not have been applied — sending it again is safe, \
                             as doing it twice is the same as once",
                            target.label(),
                            u.reason
                        );
                        self.pause(&mut backoff, started, what, &why, None).await?;
                        continue;
                    }
                    Safety::Once => bail!(
                        "{what}: {}; it may or may not have been applied, and it is not sent again \
                         because applying it twice would count twice — check the value before retrying",
                        u.error
                    ),
                },
            };
            if answer.status.is_success() {
                return Ok(answer);
            }
            let api = answer.api_error();
            let code = api.as_ref().map_or("", |e| e.error.as_str());
            if answer.status == StatusCode::MISDIRECTED_REQUEST {
                let primary = api
                    .as_ref()
                    .and_then(|e| e.details.get("primary")?.as_str())
                    .and_then(|u| normalize_url(u).ok())
                    .filter(|u| *u != target.url);
                match primary {
                    Some(url) if !followed_421 => {
                        followed_421 = true;
                        eprintln!(
                            "{} is a standby; sending the request on to the primary at {url}",
                            answer.who()
                        );
                        named = Some(Target { name: None, url });
                        continue;
                    }
                    // Twice misdirected, or no primary named: the nodes disagree, which
                    // only the monitor can settle.
                    _ if direct => {
                        return Err(answer.failure().context(what.to_owned()));
                    }
                    _ => {
                        let why = format!(
                            "{} is not the primary (any more); asking the monitor again…",
                            answer.who()
                        );
                        self.pause(&mut backoff, started, what, &why, None).await?;
                        continue;
                    }
                }
            }
            if answer.status != StatusCode::SERVICE_UNAVAILABLE {
                return Err(answer.failure().context(what.to_owned()));
            }
            let retry_after = answer.retry_after_wait;
            let written = api.as_ref().and_then(|e| Written::of(&e.details));
            if written == Some(Written::Unknown) {
                match safety {
                    Safety::Idempotent => {
                        let why = format!(
                            "{}: the outcome is unknown ({code}) — sending it again is safe, \
                             as doing it twice is the same as once",
                            answer.who()
                        );
                        self.pause(&mut backoff, started, what, &why, retry_after)
                            .await?;
                        continue;
                    }
                    Safety::Once => {
                        return Err(answer.failure().context(format!(
                            "{what}: the outcome is unknown — it is kept if {} stays primary, \
                             and it is not sent again because applying it twice would count twice; \
                             check the value before retrying",
                            answer.who()
                        )));
                    }
                }
            }
            // `fenced`: the node was deposed; only the monitor knows who replaced it.
            let retryable = retry_after.is_some() || (code == "fenced" && !direct);
            if !retryable {
                return Err(answer.failure().context(what.to_owned()));
            }
            let why = unavailable(answer.who(), code, api.as_ref());
            self.pause(&mut backoff, started, what, &why, retry_after)
                .await?;
        }
    }

    /// Waits before the next try, after saying why; fails when `--retry-for` would be
    /// over first (or the server asks to wait longer than is left).
    async fn pause(
        &self,
        backoff: &mut Waits,
        started: Instant,
        what: &str,
        why: &str,
        retry_after: Option<Duration>,
    ) -> anyhow::Result<()> {
        let left = self.retry_for.saturating_sub(started.elapsed());
        if left.is_zero() || retry_after.is_some_and(|asked| asked > left) {
            bail!(
                "{what}: {why}; gave up after {:.1} s of retrying (raise --retry-for to wait longer)",
                started.elapsed().as_secs_f64()
            );
        }
        let wait = backoff.next(retry_after, rand::random::<f64>()).min(left);
        eprintln!("{why}; retrying in {:.1} s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// One line for a `503` that asks to come back later.
fn unavailable(who: &str, code: &str, api: Option<&ApiError>) -> String {
    match code {
        "failover_in_progress" => match api.and_then(|e| e.details.get("promoting")?.as_str()) {
            Some(to) => format!("failover in progress (promoting {to})"),
            None => "failover in progress".to_owned(),
        },
        "no_lease" => format!(
            "{who} holds no lease right now (it cannot confirm it is still the primary), so it refused"
        ),
        "sync_standby_unavailable" => {
            format!("{who}'s sync standby is not connected; nothing was written")
        }
        "shutting_down" => format!("{who} is shutting down"),
        "fenced" => {
            format!("{who} was deposed by a newer epoch; asking the monitor for the primary…")
        }
        _ => match api {
            Some(e) => format!("{who}: {} ({code})", e.message),
            None => format!("{who} is unavailable"),
        },
    }
}

/// A refusal of the monitor as an error that names it (its answers carry no `Keel-Node`).
pub(super) fn monitor_refusal(monitor: &str, answer: &Answer) -> anyhow::Error {
    match answer.api_error() {
        Some(e) => anyhow!(
            "the monitor at {monitor} refused: {} ({} {})",
            e.message,
            answer.status.as_u16(),
            e.error
        ),
        None => anyhow!(
            "the monitor at {monitor} answered {}; is that a keel monitor?",
            answer.status
        ),
    }
}
