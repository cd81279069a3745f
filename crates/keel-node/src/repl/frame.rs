//! The frames of the replication stream: postcard inside length-prefixed frames (a
//! 4-byte big-endian length, then that many bytes).
//!
//! A frame is read as its bytes arrive, never allocated from its declared length: a peer
//! that declares a huge frame and sends little costs the receiver what it sent, and one
//! over [`MAX_FRAME`] ends the stream at once. Appends are cut to
//! [`crate::config::FRAME_BYTES`] and snapshots sent in parts of
//! [`crate::config::SNAPSHOT_PART_BYTES`], both well under it, so a store of any size
//! still streams.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use keel_core::{Epoch, LogPos, Lsn};
use keel_store::{LogEntry, SnapshotPart};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

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
    /// A part of the state that replaces everything once its last part is in; only the
    /// last part is answered.
    SnapshotPart {
        /// The sender's epoch.
        epoch: Epoch,
        /// The part.
        part: Box<SnapshotPart>,
        /// The snapshot is complete with this part.
        last: bool,
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
            | ToStandby::SnapshotPart { epoch, .. }
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

/// The largest frame either side accepts, in bytes.
pub const MAX_FRAME: usize = 8 << 20;

/// The framing both sides use.
pub fn codec() -> Codec {
    Codec { max: MAX_FRAME }
}

/// Length-prefixed frames of at most `max` bytes, read as they arrive.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max: usize,
}

impl Decoder for Codec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a frame of {len} bytes is over the limit of {} bytes",
                    self.max
                ),
            ));
        }
        // Not whole yet: wait for more without reserving room for it, so that memory
        // follows the bytes received, not the length claimed.
        if src.len() < 4 + len {
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for Codec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let len = u32::try_from(item.len())
            .ok()
            .filter(|len| *len as usize <= self.max)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "a frame of {} bytes is over the limit of {} bytes",
                        item.len(),
                        self.max
                    ),
                )
            })?;
        dst.reserve(4 + item.len());
        dst.put_u32(len);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Encodes a frame.
pub fn encode<T: Serialize>(frame: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(frame).map(Bytes::from)
}

/// Decodes a frame.
pub fn decode<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_whole_in_any_pieces() {
        let mut codec = codec();
        let mut wire = BytesMut::new();
        codec
            .encode(Bytes::from_static(b"hello"), &mut wire)
            .expect("encode");
        codec.encode(Bytes::new(), &mut wire).expect("encode");
        let mut got = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            got.put_u8(byte);
            while let Some(frame) = codec.decode(&mut got).expect("decode") {
                frames.push(frame);
            }
        }
        assert_eq!(frames, [&b"hello"[..], &b""[..]]);
    }

    #[test]
    fn a_huge_declared_frame_is_refused_and_a_big_one_costs_only_what_arrived() {
        let mut codec = codec();
        let mut huge = BytesMut::from(&(512u32 << 20).to_be_bytes()[..]);
        huge.extend_from_slice(b"abc");
        let err = codec.decode(&mut huge).expect_err("over the limit");
        assert!(err.to_string().contains("over the limit"), "{err}");
        // Just under the limit, with three bytes of it here: nothing is reserved for the
        // rest.
        let mut big = BytesMut::with_capacity(64);
        big.extend_from_slice(&(MAX_FRAME as u32).to_be_bytes());
        big.extend_from_slice(b"abc");
        assert_eq!(codec.decode(&mut big).expect("fine so far"), None);
        assert!(big.capacity() <= 64, "reserved {} bytes", big.capacity());
        assert!(
            codec
                .encode(Bytes::from(vec![0; MAX_FRAME + 1]), &mut BytesMut::new())
                .is_err()
        );
    }
}
