//! The monitor's HTTP API (docs/failover.md), in the conventions of the node's API: JSON
//! errors (`ApiError`), bodies up to 1 MiB (`413 body_too_large`), JSON `404`/`405`.
//!
//! Handlers only parse and hand over: every decision is the core's (`runtime`), which
//! owns the state machine.

// Handlers return `Result<Response, Response>`: the error side is a finished answer.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use keel_auth::Principal;
use keel_core::ApiError;
use keel_core::slots::GroupId;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::machine::{Answer, Input, Refusal};
use crate::runtime::{App, Msg};
use crate::wire::{
    FailoverRequest, HeartbeatRequest, MonitorHealth, RegisterRequest, SyncDropRequest, codes,
};

/// Request bodies larger than this are refused with `413`.
pub const MAX_BODY: usize = 1 << 20;

type Answered = Result<Response, Response>;

pub(crate) fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route("/v1/register", post(register))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/sync/drop", post(sync_drop))
        .route("/v1/failover", post(failover))
        .route("/v1/cluster", get(cluster))
        .route("/v1/slots", get(slots))
        .route("/v1/slots/move", post(slots_move))
        .route("/v1/slots/cancel", post(slots_cancel))
        .route("/v1/events", get(events))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/raft/append", post(raft_append))
        .route("/v1/raft/vote", post(raft_vote))
        .route("/v1/raft/snapshot", post(raft_snapshot))
        .route("/v1/monitors", post(monitors_add))
        .route("/v1/monitors/{id}", axum::routing::delete(monitors_remove));
    let guard = app.guard.clone();
    let routes = keel_http::json_fallbacks(routes, "docs/failover.md")
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app);
    keel_http::guarded(routes, guard)
}

/// Who signed the request, if anyone ([`keel_http::guarded`] checked it).
type Signed = Option<Extension<Principal>>;

fn principal(signed: &Signed) -> Option<&Principal> {
    signed.as_ref().map(|Extension(p)| p)
}

use keel_http::error_response;

/// The body as JSON of type `T`; an empty body reads as `{}` when `empty_ok`.
fn parse<T: DeserializeOwned>(
    raw: Result<Bytes, BytesRejection>,
    code: &str,
    empty_ok: bool,
) -> Result<T, Response> {
    let raw = raw.map_err(|rejection| keel_http::body_rejection(rejection, MAX_BODY, code))?;
    let text: &[u8] = if empty_ok && raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &raw
    };
    serde_json::from_slice(text).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(code, format!("the body is not a valid request: {e}")),
        )
    })
}

fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(ApiError::new("shutting_down", "the monitor is stopping")),
    )
        .into_response()
}

/// Hands an input to the core and turns its answer into a response.
async fn ask(app: &App, input: Input) -> Answered {
    let (tx, rx) = oneshot::channel();
    app.core
        .send(Msg::Input(input, Some(tx)))
        .await
        .map_err(|_| shutting_down())?;
    match rx.await.map_err(|_| shutting_down())? {
        Ok(Answer::View(view)) => Ok(axum::Json(view).into_response()),
        Ok(Answer::Cluster(cluster)) => Ok(axum::Json(cluster).into_response()),
        Err(refusal) => Err(refused(refusal)),
    }
}

fn refused(r: Refusal) -> Response {
    let mut body = ApiError::new(r.error, r.message);
    if let Some(view) = r.view
        && let Ok(v) = serde_json::to_value(view)
    {
        body = body.with("view", v);
    }
    if !r.reasons.is_empty()
        && let Ok(v) = serde_json::to_value(&r.reasons)
    {
        body = body.with("reasons", v);
    }
    if let Some(leader) = r.leader {
        body = body.with("leader", leader);
    }
    error_response(r.status, body)
}

/// Epochs and log positions at or above [`keel_core::ids::WIRE_LIMIT`] are refused: no
/// real cluster gets near it, and one that did would leave no room for the next failover
/// (the monitor needs `epoch + 1`).
fn check_epoch(epoch: keel_core::Epoch, lsn: keel_core::Lsn, code: &str) -> Result<(), Response> {
    let limit = keel_core::ids::WIRE_LIMIT;
    let wrong = if !epoch.in_range() {
        Some(format!(
            "epoch {epoch} is out of range (the limit is {limit})"
        ))
    } else if !lsn.in_range() {
        Some(format!("lsn {lsn} is out of range (the limit is {limit})"))
    } else {
        None
    };
    match wrong {
        Some(message) => Err(error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(code, message),
        )),
        None => Ok(()),
    }
}

async fn register(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    app.guard.require_member(principal(&signed), None)?;
    let req: RegisterRequest = parse(raw, codes::BAD_REGISTER, false)?;
    app.guard
        .require_member(principal(&signed), Some(req.node.as_str()))?;
    check_epoch(req.epoch, req.lsn, codes::BAD_REGISTER)?;
    ask(&app, Input::Register(req)).await
}

async fn heartbeat(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    app.guard.require_member(principal(&signed), None)?;
    let req: HeartbeatRequest = parse(raw, codes::BAD_HEARTBEAT, false)
        .and_then(|req: HeartbeatRequest| {
            check_epoch(req.epoch, req.lsn, codes::BAD_HEARTBEAT).map(|()| req)
        })
        .inspect_err(|_| {
            app.malformed_heartbeats.fetch_add(1, Ordering::Relaxed);
        })?;
    app.guard
        .require_member(principal(&signed), Some(req.node.as_str()))?;
    ask(&app, Input::Heartbeat(req)).await
}

async fn sync_drop(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    app.guard.require_member(principal(&signed), None)?;
    let req: SyncDropRequest = parse(raw, codes::BAD_REQUEST, false)?;
    app.guard
        .require_member(principal(&signed), Some(req.node.as_str()))?;
    check_epoch(req.epoch, keel_core::Lsn(0), codes::BAD_REQUEST)?;
    ask(&app, Input::SyncDrop(req)).await
}

async fn failover(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    app.guard.require_admin(principal(&signed))?;
    let req: FailoverRequest = parse(raw, codes::BAD_REQUEST, true)?;
    tracing::warn!(to = ?req.to.as_ref().map(|n| n.as_str()), "switchover requested through /v1/failover");
    ask(&app, Input::Switchover { to: req.to }).await
}

/// The group's Raft, for a call another monitor signed; `404` when this monitor runs
/// alone.
fn raft_of<'a>(app: &'a App, signed: &Signed) -> Result<&'a crate::raft::Raft, Response> {
    app.guard
        .require_member(principal(signed), Some(crate::runtime::MONITOR_ID))?;
    app.raft.as_ref().ok_or_else(|| {
        error_response(
            StatusCode::NOT_FOUND,
            ApiError::new(
                "not_a_group",
                "this monitor runs alone (no --peers): it takes no Raft calls",
            ),
        )
    })
}

/// One Raft call from another monitor: parsed, handed to openraft, its result answered as
/// JSON (`{"Ok": …}` or `{"Err": …}`, as `raft::net` reads it).
async fn raft_call<Req, Resp, Fut>(
    app: &App,
    signed: &Signed,
    raw: Result<Bytes, BytesRejection>,
    call: impl FnOnce(crate::raft::Raft, Req) -> Fut,
) -> Answered
where
    Req: DeserializeOwned,
    Resp: serde::Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    let raft = raft_of(app, signed)?.clone();
    let req = parse(raw, "bad_raft_call", false)?;
    Ok(axum::Json(call(raft, req).await).into_response())
}

async fn raft_append(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    raft_call(&app, &signed, raw, |raft, req| async move {
        raft.append_entries(req).await
    })
    .await
}

async fn raft_vote(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    raft_call(&app, &signed, raw, |raft, req| async move {
        raft.vote(req).await
    })
    .await
}

async fn raft_snapshot(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    raft_call(&app, &signed, raw, |raft, req| async move {
        raft.install_snapshot(req).await
    })
    .await
}

/// `POST /v1/monitors` body: the monitor that joins.
#[derive(Deserialize)]
struct MonitorAdd {
    id: String,
    url: String,
}

/// How long adding or removing a monitor may take (the newcomer catches up first).
const MEMBERSHIP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The group's Raft for an operator (the admin token); `404` when the monitor runs alone.
fn group_for_admin<'a>(app: &'a App, signed: &Signed) -> Result<&'a crate::raft::Raft, Response> {
    app.guard.require_admin(principal(signed))?;
    app.raft.as_ref().ok_or_else(|| {
        error_response(
            StatusCode::NOT_FOUND,
            ApiError::new(
                "not_a_group",
                "this monitor runs alone (no --peers): it has no group to change",
            ),
        )
    })
}

/// The group's voting members now.
fn voters(raft: &crate::raft::Raft) -> std::collections::BTreeSet<u64> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.membership_config.membership().voter_ids().collect()
}

/// The group's members now: id, URL, whether it votes.
fn members(raft: &crate::raft::Raft) -> serde_json::Value {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voting: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let list: Vec<serde_json::Value> = membership
        .nodes()
        .map(|(id, node)| {
            serde_json::json!({"id": format!("m{id}"), "url": node.addr, "voter": voting.contains(id)})
        })
        .collect();
    serde_json::Value::Array(list)
}

/// Turns a membership change's failure into an answer: `421` to the leader, `503`
/// otherwise.
fn membership_failed(
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, openraft::BasicNode>>,
) -> Response {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            let mut err = ApiError::new(
                codes::NOT_LEADER,
                "only the leader changes the group's membership",
            );
            if let Some(node) = f.leader_node {
                err = err.with("leader", node.addr);
            }
            error_response(StatusCode::MISDIRECTED_REQUEST, err)
        }
        other => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::new("membership_change_failed", other.to_string()),
        ),
    }
}

fn membership_timeout() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        ApiError::new(
            "membership_change_failed",
            format!(
                "the change did not complete within {MEMBERSHIP_TIMEOUT:?}: is the new monitor running, and a majority of the group?"
            ),
        ),
    )
}

/// `POST /v1/monitors` (admin token): a monitor joins the group — first as a learner
/// that catches up, then as a voter.
async fn monitors_add(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    let raft = group_for_admin(&app, &signed)?;
    let req: MonitorAdd = parse(raw, codes::BAD_REQUEST, false)?;
    let spec = format!("{}={}", req.id, req.url);
    let peer: crate::raft::Peers = spec.parse().map_err(|e: crate::raft::BadPeers| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(codes::BAD_REQUEST, e.to_string()),
        )
    })?;
    let Some((num, url)) = peer.0.into_iter().next() else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(codes::BAD_REQUEST, "give the new monitor's id and url"),
        ));
    };
    let learner = raft.add_learner(num, openraft::BasicNode::new(&url), true);
    tokio::time::timeout(MEMBERSHIP_TIMEOUT, learner)
        .await
        .map_err(|_| membership_timeout())?
        .map_err(membership_failed)?;
    let mut voters = voters(raft);
    voters.insert(num);
    tokio::time::timeout(MEMBERSHIP_TIMEOUT, raft.change_membership(voters, false))
        .await
        .map_err(|_| membership_timeout())?
        .map_err(membership_failed)?;
    tracing::warn!(monitor = %req.id, %url, "a monitor joined the group");
    Ok(axum::Json(serde_json::json!({
        "message": format!("{} joined the group", req.id),
        "members": members(raft),
    }))
    .into_response())
}

/// `DELETE /v1/monitors/{id}` (admin token): a monitor leaves the group.
async fn monitors_remove(
    State(app): State<Arc<App>>,
    signed: Signed,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Answered {
    let raft = group_for_admin(&app, &signed)?;
    let num = crate::raft::monitor_num(&id).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(codes::BAD_REQUEST, e.to_string()),
        )
    })?;
    let mut voters = voters(raft);
    if !voters.remove(&num) {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            ApiError::new(
                "unknown_monitor",
                format!("{id} is not a voting member of the group"),
            ),
        ));
    }
    if voters.is_empty() {
        return Err(error_response(
            StatusCode::CONFLICT,
            ApiError::new(
                "last_monitor",
                format!("{id} is the last monitor of the group"),
            ),
        ));
    }
    tokio::time::timeout(MEMBERSHIP_TIMEOUT, raft.change_membership(voters, false))
        .await
        .map_err(|_| membership_timeout())?
        .map_err(membership_failed)?;
    tracing::warn!(monitor = %id, "a monitor left the group");
    Ok(axum::Json(serde_json::json!({
        "message": format!("{id} left the group"),
        "members": members(raft),
    }))
    .into_response())
}

/// Group `of`'s view (the first group's when `None`), or a `404` that names the groups.
async fn cluster_view(
    app: &App,
    of: Option<GroupId>,
) -> Result<crate::wire::ClusterView, Response> {
    let (tx, rx) = oneshot::channel();
    app.core
        .send(Msg::Cluster(of.clone(), tx))
        .await
        .map_err(|_| shutting_down())?;
    let view = rx.await.map_err(|_| shutting_down())?;
    view.ok_or_else(|| {
        error_response(
            StatusCode::NOT_FOUND,
            ApiError::new(
                codes::UNKNOWN_GROUP,
                format!(
                    "this monitor runs no group {}",
                    of.as_ref().map_or("", GroupId::as_str)
                ),
            ),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterParams {
    group: Option<GroupId>,
}

/// `GET /v1/cluster[?group=g2]`: a group's picture, the first group's by default.
async fn cluster(
    State(app): State<Arc<App>>,
    query: Result<Query<ClusterParams>, QueryRejection>,
) -> Answered {
    let Query(params) = query.map_err(|r| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new("bad_query", format!("{}; use ?group=NAME", r.body_text())),
        )
    })?;
    Ok(axum::Json(cluster_view(&app, params.group).await?).into_response())
}

/// `GET /v1/slots`: the slot table (docs/shards.md).
async fn slots(State(app): State<Arc<App>>) -> Answered {
    let (tx, rx) = oneshot::channel();
    app.core
        .send(Msg::Slots(tx))
        .await
        .map_err(|_| shutting_down())?;
    let table = rx.await.map_err(|_| shutting_down())?;
    Ok(axum::Json(table).into_response())
}

/// `POST /v1/slots/move`: `{"slots": "0-99", "to": "g2"}` freezes the slots on their way
/// to `to`; the monitor then copies and switches them (docs/shards.md). Answers the table
/// with the move under way. An operator's call.
async fn slots_move(
    State(app): State<Arc<App>>,
    signed: Signed,
    raw: Result<Bytes, BytesRejection>,
) -> Answered {
    app.guard.require_admin(principal(&signed))?;
    let req: crate::wire::MoveRequest = parse(raw, codes::BAD_REQUEST, false)?;
    let slots = keel_core::slots::parse_slots(&req.slots).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new("bad_slots", e.to_string()),
        )
    })?;
    tracing::warn!(slots = %req.slots, to = %req.to, "slot move asked through /v1/slots/move");
    table_change(&app, Some((slots, req.to))).await
}

/// `POST /v1/slots/cancel`: calls the move under way off. An operator's call.
async fn slots_cancel(State(app): State<Arc<App>>, signed: Signed) -> Answered {
    app.guard.require_admin(principal(&signed))?;
    tracing::warn!("slot move cancelled through /v1/slots/cancel");
    table_change(&app, None).await
}

async fn table_change(
    app: &App,
    change: Option<(Vec<keel_core::slots::Slot>, keel_core::slots::GroupId)>,
) -> Answered {
    let (tx, rx) = oneshot::channel();
    app.core
        .send(Msg::Move(change, tx))
        .await
        .map_err(|_| shutting_down())?;
    match rx.await.map_err(|_| shutting_down())? {
        Ok(table) => Ok(axum::Json(table).into_response()),
        Err(refusal) => Err(refused(refusal)),
    }
}

async fn health(State(app): State<Arc<App>>) -> Answered {
    let view = cluster_view(&app, None).await?;
    Ok(axum::Json(MonitorHealth {
        status: "ok".to_owned(),
        version: view.version,
        epoch: view.epoch,
    })
    .into_response())
}

async fn metrics(State(app): State<Arc<App>>) -> Answered {
    let (tx, rx) = oneshot::channel();
    app.core
        .send(Msg::Metrics(tx))
        .await
        .map_err(|_| shutting_down())?;
    let (view, stats, raft) = rx.await.map_err(|_| shutting_down())?;
    let malformed = app.malformed_heartbeats.load(Ordering::Relaxed);
    let mut text = crate::metrics::render(&view, &stats, malformed, app.events.last_id());
    if let Some(raft) = raft {
        text.push_str(&crate::metrics::render_raft(&raft));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[derive(Deserialize)]
struct EventsParams {
    since: Option<u64>,
}

/// Server-sent events: the kept history after `since` (or the `Last-Event-ID` a
/// reconnecting browser sends), then every new event. A client too slow to keep up is
/// disconnected and resumes with `since`.
async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<EventsParams>, QueryRejection>,
) -> Answered {
    let Query(params) = query.map_err(|r| {
        error_response(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "bad_query",
                format!("{}; use ?since=N with N an event id", r.body_text()),
            ),
        )
    })?;
    // Without either, only new events: a dashboard that wants history asks for it.
    let since =
        keel_http::events_since(params.since, &headers).unwrap_or_else(|| app.events.last_id());
    let (past, live) = app.events.subscribe(since);
    Ok(keel_http::event_stream(
        past,
        live,
        |e| (e.id, e.kind.as_str().to_owned()),
        app.stopping.clone(),
    ))
}
