//! The Raft log and vote in redb (`raft-log.redb`), with the unpurged log also in memory.
//!
//! Rules openraft relies on, and how this store keeps them:
//! - `append` returns at once with the entries readable (they are in memory); a writer thread
//!   makes them durable and only then fires the flush callback. The writer commits every
//!   operation queued meanwhile in one redb transaction with `Durability::Immediate`: group
//!   commit, one fsync for many appends, and the Raft core never waits on the disk.
//! - Operations reach the disk in the order they were made (one queue, one writer), so a
//!   truncate or purge never overtakes an earlier append.
//! - The vote is durable before `save_vote` returns.
//! - Entries are contiguous from `last_purged + 1` to the last index; `purge` records the
//!   purged id in the same transaction that drops the entries.
//!
//! Readers (replication, apply) read only memory: the entries since the last purge, which
//! openraft bounds by the snapshot policy (like etcd's in-memory raft log).
//!
//! Every value carries a CRC-32 of its bytes. On open the whole log is checked (checksums and
//! contiguity); a damaged or truncated file makes the node refuse to start with the failing
//! index named, instead of silently dropping entries.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use crate::types::{Entry, LogId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// Why a log file cannot be used; the node refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the Raft log {path}: {source} (the file is damaged or not a log)")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "the Raft log {path} is damaged at {what}: {detail}; refusing to start rather than drop data"
    )]
    Corrupt {
        path: String,
        what: String,
        detail: String,
    },
    #[error("cannot read the Raft log {path}: {detail}")]
    Io { path: String, detail: String },
}

/// Prefix `bytes` with their CRC-32.
pub(crate) fn seal(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Check and strip the CRC-32 written by [`seal`].
pub(crate) fn unseal(sealed: &[u8]) -> Result<&[u8], String> {
    let Some((crc, body)) = sealed.split_first_chunk::<4>() else {
        return Err(format!("value of {} bytes is too short", sealed.len()));
    };
    let want = u32::from_le_bytes(*crc);
    let got = crc32fast::hash(body);
    if want == got {
        Ok(body)
    } else {
        Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        ))
    }
}

fn decode<T: serde::de::DeserializeOwned>(sealed: &[u8]) -> Result<T, String> {
    let body = unseal(sealed)?;
    postcard::from_bytes(body).map_err(|e| format!("undecodable value: {e}"))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(v)
        .map(|b| seal(&b))
        .map_err(|e| e.to_string())
}

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// Every entry after the last purge (readers never touch the disk).
    entries: RwLock<BTreeMap<u64, Entry>>,
    purged: Mutex<Option<LogId>>,
    writer: Mutex<mpsc::Sender<Op>>,
}

/// Work for the writer thread, in the order it was made.
enum Op {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    Truncate(u64),
    Purge(u64, Vec<u8>),
    Committed(Vec<u8>),
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    /// Open (or create) the log at `path`, verify every entry and load the log into memory.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let name = path.display().to_string();
        let db = Database::create(path).map_err(|source| OpenError::Open {
            path: name.clone(),
            source,
        })?;
        let io = |e: &dyn std::fmt::Display| OpenError::Io {
            path: name.clone(),
            detail: e.to_string(),
        };
        // Create the tables on a fresh file.
        let tx = db.begin_write().map_err(|e| io(&e))?;
        tx.open_table(LOG).map_err(|e| io(&e))?;
        tx.open_table(META).map_err(|e| io(&e))?;
        tx.commit().map_err(|e| io(&e))?;

        let db = Arc::new(db);
        let (entries, purged) = verify(&db, &name)?;
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("kv-log-writer".into())
            .spawn(move || write_loop(&writer_db, &rx))
            .map_err(|e| io(&e))?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                entries: RwLock::new(entries),
                purged: Mutex::new(purged),
                writer: Mutex::new(tx),
            }),
        })
    }

    fn send(&self, op: Op) -> Result<(), String> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(op)
            .map_err(|_| "the log writer has stopped".to_string())
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let read = |e: &dyn std::error::Error| StorageIOError::<u64>::read(&AnyErr(e.to_string()));
        let tx = self.inner.db.begin_read().map_err(|e| read(&e))?;
        let t = tx.open_table(META).map_err(|e| read(&e))?;
        match t.get(key).map_err(|e| read(&e))? {
            Some(v) => {
                let val: T = decode(v.value()).map_err(|d| StorageIOError::read(&AnyErr(d)))?;
                Ok(Some(val))
            }
            None => Ok(None),
        }
    }

    /// Run `f` in one write transaction on the blocking pool and commit it with `durability`
    /// (`Immediate` fsyncs before returning).
    async fn write<F>(&self, durability: Durability, f: F) -> Result<(), String>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.set_durability(durability).map_err(|e| e.to_string())?;
            f(&tx).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

fn verify(db: &Database, name: &str) -> Result<(BTreeMap<u64, Entry>, Option<LogId>), OpenError> {
    let corrupt = |what: String, detail: String| OpenError::Corrupt {
        path: name.to_string(),
        what,
        detail,
    };
    let io = |e: &dyn std::fmt::Display| OpenError::Io {
        path: name.to_string(),
        detail: e.to_string(),
    };
    let tx = db.begin_read().map_err(|e| io(&e))?;
    let meta = tx.open_table(META).map_err(|e| io(&e))?;
    for key in [VOTE, COMMITTED, PURGED] {
        if let Some(v) = meta.get(key).map_err(|e| io(&e))? {
            unseal(v.value()).map_err(|d| corrupt(format!("'{key}'"), d))?;
        }
    }
    let purged: Option<LogId> = match meta.get(PURGED).map_err(|e| io(&e))? {
        Some(v) => decode(v.value()).map_err(|d| corrupt("'last_purged'".into(), d))?,
        None => None,
    };
    let log = tx.open_table(LOG).map_err(|e| io(&e))?;
    let mut expect = purged.map(|p| p.index + 1);
    let mut entries = BTreeMap::new();
    for item in log.iter().map_err(|e| io(&e))? {
        let (k, v) = item.map_err(|e| io(&e))?;
        let index = k.value();
        let entry: Entry =
            decode(v.value()).map_err(|d| corrupt(format!("log index {index}"), d))?;
        if entry.log_id.index != index {
            return Err(corrupt(
                format!("log index {index}"),
                format!("entry claims index {}", entry.log_id.index),
            ));
        }
        if let Some(e) = expect
            && e != index
        {
            return Err(corrupt(
                format!("log index {e}"),
                format!("entry missing (next present index is {index})"),
            ));
        }
        expect = Some(index + 1);
        entries.insert(index, entry);
    }
    Ok((entries, purged))
}

/// A plain error carrying a message, for openraft's `AnyError` wrappers.
#[derive(Debug)]
pub(crate) struct AnyErr(pub(crate) String);

impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyErr {}

fn to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e.saturating_add(1)),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = to_bounds(&range);
        let entries = self
            .inner
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = match end {
            Some(end) if end <= start => Vec::new(),
            Some(end) => entries.range(start..end).map(|(_, e)| e.clone()).collect(),
            None => entries.range(start..).map(|(_, e)| e.clone()).collect(),
        };
        Ok(out)
    }
}

/// The writer thread: takes everything queued, commits it in one transaction, then reports.
fn write_loop(db: &Database, rx: &mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let durable = ops.iter().any(|op| !matches!(op, Op::Committed(_)));
        let result = commit_ops(db, &ops, durable);
        for op in ops {
            if let Op::Append(_, callback) = op {
                // A full disk lands here: an error for openraft to stop on, never a panic.
                callback.log_io_completed(result.clone().map_err(std::io::Error::other));
            }
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the Raft log failed");
        }
    }
}

fn commit_ops(db: &Database, ops: &[Op], durable: bool) -> Result<(), String> {
    let run = || -> Result<(), redb::Error> {
        let mut tx = db.begin_write()?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut log = tx.open_table(LOG)?;
            let mut meta = tx.open_table(META)?;
            for op in ops {
                match op {
                    Op::Append(batch, _) => {
                        for (index, bytes) in batch {
                            log.insert(*index, bytes.as_slice())?;
                        }
                    }
                    Op::Truncate(from) => {
                        log.retain_in(*from.., |_, _| false)?;
                    }
                    Op::Purge(upto, bytes) => {
                        meta.insert(PURGED, bytes.as_slice())?;
                        log.retain_in(..=*upto, |_, _| false)?;
                    }
                    Op::Committed(bytes) => {
                        meta.insert(COMMITTED, bytes.as_slice())?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = *self
            .inner
            .purged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = self
            .inner
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&AnyErr(e)))?;
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(META)?.insert(VOTE, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&AnyErr(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it only speeds up recovery (the committed prefix is re-applied
        // at start-up), and a lost value is recomputed by the leader.
        let bytes = encode(&committed).map_err(|e| StorageIOError::write(&AnyErr(e)))?;
        self.send(Op::Committed(bytes))
            .map_err(|e| StorageIOError::write(&AnyErr(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        {
            let mut mem = self
                .inner
                .entries
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in entries {
                let bytes = encode(&e).map_err(|m| StorageIOError::write_logs(&AnyErr(m)))?;
                batch.push((e.log_id.index, bytes));
                mem.insert(e.log_id.index, e);
            }
        }
        self.send(Op::Append(batch, callback))
            .map_err(|e| StorageIOError::write_logs(&AnyErr(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|index, _| *index < log_id.index);
        self.send(Op::Truncate(log_id.index))
            .map_err(|e| StorageIOError::write_logs(&AnyErr(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&AnyErr(e)))?;
        *self
            .inner
            .purged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(log_id);
        self.inner
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|index, _| *index > log_id.index);
        self.send(Op::Purge(log_id.index, bytes))
            .map_err(|e| StorageIOError::write_logs(&AnyErr(e)).into())
    }
}
