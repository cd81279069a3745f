//! The node's half of a slot move (docs/shards.md): the source group's primary exports
//! the frozen slots' data, the target group's primary imports it through its own log.
//! Both are member routes, called by the monitor that drives the move.
//!
//! - `GET /v1/slots/export?since=N`: only while the table held freezes slots of this
//!   node's group at version `N`, and once no write to them is under way here (every
//!   write that was claimed before the freeze has been answered), so the export holds
//!   every acknowledged write of the slots.
//! - `POST /v1/slots/import` ([`SlotData`]): only while the table held has that move
//!   under way to this node's group. The slots' keys are written as they are at the
//!   source and the keys the source does not have are removed, each through the log
//!   (synchronously replicated, as any write); the answer comes once all are durable.
//!   Writes to the slots wait while an import runs, so a late copy can never overwrite
//!   a newer write.

#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use keel_client::node::{ENTRIES_KEY, KvItem, SlotData};
use keel_core::ApiError;
use keel_core::slots::{Moving, Slot, format_slots, slot_of};
use keel_http::error_response;
use keel_store::{Command, Expect, Storage};
use serde::Deserialize;

use crate::shared::Shared;

/// How long an export waits for the writes under way to its slots to be answered.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub struct ExportParams {
    since: u64,
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
                "{}; use ?since=N, the table version that froze the slots",
                r.body_text()
            ),
        )
    })?;
    primary_only(&shared)?;
    let moving = drained(&shared, params.since).await?;
    let reading = moving.clone();
    let data = tokio::task::spawn_blocking({
        let shared = Arc::clone(&shared);
        move || read_slots(&shared.store, &reading)
    })
    .await
    .map_err(|e| busy(format!("the export stopped: {e}")))?
    .map_err(|e| busy(format!("cannot read the store: {e}")))?;
    // Still primary, and the freeze still held, now that the data is read.
    primary_only(&shared)?;
    tracing::info!(slots = %format_slots(&moving.slots), keys = data.kv.len(), to = %moving.to, "slots exported");
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

/// Every key, counter and (when its slot moves) the entries map of `moving`'s slots.
fn read_slots(
    store: &Arc<dyn Storage>,
    moving: &Moving,
) -> Result<SlotData, keel_store::StoreError> {
    let ours = |key: &str| moving.has(slot_of(key.as_bytes()));
    let mut kv = Vec::new();
    for (key, _) in store.kv_keys()? {
        if ours(&key)
            && let Some((_, value)) = store.kv_get(&key)?
        {
            kv.push(KvItem { key, value });
        }
    }
    let counters = store
        .counters()?
        .into_iter()
        .filter(|(name, _)| ours(name))
        .collect();
    let entries = if ours(ENTRIES_KEY) {
        Some(store.entries()?)
    } else {
        None
    };
    Ok(SlotData {
        since: moving.since,
        slots: format_slots(&moving.slots),
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
    // Every key must be of the move's slots.
    let strays: Vec<&str> = data
        .kv
        .iter()
        .map(|k| k.key.as_str())
        .chain(data.counters.keys().map(String::as_str))
        .filter(|key| !moving.has(slot_of(key.as_bytes())))
        .collect();
    if let Some(stray) = strays.first() {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "bad_slot_data",
            format!(
                "key {stray:?} is in slot {}, not one of the move's ({})",
                slot_of(stray.as_bytes()).0,
                format_slots(&moving.slots)
            ),
        ));
    }
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
    tracing::info!(slots = %format_slots(&moving.slots), writes = count, from = %moving.from, "slots imported");
    Ok(Json(serde_json::json!({
        "imported": format_slots(&moving.slots),
        "since": moving.since,
        "writes": count,
    }))
    .into_response())
}

/// The writes that make this node's copy of the slots the source's: every key and
/// counter set as there, the keys it does not have removed, the entries map merged.
async fn import_commands(
    shared: &Arc<Shared>,
    moving: &Moving,
    data: SlotData,
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
        if !incoming.contains(key.as_str()) {
            commands.push(Command::Delete {
                key,
                expect: Expect::Any,
            });
        }
    }
    for item in data.kv {
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
        if moved(name) && !data.counters.contains_key(name) && *here != 0 {
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
