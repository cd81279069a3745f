//! [`LogStore`]: the log and the state machine in memory, made durable by one
//! append-only file. Each mutation becomes one record of what it set, appended to
//! `keel.log` and `fdatasync`'d before any reader sees it; a restart replays the file.
//!
//! **Why a second durable store.** redb's commit pays a fixed cost whatever it carries:
//! copy-on-write pages for each of the four tables a group commit touches (log, undo,
//! kv, meta), new roots, freeing the previous transaction's pages, checksums, then the
//! `fdatasync` (docs/shards.md has the profile: 64% of a commit's CPU). A node that
//! commits small batches often — a shard's primary, which sees only its share of the
//! writers — pays it per few writes. Here a commit is one `write` of the bytes it changed
//! and one `fdatasync`. The price is memory: the whole state lives in RAM, as in Redis;
//! the file only makes it durable. It is `keel node --store log`; redb stays the default.
//!
//! **The file.** A sequence of frames: the length of the payload (u32, little-endian),
//! its CRC-32, then the payload, a postcard [`Record`]. The first frame names the format.
//! A frame is a whole mutation ([`Redo`]s in order) or a whole image of every table. A
//! restart applies the frames in order. A last frame cut short or failing its checksum is
//! what a crash in the middle of an append leaves; what it held was never acknowledged
//! (the append returns only after its `fdatasync`), so it is cut off and the next append
//! follows the last whole frame. A damaged frame with more after it is not a torn
//! append but damage to acknowledged commits: the store refuses to open, as it does a
//! file that does not begin with keel's first frame, and leaves either file untouched.
//!
//! **Zeros ahead of the appends.** The file is extended [`PREALLOCATE`] bytes at a time
//! with zeros, written and synced, and frames are written over them. An append then
//! changes neither the file's length nor its blocks, so its `fdatasync` writes the
//! frame's data alone, not the inode and the block map as well: on ext4 here, a commit
//! costs a third to a half less CPU and a third less wall time (docs/replication.md). Zeros
//! after the last frame are that room, not damage; anything else after a damaged frame
//! is. The first frame is written before any zeros, so a file of zeros alone is a log
//! that lost its contents, and is refused too.
//!
//! **Compaction.** The file grows with every mutation. Once it is larger than
//! [`CHECKPOINT_BYTES`] and twice the last image, it is rewritten as one image: written
//! to `keel.log.new`, synced, renamed over `keel.log`, and the directory synced. A crash
//! at any point leaves either file whole.
//!
//! **Readers never wait for a disk.** A mutation runs on the tables, is taken back, and
//! its record is made durable; only then is it applied again for readers to see. The
//! tables' lock is held for the in-memory work alone, never across the `fdatasync`, and
//! mutations are serialised by a lock of their own.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use keel_core::{Epoch, Lsn};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, run_mutation};
use crate::error::StoreError;
use crate::mem_tables::{Image, MemTables};
use crate::op::LogEntry;
use crate::rules::Written;
use crate::storage::LogStatus;
use crate::tables::{KvRecord, Tables, Undo, View};

/// The file's name in the node's data directory.
pub const FILE_NAME: &str = "keel.log";
/// The file's layout version, in its first frame.
const FORMAT: u32 = 1;
/// The file is rewritten as one image once it is larger than this and twice the last
/// image.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// A frame's header: the payload's length and its CRC-32.
const HEADER: usize = 8;
/// The file grows by this many bytes of zeros at a time, ahead of the appends (about a
/// millisecond to write and sync here).
pub const PREALLOCATE: u64 = 1 << 20;

/// One change a mutation made, as it is replayed: the [`Tables`] call, with its
/// arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Redo {
    Entry(String, Option<String>),
    Kv(String, Option<KvRecord>),
    Counter(String, Option<i64>),
    PushLog(LogEntry, Undo),
    PopLog(u64),
    TruncateLogThrough(u64),
    AddEpoch(u64, u64),
    ForgetEpochsAfter(u64),
    Clear,
    Status(LogStatus),
    NodeMeta(String, u64),
}

/// A frame's payload, as written (borrowing) …
#[derive(Serialize)]
enum RecordOut<'a> {
    Format(u32),
    Mutation(&'a [Redo]),
    Image(&'a Image),
}

/// … and as read: the same variants, in the same order.
#[derive(Deserialize)]
enum Record {
    Format(u32),
    Mutation(Vec<Redo>),
    Image(Image),
}

/// The log and state machine of one node, in memory and in one append-only file;
/// implements [`Storage`](crate::Storage). Calls block on the disk: run them on a
/// blocking thread.
pub struct LogStore {
    /// Serialises mutations; owns the file.
    writer: Mutex<FileEnd>,
    /// What readers see: only what is durable.
    live: Mutex<MemTables>,
    log_retain: u64,
}

/// The file and how far it goes.
struct FileEnd {
    path: PathBuf,
    file: File,
    /// Bytes written (every one of them whole frames).
    size: u64,
    /// The file's length: zeros from `size` to here.
    allocated: u64,
    /// The size of the file when it was last rewritten as one image.
    image: u64,
    checkpoint_bytes: u64,
}

impl LogStore {
    /// Opens (or creates) the store in `dir`, keeping at most `log_retain` log entries
    /// after the snapshot point; the file is rewritten as one image past
    /// [`CHECKPOINT_BYTES`].
    pub fn open(dir: &Path, log_retain: u64) -> Result<Self, StoreError> {
        Self::open_with_checkpoint(dir, log_retain, CHECKPOINT_BYTES)
    }

    /// As [`LogStore::open`], rewriting the file as one image once it is larger than
    /// `checkpoint_bytes` and twice the last image.
    pub fn open_with_checkpoint(
        dir: &Path,
        log_retain: u64,
        checkpoint_bytes: u64,
    ) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let io = |error| StoreError::File {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (tables, whole) = replay(&bytes).map_err(|e| match e {
            Replay::Codec(e) => StoreError::Codec(e),
            Replay::Format(found) => io(std::io::Error::other(format!(
                "format {found}: this keel reads format {FORMAT}"
            ))),
            Replay::Foreign => io(std::io::Error::other(
                "it does not begin with keel's log header; it is left as it is (move it away, or give the node another --data-dir)",
            )),
            Replay::Damaged { at, after } => io(std::io::Error::other(format!(
                "the frame at byte {at} is damaged and {after} bytes follow it, not all zeros: committed data may be lost; the file is left as it is (restore it from a copy, or start the node on an empty --data-dir to copy its group's primary)"
            ))),
        })?;
        // Zeros after the last frame are the room made ahead of the appends.
        let mut allocated = bytes.len() as u64;
        if !zeros(&bytes[whole..]) {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() - whole,
                "the end of the log file is an unfinished write (a crash during an append); it was never acknowledged and is dropped"
            );
            file.set_len(whole as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
            allocated = whole as u64;
        }
        let mut end = FileEnd {
            path: path.clone(),
            file,
            size: whole as u64,
            allocated,
            image: whole as u64,
            checkpoint_bytes,
        };
        if whole == 0 {
            end.append(&RecordOut::Format(FORMAT))?;
            end.image = end.size;
        }
        Ok(Self {
            writer: Mutex::new(end),
            live: Mutex::new(tables),
            log_retain: log_retain.max(1),
        })
    }

    fn live(&self) -> MutexGuard<'_, MemTables> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // A mutation that panicked is taken back: whole or absent even then.
        live.recover();
        live
    }

    /// How many bytes the log's whole frames take. The file itself is longer: the zeros
    /// made ahead of the appends follow them.
    pub fn file_size(&self) -> u64 {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).size
    }
}

/// Why a file cannot be replayed.
enum Replay {
    Codec(postcard::Error),
    Format(u32),
    /// It does not begin with keel's first frame: not a keel log, left alone.
    Foreign,
    /// A frame that is not the last is damaged: acknowledged commits may follow it.
    Damaged {
        at: usize,
        /// How many bytes follow the frame's end.
        after: usize,
    },
}

/// The tables the whole frames of `bytes` leave, and how many bytes those frames take.
///
/// Appends are made one at a time, each synced before the next, so a crash can only
/// leave the *last* frame cut short or damaged: that one is dropped. A damaged frame
/// with more bytes after it is damage to acknowledged commits, and is refused rather
/// than dropped with everything after it.
fn replay(bytes: &[u8]) -> Result<(MemTables, usize), Replay> {
    let mut tables = MemTables::default();
    let mut at = 0;
    loop {
        let Some((payload, next)) = frame_at(bytes, at) else {
            if at == 0 && !bytes.is_empty() && !first_frame_cut_short(bytes) {
                return Err(Replay::Foreign);
            }
            // What a torn append leaves ends where its frame would have: after it come
            // the zeros made ahead of the appends, or the file's end. Anything else there
            // is a commit that followed, so the frame here is damage, not a torn append.
            if let Some(end) = frame_end(bytes, at)
                && end < bytes.len()
                && !zeros(&bytes[end..])
            {
                return Err(Replay::Damaged {
                    at,
                    after: bytes.len() - end,
                });
            }
            return Ok((tables, at));
        };
        match postcard::from_bytes::<Record>(payload).map_err(Replay::Codec)? {
            Record::Format(FORMAT) => {}
            Record::Format(other) => return Err(Replay::Format(other)),
            Record::Mutation(redo) => {
                for r in redo {
                    apply(&mut tables, r);
                }
                tables.forget_journal();
            }
            Record::Image(image) => tables = MemTables::from_image(image),
        }
        at = next;
    }
}

/// Where the frame at `at` ends by its header, if its header is whole and its payload
/// ends within reach of a `u32`.
fn frame_end(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    (at + HEADER).checked_add(len)
}

/// Whether `bytes` is the start of keel's first frame, cut short by a crash while the
/// file was being made: some of its bytes, or zeros where the rest never landed. The
/// first frame is written before any zeros are made ahead, so a longer file of zeros
/// is not this but a log that lost its contents.
fn first_frame_cut_short(bytes: &[u8]) -> bool {
    let written = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| last + 1);
    frame(&RecordOut::Format(FORMAT))
        .is_ok_and(|first| bytes.len() <= first.len() && first.starts_with(&bytes[..written]))
}

/// Whether `bytes` are all zeros (or none).
fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// The payload of the whole frame at `at`, and where the next begins; `None` at the end
/// or at a frame cut short or damaged.
fn frame_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    // No record is empty (and an empty payload's CRC-32 is 0, as zeros would read).
    if len == 0 {
        return None;
    }
    let start = at + HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, start + len))
}

/// `record` as one frame.
fn frame(record: &RecordOut<'_>) -> Result<Vec<u8>, StoreError> {
    let payload = postcard::to_allocvec(record)?;
    let len = u32::try_from(payload.len())
        .map_err(|_| StoreError::Codec(postcard::Error::SerializeBufferFull))?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

impl FileEnd {
    fn io(&self, error: std::io::Error) -> StoreError {
        StoreError::File {
            path: self.path.clone(),
            error,
        }
    }

    /// Appends `record` and makes it durable. On failure the file is cut back to its
    /// last whole frame (what a restart would find anyway), since a restart reads
    /// anything but zeros after a damaged frame as damage.
    fn append(&mut self, record: &RecordOut<'_>) -> Result<(), StoreError> {
        let bytes = frame(record)?;
        let end = self.size + bytes.len() as u64;
        // The first frame is written first, so zeros alone are never a keel log.
        if end > self.allocated && self.size > 0 {
            self.preallocate(end)?;
        }
        let written = self
            .file
            .write_all_at(&bytes, self.size)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.size);
            self.allocated = self.size;
            return Err(self.io(e));
        }
        self.size = end;
        self.allocated = self.allocated.max(end);
        Ok(())
    }

    /// Extends the file with zeros, written and synced, to the next multiple of
    /// [`PREALLOCATE`] past `end`.
    fn preallocate(&mut self, end: u64) -> Result<(), StoreError> {
        let to = (end / PREALLOCATE + 1) * PREALLOCATE;
        let zeros = usize::try_from(to - self.allocated)
            .map(|n| vec![0u8; n])
            .map_err(|_| self.io(std::io::Error::other("a frame larger than memory")))?;
        self.file
            .write_all_at(&zeros, self.allocated)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| self.io(e))?;
        self.allocated = to;
        Ok(())
    }

    /// Whether the file has grown enough to be rewritten as one image.
    fn due(&self) -> bool {
        self.size > self.checkpoint_bytes && self.size > 2 * self.image
    }

    /// Rewrites the file as `image`: a new file, synced, renamed over the old one, and
    /// the directory synced.
    fn rewrite(&mut self, image: &Image) -> Result<(), StoreError> {
        let fresh = self.path.with_extension("log.new");
        let io = |error| StoreError::File {
            path: fresh.clone(),
            error,
        };
        let mut bytes = frame(&RecordOut::Format(FORMAT))?;
        bytes.extend(frame(&RecordOut::Image(image))?);
        let mut file = File::create(&fresh).map_err(io)?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        std::fs::rename(&fresh, &self.path).map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        self.file = file;
        self.size = bytes.len() as u64;
        self.allocated = self.size;
        self.image = self.size;
        Ok(())
    }
}

/// Replays one change.
fn apply(t: &mut MemTables, redo: Redo) {
    // The in-memory tables never fail: each call returns `Ok`.
    let _ = match redo {
        Redo::Entry(key, value) => t.set_entry(&key, value.as_deref()).map(drop),
        Redo::Kv(key, record) => t
            .set_kv(
                &key,
                record.as_ref().map(|(v, bytes)| (*v, bytes.as_slice())),
            )
            .map(drop),
        Redo::Counter(name, value) => t.set_counter(&name, value).map(drop),
        Redo::PushLog(entry, undo) => t.push_log(&entry, undo),
        Redo::PopLog(lsn) => t.pop_log(Lsn(lsn)).map(drop),
        Redo::TruncateLogThrough(lsn) => t.truncate_log_through(Lsn(lsn)),
        Redo::AddEpoch(epoch, first) => t.add_epoch(Epoch(epoch), Lsn(first)),
        Redo::ForgetEpochsAfter(lsn) => t.forget_epochs_after(Lsn(lsn)),
        Redo::Clear => t.clear(),
        Redo::Status(status) => t.save_status(&status),
        Redo::NodeMeta(key, value) => t.set_node_meta(&key, value),
    };
}

/// The tables as a mutation sees them, writing down each change it makes.
struct Recording<'a> {
    tables: &'a mut MemTables,
    redo: Vec<Redo>,
}

impl Tables for Recording<'_> {
    fn kv_version(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.tables.kv_version(key)
    }

    fn counter_value(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.tables.counter_value(name)
    }

    fn epoch_at(&self, lsn: Lsn) -> Result<Option<Epoch>, StoreError> {
        self.tables.epoch_at(lsn)
    }

    fn set_entry(&mut self, key: &str, value: Option<&str>) -> Result<Option<String>, StoreError> {
        self.redo
            .push(Redo::Entry(key.to_owned(), value.map(str::to_owned)));
        self.tables.set_entry(key, value)
    }

    fn set_kv(
        &mut self,
        key: &str,
        record: Option<(u64, &[u8])>,
    ) -> Result<Option<KvRecord>, StoreError> {
        let owned = record.map(|(v, bytes)| (v, bytes.to_vec()));
        self.redo.push(Redo::Kv(key.to_owned(), owned));
        self.tables.set_kv(key, record)
    }

    fn set_counter(&mut self, name: &str, value: Option<i64>) -> Result<Option<i64>, StoreError> {
        self.redo.push(Redo::Counter(name.to_owned(), value));
        self.tables.set_counter(name, value)
    }

    fn push_log(&mut self, entry: &LogEntry, undo: Undo) -> Result<(), StoreError> {
        self.redo.push(Redo::PushLog(entry.clone(), undo.clone()));
        self.tables.push_log(entry, undo)
    }

    fn pop_log(&mut self, lsn: Lsn) -> Result<Option<Undo>, StoreError> {
        self.redo.push(Redo::PopLog(lsn.0));
        self.tables.pop_log(lsn)
    }

    fn truncate_log_through(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.redo.push(Redo::TruncateLogThrough(lsn.0));
        self.tables.truncate_log_through(lsn)
    }

    fn add_epoch(&mut self, epoch: Epoch, first: Lsn) -> Result<(), StoreError> {
        self.redo.push(Redo::AddEpoch(epoch.0, first.0));
        self.tables.add_epoch(epoch, first)
    }

    fn forget_epochs_after(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.redo.push(Redo::ForgetEpochsAfter(lsn.0));
        self.tables.forget_epochs_after(lsn)
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.redo.push(Redo::Clear);
        self.tables.clear()
    }

    fn save_status(&mut self, status: &LogStatus) -> Result<(), StoreError> {
        self.redo.push(Redo::Status(*status));
        self.tables.save_status(status)
    }

    fn set_node_meta(&mut self, key: &str, value: u64) -> Result<(), StoreError> {
        self.redo.push(Redo::NodeMeta(key.to_owned(), value));
        self.tables.set_node_meta(key, value)
    }
}

impl Backend for LogStore {
    fn log_retain(&self) -> u64 {
        self.log_retain
    }

    fn current_status(&self) -> LogStatus {
        self.live().status()
    }

    fn mutate<R>(
        &self,
        f: impl FnOnce(&mut dyn Tables, LogStatus) -> Result<Written<R>, StoreError>,
    ) -> Result<R, StoreError> {
        // A panic in a mutation happens before its record is written: the file is whole.
        let mut end = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Run it, note what it set, and take it back: readers see it only once it is
        // durable.
        let (redo, value) = {
            let mut live = self.live();
            let status = live.status();
            let start = live.begin();
            let mut rec = Recording {
                tables: &mut live,
                redo: Vec::new(),
            };
            let result = run_mutation(&mut rec, status, f);
            let redo = rec.redo;
            live.revert_to(start);
            live.end();
            match result? {
                Written::Nothing(value) => return Ok(value),
                Written::Changed(_, value) => (redo, value),
            }
        };
        if redo.is_empty() {
            return Ok(value);
        }
        end.append(&RecordOut::Mutation(&redo))?;
        let mut live = self.live();
        for r in redo {
            apply(&mut live, r);
        }
        live.forget_journal();
        if end.due() {
            let image = live.image();
            drop(live);
            // The mutation is durable already; a rewrite that fails leaves the old file,
            // which holds it, and is tried again after the next mutation.
            if let Err(e) = end.rewrite(&image) {
                tracing::warn!(error = %e, "rewriting the log file as one image failed; it keeps growing until a rewrite succeeds");
            }
        }
        Ok(value)
    }

    fn read<R>(&self, f: impl FnOnce(&dyn View) -> Result<R, StoreError>) -> Result<R, StoreError> {
        f(&*self.live())
    }
}
