//! The primary's side of replication: one task per standby.
//!
//! The task connects, upgrades to the replication protocol, reads the standby's hello,
//! brings its log in line with ours (rollback or snapshot), then follows
//! [`Shared::log_end`] and ships each new range of entries as the writer decides it, without
//! waiting for the previous frame's ack (the acks go to the machine, which answers the
//! writes they complete and decides when the standby counts as streaming).
//! [`supervise`] starts and stops these tasks as the machine asks. A stream that stays silent for longer than the sync timeout while it
//! owes acks is dropped and opened again, so a frozen standby cannot hold writes for
//! longer than that.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use keel_core::headers::{KEEL_EPOCH, KEEL_NODE};
use keel_core::{Epoch, Lsn};
use keel_store::{StoreError, agreement};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::frame::{self, ToPrimary, ToStandby};
use super::{PRIMARY_URL_HEADER, PROTOCOL};
use crate::config::{
    CONNECT_TIMEOUT, FRAME_BYTES, FRAME_ENTRIES, PING_INTERVAL, SNAPSHOT_PART_BYTES,
};
use crate::machine::Input;
use crate::shared::{SenderCommand, Shared};

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the standby refused the stream: {0}")]
    Refused(String),
    #[error("the standby has seen epoch {0}")]
    Fenced(Epoch),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no answer from the standby for {0:?}")]
    Stalled(Duration),
    #[error("connection refused by keel's fault filter (keel chaos partition)")]
    Filtered,
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

type Io = Framed<TokioIo<hyper::upgrade::Upgraded>, frame::Codec>;

/// Starts and stops the senders as the machine asks, until the queue closes or every
/// sender is told to stop.
pub async fn supervise(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<SenderCommand>) {
    let mut running: HashMap<u64, watch::Sender<bool>> = HashMap::new();
    while let Some(command) = commands.recv().await {
        match command {
            SenderCommand::Start { link, url } => {
                let (stop, stopped) = watch::channel(false);
                running.insert(link, stop);
                tokio::spawn(run(shared.clone(), Link { id: link, url }, stopped));
            }
            SenderCommand::Stop { link } => {
                if let Some(stop) = running.remove(&link) {
                    stop.send_replace(true);
                }
            }
            SenderCommand::StopAll => break,
        }
    }
    for stop in running.into_values() {
        stop.send_replace(true);
    }
}

/// The standby a sender serves: the machine's number for the link, and its URL.
struct Link {
    id: u64,
    url: String,
}

/// Keeps one standby in step with this primary until it is stopped or this node stops
/// being primary.
async fn run(shared: Arc<Shared>, link: Link, mut stop: watch::Receiver<bool>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(20);
    // Reconnecting to a standby that is down costs a refused connection; trying twice a
    // second bounds how long a restarted standby waits to be picked up.
    const MAX_BACKOFF: Duration = Duration::from_millis(500);
    let mut backoff = MIN_BACKOFF;
    let mut reported_down = false;
    loop {
        if !shared.is_primary() || *stop.borrow() {
            break;
        }
        shared.input(Input::LinkConnecting { link: link.id }).await;
        let mut streamed = false;
        let result = tokio::select! {
            r = stream(&shared, &link, &mut streamed) => r,
            _ = stop.changed() => break,
        };
        shared.input(Input::LinkDown { link: link.id }).await;
        if streamed {
            backoff = MIN_BACKOFF;
            reported_down = false;
        }
        match result {
            Err(StreamError::Fenced(epoch)) => {
                shared.input(Input::Deposed { epoch }).await;
                break;
            }
            Err(e) if !reported_down => {
                tracing::warn!(standby = %link.url, error = %e, "replication stream down; retrying");
                reported_down = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    shared.input(Input::LinkDown { link: link.id }).await;
}

/// Keeps a frame's entries under [`FRAME_BYTES`] (but always at least one), so that a
/// run of large values never makes a frame the codec refuses.
fn cap_frame(mut entries: Vec<keel_store::LogEntry>) -> Vec<keel_store::LogEntry> {
    let mut bytes = 0;
    let keep = entries
        .iter()
        .position(|e| {
            bytes += crate::outbox::weight(e);
            bytes > FRAME_BYTES
        })
        .map_or(entries.len(), |i| i.max(1));
    entries.truncate(keep);
    entries
}

/// Opens the upgraded connection to a standby.
async fn connect(shared: &Shared, link: &Link) -> Result<Io, StreamError> {
    let uri: http::Uri = link
        .url
        .parse()
        .map_err(|e| StreamError::Connect(format!("bad URL {}: {e}", link.url)))?;
    let authority = uri
        .authority()
        .ok_or_else(|| StreamError::Connect(format!("URL {} has no host:port", link.url)))?
        .clone();
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(default_port)
    );
    if shared.faults.blocks(&addr) {
        return Err(StreamError::Filtered);
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| StreamError::Connect(format!("{addr}: timed out")))?
        .map_err(|e| StreamError::Connect(format!("{addr}: {e}")))?;
    tcp.set_nodelay(true)
        .map_err(|e| StreamError::Connect(e.to_string()))?;
    let https = uri.scheme_str() == Some("https");
    let mut sender = match (&shared.config.tls, https) {
        (Some(tls), true) => {
            let name = keel_auth::tls::server_name(authority.host())
                .map_err(|e| StreamError::Connect(e.to_string()))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector().connect(name, tcp))
                .await
                .map_err(|_| StreamError::Connect(format!("{addr}: no TLS handshake in time")))?
                .map_err(|e| StreamError::Connect(format!("{addr}: TLS: {e}")))?;
            handshake(TokioIo::new(stream)).await?
        }
        (None, true) => {
            return Err(StreamError::Connect(format!(
                "{} is https, but this node has no TLS (--tls-cert, --tls-key, --tls-ca)",
                link.url
            )));
        }
        (_, false) => handshake(TokioIo::new(tcp)).await?,
    };
    let epoch = shared.writing_epoch();
    let url = format!("{}/v1/replication", link.url.trim_end_matches('/'));
    // With the cluster secret the upgrade is signed, and the stream starts only once the
    // standby has signed its answer: no entry leaves for a process that is not a member.
    let signed = match &shared.signer {
        Some(signer) => Some(
            signer
                .sign("GET", &url, b"")
                .map_err(|e| StreamError::Connect(e.to_string()))?,
        ),
        None => None,
    };
    let mut req = Request::get(&url)
        .header(header::HOST, authority.as_str())
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .header(KEEL_EPOCH, epoch.0.to_string())
        .header(KEEL_NODE, shared.config.id.as_str())
        .header(PRIMARY_URL_HEADER, shared.config.advertise.as_str());
    if let Some(signed) = &signed {
        req = req.header(keel_auth::AUTH_HEADER, &signed.header);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| StreamError::Connect(e.to_string()))?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| StreamError::Connect(format!("{addr}: no answer to the upgrade")))?
        .map_err(|e| StreamError::Connect(e.to_string()))?;
    let status = resp.status();
    let answer_sig = keel_auth::signature_of(resp.headers());
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // Whatever answered may not be a keel node: read at most 64 KiB, briefly.
        let limited = http_body_util::Limited::new(resp.into_body(), 64 << 10);
        let body = tokio::time::timeout(CONNECT_TIMEOUT, limited.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        if let (Some(signer), Some(signed)) = (&shared.signer, &signed)
            && let Err(e) =
                signer.check_answer(signed, answer_sig.as_deref(), status.as_u16(), Some(&body))
        {
            // Only a member's refusal may depose this primary.
            return Err(StreamError::Refused(format!(
                "{status} from something that is not a member of this cluster ({e}): {text}"
            )));
        }
        // 409 with a newer epoch: a standby has seen a newer primary; this one is deposed.
        let newer = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
            .map(Epoch)
            .filter(|e| status == StatusCode::CONFLICT && *e > shared.writing_epoch());
        return Err(match newer {
            Some(epoch) => StreamError::Fenced(epoch),
            None => StreamError::Refused(format!("{status}: {text}")),
        });
    }
    if let (Some(signer), Some(signed)) = (&shared.signer, &signed) {
        signer
            .check_answer(signed, answer_sig.as_deref(), status.as_u16(), None)
            .map_err(|e| {
                StreamError::Refused(format!(
                    "the upgrade was answered by something that is not a member of this cluster: {e}"
                ))
            })?;
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| StreamError::Connect(e.to_string()))?;
    Ok(Framed::new(TokioIo::new(upgraded), frame::codec()))
}

/// An HTTP/1.1 client connection on `io`, driven in its own task (with upgrades).
async fn handshake<T>(
    io: T,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, StreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| StreamError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// The frames sent on a stream and when, so that an ack (which says how many frames it
/// answers) renews the lease from the moment the primary sent the last of them: a lease
/// runs from when its renewal was asked for, never from when the answer came back.
#[derive(Default)]
struct Sent {
    frames: u64,
    times: VecDeque<(u64, Instant)>,
}

impl Sent {
    fn record(&mut self) {
        self.frames += 1;
        self.times.push_back((self.frames, Instant::now()));
    }

    /// When the `answered`-th frame was sent (forgetting it and every earlier one).
    fn answered(&mut self, answered: u64) -> Option<Instant> {
        let mut at = None;
        while let Some(&(n, t)) = self.times.front() {
            if n > answered {
                break;
            }
            at = Some(t);
            self.times.pop_front();
        }
        at
    }
}

/// Sends one frame, giving up after `within`: a frozen standby whose socket buffers are
/// full would otherwise hold the stream forever while it still looks up.
async fn send(
    io: &mut Io,
    sent: &mut Sent,
    frame: &ToStandby,
    within: Duration,
) -> Result<(), StreamError> {
    let bytes = frame::encode(frame).map_err(|e| StreamError::Protocol(e.to_string()))?;
    sent.record();
    match tokio::time::timeout(within, io.send(bytes)).await {
        Ok(r) => r.map_err(|e| StreamError::Lost(e.to_string())),
        Err(_) => Err(StreamError::Stalled(within)),
    }
}

async fn recv(io: &mut Io, within: Duration) -> Result<ToPrimary, StreamError> {
    match tokio::time::timeout(within, io.next()).await {
        Err(_) => Err(StreamError::Stalled(within)),
        Ok(None) => Err(StreamError::Lost("closed by the standby".into())),
        Ok(Some(Err(e))) => Err(StreamError::Lost(e.to_string())),
        Ok(Some(Ok(raw))) => frame::decode(&raw).map_err(|e| StreamError::Protocol(e.to_string())),
    }
}

/// Waits for the answer to a handshake frame: the standby's new position.
async fn expect_ack(
    io: &mut Io,
    sent: &mut Sent,
    within: Duration,
) -> Result<Option<Lsn>, StreamError> {
    match recv(io, within).await? {
        ToPrimary::Ack { last, frames } => {
            sent.answered(frames);
            Ok(Some(last.lsn))
        }
        ToPrimary::NeedSnapshot => Ok(None),
        ToPrimary::Stale { epoch } => Err(StreamError::Fenced(epoch)),
        other => Err(StreamError::Protocol(format!("unexpected {other:?}"))),
    }
}

async fn send_snapshot(
    shared: &Shared,
    io: &mut Io,
    sent: &mut Sent,
    within: Duration,
) -> Result<Lsn, StreamError> {
    let store = shared.store.clone();
    let snapshot = tokio::task::spawn_blocking(move || store.snapshot())
        .await
        .map_err(|e| StreamError::Protocol(e.to_string()))??;
    tracing::info!(lsn = %snapshot.last.lsn, "sending a snapshot to a standby the log no longer reaches");
    let epoch = shared.writing_epoch();
    let parts = snapshot.into_parts(SNAPSHOT_PART_BYTES);
    let count = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let frame = ToStandby::SnapshotPart {
            epoch,
            part: Box::new(part),
            last: i + 1 == count,
        };
        send(io, sent, &frame, within * 10).await?;
    }
    // Installing a large snapshot takes a while: allow more than a write would.
    expect_ack(io, sent, within * 10)
        .await?
        .ok_or_else(|| StreamError::Protocol("standby asked for a snapshot after one".into()))
}

/// One connection's life: handshake, catch-up, streaming.
async fn stream(shared: &Shared, link: &Link, streamed: &mut bool) -> Result<(), StreamError> {
    let mut io = connect(shared, link).await?;
    let timing = shared.timing();
    // How long the standby may stay silent before the stream is dropped. Under a monitor
    // this is short, so that a frozen standby is soon out of the sync set; by hand, it is
    // the write's own patience.
    let wait = if shared.monitored() {
        timing.heartbeat_timeout.max(2 * PING_INTERVAL)
    } else {
        shared.config.sync_timeout.max(Duration::from_secs(1))
    };
    let mut frames = Sent::default();
    let (node, their_last, their_epochs) = match recv(&mut io, wait).await? {
        ToPrimary::Hello { node, last, epochs } => (node, last, epochs),
        other => {
            return Err(StreamError::Protocol(format!(
                "expected hello, got {other:?}"
            )));
        }
    };
    shared
        .input(Input::LinkHello {
            link: link.id,
            node: node.clone(),
        })
        .await;

    // Bring the standby's log in line with ours — all of ours, including a batch already
    // shipped and still being committed here (at most one: the writer commits one batch
    // at a time): compared with the store alone, the standby would be told to roll back
    // entries it may already have acknowledged.
    let shipped = *shared.log_end.borrow();
    let committed = tokio::time::timeout(wait, async {
        while shared.store.status().last.lsn < shipped {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    if committed.is_err() {
        return Err(StreamError::Stalled(wait));
    }
    let status = shared.store.status();
    let ours = {
        let store = shared.store.clone();
        tokio::task::spawn_blocking(move || store.epoch_boundaries())
            .await
            .map_err(|e| StreamError::Protocol(e.to_string()))??
    };
    let common = agreement(&ours, status.last, &their_epochs, their_last);
    let epoch = status.epoch;
    let mut sent = if common < status.snapshot.lsn {
        send_snapshot(shared, &mut io, &mut frames, wait).await?
    } else if their_last.lsn > common {
        tracing::info!(standby = %node, from = %their_last.lsn, to = %common, "standby rolls back a suffix this primary does not have");
        send(
            &mut io,
            &mut frames,
            &ToStandby::Truncate { epoch, to: common },
            wait,
        )
        .await?;
        match expect_ack(&mut io, &mut frames, wait).await? {
            Some(lsn) => lsn,
            None => send_snapshot(shared, &mut io, &mut frames, wait).await?,
        }
    } else {
        common
    };
    shared
        .input(Input::LinkAligned {
            link: link.id,
            acked: sent,
        })
        .await;
    *streamed = true;
    tracing::info!(standby = %node, at = %sent, primary_at = %status.last.lsn, "replication stream open");

    let mut log_end = shared.log_end.subscribe();
    let mut role = shared.role.subscribe();
    // The epoch this primary writes in cannot change while the stream is open: a new one
    // comes only with a promotion, which ends the stream (the role changes).
    let writing = shared.writing_epoch();
    // A partition that begins while the stream is open cuts it, as a network that drops
    // its packets would. (Subscribed first, checked after: no change slips in between.)
    let mut faults = shared.faults.subscribe();
    if shared.faults.blocks(&link.url) {
        return Err(StreamError::Filtered);
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        let target = *log_end.borrow_and_update();
        while sent < target {
            let entries = match shared.outbox_after(sent, FRAME_ENTRIES) {
                Some(entries) => entries,
                None => {
                    let (store, from) = (shared.store.clone(), sent);
                    tokio::task::spawn_blocking(move || store.entries_after(from, FRAME_ENTRIES))
                        .await
                        .map_err(|e| StreamError::Protocol(e.to_string()))??
                }
            };
            let entries = cap_frame(entries);
            let Some(last) = entries.last().map(|e| e.pos.lsn) else {
                break;
            };
            let frame = frame::encode(&ToStandby::Append {
                epoch: writing,
                entries,
            })
            .map_err(|e| StreamError::Protocol(e.to_string()))?;
            // Feed without flushing each frame; flush once the range is out.
            frames.record();
            match tokio::time::timeout(wait, io.feed(frame)).await {
                Ok(r) => r.map_err(|e| StreamError::Lost(e.to_string()))?,
                Err(_) => return Err(StreamError::Stalled(wait)),
            }
            sent = last;
        }
        match tokio::time::timeout(wait, SinkExt::<Bytes>::flush(&mut io)).await {
            Ok(r) => r.map_err(|e| StreamError::Lost(e.to_string()))?,
            Err(_) => return Err(StreamError::Stalled(wait)),
        }
        tokio::select! {
            changed = log_end.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            frame = io.next() => {
                let raw = match frame {
                    None => return Err(StreamError::Lost("closed by the standby".into())),
                    Some(Err(e)) => return Err(StreamError::Lost(e.to_string())),
                    Some(Ok(raw)) => raw,
                };
                last_heard = Instant::now();
                match frame::decode::<ToPrimary>(&raw).map_err(|e| StreamError::Protocol(e.to_string()))? {
                    ToPrimary::Ack { last, frames: answered } => {
                        let sent_at = frames.answered(answered);
                        shared.input(Input::Ack { link: link.id, lsn: last.lsn, sent_at }).await;
                    }
                    ToPrimary::Stale { epoch } => return Err(StreamError::Fenced(epoch)),
                    other => return Err(StreamError::Protocol(format!("unexpected {other:?}"))),
                }
            }
            () = faults.changed() => {
                if shared.faults.blocks(&link.url) {
                    return Err(StreamError::Filtered);
                }
            }
            changed = role.changed() => {
                // Deposed or taken over: this node has nothing to ship any more.
                if changed.is_err() || !shared.is_primary() {
                    return Ok(());
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > wait {
                    return Err(StreamError::Stalled(wait));
                }
                send(&mut io, &mut frames, &ToStandby::Ping { epoch: writing }, wait).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_ack_renews_the_lease_from_when_the_frame_it_answers_was_sent() {
        let mut sent = Sent::default();
        let t0 = Instant::now();
        sent.record(); // frame 1 at t0
        tokio::time::advance(Duration::from_millis(10)).await;
        sent.record(); // frame 2 at t0 + 10 ms
        tokio::time::advance(Duration::from_millis(10)).await;
        sent.record(); // frame 3 at t0 + 20 ms
        // An ack for the first two frames: the lease runs from frame 2's sending, not
        // from the ack's arrival.
        assert_eq!(sent.answered(2), Some(t0 + Duration::from_millis(10)));
        // Acks never go back; an ack for frames already answered renews nothing.
        assert_eq!(sent.answered(2), None);
        assert_eq!(sent.answered(3), Some(t0 + Duration::from_millis(20)));
    }
}
