//! The node's half of a slot move (docs/shards.md): the source group's primary exports
//! the frozen slots' data, the target group's primary imports it through its own log.
//! Both are member routes, called by the monitor that drives the move.
//!
//! - `GET /v1/slots/export?since=N[&after_kv=K | &after_counter=C]`: only while the
//!   table held freezes slots of this node's group at version `N`, and once no write to
//!   them is under way here (every write that was claimed before the freeze has been
//!   answered), so the export holds every acknowledged write of the slots. It answers one
//!   piece ([`SlotData`]): the slots' keys after the mark given, in order, up to about
//!   [`PIECE_BYTES`]; the piece's `upto` is where the next starts.
//! - `POST /v1/slots/import` ([`SlotData`]): only while the table held has that move
//!   under way to this node's group. The piece's keys are written as they are at the
//!   source and the keys of its stretch the source does not have are removed, each
//!   through the log (synchronously replicated, as any write); the answer comes once all
//!   are durable. Writes to the slots wait while an import runs, so a late copy can never
//!   overwrite a newer write.

#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use keel_client::node::{ENTRIES_KEY, KvItem, Mark, SlotData};
use keel_core::ApiError;
use keel_core::slots::{Moving, Slot, format_slots, slot_of};
use keel_http::error_response;
use keel_store::{Command, Expect, Storage};
use serde::Deserialize;

use crate::shared::Shared;

/// How long an export waits for the writes under way to its slots to be answered.
const DRAIN: Duration = Duration::from_secs(5);

/// About how many bytes of keys and values a piece of an export holds: a piece is sent
/// once it holds this many, so it holds at most one value more (a value is at most a
/// write's 1 MiB body, and a piece must stay under a signed request's limit).
pub const PIECE_BYTES: usize = 256 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    since: u64,
    /// The piece starts after this kv key.
    after_kv: Option<String>,
    /// The piece starts after this counter.
    after_counter: Option<String>,
}

impl ExportParams {
    fn after(self) -> Result<Option<Mark>, Response> {
        match (self.after_kv, self.after_counter) {
            (Some(_), Some(_)) => Err(refused(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "give after_kv or after_counter, not both: a piece starts after one mark"
                    .to_owned(),
            )),
            (Some(key), None) => Ok(Some(Mark::Kv(key))),
            (None, Some(name)) => Ok(Some(Mark::Counter(name))),
            (None, None) => Ok(None),
        }
    }
}

fn refused(status: StatusCode, code: &str, message: String) -> Response {
    error_response(status, ApiError::new(code, message))
}

fn busy(message: String) -> Response {
    (
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        refused(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message),
    )
        .into_response()
}

/// Refuses unless this node is a primary that may answer now.
fn primary_only(shared: &Shared) -> Result<(), Response> {
    if !shared.is_primary() || shared.failover().is_some() {
        return Err(refused(
            StatusCode::MISDIRECTED_REQUEST,
            "not_primary",
            "only a group's primary exports or imports slots".to_owned(),
        ));
    }
    if !shared.lease_valid(tokio::time::Instant::now()) {
        return Err(busy(
            "this primary's lease has lapsed; it answers nothing now".to_owned(),
        ));
    }
    Ok(())
}

/// `GET /v1/slots/export?since=N`.
pub async fn export(
    State(shared): State<Arc<Shared>>,
    signed: Option<axum::Extension<keel_auth::Principal>>,
    query: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, Response> {
    shared
        .guard
        .require_member(signed.as_ref().map(|axum::Extension(p)| p), None)?;
    let Query(params) = query.map_err(|r| {
        refused(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!(
                "{}; use ?since=N, the table version that froze the slots, and after_kv=K or after_counter=C for a piece after the first",
                r.body_text()
            ),
        )
    })?;
    let since = params.since;
    let after = params.after()?;
    primary_only(&shared)?;
    let moving = drained(&shared, since).await?;
    let reading = moving.clone();
    let data = tokio::task::spawn_blocking({
        let shared = Arc::clone(&shared);
        move || read_piece(&shared.store, &reading, after)
    })
    .await
    .map_err(|e| busy(format!("the export stopped: {e}")))?
    .map_err(|e| busy(format!("cannot read the store: {e}")))?;
    // Still primary, and the freeze still held, now that the data is read.
    primary_only(&shared)?;
    tracing::info!(slots = %format_slots(&moving.slots), keys = data.kv.len(), counters = data.counters.len(), last = data.upto.is_none(), to = %moving.to, "slots exported");
    Ok(Json(data).into_response())
}

/// The move frozen at `since`, once no write to its slots is under way.
async fn drained(shared: &Arc<Shared>, since: u64) -> Result<Moving, Response> {
    let mut changed = shared.slots_watch();
    shared
        .exporting
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + DRAIN;
    let result = loop {
        changed.borrow_and_update();
        match shared.frozen_move(since) {
            Err(why) => break Err(refused(StatusCode::CONFLICT, "not_frozen", why)),
            Ok(Some(moving)) => break Ok(moving),
            Ok(None) => {
                if tokio::time::timeout_at(deadline, changed.changed())
                    .await
                    .is_err()
                {
                    break Err(busy(format!(
                        "writes to the frozen slots were still under way after {DRAIN:?}"
                    )));
                }
            }
        }
    };
    shared
        .exporting
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    result
}

/// The piece of `moving`'s slots after `after`: their kv keys in order, then their
/// counters, until it holds [`PIECE_BYTES`]; the entries map (when its slot moves) in
/// the last piece. The slots are frozen, so the pieces read one unchanging copy.
fn read_piece(
    store: &Arc<dyn Storage>,
    moving: &Moving,
    after: Option<Mark>,
) -> Result<SlotData, keel_store::StoreError> {
    let ours = |key: &str| moving.has(slot_of(key.as_bytes()));
    let kv_past = |key: &str| match &after {
        None => true,
        Some(Mark::Kv(mark)) => key > mark.as_str(),
        Some(Mark::Counter(_)) => false,
    };
    let counter_past = |name: &str| match &after {
        None | Some(Mark::Kv(_)) => true,
        Some(Mark::Counter(mark)) => name > mark.as_str(),
    };
    let mut keys: Vec<String> = store
        .kv_keys()?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| ours(key) && kv_past(key))
        .collect();
    keys.sort_unstable();
    let mut size = 0;
    let mut last = None;
    // Whether anything is left for a next piece.
    let mut left = false;
    let mut kv = Vec::new();
    for key in keys {
        if size >= PIECE_BYTES {
            left = true;
            break;
        }
        if let Some((_, value)) = store.kv_get(&key)? {
            size += key.len() + value.len();
            kv.push(KvItem {
                key: key.clone(),
                value,
            });
        }
        last = Some(Mark::Kv(key));
    }
    let mut counters = std::collections::BTreeMap::new();
    if !left {
        for (name, value) in store.counters()? {
            if !ours(&name) || !counter_past(&name) {
                continue;
            }
            if size >= PIECE_BYTES {
                left = true;
                break;
            }
            size += name.len() + 8;
            counters.insert(name.clone(), value);
            last = Some(Mark::Counter(name));
        }
    }
    let upto = if left { last } else { None };
    let entries = if upto.is_none() && ours(ENTRIES_KEY) {
        Some(store.entries()?)
    } else {
        None
    };
    Ok(SlotData {
        since: moving.since,
        slots: format_slots(&moving.slots),
        after,
        upto,
        kv,
        counters,
        entries,
    })
}

/// `POST /v1/slots/import`.
pub async fn import(
    State(shared): State<Arc<Shared>>,
    signed: Option<axum::Extension<keel_auth::Principal>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    shared
        .guard
        .require_member(signed.as_ref().map(|axum::Extension(p)| p), None)?;
    let raw = raw.map_err(|r| refused(StatusCode::BAD_REQUEST, "bad_body", r.body_text()))?;
    let data: SlotData = serde_json::from_slice(&raw).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            "bad_slot_data",
            format!("the body is not slot data: {e}"),
        )
    })?;
    primary_only(&shared)?;
    let (_claim, moving) = shared
        .claim_import(data.since)
        .map_err(|why| busy(format!("{why}; it may not have heard of the move yet")))?;
    check_piece(&moving, &data)
        .map_err(|why| refused(StatusCode::BAD_REQUEST, "bad_slot_data", why))?;
    let upto = data.upto.clone();
    let commands = import_commands(&shared, &moving, data).await?;
    let count = commands.len();
    let writes = commands
        .into_iter()
        .map(|command| crate::writer::submit(&shared, command));
    for result in futures::future::join_all(writes).await {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(rejection)) => {
                return Err(busy(format!("an imported write was refused: {rejection}")));
            }
            Err(e) => return Err(busy(format!("an imported write failed: {e}"))),
        }
    }
    tracing::info!(slots = %format_slots(&moving.slots), writes = count, last = upto.is_none(), from = %moving.from, "slots imported");
    Ok(Json(serde_json::json!({
        "imported": format_slots(&moving.slots),
        "since": moving.since,
        "writes": count,
    }))
    .into_response())
}

/// Why `data` is not a piece of `moving` that may be imported, if it is not: every key
/// must be of the move's slots and in the piece's stretch, which must not be empty, and
/// only the last piece carries the entries map.
fn check_piece(moving: &Moving, data: &SlotData) -> Result<(), String> {
    if let (Some(after), Some(upto)) = (&data.after, &data.upto)
        && after >= upto
    {
        return Err(format!(
            "the piece ends ({upto:?}) before it starts (after {after:?})"
        ));
    }
    if data.entries.is_some() && data.upto.is_some() {
        return Err("only the last piece (no upto) carries the entries map".to_owned());
    }
    let marks = data
        .kv
        .iter()
        .map(|k| (k.key.as_str(), Mark::Kv(k.key.clone())))
        .chain(
            data.counters
                .keys()
                .map(|c| (c.as_str(), Mark::Counter(c.clone()))),
        );
    for (key, mark) in marks {
        if !moving.has(slot_of(key.as_bytes())) {
            return Err(format!(
                "key {key:?} is in slot {}, not one of the move's ({})",
                slot_of(key.as_bytes()).0,
                format_slots(&moving.slots)
            ));
        }
        if !data.covers(&mark) {
            return Err(format!("{mark:?} is outside the piece's stretch"));
        }
    }
    Ok(())
}

/// The writes that make this node's copy of the piece's stretch of the slots the
/// source's: every key and counter set as there, the keys of the stretch it does not
/// have removed, the entries map merged.
async fn import_commands(
    shared: &Arc<Shared>,
    moving: &Moving,
    mut data: SlotData,
) -> Result<Vec<Command>, Response> {
    let store = Arc::clone(&shared.store);
    let slots: Vec<Slot> = moving.slots.clone();
    let has = move |key: &str| slots.binary_search(&slot_of(key.as_bytes())).is_ok();
    let held = tokio::task::spawn_blocking(move || {
        let keys: Vec<String> = store
            .kv_keys()?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| has(k))
            .collect();
        let counters = store.counters()?;
        Ok::<_, keel_store::StoreError>((keys, counters))
    })
    .await
    .map_err(|e| busy(format!("the import stopped: {e}")))?
    .map_err(|e| busy(format!("cannot read the store: {e}")))?;
    let (keys_here, counters_here) = held;
    let mut commands = Vec::new();
    let incoming: std::collections::HashSet<&str> =
        data.kv.iter().map(|k| k.key.as_str()).collect();
    for key in keys_here {
        if !incoming.contains(key.as_str()) && data.covers(&Mark::Kv(key.clone())) {
            commands.push(Command::Delete {
                key,
                expect: Expect::Any,
            });
        }
    }
    for item in std::mem::take(&mut data.kv) {
        commands.push(Command::Put {
            key: item.key,
            value: item.value,
            expect: Expect::Any,
        });
    }
    let moved = |name: &str| moving.has(slot_of(name.as_bytes()));
    for (name, value) in &data.counters {
        let here = counters_here.get(name).copied().unwrap_or(0);
        if *value != here {
            commands.push(Command::Incr {
                name: name.clone(),
                by: value.wrapping_sub(here),
            });
        }
    }
    for (name, here) in &counters_here {
        if moved(name)
            && data.covers(&Mark::Counter(name.clone()))
            && !data.counters.contains_key(name)
            && *here != 0
        {
            commands.push(Command::Incr {
                name: name.clone(),
                by: here.wrapping_neg(),
            });
        }
    }
    if let Some(entries) = data.entries
        && !entries.is_empty()
    {
        commands.push(Command::Merge(entries));
    }
    Ok(commands)
}
