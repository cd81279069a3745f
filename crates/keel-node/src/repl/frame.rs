//! The frames of the replication stream (postcard inside length-delimited frames).

use bytes::Bytes;
use keel_core::{Epoch, LogPos, Lsn};
use keel_store::{LogEntry, Snapshot};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// Primary to standby. Each is answered with [`ToPrimary::Ack`] once the standby has
/// made its effect durable, or with [`ToPrimary::Stale`] / [`ToPrimary::NeedSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToStandby {
    /// Entries that continue the standby's log.
    Append {
        /// The sender's epoch.
        epoch: Epoch,
        /// Contiguous entries.
        entries: Vec<LogEntry>,
    },
    /// Roll back everything after `to` (a suffix the primary does not have).
    Truncate {
        /// The sender's epoch.
        epoch: Epoch,
        /// The last lsn to keep.
        to: Lsn,
    },
    /// Replace everything with this state.
    Snapshot {
        /// The sender's epoch.
        epoch: Epoch,
        /// The state.
        snapshot: Box<Snapshot>,
    },
    /// Are you there? (Answered with an ack of the standby's position.)
    Ping {
        /// The sender's epoch.
        epoch: Epoch,
    },
}

impl ToStandby {
    /// The epoch the frame was sent in.
    pub fn epoch(&self) -> Epoch {
        match self {
            ToStandby::Append { epoch, .. }
            | ToStandby::Truncate { epoch, .. }
            | ToStandby::Snapshot { epoch, .. }
            | ToStandby::Ping { epoch } => *epoch,
        }
    }
}

/// Standby to primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToPrimary {
    /// The first frame: where the standby's log stands.
    Hello {
        /// The standby's id.
        node: String,
        /// Its last log position.
        last: LogPos,
        /// Its epoch boundaries (for log matching).
        epochs: Vec<(Epoch, Lsn)>,
    },
    /// Everything up to `last` is durable here, and the first `frames` frames of this
    /// stream are answered (the primary times its lease from the one sent last of those).
    Ack {
        /// The standby's last position.
        last: LogPos,
        /// How many frames of this stream the standby has handled, in all.
        frames: u64,
    },
    /// The frame came from an epoch older than `epoch`, which this standby has seen.
    Stale {
        /// The newer epoch.
        epoch: Epoch,
    },
    /// A rollback reached into the standby's snapshot: send a snapshot.
    NeedSnapshot,
}

/// Largest frame accepted: a snapshot of the whole state travels in one.
pub const MAX_FRAME: usize = 512 << 20;

/// The framing both sides use.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Encodes a frame.
pub fn encode<T: Serialize>(frame: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(frame).map(Bytes::from)
}

/// Decodes a frame.
pub fn decode<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(raw)
}
