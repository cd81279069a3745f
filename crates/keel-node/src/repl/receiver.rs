//! The standby's side of replication: the `/v1/replication` upgrade and the stream after it.
//!
//! Checks happen before the upgrade, where they can still be answered in HTTP: the
//! credentials, the protocol, and — the machine's decision ([`Input::Offer`]) — the
//! sender's epoch: older than one this node has seen is `409` with the newer epoch, which
//! makes the sender step down. After the upgrade the machine checks every frame
//! ([`Input::Frame`]): its epoch, and that no newer stream has replaced this one. Appends that arrive back to back are committed together, so the
//! standby pays one fsync per burst rather than per frame.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, SinkExt, StreamExt};
use http::{HeaderMap, StatusCode, header};
use hyper_util::rt::TokioIo;
use keel_core::headers::{KEEL_EPOCH, KEEL_NODE};
use keel_core::{ApiError, Epoch};
use keel_store::{LogEntry, StoreError};
use tokio_util::codec::Framed;

use super::frame::{self, ToPrimary, ToStandby};
use super::{PRIMARY_URL_HEADER, PROTOCOL};
use crate::machine::{Input, Output};
use crate::shared::{Shared, Stats};
use keel_http::error_response;

/// How long an open stream may stay silent before the standby gives up on it (the
/// primary pings far more often than this).
const IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /v1/replication`: accepts a primary's stream.
pub async fn accept(State(shared): State<Arc<Shared>>, mut req: Request) -> Response {
    let headers = req.headers();
    // Only a member may replicate to this node, and only as itself: the signer must be
    // the node the stream says it comes from.
    let principal = req.extensions().get::<keel_auth::Principal>();
    let sender_header = headers.get(KEEL_NODE).and_then(|v| v.to_str().ok());
    if let Err(refused) = shared.guard.require_member(principal, None) {
        return refused;
    }
    if let Err(refused) = shared.guard.require_member(principal, sender_header) {
        return refused;
    }
    if !headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL))
    {
        return error_response(
            StatusCode::UPGRADE_REQUIRED,
            ApiError::new(
                "upgrade_required",
                format!("this endpoint speaks only {PROTOCOL}, via an HTTP upgrade"),
            ),
        );
    }
    let epoch = match header_u64(headers, KEEL_EPOCH).map(Epoch) {
        Some(e) if e.in_range() => e,
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ApiError::new(
                    "bad_epoch",
                    format!(
                        "the Keel-Epoch header must hold the sender's epoch as a number below {}",
                        keel_core::ids::WIRE_LIMIT
                    ),
                ),
            );
        }
    };
    let sender = headers
        .get(KEEL_NODE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let primary_url = headers
        .get(PRIMARY_URL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let decision = shared
        .input(Input::Offer {
            from: sender.clone(),
            epoch,
            primary: primary_url,
        })
        .await;
    let generation = match decision.answer {
        Some(Output::Accept { stream }) => stream,
        Some(Output::Refuse { seen, message }) => {
            tracing::warn!(%sender, %epoch, %seen, "refused a replication stream from an older epoch");
            return error_response(
                StatusCode::CONFLICT,
                ApiError::new("stale_epoch", message).with("epoch", seen.0),
            );
        }
        other => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ApiError::new("internal", format!("unexpected decision {other:?}")),
            );
        }
    };
    if let Some(e) = decision.failed {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::new("storage_failure", e),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_shared = shared.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = Framed::new(TokioIo::new(upgraded), frame::codec());
                match follow(&task_shared, io, generation).await {
                    Ok(()) => tracing::info!(primary = %sender, "replication stream closed"),
                    Err(e) => {
                        tracing::warn!(primary = %sender, error = %e, "replication stream ended")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "replication upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, PROTOCOL)],
    )
        .into_response()
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("connection: {0}")]
    Io(String),
    #[error("bad frame: {0}")]
    Frame(String),
    #[error("frame from epoch {got}, but this node has seen epoch {seen}")]
    Stale { got: Epoch, seen: Epoch },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("replaced by a newer stream")]
    Replaced,
}

type Io = Framed<TokioIo<hyper::upgrade::Upgraded>, frame::Codec>;

async fn reply(io: &mut Io, frame: &ToPrimary) -> Result<(), FollowError> {
    let bytes = frame::encode(frame).map_err(|e| FollowError::Frame(e.to_string()))?;
    io.send(bytes)
        .await
        .map_err(|e| FollowError::Io(e.to_string()))
}

/// Runs one stream: hello, then frames until the primary goes away or a newer stream
/// takes over.
async fn follow(shared: &Arc<Shared>, mut io: Io, generation: u64) -> Result<(), FollowError> {
    let store = shared.store.clone();
    let (last, epochs) = {
        let store = store.clone();
        run_blocking(move || store.summary()).await?
    };
    let hello = ToPrimary::Hello {
        node: shared.config.id.to_string(),
        last,
        epochs,
    };
    reply(&mut io, &hello).await?;
    let mut pending: Option<ToStandby> = None;
    // The parts of a snapshot received so far, until its last.
    let mut snapshot: Option<keel_store::SnapshotBuilder> = None;
    // Frames handled so far; every ack says how many, so the primary knows which of its
    // frames the ack answers and can time its lease from when it sent that one.
    let mut frames: u64 = 0;
    loop {
        let frame = match pending.take() {
            Some(f) => f,
            None => match tokio::time::timeout(IDLE, io.next()).await {
                Err(_) => return Err(FollowError::Io(format!("no frame for {IDLE:?}"))),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(FollowError::Io(e.to_string())),
                Ok(Some(Ok(raw))) => {
                    frame::decode(&raw).map_err(|e| FollowError::Frame(e.to_string()))?
                }
            },
        };
        frames += 1;
        if !frame.epoch().in_range() {
            return Err(FollowError::Frame(format!(
                "epoch {} is out of range",
                frame.epoch()
            )));
        }
        if snapshot.is_some() && !matches!(frame, ToStandby::SnapshotPart { .. }) {
            return Err(FollowError::Frame(
                "a frame other than a snapshot part arrived in the middle of a snapshot".into(),
            ));
        }
        let decision = shared
            .input(Input::Frame {
                stream: generation,
                epoch: frame.epoch(),
            })
            .await;
        if let Some(e) = decision.failed {
            return Err(FollowError::Io(format!(
                "cannot record epoch {}: {e}",
                frame.epoch()
            )));
        }
        match decision.answer {
            Some(Output::FrameOk) => {}
            Some(Output::FrameStale { seen }) => {
                // Tell the sender why, so it steps down, then end the stream.
                reply(&mut io, &ToPrimary::Stale { epoch: seen }).await?;
                return Err(FollowError::Stale {
                    got: frame.epoch(),
                    seen,
                });
            }
            _ => return Err(FollowError::Replaced),
        }
        let answer = match frame {
            ToStandby::Append { epoch, entries } => {
                // Take every append already waiting on the socket into the same commit.
                let mut batch: Vec<LogEntry> = entries;
                while let Some(Some(Ok(raw))) = io.next().now_or_never() {
                    match frame::decode::<ToStandby>(&raw)
                        .map_err(|e| FollowError::Frame(e.to_string()))?
                    {
                        ToStandby::Append { epoch: e, entries } if e == epoch => {
                            frames += 1;
                            batch.extend(entries);
                        }
                        other => {
                            pending = Some(other);
                            break;
                        }
                    }
                }
                let store = store.clone();
                let n = batch.len() as u64;
                let started = std::time::Instant::now();
                let last = run_blocking(move || store.append(&batch)).await?;
                let stats = &shared.stats;
                Stats::bump(&stats.commits, 1);
                Stats::bump(&stats.committed_ops, n);
                Stats::bump(
                    &stats.commit_micros,
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                );
                ToPrimary::Ack { last, frames }
            }
            ToStandby::Truncate { to, .. } => {
                let store = store.clone();
                match run_blocking(move || store.rollback_to(to)).await {
                    Ok(last) => {
                        tracing::info!(to = %to, "rolled back a suffix the primary does not have");
                        ToPrimary::Ack { last, frames }
                    }
                    Err(FollowError::Store(StoreError::Compacted { .. })) => {
                        ToPrimary::NeedSnapshot
                    }
                    Err(e) => return Err(e),
                }
            }
            ToStandby::SnapshotPart { part, last, .. } => {
                let parts = snapshot.get_or_insert_with(Default::default);
                parts.add(*part).map_err(FollowError::Frame)?;
                if !last {
                    // Only the whole snapshot is answered.
                    continue;
                }
                let whole = snapshot.take().unwrap_or_default().finish();
                let store = store.clone();
                let at = whole.last;
                let last = run_blocking(move || store.install(&whole)).await?;
                tracing::info!(lsn = %at.lsn, "installed a snapshot from the primary");
                ToPrimary::Ack { last, frames }
            }
            ToStandby::Ping { .. } => ToPrimary::Ack {
                last: store.status().last,
                frames,
            },
        };
        let grants = matches!(answer, ToPrimary::Ack { .. });
        reply(&mut io, &answer).await?;
        if grants {
            // Every ack renews the primary's lease; remember when (once it is out), so that
            // a promotion of this node can wait out the last lease it granted.
            shared.input(Input::Granted).await;
        }
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, FollowError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(FollowError::from),
        Err(e) => Err(FollowError::Io(format!("store task failed: {e}"))),
    }
}
