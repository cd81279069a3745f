//! The node's half of a slot move (docs/shards.md): the source group's primary exports
//! the frozen slots' data, the target group's primary imports it through its own log.
//! Both are member routes, called by the monitor that drives the move.
//!
//! - `GET /v1/slots/export?since=N[&after_kv=K | &after_counter=C | &after_entry=E]`:
//!   only while the table held freezes slots of this node's group at version `N`, and
//!   once no write to them is under way here (every write that was claimed before the
//!   freeze has been answered), so the export holds every acknowledged write of the
//!   slots. It answers one piece ([`SlotData`]): the slots' keys, counters and entries
//!   after the mark given, in order, up to about [`PIECE_BYTES`]; the piece's `upto` is
//!   where the next starts.
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
use keel_core::slots::{Moving, format_slots, slot_of};
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
/// How many of the store's keys an export reads at a time, looking for the slots' own.
const KEY_PAGE: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    since: u64,
    /// The piece starts after this kv key.
    after_kv: Option<String>,
    /// The piece starts after this counter.
    after_counter: Option<String>,
    /// The piece starts after this key of the entries map.
    after_entry: Option<String>,
}

impl ExportParams {
    fn after(self) -> Result<Option<Mark>, Response> {
        match (self.after_kv, self.after_counter, self.after_entry) {
            (Some(key), None, None) => Ok(Some(Mark::Kv(key))),
            (None, Some(name), None) => Ok(Some(Mark::Counter(name))),
            (None, None, Some(key)) => Ok(Some(Mark::Entry(key))),
            (None, None, None) => Ok(None),
            _ => Err(refused(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "give one of after_kv, after_counter and after_entry: a piece starts after one mark"
                    .to_owned(),
            )),
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

/// `GET /v1/slots/export?since=N[&after_kv=K | &after_counter=C | &after_entry=E]`.
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
                "{}; use ?since=N, the table version that froze the slots, and after_kv=K, after_counter=C or after_entry=E for a piece after the first",
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
        move || read_piece(shared.store.as_ref(), &reading, after)
    })
    .await
    .map_err(|e| busy(format!("the export stopped: {e}")))?
    .map_err(|e| busy(format!("cannot read the store: {e}")))?;
    // Still primary now that the data is read (a piece read after a cancel or the
    // switch is harmless: the target imports only a move it has under way).
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

/// The store's kv keys after a mark, in order, read [`KEY_PAGE`] at a time: none after
/// a counter's or an entry's mark (every kv key comes before them).
struct KeyWalk<'a> {
    store: &'a dyn Storage,
    from: Option<String>,
    page: std::vec::IntoIter<String>,
    done: bool,
}

impl<'a> KeyWalk<'a> {
    fn after(store: &'a dyn Storage, after: Option<&Mark>) -> Self {
        let (from, done) = match after {
            Some(Mark::Kv(key)) => (Some(key.clone()), false),
            Some(Mark::Counter(_) | Mark::Entry(_)) => (None, true),
            None => (None, false),
        };
        KeyWalk {
            store,
            from,
            page: Vec::new().into_iter(),
            done,
        }
    }
}

impl Iterator for KeyWalk<'_> {
    type Item = Result<String, keel_store::StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(key) = self.page.next() {
            return Some(Ok(key));
        }
        if self.done {
            return None;
        }
        let page = match self.store.kv_keys_after(self.from.as_deref(), KEY_PAGE) {
            Ok(page) => page,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        match page.last() {
            Some(last) => self.from = Some(last.clone()),
            None => self.done = true,
        }
        self.page = page.into_iter();
        self.page.next().map(Ok)
    }
}

/// The piece of `moving`'s slots after `after`: their kv keys in order, then their
/// counters, then the entries map's entries (when its slot moves), until it holds
/// [`PIECE_BYTES`]. The slots are frozen, so the pieces read one unchanging copy.
pub fn read_piece(
    store: &dyn Storage,
    moving: &Moving,
    after: Option<Mark>,
) -> Result<SlotData, keel_store::StoreError> {
    let ours = |key: &str| moving.has(slot_of(key.as_bytes()));
    // Past the piece's start, in the walk's one order (kv keys, counters, entries).
    let past = |mark: &Mark| after.as_ref().is_none_or(|after| mark > after);
    let mut size = 0;
    let mut last = None;
    // Whether anything is left for a next piece.
    let mut left = false;
    let mut kv = Vec::new();
    // Between them, the pieces of a move read each key of the store about once (the
    // rest of a page again when a piece ends in it), however many pieces there are.
    for key in KeyWalk::after(store, after.as_ref()) {
        let key = key?;
        if !ours(&key) {
            continue;
        }
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
            if !ours(&name) || !past(&Mark::Counter(name.clone())) {
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
    let mut entries = None;
    if !left && ours(ENTRIES_KEY) {
        let mut chunk = std::collections::BTreeMap::new();
        for (key, value) in store.entries()? {
            if !past(&Mark::Entry(key.clone())) {
                continue;
            }
            if size >= PIECE_BYTES {
                left = true;
                break;
            }
            size += key.len() + value.len();
            last = Some(Mark::Entry(key.clone()));
            chunk.insert(key, value);
        }
        entries = Some(chunk);
    }
    let upto = if left { last } else { None };
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
    let commands = tokio::task::spawn_blocking({
        let store = Arc::clone(&shared.store);
        let moving = moving.clone();
        move || import_plan(store.as_ref(), &moving, data)
    })
    .await
    .map_err(|e| busy(format!("the import stopped: {e}")))?
    .map_err(|e| busy(format!("cannot read the store: {e}")))?;
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
/// entries come only with the entries map's slot.
fn check_piece(moving: &Moving, data: &SlotData) -> Result<(), String> {
    if let (Some(after), Some(upto)) = (&data.after, &data.upto)
        && after >= upto
    {
        return Err(format!(
            "the piece ends ({upto:?}) before it starts (after {after:?})"
        ));
    }
    if let Some(entries) = &data.entries {
        if !moving.has(slot_of(ENTRIES_KEY.as_bytes())) {
            return Err(format!(
                "the entries map is in slot {}, not one of the move's ({})",
                slot_of(ENTRIES_KEY.as_bytes()).0,
                format_slots(&moving.slots)
            ));
        }
        if let Some(key) = entries
            .keys()
            .find(|k| !data.covers(&Mark::Entry((*k).clone())))
        {
            return Err(format!("entry {key:?} is outside the piece's stretch"));
        }
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
/// source's: every key and counter set as there, the keys and counters of the stretch it
/// does not have removed, the entries map merged. It reads the store (only its keys of
/// the stretch, and its counters) and writes nothing.
pub fn import_plan(
    store: &dyn Storage,
    moving: &Moving,
    mut data: SlotData,
) -> Result<Vec<Command>, keel_store::StoreError> {
    let ours = |key: &str| moving.has(slot_of(key.as_bytes()));
    let mut commands = Vec::new();
    let incoming: std::collections::HashSet<String> =
        data.kv.iter().map(|k| k.key.clone()).collect();
    // The keys this node holds in the piece's stretch, from where it starts to where it
    // ends.
    for key in KeyWalk::after(store, data.after.as_ref()) {
        let key = key?;
        if let Some(Mark::Kv(upto)) = &data.upto
            && &key > upto
        {
            break;
        }
        if ours(&key) && !incoming.contains(&key) {
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
    let counters_here = store.counters()?;
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
        if ours(name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::slots::{GroupId, parse_slots};

    fn moving() -> Moving {
        Moving {
            from: GroupId::new("g1").expect("a group"),
            to: GroupId::new("g2").expect("a group"),
            slots: parse_slots("0-99").expect("slots"),
            since: 2,
        }
    }

    /// `count` keys whose slots are in 0-99.
    fn keys_in_move(count: usize) -> Vec<String> {
        (0u32..)
            .map(|i| format!("k{i}"))
            .filter(|k| slot_of(k.as_bytes()).0 < 100)
            .take(count)
            .collect()
    }

    fn piece(after: Option<Mark>, upto: Option<Mark>, keys: &[String]) -> SlotData {
        SlotData {
            since: 2,
            slots: "0-99".to_owned(),
            after,
            upto,
            kv: keys
                .iter()
                .map(|k| KvItem {
                    key: k.clone(),
                    value: b"v".to_vec(),
                })
                .collect(),
            counters: Default::default(),
            entries: None,
        }
    }

    #[test]
    fn a_piece_is_imported_only_if_its_keys_are_the_moves_and_in_its_stretch() {
        let mut keys = keys_in_move(3);
        keys.sort();
        let m = moving();
        let kv = |k: &String| Mark::Kv(k.clone());
        assert_eq!(check_piece(&m, &piece(None, None, &keys)), Ok(()));
        assert_eq!(
            check_piece(&m, &piece(None, Some(kv(&keys[2])), &keys)),
            Ok(())
        );
        let past_end = check_piece(&m, &piece(None, Some(kv(&keys[1])), &keys));
        assert!(
            past_end
                .as_ref()
                .is_err_and(|e| e.contains("outside the piece's stretch")),
            "{past_end:?}"
        );
        let before_start = check_piece(&m, &piece(Some(kv(&keys[0])), None, &keys));
        assert!(before_start.is_err(), "{before_start:?}");
        let backwards = check_piece(&m, &piece(Some(kv(&keys[2])), Some(kv(&keys[0])), &[]));
        assert!(
            backwards
                .as_ref()
                .is_err_and(|e| e.contains("before it starts")),
            "{backwards:?}"
        );
        let stray = (0u32..)
            .map(|i| format!("s{i}"))
            .find(|k| slot_of(k.as_bytes()).0 >= 100)
            .expect("a key of another slot");
        let strayed = check_piece(&m, &piece(None, None, &[stray]));
        assert!(
            strayed
                .as_ref()
                .is_err_and(|e| e.contains("not one of the move's (0-99)")),
            "{strayed:?}"
        );
        let mut entries = piece(None, None, &[]);
        entries.entries = Some(Default::default());
        let wrong_slot = check_piece(&m, &entries);
        assert!(
            wrong_slot
                .as_ref()
                .is_err_and(|e| e.contains("the entries map is in slot 4426")),
            "{wrong_slot:?}"
        );
        // A move of the entries map's slot: its entries, in the stretch only.
        let mut with_map = m.clone();
        with_map.slots.push(slot_of(ENTRIES_KEY.as_bytes()));
        let mut chunk = piece(None, Some(Mark::Entry("m".to_owned())), &keys);
        chunk.entries = Some([("a".to_owned(), "1".to_owned())].into());
        assert_eq!(check_piece(&with_map, &chunk), Ok(()));
        chunk.entries = Some([("n".to_owned(), "1".to_owned())].into());
        assert!(check_piece(&with_map, &chunk).is_err(), "n is past m");
    }

    #[test]
    fn the_pieces_of_an_export_hold_every_key_of_the_slots_once_in_order() {
        let store: Arc<dyn Storage> = Arc::new(keel_store::MemStore::new(100_000));
        let m = moving();
        // 12,000 keys, about 1 in 160 of them in slots 0-99, whose values of 10 KB fill
        // several pieces; and counters in and out of the slots.
        let ours = |k: &str| m.has(slot_of(k.as_bytes()));
        let mut commands: Vec<Command> = (0..12_000)
            .map(|i| {
                let key = format!("key{i}");
                let value = vec![b'x'; if ours(&key) { 10_000 } else { 1 }];
                Command::Put {
                    key,
                    value,
                    expect: Expect::Any,
                }
            })
            .collect();
        commands.extend((0..400).map(|i| Command::Incr {
            name: format!("n{i}"),
            by: i + 1,
        }));
        store
            .execute(keel_core::Epoch(1), &commands)
            .expect("written");
        let mut wanted: Vec<String> = (0..12_000)
            .map(|i| format!("key{i}"))
            .filter(|k| ours(k))
            .collect();
        wanted.sort();
        let counters_wanted = (0..400).filter(|i| ours(&format!("n{i}"))).count();
        assert!(
            wanted.len() > 26 * 2,
            "enough for several pieces: {}",
            wanted.len()
        );

        let (mut keys, mut counters, mut sizes) = (Vec::new(), 0, Vec::new());
        let mut after = None;
        loop {
            let piece = read_piece(store.as_ref(), &m, after.clone()).expect("a piece");
            sizes.push(piece.kv.len());
            assert_eq!(piece.after, after);
            assert_eq!(check_piece(&m, &piece), Ok(()));
            keys.extend(piece.kv.iter().map(|k| k.key.clone()));
            counters += piece.counters.len();
            match piece.upto {
                Some(upto) => after = Some(upto),
                None => break,
            }
        }
        assert_eq!(keys, wanted, "every key of the slots, once, in order");
        assert_eq!(counters, counters_wanted);
        // 256 KiB a piece, 10 KB a value: a piece is sent once it holds 27 values.
        let (last, full) = sizes.split_last().expect("pieces");
        assert!(
            full.len() >= 2 && full.iter().all(|n| *n == 27),
            "{sizes:?}"
        );
        assert!(*last <= 27, "{sizes:?}");
    }

    #[test]
    fn an_import_makes_its_stretch_the_sources_and_leaves_the_rest_alone() {
        let store = keel_store::MemStore::new(1_000);
        let m = moving();
        let mut keys = keys_in_move(4);
        keys.sort();
        let (k0, k1, k2, k3) = (&keys[0], &keys[1], &keys[2], &keys[3]);
        let other = (0u32..)
            .map(|i| format!("o{i}"))
            .find(|k| slot_of(k.as_bytes()).0 >= 100)
            .expect("a key of another slot");
        let counter = |n: &str| {
            (0u32..)
                .map(|i| format!("{n}{i}"))
                .find(|k| slot_of(k.as_bytes()).0 < 100)
                .expect("a counter of the move")
        };
        let (c_kept, c_gone) = (counter("c"), counter("d"));
        // This node holds k0..k3 (left from an earlier move), a key of another slot and
        // two counters of the move.
        let put = |key: &String| Command::Put {
            key: key.clone(),
            value: b"old".to_vec(),
            expect: Expect::Any,
        };
        let mut held = vec![put(k0), put(k1), put(k2), put(k3), put(&other)];
        held.push(Command::Incr {
            name: c_kept.clone(),
            by: 5,
        });
        held.push(Command::Incr {
            name: c_gone.clone(),
            by: 4,
        });
        store.execute(keel_core::Epoch(1), &held).expect("written");

        // A middle piece, after k0 up to k2, where the source has k2 only: k1 goes, k2 is
        // set; k0 and k3 lie outside the stretch, and no counter lies in it.
        let mut middle = piece(
            Some(Mark::Kv(k0.clone())),
            Some(Mark::Kv(k2.clone())),
            std::slice::from_ref(k2),
        );
        middle.kv[0].value = b"new".to_vec();
        let plan = import_plan(&store, &m, middle).expect("a plan");
        assert_eq!(
            plan,
            vec![
                Command::Delete {
                    key: k1.clone(),
                    expect: Expect::Any
                },
                Command::Put {
                    key: k2.clone(),
                    value: b"new".to_vec(),
                    expect: Expect::Any
                },
            ]
        );

        // The last piece, after k2, with one counter at 8 and no kv key: k3 goes, the
        // counter is set by difference, the other counter is zeroed, the other slot's key
        // is left alone.
        let mut last = piece(Some(Mark::Kv(k2.clone())), None, &[]);
        last.counters.insert(c_kept.clone(), 8);
        let plan = import_plan(&store, &m, last).expect("a plan");
        assert_eq!(
            plan,
            vec![
                Command::Delete {
                    key: k3.clone(),
                    expect: Expect::Any
                },
                Command::Incr {
                    name: c_kept.clone(),
                    by: 3
                },
                Command::Incr {
                    name: c_gone.clone(),
                    by: -4
                },
            ]
        );
    }

    #[test]
    fn a_large_entries_map_moves_in_pieces_too() {
        let store = keel_store::MemStore::new(1_000);
        let map: std::collections::BTreeMap<String, String> = (0..100)
            .map(|i| (format!("e{i:03}"), "v".repeat(10_000)))
            .collect();
        store
            .execute(keel_core::Epoch(1), &[Command::Merge(map.clone())])
            .expect("written");
        let mut m = moving();
        m.slots.push(slot_of(ENTRIES_KEY.as_bytes()));
        let (mut got, mut pieces) = (std::collections::BTreeMap::new(), 0);
        let mut after = None;
        loop {
            let piece = read_piece(&store, &m, after.clone()).expect("a piece");
            assert_eq!(check_piece(&m, &piece), Ok(()));
            pieces += 1;
            got.extend(piece.entries.expect("entries in every piece"));
            match piece.upto {
                Some(upto) => after = Some(upto),
                None => break,
            }
        }
        assert_eq!(got, map);
        // 1 MB of entries, a piece sent once it holds 256 KiB: four pieces.
        assert_eq!(pieces, 4);
        let plan = import_plan(&store, &m, {
            let mut p = piece(Some(Mark::Entry("e049".to_owned())), None, &[]);
            p.entries = Some([("e050".to_owned(), "w".to_owned())].into());
            p
        })
        .expect("a plan");
        assert_eq!(
            plan,
            vec![Command::Merge([("e050".to_owned(), "w".to_owned())].into())]
        );
    }

    #[test]
    fn an_export_starts_after_one_mark_at_most() {
        let params = |kv: Option<&str>, counter: Option<&str>| ExportParams {
            since: 2,
            after_kv: kv.map(str::to_owned),
            after_counter: counter.map(str::to_owned),
            after_entry: None,
        };
        assert_eq!(params(None, None).after().ok(), Some(None));
        assert_eq!(
            params(Some("a"), None).after().ok(),
            Some(Some(Mark::Kv("a".to_owned())))
        );
        assert_eq!(
            params(None, Some("c")).after().ok(),
            Some(Some(Mark::Counter("c".to_owned())))
        );
        let both = params(Some("a"), Some("c")).after();
        assert_eq!(
            both.err().map(|r| r.status()),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
