//! The HTTP API of `docs/api.md`.
//!
//! Handlers stay thin: parse and check the request, hand writes to the writer, map the
//! answer to a status and a JSON body. A middleware stamps every answer with the
//! `Keel-*` headers. Every rejection an extractor can produce (body too large, bad path,
//! bad query) is turned into the same JSON error shape as the handlers' own errors.

// Handlers return `Result<Response, Response>`: the error side is a finished answer built
// once per failed request, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use keel_client::Written;
use keel_client::node::{Counter, KeyList, KeyVersion};
use keel_core::headers::{KEEL_EPOCH, KEEL_LSN, KEEL_NODE, KEEL_ROLE, KEEL_TABLE_VERSION};
use keel_core::slots::GroupId;
use keel_core::{ApiError, Lsn};
use keel_store::{Command, Expect, Outcome, Rejection, Storage};
use serde::Deserialize;
use serde_json::json;

use crate::config::MAX_BODY;
use crate::repl::receiver;
use crate::shared::Shared;
use crate::update::{self, check_key};
use crate::writer::{self, WriteError};

/// The node's router.
pub fn router(shared: Arc<Shared>) -> Router {
    let routes = Router::new()
        .route("/v1/entries", get(get_entries).patch(patch_entries))
        .route("/v1/kv", get(list_kv))
        .route("/v1/kv/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/v1/counters/{name}", get(get_counter))
        .route("/v1/counters/{name}/incr", post(incr))
        .route("/v1/replication", get(receiver::accept))
        .route("/v1/slots/export", get(crate::moves::export))
        .route(
            "/v1/slots/import",
            post(crate::moves::import).layer(DefaultBodyLimit::max(keel_http::MAX_SIGNED_BODY)),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/kill", post(kill));
    let guard = shared.guard.clone();
    let routes = keel_http::json_fallbacks(routes, "docs/api.md")
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared.clone());
    // The stamp goes outside the guard: a refused credential is answered by this node too.
    keel_http::guarded(routes, guard).layer(middleware::from_fn_with_state(shared, stamp))
}

pub use keel_http::error_response;

type Answer = Result<Response, Response>;

fn bad_request(code: &str, message: impl Into<String>) -> Response {
    error_response(StatusCode::BAD_REQUEST, ApiError::new(code, message))
}

/// Adds the `Keel-*` headers to every answer (a write's own `Keel-Lsn` is kept).
async fn stamp(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let status = shared.store.status();
    let role = shared.role();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(shared.config.id.as_str()) {
        h.insert(KEEL_NODE, v);
    }
    h.insert(KEEL_ROLE, HeaderValue::from_static(role.role.as_str()));
    h.insert(KEEL_EPOCH, HeaderValue::from(status.epoch.0));
    if !h.contains_key(KEEL_LSN) {
        h.insert(KEEL_LSN, HeaderValue::from(status.last.lsn.0));
    }
    // A write names the version its claim used ([`SlotClaim::stamp`]); the rest the
    // version held now.
    let table = shared.slots_version();
    if table > 0 && !h.contains_key(KEEL_TABLE_VERSION) {
        h.insert(KEEL_TABLE_VERSION, HeaderValue::from(table));
    }
    resp
}

/// `421 Misdirected Request` for a key whose slot another group owns, naming the owner
/// and the table's version (Redis Cluster's `MOVED`, in JSON; docs/shards.md).
fn owned(shared: &Shared, key: &str) -> Result<(), Response> {
    shared.owns(key).map_err(|m| {
        error_response(
            StatusCode::MISDIRECTED_REQUEST,
            ApiError::new(
                "wrong_group",
                format!(
                    "slot {} (key {key:?}) is {}'s in table version {}",
                    m.slot, m.owner, m.version
                ),
            )
            .with("slot", m.slot.0)
            .with("group", m.owner.as_str())
            .with("version", m.version),
        )
    })
}

/// How long a write to a slot frozen by a move waits for the move to end before it is
/// refused with `503 slot_moving`: a move's pause is a few heartbeats.
const HOLD_FOR_MOVE: Duration = Duration::from_secs(3);

/// Starts a write to `key` (docs/shards.md): `421 wrong_group` when another group owns
/// its slot; while a move freezes the slot, the write waits (up to [`HOLD_FOR_MOVE`]) for
/// the move to end, then is taken here or answered `421` naming the slot's new owner.
async fn claim_write(
    shared: &Arc<Shared>,
    key: &str,
) -> Result<crate::shared::SlotClaim, Response> {
    let mut hold = Hold::new();
    loop {
        match shared.claim(key) {
            Ok(claim) => return Ok(claim),
            Err(crate::shared::Unclaimed::Misdirected(_)) => {
                owned(shared, key)?;
            }
            Err(crate::shared::Unclaimed::Frozen { slot, to }) => {
                // A node that takes no write now (a standby, a primary being replaced)
                // says so at once rather than after a move's pause.
                if let Some(refusal) = writer::refusal(shared) {
                    return Err(write_failed(refusal));
                }
                if !hold.wait(shared).await {
                    return Err(slot_moving(slot, key, to.as_ref(), true));
                }
            }
        }
    }
}

/// A read of `key`: `421 wrong_group` when another group owns its slot. A slot in a
/// move, out of this node's group or into it, waits (up to [`HOLD_FOR_MOVE`]) for the
/// move to end: the source cannot know the moment the switch commits, after which a
/// read it answered could miss a write the target took; the target owns the slot only
/// from then (a router that read the new table sent the read ahead of it).
async fn owned_now(shared: &Arc<Shared>, key: &str) -> Result<(), Response> {
    let mut hold = Hold::new();
    while let Some((slot, to)) = shared.in_move(key) {
        if !hold.wait(shared).await {
            return Err(slot_moving(slot, key, Some(&to), false));
        }
    }
    owned(shared, key)
}

/// `503 slot_moving`: the key's slot is in a move that did not end within
/// [`HOLD_FOR_MOVE`]. A write refused so says nothing was written.
fn slot_moving(slot: u16, key: &str, to: Option<&GroupId>, write: bool) -> Response {
    let whither = to.map(|g| format!(" to {g}")).unwrap_or_default();
    let mut error = ApiError::new(
        "slot_moving",
        format!(
            "slot {slot} (key {key:?}) is moving{whither}; {}retry shortly",
            if write { "nothing was written, " } else { "" }
        ),
    )
    .with("slot", slot);
    if write {
        error = error.with("written", Written::No.to_json());
    }
    (
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        error_response(StatusCode::SERVICE_UNAVAILABLE, error),
    )
        .into_response()
}

/// A request waiting out a move, up to [`HOLD_FOR_MOVE`] from its start. It follows the
/// slots' changes only once it has to wait: the requests that never do (all of them,
/// but during a move) pay nothing for it.
struct Hold {
    deadline: tokio::time::Instant,
    changed: Option<tokio::sync::watch::Receiver<u64>>,
}

impl Hold {
    fn new() -> Hold {
        Hold {
            deadline: tokio::time::Instant::now() + HOLD_FOR_MOVE,
            changed: None,
        }
    }

    /// Waits for the slots to change; false once the time is up. The first call only
    /// starts following them and returns at once, so the caller looks again: a change
    /// between its first look and now is not missed.
    async fn wait(&mut self, shared: &Shared) -> bool {
        match self.changed.as_mut() {
            None => {
                self.changed = Some(shared.slots_watch());
                tokio::time::Instant::now() < self.deadline
            }
            Some(changed) => matches!(
                tokio::time::timeout_at(self.deadline, changed.changed()).await,
                Ok(Ok(()))
            ),
        }
    }
}

/// The key the entries map is kept under in the key space: all of it lives in one group.
const ENTRIES_KEY: &str = "entries";

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|rejection| keel_http::body_rejection(rejection, MAX_BODY, "bad_body"))
}

fn key(path: Result<Path<String>, PathRejection>) -> Result<String, Response> {
    let Path(key) = path.map_err(|r| bad_request("bad_path", r.body_text()))?;
    check_key(&key).map_err(|reason| bad_request("bad_key", reason))?;
    Ok(key)
}

fn read_failed(e: keel_store::StoreError) -> Response {
    tracing::error!(error = %e, "read failed");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        ApiError::new("storage_failure", e.to_string()),
    )
}

/// Runs a blocking store read off the async threads, if this node may answer reads.
///
/// A primary under a monitor answers reads only while it holds its lease: without it, it
/// may already have been replaced and its answer would be stale without saying so. (A
/// standby's reads are stale by nature and say so in their `Keel-Role`.) And a primary
/// shows a value only once everything it may include is on its sync standbys: a write
/// durable here alone may still be undone by a failover, and a client that saw it would
/// have seen a write that never happened.
async fn read<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn Storage) -> Result<T, keel_store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    if !shared.is_primary() {
        return read_store(shared, f).await;
    }
    // A primary being replaced (even one draining for a switchover, whose successor
    // takes over without waiting out a lease) must not answer as if it were current.
    if let Some(f) = shared.failover() {
        return Err(write_failed(WriteError::FailoverInProgress {
            to: Some(f.to.to_string()),
        }));
    }
    if !shared.lease_valid(tokio::time::Instant::now()) {
        return Err(write_failed(WriteError::NoLease));
    }
    let value = read_store(shared, f).await?;
    // Every entry the value may show was decided by now.
    let index = shared.machine().log_end();
    let waited = shared.config.sync_timeout;
    if !shared.wait_replicated(index, waited).await {
        return Err(write_failed(WriteError::Unreplicated {
            lsn: index,
            waited,
        }));
    }
    Ok(value)
}

/// Runs a blocking store read off the async threads, unconditionally.
async fn read_store<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn Storage) -> Result<T, keel_store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r.map_err(read_failed),
        Err(e) => Err(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::new("storage_failure", e.to_string()),
        )),
    }
}

/// Sends a command through the writer and maps failures to answers; returns the
/// outcome and the write's lsn.
async fn write(shared: &Arc<Shared>, command: Command) -> Result<(Lsn, Outcome), Response> {
    match writer::submit(shared, command).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(rejection)) => Err(rejected(rejection)),
        Err(e) => Err(write_failed(e)),
    }
}

fn rejected(rejection: Rejection) -> Response {
    let message = rejection.to_string();
    match rejection {
        Rejection::VersionMismatch { current } => {
            let mut e = ApiError::new("version_mismatch", message);
            if let Some(v) = current {
                e = e.with("current_version", v);
            }
            error_response(StatusCode::PRECONDITION_FAILED, e)
        }
        Rejection::NotFound => {
            error_response(StatusCode::NOT_FOUND, ApiError::new("not_found", message))
        }
        Rejection::Overflow { .. } => error_response(
            StatusCode::CONFLICT,
            ApiError::new("counter_overflow", message),
        ),
    }
}

fn write_failed(e: WriteError) -> Response {
    let message = e.to_string();
    let retry_after = [(header::RETRY_AFTER, HeaderValue::from_static("1"))];
    match e {
        WriteError::NotPrimary { primary } => {
            let mut err = ApiError::new("not_primary", match &primary {
                Some(url) => format!("this node is a standby and does not take writes; send writes to the primary at {url}"),
                None => "this node is a standby and does not take writes; no primary is connected to it".to_owned(),
            });
            if let Some(url) = primary {
                err = err.with("primary", url);
            }
            error_response(StatusCode::MISDIRECTED_REQUEST, err)
        }
        WriteError::FailoverInProgress { to } => {
            // Refused before anything was written, like every 503 here that says so.
            let mut err = ApiError::new("failover_in_progress", message)
                .with("written", Written::No.to_json());
            if let Some(to) = to {
                err = err.with("promoting", to);
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                retry_after,
                axum::Json(err),
            )
                .into_response()
        }
        WriteError::NoLease => (
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            axum::Json(ApiError::new("no_lease", message).with("written", Written::No.to_json())),
        )
            .into_response(),
        WriteError::LeaseLapsed { lsn } => (
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            axum::Json(
                ApiError::new("lease_lapsed", message)
                    .with("written", Written::Unknown.to_json())
                    .with("lsn", lsn.0),
            ),
        )
            .into_response(),
        WriteError::Fenced { epoch, committed } => {
            let mut err = ApiError::new("fenced", message).with("epoch", epoch.0);
            err = match committed {
                Some(lsn) => err
                    .with("written", Written::Unknown.to_json())
                    .with("lsn", lsn.0),
                None => err.with("written", Written::No.to_json()),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                retry_after,
                axum::Json(err),
            )
                .into_response()
        }
        WriteError::SyncUnavailable { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            axum::Json(
                ApiError::new("sync_standby_unavailable", message)
                    .with("written", Written::No.to_json()),
            ),
        )
            .into_response(),
        WriteError::ReplicationTimeout { lsn, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            axum::Json(
                ApiError::new("replication_timeout", message)
                    .with("written", Written::Unknown.to_json())
                    .with("lsn", lsn.0),
            ),
        )
            .into_response(),
        WriteError::Unreplicated { lsn, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            axum::Json(ApiError::new("not_replicated", message).with("lsn", lsn.0)),
        )
            .into_response(),
        WriteError::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            axum::Json(ApiError::new("shutting_down", message)),
        )
            .into_response(),
        WriteError::Store(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::new("storage_failure", message),
        ),
    }
}

fn with_lsn(mut resp: Response, lsn: Lsn) -> Response {
    resp.headers_mut()
        .insert(KEEL_LSN, HeaderValue::from(lsn.0));
    resp
}

fn etag(version: u64) -> (header::HeaderName, String) {
    (header::ETAG, format!("\"{version}\""))
}

async fn get_entries(State(shared): State<Arc<Shared>>) -> Answer {
    owned_now(&shared, ENTRIES_KEY).await?;
    let entries = read(&shared, |s| s.entries()).await?;
    Ok(axum::Json(entries).into_response())
}

async fn patch_entries(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Answer {
    let claim = claim_write(&shared, ENTRIES_KEY).await?;
    let raw = body(raw)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let pairs = match content_type.as_str() {
        "application/json" => update::parse_json(&raw),
        "text/plain" => match std::str::from_utf8(&raw) {
            Ok(text) => update::parse_lines(text),
            Err(e) => return Err(bad_request("bad_update_line", format!("the body is not UTF-8 text: {e}"))),
        },
        other => {
            return Err(error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ApiError::new(
                    "unsupported_media_type",
                    format!(
                        "send the update as application/json (an object of strings) or text/plain (key=value lines), not {:?}; with curl add -H 'Content-Type: text/plain'",
                        if other.is_empty() { "no Content-Type" } else { other }
                    ),
                ),
            ));
        }
    }
    .map_err(|e| bad_request(e.code(), e.to_string()))?;
    let (lsn, _) = write(&shared, Command::Merge(pairs)).await?;
    // The write is acknowledged: answer with the map whatever happened since (a lease or
    // a failover check here would report an acknowledged write as not written).
    let entries = read_store(&shared, |s| s.entries()).await?;
    Ok(claim.stamp(with_lsn(axum::Json(entries).into_response(), lsn)))
}

/// `GET /v1/kv`: every key; in a group, only the keys of the slots the group owns (a
/// slot moved away may leave its keys behind until it moves back, never served).
async fn list_kv(State(shared): State<Arc<Shared>>) -> Answer {
    let keys = read(&shared, |s| s.kv_keys()).await?;
    let held = shared.held_slots();
    let keys = keys
        .into_iter()
        .filter(|(key, _)| {
            held.as_ref()
                .is_none_or(|(mine, table)| table.owner_of(key.as_bytes()) == mine)
        })
        .map(|(key, version)| KeyVersion { key, version })
        .collect();
    Ok(axum::Json(KeyList {
        keys,
        group: held.as_ref().map(|(mine, _)| mine.to_string()),
        table_version: held.as_ref().map(|(_, table)| table.version()),
        merged: None,
    })
    .into_response())
}

async fn get_kv(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let key = key(path)?;
    owned_now(&shared, &key).await?;
    let lookup = key.clone();
    match read(&shared, move |s| s.kv_get(&lookup)).await? {
        Some((version, value)) => Ok((
            [
                etag(version),
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            ],
            value,
        )
            .into_response()),
        None => Err(error_response(
            StatusCode::NOT_FOUND,
            ApiError::new("not_found", format!("no key {key:?}")),
        )),
    }
}

/// Reads `If-Match` / `If-None-Match` into a precondition.
fn expect(headers: &HeaderMap) -> Result<Expect, Response> {
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        return match v.to_str().map(str::trim) {
            Ok("*") => Ok(Expect::Absent),
            _ => Err(bad_request(
                "bad_precondition",
                "If-None-Match takes only \"*\" (create if absent)",
            )),
        };
    }
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(Expect::Any);
    };
    let text = v.to_str().unwrap_or("").trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<u64>().map(Expect::Version).map_err(|_| {
        bad_request(
            "bad_precondition",
            format!("If-Match takes a version number (the ETag of a read), not {text:?}"),
        )
    })
}

async fn put_kv(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Answer {
    let key = key(path)?;
    let claim = claim_write(&shared, &key).await?;
    let expect = expect(&headers)?;
    let value = body(raw)?.to_vec();
    let (lsn, outcome) = write(
        &shared,
        Command::Put {
            key: key.clone(),
            value,
            expect,
        },
    )
    .await?;
    let version = match outcome {
        Outcome::Put { version } => version,
        _ => lsn.0,
    };
    Ok(claim.stamp(with_lsn(
        (
            [etag(version)],
            axum::Json(json!({"key": key, "version": version})),
        )
            .into_response(),
        lsn,
    )))
}

async fn delete_kv(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Answer {
    let key = key(path)?;
    let claim = claim_write(&shared, &key).await?;
    let expect = expect(&headers)?;
    if expect == Expect::Absent {
        return Err(bad_request(
            "bad_precondition",
            "If-None-Match does not apply to DELETE",
        ));
    }
    let (lsn, _) = write(
        &shared,
        Command::Delete {
            key: key.clone(),
            expect,
        },
    )
    .await
    .map_err(|r| {
        if r.status() == StatusCode::NOT_FOUND {
            error_response(
                StatusCode::NOT_FOUND,
                ApiError::new("not_found", format!("no key {key:?}")),
            )
        } else {
            r
        }
    })?;
    Ok(claim.stamp(with_lsn(
        axum::Json(json!({"key": key, "deleted": true, "version": lsn.0})).into_response(),
        lsn,
    )))
}

#[derive(Deserialize)]
struct IncrParams {
    by: Option<i64>,
}

async fn incr(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<IncrParams>, QueryRejection>,
) -> Answer {
    let name = key(path)?;
    let claim = claim_write(&shared, &name).await?;
    let Query(params) = query.map_err(|r| {
        bad_request(
            "bad_query",
            format!("{}; use ?by=N with N a whole number", r.body_text()),
        )
    })?;
    let by = params.by.unwrap_or(1);
    let (lsn, outcome) = write(
        &shared,
        Command::Incr {
            name: name.clone(),
            by,
        },
    )
    .await?;
    let value = match outcome {
        Outcome::Counter { value } => value,
        _ => 0,
    };
    Ok(claim.stamp(with_lsn(
        axum::Json(Counter { name, value }).into_response(),
        lsn,
    )))
}

async fn get_counter(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let name = key(path)?;
    owned_now(&shared, &name).await?;
    let lookup = name.clone();
    let value = read(&shared, move |s| s.counter(&lookup)).await?;
    Ok(axum::Json(Counter { name, value }).into_response())
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.store.status();
    let role = shared.role();
    let standbys: Vec<_> = shared
        .links()
        .iter()
        .map(|l| {
            let acked = l.acked;
            json!({
                "url": l.url,
                "node": l.node,
                "state": l.state,
                "sync": l.sync,
                "acked_lsn": acked.0,
                "lag": status.last.lsn.0.saturating_sub(acked.0),
            })
        })
        .collect();
    axum::Json(json!({
        "node": shared.config.id,
        "role": role.role,
        "epoch": status.epoch.0,
        "lsn": status.last.lsn.0,
        "first_lsn": status.first_lsn().0,
        "snapshot_lsn": status.snapshot.lsn.0,
        "mode": if shared.config.sync { "sync" } else { "async" },
        "primary": role.primary,
        "fenced_by": role.fenced_by.map(|e| e.0),
        "monitor": shared.config.monitor,
        "lease": shared.monitored().then(|| shared.lease_valid(tokio::time::Instant::now())),
        "failover": shared.failover(),
        "standbys": standbys,
    }))
    .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&shared),
    )
        .into_response()
}

async fn kill(
    State(shared): State<Arc<Shared>>,
    signed: Option<axum::Extension<keel_auth::Principal>>,
) -> Answer {
    shared
        .guard
        .require_admin(signed.as_ref().map(|axum::Extension(p)| p))?;
    tracing::warn!("killed through /admin/kill");
    // Leave the answer a moment to go out, then die as abruptly as kill -9 would: no
    // draining, no flushing, nothing a real crash would get to do.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::exit(137);
    });
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"killed": shared.config.id, "message": "the process ends now"})),
    )
        .into_response())
}
